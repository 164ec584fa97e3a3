//! Hosts that share one home directory (as NFS homes on lab clusters do) work with no setup
//! on the servers: skyform keys its directory on each host by the host's identity. Against
//! two OpenSSH servers of `scripts/sshd.sh` whose sessions share one home, each with its own
//! hostname and no `SKYFORM_HOST_DIR`. Ignored by a plain `cargo test`; with
//! `--include-ignored` a missing server is a failure, not a skip (a machine that does not
//! allow UTS namespaces skips with a message, and fails under CI=true).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

#[test]
#[ignore = "needs sshd: run ./scripts/test.sh"]
fn hosts_sharing_a_home_keep_apart() {
    let (dir, _) = support::servers::ssh_servers();
    let Ok(listed) = std::fs::read_to_string(dir.join("shared-hosts")) else {
        support::skip_or_fail(
            "hosts_sharing_a_home_keep_apart",
            "scripts/sshd.sh made no hosts with a shared home (unshare --uts not allowed)",
            true,
        );
        return;
    };
    let hosts: Vec<String> = listed.lines().map(|l| l.replacen(' ', ":", 1)).collect();
    let w = support::Workdir::new().with_home();
    w.write_config(&format!(
        r#"{}
cluster "pair" {{
  num_nodes = 2
}}

job "both" {{
  cluster   = cluster.pair
  num_nodes = 2
  run       = "echo rank $SKYFORM_NODE_RANK on $(hostname)"
}}
"#,
        support::servers::pool_block("lab", &hosts, &dir)
    ));
    w.ok(&["apply", "-auto-approve"]);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let logs = loop {
        let logs = w.ok(&["logs", "job.both"]);
        if logs.contains("(rank 1)") && logs.contains("(rank 0)") {
            break logs;
        }
        assert!(std::time::Instant::now() < deadline, "the job ran:\n{logs}");
        std::thread::sleep(std::time::Duration::from_millis(500));
    };
    assert!(logs.contains("rank 0 on sky-shared-"), "{logs}");
    assert!(logs.contains("rank 1 on sky-shared-"), "{logs}");
    // One directory per host in the shared home, each holding its host.
    let mut per_host: Vec<String> = std::fs::read_dir(dir.join("shared-home/.skyform/host"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().to_string())
        .collect();
    per_host.sort();
    assert_eq!(per_host.len(), 2, "{per_host:?}");
    assert!(per_host[0].starts_with("sky-shared-1-"), "{per_host:?}");
    assert!(per_host[1].starts_with("sky-shared-2-"), "{per_host:?}");
    for d in &per_host {
        let mark = dir.join(format!("shared-home/.skyform/host/{d}/reservation"));
        assert!(
            mark.symlink_metadata().is_ok(),
            "{} holds its host",
            mark.display()
        );
    }
    w.ok(&["destroy", "-auto-approve"]);
    for d in &per_host {
        let mark = dir.join(format!("shared-home/.skyform/host/{d}/reservation"));
        assert!(
            mark.symlink_metadata().is_err(),
            "{} released",
            mark.display()
        );
    }
}
