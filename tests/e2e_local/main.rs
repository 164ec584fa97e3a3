//! End-to-end tests of the `skyform` binary on the local backend: real agent processes, real
//! jobs, real state files.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use serde_json::Value;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[path = "../support/mod.rs"]
mod support;

mod interrupts;
mod jobs;
mod workflow;

use support::{BIN, Workdir, copy_dir, processes_mentioning};

/// A copy of an example's directory.
fn from_example(name: &str) -> Workdir {
    let sb = Workdir::new();
    copy_dir(
        &Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("examples")
            .join(name),
        sb.path(),
    );
    sb
}

/// What these tests read of a local-backend run.
trait LocalRun {
    /// The state as skyform sees it: the document with its journal replayed.
    fn stored_state(&self) -> Value;
    fn serial(&self) -> u64;
    fn job_statuses(&self) -> Vec<(String, String)>;
    fn wait_jobs_done(&self, timeout: Duration) -> Vec<(String, String)>;
}

impl LocalRun for Workdir {
    fn stored_state(&self) -> Value {
        read_state(self.path()).expect("a valid state")
    }

    fn serial(&self) -> u64 {
        self.stored_state()["serial"].as_u64().expect("serial")
    }

    fn job_statuses(&self) -> Vec<(String, String)> {
        let out = self.stdout(&["status", "-json"]);
        let rows: Vec<Value> = serde_json::from_str(&out).expect("status json");
        rows.iter()
            .filter(|r| r["address"].as_str().is_some_and(|a| a.starts_with("job.")))
            .map(|r| {
                (
                    r["address"].as_str().unwrap_or_default().to_string(),
                    r["status"].as_str().unwrap_or("-").to_string(),
                )
            })
            .collect()
    }

    fn wait_jobs_done(&self, timeout: Duration) -> Vec<(String, String)> {
        let t = Instant::now();
        loop {
            let s = self.job_statuses();
            if s.iter()
                .all(|(_, st)| ["SUCCEEDED", "FAILED", "CANCELLED"].contains(&st.as_str()))
            {
                return s;
            }
            assert!(
                t.elapsed() < timeout,
                "jobs did not finish in {timeout:?}: {s:?}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

fn read_state(dir: &Path) -> Option<Value> {
    let store = skyform::state::LocalStore::new(dir.join(".skyform/state.json"));
    let state = store.load().ok()??;
    serde_json::to_value(state).ok()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).to_string()
}

fn wait_for(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let t = Instant::now();
    while !cond() {
        assert!(t.elapsed() < timeout, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}
