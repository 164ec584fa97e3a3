//! Crash safety of clusters on a pool of existing machines, against real OpenSSH servers
//! (`scripts/sshd.sh`, started by `scripts/test.sh`): skyform killed after every backend
//! call, state write and remote command of an apply and of a destroy, then the same command
//! again, never strands a host (tests/support/crash.rs). Ignored by a plain `cargo test`;
//! with `--include-ignored` a missing server is a failure, not a skip.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::path::Path;

/// What the configuration holds on the servers: each host's reservation (a symbolic link
/// whose target names its holder) and each cluster directory, read on the hosts' disks.
fn held(servers: &Path, count: usize) -> Vec<String> {
    let mut out = Vec::new();
    for i in 1..=count {
        let dir = servers.join(format!("host-{i}/skyform"));
        if let Ok(mark) = std::fs::read_link(dir.join("reservation")) {
            out.push(format!("host-{i} reserved by {}", mark.display()));
        }
        if let Ok(d) = std::fs::read_dir(dir.join("clusters")) {
            for e in d.flatten() {
                out.push(format!(
                    "host-{i} cluster {}",
                    e.file_name().to_string_lossy()
                ));
            }
        }
    }
    out.sort();
    out
}

/// ssh master connections still running with the servers' client key.
fn masters(servers: &Path) -> Vec<u32> {
    let key = servers.join("id_ed25519");
    support::processes_mentioning(&key)
        .into_iter()
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| c.split(|b| *b == 0).any(|a| a == b"-M"))
        })
        .collect()
}

#[test]
#[ignore = "needs sshd: run ./scripts/test.sh"]
fn a_pool_survives_a_crash_at_every_point() {
    let (dir, hosts) = support::servers::ssh_servers();
    let w = support::Workdir::new().with_home();
    w.write_config(&format!(
        r#"{}
cluster "pair" {{
  num_nodes = 2
  setup     = "echo ready"
}}

job "both" {{
  cluster   = cluster.pair
  num_nodes = 2
  run       = "true"
}}
"#,
        support::servers::pool_block("rack", &hosts, &dir)
    ));
    let world = || held(&dir, hosts.len());
    support::crash::Crashes {
        dir: &w,
        world: &world,
        kinds: &[("call", 1), ("write", 1), ("remote", 1)],
        min_points: 20,
    }
    .run();
    // The masters killed runs left end once idle (15 s), with nothing left to use them.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(40);
    while !masters(&dir).is_empty() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
    let left = masters(&dir);
    assert!(left.is_empty(), "ssh masters still running: {left:?}");
}
