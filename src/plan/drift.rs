//! Drift: what refresh found changed outside skyform, one typed record per finding. The
//! renderers put them into words (`render::human::drift`); code compares them as data.

use crate::model::Address;
use crate::state::Status;
use serde::{Deserialize, Serialize};

/// One thing refresh found changed outside skyform.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Drift {
    pub address: Address,
    pub change: DriftChange,
}

/// What changed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum DriftChange {
    /// A job whose submission was interrupted did reach its cluster's queue.
    AdoptedSubmitted,
    /// A creation that was interrupted did finish; state takes it as it is.
    AdoptedCreated,
    /// It exists but is broken (a node died); the plan replaces it.
    Degraded { reason: String },
    /// It was removed outside skyform; the plan creates it again.
    Gone { reason: String },
    /// Its backend could not be asked.
    RefreshFailed { error: String },
    /// Refresh-only: it no longer exists and leaves the state.
    Left,
    /// Refresh-only: a computed attribute (`status`, `exit_code`) moved.
    Attribute {
        key: String,
        was: Option<serde_json::Value>,
        now: Option<serde_json::Value>,
    },
    /// Refresh-only: its recorded lifecycle status moved.
    Status { was: Status, now: Status },
}

impl Drift {
    pub fn new(address: Address, change: DriftChange) -> Drift {
        Drift { address, change }
    }
}
