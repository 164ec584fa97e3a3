//! How `skyform plan` scales: N jobs (`for_each`) against a state of N jobs on a real local
//! cluster, for N = 1,000 and 10,000. Prints wall and CPU time and peak memory of the `skyform plan`
//! process; the figures go to docs/benchmarks.md.
//!
//! Run: `cargo bench --bench plan_scale` (release build). `SKYFORM_BENCH_SIZES=1000,100000`
//! chooses the sizes; `SKYFORM_BENCH_PREPARE=DIR` only makes the first size's setup in DIR
//! and keeps it (for measuring by hand).
#![allow(clippy::unwrap_used, clippy::expect_used)]
#![allow(unsafe_code)]

use skyform::model::{Address, InstanceKey, JobSpec, Kind, Spec};
use skyform::runtime::{JobState, JobStatus, Layout};
use skyform::state::{ResourceState, State, Status};
use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::Instant;

const BIN: &str = env!("CARGO_BIN_EXE_skyform");

fn config(n: usize) -> String {
    let keys: Vec<String> = (0..n).map(|i| format!("\"k{i:05}\"")).collect();
    format!(
        "cluster \"dev\" {{}}\n\njob \"j\" {{\n  for_each = toset([{}])\n  cluster  = cluster.dev\n  run      = \"echo ${{each.key}}\"\n}}\n",
        keys.join(", ")
    )
}

/// Runs skyform and returns (exit code, wall seconds, CPU seconds (user + system), peak RSS in
/// MiB) of that process alone. The CPU time is the steadier figure on a shared machine.
#[allow(clippy::zombie_processes)] // reaped by wait4, which also gives its resource usage
fn measure(dir: &Path, args: &[&str]) -> (i32, f64, f64, f64) {
    let t = Instant::now();
    let child = Command::new(BIN)
        .arg(format!("-chdir={}", dir.display()))
        .args(args)
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("spawn skyform");
    let pid = child.id() as libc::pid_t;
    let mut status = 0;
    // SAFETY: an all-zero rusage is a valid value; wait4 fills it for our own child.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: pid is our child; the pointers are to live locals.
    let rc = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    assert_eq!(rc, pid, "wait4");
    let secs = t.elapsed().as_secs_f64();
    let code = if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status)
    } else {
        -1
    };
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    let cpu = tv(usage.ru_utime) + tv(usage.ru_stime);
    (code, secs, cpu, usage.ru_maxrss as f64 / 1024.0)
}

fn prepare(dir: &Path, n: usize) {
    std::fs::write(dir.join("main.sky.hcl"), config(n)).expect("config");
    let out = Command::new(BIN)
        .arg(format!("-chdir={}", dir.display()))
        .args(["apply", "-auto-approve", "-target=cluster.dev"])
        .output()
        .expect("apply cluster");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The jobs, as if they had been submitted and had finished: state records and the
    // cluster's status files.
    let path = dir.join(".skyform/state.json");
    let mut state = State::from_json(&std::fs::read(&path).expect("state")).expect("parse");
    let cluster_addr = Address::new(Kind::Cluster, "dev");
    let cluster = state
        .resources
        .get(&cluster_addr)
        .expect("cluster in state")
        .clone();
    let cluster_dir = cluster.private["dir"].as_str().expect("dir").to_string();
    let layout = Layout::new(&cluster_dir);
    for i in 0..n {
        let key = format!("k{i:05}");
        let job_id = format!("bench-{key}");
        let status = JobStatus {
            state: JobState::Succeeded,
            exit_code: Some(0),
            reason: None,
            nodes: vec![0],
            started: None,
            ended: None,
            devices: Vec::new(),
        };
        skyform::runtime::write_json(&layout.status(&job_id), &status).expect("status");
        let spec = Spec::Job(JobSpec {
            cluster: cluster_addr.clone(),
            num_nodes: 1,
            resources: Default::default(),
            run: format!("echo {key}"),
            envs: BTreeMap::new(),
            secrets: BTreeMap::new(),
        });
        state.resources.insert(
            Address::new(Kind::Job, "j").with_key(Some(InstanceKey::Key(key))),
            ResourceState {
                computed: BTreeMap::from([
                    ("status".to_string(), serde_json::json!("SUCCEEDED")),
                    ("exit_code".to_string(), serde_json::json!(0)),
                ])
                .into(),
                private: serde_json::json!({"job_id": job_id, "dir": cluster_dir}),
                dependencies: vec![cluster_addr.clone()],
                ..ResourceState::new(Status::Ready, "local", spec.into())
            },
        );
    }
    state.serial += 1;
    std::fs::write(&path, state.to_json()).expect("write state");
}

fn main() {
    let sizes: Vec<usize> = std::env::var("SKYFORM_BENCH_SIZES")
        .ok()
        .map(|s| s.split(',').filter_map(|x| x.trim().parse().ok()).collect())
        .unwrap_or_else(|| vec![1_000, 10_000]);
    // Only the setup, kept in a directory of one's choosing, for measuring by hand (perf,
    // /usr/bin/time): SKYFORM_BENCH_PREPARE=DIR with the first size.
    if let Ok(dir) = std::env::var("SKYFORM_BENCH_PREPARE") {
        let dir = Path::new(&dir);
        std::fs::create_dir_all(dir).expect("bench dir");
        prepare(dir, sizes.first().copied().unwrap_or(100_000));
        println!("prepared {}", dir.display());
        return;
    }
    println!("skyform plan: N jobs (for_each) against a state of N jobs on a live local cluster");
    println!(
        "{:>8}  {:>22}  {:>22}  {:>14}  {:>9}",
        "N", "plan (refresh) s (cpu)", "-refresh=false s (cpu)", "validate s", "peak MiB"
    );
    for n in sizes {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path();
        prepare(dir, n);
        // Warm the page cache once, then take the best of three.
        let _ = measure(dir, &["plan"]);
        let best = |args: &[&str]| {
            let mut runs: Vec<(i32, f64, f64, f64)> = (0..3).map(|_| measure(dir, args)).collect();
            runs.sort_by(|a, b| a.1.total_cmp(&b.1));
            runs[0]
        };
        let (code, full, full_cpu, rss) = best(&["plan", "-detailed-exitcode"]);
        if code != 0 {
            let out = Command::new(BIN)
                .arg(format!("-chdir={}", dir.display()))
                .arg("plan")
                .output()
                .expect("plan");
            let text = String::from_utf8_lossy(&out.stdout);
            panic!(
                "the plan of an applied configuration should be empty:\n{}",
                text.lines().take(40).collect::<Vec<_>>().join("\n")
            );
        }
        let (_, norefresh, norefresh_cpu, rss2) = best(&["plan", "-refresh=false"]);
        let (_, validate, _, _) = best(&["validate"]);
        println!(
            "{n:>8}  {:>22}  {:>22}  {validate:>14.3}  {:>9.1}",
            format!("{full:.3} ({full_cpu:.3})"),
            format!("{norefresh:.3} ({norefresh_cpu:.3})"),
            rss.max(rss2)
        );
        let _ = Command::new(BIN)
            .arg(format!("-chdir={}", dir.display()))
            .args(["destroy", "-auto-approve"])
            .output();
    }
}
