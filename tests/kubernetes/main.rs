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

#[path = "../support/mod.rs"]
mod support;

mod clusters;
mod controller;

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
