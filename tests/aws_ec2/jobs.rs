//! Jobs, autostop, preemption, managed jobs and services on EC2 machines.

use super::*;

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
        &support::cloud_jobs::config("m6i.large"),
    );
    let token = support::cloud_jobs::runs_jobs(&w);
    w.ok(&["destroy", "-auto-approve"]);
    assert!(w.proxy.live("us-east-1").await.is_empty());
    support::cloud_jobs::left_nothing(&w, &token);
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
