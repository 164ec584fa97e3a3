//! The transport: one multiplexed OpenSSH session per host (the `openssh` crate drives the
//! system `ssh`), host keys trusted on first use and recorded in skyform's own known_hosts
//! file, a changed key refused with a clear error, every remote command passed as
//! separately quoted arguments, and workdirs mirrored with rsync or a tar stream.

use super::{HOST_DIR, Host, runtime};
use crate::providers::{ErrorKind, ProviderError};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// How to reach the hosts of a pool.
#[derive(Debug, Clone)]
pub struct Access {
    /// Default user and port for hosts that do not name their own.
    pub user: Option<String>,
    pub port: Option<u16>,
    pub identity_file: Option<PathBuf>,
    /// An ssh config file to read instead of ssh's default (`~/.ssh/config` of the user).
    pub config_file: Option<PathBuf>,
    /// skyform's own record of host keys (trust on first use).
    pub known_hosts: PathBuf,
    /// Where the multiplexing sockets live ([`control_dir`]); keep it short (sockets have
    /// a path limit).
    pub control_dir: PathBuf,
    pub connect_timeout: Duration,
}

/// How long a master connection outlives its last session. Every operation opens its
/// connection and closes it when done, which ends the master at once; this bounds the life
/// of the masters a killed run leaves behind (and of their hold on the host).
const MASTER_IDLE_SECONDS: std::num::NonZeroUsize = match std::num::NonZeroUsize::new(15) {
    Some(n) => n,
    None => unreachable!(),
};

/// The directory of this user's multiplexing sockets: one of skyform's own under the
/// temporary directory, so that what killed runs left there can be tidied.
pub fn control_dir() -> PathBuf {
    let uid = crate::runtime::proc::user_id();
    std::env::temp_dir().join(format!("skyform-ssh-{uid}"))
}

/// Removes the socket directories of masters that have ended (a master removes its socket
/// when it exits, but not the directory with its log), once they are a minute old: a
/// master being started has no socket yet either.
fn sweep_control_dir(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let path = e.path();
        let old = e
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age > Duration::from_secs(60));
        let is_conn = e
            .file_name()
            .to_string_lossy()
            .starts_with(".ssh-connection");
        if is_conn && old && !path.join("master").exists() {
            let _ = std::fs::remove_dir_all(&path);
        }
    }
}

/// An open, multiplexed connection to one host.
#[derive(Debug)]
pub struct Connection {
    pub host: Host,
    session: openssh::Session,
}

/// The output of a remote command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Output {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
    /// stdout as it came, for bytes that need not be text (logs).
    pub raw: Vec<u8>,
}

impl Access {
    /// Opens a session to `host`: its key must match the one recorded, or is recorded now.
    pub async fn connect(&self, host: &Host) -> Result<Connection, ProviderError> {
        std::fs::create_dir_all(&self.control_dir)?;
        static SWEPT: std::sync::Once = std::sync::Once::new();
        SWEPT.call_once(|| sweep_control_dir(&self.control_dir));
        if let Some(dir) = self.known_hosts.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let mut b = openssh::SessionBuilder::default();
        b.known_hosts_check(openssh::KnownHosts::Add)
            .user_known_hosts_file(&self.known_hosts)
            .control_directory(&self.control_dir)
            .connect_timeout(self.connect_timeout)
            .server_alive_interval(Duration::from_secs(15))
            .control_persist(openssh::ControlPersist::IdleFor(MASTER_IDLE_SECONDS));
        if let Some(u) = host.user.as_ref().or(self.user.as_ref()) {
            b.user(u.clone());
        }
        if let Some(p) = host.port.or(self.port) {
            b.port(p);
        }
        if let Some(k) = &self.identity_file {
            b.keyfile(k);
        }
        if let Some(f) = &self.config_file {
            b.config_file(f);
        }
        let session = b
            .connect_mux(&host.address)
            .await
            .map_err(|e| self.connect_error(host, &e))?;
        Ok(Connection {
            host: host.clone(),
            session,
        })
    }

    /// Says what went wrong in words a user can act on.
    fn connect_error(&self, host: &Host, e: &openssh::Error) -> ProviderError {
        let mut text = e.to_string();
        let mut source = std::error::Error::source(e);
        while let Some(s) = source {
            text.push_str(": ");
            text.push_str(&s.to_string());
            source = s.source();
        }
        let port = host.port.or(self.port).unwrap_or(22);
        if text.contains("IDENTIFICATION HAS CHANGED")
            || text.contains("Host key verification failed")
        {
            let name = if port == 22 {
                host.address.clone()
            } else {
                format!("[{}]:{port}", host.address)
            };
            return ProviderError {
                kind: ErrorKind::Config,
                message: format!(
                    "the host key of {host} is not the one recorded in {} (it changed since skyform first connected: the machine was reinstalled, or someone is in the middle); refusing to connect. If you trust the new key, forget the old one with: ssh-keygen -R '{name}' -f {}",
                    self.known_hosts.display(),
                    self.known_hosts.display()
                ),
            };
        }
        if text.contains("Permission denied") {
            return ProviderError {
                kind: ErrorKind::Config,
                message: format!(
                    "{host} refused the login ({text}); check user and identity_file in the pool"
                ),
            };
        }
        ProviderError {
            kind: ErrorKind::Capacity,
            message: format!("cannot reach {host}: {text}"),
        }
    }
}

impl Connection {
    /// Runs `program` with `args` on the host. Each argument is quoted for the remote shell,
    /// so it arrives as exactly one argument, with its text unchanged.
    pub async fn run(&self, program: &str, args: &[&str]) -> Result<Output, ProviderError> {
        let mut c = self.session.command(program);
        for a in args {
            c.arg(*a);
        }
        let out = c.output().await.map_err(|e| ProviderError {
            kind: ErrorKind::Transient,
            message: format!("{}: {program}: {e}", self.host),
        })?;
        crate::faults::passed(crate::faults::Point::Remote);
        Ok(Output {
            code: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            raw: out.stdout,
        })
    }

    /// Runs a POSIX shell script on the host (`sh -c SCRIPT`), with `args` as `$1`, `$2`, …
    pub async fn script(&self, script: &str, args: &[&str]) -> Result<Output, ProviderError> {
        let mut all = vec!["-c", script, "skyform"];
        all.extend_from_slice(args);
        self.run("sh", &all).await
    }

    /// As [`Self::script`], with `input` on the script's stdin.
    pub async fn script_with_input(
        &self,
        script: &str,
        args: &[&str],
        input: &[u8],
    ) -> Result<Output, ProviderError> {
        use tokio::io::AsyncWriteExt;
        let fail = |e: &dyn std::fmt::Display| ProviderError {
            kind: ErrorKind::Transient,
            message: format!("{}: sh: {e}", self.host),
        };
        let mut c = self.session.command("sh");
        c.arg("-c").arg(script).arg("skyform");
        for a in args {
            c.arg(*a);
        }
        c.stdin(openssh::Stdio::piped())
            .stdout(openssh::Stdio::piped())
            .stderr(openssh::Stdio::piped());
        let mut child = c.spawn().await.map_err(|e| fail(&e))?;
        if let Some(mut stdin) = child.stdin().take() {
            stdin.write_all(input).await.map_err(|e| fail(&e))?;
            stdin.shutdown().await.map_err(|e| fail(&e))?;
        }
        let out = child.wait_with_output().await.map_err(|e| fail(&e))?;
        crate::faults::passed(crate::faults::Point::Remote);
        Ok(Output {
            code: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            raw: out.stdout,
        })
    }

    pub async fn close(self) {
        let _ = self.session.close().await;
    }

    /// Makes the cluster's workdir on the host a mirror of `src` (deleted files go too):
    /// with rsync over this connection when both ends have it, else by unpacking a tar
    /// stream (`archive`, or one packed now).
    pub async fn sync_workdir(
        &self,
        src: &Path,
        token: &str,
        archive: Option<&Vec<u8>>,
    ) -> Result<Output, ProviderError> {
        let there = self
            .script("command -v rsync >/dev/null && echo yes", &[])
            .await?;
        if archive.is_none() && there.stdout.trim() == "yes" {
            return self.rsync(src, token).await;
        }
        let packed;
        let a = match archive {
            Some(a) => a,
            None => {
                packed = tar_of(src).await?;
                &packed
            }
        };
        self.script_with_input(&format!("{HOST_DIR}\n{SYNC}"), &[token], a)
            .await
    }

    async fn rsync(&self, src: &Path, token: &str) -> Result<Output, ProviderError> {
        // The remote rsync starts in the cluster's directory, made if need be; `-e` reuses
        // this connection's master, so no new login happens.
        let remote = runtime::sh_line(
            &format!(
                "{HOST_DIR}\nc=\"$dir/clusters/$1\"; shift\nmkdir -p \"$c/workdir\" && cd \"$c\" && exec rsync \"$@\""
            ),
            &[token],
        );
        let out = tokio::process::Command::new("rsync")
            .args([
                "-a",
                "--delete",
                "--exclude=/.git",
                "--exclude=/.skyform",
                "-e",
            ])
            .arg(format!(
                "ssh -o ControlMaster=no -S {}",
                shell_escape::unix::escape(
                    self.session.control_socket().display().to_string().into()
                )
            ))
            .arg("--rsync-path")
            .arg(remote)
            .arg(format!("{}/", src.display()))
            .arg("skyform-host:workdir/")
            .output()
            .await
            .map_err(|e| ProviderError::other(format!("cannot run rsync: {e}")))?;
        Ok(Output {
            code: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            raw: out.stdout,
        })
    }
}

/// Whether workdirs go with rsync: it is installed here, and `SKYFORM_NO_RSYNC` is not set.
pub(super) async fn rsync_here() -> bool {
    if std::env::var_os("SKYFORM_NO_RSYNC").is_some() {
        return false;
    }
    tokio::process::Command::new("rsync")
        .arg("--version")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .await
        .is_ok_and(|s| s.success())
}

/// Replaces the cluster's workdir on a host with the tar stream on stdin (deleted files go).
const SYNC: &str = r#"
c="$dir/clusters/$1"
rm -rf "$c/workdir.new" && mkdir -p "$c/workdir.new" && tar -x -C "$c/workdir.new" &&
  rm -rf "$c/workdir" && mv "$c/workdir.new" "$c/workdir"
"#;

/// A tar stream of a local directory (without `.git` and `.skyform`, as the workdir hash).
pub(super) async fn tar_of(dir: &Path) -> Result<Vec<u8>, ProviderError> {
    let out = tokio::process::Command::new("tar")
        .arg("-C")
        .arg(dir)
        .args(["--exclude=./.git", "--exclude=./.skyform", "-cf", "-", "."])
        .output()
        .await
        .map_err(|e| ProviderError::other(format!("cannot run tar: {e}")))?;
    if !out.status.success() {
        return Err(ProviderError::other(format!(
            "packing the workdir {} failed: {}",
            dir.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(out.stdout)
}

/// The default place of skyform's known_hosts file.
pub fn default_known_hosts(home: &Path) -> PathBuf {
    home.join(".skyform").join("ssh").join("known_hosts")
}
