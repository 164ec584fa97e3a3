//! Existing machines over SSH (`infra "ssh" "POOL" { hosts, user, identity_file, port }`).
//!
//! The parts, bottom up: `transport.rs` is one multiplexed OpenSSH session per host (the
//! `openssh` crate drives the system `ssh`), host keys trusted on first use and recorded in
//! skyform's own known_hosts file, a changed key refused with a clear error, and every
//! remote command passed as separately quoted arguments, so a configuration value reaches
//! the remote program as literal text. On top of it, [`probe`] (`probing.rs`) discovers a host's CPUs,
//! memory and GPUs, [`Pool`] (`pool.rs`) reads a pool's settings and holds hosts, [`SshProvider`]
//! (in `provider.rs`) holds whole hosts of a pool as clusters, and [`runtime`] runs
//! skyform's node agents and jobs on them.

mod pool;
mod probing;
mod provider;
pub mod remote;
pub mod runtime;
mod transport;

use super::ProviderError;

pub use crate::model::Host;
pub use pool::Pool;
pub use probing::{Facts, probe};
pub use provider::SshProvider;
pub use remote::RemoteCluster;
pub use transport::{Access, Connection, Output, control_dir, default_known_hosts};

/// The directory skyform keeps on each host: `$SKYFORM_HOST_DIR` when set, else one per host
/// under `~/.skyform/host/`, named by the host's identity (its hostname and machine id), so
/// hosts that share one home directory (NFS homes on lab clusters) keep apart with no setup
/// on the server. A home that already has skyform's files directly in `~/.skyform/host`
/// (from builds before this) keeps using them.
pub const HOST_DIR: &str = r#"dir="${SKYFORM_HOST_DIR:-}"
if [ -z "$dir" ]; then
  dir="$HOME/.skyform/host"
  if ! [ -e "$dir/clusters" ] && ! [ -e "$dir/bin" ] && ! [ -L "$dir/reservation" ] && ! [ -e "$dir/reservation" ]; then
    dir="$dir/$(hostname 2>/dev/null || uname -n)-$(cut -c1-12 /etc/machine-id 2>/dev/null)"
  fi
fi"#;

/// Waits for work running on several hosts at once; the first failure (a task that
/// panicked counts) is the answer, after every task has ended.
async fn all_done(
    mut set: tokio::task::JoinSet<Result<(), ProviderError>>,
) -> Result<(), ProviderError> {
    let mut first = None;
    while let Some(r) = set.join_next().await {
        match r {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                first.get_or_insert(e);
            }
            Err(e) => {
                first.get_or_insert(ProviderError::other(e.to_string()));
            }
        }
    }
    first.map_or(Ok(()), Err)
}
