//! Failover on EC2: capacity, quota, auth, hung and dead regions, throttling, and what apply reports.

use super::*;

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
