//! The walk: starts each step once those it waits for are done, at most `parallelism`
//! provider calls at a time, and records every round of results in one state write.

use super::failover::{fails_over, unreachable};
use super::graph::{NodeId, Step, StepGraph};
use super::reevaluate::LateSpecs;
use super::step::{Outcome, Prepared, Start, record_success};
use super::{Applier, Event, Summary};
use crate::model::Address;
use crate::plan::{Action, Change, Plan};
use crate::providers::{Created, ProviderError};
use crate::state::{Attempt, State, StateError, Status};
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::{Duration, Instant};

pub(super) struct Walk<'w, 'a> {
    pub applier: &'w Applier<'a>,
    pub changes: BTreeMap<&'w Address, &'w Change>,
    graph: StepGraph,
    /// How many steps each step still waits for.
    waiting: BTreeMap<NodeId, usize>,
    /// Steps waiting for nothing, not started yet.
    ready: BTreeSet<NodeId>,
    /// Steps not done: waiting, ready, running, or failing over.
    pub unfinished: BTreeSet<NodeId>,
    /// Tasks in flight (a batch of job deletes on one cluster is one).
    running: usize,
    pub tasks: tokio::task::JoinSet<Vec<Outcome>>,
    /// Interrupted: no new step starts.
    pub stopping: bool,
    pub summary: Summary,
    pub late: LateSpecs,
    /// Placements ruled out so far, per create.
    pub blocked: BTreeMap<NodeId, BTreeSet<String>>,
    /// The failed attempts of each resource so far.
    pub attempts: BTreeMap<Address, Vec<Attempt>>,
    /// Resources the next state write records.
    pub changed: Vec<Address>,
    /// What is reported once that write is done.
    pub events: Vec<Event>,
    /// Steps that start after that write (it records their intents).
    pub starting: Vec<Start>,
    /// Creates of jobs whose intent is on record ahead of a free slot: many jobs are
    /// recorded in one write rather than `parallelism` at a time.
    ahead: VecDeque<Prepared>,
    /// Whether `changed` holds intents: those are written before anything starts.
    intents: bool,
    /// Progress lines from inside provider calls (the tasks hold senders), shown as they
    /// come.
    pub progress: tokio::sync::mpsc::UnboundedSender<crate::providers::ProgressLine>,
    progress_in: tokio::sync::mpsc::UnboundedReceiver<crate::providers::ProgressLine>,
}

/// How many job creates are recorded ahead of the calls.
const AHEAD: usize = 1000;

/// How long the results of finished steps may wait to be written together with others.
const COALESCE: Duration = Duration::from_millis(100);

impl<'w, 'a> Walk<'w, 'a> {
    pub fn new(applier: &'w Applier<'a>, plan: &'w Plan, state: &State) -> Walk<'w, 'a> {
        let changes: BTreeMap<&Address, &Change> = plan
            .changes
            .iter()
            .filter(|c| c.action.is_change())
            .map(|c| (&c.address, c))
            .collect();
        let graph = StepGraph::new(&changes, state);
        let waiting: BTreeMap<NodeId, usize> = graph
            .needs
            .iter()
            .map(|(n, ns)| (n.clone(), ns.len()))
            .collect();
        let ready = waiting
            .iter()
            .filter(|(_, d)| **d == 0)
            .map(|(n, _)| n.clone())
            .collect();
        let unfinished = graph.needs.keys().cloned().collect();
        let (progress, progress_in) = tokio::sync::mpsc::unbounded_channel();
        Walk {
            applier,
            changes,
            graph,
            waiting,
            ready,
            unfinished,
            running: 0,
            tasks: tokio::task::JoinSet::new(),
            stopping: false,
            summary: Summary::default(),
            late: LateSpecs::default(),
            blocked: BTreeMap::new(),
            attempts: BTreeMap::new(),
            changed: Vec::new(),
            events: Vec::new(),
            starting: Vec::new(),
            ahead: VecDeque::new(),
            intents: false,
            progress,
            progress_in,
        }
    }

    pub async fn run(mut self, state: &mut State) -> Result<Summary, StateError> {
        let mut interrupt = self.applier.interrupt.clone();
        let mut written = Instant::now();
        loop {
            if self.stopping {
                self.forget_ahead(state);
            } else {
                self.take_ready(state);
            }
            // Intents are written before their calls start: a create is on record as
            // `creating` first. Results wait a little, to be written with others.
            let idle = self.running + self.starting.len() == 0;
            if !self.changed.is_empty() && (self.intents || idle || written.elapsed() >= COALESCE) {
                let changed = std::mem::take(&mut self.changed);
                self.applier.save(state, &changed).await?;
                self.intents = false;
                written = Instant::now();
            }
            // What is reported is on record.
            if self.changed.is_empty() {
                for e in std::mem::take(&mut self.events) {
                    (self.applier.on_event)(&e);
                }
            }
            for s in std::mem::take(&mut self.starting) {
                self.running += 1;
                self.spawn(s, state);
            }
            if self.running == 0 {
                break;
            }
            let flush = tokio::time::Instant::from_std(written + COALESCE);
            let first = tokio::select! {
                joined = self.tasks.join_next() => joined,
                _ = interrupt.changed(), if !self.stopping => {
                    self.stopping = true;
                    self.summary.interrupted = true;
                    continue;
                }
                () = tokio::time::sleep_until(flush), if !self.changed.is_empty() => continue,
                Some((address, what)) = self.progress_in.recv() => {
                    (self.applier.on_event)(&Event::Progress { address, what });
                    continue;
                }
            };
            let Some(Ok(first)) = first else { break };
            // Whatever else has finished goes into the same state write.
            let mut outcomes = first;
            self.running -= 1;
            while let Some(Ok(more)) = self.tasks.try_join_next() {
                self.running -= 1;
                outcomes.extend(more);
            }
            for outcome in outcomes {
                self.finish(outcome, state);
            }
        }
        if self.stopping {
            for n in &self.unfinished {
                if !self.summary.skipped.contains(&n.0) {
                    self.summary.skipped.push(n.0.clone());
                }
            }
        }
        Ok(self.summary)
    }

    /// Prepares the ready steps that fit in `parallelism`: deletes of jobs of one cluster go
    /// together as one task.
    fn take_ready(&mut self, state: &mut State) {
        let mut slots = self
            .applier
            .parallelism
            .saturating_sub(self.running + self.starting.len());
        while slots > 0
            && let Some(p) = self.ahead.pop_front()
        {
            slots -= 1;
            self.starting.push(Start::One(Box::new(p)));
        }
        // Jobs are recorded ahead in large batches, not one write per free slot.
        let refill = self.ahead.len() <= AHEAD / 2;
        // Open batches of job deletes, by provider and cluster: their index in `starting`.
        let mut batches: BTreeMap<(String, Address), usize> = BTreeMap::new();
        while let Some(n) = self.ready.first().cloned() {
            let Some(change) = self.changes.get(&n.0).copied() else {
                self.ready.remove(&n);
                continue;
            };
            let ahead = refill && self.ahead.len() < AHEAD && new_job(&n, change, state);
            if slots == 0 && !ahead && (n.1 != Step::Delete || batches.is_empty()) {
                break;
            }
            self.ready.remove(&n);
            let p = match self.prepare(&n, change, state) {
                Ok(p) => p,
                Err(e) => Prepared::failed(n.clone(), e),
            };
            if p.intent {
                self.changed.push(n.0.clone());
                self.intents = true;
            }
            let key = p
                .job_delete_on(state)
                .map(|c| (p.provider.clone(), c.clone()));
            match key {
                Some(k) if batches.contains_key(&k) => {
                    if let Some(Start::Jobs { steps, .. }) =
                        batches.get(&k).and_then(|i| self.starting.get_mut(*i))
                    {
                        steps.push(p);
                    }
                }
                Some((provider, cluster)) if slots > 0 => {
                    slots -= 1;
                    batches.insert((provider.clone(), cluster.clone()), self.starting.len());
                    self.starting.push(Start::Jobs {
                        provider,
                        cluster,
                        steps: vec![p],
                    });
                }
                None if slots > 0 => {
                    slots -= 1;
                    self.starting.push(Start::One(Box::new(p)));
                }
                None if ahead => self.ahead.push_back(p),
                // A delete with no room left: nothing was recorded for it; it waits.
                _ => {
                    self.ready.insert(n);
                    break;
                }
            }
        }
    }

    /// Interrupted: the jobs recorded ahead never start, so they leave the state again.
    fn forget_ahead(&mut self, state: &mut State) {
        for p in std::mem::take(&mut self.ahead) {
            if p.intent {
                state.resources.remove(&p.node.0);
                self.changed.push(p.node.0);
            }
        }
    }

    /// Records a finished step.
    fn finish(&mut self, mut outcome: Outcome, state: &mut State) {
        let (addr, step) = outcome.node.clone();
        self.unfinished.remove(&outcome.node);
        self.late.state_changed();
        let change = self.changes.get(&addr).copied();
        self.changed.push(addr.clone());
        match std::mem::replace(&mut outcome.result, Ok(None)) {
            Ok(created) => self.succeeded(outcome, created, state),
            Err(e) if step == Step::Create && outcome.placement.is_some() && fails_over(e.kind) => {
                self.fail_over(outcome, e, state);
            }
            Err(e)
                if step == Step::Delete
                    && change.is_some_and(|c| c.action == Action::Replace)
                    && unreachable(e.kind) =>
            {
                // The old machines of a replaced resource cannot be reached (a dead host, a
                // region down): the replacement goes ahead, and they are kept as leftovers
                // that a later apply removes once they answer.
                if let Some(r) = state.resources.get_mut(&addr) {
                    r.keep_as_leftover();
                }
                self.events.push(Event::Done {
                    address: addr.clone(),
                    what: format!("left for a later clean-up ({})", e.message),
                    seconds: outcome.seconds,
                });
                self.release(&outcome.node, state);
            }
            Err(e) => {
                if step != Step::Delete
                    && let Some(r) = state.resources.get_mut(&addr)
                {
                    // The provider cleaned up what it could; replace it next time.
                    r.status = Status::Tainted;
                }
                self.fail(&outcome.node, e.message);
            }
        }
    }

    fn succeeded(&mut self, outcome: Outcome, created: Option<Created>, state: &mut State) {
        let (addr, step) = outcome.node.clone();
        let change = self.changes.get(&addr).copied();
        record_success(
            state,
            &addr,
            step,
            change,
            created,
            outcome.spec,
            &mut self.summary,
        );
        if let (Some(r), Some(p)) = (state.resources.get_mut(&addr), &outcome.placement) {
            // Where it really runs, and the attempts that led there.
            r.placement = Some(Box::new(p.clone()));
            r.provider = p.offering.cloud.clone();
            r.computed.insert(
                "placement".into(),
                serde_json::Value::String(p.offering.infra()),
            );
            if let Some(mut tried) = self.attempts.remove(&addr) {
                tried.push(Attempt {
                    infra: p.offering.infra(),
                    instance_type: p.offering.instance_type.clone(),
                    result: "ok".into(),
                    seconds: outcome.seconds,
                });
                r.attempts = tried;
            }
        }
        let what = match step {
            Step::Delete => "destroyed",
            Step::Create => "created",
            Step::Update => "updated",
        };
        self.events.push(Event::Done {
            address: addr,
            what: what.into(),
            seconds: outcome.seconds,
        });
        self.release(&outcome.node, state);
    }

    /// A step failed for good: it is a root cause, and what depends on it is skipped.
    pub fn fail(&mut self, node: &NodeId, message: String) {
        let addr = &node.0;
        self.events.push(Event::Failed {
            address: addr.clone(),
            error: message.clone(),
        });
        self.summary.failures.push((addr.clone(), message));
        let mut stack: Vec<NodeId> = self.graph.dependents(node).cloned().collect();
        while let Some(n) = stack.pop() {
            if !self.unfinished.remove(&n) {
                continue;
            }
            self.ready.remove(&n);
            self.events.push(Event::Skipped {
                address: n.0.clone(),
                because: addr.clone(),
            });
            if !self.summary.skipped.contains(&n.0) {
                self.summary.skipped.push(n.0.clone());
            }
            stack.extend(self.graph.dependents(&n).cloned());
        }
    }

    /// `n` is done: its dependents wait for one step fewer, and those waiting for none
    /// (and not finished) become ready. Jobs their cluster took with it are done at once.
    fn release(&mut self, n: &NodeId, state: &mut State) {
        let mut done = vec![n.clone()];
        while let Some(n) = done.pop() {
            for next in self.graph.dependents(&n) {
                let Some(d) = self.waiting.get_mut(next) else {
                    continue;
                };
                *d -= 1;
                if *d != 0 || !self.unfinished.contains(next) {
                    continue;
                }
                if next.1 == Step::Delete && self.graph.taken.contains(&next.0) {
                    self.unfinished.remove(next);
                    record_success(
                        state,
                        &next.0,
                        Step::Delete,
                        self.changes.get(&next.0).copied(),
                        None,
                        None,
                        &mut self.summary,
                    );
                    self.changed.push(next.0.clone());
                    self.events.push(Event::Done {
                        address: next.0.clone(),
                        what: "destroyed with its cluster".into(),
                        seconds: 0.0,
                    });
                    done.push(next.clone());
                } else {
                    self.ready.insert(next.clone());
                }
            }
        }
    }

    /// Steps of `change` in flight again after a failover: not finished.
    pub fn retry(&mut self, p: Prepared) {
        self.unfinished.insert(p.node.clone());
        if p.intent {
            self.changed.push(p.node.0.clone());
            self.intents = true;
        }
        self.starting.push(Start::One(Box::new(p)));
    }

    pub fn failed_to_start(&mut self, node: NodeId, e: ProviderError) {
        self.unfinished.insert(node.clone());
        self.starting
            .push(Start::One(Box::new(Prepared::failed(node, e))));
    }
}

/// A create of a job that state has no record of (recording it early changes nothing that
/// was there).
fn new_job(n: &NodeId, change: &Change, state: &State) -> bool {
    n.1 == Step::Create
        && change.action == Action::Create
        && matches!(change.after.as_deref(), Some(crate::model::Spec::Job(_)))
        && !state.resources.contains_key(&n.0)
}
