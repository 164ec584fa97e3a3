//! Managed jobs as apply sees them: a backend named `managed` whose resources the
//! controller runs. Creating one records it for the controller (and starts the controller
//! when none runs); refreshing reads the controller's book; deleting asks the controller to
//! cancel it and waits until its placements are gone. Apply never launches or removes a
//! managed job's machines itself, so the controller is the one actor on them.

use super::book::{self, Run};
use super::placement::placed;
use super::policy::Phase;
use super::reconcile::task_id;
use super::service::ServiceRecord;
use super::{relay, serving, spawn};
use crate::model::{Address, Spec};
use crate::optimizer::Offering;
use crate::providers::{Created, ErrorKind, Observed, Provider, ProviderError, Registry, Request};
use crate::state::{ResourceState, StateStore};
use serde_json::json;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The backend name managed jobs are recorded under.
pub const NAME: &str = "managed";

/// How long deleting a managed job waits for the controller to remove its placements.
const CANCEL_WAIT: Duration = Duration::from_secs(30 * 60);

pub struct ManagedProvider {
    store: Result<Arc<dyn StateStore>, String>,
    dir: PathBuf,
    workspace: String,
    exe: Option<PathBuf>,
    /// The `-var` values a controller it starts gets (see `spawn::passed_vars`).
    vars: Vec<(String, String)>,
    /// The backends placements run on (for logs).
    inner: Arc<Registry>,
    /// The book as last read, for a moment: refreshing many managed jobs reads it once.
    cache: tokio::sync::Mutex<Option<(Instant, book::Book)>>,
    /// The configuration declares where the controller runs (a `controller` block): apply
    /// runs it there, never in the background here.
    declared_elsewhere: bool,
}

impl std::fmt::Debug for ManagedProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ManagedProvider")
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

impl ManagedProvider {
    pub fn new(
        store: Result<Arc<dyn StateStore>, String>,
        dir: PathBuf,
        workspace: String,
        exe: Option<PathBuf>,
        inner: Arc<Registry>,
        declared_elsewhere: bool,
    ) -> ManagedProvider {
        ManagedProvider {
            store,
            dir,
            workspace,
            exe,
            vars: Vec::new(),
            inner,
            cache: tokio::sync::Mutex::new(None),
            declared_elsewhere,
        }
    }

    /// With the variables a controller it starts is given.
    #[must_use]
    pub fn with_vars(mut self, vars: Vec<(String, String)>) -> ManagedProvider {
        self.vars = vars;
        self
    }

    fn store(&self) -> Result<&dyn StateStore, ProviderError> {
        self.store.as_deref().map_err(|e| ProviderError {
            kind: ErrorKind::Config,
            message: format!("the controller's book cannot be opened: {e}"),
        })
    }

    async fn book(&self, fresh: bool) -> Result<book::Book, ProviderError> {
        let mut cache = self.cache.lock().await;
        if !fresh
            && let Some((at, b)) = &*cache
            && at.elapsed() < Duration::from_millis(500)
        {
            return Ok(b.clone());
        }
        let (b, _) = book::read(self.store()?)
            .await
            .map_err(|e| ProviderError::other(e.to_string()))?;
        *cache = Some((Instant::now(), b.clone()));
        Ok(b)
    }

    /// Starts the controller in the background unless one holds the lease, or it runs
    /// where the configuration declares it.
    async fn ensure_controller(&self) -> Result<(), ProviderError> {
        if self.declared_elsewhere {
            return Ok(());
        }
        spawn::ensure_running(
            self.store()?,
            &self.dir,
            &self.workspace,
            self.exe.as_deref(),
            &self.vars,
        )
        .await
        .map(|_| ())
        .map_err(|e| ProviderError::other(e.to_string()))
    }

    fn relay_dir(&self, task: &str) -> PathBuf {
        relay::dir(&self.dir, &self.workspace, task)
    }
}

fn pending() -> std::collections::BTreeMap<String, serde_json::Value> {
    std::collections::BTreeMap::from([
        ("status".to_string(), json!(Phase::Pending.as_str())),
        ("attempt".to_string(), json!(0)),
        ("exit_code".to_string(), serde_json::Value::Null),
    ])
}

/// What refresh says of a service: the book's record, or (not taken up yet) its endpoint.
fn service_computed(
    book: &book::Book,
    id: &str,
    res: &ResourceState,
) -> BTreeMap<String, serde_json::Value> {
    match book.services.get(id) {
        Some(rec)
            if !book
                .lease
                .as_ref()
                .is_some_and(|l| l.is_live(book::now_ms())) =>
        {
            // Its balancer lives in the controller: with none running, nothing answers at
            // the endpoint, whatever the replicas do.
            let mut c = serving::computed(rec, id, &book.runs);
            c.insert("status".into(), json!("CONTROLLER_FAILED"));
            c.insert(
                "reason".into(),
                json!("no controller runs, so its endpoint does not answer; `skyform controller start` starts one"),
            );
            c
        }
        Some(rec) => serving::computed(rec, id, &book.runs),
        None => {
            let mut c = res.computed.to_map();
            c.insert("status".into(), json!("REPLICA_INIT"));
            c
        }
    }
}

impl ManagedProvider {
    /// A service's logs: one stream per replica that runs now, in replica order.
    async fn service_logs(&self, id: &str, offsets: &[u64]) -> Result<Vec<Vec<u8>>, ProviderError> {
        let book = self.book(true).await?;
        let Some(rec) = book.services.get(id) else {
            return Ok(Vec::new());
        };
        let mut out = Vec::new();
        for rid in rec.replicas.keys() {
            let at = offsets.get(out.len()).copied().unwrap_or(0);
            let placement = book
                .runs
                .get(&super::service::replica_task(id, *rid))
                .and_then(|r| r.current.as_ref())
                .and_then(|p| self.inner.get(&p.provider).map(|provider| (p, provider)));
            let chunk = match placement {
                Some((p, provider)) => {
                    let (job, cluster) = placed(p);
                    provider
                        .read_logs(&job, cluster.as_ref(), &[at])
                        .await
                        .ok()
                        .and_then(|c| c.into_iter().next())
                        .unwrap_or_default()
                }
                None => Vec::new(),
            };
            out.push(chunk);
        }
        Ok(out)
    }

    /// Asks the controller to drain and remove a service, and waits until it has.
    async fn delete_service(&self, address: &Address, id: &str) -> Result<(), ProviderError> {
        let store = self.store()?;
        let port = 0;
        let live = book::update(store, |b| match b.services.get_mut(id) {
            Some(rec) => {
                rec.cancel = true;
                !rec.is_gone()
            }
            None => {
                // Never taken up: on record as cancelled, so a controller that reads the
                // state before apply writes it does not start it.
                let mut rec = ServiceRecord::new(address.clone(), port);
                rec.cancel = true;
                b.services.insert(id.to_string(), rec);
                false
            }
        })
        .await
        .map_err(|e| ProviderError::other(e.to_string()))?;
        if !live {
            return Ok(());
        }
        self.ensure_controller().await?;
        let began = Instant::now();
        loop {
            let book = self.book(true).await?;
            if book.services.get(id).is_none_or(ServiceRecord::is_gone) {
                return Ok(());
            }
            still_waiting(&book, began, &format!("remove {address}'s replicas"))?;
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}

/// Whether waiting for the controller to `what` may go on: not when no controller has held
/// the lease for 15 s (none started, or it stopped), nor past the longest wait.
fn still_waiting(book: &book::Book, began: Instant, what: &str) -> Result<(), ProviderError> {
    if began.elapsed() > Duration::from_secs(15)
        && !book
            .lease
            .as_ref()
            .is_some_and(|l| l.is_live(book::now_ms()))
    {
        return Err(ProviderError::other(format!(
            "no controller runs to {what}: it did not start, or stopped; see .skyform/controller.log"
        )));
    }
    if began.elapsed() > CANCEL_WAIT {
        return Err(ProviderError {
            kind: ErrorKind::Timeout,
            message: format!(
                "the controller did not {what} within {}; see .skyform/controller.log",
                humantime::format_duration(CANCEL_WAIT)
            ),
        });
    }
    Ok(())
}

fn no_task() -> ProviderError {
    ProviderError::other("the managed job has no task id in state")
}

#[async_trait::async_trait]
impl Provider for ManagedProvider {
    fn name(&self) -> &'static str {
        NAME
    }

    async fn offerings(&self) -> Result<Vec<Offering>, ProviderError> {
        Ok(Vec::new())
    }

    /// The task id: one identity across every placement (`SKYFORM_TASK_ID`); `dir` and
    /// `job_id` say where its final status is kept for the jobs that depend on it.
    fn new_private(&self, _address: &Address, spec: &Spec, _lineage: &str) -> serde_json::Value {
        let id = uuid::Uuid::new_v4().simple().to_string();
        if let Spec::Service(s) = spec {
            // The id of its record in the book, and where its endpoint listens.
            return json!({
                "service_id": format!("svc-{}", &id[..12]),
                "port": s.endpoint_port(),
            });
        }
        let task = format!("task-{}", &id[..12]);
        json!({
            "task_id": task,
            "job_id": task,
            "dir": self.relay_dir(&task).display().to_string(),
        })
    }

    async fn refresh(
        &self,
        _address: &Address,
        res: &ResourceState,
        _cluster: Option<&ResourceState>,
    ) -> Result<Observed, ProviderError> {
        if let Some(id) = serving::service_id(res) {
            let book = self.book(false).await?;
            return Ok(Observed::Up(service_computed(&book, id, res)));
        }
        let task = task_id(res).ok_or_else(no_task)?;
        let book = self.book(false).await?;
        Ok(Observed::Up(
            book.runs.get(task).map_or_else(pending, Run::computed),
        ))
    }

    async fn create(&self, req: Request<'_>) -> Result<Created, ProviderError> {
        if let Spec::Service(s) = req.spec {
            self.ensure_controller().await?;
            return Ok(Created {
                computed: BTreeMap::from([
                    ("status".to_string(), json!("REPLICA_INIT")),
                    (
                        "endpoint".to_string(),
                        json!(format!("http://127.0.0.1:{}", s.endpoint_port())),
                    ),
                ]),
                private: req.private.clone(),
            });
        }
        if !matches!(req.spec, Spec::ManagedJob(_)) {
            return Err(ProviderError::other(
                "only managed jobs and services are run by the controller",
            ));
        }
        self.ensure_controller().await?;
        Ok(Created {
            computed: pending(),
            private: req.private.clone(),
        })
    }

    async fn update(&self, req: Request<'_>) -> Result<Created, ProviderError> {
        if let Some(id) = req.private.get("service_id").and_then(|v| v.as_str()) {
            // A new version or policy: the controller reads it from state at its next pass.
            let book = self.book(true).await?;
            return Ok(Created {
                computed: book
                    .services
                    .get(id)
                    .map(|rec| serving::computed(rec, id, &book.runs))
                    .unwrap_or_default(),
                private: req.private.clone(),
            });
        }
        // `recovery` changed: the controller reads it from state at the next decision.
        let task = req
            .private
            .get("task_id")
            .and_then(|t| t.as_str())
            .ok_or_else(no_task)?;
        let book = self.book(true).await?;
        Ok(Created {
            computed: book.runs.get(task).map_or_else(pending, Run::computed),
            private: req.private.clone(),
        })
    }

    async fn delete(
        &self,
        address: &Address,
        res: &ResourceState,
        _cluster: Option<&ResourceState>,
    ) -> Result<(), ProviderError> {
        if let Some(id) = serving::service_id(res) {
            return self.delete_service(address, id).await;
        }
        let Some(task) = task_id(res).map(str::to_string) else {
            return Ok(());
        };
        let store = self.store()?;
        let active = book::update(store, |b| match b.runs.get_mut(&task) {
            Some(run) if run.is_active() => {
                run.cancel = true;
                true
            }
            Some(_) => false,
            None => {
                // Never taken up: on record as cancelled, so a controller that reads the
                // state before apply writes it does not launch it.
                let mut run = Run::new(address.clone());
                run.phase = Phase::Cancelled;
                b.runs.insert(task.clone(), run);
                false
            }
        })
        .await
        .map_err(|e| ProviderError::other(e.to_string()))?;
        if active {
            self.ensure_controller().await?;
            let began = Instant::now();
            loop {
                let book = self.book(true).await?;
                let Some(run) = book.runs.get(&task).filter(|r| r.is_active()) else {
                    break;
                };
                if run.phase == Phase::Cancelling
                    && let Some(why) = &run.remove_error
                {
                    // Its machines do not answer: the controller goes on trying, and the
                    // managed job stays in state until they are gone.
                    return Err(ProviderError::other(format!(
                        "the controller {why}; it keeps trying, and destroying again succeeds once they are gone"
                    )));
                }
                still_waiting(&book, began, &format!("cancel {address}"))?;
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        }
        let _ = std::fs::remove_dir_all(self.relay_dir(&task));
        Ok(())
    }

    fn log_paths(&self, res: &ResourceState, _cluster: Option<&ResourceState>) -> Vec<PathBuf> {
        task_id(res).map_or_else(Vec::new, |t| relay::log_paths(&self.relay_dir(t)))
    }

    /// A managed job's logs across its placements: what the controller kept of the earlier
    /// ones (next to the state), then the current one's. Offsets run on across the two, so
    /// `logs -f` goes on through a recovery.
    async fn read_logs(
        &self,
        res: &ResourceState,
        _cluster: Option<&ResourceState>,
        offsets: &[u64],
    ) -> Result<Vec<Vec<u8>>, ProviderError> {
        if let Some(id) = serving::service_id(res) {
            return self.service_logs(id, offsets).await;
        }
        let task = task_id(res).ok_or_else(no_task)?;
        let dir = self.relay_dir(task);
        let mut kept: Vec<Vec<u8>> = relay::log_paths(&dir)
            .iter()
            .map(std::fs::read)
            .collect::<Result<_, _>>()?;
        if kept.is_empty() {
            // The controller runs elsewhere: what it kept is beside the state.
            kept = relay::stored_logs(self.store()?, task)
                .await
                .map_err(ProviderError::other)?;
        }
        let from = |rank: usize, offset: u64| -> Vec<u8> {
            kept.get(rank)
                .map(|b| b.get(offset as usize..).unwrap_or_default().to_vec())
                .unwrap_or_default()
        };
        let at = |rank: usize| offsets.get(rank).copied().unwrap_or(0);
        let old: Vec<Vec<u8>> = (0..kept.len()).map(|rank| from(rank, at(rank))).collect();
        let book = self.book(true).await?;
        let current = book
            .runs
            .get(task)
            .and_then(|r| r.current.as_ref())
            .and_then(|p| self.inner.get(&p.provider).map(|provider| (p, provider)));
        let Some((p, provider)) = current else {
            return Ok(old);
        };
        // Per rank: first the kept part, then the live placement's from where it ends.
        let sizes: Vec<u64> = kept.iter().map(|b| b.len() as u64).collect();
        let live_offsets: Vec<u64> = (0..offsets.len().max(sizes.len()))
            .map(|rank| at(rank).saturating_sub(sizes.get(rank).copied().unwrap_or(0)))
            .collect();
        let (job, cluster) = placed(p);
        let live = provider
            .read_logs(&job, cluster.as_ref(), &live_offsets)
            .await?;
        let ranks = live.len().max(old.len());
        Ok((0..ranks)
            .map(|rank| {
                let behind = at(rank) < sizes.get(rank).copied().unwrap_or(0);
                match (behind, old.get(rank), live.get(rank)) {
                    // Still in the kept part: that first (the live part follows next call).
                    (true, Some(o), _) => o.clone(),
                    (_, _, Some(l)) => l.clone(),
                    _ => Vec::new(),
                }
            })
            .collect())
    }
}
