//! Starting the controller in the background on the machine that applied: a detached
//! `skyform controller run -exit-when-idle` in the configuration directory, logging to
//! `.skyform/controller.log`. It stops by itself once no managed job needs it.

use super::book;
use crate::state::{StateError, StateStore};
use std::path::Path;
use std::process::{Command, Stdio};

/// Starts a background controller unless one holds a live lease; answers its process id
/// when it started one.
pub async fn ensure_running(
    store: &dyn StateStore,
    dir: &Path,
    workspace: &str,
    exe: Option<&Path>,
) -> Result<Option<u32>, StateError> {
    let (b, _) = book::read(store).await?;
    if b.lease.as_ref().is_some_and(|l| l.is_live(book::now_ms())) {
        return Ok(None);
    }
    // One start per state from this process within a few seconds: a controller just started
    // takes its lease a moment later (and lingers a while before it stops as idle).
    static STARTED: std::sync::Mutex<Vec<(std::path::PathBuf, String, std::time::Instant)>> =
        std::sync::Mutex::new(Vec::new());
    if let Ok(mut started) = STARTED.lock() {
        started.retain(|(_, _, at)| at.elapsed() < std::time::Duration::from_secs(3));
        if started.iter().any(|(d, w, _)| d == dir && w == workspace) {
            return Ok(None);
        }
        started.push((
            dir.to_path_buf(),
            workspace.to_string(),
            std::time::Instant::now(),
        ));
    }
    start(dir, workspace, exe)
        .map(Some)
        .map_err(|source| StateError::Io {
            what: "cannot start the controller from",
            path: dir.display().to_string(),
            source,
        })
}

/// Starts `skyform controller run -exit-when-idle` detached from this process's session.
pub fn start(dir: &Path, workspace: &str, exe: Option<&Path>) -> std::io::Result<u32> {
    use std::os::unix::process::CommandExt;
    let exe = match exe {
        Some(e) => e.to_path_buf(),
        None => match std::env::var_os("SKYFORM_AGENT_EXE") {
            Some(e) => e.into(),
            None => std::env::current_exe()?,
        },
    };
    let logs = dir.join(".skyform");
    std::fs::create_dir_all(&logs)?;
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(logs.join("controller.log"))?;
    let child = Command::new(exe)
        .args(["controller", "run", "-exit-when-idle"])
        .current_dir(dir)
        .env("SKYFORM_WORKSPACE", workspace)
        // A crash point asked of the run that starts it is that run's, not the controller's.
        .env_remove("SKYFORM_CRASH_AFTER")
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .process_group(0)
        .spawn()?;
    Ok(child.id())
}
