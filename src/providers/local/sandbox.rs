//! A local cluster's sandbox: its directory under `.skyform/local/`, the node agents started
//! in sessions of their own (and found again to be stopped, recorded or not), the workdir
//! copied in, setup run, and jobs handed to the head's queue in process.

use super::super::jobs::{self, job_id};
use super::super::{ProviderError, Request};
use super::LocalProvider;
use crate::model::Address;
use crate::runtime::{self, ClusterInfo, Layout, proc};
use serde_json::json;
use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

impl LocalProvider {
    /// Creates the sandbox, starts the agents, syncs the workdir and runs setup.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn launch(
        &self,
        address: &Address,
        dir: &Path,
        nodes: u32,
        workdir: Option<&Path>,
        envs: &BTreeMap<String, String>,
        setup: Option<&str>,
        autostop: Option<&crate::model::Autostop>,
    ) -> Result<Vec<serde_json::Value>, ProviderError> {
        let layout = Layout::new(dir);
        std::fs::create_dir_all(layout.queue())?;
        let info = ClusterInfo {
            name: address.to_string(),
            num_nodes: nodes,
            cpus_per_node: self.cpus,
            gpus_per_node: self.gpus_per_node(),
            envs: envs.clone(),
            ips: (0..nodes).map(|_| "127.0.0.1".to_string()).collect(),
            links: BTreeMap::new(),
            autostop: autostop.map(|a| Self::autostop(dir, a)),
            build: None,
            hosts: Vec::new(),
        };
        runtime::write_json(&layout.info(), &info)?;
        for rank in 0..nodes {
            std::fs::create_dir_all(layout.workdir(rank))?;
            if let Some(src) = workdir {
                sync_dir(src, &layout.workdir(rank))?;
            }
        }
        tracing::debug!(cluster = %address, dir = %dir.display(), "starting node agents");
        let agents = self.start_agents(dir, nodes).await?;
        if let Some(setup) = setup {
            runtime::run_everywhere(&layout, nodes, "setup", setup, envs, self.setup_timeout)
                .await
                .map_err(ProviderError::other)?;
        }
        Ok(agents)
    }

    /// Autostop on this machine: the sandbox is marked stopped (its agents end), or removed.
    pub(super) fn autostop(dir: &Path, a: &crate::model::Autostop) -> runtime::Autostop {
        let layout = Layout::new(dir);
        let command = if a.down {
            vec!["rm".into(), "-rf".into(), dir.display().to_string()]
        } else {
            vec!["touch".into(), layout.stopped().display().to_string()]
        };
        runtime::Autostop {
            idle_seconds: runtime::idle_seconds(a.idle_minutes),
            commands: vec![command],
        }
    }

    /// Starts one agent per node and waits until each has announced itself.
    pub(super) async fn start_agents(
        &self,
        dir: &Path,
        nodes: u32,
    ) -> Result<Vec<serde_json::Value>, ProviderError> {
        let layout = Layout::new(dir);
        let mut agents = Vec::new();
        for rank in 0..nodes {
            let log = std::fs::File::create(layout.node(rank).join("agent.log"))?;
            let mut cmd = std::process::Command::new(&self.agent_exe);
            cmd.arg("__agent")
                .arg(dir)
                .arg(rank.to_string())
                .stdin(std::process::Stdio::null())
                .stdout(log.try_clone()?)
                .stderr(log);
            proc::new_session(&mut cmd);
            let child = cmd.spawn().map_err(|e| {
                ProviderError::other(format!(
                    "cannot start the node agent {}: {e}",
                    self.agent_exe.display()
                ))
            })?;
            let pid = child.id();
            // The agent outlives us; dropping the handle does not kill it.
            drop(child);
            let start = proc::stat(pid).map(|s| s.start_time);
            agents.push(json!({"rank": rank, "pid": pid, "start_time": start}));
        }
        // The cluster is up once every agent runs and has announced itself.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        for (rank, agent) in agents.iter().enumerate() {
            let pid = agent["pid"].as_u64();
            loop {
                let announced = runtime::read_json::<serde_json::Value>(&layout.agent(rank as u32))
                    .is_some_and(|a| a.get("pid").and_then(serde_json::Value::as_u64) == pid);
                if announced {
                    break;
                }
                if pid.is_some_and(|p| !proc::alive(p as u32, None)) {
                    let log = std::fs::read_to_string(layout.node(rank as u32).join("agent.log"))
                        .unwrap_or_default();
                    return Err(ProviderError::other(format!(
                        "the agent of node {rank} exited at start: {}",
                        log.trim()
                    )));
                }
                if tokio::time::Instant::now() > deadline {
                    return Err(ProviderError::other(format!(
                        "the agent of node {rank} did not start within 30 s"
                    )));
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
        Ok(agents)
    }

    /// Kills every node agent of a sandbox: those recorded in state and those that announced
    /// themselves in the sandbox (a create interrupted before state was written).
    pub(super) fn kill_agents(private: &serde_json::Value) {
        let mut agents = Self::node_agents(private);
        if let Some(dir) = Self::cluster_dir(private)
            && let Ok(rd) = std::fs::read_dir(&dir)
        {
            for e in rd.filter_map(Result::ok) {
                if let Some(a) =
                    runtime::read_json::<serde_json::Value>(&e.path().join("agent.json"))
                    && let Some(pid) = a
                        .get("pid")
                        .and_then(serde_json::Value::as_u64)
                        .and_then(|p| u32::try_from(p).ok())
                {
                    agents.push((pid, a.get("start_time").and_then(serde_json::Value::as_u64)));
                }
            }
        }
        if let Some(dir) = Self::cluster_dir(private) {
            agents.extend(proc::agents_of(&dir).into_iter().map(|p| (p, None)));
        }
        agents.sort_unstable();
        agents.dedup();
        for (pid, start) in agents {
            // Only kill a session whose leader is still the process we started.
            if proc::alive(pid, start) || !proc::session_members(pid).is_empty() {
                proc::kill_session(pid);
            }
        }
    }

    /// Submits the request's job to the queue of the cluster in `dir`; returns the job id.
    pub(super) fn submit<'r>(req: &'r Request<'_>, dir: &Path) -> Result<&'r str, ProviderError> {
        let id = job_id(req.private).unwrap_or_default();
        let after = req
            .after
            .iter()
            .filter_map(|(addr, dep)| {
                let job = job_id(&dep.private)?;
                let dir = Self::cluster_dir(&dep.private)?;
                Some(runtime::Dependency {
                    status: Layout::new(dir).status(job),
                    name: addr.to_string(),
                })
            })
            .collect();
        let record = jobs::record(req.address, req.spec, id, after)
            .ok_or_else(|| ProviderError::other("not a job"))?;
        // The same call a remote head answers, made in process.
        runtime::link::answer(dir, &runtime::link::Call::Submit { job: record })?;
        Ok(id)
    }
}

/// Makes `dst` a copy of `src` (files, directories, symlinks as links), removing what `src`
/// no longer has.
pub fn sync_dir(src: &Path, dst: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dst)?;
    for entry in std::fs::read_dir(dst)? {
        let entry = entry?;
        let name = entry.file_name();
        let there = src.join(&name);
        let keep = match (std::fs::symlink_metadata(&there), entry.file_type()) {
            (Ok(m), Ok(t)) => {
                m.is_dir() == t.is_dir() && m.file_type().is_symlink() == t.is_symlink()
            }
            _ => false,
        };
        if !keep {
            if entry.file_type()?.is_dir() {
                std::fs::remove_dir_all(entry.path())?;
            } else {
                std::fs::remove_file(entry.path())?;
            }
        }
    }
    for entry in std::fs::read_dir(src)? {
        let entry = entry?;
        let ft = entry.file_type()?;
        let to = dst.join(entry.file_name());
        if entry.file_name() == ".skyform" || entry.file_name() == ".git" {
            continue;
        }
        if ft.is_dir() {
            sync_dir(&entry.path(), &to)?;
        } else if ft.is_symlink() {
            let target = std::fs::read_link(entry.path())?;
            let _ = std::fs::remove_file(&to);
            std::os::unix::fs::symlink(target, &to)?;
        } else {
            std::fs::copy(entry.path(), &to)?;
        }
    }
    Ok(())
}
