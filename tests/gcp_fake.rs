//! The GCE fake itself (`scripts/gce-fake.py`): every call it accepts and every answer it
//! gives, checked against the schemas of Google's discovery document for compute v1
//! (`compute.v1.json`, fetched by `scripts/compute-discovery.sh`), so that the fake cannot
//! drift into answers GCE would never give. Without the document the test says SKIPPED on a
//! developer's machine and fails under `CI=true`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "support/gce.rs"]
mod gce;
mod support;

use gce::{Fake, discovery, violations};
use serde_json::Value;
use std::process::Command;

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
    // GCE takes a spot VM back: TERMINATED, then deleted (its termination action), with a
    // system event in the zone's operations.
    let op = call(
        &fake,
        "POST",
        &format!("{p}/zones/{z}/instances"),
        Some(&instance("skyform-web-0123abcd-1", z)),
    );
    wait(&op);
    let preempted = Command::new("curl")
        .args(["-sf", "-X", "POST"])
        .arg(format!(
            "{}/_fake/preempt/{z}/skyform-web-0123abcd-1",
            fake.url
        ))
        .stdout(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(preempted.success());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let mut seen = Vec::new();
    loop {
        let got = call(
            &fake,
            "GET",
            &format!("{p}/zones/{z}/instances/skyform-web-0123abcd-1"),
            None,
        );
        let status = got["status"].as_str().unwrap_or("gone").to_string();
        if seen.last() != Some(&status) {
            seen.push(status.clone());
        }
        if status == "gone" {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{seen:?}");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert!(seen.contains(&"TERMINATED".to_string()), "{seen:?}");
    let events = call(
        &fake,
        "GET",
        &format!(
            "{p}/zones/{z}/operations?filter=operationType%20%3D%20%22compute.instances.preempted%22"
        ),
        None,
    );
    let items = events["items"].as_array().unwrap();
    assert_eq!(items.len(), 1, "{events}");
    assert_eq!(items[0]["user"], "system");
    assert!(
        items[0]["targetLink"]
            .as_str()
            .unwrap()
            .ends_with("/instances/skyform-web-0123abcd-1")
    );
    call(&fake, "GET", &format!("{p}/zones/{z}/operations"), None);
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
        "compute.zoneOperations.list",
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
