//! Connections: the declared contexts, one client per context (made on first use and kept
//! for the run), the namespace skyform works in, and the calls every part makes through
//! them (server-side apply, listing names by label).

use super::errors::{classify, error_chain, retrying};
use super::{KubeProvider, Private, objects};
use crate::providers::{ErrorKind, ProviderError};
use crate::state::ResourceState;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::api::{Api, ListParams, Patch, PatchParams};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The field manager of every server-side apply.
pub(super) const MANAGER: &str = "skyform";

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

/// A connection to one context, with the namespace skyform works in there.
#[derive(Clone)]
pub(super) struct Conn {
    pub(super) client: kube::Client,
    pub(super) namespace: String,
    pub(super) context: Context,
}

impl std::fmt::Debug for Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Conn({}/{})", self.context.name, self.namespace)
    }
}

/// A namespaced object kind of the Kubernetes API (Pod, Service, Secret, Job).
pub(super) trait Namespaced:
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
    pub(super) fn api<K: Namespaced>(&self) -> Api<K> {
        Api::namespaced(self.client.clone(), &self.namespace)
    }
    pub(super) fn pods(&self) -> Api<Pod> {
        self.api()
    }
    pub(super) fn where_(&self) -> String {
        format!("k8s/{} (namespace {})", self.context.name, self.namespace)
    }
}

/// The names of the objects of kind `K` that `lp` selects in the connection's namespace, as
/// `KIND/NAME`.
pub(super) async fn names<K: Namespaced>(
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

pub(super) fn apply_params() -> PatchParams {
    PatchParams::apply(MANAGER).force()
}

pub(super) fn selector(key: &str, value: &str) -> ListParams {
    ListParams::default().labels(&format!("{key}={value}"))
}

impl KubeProvider {
    /// The connection to a declared context, made on first use.
    pub(super) async fn conn(&self, name: &str) -> Result<Conn, ProviderError> {
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
        if std::env::var(super::controller::IN_CLUSTER_ENV).is_ok_and(|c| c == name) {
            // The controller's pod, in the context it runs in: its service account's token.
            let config = kube::Config::incluster().map_err(|e| {
                bad(format!(
                    "cannot read the pod's in-cluster configuration: {}",
                    error_chain(&e)
                ))
            })?;
            return self.keep(name, ctx, config).await;
        }
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
        let config = kube::Config::from_custom_kubeconfig(kc, &options)
            .await
            .map_err(|e| {
                bad(format!(
                    "context {:?} of {}: {}",
                    ctx.context,
                    ctx.kubeconfig.display(),
                    error_chain(&e)
                ))
            })?;
        self.keep(name, ctx, config).await
    }

    /// Makes the client of a context and keeps it for the run.
    async fn keep(
        &self,
        name: &str,
        ctx: &Context,
        mut config: kube::Config,
    ) -> Result<Conn, ProviderError> {
        let bad = |what: String| ProviderError {
            kind: ErrorKind::Config,
            message: format!("infra \"kubernetes\" \"{name}\": {what}"),
        };
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
    pub(super) fn context_of(p: &Private, res: &ResourceState) -> Option<String> {
        p.context.clone().or_else(|| {
            res.placement
                .as_ref()
                .and_then(|c| c.offering.region.clone())
        })
    }

    /// The connection for a resource in state, in the namespace it was made in; None when
    /// it names no context (nothing was made). A context that is no longer declared is an
    /// error, never "gone": its pods may well be running, and forgetting them would leak them.
    pub(super) async fn conn_of(
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

    /// Makes sure the namespace exists (creating it needs cluster rights; using an existing
    /// one does not).
    pub(super) async fn ensure_namespace(&self, conn: &Conn) -> Result<(), ProviderError> {
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
    pub(super) async fn apply<K: Namespaced>(
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
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
