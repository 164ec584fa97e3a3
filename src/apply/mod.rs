//! Apply: walk the plan's changes as a dependency graph, concurrently, writing state after
//! every change. A failure skips only what depends on it; Ctrl-C lets in-flight work finish.

use crate::model::{Address, Spec};
use crate::plan::{Action, Change, Plan};
use crate::providers::{Created, ProviderError, Registry, Request};
use crate::state::{OutputState, ResourceState, State, StateError, StateStore, Status};
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

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
    /// Final outputs (evaluated after apply) are set by the caller.
    pub interrupt: tokio::sync::watch::Receiver<bool>,
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
}

impl Applier<'_> {
    async fn save(&self, state: &mut State) -> Result<(), StateError> {
        state.serial += 1;
        self.store.write(state).await?;
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
        // Nodes and their prerequisites.
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
        let mut needs: BTreeMap<NodeId, BTreeSet<NodeId>> =
            nodes.iter().map(|n| (n.clone(), BTreeSet::new())).collect();
        for n in &nodes {
            let (addr, step) = n;
            let Some(c) = changes.get(addr) else { continue };
            match step {
                Step::Create | Step::Update => {
                    for d in &c.depends_on {
                        for s in [Step::Create, Step::Update] {
                            if nodes.contains(&(d.clone(), s)) {
                                needs.entry(n.clone()).or_default().insert((d.clone(), s));
                            }
                        }
                    }
                    if *step == Step::Create
                        && nodes.contains(&(addr.clone(), Step::Delete))
                        && !c.create_before_destroy
                    {
                        needs
                            .entry(n.clone())
                            .or_default()
                            .insert((addr.clone(), Step::Delete));
                    }
                }
                Step::Delete => {
                    // Delete dependents first (per the prior state's dependencies).
                    for (other, res) in &state.resources {
                        if res.dependencies.contains(addr)
                            && nodes.contains(&(other.clone(), Step::Delete))
                        {
                            needs
                                .entry(n.clone())
                                .or_default()
                                .insert((other.clone(), Step::Delete));
                        }
                    }
                    if c.create_before_destroy && nodes.contains(&(addr.clone(), Step::Create)) {
                        needs
                            .entry(n.clone())
                            .or_default()
                            .insert((addr.clone(), Step::Create));
                    }
                }
            }
        }
        let mut summary = Summary::default();
        let mut done: BTreeSet<NodeId> = BTreeSet::new();
        let mut failed: BTreeMap<NodeId, Address> = BTreeMap::new(); // node → root cause
        let mut running: BTreeSet<NodeId> = BTreeSet::new();
        let mut pending: BTreeSet<NodeId> = nodes.clone();
        let mut set: tokio::task::JoinSet<Outcome> = tokio::task::JoinSet::new();
        let mut interrupt = self.interrupt.clone();
        let mut stopping = false;
        loop {
            // Skip nodes whose prerequisites failed.
            loop {
                let mut newly = Vec::new();
                for n in &pending {
                    if let Some(cause) = needs
                        .get(n)
                        .and_then(|ns| ns.iter().find_map(|d| failed.get(d)))
                    {
                        newly.push((n.clone(), cause.clone()));
                    }
                }
                if newly.is_empty() {
                    break;
                }
                for (n, cause) in newly {
                    pending.remove(&n);
                    (self.on_event)(&Event::Skipped {
                        address: n.0.clone(),
                        because: cause.clone(),
                    });
                    if !summary.skipped.contains(&n.0) {
                        summary.skipped.push(n.0.clone());
                    }
                    failed.insert(n, cause);
                }
            }
            // Start what is ready.
            if !stopping {
                let ready: Vec<NodeId> = pending
                    .iter()
                    .filter(|n| {
                        needs
                            .get(*n)
                            .is_none_or(|ns| ns.iter().all(|d| done.contains(d)))
                    })
                    .take(self.parallelism.saturating_sub(running.len()))
                    .cloned()
                    .collect();
                for n in ready {
                    pending.remove(&n);
                    let Some(change) = changes.get(&n.0) else {
                        continue;
                    };
                    self.start(&n, change, state, &mut set).await?;
                    running.insert(n);
                }
            }
            if running.is_empty() {
                break;
            }
            let outcome = tokio::select! {
                joined = set.join_next() => joined,
                _ = interrupt.changed(), if !stopping => {
                    stopping = true;
                    summary.interrupted = true;
                    continue;
                }
            };
            let Some(Ok(outcome)) = outcome else { break };
            running.remove(&outcome.node);
            let (addr, step) = outcome.node.clone();
            let change = changes.get(&addr).copied();
            match outcome.result {
                Ok(created) => {
                    match step {
                        Step::Delete => {
                            state.resources.remove(&addr);
                            if change.is_some_and(|c| c.action == Action::Delete) {
                                summary.destroyed += 1;
                            }
                        }
                        Step::Create | Step::Update => {
                            if let (Some(r), Some(c)) = (state.resources.get_mut(&addr), created) {
                                r.status = Status::Ready;
                                r.computed = c.computed;
                                r.private = c.private;
                                if let Some(ch) = change {
                                    if let Some(spec) = &ch.after {
                                        r.spec = spec.clone();
                                    }
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
                    self.save(state).await?;
                    let what = match step {
                        Step::Delete => "destroyed",
                        Step::Create => "created",
                        Step::Update => "updated",
                    };
                    (self.on_event)(&Event::Done {
                        address: addr.clone(),
                        what: what.into(),
                        seconds: outcome.seconds,
                    });
                    done.insert(outcome.node);
                }
                Err(e) => {
                    if step != Step::Delete
                        && let Some(r) = state.resources.get_mut(&addr)
                    {
                        // The provider cleaned up what it could; mark it for replacement.
                        r.status = Status::Tainted;
                    }
                    self.save(state).await?;
                    (self.on_event)(&Event::Failed {
                        address: addr.clone(),
                        error: e.message.clone(),
                    });
                    summary.failures.push((addr.clone(), e.message));
                    failed.insert(outcome.node, addr);
                }
            }
        }
        if stopping {
            for n in &pending {
                if !summary.skipped.contains(&n.0) {
                    summary.skipped.push(n.0.clone());
                }
            }
        }
        Ok(summary)
    }

    /// Records intent in state, then starts the provider call.
    async fn start(
        &self,
        node: &NodeId,
        change: &Change,
        state: &mut State,
        set: &mut tokio::task::JoinSet<Outcome>,
    ) -> Result<(), StateError> {
        let (addr, step) = node.clone();
        let spec = match step {
            Step::Delete => change.before.clone(),
            _ => change.after.clone(),
        };
        let Some(spec) = spec else { return Ok(()) };
        let provider_name = match step {
            Step::Delete => state
                .resources
                .get(&addr)
                .map(|r| r.provider.clone())
                .unwrap_or_else(|| "local".into()),
            _ => provider_for(&spec, change, state),
        };
        let Some(provider) = self.registry.get(&provider_name) else {
            let name = provider_name.clone();
            set.spawn(async move {
                Outcome {
                    node: (addr, step),
                    result: Err(ProviderError::other(format!(
                        "provider {name:?} is not available in this build"
                    ))),
                    seconds: 0.0,
                }
            });
            return Ok(());
        };
        let cluster_of = |spec: &Spec| match spec {
            Spec::Job(j) => state.resources.get(&j.cluster).cloned(),
            _ => None,
        };
        let cluster = cluster_of(&spec);
        if step == Step::Create {
            // Intent first: if skyform dies during the call, refresh finds what was made.
            let private = provider.new_private(&addr, &spec);
            state.resources.insert(
                addr.clone(),
                ResourceState {
                    status: Status::Creating,
                    provider: provider_name.clone(),
                    spec: spec.clone(),
                    computed: BTreeMap::new(),
                    private,
                    placement: change.candidates.first().cloned(),
                    dependencies: change.depends_on.clone(),
                    sensitive: change.sensitive.clone(),
                    attempts: Vec::new(),
                },
            );
            self.save(state).await?;
        }
        let Some(current) = state.resources.get(&addr).cloned() else {
            return Ok(());
        };
        let after: Vec<ResourceState> = change
            .depends_on
            .iter()
            .filter(|d| d.kind == crate::model::Kind::Job)
            .filter_map(|d| state.resources.get(d).cloned())
            .collect();
        let registry = self.registry.clone();
        let root = self.root.clone();
        let placement = change.candidates.first().cloned();
        let what = match step {
            Step::Delete => "destroying".to_string(),
            Step::Update => "updating".to_string(),
            Step::Create => match &placement {
                Some(p) => format!("creating on {}", p.offering.infra()),
                None => "creating".to_string(),
            },
        };
        (self.on_event)(&Event::Started {
            address: addr.clone(),
            what,
        });
        set.spawn(async move {
            let t = Instant::now();
            let Some(p) = registry.get(&provider_name) else {
                return Outcome {
                    node: (addr, step),
                    result: Err(ProviderError::other("provider vanished")),
                    seconds: 0.0,
                };
            };
            let result = match step {
                Step::Delete => p
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
                        after: after.iter().collect(),
                        root,
                    };
                    if step == Step::Create {
                        p.create(req).await
                    } else {
                        p.update(req).await
                    }
                    .map(Some)
                }
            };
            Outcome {
                node: (addr, step),
                result,
                seconds: t.elapsed().as_secs_f64(),
            }
        });
        Ok(())
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
