//! How `skyform apply` and `skyform destroy` scale: one local cluster and N trivial jobs
//! (`for_each`), applied in one run and then destroyed at once (most jobs still queued), for
//! N = 1,000, 2,000 and 10,000. Prints the wall time of each `skyform` process; the figures
//! go to docs/benchmarks.md.
//!
//! Run: `cargo bench --bench apply_scale` (release build). `SKYFORM_BENCH_SIZES=1000,5000`
//! chooses the sizes; `SKYFORM_BENCH_BIN` runs another skyform build (to compare two);
//! `SKYFORM_BENCH_DIR` is where the configurations go (`/dev/shm` for a tmpfs).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::Command;
use std::time::Instant;

fn config(n: usize) -> String {
    let keys: Vec<String> = (0..n).map(|i| format!("\"k{i:05}\"")).collect();
    format!(
        "cluster \"dev\" {{}}\n\njob \"j\" {{\n  for_each = toset([{}])\n  cluster  = cluster.dev\n  run      = \"echo ${{each.key}}\"\n}}\n",
        keys.join(", ")
    )
}

/// Runs skyform in `dir` and returns its wall time in seconds; panics if it fails.
fn timed(bin: &str, dir: &Path, args: &[&str]) -> f64 {
    let t = Instant::now();
    let out = Command::new(bin)
        .arg(format!("-chdir={}", dir.display()))
        .args(args)
        .stdout(std::process::Stdio::null())
        .output()
        .expect("spawn skyform");
    let secs = t.elapsed().as_secs_f64();
    assert!(
        out.status.success(),
        "skyform {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    secs
}

fn main() {
    let bin = std::env::var("SKYFORM_BENCH_BIN")
        .unwrap_or_else(|_| env!("CARGO_BIN_EXE_skyform").to_string());
    let sizes: Vec<usize> = std::env::var("SKYFORM_BENCH_SIZES")
        .ok()
        .map(|s| s.split(',').filter_map(|x| x.trim().parse().ok()).collect())
        .unwrap_or_else(|| vec![1_000, 2_000, 10_000]);
    println!("skyform apply, then destroy: one local cluster and N jobs (for_each)");
    println!("{:>8}  {:>10}  {:>10}", "N", "apply s", "destroy s");
    for n in sizes {
        let tmp = match std::env::var_os("SKYFORM_BENCH_DIR") {
            Some(d) => tempfile::tempdir_in(d),
            None => tempfile::tempdir(),
        }
        .expect("tempdir");
        let dir = tmp.path();
        std::fs::write(dir.join("main.sky.hcl"), config(n)).expect("config");
        let apply = timed(&bin, dir, &["apply", "-auto-approve"]);
        let destroy = timed(&bin, dir, &["destroy", "-auto-approve"]);
        println!("{n:>8}  {apply:>10.2}  {destroy:>10.2}");
        let left = std::fs::read_dir(dir.join(".skyform/local"))
            .map(|d| d.count())
            .unwrap_or(0);
        assert_eq!(left, 0, "destroy left a sandbox behind");
    }
}
