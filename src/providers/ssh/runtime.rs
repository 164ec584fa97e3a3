//! The cluster runtime on machines reached over ssh: the skyform binary installed on each
//! host, a node agent per host in a session of its own, the head linked to the other nodes
//! with a key of the cluster's own, and what a client asks of the head (submit, status,
//! cancel, logs). Each host keeps, under its skyform directory:
//!
//! ```text
//! bin/skyform-<build>            the agent binary, one per skyform build
//! clusters/<token>/              the cluster directory of `crate::runtime` (node-<rank>/workdir
//!                                links to the synced workdir), plus on the head
//!                                cluster.json, cluster_key and known_hosts
//! ```

use super::{Access, HOST_DIR, Output};
use crate::model::Host;
use crate::providers::{ErrorKind, ProviderError};
use crate::runtime::ClusterInfo;
use crate::runtime::link::{Answer, Call};
use std::path::Path;
use std::sync::Arc;

/// Whether the build ($1) is installed whole: the build id starts with the size in hex.
const INSTALLED: &str = r#"
b="$dir/bin/skyform-$1"
[ -x "$b" ] && [ "$(printf '%x' "$(wc -c <"$b")")" = "${1%%-*}" ] && echo present || echo missing
"#;

/// The binary arrives on stdin; it replaces nothing until it is whole (its size checked
/// against the build id), so a dropped upload leaves no broken agent behind.
const INSTALL: &str = r#"
mkdir -p "$dir/bin" && t="$dir/bin/.skyform-$1.$(hostname).$$" && cat >"$t" &&
  [ "$(printf '%x' "$(wc -c <"$t")")" = "${1%%-*}" ] && chmod 755 "$t" &&
  mv "$t" "$dir/bin/skyform-$1" || { rm -f "$t"; echo "the upload was cut short" >&2; exit 1; }
"#;

/// Edits the authorized keys file under a lock (homes may be shared between hosts): the
/// lines of cluster $1 are dropped, then `$add` appended if set. The file is replaced
/// whole, only if the new one was written entirely.
const KEYS_EDIT: &str = r#"
[ -n "$1" ] || exit 1
k="${SKYFORM_AUTHORIZED_KEYS:-$HOME/.ssh/authorized_keys}"; d=$(dirname "$k")
[ -d "$d" ] || { mkdir -p "$d" && chmod 700 "$d"; } || exit 1
i=0
until mkdir "$k.skyform-lock" 2>/dev/null; do
  i=$((i + 1)); [ $i -gt 100 ] && { echo "$k.skyform-lock is held" >&2; exit 1; }; sleep 0.1
done
t="$k.skyform.$(hostname).$$"
{ if [ -f "$k" ]; then grep -v " skyform-cluster-$1\$" "$k"; [ $? -le 1 ]; fi &&
  if [ -n "$add" ]; then printf '%s skyform-cluster-%s\n' "$add" "$1"; fi; } >"$t" &&
  chmod 600 "$t" && mv "$t" "$k"
ok=$?
rm -f "$t"; rmdir "$k.skyform-lock"
exit $ok
"#;

/// Authorises the cluster's key ($2) on a worker, for the head's links; the comment marks
/// the line as the cluster's so release removes exactly it.
fn authorize_script() -> String {
    format!("add=\"$2\"\n{KEYS_EDIT}")
}

/// Removes the cluster's key from a host's authorized keys (part of releasing it).
pub fn unauthorize_script() -> String {
    format!("add=\n{KEYS_EDIT}")
}

/// The public half of the head's link key, if it has one.
const KEPT_KEY: &str = r#"
k="$dir/clusters/$1/cluster_key"; [ -f "$k" ] && ssh-keygen -y -f "$k" 2>/dev/null; exit 0
"#;

/// Writes a file of the head's cluster directory ($2, relative) from stdin, private to the user.
const HEAD_FILE: &str = r#"
c="$dir/clusters/$1"; mkdir -p "$c" && (umask 077 && cat >"$c/$2.new") && mv "$c/$2.new" "$c/$2"
"#;

/// The one test of whether a node agent runs, as shell functions for the scripts that ask
/// (a pid file can outlive its process, and pids are reused, so the command line decides):
/// `is_agent PID`, and `running_agents CLUSTER_DIR`, which prints `agent` for each node
/// whose agent runs.
pub const AGENT_CHECKS: &str = r#"
is_agent() { tr '\0' ' ' <"/proc/$1/cmdline" 2>/dev/null | grep -q " __agent "; }
running_agents() {
  for f in "$1"/node-*/agent.pid; do
    [ -f "$f" ] && is_agent "$(cat "$f")" && echo agent
  done
  return 0
}
"#;

/// Starts the agent of node $2 unless it runs; its working directory is the cluster's.
/// Needs [`AGENT_CHECKS`].
const START: &str = r#"
c="$dir/clusters/$1"; r="$2"; bin="$dir/bin/skyform-$3"; n="$c/node-$r"
mkdir -p "$c/workdir" "$n" && ln -sfn ../workdir "$n/workdir" || exit 1
p=$(cat "$n/agent.pid" 2>/dev/null)
if [ -n "$p" ] && is_agent "$p"; then echo running; exit 0; fi
rm -f "$n/agent.pid"
cd "$c" && setsid "$bin" __agent "$c" "$r" </dev/null >"$n/agent.log" 2>&1 &
i=0
while [ ! -s "$n/agent.pid" ]; do
  i=$((i + 1))
  if [ $i -gt 100 ]; then echo "the agent did not start:"; tail -n 5 "$n/agent.log"; exit 1; fi
  sleep 0.1
done
echo started
"#;

const CALL: &str = r#"exec "$dir/bin/skyform-$2" __runtime "$dir/clusters/$1""#;

/// At most this much of a log per read.
const LOG_CHUNK: u64 = 1 << 20;

const LOG: &str = r#"
f="$dir/clusters/$1/jobs/$2/rank-$3.log"
[ -f "$f" ] && tail -c +"$(($4 + 1))" "$f" | head -c "$5"
exit 0
"#;

/// Which build of skyform an agent binary is: its size and modification time, enough to
/// tell builds apart without reading the file.
pub fn build_of(exe: &Path) -> std::io::Result<String> {
    let m = std::fs::metadata(exe)?;
    let t = m
        .modified()?
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    Ok(format!("{:x}-{t:x}", m.len()))
}

/// A fresh ed25519 key pair (private, public) for the head's links to the other nodes.
async fn keypair() -> Result<(Vec<u8>, String), ProviderError> {
    let dir = std::env::temp_dir().join(format!("skyform-key-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir)?;
    let key = dir.join("key");
    let out = tokio::process::Command::new("ssh-keygen")
        .args([
            "-q",
            "-t",
            "ed25519",
            "-N",
            "",
            "-C",
            "skyform-cluster",
            "-f",
        ])
        .arg(&key)
        .output()
        .await;
    let result = match out {
        Ok(o) if o.status.success() => {
            let private = std::fs::read(&key)?;
            let public = std::fs::read_to_string(key.with_extension("pub"))?;
            let public = public
                .split_whitespace()
                .take(2)
                .collect::<Vec<_>>()
                .join(" ");
            Ok((private, public))
        }
        Ok(o) => Err(ProviderError::other(format!(
            "ssh-keygen failed: {}",
            String::from_utf8_lossy(&o.stderr).trim()
        ))),
        Err(e) => Err(ProviderError::other(format!("cannot run ssh-keygen: {e}"))),
    };
    let _ = std::fs::remove_dir_all(&dir);
    result
}

/// How the head reaches `host` the way skyform does: `ssh -G` resolves names from ssh
/// config files into address, port and user.
async fn resolve(access: &Access, host: &Host) -> (String, Option<u16>, Option<String>) {
    let mut cmd = tokio::process::Command::new("ssh");
    if let Some(f) = &access.config_file {
        cmd.arg("-F").arg(f);
    }
    if let Some(p) = host.port.or(access.port) {
        cmd.args(["-p", &p.to_string()]);
    }
    if let Some(u) = host.user.as_ref().or(access.user.as_ref()) {
        cmd.args(["-l", u]);
    }
    cmd.args(["-G", &host.address]);
    let (mut address, mut port, mut user) = (
        host.address.clone(),
        host.port.or(access.port),
        host.user.clone().or_else(|| access.user.clone()),
    );
    if let Ok(out) = cmd.output().await
        && out.status.success()
    {
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            match line.split_once(' ') {
                Some(("hostname", v)) => address = v.to_string(),
                Some(("port", v)) => port = v.parse().ok(),
                Some(("user", v)) => user = Some(v.to_string()),
                _ => {}
            }
        }
    }
    (address, port, user)
}

/// The command the head runs (in its cluster directory) to run `remote` on `host`, with the
/// cluster's key.
async fn head_ssh(access: &Access, host: &Host, remote: String) -> Vec<String> {
    let (address, port, user) = resolve(access, host).await;
    let mut v: Vec<String> = [
        "ssh",
        "-i",
        "cluster_key",
        "-o",
        "IdentitiesOnly=yes",
        "-o",
        "BatchMode=yes",
        "-o",
        "UserKnownHostsFile=known_hosts",
        "-o",
        "StrictHostKeyChecking=accept-new",
        "-o",
        "ConnectTimeout=10",
        "-o",
        "ServerAliveInterval=15",
        "-o",
        "ServerAliveCountMax=4",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    if let Some(p) = port {
        v.extend(["-p".into(), p.to_string()]);
    }
    if let Some(u) = user {
        v.extend(["-l".into(), u]);
    }
    v.push(address);
    v.push("--".into());
    v.push(remote);
    v
}

/// `sh -c SCRIPT skyform ARGS…` as one string for a remote shell.
pub(crate) fn sh_line(script: &str, args: &[&str]) -> String {
    let q = |s: &str| shell_escape::unix::escape(s.into()).into_owned();
    let mut line = format!("sh -c {} skyform", q(script));
    for a in args {
        line.push(' ');
        line.push_str(&q(a));
    }
    line
}

/// `sh -c SCRIPT skyform ARGS…` as a local command.
fn sh_argv(script: &str, args: &[&str]) -> Vec<String> {
    let mut v = vec!["sh".into(), "-c".into(), script.into(), "skyform".into()];
    v.extend(args.iter().map(|a| a.to_string()));
    v
}

const MARK_STOPPED: &str = r#"touch "$dir/clusters/$1/stopped""#;

/// Stops a cluster on a host: its agent ends, its files and reservation stay.
pub fn stop_script() -> String {
    format!("{HOST_DIR}\n{MARK_STOPPED}")
}

/// Clears the mark, so the agent runs again at the next start.
pub const UNMARK_STOPPED: &str = r#"rm -f "$dir/clusters/$1/stopped""#;

/// What a node of a pool cluster runs when the cluster autostops: stopped, or with `down`
/// released (the cluster's files, reservation and key removed). The token is `$1`.
pub fn pool_autostop_script(down: bool) -> String {
    if down {
        format!(
            "{HOST_DIR}\n{}\n{}",
            super::pool::RELEASE,
            unauthorize_script()
        )
    } else {
        stop_script()
    }
}

/// What the head runs when the cluster is idle long enough: `script` (with the token as
/// `$1`) on the other nodes first (over its links' key, at `peers`), then on itself.
async fn autostop(
    access: &Access,
    peers: &[Host],
    token: &str,
    a: &crate::model::Autostop,
    script: &str,
) -> crate::runtime::Autostop {
    let mut commands = Vec::new();
    for host in peers.iter().skip(1) {
        commands.push(head_ssh(access, host, sh_line(script, &[token])).await);
    }
    commands.push(sh_argv(script, &[token]));
    crate::runtime::Autostop {
        idle_seconds: crate::runtime::idle_seconds(a.idle_minutes),
        commands,
    }
}

fn failed(host: &Host, what: &str, out: &Output) -> ProviderError {
    let detail = if out.stderr.trim().is_empty() {
        out.stdout.trim()
    } else {
        out.stderr.trim()
    };
    ProviderError::other(format!("{what} on {host} failed: {detail}"))
}

/// Installs the agent on every host of a cluster (once per build), links the head to the
/// others (reaching them at `peers`, their addresses as the head sees them: the hosts
/// themselves on a pool, private addresses on a cloud) and starts every node's agent;
/// `autostop_spec` comes with the script each node runs when the cluster autostops; `info` (without links) is what the head schedules
/// by. Starting again is harmless: running agents are kept, the head's files rewritten.
/// Returns the build the cluster runs.
pub async fn boot(
    access: &Access,
    hosts: &[Host],
    peers: &[Host],
    token: &str,
    mut info: ClusterInfo,
    autostop_spec: Option<(&crate::model::Autostop, String)>,
    exe: &Path,
) -> Result<String, ProviderError> {
    let build = build_of(exe).map_err(|e| {
        ProviderError::other(format!(
            "cannot read the agent binary {}: {e}",
            exe.display()
        ))
    })?;
    // One key for the cluster's life: a head that has one keeps it (rotating it on every
    // update would break the links whenever one host misses the change).
    let head = hosts
        .first()
        .ok_or_else(|| ProviderError::other("a cluster needs a host"))?;
    let c = access.connect(head).await?;
    let kept = c.script(&format!("{HOST_DIR}\n{KEPT_KEY}"), &[token]).await;
    c.close().await;
    let kept = kept?.stdout.trim().to_string();
    let (key, public) = if kept.starts_with("ssh-") {
        (None, kept)
    } else {
        let (k, p) = keypair().await?;
        (Some(k), p)
    };
    for (rank, host) in peers.iter().enumerate().skip(1) {
        let link = sh_line(
            &format!("{HOST_DIR}\nexec \"$dir/bin/skyform-$1\" __link \"$dir/clusters/$2\" \"$3\""),
            &[&build, token, &rank.to_string()],
        );
        info.links
            .insert(rank as u32, head_ssh(access, host, link).await);
    }
    if let Some((a, script)) = autostop_spec {
        info.autostop = Some(autostop(access, peers, token, a, &script).await);
    }
    info.build = Some(build.clone());
    info.hosts = hosts.iter().map(ToString::to_string).collect();
    let info = serde_json::to_vec_pretty(&info).map_err(|e| ProviderError::other(e.to_string()))?;
    let binary: Arc<tokio::sync::OnceCell<Vec<u8>>> = Arc::new(tokio::sync::OnceCell::new());
    let mut set = tokio::task::JoinSet::new();
    for (rank, host) in hosts.iter().enumerate() {
        let (access, host, token, build) = (
            access.clone(),
            host.clone(),
            token.to_string(),
            build.clone(),
        );
        let (exe, binary, key, public, info) = (
            exe.to_path_buf(),
            binary.clone(),
            key.clone(),
            public.clone(),
            info.clone(),
        );
        set.spawn(async move {
            let c = access.connect(&host).await?;
            let result = async {
                let script = |s: &str| format!("{HOST_DIR}\n{s}");
                let out = c.script(&script(INSTALLED), &[&build]).await?;
                if out.stdout.trim() != "present" {
                    let bytes = binary
                        .get_or_try_init(|| async { tokio::fs::read(&exe).await })
                        .await?;
                    let out = c
                        .script_with_input(&script(INSTALL), &[&build], bytes)
                        .await?;
                    if out.code != Some(0) {
                        return Err(failed(&host, "installing skyform's agent", &out));
                    }
                }
                if rank == 0 {
                    let files = [("cluster.json", Some(&info)), ("cluster_key", key.as_ref())];
                    for (name, bytes) in files.iter().filter_map(|(n, b)| Some((*n, (*b)?))) {
                        let out = c
                            .script_with_input(&script(HEAD_FILE), &[&token, name], bytes)
                            .await?;
                        if out.code != Some(0) {
                            return Err(failed(&host, &format!("writing {name}"), &out));
                        }
                    }
                } else {
                    let out = c
                        .script(&script(&authorize_script()), &[&token, &public])
                        .await?;
                    if out.code != Some(0) {
                        return Err(failed(&host, "authorising the head's key", &out));
                    }
                }
                let r = rank.to_string();
                let out = c
                    .script(
                        &script(&format!("{AGENT_CHECKS}\n{START}")),
                        &[&token, &r, &build],
                    )
                    .await?;
                if out.code != Some(0) {
                    return Err(failed(
                        &host,
                        &format!("starting the agent of node {rank}"),
                        &out,
                    ));
                }
                Ok(())
            }
            .await;
            c.close().await;
            result
        });
    }
    super::all_done(set).await.map(|()| build)
}

/// One call to the head of the cluster `token` running `build`.
pub async fn call(
    access: &Access,
    head: &Host,
    token: &str,
    build: &str,
    call: &Call,
) -> Result<Answer, ProviderError> {
    let input = serde_json::to_vec(call).map_err(|e| ProviderError::other(e.to_string()))?;
    let c = access.connect(head).await?;
    let out = c
        .script_with_input(&format!("{HOST_DIR}\n{CALL}"), &[token, build], &input)
        .await;
    c.close().await;
    let out = out?;
    if matches!(
        out.code,
        Some(crate::runtime::link::EXIT_NO_CLUSTER | 126 | 127)
    ) {
        return Err(ProviderError {
            kind: ErrorKind::NotFound,
            message: format!(
                "the cluster's runtime is not on its head {head} (released outside skyform?): {}",
                out.stderr.trim()
            ),
        });
    }
    if out.code == Some(crate::runtime::link::EXIT_STOPPED) {
        return Err(ProviderError {
            kind: ErrorKind::Config,
            message: out
                .stderr
                .trim()
                .trim_start_matches("skyform runtime: ")
                .to_string(),
        });
    }
    if out.code != Some(0) {
        return Err(ProviderError {
            kind: ErrorKind::Transient,
            message: format!(
                "the head {head} did not answer: {}",
                if out.stderr.trim().is_empty() {
                    "exit code ?".into()
                } else {
                    out.stderr.trim().to_string()
                }
            ),
        });
    }
    serde_json::from_str(out.stdout.trim()).map_err(|e| {
        ProviderError::other(format!("the head {head} answered {:?}: {e}", out.stdout))
    })
}

/// What rank `rank` of a job has logged on `host` from byte `offset` on (a chunk at most).
pub async fn read_log(
    access: &Access,
    host: &Host,
    token: &str,
    job: &str,
    rank: u32,
    offset: u64,
) -> Result<Vec<u8>, ProviderError> {
    let c = access.connect(host).await?;
    let (r, o, n) = (rank.to_string(), offset.to_string(), LOG_CHUNK.to_string());
    let out = c
        .script(&format!("{HOST_DIR}\n{LOG}"), &[token, job, &r, &o, &n])
        .await;
    c.close().await;
    Ok(out?.raw)
}
