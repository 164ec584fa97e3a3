//! Failover: each attempt at a placement is bounded and cleaned up after; a create that
//! fails for want of room, quota or a working region moves down the plan's list, blocking
//! what the failure ruled out.

use super::graph::Step;
use super::step::Outcome;
use super::walk::Walk;
use super::{Applier, Event, FailoverOptions};
use crate::model::Spec;
use crate::providers::{Created, ProviderError, Request};
use crate::state::{Attempt, ResourceState, State, StateError, Status};
use std::time::Duration;

impl Walk<'_, '_> {
    /// A create failed at its placement (`outcome.placement`): try the next one that the
    /// failure did not rule out, or fail it once none is left.
    pub fn fail_over(&mut self, outcome: Outcome, e: ProviderError, state: &mut State) {
        let node = outcome.node.clone();
        let addr = node.0.clone();
        debug_assert_eq!(node.1, Step::Create);
        let change = self.changes.get(&addr).copied();
        let Some(tried) = outcome.placement.clone() else {
            return self.fail(&node, e.message);
        };
        if outcome.left_behind
            && let Some(r) = state.resources.get_mut(&addr)
        {
            // Its region did not confirm the clean-up: remember what to remove.
            r.keep_as_leftover();
        }
        let blocked = self.blocked.entry(node.clone()).or_default();
        blocked.insert(block_for(e.kind, &tried));
        self.attempts
            .entry(addr.clone())
            .or_default()
            .push(Attempt {
                infra: tried.offering.infra(),
                instance_type: tried.offering.instance_type.clone(),
                result: e.message.clone(),
                seconds: outcome.seconds,
            });
        let mut next = change.and_then(|c| {
            c.candidates
                .iter()
                .find(|c| !crate::optimizer::is_blocked(blocked, c))
                .cloned()
        });
        let mut delay = Duration::ZERO;
        let until_up = matches!(
            outcome.spec.as_deref(),
            Some(Spec::Cluster(c)) if c.retry_until_up
        );
        if next.is_none() && until_up && !self.stopping {
            // retry_until_up: start over from the top after a pause.
            blocked.clear();
            next = change.and_then(|c| c.candidates.first().cloned());
            delay = self.applier.failover.retry_delay;
        }
        let (Some(next), Some(change)) = (next, change) else {
            let tried_all = self.attempts.get(&addr).map_or(0, Vec::len);
            let message = format!(
                "{} (no placement left after {tried_all} attempt{})",
                e.message,
                if tried_all == 1 { "" } else { "s" }
            );
            if let Some(r) = state.resources.get_mut(&addr) {
                r.status = Status::Tainted;
                r.attempts = self.attempts.get(&addr).cloned().unwrap_or_default();
            }
            return self.fail(&node, message);
        };
        let mut to = format!("{} {}", next.offering.infra(), next.offering.instance_type);
        if !delay.is_zero() {
            to = format!(
                "{to} (every placement failed; retry_until_up starts over in {})",
                humantime::format_duration(delay)
            );
        }
        self.events.push(Event::FailedOver {
            address: addr.clone(),
            infra: tried.offering.infra(),
            instance_type: tried.offering.instance_type.clone(),
            error: e.message.clone(),
            seconds: outcome.seconds,
            blocked: blocked_what(e.kind, &tried),
            next: to,
        });
        // The new intent (the next placement) is written before it is tried.
        match self.prepare_at(&node, change, state, next) {
            Ok(mut p) => {
                p.delay = delay;
                self.retry(p);
            }
            Err(e) => self.failed_to_start(node, e),
        }
    }
}

impl Applier<'_> {
    /// Removes what earlier attempts may have left behind (their regions did not answer
    /// then), and forgets those that are gone.
    pub(super) async fn clean_leftovers(&self, state: &mut State) -> Result<(), StateError> {
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
                old.placement = l.placement.clone().map(Box::new);
                old.status = Status::Creating;
                old.leftovers.clear();
                let gone =
                    tokio::time::timeout(self.failover.attempt_timeout, p.delete(addr, &old, None))
                        .await;
                crate::faults::passed(crate::faults::Point::Call);
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
pub(super) async fn attempt(
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
        crate::providers::within_attempt(opts.attempt_timeout, tries).await
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

/// Errors that move a create to the next placement rather than failing it.
pub(super) fn fails_over(kind: crate::providers::ErrorKind) -> bool {
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
pub fn block_for(kind: crate::providers::ErrorKind, c: &crate::optimizer::Candidate) -> String {
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
pub(super) fn unreachable(kind: crate::providers::ErrorKind) -> bool {
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
