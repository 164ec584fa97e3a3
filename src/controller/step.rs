//! One managed job's part of a pass (a step), run concurrently with the others'. A step
//! holds the engine, not the controller: it asks the loop to write the intents it needs
//! (see [`Worker::commit`]) and hands its run back when done; the loop alone keeps the book.
//! The decisions are the pure functions of [`super::policy`]; this file does the IO around
//! them: watch, launch (failover over the ranked placements), recover, cancel, remove.

use super::book::{self, Entry, Run};
use super::policy::{self, Phase, Policy, Seen, Verdict};
use super::reconcile::Stop;
use super::{Settings, relay};
use crate::engine::{Engine, Error, Notice};
use crate::model::Spec;
use crate::optimizer::Offering;
use crate::providers::{ErrorKind, ProviderError, Registry};
use crate::state::ResourceState;
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{Semaphore, mpsc, oneshot};

/// What a step of one managed job works with. It holds the engine, not the controller, so
/// steps run concurrently while the loop keeps the book.
pub(super) struct Worker<'e> {
    pub(super) engine: &'e Engine,
    pub(super) registry: Arc<Registry>,
    pub(super) settings: Settings,
    pub(super) launches: Semaphore,
    pub(super) calls: Semaphore,
    records: mpsc::UnboundedSender<Record>,
    /// What a managed job may be placed on, and when it was asked.
    offerings: tokio::sync::Mutex<Option<(Instant, Arc<Vec<Offering>>)>>,
}

/// A run a step needs in the book before it goes on (an intent), and where the loop says
/// once it is written.
pub(super) struct Record {
    pub(super) task: String,
    pub(super) run: Run,
    pub(super) done: oneshot::Sender<std::result::Result<(), Stop>>,
}

/// One managed job handed to a step.
pub(super) struct Job {
    pub(super) task: String,
    pub(super) run: Run,
    pub(super) declared: Option<ResourceState>,
    pub(super) upstream: Upstream,
    pub(super) lineage: String,
    pub(super) unknown: Option<String>,
}

/// What a step answers: the run as it left it (also after an error).
pub(super) struct Stepped {
    pub(super) task: String,
    pub(super) run: Run,
    pub(super) result: std::result::Result<(), Stop>,
    pub(super) unknown: Option<String>,
}

/// Where the managed jobs a managed job waits for are.
pub(super) enum Upstream {
    Ready,
    Waiting,
    Failed(String),
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

impl<'e> Worker<'e> {
    pub(super) fn new(
        engine: &'e Engine,
        settings: Settings,
        parallelism: usize,
        records: mpsc::UnboundedSender<Record>,
    ) -> Worker<'e> {
        Worker {
            engine,
            registry: engine.registry(),
            settings,
            launches: Semaphore::new(parallelism),
            calls: Semaphore::new(parallelism),
            records,
            offerings: tokio::sync::Mutex::new(None),
        }
    }
}

impl Worker<'_> {
    pub(super) fn say(&self, line: String) {
        self.engine.reporter().notice(Notice::Controller(line));
    }

    /// Puts `run` in the book as the record of `task` and waits until it is written: an
    /// intent before a call that makes something. The loop writes the records of all steps
    /// that ask at the same moment in one write.
    pub(super) async fn commit(&self, task: &str, run: &Run) -> std::result::Result<(), Stop> {
        let stopped = || Stop::Failed(Error::new("the controller is stopping"));
        let (done, written) = oneshot::channel();
        self.records
            .send(Record {
                task: task.to_string(),
                run: run.clone(),
                done,
            })
            .map_err(|_| stopped())?;
        written.await.map_err(|_| stopped())?
    }

    /// One managed job's part of a pass: its run as it left it, and why it stopped short.
    pub(super) async fn step(&self, job: Job) -> Stepped {
        let Job {
            task,
            mut run,
            declared,
            upstream,
            lineage,
            mut unknown,
        } = job;
        let result = self
            .step_run(
                &task,
                &mut run,
                declared.as_ref(),
                upstream,
                &lineage,
                &mut unknown,
            )
            .await;
        Stepped {
            task,
            run,
            result,
            unknown,
        }
    }

    async fn step_run(
        &self,
        task: &str,
        run: &mut Run,
        declared: Option<&ResourceState>,
        upstream: Upstream,
        lineage: &str,
        unknown: &mut Option<String>,
    ) -> std::result::Result<(), Stop> {
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
                self.remove_leftovers(run).await;
                if run.leftovers.is_empty() {
                    run.phase = Phase::Cancelled;
                    run.reason = Some("cancelled".into());
                    run.history.push(entry("cancelled", None, None, None, None));
                    self.relay_final(task, run);
                }
            }
            p if p.is_final() => {
                if let Some(c) = run.current.take() {
                    run.leftovers.push(c);
                }
                self.remove_leftovers(run).await;
            }
            _ => match (&run.current, declared) {
                (Some(_), _) => self.watch(task, run, declared, lineage, unknown).await?,
                (None, Some(res)) => match upstream {
                    Upstream::Ready => {
                        if run.retry_at.is_none_or(|at| book::now_ms() >= at) {
                            self.launch(task, run, res, lineage).await?;
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
                        self.relay_final(task, run);
                    }
                },
                // Not declared and not cancelled yet: the next tick cancels it.
                (None, None) => {}
            },
        }
        if !run.leftovers.is_empty() && !run.phase.is_final() {
            self.remove_leftovers(run).await;
        }
        Ok(())
    }

    /// Looks at a placement and acts on what the policy decides.
    async fn watch(
        &self,
        task: &str,
        run: &mut Run,
        declared: Option<&ResourceState>,
        lineage: &str,
        unknown: &mut Option<String>,
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
                    && unknown.as_ref() != Some(error)
                {
                    self.say(format!("{}: cannot ask about it now: {error}", run.address));
                    *unknown = Some(error.clone());
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
        &self,
        task: &str,
        run: &mut Run,
        res: &ResourceState,
        lineage: &str,
    ) -> std::result::Result<(), Stop> {
        let Spec::ManagedJob(m) = res.spec.as_ref() else {
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

    /// What a managed job may be placed on now (asked again at most every 30 s; steps
    /// launching at the same moment ask once).
    async fn offerings(&self) -> Arc<Vec<Offering>> {
        let mut cached = self.offerings.lock().await;
        if let Some((at, o)) = &*cached
            && at.elapsed() < Duration::from_secs(30)
        {
            return o.clone();
        }
        let o = Arc::new(match self.engine.offerings(true).await {
            Ok((o, _)) => o,
            Err(e) => {
                self.say(format!("cannot read the offerings: {e}"));
                Vec::new()
            }
        });
        *cached = Some((Instant::now(), o.clone()));
        o
    }
}
