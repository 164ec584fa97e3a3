//! The head's scheduler: places queued jobs on nodes with room (CPUs, GPU devices), notices
//! the ends of their tasks, and records each job's status.
//!
//! A pass costs what changed since the last one, not the size of the queue: the scheduler
//! keeps the jobs not ended in memory (a submitted record never changes, and only it writes
//! status files), learns of new queue files and cancel requests from the agent's watch on the
//! queue directory (listing it only at start, every few seconds as a safety net, and when
//! events were lost), and keeps queued jobs by shape (nodes, CPUs, GPUs) in submission
//! order, so that placing stops at the first job of each shape that does not fit.

use super::{
    ClusterInfo, JobRecord, JobState, JobStatus, Layout, Task, TaskDone, gpu_devices, now_rfc3339,
    pick_devices, proc, queued_status, read_json, write_json,
};
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::rc::Rc;
use std::time::{Duration, Instant};

/// What a job asks of each node: jobs of one shape fit wherever each other fits.
type Shape = (u32, u64, u64);

fn shape(j: &JobRecord) -> Shape {
    (j.num_nodes, j.cpus.to_bits(), j.gpus.to_bits())
}

/// A queued job's place in the queue: submission order, then id (its file name).
type Place = (u128, OsString);

/// How often the queue is listed in full although the watch reported everything.
const RELIST: Duration = Duration::from_secs(5);
/// How often jobs waiting for others look at those others' status files.
const DEPS: Duration = Duration::from_millis(100);
/// How often a running job's cancel request is passed on again (a link may have dropped it).
const RECANCEL: Duration = Duration::from_secs(1);

struct Entry {
    record: JobRecord,
    /// Its status file as last read or written.
    status: Option<JobStatus>,
    /// When its cancel request was last passed on to its nodes (running jobs).
    cancel_sent: Option<Instant>,
}

#[derive(Default)]
pub(super) struct Scheduler {
    nodes: Option<u32>,
    /// Since when nothing has been queued, running or logged in.
    idle_since: Option<Instant>,
    /// When sessions were last looked for (a scan of every process: not every tick).
    sessions_seen: Option<(Instant, bool)>,
    /// cluster.json as last read, with what identifies that version of the file.
    info: Option<((std::time::SystemTime, u64, u64), Rc<ClusterInfo>)>,
    /// Jobs that ended, by queue file name, with whether each tears the cluster down: an
    /// ended job never runs again, so its files are not read again.
    ended: HashMap<OsString, bool>,
    /// The jobs not ended, by queue file name.
    jobs: HashMap<OsString, Entry>,
    /// Queued jobs free to start, by shape.
    ready: BTreeMap<Shape, BTreeSet<Place>>,
    /// Queued jobs waiting for others to succeed.
    waiting: BTreeSet<Place>,
    running: BTreeSet<OsString>,
    /// Cancel requests (as the job's queue file name) not acted on yet.
    cancels: BTreeSet<OsString>,
    listed: Option<Instant>,
    deps_seen: Option<Instant>,
    /// Dependencies' status files that are final (they never change again).
    deps_final: HashMap<PathBuf, JobState>,
    /// Batched cancel requests already read.
    batches: HashSet<OsString>,
    /// Tasks for the head's own node, handed to its runner in memory (no task file).
    given: Vec<Task>,
    /// Exit codes of those tasks, by job id, once they ended (no done file).
    ended_here: HashMap<String, i32>,
}

impl Scheduler {
    pub(super) fn num_nodes(&mut self, layout: &Layout) -> u32 {
        if self.nodes.is_none() {
            self.nodes = read_json::<ClusterInfo>(&layout.info()).map(|i| i.num_nodes);
        }
        self.nodes.unwrap_or(1)
    }

    /// The tasks this pass gave the head's own node.
    pub(super) fn take_given(&mut self) -> Vec<Task> {
        std::mem::take(&mut self.given)
    }

    /// Exit codes of tasks of the head's own node that ended.
    pub(super) fn ended_here(&mut self, codes: Vec<(String, i32)>) {
        self.ended_here.extend(codes);
    }

    /// cluster.json, read again only when it was replaced (it is written by rename).
    fn info(&mut self, layout: &Layout) -> Option<Rc<ClusterInfo>> {
        use std::os::unix::fs::MetadataExt;
        let m = std::fs::metadata(layout.info()).ok()?;
        let stamp = (m.modified().ok()?, m.ino(), m.len());
        if let Some((s, info)) = &self.info
            && *s == stamp
        {
            return Some(info.clone());
        }
        let info = Rc::new(read_json::<ClusterInfo>(&layout.info())?);
        self.info = Some((stamp, info.clone()));
        Some(info)
    }

    /// Autostop: once the cluster has been idle long enough, run the backend's commands.
    fn watch_idle(&mut self, layout: &Layout, info: &ClusterInfo, busy: bool) {
        let Some(a) = &info.autostop else { return };
        let sessions = match self.sessions_seen {
            Some((at, open)) if at.elapsed() < Duration::from_secs(2) => open,
            _ => {
                let open = proc::sessions_open(&layout.root);
                self.sessions_seen = Some((Instant::now(), open));
                open
            }
        };
        if busy || sessions {
            self.idle_since = None;
            return;
        }
        let since = *self.idle_since.get_or_insert_with(Instant::now);
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

    /// One scheduling pass. `news`: the names that appeared in the queue directory since the
    /// last pass, None when they are not known (list it). Returns true when a teardown job
    /// has ended.
    pub(super) fn tick(
        &mut self,
        layout: &Layout,
        news: Option<Vec<OsString>>,
        ended_here: Vec<(String, i32)>,
    ) -> std::io::Result<bool> {
        self.ended_here(ended_here);
        let Some(info) = self.info(layout) else {
            return Ok(false);
        };
        let (done, queue_busy) = self.schedule(layout, &info, news)?;
        if info.autostop.is_some() {
            // Work outside the queue (setup) keeps the cluster busy too.
            let busy = queue_busy
                || (0..info.num_nodes).any(|r| {
                    std::fs::read_dir(layout.tasks(r)).is_ok_and(|mut d| {
                        d.any(|e| {
                            e.is_ok_and(|e| e.path().extension().is_some_and(|x| x == "json"))
                        })
                    })
                });
            self.watch_idle(layout, &info, busy);
        }
        Ok(done)
    }

    /// Writes a job's status file, and remembers what it holds.
    fn set_status(
        &mut self,
        layout: &Layout,
        name: &OsString,
        st: JobStatus,
    ) -> std::io::Result<()> {
        if let Some(e) = self.jobs.get_mut(name) {
            write_json(&layout.status(&e.record.id), &st)?;
            e.status = Some(st);
        }
        Ok(())
    }

    /// Records that a job ended (its status file is written): it leaves every queue.
    /// Returns whether it tears the cluster down.
    fn end(&mut self, name: &OsString) -> bool {
        self.running.remove(name);
        self.cancels.remove(name);
        let Some(e) = self.jobs.remove(name) else {
            return false;
        };
        let place = (e.record.submitted, name.clone());
        self.waiting.remove(&place);
        let s = shape(&e.record);
        if let Some(q) = self.ready.get_mut(&s) {
            q.remove(&place);
            if q.is_empty() {
                self.ready.remove(&s);
            }
        }
        self.ended.insert(name.clone(), e.record.teardown);
        e.record.teardown
    }

    /// Takes in a job file of the queue seen for the first time. Returns whether it is a
    /// teardown job that has ended.
    fn admit(&mut self, layout: &Layout, name: OsString) -> bool {
        if self.jobs.contains_key(&name) {
            return false;
        }
        if let Some(teardown) = self.ended.get(&name) {
            return *teardown;
        }
        let Some(record) = read_json::<JobRecord>(&layout.queue().join(&name)) else {
            return false;
        };
        let status = read_json::<JobStatus>(&layout.status(&record.id));
        let place = (record.submitted, name.clone());
        match status.as_ref().map(|s| s.state) {
            Some(s) if s.is_final() => {
                self.ended.insert(name, record.teardown);
                return record.teardown;
            }
            Some(JobState::Running) => {
                // A task of the head's own node is given in memory: one that has no code
                // and no task file ran under an agent that is gone. It ends as killed
                // (137) rather than running twice.
                let id = &record.id;
                let on_head = status.as_ref().is_some_and(|s| s.nodes.contains(&0));
                if on_head
                    && !layout.done(0).join(format!("{id}.json")).exists()
                    && !layout.tasks(0).join(format!("{id}.json")).exists()
                {
                    self.ended_here.insert(id.clone(), 137);
                }
                self.running.insert(name.clone());
            }
            _ if record.after.is_empty() => {
                self.ready.entry(shape(&record)).or_default().insert(place);
            }
            _ => {
                self.waiting.insert(place);
            }
        }
        self.jobs.insert(
            name,
            Entry {
                record,
                status,
                cancel_sent: None,
            },
        );
        false
    }

    /// One pass over what changed: whether a teardown job has ended, and whether any job
    /// was queued or running when the pass began.
    fn schedule(
        &mut self,
        layout: &Layout,
        info: &ClusterInfo,
        news: Option<Vec<OsString>>,
    ) -> std::io::Result<(bool, bool)> {
        let mut teardown_done = false;
        let names = match news {
            Some(n) if self.listed.is_some_and(|at| at.elapsed() < RELIST) => n,
            _ => {
                self.listed = Some(Instant::now());
                std::fs::read_dir(layout.queue())?
                    .filter_map(Result::ok)
                    .map(|e| e.file_name())
                    .collect()
            }
        };
        // Job files first, so that a cancel request that came with its job finds it.
        let mut cancels = Vec::new();
        for name in names {
            let path = Path::new(&name);
            match path.extension().and_then(|e| e.to_str()) {
                Some("json") => teardown_done |= self.admit(layout, name),
                Some("cancel") => {
                    if let Some(stem) = path.file_stem() {
                        let mut job = stem.to_os_string();
                        job.push(".json");
                        cancels.push(job);
                    }
                }
                Some("cancels") if !self.batches.contains(&name) => {
                    let ids: Vec<String> =
                        read_json(&layout.queue().join(&name)).unwrap_or_default();
                    cancels.extend(
                        ids.into_iter()
                            .map(|id| OsString::from(format!("{id}.json"))),
                    );
                    self.batches.insert(name);
                }
                _ => {}
            }
        }
        for job in cancels {
            if self.jobs.contains_key(&job) {
                self.cancels.insert(job);
            }
        }
        let busy = !self.jobs.is_empty();

        // Running jobs: pass on cancel requests, and see whether their tasks ended.
        let mut freed = false;
        let running: Vec<OsString> = self.running.iter().cloned().collect();
        for name in running {
            let cancel = self.cancels.contains(&name);
            let Some(e) = self.jobs.get_mut(&name) else {
                continue;
            };
            let mut st = e.status.clone().unwrap_or_else(queued_status);
            let id = e.record.id.clone();
            if cancel && e.cancel_sent.is_none_or(|at| at.elapsed() >= RECANCEL) {
                for n in &st.nodes {
                    let _ = std::fs::write(layout.tasks(*n).join(format!("{id}.cancel")), b"");
                }
                e.cancel_sent = Some(Instant::now());
            }
            let mut codes = Vec::new();
            for n in &st.nodes {
                if *n == 0
                    && let Some(code) = self.ended_here.get(&id)
                {
                    codes.push(*code);
                } else if let Some(d) =
                    read_json::<TaskDone>(&layout.done(*n).join(format!("{id}.json")))
                {
                    codes.push(d.exit_code);
                }
            }
            if codes.len() < st.nodes.len() {
                continue;
            }
            let failed = codes.iter().find(|c| **c != 0).copied();
            st.state = if cancel {
                JobState::Cancelled
            } else if failed.is_some() {
                JobState::Failed
            } else {
                JobState::Succeeded
            };
            st.exit_code = Some(failed.unwrap_or(0));
            st.ended = Some(now_rfc3339());
            if cancel {
                st.reason = Some("cancelled on request".into());
            }
            self.set_status(layout, &name, st)?;
            self.ended_here.remove(&id);
            teardown_done |= self.end(&name);
            freed = true;
        }

        // Queued jobs with a cancel request end now: the record is renamed to say so (no
        // new file per job).
        let cancels: Vec<OsString> = self.cancels.iter().cloned().collect();
        for name in cancels {
            if self.running.contains(&name) {
                continue;
            }
            let Some(id) = self.jobs.get(&name).map(|e| e.record.id.clone()) else {
                self.cancels.remove(&name);
                continue;
            };
            if std::fs::rename(layout.queue().join(&name), layout.cancelled(&id)).is_err() {
                let mut st = super::cancelled_before_start();
                st.ended = Some(now_rfc3339());
                self.set_status(layout, &name, st)?;
            }
            teardown_done |= self.end(&name);
        }

        // Jobs waiting for others: free to start once those succeeded, cancelled when one
        // did not. Their status files are read when something may have changed.
        if !self.waiting.is_empty()
            && (freed || self.deps_seen.is_none_or(|at| at.elapsed() >= DEPS))
        {
            self.deps_seen = Some(Instant::now());
            let mut seen: HashMap<PathBuf, Option<JobState>> = HashMap::new();
            let waiting: Vec<Place> = self.waiting.iter().cloned().collect();
            for place in waiting {
                let Some(e) = self.jobs.get(&place.1) else {
                    self.waiting.remove(&place);
                    continue;
                };
                let mut blocked_by = None;
                let mut waits = false;
                for dep in &e.record.after {
                    let path = layout.root.join(&dep.status);
                    let state = match self.deps_final.get(&path) {
                        Some(s) => Some(*s),
                        None => *seen
                            .entry(path.clone())
                            .or_insert_with(|| super::status_at(&path).map(|s| s.state)),
                    };
                    if let Some(s) = state
                        && s.is_final()
                    {
                        self.deps_final.insert(path, s);
                    }
                    match state {
                        Some(JobState::Succeeded) => {}
                        Some(JobState::Failed | JobState::Cancelled) => {
                            blocked_by = Some(dep.name.clone())
                        }
                        _ => waits = true,
                    }
                }
                if let Some(dep) = blocked_by {
                    let mut st = queued_status();
                    st.state = JobState::Cancelled;
                    st.reason = Some(format!("dependency {dep} did not succeed"));
                    st.ended = Some(now_rfc3339());
                    self.set_status(layout, &place.1, st)?;
                    teardown_done |= self.end(&place.1);
                } else if !waits {
                    let s = shape(&e.record);
                    self.waiting.remove(&place);
                    self.ready.entry(s).or_default().insert(place);
                }
            }
        }

        // Resources in use per node by running jobs: CPUs, and each GPU device's share.
        let devices = gpu_devices(info.gpus_per_node);
        let mut used: Vec<NodeUse> = (0..info.num_nodes)
            .map(|_| NodeUse {
                cpus: 0.0,
                gpus: vec![0.0; devices.len()],
            })
            .collect();
        for name in &self.running {
            if let Some(e) = self.jobs.get(name)
                && let Some(s) = &e.status
            {
                for (i, n) in s.nodes.iter().enumerate() {
                    if let Some(u) = used.get_mut(*n as usize) {
                        u.take(
                            &e.record,
                            s.devices.get(i).map_or(&[][..], Vec::as_slice),
                            1.0,
                        );
                    }
                }
            }
        }

        // Start queued jobs in submission order while they fit; a shape that did not fit
        // will not fit later in this pass (placing only takes room).
        let mut full: HashSet<Shape> = HashSet::new();
        loop {
            let next = self
                .ready
                .iter()
                .filter(|(s, _)| !full.contains(*s))
                .filter_map(|(s, q)| q.first().map(|p| (p.clone(), *s)))
                .min();
            let Some((place, s)) = next else { break };
            let Some(e) = self.jobs.get(&place.1) else {
                if let Some(q) = self.ready.get_mut(&s) {
                    q.remove(&place);
                }
                continue;
            };
            let j = &e.record;
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
                full.insert(s);
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
                super::skypilot::add_vars(
                    &mut envs,
                    super::skypilot::Phase::Run,
                    None,
                    Some(j.gpus),
                );
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
                if *node == 0 {
                    self.given.push(task);
                } else {
                    write_json(&layout.tasks(*node).join(format!("{}.json", j.id)), &task)?;
                }
                if let Some(u) = used.get_mut(*node as usize) {
                    u.take(j, &held[rank], 1.0);
                }
            }
            let mut st = queued_status();
            st.state = JobState::Running;
            st.nodes = nodes;
            st.devices = held;
            st.started = Some(now_rfc3339());
            self.set_status(layout, &place.1, st)?;
            if let Some(q) = self.ready.get_mut(&s) {
                q.remove(&place);
                if q.is_empty() {
                    self.ready.remove(&s);
                }
            }
            self.running.insert(place.1);
        }
        Ok((teardown_done, busy))
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
