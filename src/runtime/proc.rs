//! Process facts and signals: liveness (zombies count as dead), sessions, kill.
//!
//! The one place with `unsafe`: a few libc calls (`kill`, `setsid`, `getuid`) with no safe std
//! equivalent.
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
