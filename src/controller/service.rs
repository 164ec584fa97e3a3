//! Services, decided: what the controller keeps of a service (its record in the book), what
//! state each replica is in, how many replicas it should have (the autoscaler), and which
//! replicas to start and which to drain for a scale or an update. Pure functions of the
//! record, what the backends and probes said, and the time; `serving.rs` does the IO.
//!
//! Each replica runs as a managed job of the controller's own (task `SERVICE.rN`), so
//! launching it, watching it, recovering it from a lost machine and removing it are the
//! managed-job machinery's; a service adds the port, the probes and the count.

use super::policy::Phase;
use crate::model::{Address, ServiceSpec, UpdateMode};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::time::Duration;

/// A replica's state, SkyServe's vocabulary.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ReplicaState {
    /// Declared, not launched yet.
    Pending,
    /// Its machines are being made.
    Provisioning,
    /// Its program runs; no probe has passed yet.
    Starting,
    /// Probes pass: it gets requests.
    Ready,
    /// It was ready; probes fail now (within their budget).
    NotReady,
    /// Being drained and removed.
    ShuttingDown,
    /// Its program ended.
    Failed,
    /// It was ready, then failed its probes for longer than the budget.
    FailedProbing,
    /// It never passed a probe within the initial delay.
    FailedInitialDelay,
    /// Its machines were taken away; it is being placed again.
    Preempted,
}

impl ReplicaState {
    pub fn as_str(self) -> &'static str {
        match self {
            ReplicaState::Pending => "PENDING",
            ReplicaState::Provisioning => "PROVISIONING",
            ReplicaState::Starting => "STARTING",
            ReplicaState::Ready => "READY",
            ReplicaState::NotReady => "NOT_READY",
            ReplicaState::ShuttingDown => "SHUTTING_DOWN",
            ReplicaState::Failed => "FAILED",
            ReplicaState::FailedProbing => "FAILED_PROBING",
            ReplicaState::FailedInitialDelay => "FAILED_INITIAL_DELAY",
            ReplicaState::Preempted => "PREEMPTED",
        }
    }

    /// Ended for good: the replica is removed and another takes its place.
    pub fn is_failed(self) -> bool {
        matches!(
            self,
            ReplicaState::Failed | ReplicaState::FailedProbing | ReplicaState::FailedInitialDelay
        )
    }
}

/// One replica as the book keeps it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Replica {
    /// The version it runs (1 is the first).
    pub version: u32,
    /// Where it listens (`$PORT`).
    pub port: u16,
    /// The host it is reached at, once known (its machine's or pod's address).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    pub state: ReplicaState,
    /// When its program was first seen running (probes count from there).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub running_ms: Option<u64>,
    /// When it first passed a probe.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready_ms: Option<u64>,
    /// Since when its probes fail (it was ready before).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failing_ms: Option<u64>,
    /// On demand although the service asks for spot machines (its fallback).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub on_demand: bool,
    /// Taken out of the balancer then (unix ms); removed once nothing is in flight on it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub draining: Option<u64>,
    /// Its managed job was cancelled: it goes once the job's placement is gone.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub removed: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// A service as the controller keeps it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServiceRecord {
    pub address: Address,
    /// Where its load balancer listens.
    pub port: u16,
    /// The address its endpoint is reached at, as the controller serving it advertises
    /// (`SKYFORM_SERVE_HOST`: a controller in a pod gives the pod's address); none: this
    /// machine's loopback.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// What makes each version (digests of what its replicas run), oldest first: version
    /// N is `versions[N-1]`.
    pub versions: Vec<String>,
    /// Versions whose replicas never became ready, rolled back: not launched again.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rolled_back: Vec<u32>,
    /// The replicas, by id (ids are never reused).
    #[serde(default)]
    pub replicas: BTreeMap<u32, Replica>,
    pub next_id: u32,
    /// How many replicas of the newest version it should have now.
    pub target: u32,
    /// A different count the autoscaler wants, and since when (it must hold for a delay).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending: Option<(u32, u64)>,
    /// Apply removed it: drain and remove every replica.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub cancel: bool,
    /// Why it does not serve as declared, if it does not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Requests per second over the last minute, as of the last pass.
    #[serde(default)]
    pub qps: f64,
    /// How many replicas of each version failed (failed ones leave the record).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub failures: BTreeMap<u32, u32>,
}

impl ServiceRecord {
    pub fn new(address: Address, port: u16) -> ServiceRecord {
        ServiceRecord {
            address,
            port,
            host: None,
            versions: Vec::new(),
            rolled_back: Vec::new(),
            replicas: BTreeMap::new(),
            next_id: 1,
            target: 0,
            pending: None,
            cancel: false,
            reason: None,
            qps: 0.0,
            failures: BTreeMap::new(),
        }
    }

    /// The newest version number (0 before the first).
    pub fn newest(&self) -> u32 {
        self.versions.len() as u32
    }

    /// The version a spec with digest `key` is, adding it when new.
    pub fn version_of(&mut self, key: &str) -> u32 {
        match self.versions.iter().position(|k| k == key) {
            // An older version asked for again (a rollback by hand) is a new version: its
            // replicas must replace those of the newer one.
            Some(i) if i + 1 == self.versions.len() => i as u32 + 1,
            _ => {
                self.versions.push(key.to_string());
                self.versions.len() as u32
            }
        }
    }

    /// The version replicas are launched with now: the newest not rolled back.
    pub fn serving_version(&self) -> Option<u32> {
        (1..=self.newest())
            .rev()
            .find(|v| !self.rolled_back.contains(v))
    }

    /// Replicas still counted: not failed, not drained away.
    pub fn alive(&self) -> impl Iterator<Item = (&u32, &Replica)> {
        self.replicas
            .iter()
            .filter(|(_, r)| !r.state.is_failed() && r.draining.is_none() && !r.removed)
    }

    /// Replicas ready for requests.
    pub fn ready(&self) -> impl Iterator<Item = (&u32, &Replica)> {
        self.alive().filter(|(_, r)| r.state == ReplicaState::Ready)
    }

    /// Whether nothing of it runs any more (what a cancel waits for).
    pub fn is_gone(&self) -> bool {
        self.replicas.is_empty()
    }
}

/// The task id of replica `id` of service `service`.
pub fn replica_task(service: &str, id: u32) -> String {
    format!("{service}.r{id}")
}

/// How probes are judged.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Probing {
    /// Failures before the first success are forgiven this long after the program started.
    pub initial_delay: Duration,
    /// A ready replica failing its probes this long is replaced.
    pub budget: Duration,
}

/// A replica's state now, from its managed job's phase and the latest probe (`None`: not
/// probed since the last look).
pub fn judge(
    r: &Replica,
    phase: Option<Phase>,
    probe: Option<bool>,
    now_ms: u64,
    p: Probing,
) -> Replica {
    let mut r = r.clone();
    if r.draining.is_some() || r.removed {
        r.state = ReplicaState::ShuttingDown;
        return r;
    }
    if r.state.is_failed() {
        return r;
    }
    let ms = |d: Duration| d.as_millis() as u64;
    match phase {
        None | Some(Phase::Pending) => r.state = ReplicaState::Pending,
        Some(Phase::Starting) => r.state = ReplicaState::Provisioning,
        Some(Phase::Recovering) => {
            // A new placement: its program starts over, and so do its probes.
            r.state = ReplicaState::Preempted;
            r.running_ms = None;
            r.failing_ms = None;
        }
        Some(Phase::Running) => {
            let since = *r.running_ms.get_or_insert(now_ms);
            match (probe, r.ready_ms.is_some()) {
                (Some(true), _) => {
                    r.ready_ms.get_or_insert(now_ms);
                    r.failing_ms = None;
                    r.reason = None;
                    r.state = ReplicaState::Ready;
                }
                (Some(false), false) | (None, false) => {
                    if now_ms.saturating_sub(since) >= ms(p.initial_delay) {
                        r.state = ReplicaState::FailedInitialDelay;
                        r.reason = Some(format!(
                            "no probe passed within its initial delay ({})",
                            humantime::format_duration(p.initial_delay)
                        ));
                    } else {
                        r.state = ReplicaState::Starting;
                    }
                }
                (Some(false), true) => {
                    let failing = *r.failing_ms.get_or_insert(now_ms);
                    if now_ms.saturating_sub(failing) >= ms(p.budget) {
                        r.state = ReplicaState::FailedProbing;
                        r.reason = Some(format!(
                            "its probes failed for {}",
                            humantime::format_duration(p.budget)
                        ));
                    } else {
                        r.state = ReplicaState::NotReady;
                    }
                }
                (None, true) => {}
            }
        }
        Some(other) => {
            r.state = ReplicaState::Failed;
            r.reason = Some(format!("its program ended ({})", other.as_str()));
        }
    }
    r
}

/// The autoscaler's knobs, with SkyServe's defaults applied.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Scaling {
    pub min: u32,
    pub max: u32,
    /// Requests per second one replica takes; `None`: a fixed count (`min`).
    pub target_qps: Option<f64>,
    pub overprovision: u32,
    pub upscale_delay: Duration,
    pub downscale_delay: Duration,
}

impl Scaling {
    pub fn of(spec: &ServiceSpec) -> Scaling {
        let p = &spec.replica_policy;
        Scaling {
            min: p.min_replicas,
            max: p.max(),
            target_qps: p.target_qps_per_replica.filter(|t| *t > 0.0),
            overprovision: p.overprovision(),
            upscale_delay: p.upscale_delay(),
            downscale_delay: p.downscale_delay(),
        }
    }

    /// How many replicas `qps` asks for, before delays.
    pub fn wanted(&self, qps: f64) -> u32 {
        let n = match self.target_qps {
            Some(t) => ((qps / t).ceil().max(0.0) as u32).clamp(self.min, self.max),
            None => self.min,
        };
        n + self.overprovision
    }
}

/// The target after this look: a higher count must be wanted for the upscale delay, a
/// lower one for the downscale delay; from zero, a waiting request scales up at once.
pub fn autoscale(
    s: &Scaling,
    qps: f64,
    waiting: usize,
    target: u32,
    pending: Option<(u32, u64)>,
    now_ms: u64,
) -> (u32, Option<(u32, u64)>) {
    let mut wanted = s.wanted(qps);
    // The bounds hold at once: `min_replicas` start as soon as the service does.
    let (floor, ceiling) = (s.min + s.overprovision, s.max + s.overprovision);
    if target < floor || target > ceiling {
        return (target.clamp(floor, ceiling), None);
    }
    if waiting > 0 {
        wanted = wanted.max(1);
        if target == 0 {
            return (wanted, None);
        }
    }
    if wanted == target {
        return (target, None);
    }
    let delay = if wanted > target {
        s.upscale_delay
    } else {
        s.downscale_delay
    };
    // The delay counts from when this direction was first wanted, whatever the count.
    let since = match pending {
        Some((p, since)) if (p > target) == (wanted > target) => since,
        _ => now_ms,
    };
    if now_ms.saturating_sub(since) >= delay.as_millis() as u64 {
        (wanted, None)
    } else {
        (target, Some((wanted, since)))
    }
}

/// A spot service's on-demand replicas (`base_ondemand_fallback_replicas`,
/// `dynamic_ondemand_fallback`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Fallback {
    /// The service asks for spot machines.
    pub spot: bool,
    /// Replicas always on demand.
    pub base: u32,
    /// Spot replicas not ready are covered by on-demand ones until they are.
    pub dynamic: bool,
}

impl Fallback {
    pub fn of(spec: &ServiceSpec) -> Fallback {
        Fallback {
            spot: spec.resources.spot(),
            base: spec.replica_policy.base_ondemand(),
            dynamic: spec.replica_policy.dynamic_ondemand(),
        }
    }
}

/// What to do with a service's replicas now.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Moves {
    /// Replicas to start, of the serving version.
    pub launch: u32,
    /// How many of them on demand (a spot service's fallback).
    pub launch_on_demand: u32,
    /// Replicas to drain and remove.
    pub drain: Vec<u32>,
    /// A version to roll back (its replicas never became ready).
    pub roll_back: Option<u32>,
    /// Why no replica is started although some are missing (a version that only fails,
    /// with no older one to fall back on).
    pub stuck: Option<String>,
}

/// How many failed replicas of a version that never had a ready one make it a bad
/// version (to roll back, when an older one serves).
fn too_many_failures(target: u32) -> usize {
    target.max(2) as usize
}

/// The starts and drains that bring `rec` to `target` replicas of its serving version,
/// replacing failed ones, and moving older versions out as `mode` says.
pub fn moves(rec: &ServiceRecord, mode: UpdateMode, fb: Fallback) -> Moves {
    let mut m = Moves::default();
    let Some(v) = rec.serving_version() else {
        return m;
    };
    if rec.cancel {
        m.drain = rec.alive().map(|(id, _)| *id).collect();
        return m;
    }
    let of_v = |want: bool| rec.alive().filter(move |(_, r)| (r.version == v) == want);
    let new_alive: Vec<u32> = of_v(true).map(|(id, _)| *id).collect();
    let new_ready = of_v(true)
        .filter(|(_, r)| r.state == ReplicaState::Ready)
        .count() as u32;
    let old: Vec<(u32, &Replica)> = of_v(false).map(|(id, r)| (*id, r)).collect();
    // A new version none of whose replicas ever became ready, while an older one serves.
    let failed_v = rec
        .replicas
        .values()
        .filter(|r| r.version == v && r.state.is_failed())
        .count()
        .max(rec.failures.get(&v).copied().unwrap_or(0) as usize);
    let ever_ready = rec
        .replicas
        .values()
        .any(|r| r.version == v && r.ready_ms.is_some());
    if !old.is_empty() && !ever_ready && failed_v >= too_many_failures(rec.target) {
        m.roll_back = Some(v);
        m.drain = new_alive;
        return m;
    }
    let n = rec.target;
    // How many of the `n` run on demand: the base, and (dynamic) one per spot replica
    // that is not ready yet — its capacity may never come.
    let (want_spot, want_on_demand) = if fb.spot {
        let base = fb.base.min(n);
        let spot = n - base;
        let covering = if fb.dynamic {
            (of_v(true)
                .filter(|(_, r)| !r.on_demand && r.state != ReplicaState::Ready)
                .count() as u32)
                .min(spot)
        } else {
            0
        };
        (spot, base + covering)
    } else {
        (n, 0)
    };
    for (on_demand, want) in [(false, want_spot), (true, want_on_demand)] {
        let pool: Vec<(u32, bool)> = of_v(true)
            .filter(|(_, r)| r.on_demand == on_demand)
            .map(|(id, r)| (*id, r.state == ReplicaState::Ready))
            .collect();
        let have = pool.len() as u32;
        if want > have {
            m.launch += want - have;
            if on_demand {
                m.launch_on_demand += want - have;
            }
        } else {
            // Scaling down: those not ready first, then the oldest.
            let mut extra = pool;
            extra.sort_by_key(|(id, ready)| (*ready, *id));
            m.drain
                .extend(extra.iter().take((have - want) as usize).map(|e| e.0));
        }
    }
    if old.is_empty() && !ever_ready && failed_v >= 3 * too_many_failures(n) && m.launch > 0 {
        // Starting more would fail the same way: wait for a new version.
        m.stuck = Some(format!(
            "{failed_v} replicas of version {v} failed and none became ready; fix the service and apply again"
        ));
        m.launch = 0;
        m.launch_on_demand = 0;
    }
    if old.is_empty() {
        m.drain.sort_unstable();
        return m;
    }
    // Older versions: keep as many ready ones as the new version still lacks.
    let keep = match mode {
        UpdateMode::Rolling => n.saturating_sub(new_ready) as usize,
        UpdateMode::BlueGreen if new_ready >= n => 0,
        UpdateMode::BlueGreen => old.len(),
    };
    let mut order: Vec<(u32, &Replica)> = old;
    // Kept first: ready ones of the newest older version.
    order.sort_by_key(|(id, r)| {
        (
            r.state != ReplicaState::Ready,
            std::cmp::Reverse(r.version),
            std::cmp::Reverse(*id),
        )
    });
    m.drain.extend(order.iter().skip(keep).map(|(id, _)| *id));
    m.drain.sort_unstable();
    m
}

/// The ready replicas requests go to: all of them, but during a `blue_green` update only
/// the old version's until the switch (when they are drained all at once).
pub fn serving_replicas(rec: &ServiceRecord, mode: UpdateMode) -> Vec<u32> {
    let newest = rec.serving_version().unwrap_or(0);
    let old_serving = rec.ready().any(|(_, r)| r.version < newest);
    rec.ready()
        .filter(|(_, r)| mode == UpdateMode::Rolling || !old_serving || r.version < newest)
        .map(|(id, _)| *id)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Kind;

    const P: Probing = Probing {
        initial_delay: Duration::from_secs(10),
        budget: Duration::from_secs(5),
    };

    fn replica(version: u32, state: ReplicaState) -> Replica {
        Replica {
            version,
            port: 1,
            host: None,
            state,
            running_ms: None,
            ready_ms: (state == ReplicaState::Ready).then_some(1),
            failing_ms: None,
            on_demand: false,
            draining: None,
            removed: false,
            reason: None,
        }
    }

    #[test]
    fn probes_decide_readiness_forgiving_until_the_initial_delay() {
        let r = replica(1, ReplicaState::Provisioning);
        let r = judge(&r, Some(Phase::Running), Some(false), 1_000, P);
        assert_eq!(r.state, ReplicaState::Starting);
        let r = judge(&r, Some(Phase::Running), Some(true), 5_000, P);
        assert_eq!((r.state, r.ready_ms), (ReplicaState::Ready, Some(5_000)));
        // A ready replica failing: not ready within the budget, replaced after it.
        let r = judge(&r, Some(Phase::Running), Some(false), 6_000, P);
        assert_eq!(r.state, ReplicaState::NotReady);
        let back = judge(&r, Some(Phase::Running), Some(true), 7_000, P);
        assert_eq!((back.state, back.failing_ms), (ReplicaState::Ready, None));
        let r = judge(&r, Some(Phase::Running), Some(false), 11_000, P);
        assert_eq!(r.state, ReplicaState::FailedProbing);
        // Never ready within the initial delay.
        let s = replica(1, ReplicaState::Provisioning);
        let s = judge(&s, Some(Phase::Running), None, 0, P);
        let s = judge(&s, Some(Phase::Running), Some(false), 10_000, P);
        assert_eq!(s.state, ReplicaState::FailedInitialDelay);
        // A program that ended is failed, never shown running.
        let e = judge(&r, Some(Phase::Succeeded), Some(true), 1, P);
        assert!(e.state.is_failed() || e.state == ReplicaState::FailedProbing);
        let d = judge(
            &replica(1, ReplicaState::Ready),
            Some(Phase::Failed),
            None,
            1,
            P,
        );
        assert_eq!(d.state, ReplicaState::Failed);
        let lost = judge(
            &replica(1, ReplicaState::Ready),
            Some(Phase::Recovering),
            None,
            1,
            P,
        );
        assert_eq!(lost.state, ReplicaState::Preempted);
    }

    #[test]
    fn the_autoscaler_waits_its_delays_and_wakes_from_zero_at_once() {
        let s = Scaling {
            min: 0,
            max: 4,
            target_qps: Some(2.0),
            overprovision: 0,
            upscale_delay: Duration::from_secs(3),
            downscale_delay: Duration::from_secs(10),
        };
        assert_eq!(s.wanted(5.0), 3);
        assert_eq!(s.wanted(100.0), 4);
        // From zero, a waiting request: at once.
        assert_eq!(autoscale(&s, 0.0, 1, 0, None, 0), (1, None));
        // Up: only after the delay.
        let (t, p) = autoscale(&s, 5.0, 0, 1, None, 1_000);
        assert_eq!((t, p), (1, Some((3, 1_000))));
        let (t, p) = autoscale(&s, 7.9, 0, 1, p, 3_000);
        assert_eq!((t, p), (1, Some((4, 1_000))));
        assert_eq!(autoscale(&s, 7.9, 0, 1, p, 4_000), (4, None));
        // The bounds hold at once.
        let fixed = Scaling {
            min: 2,
            max: 2,
            target_qps: None,
            ..s
        };
        assert_eq!(autoscale(&fixed, 0.0, 0, 0, None, 0), (2, None));
        assert_eq!(autoscale(&fixed, 0.0, 0, 5, None, 0), (2, None));
        // Down: after the longer delay; a dip that ends resets it.
        let (t, p) = autoscale(&s, 0.0, 0, 4, None, 0);
        assert_eq!((t, p), (4, Some((0, 0))));
        assert_eq!(autoscale(&s, 8.0, 0, 4, p, 5_000), (4, None));
        assert_eq!(autoscale(&s, 0.0, 0, 4, p, 10_000), (0, None));
    }

    fn record(replicas: &[(u32, u32, ReplicaState)], target: u32, versions: u32) -> ServiceRecord {
        let mut rec = ServiceRecord::new(Address::new(Kind::Service, "s"), 1);
        rec.versions = (1..=versions).map(|v| format!("v{v}")).collect();
        rec.target = target;
        for (id, version, state) in replicas {
            rec.replicas.insert(*id, replica(*version, *state));
        }
        rec
    }

    #[test]
    fn scaling_replaces_the_failed_and_drains_the_not_ready_first() {
        use ReplicaState::*;
        let rec = record(&[(1, 1, Ready), (2, 1, Failed)], 2, 1);
        assert_eq!(
            moves(&rec, UpdateMode::Rolling, Fallback::default()).launch,
            1
        );
        let rec = record(&[(1, 1, Ready), (2, 1, Starting), (3, 1, Ready)], 1, 1);
        let m = moves(&rec, UpdateMode::Rolling, Fallback::default());
        assert_eq!((m.launch, m.drain), (0, vec![1, 2]));
    }

    #[test]
    fn a_rolling_update_drains_an_old_replica_per_new_ready_one() {
        use ReplicaState::*;
        let rec = record(&[(1, 1, Ready), (2, 1, Ready)], 2, 2);
        let m = moves(&rec, UpdateMode::Rolling, Fallback::default());
        assert_eq!((m.launch, m.drain.len()), (2, 0));
        let rec = record(
            &[
                (1, 1, Ready),
                (2, 1, Ready),
                (3, 2, Ready),
                (4, 2, Starting),
            ],
            2,
            2,
        );
        assert_eq!(
            moves(&rec, UpdateMode::Rolling, Fallback::default()).drain,
            vec![1]
        );
        assert!(
            moves(&rec, UpdateMode::BlueGreen, Fallback::default())
                .drain
                .is_empty()
        );
        let rec = record(
            &[(1, 1, Ready), (2, 1, Ready), (3, 2, Ready), (4, 2, Ready)],
            2,
            2,
        );
        assert_eq!(
            moves(&rec, UpdateMode::BlueGreen, Fallback::default()).drain,
            vec![1, 2]
        );
        // Until the switch, a blue-green update sends requests to the old version only.
        let rec = record(
            &[
                (1, 1, Ready),
                (2, 1, Ready),
                (3, 2, Ready),
                (4, 2, Starting),
            ],
            2,
            2,
        );
        assert_eq!(serving_replicas(&rec, UpdateMode::BlueGreen), vec![1, 2]);
        assert_eq!(serving_replicas(&rec, UpdateMode::Rolling), vec![1, 2, 3]);
    }

    #[test]
    fn a_version_that_never_becomes_ready_is_rolled_back_while_the_old_one_serves() {
        use ReplicaState::*;
        let rec = record(
            &[
                (1, 1, Ready),
                (2, 1, Ready),
                (3, 2, FailedInitialDelay),
                (4, 2, Failed),
                (5, 2, Starting),
            ],
            2,
            2,
        );
        let m = moves(&rec, UpdateMode::Rolling, Fallback::default());
        assert_eq!(m.roll_back, Some(2));
        assert_eq!(m.drain, vec![5]);
        let mut rec = rec;
        rec.rolled_back.push(2);
        assert_eq!(rec.serving_version(), Some(1));
        // Back on version 1: nothing to start, nothing to drain.
        rec.replicas.remove(&5);
        assert_eq!(
            moves(&rec, UpdateMode::Rolling, Fallback::default()),
            Moves::default()
        );
        // A first version that only fails: after a few tries, no more starts.
        let mut bad = record(&[], 1, 1);
        bad.failures.insert(1, 6);
        let m = moves(&bad, UpdateMode::Rolling, Fallback::default());
        assert_eq!(m.launch, 0);
        assert!(m.stuck.is_some());
    }

    #[test]
    fn a_spot_service_keeps_its_base_on_demand_and_covers_missing_spot_replicas() {
        use ReplicaState::*;
        let fb = Fallback {
            spot: true,
            base: 1,
            dynamic: true,
        };
        // From nothing: 3 replicas, 1 on demand; the 2 spot ones are not ready, so 2 more
        // on demand cover them.
        let mut rec = record(&[], 3, 1);
        let m = moves(&rec, UpdateMode::Rolling, fb);
        assert_eq!((m.launch, m.launch_on_demand), (3, 1));
        rec.replicas.insert(1, replica(1, Pending));
        rec.replicas.insert(2, replica(1, Pending));
        let mut od = replica(1, Pending);
        od.on_demand = true;
        rec.replicas.insert(3, od);
        let m = moves(&rec, UpdateMode::Rolling, fb);
        assert_eq!((m.launch, m.launch_on_demand), (2, 2));
        // The spot replicas ready: the covering ones drain, the base stays.
        for id in [1, 2] {
            rec.replicas.get_mut(&id).unwrap().state = Ready;
        }
        for id in [4, 5] {
            let mut r = replica(1, Ready);
            r.on_demand = true;
            rec.replicas.insert(id, r);
        }
        let m = moves(&rec, UpdateMode::Rolling, fb);
        assert_eq!((m.launch, m.drain), (0, vec![3, 4]));
        // Without the dynamic fallback, only the base.
        let fixed = Fallback {
            dynamic: false,
            ..fb
        };
        let m = moves(&record(&[], 3, 1), UpdateMode::Rolling, fixed);
        assert_eq!((m.launch, m.launch_on_demand), (3, 1));
    }

    #[test]
    fn versions_count_changes_of_what_replicas_run() {
        let mut rec = ServiceRecord::new(Address::new(Kind::Service, "s"), 1);
        assert_eq!(rec.version_of("a"), 1);
        assert_eq!(rec.version_of("a"), 1);
        assert_eq!(rec.version_of("b"), 2);
        assert_eq!(rec.version_of("a"), 3);
        assert_eq!(replica_task("svc-1", 3), "svc-1.r3");
    }
}
