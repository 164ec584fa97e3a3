//! The controller: the long-running second caller of the engine. Apply declares managed
//! jobs; the controller launches them, watches them, recovers them when their machines are
//! lost, and removes what they leave, between applies and without a human.
//!
//! The rooms: `policy` (pure decisions: when a placement counts as lost, restarts, backoff,
//! the order regions are tried in), `book` (its record and lease, a side document of the
//! state store written by compare-and-swap), `reconcile` (the loop doing the IO), `handoff`
//! (the `managed` backend through which apply hands managed jobs over), `relay` (logs and
//! final statuses kept on this machine), `spawn` (starting it in the background).

pub mod book;
pub mod handoff;
pub mod placement;
pub mod policy;
pub mod reconcile;
pub mod relay;
pub mod service;
pub mod serving;
pub mod spawn;
mod step;

pub use reconcile::{Controller, Ended};

use std::time::Duration;

/// What a backend other than Kubernetes says of a declared controller.
pub const ONLY_ON_KUBERNETES: &str =
    "a declared controller runs on Kubernetes (infra = \"k8s/NAME\"), not on this backend";

/// How the controller paces itself. The defaults are SkyPilot's where it has one; tests
/// shorten them through the environment (`SKYFORM_CONTROLLER_*`, see docs/managed-jobs.md).
#[derive(Debug, Clone)]
pub struct Settings {
    /// Time between passes over the managed jobs.
    pub tick: Duration,
    /// How long the provider must keep saying a placement is lost before it is recovered.
    pub grace: Duration,
    /// Backoff after no placement had room: the first wait, and the longest.
    pub retry_base: Duration,
    pub retry_cap: Duration,
    /// How long a lease lasts without renewal.
    pub lease_ttl: Duration,
    /// How long one launch may wait for machines.
    pub launch_timeout: Duration,
    /// Stop once no managed job needs watching (the background controller apply starts).
    pub exit_when_idle: bool,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            tick: Duration::from_secs(2),
            grace: Duration::from_secs(20),
            retry_base: Duration::from_secs(60),
            retry_cap: Duration::from_secs(300),
            lease_ttl: Duration::from_secs(60),
            launch_timeout: Duration::from_secs(20 * 60),
            exit_when_idle: false,
        }
    }
}

impl Settings {
    /// The defaults, with `SKYFORM_CONTROLLER_{TICK,GRACE,RETRY_BASE,RETRY_CAP,LEASE_TTL,
    /// LAUNCH_TIMEOUT}_MS` applied where set.
    pub fn from_env() -> Settings {
        let ms = |name: &str, default: Duration| {
            std::env::var(format!("SKYFORM_CONTROLLER_{name}_MS"))
                .ok()
                .and_then(|v| v.trim().parse::<u64>().ok())
                .map_or(default, Duration::from_millis)
        };
        let d = Settings::default();
        Settings {
            tick: ms("TICK", d.tick),
            grace: ms("GRACE", d.grace),
            retry_base: ms("RETRY_BASE", d.retry_base),
            retry_cap: ms("RETRY_CAP", d.retry_cap),
            lease_ttl: ms("LEASE_TTL", d.lease_ttl),
            launch_timeout: ms("LAUNCH_TIMEOUT", d.launch_timeout),
            exit_when_idle: false,
        }
    }
}
