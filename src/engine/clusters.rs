//! Operations on what runs: status, stopping and starting clusters, shells, logs, waiting
//! for jobs, and the ssh config written after each change.

use super::session::LockOptions;
use super::{Engine, Error, Result, parse_addresses};
use crate::model::{Address, Kind, Spec};
use crate::providers::{Observed, Provider};
use crate::state::{LocalStore, ResourceState, State};
use std::time::Duration;

/// Job statuses after which nothing more happens.
/// Statuses of jobs and managed jobs that will not change by themselves.
pub(super) const FINISHED: [&str; 8] = [
    "SUCCEEDED",
    "FAILED",
    "CANCELLED",
    "LOST",
    "DEGRADED",
    "FAILED_SETUP",
    "FAILED_NO_RESOURCE",
    "FAILED_CONTROLLER",
];

/// The `status` computed attribute of a resource, if any.
fn status_of(r: &ResourceState) -> Option<&str> {
    r.computed.get("status").and_then(|s| s.as_str())
}

/// A resource in state and the backend that keeps it.
fn resource_and_backend<'a>(
    state: &'a State,
    addr: &Address,
    registry: &'a crate::providers::Registry,
) -> Result<(&'a ResourceState, &'a dyn Provider)> {
    let res = state.resources.get(addr).ok_or_else(|| {
        Error::new(format!("{addr} is not in state")).hint("`skyform state list` shows what is")
    })?;
    let p = registry.get(&res.provider).ok_or_else(|| {
        Error::new(format!(
            "provider {:?} is not available in this build",
            res.provider
        ))
    })?;
    Ok((res, p))
}

/// Parses one address that must name a cluster.
pub fn cluster_address(address: &str, what: &str) -> Result<Address> {
    let addr = parse_addresses(&[address.to_string()])?.remove(0);
    if addr.kind != Kind::Cluster {
        return Err(Error::new(format!("{addr} is not a cluster{what}")));
    }
    Ok(addr)
}

impl Engine {
    /// The state with what every backend says is true now (not written back).
    pub async fn status(&self) -> Result<State> {
        let mut state = self.read_state().await?;
        super::refresh::refresh(&mut state, &self.registry(), 64).await;
        Ok(state)
    }

    /// The program and arguments that open a shell on a cluster's head node, or run
    /// `command` there (`skyform ssh`).
    pub async fn shell_argv(&self, addr: &Address, command: &[String]) -> Result<Vec<String>> {
        let state = self.store().await?.read().await?.unwrap_or_default();
        let registry = self.registry();
        let (res, p) = resource_and_backend(&state, addr, &registry)?;
        p.shell(res, command)
            .map_err(|e| Error::new(format!("cannot open a shell on {addr}: {e}")))
    }

    /// Stops a cluster's machines, keeping their disks; state follows.
    pub async fn stop_cluster(&self, addr: &Address, lock: LockOptions) -> Result<()> {
        self.stop_or_start(addr, false, lock).await
    }

    /// Starts a stopped cluster's machines again; state records their new addresses.
    pub async fn start_cluster(&self, addr: &Address, lock: LockOptions) -> Result<()> {
        self.stop_or_start(addr, true, lock).await
    }

    async fn stop_or_start(&self, addr: &Address, run: bool, lock: LockOptions) -> Result<()> {
        let op = if run { "start" } else { "stop" };
        let mut session = self.session(op, lock).await?;
        let result = async {
            let registry = self.registry();
            let (res, p) = resource_and_backend(&session.state, addr, &registry)?;
            let mut res = res.clone();
            let done = if run {
                p.start(&res).await.map(Some)
            } else {
                p.stop(&res).await.map(|()| None)
            };
            if let Some(private) =
                done.map_err(|e| Error::new(format!("cannot {op} {addr}: {e}")))?
            {
                res.private = private;
            }
            // Addresses change across a stop and start: record what is true now.
            let now = p.refresh(addr, &res, None).await;
            if let Some(r) = session.state.resources.get_mut(addr) {
                r.private = res.private.clone();
                if let Ok(Observed::Up(c)) = now {
                    r.computed.extend(c);
                }
                r.computed.insert(
                    "status".into(),
                    serde_json::json!(if run { "UP" } else { "STOPPED" }),
                );
            }
            session.state.serial += 1;
            session.write().await?;
            self.write_ssh_config(&session.state);
            Ok(())
        }
        .await;
        session.release().await;
        result
    }

    /// Waits until every job in `watched` has finished; answers each one's last status.
    pub async fn wait_for_jobs(&self, watched: &[Address]) -> Result<Vec<(Address, String)>> {
        let store = self.store().await?;
        let registry = self.registry();
        loop {
            let mut state = store.read().await?.unwrap_or_default();
            super::refresh::refresh(&mut state, &registry, 64).await;
            let statuses: Vec<(Address, String)> = watched
                .iter()
                .map(|a| {
                    let s = state.resources.get(a).and_then(status_of);
                    (a.clone(), s.unwrap_or("UNKNOWN").to_string())
                })
                .collect();
            if statuses
                .iter()
                .all(|(_, s)| s == "UNKNOWN" || FINISHED.contains(&s.as_str()))
            {
                return Ok(statuses);
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }

    /// Reads a job's logs: everything logged so far, given to `sink` a chunk at a time with
    /// the rank it came from (`None` when the job has one rank); with `follow`, goes on
    /// until the job finishes.
    pub async fn logs(
        &self,
        addr: &Address,
        follow: bool,
        sink: &mut dyn FnMut(Option<usize>, &[u8]),
    ) -> Result<()> {
        let registry = self.registry();
        let mut offsets: Vec<u64> = Vec::new();
        let mut failures = 0;
        loop {
            let mut state = self.read_state().await?;
            let res = state.resources.get(addr).cloned().ok_or_else(|| {
                Error::new(format!("{addr} is not in state"))
                    .hint("list addresses with `skyform state list`")
            })?;
            let cluster_addr = match res.spec.as_ref() {
                Spec::Job(j) => Some(j.cluster.clone()),
                _ => None,
            };
            let cluster = cluster_addr
                .as_ref()
                .and_then(|c| state.resources.get(c).cloned());
            let provider = registry
                .get(&res.provider)
                .ok_or_else(|| Error::new(format!("provider {} is not available", res.provider)))?;
            // Files on this machine are cheap to poll; remote hosts are asked once a second.
            let poll =
                Duration::from_millis(if crate::model::backend::is_this_machine(&res.provider) {
                    200
                } else {
                    1000
                });
            let ranks = match drain_logs(provider, &res, cluster.as_ref(), &mut offsets, sink).await
            {
                Ok(n) => {
                    failures = 0;
                    n
                }
                // Following, a host that does not answer for a moment is waited for.
                Err(e) if follow && !offsets.is_empty() && failures < 30 => {
                    failures += 1;
                    if failures == 1 {
                        self.reporter
                            .notice(super::Notice::Warning(format!("{e}; trying again")));
                    }
                    tokio::time::sleep(poll).await;
                    continue;
                }
                Err(e) => return Err(e),
            };
            if ranks == 0 {
                return Err(Error::new(format!("{addr} has no logs"))
                    .hint("logs exist for jobs, managed jobs and services"));
            }
            if !follow {
                return Ok(());
            }
            // Only this resource (and its cluster) is asked again, however big the state.
            state
                .resources
                .retain(|a, _| a == addr || Some(a) == cluster_addr.as_ref());
            super::refresh::refresh(&mut state, &registry, 8).await;
            let finished = state
                .resources
                .get(addr)
                .and_then(status_of)
                .is_none_or(|s| FINISHED.contains(&s));
            if finished {
                // One last read for lines written just before the end.
                drain_logs(provider, &res, cluster.as_ref(), &mut offsets, sink).await?;
                return Ok(());
            }
            tokio::time::sleep(poll).await;
        }
    }

    /// Writes `.skyform/ssh_config` (per workspace): a `Host` entry for each cluster reached
    /// with ssh, named like its address without `cluster.` (`ssh -F .skyform/ssh_config
    /// dev`, or `Include` it from `~/.ssh/config`). Removed when no cluster has one.
    pub fn write_ssh_config(&self, state: &State) {
        let registry = self.registry();
        let ws = &self.config.workspace;
        let path = self.workspace_path(".skyform/ssh_config");
        let mut text = format!(
            "# Written by skyform after each apply: the head node of each cluster of {} (workspace {ws}).\n",
            self.dir.display()
        );
        let mut any = false;
        for (addr, r) in &state.resources {
            if addr.kind != Kind::Cluster {
                continue;
            }
            let Some(entry) = registry.get(&r.provider).and_then(|p| p.ssh_entry(r).ok()) else {
                continue;
            };
            let name: String = addr
                .to_string()
                .replacen("cluster.", "", 1)
                .chars()
                .map(|c| {
                    if c.is_ascii_alphanumeric() || ".-_".contains(c) {
                        c
                    } else {
                        '-'
                    }
                })
                .collect();
            text.push('\n');
            text.push_str(&entry.config_block(name.trim_matches('-')));
            any = true;
        }
        let result = if any {
            path.parent()
                .map_or(Ok(()), std::fs::create_dir_all)
                .map_err(|e| e.to_string())
                .and_then(|()| {
                    LocalStore::write_atomic(&path, text.as_bytes()).map_err(|e| e.to_string())
                })
        } else {
            match std::fs::remove_file(&path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e.to_string()),
                _ => Ok(()),
            }
        };
        if let Err(e) = result {
            tracing::warn!(path = %path.display(), error = %e, "cannot write the ssh config");
        }
    }
}

/// Gives `sink` everything each rank has logged past `offsets` (a log may come in several
/// chunks); answers the number of ranks.
async fn drain_logs(
    provider: &dyn Provider,
    res: &ResourceState,
    cluster: Option<&ResourceState>,
    offsets: &mut Vec<u64>,
    sink: &mut dyn FnMut(Option<usize>, &[u8]),
) -> Result<usize> {
    loop {
        let chunks = provider
            .read_logs(res, cluster, offsets)
            .await
            .map_err(|e| Error::new(format!("cannot read the logs: {e}")))?;
        offsets.resize(chunks.len(), 0);
        let multi = chunks.len() > 1;
        let mut more = false;
        for (rank, chunk) in chunks.iter().enumerate() {
            offsets[rank] += chunk.len() as u64;
            more |= chunk.len() >= 1 << 20;
            sink(multi.then_some(rank), chunk);
        }
        if !more {
            return Ok(chunks.len());
        }
    }
}
