//! The cluster runtime: what runs on a cluster's nodes — a job queue kept on the head node, an
//! agent per node that runs tasks in its own session, and logs and exit codes on disk.
//!
//! Layout of a cluster directory (local sandboxes today; the same tree on remote heads later):
//!
//! ```text
//! cluster.json                 envs and shape, written by skyform
//! queue/<job>.json             submitted jobs (written atomically by skyform)
//! queue/<job>.cancel           a cancel request
//! queue/<batch>.cancels        cancel requests for many jobs (a JSON list of ids)
//! queue/<job>.cancelled        the record of a job cancelled before it started (renamed)
//! jobs/<job>/status.json       state of each job (written by the head agent)
//! jobs/<job>/rank-<r>.log      stdout and stderr of each rank
//! node-<r>/workdir/            the synced workdir
//! node-<r>/tasks/<id>.json     work dispatched to this node
//! node-<r>/done/<id>.json      exit codes of finished tasks
//! node-<r>/agent.json          the agent's pid and start time
//! ```

pub mod link;
pub mod proc;
mod sched;
pub mod skypilot;

use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A job as submitted to a cluster's queue.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobRecord {
    pub id: String,
    /// The skyform address, for messages.
    pub name: String,
    pub run: String,
    pub num_nodes: u32,
    pub cpus: f64,
    pub gpus: f64,
    #[serde(default)]
    pub envs: BTreeMap<String, String>,
    /// Jobs that must succeed first (Slurm's afterok).
    #[serde(default)]
    pub after: Vec<Dependency>,
    /// Tear the cluster down when this job ends (managed jobs).
    #[serde(default)]
    pub teardown: bool,
    /// Submission order (nanoseconds since the epoch).
    pub submitted: u128,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum JobState {
    Queued,
    Running,
    Succeeded,
    Failed,
    Cancelled,
}

impl JobState {
    pub fn is_final(self) -> bool {
        matches!(
            self,
            JobState::Succeeded | JobState::Failed | JobState::Cancelled
        )
    }
    /// The state a status word names (`"SUCCEEDED"`, as [`JobState::as_str`] writes it).
    pub fn from_name(name: &str) -> Option<JobState> {
        [
            JobState::Queued,
            JobState::Running,
            JobState::Succeeded,
            JobState::Failed,
            JobState::Cancelled,
        ]
        .into_iter()
        .find(|s| s.as_str() == name)
    }
    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Queued => "QUEUED",
            JobState::Running => "RUNNING",
            JobState::Succeeded => "SUCCEEDED",
            JobState::Failed => "FAILED",
            JobState::Cancelled => "CANCELLED",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobStatus {
    pub state: JobState,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default)]
    pub nodes: Vec<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ended: Option<String>,
    /// The GPU devices the job holds on each of its nodes (in the order of `nodes`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub devices: Vec<Vec<u32>>,
}

/// The shape and settings of a cluster, read by its agents.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClusterInfo {
    pub name: String,
    pub num_nodes: u32,
    pub cpus_per_node: f64,
    pub gpus_per_node: f64,
    #[serde(default)]
    pub envs: BTreeMap<String, String>,
    pub ips: Vec<String>,
    /// How the head reaches the agents of nodes on other machines: for each such rank, the
    /// command whose stdin and stdout are a link to `skyform __link` there. Nodes without
    /// one share the head's directory.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub links: BTreeMap<u32, Vec<String>>,
    /// Stop or tear down the cluster once it has been idle this long.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autostop: Option<Autostop>,
    /// On remote hosts: the skyform build the agents run (`bin/skyform-<build>`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub build: Option<String>,
    /// On remote hosts: each node's host as the pool names it, in rank order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hosts: Vec<String>,
}

/// What the head does when the cluster has been idle (no queued or running job, no open
/// session) for `idle_seconds`: it runs `commands` once, in order — the backend's way of
/// stopping the cluster (every agent ends when `stopped` appears in its cluster directory)
/// or tearing it down.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Autostop {
    pub idle_seconds: u64,
    pub commands: Vec<Vec<String>>,
}

/// A unit of work on one node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Task {
    pub id: String,
    pub command: String,
    pub envs: BTreeMap<String, String>,
    /// Relative to the cluster directory of the node that runs it.
    pub log: PathBuf,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskDone {
    pub exit_code: i32,
}

/// Seconds in `minutes` of autostop idleness. `SKYFORM_IDLE_MINUTE` (seconds, in the
/// environment of the skyform that creates the cluster) shortens a minute for tests.
pub fn idle_seconds(minutes: u32) -> u64 {
    let minute = std::env::var("SKYFORM_IDLE_MINUTE")
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
        .unwrap_or(60);
    u64::from(minutes) * minute
}

/// Paths inside a cluster directory.
#[derive(Debug, Clone)]
pub struct Layout {
    pub root: PathBuf,
}

impl Layout {
    pub fn new(root: impl Into<PathBuf>) -> Layout {
        Layout { root: root.into() }
    }
    pub fn info(&self) -> PathBuf {
        self.root.join("cluster.json")
    }
    pub fn queue(&self) -> PathBuf {
        self.root.join("queue")
    }
    pub fn queued(&self, job: &str) -> PathBuf {
        self.queue().join(format!("{job}.json"))
    }
    pub fn cancel_request(&self, job: &str) -> PathBuf {
        self.queue().join(format!("{job}.cancel"))
    }
    /// A job cancelled before it started: its queue record, renamed by the head (a new
    /// directory and status file per job made cancelling a large queue slow).
    pub fn cancelled(&self, job: &str) -> PathBuf {
        self.queue().join(format!("{job}.cancelled"))
    }
    pub fn job_dir(&self, job: &str) -> PathBuf {
        self.root.join("jobs").join(job)
    }
    pub fn status(&self, job: &str) -> PathBuf {
        self.job_dir(job).join("status.json")
    }
    pub fn log(&self, job: &str, rank: u32) -> PathBuf {
        self.root.join(Self::log_name(job, rank))
    }
    /// A job's log of one rank, relative to the cluster directory of the node it runs on.
    pub fn log_name(job: &str, rank: u32) -> PathBuf {
        Path::new("jobs").join(job).join(format!("rank-{rank}.log"))
    }
    pub fn node(&self, rank: u32) -> PathBuf {
        self.root.join(format!("node-{rank}"))
    }
    pub fn workdir(&self, rank: u32) -> PathBuf {
        self.node(rank).join("workdir")
    }
    pub fn tasks(&self, rank: u32) -> PathBuf {
        self.node(rank).join("tasks")
    }
    pub fn done(&self, rank: u32) -> PathBuf {
        self.node(rank).join("done")
    }
    pub fn agent(&self, rank: u32) -> PathBuf {
        self.node(rank).join("agent.json")
    }
    /// Present when the cluster is stopped: agents end, nothing runs until it starts again.
    pub fn stopped(&self) -> PathBuf {
        self.root.join("stopped")
    }
    /// What autostop did, and when.
    pub fn autostop_log(&self) -> PathBuf {
        self.root.join("autostop.log")
    }
}

/// Writes JSON atomically (temp + rename), so readers never see half a record.
pub fn write_json<T: Serialize>(path: &Path, value: &T) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension(format!("tmp-{}", std::process::id()));
    let bytes = serde_json::to_vec_pretty(value).map_err(std::io::Error::other)?;
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)
}

pub fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Option<T> {
    let bytes = std::fs::read(path).ok()?;
    serde_json::from_slice(&bytes).ok()
}

pub(crate) fn now_rfc3339() -> String {
    humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string()
}

/// Submits a job to a cluster's queue; submitting the same id twice changes nothing.
pub fn submit(layout: &Layout, job: &JobRecord) -> std::io::Result<()> {
    if layout.queued(&job.id).exists()
        || layout.status(&job.id).exists()
        || layout.cancelled(&job.id).exists()
    {
        return Ok(());
    }
    write_json(&layout.queued(&job.id), job)
}

/// A job another waits for: where its status is (relative: in the same cluster directory),
/// and its name for messages.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Dependency {
    pub status: PathBuf,
    pub name: String,
}

/// The status of a job: from the head's record, or queued if only submitted, or None.
pub fn job_status(layout: &Layout, job: &str) -> Option<JobStatus> {
    if let Some(s) = read_json::<JobStatus>(&layout.status(job)) {
        return Some(s);
    }
    // The queue record first: the head renames it in one step when it cancels the job.
    if layout.queued(job).exists() {
        return Some(queued_status());
    }
    layout.cancelled(job).exists().then(cancelled_before_start)
}

/// The status a dependency's status file (`<dir>/jobs/<id>/status.json`) says, including
/// a job cancelled before it started (whose record is `<dir>/queue/<id>.cancelled`).
pub(crate) fn status_at(path: &Path) -> Option<JobStatus> {
    if let Some(s) = read_json::<JobStatus>(path) {
        return Some(s);
    }
    let job_dir = path.parent()?;
    let id = job_dir.file_name()?.to_str()?;
    let root = job_dir.parent()?.parent()?;
    Layout::new(root)
        .cancelled(id)
        .exists()
        .then(cancelled_before_start)
}

pub(crate) fn cancelled_before_start() -> JobStatus {
    let mut st = queued_status();
    st.state = JobState::Cancelled;
    st.reason = Some("cancelled before it started".into());
    st
}

/// Asks the head to cancel a job (queued: dropped; running: its processes killed).
pub fn cancel(layout: &Layout, job: &str) -> std::io::Result<()> {
    std::fs::write(layout.cancel_request(job), b"")
}

/// Asks the head to cancel many jobs with one request (one file, however many jobs).
/// Only heads that say so in their `agent.json` read such requests: see
/// [`takes_batch_cancels`].
pub fn cancel_all(layout: &Layout, jobs: &[&str]) -> std::io::Result<()> {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let name = format!("batch-{nanos}-{}.cancels", std::process::id());
    write_json(&layout.queue().join(name), &jobs)
}

/// Whether the head agent of the cluster reads batched cancel requests (an agent of an
/// older skyform does not).
pub fn takes_batch_cancels(layout: &Layout) -> bool {
    read_json::<serde_json::Value>(&layout.agent(0))
        .is_some_and(|a| a.get("batch_cancel").and_then(serde_json::Value::as_bool) == Some(true))
}

/// One running task on this node.
struct Running {
    child: Child,
    /// Readable once the child ended (None: the kernel has no pidfds; poll then).
    ended: Option<std::os::fd::OwnedFd>,
    /// Whether it came as a file in `tasks/` (its exit code goes to `done/`); the head's
    /// scheduler hands its own node's tasks over in memory and takes their codes back so.
    from_file: bool,
}

/// Makes the directories from `root` down to `path`, but not `root`: fails (NotFound) when
/// `root` is gone, even if it goes meanwhile.
fn make_under(root: &Path, path: &Path) -> std::io::Result<()> {
    let Ok(rest) = path.strip_prefix(root) else {
        return std::fs::create_dir_all(path);
    };
    let mut at = root.to_path_buf();
    for part in rest.components() {
        at.push(part);
        match std::fs::create_dir(&at) {
            Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => return Err(e),
            _ => {}
        }
    }
    Ok(())
}

/// The agent loop of one node. The head (rank 0) also schedules the queue.
pub fn run_agent(cluster_dir: &Path, rank: u32) -> std::io::Result<()> {
    let layout = Layout::new(cluster_dir);
    // Never make the cluster's directory itself: an agent that starts after its cluster
    // was deleted (its starter killed between spawning it and recording it) must end, not
    // bring the directory back.
    for d in [layout.tasks(rank), layout.done(rank), layout.queue()] {
        make_under(cluster_dir, &d)?;
    }
    let me = std::process::id();
    let start = proc::stat(me).map(|s| s.start_time);
    write_json(
        &layout.agent(rank),
        &serde_json::json!({"pid": me, "start_time": start, "batch_cancel": rank == 0}),
    )?;
    // For shell scripts on remote hosts, which read no JSON.
    std::fs::write(layout.node(rank).join("agent.pid"), me.to_string())?;
    if rank == 0
        && let Some(info) = read_json::<ClusterInfo>(&layout.info())
    {
        for (r, argv) in info.links {
            let layout = layout.clone();
            std::thread::spawn(move || link::relay(layout, r, argv));
        }
    }
    let mut running: BTreeMap<String, Running> = BTreeMap::new();
    let mut scheduler = (rank == 0).then(sched::Scheduler::default);
    // The loop wakes when a task ends, a task or cancel request reaches this node, or (the
    // head) a job or cancel request reaches the queue or a node reports a task done — and
    // every 100 ms regardless (stop, autostop, dependencies in other clusters).
    let mut watcher = proc::Watcher::new();
    watcher.watch(&layout.tasks(rank), false);
    let queue_watch = match scheduler.as_mut() {
        Some(s) => {
            for r in 0..s.num_nodes(&layout) {
                if make_under(cluster_dir, &layout.done(r)).is_ok() {
                    watcher.watch(&layout.done(r), false);
                }
            }
            Some(watcher.watch(&layout.queue(), true))
        }
        None => None,
    };
    loop {
        let _ = watcher.drain();
        if !cluster_dir.is_dir() || layout.stopped().exists() {
            // The cluster was removed or stopped: stop what runs here, then stop. What was
            // killed ends (exit 137) rather than running again at the next start.
            for (id, r) in running.iter_mut() {
                proc::signal(r.child.id(), libc::SIGKILL, true);
                let _ = r.child.wait();
                if layout.stopped().exists() {
                    let _ = write_json(
                        &layout.done(rank).join(format!("{id}.json")),
                        &TaskDone { exit_code: 137 },
                    );
                    let _ = std::fs::remove_file(layout.tasks(rank).join(format!("{id}.json")));
                }
            }
            let _ = std::fs::remove_file(layout.node(rank).join("agent.pid"));
            return Ok(());
        }
        let mut ended = Vec::new();
        run_tasks(&layout, rank, &mut running, Vec::new(), &mut ended)?;
        if let Some(s) = scheduler.as_mut() {
            let news = queue_watch.and_then(|w| watcher.take(w));
            if s.tick(&layout, news, ended)? {
                // A managed job ended: the cluster is torn down; logs and status stay.
                for r in 0..s.num_nodes(&layout) {
                    if let Some(a) = read_json::<serde_json::Value>(&layout.agent(r))
                        && let Some(pid) = a.get("pid").and_then(serde_json::Value::as_u64)
                        && pid != u64::from(me)
                    {
                        proc::kill_session(pid as u32);
                    }
                }
                for r in 0..s.num_nodes(&layout) {
                    let _ = std::fs::remove_dir_all(layout.node(r));
                }
                std::fs::write(layout.root.join("torn_down"), now_rfc3339())?;
                return Ok(());
            }
            // What the pass gave this node starts now, not at the next wake-up.
            let mut ended = Vec::new();
            run_tasks(&layout, rank, &mut running, s.take_given(), &mut ended)?;
            if !ended.is_empty() {
                // Tasks that ended since the pass: no event will say so again (they are
                // reaped), so the next pass comes at once.
                s.ended_here(ended);
                continue;
            }
        }
        let children: Vec<std::os::fd::BorrowedFd<'_>> = running
            .values()
            .filter_map(|r| r.ended.as_ref().map(std::os::fd::AsFd::as_fd))
            .collect();
        let timeout = if children.len() < running.len() {
            Duration::from_millis(10)
        } else {
            Duration::from_millis(100)
        };
        watcher.wait(timeout, &children);
    }
}

/// Starts this node's new tasks (those in `tasks/`, and `given` by the head's scheduler in
/// memory), passes on cancel requests, and records the tasks that ended: in `done/`, or in
/// `ended` for those given.
fn run_tasks(
    layout: &Layout,
    rank: u32,
    running: &mut BTreeMap<String, Running>,
    given: Vec<Task>,
    ended: &mut Vec<(String, i32)>,
) -> std::io::Result<()> {
    // One listing finds new tasks and cancel requests.
    let mut files: Vec<PathBuf> = Vec::new();
    let mut cancels: BTreeSet<String> = BTreeSet::new();
    for e in std::fs::read_dir(layout.tasks(rank))?.filter_map(Result::ok) {
        let p = e.path();
        match p.extension().and_then(|x| x.to_str()) {
            Some("json") => files.push(p),
            Some("cancel") => {
                if let Some(id) = p.file_stem().and_then(|s| s.to_str()) {
                    cancels.insert(id.to_string());
                }
            }
            _ => {}
        }
    }
    files.sort();
    let mut todo: Vec<(Task, Option<PathBuf>)> = Vec::new();
    for f in files {
        // A task that runs is not read again (its file is removed when it ends).
        if f.file_stem()
            .and_then(|s| s.to_str())
            .is_some_and(|id| running.contains_key(id))
        {
            continue;
        }
        let Some(task) = read_json::<Task>(&f) else {
            continue;
        };
        if running.contains_key(&task.id)
            || layout.done(rank).join(format!("{}.json", task.id)).exists()
        {
            continue;
        }
        todo.push((task, Some(f)));
    }
    todo.extend(given.into_iter().map(|t| (t, None)));
    for (task, file) in todo {
        if running.contains_key(&task.id) {
            continue;
        }
        let log_path = layout.root.join(&task.log);
        if let Some(dir) = log_path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)?;
        let log2 = log.try_clone()?;
        let workdir = layout.workdir(rank);
        std::fs::create_dir_all(&workdir)?;
        let mut cmd = Command::new("/bin/sh");
        cmd.arg("-c")
            .arg(&task.command)
            .current_dir(&workdir)
            .envs(&task.envs)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2);
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        match cmd.spawn() {
            Ok(child) => {
                let pidfd = proc::pidfd(child.id());
                running.insert(
                    task.id.clone(),
                    Running {
                        child,
                        ended: pidfd,
                        from_file: file.is_some(),
                    },
                );
            }
            Err(e) => {
                let _ = std::fs::write(&log_path, format!("cannot start /bin/sh: {e}\n"));
                match &file {
                    Some(f) => {
                        write_json(
                            &layout.done(rank).join(format!("{}.json", task.id)),
                            &TaskDone { exit_code: 127 },
                        )?;
                        let _ = std::fs::remove_file(f);
                    }
                    None => ended.push((task.id.clone(), 127)),
                }
            }
        }
    }
    // Cancel requests for tasks on this node: every one is asked to end, then one grace
    // period, then whatever is left is killed.
    let cancelled: Vec<&String> = cancels
        .iter()
        .filter(|id| running.contains_key(*id))
        .collect();
    if !cancelled.is_empty() {
        for id in &cancelled {
            if let Some(r) = running.get(*id) {
                proc::signal(r.child.id(), libc::SIGTERM, true);
            }
        }
        std::thread::sleep(Duration::from_millis(100));
        for id in &cancelled {
            if let Some(r) = running.get(*id) {
                proc::signal(r.child.id(), libc::SIGKILL, true);
            }
            let _ = std::fs::remove_file(layout.tasks(rank).join(format!("{id}.cancel")));
        }
    }
    let mut gone = Vec::new();
    for (id, r) in running.iter_mut() {
        if let Some(status) = r.child.try_wait()? {
            use std::os::unix::process::ExitStatusExt;
            let code = status
                .code()
                .unwrap_or_else(|| 128 + status.signal().unwrap_or(0));
            if r.from_file {
                write_json(
                    &layout.done(rank).join(format!("{id}.json")),
                    &TaskDone { exit_code: code },
                )?;
                let _ = std::fs::remove_file(layout.tasks(rank).join(format!("{id}.json")));
            } else {
                ended.push((id.clone(), code));
            }
            gone.push(id.clone());
        }
    }
    for id in gone {
        running.remove(&id);
    }
    Ok(())
}

pub(crate) fn queued_status() -> JobStatus {
    JobStatus {
        state: JobState::Queued,
        exit_code: None,
        reason: None,
        nodes: Vec::new(),
        started: None,
        ended: None,
        devices: Vec::new(),
    }
}

/// The capacity of each GPU device of a node with `total` GPUs: whole devices, and a
/// fractional last one when the node itself offers a fraction (`T4:0.5`).
pub fn gpu_devices(total: f64) -> Vec<f64> {
    let mut out = Vec::new();
    let mut left = total;
    while left > 1e-9 {
        out.push(left.min(1.0));
        left -= 1.0;
    }
    out
}

/// The devices a job needing `want` GPUs gets on a node, or None when they are not free.
/// A fraction shares one device with others (the first with room); a whole number needs
/// that many devices nobody uses.
pub fn pick_devices(capacity: &[f64], used: &[f64], want: f64) -> Option<Vec<u32>> {
    if want <= 0.0 {
        return Some(Vec::new());
    }
    let room = |d: usize| capacity[d] - used.get(d).copied().unwrap_or(0.0);
    if want < 1.0 {
        return (0..capacity.len())
            .find(|d| room(*d) + 1e-9 >= want)
            .map(|d| vec![d as u32]);
    }
    let n = want.ceil() as usize;
    let free: Vec<u32> = (0..capacity.len())
        .filter(|d| used.get(*d).copied().unwrap_or(0.0) < 1e-9 && capacity[*d] >= 1.0 - 1e-9)
        .map(|d| d as u32)
        .take(n)
        .collect();
    (free.len() == n).then_some(free)
}

/// Runs `command` on every node now (outside the queue) and waits: used for `setup`.
pub async fn run_everywhere(
    layout: &Layout,
    nodes: u32,
    id: &str,
    command: &str,
    envs: &BTreeMap<String, String>,
    timeout: Duration,
) -> Result<(), String> {
    for rank in 0..nodes {
        let _ = std::fs::remove_file(layout.done(rank).join(format!("{id}.json")));
        let mut e = envs.clone();
        e.insert("SKYFORM_NODE_RANK".into(), rank.to_string());
        e.insert("SKYFORM_NUM_NODES".into(), nodes.to_string());
        let info = read_json::<ClusterInfo>(&layout.info());
        skypilot::add_vars(
            &mut e,
            skypilot::Phase::Setup,
            info.as_ref().map(|i| i.ips.as_slice()),
            info.as_ref().map(|i| i.gpus_per_node),
        );
        let task = Task {
            id: id.to_string(),
            command: command.to_string(),
            envs: e,
            log: Path::new(&format!("node-{rank}")).join(format!("{id}.log")),
        };
        write_json(&layout.tasks(rank).join(format!("{id}.json")), &task)
            .map_err(|e| e.to_string())?;
    }
    let deadline = tokio::time::Instant::now() + timeout;
    let mut pending: BTreeSet<u32> = (0..nodes).collect();
    while !pending.is_empty() {
        for rank in pending.clone() {
            if let Some(d) = read_json::<TaskDone>(&layout.done(rank).join(format!("{id}.json"))) {
                pending.remove(&rank);
                if d.exit_code != 0 {
                    let log = std::fs::read_to_string(layout.node(rank).join(format!("{id}.log")))
                        .unwrap_or_default();
                    let tail: Vec<&str> = log.lines().rev().take(5).collect();
                    let tail: Vec<&str> = tail.into_iter().rev().collect();
                    return Err(format!(
                        "{id} failed on node {rank} with exit code {}:\n    {}",
                        d.exit_code,
                        tail.join("\n    ")
                    ));
                }
            }
        }
        if tokio::time::Instant::now() > deadline {
            return Err(format!("{id} did not finish within {}s", timeout.as_secs()));
        }
        // A node whose agent is gone will never report: fail now rather than wait.
        if !layout.root.is_dir() {
            return Err(format!(
                "the sandbox {} was removed while {id} ran",
                layout.root.display()
            ));
        }
        for rank in &pending {
            if let Some(a) = read_json::<serde_json::Value>(&layout.agent(*rank))
                && let Some(pid) = a.get("pid").and_then(serde_json::Value::as_u64)
                && !proc::alive(
                    pid as u32,
                    a.get("start_time").and_then(serde_json::Value::as_u64),
                )
            {
                return Err(format!("the agent of node {rank} stopped while {id} ran"));
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_job_cancelled_before_it_started_is_its_renamed_record() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let layout = Layout::new(tmp.path());
        let job = JobRecord {
            id: "j1".into(),
            name: "job.j1".into(),
            run: "true".into(),
            num_nodes: 1,
            cpus: 0.5,
            gpus: 0.0,
            envs: BTreeMap::new(),
            after: Vec::new(),
            teardown: false,
            submitted: 1,
        };
        submit(&layout, &job).expect("submit");
        assert_eq!(
            job_status(&layout, "j1").map(|s| s.state),
            Some(JobState::Queued)
        );
        std::fs::rename(layout.queued("j1"), layout.cancelled("j1")).expect("rename");
        let st = job_status(&layout, "j1").expect("a status");
        assert_eq!(st.state, JobState::Cancelled);
        assert_eq!(st.reason.as_deref(), Some("cancelled before it started"));
        // Its dependents see it so, by the status path they were given.
        let dep = status_at(&layout.status("j1")).expect("a dependency's status");
        assert_eq!(dep.state, JobState::Cancelled);
        // Submitting it again changes nothing.
        submit(&layout, &job).expect("submit");
        assert!(!layout.queued("j1").exists());
        assert_eq!(job_status(&layout, "j2"), None);
    }

    fn record(
        id: &str,
        run: &str,
        cpus: f64,
        after: Vec<Dependency>,
        submitted: u128,
    ) -> JobRecord {
        JobRecord {
            id: id.into(),
            name: format!("job.{id}"),
            run: run.into(),
            num_nodes: 1,
            cpus,
            gpus: 0.0,
            envs: BTreeMap::new(),
            after,
            teardown: false,
            submitted,
        }
    }

    fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
        let start = std::time::Instant::now();
        while !done() {
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "{what}: not within 60 s"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    #[test]
    fn the_head_drains_a_sweep_and_cancels_a_batch_with_its_dependents() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let root = tmp.path().join("cluster");
        std::fs::create_dir_all(&root).expect("cluster dir");
        let layout = Layout::new(&root);
        let info = ClusterInfo {
            name: "cluster.t".into(),
            num_nodes: 1,
            cpus_per_node: 1.0,
            gpus_per_node: 0.0,
            envs: BTreeMap::new(),
            ips: vec!["127.0.0.1".into()],
            links: BTreeMap::new(),
            autostop: None,
            build: None,
            hosts: Vec::new(),
        };
        write_json(&layout.info(), &info).expect("cluster.json");
        for i in 0..20 {
            let run = if i == 7 { "exit 3" } else { "true" };
            submit(
                &layout,
                &record(&format!("q{i:02}"), run, 0.5, Vec::new(), i),
            )
            .expect("submit");
        }
        let agent = {
            let root = root.clone();
            std::thread::spawn(move || run_agent(&root, 0))
        };
        let state = |id: &str| job_status(&layout, id).map(|s| s.state);
        wait_for("the sweep", || {
            (0..20).all(|i| state(&format!("q{i:02}")).is_some_and(JobState::is_final))
        });
        for i in 0..20 {
            let st = job_status(&layout, &format!("q{i:02}")).expect("a status");
            let want = if i == 7 {
                (JobState::Failed, 3)
            } else {
                (JobState::Succeeded, 0)
            };
            assert_eq!((st.state, st.exit_code), (want.0, Some(want.1)), "q{i:02}");
        }
        // A job holding the whole node; jobs queued behind it, one with a dependent.
        submit(&layout, &record("big", "sleep 30", 1.0, Vec::new(), 100)).expect("submit");
        wait_for("big to run", || state("big") == Some(JobState::Running));
        let ids = ["w0", "w1", "w2", "w3", "w4"];
        for (i, id) in ids.iter().enumerate() {
            submit(
                &layout,
                &record(id, "true", 0.5, Vec::new(), 200 + i as u128),
            )
            .expect("submit");
        }
        let dep = Dependency {
            status: layout.status("w0"),
            name: "job.w0".into(),
        };
        submit(&layout, &record("d", "true", 0.5, vec![dep], 300)).expect("submit");
        assert_eq!(state("w0"), Some(JobState::Queued));
        cancel_all(&layout, &ids).expect("cancel");
        wait_for("the batch to be cancelled", || {
            ids.iter().all(|id| state(id) == Some(JobState::Cancelled))
        });
        assert!(layout.cancelled("w0").exists() && !layout.status("w0").exists());
        wait_for("the dependent to be cancelled", || {
            state("d") == Some(JobState::Cancelled)
        });
        let d = job_status(&layout, "d").expect("a status");
        assert_eq!(
            d.reason.as_deref(),
            Some("dependency job.w0 did not succeed")
        );
        // A running job is cancelled by its own request.
        assert_eq!(state("big"), Some(JobState::Running));
        cancel(&layout, "big").expect("cancel");
        wait_for("big to be cancelled", || {
            state("big") == Some(JobState::Cancelled)
        });
        std::fs::write(layout.stopped(), b"").expect("stop");
        agent
            .join()
            .expect("the agent")
            .expect("the agent's result");
    }

    #[test]
    fn jobs_and_setup_see_skypilots_names() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let root = tmp.path().join("cluster");
        std::fs::create_dir_all(&root).expect("cluster dir");
        let layout = Layout::new(&root);
        let info = ClusterInfo {
            name: "cluster.t".into(),
            num_nodes: 1,
            cpus_per_node: 1.0,
            gpus_per_node: 0.0,
            envs: BTreeMap::new(),
            ips: vec!["127.0.0.1".into()],
            links: BTreeMap::new(),
            autostop: None,
            build: None,
            hosts: Vec::new(),
        };
        write_json(&layout.info(), &info).expect("cluster.json");
        let agent = {
            let root = root.clone();
            std::thread::spawn(move || run_agent(&root, 0))
        };
        let out = |name: &str| tmp.path().join(name);
        let dump = |name: &str| format!("env | grep '^SKYPILOT_' | sort > {}", out(name).display());
        submit(&layout, &record("v", &dump("run.txt"), 0.5, Vec::new(), 1)).expect("submit");
        wait_for("the job", || {
            job_status(&layout, "v").is_some_and(|s| s.state.is_final())
        });
        let run = std::fs::read_to_string(out("run.txt")).expect("the job's dump");
        for want in [
            "SKYPILOT_NODE_IPS=127.0.0.1",
            "SKYPILOT_NODE_RANK=0",
            "SKYPILOT_NUM_GPUS_PER_NODE=0",
            "SKYPILOT_NUM_NODES=1",
            "SKYPILOT_TASK_ID=v",
        ] {
            assert!(run.lines().any(|l| l == want), "{want} in {run}");
        }
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(run_everywhere(
            &layout,
            1,
            "setup",
            &dump("setup.txt"),
            &BTreeMap::new(),
            Duration::from_secs(60),
        ))
        .expect("setup");
        let setup = std::fs::read_to_string(out("setup.txt")).expect("setup's dump");
        for want in [
            "SKYPILOT_SETUP_NODE_IPS=127.0.0.1",
            "SKYPILOT_SETUP_NODE_RANK=0",
            "SKYPILOT_NUM_NODES=1",
        ] {
            assert!(setup.lines().any(|l| l == want), "{want} in {setup}");
        }
        std::fs::write(layout.stopped(), b"").expect("stop");
        agent
            .join()
            .expect("the agent")
            .expect("the agent's result");
    }

    #[test]
    fn fractions_share_a_device_and_whole_gpus_take_free_ones() {
        let cap = gpu_devices(2.0);
        assert_eq!(cap, [1.0, 1.0]);
        assert_eq!(pick_devices(&cap, &[0.0, 0.0], 0.5), Some(vec![0]));
        assert_eq!(pick_devices(&cap, &[0.5, 0.0], 0.5), Some(vec![0]));
        assert_eq!(pick_devices(&cap, &[1.0, 0.0], 0.5), Some(vec![1]));
        assert_eq!(pick_devices(&cap, &[0.5, 0.0], 1.0), Some(vec![1]));
        assert_eq!(pick_devices(&cap, &[0.5, 0.0], 2.0), None);
        assert_eq!(pick_devices(&cap, &[0.0, 0.0], 2.0), Some(vec![0, 1]));
        assert_eq!(pick_devices(&cap, &[1.0, 1.0], 0.25), None);
        assert_eq!(pick_devices(&cap, &[1.0, 1.0], 0.0), Some(vec![]));
        // A node that offers half a GPU runs one half-GPU job at a time.
        let half = gpu_devices(0.5);
        assert_eq!(half, [0.5]);
        assert_eq!(pick_devices(&half, &[0.0], 0.5), Some(vec![0]));
        assert_eq!(pick_devices(&half, &[0.5], 0.5), None);
        assert_eq!(pick_devices(&half, &[0.0], 1.0), None);
    }
}
