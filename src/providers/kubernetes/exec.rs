//! Jobs inside a cluster's pods, through the pod exec API: each rank's pod starts the job's
//! `run` in the background (so it outlives the exec call), records its exit code in a
//! directory of its own, and answers for status, logs and cancellation. The pods hold the
//! cluster's share of their nodes (GPUs included), so the job uses exactly that.
//!
//! Only `sh` and common tools (`base64`, `tail`, `head`, `kill`, optionally `setsid`) are
//! needed in the image. Environment and secrets travel on the exec stream's stdin (one
//! base64 line: Kubernetes' v4 exec protocol cannot close stdin), are written to a file only
//! the pod's user can read, and the file is removed once the job's shell has read it: they
//! appear in no pod spec, no command line and no object on the API server.

use super::connection::Conn;
use super::errors::classify;
use crate::providers::{ErrorKind, ProviderError};
use crate::runtime::{JobState, JobStatus};
use std::collections::BTreeMap;

/// Starts a job in the directory `$1`: reads one base64 line of `export` statements (the
/// environment) from stdin, writes `run` (`$2`), and runs it in the background in a session
/// of its own, recording its exit code when it ends.
const START: &str = r#"set -e
d="$1"
mkdir -p "$d"
umask 077
IFS= read -r line || true
printf '%s' "$line" | base64 -d > "$d/env"
printf '%s\n' "$2" > "$d/run"
s=
if command -v setsid >/dev/null 2>&1; then s=setsid; fi
nohup $s sh -c '. "$1/env"; rm -f "$1/env"; cd "$HOME" 2>/dev/null || true; sh "$1/run" > "$1/log" 2>&1; echo $? > "$1/exit.tmp"; mv "$1/exit.tmp" "$1/exit"' sh "$d" > /dev/null 2>&1 < /dev/null &
echo $! > "$d/pid"
"#;

/// Where a job is: `exit N`, `running`, `lost` (started, but neither running nor ended: its
/// pod was restarted) or `none` (never started here).
const STATUS: &str = r#"d="$1"
if [ -f "$d/exit" ]; then echo "exit $(cat "$d/exit")"
elif [ -f "$d/pid" ] && kill -0 "$(cat "$d/pid")" 2>/dev/null; then echo running
elif [ -d "$d" ]; then echo lost
else echo none
fi
"#;

/// At most 1 MiB of the log from byte `$2` on.
const LOG: &str = r#"tail -c +"$(($2 + 1))" "$1/log" 2>/dev/null | head -c 1048576"#;

/// Ends the job's session (or process) and removes its directory.
const CANCEL: &str = r#"d="$1"
if [ -f "$d/pid" ]; then
  p="$(cat "$d/pid")"
  kill -TERM -"$p" 2>/dev/null || kill -TERM "$p" 2>/dev/null || true
fi
rm -rf "$d"
"#;

/// The directory of one rank of a job inside its pod.
pub fn job_dir(job: &str, rank: u32) -> String {
    format!("${{TMPDIR:-/tmp}}/skyform-jobs/{job}-{rank}")
}

/// `export K='v'` lines, each value single-quoted for `sh`.
pub fn exports(envs: &BTreeMap<String, String>) -> String {
    envs.iter()
        .map(|(k, v)| format!("export {k}='{}'\n", v.replace('\'', r"'\''")))
        .collect()
}

/// What a command run with exec answered.
#[derive(Debug)]
pub struct Ran {
    pub code: i32,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

/// Runs `sh -c SCRIPT sh ARGS…` in `pod`'s main container, with `input` on stdin.
pub(super) async fn sh(
    conn: &Conn,
    pod: &str,
    script: &str,
    args: &[&str],
    input: Option<&[u8]>,
) -> Result<Ran, ProviderError> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut argv = vec!["sh", "-c", script, "sh"];
    argv.extend_from_slice(args);
    let ap = kube::api::AttachParams::default()
        .container("main")
        .stdin(input.is_some())
        .stdout(true)
        .stderr(true);
    let at = conn.where_();
    let mut attached = conn
        .pods()
        .exec(pod, argv, &ap)
        .await
        .map_err(|e| classify(e, &format!("run a command in pod {pod}"), &at))?;
    if let (Some(bytes), Some(mut stdin)) = (input, attached.stdin()) {
        stdin.write_all(bytes).await?;
        stdin.flush().await?;
    }
    let mut out = attached.stdout();
    let mut err = attached.stderr();
    let status = attached.take_status();
    let read = |s: Option<tokio::io::ReadHalf<tokio::io::SimplexStream>>| async move {
        let mut buf = Vec::new();
        if let Some(mut s) = s {
            s.read_to_end(&mut buf).await?;
        }
        Ok::<_, std::io::Error>(buf)
    };
    let (stdout, stderr) = tokio::try_join!(read(out.take()), read(err.take()))?;
    let status = match status {
        Some(s) => s.await,
        None => None,
    };
    let code = match status {
        Some(s) if s.status.as_deref() == Some("Success") => 0,
        Some(s) => s
            .details
            .and_then(|d| d.causes)
            .into_iter()
            .flatten()
            .find(|c| c.reason.as_deref() == Some("ExitCode"))
            .and_then(|c| c.message?.parse().ok())
            .ok_or_else(|| ProviderError {
                kind: ErrorKind::Transient,
                message: format!(
                    "{at}: a command in pod {pod} failed: {}",
                    s.message.unwrap_or_default()
                ),
            })?,
        None => {
            return Err(ProviderError {
                kind: ErrorKind::Transient,
                message: format!("{at}: a command in pod {pod} ended without a status"),
            });
        }
    };
    Ok(Ran {
        code,
        stdout,
        stderr,
    })
}

/// Runs one of the scripts above with `$1` the directory of rank `rank` of `job` (expanded
/// in the pod: it holds `${TMPDIR:-/tmp}`) and `args` after it.
async fn in_job_dir(
    conn: &Conn,
    pod: &str,
    job: &str,
    rank: u32,
    body: &str,
    args: &[&str],
    input: Option<&[u8]>,
) -> Result<Ran, ProviderError> {
    let script = format!("set -- \"{}\" \"$@\"\n{body}", job_dir(job, rank));
    sh(conn, pod, &script, args, input).await
}

/// Starts rank `rank` of a job in `pod`.
pub(super) async fn start(
    conn: &Conn,
    pod: &str,
    job: &str,
    rank: u32,
    run: &str,
    envs: &BTreeMap<String, String>,
) -> Result<(), ProviderError> {
    use base64::Engine as _;
    let line = base64::engine::general_purpose::STANDARD.encode(exports(envs));
    let input = format!("{line}\n");
    let ran = in_job_dir(conn, pod, job, rank, START, &[run], Some(input.as_bytes())).await?;
    if ran.code != 0 {
        return Err(ProviderError::other(format!(
            "{}: cannot start the job in pod {pod} (exit code {}): {}",
            conn.where_(),
            ran.code,
            String::from_utf8_lossy(&ran.stderr).trim()
        )));
    }
    Ok(())
}

/// Where one rank of a job (or managed job) is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rank {
    Ended(i32),
    Running,
    /// Ended without an exit code of its own (its pod restarted, was evicted or is gone).
    Lost(String),
    /// Not started (yet).
    NotThere,
}

pub(super) async fn rank_status(
    conn: &Conn,
    pod: &str,
    job: &str,
    rank: u32,
) -> Result<Rank, ProviderError> {
    let ran = in_job_dir(conn, pod, job, rank, STATUS, &[], None).await?;
    Ok(parse_rank(&String::from_utf8_lossy(&ran.stdout)))
}

fn lost() -> Rank {
    Rank::Lost("it neither runs nor recorded an exit code (its pod restarted)".into())
}

fn parse_rank(text: &str) -> Rank {
    let t = text.trim();
    match t.strip_prefix("exit ") {
        Some(code) => code.trim().parse().map_or_else(|_| lost(), Rank::Ended),
        None => match t {
            "running" => Rank::Running,
            "none" => Rank::NotThere,
            _ => lost(),
        },
    }
}

/// A job's status from its ranks: failed when one failed or was lost (with that rank's exit
/// code), succeeded when all succeeded, running while one runs.
pub fn status_of(ranks: &[Rank]) -> JobStatus {
    let mut s = JobStatus {
        state: JobState::Queued,
        exit_code: None,
        reason: None,
        nodes: (0..ranks.len() as u32).collect(),
        started: None,
        ended: None,
        devices: Vec::new(),
    };
    let failed = ranks.iter().enumerate().find(|(_, r)| match r {
        Rank::Ended(c) => *c != 0,
        Rank::Lost(_) => true,
        _ => false,
    });
    if let Some((rank, r)) = failed {
        s.state = JobState::Failed;
        match r {
            Rank::Ended(c) => {
                s.exit_code = Some(*c);
                s.reason = Some(format!("rank {rank} exited with {c}"));
            }
            Rank::Lost(why) => s.reason = Some(format!("rank {rank}: {why}")),
            _ => {}
        }
    } else if !ranks.is_empty() && ranks.iter().all(|r| *r == Rank::Ended(0)) {
        s.state = JobState::Succeeded;
        s.exit_code = Some(0);
    } else if ranks
        .iter()
        .any(|r| matches!(r, Rank::Running | Rank::Ended(_)))
    {
        s.state = JobState::Running;
    }
    s
}

/// At most 1 MiB of a rank's log from byte `from` on.
pub(super) async fn log(
    conn: &Conn,
    pod: &str,
    job: &str,
    rank: u32,
    from: u64,
) -> Result<Vec<u8>, ProviderError> {
    let from = from.to_string();
    Ok(in_job_dir(conn, pod, job, rank, LOG, &[&from], None)
        .await?
        .stdout)
}

/// Ends a rank's job and removes its directory.
pub(super) async fn cancel(
    conn: &Conn,
    pod: &str,
    job: &str,
    rank: u32,
) -> Result<(), ProviderError> {
    in_job_dir(conn, pod, job, rank, CANCEL, &[], None)
        .await
        .map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_quoted_for_sh() {
        let envs = BTreeMap::from([
            ("A".to_string(), "it's $HOME".to_string()),
            ("B".to_string(), "x".to_string()),
        ]);
        assert_eq!(exports(&envs), "export A='it'\\''s $HOME'\nexport B='x'\n");
    }

    #[test]
    fn ranks_make_a_status() {
        assert_eq!(parse_rank("exit 3\n"), Rank::Ended(3));
        assert_eq!(parse_rank("running\n"), Rank::Running);
        assert_eq!(parse_rank("none\n"), Rank::NotThere);
        assert!(matches!(parse_rank("garbage"), Rank::Lost(_)));
        let s = status_of(&[Rank::Ended(0), Rank::Ended(7)]);
        assert_eq!((s.state, s.exit_code), (JobState::Failed, Some(7)));
        let s = status_of(&[Rank::Ended(0), Rank::Running]);
        assert_eq!(s.state, JobState::Running);
        let s = status_of(&[Rank::Ended(0), Rank::Ended(0)]);
        assert_eq!((s.state, s.exit_code), (JobState::Succeeded, Some(0)));
        let s = status_of(&[Rank::Lost("pod p was evicted".into())]);
        assert_eq!(s.state, JobState::Failed);
        assert_eq!(s.reason.as_deref(), Some("rank 0: pod p was evicted"));
        assert_eq!(status_of(&[Rank::NotThere]).state, JobState::Queued);
    }
}
