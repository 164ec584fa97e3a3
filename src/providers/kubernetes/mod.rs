//! Kubernetes clusters one already has (`infra "kubernetes" "NAME" { context, namespace,
//! kubeconfig }`): each declared context is a failover target, reached with the `kube` crate
//! over rustls and the credentials of its kubeconfig.
//!
//! A skyform cluster is N pods (rank 0 is the head) behind a headless Service; a job on it
//! runs inside those pods through the exec API ([`exec`]); a managed job is one Kubernetes
//! Job per rank with resources of its own.
//! Every object carries `skyform.dev/lineage` and `skyform.dev/address` and is written with
//! server-side apply under the field manager `skyform`, so each call can be repeated.
//! [`capacity`] turns nodes and pods into offers; [`objects`] builds what is applied.

pub mod capacity;
mod exec;
pub mod objects;

use super::{Created, ErrorKind, Observed, ProviderError, Request};
use crate::model::{Address, Spec};
use crate::optimizer::{Candidate, Offering};
use crate::state::{ResourceState, Status};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Namespace, Node, Pod, Secret, Service};
use kube::api::{Api, DeleteParams, ListParams, LogParams, Patch, PatchParams, PropagationPolicy};
use objects::{LABEL_CLUSTER, LABEL_JOB, LABEL_RANK, Owner, PodShape};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The field manager of every server-side apply.
const MANAGER: &str = "skyform";

/// One `infra "kubernetes" "NAME"` block.
#[derive(Debug, Clone)]
pub struct Context {
    /// The block's name: the region of its offers (`k8s/NAME`).
    pub name: String,
    /// The kubeconfig context (the block's name when unset).
    pub context: String,
    /// Overrides the context's namespace.
    pub namespace: Option<String>,
    pub kubeconfig: PathBuf,
    pub price_micros: u64,
    /// How long pods may take to be scheduled and start.
    pub start_timeout: Duration,
}

impl Context {
    pub fn from_infra(
        name: &str,
        settings: &serde_json::Map<String, serde_json::Value>,
        home: &Path,
    ) -> Context {
        let text = |k: &str| settings.get(k).and_then(|v| v.as_str()).map(String::from);
        let kubeconfig = match text("kubeconfig") {
            Some(p) => expand(&p, home),
            None => std::env::var_os("KUBECONFIG")
                .and_then(|v| std::env::split_paths(&v).next())
                .unwrap_or_else(|| home.join(".kube/config")),
        };
        let start_timeout = std::env::var("SKYFORM_K8S_START_TIMEOUT")
            .ok()
            .and_then(|s| humantime::parse_duration(&s).ok())
            .unwrap_or(Duration::from_secs(600));
        Context {
            name: name.to_string(),
            context: text("context").unwrap_or_else(|| name.to_string()),
            namespace: text("namespace"),
            kubeconfig,
            price_micros: settings
                .get("price_per_hour")
                .and_then(serde_json::Value::as_f64)
                .map_or(0, crate::optimizer::micros_from_dollars),
            start_timeout,
        }
    }
}

fn expand(p: &str, home: &Path) -> PathBuf {
    match p.strip_prefix("~/") {
        Some(rest) => home.join(rest),
        None => PathBuf::from(p),
    }
}

/// What state records for a cluster or job, next to its spec.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
struct Private {
    /// The object name: the Service and the pods' prefix (cluster), or the Jobs' prefix and
    /// the Secret (job).
    name: String,
    #[serde(default)]
    lineage: String,
    /// The infra block (and so the context) it was made in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    context: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    namespace: Option<String>,
    /// Job: its id (the same as `name`), which `skyform` commands read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    job_id: Option<String>,
    /// Job on a cluster: the cluster's object name (its pods are `CLUSTER-RANK`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    cluster: Option<String>,
}

impl Private {
    fn of(res: &ResourceState) -> Option<Private> {
        serde_json::from_value(res.private.clone()).ok()
    }
}

/// A connection to one context, with the namespace skyform works in there.
#[derive(Clone)]
struct Conn {
    client: kube::Client,
    namespace: String,
    context: Context,
}

impl std::fmt::Debug for Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Conn({}/{})", self.context.name, self.namespace)
    }
}

/// A namespaced object kind of the Kubernetes API (Pod, Service, Secret, Job).
trait Namespaced:
    kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
    + Clone
    + serde::de::DeserializeOwned
    + std::fmt::Debug
{
}

impl<K> Namespaced for K where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug
{
}

impl Conn {
    /// The API of objects of kind `K` in this connection's namespace.
    fn api<K: Namespaced>(&self) -> Api<K> {
        Api::namespaced(self.client.clone(), &self.namespace)
    }
    fn pods(&self) -> Api<Pod> {
        self.api()
    }
    fn where_(&self) -> String {
        format!("k8s/{} (namespace {})", self.context.name, self.namespace)
    }
}

const NO_WORKDIR: &str = "workdir is not supported on Kubernetes yet: put the files into the image (image_id = \"docker:…\") or fetch them in setup";

/// What a cluster asks that pods cannot give yet, if anything.
fn unsupported_in_cluster(spec: &crate::model::ClusterSpec) -> Option<&'static str> {
    if spec.workdir.is_some() {
        Some(NO_WORKDIR)
    } else if spec.autostop.is_some() {
        Some(
            "autostop is not supported on Kubernetes yet (pods cannot be stopped and started); remove the autostop block or choose another infra",
        )
    } else {
        None
    }
}

/// What [`KubeProvider::wait_pods`] waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Until {
    Running,
    Placed,
}

/// A placement made ready: see [`KubeProvider::placed`].
struct Placed {
    conn: Conn,
    p: Private,
    shape: PodShape,
    image: String,
}

#[derive(Debug)]
pub struct KubeProvider {
    contexts: BTreeMap<String, Context>,
    conns: tokio::sync::Mutex<BTreeMap<String, Conn>>,
}

/// Turns an API error into the kind the failover engine acts on.
fn classify(e: kube::Error, doing: &str, at: &str) -> ProviderError {
    let (kind, text) = match &e {
        kube::Error::Api(s) => {
            let m = s.message.as_str();
            let kind = if s.code == 403 && m.contains("exceeded quota") {
                ErrorKind::Quota
            } else if (s.code == 403 && m.contains("error looking up service account"))
                || (s.code == 500 && (s.reason == "ServerTimeout" || m.contains("No API token")))
                || matches!(s.code, 429 | 502 | 503 | 504)
            {
                ErrorKind::Transient
            } else if s.code == 401 || s.code == 403 {
                ErrorKind::Config
            } else if s.code == 404 {
                ErrorKind::NotFound
            } else {
                ErrorKind::Other
            };
            (kind, format!("{} {}: {}", s.code, s.reason, s.message))
        }
        kube::Error::HyperError(_) | kube::Error::Service(_) => {
            (ErrorKind::Transient, error_chain(&e))
        }
        _ => (ErrorKind::Other, error_chain(&e)),
    };
    ProviderError {
        kind,
        message: format!("{at}: cannot {doing}: {text}"),
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let s_text = s.to_string();
        if !text.contains(&s_text) {
            text.push_str(": ");
            text.push_str(&s_text);
        }
        source = s.source();
    }
    text
}

/// Runs `call` again while it fails with a transient error, for about ten seconds (a fresh
/// namespace answers 403 or 500 until its service account exists).
async fn retrying<T, F, Fut>(mut call: F) -> Result<T, ProviderError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, ProviderError>>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        match call().await {
            Err(e) if e.kind == ErrorKind::Transient && tokio::time::Instant::now() < deadline => {
                tracing::debug!(error = %e, "retrying");
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
            r => return r,
        }
    }
}

/// The names of the objects of kind `K` that `lp` selects in the connection's namespace, as
/// `KIND/NAME`.
async fn names<K: Namespaced>(
    conn: &Conn,
    lp: &ListParams,
    kind: &str,
) -> Result<Vec<String>, ProviderError> {
    let api: Api<K> = conn.api();
    let listed = api
        .list(lp)
        .await
        .map_err(|e| classify(e, &format!("list {kind}s"), &conn.where_()))?;
    Ok(listed
        .items
        .iter()
        .filter_map(|o| o.meta().name.as_ref().map(|n| format!("{kind}/{n}")))
        .collect())
}

fn apply_params() -> PatchParams {
    PatchParams::apply(MANAGER).force()
}

fn selector(key: &str, value: &str) -> ListParams {
    ListParams::default().labels(&format!("{key}={value}"))
}

fn pod_rank(p: &Pod) -> Option<u32> {
    p.metadata.labels.as_ref()?.get(LABEL_RANK)?.parse().ok()
}

fn phase(p: &Pod) -> &str {
    p.status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or("Pending")
}

/// Why the scheduler left a pod unplaced, if it did.
fn unschedulable(p: &Pod) -> Option<String> {
    p.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find_map(|c| {
            (c.type_ == "PodScheduled"
                && c.status == "False"
                && c.reason.as_deref() == Some("Unschedulable"))
            .then(|| c.message.clone().unwrap_or_else(|| "unschedulable".into()))
        })
}

/// Why a placed pod will not start by waiting longer: its image cannot be had, or its
/// container cannot be made. A first failed pull (`ErrImagePull`) may be a registry's
/// hiccup, so it counts only once it lasted 30 s (`pulling` remembers when each pod's began).
fn cannot_start(p: &Pod, pulling: &mut BTreeMap<String, std::time::Instant>) -> Option<String> {
    let statuses = p.status.as_ref()?.container_statuses.as_ref()?;
    let waiting = statuses
        .iter()
        .find_map(|c| c.state.as_ref()?.waiting.as_ref())?;
    let reason = waiting.reason.as_deref().unwrap_or_default();
    let said = || {
        format!(
            "{reason}: {}",
            waiting.message.as_deref().unwrap_or("no message")
        )
    };
    match reason {
        "ImagePullBackOff"
        | "InvalidImageName"
        | "ErrImageNeverPull"
        | "CreateContainerConfigError"
        | "CreateContainerError" => Some(said()),
        "ErrImagePull" => {
            let name = p.metadata.name.clone().unwrap_or_default();
            let since = *pulling.entry(name).or_insert_with(std::time::Instant::now);
            (since.elapsed() >= Duration::from_secs(30)).then(said)
        }
        _ => None,
    }
}

/// The main container's exit code, once it ended.
fn exit_code(p: &Pod) -> Option<i32> {
    p.status
        .as_ref()?
        .container_statuses
        .as_ref()?
        .iter()
        .find_map(|c| c.state.as_ref()?.terminated.as_ref().map(|t| t.exit_code))
}

/// Why a pod that should be running is not (evicted, deleted, failed), if so.
fn trouble(p: &Pod) -> Option<String> {
    let name = p.metadata.name.as_deref().unwrap_or("?");
    if p.metadata.deletion_timestamp.is_some() {
        return Some(format!("pod {name} is being deleted"));
    }
    match phase(p) {
        "Running" => None,
        "Failed" | "Succeeded" => {
            let s = p.status.as_ref();
            let reason = s.and_then(|s| s.reason.clone()).unwrap_or_default();
            let message = s.and_then(|s| s.message.clone()).unwrap_or_default();
            Some(match (reason.as_str(), exit_code(p)) {
                ("Evicted", _) => format!("pod {name} was evicted: {message}"),
                (_, Some(c)) => format!("pod {name} ended with exit code {c}"),
                _ => format!("pod {name} ended ({reason} {message})"),
            })
        }
        other => Some(format!("pod {name} is {other}")),
    }
}

/// Why a managed job is launched again by the next apply, if it is: the node took its pod
/// away (eviction, not a failure of its program), or its program failed with an exit code
/// its `recovery` block recovers from.
fn recovers(m: &crate::model::ManagedJobSpec, s: &crate::runtime::JobStatus) -> Option<String> {
    if s.state != crate::runtime::JobState::Failed {
        return None;
    }
    let reason = s.reason.clone().unwrap_or_default();
    if reason.contains("evicted") {
        return Some(reason);
    }
    let code = s.exit_code?;
    m.recovery
        .as_ref()
        .filter(|r| r.recover_on_exit_codes.contains(&code))
        .map(|_| format!("{reason}, which recovery.recover_on_exit_codes recovers from"))
}

/// Where a managed job's rank is, from its pod: an evicted pod (or one that ended without an
/// exit code) is lost, not failed by its program.
fn rank_of_pod(p: &Pod) -> exec::Rank {
    let evicted = p.status.as_ref().and_then(|s| s.reason.as_deref()) == Some("Evicted");
    match phase(p) {
        "Succeeded" => exec::Rank::Ended(0),
        "Failed" => match exit_code(p) {
            Some(c) if !evicted => exec::Rank::Ended(c),
            _ => exec::Rank::Lost(trouble(p).unwrap_or_default()),
        },
        "Running" => exec::Rank::Running,
        _ => exec::Rank::NotThere,
    }
}

/// How many ranks (one Kubernetes Job each) a job or managed job has; None for others.
fn ranks_of(spec: &Spec) -> Option<u32> {
    match spec {
        Spec::Job(j) => Some(j.num_nodes.max(1)),
        Spec::ManagedJob(m) => Some(m.num_nodes.max(1)),
        _ => None,
    }
}

fn cluster_computed(pods: &[Pod]) -> BTreeMap<String, serde_json::Value> {
    let mut sorted: Vec<&Pod> = pods.iter().collect();
    sorted.sort_by_key(|p| pod_rank(p));
    let ips: Vec<String> = sorted
        .iter()
        .map(|p| {
            p.status
                .as_ref()
                .and_then(|s| s.pod_ip.clone())
                .unwrap_or_default()
        })
        .collect();
    let names: Vec<String> = sorted
        .iter()
        .filter_map(|p| p.metadata.name.clone())
        .collect();
    BTreeMap::from([
        (
            "head_ip".into(),
            serde_json::json!(ips.first().cloned().unwrap_or_default()),
        ),
        ("ips".into(), serde_json::json!(ips)),
        ("pods".into(), serde_json::json!(names)),
        ("status".into(), serde_json::json!("UP")),
    ])
}

impl KubeProvider {
    pub fn new(contexts: Vec<Context>) -> KubeProvider {
        KubeProvider {
            contexts: contexts.into_iter().map(|c| (c.name.clone(), c)).collect(),
            conns: tokio::sync::Mutex::new(BTreeMap::new()),
        }
    }

    /// The connection to a declared context, made on first use.
    async fn conn(&self, name: &str) -> Result<Conn, ProviderError> {
        if let Some(c) = self.conns.lock().await.get(name) {
            return Ok(c.clone());
        }
        let ctx = self.contexts.get(name).ok_or_else(|| ProviderError {
            kind: ErrorKind::Config,
            message: format!(
                "no infra \"kubernetes\" \"{name}\" is declared (declared: {})",
                self.contexts.keys().cloned().collect::<Vec<_>>().join(", ")
            ),
        })?;
        let bad = |what: String| ProviderError {
            kind: ErrorKind::Config,
            message: format!(
                "infra \"kubernetes\" \"{name}\": {what}; check kubeconfig and context in the block"
            ),
        };
        let kc = kube::config::Kubeconfig::read_from(&ctx.kubeconfig).map_err(|e| {
            bad(format!(
                "cannot read {}: {}",
                ctx.kubeconfig.display(),
                error_chain(&e)
            ))
        })?;
        let options = kube::config::KubeConfigOptions {
            context: Some(ctx.context.clone()),
            ..Default::default()
        };
        let mut config = kube::Config::from_custom_kubeconfig(kc, &options)
            .await
            .map_err(|e| {
                bad(format!(
                    "context {:?} of {}: {}",
                    ctx.context,
                    ctx.kubeconfig.display(),
                    error_chain(&e)
                ))
            })?;
        // A context that does not answer should not hold a plan for long.
        config.connect_timeout = Some(Duration::from_secs(10));
        let namespace = ctx
            .namespace
            .clone()
            .unwrap_or_else(|| config.default_namespace.clone());
        let client = kube::Client::try_from(config)
            .map_err(|e| bad(format!("cannot make a client: {}", error_chain(&e))))?;
        let conn = Conn {
            client,
            namespace,
            context: ctx.clone(),
        };
        self.conns
            .lock()
            .await
            .insert(name.to_string(), conn.clone());
        Ok(conn)
    }

    /// The context a resource lives in: recorded after creation, else its placement's.
    fn context_of(p: &Private, res: &ResourceState) -> Option<String> {
        p.context.clone().or_else(|| {
            res.placement
                .as_ref()
                .and_then(|c| c.offering.region.clone())
        })
    }

    /// The connection for a resource in state, in the namespace it was made in; None when
    /// it names no context (nothing was made). A context that is no longer declared is an
    /// error, never "gone": its pods may well be running, and forgetting them would leak them.
    async fn conn_of(
        &self,
        p: &Private,
        res: &ResourceState,
    ) -> Result<Option<Conn>, ProviderError> {
        let Some(name) = Self::context_of(p, res) else {
            return Ok(None);
        };
        if !self.contexts.contains_key(&name) {
            return Err(ProviderError {
                kind: ErrorKind::Config,
                message: format!(
                    "it lives in Kubernetes context {name:?}, and no infra \"kubernetes\" \"{name}\" is declared any more; declare it again to manage or destroy what runs there, or forget it with skyform state rm"
                ),
            });
        }
        let mut conn = self.conn(&name).await?;
        if let Some(ns) = &p.namespace {
            conn.namespace = ns.clone();
        }
        Ok(Some(conn))
    }

    async fn offers_of(&self, name: &str) -> Result<Vec<Offering>, ProviderError> {
        let conn = self.conn(name).await?;
        let at = conn.where_();
        let nodes = Api::<Node>::all(conn.client.clone())
            .list(&ListParams::default())
            .await
            .map_err(|e| classify(e, "list nodes", &at))?;
        let running = ListParams::default().fields("status.phase!=Succeeded,status.phase!=Failed");
        let pods = match Api::<Pod>::all(conn.client.clone()).list(&running).await {
            Ok(p) => p,
            // Rights in one namespace only: what others run there is not seen, so the
            // offer may be larger than what is free; the scheduler stays the judge.
            Err(kube::Error::Api(s)) if s.code == 403 => conn
                .pods()
                .list(&running)
                .await
                .map_err(|e| classify(e, "list pods", &at))?,
            Err(e) => return Err(classify(e, "list pods", &at)),
        };
        let mut shapes: BTreeMap<String, capacity::Free> = BTreeMap::new();
        for f in capacity::free(&nodes.items, &pods.items) {
            shapes.entry(f.shape()).or_insert(f);
        }
        Ok(shapes
            .into_iter()
            .map(|(shape, f)| Offering {
                cloud: "k8s".into(),
                region: Some(name.to_string()),
                zone: None,
                instance_type: shape,
                accelerators: f
                    .gpu
                    .iter()
                    .filter(|(_, n)| *n > 0)
                    .map(|(g, n)| (g.clone(), f64::from(*n)))
                    .collect(),
                cpus: f.cpus.floor(),
                memory_gib: f.memory_gib.floor(),
                spot: false,
                price: conn.context.price_micros,
                // Several pods may share a node, so how many fit depends on the request:
                // the scheduler decides, and an unschedulable pod fails over.
                max_nodes: None,
            })
            .collect())
    }

    /// Makes sure the namespace exists (creating it needs cluster rights; using an existing
    /// one does not).
    async fn ensure_namespace(&self, conn: &Conn) -> Result<(), ProviderError> {
        let api: Api<Namespace> = Api::all(conn.client.clone());
        match api.get_opt(&conn.namespace).await {
            Ok(Some(_)) => Ok(()),
            Ok(None) => {
                retrying(|| async {
                    api.patch(
                        &conn.namespace,
                        &apply_params(),
                        &Patch::Apply(objects::namespace(&conn.namespace)),
                    )
                    .await
                    .map(drop)
                    .map_err(|e| classify(e, "create the namespace", &conn.where_()))
                })
                .await
            }
            // Not allowed to look: assume it is there, the next call says if not.
            Err(kube::Error::Api(s)) if s.code == 403 => Ok(()),
            Err(e) => Err(classify(e, "read the namespace", &conn.where_())),
        }
    }

    /// Server-side applies one namespaced object.
    async fn apply<K: Namespaced>(
        &self,
        conn: &Conn,
        name: &str,
        body: &serde_json::Value,
        what: &str,
    ) -> Result<K, ProviderError> {
        let api: Api<K> = conn.api();
        retrying(|| async {
            api.patch(name, &apply_params(), &Patch::Apply(body))
                .await
                .map_err(|e| classify(e, &format!("apply {what} {name}"), &conn.where_()))
        })
        .await
    }

    /// Waits until `want` pods of the selection run (`Until::Running`, a cluster's: a pod
    /// that ends is a failure) or are placed on nodes (`Until::Placed`, a job's: it may
    /// already have finished). An unschedulable pod is a capacity error (the engine fails
    /// over); pods not there by the start timeout are a timeout.
    async fn wait_pods(
        &self,
        conn: &Conn,
        lp: &ListParams,
        want: usize,
        until: Until,
    ) -> Result<Vec<Pod>, ProviderError> {
        let deadline = tokio::time::Instant::now() + conn.context.start_timeout;
        let api = conn.pods();
        let mut pulling = BTreeMap::new();
        loop {
            let pods = retrying(|| async {
                api.list(lp)
                    .await
                    .map_err(|e| classify(e, "list pods", &conn.where_()))
            })
            .await?
            .items;
            for p in &pods {
                let name = p.metadata.name.as_deref().unwrap_or("?");
                if let Some(why) = unschedulable(p) {
                    return Err(ProviderError {
                        kind: ErrorKind::Capacity,
                        message: format!(
                            "{}: pod {name} cannot be scheduled: {why}",
                            conn.where_()
                        ),
                    });
                }
                if let Some(why) = cannot_start(p, &mut pulling) {
                    return Err(ProviderError {
                        kind: ErrorKind::Config,
                        message: format!("{}: pod {name} cannot start: {why}", conn.where_()),
                    });
                }
                if until == Until::Running && matches!(phase(p), "Failed" | "Succeeded") {
                    return Err(ProviderError::other(format!(
                        "{}: {}",
                        conn.where_(),
                        trouble(p).unwrap_or_default()
                    )));
                }
            }
            let done = pods
                .iter()
                .filter(|p| match until {
                    Until::Running => phase(p) == "Running",
                    Until::Placed => p.spec.as_ref().is_some_and(|s| s.node_name.is_some()),
                })
                .count();
            if done >= want {
                return Ok(pods);
            }
            if tokio::time::Instant::now() >= deadline {
                let (what, why) = match until {
                    Until::Running => ("running", ""),
                    Until::Placed => (
                        "placed",
                        " (a ResourceQuota may keep the Job controller from making them: see the Job's events)",
                    ),
                };
                return Err(ProviderError {
                    kind: ErrorKind::Timeout,
                    message: format!(
                        "{}: {done} of {want} pod(s) {what} after {}{why}",
                        conn.where_(),
                        humantime::format_duration(conn.context.start_timeout)
                    ),
                });
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// The Services, Secrets and Jobs labelled `key=value` (`service/NAME`, …): what a
    /// resource whose pods are gone may have left.
    async fn others(
        &self,
        conn: &Conn,
        key: &str,
        value: &str,
    ) -> Result<Vec<String>, ProviderError> {
        let lp = selector(key, value);
        let mut out = names::<Service>(conn, &lp, "service").await?;
        out.extend(names::<Secret>(conn, &lp, "secret").await?);
        out.extend(names::<Job>(conn, &lp, "job").await?);
        Ok(out)
    }

    /// Deletes every pod, Job, Service and Secret labelled `key=value`, and waits until their
    /// pods are gone.
    async fn remove(&self, conn: &Conn, key: &str, value: &str) -> Result<(), ProviderError> {
        let lp = selector(key, value);
        let at = conn.where_();
        let dp = DeleteParams {
            propagation_policy: Some(PropagationPolicy::Background),
            ..DeleteParams::default()
        };
        let jobs: Api<Job> = conn.api();
        let gone = |r: Result<_, kube::Error>, what: &str| match r {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
            Err(e) => Err(classify(e, &format!("delete {what}"), &at)),
        };
        gone(jobs.delete_collection(&dp, &lp).await.map(drop), "jobs")?;
        gone(
            conn.pods().delete_collection(&dp, &lp).await.map(drop),
            "pods",
        )?;
        // Services have no delete-collection in Kubernetes 1.20: one at a time.
        let services: Api<Service> = conn.api();
        for s in names::<Service>(conn, &lp, "service").await? {
            let name = s.trim_start_matches("service/");
            gone(services.delete(name, &dp).await.map(drop), "a service")?;
        }
        let secrets: Api<Secret> = conn.api();
        gone(
            secrets.delete_collection(&dp, &lp).await.map(drop),
            "secrets",
        )?;
        // Gone means gone: a pod being deleted still holds its share of the node.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
        loop {
            let left = conn
                .pods()
                .list(&lp)
                .await
                .map_err(|e| classify(e, "list pods", &at))?
                .items;
            if left.is_empty() {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(ProviderError {
                    kind: ErrorKind::Timeout,
                    message: format!(
                        "{at}: {} pod(s) still terminating after 2m: {}",
                        left.len(),
                        left.iter()
                            .filter_map(|p| p.metadata.name.clone())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                });
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// What a cluster's pods and a managed job's Jobs start from: the chosen context (its
    /// namespace made if missing), the private data with where it goes, each pod's share of
    /// a node and the image.
    async fn placed(
        &self,
        req: &Request<'_>,
        resources: &crate::model::Resources,
        unsupported: Option<&str>,
        placement: &Candidate,
    ) -> Result<Placed, ProviderError> {
        let config = |message: String| ProviderError {
            kind: ErrorKind::Config,
            message,
        };
        if let Some(why) = unsupported {
            return Err(config(why.to_string()));
        }
        let context = placement.offering.region.clone().unwrap_or_default();
        let conn = self.conn(&context).await?;
        let mut p: Private = serde_json::from_value(req.private.clone())
            .map_err(|e| ProviderError::other(format!("bad private state: {e}")))?;
        p.context = Some(context);
        p.namespace = Some(conn.namespace.clone());
        let mut shape = PodShape::for_request(resources, &placement.offering).map_err(config)?;
        let image = objects::image(resources).map_err(config)?;
        if shape.gpus > 0 {
            shape.gpu_affinity = self.gpu_affinity(&conn, &placement.offering).await?;
        }
        self.ensure_namespace(&conn).await?;
        Ok(Placed {
            conn,
            p,
            shape,
            image,
        })
    }

    async fn create_cluster(
        &self,
        req: &Request<'_>,
        spec: &crate::model::ClusterSpec,
        placement: &Candidate,
    ) -> Result<Created, ProviderError> {
        let Placed {
            conn,
            p,
            shape,
            image,
        } = self
            .placed(
                req,
                &spec.resources,
                unsupported_in_cluster(spec),
                placement,
            )
            .await?;
        let owner = Owner {
            address: req.address,
            lineage: &p.lineage,
        };
        let service = objects::headless_service(&owner, &p.name, &conn.namespace);
        self.apply::<Service>(&conn, &p.name, &service, "service")
            .await?;
        let n = spec.num_nodes.max(1);
        for rank in 0..n {
            let pod = objects::ClusterPod {
                owner: owner.clone(),
                name: &p.name,
                namespace: &conn.namespace,
                rank,
                num_nodes: n,
                image: &image,
                shape: &shape,
                envs: &spec.envs,
                setup: spec.setup.as_deref(),
            }
            .build();
            self.apply::<Pod>(&conn, &objects::pod_name(&p.name, rank), &pod, "pod")
                .await?;
        }
        let pods = self
            .wait_pods(
                &conn,
                &selector(LABEL_CLUSTER, &p.name),
                n as usize,
                Until::Running,
            )
            .await?;
        Ok(Created {
            computed: cluster_computed(&pods),
            private: serde_json::to_value(&p).unwrap_or_default(),
        })
    }

    /// The node labels that name the offering's GPU model, for node affinity.
    async fn gpu_affinity(
        &self,
        conn: &Conn,
        o: &Offering,
    ) -> Result<Option<(String, Vec<String>)>, ProviderError> {
        let Some((gpu, _)) = o.accelerators.first() else {
            return Ok(None);
        };
        let nodes = Api::<Node>::all(conn.client.clone())
            .list(&ListParams::default())
            .await
            .map_err(|e| classify(e, "list nodes", &conn.where_()))?;
        let mut by_key: BTreeMap<&'static str, std::collections::BTreeSet<String>> =
            BTreeMap::new();
        for n in &nodes.items {
            if let Some((name, key, value)) = capacity::node_gpu(n)
                && name.eq_ignore_ascii_case(gpu)
            {
                by_key.entry(key).or_default().insert(value);
            }
        }
        // The label most nodes of this model carry (nodes may have several).
        Ok(by_key
            .into_iter()
            .max_by_key(|(_, v)| v.len())
            .map(|(k, v)| (k.to_string(), v.into_iter().collect())))
    }

    async fn create_job(
        &self,
        req: &Request<'_>,
        spec: &crate::model::JobSpec,
    ) -> Result<Created, ProviderError> {
        let cluster = req.cluster.ok_or_else(|| ProviderError {
            kind: ErrorKind::NotFound,
            message: format!("cluster {} is not in state", spec.cluster),
        })?;
        let cp = Private::of(cluster).ok_or_else(|| {
            ProviderError::other(format!("cluster {} has no pods recorded", spec.cluster))
        })?;
        let conn = self
            .conn_of(&cp, cluster)
            .await?
            .ok_or_else(|| ProviderError {
                kind: ErrorKind::Config,
                message: format!("cluster {} names no Kubernetes context", spec.cluster),
            })?;
        let n = spec.num_nodes.max(1);
        let (cluster_nodes, cluster_envs) = match &cluster.spec {
            Spec::Cluster(c) => (c.num_nodes.max(1), c.envs.clone()),
            _ => (1, BTreeMap::new()),
        };
        if n > cluster_nodes {
            return Err(ProviderError {
                kind: ErrorKind::Config,
                message: format!(
                    "the job asks for {n} node(s); cluster {} has {cluster_nodes}",
                    spec.cluster
                ),
            });
        }
        self.wait_for_after(req).await?;
        let mut p: Private = serde_json::from_value(req.private.clone())
            .map_err(|e| ProviderError::other(format!("bad private state: {e}")))?;
        p.context = cp.context.clone();
        p.namespace = Some(conn.namespace.clone());
        p.job_id = Some(p.name.clone());
        p.cluster = Some(cp.name.clone());
        let mut envs = cluster_envs;
        envs.extend(spec.envs.clone());
        envs.extend(spec.secrets.clone());
        envs.insert("SKYFORM_CLUSTER".into(), spec.cluster.to_string());
        envs.insert("SKYFORM_JOB_ID".into(), p.name.clone());
        envs.insert("SKYFORM_NUM_NODES".into(), n.to_string());
        for rank in 0..n {
            let mut e = envs.clone();
            e.insert("SKYFORM_NODE_RANK".into(), rank.to_string());
            let pod = objects::pod_name(&cp.name, rank);
            exec::start(&conn, &pod, &p.name, rank, &spec.run, &e).await?;
        }
        let status = self.exec_status(&conn, &p, n).await?;
        Ok(Created {
            computed: super::jobs::computed(&status),
            private: serde_json::to_value(&p).unwrap_or_default(),
        })
    }

    /// A job's status from inside its cluster's pods; a pod that is gone lost its rank.
    async fn exec_status(
        &self,
        conn: &Conn,
        p: &Private,
        ranks: u32,
    ) -> Result<crate::runtime::JobStatus, ProviderError> {
        let cluster = p.cluster.clone().unwrap_or_default();
        // Every rank at once: one exec round trip, not one per node.
        let asked = futures::future::join_all((0..ranks).map(|rank| {
            let pod = objects::pod_name(&cluster, rank);
            async move {
                match exec::rank_status(conn, &pod, &p.name, rank).await {
                    Err(e) if e.kind == ErrorKind::NotFound => {
                        Ok(exec::Rank::Lost(format!("its pod {pod} is gone")))
                    }
                    r => r,
                }
            }
        }))
        .await;
        let seen = asked.into_iter().collect::<Result<Vec<_>, _>>()?;
        Ok(exec::status_of(&seen))
    }

    /// Applies the Secret (when there are secrets) and one Kubernetes Job per rank of `job`.
    async fn apply_jobs(
        &self,
        conn: &Conn,
        job: objects::JobRank<'_>,
        secrets: &BTreeMap<String, String>,
    ) -> Result<(), ProviderError> {
        if !secrets.is_empty() {
            let s = objects::secret(&job.owner, job.name, &conn.namespace, secrets);
            self.apply::<Secret>(conn, job.name, &s, "secret").await?;
        }
        for rank in 0..job.num_nodes {
            let body = objects::JobRank {
                rank,
                ..job.clone()
            }
            .build();
            let name = objects::job_object_name(job.name, rank);
            self.apply::<Job>(conn, &name, &body, "job").await?;
        }
        Ok(())
    }

    /// A managed job: Kubernetes Jobs with resources of their own, placed by the scheduler
    /// in the chosen context; an unschedulable pod fails over like a cluster's.
    async fn create_managed(
        &self,
        req: &Request<'_>,
        spec: &crate::model::ManagedJobSpec,
        placement: &Candidate,
    ) -> Result<Created, ProviderError> {
        let Placed {
            conn,
            mut p,
            shape,
            image,
        } = self
            .placed(
                req,
                &spec.resources,
                spec.workdir.is_some().then_some(NO_WORKDIR),
                placement,
            )
            .await?;
        p.job_id = Some(p.name.clone());
        let owner = Owner {
            address: req.address,
            lineage: &p.lineage,
        };
        let run = match &spec.setup {
            Some(setup) => format!("set -e\n{setup}\nset +e\n{}", spec.run),
            None => spec.run.clone(),
        };
        let n = spec.num_nodes.max(1);
        let job = objects::JobRank {
            owner,
            name: &p.name,
            namespace: &conn.namespace,
            rank: 0,
            num_nodes: n,
            image: &image,
            run: &run,
            envs: &spec.envs,
            secret_keys: spec.secrets.keys().map(String::as_str).collect(),
            shape: &shape,
        };
        self.apply_jobs(&conn, job, &spec.secrets).await?;
        self.wait_pods(
            &conn,
            &selector(LABEL_JOB, &p.name),
            n as usize,
            Until::Placed,
        )
        .await?;
        let status = self.job_status(&conn, &p.name, n).await?;
        Ok(Created {
            computed: super::jobs::computed(&status),
            private: serde_json::to_value(&p).unwrap_or_default(),
        })
    }

    /// Jobs start after those they depend on succeeded.
    async fn wait_for_after(&self, req: &Request<'_>) -> Result<(), ProviderError> {
        for (addr, dep) in &req.after {
            let found = match Private::of(dep) {
                Some(p) if dep.provider == "k8s" => self.conn_of(&p, dep).await?.map(|c| (p, c)),
                _ => None,
            };
            let Some((p, conn)) = found else {
                return Err(ProviderError {
                    kind: ErrorKind::Config,
                    message: format!(
                        "{addr} does not run on Kubernetes; a job on a Kubernetes cluster can wait only for jobs there"
                    ),
                });
            };
            loop {
                let state = self.status_of(&conn, &p, &dep.spec).await?.state;
                if state == crate::runtime::JobState::Succeeded {
                    break;
                }
                if state.is_final() {
                    return Err(ProviderError::other(format!(
                        "{addr} ended {}; this job runs only after it succeeds",
                        state.as_str()
                    )));
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
        Ok(())
    }

    /// A job's status (inside its cluster's pods) or a managed job's (from its Kubernetes
    /// Jobs' pods).
    async fn status_of(
        &self,
        conn: &Conn,
        p: &Private,
        spec: &Spec,
    ) -> Result<crate::runtime::JobStatus, ProviderError> {
        let ranks = ranks_of(spec).unwrap_or(1);
        match spec {
            Spec::Job(_) => self.exec_status(conn, p, ranks).await,
            _ => self.job_status(conn, &p.name, ranks).await,
        }
    }

    /// A job's status from its pods: failed when a rank failed (with that rank's exit
    /// code), succeeded when all did, running when one runs.
    async fn job_status(
        &self,
        conn: &Conn,
        name: &str,
        ranks: u32,
    ) -> Result<crate::runtime::JobStatus, ProviderError> {
        let pods = conn
            .pods()
            .list(&selector(LABEL_JOB, name))
            .await
            .map_err(|e| classify(e, "list the job's pods", &conn.where_()))?
            .items;
        let ranks: Vec<exec::Rank> = (0..ranks)
            .map(|r| {
                pods.iter()
                    .find(|p| pod_rank(p) == Some(r))
                    .map_or(exec::Rank::NotThere, rank_of_pod)
            })
            .collect();
        Ok(exec::status_of(&ranks))
    }

    async fn refresh_cluster(
        &self,
        res: &ResourceState,
        p: &Private,
        conn: &Conn,
    ) -> Result<Observed, ProviderError> {
        let pods = conn
            .pods()
            .list(&selector(LABEL_CLUSTER, &p.name))
            .await
            .map_err(|e| classify(e, "list the cluster's pods", &conn.where_()))?
            .items;
        let want = match &res.spec {
            Spec::Cluster(c) => c.num_nodes.max(1) as usize,
            _ => 1,
        };
        if pods.is_empty() {
            let rest = self.others(conn, LABEL_CLUSTER, &p.name).await?;
            let what = if res.status == Status::Creating {
                "its creation made no pod".to_string()
            } else {
                format!("its pods are gone from {}", conn.where_())
            };
            // What is left (the Service) goes with a replacement; forgetting it would leak it.
            return Ok(match rest.first() {
                None => Observed::Gone { reason: what },
                Some(o) => Observed::Degraded {
                    reason: format!("{what}, {o} is left"),
                    computed: BTreeMap::new(),
                },
            });
        }
        let mut by_rank: BTreeMap<u32, &Pod> = BTreeMap::new();
        for pod in &pods {
            if let Some(r) = pod_rank(pod) {
                by_rank.insert(r, pod);
            }
        }
        let computed = cluster_computed(&pods);
        for rank in 0..want as u32 {
            let why = match by_rank.get(&rank) {
                None => Some(format!(
                    "pod {} (node {rank}) is gone",
                    objects::pod_name(&p.name, rank)
                )),
                Some(pod) => trouble(pod),
            };
            if let Some(reason) = why {
                return Ok(Observed::Degraded { reason, computed });
            }
        }
        if res.status == Status::Creating {
            // skyform died after making the pods: take them as they are.
            let adopted = Private {
                context: Self::context_of(p, res),
                namespace: Some(conn.namespace.clone()),
                ..p.clone()
            };
            return Ok(Observed::Adopted(Created {
                computed,
                private: serde_json::to_value(&adopted).unwrap_or_default(),
            }));
        }
        Ok(Observed::Up(computed))
    }
}

#[async_trait::async_trait]
impl super::Provider for KubeProvider {
    fn name(&self) -> &'static str {
        "k8s"
    }

    async fn offerings(&self) -> Result<Vec<Offering>, ProviderError> {
        Ok(self.survey().await?.offerings)
    }

    /// Each context's schedulable nodes, one offer per distinct free shape. A context that
    /// cannot be reached offers nothing, and says why; the others still offer.
    async fn survey(&self) -> Result<super::Survey, ProviderError> {
        // All contexts at once: one that does not answer costs its timeout once, not per
        // context. Results stay in context order.
        let asked =
            futures::future::join_all(self.contexts.keys().map(|n| self.offers_of(n))).await;
        let mut out = super::Survey::default();
        for r in asked {
            match r {
                Ok(o) => out.offerings.extend(o),
                Err(e) => out.unavailable.push(e.message),
            }
        }
        Ok(out)
    }

    fn new_private(&self, address: &Address, _spec: &Spec, lineage: &str) -> serde_json::Value {
        let token = uuid::Uuid::new_v4().simple().to_string();
        serde_json::to_value(Private {
            name: objects::object_name(address, &token),
            lineage: lineage.to_string(),
            ..Private::default()
        })
        .unwrap_or_default()
    }

    async fn refresh(
        &self,
        _address: &Address,
        res: &ResourceState,
        cluster: Option<&ResourceState>,
    ) -> Result<Observed, ProviderError> {
        let Some(p) = Private::of(res) else {
            return Ok(Observed::Gone {
                reason: "no Kubernetes objects recorded".into(),
            });
        };
        if let Some(ranks) = ranks_of(&res.spec) {
            if matches!(res.spec, Spec::Job(_)) && cluster.is_none() {
                return Ok(Observed::Gone {
                    reason: "its cluster is not in state".into(),
                });
            }
            let Some(conn) = self.conn_of(&p, res).await? else {
                return Ok(Observed::Gone {
                    reason: "it names no Kubernetes context (nothing was made)".into(),
                });
            };
            if matches!(res.spec, Spec::Job(_)) {
                let s = self.exec_status(&conn, &p, ranks).await?;
                if s.state == crate::runtime::JobState::Queued {
                    return Ok(Observed::Gone {
                        reason: "the job is not in its cluster's pods".into(),
                    });
                }
                return Ok(Observed::Up(super::jobs::computed(&s)));
            }
            let jobs: Api<Job> = conn.api();
            let listed = jobs
                .list(&selector(LABEL_JOB, &p.name))
                .await
                .map_err(|e| classify(e, "list jobs", &conn.where_()))?;
            if listed.items.is_empty() {
                let what = format!("its Kubernetes Jobs are gone from {}", conn.where_());
                let rest = self.others(&conn, LABEL_JOB, &p.name).await?;
                return Ok(match rest.first() {
                    None => Observed::Gone { reason: what },
                    Some(o) => Observed::Degraded {
                        reason: format!("{what}, {o} is left"),
                        computed: BTreeMap::new(),
                    },
                });
            }
            let s = self.job_status(&conn, &p.name, ranks).await?;
            let computed = super::jobs::computed(&s);
            if let Spec::ManagedJob(m) = &res.spec
                && let Some(reason) = recovers(m, &s)
            {
                return Ok(Observed::Degraded { reason, computed });
            }
            return Ok(Observed::Up(computed));
        }
        let Some(conn) = self.conn_of(&p, res).await? else {
            return Ok(Observed::Gone {
                reason: "it names no Kubernetes context (nothing was made)".into(),
            });
        };
        self.refresh_cluster(res, &p, &conn).await
    }

    async fn create(&self, req: Request<'_>) -> Result<Created, ProviderError> {
        match req.spec {
            Spec::Cluster(spec) => {
                let placement = req
                    .placement
                    .ok_or_else(|| ProviderError::other("a Kubernetes cluster needs a placement"))?;
                self.create_cluster(&req, spec, placement).await
            }
            Spec::Job(j) => self.create_job(&req, j).await,
            Spec::ManagedJob(m) => {
                let placement = req
                    .placement
                    .ok_or_else(|| ProviderError::other("a managed job needs a placement"))?;
                self.create_managed(&req, m, placement).await
            }
            Spec::Service(_) => Err(ProviderError {
                kind: ErrorKind::Config,
                message: "services cannot run on Kubernetes yet; give this one infra = \"local\", \"aws\" or an ssh pool".into(),
            }),
        }
    }

    /// A pod's command and environment are fixed once it is made, so a cluster on
    /// Kubernetes changes only by replacement.
    async fn update(&self, req: Request<'_>) -> Result<Created, ProviderError> {
        if !matches!(req.spec, Spec::Cluster(_)) {
            // Jobs change by replacement only.
            return Ok(Created {
                computed: BTreeMap::new(),
                private: req.private.clone(),
            });
        }
        Err(ProviderError {
            kind: ErrorKind::Config,
            message: format!(
                "the pods of {} cannot change in place on Kubernetes; replace the cluster: skyform apply -replace={}",
                req.address, req.address
            ),
        })
    }

    /// Deletes the resource's objects and waits until its pods are gone.
    async fn delete(
        &self,
        _address: &Address,
        res: &ResourceState,
        _cluster: Option<&ResourceState>,
    ) -> Result<(), ProviderError> {
        let Some(p) = Private::of(res) else {
            return Ok(());
        };
        let Some(conn) = self.conn_of(&p, res).await? else {
            return Ok(());
        };
        match &res.spec {
            Spec::Cluster(_) => self.remove(&conn, LABEL_CLUSTER, &p.name).await,
            Spec::Job(j) => {
                // Inside the cluster's pods; a pod that is gone took its rank with it.
                let cluster = p.cluster.clone().unwrap_or_default();
                for rank in 0..j.num_nodes.max(1) {
                    let pod = objects::pod_name(&cluster, rank);
                    match exec::cancel(&conn, &pod, &p.name, rank).await {
                        Err(e) if e.kind != ErrorKind::NotFound => return Err(e),
                        _ => {}
                    }
                }
                Ok(())
            }
            _ => self.remove(&conn, LABEL_JOB, &p.name).await,
        }
    }

    /// Each context with its server's version; an error naming every context that cannot
    /// be reached (and why), after those that can.
    async fn check(&self) -> Result<String, ProviderError> {
        if self.contexts.is_empty() {
            return Ok("no contexts declared".into());
        }
        let versions = futures::future::join_all(self.contexts.keys().map(|name| async move {
            let conn = self.conn(name).await?;
            let v = conn
                .client
                .apiserver_version()
                .await
                .map_err(|e| classify(e, "read the server version", &conn.where_()))?;
            Ok::<_, ProviderError>(format!("{name} (Kubernetes {}.{})", v.major, v.minor))
        }))
        .await;
        let (ready, failed): (Vec<_>, Vec<_>) = versions.into_iter().partition(Result::is_ok);
        let ready: Vec<String> = ready.into_iter().filter_map(Result::ok).collect();
        let failed: Vec<ProviderError> = failed.into_iter().filter_map(Result::err).collect();
        match failed.first() {
            None => Ok(format!("ready: {}", ready.join(", "))),
            Some(first) => Err(ProviderError {
                kind: first.kind,
                message: format!(
                    "{}{}",
                    if ready.is_empty() {
                        String::new()
                    } else {
                        format!("ready: {}; ", ready.join(", "))
                    },
                    failed
                        .iter()
                        .map(|e| e.message.as_str())
                        .collect::<Vec<_>>()
                        .join("; ")
                ),
            }),
        }
    }

    /// The clusters labelled with `lineage` in every declared context's namespace that no
    /// resource in `held` records, by the address in their annotation: `CONTEXT/NAME` each.
    /// A context that cannot be asked is skipped (the plan already warns about it).
    async fn find_own(
        &self,
        lineage: &str,
        held: &[&ResourceState],
    ) -> Result<Vec<(Address, String)>, ProviderError> {
        let held: std::collections::BTreeSet<String> = held
            .iter()
            .filter_map(|r| Private::of(r).map(|p| p.name))
            .collect();
        let mut out = Vec::new();
        let lp = selector(objects::LABEL_LINEAGE, &objects::label_value(lineage));
        for name in self.contexts.keys() {
            let Ok(conn) = self.conn(name).await else {
                continue;
            };
            let Ok(pods) = conn.pods().list(&lp).await else {
                continue;
            };
            let mut clusters = std::collections::BTreeSet::new();
            for pod in &pods.items {
                let m = &pod.metadata;
                let cluster = m.labels.as_ref().and_then(|l| l.get(LABEL_CLUSTER));
                let address = m
                    .annotations
                    .as_ref()
                    .and_then(|a| a.get(objects::ANNOTATION_ADDRESS))
                    .and_then(|a| a.parse::<Address>().ok());
                if let (Some(c), Some(a)) = (cluster, address)
                    && !held.contains(c)
                {
                    clusters.insert((a, format!("{name}/{c}")));
                }
            }
            out.extend(clusters);
        }
        Ok(out)
    }

    /// `CONTEXT/NAME`: the cluster whose pods are labelled `skyform.dev/cluster=NAME` in the
    /// namespace of the context's block.
    async fn import(&self, _address: &Address, id: &str) -> Result<Created, ProviderError> {
        let bad = |why: String| ProviderError {
            kind: ErrorKind::Config,
            message: why,
        };
        let (context, name) = id
            .split_once('/')
            .filter(|(c, n)| !c.is_empty() && !n.is_empty())
            .ok_or_else(|| bad(format!("{id:?} is not CONTEXT/NAME")))?;
        let conn = self.conn(context).await?;
        let pods = conn
            .pods()
            .list(&selector(LABEL_CLUSTER, name))
            .await
            .map_err(|e| classify(e, "list pods", &conn.where_()))?
            .items;
        if pods.is_empty() {
            return Err(ProviderError {
                kind: ErrorKind::NotFound,
                message: format!("{} has no pods of cluster {name}", conn.where_()),
            });
        }
        if let Some(why) = pods.iter().find_map(trouble) {
            return Err(bad(format!("{}: {why}", conn.where_())));
        }
        let lineage = pods
            .first()
            .and_then(|p| p.metadata.labels.as_ref())
            .and_then(|l| l.get(objects::LABEL_LINEAGE))
            .cloned()
            .unwrap_or_default();
        let found = Private {
            name: name.to_string(),
            lineage,
            context: Some(context.to_string()),
            namespace: Some(conn.namespace.clone()),
            ..Private::default()
        };
        Ok(Created {
            computed: cluster_computed(&pods),
            private: serde_json::to_value(&found).unwrap_or_default(),
        })
    }

    fn shell(&self, res: &ResourceState, command: &[String]) -> Result<Vec<String>, ProviderError> {
        let p = Private::of(res).ok_or_else(|| ProviderError::other("no pods recorded"))?;
        let ctx = p
            .context
            .as_ref()
            .and_then(|c| self.contexts.get(c))
            .ok_or_else(|| ProviderError::other("the cluster's context is no longer declared"))?;
        let mut argv = vec![
            "kubectl".to_string(),
            "--kubeconfig".into(),
            ctx.kubeconfig.display().to_string(),
            "--context".into(),
            ctx.context.clone(),
            "--namespace".into(),
            p.namespace.clone().unwrap_or_else(|| "default".into()),
            "exec".into(),
            // A terminal for an interactive shell only, as ssh does.
            if command.is_empty() { "-it" } else { "-i" }.into(),
            objects::pod_name(&p.name, 0),
            "--".into(),
        ];
        if command.is_empty() {
            argv.push("/bin/sh".into());
        } else {
            argv.extend(["/bin/sh".to_string(), "-c".into(), command.join(" ")]);
        }
        Ok(argv)
    }

    fn log_paths(&self, _res: &ResourceState, _cluster: Option<&ResourceState>) -> Vec<PathBuf> {
        Vec::new()
    }

    /// Each rank's log from the pod log API, from `offsets[rank]` on.
    async fn read_logs(
        &self,
        res: &ResourceState,
        _cluster: Option<&ResourceState>,
        offsets: &[u64],
    ) -> Result<Vec<Vec<u8>>, ProviderError> {
        let Some(ranks) = ranks_of(&res.spec) else {
            return Ok(Vec::new());
        };
        let Some(p) = Private::of(res) else {
            return Ok(Vec::new());
        };
        let Some(conn) = self.conn_of(&p, res).await? else {
            return Ok(Vec::new());
        };
        let mut out = Vec::new();
        if let Spec::Job(_) = &res.spec {
            // Inside the cluster's pods, from each rank's offset on.
            let cluster = p.cluster.clone().unwrap_or_default();
            for rank in 0..ranks {
                let from = offsets.get(rank as usize).copied().unwrap_or(0);
                let pod = objects::pod_name(&cluster, rank);
                out.push(match exec::log(&conn, &pod, &p.name, rank, from).await {
                    Err(e) if e.kind == ErrorKind::NotFound => Vec::new(),
                    r => r?,
                });
            }
            return Ok(out);
        }
        let pods = conn
            .pods()
            .list(&selector(LABEL_JOB, &p.name))
            .await
            .map_err(|e| classify(e, "list the job's pods", &conn.where_()))?
            .items;
        for rank in 0..ranks {
            let from = offsets.get(rank as usize).copied().unwrap_or(0) as usize;
            let pod = pods
                .iter()
                .find(|p| pod_rank(p) == Some(rank))
                // Not started yet: nothing logged.
                .filter(|p| phase(p) != "Pending");
            let text = match pod.and_then(|p| p.metadata.name.clone()) {
                Some(name) => conn
                    .pods()
                    .logs(&name, &LogParams::default())
                    .await
                    .map_err(|e| {
                        classify(e, &format!("read the log of pod {name}"), &conn.where_())
                    })?,
                None => String::new(),
            };
            let bytes = text.into_bytes();
            out.push(bytes.get(from..).map(<[u8]>::to_vec).unwrap_or_default());
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn managed_jobs_recover_from_eviction_and_chosen_exit_codes() {
        use crate::runtime::{JobState, JobStatus};
        let failed = |code: i32, reason: &str| JobStatus {
            state: JobState::Failed,
            exit_code: Some(code),
            reason: Some(reason.into()),
            nodes: vec![0],
            started: None,
            ended: None,
            devices: Vec::new(),
        };
        let mut m: crate::model::ManagedJobSpec =
            serde_json::from_value(serde_json::json!({ "num_nodes": 1, "run": "train" })).unwrap();
        assert!(recovers(&m, &failed(137, "pod p was evicted: memory pressure")).is_some());
        assert_eq!(
            recovers(&m, &failed(33, "pod p ended with exit code 33")),
            None
        );
        m.recovery = Some(crate::model::Recovery {
            strategy: "failover".into(),
            max_restarts_on_errors: 0,
            recover_on_exit_codes: vec![33],
        });
        assert!(recovers(&m, &failed(33, "pod p ended with exit code 33")).is_some());
        assert_eq!(
            recovers(&m, &failed(1, "pod p ended with exit code 1")),
            None
        );
        let mut ok = failed(0, "");
        ok.state = JobState::Succeeded;
        assert_eq!(recovers(&m, &ok), None);
    }

    #[test]
    fn pods_that_cannot_start_say_why() {
        let waiting = |reason: &str| -> Pod {
            serde_json::from_value(serde_json::json!({
                "metadata": { "name": "p" },
                "status": { "phase": "Pending", "containerStatuses": [{
                    "name": "main", "image": "x", "imageID": "", "ready": false, "restartCount": 0,
                    "state": { "waiting": { "reason": reason, "message": "no such image" } }
                }]}
            }))
            .unwrap()
        };
        let mut pulling = BTreeMap::new();
        assert_eq!(
            cannot_start(&waiting("ImagePullBackOff"), &mut pulling).unwrap(),
            "ImagePullBackOff: no such image"
        );
        // A first failed pull gets time; a container being made is fine.
        assert_eq!(cannot_start(&waiting("ErrImagePull"), &mut pulling), None);
        assert!(pulling.contains_key("p"));
        assert_eq!(
            cannot_start(&waiting("ContainerCreating"), &mut pulling),
            None
        );
    }

    #[test]
    fn ssh_on_a_cluster_is_kubectl_exec_into_its_head_pod() {
        use super::super::Provider;
        let settings = serde_json::json!({ "kubeconfig": "/k/config", "context": "lab-ctx" });
        let p = KubeProvider::new(vec![Context::from_infra(
            "lab",
            settings.as_object().unwrap(),
            Path::new("/home/u"),
        )]);
        let res = ResourceState {
            status: Status::Ready,
            provider: "k8s".into(),
            spec: Spec::Cluster(Default::default()),
            computed: BTreeMap::new(),
            private: serde_json::json!({
                "name": "sky-train-abc123", "context": "lab", "namespace": "ml"
            }),
            placement: None,
            dependencies: Vec::new(),
            sensitive: Vec::new(),
            attempts: Vec::new(),
            leftovers: Vec::new(),
        };
        let argv = p.shell(&res, &[]).unwrap();
        assert_eq!(
            argv.join(" "),
            "kubectl --kubeconfig /k/config --context lab-ctx --namespace ml exec -it sky-train-abc123-0 -- /bin/sh"
        );
        let argv = p.shell(&res, &["nvidia-smi".into(), "-L".into()]).unwrap();
        assert_eq!(argv[8], "-i", "no terminal for a command");
        assert_eq!(&argv[argv.len() - 3..], ["/bin/sh", "-c", "nvidia-smi -L"]);
    }

    #[test]
    fn a_context_defaults_to_its_block_name() {
        let home = Path::new("/home/u");
        let settings = serde_json::json!({ "kubeconfig": "~/kc", "price_per_hour": 1.5 });
        let c = Context::from_infra("lab", settings.as_object().unwrap(), home);
        assert_eq!(c.context, "lab");
        assert_eq!(c.kubeconfig, Path::new("/home/u/kc"));
        assert_eq!(c.namespace, None);
        assert_eq!(c.price_micros, 1_500_000);
        let settings = serde_json::json!({ "context": "gke_p_z_c", "namespace": "ml" });
        let c = Context::from_infra("gke", settings.as_object().unwrap(), home);
        assert_eq!(
            (c.context.as_str(), c.namespace.as_deref()),
            ("gke_p_z_c", Some("ml"))
        );
        assert_eq!(c.price_micros, 0);
    }

    fn api(code: u16, reason: &str, message: &str) -> kube::Error {
        kube::Error::Api(Box::new(
            kube::core::Status::failure(message, reason).with_code(code),
        ))
    }

    #[test]
    fn errors_steer_the_failover_engine() {
        let kind = |e| classify(e, "apply pod p", "k8s/a (namespace n)").kind;
        assert_eq!(
            kind(api(
                403,
                "Forbidden",
                "pods \"p\" is forbidden: exceeded quota: q, requested: requests.nvidia.com/gpu=4"
            )),
            ErrorKind::Quota
        );
        assert_eq!(
            kind(api(
                403,
                "Forbidden",
                "error looking up service account n/default: serviceaccount \"default\" not found"
            )),
            ErrorKind::Transient
        );
        assert_eq!(
            kind(api(
                500,
                "ServerTimeout",
                "No API token found for service account \"default\""
            )),
            ErrorKind::Transient
        );
        assert_eq!(
            kind(api(
                403,
                "Forbidden",
                "pods is forbidden: User \"bob\" cannot create resource"
            )),
            ErrorKind::Config
        );
        // A body the server cannot read is a bug here, never retried.
        assert_eq!(
            kind(api(
                500,
                "InternalError",
                "failed to create typed patch object: .spec.os: field not declared in schema"
            )),
            ErrorKind::Other
        );
        let e = classify(
            api(403, "Forbidden", "exceeded quota: q"),
            "apply pod p",
            "k8s/a (namespace n)",
        );
        assert!(
            e.message
                .starts_with("k8s/a (namespace n): cannot apply pod p: 403 Forbidden"),
            "{}",
            e.message
        );
    }

    #[test]
    fn pod_troubles_name_the_pod_and_the_cause() {
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": { "name": "sky-x-1", "labels": { LABEL_RANK: "1" } },
            "status": { "phase": "Failed", "reason": "Evicted", "message": "memory pressure" }
        }))
        .unwrap();
        assert_eq!(
            trouble(&pod).unwrap(),
            "pod sky-x-1 was evicted: memory pressure"
        );
        let pending: Pod = serde_json::from_value(serde_json::json!({
            "metadata": { "name": "p" },
            "status": { "phase": "Pending", "conditions": [{
                "type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                "message": "0/1 nodes are available: 1 Insufficient nvidia.com/gpu."
            }]}
        }))
        .unwrap();
        assert_eq!(
            unschedulable(&pending).unwrap(),
            "0/1 nodes are available: 1 Insufficient nvidia.com/gpu."
        );
        assert_eq!(pod_rank(&pod), Some(1));
    }
}
