//! A managed job's placements: making one (the managed job itself on backends that run it
//! as a unit, else a cluster of its own and the job on it), looking at it in the policy's
//! terms, keeping its logs and removing it.

use super::book::{Placement, Run};
use super::policy::Seen;
use super::reconcile::Stop;
use super::relay;
use super::step::Worker;
use crate::model::{Address, Spec};
use crate::optimizer::Candidate;
use crate::providers::{ErrorKind, Observed, Progress, ProviderError, Request};
use crate::state::{ResourceState, Status};
use std::collections::BTreeMap;

impl Worker<'_> {
    /// What the backend says of a placement, in the policy's terms. A composed placement is
    /// lost when its cluster is; its job's status is asked only of a living cluster.
    pub(super) async fn see(&self, address: &Address, p: &Placement) -> Seen {
        let Ok(_permit) = self.calls.acquire().await else {
            return Seen::Unknown {
                error: "the controller is stopping".into(),
            };
        };
        let Some(provider) = self.registry.get(&p.provider) else {
            return Seen::Unknown {
                error: format!("backend {} is not in this configuration", p.provider),
            };
        };
        let (job, cluster) = placed(p);
        if let Some(c) = &cluster {
            match provider.refresh(address, c, None).await {
                Err(e) => return Seen::Unknown { error: e.message },
                Ok(Observed::Degraded { reason, .. }) | Ok(Observed::Gone { reason }) => {
                    return Seen::Lost { reason };
                }
                Ok(_) => {}
            }
        }
        match provider.refresh(address, &job, cluster.as_ref()).await {
            Err(e) => Seen::Unknown { error: e.message },
            Ok(Observed::Degraded { reason, .. }) | Ok(Observed::Gone { reason }) => {
                Seen::Lost { reason }
            }
            Ok(Observed::Up(computed))
            | Ok(Observed::Adopted(crate::providers::Created { computed, .. })) => {
                seen_in(&computed)
            }
        }
    }

    /// Makes a placement on `c`, recording it in the book before each call that makes
    /// something (a controller killed during the call finds it again) and the backend's
    /// identifiers after. A backend that runs managed jobs as a unit gets the managed job; any
    /// other gets a cluster of its own and then the job on it.
    pub(super) async fn place(
        &self,
        task: &str,
        run: &mut Run,
        provider: &dyn crate::providers::Provider,
        spec: &Spec,
        c: &Candidate,
        lineage: &str,
    ) -> std::result::Result<std::result::Result<(), ProviderError>, Stop> {
        if provider.runs_managed_jobs() {
            let private = provider.new_private(&run.address, spec, lineage);
            run.current = Some(Placement::intent(c, spec, private.clone(), None));
            self.commit(task, run).await?;
            let made = self
                .create_bounded(
                    provider,
                    self.request(&run.address, spec, &private, c, None),
                )
                .await;
            crate::faults::passed(crate::faults::Point::Call);
            return Ok(made.map(|made| {
                if let Some(p) = &mut run.current {
                    p.private = made.private;
                }
            }));
        }
        let (cluster_spec, job_spec) = compose(spec, &run.address);
        // Not the state's own lineage: an apply of that state gives back or adopts what
        // carries it and state lacks, and this cluster is the book's, not the state's.
        let lineage = composed_lineage(lineage);
        let cluster_private = provider.new_private(&run.address, &cluster_spec, &lineage);
        let job_private = provider.new_private(&run.address, &job_spec, &lineage);
        run.current = Some(Placement::intent(
            c,
            &job_spec,
            job_private.clone(),
            Some((&cluster_spec, cluster_private.clone())),
        ));
        self.commit(task, run).await?;
        let made = self
            .create_bounded(
                provider,
                self.request(&run.address, &cluster_spec, &cluster_private, c, None),
            )
            .await;
        crate::faults::passed(crate::faults::Point::Call);
        let made = match made {
            Ok(m) => m,
            Err(e) => return Ok(Err(e)),
        };
        if let Some(part) = run.current.as_mut().and_then(|p| p.cluster.as_mut()) {
            part.private = made.private;
            part.computed = made.computed;
        }
        self.commit(task, run).await?;
        let Some((_, Some(cluster))) = run.current.as_ref().map(placed) else {
            return Ok(Err(ProviderError::other(
                "the placement's cluster is not on record",
            )));
        };
        let made = {
            let _permit = self.launches.acquire().await;
            provider
                .create(self.request(&run.address, &job_spec, &job_private, c, Some(&cluster)))
                .await
        };
        crate::faults::passed(crate::faults::Point::Call);
        Ok(made.map(|made| {
            if let Some(p) = &mut run.current {
                p.private = made.private;
            }
        }))
    }

    /// What a create of a placement's part on `c` is asked.
    fn request<'a>(
        &self,
        address: &'a Address,
        spec: &'a Spec,
        private: &'a serde_json::Value,
        c: &'a Candidate,
        cluster: Option<&'a ResourceState>,
    ) -> Request<'a> {
        Request {
            address,
            spec,
            private,
            placement: Some(c),
            cluster,
            after: Vec::new(),
            root: self.engine.dir().to_path_buf(),
            capacity_timeout: self.settings.launch_timeout,
            progress: Progress::default(),
        }
    }

    /// A create, bounded by the launch timeout unless the backend bounds its own wait, and
    /// waiting its turn among the launches in flight.
    pub(super) async fn create_bounded(
        &self,
        provider: &dyn crate::providers::Provider,
        req: Request<'_>,
    ) -> std::result::Result<crate::providers::Created, ProviderError> {
        let _permit = self.launches.acquire().await;
        if !provider.create_is_bounded() {
            return provider.create(req).await;
        }
        crate::providers::within_attempt(self.settings.launch_timeout, provider.create(req)).await
    }

    /// Removes earlier placements; those whose backend does not confirm stay on record.
    pub(super) async fn remove_leftovers(&self, run: &mut Run) {
        let mut kept = Vec::new();
        let mut failed = None;
        for p in std::mem::take(&mut run.leftovers) {
            let Some(provider) = self.registry.get(&p.provider) else {
                kept.push(p);
                continue;
            };
            // A composed placement goes with its cluster.
            let removed = {
                let _permit = self.calls.acquire().await;
                match placed(&p) {
                    (_, Some(cluster)) => provider.delete(&run.address, &cluster, None).await,
                    (job, None) => provider.delete(&run.address, &job, None).await,
                }
            };
            crate::faults::passed(crate::faults::Point::Call);
            match removed {
                Ok(()) => {}
                Err(e) if e.kind == ErrorKind::NotFound => {}
                Err(e) => {
                    let why = format!(
                        "cannot remove its placement on {} yet: {}",
                        p.candidate.offering.infra(),
                        e.message
                    );
                    if run.remove_error.as_ref() != Some(&why) {
                        self.say(format!("{}: {why}", run.address));
                    }
                    failed = Some(why);
                    kept.push(p);
                }
            }
        }
        run.leftovers = kept;
        run.remove_error = failed;
    }

    /// Copies a finished placement's logs next to the state, so `logs` still shows them
    /// once the machines are gone.
    pub(super) async fn keep_logs(&self, task: &str, address: &Address, p: &Placement) {
        let Some(provider) = self.registry.get(&p.provider) else {
            return;
        };
        let dir = relay::dir(self.engine.dir(), &self.engine.config().workspace, task);
        let (job, cluster) = placed(p);
        let _permit = self.calls.acquire().await;
        let mut offsets: Vec<u64> = Vec::new();
        for _ in 0..4096 {
            let Ok(chunks) = provider.read_logs(&job, cluster.as_ref(), &offsets).await else {
                return;
            };
            if offsets.is_empty() {
                offsets = vec![0; chunks.len()];
            }
            if chunks.iter().all(Vec::is_empty) {
                self.publish_logs(task, address).await;
                return;
            }
            for (rank, chunk) in chunks.iter().enumerate() {
                if relay::append_log(&dir, rank, chunk).is_err() {
                    self.say(format!(
                        "{address}: cannot keep its logs in {}",
                        dir.display()
                    ));
                    return;
                }
                offsets[rank] += chunk.len() as u64;
            }
        }
    }

    /// Copies what [`Self::keep_logs`] kept beside the state.
    async fn publish_logs(&self, task: &str, address: &Address) {
        let dir = relay::dir(self.engine.dir(), &self.engine.config().workspace, task);
        let published = match self.engine.store().await {
            Ok(store) => relay::publish_logs(store.as_ref(), &dir, task).await,
            Err(e) => Err(e.to_string()),
        };
        if let Err(e) = published {
            self.say(format!(
                "{address}: cannot keep its logs beside the state: {e}"
            ));
        }
    }
}

/// A placement as the resources its backend made: the managed job (or, composed, the job)
/// and, composed, its cluster — what refresh, delete and logs take.
pub fn placed(p: &Placement) -> (ResourceState, Option<ResourceState>) {
    let res = |spec: &Spec,
               private: &serde_json::Value,
               computed: &BTreeMap<String, serde_json::Value>| ResourceState {
        computed: computed.clone().into(),
        private: private.clone(),
        placement: Some(Box::new(p.candidate.clone())),
        ..ResourceState::new(
            Status::Ready,
            p.provider.clone(),
            std::sync::Arc::new(spec.clone()),
        )
    };
    (
        res(&p.spec, &p.private, &BTreeMap::new()),
        p.cluster
            .as_ref()
            .map(|c| res(&c.spec, &c.private, &c.computed)),
    )
}

/// The lineage a composed cluster's parts carry: the state's, marked as the controller's
/// (a plain suffix, valid where backends put it in labels).
pub(super) fn composed_lineage(lineage: &str) -> String {
    if lineage.is_empty() {
        String::new()
    } else {
        format!("{lineage}-controller")
    }
}

/// A managed job as a cluster of its own and the job it runs, for backends that run jobs
/// only on clusters.
pub(super) fn compose(spec: &Spec, address: &Address) -> (Spec, Spec) {
    let Spec::ManagedJob(m) = spec else {
        return (spec.clone(), spec.clone());
    };
    let cluster = Spec::Cluster(Box::new(crate::model::ClusterSpec {
        num_nodes: m.num_nodes,
        resources: m.resources.clone(),
        workdir: m.workdir.clone(),
        workdir_hash: m.workdir_hash.clone(),
        envs: m.envs.clone(),
        setup: m.setup.clone(),
        autostop: None,
        retry_until_up: false,
    }));
    let job = Spec::Job(crate::model::JobSpec {
        cluster: address.clone(),
        num_nodes: m.num_nodes,
        resources: crate::model::Resources::shared(m.resources.clone()),
        run: m.run.clone(),
        envs: m.envs.clone(),
        secrets: m.secrets.clone(),
    });
    (cluster, job)
}

/// A job's status attributes in the policy's terms.
pub(super) fn seen_in(computed: &BTreeMap<String, serde_json::Value>) -> Seen {
    let status = computed
        .get("status")
        .and_then(|s| s.as_str())
        .unwrap_or("");
    let exit_code = computed
        .get("exit_code")
        .and_then(serde_json::Value::as_i64)
        .map(|c| c as i32);
    let reason = computed
        .get("reason")
        .and_then(|r| r.as_str())
        .unwrap_or("");
    match status {
        "RUNNING" => Seen::Running,
        "SUCCEEDED" => Seen::Succeeded,
        "FAILED" => Seen::Failed {
            exit_code,
            setup: reason.starts_with("setup"),
        },
        "CANCELLED" => Seen::Cancelled,
        "LOST" => Seen::Lost {
            reason: if reason.is_empty() {
                "the job was lost".into()
            } else {
                reason.to_string()
            },
        },
        _ => Seen::Queued,
    }
}
