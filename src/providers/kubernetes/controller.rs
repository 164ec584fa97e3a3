//! A declared controller (`controller "NAME" { infra = "k8s/CTX" }`) as a Deployment of one
//! replica running `skyform controller run`, with what it needs around it: a ServiceAccount
//! with the rights skyform uses in its namespace (a Role) and to see nodes (a ClusterRole),
//! a ConfigMap holding its configuration (the state and infra blocks) and a Secret holding
//! its `secrets`, read as environment variables.
//!
//! The pod reaches its own context with its service account's token (in-cluster
//! configuration, chosen by `SKYFORM_KUBE_IN_CLUSTER`), the state store and other backends
//! with the credentials given in `secrets`. The Deployment recreates the pod where it stops
//! (strategy `Recreate`: the old pod ends, giving its lease back, before a new one starts).

use super::connection::{Conn, apply_params, selector};
use super::errors::{classify, retrying};
use super::objects::{self, LABEL_ADDRESS, LABEL_LINEAGE, label_value};
use super::status::{cannot_start, unschedulable};
use super::{KubeProvider, Private};
use crate::model::{Address, ControllerSpec};
use crate::providers::{Created, ErrorKind, Observed, ProviderError, Request};
use crate::state::ResourceState;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
use kube::api::{Api, DeleteParams, Patch, PropagationPolicy};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::time::Duration;

/// The label every object of one controller carries (its object name).
pub const LABEL_CONTROLLER: &str = "skyform.dev/controller";
/// Set in the controller's pod: the context it runs in, reached with the pod's own token.
pub const IN_CLUSTER_ENV: &str = "SKYFORM_KUBE_IN_CLUSTER";
/// Where the pod works: its configuration, and `.skyform/` beside it.
pub const WORKDIR: &str = "/var/lib/skyform";
/// The configuration file in the pod's working directory.
pub const CONFIG_FILE: &str = "main.sky.hcl";

/// The context a controller's `infra = "k8s/NAME"` names.
pub fn context_of(spec: &ControllerSpec) -> &str {
    spec.infra
        .split_once('/')
        .map_or(spec.infra.as_str(), |(_, ctx)| ctx)
}

/// What a controller is made of, as server-side-apply bodies. Pure.
#[derive(Debug)]
pub struct Objects<'a> {
    pub address: &'a Address,
    pub lineage: &'a str,
    pub name: &'a str,
    pub namespace: &'a str,
    pub spec: &'a ControllerSpec,
}

impl Objects<'_> {
    fn metadata(&self, namespaced: bool) -> Value {
        let mut m = json!({
            "name": self.name,
            "labels": {
                LABEL_LINEAGE: label_value(self.lineage),
                LABEL_ADDRESS: label_value(&self.address.to_string()),
                LABEL_CONTROLLER: self.name,
            },
            "annotations": { objects::ANNOTATION_ADDRESS: self.address.to_string() },
        });
        if namespaced {
            m["namespace"] = json!(self.namespace);
        }
        m
    }

    /// The rights skyform uses in its namespace: pods (and their logs, exec, eviction),
    /// the Services, Secrets and Jobs it makes.
    pub fn role(&self) -> Value {
        let all = [
            "get",
            "list",
            "watch",
            "create",
            "update",
            "patch",
            "delete",
            "deletecollection",
        ];
        json!({
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "Role",
            "metadata": self.metadata(true),
            "rules": [
                {
                    "apiGroups": [""],
                    "resources": ["pods", "pods/log", "pods/exec", "pods/eviction", "services", "secrets", "configmaps"],
                    "verbs": all,
                },
                { "apiGroups": ["batch"], "resources": ["jobs"], "verbs": all },
            ],
        })
    }

    /// What is cluster-wide: the nodes (offers are their free shapes), the pods on them
    /// (what is taken), and its namespace.
    pub fn cluster_role(&self) -> Value {
        json!({
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRole",
            "metadata": self.metadata(false),
            "rules": [
                { "apiGroups": [""], "resources": ["nodes"], "verbs": ["get", "list", "watch"] },
                { "apiGroups": [""], "resources": ["pods"], "verbs": ["list"] },
                { "apiGroups": [""], "resources": ["namespaces"], "verbs": ["get"] },
            ],
        })
    }

    fn binding(&self, kind: &str, role_kind: &str, namespaced: bool) -> Value {
        json!({
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": kind,
            "metadata": self.metadata(namespaced),
            "subjects": [{ "kind": "ServiceAccount", "name": self.name, "namespace": self.namespace }],
            "roleRef": { "apiGroup": "rbac.authorization.k8s.io", "kind": role_kind, "name": self.name },
        })
    }

    pub fn role_binding(&self) -> Value {
        self.binding("RoleBinding", "Role", true)
    }

    pub fn cluster_role_binding(&self) -> Value {
        self.binding("ClusterRoleBinding", "ClusterRole", false)
    }

    pub fn service_account(&self) -> Value {
        json!({ "apiVersion": "v1", "kind": "ServiceAccount", "metadata": self.metadata(true) })
    }

    pub fn config_map(&self) -> Value {
        json!({
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": self.metadata(true),
            "data": { CONFIG_FILE: self.spec.config },
        })
    }

    pub fn secret(&self) -> Value {
        json!({
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": self.metadata(true),
            "type": "Opaque",
            "stringData": self.spec.secrets,
        })
    }

    /// A digest of what the pod runs with that the pod template does not show (the
    /// configuration and the secrets' values): a change rolls the Deployment.
    fn digest(&self) -> String {
        use sha2::Digest;
        let mut h = sha2::Sha256::new();
        h.update(self.spec.config.as_bytes());
        for (k, v) in &self.spec.secrets {
            h.update([0]);
            h.update(k.as_bytes());
            h.update([0]);
            h.update(v.as_bytes());
        }
        crate::config::functions::hex(&h.finalize())
    }

    pub fn deployment(&self) -> Value {
        let mut env: Vec<Value> = self
            .spec
            .envs
            .iter()
            .map(|(k, v)| json!({ "name": k, "value": v }))
            .collect();
        env.extend(self.spec.secrets.keys().map(|k| {
            json!({ "name": k, "valueFrom": { "secretKeyRef": { "name": self.name, "key": k } } })
        }));
        env.push(json!({ "name": IN_CLUSTER_ENV, "value": context_of(self.spec) }));
        env.push(json!({ "name": "SKYFORM_WORKSPACE", "value": self.spec.workspace }));
        // Services' balancers listen on the pod's every address, and endpoints give the
        // pod's address: reachable from the cluster's network (`kubectl port-forward` from
        // outside it).
        env.push(json!({ "name": "SKYFORM_SERVE_BIND", "value": "0.0.0.0" }));
        env.push(json!({
            "name": "SKYFORM_SERVE_HOST",
            "valueFrom": { "fieldRef": { "fieldPath": "status.podIP" } }
        }));
        let mut labels = self.metadata(true)["labels"].clone();
        labels[LABEL_CONTROLLER] = json!(self.name);
        json!({
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": self.metadata(true),
            "spec": {
                "replicas": 1,
                "strategy": { "type": "Recreate" },
                "selector": { "matchLabels": { LABEL_CONTROLLER: self.name } },
                "template": {
                    "metadata": {
                        "labels": labels,
                        "annotations": { "skyform.dev/config-sha256": self.digest() },
                    },
                    "spec": {
                        "serviceAccountName": self.name,
                        "enableServiceLinks": false,
                        "terminationGracePeriodSeconds": 30,
                        "containers": [{
                            "name": "controller",
                            "image": self.spec.image,
                            "command": ["skyform", "controller", "run"],
                            "workingDir": WORKDIR,
                            "env": env,
                            "resources": { "requests": { "cpu": "100m", "memory": "128Mi" } },
                            "volumeMounts": [
                                { "name": "work", "mountPath": WORKDIR },
                                {
                                    "name": "config",
                                    "mountPath": format!("{WORKDIR}/{CONFIG_FILE}"),
                                    "subPath": CONFIG_FILE,
                                    "readOnly": true,
                                },
                            ],
                        }],
                        "volumes": [
                            { "name": "work", "emptyDir": {} },
                            { "name": "config", "configMap": { "name": self.name } },
                        ],
                    },
                },
            },
        })
    }
}

/// Where the Deployment stands, from its status and its pods.
enum Rollout {
    /// The new pod runs.
    Ready,
    /// Not yet (what it waits for).
    Waiting(String),
    /// Will not get there by waiting.
    Failed(String),
}

impl KubeProvider {
    /// Applies every object of the controller and waits until its pod runs.
    pub(super) async fn put_controller(
        &self,
        req: &Request<'_>,
        spec: &ControllerSpec,
    ) -> Result<Created, ProviderError> {
        let mut p: Private = serde_json::from_value(req.private.clone()).unwrap_or_default();
        let context = context_of(spec).to_string();
        let mut conn = self.conn(&context).await?;
        if let Some(ns) = &p.namespace {
            conn.namespace = ns.clone();
        }
        p.context = Some(context);
        p.namespace = Some(conn.namespace.clone());
        let private = serde_json::to_value(&p).unwrap_or_default();
        self.ensure_namespace(&conn).await?;
        let o = Objects {
            address: req.address,
            lineage: &p.lineage,
            name: &p.name,
            namespace: &conn.namespace,
            spec,
        };
        req.progress
            .say(format!("applying its Deployment in {}", conn.where_()));
        let made = async {
            self.apply::<ServiceAccount>(&conn, &p.name, &o.service_account(), "service account")
                .await?;
            self.apply::<Role>(&conn, &p.name, &o.role(), "role")
                .await?;
            self.apply::<RoleBinding>(&conn, &p.name, &o.role_binding(), "role binding")
                .await?;
            self.apply_cluster::<ClusterRole>(&conn, &p.name, &o.cluster_role(), "cluster role")
                .await?;
            self.apply_cluster::<ClusterRoleBinding>(
                &conn,
                &p.name,
                &o.cluster_role_binding(),
                "cluster role binding",
            )
            .await?;
            self.apply::<ConfigMap>(&conn, &p.name, &o.config_map(), "config map")
                .await?;
            self.apply::<Secret>(&conn, &p.name, &o.secret(), "secret")
                .await?;
            self.apply::<Deployment>(&conn, &p.name, &o.deployment(), "deployment")
                .await?;
            self.wait_rolled_out(&conn, &p.name, req).await
        }
        .await;
        match made {
            Ok(()) => Ok(Created {
                computed: BTreeMap::from([("status".to_string(), json!("RUNNING"))]),
                private,
            }),
            Err(e) => Err(ProviderError {
                // What was applied stays for the next apply or destroy to take over: state
                // records the names, and every call repeats safely.
                kind: e.kind,
                message: format!(
                    "the controller's Deployment in {}: {}",
                    conn.where_(),
                    e.message
                ),
            }),
        }
    }

    /// Server-side applies one cluster-scoped object.
    async fn apply_cluster<K>(
        &self,
        conn: &Conn,
        name: &str,
        body: &Value,
        what: &str,
    ) -> Result<K, ProviderError>
    where
        K: kube::Resource<Scope = k8s_openapi::ClusterResourceScope, DynamicType = ()>
            + Clone
            + serde::de::DeserializeOwned
            + std::fmt::Debug,
    {
        let api: Api<K> = Api::all(conn.client.clone());
        retrying(|| async {
            api.patch(name, &apply_params(), &Patch::Apply(body))
                .await
                .map_err(|e| classify(e, &format!("apply {what} {name}"), &conn.where_()))
        })
        .await
    }

    async fn rollout(
        &self,
        conn: &Conn,
        name: &str,
        pulling: &mut BTreeMap<String, std::time::Instant>,
    ) -> Result<Rollout, ProviderError> {
        let at = conn.where_();
        let Some(d) = conn
            .api::<Deployment>()
            .get_opt(name)
            .await
            .map_err(|e| classify(e, "read the deployment", &at))?
        else {
            return Ok(Rollout::Failed(format!("deployment {name} is gone")));
        };
        let generation = d.metadata.generation.unwrap_or(0);
        let status = d.status.unwrap_or_default();
        let current = status.observed_generation.unwrap_or(0) >= generation;
        let updated = status.updated_replicas.unwrap_or(0) >= 1;
        let available = status.available_replicas.unwrap_or(0) >= 1;
        let old = status.replicas.unwrap_or(0) > status.updated_replicas.unwrap_or(0);
        if current && updated && available && !old {
            return Ok(Rollout::Ready);
        }
        let pods = conn
            .pods()
            .list(&selector(LABEL_CONTROLLER, name))
            .await
            .map_err(|e| classify(e, "list pods", &at))?;
        for p in &pods.items {
            if let Some(why) = cannot_start(p, pulling) {
                return Ok(Rollout::Failed(format!(
                    "pod {} cannot start: {why}",
                    p.metadata.name.as_deref().unwrap_or("?")
                )));
            }
        }
        let why = pods
            .items
            .iter()
            .find_map(unschedulable)
            .map(|u| format!("its pod is not scheduled: {u}"))
            .or_else(|| {
                pods.items.iter().find_map(|p: &Pod| {
                    let phase = super::status::phase(p);
                    Some(format!("pod {} is {phase}", p.metadata.name.as_deref()?))
                })
            })
            .unwrap_or_else(|| "its pod to be made".into());
        Ok(Rollout::Waiting(why))
    }

    async fn wait_rolled_out(
        &self,
        conn: &Conn,
        name: &str,
        req: &Request<'_>,
    ) -> Result<(), ProviderError> {
        let deadline = tokio::time::Instant::now() + conn.context.start_timeout;
        let mut pulling = BTreeMap::new();
        loop {
            match self.rollout(conn, name, &mut pulling).await? {
                Rollout::Ready => return Ok(()),
                Rollout::Failed(why) => {
                    return Err(ProviderError {
                        kind: ErrorKind::Config,
                        message: why,
                    });
                }
                Rollout::Waiting(why) => {
                    if tokio::time::Instant::now() >= deadline {
                        return Err(ProviderError {
                            kind: ErrorKind::Timeout,
                            message: format!(
                                "its pod did not run within {}: waiting for {why}",
                                humantime::format_duration(conn.context.start_timeout)
                            ),
                        });
                    }
                    req.progress.say(format!("waiting for {why}"));
                }
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// RUNNING while its pod runs; otherwise STARTING or DOWN and why (never RUNNING for a
    /// controller that does not run).
    pub(super) async fn refresh_controller(
        &self,
        res: &ResourceState,
        p: &Private,
    ) -> Result<Observed, ProviderError> {
        let Some(conn) = self.conn_of(p, res).await? else {
            return Ok(Observed::Gone {
                reason: "it names no Kubernetes context (nothing was made)".into(),
            });
        };
        let mut pulling = BTreeMap::new();
        let (status, reason) = match self.rollout(&conn, &p.name, &mut pulling).await? {
            Rollout::Ready => ("RUNNING", None),
            Rollout::Failed(why) if why.ends_with("is gone") => {
                return Ok(Observed::Gone {
                    reason: format!("its Deployment is gone from {}", conn.where_()),
                });
            }
            Rollout::Failed(why) => ("DOWN", Some(why)),
            Rollout::Waiting(why) => ("STARTING", Some(why)),
        };
        let mut computed = BTreeMap::from([("status".to_string(), json!(status))]);
        if let Some(r) = reason {
            computed.insert("reason".into(), json!(r));
        }
        Ok(Observed::Up(computed))
    }

    /// Deletes every object of the controller and waits until its pod is gone.
    pub(super) async fn delete_controller(
        &self,
        conn: &Conn,
        name: &str,
    ) -> Result<(), ProviderError> {
        let at = conn.where_();
        let dp = DeleteParams {
            propagation_policy: Some(PropagationPolicy::Background),
            ..DeleteParams::default()
        };
        let gone = |r: Result<(), kube::Error>, what: &str| match r {
            Ok(()) => Ok(()),
            Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
            Err(e) => Err(classify(e, &format!("delete {what} {name}"), &at)),
        };
        // The Deployment first: its pod gives the lease back as it stops.
        gone(
            conn.api::<Deployment>().delete(name, &dp).await.map(drop),
            "deployment",
        )?;
        gone(
            conn.api::<ConfigMap>().delete(name, &dp).await.map(drop),
            "config map",
        )?;
        gone(
            conn.api::<Secret>().delete(name, &dp).await.map(drop),
            "secret",
        )?;
        gone(
            conn.api::<RoleBinding>().delete(name, &dp).await.map(drop),
            "role binding",
        )?;
        gone(conn.api::<Role>().delete(name, &dp).await.map(drop), "role")?;
        gone(
            conn.api::<ServiceAccount>()
                .delete(name, &dp)
                .await
                .map(drop),
            "service account",
        )?;
        let all = |c: &Conn| c.client.clone();
        gone(
            Api::<ClusterRoleBinding>::all(all(conn))
                .delete(name, &dp)
                .await
                .map(drop),
            "cluster role binding",
        )?;
        gone(
            Api::<ClusterRole>::all(all(conn))
                .delete(name, &dp)
                .await
                .map(drop),
            "cluster role",
        )?;
        // Its pods go with the ReplicaSet; gone means gone.
        super::clusters::pods_gone(conn, &selector(LABEL_CONTROLLER, name)).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> ControllerSpec {
        ControllerSpec {
            infra: "k8s/prod".into(),
            image: "example/skyform:1".into(),
            envs: BTreeMap::from([("AWS_REGION".into(), "us-east-1".into())]),
            secrets: BTreeMap::from([("AWS_SECRET_ACCESS_KEY".into(), "s3cr3t".into())]),
            config: "skyform {}\n".into(),
            workspace: "default".into(),
        }
    }

    #[test]
    fn the_pod_reads_secrets_by_reference_and_rolls_when_they_change() {
        let address = Address::new(crate::model::Kind::Controller, "main");
        let mut s = spec();
        let o = Objects {
            address: &address,
            lineage: "lin",
            name: "sky-main-abc123",
            namespace: "ml",
            spec: &s,
        };
        let d = o.deployment();
        let text = d.to_string();
        assert!(!text.contains("s3cr3t"), "{text}");
        let c = &d["spec"]["template"]["spec"]["containers"][0];
        assert_eq!(c["command"], json!(["skyform", "controller", "run"]));
        assert_eq!(c["workingDir"], json!(WORKDIR));
        let env: BTreeMap<String, Value> = c["env"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| (e["name"].as_str().unwrap().to_string(), e.clone()))
            .collect();
        assert_eq!(env["AWS_REGION"]["value"], json!("us-east-1"));
        assert_eq!(
            env["AWS_SECRET_ACCESS_KEY"]["valueFrom"]["secretKeyRef"]["name"],
            json!("sky-main-abc123")
        );
        assert_eq!(env[IN_CLUSTER_ENV]["value"], json!("prod"));
        // Services' endpoints: every address of the pod, given as the pod's own.
        assert_eq!(env["SKYFORM_SERVE_BIND"]["value"], json!("0.0.0.0"));
        assert_eq!(
            env["SKYFORM_SERVE_HOST"]["valueFrom"]["fieldRef"]["fieldPath"],
            json!("status.podIP")
        );
        assert_eq!(d["spec"]["strategy"]["type"], json!("Recreate"));
        let before = d["spec"]["template"]["metadata"]["annotations"].clone();
        s.secrets
            .insert("AWS_SECRET_ACCESS_KEY".into(), "other".into());
        let o = Objects {
            address: &address,
            lineage: "lin",
            name: "sky-main-abc123",
            namespace: "ml",
            spec: &s,
        };
        assert_ne!(
            o.deployment()["spec"]["template"]["metadata"]["annotations"],
            before
        );
        assert_eq!(
            o.secret()["stringData"]["AWS_SECRET_ACCESS_KEY"],
            json!("other")
        );
        assert_eq!(o.role_binding()["subjects"][0]["namespace"], json!("ml"));
        assert!(o.cluster_role()["metadata"].get("namespace").is_none());
    }
}
