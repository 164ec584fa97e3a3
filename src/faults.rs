//! Crash points for the crash-safety tests: `SKYFORM_CRASH_AFTER=KIND:K` makes the process
//! kill itself (SIGKILL: no destructor, flush or handler runs) right after the K-th event of
//! KIND, which is one of
//!
//! - `call`: a call of apply or the controller to a backend that may change the world
//!   (create, update, delete, a batch of job cancels, removing what a failed attempt left)
//!   has returned, and its result is not yet in state (or the controller's book);
//! - `write`: a state write of apply, or a write of the controller's book, has finished;
//! - `remote`: a command on a remote host (ssh pools) has returned;
//! - `cloud`: a call to a cloud's API that may change the world (EC2's key pairs, groups
//!   and instances; GCE's firewall rules and instances) has returned, before the provider
//!   goes on.
//!
//! Unset (always, outside tests) this costs one relaxed load per event. The hook is a
//! crash, not a mock: everything before it happened for real, and the next run must find
//! it (docs/state.md, "Crash safety").

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

/// An event a crash can follow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Point {
    Call,
    Write,
    Remote,
    Cloud,
}

impl Point {
    fn name(self) -> &'static str {
        match self {
            Point::Call => "call",
            Point::Write => "write",
            Point::Remote => "remote",
            Point::Cloud => "cloud",
        }
    }
}

/// The crash asked for, read once: which event and after how many.
fn target() -> Option<(Point, u64)> {
    static TARGET: OnceLock<Option<(Point, u64)>> = OnceLock::new();
    *TARGET.get_or_init(|| {
        let v = std::env::var("SKYFORM_CRASH_AFTER").ok()?;
        let (kind, k) = v.split_once(':')?;
        let point = [Point::Call, Point::Write, Point::Remote, Point::Cloud]
            .into_iter()
            .find(|p| p.name() == kind)?;
        Some((point, k.parse().ok()?))
    })
}

/// Records that `point` happened; the K-th time, when asked to, the process dies here.
pub fn passed(point: Point) {
    static SEEN: AtomicU64 = AtomicU64::new(0);
    let Some((want, k)) = target() else {
        return;
    };
    if want == point && SEEN.fetch_add(1, Ordering::SeqCst) + 1 == k {
        tracing::debug!(point = point.name(), k, "crashing here, as asked");
        crate::runtime::proc::kill_self();
    }
}
