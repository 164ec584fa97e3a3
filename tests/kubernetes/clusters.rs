//! Clusters on Kubernetes: placement, failover, eviction, quotas, namespaces, images, jobs and crashes.

use super::*;

#[test]
#[ignore = "needs kube-apiserver: run ./scripts/test.sh"]
fn a_gpu_cluster_lands_where_gpus_fit_and_runs_a_job() {
    let Some((kube, _turn)) = begin("a_gpu_cluster_lands_where_gpus_fit_and_runs_a_job") else {
        return;
    };
    let _a = Fakelet::start(
        &kube,
        "a",
        &["t1-cpu:cpu=8,memory=32Gi", &format!("t1-gpu:{GPU_NODE}")],
    );
    let w = Work::new(&kube, "t1");
    // A context the kubeconfig does not have: the plan says so and uses the others.
    w.config(
        &[("a", 0.0), ("typo", 0.0)],
        r#"
cluster "train" {
  resources {
    accelerators = "A100-80GB:4"
    cpus         = "2+"
  }
}

job "hello" {
  cluster = cluster.train
  run     = "echo hello from rank $SKYFORM_NODE_RANK of $SKYFORM_HEAD_HOST; echo token=$TOKEN; exit 3"
  secrets = { TOKEN = "s3cret-value" }
}
"#,
    );
    let plan = w.ok(&["plan"]);
    assert!(plan.contains("k8s/a"), "{plan}");
    assert!(
        plan.contains("warning: infra \"kubernetes\" \"typo\": context \"typo\""),
        "{plan}"
    );
    assert!(plan.contains("A100-80GB"), "{plan}");
    w.ok(&["apply", "-auto-approve"]);
    let pods = w.pods("a");
    let cluster_pods: Vec<_> = pods.iter().filter(|p| !p.0.contains("hello")).collect();
    assert!(
        cluster_pods
            .iter()
            .any(|p| p.1 == "Running" && p.2 == "t1-gpu"),
        "the cluster's pod runs on the GPU node: {pods:?}"
    );
    let row = w.wait_for("job.hello", "FAILED");
    assert_eq!(row["exit_code"], 3, "{row}");
    let logs = w.ok(&["logs", "job.hello"]);
    assert!(logs.contains("hello from rank 0"), "{logs}");
    assert!(
        logs.contains("token=s3cret-value"),
        "the secret reaches the job: {logs}"
    );
    // The job ran inside the cluster's pod (whose environment names the head), which holds
    // the GPUs; its secret is in no object on the API server.
    assert!(logs.contains(" of sky-train-"), "{logs}");
    let objects = w.everything("a");
    let encoded = {
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD.encode("s3cret-value")
    };
    assert!(
        !objects.contains("s3cret-value") && !objects.contains(&encoded),
        "secrets never in a pod, Job or Secret: {objects}"
    );
    let state = w.state();
    assert_eq!(
        state["resources"]["cluster.train"]["placement"]["offering"]["region"],
        "a"
    );
    w.destroy_leaves_nothing("a");
}

#[test]
#[ignore = "needs kube-apiserver: run ./scripts/test.sh"]
fn a_full_context_fails_over_to_the_next() {
    let Some((kube, _turn)) = begin("a_full_context_fails_over_to_the_next") else {
        return;
    };
    let _a = Fakelet::start(&kube, "a", &[&format!("t2-a:{GPU_NODE}")]);
    let _b = Fakelet::start(&kube, "b", &[&format!("t2-b:{GPU_NODE}")]);
    let w = Work::new(&kube, "t2");
    // `a` is cheaper, so it comes first; `b` is the fallback.
    w.config(
        &[("a", 0.0), ("b", 1.0)],
        r#"
cluster "train" {
  resources {
    accelerators = "A100-80GB:8"
  }
}
"#,
    );
    w.ok(&["plan", "-out", "plan.json"]);
    let shown = w.ok(&["show", "-json", "plan.json"]);
    assert!(
        shown.contains("k8s/a") && shown.contains("k8s/b"),
        "{shown}"
    );
    // Someone else takes a's GPUs between plan and apply.
    w.rt.block_on(async {
        let c = w.client("a").await;
        w.namespace("a", "t2-other").await;
        let pods: Api<Pod> = Api::namespaced(c, "t2-other");
        let hog: Pod = serde_json::from_value(serde_json::json!({
            "metadata": { "name": "hog" },
            "spec": {
                "automountServiceAccountToken": false,
                "containers": [{ "name": "main", "image": "x", "command": ["sleep", "600"],
                    "resources": { "limits": { "nvidia.com/gpu": "8" } } }]
            }
        }))
        .unwrap();
        created(pods.create(&Default::default(), &hog).await);
    });
    let out = w.ok(&["apply", "plan.json"]);
    let state = w.state();
    let r = &state["resources"]["cluster.train"];
    assert_eq!(r["placement"]["offering"]["region"], "b", "{out}\n{r}");
    let attempts = r["attempts"].to_string();
    assert!(
        attempts.contains("k8s/a") && attempts.contains("Insufficient nvidia.com/gpu"),
        "the attempt on a is recorded with the scheduler's reason: {attempts}"
    );
    assert_eq!(w.leftovers("a"), Vec::<String>::new(), "nothing stays in a");
    assert!(
        w.pods("b")
            .iter()
            .any(|p| p.1 == "Running" && p.2 == "t2-b")
    );
    w.destroy_leaves_nothing("b");
    w.rt.block_on(async {
        let pods: Api<Pod> = Api::namespaced(w.client("a").await, "t2-other");
        let _ = pods
            .delete(
                "hog",
                &kube::api::DeleteParams {
                    grace_period_seconds: Some(0),
                    ..Default::default()
                },
            )
            .await;
    });
}

#[test]
#[ignore = "needs kube-apiserver: run ./scripts/test.sh"]
fn evicted_pods_are_replaced_and_an_interrupted_create_is_adopted() {
    let Some((kube, _turn)) =
        begin("evicted_pods_are_replaced_and_an_interrupted_create_is_adopted")
    else {
        return;
    };
    let a = Fakelet::start(&kube, "a", &[&format!("t3-a:{GPU_NODE}")]);
    let w = Work::new(&kube, "t3");
    let one = r#"
cluster "train" {
  num_nodes = 2
  resources {
    accelerators = "A100-80GB:2"
  }
}
"#;
    w.config(&[("a", 0.0)], one);
    w.ok(&["apply", "-auto-approve"]);
    let before = w.pods("a");
    assert_eq!(before.len(), 2, "{before:?}");
    // The kubelet evicts node 1's pod: the plan replaces the cluster.
    a.evict("t3", &before[1].0);
    let plan = w.ok(&["plan"]);
    assert!(plan.contains("evicted"), "{plan}");
    assert!(plan.contains("cluster.train"), "{plan}");
    w.ok(&["apply", "-auto-approve"]);
    let after = w.pods("a");
    assert_eq!(after.len(), 2, "the old pods are gone: {after:?}");
    assert!(after.iter().all(|p| p.1 == "Running"), "{after:?}");
    assert!(after.iter().all(|p| !before.iter().any(|b| b.0 == p.0)));

    // skyform is killed while a second cluster's pods start: the next plan adopts them.
    w.config(
        &[("a", 0.0)],
        &format!("{one}\ncluster \"more\" {{\n  resources {{\n    cpus = \"1+\"\n  }}\n}}\n"),
    );
    a.signal("STOP");
    let mut apply = w.command(&["apply", "-auto-approve"]);
    let mut child = apply
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while w.pods("a").len() < 3 {
        assert!(
            Instant::now() < deadline,
            "the second cluster's pod was made"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    a.signal("CONT");
    let state = w.state();
    assert_eq!(state["resources"]["cluster.more"]["status"], "creating");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !w.pods("a").iter().all(|p| p.1 == "Running") {
        assert!(Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(200));
    }
    let plan = w.ok(&["plan"]);
    assert!(plan.contains("adopted"), "{plan}");
    assert!(
        plan.contains("No changes"),
        "nothing is created twice: {plan}"
    );
    w.ok(&["apply", "-auto-approve"]);
    assert_eq!(w.pods("a").len(), 3);
    assert_eq!(w.state()["resources"]["cluster.more"]["status"], "ready");

    // State loses the cluster (`state rm`, an old copy restored): its pods carry this state's
    // lineage, so the plan adopts them rather than making a second cluster.
    let before: Vec<String> = w.pods("a").into_iter().map(|p| p.0).collect();
    let name = w.state()["resources"]["cluster.more"]["private"]["name"].clone();
    w.ok(&["state", "rm", "cluster.more"]);
    let plan = w.ok(&["plan"]);
    assert!(plan.contains("cluster.more"), "{plan}");
    assert!(plan.contains("import"), "{plan}");
    assert!(plan.contains("0 to add"), "{plan}");
    w.ok(&["apply", "-auto-approve"]);
    assert_eq!(
        w.state()["resources"]["cluster.more"]["private"]["name"],
        name
    );
    let after: Vec<String> = w.pods("a").into_iter().map(|p| p.0).collect();
    assert_eq!(before, after, "nothing made twice");

    // Someone deletes the second cluster's pod by hand; its Service is still there, so the
    // plan replaces the cluster (removing the Service) rather than forgetting it.
    let name = w.state()["resources"]["cluster.more"]["private"]["name"]
        .as_str()
        .unwrap()
        .to_string();
    w.rt.block_on(async {
        let pods: Api<Pod> = Api::namespaced(w.client("a").await, "t3");
        let dp = kube::api::DeleteParams {
            grace_period_seconds: Some(0),
            ..Default::default()
        };
        pods.delete(&format!("{name}-0"), &dp).await.unwrap();
    });
    let plan = w.ok(&["plan"]);
    assert!(plan.contains(&format!("service/{name} is left")), "{plan}");
    w.ok(&["apply", "-auto-approve"]);
    let left = w.leftovers("a");
    assert!(!left.iter().any(|o| o.contains(&name)), "{left:?}");
    assert_eq!(
        left.iter().filter(|o| o.starts_with("service/")).count(),
        2,
        "{left:?}"
    );
    w.destroy_leaves_nothing("a");
}

#[test]
#[ignore = "needs kube-apiserver: run ./scripts/test.sh"]
fn the_kubernetes_backend_passes_the_conformance_suite() {
    use skyform::providers::Provider;
    use skyform::providers::conformance::{self, Fixture};
    use skyform::providers::kubernetes::{Context, KubeProvider};
    let Some((kube, _turn)) = begin("the_kubernetes_backend_passes_the_conformance_suite") else {
        return;
    };
    let _a = Fakelet::start(&kube, "a", &["t4-a:cpu=8,memory=32Gi"]);
    let w = Work::new(&kube, "t4");
    let settings = serde_json::json!({
        "kubeconfig": kube.join("kubeconfig").display().to_string(),
        "context": "a",
        "namespace": "t4",
    });
    let ctx = Context::from_infra("a", settings.as_object().unwrap(), w.dir.path());
    let p = KubeProvider::new(vec![ctx]);
    w.rt.block_on(async {
        let offering = p.offerings().await.unwrap().remove(0);
        assert_eq!(offering.infra(), "k8s/a");
        assert_eq!(offering.instance_type, "8cpu-32GiB");
        conformance::run(&p, &Fixture::cluster(2, Some(offering), w.dir.path())).await;
    });
    assert_eq!(
        w.leftovers("a"),
        Vec::<String>::new(),
        "nothing left afterwards"
    );
}

#[test]
#[ignore = "needs kube-apiserver: run ./scripts/test.sh"]
fn an_exceeded_quota_blocks_the_context() {
    let Some((kube, _turn)) = begin("an_exceeded_quota_blocks_the_context") else {
        return;
    };
    let _a = Fakelet::start(&kube, "a", &[&format!("t5-a:{GPU_NODE}")]);
    let _b = Fakelet::start(&kube, "b", &[&format!("t5-b:{GPU_NODE}")]);
    let w = Work::new(&kube, "t5");
    // The namespace in `a` may use 2 GPUs; the nodes say nothing of it.
    w.rt.block_on(async {
        let c = w.client("a").await;
        w.namespace("a", "t5").await;
        let quotas: Api<k8s_openapi::api::core::v1::ResourceQuota> = Api::namespaced(c, "t5");
        let q = serde_json::from_value(serde_json::json!({
            "metadata": { "name": "gpus" },
            "spec": { "hard": { "requests.nvidia.com/gpu": "2" } }
        }))
        .unwrap();
        created(quotas.create(&Default::default(), &q).await);
        // Admission enforces a quota once the controller has counted its usage (before
        // that, and before the apiserver's own cache has seen it, a pod may slip through).
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let synced = quotas.get("gpus").await.ok().is_some_and(|q| {
                q.status
                    .and_then(|s| s.hard)
                    .is_some_and(|h| h.contains_key("requests.nvidia.com/gpu"))
            });
            if synced {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the quota controller counted the quota"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    });
    w.config(
        &[("a", 0.0), ("b", 1.0)],
        "cluster \"train\" {\n  resources {\n    accelerators = \"A100-80GB:4\"\n  }\n}\n",
    );
    let out = w.ok(&["apply", "-auto-approve"]);
    let state = w.state();
    let r = &state["resources"]["cluster.train"];
    assert_eq!(r["placement"]["offering"]["region"], "b", "{out}\n{r}");
    assert!(r["attempts"].to_string().contains("exceeded quota"), "{r}");
    assert_eq!(w.leftovers("a"), Vec::<String>::new(), "nothing stays in a");
    w.destroy_leaves_nothing("b");
}

#[test]
#[ignore = "needs kube-apiserver: run ./scripts/test.sh"]
fn a_user_with_rights_in_one_namespace_only_can_run_clusters() {
    use k8s_openapi::api::core::v1::ServiceAccount;
    use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
    let Some((kube, _turn)) = begin("a_user_with_rights_in_one_namespace_only_can_run_clusters")
    else {
        return;
    };
    let _a = Fakelet::start(&kube, "a", &[&format!("t7-a:{GPU_NODE}")]);
    let w = Work::new(&kube, "t7");
    // A service account that may list nodes, and work in t7 only (docs/kubernetes.md's
    // table of rights).
    let token = w.rt.block_on(async {
        w.namespace("a", "t7").await;
        let c = w.client("a").await;
        fn json<T: serde::de::DeserializeOwned>(v: serde_json::Value) -> T {
            serde_json::from_value(v).unwrap()
        }
        let sa: Api<ServiceAccount> = Api::namespaced(c.clone(), "t7");
        created(sa.create(&Default::default(), &json(serde_json::json!({"metadata": {"name": "limited"}}))).await);
        let roles: Api<Role> = Api::namespaced(c.clone(), "t7");
        // Applied, so a rerun against the same control plane gets today's rules.
        let apply = kube::api::PatchParams::apply("skyform-test").force();
        roles.patch("skyform", &apply, &kube::api::Patch::Apply(serde_json::json!({
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "Role",
            "metadata": {"name": "skyform"},
            "rules": [
                {"apiGroups": [""], "resources": ["pods", "services", "secrets"],
                 "verbs": ["get", "list", "patch", "create", "delete", "deletecollection"]},
                {"apiGroups": [""], "resources": ["pods/log"], "verbs": ["get"]},
                {"apiGroups": [""], "resources": ["pods/exec"], "verbs": ["get", "create"]},
                {"apiGroups": ["batch"], "resources": ["jobs"],
                 "verbs": ["get", "list", "patch", "create", "delete", "deletecollection"]}
            ]
        }))).await.unwrap();
        let bindings: Api<RoleBinding> = Api::namespaced(c.clone(), "t7");
        created(bindings.create(&Default::default(), &json(serde_json::json!({
            "metadata": {"name": "skyform"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "skyform"},
            "subjects": [{"kind": "ServiceAccount", "name": "limited", "namespace": "t7"}]
        }))).await);
        let croles: Api<ClusterRole> = Api::all(c.clone());
        created(croles.create(&Default::default(), &json(serde_json::json!({
            "metadata": {"name": "t7-nodes"},
            "rules": [{"apiGroups": [""], "resources": ["nodes"], "verbs": ["list"]}]
        }))).await);
        let cbindings: Api<ClusterRoleBinding> = Api::all(c.clone());
        created(cbindings.create(&Default::default(), &json(serde_json::json!({
            "metadata": {"name": "t7-nodes"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "t7-nodes"},
            "subjects": [{"kind": "ServiceAccount", "name": "limited", "namespace": "t7"}]
        }))).await);
        // The token controller gives the account a token secret.
        let secrets: Api<Secret> = Api::namespaced(c, "t7");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let found = secrets
                .list(&ListParams::default())
                .await
                .unwrap()
                .items
                .into_iter()
                .find(|s| {
                    s.type_.as_deref() == Some("kubernetes.io/service-account-token")
                        && s.metadata.annotations.as_ref().and_then(|a| a.get("kubernetes.io/service-account.name")).map(String::as_str) == Some("limited")
                });
            if let Some(token) = found.and_then(|s| s.data).and_then(|d| d.get("token").cloned()) {
                break String::from_utf8(token.0).unwrap();
            }
            assert!(Instant::now() < deadline, "the service account got a token");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
    let port = std::fs::read_to_string(kube.join("a/port")).unwrap();
    let kubeconfig = w.dir.path().join("limited.kubeconfig");
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: a\n  cluster:\n    server: https://127.0.0.1:{}\n    certificate-authority: {}\nusers:\n- name: limited\n  user:\n    token: {token}\ncontexts:\n- name: limited\n  context:\n    cluster: a\n    user: limited\n    namespace: t7\ncurrent-context: limited\n",
            port.trim(),
            kube.join("ca.crt").display()
        ),
    )
    .unwrap();
    std::fs::write(
        w.dir.path().join("main.sky.hcl"),
        format!(
            "infra \"kubernetes\" \"a\" {{\n  kubeconfig = \"{}\"\n  context    = \"limited\"\n}}\n\ncluster \"train\" {{\n  resources {{\n    accelerators = \"A100-80GB:2\"\n  }}\n}}\n\njob \"hello\" {{\n  cluster = cluster.train\n  run     = \"echo limited but fine\"\n}}\n",
            kubeconfig.display()
        ),
    )
    .unwrap();
    let plan = w.ok(&["plan"]);
    assert!(plan.contains("k8s/a"), "{plan}");
    w.ok(&["apply", "-auto-approve"]);
    w.wait_for("job.hello", "SUCCEEDED");
    let logs = w.ok(&["logs", "job.hello"]);
    assert!(logs.contains("limited but fine"), "{logs}");
    w.destroy_leaves_nothing("a");
}

#[test]
#[ignore = "needs kube-apiserver: run ./scripts/test.sh"]
fn an_image_that_cannot_be_pulled_fails_at_once_and_leaves_nothing() {
    let Some((kube, _turn)) =
        begin("an_image_that_cannot_be_pulled_fails_at_once_and_leaves_nothing")
    else {
        return;
    };
    let _a = Fakelet::start(&kube, "a", &["t8-a:cpu=8,memory=32Gi"]);
    let w = Work::new(&kube, "t8");
    w.config(
        &[("a", 0.0)],
        "cluster \"train\" {\n  resources {\n    image_id = \"docker:fakelet.invalid/nope:1\"\n  }\n}\n",
    );
    let (ok, out) = w.run(&["apply", "-auto-approve"]);
    assert!(!ok, "{out}");
    assert!(
        out.contains("cannot start: ImagePullBackOff"),
        "the apply says why: {out}"
    );
    // Not a timeout: the reason is the pod's own.
    assert!(!out.contains("running after"), "{out}");
    assert_eq!(
        w.leftovers("a"),
        Vec::<String>::new(),
        "the attempt is cleaned up"
    );
}

#[test]
#[ignore = "needs kube-apiserver: run ./scripts/test.sh"]
fn jobs_run_inside_every_node_of_their_cluster_in_order() {
    let Some((kube, _turn)) = begin("jobs_run_inside_every_node_of_their_cluster_in_order") else {
        return;
    };
    let _a = Fakelet::start(&kube, "a", &[&format!("t9-a:{GPU_NODE}")]);
    let w = Work::new(&kube, "t9");
    w.config(
        &[("a", 0.0)],
        r#"
cluster "train" {
  num_nodes = 2
  envs      = { MODEL = "llama" }
  resources {
    accelerators = "A100-80GB:2"
  }
}

job "first" {
  cluster   = cluster.train
  num_nodes = 2
  run       = "echo rank $SKYFORM_NODE_RANK of $SKYFORM_NUM_NODES trains $MODEL"
}

job "second" {
  cluster    = cluster.train
  run        = "echo after first"
  depends_on = [job.first]
}

job "long" {
  cluster = cluster.train
  run     = "sleep 611"
}
"#,
    );
    w.ok(&["apply", "-auto-approve"]);
    w.wait_for("job.first", "SUCCEEDED");
    w.wait_for("job.second", "SUCCEEDED");
    w.wait_for("job.long", "RUNNING");
    let logs = w.ok(&["logs", "job.first"]);
    assert!(logs.contains("(rank 0) rank 0 of 2 trains llama"), "{logs}");
    assert!(logs.contains("(rank 1) rank 1 of 2 trains llama"), "{logs}");
    assert!(w.ok(&["logs", "job.second"]).contains("after first"));
    // Destroy ends the running job (its process here, as fakelet runs pods) with its cluster
    // and leaves nothing.
    let running = || {
        Command::new("pgrep")
            .args(["-f", "sleep 611"])
            .stdout(Stdio::null())
            .status()
            .unwrap()
            .success()
    };
    assert!(running(), "the job runs");
    w.destroy_leaves_nothing("a");
    assert!(!running(), "the job ended with its cluster");
}

/// Killed after every backend call and every state write of an apply and of a destroy, the
/// same command again converges: the declared pods (and their service and key) after apply,
/// nothing after destroy (tests/support/crash.rs).
#[test]
#[ignore = "needs kube-apiserver: run ./scripts/test.sh"]
fn a_crash_at_every_point_converges() {
    let Some((kube, _turn)) = begin("a_crash_at_every_point_converges") else {
        return;
    };
    let _a = Fakelet::start(&kube, "a", &["t10-a:cpu=8,memory=32Gi"]);
    let w = Work::new(&kube, "t10");
    w.config(
        &[("a", 0.0)],
        r#"
cluster "train" {
  num_nodes = 2
  resources {
    cpus = "2+"
  }
}
"#,
    );
    let world = || w.leftovers("a");
    support::crash::Crashes {
        dir: &w,
        world: &world,
        kinds: &[("call", 1), ("write", 1)],
        min_points: 4,
    }
    .run();
}
