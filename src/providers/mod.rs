//! Backends behind one trait. Each backend is one module; all pass one conformance suite.

pub mod aws;
pub mod conformance;
pub mod gcp;
pub mod jobs;
pub mod kubernetes;
pub mod local;
pub mod machines;
pub mod registry;
mod shell;
pub mod ssh;

pub use registry::{Places, Registry};
pub use shell::SshEntry;

use crate::model::{Address, Spec};
use crate::optimizer::{Candidate, Offering};
use crate::state::ResourceState;
use std::collections::BTreeMap;
use std::path::PathBuf;

/// How an error should steer the apply: the failover engine decides from the kind alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// No capacity here: block the zone and try the next candidate.
    Capacity,
    /// Out of quota: block the region.
    Quota,
    /// Credentials or configuration: block the whole cloud.
    Config,
    /// Worth retrying (throttled, 5xx, a dropped connection); after a few tries, the region
    /// is blocked.
    Transient,
    /// No answer within the attempt's time: what it made is removed and the region blocked.
    Timeout,
    NotFound,
    /// Anything else: the resource fails.
    Other,
}

#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct ProviderError {
    pub kind: ErrorKind,
    pub message: String,
}

impl ProviderError {
    pub fn other(message: impl Into<String>) -> ProviderError {
        ProviderError {
            kind: ErrorKind::Other,
            message: message.into(),
        }
    }
}

/// The answer of `work`, or a timeout (which fails over like an attempt that found no
/// capacity) once `limit` passed without it.
pub async fn within_attempt<T>(
    limit: std::time::Duration,
    work: impl std::future::Future<Output = Result<T, ProviderError>>,
) -> Result<T, ProviderError> {
    tokio::time::timeout(limit, work).await.unwrap_or_else(|_| {
        Err(ProviderError {
            kind: ErrorKind::Timeout,
            message: format!(
                "no answer within {} (the attempt timeout)",
                humantime::format_duration(limit)
            ),
        })
    })
}

impl From<crate::runtime::link::CallError> for ProviderError {
    fn from(e: crate::runtime::link::CallError) -> Self {
        use crate::runtime::link::CallError;
        let kind = match e {
            CallError::NoCluster(_) => ErrorKind::NotFound,
            CallError::Stopped => ErrorKind::Config,
            CallError::Io(_) => ErrorKind::Other,
        };
        ProviderError {
            kind,
            message: e.to_string(),
        }
    }
}

impl From<std::io::Error> for ProviderError {
    fn from(e: std::io::Error) -> Self {
        ProviderError::other(e.to_string())
    }
}

/// What refresh found in the world.
#[derive(Debug, Clone, PartialEq)]
pub enum Observed {
    /// Exists and is healthy; these are its current computed attributes.
    Up(BTreeMap<String, serde_json::Value>),
    /// Exists but broken (a node died): the plan replaces it.
    Degraded {
        reason: String,
        computed: BTreeMap<String, serde_json::Value>,
    },
    /// Gone (removed outside skyform): the plan creates it again.
    Gone { reason: String },
    /// A creation that was interrupted (skyform died between the call and its state write)
    /// did finish: the resource is taken into state as it is, with what the provider found.
    Adopted(Created),
}

/// Everything a provider needs to create or update one resource.
#[derive(Debug, Clone)]
pub struct Request<'a> {
    pub address: &'a Address,
    pub spec: &'a Spec,
    /// Provider-private identifiers chosen before the call (recorded in state first), so a
    /// retried or interrupted create is found again, never duplicated.
    pub private: &'a serde_json::Value,
    pub placement: Option<&'a Candidate>,
    /// For jobs: the cluster's state.
    pub cluster: Option<&'a ResourceState>,
    /// For jobs: states of the jobs that must succeed first.
    pub after: Vec<(&'a Address, &'a ResourceState)>,
    /// The configuration directory (workdirs are relative to it).
    pub root: PathBuf,
    /// How long getting the machines may take (`-attempt-timeout`). The engine bounds a
    /// whole `create` by it when `create_is_bounded`; a backend whose create also runs setup
    /// (which may rightly take long) bounds only its part that waits for capacity.
    pub capacity_timeout: std::time::Duration,
    /// Where a long call says what it waits for (apply shows it under the resource).
    pub progress: Progress,
}

/// A resource and what its call waits for now.
pub type ProgressLine = (Address, String);

/// A line of progress from inside a provider call (`waiting for 10.0.0.5 to accept ssh`),
/// shown by apply under the resource's address; a call made outside apply says it to no one.
#[derive(Debug, Clone, Default)]
pub struct Progress(
    Option<tokio::sync::mpsc::UnboundedSender<ProgressLine>>,
    Option<Address>,
);

impl Progress {
    /// Progress of `address`, sent to `to`.
    pub fn to(to: tokio::sync::mpsc::UnboundedSender<ProgressLine>, address: Address) -> Progress {
        Progress(Some(to), Some(address))
    }

    pub fn say(&self, what: impl Into<String>) {
        if let (Some(to), Some(a)) = (&self.0, &self.1) {
            let _ = to.send((a.clone(), what.into()));
        }
    }
}

/// What a backend offers, and which of its parts could not be asked (the answer of
/// [`Provider::survey`]).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Survey {
    pub offerings: Vec<Offering>,
    /// One line per part that offers nothing now, saying why.
    pub unavailable: Vec<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Created {
    pub computed: BTreeMap<String, serde_json::Value>,
    pub private: serde_json::Value,
}

#[async_trait::async_trait]
pub trait Provider: Send + Sync + std::fmt::Debug {
    fn name(&self) -> &'static str;
    /// What this backend can offer the optimizer right now: the plain list (`skyform
    /// offers` lists it).
    async fn offerings(&self) -> Result<Vec<Offering>, ProviderError>;
    /// The offerings together with the parts of the backend that offer nothing now and why
    /// (a pool's host or a Kubernetes context that does not answer), for the plan to warn
    /// about. Backends made of several independent parts override it.
    async fn survey(&self) -> Result<Survey, ProviderError> {
        Ok(Survey {
            offerings: self.offerings().await?,
            unavailable: Vec::new(),
        })
    }
    /// Fresh identifiers for a new resource, recorded in state before `create` runs.
    /// `lineage` is the state's, for tagging what the provider makes.
    fn new_private(&self, address: &Address, spec: &Spec, lineage: &str) -> serde_json::Value;
    async fn refresh(
        &self,
        address: &Address,
        res: &ResourceState,
        cluster: Option<&ResourceState>,
    ) -> Result<Observed, ProviderError>;
    /// Refreshes several jobs of one cluster: one result per job, in order. Backends that can
    /// read a cluster's jobs in one pass override it; by default, the jobs one by one (a few
    /// at a time).
    async fn refresh_jobs(
        &self,
        jobs: &[(&Address, &ResourceState)],
        cluster: &ResourceState,
    ) -> Vec<Result<Observed, ProviderError>> {
        let mut done = Vec::with_capacity(jobs.len());
        for some in jobs.chunks(10) {
            let calls: Vec<_> = some
                .iter()
                .map(|(address, res)| self.refresh(address, res, Some(cluster)))
                .collect();
            done.extend(futures::future::join_all(calls).await);
        }
        done
    }
    async fn create(&self, req: Request<'_>) -> Result<Created, ProviderError>;
    async fn update(&self, req: Request<'_>) -> Result<Created, ProviderError>;
    async fn delete(
        &self,
        address: &Address,
        res: &ResourceState,
        cluster: Option<&ResourceState>,
    ) -> Result<(), ProviderError>;
    /// Deletes (cancels) several jobs of one cluster: one result per job, in order. Backends
    /// that can cancel a batch at once override it; by default, the jobs one by one (a few
    /// at a time).
    async fn delete_jobs(
        &self,
        jobs: &[(&Address, &ResourceState)],
        cluster: &ResourceState,
    ) -> Vec<Result<(), ProviderError>> {
        let mut done = Vec::with_capacity(jobs.len());
        for some in jobs.chunks(10) {
            let calls: Vec<_> = some
                .iter()
                .map(|(address, res)| self.delete(address, res, Some(cluster)))
                .collect();
            done.extend(futures::future::join_all(calls).await);
        }
        done
    }
    /// Whether `create`, `refresh` and `delete` take a managed job as one unit (machines of
    /// its own running its job). A backend that answers false gets a managed job from the
    /// controller as a cluster of its own and a job on it, which the controller composes.
    fn runs_managed_jobs(&self) -> bool {
        true
    }
    /// Whether apply bounds each create by the attempt timeout. A backend whose create also
    /// runs the cluster's `setup` (which may rightly take long, and has its own timeout) opts
    /// out.
    fn create_is_bounded(&self) -> bool {
        true
    }
    /// What `init` says about this backend: whether it can be used from here (credentials
    /// found, say), without creating anything.
    async fn check(&self) -> Result<String, ProviderError> {
        Ok("ready".into())
    }
    /// Finds an existing cluster by `id` (the backend's part of an `import` block's id) and
    /// answers what state would record for it; changes nothing in the world.
    async fn import(&self, _address: &Address, id: &str) -> Result<Created, ProviderError> {
        Err(ProviderError {
            kind: ErrorKind::Config,
            message: format!("the {} backend cannot import clusters ({id})", self.name()),
        })
    }
    /// Clusters this backend holds that carry the state's `lineage` (made by an apply of
    /// this state) and that none of `held` (the state's resources on this backend) is, each
    /// with the address it was made for and the `import` id that finds it. A plan adopts
    /// those whose address state lacks, through that import.
    async fn find_own(
        &self,
        _lineage: &str,
        _held: &[&ResourceState],
    ) -> Result<Vec<(Address, String)>, ProviderError> {
        Ok(Vec::new())
    }
    /// Gives back what an attempt of this state's `lineage` holds that none of `held`
    /// records and that never became a cluster (a run killed between taking a host and
    /// recording it). Called only by a run that holds the state's lock, before the backend
    /// is surveyed; answers one line per thing released, for the user.
    async fn release_unfinished(
        &self,
        _lineage: &str,
        _held: &[&ResourceState],
    ) -> Result<Vec<String>, ProviderError> {
        Ok(Vec::new())
    }
    /// Stops a cluster's machines, keeping their disks (for autostop).
    async fn stop(&self, _res: &ResourceState) -> Result<(), ProviderError> {
        Err(ProviderError::other(format!(
            "the {} backend cannot stop a cluster",
            self.name()
        )))
    }
    /// Starts a stopped cluster again; answers its private data from then on.
    async fn start(&self, _res: &ResourceState) -> Result<serde_json::Value, ProviderError> {
        Err(ProviderError::other(format!(
            "the {} backend cannot start a cluster",
            self.name()
        )))
    }
    /// How to reach a cluster's head node with ssh, for backends whose machines have one.
    fn ssh_entry(&self, _res: &ResourceState) -> Result<SshEntry, ProviderError> {
        Err(ProviderError::other(format!(
            "the {} backend's machines are not reached with ssh",
            self.name()
        )))
    }
    /// The program and arguments that open a shell on a cluster's head node, or run
    /// `command` there (`skyform ssh`).
    fn shell(&self, res: &ResourceState, command: &[String]) -> Result<Vec<String>, ProviderError> {
        Ok(self.ssh_entry(res)?.argv(command))
    }
    /// Log files of a job (one per rank) on this machine.
    fn log_paths(&self, res: &ResourceState, cluster: Option<&ResourceState>) -> Vec<PathBuf>;
    /// What each rank of a job logged from `offsets[rank]` on (0 where missing), a chunk at
    /// a time, for `skyform logs`. No ranks: the resource has no logs.
    async fn read_logs(
        &self,
        res: &ResourceState,
        cluster: Option<&ResourceState>,
        offsets: &[u64],
    ) -> Result<Vec<Vec<u8>>, ProviderError> {
        Ok(read_log_files(&self.log_paths(res, cluster), offsets)?)
    }
}

/// What each of `paths` (one per rank) holds from `offsets[rank]` on, up to 1 MiB; a missing
/// file reads as empty.
pub fn read_log_files(paths: &[PathBuf], offsets: &[u64]) -> std::io::Result<Vec<Vec<u8>>> {
    use std::io::{Read, Seek};
    let mut out = Vec::new();
    for (rank, path) in paths.iter().enumerate() {
        let mut chunk = Vec::new();
        if let Ok(mut f) = std::fs::File::open(path) {
            f.seek(std::io::SeekFrom::Start(
                offsets.get(rank).copied().unwrap_or(0),
            ))?;
            f.take(1 << 20).read_to_end(&mut chunk)?;
        }
        out.push(chunk);
    }
    Ok(out)
}
