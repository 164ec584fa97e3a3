//! One step: what it will call (with the spec it will use), the call itself, and how its
//! result is recorded in state.

use super::Event;
use super::failover::attempt;
use super::graph::{NodeId, Step};
use super::walk::Walk;
use crate::model::{Address, Spec};
use crate::optimizer::Candidate;
use crate::plan::{Action, Change};
use crate::providers::{Created, ProviderError, Request};
use crate::state::{ResourceState, State, Status};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A step ready to start.
pub(super) struct Prepared {
    pub node: NodeId,
    pub provider: String,
    pub spec: Option<Arc<Spec>>,
    pub placement: Option<Candidate>,
    /// Jobs that must succeed first.
    pub after: Vec<Address>,
    pub what: String,
    /// Whether an intent was recorded in state that must be written before the call.
    pub intent: bool,
    pub error: Option<ProviderError>,
    /// A pause before the call (retry_until_up).
    pub delay: Duration,
}

impl Prepared {
    pub fn failed(node: NodeId, error: ProviderError) -> Prepared {
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

    /// For the delete of a job whose cluster is in state: that cluster.
    pub fn job_delete_on<'s>(&self, state: &'s State) -> Option<&'s Address> {
        match (&self.node.1, self.spec.as_deref(), &self.error) {
            (Step::Delete, Some(Spec::Job(j)), None) => {
                state.resources.get_key_value(&j.cluster).map(|(a, _)| a)
            }
            _ => None,
        }
    }
}

/// What a task started: one step, or the deletes of jobs of one cluster (one request).
pub(super) enum Start {
    One(Box<Prepared>),
    Jobs {
        provider: String,
        cluster: Address,
        steps: Vec<Prepared>,
    },
}

/// A step's result.
pub(super) struct Outcome {
    pub node: NodeId,
    pub result: Result<Option<Created>, ProviderError>,
    pub seconds: f64,
    /// The spec the step used (with values unknown at plan time filled in).
    pub spec: Option<Arc<Spec>>,
    /// The placement it tried.
    pub placement: Option<Candidate>,
    /// A failed attempt whose clean-up could not be confirmed.
    pub left_behind: bool,
}

impl Outcome {
    fn new(node: NodeId, result: Result<Option<Created>, ProviderError>) -> Outcome {
        Outcome {
            node,
            result,
            seconds: 0.0,
            spec: None,
            placement: None,
            left_behind: false,
        }
    }
}

impl Walk<'_, '_> {
    /// Decides what a step will call, with the spec it will use; for a create, records the
    /// intent (the identifiers the provider will use) in `state` first.
    pub fn prepare(
        &mut self,
        node: &NodeId,
        change: &Change,
        state: &mut State,
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
            spec = Arc::new(
                self.late
                    .spec_for(self.applier.resolve, state, &addr, &spec)?,
            );
        }
        let provider = match step {
            Step::Delete => state
                .resources
                .get(&addr)
                .map(|r| r.provider.clone())
                .unwrap_or_else(|| "local".into()),
            _ => provider_for(&spec, change, state),
        };
        let Some(p) = self.applier.registry.get(&provider) else {
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
                    private,
                    placement: change.candidates.first().cloned().map(Box::new),
                    dependencies: change.depends_on.clone(),
                    sensitive: change.sensitive.clone(),
                    // What earlier attempts or a replaced predecessor left stays on record.
                    leftovers: state
                        .resources
                        .get(&addr)
                        .map(|r| r.leftovers.clone())
                        .unwrap_or_default(),
                    ..ResourceState::new(Status::Creating, provider.clone(), spec.clone())
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
        // A managed job's placements are the controller's to choose and record.
        let placement = change
            .candidates
            .first()
            .filter(|_| provider != crate::controller::handoff::NAME)
            .cloned();
        Ok(Prepared {
            node: node.clone(),
            provider,
            spec: Some(spec),
            placement,
            // Jobs start after the jobs and managed jobs they depend on succeeded (afterok).
            after: afterok(change),
            what,
            intent,
            error: None,
            delay: Duration::ZERO,
        })
    }

    /// As [`Self::prepare`] for a create at a given placement (failing over to it).
    pub fn prepare_at(
        &mut self,
        node: &NodeId,
        change: &Change,
        state: &mut State,
        at: Candidate,
    ) -> Result<Prepared, ProviderError> {
        let spec = state
            .resources
            .get(&node.0)
            .map(|r| r.spec.clone())
            .or_else(|| change.after.clone())
            .ok_or_else(|| ProviderError::other("the plan has no specification for this step"))?;
        let provider = at.offering.cloud.clone();
        let p = self.applier.registry.get(&provider).ok_or_else(|| {
            ProviderError::other(format!(
                "provider {provider:?} is not available in this build"
            ))
        })?;
        let private = p.new_private(&node.0, &spec, &state.lineage);
        if let Some(r) = state.resources.get_mut(&node.0) {
            r.status = Status::Creating;
            r.provider = provider.clone();
            r.private = private;
            r.placement = Some(Box::new(at.clone()));
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

    /// Starts the provider calls of what was prepared.
    pub fn spawn(&mut self, start: Start, state: &State) {
        match start {
            Start::One(p) => self.spawn_one(*p, state),
            Start::Jobs {
                provider,
                cluster,
                steps,
            } => self.spawn_job_deletes(provider, &cluster, steps, state),
        }
    }

    fn spawn_one(&mut self, p: Prepared, state: &State) {
        let (addr, step) = p.node.clone();
        if let Some(error) = p.error {
            self.tasks
                .spawn(async move { vec![Outcome::new((addr, step), Err(error))] });
            return;
        }
        let Some(spec) = p.spec else {
            // Nothing to call: the task answers at once, so the walk's count stays right.
            self.tasks.spawn(async move {
                vec![Outcome::new(
                    (addr, step),
                    Err(ProviderError::other(
                        "the plan has no specification for this step",
                    )),
                )]
            });
            return;
        };
        let current = state.resources.get(&addr).cloned();
        let cluster = match spec.as_ref() {
            Spec::Job(j) => state.resources.get(&j.cluster).cloned(),
            _ => None,
        };
        let after: Vec<(Address, ResourceState)> = p
            .after
            .iter()
            .filter_map(|d| state.resources.get(d).map(|r| (d.clone(), r.clone())))
            .collect();
        (self.applier.on_event)(&Event::Started {
            address: addr.clone(),
            what: p.what,
        });
        tracing::debug!(address = %addr, ?step, provider = %p.provider, "starting step");
        let registry = self.applier.registry.clone();
        let root = self.applier.root.clone();
        let placement = p.placement;
        let provider = p.provider;
        let opts = self.applier.failover.clone();
        let delay = p.delay;
        let mut interrupt = self.applier.interrupt.clone();
        let progress = crate::providers::Progress::to(self.progress.clone(), addr.clone());
        self.tasks.spawn(async move {
            let mut outcome = Outcome::new((addr.clone(), step), Ok(None));
            outcome.placement = placement.clone();
            if !delay.is_zero() {
                tokio::select! {
                    () = tokio::time::sleep(delay) => {}
                    _ = interrupt.wait_for(|stop| *stop) => {
                        outcome.result = Err(ProviderError::other("interrupted while waiting to try again"));
                        return vec![outcome];
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
                            capacity_timeout: opts.attempt_timeout,
                            progress,
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
            crate::faults::passed(crate::faults::Point::Call);
            outcome.seconds = t.elapsed().as_secs_f64();
            outcome.spec = Some(spec);
            vec![outcome]
        });
    }

    /// Deletes jobs of one cluster with one call of the provider.
    fn spawn_job_deletes(
        &mut self,
        provider: String,
        cluster: &Address,
        steps: Vec<Prepared>,
        state: &State,
    ) {
        let cluster = state.resources.get(cluster).cloned();
        let mut gone = Vec::new();
        let mut jobs = Vec::new();
        for p in steps {
            (self.applier.on_event)(&Event::Started {
                address: p.node.0.clone(),
                what: p.what,
            });
            match state.resources.get(&p.node.0) {
                Some(r) => jobs.push((p.node, r.clone(), p.spec)),
                None => {
                    let mut o = Outcome::new(p.node, Ok(None));
                    o.spec = p.spec;
                    gone.push(o);
                }
            }
        }
        tracing::debug!(jobs = jobs.len(), %provider, "deleting jobs of one cluster");
        let registry = self.applier.registry.clone();
        self.tasks.spawn(async move {
            let t = Instant::now();
            let results = match (registry.get(&provider), &cluster) {
                (Some(prov), Some(cluster)) => {
                    let refs: Vec<(&Address, &ResourceState)> =
                        jobs.iter().map(|(n, r, _)| (&n.0, r)).collect();
                    prov.delete_jobs(&refs, cluster).await
                }
                _ => Vec::new(),
            };
            crate::faults::passed(crate::faults::Point::Call);
            let seconds = t.elapsed().as_secs_f64();
            let mut results = results.into_iter();
            for (node, _, spec) in jobs {
                let result = results.next().unwrap_or_else(|| {
                    Err(ProviderError::other(format!(
                        "provider {provider:?} is not available"
                    )))
                });
                let mut o = Outcome::new(node, result.map(|()| None));
                o.seconds = seconds;
                o.spec = spec;
                gone.push(o);
            }
            gone
        });
    }
}

/// Records a successful step in state.
pub(super) fn record_success(
    state: &mut State,
    addr: &Address,
    step: Step,
    change: Option<&Change>,
    created: Option<Created>,
    spec: Option<Arc<Spec>>,
    summary: &mut super::Summary,
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
                        r.placement = Some(Box::new(p.clone()));
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
    if let Spec::ManagedJob(_) | Spec::Service(_) = spec {
        // The controller runs managed jobs and services; apply hands them over.
        return crate::controller::handoff::NAME.into();
    }
    if let Spec::Controller(_) = spec {
        return "k8s".into();
    }
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
