//! Refresh: ask each resource's provider what is true now, concurrently.

use crate::model::{Address, Kind};
use crate::providers::{Observed, Registry};
use crate::state::{State, Status};
use std::collections::BTreeMap;
use std::sync::Arc;

/// What refresh learned: the updated state, resources it found broken, and what drifted.
#[derive(Debug, Clone, Default)]
pub struct Refreshed {
    pub degraded: BTreeMap<Address, String>,
    pub drift: Vec<String>,
}

/// Refreshes every resource in `state` in place (clusters first, so jobs see their cluster).
pub async fn refresh(state: &mut State, registry: &Arc<Registry>, concurrency: usize) -> Refreshed {
    let mut out = Refreshed::default();
    for phase in [true, false] {
        let addrs: Vec<Address> = state
            .resources
            .keys()
            .filter(|a| (a.kind == Kind::Cluster) == phase)
            .cloned()
            .collect();
        let sem = Arc::new(tokio::sync::Semaphore::new(concurrency.max(1)));
        let mut set = tokio::task::JoinSet::new();
        for addr in addrs {
            let Some(res) = state.resources.get(&addr).cloned() else {
                continue;
            };
            let cluster = match &res.spec {
                crate::model::Spec::Job(j) => state.resources.get(&j.cluster).cloned(),
                _ => None,
            };
            let registry = registry.clone();
            let sem = sem.clone();
            set.spawn(async move {
                let _permit = sem.acquire_owned().await;
                let result = match registry.get(&res.provider) {
                    Some(p) => p.refresh(&addr, &res, cluster.as_ref()).await,
                    None => Err(crate::providers::ProviderError::other(format!(
                        "provider {:?} is not available in this build",
                        res.provider
                    ))),
                };
                (addr, result)
            });
        }
        let mut results = Vec::new();
        while let Some(joined) = set.join_next().await {
            if let Ok(r) = joined {
                results.push(r);
            }
        }
        results.sort_by(|a, b| a.0.cmp(&b.0));
        tracing::debug!(clusters = phase, count = results.len(), "refreshed");
        for (addr, result) in results {
            match result {
                Ok(Observed::Up(computed)) => {
                    if let Some(r) = state.resources.get_mut(&addr) {
                        if r.status == Status::Creating && r.kind() == Kind::Job {
                            // Submitted before the crash: adopt it.
                            r.status = Status::Ready;
                            out.drift.push(format!(
                                "{addr}: adopted (it was submitted before skyform stopped)"
                            ));
                        }
                        let before = r.computed.get("status").cloned();
                        r.computed.extend(computed);
                        if let (Some(b), Some(a)) = (before, r.computed.get("status"))
                            && &b != a
                            && r.kind() != Kind::Cluster
                        {
                            // Job progress is expected, not drift.
                        }
                    }
                }
                Ok(Observed::Adopted(found)) => {
                    if let Some(r) = state.resources.get_mut(&addr) {
                        r.status = Status::Ready;
                        r.computed.extend(found.computed);
                        r.private = found.private;
                        if let Some(p) = &r.placement {
                            r.computed
                                .insert("placement".into(), serde_json::json!(p.offering.infra()));
                        }
                        out.drift.push(format!(
                            "{addr}: adopted (its creation finished after skyform stopped)"
                        ));
                    }
                }
                Ok(Observed::Degraded { reason, computed }) => {
                    if let Some(r) = state.resources.get_mut(&addr) {
                        r.computed.extend(computed);
                        r.computed
                            .insert("status".into(), serde_json::json!("DEGRADED"));
                        r.status = Status::Tainted;
                    }
                    out.drift.push(format!("{addr}: {reason}"));
                    out.degraded.insert(addr, reason);
                }
                Ok(Observed::Gone { reason }) => {
                    // A resource whose creation failed or never finished is gone by design.
                    let was_creating = state
                        .resources
                        .get(&addr)
                        .is_some_and(|r| r.status != Status::Ready);
                    state.resources.remove(&addr);
                    if !was_creating {
                        out.drift
                            .push(format!("{addr}: {reason}; it will be created again"));
                    }
                }
                Err(e) => {
                    tracing::warn!(address = %addr, error = %e, "refresh failed");
                    out.drift.push(format!("{addr}: refresh failed: {e}"));
                }
            }
        }
    }
    // Jobs that were queued or running on a broken cluster will not finish: say so.
    let broken: Vec<Address> = state
        .resources
        .iter()
        .filter(|(a, r)| a.kind == Kind::Cluster && r.status == Status::Tainted)
        .map(|(a, _)| a.clone())
        .collect();
    for r in state.resources.values_mut() {
        if let crate::model::Spec::Job(j) = &r.spec
            && broken.contains(&j.cluster)
            && r.computed
                .get("status")
                .and_then(|s| s.as_str())
                .is_some_and(|s| s == "QUEUED" || s == "RUNNING")
        {
            r.computed
                .insert("status".into(), serde_json::json!("LOST"));
        }
    }
    out
}

/// What a refresh changed in state, one line per resource: gone from state, or a status
/// (or exit code) that moved. For refresh-only plans.
pub fn changes(before: &State, after: &State) -> Vec<String> {
    let mut out = Vec::new();
    for (addr, b) in &before.resources {
        let Some(a) = after.resources.get(addr) else {
            out.push(format!("{addr}: no longer exists; it leaves the state"));
            continue;
        };
        for key in ["status", "exit_code"] {
            let (was, now) = (b.computed.get(key), a.computed.get(key));
            if was != now {
                let show = |v: Option<&serde_json::Value>| {
                    v.map_or("(none)".to_string(), crate::render::human::value)
                };
                out.push(format!("{addr}: {key} {} → {}", show(was), show(now)));
            }
        }
        if b.status != a.status {
            let name = |s: &Status| format!("{s:?}").to_lowercase();
            out.push(format!("{addr}: {} → {}", name(&b.status), name(&a.status)));
        }
    }
    out
}
