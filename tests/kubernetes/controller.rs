//! Managed jobs, declared controllers and services on Kubernetes.

use super::*;

#[test]
#[ignore = "needs kube-apiserver: run ./scripts/test.sh"]
fn a_managed_job_runs_as_kubernetes_jobs_and_is_recovered_after_eviction() {
    let Some((kube, _turn)) =
        begin("a_managed_job_runs_as_kubernetes_jobs_and_is_recovered_after_eviction")
    else {
        return;
    };
    let a = Fakelet::start(&kube, "a", &[&format!("t6-a:{GPU_NODE}")]);
    let w = Work::new(&kube, "t6");
    w.config(
        &[("a", 0.0)],
        r#"
managed_job "train" {
  resources {
    accelerators = "A100-80GB:1"
  }
  setup = "echo setting up"
  run   = "echo training on rank $SKYFORM_NODE_RANK; sleep 600"
}

managed_job "quick" {
  run = "echo done; exit 0"
}

managed_job "flaky" {
  run = "exit 33"
  recovery {
    strategy              = "failover"
    recover_on_exit_codes = [33]
  }
}
"#,
    );
    w.ok(&["apply", "-auto-approve"]);
    w.wait_for("managed_job.train", "RUNNING");
    w.wait_for("managed_job.quick", "SUCCEEDED");
    // Exit code 33 is recovered without counting: the controller launches it again.
    let flaky = w.wait_until("managed_job.flaky", "a second attempt", |j| {
        j["attempt"].as_u64() >= Some(2)
    });
    assert!(
        flaky["history"]
            .to_string()
            .contains("exit code 33 is in recover_on_exit_codes"),
        "{flaky}"
    );
    let logs = w.ok(&["logs", "managed_job.train"]);
    assert!(
        logs.contains("setting up") && logs.contains("training on rank 0"),
        "{logs}"
    );
    let first: Vec<_> = w
        .pods("a")
        .into_iter()
        .filter(|p| p.0.contains("train"))
        .collect();
    assert_eq!(first.len(), 1, "{first:?}");
    assert_eq!(first[0].2, "t6-a");
    // The node takes the pod away: the controller launches the job again, with no apply.
    a.evict("t6", &first[0].0);
    let train = w.wait_until("managed_job.train", "attempt 2, running", |j| {
        j["attempt"] == 2 && j["status"] == "RUNNING"
    });
    let events = train["history"].to_string();
    assert!(
        events.contains("lost") && events.contains("recovered"),
        "{train}"
    );
    let now: Vec<_> = w
        .pods("a")
        .into_iter()
        .filter(|p| p.0.contains("train"))
        .collect();
    assert_eq!(now.len(), 1, "the evicted pod's Job is gone: {now:?}");
    assert_ne!(now[0].0, first[0].0);
    let plan = w.ok(&["plan"]);
    assert!(
        !plan.contains("managed_job.quick will") && !plan.contains("managed_job.train will"),
        "the controller keeps them; apply has nothing to do: {plan}"
    );
    w.destroy_leaves_nothing("a");
}

/// `controller "main" { infra = "k8s/a" }`: apply runs the controller as a Deployment (the
/// state in moto's S3, which the pod reaches with the credentials given in `secrets`); no
/// controller runs on the applying machine; the pod's controller runs the managed job and
/// serves the service at the pod's address, and a new pod takes over both when its pod is
/// deleted; destroy removes everything it made.
#[test]
#[ignore = "needs kube-apiserver and moto: run ./scripts/test.sh"]
fn a_declared_controller_runs_as_a_deployment_and_survives_its_pod() {
    let test = "a_declared_controller_runs_as_a_deployment_and_survives_its_pod";
    let Some((kube, _turn)) = begin(test) else {
        return;
    };
    let Ok(s3) = std::env::var("SKYFORM_TEST_S3_ENDPOINT") else {
        support::skip_or_fail(test, "SKYFORM_TEST_S3_ENDPOINT is not set (moto)", true);
        return;
    };
    let a = Fakelet::start(&kube, "a", &["t20-a:cpu=8,memory=32Gi"]);
    // The image the Deployment names holds this build of skyform.
    a.push(
        "skyform-test:dev",
        Path::new(env!("CARGO_BIN_EXE_skyform")),
        "skyform",
    );
    let bucket = format!("ctl-{}", uuid::Uuid::new_v4().simple());
    let made = Command::new("curl")
        .args(["-sf", "-X", "PUT", &format!("{s3}/{bucket}")])
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(made.success(), "creating bucket {bucket} on moto");
    let port = support::free_port();
    let w = Work::new_with(
        &kube,
        "t20",
        &[
            ("AWS_ACCESS_KEY_ID", "testing"),
            ("AWS_SECRET_ACCESS_KEY", "testing"),
        ],
    );
    w.config(
        &[("a", 0.0)],
        &format!(
            r#"
skyform {{
  state "s3" {{
    bucket   = "{bucket}"
    key      = "team/state.json"
    endpoint = "{s3}"
  }}
}}

controller "main" {{
  infra = "k8s/a"
  image = "skyform-test:dev"
  envs = {{
    SKYFORM_CONTROLLER_TICK_MS      = "300"
    SKYFORM_CONTROLLER_GRACE_MS     = "600"
    SKYFORM_CONTROLLER_LEASE_TTL_MS = "4000"
    SKYFORM_SERVE_PROBE_MS          = "300"
  }}
  secrets = {{
    AWS_ACCESS_KEY_ID     = "testing"
    AWS_SECRET_ACCESS_KEY = "testing"
  }}
}}

managed_job "train" {{
  resources {{
    infra = "k8s/a"
  }}
  run = "echo step one; sleep 6; echo step two"
}}

service "web" {{
  run = "python3 {root}/testdata/services/replica.py --host 0.0.0.0 --port $PORT --version v1"
  resources {{
    infra = "k8s/a"
    ports = [{port}]
  }}
  readiness_probe {{
    path                  = "/"
    initial_delay_seconds = 60
  }}
}}
"#,
            root = env!("CARGO_MANIFEST_DIR"),
        ),
    );
    let plan = w.ok(&["plan"]);
    assert!(
        plan.contains("controller.main will be created")
            && plan.contains("infra \"kubernetes\" \"a\""),
        "the plan shows the controller and the configuration it runs with:\n{plan}"
    );
    assert!(!plan.contains("testing"), "secrets stay hidden:\n{plan}");
    w.ok(&["apply", "-auto-approve"]);
    // The controller's pod, not this machine, holds the lease and runs the job.
    let lease = |w: &Work| -> serde_json::Value {
        let out = w.ok(&["controller", "status", "-json"]);
        serde_json::from_str::<serde_json::Value>(&out).unwrap()["lease"].clone()
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    let first = loop {
        let l = lease(&w);
        if let Some(pid) = l["pid"].as_u64() {
            break pid;
        }
        assert!(
            Instant::now() < deadline,
            "the pod's controller takes the lease"
        );
        std::thread::sleep(Duration::from_millis(300));
    };
    let environ = std::fs::read(format!("/proc/{first}/environ")).unwrap_or_default();
    assert!(
        String::from_utf8_lossy(&environ).contains("SKYFORM_KUBE_IN_CLUSTER=a"),
        "the lease holder (process {first}) is the Deployment's pod"
    );
    assert!(
        !w.path().join(".skyform/controller.log").exists(),
        "apply started no controller here"
    );
    w.wait_for("managed_job.train", "RUNNING");
    // The pod goes away mid-run: the Deployment makes another, whose controller takes over.
    let pods: Vec<String> = w
        .pods("a")
        .into_iter()
        .filter(|p| p.0.starts_with("sky-main-"))
        .map(|p| p.0)
        .collect();
    assert_eq!(pods.len(), 1, "{pods:?}");
    w.rt.block_on(async {
        let api: Api<Pod> = Api::namespaced(w.client("a").await, "t20");
        api.delete(&pods[0], &Default::default()).await.unwrap();
    });
    let train = w.wait_for("managed_job.train", "SUCCEEDED");
    assert_eq!(train["attempt"], 1, "the job ran once: {train}");
    let second = lease(&w)["pid"].as_u64().unwrap_or(0);
    assert_ne!(second, first, "a new pod's controller holds the lease");
    let logs = w.ok(&["logs", "managed_job.train"]);
    assert!(logs.contains("step two"), "{logs}");
    // The service is served by the new pod's balancer, at the address the pod gives (the
    // fakelet's pods have loopback's).
    let row = w.wait_until("service.web", "a ready replica", |r| {
        support::replicas(r).iter().any(|x| x.2 == "READY")
    });
    assert_eq!(row["endpoint"], format!("http://127.0.0.1:{port}"), "{row}");
    let answer = support::http(port, "GET", "/x").unwrap();
    assert!(
        answer.starts_with("HTTP/1.1 200") && answer.contains("version=v1"),
        "{answer}"
    );
    w.ok(&["destroy", "-auto-approve"]);
    let left = w.rt.block_on(async {
        let c = w.client("a").await;
        let deployments: Api<k8s_openapi::api::apps::v1::Deployment> =
            Api::namespaced(c.clone(), "t20");
        let maps: Api<k8s_openapi::api::core::v1::ConfigMap> = Api::namespaced(c.clone(), "t20");
        let roles: Api<k8s_openapi::api::rbac::v1::ClusterRole> = Api::all(c);
        let lp = ListParams::default().labels("skyform.dev/controller");
        (
            deployments.list(&lp).await.unwrap().items.len(),
            maps.list(&lp).await.unwrap().items.len(),
            roles.list(&lp).await.unwrap().items.len(),
        )
    });
    assert_eq!(
        left,
        (0, 0, 0),
        "destroy removes the Deployment, its ConfigMap and its roles"
    );
    assert_eq!(w.leftovers("a"), Vec::<String>::new());
    drop(a);
}

/// The pod skyform's controller Deployment makes (issue 17): a service account whose token
/// works under RBAC, a working directory on an emptyDir, configuration files mounted one by
/// one with subPath, envFrom, and an image "pushed" to the fakelet; exec sees the pod's
/// files; an ended container restarts in its pod; a deleted pod is replaced by the
/// Deployment's ReplicaSet, the new one seeing the same.
#[test]
#[ignore = "needs kube-apiserver: run ./scripts/test.sh"]
fn a_controller_deployment_runs_with_its_volumes_and_service_account() {
    use k8s_openapi::api::apps::v1::Deployment;
    use k8s_openapi::api::core::v1::{ConfigMap, ServiceAccount};
    use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
    let Some((kube, _turn)) =
        begin("a_controller_deployment_runs_with_its_volumes_and_service_account")
    else {
        return;
    };
    let a = Fakelet::start(&kube, "a", &["t11-a:cpu=8,memory=32Gi"]);
    a.push(
        "skyform-test/skyform:dev",
        Path::new(support::BIN),
        "skyform",
    );
    let w = Work::new(&kube, "t11");
    // Every check prints a line; the pod then stays up, as a controller does.
    let script = r#"
echo "cwd=$(pwd)"
echo "main=$(cat main.hcl)"
echo "module=$(cat modules/net/main.hcl)"
echo scratch >written.txt && echo "wrote=$(cat /var/lib/skyform/written.txt)"
echo "from_secret=$SKY_ACCESS_KEY from_config=$MODE"
echo "image=$(skyform --version)"
sa=/var/run/secrets/kubernetes.io/serviceaccount
api="https://$KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT/api/v1/namespaces/$(cat $sa/namespace)"
get() { curl -s -o "$2" -w '%{http_code}' --cacert $sa/ca.crt -H "Authorization: Bearer $(cat $sa/token)" "$api/$1"; }
echo "own_pod=$(get pods/$POD_NAME self.json) $(grep -q "\"name\": \"$POD_NAME\"" self.json && echo named)"
echo "secrets=$(get secrets /dev/null)"
echo checked
echo $$ >main.pid
exec sleep 600
"#;
    let (names, uid) = w.rt.block_on(async {
        w.namespace("a", "t11").await;
        let c = w.client("a").await;
        fn json<T: serde::de::DeserializeOwned>(v: serde_json::Value) -> T {
            serde_json::from_value(v).unwrap()
        }
        let now = kube::api::DeleteParams {
            grace_period_seconds: Some(0),
            ..Default::default()
        };
        // What an earlier run left: its Deployment and pods.
        let deployments: Api<Deployment> = Api::namespaced(c.clone(), "t11");
        let pods: Api<Pod> = Api::namespaced(c.clone(), "t11");
        let _ = deployments.delete("skyform-controller", &now).await;
        let _ = pods
            .delete_collection(&now, &ListParams::default().labels("app=skyform-controller"))
            .await;
        let dp = Default::default();
        let sa: Api<ServiceAccount> = Api::namespaced(c.clone(), "t11");
        created(sa.create(&dp, &json(serde_json::json!({"metadata": {"name": "skyform-controller"}}))).await);
        let roles: Api<Role> = Api::namespaced(c.clone(), "t11");
        created(roles.create(&dp, &json(serde_json::json!({
            "metadata": {"name": "skyform-controller"},
            "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get"]}]
        }))).await);
        let bindings: Api<RoleBinding> = Api::namespaced(c.clone(), "t11");
        created(bindings.create(&dp, &json(serde_json::json!({
            "metadata": {"name": "skyform-controller"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "skyform-controller"},
            "subjects": [{"kind": "ServiceAccount", "name": "skyform-controller", "namespace": "t11"}]
        }))).await);
        let maps: Api<ConfigMap> = Api::namespaced(c.clone(), "t11");
        created(maps.create(&dp, &json(serde_json::json!({
            "metadata": {"name": "skyform-config"},
            "data": {"f0": "cluster \"x\" {}", "f1": "variable \"cidr\" {}", "MODE": "watch"}
        }))).await);
        let secrets: Api<Secret> = Api::namespaced(c.clone(), "t11");
        created(secrets.create(&dp, &json(serde_json::json!({
            "metadata": {"name": "skyform-credentials"},
            "stringData": {"ACCESS_KEY": "AKIDEXAMPLE"}
        }))).await);
        let deployment = json(serde_json::json!({
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": "skyform-controller"},
            "spec": {
                "replicas": 1,
                "selector": {"matchLabels": {"app": "skyform-controller"}},
                "template": {
                    "metadata": {"labels": {"app": "skyform-controller"}},
                    "spec": {
                        "serviceAccountName": "skyform-controller",
                        "terminationGracePeriodSeconds": 5,
                        "containers": [{
                            "name": "controller",
                            "image": "skyform-test/skyform:dev",
                            "command": ["sh", "-c", script],
                            "workingDir": "/var/lib/skyform",
                            "env": [{"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}],
                            "envFrom": [
                                {"secretRef": {"name": "skyform-credentials"}, "prefix": "SKY_"},
                                {"configMapRef": {"name": "skyform-config"}}
                            ],
                            "volumeMounts": [
                                {"name": "work", "mountPath": "/var/lib/skyform"},
                                {"name": "config", "mountPath": "/var/lib/skyform/main.hcl", "subPath": "main.hcl"},
                                {"name": "config", "mountPath": "/var/lib/skyform/modules/net/main.hcl", "subPath": "modules/net/main.hcl"}
                            ]
                        }],
                        "volumes": [
                            {"name": "work", "emptyDir": {}},
                            {"name": "config", "configMap": {"name": "skyform-config", "items": [
                                {"key": "f0", "path": "main.hcl"},
                                {"key": "f1", "path": "modules/net/main.hcl"}
                            ]}}
                        ]
                    }
                }
            }
        }));
        deployments.create(&dp, &deployment).await.unwrap();
        let first = controller_pod(&pods, None, &a).await;
        let uid = pods.get(&first).await.unwrap().metadata.uid.unwrap();
        // Exec sees the pod's files, from its working directory.
        let ap = kube::api::AttachParams::default().stderr(false);
        let mut run = pods
            .exec(&first, ["cat", "main.hcl", "written.txt"], &ap)
            .await
            .unwrap();
        let mut seen = String::new();
        tokio::io::AsyncReadExt::read_to_string(&mut run.stdout().unwrap(), &mut seen)
            .await
            .unwrap();
        run.join().await.unwrap();
        assert_eq!(seen, "cluster \"x\" {}scratch\n", "exec in the pod's mounts");
        // The container ends: it starts again in the same pod (restartPolicy Always), at
        // once the first time, with the same volumes.
        let mut run = pods
            .exec(&first, ["sh", "-c", "kill $(cat main.pid)"], &ap)
            .await
            .unwrap();
        // Its status may not come: exec'd processes end with the container, as in a kubelet.
        let _ = run.take_status().unwrap().await;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let logs = pods.logs(&first, &Default::default()).await.unwrap();
            let status = pods.get(&first).await.unwrap().status.unwrap();
            let restarts = status.container_statuses.unwrap_or_default()[0].restart_count;
            if restarts == 1 && logs.matches("checked").count() == 2 {
                assert!(logs.ends_with("checked\n"), "{logs}");
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the container restarted ({restarts}):\n{logs}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        // A deleted pod: the ReplicaSet makes another, which runs the same.
        pods.delete(&first, &Default::default()).await.unwrap();
        let second = controller_pod(&pods, Some(&first), &a).await;
        (vec![first, second], uid)
    });
    assert_ne!(names[0], names[1]);
    let left: Vec<_> = w.pods("a").into_iter().map(|p| p.0).collect();
    assert_eq!(left, vec![names[1].clone()], "the first pod is gone");
    // Its volumes go with it (the fakelet removes them as it finishes the deletion, a
    // moment after the API forgets the pod); no mount of a pod is seen outside it.
    let deadline = Instant::now() + Duration::from_secs(20);
    while a.dir.path().join("volumes").join(&uid).exists() {
        assert!(
            Instant::now() < deadline,
            "the first pod's volumes are removed"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(!mounts.contains(a.dir.path().to_str().unwrap()), "{mounts}");
    w.rt.block_on(async {
        let c = w.client("a").await;
        let deployments: Api<Deployment> = Api::namespaced(c, "t11");
        deployments
            .delete("skyform-controller", &Default::default())
            .await
            .unwrap();
    });
}

/// Waits for the controller Deployment's running pod (not `old`), checks what it logged and
/// returns its name.
async fn controller_pod(pods: &Api<Pod>, old: Option<&str>, fakelet: &Fakelet) -> String {
    let deadline = Instant::now() + Duration::from_secs(60);
    let lp = ListParams::default().labels("app=skyform-controller");
    let name = loop {
        let running = pods.list(&lp).await.unwrap().items.into_iter().find(|p| {
            p.metadata.name.as_deref() != old
                && p.metadata.deletion_timestamp.is_none()
                && p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")
        });
        if let Some(p) = running {
            break p.metadata.name.unwrap();
        }
        assert!(
            Instant::now() < deadline,
            "the Deployment's pod runs:\n{}",
            fakelet.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let mut logs = String::new();
    while !logs.contains("checked") {
        assert!(Instant::now() < deadline, "the pod checked:\n{logs}");
        tokio::time::sleep(Duration::from_millis(200)).await;
        logs = pods.logs(&name, &Default::default()).await.unwrap();
    }
    for want in [
        "cwd=/var/lib/skyform\n",
        "main=cluster \"x\" {}\n",
        "module=variable \"cidr\" {}\n",
        "wrote=scratch\n",
        "from_secret=AKIDEXAMPLE from_config=watch\n",
        "image=skyform ",
        // Its own pod, as the service account the Role lets read pods, and nothing else.
        "own_pod=200 named\n",
        "secrets=403\n",
    ] {
        assert!(logs.contains(want), "{want:?} in the pod's log:\n{logs}");
    }
    name
}

/// A service on Kubernetes: its replica is a pod (a Kubernetes Job) whose address the
/// controller asks of the API; the balancer at the endpoint serves it, and a new version's
/// pod comes up before the old one drains — no failed request in between.
#[test]
#[ignore = "needs kube-apiserver: run ./scripts/test.sh"]
fn a_service_serves_from_a_pod_and_rolls_to_a_new_version() {
    let Some((kube, _turn)) = begin("a_service_serves_from_a_pod_and_rolls_to_a_new_version")
    else {
        return;
    };
    let _a = Fakelet::start(&kube, "a", &[&format!("t21-a:{GPU_NODE}")]);
    let w = Work::new_with(&kube, "t21", &[("SKYFORM_SERVE_PROBE_MS", "300")]);
    let port = support::free_port();
    let service = |version: &str| {
        format!(
            "service \"web\" {{\n  run = \"python3 {}/testdata/services/replica.py --host 0.0.0.0 --port $PORT --version {version}\"\n  resources {{\n    infra = \"k8s/a\"\n    ports = [{port}]\n  }}\n  readiness_probe {{\n    path                  = \"/\"\n    initial_delay_seconds = 60\n  }}\n}}\n",
            env!("CARGO_MANIFEST_DIR")
        )
    };
    let get = move || support::http(port, "GET", "/x").unwrap();
    w.config(&[("a", 0.0)], &service("v1"));
    w.ok(&["apply", "-auto-approve"]);
    w.wait_until("service.web", "a ready replica", |r| {
        support::replicas(r).iter().any(|x| x.2 == "READY")
    });
    let first = get();
    assert!(
        first.starts_with("HTTP/1.1 200") && first.contains("version=v1"),
        "{first}"
    );
    w.config(&[("a", 0.0)], &service("v2"));
    w.ok(&["apply", "-auto-approve"]);
    support::serve_until_rolled(&w, "service.web", port, 2);
    assert!(get().contains("version=v2"));
    w.destroy_leaves_nothing("a");
}
