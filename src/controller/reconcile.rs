//! The controller's loop: each tick it reads the state (what apply declared) and its book
//! (what it runs), launches managed jobs that have no placement, watches those that have
//! one, recovers the lost ones and removes what finished, writing its intent to the book
//! before every call that makes something and its result after. The decisions are the pure
//! functions of [`super::policy`]; this file does the IO around them.
//!
//! Each job's part of a pass is a step, and the steps run concurrently (a bounded number
//! of backend calls at a time) while the loop alone keeps the book: a step sends the
//! intent it needs on record and waits until it is written, and the loop writes the intents
//! of all steps that wait at that moment in one write; results are written together once
//! the pass's steps are done. A step that takes long (a launch waiting for machines) goes
//! on across passes without holding the others' next look back.

use super::Settings;
use super::book::{self, Book, Lease, Run};
use super::policy::Phase;
use super::step::{Job, Record, Stepped, Upstream, Worker};
use crate::engine::{Engine, Error, Notice, Result};
use crate::model::{Address, Spec};
use crate::state::{LockInfo, ResourceState, State, StateError, StateStore, Status};
use futures::StreamExt;
use futures::future::BoxFuture;
use futures::stream::FuturesUnordered;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// Why the loop ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ended {
    /// Nothing is left to watch (and the controller was asked to stop then).
    Idle,
    /// Another controller took the lease (this one was paused past it).
    LostLease(String),
}

/// How many backend calls of each kind are in flight at most (apply's parallelism): creates,
/// and the rest (looks, removals, logs) — so long launches never hold every look back.
const PARALLELISM: usize = 10;

pub struct Controller<'e> {
    pub(super) engine: &'e Engine,
    pub(super) store: Box<dyn StateStore>,
    pub(super) settings: Settings,
    pub(super) me: Lease,
    pub(super) book: Book,
    pub(super) version: Option<String>,
    /// The last thing said of each task that could not be asked, so it is said once.
    pub(super) unknown: BTreeMap<String, String>,
    /// The task id of each managed job the state declares, as of this pass.
    pub(super) declared: BTreeMap<Address, String>,
    worker: Arc<Worker<'e>>,
    /// Records steps need in the book before their next call (see [`Worker::commit`]).
    records: mpsc::UnboundedReceiver<Record>,
    /// The steps running now; a step may outlive the pass that started it (a long launch).
    steps: FuturesUnordered<BoxFuture<'e, Stepped>>,
    /// The tasks of those steps: the book's copy of each waits for its step's result.
    inflight: BTreeSet<String>,
    /// Results of steps are in the book but not written yet.
    pub(super) dirty: bool,
    /// The services' load balancers and probes.
    pub(super) serving: super::serving::Serving,
}

impl std::fmt::Debug for Controller<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Controller")
            .field("lease", &self.me)
            .finish_non_exhaustive()
    }
}

/// The task id apply gave a managed job (its identity across recoveries).
pub fn task_id(res: &ResourceState) -> Option<&str> {
    res.private
        .get("task_id")
        .and_then(serde_json::Value::as_str)
}

impl<'e> Controller<'e> {
    /// Takes the lease of the engine's state, or says who holds it.
    pub async fn start(engine: &'e Engine, settings: Settings) -> Result<Controller<'e>> {
        let store = engine.store().await?;
        let me = Lease {
            id: uuid::Uuid::new_v4().to_string(),
            who: crate::state::LockInfo::new("controller").who,
            host: book::host_name(),
            pid: std::process::id(),
            since: book::rfc3339_now(),
            renewed_ms: book::now_ms(),
            ttl_ms: settings.lease_ttl.as_millis() as u64,
        };
        let mut tries = 0;
        loop {
            let (mut b, version) = book::read(store.as_ref()).await?;
            let now = book::now_ms();
            if let Some(held) = &b.lease
                && held.id != me.id
                && held.is_live(now)
            {
                return Err(Error::new(format!(
                    "the controller of this state already runs: {}",
                    held.describe()
                ))
                .hint("one controller acts per state; `skyform controller stop` ends it"));
            }
            b.lease = Some(Lease {
                renewed_ms: now,
                ..me.clone()
            });
            match book::write(store.as_ref(), &b, version.as_deref()).await {
                Ok(v) => {
                    let (tx, records) = mpsc::unbounded_channel();
                    let worker = Arc::new(Worker::new(engine, settings.clone(), PARALLELISM, tx));
                    return Ok(Controller {
                        engine,
                        store,
                        settings,
                        me,
                        book: b,
                        version: Some(v),
                        unknown: BTreeMap::new(),
                        declared: BTreeMap::new(),
                        worker,
                        records,
                        steps: FuturesUnordered::new(),
                        inflight: BTreeSet::new(),
                        dirty: false,
                        serving: Default::default(),
                    });
                }
                Err(StateError::Conflict { .. }) if tries < 5 => tries += 1,
                Err(e) => return Err(e.into()),
            }
        }
    }

    pub(super) fn say(&self, line: String) {
        self.engine.reporter().notice(Notice::Controller(line));
    }

    /// Runs until nothing is left to do (when `settings.exit_when_idle`), or forever.
    pub async fn run(&mut self) -> Result<Ended> {
        // Started by an apply that is still writing what it handed over: stay a moment even
        // when there is nothing to watch yet.
        const LINGER: Duration = Duration::from_secs(8);
        let began = Instant::now();
        let mut idle_ticks = 0;
        loop {
            let next = Instant::now() + self.settings.tick;
            let mut busy = match self.tick().await {
                Ok(b) => b,
                Err(Stop::Lost(who)) => return Ok(Ended::LostLease(who)),
                Err(Stop::Failed(e)) => {
                    // A store that does not answer now may answer later; the lease says
                    // for how long this controller may wait before another may act.
                    self.say(format!("cannot read or write the state store: {e}"));
                    true
                }
            };
            idle_ticks = if busy { 0 } else { idle_ticks + 1 };
            if self.settings.exit_when_idle && idle_ticks >= 2 && began.elapsed() >= LINGER {
                self.release().await;
                return Ok(Ended::Idle);
            }
            // Until the next pass, steps still running (long launches) go on and what they
            // need written is written.
            match self.drive(next, false).await {
                Ok(()) => {}
                Err(Stop::Lost(who)) => return Ok(Ended::LostLease(who)),
                Err(Stop::Failed(e)) => {
                    self.say(format!("cannot read or write the state store: {e}"));
                    busy = true;
                }
            }
            if busy {
                idle_ticks = 0;
            }
        }
    }

    /// Gives the lease up (the next controller need not wait for it to lapse).
    pub async fn release(&mut self) {
        let id = self.me.id.clone();
        let _ = book::update(self.store.as_ref(), |b| {
            if b.lease.as_ref().is_some_and(|l| l.id == id) {
                b.lease = None;
            }
        })
        .await;
    }

    /// One pass over every managed job: starts a step for each that needs the controller
    /// and has none running, and collects steps until they are all done or a tick has
    /// passed (a longer one goes on in the background, see [`Controller::run`]). Answers
    /// whether any job still needs the controller.
    pub async fn tick(&mut self) -> std::result::Result<bool, Stop> {
        let deadline = Instant::now() + self.settings.tick;
        let state = self
            .store
            .read()
            .await
            .map_err(Stop::from)?
            .unwrap_or_default();
        // What apply asked meanwhile (a cancel), acted on this pass.
        self.absorb().await?;
        // A service's replicas are managed jobs of the controller's own.
        let replicas = self.serve(&state).await;
        let changed = self.adopt_declared(&state, &replicas);
        self.declared = state
            .resources
            .iter()
            .filter_map(|(a, r)| task_id(r).map(|t| (a.clone(), t.to_string())))
            .collect();
        // Written when it changed, or to renew the lease (a third of its time has passed):
        // not the whole book every pass.
        let renewed = self.book.lease.as_ref().map_or(0, |l| l.renewed_ms);
        if changed || self.dirty || book::now_ms() >= renewed + self.me.ttl_ms / 3 {
            self.save().await?;
        }
        let by_task: BTreeMap<&str, &ResourceState> = state
            .resources
            .values()
            .chain(replicas.values())
            .filter_map(|r| task_id(r).map(|t| (t, r)))
            .collect();
        let jobs: Vec<Job> = self
            .book
            .runs
            .iter()
            .filter(|(t, r)| {
                (r.is_active() || r.cancel && !r.phase.is_final()) && !self.inflight.contains(*t)
            })
            .map(|(task, run)| {
                let declared = by_task.get(task.as_str()).map(|r| (*r).clone());
                let upstream = match &declared {
                    Some(res) if run.current.is_none() => self.waits_for(res),
                    _ => Upstream::Ready,
                };
                Job {
                    task: task.clone(),
                    run: run.clone(),
                    declared,
                    upstream,
                    lineage: state.lineage.clone(),
                    unknown: self.unknown.get(task).cloned(),
                }
            })
            .collect();
        for job in jobs {
            self.inflight.insert(job.task.clone());
            let worker = self.worker.clone();
            self.steps
                .push(Box::pin(async move { worker.step(job).await }));
        }
        self.drive(deadline, true).await?;
        if self.dirty {
            self.save().await?;
        }
        self.publish(&state).await;
        Ok(self.book.runs.values().any(Run::is_active)
            || !self.steps.is_empty()
            || !self.book.services.is_empty())
    }

    /// Runs the steps and writes what they need in the book, until `deadline` (or, when
    /// `until_done`, until no step runs).
    async fn drive(
        &mut self,
        deadline: Instant,
        until_done: bool,
    ) -> std::result::Result<(), Stop> {
        let deadline = tokio::time::Instant::from_std(deadline);
        loop {
            if until_done && self.steps.is_empty() {
                return Ok(());
            }
            tokio::select! {
                // The steps first: every step of a pass gets to say what it needs before
                // the book is written once for all of them.
                biased;
                Some(done) = self.steps.next(), if !self.steps.is_empty() => {
                    self.collect(done)?;
                }
                Some(first) = self.records.recv() => {
                    self.write_records(first).await?;
                }
                () = tokio::time::sleep_until(deadline) => return Ok(()),
            }
        }
    }

    /// Puts every record waiting (the one given and all that came with it) in the book,
    /// writes it once, and tells their steps.
    async fn write_records(&mut self, first: Record) -> std::result::Result<(), Stop> {
        let mut batch = vec![first];
        while let Ok(r) = self.records.try_recv() {
            batch.push(r);
        }
        for r in &batch {
            self.put(&r.task, r.run.clone());
        }
        let written = self.save().await;
        for r in batch {
            let _ = r.done.send(written.clone());
        }
        written
    }

    /// Takes a finished step's run into the book (written with the next write).
    fn collect(&mut self, done: Stepped) -> std::result::Result<(), Stop> {
        let Stepped {
            task,
            run,
            result,
            unknown,
        } = done;
        self.inflight.remove(&task);
        match unknown {
            Some(u) => self.unknown.insert(task.clone(), u),
            None => self.unknown.remove(&task),
        };
        if self.book.runs.get(&task) != Some(&run) {
            self.put(&task, run);
            self.dirty = true;
        }
        match result {
            Err(Stop::Failed(e)) => {
                // The step stopped before its next call; the next pass takes it up again.
                self.say(format!("cannot write the controller's book: {e}"));
                Ok(())
            }
            r => r,
        }
    }

    /// Replaces the book's record of `task`, keeping a cancel apply asked for meanwhile.
    fn put(&mut self, task: &str, mut run: Run) {
        if let Some(old) = self.book.runs.get(task) {
            run.cancel |= old.cancel;
        }
        self.book.runs.insert(task.to_string(), run);
    }

    /// Takes up managed jobs apply declared that the book lacks, marks for cancelling the
    /// runs whose job state no longer declares, and forgets finished runs state dropped.
    fn adopt_declared(
        &mut self,
        state: &State,
        replicas: &BTreeMap<String, ResourceState>,
    ) -> bool {
        let mut changed = false;
        let replica_of = |task: &str| {
            let service = task.rsplit_once('.').map_or(task, |(s, _)| s);
            self.book.services.get(service).map(|s| &s.address)
        };
        let declared: BTreeMap<&str, &Address> = state
            .resources
            .iter()
            .filter(|(_, r)| matches!(*r.spec, Spec::ManagedJob(_)) && r.status == Status::Ready)
            .filter_map(|(a, r)| task_id(r).map(|t| (t, a)))
            .chain(
                replicas
                    .keys()
                    .filter_map(|t| replica_of(t).map(|a| (t.as_str(), a))),
            )
            .collect();
        let declared: BTreeMap<&str, Address> =
            declared.into_iter().map(|(t, a)| (t, a.clone())).collect();
        for (task, address) in &declared {
            if !self.book.runs.contains_key(*task) {
                self.book
                    .runs
                    .insert((*task).to_string(), Run::new(address.clone()));
                changed = true;
            }
        }
        let mut forget = Vec::new();
        for (task, run) in &mut self.book.runs {
            if declared.contains_key(task.as_str()) {
                continue;
            }
            if run.is_active() {
                changed |= !run.cancel;
                run.cancel = true;
            } else if !self.inflight.contains(task) {
                forget.push(task.clone());
            }
        }
        changed |= !forget.is_empty();
        for t in forget {
            self.book.runs.remove(&t);
        }
        changed
    }

    /// Writes the book (renewing the lease). Another writer's change (apply asking for a
    /// cancel) is merged in; a lost lease stops the controller.
    async fn save(&mut self) -> std::result::Result<(), Stop> {
        loop {
            if let Some(l) = &mut self.book.lease {
                l.renewed_ms = book::now_ms();
            }
            match book::write(self.store.as_ref(), &self.book, self.version.as_deref()).await {
                Ok(v) => {
                    self.version = Some(v);
                    self.dirty = false;
                    crate::faults::passed(crate::faults::Point::Write);
                    return Ok(());
                }
                Err(StateError::Conflict { .. }) => {
                    let (theirs, version) = book::read(self.store.as_ref()).await?;
                    self.merge(theirs, version)?;
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Takes in what another writer (apply asking for a cancel) changed in the book since
    /// this controller last wrote it, so a cancel is acted on at the next pass and not only
    /// when the lease is renewed. The book is parsed only when its version moved.
    async fn absorb(&mut self) -> std::result::Result<(), Stop> {
        let Some((bytes, version)) = self.store.read_side(book::SIDE).await? else {
            return Ok(());
        };
        if self.version.as_deref() == Some(version.as_str()) {
            return Ok(());
        }
        let theirs: Book = serde_json::from_slice(&bytes).map_err(|e| {
            Stop::from(StateError::Corrupt(format!(
                "the controller's book next to {}: {e}",
                self.store.describe()
            )))
        })?;
        self.merge(theirs, Some(version))
    }

    /// Merges another writer's book (of `version`) into this one: their cancels and the
    /// runs they added; a lease that is not this controller's any more stops it.
    fn merge(&mut self, theirs: Book, version: Option<String>) -> std::result::Result<(), Stop> {
        match &theirs.lease {
            Some(l) if l.id == self.me.id => {}
            other => {
                return Err(Stop::Lost(
                    other
                        .as_ref()
                        .map_or_else(|| "nobody".into(), Lease::describe),
                ));
            }
        }
        for (task, run) in theirs.runs {
            match self.book.runs.get_mut(&task) {
                Some(mine) => mine.cancel |= run.cancel,
                None => {
                    self.book.runs.insert(task, run);
                }
            }
        }
        for (id, rec) in theirs.services {
            match self.book.services.get_mut(&id) {
                Some(mine) => mine.cancel |= rec.cancel,
                None => {
                    self.book.services.insert(id, rec);
                }
            }
        }
        self.version = version;
        Ok(())
    }

    /// Whether the managed jobs `res` depends on (a pipeline) have all succeeded.
    fn waits_for(&self, res: &ResourceState) -> Upstream {
        for dep in res
            .dependencies
            .iter()
            .filter(|d| d.kind == crate::model::Kind::ManagedJob)
        {
            // One the state no longer declares holds nothing back; one not taken up yet does.
            let Some(task) = self.declared.get(dep) else {
                continue;
            };
            let Some(up) = self.book.runs.get(task) else {
                return Upstream::Waiting;
            };
            match up.phase {
                Phase::Succeeded => {}
                p if p.is_final() => {
                    return Upstream::Failed(format!("{dep} ended {}", p.as_str()));
                }
                _ => return Upstream::Waiting,
            }
        }
        Upstream::Ready
    }

    /// Copies each managed job's status into the state, taking the lock for a moment when
    /// no one holds it; while apply holds it, the book stays the record (apply reads it).
    async fn publish(&mut self, state: &State) {
        let stale: Vec<Address> = state
            .resources
            .iter()
            .filter(|(_, r)| {
                self.computed_of(r)
                    .is_some_and(|c| !same_but_rate(&c, &r.computed.to_map()))
            })
            .map(|(a, _)| a.clone())
            .collect();
        if stale.is_empty() {
            return;
        }
        let info = LockInfo::new("controller");
        if self.store.lock(&info).await.is_err() {
            return;
        }
        if let Ok(Some(mut s)) = self.store.read().await {
            let mut changed = false;
            for a in &stale {
                if let Some(r) = s.resources.get_mut(a)
                    && let Some(c) = self.computed_of(r)
                {
                    r.computed = c.into();
                    changed = true;
                }
            }
            if changed {
                s.serial += 1;
                if let Err(e) = self.store.write(&s).await {
                    self.say(format!("cannot write the state: {e}"));
                }
            }
        }
        let _ = self.store.unlock(&info.id).await;
    }
}

impl Controller<'_> {
    /// What the book says of a managed job or service in state.
    fn computed_of(&self, r: &ResourceState) -> Option<BTreeMap<String, serde_json::Value>> {
        match r.spec.as_ref() {
            Spec::ManagedJob(_) => task_id(r)
                .and_then(|t| self.book.runs.get(t))
                .map(Run::computed),
            Spec::Service(_) => super::serving::service_id(r).and_then(|id| {
                self.book
                    .services
                    .get(id)
                    .map(|rec| super::serving::computed(rec, id, &self.book.runs))
            }),
            _ => None,
        }
    }
}

/// Equal but for the request rate, which alone is not worth a state write (`status` reads
/// it from the book).
fn same_but_rate(
    a: &BTreeMap<String, serde_json::Value>,
    b: &BTreeMap<String, serde_json::Value>,
) -> bool {
    let strip = |m: &BTreeMap<String, serde_json::Value>| {
        m.iter()
            .filter(|(k, _)| k.as_str() != "qps")
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect::<BTreeMap<_, _>>()
    };
    strip(a) == strip(b)
}

/// Why a tick stopped short.
#[derive(Debug, Clone)]
pub enum Stop {
    Lost(String),
    Failed(Error),
}

impl From<StateError> for Stop {
    fn from(e: StateError) -> Self {
        Stop::Failed(e.into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::{Options, Quiet};
    use crate::model::ManagedJobSpec;
    use crate::optimizer::Offering;
    use crate::providers::{Created, Observed, Provider, ProviderError, Registry, Request};
    use serde_json::json;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A backend whose creates answer at once, except those of `managed_job.slow`, which
    /// wait a minute (a cloud short of machines).
    #[derive(Debug, Default)]
    struct Slow {
        creates: AtomicUsize,
        answered: AtomicUsize,
    }

    #[async_trait::async_trait]
    impl Provider for Slow {
        fn name(&self) -> &'static str {
            "aws"
        }
        async fn offerings(&self) -> std::result::Result<Vec<Offering>, ProviderError> {
            Ok(vec![Offering {
                cloud: "aws".into(),
                region: Some("us-east-1".into()),
                zone: None,
                instance_type: "m6i.2xlarge".into(),
                accelerators: Vec::new(),
                cpus: 8.0,
                memory_gib: 32.0,
                spot: false,
                price: 1,
                max_nodes: None,
            }])
        }
        fn runs_managed_jobs(&self) -> bool {
            true
        }
        fn new_private(&self, address: &Address, _: &Spec, _: &str) -> serde_json::Value {
            json!({ "id": address.to_string() })
        }
        async fn refresh(
            &self,
            _: &Address,
            _: &ResourceState,
            _: Option<&ResourceState>,
        ) -> std::result::Result<Observed, ProviderError> {
            Ok(Observed::Up(BTreeMap::from([(
                "status".to_string(),
                json!("RUNNING"),
            )])))
        }
        async fn create(&self, req: Request<'_>) -> std::result::Result<Created, ProviderError> {
            self.creates.fetch_add(1, Ordering::SeqCst);
            if req.address.to_string() == "managed_job.slow" {
                tokio::time::sleep(Duration::from_secs(60)).await;
            }
            self.answered.fetch_add(1, Ordering::SeqCst);
            Ok(Created {
                computed: BTreeMap::new(),
                private: req.private.clone(),
            })
        }
        async fn update(&self, req: Request<'_>) -> std::result::Result<Created, ProviderError> {
            self.create(req).await
        }
        async fn delete(
            &self,
            _: &Address,
            _: &ResourceState,
            _: Option<&ResourceState>,
        ) -> std::result::Result<(), ProviderError> {
            Ok(())
        }
        fn log_paths(
            &self,
            _: &ResourceState,
            _: Option<&ResourceState>,
        ) -> Vec<std::path::PathBuf> {
            Vec::new()
        }
    }

    fn declared(name: &str) -> (Address, ResourceState) {
        let address: Address = format!("managed_job.{name}").parse().expect("address");
        let spec = Spec::ManagedJob(Box::new(ManagedJobSpec {
            num_nodes: 1,
            resources: Default::default(),
            workdir: None,
            workdir_hash: None,
            setup: None,
            run: "train".into(),
            envs: BTreeMap::new(),
            secrets: BTreeMap::new(),
            recovery: None,
        }));
        let res = ResourceState {
            private: json!({ "task_id": format!("task-{name}") }),
            ..ResourceState::new(Status::Ready, "managed", spec.into())
        };
        (address, res)
    }

    /// A launch that waits long does not hold the other jobs' passes back: the fast job is
    /// launched and seen running while the slow one's create still waits, with the slow
    /// one's intent on record before its create.
    #[tokio::test]
    async fn a_long_launch_does_not_hold_the_other_jobs_back() {
        let tmp = tempfile::tempdir().expect("tempdir");
        std::fs::write(tmp.path().join("main.sky.hcl"), "").expect("config");
        let slow = Arc::new(Slow::default());
        let registry = Arc::new(Registry {
            providers: BTreeMap::from([("aws", slow.clone() as Arc<dyn Provider>)]),
            warnings: Vec::new(),
        });
        let engine = Engine::open(
            Options {
                dir: tmp.path().to_path_buf(),
                ..Options::default()
            },
            Arc::new(Quiet),
        )
        .with_registry(registry);
        let mut state = State::new();
        state.resources = ["slow", "fast"].into_iter().map(declared).collect();
        state.serial = 1;
        let store = engine.store().await.expect("store");
        store.write(&state).await.expect("state");
        let settings = Settings {
            tick: Duration::from_millis(100),
            ..Settings::default()
        };
        let mut ctl = Controller::start(&engine, settings).await.expect("start");
        let began = Instant::now();
        for _ in 0..5 {
            ctl.tick().await.expect("tick");
        }
        assert!(began.elapsed() < Duration::from_secs(10));
        let (b, _) = book::read(store.as_ref()).await.expect("book");
        assert_eq!(
            slow.creates.load(Ordering::SeqCst),
            2,
            "both launches began: {b:?}"
        );
        assert_eq!(
            slow.answered.load(Ordering::SeqCst),
            1,
            "the slow one waits"
        );
        let fast = &b.runs["task-fast"];
        assert_eq!(fast.phase, Phase::Running, "{fast:?}");
        let slow_run = &b.runs["task-slow"];
        assert!(
            slow_run.current.as_ref().is_some_and(|p| !p.launched),
            "the slow launch's intent is on record: {slow_run:?}"
        );
    }
}
