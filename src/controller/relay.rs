//! What the controller keeps of a managed job on the machine it runs on, under
//! `.skyform/managed/TASK/`: the logs of its last placement once the machines are gone, and
//! its final status where the cluster runtime of a job that depends on it looks (afterok).
//! The kept logs are copied beside the state too (side documents of the state store), so
//! `skyform logs` shows them wherever the controller runs (a Deployment, another machine).

use super::book::Run;
use super::policy::Phase;
use crate::runtime::{JobState, JobStatus, Layout};
use crate::state::StateStore;
use std::io::Write;
use std::path::{Path, PathBuf};

/// The directory of a managed job's records.
pub fn dir(config_dir: &Path, workspace: &str, task: &str) -> PathBuf {
    config_dir.join(crate::state::workspace_key(
        &format!(".skyform/managed/{task}"),
        workspace,
    ))
}

pub fn log_path(dir: &Path, rank: usize) -> PathBuf {
    dir.join(format!("rank-{rank}.log"))
}

/// The kept log files, by rank.
pub fn log_paths(dir: &Path) -> Vec<PathBuf> {
    (0..)
        .map(|rank| log_path(dir, rank))
        .take_while(|p| p.exists())
        .collect()
}

pub fn append_log(dir: &Path, rank: usize, chunk: &[u8]) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log_path(dir, rank))?
        .write_all(chunk)
}

/// The side document holding a rank's kept log.
fn side_name(task: &str, rank: usize) -> String {
    format!("managed.{task}.rank-{rank}.log")
}

/// Copies the kept logs of `task` (in `dir`) beside the state.
pub async fn publish_logs(store: &dyn StateStore, dir: &Path, task: &str) -> Result<(), String> {
    for (rank, path) in log_paths(dir).iter().enumerate() {
        let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let name = side_name(task, rank);
        let version = store
            .read_side(&name)
            .await
            .map_err(|e| e.to_string())?
            .map(|(_, v)| v);
        store
            .write_side(&name, &bytes, version.as_deref())
            .await
            .map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// The kept logs of `task` beside the state, by rank.
pub async fn stored_logs(store: &dyn StateStore, task: &str) -> Result<Vec<Vec<u8>>, String> {
    let mut out = Vec::new();
    while let Some((bytes, _)) = store
        .read_side(&side_name(task, out.len()))
        .await
        .map_err(|e| e.to_string())?
    {
        out.push(bytes);
    }
    Ok(out)
}

/// Writes the job's final status in the runtime's format, at the path a dependent job's
/// runtime reads (`Layout::new(dir).status(task)`).
pub fn write_status(dir: &Path, task: &str, run: &Run) -> std::io::Result<()> {
    let state = match run.phase {
        Phase::Succeeded => JobState::Succeeded,
        Phase::Cancelled => JobState::Cancelled,
        p if p.is_final() => JobState::Failed,
        _ => return Ok(()),
    };
    let status = JobStatus {
        state,
        exit_code: run.exit_code,
        reason: run.reason.clone(),
        ..crate::runtime::queued_status()
    };
    let path = Layout::new(dir).status(task);
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    crate::runtime::write_json(&path, &status)
}
