//! Managed jobs: one Kubernetes Job per rank with resources of its own, placed by the
//! scheduler like a cluster's pods; their status is read from the Jobs' pods.

use super::clusters::{NO_WORKDIR, Placed, Until};
use super::connection::{Conn, selector};
use super::errors::classify;
use super::objects::{self, LABEL_JOB, Owner};
use super::status::{pod_rank, rank_of_pod};
use super::{KubeProvider, exec};
use crate::optimizer::Candidate;
use crate::providers::{Created, ProviderError, Request};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Secret;
use std::collections::BTreeMap;

impl KubeProvider {
    /// Applies the Secret (when there are secrets) and one Kubernetes Job per rank of `job`.
    pub(super) async fn apply_jobs(
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
    pub(super) async fn create_managed(
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
        let status = self.managed_status(&conn, &p.name, n).await?;
        Ok(Created {
            computed: crate::providers::jobs::computed(&status),
            private: serde_json::to_value(&p).unwrap_or_default(),
        })
    }

    /// A job's status from its pods: failed when a rank failed (with that rank's exit
    /// code), succeeded when all did, running when one runs.
    pub(super) async fn managed_status(
        &self,
        conn: &Conn,
        name: &str,
        ranks: u32,
    ) -> Result<crate::runtime::JobStatus, ProviderError> {
        Ok(self.managed_view(conn, name, ranks).await?.0)
    }

    /// A job's status, and the address of its rank 0's pod (where a service replica that
    /// runs as this job is reached).
    pub(super) async fn managed_view(
        &self,
        conn: &Conn,
        name: &str,
        ranks: u32,
    ) -> Result<(crate::runtime::JobStatus, Option<String>), ProviderError> {
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
        let head = pods
            .iter()
            .find(|p| pod_rank(p) == Some(0))
            .and_then(|p| p.status.as_ref()?.pod_ip.clone());
        Ok((exec::status_of(&ranks), head))
    }
}
