//! Jobs on GCP machines, end to end: a cluster's jobs, managed jobs the controller (a real
//! background process) launches, recovers from spot preemption and finishes, services whose
//! replicas are GCE instances, and a preempted node's job — against the project's Compute
//! Engine fake (`scripts/gce-fake.py`; the harness is `tests/support/gce.rs`), whose
//! instances are real OpenSSH servers on loopback (`scripts/sshd.sh cloud`, started by
//! `scripts/test.sh`). Ignored by a plain `cargo test`; run (`--include-ignored`) without
//! the machines or python3, a test says SKIPPED on a developer's machine and fails under
//! `CI=true`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "support/gce.rs"]
mod gce;
mod support;

use gce::Work;
use std::path::PathBuf;

/// A 2-node cluster on GCP runs a 2-node job on its machines, exactly as on AWS: workdir
/// and setup on both, ranks and private addresses, logs, exit codes, cancel, `skyform
/// ssh`, and destroy leaving neither instances nor files, processes or host keys.
#[test]
#[ignore = "needs the GCE fake's machines: run ./scripts/test.sh"]
fn a_cluster_on_gcp_runs_jobs_on_its_machines() {
    let Some(w) = Work::with(
        "a_cluster_on_gcp_runs_jobs_on_its_machines",
        &["--boot-seconds", "6"],
        &["us-central1"],
        r#"
cluster "train" {
  num_nodes = 2
  workdir   = "./code"
  setup     = "cat data.txt > setup-saw.txt"
  resources {
    instance_type = "n2-standard-8"
  }
}

job "ranks" {
  cluster   = cluster.train
  num_nodes = 2
  run       = "echo rank=$SKYFORM_NODE_RANK of=$SKYFORM_NUM_NODES ips=$(echo $SKYFORM_NODE_IPS | tr ' ' ,) saw=$(cat setup-saw.txt)"
}

job "fails" {
  cluster = cluster.train
  run     = "exit 3"
}

job "long" {
  cluster = cluster.train
  run     = "sleep 600"
}
"#,
    ) else {
        return;
    };
    w.write("code/data.txt", "the data\n");
    let out = w.ok(&["apply", "-auto-approve"]);
    assert!(
        out.contains("to accept ssh"),
        "the wait is reported:\n{out}"
    );
    let state = w.state();
    let cluster = &state["resources"]["cluster.train"];
    assert_eq!(cluster["computed"]["status"], "UP", "{cluster}");
    let private_ips: Vec<String> =
        serde_json::from_value(cluster["computed"]["private_ips"].clone()).unwrap();
    assert_eq!(private_ips.len(), 2);
    assert_ne!(private_ips[0], private_ips[1], "two machines");
    w.wait_for("job.ranks", "SUCCEEDED");
    w.wait_for("job.fails", "FAILED");
    w.wait_for("job.long", "RUNNING");
    let logs = w.ok(&["logs", "job.ranks"]);
    for rank in 0..2 {
        let want = format!(
            "(rank {rank}) rank={rank} of=2 ips={} saw=the data",
            private_ips.join(",")
        );
        assert!(logs.lines().any(|l| l == want), "{want:?} in:\n{logs}");
    }
    let config = std::fs::read_to_string(w.path().join("main.sky.hcl")).unwrap();
    let without = config.split("job \"long\"").next().unwrap().to_string();
    w.write_config(&without);
    w.ok(&["apply", "-auto-approve"]);
    let token = cluster["private"]["token"].as_str().unwrap();
    let machines = PathBuf::from(std::env::var("SKYFORM_TEST_CLOUD_DIR").unwrap());
    let on_machines = |what: &str| -> Vec<u32> {
        (1..=3)
            .flat_map(|i| {
                support::processes_mentioning(
                    &machines.join(format!("machine-{i}/skyform/clusters/{token}")),
                )
            })
            .filter(|pid| {
                std::fs::read(format!("/proc/{pid}/cmdline"))
                    .is_ok_and(|c| String::from_utf8_lossy(&c).contains(what))
            })
            .collect()
    };
    assert!(on_machines("sleep").is_empty(), "the cancelled job runs");
    let out = w.ok(&[
        "ssh",
        "cluster.train",
        "--",
        "echo",
        "on",
        "$SKYFORM_HOST_DIR",
    ]);
    assert!(out.contains("on "), "{out}");

    w.ok(&["destroy", "-auto-approve"]);
    w.fake.assert_empty();
    for i in 1..=3 {
        let left = machines.join(format!("machine-{i}/skyform/clusters/{token}"));
        assert!(!left.exists(), "{} is left", left.display());
    }
    assert!(on_machines("__agent").is_empty(), "agents still run");
    assert!(
        !w.path()
            .join(format!("home/.skyform/ssh/known_hosts.d/{token}"))
            .exists(),
        "the cluster's host keys are forgotten"
    );
}
