//! The steps of an apply and the order between them.

use crate::model::{Address, Spec};
use crate::plan::{Action, Change};
use crate::state::State;
use std::collections::{BTreeMap, BTreeSet};

/// One step of the walk: a replace is a delete and a create.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum Step {
    Delete,
    Create,
    Update,
}

pub(super) type NodeId = (Address, Step);

pub(super) struct StepGraph {
    pub needs: BTreeMap<NodeId, BTreeSet<NodeId>>,
    dependents: BTreeMap<NodeId, BTreeSet<NodeId>>,
    /// Jobs whose cluster is deleted in the same run: the cluster takes them with it, so
    /// their delete comes after the cluster's and calls no provider.
    pub taken: BTreeSet<Address>,
}

impl StepGraph {
    pub fn new(changes: &BTreeMap<&Address, &Change>, state: &State) -> StepGraph {
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
        let taken = taken_jobs(changes, state, &nodes, &users);
        let needs = needs_of(changes, state, &nodes, &users, &taken);
        // Taking jobs reverses edges; should that close a circle (jobs of one cluster
        // chained through another's), every job is cancelled on its own as before.
        let (needs, taken) = if !taken.is_empty() && has_cycle(&needs) {
            let none = BTreeSet::new();
            (needs_of(changes, state, &nodes, &users, &none), none)
        } else {
            (needs, taken)
        };
        let mut dependents: BTreeMap<NodeId, BTreeSet<NodeId>> = BTreeMap::new();
        for (n, ns) in &needs {
            for m in ns {
                dependents.entry(m.clone()).or_default().insert(n.clone());
            }
        }
        StepGraph {
            needs,
            dependents,
            taken,
        }
    }

    pub fn dependents(&self, n: &NodeId) -> impl Iterator<Item = &NodeId> {
        self.dependents.get(n).into_iter().flatten()
    }
}

/// The cluster a job in state runs on.
pub(super) fn cluster_of<'s>(state: &'s State, job: &Address) -> Option<&'s Address> {
    match state.resources.get(job).map(|r| r.spec.as_ref()) {
        Some(Spec::Job(j)) => Some(&j.cluster),
        _ => None,
    }
}

/// Jobs deleted in this run whose cluster is deleted too, and which nothing outside that
/// cluster's jobs uses (so no other step waits for them to go).
fn taken_jobs(
    changes: &BTreeMap<&Address, &Change>,
    state: &State,
    nodes: &BTreeSet<NodeId>,
    users: &BTreeMap<&Address, Vec<&Address>>,
) -> BTreeSet<Address> {
    let deleted = |a: &Address| nodes.contains(&(a.clone(), Step::Delete));
    let mut taken = BTreeSet::new();
    for (addr, step) in nodes {
        if *step != Step::Delete {
            continue;
        }
        let Some(cluster) = cluster_of(state, addr) else {
            continue;
        };
        let cbd = changes.get(addr).is_some_and(|c| c.create_before_destroy);
        let only_siblings = users
            .get(addr)
            .into_iter()
            .flatten()
            .all(|u| deleted(u) && cluster_of(state, u) == Some(cluster));
        if deleted(cluster) && !cbd && only_siblings {
            taken.insert(addr.clone());
        }
    }
    taken
}

/// What each step waits for.
fn needs_of(
    changes: &BTreeMap<&Address, &Change>,
    state: &State,
    nodes: &BTreeSet<NodeId>,
    users: &BTreeMap<&Address, Vec<&Address>>,
    taken: &BTreeSet<Address>,
) -> BTreeMap<NodeId, BTreeSet<NodeId>> {
    let mut needs: BTreeMap<NodeId, BTreeSet<NodeId>> =
        nodes.iter().map(|n| (n.clone(), BTreeSet::new())).collect();
    for n in nodes {
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
                // Delete what uses it first; a job its cluster takes goes after the cluster.
                for other in users.get(addr).into_iter().flatten() {
                    if taken.contains(*other) && cluster_of(state, other) == Some(addr) {
                        continue;
                    }
                    add(&mut needs, ((*other).clone(), Step::Delete));
                }
                if taken.contains(addr)
                    && let Some(cluster) = cluster_of(state, addr)
                {
                    add(&mut needs, (cluster.clone(), Step::Delete));
                }
                if c.create_before_destroy {
                    add(&mut needs, (addr.clone(), Step::Create));
                }
            }
        }
    }
    needs
}

/// Whether the steps wait for each other in a circle (Kahn's algorithm leaves some over).
fn has_cycle(needs: &BTreeMap<NodeId, BTreeSet<NodeId>>) -> bool {
    let mut waiting: BTreeMap<&NodeId, usize> = needs.iter().map(|(n, m)| (n, m.len())).collect();
    let mut dependents: BTreeMap<&NodeId, Vec<&NodeId>> = BTreeMap::new();
    for (n, ms) in needs {
        for m in ms {
            dependents.entry(m).or_default().push(n);
        }
    }
    let mut free: Vec<&NodeId> = waiting
        .iter()
        .filter(|(_, d)| **d == 0)
        .map(|(n, _)| *n)
        .collect();
    let mut done = 0;
    while let Some(n) = free.pop() {
        done += 1;
        for d in dependents.get(n).into_iter().flatten() {
            if let Some(w) = waiting.get_mut(d) {
                *w -= 1;
                if *w == 0 {
                    free.push(d);
                }
            }
        }
    }
    done < needs.len()
}
