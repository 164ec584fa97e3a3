//! Clusters: pods behind a headless Service in the chosen context, waited for until they
//! run, refreshed rank by rank, and removed with everything labelled as theirs.

use super::connection::{Conn, names, selector};
use super::errors::{classify, retrying};
use super::objects::{self, LABEL_CLUSTER, Owner, PodShape};
use super::status::{cannot_start, cluster_computed, phase, pod_failure, pod_rank, unschedulable};
use super::{KubeProvider, Private, capacity};
use crate::model::Spec;
use crate::optimizer::{Candidate, Offering};
use crate::providers::{Created, ErrorKind, Observed, ProviderError, Request};
use crate::state::{ResourceState, Status};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Node, Pod, Secret, Service};
use kube::api::{Api, DeleteParams, ListParams, PropagationPolicy};
use std::collections::BTreeMap;
use std::time::Duration;

pub(super) const NO_WORKDIR: &str = "workdir is not supported on Kubernetes yet: put the files into the image (image_id = \"docker:…\") or fetch them in setup";

/// What a cluster asks that pods cannot give yet, if anything.
pub(super) fn unsupported_in_cluster(spec: &crate::model::ClusterSpec) -> Option<&'static str> {
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
pub(super) enum Until {
    Running,
    Placed,
}

/// A placement made ready: see [`KubeProvider::placed`].
pub(super) struct Placed {
    pub(super) conn: Conn,
    pub(super) p: Private,
    pub(super) shape: PodShape,
    pub(super) image: String,
}

impl KubeProvider {
    /// Waits until `want` pods of the selection run (`Until::Running`, a cluster's: a pod
    /// that ends is a failure) or are placed on nodes (`Until::Placed`, a job's: it may
    /// already have finished). An unschedulable pod is a capacity error (the engine fails
    /// over); pods not there by the start timeout are a timeout.
    pub(super) async fn wait_pods(
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
                        pod_failure(p).unwrap_or_default()
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
    pub(super) async fn leftovers(
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
    pub(super) async fn remove(
        &self,
        conn: &Conn,
        key: &str,
        value: &str,
    ) -> Result<(), ProviderError> {
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
        pods_gone(conn, &lp).await
    }

    /// What a cluster's pods and a managed job's Jobs start from: the chosen context (its
    /// namespace made if missing), the private data with where it goes, each pod's share of
    /// a node and the image.
    pub(super) async fn placed(
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

    pub(super) async fn create_cluster(
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
    pub(super) async fn gpu_affinity(
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

    pub(super) async fn refresh_cluster(
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
        let want = match res.spec.as_ref() {
            Spec::Cluster(c) => c.num_nodes.max(1) as usize,
            _ => 1,
        };
        if pods.is_empty() {
            let rest = self.leftovers(conn, LABEL_CLUSTER, &p.name).await?;
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
                Some(pod) => pod_failure(pod),
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

/// Waits until no pod `lp` selects is left (at most 2 minutes): a pod being deleted still
/// holds its share of its node, and its process may still run.
pub(super) async fn pods_gone(conn: &Conn, lp: &ListParams) -> Result<(), ProviderError> {
    let at = conn.where_();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    loop {
        let left = conn
            .pods()
            .list(lp)
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
