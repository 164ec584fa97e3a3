//! Kubernetes clusters one already has (`infra "kubernetes" "NAME" { context, namespace,
//! kubeconfig }`): each declared context is a failover target, reached with the `kube` crate
//! over rustls and the credentials of its kubeconfig.
//!
//! A skyform cluster is N pods (rank 0 is the head) behind a headless Service; a job on it
//! runs inside those pods through the exec API ([`exec`]); a managed job is one Kubernetes
//! Job per rank with resources of its own.
//! Every object carries `skyform.dev/lineage` and `skyform.dev/address` and is written with
//! server-side apply under the field manager `skyform`, so each call can be repeated.
//!
//! The rooms: `connection.rs` (contexts, one client per context, server-side apply),
//! `errors.rs` (which error kind an API answer is), `status.rs` (pure functions from pods to
//! statuses), `clusters.rs` (a cluster's pods and Service), `jobs.rs` (jobs run inside a
//! cluster's pods, through `exec.rs`), `managed.rs` (managed jobs as Kubernetes Jobs);
//! [`capacity`] turns nodes and pods into offers; [`objects`] builds what is applied. This
//! file holds what state records and the [`Provider`](super::Provider) itself.

pub mod capacity;
mod clusters;
mod connection;
pub mod controller;
mod errors;
mod exec;
mod jobs;
mod managed;
pub mod objects;
mod status;

pub use connection::Context;

use super::{Created, ErrorKind, Observed, ProviderError, Request};
use crate::model::{Address, Spec};
use crate::optimizer::Offering;
use crate::state::ResourceState;
use connection::{Conn, selector};
use errors::classify;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, ListParams, LogParams};
use objects::{LABEL_CLUSTER, LABEL_JOB};
use serde::{Deserialize, Serialize};
use status::{cluster_computed, lost, phase, pod_failure, pod_rank, ranks_of};
use std::collections::BTreeMap;
use std::path::PathBuf;

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

#[derive(Debug)]
pub struct KubeProvider {
    contexts: BTreeMap<String, Context>,
    conns: tokio::sync::Mutex<BTreeMap<String, Conn>>,
}

impl KubeProvider {
    pub fn new(contexts: Vec<Context>) -> KubeProvider {
        KubeProvider {
            contexts: contexts.into_iter().map(|c| (c.name.clone(), c)).collect(),
            conns: tokio::sync::Mutex::new(BTreeMap::new()),
        }
    }

    /// One offering per distinct free shape of a context's schedulable nodes.
    async fn offerings_of(&self, name: &str) -> Result<Vec<Offering>, ProviderError> {
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
            futures::future::join_all(self.contexts.keys().map(|n| self.offerings_of(n))).await;
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
        if let Spec::Controller(_) = *res.spec {
            return self.refresh_controller(res, &p).await;
        }
        if let Some(ranks) = ranks_of(&res.spec) {
            if matches!(*res.spec, Spec::Job(_)) && cluster.is_none() {
                return Ok(Observed::Gone {
                    reason: "its cluster is not in state".into(),
                });
            }
            let Some(conn) = self.conn_of(&p, res).await? else {
                return Ok(Observed::Gone {
                    reason: "it names no Kubernetes context (nothing was made)".into(),
                });
            };
            if matches!(*res.spec, Spec::Job(_)) {
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
                let rest = self.leftovers(&conn, LABEL_JOB, &p.name).await?;
                return Ok(match rest.first() {
                    None => Observed::Gone { reason: what },
                    Some(o) => Observed::Degraded {
                        reason: format!("{what}, {o} is left"),
                        computed: BTreeMap::new(),
                    },
                });
            }
            let (s, head) = self.managed_view(&conn, &p.name, ranks).await?;
            let mut computed = super::jobs::computed(&s);
            if let Some(ip) = head {
                computed.insert("head_ip".into(), serde_json::json!(ip));
            }
            if let Some(reason) = lost(&s) {
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
            Spec::Controller(c) => self.put_controller(&req, c).await,
        }
    }

    /// A pod's command and environment are fixed once it is made, so a cluster on
    /// Kubernetes changes only by replacement.
    async fn update(&self, req: Request<'_>) -> Result<Created, ProviderError> {
        if let Spec::Controller(c) = req.spec {
            // A new configuration, image or secret: the Deployment rolls to it.
            return self.put_controller(&req, c).await;
        }
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
        match res.spec.as_ref() {
            Spec::Cluster(_) => self.remove(&conn, LABEL_CLUSTER, &p.name).await,
            Spec::Controller(_) => self.delete_controller(&conn, &p.name).await,
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
        if let Some(why) = pods.iter().find_map(pod_failure) {
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
        if let Spec::Job(_) = res.spec.as_ref() {
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
    use crate::state::Status;
    use std::path::Path;

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
            private: serde_json::json!({
                "name": "sky-train-abc123", "context": "lab", "namespace": "ml"
            }),
            ..ResourceState::new(
                Status::Ready,
                "k8s",
                Spec::Cluster(Default::default()).into(),
            )
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
}
