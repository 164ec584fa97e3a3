//! The GCP backend and the failover engine, against the project's Compute Engine fake
//! (`scripts/gce-fake.py`, one per test; the harness is `tests/support/gce.rs`) whose
//! instances are real OpenSSH servers on loopback (`scripts/sshd.sh cloud`, started by
//! `scripts/test.sh`). The fake injects GCE's capacity, quota, permission and throttling
//! errors — on the HTTP answer or inside the finished operation — or hangs, for chosen
//! calls. The tests are ignored by a plain `cargo test`; run (`--include-ignored`, as
//! `scripts/test.sh` does) without the machines, or without python3, a test says SKIPPED on
//! a developer's machine and fails under `CI=true`. What the backend sent the fake and got
//! is checked against Google's discovery document when it is here (the fake's own schema
//! test is `tests/gcp_fake.rs`; jobs, managed jobs and services are `tests/gcp_jobs.rs`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "support/gce.rs"]
mod gce;
mod support;

use gce::{Fake, SPOT_L4, Work, machines, wait_for_instances, zone_of};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

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

/// Killed after every backend call, every state write and every GCE call that changes
/// something (the firewall rule, each instance) of an apply and of a destroy, and then at
/// random moments, the same command again converges: the declared instances and their rule
/// after apply, nothing after destroy (tests/support/crash.rs).
#[test]
#[ignore = "needs the GCE fake's machines: run ./scripts/test.sh"]
fn a_crash_at_every_point_converges() {
    let Some(w) = Work::new(
        "a_crash_at_every_point_converges",
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
    let world = || {
        let mut out: Vec<String> = w
            .fake
            .instances()
            .into_iter()
            .map(|(zone, name, status)| format!("instance {zone}/{name} {status}"))
            .collect();
        out.extend(
            w.fake
                .firewalls()
                .iter()
                .map(|f| format!("firewall {}", f["name"].as_str().unwrap_or_default())),
        );
        out.sort();
        out
    };
    support::crash::Crashes {
        dir: &w,
        world: &world,
        kinds: &[("call", 1), ("write", 1), ("cloud", 1)],
        min_points: 10,
    }
    .run();
    w.fake.check_schema();
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
