//! The AWS backend and the failover engine, against moto's real EC2 server on loopback
//! (`scripts/moto.sh`, started by `scripts/test.sh`) behind `scripts/ec2-proxy.py`, which
//! gives each test its own moto account and injects EC2's capacity, quota, auth and
//! throttling errors, or hangs, for chosen requests. Ignored by a plain `cargo test`; with
//! `--include-ignored` a missing moto is a failure, not a skip.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use aws_sdk_ec2 as ec2;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn moto() -> String {
    std::env::var("SKYFORM_TEST_MOTO_ENDPOINT").expect(
        "SKYFORM_TEST_MOTO_ENDPOINT is not set: these tests need moto; run ./scripts/test.sh, \
         or eval \"$(scripts/moto.sh start)\" first",
    )
}

/// The servers that moto's instances become (`scripts/sshd.sh cloud`): `ADDRESS DIR` lines.
fn machines() -> PathBuf {
    let dir = std::env::var("SKYFORM_TEST_CLOUD_DIR").expect(
        "SKYFORM_TEST_CLOUD_DIR is not set: these tests need machines behind moto's instances; \
         run ./scripts/test.sh, or eval \"$(scripts/sshd.sh cloud 3)\" first",
    );
    PathBuf::from(dir).join("machines")
}

/// The fault-injecting proxy in front of moto, with a moto account of its own.
struct Proxy(support::servers::Proxy);

impl std::ops::Deref for Proxy {
    type Target = support::servers::Proxy;
    fn deref(&self) -> &support::servers::Proxy {
        &self.0
    }
}

impl Proxy {
    fn start() -> Proxy {
        Proxy::start_with(&[])
    }

    /// With more options of the proxy (`--boot-seconds N`, …).
    fn start_with(options: &[&str]) -> Proxy {
        // A fresh 12-digit account per test (never moto's default 123456789012).
        let n = uuid::Uuid::new_v4().as_u128() % 900_000_000_000 + 100_000_000_000;
        Proxy(support::servers::Proxy::start(
            Command::new("python3")
                .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/ec2-proxy.py"))
                .arg(moto())
                .args(["--account", &n.to_string()])
                .arg("--machines")
                .arg(machines())
                .args(options),
        ))
    }

    fn rules(&self, rules: Value) {
        let status = Command::new("curl")
            .args(["-sf", "-X", "POST", "--data-binary"])
            .arg(rules.to_string())
            .arg(format!("{}/_proxy/rules", self.url))
            .stdout(Stdio::null())
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// The RunInstances calls seen, in order: (zone, instance type, outcome).
    fn calls(&self) -> Vec<(String, String, String)> {
        let out = Command::new("curl")
            .args(["-sf", &format!("{}/_proxy/log", self.url)])
            .output()
            .unwrap();
        let log: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
        log.iter()
            .map(|c| {
                let s = |k: &str| c[k].as_str().unwrap_or_default().to_string();
                (s("zone"), s("instance_type"), s("outcome"))
            })
            .collect()
    }

    fn client(&self, region: &str) -> ec2::Client {
        let conf = ec2::config::Builder::new()
            .behavior_version(ec2::config::BehaviorVersion::latest())
            .region(ec2::config::Region::new(region.to_string()))
            .endpoint_url(&self.url)
            .credentials_provider(ec2::config::Credentials::new(
                "testing", "testing", None, None, "test",
            ))
            .build();
        ec2::Client::from_conf(conf)
    }

    /// Instances not terminated in `region`: (id, zone, skyform:token tag).
    async fn live(&self, region: &str) -> Vec<(String, String, String)> {
        let out = self
            .client(region)
            .describe_instances()
            .send()
            .await
            .unwrap();
        let mut v: Vec<_> = out
            .reservations()
            .iter()
            .flat_map(|r| r.instances())
            .filter(|i| {
                !matches!(
                    i.state().and_then(|s| s.name()).map(|n| n.as_str()),
                    Some("terminated" | "shutting-down")
                )
            })
            .map(|i| {
                let token = i
                    .tags()
                    .iter()
                    .find(|t| t.key() == Some("skyform:token"))
                    .and_then(|t| t.value())
                    .unwrap_or_default();
                (
                    i.instance_id().unwrap_or_default().to_string(),
                    i.placement()
                        .and_then(|p| p.availability_zone())
                        .unwrap_or_default()
                        .to_string(),
                    token.to_string(),
                )
            })
            .collect();
        v.sort();
        v
    }

    /// Security groups other than the default, and key pairs, in `region`.
    async fn groups_and_keys(&self, region: &str) -> (Vec<String>, Vec<String>) {
        let c = self.client(region);
        let groups = c.describe_security_groups().send().await.unwrap();
        let keys = c.describe_key_pairs().send().await.unwrap();
        (
            groups
                .security_groups()
                .iter()
                .filter_map(|g| g.group_name())
                .filter(|n| *n != "default")
                .map(str::to_string)
                .collect(),
            keys.key_pairs()
                .iter()
                .filter_map(|k| k.key_name())
                .map(str::to_string)
                .collect(),
        )
    }
}

/// A configuration directory whose `infra "aws"` goes through its own proxy.
struct Work {
    dir: support::Workdir,
    proxy: Proxy,
}

impl std::ops::Deref for Work {
    type Target = support::Workdir;
    fn deref(&self) -> &support::Workdir {
        &self.dir
    }
}

impl Work {
    fn new(regions: &[&str], body: &str) -> Work {
        Work::with_proxy(Proxy::start(), regions, body)
    }

    fn with_proxy(proxy: Proxy, regions: &[&str], body: &str) -> Work {
        let dir = support::Workdir::new()
            .with_home()
            .env(
                "SKYFORM_CATALOG_DIR",
                PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("testdata/catalogs"),
            )
            .env("AWS_ACCESS_KEY_ID", "testing")
            .env("AWS_SECRET_ACCESS_KEY", "testing")
            .env_remove("AWS_PROFILE")
            .env_remove("AWS_ENDPOINT_URL")
            // The controller apply starts decides in test time.
            .env("SKYFORM_CONTROLLER_TICK_MS", "300")
            .env("SKYFORM_CONTROLLER_GRACE_MS", "1000")
            .env("SKYFORM_SERVE_PROBE_MS", "300");
        let w = Work { dir, proxy };
        w.config(regions, body);
        w
    }

    /// The `infra "aws"` block for `regions` at the proxy, then `body`.
    fn config(&self, regions: &[&str], body: &str) {
        let regions: Vec<String> = regions.iter().map(|r| format!("\"{r}\"")).collect();
        self.dir.write_config(&format!(
            "infra \"aws\" {{\n  endpoint = \"{}\"\n  regions  = [{}]\n}}\n{body}",
            self.proxy.url,
            regions.join(", ")
        ));
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

const SPOT_A10G: &str = r#"
cluster "train" {
  resources {
    accelerators = "A10G:1"
    use_spot     = true
  }
}
"#;

/// Capacity blocks the zone, quota the region: the walk follows the plan's list exactly, and
/// nothing of the failed attempts is left in the cloud.
#[tokio::test]
#[ignore = "needs moto: run ./scripts/test.sh"]
async fn failover_walks_the_plan_and_blocks_zone_then_region() {
    let w = Work::new(&["us-east-1", "us-west-2"], SPOT_A10G);
    let cands = w.candidates();
    let first = zone_of(&cands[0]);
    let second = cands.iter().map(zone_of).find(|z| *z != first).unwrap();
    assert_eq!(
        &second[..9],
        &first[..9],
        "the next zone is in the same region"
    );
    let region = cands[0]["region"].as_str().unwrap().to_string();
    let third = cands
        .iter()
        .find(|c| c["region"] != region.as_str())
        .map(zone_of)
        .unwrap();
    w.proxy.rules(serde_json::json!([
        {"action": "RunInstances", "zone": first, "error": "InsufficientInstanceCapacity"},
        {"action": "RunInstances", "zone": second, "error": "VcpuLimitExceeded"},
    ]));
    let out = w.ok(&["apply", "-auto-approve"]);
    let calls = w.proxy.calls();
    let zones: Vec<&str> = calls.iter().map(|c| c.0.as_str()).collect();
    assert_eq!(
        zones,
        [first.as_str(), second.as_str(), third.as_str()],
        "{out}"
    );
    assert_eq!(calls[0].2, "InsufficientInstanceCapacity");
    assert_eq!(calls[1].2, "VcpuLimitExceeded");
    assert!(out.contains("Failover history"), "{out}");
    assert!(out.contains("InsufficientInstanceCapacity"), "{out}");

    let state = w.state();
    let r = &state["resources"]["cluster.train"];
    assert_eq!(r["status"], "ready");
    assert_eq!(r["computed"]["zone"], third.as_str());
    assert_eq!(r["attempts"].as_array().unwrap().len(), 3, "{r}");
    // Only the winning attempt has machines, a group and a key.
    assert!(w.proxy.live(&region).await.is_empty());
    assert_eq!(w.proxy.groups_and_keys(&region).await, (vec![], vec![]));
    let other = &third[..third.len() - 1];
    let live = w.proxy.live(other).await;
    assert_eq!(live.len(), 1);
    assert_eq!(live[0].1, third);
}

/// Credentials refused: the whole cloud is blocked, so the next placement is on another
/// backend, after exactly one call.
#[tokio::test]
#[ignore = "needs moto: run ./scripts/test.sh"]
async fn auth_failure_blocks_the_whole_cloud() {
    let w = Work::new(
        &["us-east-1", "us-west-2"],
        r#"
infra "local" {}
cluster "dev" {
  resources {
    ordered {
      infra         = "aws"
      instance_type = "m6i.large"
    }
    ordered {
      infra = "local"
    }
  }
}
"#,
    );
    let cands = w.candidates();
    assert!(cands.len() >= 3, "two aws regions, then local: {cands:?}");
    assert_eq!(cands.last().unwrap()["cloud"], "local");
    w.proxy
        .rules(serde_json::json!([{"action": "RunInstances", "error": "AuthFailure"}]));
    let out = w.ok(&["apply", "-auto-approve"]);
    assert_eq!(w.proxy.calls().len(), 1, "{out}");
    let state = w.state();
    assert_eq!(
        state["resources"]["cluster.dev"]["provider"], "local",
        "{out}"
    );
    w.ok(&["destroy", "-auto-approve"]);
}

/// An on-demand placement names a region: its zones are tried in turn within one attempt.
#[tokio::test]
#[ignore = "needs moto: run ./scripts/test.sh"]
async fn on_demand_tries_the_zones_of_its_region() {
    let w = Work::new(
        &["us-east-1"],
        r#"
cluster "web" {
  num_nodes = 2
  resources {
    instance_type = "m6i.large"
    ports         = [8080]
    disk_size     = 64
  }
}
"#,
    );
    w.proxy.rules(serde_json::json!([
        {"action": "RunInstances", "zone": "us-east-1a", "error": "InsufficientInstanceCapacity"},
    ]));
    w.ok(&["apply", "-auto-approve"]);
    let zones: Vec<String> = w.proxy.calls().into_iter().map(|c| c.0).collect();
    assert_eq!(zones, ["us-east-1a", "us-east-1b"]);
    let live = w.proxy.live("us-east-1").await;
    assert_eq!(live.len(), 2, "both nodes");
    assert!(
        live.iter().all(|l| l.1 == "us-east-1b"),
        "in one zone: {live:?}"
    );
    let state = w.state();
    let ids = state["resources"]["cluster.web"]["computed"]["instance_ids"]
        .as_array()
        .unwrap()
        .len();
    assert_eq!(ids, 2);
    // The group opens SSH and the cluster's ports.
    let c = w.proxy.client("us-east-1");
    let groups = c.describe_security_groups().send().await.unwrap();
    let g = groups
        .security_groups()
        .iter()
        .find(|g| g.group_name() != Some("default"))
        .unwrap();
    let mut ports: Vec<i32> = g
        .ip_permissions()
        .iter()
        .filter_map(|p| p.from_port())
        .collect();
    ports.sort();
    assert_eq!(ports, [22, 8080]);
    w.ok(&["destroy", "-auto-approve"]);
    assert!(w.proxy.live("us-east-1").await.is_empty());
    assert_eq!(w.proxy.groups_and_keys("us-east-1").await, (vec![], vec![]));
}

/// RunInstances acts but its answer never comes: the attempt times out, what it made is
/// found by its token and terminated, the region is blocked and the next one used.
#[tokio::test]
#[ignore = "needs moto: run ./scripts/test.sh"]
async fn a_hung_launch_times_out_and_leaves_nothing() {
    let w = Work::new(&["us-east-1", "us-west-2"], SPOT_A10G);
    let cands = w.candidates();
    let region = cands[0]["region"].as_str().unwrap().to_string();
    w.proxy.rules(serde_json::json!([
        {"action": "RunInstances", "region": region, "hang_after": true},
    ]));
    let t = Instant::now();
    let out = w.ok(&["apply", "-auto-approve", "-attempt-timeout=3s"]);
    assert!(t.elapsed() < Duration::from_secs(60), "{out}");
    assert!(out.contains("no answer within 3s"), "{out}");
    let calls = w.proxy.calls();
    assert_eq!(calls.len(), 2, "one try per region: {calls:?}");
    assert_eq!(calls[0].2, "forwarded, answer withheld");
    assert!(!calls[1].0.starts_with(&region));
    assert!(
        w.proxy.live(&region).await.is_empty(),
        "the machine the lost answer made is terminated"
    );
    let state = w.state();
    assert!(state["resources"]["cluster.train"]["leftovers"].is_null());
    w.ok(&["destroy", "-auto-approve"]);
}

/// A whole region stops answering: even the clean-up cannot reach it, so the attempt is
/// kept as a leftover, and removed by the next apply once the region is back.
#[tokio::test]
#[ignore = "needs moto: run ./scripts/test.sh"]
async fn a_dead_region_is_skipped_and_cleaned_up_later() {
    let w = Work::new(&["us-east-1", "us-west-2"], SPOT_A10G);
    let cands = w.candidates();
    let region = cands[0]["region"].as_str().unwrap().to_string();
    w.proxy
        .rules(serde_json::json!([{"region": region, "hang": true}]));
    let out = w.ok(&["apply", "-auto-approve", "-attempt-timeout=2s"]);
    let state = w.state();
    let r = &state["resources"]["cluster.train"];
    assert_eq!(r["status"], "ready", "{out}");
    assert_ne!(r["placement"]["offering"]["region"], region.as_str());
    assert_eq!(r["leftovers"].as_array().map(Vec::len), Some(1), "{r}");
    w.proxy.rules(serde_json::json!([]));
    let out = w.ok(&["apply", "-auto-approve"]);
    assert!(
        out.contains("removed what an earlier attempt left behind"),
        "{out}"
    );
    assert!(w.state()["resources"]["cluster.train"]["leftovers"].is_null());
    w.ok(&["destroy", "-auto-approve"]);
    assert_eq!(w.proxy.groups_and_keys(&region).await, (vec![], vec![]));
}

/// Throttling is retried on the same placement with the same client token: one machine.
#[tokio::test]
#[ignore = "needs moto: run ./scripts/test.sh"]
async fn throttling_is_retried_in_place() {
    let w = Work::new(&["us-east-1"], SPOT_A10G);
    let first = zone_of(&w.candidates()[0]);
    w.proxy.rules(serde_json::json!([
        {"action": "RunInstances", "error": "RequestLimitExceeded", "times": 2},
    ]));
    w.ok(&["apply", "-auto-approve"]);
    let calls = w.proxy.calls();
    assert_eq!(calls.len(), 3, "{calls:?}");
    assert!(calls.iter().all(|c| c.0 == first));
    assert_eq!(w.proxy.live("us-east-1").await.len(), 1);
    assert!(w.state()["resources"]["cluster.train"]["attempts"].is_null());
    w.ok(&["destroy", "-auto-approve"]);
}

/// retry_until_up: when every placement fails, the list is walked again after a pause.
#[tokio::test]
#[ignore = "needs moto: run ./scripts/test.sh"]
async fn retry_until_up_starts_over() {
    let w = Work::new(
        &["us-east-1"],
        r#"
cluster "train" {
  retry_until_up = true
  resources {
    accelerators = "A10G:1"
    use_spot     = true
    infra        = "aws/us-east-1/us-east-1a"
  }
}
"#,
    );
    w.proxy.rules(serde_json::json!([
        {"action": "RunInstances", "error": "InsufficientInstanceCapacity", "times": 2},
    ]));
    let out = w.ok(&["apply", "-auto-approve", "-retry-delay=1s"]);
    assert_eq!(w.proxy.calls().len(), 3, "{out}");
    assert!(out.contains("retry_until_up starts over"), "{out}");
    assert_eq!(w.proxy.live("us-east-1").await.len(), 1);
    w.ok(&["destroy", "-auto-approve"]);
}

/// 50 clusters at parallelism 10; destroy leaves the account empty.
#[tokio::test]
#[ignore = "needs moto: run ./scripts/test.sh"]
async fn fifty_clusters_apply_and_destroy() {
    let w = Work::new(
        &["us-east-1"],
        r#"
cluster "c" {
  count = 50
  resources {
    instance_type = "m6i.large"
  }
}
"#,
    );
    w.ok(&["apply", "-auto-approve", "-parallelism=10"]);
    let live = w.proxy.live("us-east-1").await;
    assert_eq!(live.len(), 50);
    let tokens: std::collections::BTreeSet<&String> = live.iter().map(|l| &l.2).collect();
    assert_eq!(tokens.len(), 50, "one launch per cluster");
    let state = w.state();
    let ready = state["resources"]
        .as_object()
        .unwrap()
        .values()
        .filter(|r| r["status"] == "ready")
        .count();
    assert_eq!(ready, 50);
    let (groups, keys) = w.proxy.groups_and_keys("us-east-1").await;
    assert_eq!((groups.len(), keys.len()), (50, 50));
    w.ok(&["destroy", "-auto-approve", "-parallelism=10"]);
    assert!(w.proxy.live("us-east-1").await.is_empty());
    assert_eq!(w.proxy.groups_and_keys("us-east-1").await, (vec![], vec![]));
}

/// skyform is killed between RunInstances and the state write: the next run adopts the
/// machines it made, and makes no second set.
#[tokio::test]
#[ignore = "needs moto: run ./scripts/test.sh"]
async fn kill_9_mid_launch_then_apply_adopts() {
    let w = Work::new(
        &["us-east-1"],
        r#"
cluster "train" {
  num_nodes = 2
  resources {
    instance_type = "m6i.large"
  }
}
"#,
    );
    w.proxy.rules(serde_json::json!([
        {"action": "RunInstances", "hang_after": true},
    ]));
    let mut child = w
        .command(&["apply", "-auto-approve", "-attempt-timeout=10m"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let t = Instant::now();
    while w.proxy.calls().is_empty() {
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "RunInstances never came"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // moto has answered the proxy by now; give it a moment, then kill skyform.
    std::thread::sleep(Duration::from_millis(300));
    child.kill().unwrap();
    child.wait().unwrap();
    let made = w.proxy.live("us-east-1").await;
    assert_eq!(made.len(), 2, "moto made the machines");
    w.proxy.rules(serde_json::json!([]));

    // Adopted, and set up in place (its runtime never started): SkyPilot's INIT.
    let plan = w.ok(&["plan"]);
    assert!(plan.contains("adopted"), "{plan}");
    assert!(plan.contains("its setup did not finish"), "{plan}");
    assert!(plan.contains("1 to change"), "{plan}");
    w.ok(&["apply", "-auto-approve"]);
    let plan = w.ok(&["plan"]);
    assert!(plan.contains("No changes"), "{plan}");
    let after = w.proxy.live("us-east-1").await;
    assert_eq!(after, made, "the same machines, no second set");
    let state = w.state();
    let mut ids: Vec<String> = state["resources"]["cluster.train"]["computed"]["instance_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    ids.sort();
    let mut want: Vec<String> = made.iter().map(|m| m.0.clone()).collect();
    want.sort();
    assert_eq!(ids, want);
    w.ok(&["destroy", "-auto-approve"]);
    assert!(w.proxy.live("us-east-1").await.is_empty());
}

/// A node terminated outside skyform: the plan replaces the cluster, apply does; and again
/// with all nodes gone (the replace removes the group and key pair left behind).
#[tokio::test]
#[ignore = "needs moto: run ./scripts/test.sh"]
async fn a_terminated_node_is_replaced() {
    let w = Work::new(
        &["us-east-1"],
        r#"
cluster "train" {
  num_nodes = 2
  resources {
    accelerators = "A10G:1"
    use_spot     = true
  }
}
"#,
    );
    w.ok(&["apply", "-auto-approve"]);
    let before = w.proxy.live("us-east-1").await;
    assert_eq!(before.len(), 2);
    let ec2 = w.proxy.client("us-east-1");
    ec2.terminate_instances()
        .instance_ids(&before[1].0)
        .send()
        .await
        .unwrap();
    let plan = w.ok(&["plan"]);
    assert!(plan.contains("terminated outside skyform"), "{plan}");
    assert!(plan.contains("must be replaced"), "{plan}");
    w.ok(&["apply", "-auto-approve"]);
    let after = w.proxy.live("us-east-1").await;
    assert_eq!(after.len(), 2);
    assert!(
        after.iter().all(|a| !before.contains(a)),
        "both nodes are new"
    );

    let ids: Vec<String> = after.iter().map(|a| a.0.clone()).collect();
    ec2.terminate_instances()
        .set_instance_ids(Some(ids))
        .send()
        .await
        .unwrap();
    let plan = w.ok(&["plan"]);
    assert!(
        plan.contains("all its instances were terminated outside skyform"),
        "{plan}"
    );
    w.ok(&["apply", "-auto-approve"]);
    assert_eq!(w.proxy.live("us-east-1").await.len(), 2);
    w.ok(&["destroy", "-auto-approve"]);
    assert!(w.proxy.live("us-east-1").await.is_empty());
    assert_eq!(w.proxy.groups_and_keys("us-east-1").await, (vec![], vec![]));
}

/// The AWS backend passes the provider conformance suite.
#[tokio::test]
#[ignore = "needs moto: run ./scripts/test.sh"]
async fn aws_backend_conforms() {
    use skyform::providers::aws::{AwsProvider, AwsSettings};
    use skyform::providers::conformance::{self, Fixture};
    let w = Work::new(&["us-east-1"], SPOT_A10G);
    w.ok(&["plan", "-out=plan.json"]);
    let saved: skyform::plan::Plan =
        serde_json::from_slice(&std::fs::read(w.path().join("plan.json")).unwrap()).unwrap();
    let change = &saved.changes[0];
    let p = AwsProvider::new(
        AwsSettings {
            profile: None,
            endpoint: Some(w.proxy.url.clone()),
            static_keys: Some(("testing".into(), "testing".into())),
            public_key: None,
        },
        w.path().join("home/.skyform/ssh"),
    );
    // The agent installed on the machines is skyform, not this test program.
    let mut p = p;
    p.agent_exe = PathBuf::from(support::BIN);
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
    assert!(w.proxy.live("us-east-1").await.is_empty());
    assert_eq!(w.proxy.groups_and_keys("us-east-1").await, (vec![], vec![]));
}
/// stop keeps the machines (stopped), start runs them again; state follows both.
#[tokio::test]
#[ignore = "needs moto: run ./scripts/test.sh"]
async fn stop_and_start_keep_the_machines() {
    let w = Work::new(
        &["us-east-1"],
        r#"
cluster "dev" {
  resources {
    instance_type = "m6i.large"
  }
}
"#,
    );
    w.ok(&["apply", "-auto-approve"]);
    let before = w.proxy.live("us-east-1").await;
    let states = |p: &Proxy| {
        let c = p.client("us-east-1");
        async move {
            let out = c.describe_instances().send().await.unwrap();
            out.reservations()
                .iter()
                .flat_map(|r| r.instances())
                .map(|i| {
                    i.state()
                        .and_then(|s| s.name())
                        .unwrap()
                        .as_str()
                        .to_string()
                })
                .collect::<Vec<_>>()
        }
    };
    let config = std::fs::read_to_string(w.path().join(".skyform/ssh_config")).unwrap();
    let ip = w.state()["resources"]["cluster.dev"]["computed"]["head_ip"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        config.contains(&format!("Host dev\n  HostName {ip}\n  User ubuntu\n")),
        "{config}"
    );
    assert!(
        config.contains("StrictHostKeyChecking accept-new"),
        "{config}"
    );
    let out = w.ok(&["stop", "cluster.dev"]);
    assert!(out.contains("stopped"), "{out}");
    assert_eq!(states(&w.proxy).await, ["stopped"]);
    assert_eq!(
        w.state()["resources"]["cluster.dev"]["computed"]["status"],
        "STOPPED"
    );
    let plan = w.ok(&["plan"]);
    assert!(
        plan.contains("No changes"),
        "a stopped cluster is not drift: {plan}"
    );
    w.ok(&["start", "cluster.dev"]);
    assert_eq!(states(&w.proxy).await, ["running"]);
    assert_eq!(
        w.state()["resources"]["cluster.dev"]["computed"]["status"],
        "UP"
    );
    assert_eq!(w.proxy.live("us-east-1").await, before, "the same machine");
    let (ok, text) = w.run(&["stop", "job.nothing"]);
    assert!(!ok && text.contains("only clusters"), "{text}");
    w.ok(&["destroy", "-auto-approve"]);
}

/// `init` reports whether AWS credentials are found, without calling AWS.
#[tokio::test]
#[ignore = "needs moto: run ./scripts/test.sh"]
async fn init_reports_aws_credentials() {
    let w = Work::new(&["us-east-1"], SPOT_A10G);
    let out = w.ok(&["init"]);
    assert!(out.contains("credentials found (key test…)"), "{out}");
    let none = w
        .command(&["init"])
        .env_remove("AWS_ACCESS_KEY_ID")
        .env_remove("AWS_SECRET_ACCESS_KEY")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&none.stdout);
    assert!(text.contains("no credentials found"), "{text}");
    assert!(
        text.contains("hint: aws: plans work without credentials"),
        "{text}"
    );
    assert!(w.proxy.calls().is_empty());
}

/// The user's own public key (`~/.ssh/id_ed25519.pub`) is what each region imports; with
/// none, skyform makes its own.
#[tokio::test]
#[ignore = "needs moto: run ./scripts/test.sh"]
async fn the_users_public_key_is_imported() {
    let w = Work::new(&["us-east-1"], SPOT_A10G);
    let ssh = w.path().join("home/.ssh");
    std::fs::create_dir_all(&ssh).unwrap();
    let st = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(ssh.join("id_ed25519"))
        .status()
        .unwrap();
    assert!(st.success());
    let mine = std::fs::read_to_string(ssh.join("id_ed25519.pub")).unwrap();
    w.ok(&["apply", "-auto-approve"]);
    let keys = w
        .proxy
        .client("us-east-1")
        .describe_key_pairs()
        .include_public_key(true)
        .send()
        .await
        .unwrap();
    let imported = keys.key_pairs()[0]
        .public_key()
        .unwrap_or_default()
        .to_string();
    let word = |k: &str| k.split_whitespace().nth(1).unwrap_or_default().to_string();
    assert_eq!(word(&imported), word(&mine));
    assert!(!w.path().join("home/.skyform/ssh/skyform-key").exists());
    w.ok(&["destroy", "-auto-approve"]);
}

/// An `import` block takes a cluster the state forgot (its instances still run) back into
/// state by its token: nothing is launched, and destroy then removes it all.
#[tokio::test]
#[ignore = "needs moto: run ./scripts/test.sh"]
async fn import_adopts_a_forgotten_cluster() {
    let cluster = r#"
cluster "dev" {
  resources {
    instance_type = "m6i.large"
  }
}
"#;
    let w = Work::new(&["us-east-1"], cluster);
    w.ok(&["apply", "-auto-approve"]);
    let live = w.proxy.live("us-east-1").await;
    assert_eq!(live.len(), 1);
    let token = w.state()["resources"]["cluster.dev"]["private"]["token"]
        .as_str()
        .unwrap()
        .to_string();
    w.ok(&["state", "rm", "cluster.dev"]);
    let config = std::fs::read_to_string(w.path().join("main.sky.hcl")).unwrap();
    std::fs::write(
        w.path().join("main.sky.hcl"),
        format!("{config}\nimport {{\n  to = cluster.dev\n  id = \"aws:us-east-1/{token}\"\n}}\n"),
    )
    .unwrap();
    let plan = w.ok(&["plan"]);
    assert!(
        plan.contains("# cluster.dev will be imported")
            && plan.contains("Plan: 1 to import, 0 to add"),
        "{plan}"
    );
    let out = w.ok(&["apply", "-auto-approve"]);
    assert!(out.contains("1 imported"), "{out}");
    assert_eq!(
        w.proxy.live("us-east-1").await,
        live,
        "nothing new launched"
    );
    let state = w.state();
    assert_eq!(
        state["resources"]["cluster.dev"]["computed"]["status"], "UP",
        "{state}"
    );
    let plan = w.ok(&["plan"]);
    assert!(plan.contains("No changes"), "{plan}");
    w.ok(&["destroy", "-auto-approve"]);
    assert!(w.proxy.live("us-east-1").await.is_empty());
    let (groups, keys) = w.proxy.groups_and_keys("us-east-1").await;
    assert!(groups.is_empty() && keys.is_empty(), "{groups:?} {keys:?}");

    // A token nobody has is an error at the import block.
    let (ok, text) = w.run(&["plan"]);
    assert!(
        !ok && text.contains("no instance in us-east-1 is tagged"),
        "{text}"
    );
}

/// `apply -json` reports a failover as its own event, between the attempts it separates.
#[tokio::test]
#[ignore = "needs moto: run ./scripts/test.sh"]
async fn apply_json_reports_each_failover() {
    let w = Work::new(&["us-east-1", "us-west-2"], SPOT_A10G);
    let cands = w.candidates();
    let first = zone_of(&cands[0]);
    w.proxy.rules(serde_json::json!([
        {"action": "RunInstances", "zone": first, "error": "InsufficientInstanceCapacity"},
    ]));
    let out = w.ok(&["apply", "-json", "-auto-approve"]);
    let events: Vec<Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    let kinds: Vec<&str> = events
        .iter()
        .map(|e| e["type"].as_str().unwrap())
        .filter(|k| *k != "state")
        .collect();
    assert_eq!(
        kinds,
        [
            "planned", "attempt", "failover", "attempt", "applied", "summary"
        ],
        "{out}"
    );
    let failover = events.iter().find(|e| e["type"] == "failover").unwrap();
    assert_eq!(failover["address"], "cluster.train");
    assert!(
        failover["error"]
            .as_str()
            .unwrap()
            .contains("InsufficientInstanceCapacity"),
        "{failover}"
    );
    assert_eq!(
        failover["blocked"],
        format!("aws/{}/{first} blocked", &first[..first.len() - 1]).as_str(),
        "{failover}"
    );
    let planned = &events[0];
    assert_eq!(planned["actions"], serde_json::json!(["create"]));
    assert!(planned["candidates"].as_u64().unwrap() > 1);
    assert_eq!(events.last().unwrap()["ok"], true);
    w.ok(&["destroy", "-auto-approve"]);
}

/// Killed after every backend call, every state write and every EC2 call that changes
/// something (key pair, group, instances) of an apply and of a destroy, the same command
/// again converges: the declared machines (and their group and key pair) after
/// apply, nothing after destroy (tests/support/crash.rs).
#[test]
#[ignore = "needs moto: run ./scripts/test.sh"]
fn a_crash_at_every_point_converges() {
    let w = Work::new(
        &["us-east-1"],
        r#"
cluster "train" {
  num_nodes = 2
  resources {
    instance_type = "m6i.large"
  }
}
"#,
    );
    let world = || {
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(async {
            let mut out: Vec<String> = w
                .proxy
                .live("us-east-1")
                .await
                .into_iter()
                .map(|(id, _, token)| format!("instance {id} of {token}"))
                .collect();
            let (groups, keys) = w.proxy.groups_and_keys("us-east-1").await;
            out.extend(groups.into_iter().map(|g| format!("security group {g}")));
            out.extend(keys.into_iter().map(|k| format!("key pair {k}")));
            out.sort();
            out
        })
    };
    support::crash::Crashes {
        dir: &w,
        world: &world,
        kinds: &[("call", 1), ("write", 1), ("cloud", 1)],
        min_points: 10,
    }
    .run();
}

/// A 2-node cluster on EC2 runs what a cluster runs, on its machines (moto's instances made
/// real by the proxy): workdir and setup reach both nodes, a 2-node job sees its rank and the
/// nodes' private addresses, logs come from each node, exit codes and cancel reach state,
/// and destroy leaves neither instances nor anything on the machines.
#[tokio::test]
#[ignore = "needs moto: run ./scripts/test.sh"]
async fn a_cluster_on_ec2_runs_jobs_on_its_machines() {
    // The machines take 3 s to boot (their key arrives late): apply waits, and says so.
    let w = Work::with_proxy(
        Proxy::start_with(&["--boot-seconds", "3"]),
        &["us-east-1"],
        r#"
cluster "train" {
  num_nodes = 2
  workdir   = "./code"
  setup     = "cat data.txt > setup-saw.txt"
  resources {
    instance_type = "m6i.large"
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
    );
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
    let sleeping = on_machines("sleep");
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

    w.ok(&["destroy", "-auto-approve"]);
    assert!(w.proxy.live("us-east-1").await.is_empty());
    for i in 1..=3 {
        let left = machines.join(format!("machine-{i}/skyform/clusters/{token}"));
        assert!(!left.exists(), "{} is left", left.display());
    }
    let agents = on_machines("__agent");
    assert!(agents.is_empty(), "agents still run: {agents:?}");
    assert!(
        !w.path()
            .join(format!("home/.skyform/ssh/known_hosts.d/{token}"))
            .exists(),
        "the cluster's host keys are forgotten"
    );
}

/// The states of the instances tagged with `token` in `region` (moto's view).
async fn instance_states(w: &Work, region: &str, token: &str) -> Vec<String> {
    let out = w
        .proxy
        .client(region)
        .describe_instances()
        .filters(
            ec2::types::Filter::builder()
                .name("tag:skyform:token")
                .values(token)
                .build(),
        )
        .send()
        .await
        .unwrap();
    out.reservations()
        .iter()
        .flat_map(|r| r.instances())
        .filter_map(|i| {
            i.state()
                .and_then(|s| s.name())
                .map(|n| n.as_str().to_string())
        })
        .collect()
}

/// Waits until every instance of `token` is in `want` (moto's view).
async fn wait_for_instances(w: &Work, token: &str, want: &str) {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let states = instance_states(w, "us-east-1", token).await;
        if !states.is_empty() && states.iter().all(|s| s == want) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "instances are {states:?}, not {want}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Autostop on EC2: the idle head shuts the nodes down from inside, EC2 stops them (disks
/// kept), `start` brings the cluster back; with `down = true` the instances terminate.
#[tokio::test]
#[ignore = "needs moto: run ./scripts/test.sh"]
async fn autostop_stops_or_terminates_the_instances() {
    let mut w = Work::new(
        &["us-east-1"],
        r#"
cluster "idle" {
  num_nodes = 2
  resources {
    instance_type = "m6i.large"
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
    );
    // Autostop's minutes are seconds here.
    w.dir = std::mem::take(&mut w.dir).env("SKYFORM_IDLE_MINUTE", "1");
    w.ok(&["apply", "-auto-approve"]);
    let token = w.state()["resources"]["cluster.idle"]["private"]["token"]
        .as_str()
        .unwrap()
        .to_string();
    wait_for_instances(&w, &token, "stopped").await;
    assert_eq!(
        w.status_of("job.j"),
        "SUCCEEDED",
        "a running job kept it up"
    );
    let plan = w.ok(&["plan"]);
    assert!(plan.contains("No changes"), "{plan}");
    let started = Instant::now();
    w.ok(&["start", "cluster.idle"]);
    // `start` answers once EC2 runs the instances and their runtime is up again; that runtime
    // stops them after 2 idle seconds, which a busy machine may have reached already.
    let states = instance_states(&w, "us-east-1", &token).await;
    assert!(
        states.iter().all(|s| s == "running") || started.elapsed() > Duration::from_secs(2),
        "{states:?} right after start"
    );
    let state = w.state();
    assert_ne!(
        state["resources"]["cluster.idle"]["private"]["build"],
        Value::Null,
        "{state}"
    );
    // The runtime that start brought back stops the idle cluster again.
    wait_for_instances(&w, &token, "stopped").await;
    w.ok(&["destroy", "-auto-approve"]);
    let config = std::fs::read_to_string(w.path().join("main.sky.hcl")).unwrap();

    w.write_config(&config.replace(
        "idle_minutes = 2",
        "idle_minutes = 2\n    down         = true",
    ));
    w.ok(&["apply", "-auto-approve"]);
    let token = w.state()["resources"]["cluster.idle"]["private"]["token"]
        .as_str()
        .unwrap()
        .to_string();
    wait_for_instances(&w, &token, "terminated").await;
    // The cluster is gone; its group and key pair go with the next apply's replacement.
    let plan = w.ok(&["plan"]);
    assert!(plan.contains("cluster.idle"), "{plan}");
    w.ok(&["destroy", "-auto-approve"]);
    assert!(w.proxy.live("us-east-1").await.is_empty());
    assert_eq!(w.proxy.groups_and_keys("us-east-1").await, (vec![], vec![]));
}

/// A spot instance taken back in the middle of a job: refresh marks the cluster degraded
/// and the job lost, never running.
#[tokio::test]
#[ignore = "needs moto: run ./scripts/test.sh"]
async fn a_preempted_node_loses_its_job() {
    let w = Work::new(
        &["us-east-1"],
        r#"
cluster "train" {
  num_nodes = 2
  resources {
    instance_type = "m6i.large"
  }
}

job "long" {
  cluster   = cluster.train
  num_nodes = 2
  run       = "sleep 600"
}
"#,
    );
    w.ok(&["apply", "-auto-approve"]);
    w.wait_for("job.long", "RUNNING");
    let ids: Vec<String> = serde_json::from_value(
        w.state()["resources"]["cluster.train"]["computed"]["instance_ids"].clone(),
    )
    .unwrap();
    // EC2 takes node 1 back (through the proxy: its machine stops running what it ran).
    w.proxy
        .client("us-east-1")
        .terminate_instances()
        .instance_ids(&ids[1])
        .send()
        .await
        .unwrap();
    let plan = w.ok(&["plan"]);
    assert!(plan.contains("was terminated outside skyform"), "{plan}");
    assert_ne!(w.status_of("job.long"), "RUNNING");
    w.ok(&["destroy", "-auto-approve"]);
    assert!(w.proxy.live("us-east-1").await.is_empty());
}

/// A managed job on a spot instance that EC2 takes back is launched again by the controller
/// (a real background process), in another region first (`eager_next_region`, the
/// default): the history says from where to where, the lost region is not asked first, and
/// the job finishes with its task id; destroy leaves nothing.
#[tokio::test]
#[ignore = "needs moto: run ./scripts/test.sh"]
async fn a_preempted_managed_job_moves_to_the_next_region() {
    let w = Work::new(
        &["us-east-1", "us-west-2"],
        r#"
managed_job "train" {
  resources {
    instance_type = "m6i.large"
    use_spot      = true
  }
  run = "echo start $SKYFORM_TASK_ID; for i in $(seq 1 20); do echo step $i; sleep 0.5; done"
}
"#,
    );
    w.ok(&["apply", "-auto-approve"]);
    // us-west-2's spot price is the lowest.
    let first = w.wait_until("managed_job.train", "running", |j| j["status"] == "RUNNING");
    assert!(
        first["placement"]
            .as_str()
            .is_some_and(|p| p.starts_with("aws/us-west-2")),
        "{first}"
    );
    let live = w.proxy.live("us-west-2").await;
    assert_eq!(live.len(), 1, "{live:?}");
    w.proxy
        .client("us-west-2")
        .terminate_instances()
        .instance_ids(&live[0].0)
        .send()
        .await
        .unwrap();
    let moved = w.wait_until("managed_job.train", "attempt 2, running", |j| {
        j["attempt"] == 2 && j["status"] == "RUNNING"
    });
    assert!(
        moved["placement"]
            .as_str()
            .is_some_and(|p| p.starts_with("aws/us-east-1")),
        "{moved}"
    );
    let events: Vec<(String, String)> = moved["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            let s = |k: &str| e[k].as_str().unwrap_or_default().to_string();
            (s("event"), format!("{}{}", s("from"), s("to")))
        })
        .collect();
    assert_eq!(events.len(), 3, "{moved}");
    assert_eq!(events[1].0, "lost", "{moved}");
    assert!(events[1].1.starts_with("aws/us-west-2"), "{moved}");
    assert_eq!(events[2].0, "recovered", "{moved}");
    assert!(events[2].1.starts_with("aws/us-east-1"), "{moved}");
    // After the first launch, the next RunInstances went to another region.
    let calls = w.proxy.calls();
    assert!(calls.len() >= 2, "{calls:?}");
    assert!(calls[0].0.starts_with("us-west-2"), "{calls:?}");
    assert!(calls[1].0.starts_with("us-east-1"), "{calls:?}");
    let done = w.wait_until("managed_job.train", "the end", |j| {
        matches!(j["status"].as_str(), Some("SUCCEEDED" | "FAILED"))
    });
    assert_eq!(done["status"], "SUCCEEDED", "{done}");
    let logs = w.ok(&["logs", "managed_job.train"]);
    assert!(logs.contains("step 20"), "{logs}");
    w.ok(&["destroy", "-auto-approve"]);
    for region in ["us-east-1", "us-west-2"] {
        assert!(w.proxy.live(region).await.is_empty(), "{region}");
    }
}

/// Host keys belong to their cluster: a key that changes under a living cluster is refused,
/// while a new machine at an address an old cluster used (addresses are reused all the
/// time in a VPC) is trusted for its own cluster. On a machine of the test's own, whose key
/// the test changes.
#[tokio::test]
#[ignore = "needs moto: run ./scripts/test.sh"]
async fn host_keys_belong_to_their_cluster() {
    let _ = machines(); // the same requirement as the other tests
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/sshd.sh");
    let out = Command::new(&script).args(["cloud", "1"]).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let cloud = PathBuf::from(text.trim().split_once('=').unwrap().1);
    struct Stop(PathBuf);
    impl Drop for Stop {
        fn drop(&mut self) {
            let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/sshd.sh");
            let _ = Command::new(script)
                .arg("stop")
                .env("SKYFORM_TEST_SSH_DIR", &self.0)
                .status();
        }
    }
    let _stop = Stop(cloud.clone());
    let machines = cloud.join("machines");
    let proxy = Proxy::start_with(&["--machines", machines.to_str().unwrap()]);
    let cluster = |name: &str| {
        format!(
            "cluster \"{name}\" {{\n  resources {{\n    instance_type = \"m6i.large\"\n  }}\n}}\n"
        )
    };
    let w = Work::with_proxy(proxy, &["us-east-1"], &cluster("a"));
    w.ok(&["apply", "-auto-approve"]);
    w.ok(&["ssh", "cluster.a", "--", "true"]);

    // The machine's key changes under the living cluster: refused.
    let m = cloud.join("machine-1");
    let pid = std::fs::read_to_string(m.join("pid")).unwrap();
    Command::new("kill").arg(pid.trim()).status().unwrap();
    std::thread::sleep(Duration::from_millis(300));
    for f in ["ssh_host_ed25519_key", "ssh_host_ed25519_key.pub"] {
        std::fs::remove_file(m.join(f)).unwrap();
    }
    let made = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(m.join("ssh_host_ed25519_key"))
        .status()
        .unwrap();
    assert!(made.success());
    let sshd = if Path::new("/usr/sbin/sshd").exists() {
        "/usr/sbin/sshd"
    } else {
        "sshd"
    };
    let mut server = Command::new(sshd)
        .arg("-D")
        .arg("-f")
        .arg(m.join("sshd_config"))
        .arg("-E")
        .arg(m.join("log"))
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let (ok, text) = w.run(&["ssh", "cluster.a", "--", "true"]);
    assert!(
        !ok,
        "a changed key under a living cluster is refused:\n{text}"
    );

    // A new cluster on a new machine at the same address: trusted for itself.
    w.write_config(
        &std::fs::read_to_string(w.path().join("main.sky.hcl"))
            .unwrap()
            .replace("cluster \"a\"", "cluster \"b\""),
    );
    w.ok(&["apply", "-auto-approve"]);
    w.ok(&["ssh", "cluster.b", "--", "true"]);
    w.ok(&["destroy", "-auto-approve"]);
    let _ = server.kill();
    let _ = server.wait();
}

/// Status never lies: a running instance whose agent is gone (it restarted outside skyform)
/// makes the cluster degraded, and the plan replaces it.
#[tokio::test]
#[ignore = "needs moto: run ./scripts/test.sh"]
async fn a_machine_whose_agent_died_is_degraded() {
    let w = Work::new(
        &["us-east-1"],
        "cluster \"dev\" {\n  resources {\n    instance_type = \"m6i.large\"\n  }\n}\n",
    );
    w.ok(&["apply", "-auto-approve"]);
    let plan = w.ok(&["plan"]);
    assert!(plan.contains("No changes"), "{plan}");
    let token = w.state()["resources"]["cluster.dev"]["private"]["token"]
        .as_str()
        .unwrap()
        .to_string();
    let machines = PathBuf::from(std::env::var("SKYFORM_TEST_CLOUD_DIR").unwrap());
    let mut killed = 0;
    for i in 1..=3 {
        let dir = machines.join(format!("machine-{i}/skyform/clusters/{token}"));
        for pid in support::processes_mentioning(&dir) {
            let _ = Command::new("kill").arg("-9").arg(pid.to_string()).status();
            killed += 1;
        }
    }
    assert!(killed > 0, "the agent ran on a machine");
    let plan = w.ok(&["plan"]);
    assert!(plan.contains("is not running"), "{plan}");
    assert!(plan.contains("must be replaced"), "{plan}");
    w.ok(&["destroy", "-auto-approve"]);
}

/// A service on EC2: its replica is an instance of its own (a loopback sshd machine here),
/// listening on the instance's address and the service's port; the controller's balancer
/// serves it at the endpoint, and a new version comes up on another instance before the
/// old one drains and is terminated — no failed request in between.
#[tokio::test]
#[ignore = "needs moto: run ./scripts/test.sh"]
async fn a_service_serves_from_an_instance_and_rolls_to_a_new_version() {
    let port = support::free_port();
    let service = |version: &str| {
        format!(
            "service \"web\" {{\n  run = \"python3 {}/testdata/services/replica.py --host $SKYFORM_NODE_IPS --port $PORT --version {version}\"\n  resources {{\n    instance_type = \"m6i.large\"\n    ports         = [{port}]\n  }}\n  readiness_probe {{\n    path                  = \"/\"\n    initial_delay_seconds = 60\n  }}\n}}\n",
            env!("CARGO_MANIFEST_DIR")
        )
    };
    let w = Work::new(&["us-east-1"], &service("v1"));
    let get = move || support::http(port, "GET", "/x").unwrap();
    w.ok(&["apply", "-auto-approve"]);
    w.wait_until("service.web", "a ready replica", |r| {
        support::replicas(r).iter().any(|x| x.2 == "READY")
    });
    assert_eq!(w.proxy.live("us-east-1").await.len(), 1);
    let first = tokio::task::spawn_blocking(get).await.unwrap();
    assert!(
        first.starts_with("HTTP/1.1 200") && first.contains("version=v1"),
        "{first}"
    );
    w.config(&["us-east-1"], &service("v2"));
    w.ok(&["apply", "-auto-approve"]);
    support::serve_until_rolled(&w, "service.web", port, 2);
    w.ok(&["destroy", "-auto-approve"]);
    assert!(w.proxy.live("us-east-1").await.is_empty());
}
