//! One scenario for every cloud backend: a 2-node cluster runs what a cluster runs, on the
//! cloud's machines (the fakes' instances are sshd hosts whose homes are
//! `$SKYFORM_TEST_CLOUD_DIR/machine-N`, made by `scripts/sshd.sh cloud`). A backend's test
//! writes `config(…)` under its own `infra` block, calls `runs_jobs`, destroys, checks its
//! cloud is empty and calls `left_nothing`.
#![allow(clippy::unwrap_used)]

use super::Workdir;
use serde_json::Value;
use std::path::PathBuf;

/// A 2-node cluster of `instance_type` with a workdir and setup, a 2-node job that prints
/// what it sees, a job that fails with 3 and one that would run for ten minutes.
pub fn config(instance_type: &str) -> String {
    format!(
        r#"
cluster "train" {{
  num_nodes = 2
  workdir   = "./code"
  setup     = "cat data.txt > setup-saw.txt"
  resources {{
    instance_type = "{instance_type}"
  }}
}}

job "ranks" {{
  cluster   = cluster.train
  num_nodes = 2
  run       = "echo rank=$SKYFORM_NODE_RANK of=$SKYFORM_NUM_NODES ips=$(echo $SKYFORM_NODE_IPS | tr ' ' ,) saw=$(cat setup-saw.txt)"
}}

job "fails" {{
  cluster = cluster.train
  run     = "exit 3"
}}

job "long" {{
  cluster = cluster.train
  run     = "sleep 600"
}}
"#
    )
}

/// Applies `config`: apply says it waits for ssh; workdir and setup reach both nodes; the
/// 2-node job sees its rank and the nodes' private addresses, and logs come from each node;
/// the exit code reaches status; removing a job from the configuration stops it on its
/// machine; `skyform ssh` reaches the head. Returns the cluster's token.
pub fn runs_jobs(w: &Workdir) -> String {
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
    let listed: Value = serde_json::from_str(&w.ok(&["status", "-json"])).unwrap();
    let fails = listed
        .as_array()
        .and_then(|a| a.iter().find(|j| j["address"] == "job.fails"))
        .cloned()
        .unwrap_or_default();
    assert_eq!(fails["exit_code"], 3, "{listed}");

    // Cancel by removing the job from the configuration: it stops on its machine.
    let config = std::fs::read_to_string(w.path().join("main.sky.hcl")).unwrap();
    let without = config.split("job \"long\"").next().unwrap().to_string();
    w.write_config(&without);
    w.ok(&["apply", "-auto-approve"]);
    let token = cluster["private"]["token"].as_str().unwrap().to_string();
    let sleeping = on_machines(&token, "sleep");
    assert!(
        sleeping.is_empty(),
        "the cancelled job still runs: {sleeping:?}"
    );

    // skyform ssh reaches the head with the cluster's own known_hosts.
    let out = w.ok(&[
        "ssh",
        "cluster.train",
        "--",
        "echo",
        "on",
        "$SKYFORM_HOST_DIR",
    ]);
    assert!(out.contains("on "), "{out}");
    token
}

/// After destroy: no file of the cluster on any machine, no agent running, and its host
/// keys forgotten.
pub fn left_nothing(w: &Workdir, token: &str) {
    let machines = machines();
    for i in 1..=3 {
        let left = machines.join(format!("machine-{i}/skyform/clusters/{token}"));
        assert!(!left.exists(), "{} is left", left.display());
    }
    let agents = on_machines(token, "__agent");
    assert!(agents.is_empty(), "agents still run: {agents:?}");
    assert!(
        !w.path()
            .join(format!("home/.skyform/ssh/known_hosts.d/{token}"))
            .exists(),
        "the cluster's host keys are forgotten"
    );
}

fn machines() -> PathBuf {
    PathBuf::from(std::env::var("SKYFORM_TEST_CLOUD_DIR").expect("SKYFORM_TEST_CLOUD_DIR"))
}

/// The processes on the machines that run in the cluster's directory and whose command line
/// mentions `what`.
fn on_machines(token: &str, what: &str) -> Vec<u32> {
    let machines = machines();
    (1..=3)
        .flat_map(|i| {
            super::processes_mentioning(
                &machines.join(format!("machine-{i}/skyform/clusters/{token}")),
            )
        })
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| String::from_utf8_lossy(&c).contains(what))
        })
        .collect()
}
