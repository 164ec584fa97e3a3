//! Existing machines over SSH (`infra "ssh" "POOL" { hosts, user, identity_file, port }`).
//!
//! This part is the transport: one multiplexed OpenSSH session per host (the `openssh`
//! crate drives the system `ssh`), host keys trusted on first use and recorded in skyform's
//! own known_hosts file, a changed key refused with a clear error, and every remote command
//! passed as separately quoted arguments, so a configuration value reaches the remote
//! program as literal text. On top of it, [`probe`] discovers a host's CPUs, memory and
//! GPUs. The cluster backend over a pool builds on these (issue 6).

use super::{ErrorKind, ProviderError};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// One host of a pool, as written in `hosts`: `ADDRESS`, `ADDRESS:PORT`, `USER@ADDRESS[:PORT]`
/// (`[v6]:PORT` for IPv6 with a port).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Host {
    pub user: Option<String>,
    pub address: String,
    pub port: Option<u16>,
}

impl std::str::FromStr for Host {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (user, rest) = match s.rsplit_once('@') {
            Some((u, r)) if !u.is_empty() => (Some(u.to_string()), r),
            Some(_) => return Err(format!("{s:?}: empty user name before @")),
            None => (None, s),
        };
        let (address, port) = if let Some(v6) = rest.strip_prefix('[') {
            let (addr, after) = v6
                .split_once(']')
                .ok_or_else(|| format!("{s:?}: missing ] after an IPv6 address"))?;
            let port = match after.strip_prefix(':') {
                Some(p) => Some(p),
                None if after.is_empty() => None,
                None => return Err(format!("{s:?}: unexpected text after ]")),
            };
            (addr.to_string(), port)
        } else {
            match rest.split_once(':') {
                Some((a, p)) => (a.to_string(), Some(p)),
                None => (rest.to_string(), None),
            }
        };
        if address.is_empty() || address.chars().any(char::is_whitespace) {
            return Err(format!("{s:?}: not a host name or address"));
        }
        let port = match port {
            Some(p) => Some(
                p.parse::<u16>()
                    .ok()
                    .filter(|p| *p != 0)
                    .ok_or_else(|| format!("{s:?}: the port must be a number from 1 to 65535"))?,
            ),
            None => None,
        };
        Ok(Host {
            user,
            address,
            port,
        })
    }
}

impl std::fmt::Display for Host {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if let Some(u) = &self.user {
            write!(f, "{u}@")?;
        }
        match (self.address.contains(':'), self.port) {
            (true, Some(p)) => write!(f, "[{}]:{p}", self.address),
            (false, Some(p)) => write!(f, "{}:{p}", self.address),
            (_, None) => write!(f, "{}", self.address),
        }
    }
}

/// How to reach the hosts of a pool.
#[derive(Debug, Clone)]
pub struct Access {
    /// Default user and port for hosts that do not name their own.
    pub user: Option<String>,
    pub port: Option<u16>,
    pub identity_file: Option<PathBuf>,
    /// skyform's own record of host keys (trust on first use).
    pub known_hosts: PathBuf,
    /// Where the multiplexing sockets live; keep it short (sockets have a path limit).
    pub control_dir: PathBuf,
    pub connect_timeout: Duration,
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
}

impl Access {
    /// Opens a session to `host`: its key must match the one recorded, or is recorded now.
    pub async fn connect(&self, host: &Host) -> Result<Connection, ProviderError> {
        std::fs::create_dir_all(&self.control_dir)?;
        if let Some(dir) = self.known_hosts.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let mut b = openssh::SessionBuilder::default();
        b.known_hosts_check(openssh::KnownHosts::Add)
            .user_known_hosts_file(&self.known_hosts)
            .control_directory(&self.control_dir)
            .connect_timeout(self.connect_timeout)
            .server_alive_interval(Duration::from_secs(15));
        if let Some(u) = host.user.as_ref().or(self.user.as_ref()) {
            b.user(u.clone());
        }
        if let Some(p) = host.port.or(self.port) {
            b.port(p);
        }
        if let Some(k) = &self.identity_file {
            b.keyfile(k);
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
        Ok(Output {
            code: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        })
    }

    /// Runs a POSIX shell script on the host (`sh -c SCRIPT`), with `args` as `$1`, `$2`, …
    pub async fn script(&self, script: &str, args: &[&str]) -> Result<Output, ProviderError> {
        let mut all = vec!["-c", script, "skyform"];
        all.extend_from_slice(args);
        self.run("sh", &all).await
    }

    pub async fn close(self) {
        let _ = self.session.close().await;
    }
}

/// What a host has to offer.
#[derive(Debug, Clone, PartialEq)]
pub struct Facts {
    pub cpus: f64,
    pub memory_gib: f64,
    /// GPU name → count, from `nvidia-smi` where present, plus the host's inventory file
    /// (`$SKYFORM_GPUS_FILE`, else `~/.skyform/gpus`; lines `NAME COUNT`) for GPUs skyform
    /// cannot see.
    pub gpus: BTreeMap<String, f64>,
}

const PROBE: &str = r#"
nproc 2>/dev/null || getconf _NPROCESSORS_ONLN
awk '/^MemTotal:/ {print $2; exit}' /proc/meminfo
echo '--gpus'
if command -v nvidia-smi >/dev/null 2>&1; then
  nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | sed 's/^/1 /'
fi
inventory="${SKYFORM_GPUS_FILE:-$HOME/.skyform/gpus}"
if [ -f "$inventory" ]; then
  awk 'NF == 2 {print $2, $1}' "$inventory"
fi
"#;

/// Reads a host's CPUs, memory and GPUs in one round trip.
pub async fn probe(c: &Connection) -> Result<Facts, ProviderError> {
    let out = c.script(PROBE, &[]).await?;
    if out.code != Some(0) {
        return Err(ProviderError::other(format!(
            "{}: reading its CPUs and memory failed: {}",
            c.host,
            out.stderr.trim()
        )));
    }
    parse_facts(&out.stdout).ok_or_else(|| {
        ProviderError::other(format!(
            "{}: unexpected answer when reading its CPUs and memory: {:?}",
            c.host, out.stdout
        ))
    })
}

fn parse_facts(text: &str) -> Option<Facts> {
    let mut lines = text.lines().map(str::trim);
    let cpus: f64 = lines.next()?.parse().ok()?;
    let kib: f64 = lines.next()?.parse().ok()?;
    if lines.next()? != "--gpus" {
        return None;
    }
    let mut gpus = BTreeMap::new();
    for l in lines.filter(|l| !l.is_empty()) {
        let (n, name) = l.split_once(' ')?;
        let n: f64 = n.parse().ok()?;
        // "NVIDIA A100-SXM4-80GB" → "A100-SXM4-80GB": the name the catalogs use starts
        // after the vendor.
        let name = name.trim().trim_start_matches("NVIDIA ").trim();
        *gpus.entry(name.to_string()).or_insert(0.0) += n;
    }
    Some(Facts {
        cpus,
        memory_gib: (kib / 1024.0 / 1024.0 * 10.0).round() / 10.0,
        gpus,
    })
}

/// The default place of skyform's known_hosts file.
pub fn default_known_hosts(home: &Path) -> PathBuf {
    home.join(".skyform").join("ssh").join("known_hosts")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_parse() {
        let h: Host = "10.0.0.5".parse().unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            (h.user, h.address.as_str(), h.port),
            (None, "10.0.0.5", None)
        );
        let h: Host = "ubuntu@gpu-1:2222"
            .parse()
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(h.to_string(), "ubuntu@gpu-1:2222");
        let h: Host = "[fe80::1]:22".parse().unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((h.address.as_str(), h.port), ("fe80::1", Some(22)));
        assert_eq!(h.to_string(), "[fe80::1]:22");
        assert!("host:0".parse::<Host>().is_err());
        assert!("host:http".parse::<Host>().is_err());
        assert!("@host".parse::<Host>().is_err());
        assert!("a b".parse::<Host>().is_err());
    }

    #[test]
    fn facts_parse() {
        let f = parse_facts(
            "8\n32794676\n--gpus\n1 NVIDIA A100-SXM4-80GB\n1 NVIDIA A100-SXM4-80GB\n4 L4\n",
        )
        .unwrap_or_else(|| panic!("parses"));
        assert_eq!(f.cpus, 8.0);
        assert_eq!(f.memory_gib, 31.3);
        assert_eq!(f.gpus.get("A100-SXM4-80GB"), Some(&2.0));
        assert_eq!(f.gpus.get("L4"), Some(&4.0));
        assert!(parse_facts("eight\n1\n--gpus\n").is_none());
    }
}
