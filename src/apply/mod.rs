//! Apply: walk the plan's changes as a dependency graph, concurrently, writing state after
//! every change. A failure skips only what depends on it; Ctrl-C lets in-flight work finish.

use crate::model::{Address, Spec};
use crate::plan::{Action, Change, Plan};
use crate::providers::{Created, ProviderError, Registry, Request};
use crate::state::{OutputState, ResourceState, State, StateError, StateStore, Status};
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How hard apply tries a placement before moving down the plan's list.
#[derive(Debug, Clone)]
pub struct FailoverOptions {
    /// Each attempt (one placement, retries included) gets this long; then what it made is
    /// removed and its region blocked, so a hung region cannot stall the chain.
    pub attempt_timeout: Duration,
    /// Calls of one attempt for a transient error (throttling, 5xx), the first included.
    pub transient_tries: u32,
    /// The first pause between those calls; it doubles each time.
    pub backoff: Duration,
    /// With `retry_until_up`, the pause before going down the list again.
    pub retry_delay: Duration,
}

impl Default for FailoverOptions {
    fn default() -> Self {
        FailoverOptions {
            attempt_timeout: Duration::from_secs(120),
            transient_tries: 3,
            backoff: Duration::from_secs(1),
            retry_delay: Duration::from_secs(30),
        }
    }
}

/// One step of the walk: a replace is a delete and a create.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Step {
    Delete,
    Create,
    Update,
}

/// What apply reports as it goes.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    Started {
        address: Address,
        what: String,
    },
    Done {
        address: Address,
        what: String,
        seconds: f64,
    },
    /// A placement had no room (or no quota, or the cloud refused): the next one is tried.
    FailedOver {
        address: Address,
        infra: String,
        instance_type: String,
        error: String,
        seconds: f64,
        /// What the failure ruled out: `zone us-east-1a`, `region us-east-1`, `cloud aws`.
        blocked: String,
        next: String,
    },
    Failed {
        address: Address,
        error: String,
    },
    Skipped {
        address: Address,
        because: Address,
    },
    StateWritten {
        serial: u64,
    },
}

#[derive(Debug, Default, Clone, PartialEq)]
pub struct Summary {
    /// Clusters taken into state by `import` blocks (done before the walk, by the CLI).
    pub imported: usize,
    pub added: usize,
    pub changed: usize,
    pub replaced: usize,
    pub destroyed: usize,
    /// Root causes: the failures that skipped other work.
    pub failures: Vec<(Address, String)>,
    pub skipped: Vec<Address>,
    pub interrupted: bool,
}

impl Summary {
    pub fn ok(&self) -> bool {
        self.failures.is_empty() && !self.interrupted
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error(transparent)]
    State(#[from] StateError),
}

pub struct Applier<'a> {
    pub registry: Arc<Registry>,
    pub store: &'a dyn StateStore,
    pub root: PathBuf,
    pub parallelism: usize,
    pub on_event: &'a (dyn Fn(&Event) + Send + Sync),
    /// Becomes true on Ctrl-C: no new step starts.
    pub interrupt: tokio::sync::watch::Receiver<bool>,
    /// Evaluates the configuration again against the state, for values that were unknown at
    /// plan time (`${cluster.dev.head_ip}`).
    pub resolve: Option<&'a Resolve<'a>>,
    pub failover: FailoverOptions,
}

impl std::fmt::Debug for Applier<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Applier")
            .field("root", &self.root)
            .finish_non_exhaustive()
    }
}

type NodeId = (Address, Step);

struct Outcome {
    node: NodeId,
    result: Result<Option<Created>, ProviderError>,
    seconds: f64,
    /// The spec the step used (with values unknown at plan time filled in).
    spec: Option<Spec>,
    /// The placement it tried.
    placement: Option<crate::optimizer::Candidate>,
    /// A failed attempt whose clean-up could not be confirmed.
    left_behind: bool,
}

impl Applier<'_> {
    async fn save(&self, state: &mut State, changed: &[Address]) -> Result<(), StateError> {
        state.serial += 1;
        tracing::debug!(
            serial = state.serial,
            changed = changed.len(),
            "writing state"
        );
        self.store.write_changes(state, changed).await?;
        (self.on_event)(&Event::StateWritten {
            serial: state.serial,
        });
        Ok(())
    }

    /// Carries out `plan` against `state` (already refreshed and locked by the caller).
    pub async fn apply(&self, plan: &Plan, state: &mut State) -> Result<Summary, ApplyError> {
        let changes: BTreeMap<&Address, &Change> = plan
            .changes
            .iter()
            .filter(|c| c.action.is_change())
            .map(|c| (&c.address, c))
            .collect();
        self.clean_leftovers(state).await?;
        let graph = StepGraph::new(&changes, state);
        let mut indegree: BTreeMap<NodeId, usize> = graph
            .needs
            .iter()
            .map(|(n, ns)| (n.clone(), ns.len()))
            .collect();
        let mut ready: BTreeSet<NodeId> = indegree
            .iter()
            .filter(|(_, d)| **d == 0)
            .map(|(n, _)| n.clone())
            .collect();
        let mut summary = Summary::default();
        let mut unfinished: BTreeSet<NodeId> = graph.needs.keys().cloned().collect();
        let mut running = 0usize;
        let mut set: tokio::task::JoinSet<Outcome> = tokio::task::JoinSet::new();
        let mut interrupt = self.interrupt.clone();
        let mut stopping = false;
        let mut resolved = Resolved::default();
        // Failover bookkeeping: placements blocked per step, attempts per resource.
        let mut failover: BTreeMap<NodeId, BTreeSet<String>> = BTreeMap::new();
        let mut attempts: BTreeMap<Address, Vec<crate::state::Attempt>> = BTreeMap::new();
        let mut retry: Vec<(NodeId, &Change, crate::optimizer::Candidate, Duration)> = Vec::new();
        loop {
            // Start what is ready: intents for the whole batch in one state write.
            if !stopping {
                let batch: Vec<NodeId> = ready
                    .iter()
                    .take(self.parallelism.saturating_sub(running))
                    .cloned()
                    .collect();
                let mut prepared = Vec::new();
                let mut intents = Vec::new();
                for n in batch {
                    ready.remove(&n);
                    let Some(change) = changes.get(&n.0) else {
                        continue;
                    };
                    match self.prepare(&n, change, state, &mut resolved) {
                        Ok(p) => {
                            if p.intent {
                                intents.push(n.0.clone());
                            }
                            prepared.push(p);
                        }
                        Err(e) => prepared.push(Prepared::failed(n, e)),
                    }
                }
                if !intents.is_empty() {
                    self.save(state, &intents).await?;
                }
                for p in prepared {
                    running += 1;
                    self.spawn(p, state, &mut set);
                }
            }
            if running == 0 {
                break;
            }
            let first = tokio::select! {
                joined = set.join_next() => joined,
                _ = interrupt.changed(), if !stopping => {
                    stopping = true;
                    summary.interrupted = true;
                    continue;
                }
            };
            let Some(Ok(first)) = first else { break };
            // Whatever else has finished goes into the same state write.
            let mut outcomes = vec![first];
            while let Some(Ok(o)) = set.try_join_next() {
                outcomes.push(o);
            }
            running -= outcomes.len();
            let mut changed = Vec::new();
            let mut events = Vec::new();
            for outcome in outcomes {
                let (addr, step) = outcome.node.clone();
                unfinished.remove(&outcome.node);
                let change = changes.get(&addr).copied();
                changed.push(addr.clone());
                match outcome.result {
                    Ok(created) => {
                        record_success(
                            state,
                            &addr,
                            step,
                            change,
                            created,
                            outcome.spec,
                            &mut summary,
                        );
                        if let (Some(r), Some(p)) =
                            (state.resources.get_mut(&addr), &outcome.placement)
                        {
                            // Where it really runs, and the attempts that led there.
                            r.placement = Some(p.clone());
                            r.provider = p.offering.cloud.clone();
                            r.computed.insert(
                                "placement".into(),
                                serde_json::Value::String(p.offering.infra()),
                            );
                            if let Some(mut tried) = attempts.remove(&addr) {
                                tried.push(crate::state::Attempt {
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
                        events.push(Event::Done {
                            address: addr.clone(),
                            what: what.into(),
                            seconds: outcome.seconds,
                        });
                        graph.release(&outcome.node, &mut indegree, &unfinished, &mut ready);
                    }
                    Err(e)
                        if step == Step::Create
                            && outcome.placement.is_some()
                            && fails_over(e.kind) =>
                    {
                        let tried = outcome.placement.clone().expect("checked");
                        if outcome.left_behind
                            && let Some(r) = state.resources.get_mut(&addr)
                        {
                            // Its region did not confirm the clean-up: remember what to remove.
                            r.keep_as_leftover();
                        }
                        let blocked = failover.entry(outcome.node.clone()).or_default();
                        blocked.insert(block_for(e.kind, &tried));
                        let attempt = crate::state::Attempt {
                            infra: tried.offering.infra(),
                            instance_type: tried.offering.instance_type.clone(),
                            result: e.message.clone(),
                            seconds: outcome.seconds,
                        };
                        attempts.entry(addr.clone()).or_default().push(attempt);
                        let mut next = change.and_then(|c| {
                            c.candidates
                                .iter()
                                .find(|c| !crate::optimizer::is_blocked(blocked, c))
                                .cloned()
                        });
                        let mut delay = Duration::ZERO;
                        let until_up = matches!(
                            outcome.spec.as_ref(),
                            Some(Spec::Cluster(c)) if c.retry_until_up
                        );
                        if next.is_none() && until_up && !stopping {
                            // retry_until_up: start over from the top after a pause.
                            blocked.clear();
                            next = change.and_then(|c| c.candidates.first().cloned());
                            delay = self.failover.retry_delay;
                        }
                        match (next, change) {
                            (Some(next), Some(ch)) => {
                                let mut to = format!(
                                    "{} {}",
                                    next.offering.infra(),
                                    next.offering.instance_type
                                );
                                if !delay.is_zero() {
                                    to = format!(
                                        "{to} (every placement failed; retry_until_up starts over in {})",
                                        humantime::format_duration(delay)
                                    );
                                }
                                events.push(Event::FailedOver {
                                    address: addr.clone(),
                                    infra: tried.offering.infra(),
                                    instance_type: tried.offering.instance_type.clone(),
                                    error: e.message.clone(),
                                    seconds: outcome.seconds,
                                    blocked: blocked_what(e.kind, &tried),
                                    next: to,
                                });
                                unfinished.insert(outcome.node.clone());
                                retry.push((outcome.node.clone(), ch, next, delay));
                            }
                            _ => {
                                let tried_all = attempts.get(&addr).map_or(0, Vec::len);
                                let message = format!(
                                    "{} (no placement left after {tried_all} attempt{})",
                                    e.message,
                                    if tried_all == 1 { "" } else { "s" }
                                );
                                if let Some(r) = state.resources.get_mut(&addr) {
                                    r.status = Status::Tainted;
                                    r.attempts = attempts.get(&addr).cloned().unwrap_or_default();
                                }
                                events.push(Event::Failed {
                                    address: addr.clone(),
                                    error: message.clone(),
                                });
                                summary.failures.push((addr.clone(), message));
                                skip_downstream(
                                    &graph,
                                    &outcome.node,
                                    &addr,
                                    &mut unfinished,
                                    &mut ready,
                                    &mut events,
                                    &mut summary,
                                );
                            }
                        }
                    }
                    Err(e)
                        if step == Step::Delete
                            && change.is_some_and(|c| c.action == Action::Replace)
                            && unreachable(e.kind) =>
                    {
                        // The old machines of a replaced resource cannot be reached (a dead
                        // host, a region down): the replacement goes ahead, and they are kept
                        // as leftovers that a later apply removes once they answer.
                        if let Some(r) = state.resources.get_mut(&addr) {
                            r.keep_as_leftover();
                        }
                        events.push(Event::Done {
                            address: addr.clone(),
                            what: format!("left for a later clean-up ({})", e.message),
                            seconds: outcome.seconds,
                        });
                        graph.release(&outcome.node, &mut indegree, &unfinished, &mut ready);
                    }
                    Err(e) => {
                        if step != Step::Delete
                            && let Some(r) = state.resources.get_mut(&addr)
                        {
                            // The provider cleaned up what it could; replace it next time.
                            r.status = Status::Tainted;
                        }
                        events.push(Event::Failed {
                            address: addr.clone(),
                            error: e.message.clone(),
                        });
                        summary.failures.push((addr.clone(), e.message));
                        skip_downstream(
                            &graph,
                            &outcome.node,
                            &addr,
                            &mut unfinished,
                            &mut ready,
                            &mut events,
                            &mut summary,
                        );
                    }
                }
            }
            // Failover: record the new intent (the next placement), then try it.
            let mut respawn = Vec::new();
            for (node, ch, next, delay) in retry.drain(..) {
                match self.prepare_at(&node, ch, state, next) {
                    Ok(mut p) => {
                        p.delay = delay;
                        respawn.push(p);
                    }
                    Err(e) => respawn.push(Prepared::failed(node, e)),
                }
            }
            self.save(state, &changed).await?;
            for e in &events {
                (self.on_event)(e);
            }
            for p in respawn {
                running += 1;
                self.spawn(p, state, &mut set);
            }
        }
        if stopping {
            for n in &unfinished {
                if !summary.skipped.contains(&n.0) {
                    summary.skipped.push(n.0.clone());
                }
            }
        }
        Ok(summary)
    }

    /// As [`Self::prepare`] for a create at a given placement (failing over to it).
    fn prepare_at(
        &self,
        node: &NodeId,
        change: &Change,
        state: &mut State,
        at: crate::optimizer::Candidate,
    ) -> Result<Prepared, ProviderError> {
        let spec = state
            .resources
            .get(&node.0)
            .map(|r| r.spec.clone())
            .or_else(|| change.after.clone())
            .ok_or_else(|| ProviderError::other("the plan has no specification for this step"))?;
        let provider = at.offering.cloud.clone();
        let p = self.registry.get(&provider).ok_or_else(|| {
            ProviderError::other(format!(
                "provider {provider:?} is not available in this build"
            ))
        })?;
        let private = p.new_private(&node.0, &spec, &state.lineage);
        if let Some(r) = state.resources.get_mut(&node.0) {
            r.status = Status::Creating;
            r.provider = provider.clone();
            r.private = private;
            r.placement = Some(at.clone());
        }
        Ok(Prepared {
            node: node.clone(),
            provider,
            spec: Some(spec),
            what: format!("creating on {}", at.offering.infra()),
            placement: Some(at),
            after: afterok(change),
            intent: true,
            error: None,
            delay: Duration::ZERO,
        })
    }

    /// Decides what a step will call, with the spec it will use; for a create, records the
    /// intent (the identifiers the provider will use) in `state` first.
    fn prepare(
        &self,
        node: &NodeId,
        change: &Change,
        state: &mut State,
        resolved: &mut Resolved,
    ) -> Result<Prepared, ProviderError> {
        let (addr, step) = node.clone();
        let spec = match step {
            Step::Delete => change.before.clone(),
            _ => change.after.clone(),
        };
        let Some(mut spec) = spec else {
            return Err(ProviderError::other(
                "the plan has no specification for this step",
            ));
        };
        if step != Step::Delete
            && crate::model::contains_unknown(&serde_json::Value::Object(spec.attributes()))
        {
            spec = resolved.spec_for(self.resolve, state, &addr, &spec)?;
        }
        let provider = match step {
            Step::Delete => state
                .resources
                .get(&addr)
                .map(|r| r.provider.clone())
                .unwrap_or_else(|| "local".into()),
            _ => provider_for(&spec, change, state),
        };
        let Some(p) = self.registry.get(&provider) else {
            return Err(ProviderError::other(format!(
                "provider {provider:?} is not available in this build"
            )));
        };
        let mut intent = false;
        if step == Step::Create {
            // Intent first: if skyform dies during the call, refresh finds what was made.
            let private = p.new_private(&addr, &spec, &state.lineage);
            state.resources.insert(
                addr.clone(),
                ResourceState {
                    status: Status::Creating,
                    provider: provider.clone(),
                    spec: spec.clone(),
                    computed: BTreeMap::new(),
                    private,
                    placement: change.candidates.first().cloned(),
                    dependencies: change.depends_on.clone(),
                    sensitive: change.sensitive.clone(),
                    attempts: Vec::new(),
                    // What earlier attempts or a replaced predecessor left stays on record.
                    leftovers: state
                        .resources
                        .get(&addr)
                        .map(|r| r.leftovers.clone())
                        .unwrap_or_default(),
                },
            );
            intent = true;
        }
        let what = match step {
            Step::Delete => "destroying".to_string(),
            Step::Update => "updating".to_string(),
            Step::Create => match change.candidates.first() {
                Some(p) => format!("creating on {}", p.offering.infra()),
                None => "creating".to_string(),
            },
        };
        Ok(Prepared {
            node: node.clone(),
            provider,
            spec: Some(spec),
            placement: change.candidates.first().cloned(),
            // Jobs start after the jobs and managed jobs they depend on succeeded (afterok).
            after: afterok(change),
            what,
            intent,
            error: None,
            delay: Duration::ZERO,
        })
    }

    /// Starts the provider call of a prepared step.
    fn spawn(&self, p: Prepared, state: &State, set: &mut tokio::task::JoinSet<Outcome>) {
        let (addr, step) = p.node.clone();
        if let Some(error) = p.error {
            set.spawn(async move {
                Outcome {
                    node: (addr, step),
                    result: Err(error),
                    seconds: 0.0,
                    spec: None,
                    placement: None,
                    left_behind: false,
                }
            });
            return;
        }
        let Some(spec) = p.spec else { return };
        let current = state.resources.get(&addr).cloned();
        let cluster = match &spec {
            Spec::Job(j) => state.resources.get(&j.cluster).cloned(),
            _ => None,
        };
        let after: Vec<(Address, ResourceState)> = p
            .after
            .iter()
            .filter_map(|d| state.resources.get(d).map(|r| (d.clone(), r.clone())))
            .collect();
        (self.on_event)(&Event::Started {
            address: addr.clone(),
            what: p.what,
        });
        tracing::debug!(address = %addr, ?step, provider = %p.provider, "starting step");
        let registry = self.registry.clone();
        let root = self.root.clone();
        let placement = p.placement;
        let provider = p.provider;
        let opts = self.failover.clone();
        let delay = p.delay;
        let mut interrupt = self.interrupt.clone();
        set.spawn(async move {
            let mut outcome = Outcome {
                node: (addr.clone(), step),
                result: Ok(None),
                seconds: 0.0,
                spec: None,
                placement: placement.clone(),
                left_behind: false,
            };
            if !delay.is_zero() {
                tokio::select! {
                    () = tokio::time::sleep(delay) => {}
                    _ = interrupt.wait_for(|stop| *stop) => {
                        outcome.result = Err(ProviderError::other("interrupted while waiting to try again"));
                        return outcome;
                    }
                }
            }
            let t = Instant::now();
            outcome.result = match (registry.get(&provider), current) {
                (None, _) => Err(ProviderError::other(format!(
                    "provider {provider:?} is not available"
                ))),
                (Some(_), None) if step == Step::Delete => Ok(None),
                (Some(_), None) => Err(ProviderError::other("the resource vanished from state")),
                (Some(prov), Some(current)) => match step {
                    Step::Delete => prov
                        .delete(&addr, &current, cluster.as_ref())
                        .await
                        .map(|()| None),
                    Step::Create | Step::Update => {
                        let req = Request {
                            address: &addr,
                            spec: &spec,
                            private: &current.private,
                            placement: placement.as_ref(),
                            cluster: cluster.as_ref(),
                            after: after.iter().map(|(a, r)| (a, r)).collect(),
                            root,
                        };
                        if step == Step::Update {
                            prov.update(req).await.map(Some)
                        } else if placement.is_some() {
                            let (result, left) = attempt(prov, req, &current, &opts).await;
                            outcome.left_behind = left;
                            result.map(Some)
                        } else {
                            prov.create(req).await.map(Some)
                        }
                    }
                },
            };
            outcome.seconds = t.elapsed().as_secs_f64();
            outcome.spec = Some(spec);
            outcome
        });
    }

    /// Removes what earlier attempts may have left behind (their regions did not answer
    /// then), and forgets those that are gone.
    async fn clean_leftovers(&self, state: &mut State) -> Result<(), StateError> {
        let mut changed = Vec::new();
        for (addr, r) in state.resources.iter_mut() {
            if r.leftovers.is_empty() {
                continue;
            }
            let mut kept = Vec::new();
            for l in std::mem::take(&mut r.leftovers) {
                let Some(p) = self.registry.get(&l.provider) else {
                    kept.push(l);
                    continue;
                };
                let mut old = r.clone();
                old.private = l.private.clone();
                old.placement = l.placement.clone();
                old.status = Status::Creating;
                old.leftovers.clear();
                let gone =
                    tokio::time::timeout(self.failover.attempt_timeout, p.delete(addr, &old, None))
                        .await;
                match gone {
                    Ok(Ok(())) => {
                        (self.on_event)(&Event::Done {
                            address: addr.clone(),
                            what: "removed what an earlier attempt left behind".into(),
                            seconds: 0.0,
                        });
                    }
                    _ => kept.push(l),
                }
            }
            if kept.is_empty() {
                changed.push(addr.clone());
            }
            r.leftovers = kept;
        }
        if !changed.is_empty() {
            self.save(state, &changed).await?;
        }
        Ok(())
    }
}

/// One attempt at a placement: transient errors are retried with backoff, the whole attempt
/// is bounded by the timeout, and a failed attempt's remains are removed before the engine
/// moves on. Returns the result and whether that clean-up could not be confirmed.
async fn attempt(
    prov: &dyn crate::providers::Provider,
    req: Request<'_>,
    current: &ResourceState,
    opts: &FailoverOptions,
) -> (Result<Created, ProviderError>, bool) {
    use crate::providers::ErrorKind;
    let tries = async {
        let mut n = 0u32;
        loop {
            match prov.create(req.clone()).await {
                Err(e) if e.kind == ErrorKind::Transient && n + 1 < opts.transient_tries => {
                    tracing::debug!(address = %req.address, error = %e, "retrying");
                    tokio::time::sleep(opts.backoff.saturating_mul(1 << n.min(16))).await;
                    n += 1;
                }
                r => return r,
            }
        }
    };
    let result = if prov.create_is_bounded() {
        match tokio::time::timeout(opts.attempt_timeout, tries).await {
            Ok(r) => r,
            Err(_) => Err(ProviderError {
                kind: ErrorKind::Timeout,
                message: format!(
                    "no answer within {} (the attempt timeout)",
                    humantime::format_duration(opts.attempt_timeout)
                ),
            }),
        }
    } else {
        tries.await
    };
    match result {
        Err(e) if fails_over(e.kind) => {
            // Nothing of this attempt may stay running once the engine moves on.
            let cleaned = tokio::time::timeout(
                opts.attempt_timeout,
                prov.delete(req.address, current, req.cluster),
            )
            .await;
            (Err(e), !matches!(cleaned, Ok(Ok(()))))
        }
        r => (r, false),
    }
}

/// A step ready to start.
struct Prepared {
    node: NodeId,
    provider: String,
    spec: Option<Spec>,
    placement: Option<crate::optimizer::Candidate>,
    /// Jobs that must succeed first.
    after: Vec<Address>,
    what: String,
    /// Whether `prepare` recorded an intent that must be written before the call.
    intent: bool,
    error: Option<ProviderError>,
    /// A pause before the call (retry_until_up).
    delay: Duration,
}

impl Prepared {
    fn failed(node: NodeId, error: ProviderError) -> Prepared {
        Prepared {
            node,
            provider: String::new(),
            spec: None,
            placement: None,
            after: Vec::new(),
            what: String::new(),
            intent: false,
            error: Some(error),
            delay: Duration::ZERO,
        }
    }
}

/// Values that were unknown when planning, evaluated again once what they depend on exists.
#[derive(Default)]
struct Resolved {
    serial: Option<u64>,
    specs: BTreeMap<Address, Spec>,
}

impl Resolved {
    fn spec_for(
        &mut self,
        resolve: Option<&Resolve<'_>>,
        state: &State,
        addr: &Address,
        planned: &Spec,
    ) -> Result<Spec, ProviderError> {
        let Some(resolve) = resolve else {
            return Err(ProviderError::other(
                "values unknown at plan time cannot be resolved here",
            ));
        };
        // A spec resolved once all it depends on was applied stays right; evaluate again only
        // for one that was still unknown (and only when the state has moved since).
        let settled = self.specs.get(addr).is_some_and(|f| {
            !crate::model::contains_unknown(&serde_json::Value::Object(f.attributes()))
        });
        if !settled && self.serial != Some(state.serial) {
            self.specs = resolve(state);
            self.serial = Some(state.serial);
        }
        let fresh = self.specs.get(addr).ok_or_else(|| {
            ProviderError::other("the configuration no longer declares this resource")
        })?;
        let (p, f) = (planned.attributes(), fresh.attributes());
        for (k, v) in &p {
            if crate::model::contains_unknown(v) {
                continue;
            }
            if f.get(k) != Some(v) {
                return Err(ProviderError::other(format!(
                    "{k} changed between plan and apply; make a new plan"
                )));
            }
        }
        if crate::model::contains_unknown(&serde_json::Value::Object(f)) {
            return Err(ProviderError::other(
                "a value is still unknown after everything it depends on was applied",
            ));
        }
        Ok(fresh.clone())
    }
}

/// Re-evaluates the configuration against a state: the specs of every instance.
pub type Resolve<'a> = dyn Fn(&State) -> BTreeMap<Address, Spec> + Send + Sync + 'a;

/// The steps of an apply and the order between them.
struct StepGraph {
    needs: BTreeMap<NodeId, BTreeSet<NodeId>>,
    dependents: BTreeMap<NodeId, BTreeSet<NodeId>>,
}

impl StepGraph {
    fn new(changes: &BTreeMap<&Address, &Change>, state: &State) -> StepGraph {
        let mut nodes: BTreeSet<NodeId> = BTreeSet::new();
        for c in changes.values() {
            match c.action {
                Action::Create => {
                    nodes.insert((c.address.clone(), Step::Create));
                }
                Action::Update => {
                    nodes.insert((c.address.clone(), Step::Update));
                }
                Action::Delete => {
                    nodes.insert((c.address.clone(), Step::Delete));
                }
                Action::Replace => {
                    nodes.insert((c.address.clone(), Step::Delete));
                    nodes.insert((c.address.clone(), Step::Create));
                }
                Action::NoOp => {}
            }
        }
        // Who depends on whom in the prior state (for deletes), computed once.
        let mut users: BTreeMap<&Address, Vec<&Address>> = BTreeMap::new();
        for (other, res) in &state.resources {
            for d in &res.dependencies {
                users.entry(d).or_default().push(other);
            }
        }
        let mut needs: BTreeMap<NodeId, BTreeSet<NodeId>> =
            nodes.iter().map(|n| (n.clone(), BTreeSet::new())).collect();
        for n in &nodes {
            let (addr, step) = n;
            let Some(c) = changes.get(addr) else { continue };
            let add = |needs: &mut BTreeMap<NodeId, BTreeSet<NodeId>>, m: NodeId| {
                if nodes.contains(&m) {
                    needs.entry(n.clone()).or_default().insert(m);
                }
            };
            match step {
                Step::Create | Step::Update => {
                    for d in &c.depends_on {
                        add(&mut needs, (d.clone(), Step::Create));
                        add(&mut needs, (d.clone(), Step::Update));
                    }
                    if *step == Step::Create && !c.create_before_destroy {
                        add(&mut needs, (addr.clone(), Step::Delete));
                    }
                }
                Step::Delete => {
                    // Delete what uses it first.
                    for other in users.get(addr).into_iter().flatten() {
                        add(&mut needs, ((*other).clone(), Step::Delete));
                    }
                    if c.create_before_destroy {
                        add(&mut needs, (addr.clone(), Step::Create));
                    }
                }
            }
        }
        let mut dependents: BTreeMap<NodeId, BTreeSet<NodeId>> = BTreeMap::new();
        for (n, ns) in &needs {
            for m in ns {
                dependents.entry(m.clone()).or_default().insert(n.clone());
            }
        }
        StepGraph { needs, dependents }
    }

    fn dependents(&self, n: &NodeId) -> impl Iterator<Item = &NodeId> {
        self.dependents.get(n).into_iter().flatten()
    }

    /// `n` is done: its dependents wait for one step fewer, and those waiting for none
    /// (and not finished) become ready.
    fn release(
        &self,
        n: &NodeId,
        indegree: &mut BTreeMap<NodeId, usize>,
        unfinished: &BTreeSet<NodeId>,
        ready: &mut BTreeSet<NodeId>,
    ) {
        for next in self.dependents(n) {
            if let Some(d) = indegree.get_mut(next) {
                *d -= 1;
                if *d == 0 && unfinished.contains(next) {
                    ready.insert(next.clone());
                }
            }
        }
    }
}

/// The jobs and managed jobs a step must wait for (they must succeed first: afterok).
fn afterok(change: &Change) -> Vec<Address> {
    change
        .depends_on
        .iter()
        .filter(|d| {
            matches!(
                d.kind,
                crate::model::Kind::Job | crate::model::Kind::ManagedJob
            )
        })
        .cloned()
        .collect()
}

/// Errors that move a create to the next placement rather than failing it.
fn fails_over(kind: crate::providers::ErrorKind) -> bool {
    use crate::providers::ErrorKind;
    matches!(
        kind,
        ErrorKind::Capacity
            | ErrorKind::Quota
            | ErrorKind::Config
            | ErrorKind::Transient
            | ErrorKind::Timeout
    )
}

/// What a failure blocks: capacity the placement (its zone, or the instance type in its
/// region), quota the region, configuration or credentials the whole cloud; a region that
/// timed out or kept failing transiently is blocked too, so the chain moves on.
fn block_for(kind: crate::providers::ErrorKind, c: &crate::optimizer::Candidate) -> String {
    use crate::providers::ErrorKind;
    let o = &c.offering;
    match kind {
        ErrorKind::Quota | ErrorKind::Timeout | ErrorKind::Transient => match &o.region {
            Some(r) => format!("{}/{r}", o.cloud),
            None => o.cloud.clone(),
        },
        ErrorKind::Config => o.cloud.clone(),
        _ if o.zone.is_some() => o.infra(),
        _ => c.key(),
    }
}

/// Errors that say the machines could not be reached, rather than refused.
fn unreachable(kind: crate::providers::ErrorKind) -> bool {
    use crate::providers::ErrorKind;
    matches!(
        kind,
        ErrorKind::Capacity | ErrorKind::Transient | ErrorKind::Timeout
    )
}

/// [`block_for`] in words, for the apply output: `aws/us-east-1 blocked`.
fn blocked_what(kind: crate::providers::ErrorKind, c: &crate::optimizer::Candidate) -> String {
    format!("{} blocked", block_for(kind, c).replace(':', " "))
}

/// Marks everything downstream of a failed step as skipped, naming the root cause.
fn skip_downstream(
    graph: &StepGraph,
    failed: &NodeId,
    cause: &Address,
    unfinished: &mut BTreeSet<NodeId>,
    ready: &mut BTreeSet<NodeId>,
    events: &mut Vec<Event>,
    summary: &mut Summary,
) {
    let mut stack: Vec<NodeId> = graph.dependents(failed).cloned().collect();
    while let Some(n) = stack.pop() {
        if !unfinished.remove(&n) {
            continue;
        }
        ready.remove(&n);
        events.push(Event::Skipped {
            address: n.0.clone(),
            because: cause.clone(),
        });
        if !summary.skipped.contains(&n.0) {
            summary.skipped.push(n.0.clone());
        }
        stack.extend(graph.dependents(&n).cloned());
    }
}

/// Records a successful step in state.
fn record_success(
    state: &mut State,
    addr: &Address,
    step: Step,
    change: Option<&Change>,
    created: Option<Created>,
    spec: Option<Spec>,
    summary: &mut Summary,
) {
    match step {
        Step::Delete => {
            state.resources.remove(addr);
            if change.is_some_and(|c| c.action == Action::Delete) {
                summary.destroyed += 1;
            }
        }
        Step::Create | Step::Update => {
            if let (Some(r), Some(c)) = (state.resources.get_mut(addr), created) {
                r.status = Status::Ready;
                // An update keeps what the provider did not report again.
                r.computed.extend(c.computed);
                r.private = c.private;
                if let Some(spec) = spec {
                    r.spec = spec;
                }
                if let Some(ch) = change {
                    r.dependencies = ch.depends_on.clone();
                    r.sensitive = ch.sensitive.clone();
                    if let Some(p) = ch.candidates.first() {
                        r.placement = Some(p.clone());
                        r.computed.insert(
                            "placement".into(),
                            serde_json::Value::String(p.offering.infra()),
                        );
                    }
                }
            }
            match change.map(|c| c.action) {
                Some(Action::Create) => summary.added += 1,
                Some(Action::Update) => summary.changed += 1,
                Some(Action::Replace) => summary.replaced += 1,
                _ => {}
            }
        }
    }
}

/// Which provider a resource goes to: its placement's cloud, or its cluster's provider.
fn provider_for(spec: &Spec, change: &Change, state: &State) -> String {
    if let Spec::Job(j) = spec {
        return state
            .resources
            .get(&j.cluster)
            .map(|c| c.provider.clone())
            .unwrap_or_else(|| "local".into());
    }
    change
        .candidates
        .first()
        .map(|c| c.offering.cloud.clone())
        .unwrap_or_else(|| "local".into())
}

/// Stores the outputs evaluated after apply.
pub fn set_outputs(state: &mut State, outputs: &BTreeMap<String, crate::config::OutputValue>) {
    state.outputs = outputs
        .iter()
        .map(|(k, v)| {
            (
                k.clone(),
                OutputState {
                    value: v.value.clone(),
                    sensitive: v.sensitive,
                },
            )
        })
        .collect();
}
