//! The local backend passes the provider conformance suite with real agent processes.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use skyform::model::{ClusterSpec, Spec};
use skyform::providers::conformance::{self, Fixture};
use skyform::providers::local::LocalProvider;

#[tokio::test]
async fn local_backend_conforms() {
    let dir = tempfile::tempdir().unwrap();
    let mut p = LocalProvider::new(dir.path().join(".skyform/local"), None);
    p.agent_exe = env!("CARGO_BIN_EXE_skyform").into();
    let fixture = Fixture {
        address: "cluster.conform".parse().unwrap(),
        spec: Spec::Cluster(ClusterSpec {
            num_nodes: 2,
            ..ClusterSpec::default()
        }),
        placement: None,
        root: dir.path().to_path_buf(),
        lineage: "conformance".into(),
    };
    conformance::run(&p, &fixture).await;
}
