//! Refresh: ask each resource's provider what is true now, concurrently, and record it in
//! the state; what changed outside skyform comes back as typed [`Drift`].

use crate::model::{Address, Kind};
use crate::plan::{Drift, DriftChange};
use crate::providers::{Observed, Registry};
use crate::state::{ResourceState, State, Status};
use std::collections::BTreeMap;
use std::sync::Arc;

/// What refresh learned: the updated state, resources it found broken, and what drifted.
#[derive(Debug, Clone, Default)]
pub struct Refreshed {
    pub degraded: BTreeMap<Address, String>,
    pub drift: Vec<Drift>,
    /// Whether the state's resources changed (so it is worth writing).
    pub changed: bool,
}

/// How many jobs of one cluster one `refresh_jobs` call gets: bounds what is held before it
/// is recorded.
const BATCH: usize = 1000;

/// How many jobs' answers one round of batch calls holds at most (each is a few hundred
/// bytes until it is recorded).
const ROUND_JOBS: usize = 4 * BATCH;

/// Refreshes every resource in `state` in place (clusters first, so jobs see their cluster).
pub async fn refresh(state: &mut State, registry: &Arc<Registry>, concurrency: usize) -> Refreshed {
    let mut out = Refreshed::default();
    for phase in [true, false] {
        let sem = Arc::new(tokio::sync::Semaphore::new(concurrency.max(1)));
        // Jobs whose cluster is in state are refreshed together, a batch per call (the
        // backend may read the cluster's queue once); the rest one task each.
        let mut batches: BTreeMap<(String, Address), Vec<Address>> = BTreeMap::new();
        let mut singles: Vec<Address> = Vec::new();
        for (addr, res) in &state.resources {
            if (addr.kind == Kind::Cluster) != phase {
                continue;
            }
            match res.spec.as_ref() {
                // A job that ended on a cluster that is still up ended for good: its outcome
                // is not asked again (a sweep of many finished jobs reads nothing).
                crate::model::Spec::Job(j)
                    if ended(res)
                        && state
                            .resources
                            .get(&j.cluster)
                            .is_some_and(|c| c.status == Status::Ready) => {}
                crate::model::Spec::Job(j) if state.resources.contains_key(&j.cluster) => {
                    batches
                        .entry((res.provider.clone(), j.cluster.clone()))
                        .or_default()
                        .push(addr.clone());
                }
                _ => singles.push(addr.clone()),
            }
        }
        let mut set = tokio::task::JoinSet::new();
        for addr in singles {
            // The permit first: only the resources being refreshed are copied, not all of
            // them at once (a copy of the whole state with many jobs).
            let Ok(permit) = sem.clone().acquire_owned().await else {
                continue;
            };
            let Some(res) = state.resources.get(&addr).cloned() else {
                continue;
            };
            let cluster = match res.spec.as_ref() {
                crate::model::Spec::Job(j) => state.resources.get(&j.cluster).cloned(),
                _ => None,
            };
            let registry = registry.clone();
            set.spawn(async move {
                let _permit = permit;
                let result = match registry.get(&res.provider) {
                    Some(p) => p.refresh(&addr, &res, cluster.as_ref()).await,
                    None => Err(unavailable(&res.provider)),
                };
                (addr, result)
            });
        }
        // Each result touches only its own resource, so they are recorded as they come, a
        // round of batches at a time (what one round found is all that is held); the drift
        // is put in address order at the end, the order it had when all were recorded at once.
        let mut drift: Vec<Drift> = Vec::new();
        let calls: Vec<(&str, &Address, &[Address])> = batches
            .iter()
            .flat_map(|((provider, cluster), jobs)| {
                jobs.chunks(BATCH)
                    .map(move |some| (provider.as_str(), cluster, some))
            })
            .collect();
        for round in rounds(&calls, concurrency.max(1)) {
            let now = &*state;
            let found =
                futures::future::join_all(round.iter().map(|&(provider, cluster, addrs)| {
                    let sem = sem.clone();
                    async move {
                        let _permit = sem.acquire().await;
                        let jobs: Vec<(&Address, &ResourceState)> = addrs
                            .iter()
                            .filter_map(|a| now.resources.get(a).map(|r| (a, r)))
                            .collect();
                        let answers = match (registry.get(provider), now.resources.get(cluster)) {
                            (Some(p), Some(cluster)) => p.refresh_jobs(&jobs, cluster).await,
                            _ => jobs.iter().map(|_| Err(unavailable(provider))).collect(),
                        };
                        let mut answers = answers.into_iter();
                        jobs.iter()
                            .map(|(addr, _)| {
                                let result = answers.next().unwrap_or_else(|| {
                                    Err(crate::providers::ProviderError::other(
                                        "the backend gave no answer for this job",
                                    ))
                                });
                                ((*addr).clone(), result)
                            })
                            .collect::<Vec<_>>()
                    }
                }))
                .await;
            for (addr, result) in found.into_iter().flatten() {
                record(state, addr, result, &mut out, &mut drift);
            }
        }
        let mut count = 0;
        while let Some(joined) = set.join_next().await {
            if let Ok((addr, result)) = joined {
                count += 1;
                record(state, addr, result, &mut out, &mut drift);
            }
        }
        tracing::debug!(clusters = phase, one_by_one = count, "refreshed");
        drift.sort_by(|a, b| a.address.cmp(&b.address));
        out.drift.extend(drift);
    }
    // Jobs that were queued or running on a broken cluster will not finish: say so.
    let broken: Vec<Address> = state
        .resources
        .iter()
        .filter(|(a, r)| a.kind == Kind::Cluster && r.status == Status::Tainted)
        .map(|(a, _)| a.clone())
        .collect();
    for r in state.resources.values_mut() {
        if let crate::model::Spec::Job(j) = r.spec.as_ref()
            && broken.contains(&j.cluster)
            && r.computed
                .get("status")
                .and_then(|s| s.as_str())
                .is_some_and(|s| s == "QUEUED" || s == "RUNNING")
        {
            r.computed
                .insert("status".into(), serde_json::json!("LOST"));
            out.changed = true;
        }
    }
    out
}

/// The batch calls in rounds of at most `concurrency` calls and [`ROUND_JOBS`] jobs: many
/// clusters are asked at once, while the answers for one large cluster's jobs are held a
/// few batches at a time.
fn rounds<'c, T>(
    calls: &'c [(&str, &Address, &[T])],
    concurrency: usize,
) -> impl Iterator<Item = &'c [(&'c str, &'c Address, &'c [T])]> {
    let mut rest = calls;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let mut jobs = 0;
        let mut n = 0;
        while n < rest.len() && n < concurrency && (n == 0 || jobs + rest[n].2.len() <= ROUND_JOBS)
        {
            jobs += rest[n].2.len();
            n += 1;
        }
        let (round, later) = rest.split_at(n);
        rest = later;
        Some(round)
    })
}

/// Whether state records the job as ended (succeeded, failed or cancelled).
fn ended(res: &ResourceState) -> bool {
    res.computed
        .get("status")
        .and_then(|s| s.as_str())
        .and_then(crate::runtime::JobState::from_name)
        .is_some_and(crate::runtime::JobState::is_final)
}

/// Records what refresh found of one resource in state; its drift goes to `drift`.
fn record(
    state: &mut State,
    addr: Address,
    result: Result<Observed, crate::providers::ProviderError>,
    out: &mut Refreshed,
    drift: &mut Vec<Drift>,
) {
    match result {
        Ok(Observed::Up(computed)) => {
            if let Some(r) = state.resources.get_mut(&addr) {
                out.changed |= computed.iter().any(|(k, v)| r.computed.get(k) != Some(v));
                if r.status == Status::Creating && r.kind() == Kind::Job {
                    out.changed = true;
                    // Submitted before the crash: adopt it.
                    r.status = Status::Ready;
                    drift.push(Drift::new(addr.clone(), DriftChange::AdoptedSubmitted));
                }
                // Job progress (a status that moved) is expected, not drift.
                r.computed.extend(computed);
            }
        }
        Ok(Observed::Adopted(found)) => {
            if let Some(r) = state.resources.get_mut(&addr) {
                let old = r.clone();
                r.status = Status::Ready;
                r.computed.extend(found.computed);
                r.private = found.private;
                if let Some(p) = &r.placement {
                    r.computed
                        .insert("placement".into(), serde_json::json!(p.offering.infra()));
                }
                out.changed |= *r != old;
                drift.push(Drift::new(addr.clone(), DriftChange::AdoptedCreated));
            }
        }
        Ok(Observed::Degraded { reason, computed }) => {
            if let Some(r) = state.resources.get_mut(&addr) {
                let old = (r.status, r.computed.clone());
                r.computed.extend(computed);
                r.computed
                    .insert("status".into(), serde_json::json!("DEGRADED"));
                r.status = Status::Tainted;
                out.changed |= old != (r.status, r.computed.clone());
            }
            drift.push(Drift::new(
                addr.clone(),
                DriftChange::Degraded {
                    reason: reason.clone(),
                },
            ));
            out.degraded.insert(addr, reason);
        }
        Ok(Observed::Gone { reason }) => {
            // A resource whose creation failed or never finished is gone by design.
            let was_creating = state
                .resources
                .get(&addr)
                .is_some_and(|r| r.status != Status::Ready);
            out.changed |= state.resources.remove(&addr).is_some();
            if !was_creating {
                drift.push(Drift::new(addr, DriftChange::Gone { reason }));
            }
        }
        Err(e) => {
            tracing::warn!(address = %addr, error = %e, "refresh failed");
            drift.push(Drift::new(
                addr,
                DriftChange::RefreshFailed {
                    error: e.to_string(),
                },
            ));
        }
    }
}

fn unavailable(provider: &str) -> crate::providers::ProviderError {
    crate::providers::ProviderError::other(format!(
        "provider {provider:?} is not available in this build"
    ))
}

/// What a refresh changed in state: resources gone from it, and statuses (or exit codes)
/// that moved. For refresh-only plans.
pub fn changes(before: &State, after: &State) -> Vec<Drift> {
    let mut out = Vec::new();
    for (addr, b) in &before.resources {
        let Some(a) = after.resources.get(addr) else {
            out.push(Drift::new(addr.clone(), DriftChange::Left));
            continue;
        };
        for key in ["status", "exit_code"] {
            let (was, now) = (b.computed.get(key), a.computed.get(key));
            if was != now {
                out.push(Drift::new(
                    addr.clone(),
                    DriftChange::Attribute {
                        key: key.to_string(),
                        was: was.cloned(),
                        now: now.cloned(),
                    },
                ));
            }
        }
        if b.status != a.status {
            out.push(Drift::new(
                addr.clone(),
                DriftChange::Status {
                    was: b.status,
                    now: a.status,
                },
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{JobSpec, Spec};
    use crate::providers::{Created, Provider, ProviderError, Request};
    use std::sync::Mutex;

    /// Answers every resource up with status RUNNING, and records what it was asked.
    #[derive(Debug, Default)]
    struct Asked(Mutex<Vec<String>>);

    #[async_trait::async_trait]
    impl Provider for Asked {
        fn name(&self) -> &'static str {
            "local"
        }
        async fn offerings(&self) -> Result<Vec<crate::optimizer::Offering>, ProviderError> {
            Ok(Vec::new())
        }
        fn new_private(&self, _: &Address, _: &Spec, _: &str) -> serde_json::Value {
            serde_json::Value::Null
        }
        async fn refresh(
            &self,
            address: &Address,
            _: &ResourceState,
            _: Option<&ResourceState>,
        ) -> Result<Observed, ProviderError> {
            if let Ok(mut asked) = self.0.lock() {
                asked.push(address.to_string());
            }
            Ok(Observed::Up(BTreeMap::from([(
                "status".to_string(),
                serde_json::json!("RUNNING"),
            )])))
        }
        async fn create(&self, _: Request<'_>) -> Result<Created, ProviderError> {
            Err(ProviderError::other("not here"))
        }
        async fn update(&self, _: Request<'_>) -> Result<Created, ProviderError> {
            Err(ProviderError::other("not here"))
        }
        async fn delete(
            &self,
            _: &Address,
            _: &ResourceState,
            _: Option<&ResourceState>,
        ) -> Result<(), ProviderError> {
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

    fn resource(spec: Spec, status: Status, job_status: Option<&str>) -> ResourceState {
        ResourceState {
            computed: job_status
                .map(|s| BTreeMap::from([("status".to_string(), serde_json::json!(s))]))
                .unwrap_or_default()
                .into(),
            ..ResourceState::new(status, "local", Arc::new(spec))
        }
    }

    fn job(cluster: &Address) -> Spec {
        Spec::Job(JobSpec {
            cluster: cluster.clone(),
            num_nodes: 1,
            resources: crate::model::Resources::none(),
            run: "true".into(),
            envs: BTreeMap::new(),
            secrets: BTreeMap::new(),
        })
    }

    /// A job that ended on a cluster that is up is not asked again; one that runs is, and
    /// so is an ended job whose cluster broke.
    #[tokio::test]
    async fn ended_jobs_on_a_live_cluster_are_not_asked_again() {
        let up = Address::new(Kind::Cluster, "up");
        let broken = Address::new(Kind::Cluster, "broken");
        let mut state = State::new();
        let cluster = Spec::Cluster(Box::default());
        state
            .resources
            .insert(up.clone(), resource(cluster.clone(), Status::Ready, None));
        state
            .resources
            .insert(broken.clone(), resource(cluster, Status::Tainted, None));
        for (name, on, status) in [
            ("done", &up, "SUCCEEDED"),
            ("failed", &up, "FAILED"),
            ("running", &up, "RUNNING"),
            ("orphan", &broken, "SUCCEEDED"),
        ] {
            state.resources.insert(
                Address::new(Kind::Job, name),
                resource(job(on), Status::Ready, Some(status)),
            );
        }
        let asked = Arc::new(Asked::default());
        let registry = Arc::new(Registry::new(BTreeMap::from([(
            "local",
            asked.clone() as Arc<dyn Provider>,
        )])));
        refresh(&mut state, &registry, 4).await;
        let mut seen = asked.0.lock().map(|a| a.clone()).unwrap_or_default();
        seen.sort();
        assert_eq!(
            seen,
            ["cluster.broken", "cluster.up", "job.orphan", "job.running"]
        );
        // What was not asked keeps its recorded outcome.
        let done = &state.resources[&Address::new(Kind::Job, "done")];
        assert_eq!(
            done.computed.get("status"),
            Some(&serde_json::json!("SUCCEEDED"))
        );
    }
}
