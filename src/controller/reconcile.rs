//! The controller's loop: each tick it reads the state (what apply declared) and its book
//! (what it runs), launches managed jobs that have no placement, watches those that have
//! one, recovers the lost ones and removes what finished, writing its intent to the book
//! before every call that makes something and its result after. The decisions are the pure
//! functions of [`super::policy`]; this file does the IO around them.

use super::book::{self, Book, Entry, Lease, Run};
use super::policy::{self, Phase, Policy, Seen, Verdict};
use super::{Settings, relay};
use crate::engine::{Engine, Error, Notice, Result};
use crate::model::{Address, Spec};
use crate::optimizer::Offering;
use crate::providers::{ErrorKind, ProviderError, Registry};
use crate::state::{LockInfo, ResourceState, State, StateError, StateStore, Status};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Why the loop ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ended {
    /// Nothing is left to watch (and the controller was asked to stop then).
    Idle,
    /// Another controller took the lease (this one was paused past it).
    LostLease(String),
}

pub struct Controller<'e> {
    pub(super) engine: &'e Engine,
    pub(super) store: Box<dyn StateStore>,
    pub(super) registry: Arc<Registry>,
    pub(super) settings: Settings,
    pub(super) me: Lease,
    pub(super) book: Book,
    pub(super) version: Option<String>,
    pub(super) offerings: Option<(Instant, Vec<Offering>)>,
    /// The last thing said of each task that could not be asked, so it is said once.
    pub(super) unknown: BTreeMap<String, String>,
    /// The task id of each managed job the state declares, as of this pass.
    pub(super) declared: BTreeMap<Address, String>,
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
                    return Ok(Controller {
                        registry: engine.registry(),
                        engine,
                        store,
                        settings,
                        me,
                        book: b,
                        version: Some(v),
                        offerings: None,
                        unknown: BTreeMap::new(),
                        declared: BTreeMap::new(),
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
            let busy = match self.tick().await {
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
            tokio::time::sleep(self.settings.tick).await;
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

    /// One pass over every managed job; answers whether any still needs the controller.
    pub async fn tick(&mut self) -> std::result::Result<bool, Stop> {
        let state = self
            .store
            .read()
            .await
            .map_err(Stop::from)?
            .unwrap_or_default();
        let changed = self.adopt_declared(&state);
        self.declared = state
            .resources
            .iter()
            .filter_map(|(a, r)| task_id(r).map(|t| (a.clone(), t.to_string())))
            .collect();
        // Written when it changed, or to renew the lease (a third of its time has passed):
        // not the whole book every pass.
        let renewed = self.book.lease.as_ref().map_or(0, |l| l.renewed_ms);
        if changed || book::now_ms() >= renewed + self.me.ttl_ms / 3 {
            self.save().await?;
        }
        let tasks: Vec<String> = self
            .book
            .runs
            .iter()
            .filter(|(_, r)| r.is_active() || r.cancel && !r.phase.is_final())
            .map(|(t, _)| t.clone())
            .collect();
        let by_task: BTreeMap<&str, &ResourceState> = state
            .resources
            .values()
            .filter_map(|r| task_id(r).map(|t| (t, r)))
            .collect();
        for task in &tasks {
            let declared = by_task.get(task.as_str()).copied();
            self.step(task, declared, &state.lineage).await?;
        }
        self.publish(&state).await;
        Ok(self.book.runs.values().any(Run::is_active))
    }

    /// Takes up managed jobs apply declared that the book lacks, marks for cancelling the
    /// runs whose job state no longer declares, and forgets finished runs state dropped.
    fn adopt_declared(&mut self, state: &State) -> bool {
        let mut changed = false;
        let declared: BTreeMap<&str, &Address> = state
            .resources
            .iter()
            .filter(|(_, r)| matches!(r.spec, Spec::ManagedJob(_)) && r.status == Status::Ready)
            .filter_map(|(a, r)| task_id(r).map(|t| (t, a)))
            .collect();
        for (task, address) in &declared {
            if !self.book.runs.contains_key(*task) {
                self.book
                    .runs
                    .insert((*task).to_string(), Run::new((*address).clone()));
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
            } else {
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
                    crate::faults::passed(crate::faults::Point::Write);
                    return Ok(());
                }
                Err(StateError::Conflict { .. }) => {
                    let (theirs, version) = book::read(self.store.as_ref()).await?;
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
                    self.version = version;
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Replaces the book's record of `task` and writes the book.
    pub(super) async fn commit(&mut self, task: &str, run: &Run) -> std::result::Result<(), Stop> {
        self.book.runs.insert(task.to_string(), run.clone());
        self.save().await
    }

    async fn step(
        &mut self,
        task: &str,
        declared: Option<&ResourceState>,
        lineage: &str,
    ) -> std::result::Result<(), Stop> {
        let Some(mut run) = self.book.runs.get(task).cloned() else {
            return Ok(());
        };
        let before = run.clone();
        if run.cancel && !run.phase.is_final() && run.phase != Phase::Cancelling {
            run.phase = Phase::Cancelling;
            run.history.push(entry(
                "cancelling",
                None,
                None,
                None,
                Some("apply removed it".into()),
            ));
            self.say(format!("{}: cancelling", run.address));
        }
        match run.phase {
            Phase::Cancelling => {
                if let Some(p) = run.current.take() {
                    run.leftovers.push(p);
                }
                self.remove_leftovers(&mut run).await;
                if run.leftovers.is_empty() {
                    run.phase = Phase::Cancelled;
                    run.reason = Some("cancelled".into());
                    run.history.push(entry("cancelled", None, None, None, None));
                    self.relay_final(task, &run);
                }
            }
            p if p.is_final() => {
                if let Some(c) = run.current.take() {
                    run.leftovers.push(c);
                }
                self.remove_leftovers(&mut run).await;
            }
            _ => match (&run.current, declared) {
                (Some(_), _) => self.watch(task, &mut run, declared, lineage).await?,
                (None, Some(res)) => match self.waits_for(res) {
                    Upstream::Ready => {
                        if run.retry_at.is_none_or(|at| book::now_ms() >= at) {
                            self.launch(task, &mut run, res, lineage).await?;
                        }
                    }
                    Upstream::Waiting => {}
                    Upstream::Failed(why) => {
                        // A pipeline stops at its first failure.
                        self.say(format!("{}: CANCELLED ({why})", run.address));
                        run.phase = Phase::Cancelled;
                        run.reason = Some(why.clone());
                        run.history
                            .push(entry("cancelled", None, None, None, Some(why)));
                        self.relay_final(task, &run);
                    }
                },
                // Not declared and not cancelled yet: the next tick cancels it.
                (None, None) => {}
            },
        }
        if !run.leftovers.is_empty() && !run.phase.is_final() {
            self.remove_leftovers(&mut run).await;
        }
        if run != before {
            self.commit(task, &run).await?;
        }
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

    /// Looks at a placement and acts on what the policy decides.
    async fn watch(
        &mut self,
        task: &str,
        run: &mut Run,
        declared: Option<&ResourceState>,
        lineage: &str,
    ) -> std::result::Result<(), Stop> {
        let Some(p) = run.current.clone() else {
            return Ok(());
        };
        let seen = self.see(&run.address, &p).await;
        if !p.launched {
            // Recorded before a create whose answer this controller never got (it was
            // killed): take the placement if its job is there, else remove it.
            match seen {
                Seen::Unknown { .. } => return Ok(()),
                Seen::Lost { .. } => {
                    run.leftovers.push(p);
                    run.current = None;
                    self.remove_leftovers(run).await;
                    return Ok(());
                }
                _ => {
                    if let Some(c) = &mut run.current {
                        c.launched = true;
                    }
                    run.attempt = run.attempt.max(1);
                    run.history.push(entry(
                        "adopted",
                        None,
                        Some(p.candidate.offering.infra()),
                        Some(p.candidate.hourly),
                        Some("launched before the controller stopped".into()),
                    ));
                }
            }
        }
        let policy = Policy::of(recovery_of(declared, &p.spec));
        let now = book::now_ms();
        match policy::judge(
            &seen,
            &policy,
            run.restarts,
            run.suspect_since,
            now,
            self.settings.grace,
        ) {
            Verdict::Keep(phase) => {
                if run.phase != phase {
                    self.say(format!(
                        "{}: {} on {}",
                        run.address,
                        phase.as_str(),
                        p.candidate.offering.infra()
                    ));
                }
                run.phase = phase;
                run.suspect_since = None;
            }
            Verdict::Suspect => {
                run.suspect_since.get_or_insert(now);
            }
            Verdict::NoNews => {
                if let Seen::Unknown { error } = &seen
                    && self.unknown.get(task) != Some(error)
                {
                    self.say(format!("{}: cannot ask about it now: {error}", run.address));
                    self.unknown.insert(task.to_string(), error.clone());
                }
            }
            Verdict::Recover { why, counts } => {
                let from = p.candidate.offering.infra();
                self.say(format!("{}: recovering from {from}: {why}", run.address));
                run.history.push(entry(
                    if counts { "restarting" } else { "lost" },
                    Some(from),
                    None,
                    None,
                    Some(why.clone()),
                ));
                if counts {
                    run.restarts += 1;
                }
                // A lost machine rules its region out for the next launch; a job that
                // failed on a healthy one does not.
                run.lost_region =
                    matches!(seen, Seen::Lost { .. }).then(|| policy::region_of(&p.candidate));
                run.phase = Phase::Recovering;
                run.suspect_since = None;
                run.reason = Some(why);
                run.leftovers.push(p.clone());
                run.current = None;
                // Intent first: the lost placement is on record as one to remove.
                self.commit(task, run).await?;
                // What it logged stays readable across the recovery, as far as its machines
                // still answer (a lost machine is not waited for long).
                let _ = tokio::time::timeout(
                    Duration::from_secs(5),
                    self.keep_logs(task, &run.address, &p),
                )
                .await;
                self.remove_leftovers(run).await;
                if let Some(res) = declared {
                    self.launch(task, run, res, lineage).await?;
                }
            }
            Verdict::Finish {
                phase,
                exit_code,
                why,
            } => {
                self.say(format!("{}: {} ({why})", run.address, phase.as_str()));
                self.keep_logs(task, &run.address, &p).await;
                run.phase = phase;
                run.exit_code = exit_code;
                run.reason = Some(why.clone());
                run.history.push(entry(
                    &phase.as_str().to_lowercase(),
                    Some(p.candidate.offering.infra()),
                    None,
                    None,
                    Some(why),
                ));
                run.leftovers.push(p);
                run.current = None;
                self.relay_final(task, run);
                self.commit(task, run).await?;
                self.remove_leftovers(run).await;
            }
        }
        Ok(())
    }

    /// Launches a managed job on the first placement that takes it, in the order its
    /// recovery strategy gives; with none, waits (backing off) and tries again.
    async fn launch(
        &mut self,
        task: &str,
        run: &mut Run,
        res: &ResourceState,
        lineage: &str,
    ) -> std::result::Result<(), Stop> {
        let Spec::ManagedJob(m) = &res.spec else {
            return Ok(());
        };
        let mut spec = m.clone();
        spec.envs
            .entry("SKYFORM_TASK_ID".into())
            .or_insert_with(|| task.to_string());
        let policy = Policy::of(spec.recovery.as_ref());
        let spec = Spec::ManagedJob(spec);
        let offerings = self.offerings().await;
        let ranked =
            match crate::optimizer::rank(&m.resources, m.num_nodes, &offerings, &BTreeSet::new()) {
                Ok(c) => c,
                Err(no) => {
                    self.wait_for_room(run, &no.reason);
                    return Ok(());
                }
            };
        let ordered = policy::order(ranked, policy.strategy, run.lost_region.as_deref());
        let mut blocked = BTreeSet::new();
        let mut last: Option<ProviderError> = None;
        let mut fatal = false;
        for c in ordered {
            if crate::optimizer::is_blocked(&blocked, &c) {
                continue;
            }
            let registry = self.registry.clone();
            let Some(provider) = registry.get(&c.offering.cloud) else {
                continue;
            };
            let created = self.place(task, run, provider, &spec, &c, lineage).await?;
            let infra = c.offering.infra();
            match created {
                Ok(()) => {
                    run.attempt += 1;
                    if let Some(p) = &mut run.current {
                        p.launched = true;
                    }
                    let event = if run.attempt > 1 {
                        "recovered"
                    } else {
                        "launched"
                    };
                    run.history.push(entry(
                        event,
                        None,
                        Some(infra.clone()),
                        Some(c.hourly),
                        None,
                    ));
                    run.phase = Phase::Starting;
                    run.retry_round = 0;
                    run.retry_at = None;
                    run.reason = None;
                    self.say(format!("{}: {event} on {infra}", run.address));
                    return Ok(());
                }
                Err(e) => {
                    self.say(format!(
                        "{}: launch on {infra} failed: {}",
                        run.address, e.message
                    ));
                    run.history.push(entry(
                        "launch failed",
                        None,
                        Some(infra),
                        Some(c.hourly),
                        Some(e.message.clone()),
                    ));
                    if let Some(p) = run.current.take() {
                        run.leftovers.push(p);
                    }
                    self.remove_leftovers(run).await;
                    blocked.insert(crate::apply::block_for(e.kind, &c));
                    fatal |= matches!(e.kind, ErrorKind::Config | ErrorKind::Other);
                    last = Some(e);
                }
            }
        }
        let why = last.map_or_else(|| "no placement is available".into(), |e| e.message);
        if fatal {
            // Not a question of room: trying again would fail the same way.
            run.phase = Phase::Failed;
            run.reason = Some(why.clone());
            run.history
                .push(entry("failed", None, None, None, Some(why)));
            self.relay_final(task, run);
        } else {
            self.wait_for_room(run, &why);
        }
        Ok(())
    }

    /// No placement had room: try again after the backoff.
    fn wait_for_room(&self, run: &mut Run, why: &str) {
        let jitter = (uuid::Uuid::new_v4().as_u128() % 1000) as f64 / 1000.0;
        let wait = policy::backoff(
            run.retry_round,
            self.settings.retry_base,
            self.settings.retry_cap,
            jitter,
        );
        run.retry_round += 1;
        run.retry_at = Some(book::now_ms() + wait.as_millis() as u64);
        run.reason = Some(format!(
            "{why}; trying again in {}",
            humantime::format_duration(Duration::from_secs(wait.as_secs().max(1)))
        ));
        self.say(format!(
            "{}: {}",
            run.address,
            run.reason.as_deref().unwrap_or("")
        ));
    }

    /// Writes a finished job's status where jobs that depend on it look (afterok).
    fn relay_final(&self, task: &str, run: &Run) {
        let dir = relay::dir(self.engine.dir(), &self.engine.config().workspace, task);
        if let Err(e) = relay::write_status(&dir, task, run) {
            self.say(format!(
                "{}: cannot record its end for the jobs after it: {e}",
                run.address
            ));
        }
    }

    /// What a managed job may be placed on now (asked again at most every 30 s).
    async fn offerings(&mut self) -> Vec<Offering> {
        if let Some((at, o)) = &self.offerings
            && at.elapsed() < Duration::from_secs(30)
        {
            return o.clone();
        }
        let o = match self.engine.offerings(true).await {
            Ok((o, _)) => o,
            Err(e) => {
                self.say(format!("cannot read the offerings: {e}"));
                Vec::new()
            }
        };
        self.offerings = Some((Instant::now(), o.clone()));
        o
    }

    /// Copies each managed job's status into the state, taking the lock for a moment when
    /// no one holds it; while apply holds it, the book stays the record (apply reads it).
    async fn publish(&mut self, state: &State) {
        let stale: Vec<Address> = state
            .resources
            .iter()
            .filter(|(_, r)| matches!(r.spec, Spec::ManagedJob(_)))
            .filter(|(_, r)| {
                task_id(r)
                    .and_then(|t| self.book.runs.get(t))
                    .is_some_and(|run| run.computed() != r.computed)
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
                    && let Some(run) = task_id(r).and_then(|t| self.book.runs.get(t))
                {
                    r.computed = run.computed();
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

/// Where the managed jobs a managed job waits for are.
enum Upstream {
    Ready,
    Waiting,
    Failed(String),
}

/// Why a tick stopped short.
#[derive(Debug)]
pub enum Stop {
    Lost(String),
    Failed(Error),
}

impl From<StateError> for Stop {
    fn from(e: StateError) -> Self {
        Stop::Failed(e.into())
    }
}

fn recovery_of<'a>(
    declared: Option<&'a ResourceState>,
    launched: &'a Spec,
) -> Option<&'a crate::model::Recovery> {
    let spec = declared.map_or(launched, |r| &r.spec);
    match spec {
        Spec::ManagedJob(m) => m.recovery.as_ref(),
        _ => None,
    }
}

fn entry(
    event: &str,
    from: Option<String>,
    to: Option<String>,
    hourly: Option<crate::optimizer::Micros>,
    reason: Option<String>,
) -> Entry {
    Entry {
        at: book::rfc3339_now(),
        event: event.to_string(),
        from,
        to,
        hourly,
        reason,
    }
}
