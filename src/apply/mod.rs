//! Apply: walk the plan's changes as a dependency graph, concurrently, writing state after
//! every round of changes. A failure skips only what depends on it; Ctrl-C lets in-flight
//! work finish.
//!
//! - `graph`: the steps (a replace is a delete and a create) and the order between them;
//! - `walk`: the walk itself, which owns its bookkeeping;
//! - `step`: what one step calls, and how its result is recorded;
//! - `failover`: attempts at a placement, and moving down the plan's list;
//! - `reevaluate`: values unknown at plan time, evaluated once what they depend on exists.

mod failover;
pub use failover::block_for;
mod graph;
mod reevaluate;
mod step;
mod walk;

pub use reevaluate::Reevaluate;

use crate::model::Address;
use crate::plan::Plan;
use crate::providers::Registry;
use crate::state::{OutputState, State, StateError, StateStore};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

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
    /// What a long step waits for now (a machine to accept ssh, …).
    Progress {
        address: Address,
        what: String,
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
    pub resolve: Option<&'a Reevaluate<'a>>,
    pub failover: FailoverOptions,
}

impl std::fmt::Debug for Applier<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Applier")
            .field("root", &self.root)
            .finish_non_exhaustive()
    }
}

impl Applier<'_> {
    /// Carries out `plan` against `state` (already refreshed and locked by the caller).
    pub async fn apply(&self, plan: &Plan, state: &mut State) -> Result<Summary, ApplyError> {
        self.clean_leftovers(state).await?;
        Ok(walk::Walk::new(self, plan, state).run(state).await?)
    }

    async fn save(&self, state: &mut State, changed: &[Address]) -> Result<(), StateError> {
        state.serial += 1;
        tracing::debug!(
            serial = state.serial,
            changed = changed.len(),
            "writing state"
        );
        self.store.write_changes(state, changed).await?;
        crate::faults::passed(crate::faults::Point::Write);
        (self.on_event)(&Event::StateWritten {
            serial: state.serial,
        });
        Ok(())
    }
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

#[cfg(test)]
mod tests;
