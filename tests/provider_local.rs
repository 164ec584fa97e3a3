//! The local backend passes the provider conformance suite with real agent processes.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use skyform::providers::conformance::{self, Fixture};
use skyform::providers::local::LocalProvider;

#[tokio::test]
async fn local_backend_conforms() {
    let dir = tempfile::tempdir().unwrap();
    let mut p = LocalProvider::new(dir.path().join(".skyform/local"), None);
    p.agent_exe = env!("CARGO_BIN_EXE_skyform").into();
    let fixture = Fixture::cluster(2, None, dir.path());
    conformance::run(&p, &fixture).await;
}
