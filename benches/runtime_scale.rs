//! How fast a local cluster's runtime drains a sweep of trivial jobs (`run = "true"`), cancels
//! a queue of them, and answers `skyform status` about them. For each N (1,000 and 10,000):
//!
//! 1. `apply` a local cluster (`infra "local" { cpus = 2 }`) and a gate job that takes both
//!    CPUs and waits for a file; then `apply` N jobs `j` (they queue behind the gate).
//! 2. `skyform status` with the N jobs queued.
//! 3. The gate is opened: the time until every job has ended is the drain (jobs per second),
//!    and the head agent's own CPU time over it, divided by N, is the scheduler's overhead
//!    per job (the jobs' `sh` processes are counted apart).
//! 4. `skyform status` with the N jobs finished.
//! 5. A second gate and N jobs `c` queued behind it; then an `apply` without the `c` jobs
//!    cancels them all: its wall time, and the time until the head has recorded every one
//!    as cancelled.
//!
//! Every `skyform` is a separate process; the machine's load average is printed with each
//! row, since other builds share it. Std only, so that it also builds on its own against
//! any skyform binary:
//! `rustc -O --edition 2024 benches/runtime_scale.rs -o /tmp/rs && SKYFORM_BENCH_BIN=… /tmp/rs`.
//!
//! Run: `cargo bench --bench runtime_scale`. `SKYFORM_BENCH_SIZES=1000,10000` chooses the
//! sizes; `SKYFORM_BENCH_BIN` runs another skyform build; `SKYFORM_BENCH_DIR` is where the
//! configurations go (`/dev/shm` for a tmpfs).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

fn config(dir: &Path, sweeps: &[(&str, &str, usize)]) -> String {
    let mut s = String::from("infra \"local\" {\n  cpus = 2\n}\n\ncluster \"dev\" {}\n");
    for (name, gate, n) in sweeps {
        // The gate takes both CPUs until its file appears (or for an hour).
        s.push_str(&format!(
            "\njob \"{gate}\" {{\n  cluster = cluster.dev\n  run     = \"for i in $(seq 36000); do [ -e {} ] && exit 0; sleep 0.1; done\"\n  resources {{\n    cpus = \"2\"\n  }}\n}}\n",
            dir.join(format!("{gate}.open")).display()
        ));
        if *n > 0 {
            let keys: Vec<String> = (0..*n).map(|i| format!("\"k{i:05}\"")).collect();
            s.push_str(&format!(
                "\njob \"{name}\" {{\n  for_each = toset([{}])\n  cluster  = cluster.dev\n  run      = \"true\"\n}}\n",
                keys.join(", ")
            ));
        }
    }
    s
}

/// Runs skyform in `dir` and returns its wall time in seconds; panics if it fails. Its
/// CPU time is added to `CPU` (read with [`last_cpu`]).
fn timed(bin: &str, dir: &Path, args: &[&str]) -> f64 {
    let before = cpu(std::process::id()).1;
    let t = Instant::now();
    let out = Command::new(bin)
        .arg(format!("-chdir={}", dir.display()))
        .args(args)
        .stdout(std::process::Stdio::null())
        .output()
        .expect("spawn skyform");
    let secs = t.elapsed().as_secs_f64();
    LAST_CPU.with(|c| c.set(cpu(std::process::id()).1 - before));
    assert!(
        out.status.success(),
        "skyform {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    secs
}

thread_local! {
    static LAST_CPU: std::cell::Cell<f64> = const { std::cell::Cell::new(0.0) };
}

/// The CPU time (user + system) of the last `timed` run.
fn last_cpu() -> f64 {
    LAST_CPU.with(std::cell::Cell::get)
}

fn apply(bin: &str, dir: &Path, text: &str) -> f64 {
    std::fs::write(dir.join("main.sky.hcl"), text).expect("config");
    timed(bin, dir, &["apply", "-auto-approve"])
}

/// The cluster's sandbox (the one directory under `.skyform/local`).
fn sandbox(dir: &Path) -> PathBuf {
    std::fs::read_dir(dir.join(".skyform/local"))
        .expect("sandboxes")
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| p.join("cluster.json").is_file())
        .expect("a sandbox")
}

/// The head agent's pid.
fn head_pid(sandbox: &Path) -> u32 {
    let text = std::fs::read_to_string(sandbox.join("node-0/agent.pid")).expect("agent.pid");
    text.trim().parse().expect("a pid")
}

/// Seconds of CPU of a process: (its own, its waited-for children's).
fn cpu(pid: u32) -> (f64, f64) {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let Some(close) = text.rfind(')') else {
        return (0.0, 0.0);
    };
    let f: Vec<f64> = text[close + 2..]
        .split_whitespace()
        .map(|x| x.parse().unwrap_or(0.0))
        .collect();
    // utime, stime, cutime, cstime are fields 14–17 of stat (11–14 after the name).
    let tick = 100.0;
    if f.len() < 15 {
        return (0.0, 0.0);
    }
    ((f[11] + f[12]) / tick, (f[13] + f[14]) / tick)
}

/// How many of the jobs `ids` have ended: a final status file, or (a job cancelled before it
/// started) a record renamed `queue/<id>.cancelled`.
fn ended(sandbox: &Path, ids: &[String]) -> usize {
    ids.iter()
        .filter(|id| {
            std::fs::read_to_string(sandbox.join("jobs").join(id).join("status.json")).map_or_else(
                |_| {
                    sandbox
                        .join("queue")
                        .join(format!("{id}.cancelled"))
                        .exists()
                },
                |s| s.contains("SUCCEEDED") || s.contains("FAILED") || s.contains("CANCELLED"),
            )
        })
        .count()
}

/// The job ids of the jobs of one block, from the state.
fn job_ids(dir: &Path, block: &str) -> Vec<String> {
    let text = std::fs::read_to_string(dir.join(".skyform/state.json")).unwrap_or_default();
    // Job ids are `<block>-…` strings in the private part; a crude scan keeps this std only.
    let needle = "\"job_id\"";
    let prefix = format!("job_{block}_");
    let mut out = Vec::new();
    let mut rest = text.as_str();
    while let Some(at) = rest.find(needle) {
        rest = &rest[at + needle.len()..];
        let Some(open) = rest.find('"') else { break };
        rest = &rest[open + 1..];
        if let Some(end) = rest.find('"') {
            if rest[..end].starts_with(&prefix) {
                out.push(rest[..end].to_string());
            }
            rest = &rest[end..];
        }
    }
    out.sort();
    out.dedup();
    out
}

fn load() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .next()
        .unwrap_or("?")
        .to_string()
}

fn wait_until(what: &str, limit: Duration, mut done: impl FnMut() -> bool) -> f64 {
    let t = Instant::now();
    while !done() {
        assert!(t.elapsed() < limit, "{what}: not within {limit:?}");
        std::thread::sleep(Duration::from_millis(5));
    }
    t.elapsed().as_secs_f64()
}

fn main() {
    let bin = std::env::var("SKYFORM_BENCH_BIN")
        .ok()
        .or_else(|| option_env!("CARGO_BIN_EXE_skyform").map(str::to_string))
        .expect("SKYFORM_BENCH_BIN");
    let sizes: Vec<usize> = std::env::var("SKYFORM_BENCH_SIZES")
        .ok()
        .map(|s| s.split(',').filter_map(|x| x.trim().parse().ok()).collect())
        .unwrap_or_else(|| vec![1_000, 10_000]);
    let base = std::env::var_os("SKYFORM_BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    println!("local cluster (2 CPUs), N jobs `run = \"true\"` of 0.5 CPU each (4 at a time)");
    println!(
        "{:>6} {:>8} {:>9} {:>9} {:>10} {:>10} {:>10} {:>9} {:>9} {:>9} {:>9} {:>5}",
        "N",
        "apply s",
        "status Q",
        "drain s",
        "jobs/s",
        "head CPU",
        "CPU/job",
        "status F",
        "cancel s",
        "cancel+w",
        "status C",
        "load"
    );
    for n in sizes {
        let dir = base.join(format!("skyform-runtime-bench-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("bench dir");
        let load0 = load();
        apply(&bin, &dir, &config(&dir, &[("j", "gate", 0)]));
        let sb = sandbox(&dir);
        let submit = apply(&bin, &dir, &config(&dir, &[("j", "gate", n)]));
        let ids = job_ids(&dir, "j");
        assert_eq!(ids.len(), n, "job ids in state");
        let status_queued = timed(&bin, &dir, &["status"]);
        let status_queued_cpu = last_cpu();
        // Open the gate; the drain ends when every job has a final status.
        let head = head_pid(&sb);
        let (cpu0, kids0) = cpu(head);
        let t = Instant::now();
        std::fs::write(dir.join("gate.open"), b"").expect("open the gate");
        // The jobs' status files, each read until it is final (one at a time: cheap).
        let mut next = 0;
        wait_until("drain", Duration::from_secs(3600), || {
            while next < n && ended(&sb, &ids[next..=next]) == 1 {
                next += 1;
            }
            next == n
        });
        let drain = t.elapsed().as_secs_f64();
        let (cpu1, kids1) = cpu(head);
        let head_cpu = cpu1 - cpu0;
        let status_final = timed(&bin, &dir, &["status"]);
        let status_final_cpu = last_cpu();
        // A second gate with N jobs behind it, then cancelled by an apply without them.
        apply(
            &bin,
            &dir,
            &config(&dir, &[("j", "gate", n), ("c", "gate2", n)]),
        );
        let cids = job_ids(&dir, "c");
        assert_eq!(cids.len(), n, "job ids in state");
        let status_c = timed(&bin, &dir, &["status"]);
        let t = Instant::now();
        let cancel = apply(
            &bin,
            &dir,
            &config(&dir, &[("j", "gate", n), ("x", "gate2", 0)]),
        );
        let cancel_cpu = last_cpu();
        wait_until("cancel", Duration::from_secs(600), || {
            ended(&sb, &cids) == n
        });
        let cancel_all = t.elapsed().as_secs_f64();
        timed(&bin, &dir, &["destroy", "-auto-approve"]);
        let _ = std::fs::remove_dir_all(&dir);
        println!(
            "{n:>6} {submit:>8.2} {status_queued:>9.2} {drain:>9.2} {:>10.0} {head_cpu:>9.2}s {:>8.0}µs {status_final:>9.2} {cancel:>9.2} {cancel_all:>9.2} {status_c:>9.2} {load0:>5}",
            n as f64 / drain,
            head_cpu / n as f64 * 1e6,
        );
        println!(
            "        CPU: status {status_queued_cpu:.2} s queued, {status_final_cpu:.2} s ended; cancel {cancel_cpu:.2} s; the jobs' own processes {:.2} s; load now {}",
            kids1 - kids0,
            load()
        );
    }
}
