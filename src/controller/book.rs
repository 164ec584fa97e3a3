//! The controller's book: the managed jobs it runs (each launch, where, what happened) and
//! the lease that makes one controller act per state. It is a side document next to the
//! state (`state.json.controller`, `s3://…/state.json.controller`), written only with
//! compare-and-swap, so the controller keeps its record while an apply holds the state lock,
//! and two writers never lose each other's update.

use super::policy::Phase;
use crate::model::{Address, Spec};
use crate::optimizer::{Candidate, Micros};
use crate::state::{StateError, StateStore};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The side document's name in the store.
pub const SIDE: &str = "controller";

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Book {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease: Option<Lease>,
    /// Managed jobs by task id (a service's replicas among them, as `SERVICE.rN`).
    #[serde(default)]
    pub runs: BTreeMap<String, Run>,
    /// Services by service id.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub services: BTreeMap<String, super::service::ServiceRecord>,
}

/// Who runs the controller of this state, until when.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Lease {
    pub id: String,
    pub who: String,
    pub host: String,
    pub pid: u32,
    /// When it started (RFC 3339).
    pub since: String,
    /// Unix milliseconds of the last renewal; the lease lapses `ttl_ms` later.
    pub renewed_ms: u64,
    pub ttl_ms: u64,
}

impl Lease {
    /// Whether the lease still holds: renewed within its time, by a process that still
    /// runs (a holder on this machine that is gone — killed — holds nothing).
    pub fn is_live(&self, now_ms: u64) -> bool {
        let gone_here = self.host == host_name() && !crate::runtime::proc::alive(self.pid, None);
        now_ms < self.renewed_ms.saturating_add(self.ttl_ms) && !gone_here
    }

    /// `pid 123 on host (since …)`, for messages.
    pub fn describe(&self) -> String {
        format!(
            "{} (process {} on {}, since {})",
            self.who, self.pid, self.host, self.since
        )
    }
}

/// One managed job as the controller runs it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Run {
    pub address: Address,
    pub phase: Phase,
    /// Placements launched so far (the first launch is attempt 1).
    #[serde(default)]
    pub attempt: u32,
    /// Restarts used up by failures (`max_restarts_on_errors`).
    #[serde(default)]
    pub restarts: u32,
    /// Where it runs now, or is being launched.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current: Option<Placement>,
    /// Earlier placements whose removal is not confirmed yet.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub leftovers: Vec<Placement>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub history: Vec<Entry>,
    /// The region the last placement was lost in (recovery's strategy orders by it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lost_region: Option<String>,
    /// When the provider first said the placement is lost (unix ms).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub suspect_since: Option<u64>,
    /// No placement had room: the next launch is not before this (unix ms).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_at: Option<u64>,
    #[serde(default)]
    pub retry_round: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Apply asked for the job to go (destroyed, or replaced by a new version).
    #[serde(default)]
    pub cancel: bool,
    /// Why removing an earlier placement failed last (it is tried again each pass).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remove_error: Option<String>,
}

impl Run {
    pub fn new(address: Address) -> Run {
        Run {
            address,
            phase: Phase::Pending,
            attempt: 0,
            restarts: 0,
            current: None,
            leftovers: Vec::new(),
            history: Vec::new(),
            lost_region: None,
            suspect_since: None,
            retry_at: None,
            retry_round: 0,
            exit_code: None,
            reason: None,
            cancel: false,
            remove_error: None,
        }
    }

    /// Whether the controller still has work on it: launching, watching, or removing.
    pub fn is_active(&self) -> bool {
        !self.phase.is_final() || self.current.is_some() || !self.leftovers.is_empty()
    }

    /// The attributes a managed job shows in state and `status`.
    pub fn computed(&self) -> BTreeMap<String, serde_json::Value> {
        use serde_json::json;
        // A placement the provider says is lost is not shown running while the controller
        // makes sure (it recovers it, or finds it healthy again).
        let shown = match self.phase {
            Phase::Starting | Phase::Running if self.suspect_since.is_some() => Phase::Recovering,
            p => p,
        };
        let mut m = BTreeMap::from([
            ("status".to_string(), json!(shown.as_str())),
            ("attempt".to_string(), json!(self.attempt)),
            (
                "exit_code".to_string(),
                self.exit_code.map_or(serde_json::Value::Null, |c| json!(c)),
            ),
        ]);
        if let Some(p) = &self.current {
            m.insert("placement".into(), json!(p.candidate.offering.infra()));
            m.insert("hourly".into(), json!(p.candidate.hourly));
        }
        if let Some(r) = &self.reason {
            m.insert("reason".into(), json!(r));
        }
        if !self.history.is_empty() {
            m.insert("history".into(), json!(self.history));
        }
        m
    }
}

/// One placement of a managed job: what its backend needs to find, watch and remove it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Placement {
    pub provider: String,
    pub private: serde_json::Value,
    pub candidate: Candidate,
    /// The job as launched, without its `run`, `setup`, `envs` and `secrets` (the book is
    /// not encrypted; what removes a placement needs none of them).
    pub spec: Spec,
    /// For backends that run a managed job as a cluster and a job on it: the cluster (then
    /// `spec` and `private` above are the job's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<Part>,
    /// Whether its create call answered; a placement recorded before the call and not
    /// confirmed after (the controller was killed in between) is looked at before use.
    #[serde(default)]
    pub launched: bool,
    pub since_ms: u64,
}

impl Placement {
    /// A placement on `c` about to be made, with the identifiers chosen for it (its job's,
    /// and its cluster's when composed), recorded before its backend is called.
    pub fn intent(
        c: &Candidate,
        spec: &Spec,
        private: serde_json::Value,
        cluster: Option<(&Spec, serde_json::Value)>,
    ) -> Placement {
        Placement {
            provider: c.offering.cloud.clone(),
            private,
            candidate: c.clone(),
            spec: redacted(spec),
            cluster: cluster.map(|(spec, private)| Part {
                spec: redacted(spec),
                private,
                computed: BTreeMap::new(),
            }),
            launched: false,
            since_ms: now_ms(),
        }
    }
}

/// The cluster of a composed placement.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Part {
    pub spec: Spec,
    pub private: serde_json::Value,
    /// What its create answered (addresses): the job on it is reached through them.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub computed: BTreeMap<String, serde_json::Value>,
}

/// One event in a managed job's life: launched, lost, restarted, finished.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    /// RFC 3339.
    pub at: String,
    pub event: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<String>,
    /// The hourly cost of the placement it went to, in micro-dollars.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hourly: Option<Micros>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// A spec without what runs on the machines: what the book keeps of a placement.
pub fn redacted(spec: &Spec) -> Spec {
    let mut s = spec.clone();
    match &mut s {
        Spec::ManagedJob(m) => {
            m.run = String::new();
            m.setup = None;
            m.envs.clear();
            m.secrets.clear();
        }
        Spec::Cluster(c) => {
            c.setup = None;
            c.envs.clear();
        }
        Spec::Job(j) => {
            j.run = String::new();
            j.envs.clear();
            j.secrets.clear();
        }
        Spec::Controller(c) => c.secrets.clear(),
        Spec::Service(_) => {}
    }
    s
}

/// This machine's name, as leases record it.
pub fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "localhost".into())
}

pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

pub fn rfc3339_now() -> String {
    humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string()
}

/// Reads the book and its version (None: no book yet).
pub async fn read(store: &dyn StateStore) -> Result<(Book, Option<String>), StateError> {
    match store.read_side(SIDE).await? {
        None => Ok((Book::default(), None)),
        Some((bytes, version)) => {
            let book = serde_json::from_slice(&bytes).map_err(|e| {
                StateError::Corrupt(format!(
                    "the controller's book next to {}: {e}",
                    store.describe()
                ))
            })?;
            Ok((book, Some(version)))
        }
    }
}

/// Writes the book over `version` (compare-and-swap); answers the new version.
pub async fn write(
    store: &dyn StateStore,
    book: &Book,
    version: Option<&str>,
) -> Result<String, StateError> {
    let bytes = serde_json::to_vec_pretty(book).map_err(|e| StateError::Corrupt(e.to_string()))?;
    store.write_side(SIDE, &bytes, version).await
}

/// Changes the book with `f` and writes it, reading it again and repeating `f` when another
/// writer got there first (a few times). Answers `f`'s last answer.
pub async fn update<T>(
    store: &dyn StateStore,
    mut f: impl FnMut(&mut Book) -> T,
) -> Result<T, StateError> {
    let mut tries = 0;
    loop {
        let (mut book, version) = read(store).await?;
        let answer = f(&mut book);
        match write(store, &book, version.as_deref()).await {
            Ok(_) => return Ok(answer),
            Err(StateError::Conflict { .. }) if tries < 20 => {
                tries += 1;
                tokio::time::sleep(std::time::Duration::from_millis(20 * tries)).await;
            }
            Err(e) => return Err(e),
        }
    }
}
