//! The GCP backend and the failover engine, against the project's Compute Engine fake
//! (`scripts/gce-fake.py`, one per test) whose instances are real OpenSSH servers on
//! loopback (`scripts/sshd.sh cloud`, started by `scripts/test.sh`). The fake injects GCE's
//! capacity, quota, permission and throttling errors — on the HTTP answer or inside the
//! finished operation — or hangs, for chosen calls. The tests that need the machines are
//! ignored by a plain `cargo test`; run (`--include-ignored`, as `scripts/test.sh` does)
//! without them, or without python3, a test says SKIPPED on a developer's machine and fails
//! under `CI=true`. The fake's schema test needs Google's discovery document
//! (`scripts/compute-discovery.sh`), and every test checks what the backend sent the fake
//! against it when it is there.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The servers the fake's instances become (`scripts/sshd.sh cloud`), if they are here.
fn machines(test: &str) -> Option<PathBuf> {
    let python = Command::new("python3")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !python {
        support::skip_or_fail(test, "python3 (for scripts/gce-fake.py) is missing", true);
        return None;
    }
    match std::env::var("SKYFORM_TEST_CLOUD_DIR") {
        Ok(dir) => Some(PathBuf::from(dir).join("machines")),
        Err(_) => {
            support::skip_or_fail(
                test,
                "SKYFORM_TEST_CLOUD_DIR is not set: the fake's instances need machines; run ./scripts/test.sh, or eval \"$(scripts/sshd.sh cloud 3)\" first",
                true,
            );
            None
        }
    }
}

/// The Compute Engine fake of one test; it records every call (`--record`), and what the
/// backend sent and got is checked against the discovery document when it is here.
struct Fake {
    proxy: support::servers::Proxy,
    record: tempfile::TempDir,
}

impl std::ops::Deref for Fake {
    type Target = support::servers::Proxy;
    fn deref(&self) -> &support::servers::Proxy {
        &self.proxy
    }
}

impl Fake {
    fn start(machines: Option<&Path>, options: &[&str]) -> Fake {
        let record = tempfile::tempdir().unwrap();
        let mut cmd = Command::new("python3");
        cmd.arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/gce-fake.py"))
            .arg("--record")
            .arg(record.path().join("calls.jsonl"))
            .args(["--op-seconds", "0.3"])
            .args(options);
        if let Some(m) = machines {
            cmd.arg("--machines").arg(m);
        }
        Fake {
            proxy: support::servers::Proxy::start(&mut cmd),
            record,
        }
    }

    fn recorded(&self) -> PathBuf {
        self.record.path().join("calls.jsonl")
    }

    /// The calls so far, checked against the discovery document (when it is here).
    fn check_schema(&self) {
        if let Some(doc) = discovery() {
            let (_, bad) = violations(&doc, &self.recorded());
            assert!(
                bad.is_empty(),
                "{} violations:\n{}",
                bad.len(),
                bad.join("\n")
            );
        }
    }

    fn get(&self, what: &str) -> Value {
        let out = Command::new("curl")
            .args(["-sf", &format!("{}/_fake/{what}", self.url)])
            .output()
            .unwrap();
        serde_json::from_slice(&out.stdout).unwrap()
    }

    fn rules(&self, rules: Value) {
        let status = Command::new("curl")
            .args(["-sf", "-X", "POST", "--data-binary"])
            .arg(rules.to_string())
            .arg(format!("{}/_fake/rules", self.url))
            .stdout(Stdio::null())
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// The inserts seen, in order: (zone, machine type, outcome).
    fn calls(&self) -> Vec<(String, String, String)> {
        self.get("log")
            .as_array()
            .unwrap()
            .iter()
            .map(|c| {
                let s = |k: &str| c[k].as_str().unwrap_or_default().to_string();
                (s("zone"), s("machine_type"), s("outcome"))
            })
            .collect()
    }

    /// The instances that exist: (zone, name, status).
    fn instances(&self) -> Vec<(String, String, String)> {
        self.get("instances")
            .as_array()
            .unwrap()
            .iter()
            .map(|i| {
                let s = |k: &str| i[k].as_str().unwrap_or_default().to_string();
                (s("zone"), s("name"), s("status"))
            })
            .collect()
    }

    fn firewalls(&self) -> Vec<Value> {
        self.get("firewalls").as_array().unwrap().clone()
    }

    fn assert_empty(&self) {
        assert!(self.instances().is_empty(), "{:?}", self.instances());
        assert!(self.firewalls().is_empty(), "{:?}", self.firewalls());
        self.check_schema();
    }
}

/// A configuration directory whose `infra "gcp"` is its own fake.
struct Work {
    dir: support::Workdir,
    fake: Fake,
}

impl std::ops::Deref for Work {
    type Target = support::Workdir;
    fn deref(&self) -> &support::Workdir {
        &self.dir
    }
}

impl Work {
    fn new(test: &str, regions: &[&str], body: &str) -> Option<Work> {
        Work::with(test, &[], regions, body)
    }

    fn with(test: &str, options: &[&str], regions: &[&str], body: &str) -> Option<Work> {
        let machines = machines(test)?;
        let fake = Fake::start(Some(&machines), options);
        let dir = support::Workdir::new()
            .with_home()
            .env(
                "SKYFORM_CATALOG_DIR",
                PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("testdata/catalogs"),
            )
            .env_remove("GOOGLE_APPLICATION_CREDENTIALS");
        let regions: Vec<String> = regions.iter().map(|r| format!("\"{r}\"")).collect();
        dir.write_config(&format!(
            "infra \"gcp\" {{\n  project  = \"skyform-test\"\n  endpoint = \"{}\"\n  regions  = [{}]\n}}\n{body}",
            fake.url,
            regions.join(", ")
        ));
        Some(Work { dir, fake })
    }

    fn candidates(&self) -> Vec<Value> {
        let plan: Value = serde_json::from_str(&self.ok(&["plan", "-json"])).unwrap();
        plan["resource_changes"][0]["candidates"]
            .as_array()
            .unwrap()
            .clone()
    }
}

fn zone_of(c: &Value) -> String {
    c["zone"].as_str().unwrap_or_default().to_string()
}

const SPOT_L4: &str = r#"
cluster "train" {
  resources {
    accelerators = "L4:1"
    use_spot     = true
  }
}
"#;

/// Capacity (inside the finished operation) blocks the zone, quota (on the HTTP answer)
/// the region: the walk follows the plan's list exactly, and nothing of the failed
/// attempts is left.
#[test]
#[ignore = "needs the GCE fake's machines: run ./scripts/test.sh"]
fn failover_walks_the_plan_and_blocks_zone_then_region() {
    let Some(w) = Work::new(
        "failover_walks_the_plan_and_blocks_zone_then_region",
        &["us-central1", "us-east4"],
        SPOT_L4,
    ) else {
        return;
    };
    let cands = w.candidates();
    let region = cands[0]["region"].as_str().unwrap().to_string();
    let first = zone_of(&cands[0]);
    let second = cands
        .iter()
        .map(zone_of)
        .find(|z| *z != first && z.starts_with(&region))
        .unwrap();
    let third = cands
        .iter()
        .find(|c| c["region"] != region.as_str())
        .map(zone_of)
        .unwrap();
    w.fake.rules(serde_json::json!([
        {"zone": first, "error": "ZONE_RESOURCE_POOL_EXHAUSTED"},
        {"zone": second, "error": "QUOTA_EXCEEDED", "http": true},
    ]));
    let out = w.ok(&["apply", "-auto-approve"]);
    let calls = w.fake.calls();
    let zones: Vec<&str> = calls.iter().map(|c| c.0.as_str()).collect();
    let at_second = cands.iter().position(|c| zone_of(c) == second).unwrap();
    if at_second == 1 {
        assert_eq!(
            zones,
            [first.as_str(), second.as_str(), third.as_str()],
            "{out}"
        );
    }
    assert_eq!(calls[0].1, "g2-standard-4", "{calls:?}");
    assert_eq!(calls[0].2, "ZONE_RESOURCE_POOL_EXHAUSTED");
    assert!(out.contains("Failover history"), "{out}");
    assert!(out.contains("ZONE_RESOURCE_POOL_EXHAUSTED"), "{out}");
    assert!(out.contains("quotaExceeded"), "{out}");
    let state = w.state();
    let r = &state["resources"]["cluster.train"];
    assert_eq!(r["status"], "ready", "{out}");
    assert_eq!(r["computed"]["zone"], third.as_str(), "{out}");
    // Only the winning attempt has a machine and a firewall rule.
    let live = w.fake.instances();
    assert_eq!(live.len(), 1, "{live:?}");
    assert_eq!(live[0].0, third);
    assert_eq!(w.fake.firewalls().len(), 1);
    w.ok(&["destroy", "-auto-approve"]);
    w.fake.assert_empty();
}

/// An on-demand placement names a region: its zones are tried in turn within one attempt;
/// the firewall rule opens SSH and the cluster's ports; destroy leaves the fake empty.
#[test]
#[ignore = "needs the GCE fake's machines: run ./scripts/test.sh"]
fn on_demand_tries_the_zones_of_its_region() {
    let Some(w) = Work::new(
        "on_demand_tries_the_zones_of_its_region",
        &["us-central1"],
        r#"
cluster "web" {
  num_nodes = 2
  resources {
    instance_type = "n2-standard-8"
    ports         = [8080]
    disk_size     = 64
  }
}
"#,
    ) else {
        return;
    };
    w.fake.rules(serde_json::json!([
        {"zone": "us-central1-a", "error": "ZONE_RESOURCE_POOL_EXHAUSTED_WITH_DETAILS"},
    ]));
    w.ok(&["apply", "-auto-approve"]);
    let zones: Vec<String> = w.fake.calls().into_iter().map(|c| c.0).collect();
    assert_eq!(
        zones,
        [
            "us-central1-a",
            "us-central1-a",
            "us-central1-b",
            "us-central1-b"
        ],
        "two inserts (one per node) per zone"
    );
    let live = w.fake.instances();
    assert_eq!(live.len(), 2, "both nodes: {live:?}");
    assert!(
        live.iter()
            .all(|l| l.0 == "us-central1-b" && l.2 == "RUNNING"),
        "in one zone: {live:?}"
    );
    let fw = w.fake.firewalls();
    assert_eq!(fw.len(), 1);
    assert_eq!(
        fw[0]["allowed"][0]["ports"],
        serde_json::json!(["22", "8080"])
    );
    let state = w.state();
    let r = &state["resources"]["cluster.web"];
    assert_eq!(r["computed"]["instance_ids"].as_array().unwrap().len(), 2);
    assert_eq!(r["computed"]["zone"], "us-central1-b");
    w.ok(&["destroy", "-auto-approve"]);
    w.fake.assert_empty();
}

/// Permission refused: the whole cloud is blocked after one call, and the cluster lands on
/// the next backend of the list.
#[test]
#[ignore = "needs the GCE fake's machines: run ./scripts/test.sh"]
fn a_permission_error_blocks_the_whole_cloud() {
    let Some(w) = Work::new(
        "a_permission_error_blocks_the_whole_cloud",
        &["us-central1", "us-east4"],
        r#"
infra "local" {}
cluster "dev" {
  resources {
    ordered {
      infra         = "gcp"
      instance_type = "n2-standard-8"
    }
    ordered {
      infra = "local"
    }
  }
}
"#,
    ) else {
        return;
    };
    w.fake
        .rules(serde_json::json!([{"error": "PERMISSION_DENIED", "http": true}]));
    let out = w.ok(&["apply", "-auto-approve"]);
    assert_eq!(w.fake.calls().len(), 1, "{out}");
    let state = w.state();
    assert_eq!(
        state["resources"]["cluster.dev"]["provider"], "local",
        "{out}"
    );
    w.ok(&["destroy", "-auto-approve"]);
    w.fake.assert_empty();
}

/// An insert is answered but its operation never finishes: the attempt times out, what it
/// made is found by its label and deleted, and the next region is used.
#[test]
#[ignore = "needs the GCE fake's machines: run ./scripts/test.sh"]
fn a_hung_operation_times_out_and_leaves_nothing() {
    let Some(w) = Work::new(
        "a_hung_operation_times_out_and_leaves_nothing",
        &["us-central1", "us-east4"],
        SPOT_L4,
    ) else {
        return;
    };
    let cands = w.candidates();
    let region = cands[0]["region"].as_str().unwrap().to_string();
    let zones: Vec<String> = cands
        .iter()
        .filter(|c| c["region"] == region.as_str())
        .map(zone_of)
        .collect();
    let rules: Vec<Value> = zones
        .iter()
        .map(|z| serde_json::json!({"zone": z, "hang_op": true}))
        .collect();
    w.fake.rules(Value::Array(rules));
    let t = Instant::now();
    let out = w.ok(&["apply", "-auto-approve", "-attempt-timeout=5s"]);
    assert!(t.elapsed() < Duration::from_secs(120), "{out}");
    assert!(out.contains("no answer within 5s"), "{out}");
    let state = w.state();
    let r = &state["resources"]["cluster.train"];
    assert_eq!(r["status"], "ready", "{out}");
    assert_ne!(r["placement"]["offering"]["region"], region.as_str());
    let live = w.fake.instances();
    assert!(
        live.iter().all(|l| !l.0.starts_with(&region)),
        "the hung zone's instance is deleted: {live:?}"
    );
    w.ok(&["destroy", "-auto-approve"]);
    w.fake.assert_empty();
}

/// skyform killed between the inserts and its state write: the next plan adopts the
/// instances (their setup never ran: INIT) and no second set is made.
#[test]
#[ignore = "needs the GCE fake's machines: run ./scripts/test.sh"]
fn kill_9_mid_launch_then_apply_adopts() {
    let Some(w) = Work::new(
        "kill_9_mid_launch_then_apply_adopts",
        &["us-central1"],
        r#"
cluster "train" {
  num_nodes = 2
  resources {
    instance_type = "n2-standard-8"
  }
}
"#,
    ) else {
        return;
    };
    // The first node's insert is answered; the second is made but its answer never comes.
    w.fake.rules(serde_json::json!([
        {"method": "insert", "times": 1},
        {"hang_after": true},
    ]));
    let mut child = w
        .command(&["apply", "-auto-approve", "-attempt-timeout=10m"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let t = Instant::now();
    while w.fake.calls().len() < 2 {
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "the inserts never came"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // Let the fake finish the operations, then kill skyform.
    std::thread::sleep(Duration::from_millis(800));
    child.kill().unwrap();
    child.wait().unwrap();
    w.fake.rules(serde_json::json!([]));
    let made = w.fake.instances();
    assert_eq!(made.len(), 2, "{made:?}");

    // Adopted, and set up in place (its runtime never started): SkyPilot's INIT.
    let plan = w.ok(&["plan"]);
    assert!(plan.contains("adopted"), "{plan}");
    assert!(plan.contains("its setup did not finish"), "{plan}");
    w.ok(&["apply", "-auto-approve"]);
    let plan = w.ok(&["plan"]);
    assert!(plan.contains("No changes"), "{plan}");
    let after: Vec<_> = w.fake.instances().into_iter().map(|i| i.1).collect();
    let before: Vec<_> = made.into_iter().map(|i| i.1).collect();
    assert_eq!(after, before, "the same machines, no second set");
    w.ok(&["destroy", "-auto-approve"]);
    w.fake.assert_empty();
}

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

/// stop keeps the machines (TERMINATED, as GCE calls a stopped instance), start runs them
/// and the runtime again.
#[test]
#[ignore = "needs the GCE fake's machines: run ./scripts/test.sh"]
fn stop_and_start_keep_the_machines() {
    let Some(w) = Work::new(
        "stop_and_start_keep_the_machines",
        &["us-central1"],
        r#"
cluster "dev" {
  resources {
    instance_type = "n2-standard-8"
  }
}
"#,
    ) else {
        return;
    };
    w.ok(&["apply", "-auto-approve"]);
    let before = w.fake.instances();
    w.ok(&["stop", "cluster.dev"]);
    let stopped = w.fake.instances();
    assert_eq!(stopped.len(), 1);
    assert_eq!(stopped[0].2, "TERMINATED");
    assert_eq!(w.status_of("cluster.dev"), "STOPPED");
    w.ok(&["start", "cluster.dev"]);
    let after = w.fake.instances();
    assert_eq!(after[0].1, before[0].1, "the same instance");
    assert_eq!(after[0].2, "RUNNING");
    let plan = w.ok(&["plan"]);
    assert!(plan.contains("No changes"), "{plan}");
    w.ok(&["destroy", "-auto-approve"]);
    w.fake.assert_empty();
}

/// The GCP backend passes the provider conformance suite.
#[tokio::test]
#[ignore = "needs the GCE fake's machines: run ./scripts/test.sh"]
async fn gcp_backend_conforms() {
    use skyform::providers::conformance::{self, Fixture};
    use skyform::providers::gcp::{GcpProvider, GcpSettings};
    let Some(w) = Work::new("gcp_backend_conforms", &["us-central1"], SPOT_L4) else {
        return;
    };
    w.ok(&["plan", "-out=plan.json"]);
    let saved: skyform::plan::Plan =
        serde_json::from_slice(&std::fs::read(w.path().join("plan.json")).unwrap()).unwrap();
    let change = &saved.changes[0];
    let mut p = GcpProvider::new(
        GcpSettings {
            project: Some("skyform-test".into()),
            endpoint: Some(w.fake.url.clone()),
            ..GcpSettings::default()
        },
        w.path().join("home/.skyform/ssh"),
    );
    // The agent installed on the machines is skyform, not this test program.
    p.agent_exe = PathBuf::from(support::BIN);
    p.poll = Duration::from_millis(200);
    let mut spec = change.after.as_deref().cloned().unwrap();
    if let skyform::model::Spec::Cluster(c) = &mut spec {
        c.num_nodes = 2;
    }
    let mut placement = change.candidates[0].clone();
    placement.num_nodes = 2;
    conformance::run(
        &p,
        &Fixture {
            address: change.address.clone(),
            spec,
            placement: Some(placement),
            root: w.path().to_path_buf(),
            lineage: "conformance".into(),
        },
    )
    .await;
    w.fake.assert_empty();
}

/// Google's discovery document for compute v1 (`scripts/compute-discovery.sh` fetches it).
fn discovery() -> Option<Value> {
    let path = std::env::var("SKYFORM_TEST_COMPUTE_DISCOVERY").ok()?;
    serde_json::from_slice(&std::fs::read(path).ok()?).ok()
}

/// A discovery schema as JSON Schema: `$ref`s into `definitions`, int64 as digit strings,
/// enums kept, and no property GCE's schema lacks (that is the drift this finds).
fn json_schema(s: &Value) -> Value {
    if let Some(r) = s.get("$ref").and_then(Value::as_str) {
        return serde_json::json!({"$ref": format!("#/definitions/{r}")});
    }
    let mut out = serde_json::Map::new();
    match s.get("type").and_then(Value::as_str) {
        Some("object") => {
            out.insert("type".into(), "object".into());
            if let Some(props) = s.get("properties").and_then(Value::as_object) {
                let p: serde_json::Map<String, Value> = props
                    .iter()
                    .map(|(k, v)| (k.clone(), json_schema(v)))
                    .collect();
                out.insert("properties".into(), Value::Object(p));
            }
            out.insert(
                "additionalProperties".into(),
                s.get("additionalProperties")
                    .map_or(Value::Bool(false), json_schema),
            );
        }
        Some("array") => {
            out.insert("type".into(), "array".into());
            if let Some(items) = s.get("items") {
                out.insert("items".into(), json_schema(items));
            }
        }
        Some("string") => {
            out.insert("type".into(), "string".into());
            if matches!(
                s.get("format").and_then(Value::as_str),
                Some("int64" | "uint64")
            ) {
                out.insert("pattern".into(), "^-?[0-9]+$".into());
            }
            if let Some(e) = s.get("enum") {
                out.insert("enum".into(), e.clone());
            }
        }
        Some(t @ ("integer" | "number" | "boolean")) => {
            out.insert("type".into(), t.into());
        }
        _ => {}
    }
    Value::Object(out)
}

/// Every method of the discovery document by id: (path template, request schema, response
/// schema).
fn methods(
    doc: &Value,
) -> std::collections::BTreeMap<String, (String, Option<String>, Option<String>)> {
    let mut out = std::collections::BTreeMap::new();
    for r in doc["resources"].as_object().unwrap().values() {
        for m in r["methods"]
            .as_object()
            .into_iter()
            .flat_map(|m| m.values())
        {
            let name = |k: &str| m[k]["$ref"].as_str().map(str::to_string);
            out.insert(
                m["id"].as_str().unwrap_or_default().to_string(),
                (
                    m["path"].as_str().unwrap_or_default().to_string(),
                    name("request"),
                    name("response"),
                ),
            );
        }
    }
    out
}

/// Checks what a fake recorded (`--record`) against the discovery document: every call it
/// accepted is a method of compute v1 at that method's path, with a request body of the
/// method's schema, and every answer it gave is of the method's response schema. Answers
/// the violations.
fn violations(doc: &Value, record: &Path) -> (usize, Vec<String>) {
    let definitions: serde_json::Map<String, Value> = doc["schemas"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), json_schema(v)))
        .collect();
    let methods = methods(doc);
    let mut validators = std::collections::BTreeMap::new();
    let mut check = |schema: &str, v: &Value, what: &str, bad: &mut Vec<String>| {
        let validator = validators.entry(schema.to_string()).or_insert_with(|| {
            jsonschema::draft202012::new(&serde_json::json!({
                "$ref": format!("#/definitions/{schema}"),
                "definitions": definitions,
            }))
            .unwrap()
        });
        for e in validator.iter_errors(v) {
            bad.push(format!("{what} ({schema}): {e} at {}", e.instance_path()));
        }
    };
    let mut bad = Vec::new();
    let text = std::fs::read_to_string(record).unwrap_or_default();
    let mut n = 0;
    for line in text.lines() {
        let call: Value = serde_json::from_str(line).unwrap();
        let path = call["path"].as_str().unwrap_or_default();
        let Some(id) = call["method"].as_str() else {
            // An error answer: GCE's error shape.
            let e = &call["response"]["error"];
            if !(e["code"].is_u64() && e["message"].is_string() && e["errors"].is_array()) {
                bad.push(format!(
                    "{path}: not GCE's error shape: {}",
                    call["response"]
                ));
            }
            continue;
        };
        n += 1;
        let Some((template, request, response)) = methods.get(id) else {
            bad.push(format!("{path}: {id} is no method of compute v1"));
            continue;
        };
        let path_ok = path_matches(&format!("/compute/v1/{template}"), path);
        if !path_ok {
            bad.push(format!("{path} is not the path of {id} ({template})"));
        }
        // The client sends `{}` with a POST that takes no body, as GCE accepts.
        let no_body = call["request"].is_null() || call["request"] == serde_json::json!({});
        match (request, no_body) {
            (Some(schema), false) => {
                check(schema, &call["request"], &format!("{id} request"), &mut bad)
            }
            (Some(_), true) => bad.push(format!("{id}: no request body")),
            (None, false) => bad.push(format!("{id}: takes no request body")),
            (None, true) => {}
        }
        if let Some(schema) = response {
            check(
                schema,
                &call["response"],
                &format!("{id} response"),
                &mut bad,
            );
        }
    }
    (n, bad)
}

/// Whether `path` is an instance of a discovery path template (`{param}` segments).
fn path_matches(template: &str, path: &str) -> bool {
    let want: Vec<&str> = template.split('/').collect();
    let got: Vec<&str> = path.split('/').collect();
    want.len() == got.len()
        && want
            .iter()
            .zip(&got)
            .all(|(w, g)| (w.starts_with('{') && !g.is_empty()) || w == g)
}

/// One call to the fake with curl: the answer's body.
fn call(fake: &Fake, method: &str, path: &str, body: Option<&Value>) -> Value {
    let mut c = Command::new("curl");
    c.args([
        "-s",
        "-X",
        method,
        &format!("{}/compute/v1/{path}", fake.url),
    ]);
    if let Some(b) = body {
        c.args(["-H", "Content-Type: application/json", "--data-binary"])
            .arg(b.to_string());
    }
    let out = c.output().unwrap();
    serde_json::from_slice(&out.stdout).unwrap_or(Value::Null)
}

/// The fake's schema test: a session over every call the fake accepts (each mutation's
/// operation followed to DONE, an injected failure inside an operation, errors on the
/// answer) and the calls the GCP backend itself makes, all checked against the discovery
/// document's schemas.
#[test]
fn the_fake_answers_as_compute_v1_says() {
    let test = "the_fake_answers_as_compute_v1_says";
    let Some(doc) = discovery() else {
        support::skip_or_fail(
            test,
            "SKYFORM_TEST_COMPUTE_DISCOVERY is not set (or unreadable): eval \"$(scripts/compute-discovery.sh)\" first",
            true,
        );
        return;
    };
    let fake = Fake::start(None, &["--op-seconds", "0.2"]);
    let record = fake.recorded();
    let p = "projects/skyform-test";
    let z = "us-central1-a";
    let wait = |op: &Value| {
        let name = op["name"].as_str().unwrap();
        match op["zone"].as_str() {
            Some(zone) => {
                let zone = zone.rsplit('/').next().unwrap();
                call(
                    &fake,
                    "GET",
                    &format!("{p}/zones/{zone}/operations/{name}"),
                    None,
                );
                call(
                    &fake,
                    "POST",
                    &format!("{p}/zones/{zone}/operations/{name}/wait"),
                    None,
                )
            }
            None => {
                call(&fake, "GET", &format!("{p}/global/operations/{name}"), None);
                call(
                    &fake,
                    "POST",
                    &format!("{p}/global/operations/{name}/wait"),
                    None,
                )
            }
        }
    };
    call(&fake, "GET", &format!("{p}/zones"), None);
    call(&fake, "GET", &format!("{p}/zones/{z}"), None);
    call(
        &fake,
        "GET",
        "projects/ubuntu-os-cloud/global/images/family/ubuntu-2204-lts",
        None,
    );
    call(
        &fake,
        "GET",
        "projects/ubuntu-os-cloud/global/images/ubuntu-2204-jammy-v20250805",
        None,
    );
    call(
        &fake,
        "GET",
        "projects/ubuntu-os-cloud/global/images/missing-image",
        None,
    );
    let fw = serde_json::json!({
        "name": "skyform-web-0123abcd", "network": "global/networks/default",
        "direction": "INGRESS", "allowed": [{"IPProtocol": "tcp", "ports": ["22", "8080"]}],
        "sourceRanges": ["0.0.0.0/0"], "targetTags": ["skyform-web-0123abcd"],
        "description": "skyform cluster"
    });
    let op = call(
        &fake,
        "POST",
        &format!("{p}/global/firewalls?requestId=7f2c8a4e-1111-4222-8333-944455556666"),
        Some(&fw),
    );
    assert_eq!(wait(&op)["status"], "DONE");
    call(&fake, "POST", &format!("{p}/global/firewalls"), Some(&fw)); // 409
    call(
        &fake,
        "GET",
        &format!("{p}/global/firewalls/skyform-web-0123abcd"),
        None,
    );
    call(&fake, "GET", &format!("{p}/global/firewalls"), None);
    let instance = |name: &str, zone: &str| {
        serde_json::json!({
            "name": name,
            "description": "skyform cluster.web node 0",
            "machineType": format!("zones/{zone}/machineTypes/n1-highmem-4"),
            "disks": [{"boot": true, "autoDelete": true, "initializeParams": {
                "sourceImage": "projects/ubuntu-os-cloud/global/images/family/ubuntu-2204-lts",
                "diskSizeGb": "64", "diskType": format!("zones/{zone}/diskTypes/pd-balanced")}}],
            "networkInterfaces": [{"network": "global/networks/default",
                "accessConfigs": [{"name": "External NAT", "type": "ONE_TO_ONE_NAT"}]}],
            "labels": {"skyform-token": "0123abcd", "skyform-lineage": "conformance",
                       "skyform-address": "cluster_web"},
            "metadata": {"items": [{"key": "ssh-keys", "value": "ubuntu:ssh-ed25519 AAAA skyform"},
                                   {"key": "skyform-address", "value": "cluster.web"}]},
            "tags": {"items": ["skyform-web-0123abcd"]},
            "scheduling": {"provisioningModel": "SPOT", "instanceTerminationAction": "DELETE",
                           "automaticRestart": false, "onHostMaintenance": "TERMINATE"},
            "guestAccelerators": [{"acceleratorType": format!("zones/{zone}/acceleratorTypes/nvidia-tesla-t4"),
                                   "acceleratorCount": 1}]
        })
    };
    let rid = "requestId=0b5e4b8e-2222-4333-8444-955566667777";
    let op = call(
        &fake,
        "POST",
        &format!("{p}/zones/{z}/instances?{rid}"),
        Some(&instance("skyform-web-0123abcd-0", z)),
    );
    call(
        &fake,
        "POST",
        &format!("{p}/zones/{z}/instances?{rid}"),
        Some(&instance("skyform-web-0123abcd-0", z)),
    );
    assert_eq!(wait(&op)["status"], "DONE");
    call(
        &fake,
        "POST",
        &format!("{p}/zones/{z}/instances"),
        Some(&serde_json::json!({"name": "Bad Name"})),
    );
    let got = call(
        &fake,
        "GET",
        &format!("{p}/zones/{z}/instances/skyform-web-0123abcd-0"),
        None,
    );
    assert_eq!(got["status"], "RUNNING", "{got}");
    call(
        &fake,
        "GET",
        &format!("{p}/zones/{z}/instances/nothing-here"),
        None,
    );
    call(
        &fake,
        "GET",
        &format!("{p}/zones/{z}/instances?filter=labels.skyform-token%20%3D%20%220123abcd%22"),
        None,
    );
    call(
        &fake,
        "GET",
        &format!("{p}/aggregated/instances?filter=labels.skyform-token%20%3D%20%220123abcd%22"),
        None,
    );
    let labels = serde_json::json!({"labels": {"skyform-token": "0123abcd", "team": "ml"},
                                    "labelFingerprint": got["labelFingerprint"]});
    wait(&call(
        &fake,
        "POST",
        &format!("{p}/zones/{z}/instances/skyform-web-0123abcd-0/setLabels"),
        Some(&labels),
    ));
    let meta = serde_json::json!({"fingerprint": got["metadata"]["fingerprint"],
                                  "items": [{"key": "ssh-keys", "value": "ubuntu:ssh-ed25519 BBBB other"}]});
    wait(&call(
        &fake,
        "POST",
        &format!("{p}/zones/{z}/instances/skyform-web-0123abcd-0/setMetadata"),
        Some(&meta),
    ));
    call(
        &fake,
        "POST",
        &format!("{p}/zones/{z}/instances/skyform-web-0123abcd-0/setMetadata"),
        Some(&meta),
    ); // 412
    wait(&call(
        &fake,
        "POST",
        &format!("{p}/zones/{z}/instances/skyform-web-0123abcd-0/stop"),
        None,
    ));
    wait(&call(
        &fake,
        "POST",
        &format!("{p}/zones/{z}/instances/skyform-web-0123abcd-0/start"),
        None,
    ));
    // A zone without capacity says so in the finished operation; quota on the answer.
    fake.rules(serde_json::json!([
        {"zone": "us-central1-b", "error": "ZONE_RESOURCE_POOL_EXHAUSTED"},
        {"zone": "us-central1-c", "error": "QUOTA_EXCEEDED", "http": true},
    ]));
    let failed = wait(&call(
        &fake,
        "POST",
        &format!("{p}/zones/us-central1-b/instances"),
        Some(&instance("x-1", "us-central1-b")),
    ));
    assert_eq!(
        failed["error"]["errors"][0]["code"], "ZONE_RESOURCE_POOL_EXHAUSTED",
        "{failed}"
    );
    let refused = call(
        &fake,
        "POST",
        &format!("{p}/zones/us-central1-c/instances"),
        Some(&instance("x-2", "us-central1-c")),
    );
    assert_eq!(refused["error"]["code"], 403, "{refused}");
    wait(&call(
        &fake,
        "DELETE",
        &format!("{p}/zones/{z}/instances/skyform-web-0123abcd-0"),
        None,
    ));
    wait(&call(
        &fake,
        "DELETE",
        &format!("{p}/global/firewalls/skyform-web-0123abcd"),
        None,
    ));
    call(
        &fake,
        "DELETE",
        &format!("{p}/global/firewalls/skyform-web-0123abcd"),
        None,
    ); // 404
    fake.assert_empty();

    let (n, bad) = violations(&doc, &record);
    assert!(n >= 20, "only {n} calls recorded");
    assert!(
        bad.is_empty(),
        "{} violations:\n{}",
        bad.len(),
        bad.join("\n")
    );
    let seen: std::collections::BTreeSet<String> = std::fs::read_to_string(&record)
        .unwrap()
        .lines()
        .filter_map(|l| {
            serde_json::from_str::<Value>(l).ok()?["method"]
                .as_str()
                .map(str::to_string)
        })
        .collect();
    for id in [
        "compute.instances.insert",
        "compute.instances.get",
        "compute.instances.list",
        "compute.instances.aggregatedList",
        "compute.instances.delete",
        "compute.instances.start",
        "compute.instances.stop",
        "compute.instances.setLabels",
        "compute.instances.setMetadata",
        "compute.zoneOperations.get",
        "compute.zoneOperations.wait",
        "compute.globalOperations.get",
        "compute.globalOperations.wait",
        "compute.firewalls.insert",
        "compute.firewalls.get",
        "compute.firewalls.delete",
        "compute.firewalls.list",
        "compute.images.get",
        "compute.images.getFromFamily",
        "compute.zones.list",
        "compute.zones.get",
    ] {
        assert!(seen.contains(id), "{id} was not exercised");
    }
}

/// GCP exhausted in every zone it is planned in: the cluster lands on AWS (moto behind
/// `scripts/ec2-proxy.py`), in the planned order, and nothing is left on GCP.
#[test]
#[ignore = "needs the GCE fake's machines: run ./scripts/test.sh"]
fn gcp_exhausted_everywhere_lands_on_aws() {
    let test = "gcp_exhausted_everywhere_lands_on_aws";
    let Some(machines) = machines(test) else {
        return;
    };
    let Ok(moto) = std::env::var("SKYFORM_TEST_MOTO_ENDPOINT") else {
        support::skip_or_fail(
            test,
            "SKYFORM_TEST_MOTO_ENDPOINT is not set: run ./scripts/test.sh, or eval \"$(scripts/moto.sh start)\" first",
            true,
        );
        return;
    };
    let fake = Fake::start(Some(&machines), &[]);
    let account = uuid::Uuid::new_v4().as_u128() % 900_000_000_000 + 100_000_000_000;
    let ec2 = support::servers::Proxy::start(
        Command::new("python3")
            .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/ec2-proxy.py"))
            .arg(&moto)
            .args(["--account", &account.to_string()])
            .arg("--machines")
            .arg(&machines),
    );
    let w = support::Workdir::new()
        .with_home()
        .env(
            "SKYFORM_CATALOG_DIR",
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("testdata/catalogs"),
        )
        .env("AWS_ACCESS_KEY_ID", "testing")
        .env("AWS_SECRET_ACCESS_KEY", "testing")
        .env_remove("AWS_PROFILE")
        .env_remove("AWS_ENDPOINT_URL");
    w.write_config(&format!(
        r#"infra "gcp" {{
  project  = "skyform-test"
  endpoint = "{}"
  regions  = ["us-central1", "us-east4"]
}}
infra "aws" {{
  endpoint = "{}"
  regions  = ["us-east-1"]
}}
cluster "train" {{
  resources {{
    cpus = "8+"
  }}
}}
"#,
        fake.url, ec2.url
    ));
    let plan: Value = serde_json::from_str(&w.ok(&["plan", "-json"])).unwrap();
    let cands = plan["resource_changes"][0]["candidates"]
        .as_array()
        .unwrap()
        .clone();
    let first_aws = cands.iter().position(|c| c["cloud"] == "aws").unwrap();
    assert!(first_aws > 0, "GCP is planned first: {cands:?}");
    fake.rules(serde_json::json!([{"error": "ZONE_RESOURCE_POOL_EXHAUSTED"}]));
    let out = w.ok(&["apply", "-auto-approve"]);
    let state = w.state();
    let r = &state["resources"]["cluster.train"];
    assert_eq!(r["provider"], "aws", "{out}");
    assert_eq!(
        r["placement"]["offering"]["instance_type"], cands[first_aws]["instance_type"],
        "{out}"
    );
    // Every GCP placement before it was tried, in order, zone by zone.
    let tried: Vec<(String, String)> = fake
        .calls()
        .into_iter()
        .map(|c| (c.0.rsplit_once('-').unwrap().0.to_string(), c.1))
        .collect();
    let mut planned: Vec<(String, String)> = cands[..first_aws]
        .iter()
        .map(|c| {
            (
                c["region"].as_str().unwrap().to_string(),
                c["instance_type"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    planned.dedup();
    let mut seen = tried.clone();
    seen.dedup();
    assert_eq!(seen, planned, "{out}");
    assert!(tried.iter().all(|t| !t.1.is_empty()), "{tried:?}");
    fake.assert_empty();
    w.ok(&["destroy", "-auto-approve"]);
}

/// Waits until every instance of the fake is in `want`.
fn wait_for_instances(fake: &Fake, want: &str) {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let states: Vec<String> = fake.instances().into_iter().map(|i| i.2).collect();
        if !states.is_empty() && states.iter().all(|s| s == want) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "instances are {states:?}, not {want}"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// Autostop on GCE: the idle head shuts the nodes down from inside, GCE stops them
/// (TERMINATED, disks kept), `start` brings the cluster back; with `down = true` the next
/// plan replaces the stopped cluster, and destroy removes it.
#[test]
#[ignore = "needs the GCE fake's machines: run ./scripts/test.sh"]
fn autostop_stops_the_instances() {
    let Some(mut w) = Work::new(
        "autostop_stops_the_instances",
        &["us-central1"],
        r#"
cluster "idle" {
  num_nodes = 2
  resources {
    instance_type = "n2-standard-8"
  }
  autostop {
    idle_minutes = 2
  }
}

job "j" {
  cluster = cluster.idle
  run     = "sleep 1"
}
"#,
    ) else {
        return;
    };
    // Autostop's minutes are seconds here.
    w.dir = std::mem::take(&mut w.dir).env("SKYFORM_IDLE_MINUTE", "1");
    w.ok(&["apply", "-auto-approve"]);
    wait_for_instances(&w.fake, "TERMINATED");
    assert_eq!(
        w.status_of("job.j"),
        "SUCCEEDED",
        "a running job kept it up"
    );
    let plan = w.ok(&["plan"]);
    assert!(plan.contains("No changes"), "{plan}");
    assert_eq!(w.status_of("cluster.idle"), "STOPPED");
    w.ok(&["start", "cluster.idle"]);
    wait_for_instances(&w.fake, "RUNNING");
    let state = w.state();
    assert_ne!(
        state["resources"]["cluster.idle"]["private"]["build"],
        Value::Null,
        "{state}"
    );
    w.ok(&["destroy", "-auto-approve"]);
    w.fake.assert_empty();

    let config = std::fs::read_to_string(w.path().join("main.sky.hcl")).unwrap();
    w.write_config(&config.replace(
        "idle_minutes = 2",
        "idle_minutes = 2\n    down         = true",
    ));
    w.ok(&["apply", "-auto-approve"]);
    wait_for_instances(&w.fake, "TERMINATED");
    let plan = w.ok(&["plan"]);
    assert!(plan.contains("autostopped with down = true"), "{plan}");
    w.ok(&["destroy", "-auto-approve"]);
    w.fake.assert_empty();
}
