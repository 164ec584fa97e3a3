//! Jobs on a cluster: run inside the cluster's pods through exec, after the jobs they wait
//! for succeeded; their status is read from inside the pods.

use super::connection::Conn;
use super::status::ranks_of;
use super::{KubeProvider, Private, exec, objects};
use crate::model::Spec;
use crate::providers::{Created, ErrorKind, ProviderError, Request};
use std::collections::BTreeMap;
use std::time::Duration;

impl KubeProvider {
    pub(super) async fn create_job(
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
        let (cluster_nodes, cluster_envs) = match cluster.spec.as_ref() {
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
        // The job's ranks run on the cluster's first n pods.
        let hosts = objects::pod_hosts(&cp.name, n);
        for rank in 0..n {
            let e = rank_envs(
                &envs,
                rank,
                crate::runtime::skypilot::gpus_of(&spec.resources),
                &hosts,
            );
            let pod = objects::pod_name(&cp.name, rank);
            exec::start(&conn, &pod, &p.name, rank, &spec.run, &e).await?;
        }
        let status = self.exec_status(&conn, &p, n).await?;
        Ok(Created {
            computed: crate::providers::jobs::computed(&status),
            private: serde_json::to_value(&p).unwrap_or_default(),
        })
    }

    /// A job's status from inside its cluster's pods; a pod that is gone lost its rank.
    pub(super) async fn exec_status(
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

    /// Jobs start after those they depend on succeeded.
    pub(super) async fn wait_for_after(&self, req: &Request<'_>) -> Result<(), ProviderError> {
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
    pub(super) async fn status_of(
        &self,
        conn: &Conn,
        p: &Private,
        spec: &Spec,
    ) -> Result<crate::runtime::JobStatus, ProviderError> {
        let ranks = ranks_of(spec).unwrap_or(1);
        match spec {
            Spec::Job(_) => self.exec_status(conn, p, ranks).await,
            _ => self.managed_status(conn, &p.name, ranks).await,
        }
    }
}

/// A rank's environment: `envs` and who it is, in skyform's and SkyPilot's names.
fn rank_envs(
    envs: &BTreeMap<String, String>,
    rank: u32,
    gpus: Option<f64>,
    hosts: &[String],
) -> BTreeMap<String, String> {
    let mut e = envs.clone();
    e.insert("SKYFORM_NODE_RANK".into(), rank.to_string());
    crate::runtime::skypilot::add_vars(
        &mut e,
        crate::runtime::skypilot::Phase::Run,
        Some(hosts),
        gpus,
    );
    e
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rank_sees_skypilots_names() {
        let envs = BTreeMap::from([
            ("SKYFORM_NUM_NODES".to_string(), "2".to_string()),
            ("SKYFORM_JOB_ID".to_string(), "sky-job-1".to_string()),
        ]);
        let hosts = objects::pod_hosts("sky-c-1", 2);
        let e = rank_envs(&envs, 1, Some(8.0), &hosts);
        assert_eq!(
            e["SKYPILOT_NODE_IPS"],
            "sky-c-1-0.sky-c-1\nsky-c-1-1.sky-c-1"
        );
        assert_eq!(e["SKYFORM_NODE_RANK"], "1");
        assert_eq!(e["SKYPILOT_NODE_RANK"], "1");
        assert_eq!(e["SKYPILOT_NUM_NODES"], "2");
        assert_eq!(e["SKYPILOT_TASK_ID"], "sky-job-1");
        assert_eq!(e["SKYPILOT_NUM_GPUS_PER_NODE"], "8");
    }
}
