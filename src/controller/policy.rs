//! What the controller decides about a managed job, as pure functions of what it saw and the
//! time: no IO, so every rule is tested without servers (see the tests below).

use crate::model::Recovery;
use crate::optimizer::Candidate;
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// Where a managed job is in its life (SkyPilot's states).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Phase {
    /// Declared, not launched yet (or waiting for capacity).
    Pending,
    /// Launched on a placement; its job has not started running.
    Starting,
    Running,
    /// Lost its placement (or failed in a way that restarts it) and is being launched again.
    Recovering,
    Succeeded,
    Failed,
    FailedSetup,
    FailedNoResource,
    /// The controller could not go on with it (a placement it cannot read or remove).
    FailedController,
    Cancelling,
    Cancelled,
}

impl Phase {
    pub fn is_final(self) -> bool {
        matches!(
            self,
            Phase::Succeeded
                | Phase::Failed
                | Phase::FailedSetup
                | Phase::FailedNoResource
                | Phase::FailedController
                | Phase::Cancelled
        )
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Pending => "PENDING",
            Phase::Starting => "STARTING",
            Phase::Running => "RUNNING",
            Phase::Recovering => "RECOVERING",
            Phase::Succeeded => "SUCCEEDED",
            Phase::Failed => "FAILED",
            Phase::FailedSetup => "FAILED_SETUP",
            Phase::FailedNoResource => "FAILED_NO_RESOURCE",
            Phase::FailedController => "FAILED_CONTROLLER",
            Phase::Cancelling => "CANCELLING",
            Phase::Cancelled => "CANCELLED",
        }
    }
}

/// What the provider says of a managed job's current placement.
#[derive(Debug, Clone, PartialEq)]
pub enum Seen {
    Queued,
    Running,
    Succeeded,
    Failed {
        exit_code: Option<i32>,
        setup: bool,
    },
    /// Cancelled on the machines, not by the controller.
    Cancelled,
    /// The machines or pods are gone, or a node's agent stopped answering.
    Lost {
        reason: String,
    },
    /// The provider could not be asked: never evidence of anything.
    Unknown {
        error: String,
    },
}

/// `recovery { strategy }`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Strategy {
    /// The region that lost the job is avoided by the next launch (SkyPilot's default).
    #[default]
    EagerNextRegion,
    /// The same region first, then the whole search space.
    Failover,
}

/// A managed job's `recovery` block with SkyPilot's defaults filled in.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Policy {
    pub strategy: Strategy,
    pub max_restarts_on_errors: u32,
    pub recover_on_exit_codes: Vec<i32>,
}

impl Policy {
    pub fn of(recovery: Option<&Recovery>) -> Policy {
        let Some(r) = recovery else {
            return Policy::default();
        };
        Policy {
            strategy: match r.strategy.as_str() {
                "failover" => Strategy::Failover,
                _ => Strategy::EagerNextRegion,
            },
            max_restarts_on_errors: r.max_restarts_on_errors,
            recover_on_exit_codes: r.recover_on_exit_codes.clone(),
        }
    }
}

/// What to do about a placement after seeing it.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// It lives: the job is in this phase (STARTING or RUNNING).
    Keep(Phase),
    /// It looks lost, but not for long enough to act on: look again.
    Suspect,
    /// Nothing was learned (the provider could not be asked): everything stays as it was.
    NoNews,
    /// Launch the job again; `counts` says whether it uses up one of the restarts on errors.
    Recover { why: String, counts: bool },
    /// The job ended for good.
    Finish {
        phase: Phase,
        exit_code: Option<i32>,
        why: String,
    },
}

/// Decides about a placement from one sight of it. A placement is taken as lost only when
/// the provider has said so for at least `grace` (two sights apart, `suspect_since` being
/// the first): one failed status call, or one bad answer, never ends a healthy job.
pub fn judge(
    seen: &Seen,
    policy: &Policy,
    restarts: u32,
    suspect_since: Option<u64>,
    now_ms: u64,
    grace: Duration,
) -> Verdict {
    match seen {
        Seen::Queued => Verdict::Keep(Phase::Starting),
        Seen::Running => Verdict::Keep(Phase::Running),
        Seen::Succeeded => Verdict::Finish {
            phase: Phase::Succeeded,
            exit_code: Some(0),
            why: "the job succeeded".into(),
        },
        Seen::Cancelled => Verdict::Finish {
            phase: Phase::Cancelled,
            exit_code: None,
            why: "the job was cancelled on its machines".into(),
        },
        Seen::Failed {
            exit_code: Some(code),
            ..
        } if policy.recover_on_exit_codes.contains(code) => Verdict::Recover {
            why: format!("exit code {code} is in recover_on_exit_codes"),
            counts: false,
        },
        Seen::Failed { exit_code, setup } => {
            let code =
                exit_code.map_or_else(|| "no exit code".into(), |c| format!("exit code {c}"));
            if *setup {
                Verdict::Finish {
                    phase: Phase::FailedSetup,
                    exit_code: *exit_code,
                    why: format!("setup failed ({code})"),
                }
            } else if restarts < policy.max_restarts_on_errors {
                Verdict::Recover {
                    why: format!(
                        "the job failed ({code}); restart {} of {}",
                        restarts + 1,
                        policy.max_restarts_on_errors
                    ),
                    counts: true,
                }
            } else {
                Verdict::Finish {
                    phase: Phase::Failed,
                    exit_code: *exit_code,
                    why: format!("the job failed ({code})"),
                }
            }
        }
        Seen::Lost { reason } => match suspect_since {
            Some(since) if now_ms.saturating_sub(since) >= grace.as_millis() as u64 => {
                Verdict::Recover {
                    why: reason.clone(),
                    counts: false,
                }
            }
            _ => Verdict::Suspect,
        },
        Seen::Unknown { .. } => Verdict::NoNews,
    }
}

/// How long to wait before trying again after no placement had room: `base` × 1.6 per
/// round, capped at `cap`, spread by ±20 % (`jitter` in [0, 1)) so that many jobs waiting
/// for the same capacity do not ask at the same moment.
pub fn backoff(round: u32, base: Duration, cap: Duration, jitter: f64) -> Duration {
    let grown = base.as_secs_f64() * 1.6f64.powi(round.min(64) as i32);
    let capped = grown.min(cap.as_secs_f64());
    Duration::from_secs_f64(capped * (0.8 + 0.4 * jitter.clamp(0.0, 1.0)))
}

/// The region a candidate is in (`aws/us-east-1`; a zone-less infra is its own region).
pub fn region_of(c: &Candidate) -> String {
    let o = &c.offering;
    match &o.region {
        Some(r) => format!("{}/{r}", o.cloud),
        None => o.infra(),
    }
}

/// The order in which a launch tries `candidates` (ranked, cheapest first), given the region
/// that just lost the job, if any. `eager_next_region` tries every other region first and
/// the lost one last; `failover` the lost region first, then the rest. The order within each
/// part stays the ranked one.
pub fn order(candidates: Vec<Candidate>, strategy: Strategy, lost: Option<&str>) -> Vec<Candidate> {
    let Some(lost) = lost else {
        return candidates;
    };
    let (same, other): (Vec<_>, Vec<_>) =
        candidates.into_iter().partition(|c| region_of(c) == lost);
    match strategy {
        Strategy::EagerNextRegion => other.into_iter().chain(same).collect(),
        Strategy::Failover => same.into_iter().chain(other).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::optimizer::Offering;

    const GRACE: Duration = Duration::from_secs(10);

    fn cand(region: &str, price: u64) -> Candidate {
        Candidate {
            offering: Offering {
                cloud: "aws".into(),
                region: Some(region.into()),
                zone: None,
                instance_type: "p3.2xlarge".into(),
                accelerators: Vec::new(),
                cpus: 8.0,
                memory_gib: 61.0,
                spot: true,
                price,
                max_nodes: None,
            },
            num_nodes: 1,
            hourly: price,
        }
    }

    #[test]
    fn a_lost_placement_is_recovered_only_after_the_grace() {
        let p = Policy::default();
        let lost = Seen::Lost {
            reason: "instance i-1 is terminated".into(),
        };
        assert_eq!(judge(&lost, &p, 0, None, 1_000, GRACE), Verdict::Suspect);
        assert_eq!(
            judge(&lost, &p, 0, Some(1_000), 5_000, GRACE),
            Verdict::Suspect
        );
        assert_eq!(
            judge(&lost, &p, 0, Some(1_000), 11_000, GRACE),
            Verdict::Recover {
                why: "instance i-1 is terminated".into(),
                counts: false
            }
        );
        // A failed status call is no evidence, however long it lasts.
        let unknown = Seen::Unknown {
            error: "timed out".into(),
        };
        assert_eq!(
            judge(&unknown, &p, 0, Some(0), 1_000_000, GRACE),
            Verdict::NoNews
        );
    }

    #[test]
    fn exit_codes_and_restarts_follow_the_recovery_block() {
        let p = Policy {
            max_restarts_on_errors: 2,
            recover_on_exit_codes: vec![33],
            ..Policy::default()
        };
        let failed = |c| Seen::Failed {
            exit_code: Some(c),
            setup: false,
        };
        assert!(matches!(
            judge(&failed(33), &p, 2, None, 0, GRACE),
            Verdict::Recover { counts: false, .. }
        ));
        assert!(matches!(
            judge(&failed(1), &p, 1, None, 0, GRACE),
            Verdict::Recover { counts: true, .. }
        ));
        assert!(matches!(
            judge(&failed(1), &p, 2, None, 0, GRACE),
            Verdict::Finish {
                phase: Phase::Failed,
                exit_code: Some(1),
                ..
            }
        ));
        // The default: no restarts on errors.
        assert!(matches!(
            judge(&failed(1), &Policy::default(), 0, None, 0, GRACE),
            Verdict::Finish {
                phase: Phase::Failed,
                ..
            }
        ));
        assert!(matches!(
            judge(
                &Seen::Failed {
                    exit_code: Some(2),
                    setup: true
                },
                &p,
                0,
                None,
                0,
                GRACE
            ),
            Verdict::Finish {
                phase: Phase::FailedSetup,
                ..
            }
        ));
    }

    #[test]
    fn backoff_grows_by_1_6_up_to_the_cap_with_bounded_jitter() {
        let base = Duration::from_secs(60);
        let cap = Duration::from_secs(300);
        assert_eq!(backoff(0, base, cap, 0.5), Duration::from_secs(60));
        assert_eq!(backoff(1, base, cap, 0.5).as_secs(), 96);
        assert_eq!(backoff(10, base, cap, 0.5), cap);
        for j in [0.0, 0.3, 0.99] {
            let d = backoff(2, base, cap, j).as_secs_f64();
            let mid = 60.0 * 1.6 * 1.6;
            assert!(d >= mid * 0.8 - 1e-6 && d <= mid * 1.2 + 1e-6, "{d}");
        }
    }

    #[test]
    fn eager_next_region_tries_the_lost_region_last_and_failover_first() {
        let ranked = vec![
            cand("us-east-1", 1),
            cand("us-west-2", 2),
            cand("us-east-1", 3),
        ];
        let regions = |v: Vec<Candidate>| {
            v.iter()
                .map(|c| (region_of(c), c.hourly))
                .collect::<Vec<_>>()
        };
        assert_eq!(
            regions(order(
                ranked.clone(),
                Strategy::EagerNextRegion,
                Some("aws/us-east-1")
            )),
            vec![
                ("aws/us-west-2".into(), 2),
                ("aws/us-east-1".into(), 1),
                ("aws/us-east-1".into(), 3)
            ]
        );
        assert_eq!(
            regions(order(
                ranked.clone(),
                Strategy::Failover,
                Some("aws/us-west-2")
            )),
            vec![
                ("aws/us-west-2".into(), 2),
                ("aws/us-east-1".into(), 1),
                ("aws/us-east-1".into(), 3)
            ]
        );
        assert_eq!(
            order(ranked.clone(), Strategy::EagerNextRegion, None),
            ranked
        );
    }
}
