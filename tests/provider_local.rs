//! The local backend passes the provider conformance suite with real agent processes.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

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

/// Killed after every backend call and every state write of an apply and of a destroy, the
/// same command again converges: one sandbox and one agent after apply, none after destroy.
#[test]
fn local_backend_survives_a_crash_at_every_point() {
    let w = support::Workdir::new();
    w.write_config(
        "cluster \"dev\" {\n}\n\njob \"hi\" {\n  cluster = cluster.dev\n  run     = \"true\"\n}\n",
    );
    let sandboxes = w.path().join(".skyform/local");
    let world = || {
        let mut out: Vec<String> = std::fs::read_dir(&sandboxes)
            .map(|d| {
                d.flatten()
                    .map(|e| format!("sandbox {}", e.file_name().to_string_lossy()))
                    .collect()
            })
            .unwrap_or_default();
        out.extend(w.processes().iter().map(|p| format!("process {p}")));
        out.sort();
        out
    };
    support::crash::Crashes {
        dir: &w,
        world: &world,
        kinds: &[("call", 1), ("write", 1)],
        min_points: 4,
    }
    .run();
}
