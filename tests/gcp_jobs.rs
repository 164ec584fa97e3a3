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
        &support::cloud_jobs::config("n2-standard-8"),
    ) else {
        return;
    };
    let token = support::cloud_jobs::runs_jobs(&w);
    w.ok(&["destroy", "-auto-approve"]);
    w.fake.assert_empty();
    support::cloud_jobs::left_nothing(&w, &token);
}

/// The region of a status row's placement (`gcp/us-central1…`): `gcp/us-central1`.
fn region_of_placement(row: &serde_json::Value) -> String {
    let p = row["placement"].as_str().unwrap_or_default();
    let zone_or_region = p.split('/').nth(1).unwrap_or_default();
    // A zone (us-central1-a) names its region (us-central1).
    let region = match zone_or_region.rsplit_once('-') {
        Some((r, z)) if z.len() == 1 => r,
        _ => zone_or_region,
    };
    format!("gcp/{region}")
}

/// A managed job on a spot instance that GCE preempts is launched again by the controller
/// (a real background process), in another region first (`eager_next_region`, the
/// default): the history says lost (preempted) → recovered, from where to where, the lost
/// region is not asked first, and the job finishes with its logs; destroy leaves nothing.
#[test]
#[ignore = "needs the GCE fake's machines: run ./scripts/test.sh"]
fn a_preempted_managed_job_moves_to_the_next_region() {
    let Some(w) = Work::new(
        "a_preempted_managed_job_moves_to_the_next_region",
        &["us-central1", "us-east4"],
        r#"
managed_job "train" {
  resources {
    instance_type = "n2-standard-8"
    use_spot      = true
  }
  run = "echo start $SKYFORM_TASK_ID; for i in $(seq 1 20); do echo step $i; sleep 0.5; done"
}
"#,
    ) else {
        return;
    };
    w.ok(&["apply", "-auto-approve"]);
    let first = w.wait_until("managed_job.train", "running", |j| j["status"] == "RUNNING");
    let lost_region = region_of_placement(&first);
    let live = w.fake.instances();
    assert_eq!(live.len(), 1, "{live:?}");
    assert!(
        lost_region.ends_with(live[0].0.rsplit_once('-').unwrap().0),
        "{first} {live:?}"
    );
    w.fake.preempt(&live[0].0, &live[0].1);
    let moved = w.wait_until("managed_job.train", "attempt 2, running", |j| {
        j["attempt"] == 2 && j["status"] == "RUNNING"
    });
    let new_region = region_of_placement(&moved);
    assert_ne!(new_region, lost_region, "{moved}");
    let events: Vec<(String, String, String)> = moved["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            let s = |k: &str| e[k].as_str().unwrap_or_default().to_string();
            (s("event"), format!("{}{}", s("from"), s("to")), s("reason"))
        })
        .collect();
    assert_eq!(events.len(), 3, "{moved}");
    assert_eq!(events[1].0, "lost", "{moved}");
    assert!(events[1].1.starts_with(&lost_region), "{moved}");
    assert!(events[1].2.contains("preempted"), "{moved}");
    assert_eq!(events[2].0, "recovered", "{moved}");
    assert!(events[2].1.starts_with(&new_region), "{moved}");
    // After the first launch, the next insert went to another region.
    let calls = w.fake.calls();
    assert!(calls.len() >= 2, "{calls:?}");
    assert!(lost_region.ends_with(calls[0].0.rsplit_once('-').unwrap().0));
    assert!(new_region.ends_with(calls[1].0.rsplit_once('-').unwrap().0));
    let done = w.wait_until("managed_job.train", "the end", |j| {
        matches!(j["status"].as_str(), Some("SUCCEEDED" | "FAILED"))
    });
    assert_eq!(done["status"], "SUCCEEDED", "{done}");
    let logs = w.ok(&["logs", "managed_job.train"]);
    assert!(logs.contains("step 20"), "{logs}");
    w.ok(&["destroy", "-auto-approve"]);
    w.fake.assert_empty();
}

/// A spot node GCE preempts in the middle of a job: refresh says the node was preempted
/// (not stopped, not deleted by someone), the cluster is replaced, and the job is never
/// shown running.
#[test]
#[ignore = "needs the GCE fake's machines: run ./scripts/test.sh"]
fn a_preempted_node_loses_its_job() {
    let Some(w) = Work::new(
        "a_preempted_node_loses_its_job",
        &["us-central1"],
        r#"
cluster "train" {
  num_nodes = 2
  resources {
    instance_type = "n2-standard-8"
    use_spot      = true
  }
}

job "long" {
  cluster   = cluster.train
  num_nodes = 2
  run       = "sleep 600"
}
"#,
    ) else {
        return;
    };
    w.ok(&["apply", "-auto-approve"]);
    w.wait_for("job.long", "RUNNING");
    let state = w.state();
    let cluster = &state["resources"]["cluster.train"];
    let ids: Vec<String> =
        serde_json::from_value(cluster["computed"]["instance_ids"].clone()).unwrap();
    let zone = cluster["computed"]["zone"].as_str().unwrap().to_string();
    w.fake.preempt(&zone, &ids[1]);
    // While GCE still shows it TERMINATED, and once it deleted it.
    let plan = w.ok(&["plan"]);
    assert!(
        plan.contains(&format!("node 1 ({}) was preempted by GCE", ids[1])),
        "{plan}"
    );
    assert!(plan.contains("must be replaced"), "{plan}");
    assert_ne!(w.status_of("job.long"), "RUNNING");
    let t = std::time::Instant::now();
    while w.fake.instances().len() > 1 {
        assert!(t.elapsed() < std::time::Duration::from_secs(30));
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    let plan = w.ok(&["plan"]);
    assert!(plan.contains("was preempted by GCE"), "{plan}");
    assert_ne!(w.status_of("job.long"), "RUNNING");
    w.ok(&["destroy", "-auto-approve"]);
    w.fake.assert_empty();
}

/// A service on GCE: its replica is an instance of its own (a loopback sshd machine here),
/// listening on the instance's address and the service's port; the controller's balancer
/// serves it at the endpoint, and a new version comes up on another instance before the
/// old one drains and is deleted — no failed request in between.
#[test]
#[ignore = "needs the GCE fake's machines: run ./scripts/test.sh"]
fn a_service_serves_from_an_instance_and_rolls_to_a_new_version() {
    let port = support::free_port();
    let service = |version: &str| {
        format!(
            "service \"web\" {{\n  run = \"python3 {}/testdata/services/replica.py --host $SKYFORM_NODE_IPS --port $PORT --version {version}\"\n  resources {{\n    instance_type = \"n2-standard-8\"\n    ports         = [{port}]\n  }}\n  readiness_probe {{\n    path                  = \"/\"\n    initial_delay_seconds = 60\n  }}\n}}\n",
            env!("CARGO_MANIFEST_DIR")
        )
    };
    let Some(w) = Work::new(
        "a_service_serves_from_an_instance_and_rolls_to_a_new_version",
        &["us-central1"],
        &service("v1"),
    ) else {
        return;
    };
    w.ok(&["apply", "-auto-approve"]);
    w.wait_until("service.web", "a ready replica", |r| {
        support::replicas(r).iter().any(|x| x.2 == "READY")
    });
    let live = w.fake.instances();
    assert_eq!(live.len(), 1, "{live:?}");
    let first = support::http(port, "GET", "/x").unwrap();
    assert!(
        first.starts_with("HTTP/1.1 200") && first.contains("version=v1"),
        "{first}"
    );
    w.body(&service("v2"));
    w.ok(&["apply", "-auto-approve"]);
    support::serve_until_rolled(&w, "service.web", port, 2);
    // The old replica's instance goes once it drained.
    let t = std::time::Instant::now();
    while w.fake.instances().iter().any(|i| i.1 == live[0].1) {
        assert!(
            t.elapsed() < std::time::Duration::from_secs(90),
            "{:?}",
            w.fake.instances()
        );
        std::thread::sleep(std::time::Duration::from_millis(300));
    }
    w.ok(&["destroy", "-auto-approve"]);
    w.fake.assert_empty();
}
