//! How the runtime spans machines. A node on another machine than the head keeps its own
//! cluster directory there; the head's scheduler still writes `node-<r>/tasks` and reads
//! `node-<r>/done` in its own directory, and a relay per remote node carries them over a
//! link: a command (for ssh clusters, `ssh worker skyform __link DIR RANK`) whose stdin and
//! stdout carry one JSON message per line. Everything on both sides is a file first, so a
//! link that drops is simply started again and resends what is pending.
//!
//! The other entry point is [`answer`]: what a client (skyform on the user's machine) asks
//! of a cluster's head — submit, status, cancel — as one JSON call on stdin of
//! `skyform __runtime DIR`, or in process for clusters on this machine.

use super::{JobRecord, JobStatus, Layout, Task, TaskDone, read_json, write_json};
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// One line on a link.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Message {
    /// head → node: run this task (again: ignored when it runs or ran).
    Task(Task),
    /// head → node: stop this task.
    Cancel(String),
    /// node → head: a task ended.
    Done { id: String, exit_code: i32 },
}

const TICK: Duration = Duration::from_millis(100);

fn ids_with(dir: &Path, ext: &str) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .filter_map(|e| {
            let p = e.path();
            (p.extension()? == ext).then(|| p.file_stem()?.to_str().map(str::to_string))?
        })
        .collect();
    v.sort();
    v
}

/// The head's side of the link to node `rank`, run on a thread of the head agent until the
/// cluster directory goes away.
pub fn relay(layout: Layout, rank: u32, argv: Vec<String>) {
    let (tasks, done) = (layout.tasks(rank), layout.done(rank));
    let _ = std::fs::create_dir_all(&tasks);
    let _ = std::fs::create_dir_all(&done);
    let log_path = layout.node(rank).join("link.log");
    // Reconnects wait longer each time the link fails soon (an unreachable node), up to 30 s.
    let mut backoff = Duration::from_secs(1);
    while layout.root.is_dir() {
        let Some((program, args)) = argv.split_first() else {
            return;
        };
        let opened = std::time::Instant::now();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map(Stdio::from)
            .unwrap_or_else(|_| Stdio::null());
        let child = Command::new(program)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn();
        let mut child = match child {
            Ok(c) => c,
            Err(e) => {
                append(&log_path, &format!("cannot start {program}: {e}"));
                std::thread::sleep(backoff);
                backoff = (backoff * 2).min(Duration::from_secs(30));
                continue;
            }
        };
        let (Some(mut stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
            let _ = child.kill();
            let _ = child.wait();
            continue;
        };
        let (tasks_r, done_r) = (tasks.clone(), done.clone());
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Ok(Message::Done { id, exit_code }) = serde_json::from_str(&line) {
                    let _ = write_json(&done_r.join(format!("{id}.json")), &TaskDone { exit_code });
                    let _ = std::fs::remove_file(tasks_r.join(format!("{id}.json")));
                }
            }
        });
        let mut sent: BTreeSet<String> = BTreeSet::new();
        'link: while layout.root.is_dir() && !reader.is_finished() {
            let mut out = Vec::new();
            for id in ids_with(&tasks, "json") {
                if sent.contains(&id) || done.join(format!("{id}.json")).exists() {
                    continue;
                }
                if let Some(task) = read_json::<Task>(&tasks.join(format!("{id}.json"))) {
                    out.push(Message::Task(task));
                    sent.insert(id);
                }
            }
            for id in ids_with(&tasks, "cancel") {
                out.push(Message::Cancel(id.clone()));
                let _ = std::fs::remove_file(tasks.join(format!("{id}.cancel")));
            }
            for m in out {
                let Ok(line) = serde_json::to_string(&m) else {
                    continue;
                };
                if writeln!(stdin, "{line}")
                    .and_then(|()| stdin.flush())
                    .is_err()
                {
                    break 'link;
                }
            }
            std::thread::sleep(TICK);
        }
        drop(stdin);
        let _ = child.kill();
        let _ = child.wait();
        let _ = reader.join();
        if layout.root.is_dir() {
            if opened.elapsed() > Duration::from_secs(60) {
                backoff = Duration::from_secs(1);
            }
            append(
                &log_path,
                &format!("link closed; starting it again in {}s", backoff.as_secs()),
            );
            std::thread::sleep(backoff);
            backoff = (backoff * 2).min(Duration::from_secs(30));
        }
    }
}

fn append(path: &Path, line: &str) {
    if let Ok(mut f) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
    {
        let _ = writeln!(f, "{}: {line}", super::now_rfc3339());
    }
}

/// The node's side of a link (`skyform __link DIR RANK`): tasks from stdin become files
/// for the node's agent; the agent's exit codes go back on stdout. Ends with stdin.
pub fn run_link(cluster_dir: &Path, rank: u32) -> std::io::Result<()> {
    let layout = Layout::new(cluster_dir);
    let (tasks, done) = (layout.tasks(rank), layout.done(rank));
    std::fs::create_dir_all(&tasks)?;
    std::fs::create_dir_all(&done)?;
    let closed = Arc::new(AtomicBool::new(false));
    {
        let (tasks, done, closed) = (tasks.clone(), done.clone(), closed.clone());
        std::thread::spawn(move || {
            for line in std::io::stdin().lock().lines() {
                let Ok(line) = line else { break };
                match serde_json::from_str::<Message>(&line) {
                    Ok(Message::Task(t)) if !done.join(format!("{}.json", t.id)).exists() => {
                        let _ = write_json(&tasks.join(format!("{}.json", t.id)), &t);
                    }
                    Ok(Message::Cancel(id)) => {
                        let _ = std::fs::write(tasks.join(format!("{id}.cancel")), b"");
                    }
                    _ => {}
                }
            }
            closed.store(true, Ordering::SeqCst);
        });
    }
    let mut reported: BTreeSet<String> = BTreeSet::new();
    let mut out = std::io::stdout().lock();
    while !closed.load(Ordering::SeqCst) && cluster_dir.is_dir() {
        for id in ids_with(&done, "json") {
            if reported.contains(&id) {
                continue;
            }
            if let Some(d) = read_json::<TaskDone>(&done.join(format!("{id}.json"))) {
                let m = Message::Done {
                    id: id.clone(),
                    exit_code: d.exit_code,
                };
                writeln!(
                    out,
                    "{}",
                    serde_json::to_string(&m).map_err(std::io::Error::other)?
                )?;
                out.flush()?;
                reported.insert(id);
            }
        }
        std::thread::sleep(TICK);
    }
    Ok(())
}

/// The exit code of `skyform __runtime` in a directory that holds no cluster.
pub const EXIT_NO_CLUSTER: i32 = 3;

/// What a client asks of a cluster's head.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Call {
    Submit { job: JobRecord },
    Status { job: String },
    Cancel { job: String },
}

/// The head's answer: the job's status after the call (None: the head has no such job).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Answer {
    pub status: Option<JobStatus>,
}

/// Why a call could not be answered.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    #[error("no cluster runs in {0}")]
    NoCluster(String),
    #[error("the cluster is stopped: its agents run no job until `skyform start` starts it")]
    Stopped,
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

impl CallError {
    /// The exit code of `skyform __runtime` for this error.
    pub fn exit_code(&self) -> i32 {
        match self {
            CallError::NoCluster(_) => EXIT_NO_CLUSTER,
            CallError::Stopped => EXIT_STOPPED,
            CallError::Io(_) => 1,
        }
    }
}

/// The exit code of `skyform __runtime` when a job is submitted to a stopped cluster.
pub const EXIT_STOPPED: i32 = 4;

/// Answers a call against the cluster directory `dir`.
pub fn answer(dir: &Path, call: &Call) -> Result<Answer, CallError> {
    let layout = Layout::new(dir);
    let job = match call {
        Call::Submit { job } => {
            if layout.stopped().exists() {
                return Err(CallError::Stopped);
            }
            super::submit(&layout, job)?;
            job.id.as_str()
        }
        Call::Status { job } => job.as_str(),
        Call::Cancel { job } => {
            if super::job_status(&layout, job).is_some_and(|s| !s.state.is_final()) {
                super::cancel(&layout, job)?;
            }
            job.as_str()
        }
    };
    Ok(Answer {
        status: super::job_status(&layout, job),
    })
}

/// `skyform __runtime DIR`: one call on stdin, its answer on stdout. A directory that is
/// no cluster's (released, or never made) and a stopped cluster have exit codes of their own.
pub fn serve_call(dir: &Path) -> Result<(), CallError> {
    if !Layout::new(dir).info().is_file() {
        return Err(CallError::NoCluster(dir.display().to_string()));
    }
    let call: Call = serde_json::from_reader(std::io::stdin().lock())
        .map_err(|e| std::io::Error::other(format!("not a runtime call: {e}")))?;
    let a = answer(dir, &call)?;
    println!(
        "{}",
        serde_json::to_string(&a).map_err(std::io::Error::other)?
    );
    Ok(())
}

/// The agent binary a backend starts on nodes: `SKYFORM_AGENT_EXE`, else this program.
pub fn agent_exe() -> PathBuf {
    std::env::var_os("SKYFORM_AGENT_EXE")
        .map(PathBuf::from)
        .or_else(|| std::env::current_exe().ok())
        .unwrap_or_else(|| PathBuf::from("skyform"))
}
