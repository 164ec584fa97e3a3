//! The local backend: clusters are sandbox directories under `.skyform/local/`, one agent
//! process per node, each in a session of its own; jobs run as real processes.

use super::jobs::{self, job_id};
use super::{Created, Observed, Provider, ProviderError, Request};
use crate::model::{Address, Spec};
use crate::optimizer::{Offering, micros_from_dollars};
use crate::runtime::{self, ClusterInfo, JobState, Layout, proc};
use crate::state::ResourceState;
use serde_json::json;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

mod sandbox;

pub use sandbox::sync_dir;

#[derive(Debug, Clone)]
pub struct LocalProvider {
    /// `.skyform/local` of the configuration.
    pub base: PathBuf,
    /// The program run as each node's agent (this skyform binary).
    pub agent_exe: PathBuf,
    /// What this machine advertises: CPUs, GiB, GPUs; overridable by `infra "local"`.
    pub cpus: f64,
    pub memory_gib: f64,
    pub gpus: Vec<(String, f64)>,
    pub price: u64,
    pub setup_timeout: Duration,
    /// Whether the optimizer may place new resources here.
    pub offer: bool,
}

impl LocalProvider {
    pub fn new(
        base: PathBuf,
        settings: Option<&serde_json::Map<String, serde_json::Value>>,
    ) -> LocalProvider {
        let (mut cpus, mut mem, mut gpus) = proc::machine();
        let mut price = 0;
        if let Some(s) = settings {
            if let Some(c) = s.get("cpus").and_then(serde_json::Value::as_f64) {
                cpus = c;
            }
            if let Some(m) = s.get("memory").and_then(serde_json::Value::as_f64) {
                mem = m;
            }
            if let Some(a) = s.get("accelerators").and_then(serde_json::Value::as_object) {
                gpus = a
                    .iter()
                    .map(|(k, v)| {
                        (
                            k.clone(),
                            v.as_f64()
                                .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
                                .unwrap_or(0.0),
                        )
                    })
                    .collect();
            }
            if let Some(p) = s.get("price_per_hour").and_then(serde_json::Value::as_f64) {
                price = micros_from_dollars(p);
            }
        }
        let agent_exe = runtime::link::agent_exe();
        LocalProvider {
            base,
            agent_exe,
            cpus,
            memory_gib: mem,
            gpus,
            price,
            setup_timeout: Duration::from_secs(3600),
            offer: true,
        }
    }

    fn cluster_dir(private: &serde_json::Value) -> Option<PathBuf> {
        private
            .get("dir")
            .and_then(serde_json::Value::as_str)
            .map(PathBuf::from)
    }

    fn gpus_per_node(&self) -> f64 {
        self.gpus.iter().map(|g| g.1).sum()
    }

    fn node_agents(private: &serde_json::Value) -> Vec<(u32, Option<u64>)> {
        private
            .get("agents")
            .and_then(serde_json::Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|n| {
                        Some((
                            u32::try_from(n.get("pid")?.as_u64()?).ok()?,
                            n.get("start_time").and_then(serde_json::Value::as_u64),
                        ))
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    fn computed_cluster(nodes: u32) -> BTreeMap<String, serde_json::Value> {
        let ips: Vec<String> = (0..nodes).map(|_| "127.0.0.1".to_string()).collect();
        BTreeMap::from([
            ("head_ip".to_string(), json!("127.0.0.1")),
            ("ips".to_string(), json!(ips)),
            ("status".to_string(), json!("UP")),
        ])
    }
}

#[async_trait::async_trait]
impl Provider for LocalProvider {
    fn name(&self) -> &'static str {
        "local"
    }

    async fn offerings(&self) -> Result<Vec<Offering>, ProviderError> {
        if !self.offer {
            return Ok(Vec::new());
        }
        Ok(vec![Offering {
            cloud: "local".into(),
            region: None,
            zone: None,
            instance_type: "local".into(),
            accelerators: self.gpus.clone(),
            cpus: self.cpus,
            memory_gib: self.memory_gib,
            spot: false,
            price: self.price,
            max_nodes: None,
        }])
    }

    fn new_private(&self, address: &Address, spec: &Spec, _lineage: &str) -> serde_json::Value {
        let id = uuid::Uuid::new_v4().simple().to_string();
        let slug: String = address
            .to_string()
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                    c
                } else {
                    '_'
                }
            })
            // File names have a length limit; the id keeps them unique.
            .take(64)
            .collect();
        match spec {
            Spec::Job(_) => json!({ "job_id": format!("{slug}-{}", &id[..8]) }),
            _ => {
                json!({ "dir": self.base.join(format!("{slug}-{}", &id[..8])).display().to_string(), "job_id": format!("{slug}-{}", &id[..8]) })
            }
        }
    }

    async fn refresh(
        &self,
        _address: &Address,
        res: &ResourceState,
        cluster: Option<&ResourceState>,
    ) -> Result<Observed, ProviderError> {
        match res.spec.as_ref() {
            Spec::Cluster(c) => {
                let Some(dir) = Self::cluster_dir(&res.private) else {
                    return Ok(Observed::Gone {
                        reason: "no sandbox recorded".into(),
                    });
                };
                let agents = Self::node_agents(&res.private);
                if !dir.is_dir() {
                    let reason = format!("its sandbox {} was removed", dir.display());
                    if agents.iter().any(|(pid, start)| {
                        proc::alive(*pid, *start) || !proc::session_members(*pid).is_empty()
                    }) {
                        // Its processes still run: replacing it stops them first.
                        return Ok(Observed::Degraded {
                            reason,
                            computed: Self::computed_cluster(c.num_nodes),
                        });
                    }
                    return Ok(Observed::Gone { reason });
                }
                if Layout::new(&dir).stopped().exists() {
                    let mut computed = Self::computed_cluster(c.num_nodes);
                    computed.insert("status".into(), json!("STOPPED"));
                    return Ok(Observed::Up(computed));
                }
                if agents.len() < c.num_nodes as usize {
                    return Ok(Observed::Degraded {
                        reason: "creation was interrupted before all nodes started".into(),
                        computed: Self::computed_cluster(c.num_nodes),
                    });
                }
                for (rank, (pid, start)) in agents.iter().enumerate() {
                    if !proc::alive(*pid, *start) {
                        return Ok(Observed::Degraded {
                            reason: format!("node {rank} is not running (process {pid} is gone)"),
                            computed: Self::computed_cluster(c.num_nodes),
                        });
                    }
                }
                Ok(Observed::Up(Self::computed_cluster(c.num_nodes)))
            }
            Spec::Job(_) => {
                let (Some(cluster), Some(job)) = (cluster, job_id(&res.private)) else {
                    return Ok(Observed::Gone {
                        reason: "its cluster is not in state".into(),
                    });
                };
                let Some(dir) = Self::cluster_dir(&cluster.private) else {
                    return Ok(Observed::Gone {
                        reason: "its cluster has no sandbox".into(),
                    });
                };
                match runtime::job_status(&Layout::new(dir), job) {
                    Some(s) => Ok(Observed::Up(jobs::computed(&s))),
                    None => Ok(Observed::Gone {
                        reason: "the job is not in its cluster's queue".into(),
                    }),
                }
            }
            Spec::ManagedJob(_) | Spec::Service(_) => {
                let (Some(dir), Some(job)) =
                    (Self::cluster_dir(&res.private), job_id(&res.private))
                else {
                    return Ok(Observed::Gone {
                        reason: "no sandbox recorded".into(),
                    });
                };
                let layout = Layout::new(&dir);
                let Some(status) = runtime::job_status(&layout, job) else {
                    return Ok(Observed::Gone {
                        reason: format!("sandbox {} has no record of the job", dir.display()),
                    });
                };
                let mut computed = jobs::computed(&status);
                if let Spec::Service(s) = res.spec.as_ref() {
                    let port = s.endpoint_port();
                    computed.insert("endpoint".into(), json!(format!("http://127.0.0.1:{port}")));
                }
                if !status.state.is_final() {
                    for (rank, (pid, start)) in Self::node_agents(&res.private).iter().enumerate() {
                        if !proc::alive(*pid, *start) {
                            return Ok(Observed::Degraded {
                                reason: format!("node {rank} of its cluster is not running"),
                                computed,
                            });
                        }
                    }
                }
                Ok(Observed::Up(computed))
            }
            Spec::Controller(_) => Ok(Observed::Gone {
                reason: crate::controller::ONLY_ON_KUBERNETES.into(),
            }),
        }
    }

    /// The cluster's jobs in one pass: their status files read on a few threads, without a
    /// task (and copies of the job and its cluster) for each.
    async fn refresh_jobs(
        &self,
        jobs: &[(&Address, &ResourceState)],
        cluster: &ResourceState,
    ) -> Vec<Result<Observed, ProviderError>> {
        let gone = |reason: &str| {
            Ok(Observed::Gone {
                reason: reason.into(),
            })
        };
        let Some(dir) = Self::cluster_dir(&cluster.private) else {
            return jobs
                .iter()
                .map(|_| gone("its cluster has no sandbox"))
                .collect();
        };
        let layout = Layout::new(dir);
        let ids: Vec<Option<&str>> = jobs
            .iter()
            .map(|(_, res)| match *res.spec {
                Spec::Job(_) => job_id(&res.private),
                _ => None,
            })
            .collect();
        let statuses = read_statuses(&layout, &ids);
        let mut out = Vec::with_capacity(jobs.len());
        for (((address, res), id), status) in jobs.iter().zip(&ids).zip(statuses) {
            let result = match (res.spec.as_ref(), id, status) {
                (Spec::Job(_), _, Some(s)) => Ok(Observed::Up(jobs::computed(&s))),
                (Spec::Job(_), None, None) => gone("its cluster is not in state"),
                // No status yet: queued, or not there (as `refresh` finds it).
                (Spec::Job(_), Some(id), None) => match runtime::job_status(&layout, id) {
                    Some(s) => Ok(Observed::Up(jobs::computed(&s))),
                    None => gone("the job is not in its cluster's queue"),
                },
                _ => self.refresh(address, res, Some(cluster)).await,
            };
            out.push(result);
        }
        out
    }

    async fn create(&self, req: Request<'_>) -> Result<Created, ProviderError> {
        match req.spec {
            Spec::Cluster(c) => {
                let dir = Self::cluster_dir(req.private)
                    .ok_or_else(|| ProviderError::other("no sandbox path chosen"))?;
                let workdir = c.workdir.as_ref().map(|w| req.root.join(w));
                let agents = self
                    .launch(
                        req.address,
                        &dir,
                        c.num_nodes,
                        workdir.as_deref(),
                        &c.envs,
                        c.setup.as_deref(),
                        c.autostop.as_ref(),
                    )
                    .await;
                let mut private = req.private.clone();
                match agents {
                    Ok(agents) => {
                        private["agents"] = json!(agents);
                        Ok(Created {
                            computed: Self::computed_cluster(c.num_nodes),
                            private,
                        })
                    }
                    Err(e) => {
                        // Leave nothing running behind a failed create.
                        let _ = self
                            .delete(req.address, &placeholder(req.spec, req.private), None)
                            .await;
                        Err(e)
                    }
                }
            }
            Spec::Job(_) => {
                let cluster = req
                    .cluster
                    .ok_or_else(|| ProviderError::other("the job's cluster is not in state"))?;
                let dir = Self::cluster_dir(&cluster.private)
                    .ok_or_else(|| ProviderError::other("the job's cluster has no sandbox"))?;
                let id = Self::submit(&req, &dir)?;
                let status = runtime::job_status(&Layout::new(&dir), id);
                // Jobs that depend on this one find its status through the cluster's directory.
                let mut private = req.private.clone();
                private["dir"] = json!(dir.display().to_string());
                Ok(Created {
                    computed: status.as_ref().map(jobs::computed).unwrap_or_default(),
                    private,
                })
            }
            Spec::ManagedJob(_) | Spec::Service(_) => {
                let dir = Self::cluster_dir(req.private)
                    .ok_or_else(|| ProviderError::other("no sandbox path chosen"))?;
                let (nodes, workdir, envs, setup) = match req.spec {
                    Spec::ManagedJob(m) => (
                        m.num_nodes,
                        m.workdir.clone(),
                        m.envs.clone(),
                        m.setup.clone(),
                    ),
                    Spec::Service(s) => (
                        s.replica_policy.min_replicas.max(1),
                        s.workdir.clone(),
                        s.envs.clone(),
                        s.setup.clone(),
                    ),
                    _ => (1, None, BTreeMap::new(), None),
                };
                let workdir = workdir.map(|w| req.root.join(w));
                let agents = match self
                    .launch(
                        req.address,
                        &dir,
                        nodes,
                        workdir.as_deref(),
                        &envs,
                        setup.as_deref(),
                        None,
                    )
                    .await
                {
                    Ok(a) => a,
                    Err(e) => {
                        let _ = self
                            .delete(req.address, &placeholder(req.spec, req.private), None)
                            .await;
                        return Err(e);
                    }
                };
                let mut private = req.private.clone();
                private["agents"] = json!(agents);
                Self::submit(&req, &dir)?;
                let mut computed =
                    BTreeMap::from([("status".to_string(), json!(JobState::Queued.as_str()))]);
                if let Spec::Service(s) = req.spec {
                    let port = s.endpoint_port();
                    computed.insert("endpoint".into(), json!(format!("http://127.0.0.1:{port}")));
                }
                Ok(Created { computed, private })
            }
            Spec::Controller(_) => Err(ProviderError::other(crate::controller::ONLY_ON_KUBERNETES)),
        }
    }

    async fn update(&self, req: Request<'_>) -> Result<Created, ProviderError> {
        match req.spec {
            Spec::Cluster(c) => {
                let dir = Self::cluster_dir(req.private)
                    .ok_or_else(|| ProviderError::other("no sandbox recorded"))?;
                let layout = Layout::new(&dir);
                if let Some(mut info) = runtime::read_json::<ClusterInfo>(&layout.info()) {
                    info.envs = c.envs.clone();
                    runtime::write_json(&layout.info(), &info)?;
                }
                if let Some(w) = &c.workdir {
                    for rank in 0..c.num_nodes {
                        sync_dir(&req.root.join(w), &layout.workdir(rank))?;
                    }
                }
                if let Some(setup) = &c.setup {
                    runtime::run_everywhere(
                        &layout,
                        c.num_nodes,
                        "setup",
                        setup,
                        &c.envs,
                        self.setup_timeout,
                    )
                    .await
                    .map_err(ProviderError::other)?;
                }
                Ok(Created {
                    computed: Self::computed_cluster(c.num_nodes),
                    private: req.private.clone(),
                })
            }
            // Recovery settings and service policies are read at the next restart or scale.
            _ => Ok(Created {
                computed: BTreeMap::new(),
                private: req.private.clone(),
            }),
        }
    }

    async fn delete(
        &self,
        _address: &Address,
        res: &ResourceState,
        cluster: Option<&ResourceState>,
    ) -> Result<(), ProviderError> {
        match res.spec.as_ref() {
            Spec::Job(_) => {
                let (Some(cluster), Some(job)) = (cluster, job_id(&res.private)) else {
                    return Ok(());
                };
                let Some(dir) = Self::cluster_dir(&cluster.private) else {
                    return Ok(());
                };
                let layout = Layout::new(&dir);
                if !dir.is_dir() {
                    return Ok(());
                }
                let call = runtime::link::Call::Cancel { job: job.into() };
                let final_state = runtime::link::answer(&dir, &call)?
                    .status
                    .is_none_or(|s| s.state.is_final());
                if !final_state {
                    // Wait for the head to acknowledge (it kills the processes).
                    for _ in 0..100 {
                        if runtime::job_status(&layout, job).is_none_or(|s| s.state.is_final()) {
                            break;
                        }
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
                Ok(())
            }
            _ => {
                Self::kill_agents(&res.private);
                if let Some(dir) = Self::cluster_dir(&res.private)
                    && dir.starts_with(&self.base)
                    && dir.exists()
                {
                    std::fs::remove_dir_all(&dir)?;
                }
                Ok(())
            }
        }
    }

    /// Cancels every job first, then waits once for the head to end them all (one of its
    /// scheduling passes handles the whole batch).
    async fn delete_jobs(
        &self,
        jobs: &[(&Address, &ResourceState)],
        cluster: &ResourceState,
    ) -> Vec<Result<(), ProviderError>> {
        let mut results: Vec<Result<(), ProviderError>> = jobs.iter().map(|_| Ok(())).collect();
        let Some(dir) = Self::cluster_dir(&cluster.private).filter(|d| d.is_dir()) else {
            return results;
        };
        let layout = Layout::new(&dir);
        let mut pending = Vec::new();
        if runtime::takes_batch_cancels(&layout) {
            // One request for the whole batch (a file per job costs seconds at 10,000).
            pending = jobs
                .iter()
                .filter_map(|(_, res)| job_id(&res.private))
                .filter(|job| {
                    runtime::job_status(&layout, job).is_some_and(|s| !s.state.is_final())
                })
                .collect();
            if !pending.is_empty()
                && let Err(e) = runtime::cancel_all(&layout, &pending)
            {
                let message = e.to_string();
                return jobs
                    .iter()
                    .map(|_| Err(ProviderError::other(message.clone())))
                    .collect();
            }
        } else {
            for (i, (_, res)) in jobs.iter().enumerate() {
                let Some(job) = job_id(&res.private) else {
                    continue;
                };
                let call = runtime::link::Call::Cancel { job: job.into() };
                match runtime::link::answer(&dir, &call) {
                    Ok(a) if a.status.as_ref().is_some_and(|s| !s.state.is_final()) => {
                        pending.push(job)
                    }
                    Ok(_) => {}
                    Err(e) => results[i] = Err(e.into()),
                }
            }
        }
        // As for one job: wait up to 5 s for the head to acknowledge (it kills the processes).
        // One job is looked at until it has ended, then the next: each is read about once.
        for _ in 0..250 {
            while let Some(job) = pending.last() {
                if runtime::job_status(&layout, job).is_some_and(|s| !s.state.is_final()) {
                    break;
                }
                pending.pop();
            }
            if pending.is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        results
    }

    /// Imports a sandbox by its directory (relative to the configuration's directory, or
    /// absolute): its agents must run, or it must be stopped.
    async fn import(&self, _address: &Address, id: &str) -> Result<Created, ProviderError> {
        let dir = std::env::current_dir()
            .map(|d| d.join(id))
            .unwrap_or_else(|_| PathBuf::from(id));
        let dir = dir.canonicalize().map_err(|e| ProviderError {
            kind: super::ErrorKind::NotFound,
            message: format!("no sandbox at {}: {e}", dir.display()),
        })?;
        let layout = Layout::new(&dir);
        let info =
            runtime::read_json::<ClusterInfo>(&layout.info()).ok_or_else(|| ProviderError {
                kind: super::ErrorKind::NotFound,
                message: format!(
                    "{} is not a cluster sandbox (no cluster.json)",
                    dir.display()
                ),
            })?;
        let stopped = layout.stopped().exists();
        let mut agents = Vec::new();
        for rank in 0..info.num_nodes {
            let a = runtime::read_json::<serde_json::Value>(&layout.agent(rank));
            let pid = a.as_ref().and_then(|a| a.get("pid")?.as_u64());
            let start = a.as_ref().and_then(|a| a.get("start_time")?.as_u64());
            let alive = pid.is_some_and(|p| proc::alive(p as u32, start));
            if !alive && !stopped {
                return Err(ProviderError::other(format!(
                    "node {rank} of {} is not running; only a running or stopped sandbox can be imported",
                    dir.display()
                )));
            }
            agents.push(json!({"rank": rank, "pid": pid, "start_time": start}));
        }
        let mut computed = Self::computed_cluster(info.num_nodes);
        if stopped {
            computed.insert("status".into(), json!("STOPPED"));
        }
        let slug = dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        Ok(Created {
            computed,
            private: json!({
                "dir": dir.display().to_string(),
                "job_id": slug,
                "agents": agents,
            }),
        })
    }

    /// Stopping a sandbox ends its agents and the jobs they run; its files stay.
    async fn stop(&self, res: &ResourceState) -> Result<(), ProviderError> {
        let dir = Self::cluster_dir(&res.private)
            .ok_or_else(|| ProviderError::other("the cluster has no sandbox recorded"))?;
        std::fs::write(Layout::new(&dir).stopped(), runtime::now_rfc3339())?;
        for _ in 0..100 {
            if Self::node_agents(&res.private)
                .iter()
                .all(|(pid, start)| !proc::alive(*pid, *start))
            {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Self::kill_agents(&res.private);
        Ok(())
    }

    /// Starting it again starts new agents (setup ran when it was created).
    async fn start(&self, res: &ResourceState) -> Result<serde_json::Value, ProviderError> {
        let dir = Self::cluster_dir(&res.private)
            .ok_or_else(|| ProviderError::other("the cluster has no sandbox recorded"))?;
        let Spec::Cluster(c) = res.spec.as_ref() else {
            return Err(ProviderError::other("only clusters start"));
        };
        let _ = std::fs::remove_file(Layout::new(&dir).stopped());
        let agents = self.start_agents(&dir, c.num_nodes).await?;
        let mut private = res.private.clone();
        private["agents"] = json!(agents);
        Ok(private)
    }

    /// Creating a local cluster includes its setup, bounded by `setup_timeout` instead.
    fn create_is_bounded(&self) -> bool {
        false
    }

    /// A shell (or the command) in the head node's workdir, on this machine.
    fn shell(&self, res: &ResourceState, command: &[String]) -> Result<Vec<String>, ProviderError> {
        let dir = Self::cluster_dir(&res.private)
            .ok_or_else(|| ProviderError::other("the cluster has no sandbox recorded"))?;
        let workdir = Layout::new(&dir).workdir(0);
        // The session keeps the cluster from autostopping while it is open.
        let mut v = vec![
            "env".to_string(),
            "-C".into(),
            workdir.display().to_string(),
            format!("SKYFORM_SESSION={}", dir.display()),
        ];
        if command.is_empty() {
            v.push(std::env::var("SHELL").unwrap_or_else(|_| "sh".into()));
        } else {
            v.extend(command.iter().cloned());
        }
        Ok(v)
    }

    fn log_paths(&self, res: &ResourceState, cluster: Option<&ResourceState>) -> Vec<PathBuf> {
        let dir = match res.spec.as_ref() {
            Spec::Job(_) => cluster.and_then(|c| Self::cluster_dir(&c.private)),
            Spec::Cluster(_) => None,
            _ => Self::cluster_dir(&res.private),
        };
        let (Some(dir), Some(job)) = (dir, job_id(&res.private)) else {
            return Vec::new();
        };
        let nodes = match res.spec.as_ref() {
            Spec::Job(j) => j.num_nodes,
            Spec::ManagedJob(m) => m.num_nodes,
            Spec::Service(s) => s.replica_policy.min_replicas.max(1),
            Spec::Cluster(_) | Spec::Controller(_) => 0,
        };
        let layout = Layout::new(dir);
        (0..nodes).map(|r| layout.log(job, r)).collect()
    }
}

/// The status files of many jobs of one cluster (`None` where there is none), read on a few
/// threads: at many thousands of jobs, opening the small files is most of a refresh.
fn read_statuses(layout: &Layout, ids: &[Option<&str>]) -> Vec<Option<runtime::JobStatus>> {
    let read = |id: &Option<&str>| {
        id.and_then(|id| runtime::read_json::<runtime::JobStatus>(&layout.status(id)))
    };
    let threads = std::thread::available_parallelism()
        .map_or(1, std::num::NonZeroUsize::get)
        .min(4);
    if threads < 2 || ids.len() < 256 {
        return ids.iter().map(read).collect();
    }
    std::thread::scope(|s| {
        let parts: Vec<_> = ids
            .chunks(ids.len().div_ceil(threads))
            .map(|part| s.spawn(move || part.iter().map(read).collect::<Vec<_>>()))
            .collect();
        parts
            .into_iter()
            .flat_map(|h| h.join().unwrap_or_else(|e| std::panic::resume_unwind(e)))
            .collect()
    })
}

fn placeholder(spec: &Spec, private: &serde_json::Value) -> ResourceState {
    ResourceState {
        private: private.clone(),
        ..ResourceState::new(
            crate::state::Status::Creating,
            "local",
            std::sync::Arc::new(spec.clone()),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{InstanceKey, JobSpec, Kind};
    use crate::runtime::JobStatus;

    #[tokio::test]
    async fn refreshing_a_clusters_jobs_at_once_answers_as_one_by_one() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().join("cluster");
        let layout = Layout::new(&dir);
        let provider = LocalProvider::new(tmp.path().to_path_buf(), None);
        let cluster = placeholder(
            &Spec::Cluster(Box::default()),
            &json!({ "dir": dir.display().to_string() }),
        );
        let job = |i: usize, private: serde_json::Value| {
            let address =
                Address::new(Kind::Job, "j").with_key(Some(InstanceKey::Key(format!("k{i}"))));
            let spec = Spec::Job(JobSpec {
                cluster: Address::new(Kind::Cluster, "c"),
                num_nodes: 1,
                resources: Default::default(),
                run: "true".into(),
                envs: BTreeMap::new(),
                secrets: BTreeMap::new(),
            });
            (address, placeholder(&spec, &private))
        };
        // Enough jobs to be read on several threads; finished, failed, queued, missing, and
        // one without a job id.
        let mut jobs = Vec::new();
        for i in 0..1500 {
            let id = format!("job-{i}");
            match i % 5 {
                0 | 1 => {
                    let status = JobStatus {
                        state: if i % 5 == 0 {
                            JobState::Succeeded
                        } else {
                            JobState::Failed
                        },
                        exit_code: Some((i % 5) as i32),
                        reason: (i % 5 == 1).then(|| "oom".to_string()),
                        nodes: vec![0],
                        started: None,
                        ended: None,
                        devices: Vec::new(),
                    };
                    runtime::write_json(&layout.status(&id), &status).expect("status");
                }
                // Submitted, not started: only its record in the queue.
                2 => {
                    runtime::write_json(&layout.queued(&id), &json!({ "id": id })).expect("queued")
                }
                _ => {}
            }
            let private = if i == 7 {
                json!({})
            } else {
                json!({ "job_id": id })
            };
            jobs.push(job(i, private));
        }
        let refs: Vec<(&Address, &ResourceState)> = jobs.iter().map(|(a, r)| (a, r)).collect();
        let at_once = provider.refresh_jobs(&refs, &cluster).await;
        assert_eq!(at_once.len(), jobs.len());
        for ((address, res), got) in jobs.iter().zip(at_once) {
            let one = provider.refresh(address, res, Some(&cluster)).await;
            assert_eq!(
                format!("{got:?}"),
                format!("{one:?}"),
                "{address}: at once and one by one differ"
            );
        }
    }
}
