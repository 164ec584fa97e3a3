//! The Kubernetes backend against two real control planes (kube-apiserver, controller
//! manager and scheduler 1.20.2 on one etcd, started by `scripts/kube.sh`) with
//! `scripts/fakelet.py` standing in for kubelets: it registers each test's nodes and runs
//! their pods as local processes.
//!
//! The tests share the control planes' nodes, so they take turns (one lock); each has its
//! own namespace and node names. Without `SKYFORM_TEST_KUBE_DIR` they say SKIPPED and pass
//! (`scripts/test.sh` prints a NOTE when the binaries cannot be had), except under `CI=true`,
//! where they fail: CI has the binaries.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Pod, Secret, Service};
use kube::api::{Api, ListParams};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

static TURN: Mutex<()> = Mutex::new(());

/// The control planes' directory and this test's turn, or None (and a SKIPPED line) when
/// there are no control planes; under `CI=true` that is a failure (`scripts/test.sh`
/// always starts them there).
fn begin(test: &str) -> Option<(PathBuf, std::sync::MutexGuard<'static, ()>)> {
    match std::env::var_os("SKYFORM_TEST_KUBE_DIR") {
        Some(d) => Some((
            PathBuf::from(d),
            TURN.lock().unwrap_or_else(|e| e.into_inner()),
        )),
        None => {
            support::skip_or_fail(
                test,
                "SKYFORM_TEST_KUBE_DIR is not set (run ./scripts/test.sh, or eval \"$(scripts/kube.sh start)\")",
                true,
            );
            None
        }
    }
}

/// A fake kubelet for one control plane, with its nodes; stopped (and its nodes deleted) on
/// drop.
struct Fakelet {
    child: Child,
    dir: tempfile::TempDir,
}

impl Fakelet {
    fn start(kube: &Path, context: &str, nodes: &[&str]) -> Fakelet {
        let dir = tempfile::Builder::new()
            .prefix("fakelet")
            .tempdir_in("/tmp")
            .unwrap();
        let port = std::fs::read_to_string(kube.join(context).join("port")).unwrap();
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/fakelet.py");
        let mut cmd = Command::new("python3");
        cmd.arg(script)
            .arg("--server")
            .arg(format!("https://127.0.0.1:{}", port.trim()))
            .arg("--ca")
            .arg(kube.join("ca.crt"))
            .arg("--token-file")
            .arg(kube.join("token"))
            .arg("--dir")
            .arg(dir.path())
            .arg("--images")
            .arg(dir.path().join("images"));
        for n in nodes {
            cmd.arg("--node").arg(n);
        }
        let log = std::fs::File::create(dir.path().join("fakelet.log")).unwrap();
        let child = cmd
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        let f = Fakelet { child, dir };
        let deadline = Instant::now() + Duration::from_secs(30);
        while !f.dir.path().join("control-port").exists() {
            assert!(Instant::now() < deadline, "fakelet came up:\n{}", f.log());
            std::thread::sleep(Duration::from_millis(100));
        }
        f
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("fakelet.log")).unwrap_or_default()
    }

    /// "Pushes" image `name` (`NAME:TAG`) holding `program` as `bin/NAME_IN_IMAGE`: pods of
    /// that image find it first on their PATH.
    fn push(&self, name: &str, program: &Path, name_in_image: &str) {
        let bin = self
            .dir
            .path()
            .join("images")
            .join(name.replace(['/', ':'], "_"))
            .join("bin");
        std::fs::create_dir_all(&bin).unwrap();
        std::os::unix::fs::symlink(program, bin.join(name_in_image)).unwrap();
    }

    /// As a kubelet under memory pressure: the pod's process is killed and it is marked
    /// Failed/Evicted.
    fn evict(&self, namespace: &str, pod: &str) {
        let port = std::fs::read_to_string(self.dir.path().join("control-port")).unwrap();
        let ok = Command::new("curl")
            .args(["-sf", "-X", "POST"])
            .arg(format!(
                "http://127.0.0.1:{}/evict/{namespace}/{pod}",
                port.trim()
            ))
            .status()
            .unwrap()
            .success();
        assert!(ok, "the fakelet evicts {pod}:\n{}", self.log());
    }

    fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.child.id().to_string())
            .status()
            .unwrap()
            .success();
        assert!(ok);
    }
}

impl Drop for Fakelet {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .arg("-CONT")
            .arg(self.child.id().to_string())
            .status();
        let _ = Command::new("kill")
            .arg(self.child.id().to_string())
            .status();
        let _ = self.child.wait();
    }
}

/// A configuration directory with its own home, and the kube API for checks.
struct Work {
    dir: support::Workdir,
    kube: PathBuf,
    namespace: String,
    rt: tokio::runtime::Runtime,
}

impl std::ops::Deref for Work {
    type Target = support::Workdir;
    fn deref(&self) -> &support::Workdir {
        &self.dir
    }
}

impl Work {
    fn new(kube: &Path, namespace: &str) -> Work {
        Work::new_with(kube, namespace, &[])
    }

    /// As [`Work::new`], with more variables in skyform's environment.
    fn new_with(kube: &Path, namespace: &str, env: &[(&str, &str)]) -> Work {
        let mut dir = support::Workdir::new()
            .with_home()
            .env("SKYFORM_K8S_START_TIMEOUT", "60s")
            // The controller apply starts decides in test time.
            .env("SKYFORM_CONTROLLER_TICK_MS", "300")
            .env("SKYFORM_CONTROLLER_GRACE_MS", "600");
        for (k, v) in env {
            dir = dir.env(k, v);
        }
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        let w = Work {
            dir,
            kube: kube.to_path_buf(),
            namespace: namespace.to_string(),
            rt,
        };
        w.sweep();
        w
    }

    /// Removes what an earlier, failed run against the same control planes left in this
    /// test's namespace (objects skyform made carry a lineage label), so each run starts
    /// from an empty namespace.
    fn sweep(&self) {
        self.rt.block_on(async {
            for context in ["a", "b"] {
                let c = self.client(context).await;
                let ns = &self.namespace;
                let lp = ListParams::default().labels("skyform.dev/lineage");
                let now = kube::api::DeleteParams {
                    grace_period_seconds: Some(0),
                    ..Default::default()
                };
                let _ = Api::<Job>::namespaced(c.clone(), ns)
                    .delete_collection(&now, &lp)
                    .await;
                let _ = Api::<Pod>::namespaced(c.clone(), ns)
                    .delete_collection(&now, &lp)
                    .await;
                let _ = Api::<Secret>::namespaced(c.clone(), ns)
                    .delete_collection(&now, &lp)
                    .await;
                let _ = Api::<k8s_openapi::api::apps::v1::Deployment>::namespaced(c.clone(), ns)
                    .delete_collection(&now, &lp)
                    .await;
                let _ = Api::<k8s_openapi::api::core::v1::ConfigMap>::namespaced(c.clone(), ns)
                    .delete_collection(&now, &lp)
                    .await;
                // A declared controller's cluster roles, bound to this namespace's account.
                let roles: Api<k8s_openapi::api::rbac::v1::ClusterRoleBinding> =
                    Api::all(c.clone());
                for b in roles.list(&lp).await.map(|l| l.items).unwrap_or_default() {
                    let here = b
                        .subjects
                        .iter()
                        .flatten()
                        .any(|s| s.namespace.as_deref() == Some(ns));
                    let name = b.metadata.name.unwrap_or_default();
                    if here {
                        let _ = roles.delete(&name, &now).await;
                        let _ = Api::<k8s_openapi::api::rbac::v1::ClusterRole>::all(c.clone())
                            .delete(&name, &now)
                            .await;
                    }
                }
                let services: Api<Service> = Api::namespaced(c, ns);
                for s in services
                    .list(&lp)
                    .await
                    .map(|l| l.items)
                    .unwrap_or_default()
                {
                    let _ = services
                        .delete(&s.metadata.name.unwrap_or_default(), &now)
                        .await;
                }
            }
        });
    }

    /// `infra "kubernetes"` blocks for the contexts (with their price per hour), then `body`.
    fn config(&self, contexts: &[(&str, f64)], body: &str) {
        let mut text = String::new();
        for (c, price) in contexts {
            text.push_str(&format!(
                "infra \"kubernetes\" \"{c}\" {{\n  kubeconfig     = \"{}\"\n  context        = \"{c}\"\n  namespace      = \"{}\"\n  price_per_hour = {price}\n}}\n\n",
                self.kube.join("kubeconfig").display(),
                self.namespace
            ));
        }
        text.push_str(body);
        self.write_config(&text);
    }

    async fn client(&self, context: &str) -> kube::Client {
        let kc = kube::config::Kubeconfig::read_from(self.kube.join("kubeconfig")).unwrap();
        let opts = kube::config::KubeConfigOptions {
            context: Some(context.into()),
            ..Default::default()
        };
        let config = kube::Config::from_custom_kubeconfig(kc, &opts)
            .await
            .unwrap();
        kube::Client::try_from(config).unwrap()
    }

    /// Names of the pods in this test's namespace of `context` (with their phase).
    fn pods(&self, context: &str) -> Vec<(String, String, String)> {
        self.rt.block_on(async {
            let api: Api<Pod> = Api::namespaced(self.client(context).await, &self.namespace);
            let mut out: Vec<(String, String, String)> = api
                .list(&ListParams::default())
                .await
                .unwrap()
                .items
                .into_iter()
                .map(|p| {
                    (
                        p.metadata.name.clone().unwrap_or_default(),
                        p.status.and_then(|s| s.phase).unwrap_or_default(),
                        p.spec.and_then(|s| s.node_name).unwrap_or_default(),
                    )
                })
                .collect();
            out.sort();
            out
        })
    }

    /// Everything skyform makes, in this test's namespace of `context`, by kind.
    fn leftovers(&self, context: &str) -> Vec<String> {
        self.rt.block_on(async {
            let c = self.client(context).await;
            let ns = &self.namespace;
            let lp = ListParams::default();
            let mut out = Vec::new();
            for p in Api::<Pod>::namespaced(c.clone(), ns)
                .list(&lp)
                .await
                .unwrap()
            {
                out.push(format!("pod/{}", p.metadata.name.unwrap_or_default()));
            }
            for s in Api::<Service>::namespaced(c.clone(), ns)
                .list(&lp)
                .await
                .unwrap()
            {
                out.push(format!("service/{}", s.metadata.name.unwrap_or_default()));
            }
            for j in Api::<Job>::namespaced(c.clone(), ns)
                .list(&lp)
                .await
                .unwrap()
            {
                out.push(format!("job/{}", j.metadata.name.unwrap_or_default()));
            }
            for s in Api::<Secret>::namespaced(c, ns).list(&lp).await.unwrap() {
                // The service account's token is the namespace's own.
                if s.type_.as_deref() != Some("kubernetes.io/service-account-token") {
                    out.push(format!("secret/{}", s.metadata.name.unwrap_or_default()));
                }
            }
            out
        })
    }

    /// Every pod, Job and Secret of this test's namespace, as JSON text.
    fn everything(&self, context: &str) -> String {
        self.rt.block_on(async {
            let c = self.client(context).await;
            let ns = &self.namespace;
            let lp = ListParams::default();
            let pods = Api::<Pod>::namespaced(c.clone(), ns)
                .list(&lp)
                .await
                .unwrap();
            let jobs = Api::<Job>::namespaced(c.clone(), ns)
                .list(&lp)
                .await
                .unwrap();
            let secrets = Api::<Secret>::namespaced(c, ns).list(&lp).await.unwrap();
            format!(
                "{}{}{}",
                serde_json::to_string(&pods.items).unwrap(),
                serde_json::to_string(&jobs.items).unwrap(),
                serde_json::to_string(&secrets.items).unwrap()
            )
        })
    }

    /// `skyform destroy`, after which the namespace holds nothing of skyform's.
    fn destroy_leaves_nothing(&self, context: &str) {
        self.ok(&["destroy", "-auto-approve"]);
        assert_eq!(
            self.leftovers(context),
            Vec::<String>::new(),
            "destroy leaves the namespace empty"
        );
    }

    /// Makes a namespace in `context` (it may be there from an earlier run).
    async fn namespace(&self, context: &str, name: &str) {
        let ns: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(self.client(context).await);
        let body = serde_json::from_value(serde_json::json!({"metadata": {"name": name}})).unwrap();
        created(ns.create(&Default::default(), &body).await);
    }
}

/// A create that succeeded, or found the object there from an earlier run.
fn created<T>(r: Result<T, kube::Error>) {
    match r {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.code == 409 => {}
        Err(e) => panic!("create: {e}"),
    }
}

const GPU_NODE: &str = "cpu=16,memory=64Gi,gpus=8,product=NVIDIA-A100-SXM4-80GB";

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
