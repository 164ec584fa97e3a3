//! Clusters on EC2: many at once, crashes, replacement, conformance, stop and start, keys, import.

use super::*;

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
