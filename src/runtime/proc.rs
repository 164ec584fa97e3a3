//! Process facts and signals: liveness (zombies count as dead), sessions, kill.
//!
//! The one place with `unsafe`: a few libc calls (`kill`, `setsid`, `getuid`, inotify, `poll`,
//! `pidfd_open`) with no safe std equivalent.
#![allow(unsafe_code)]

use std::path::Path;
use std::process::Command;

/// Fields of `/proc/PID/stat` after the command name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcStat {
    pub state: char,
    pub session: i32,
    pub start_time: u64,
}

pub fn stat(pid: u32) -> Option<ProcStat> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may contain spaces: split after the last ')'.
    let rest = &text[text.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    Some(ProcStat {
        state: fields.first()?.chars().next()?,
        session: fields.get(3)?.parse().ok()?,
        start_time: fields.get(19)?.parse().ok()?,
    })
}

/// True when `pid` runs (not a zombie) and, if given, started at `start_time` (so a reused pid
/// is not mistaken for ours).
pub fn alive(pid: u32, start_time: Option<u64>) -> bool {
    match stat(pid) {
        Some(s) => s.state != 'Z' && s.state != 'X' && start_time.is_none_or(|t| t == s.start_time),
        None => false,
    }
}

/// Whether someone works on the cluster in `root` right now: a process of an interactive
/// ssh session (a terminal and `SSH_CONNECTION`) on this machine, or a `skyform ssh` shell
/// into a cluster on this machine (`SKYFORM_SESSION=root`).
pub fn sessions_open(root: &Path) -> bool {
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return false;
    };
    let ours = format!("SKYFORM_SESSION={}", root.display());
    rd.filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .any(|pid| {
            let Ok(env) = std::fs::read(format!("/proc/{pid}/environ")) else {
                return false;
            };
            let mut vars = env.split(|b| *b == 0);
            if vars.any(|v| v == ours.as_bytes()) {
                return true;
            }
            let ssh = env
                .split(|b| *b == 0)
                .any(|v| v.starts_with(b"SSH_CONNECTION="));
            ssh && tty_of(pid).is_some_and(|t| t != 0)
        })
}

/// The controlling terminal of a process (0: none).
fn tty_of(pid: u32) -> Option<i64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &text[text.rfind(')')? + 2..];
    rest.split_whitespace().nth(4)?.parse().ok()
}

/// The live agents of the cluster in `dir` on this machine (`skyform __agent DIR RANK`),
/// found by their command line: also those whose starter died before recording them.
pub fn agents_of(dir: &Path) -> Vec<u32> {
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let dir = dir.as_os_str().as_encoded_bytes();
    rd.filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            let Ok(cmd) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
                return false;
            };
            let args: Vec<&[u8]> = cmd.split(|b| *b == 0).collect();
            args.windows(2)
                .any(|w| w[0] == b"__agent".as_slice() && w[1] == dir)
                && stat(*pid).is_some_and(|s| s.state != 'Z' && s.state != 'X')
        })
        .collect()
}

/// Every live process in session `sid`.
pub fn session_members(sid: u32) -> Vec<u32> {
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    rd.filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            stat(*pid).is_some_and(|s| {
                u32::try_from(s.session).ok() == Some(sid) && s.state != 'Z' && s.state != 'X'
            })
        })
        .collect()
}

/// Sends `signal` to a process (`negative`: to its process group).
pub fn signal(pid: u32, signal: i32, group: bool) -> bool {
    let Ok(p) = i32::try_from(pid) else {
        return false;
    };
    if p <= 1 {
        return false;
    }
    let target = if group { -p } else { p };
    // SAFETY: kill(2) takes plain integers and has no memory effects.
    unsafe { libc::kill(target, signal) == 0 }
}

/// Ends this process at once with SIGKILL, as `kill -9` would.
pub fn kill_self() -> ! {
    // SAFETY: kill(2) and getpid(2) take plain integers and have no memory effects.
    unsafe {
        libc::kill(libc::getpid(), libc::SIGKILL);
    }
    std::process::abort()
}

/// The real user id of this process.
pub fn user_id() -> u32 {
    // SAFETY: getuid(2) has no arguments, no memory effects and cannot fail.
    unsafe { libc::getuid() }
}

/// Kills every process of session `sid`: SIGTERM, a grace period, then SIGKILL. Returns once
/// none is left (or after ~5 s).
pub fn kill_session(sid: u32) {
    for pid in session_members(sid) {
        signal(pid, libc::SIGTERM, false);
    }
    for _ in 0..20 {
        if session_members(sid).is_empty() {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    for _ in 0..50 {
        let left = session_members(sid);
        if left.is_empty() {
            return;
        }
        for pid in left {
            signal(pid, libc::SIGKILL, false);
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// Lets a closed stdout end the process quietly (as `skyform … | head` expects), instead of
/// a write error on every line.
pub fn default_sigpipe() {
    // SAFETY: restoring the default disposition of one signal has no memory effects.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

/// Keeps the process alive when its output goes away: for apply and destroy, which must
/// finish (and write state) whoever is reading.
pub fn ignore_sigpipe() {
    // SAFETY: as above.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_IGN);
    }
}

/// Makes the child lead a new session (so it and its jobs outlive skyform and can be killed
/// together).
pub fn new_session(cmd: &mut Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: setsid(2) is async-signal-safe and touches no memory of the parent.
    unsafe {
        cmd.pre_exec(|| {
            if libc::setsid() < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// Wakes an agent when an entry appears in a directory it watches or a child process of it
/// ends (inotify and pidfds), so that it reacts at once instead of polling. Where the kernel
/// offers neither, `wait` sleeps its timeout and `take` says to list the directory.
#[derive(Debug)]
pub struct Watcher {
    fd: Option<std::os::fd::OwnedFd>,
    dirs: Vec<Watched>,
    buf: Vec<u8>,
}

#[derive(Debug)]
struct Watched {
    wd: i32,
    /// Whether the names are kept for `take` (else the watch only wakes).
    keep: bool,
    names: Vec<std::ffi::OsString>,
    /// Some names were lost (overflow, or no watch): the directory must be listed.
    lost: bool,
}

impl Default for Watcher {
    fn default() -> Self {
        Self::new()
    }
}

impl Watcher {
    pub fn new() -> Watcher {
        use std::os::fd::FromRawFd;
        // SAFETY: inotify_init1 takes flags and returns a new descriptor (or -1), which the
        // OwnedFd then owns alone.
        let fd = unsafe { libc::inotify_init1(libc::IN_NONBLOCK | libc::IN_CLOEXEC) };
        Watcher {
            fd: (fd >= 0).then(|| unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) }),
            dirs: Vec::new(),
            buf: vec![0; 64 * 1024],
        }
    }

    /// Watches `dir` for entries made or renamed into it; `keep`: remember their names for
    /// [`Watcher::take`]. Returns the watch's handle.
    pub fn watch(&mut self, dir: &Path, keep: bool) -> usize {
        use std::os::fd::AsRawFd;
        use std::os::unix::ffi::OsStrExt;
        let wd = match (&self.fd, std::ffi::CString::new(dir.as_os_str().as_bytes())) {
            // SAFETY: the descriptor is ours and the path a valid C string for the call.
            (Some(fd), Ok(path)) => unsafe {
                libc::inotify_add_watch(
                    fd.as_raw_fd(),
                    path.as_ptr(),
                    libc::IN_CREATE | libc::IN_MOVED_TO | libc::IN_ONLYDIR,
                )
            },
            _ => -1,
        };
        self.dirs.push(Watched {
            wd,
            keep,
            names: Vec::new(),
            lost: true,
        });
        self.dirs.len() - 1
    }

    /// The names that appeared in watched directory `id` since the last call, or None when
    /// they are not known (the first call, no watch, or events were lost): list it then.
    pub fn take(&mut self, id: usize) -> Option<Vec<std::ffi::OsString>> {
        let _ = self.drain();
        let w = self.dirs.get_mut(id)?;
        let names = std::mem::take(&mut w.names);
        if w.lost {
            w.lost = w.wd < 0;
            return None;
        }
        Some(names)
    }

    /// Reads the events that are there, without blocking: the caller is about to look at
    /// its directories. Returns whether there were any.
    pub fn drain(&mut self) -> bool {
        use std::os::fd::AsRawFd;
        use std::os::unix::ffi::OsStrExt;
        let Some(fd) = &self.fd else { return false };
        let mut any = false;
        loop {
            // SAFETY: reads at most buf.len() bytes into our own buffer.
            let n =
                unsafe { libc::read(fd.as_raw_fd(), self.buf.as_mut_ptr().cast(), self.buf.len()) };
            let Ok(n) = usize::try_from(n) else {
                return any;
            };
            if n == 0 {
                return any;
            }
            any = true;
            // struct inotify_event: wd (i32), mask, cookie, len (u32), then len bytes of name.
            let mut at = 0;
            while at + 16 <= n {
                let field = |o: usize| {
                    let mut b = [0u8; 4];
                    b.copy_from_slice(&self.buf[at + o..at + o + 4]);
                    b
                };
                let wd = i32::from_ne_bytes(field(0));
                let mask = u32::from_ne_bytes(field(4));
                let len = u32::from_ne_bytes(field(12)) as usize;
                let end = (at + 16 + len).min(n);
                let raw = &self.buf[at + 16..end];
                let name = &raw[..raw.iter().position(|b| *b == 0).unwrap_or(raw.len())];
                at = end;
                if mask & libc::IN_Q_OVERFLOW != 0 {
                    for d in &mut self.dirs {
                        d.lost = true;
                        d.names.clear();
                    }
                    continue;
                }
                if let Some(d) = self.dirs.iter_mut().find(|d| d.wd == wd) {
                    if mask & libc::IN_IGNORED != 0 {
                        // The directory went: its names can no longer be known.
                        d.wd = -1;
                        d.lost = true;
                    } else if d.keep && !name.is_empty() {
                        d.names
                            .push(std::ffi::OsStr::from_bytes(name).to_os_string());
                    }
                }
            }
        }
    }

    /// Sleeps until a watched directory gains an entry, one of `children` (pidfds) ends, or
    /// `timeout` passes.
    pub fn wait(&mut self, timeout: std::time::Duration, children: &[std::os::fd::BorrowedFd<'_>]) {
        use std::os::fd::AsRawFd;
        if self.drain() || self.dirs.iter().any(|d| d.keep && !d.names.is_empty()) {
            // Something came since the caller last looked.
            return;
        }
        let mut fds: Vec<libc::pollfd> = self
            .fd
            .iter()
            .map(|f| f.as_raw_fd())
            .chain(children.iter().map(|c| c.as_raw_fd()))
            .map(|fd| libc::pollfd {
                fd,
                events: libc::POLLIN,
                revents: 0,
            })
            .collect();
        if fds.is_empty() {
            std::thread::sleep(timeout);
            return;
        }
        let ms = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
        // SAFETY: fds is a valid array of pollfd of the length given.
        unsafe {
            libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, ms);
        }
    }
}

/// A descriptor that becomes readable when process `pid` (a child not yet waited for, so
/// its pid cannot be reused) ends; None where the kernel has no pidfds.
pub fn pidfd(pid: u32) -> Option<std::os::fd::OwnedFd> {
    use std::os::fd::FromRawFd;
    let pid = libc::pid_t::try_from(pid).ok()?;
    // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor (or -1), which
    // the OwnedFd then owns alone.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    let fd = i32::try_from(fd).ok().filter(|fd| *fd >= 0)?;
    Some(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) })
}

/// This machine: logical CPUs, memory in GiB, and GPUs (name → count) from nvidia-smi.
pub fn machine() -> (f64, f64, Vec<(String, f64)>) {
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1) as f64;
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|k| k.parse::<f64>().ok())
        })
        .map(|kib| (kib / 1024.0 / 1024.0 * 10.0).round() / 10.0)
        .unwrap_or(1.0);
    let mut gpus: Vec<(String, f64)> = Vec::new();
    if let Ok(out) = Command::new("nvidia-smi")
        .args(["--query-gpu=name", "--format=csv,noheader"])
        .output()
        && out.status.success()
    {
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            let name = gpu_short_name(line);
            match gpus.iter_mut().find(|g| g.0 == name) {
                Some(g) => g.1 += 1.0,
                None => gpus.push((name, 1.0)),
            }
        }
    }
    (cpus, mem, gpus)
}

/// `NVIDIA A100-SXM4-80GB` → `A100-80GB`; `Tesla T4` → `T4`.
fn gpu_short_name(full: &str) -> String {
    let s = full
        .trim()
        .trim_start_matches("NVIDIA ")
        .trim_start_matches("Tesla ");
    let mut parts = s.split('-');
    let base = parts
        .next()
        .unwrap_or(s)
        .split_whitespace()
        .next()
        .unwrap_or(s);
    match parts.next_back() {
        Some(mem) if mem.ends_with("GB") && base == "A100" && mem == "80GB" => {
            format!("{base}-80GB")
        }
        _ => base.to_string(),
    }
}

pub fn is_dir(p: &Path) -> bool {
    p.is_dir()
}

/// Asks the kernel to back this process with small pages only. The allocator reserves large
/// aligned regions, and with transparent huge pages each first touch zeroes 2 MiB: most of
/// the system time of a short run such as `plan`. Inherited by children, so only commands
/// that start no lasting process call it (an agent, a controller or a user's shell keeps the
/// system's setting).
pub fn without_huge_pages() {
    #[cfg(target_os = "linux")]
    // SAFETY: prctl(2) with PR_SET_THP_DISABLE sets one flag of this process; no memory is
    // passed.
    unsafe {
        libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn self_is_alive_and_names() {
        let me = std::process::id();
        let s = stat(me).unwrap();
        assert!(alive(me, Some(s.start_time)));
        assert!(!alive(me, Some(s.start_time + 1)));
        assert_eq!(gpu_short_name("NVIDIA A100-SXM4-80GB"), "A100-80GB");
        assert_eq!(gpu_short_name("Tesla T4"), "T4");
        assert_eq!(gpu_short_name("NVIDIA H100 80GB HBM3"), "H100");
    }

    #[test]
    fn a_skyform_session_keeps_its_cluster_busy() {
        let root = std::env::temp_dir().join(format!("sky-session-{}", std::process::id()));
        assert!(!sessions_open(&root));
        let mut shell = Command::new("sleep")
            .arg("30")
            .env("SKYFORM_SESSION", &root)
            .spawn()
            .unwrap_or_else(|e| panic!("sleep: {e}"));
        // Until the child has exec'd, /proc shows the parent's environment: wait for it.
        let seen = (0..100).any(|_| {
            std::thread::sleep(std::time::Duration::from_millis(20));
            sessions_open(&root)
        });
        assert!(seen, "the session was never seen");
        assert!(!sessions_open(&root.join("other")));
        let _ = shell.kill();
        let _ = shell.wait();
        assert!(!sessions_open(&root));
    }
}
