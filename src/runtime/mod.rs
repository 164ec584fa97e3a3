//! The cluster runtime: what runs on a cluster's nodes — a job queue kept on the head node, an
//! agent per node that runs tasks in its own session, and logs and exit codes on disk.
//!
//! Layout of a cluster directory (local sandboxes today; the same tree on remote heads later):
//!
//! ```text
//! cluster.json                 envs and shape, written by skyform
//! queue/<job>.json             submitted jobs (written atomically by skyform)
//! queue/<job>.cancel           a cancel request
//! jobs/<job>/status.json       state of each job (written by the head agent)
//! jobs/<job>/rank-<r>.log      stdout and stderr of each rank
//! node-<r>/workdir/            the synced workdir
//! node-<r>/tasks/<id>.json     work dispatched to this node
//! node-<r>/done/<id>.json      exit codes of finished tasks
//! node-<r>/agent.json          the agent's pid and start time
//! ```

pub mod link;
pub mod proc;

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
    if layout.queued(&job.id).exists() || layout.status(&job.id).exists() {
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
    layout.queued(job).exists().then(queued_status)
}

/// Asks the head to cancel a job (queued: dropped; running: its processes killed).
pub fn cancel(layout: &Layout, job: &str) -> std::io::Result<()> {
    std::fs::write(layout.cancel_request(job), b"")
}

/// One running task on this node.
struct Running {
    child: Child,
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
        &serde_json::json!({"pid": me, "start_time": start}),
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
    let mut scheduler = (rank == 0).then(Scheduler::default);
    loop {
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
        run_tasks(&layout, rank, &mut running)?;
        if let Some(s) = scheduler.as_mut()
            && s.tick(&layout)?
        {
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
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn run_tasks(
    layout: &Layout,
    rank: u32,
    running: &mut BTreeMap<String, Running>,
) -> std::io::Result<()> {
    // Start new tasks.
    let mut files: Vec<PathBuf> = std::fs::read_dir(layout.tasks(rank))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    files.sort();
    for f in files {
        let Some(task) = read_json::<Task>(&f) else {
            continue;
        };
        if running.contains_key(&task.id)
            || layout.done(rank).join(format!("{}.json", task.id)).exists()
        {
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
                running.insert(task.id.clone(), Running { child });
            }
            Err(e) => {
                write_json(
                    &layout.done(rank).join(format!("{}.json", task.id)),
                    &TaskDone { exit_code: 127 },
                )?;
                let _ = std::fs::write(&log_path, format!("cannot start /bin/sh: {e}\n"));
                let _ = std::fs::remove_file(&f);
            }
        }
    }
    // Cancel requests for tasks on this node.
    let ids: Vec<String> = running.keys().cloned().collect();
    for id in ids {
        let cancel = layout.tasks(rank).join(format!("{id}.cancel"));
        if cancel.exists()
            && let Some(r) = running.get_mut(&id)
        {
            proc::signal(r.child.id(), libc::SIGTERM, true);
            std::thread::sleep(Duration::from_millis(100));
            proc::signal(r.child.id(), libc::SIGKILL, true);
            let _ = std::fs::remove_file(&cancel);
        }
        let Some(r) = running.get_mut(&id) else {
            continue;
        };
        if let Some(status) = r.child.try_wait()? {
            use std::os::unix::process::ExitStatusExt;
            let code = status
                .code()
                .unwrap_or_else(|| 128 + status.signal().unwrap_or(0));
            write_json(
                &layout.done(rank).join(format!("{id}.json")),
                &TaskDone { exit_code: code },
            )?;
            let _ = std::fs::remove_file(layout.tasks(rank).join(format!("{id}.json")));
            running.remove(&id);
        }
    }
    Ok(())
}

#[derive(Default)]
struct Scheduler {
    nodes: Option<u32>,
    /// Since when nothing has been queued, running or logged in.
    idle_since: Option<std::time::Instant>,
    /// When sessions were last looked for (a scan of every process: not every tick).
    sessions_seen: Option<(std::time::Instant, bool)>,
    /// Jobs that ended, by queue file name, with whether each tears the cluster down: an
    /// ended job never runs again, so a pass reads only the other jobs' files.
    ended: BTreeMap<std::ffi::OsString, bool>,
    /// Records of the jobs not ended yet (a submitted record never changes).
    records: BTreeMap<std::ffi::OsString, JobRecord>,
    /// The status file of each job not ended yet, as last read or written: only the
    /// scheduler writes them, so a queued job's missing file is not looked for again.
    statuses: BTreeMap<String, Option<JobStatus>>,
}

impl Scheduler {
    fn num_nodes(&mut self, layout: &Layout) -> u32 {
        if self.nodes.is_none() {
            self.nodes = read_json::<ClusterInfo>(&layout.info()).map(|i| i.num_nodes);
        }
        self.nodes.unwrap_or(1)
    }

    /// Autostop: once the cluster has been idle long enough, run the backend's commands.
    fn watch_idle(&mut self, layout: &Layout, info: &ClusterInfo, busy: bool) {
        let Some(a) = &info.autostop else { return };
        let sessions = match self.sessions_seen {
            Some((at, open)) if at.elapsed() < Duration::from_secs(2) => open,
            _ => {
                let open = proc::sessions_open(&layout.root);
                self.sessions_seen = Some((std::time::Instant::now(), open));
                open
            }
        };
        if busy || sessions {
            self.idle_since = None;
            return;
        }
        let since = *self.idle_since.get_or_insert_with(std::time::Instant::now);
        if since.elapsed() < Duration::from_secs(a.idle_seconds) {
            return;
        }
        self.idle_since = None;
        // Stopped first: from now on no job is accepted, whatever the commands take.
        let _ = std::fs::write(layout.stopped(), now_rfc3339());
        let mut log = format!("{}: idle for {}s\n", now_rfc3339(), a.idle_seconds);
        for argv in &a.commands {
            let Some((program, args)) = argv.split_first() else {
                continue;
            };
            let result = Command::new(program)
                .args(args)
                .stdin(Stdio::null())
                .output();
            match result {
                Ok(o) => log.push_str(&format!(
                    "{program}: exit {}: {}{}\n",
                    o.status.code().unwrap_or(-1),
                    String::from_utf8_lossy(&o.stdout).trim(),
                    String::from_utf8_lossy(&o.stderr).trim()
                )),
                Err(e) => log.push_str(&format!("{program}: {e}\n")),
            }
        }
        if layout.root.is_dir() {
            let _ = std::fs::write(layout.autostop_log(), log);
        }
    }

    /// Writes a job's status file, and remembers what it holds.
    fn write_status(&mut self, layout: &Layout, job: &str, st: &JobStatus) -> std::io::Result<()> {
        write_json(&layout.status(job), st)?;
        self.statuses.insert(job.to_string(), Some(st.clone()));
        Ok(())
    }

    /// One scheduling pass. Returns true when a teardown job has ended.
    fn tick(&mut self, layout: &Layout) -> std::io::Result<bool> {
        let Some(info) = read_json::<ClusterInfo>(&layout.info()) else {
            return Ok(false);
        };
        let (done, queue_busy) = self.schedule(layout, &info)?;
        // Work outside the queue (setup) keeps the cluster busy too.
        let busy = queue_busy
            || (0..info.num_nodes).any(|r| {
                std::fs::read_dir(layout.tasks(r)).is_ok_and(|mut d| {
                    d.any(|e| e.is_ok_and(|e| e.path().extension().is_some_and(|x| x == "json")))
                })
            });
        self.watch_idle(layout, &info, busy);
        Ok(done)
    }

    /// One pass over the queue: whether a teardown job has ended, and whether any job
    /// was queued or running when the pass began.
    fn schedule(&mut self, layout: &Layout, info: &ClusterInfo) -> std::io::Result<(bool, bool)> {
        let mut teardown_done = false;
        let mut jobs: Vec<(std::ffi::OsString, JobRecord)> = Vec::new();
        // Cancel requests are in the same directory: one listing finds them all.
        let mut cancels: BTreeSet<String> = BTreeSet::new();
        for entry in std::fs::read_dir(layout.queue())?.filter_map(Result::ok) {
            let name = entry.file_name();
            let path = Path::new(&name);
            if path.extension().is_some_and(|e| e == "cancel") {
                if let Some(stem) = path.file_stem().and_then(|s| s.to_str()) {
                    cancels.insert(stem.to_string());
                }
                continue;
            }
            if path.extension().is_none_or(|e| e != "json") {
                continue;
            }
            if let Some(teardown) = self.ended.get(&name) {
                teardown_done |= teardown;
                continue;
            }
            let record = match self.records.get(&name) {
                Some(r) => r.clone(),
                None => match read_json::<JobRecord>(&entry.path()) {
                    Some(r) => {
                        self.records.insert(name.clone(), r.clone());
                        r
                    }
                    None => continue,
                },
            };
            jobs.push((name, record));
        }
        jobs.sort_by(|(_, a), (_, b)| a.submitted.cmp(&b.submitted).then(a.id.cmp(&b.id)));
        // Resources in use per node by running jobs: CPUs, and each GPU device's share.
        let devices = gpu_devices(info.gpus_per_node);
        let mut used: Vec<NodeUse> = (0..info.num_nodes)
            .map(|_| NodeUse {
                cpus: 0.0,
                gpus: vec![0.0; devices.len()],
            })
            .collect();
        let mut statuses: BTreeMap<String, JobStatus> = BTreeMap::new();
        for (name, j) in &jobs {
            let known = match self.statuses.get(&j.id) {
                Some(s) => s.clone(),
                None => {
                    let s = read_json::<JobStatus>(&layout.status(&j.id));
                    self.statuses.insert(j.id.clone(), s.clone());
                    s
                }
            };
            if let Some(s) = known {
                if s.state.is_final() {
                    // Counted below this once; later passes skip it.
                    self.ended.insert(name.clone(), j.teardown);
                    self.records.remove(name);
                    self.statuses.remove(&j.id);
                }
                if s.state == JobState::Running {
                    for (i, n) in s.nodes.iter().enumerate() {
                        if let Some(u) = used.get_mut(*n as usize) {
                            u.take(j, s.devices.get(i).map_or(&[][..], Vec::as_slice), 1.0);
                        }
                    }
                }
                statuses.insert(j.id.clone(), s);
            }
        }
        for (_, j) in &jobs {
            let status = statuses.get(&j.id).cloned();
            let cancel_requested = cancels.contains(&j.id);
            match status.as_ref().map(|s| s.state) {
                Some(s) if s.is_final() => {
                    teardown_done |= j.teardown;
                }
                Some(JobState::Running) => {
                    let mut st = status.unwrap_or_else(queued_status);
                    if cancel_requested {
                        for n in &st.nodes {
                            let _ = std::fs::write(
                                layout.tasks(*n).join(format!("{}.cancel", j.id)),
                                b"",
                            );
                        }
                    }
                    let mut codes = Vec::new();
                    for n in &st.nodes {
                        if let Some(d) =
                            read_json::<TaskDone>(&layout.done(*n).join(format!("{}.json", j.id)))
                        {
                            codes.push(d.exit_code);
                        }
                    }
                    if codes.len() == st.nodes.len() {
                        let failed = codes.iter().find(|c| **c != 0).copied();
                        st.state = if cancel_requested {
                            JobState::Cancelled
                        } else if failed.is_some() {
                            JobState::Failed
                        } else {
                            JobState::Succeeded
                        };
                        st.exit_code = Some(failed.unwrap_or(0));
                        st.ended = Some(now_rfc3339());
                        if cancel_requested {
                            st.reason = Some("cancelled on request".into());
                        }
                        self.write_status(layout, &j.id, &st)?;
                        for (i, n) in st.nodes.iter().enumerate() {
                            if let Some(u) = used.get_mut(*n as usize) {
                                u.take(j, st.devices.get(i).map_or(&[][..], Vec::as_slice), -1.0);
                            }
                        }
                        teardown_done |= j.teardown;
                    }
                }
                _ => {
                    // Queued.
                    if cancel_requested {
                        let mut st = queued_status();
                        st.state = JobState::Cancelled;
                        st.reason = Some("cancelled before it started".into());
                        st.ended = Some(now_rfc3339());
                        self.write_status(layout, &j.id, &st)?;
                        continue;
                    }
                    let mut blocked_by = None;
                    let mut waiting = false;
                    for dep in &j.after {
                        match read_json::<JobStatus>(&layout.root.join(&dep.status))
                            .map(|s| s.state)
                        {
                            Some(JobState::Succeeded) => {}
                            Some(JobState::Failed | JobState::Cancelled) => {
                                blocked_by = Some(dep.clone())
                            }
                            _ => waiting = true,
                        }
                    }
                    if let Some(dep) = blocked_by {
                        let name = dep.name;
                        let mut st = queued_status();
                        st.state = JobState::Cancelled;
                        st.reason = Some(format!("dependency {name} did not succeed"));
                        st.ended = Some(now_rfc3339());
                        self.write_status(layout, &j.id, &st)?;
                        teardown_done |= j.teardown;
                        continue;
                    }
                    if waiting {
                        continue;
                    }
                    // Pick nodes with room: CPUs, and GPU devices for the job's share.
                    let free: Vec<(u32, Vec<u32>)> = (0..info.num_nodes)
                        .filter_map(|n| {
                            let u = &used[n as usize];
                            if u.cpus + j.cpus > info.cpus_per_node + 1e-9 {
                                return None;
                            }
                            pick_devices(&devices, &u.gpus, j.gpus).map(|d| (n, d))
                        })
                        .take(j.num_nodes as usize)
                        .collect();
                    if (free.len() as u32) < j.num_nodes {
                        continue;
                    }
                    let (nodes, held): (Vec<u32>, Vec<Vec<u32>>) = free.into_iter().unzip();
                    let ips: Vec<String> = nodes
                        .iter()
                        .map(|n| {
                            info.ips
                                .get(*n as usize)
                                .cloned()
                                .unwrap_or_else(|| "127.0.0.1".into())
                        })
                        .collect();
                    for (rank, node) in nodes.iter().enumerate() {
                        let mut envs = info.envs.clone();
                        envs.extend(j.envs.clone());
                        envs.insert("SKYFORM_NODE_RANK".into(), rank.to_string());
                        envs.insert("SKYFORM_NUM_NODES".into(), j.num_nodes.to_string());
                        envs.insert("SKYFORM_NODE_IPS".into(), ips.join("\n"));
                        envs.insert("SKYFORM_CLUSTER".into(), info.name.clone());
                        envs.insert("SKYFORM_JOB_ID".into(), j.id.clone());
                        if j.gpus > 0.0 {
                            let ids: Vec<String> = held[rank].iter().map(u32::to_string).collect();
                            envs.insert("CUDA_VISIBLE_DEVICES".into(), ids.join(","));
                        }
                        let task = Task {
                            id: j.id.clone(),
                            command: j.run.clone(),
                            envs,
                            log: Layout::log_name(&j.id, rank as u32),
                        };
                        write_json(&layout.tasks(*node).join(format!("{}.json", j.id)), &task)?;
                        if let Some(u) = used.get_mut(*node as usize) {
                            u.take(j, &held[rank], 1.0);
                        }
                    }
                    let mut st = queued_status();
                    st.state = JobState::Running;
                    st.nodes = nodes;
                    st.devices = held;
                    st.started = Some(now_rfc3339());
                    self.write_status(layout, &j.id, &st)?;
                }
            }
        }
        let busy = jobs
            .iter()
            .any(|(_, j)| statuses.get(&j.id).is_none_or(|s| !s.state.is_final()));
        Ok((teardown_done, busy))
    }
}

fn queued_status() -> JobStatus {
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

/// What running jobs hold on one node.
struct NodeUse {
    cpus: f64,
    /// The share of each GPU device in use (0 to its capacity).
    gpus: Vec<f64>,
}

impl NodeUse {
    /// Adds (`sign` 1) or returns (-1) what `job` holds here on `devices`.
    fn take(&mut self, job: &JobRecord, devices: &[u32], sign: f64) {
        self.cpus += sign * job.cpus;
        let share = if job.gpus < 1.0 { job.gpus } else { 1.0 };
        for d in devices {
            if let Some(g) = self.gpus.get_mut(*d as usize) {
                *g += sign * share;
            }
        }
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
