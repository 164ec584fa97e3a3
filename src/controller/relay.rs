//! What the controller keeps of a managed job on the machine it runs on, under
//! `.skyform/managed/TASK/`: the logs of its last placement once the machines are gone, and
//! its final status where the cluster runtime of a job that depends on it looks (afterok).

use super::book::Run;
use super::policy::Phase;
use crate::runtime::{JobState, JobStatus, Layout};
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
