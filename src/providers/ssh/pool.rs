//! A pool of existing machines: its settings, what each of its hosts has and who holds it,
//! and the scripts that hold and give back a host (an atomic `mkdir` on the host itself).

use super::probing::{Facts, probe};
use super::transport::{Access, default_known_hosts};
use super::{HOST_DIR, Host};
use crate::providers::ProviderError;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// A pool of existing machines: `infra "ssh" "NAME" { hosts, user, identity_file, port }`.
#[derive(Debug, Clone)]
pub struct Pool {
    pub name: String,
    pub hosts: Vec<Host>,
    pub access: Access,
    pub price_micros: u64,
}

impl Pool {
    /// Reads a pool's settings; problems are messages naming the setting.
    pub fn from_infra(
        name: &str,
        settings: &serde_json::Map<String, serde_json::Value>,
        home: &Path,
    ) -> Result<Pool, String> {
        let str_of = |k: &str| settings.get(k).and_then(serde_json::Value::as_str);
        let hosts = settings
            .get("hosts")
            .and_then(serde_json::Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(serde_json::Value::as_str)
                    .map(|h| h.parse::<Host>().map_err(|e| format!("hosts: {e}")))
                    .collect::<Result<Vec<Host>, String>>()
            })
            .transpose()?
            .unwrap_or_default();
        let path = |k: &str| {
            str_of(k).map(|p| match p.strip_prefix("~/") {
                Some(rest) => home.join(rest),
                None => PathBuf::from(p),
            })
        };
        let identity = path("identity_file");
        let port = settings
            .get("port")
            .and_then(serde_json::Value::as_u64)
            .map(|p| u16::try_from(p).map_err(|_| format!("port {p} is not a port number")))
            .transpose()?;
        let price = settings
            .get("price_per_hour")
            .and_then(serde_json::Value::as_f64)
            .map_or(0, |d| (d * 1e6).round().max(0.0) as u64);
        Ok(Pool {
            name: name.to_string(),
            hosts,
            access: Access {
                user: str_of("user").map(str::to_string),
                port,
                identity_file: identity,
                config_file: path("ssh_config"),
                known_hosts: default_known_hosts(home),
                // openssh makes (and removes) a directory of its own per connection here.
                control_dir: std::env::temp_dir(),
                connect_timeout: Duration::from_secs(10),
            },
            price_micros: price,
        })
    }

    /// Every host of the pool, probed concurrently.
    pub(super) async fn probe_hosts(&self) -> Vec<HostReport> {
        let mut set = tokio::task::JoinSet::new();
        for (i, host) in self.hosts.iter().enumerate() {
            let (host, access) = (host.clone(), self.access.clone());
            set.spawn(async move {
                let report = match access.connect(&host).await {
                    Err(e) => HostReport {
                        host,
                        facts: Err(e),
                        holder: None,
                        stopped: false,
                        agent: false,
                    },
                    Ok(c) => {
                        let facts = probe(&c).await;
                        let out = c
                            .script(&format!("{HOST_DIR}\n{HOLDER}"), &[])
                            .await
                            .map(|o| o.stdout)
                            .unwrap_or_default();
                        c.close().await;
                        let mut lines = out.lines();
                        let holder = lines
                            .next()
                            .map(|l| l.trim().to_string())
                            .filter(|s| !s.is_empty());
                        let rest: Vec<&str> = lines.collect();
                        HostReport {
                            host,
                            facts,
                            holder,
                            stopped: rest.contains(&"stopped"),
                            agent: rest.contains(&"agent"),
                        }
                    }
                };
                (i, report)
            });
        }
        let mut out: Vec<(usize, HostReport)> = Vec::new();
        while let Some(Ok(s)) = set.join_next().await {
            out.push(s);
        }
        out.sort_by_key(|(i, _)| *i);
        out.into_iter().map(|(_, s)| s).collect()
    }
}

/// One host as seen now: reachable with these facts, and who holds it.
#[derive(Debug, Clone)]
pub(super) struct HostReport {
    pub(super) host: Host,
    pub(super) facts: Result<Facts, ProviderError>,
    /// The token of the cluster that holds the host, if any.
    pub(super) holder: Option<String>,
    /// The holder is stopped (its agents ended on purpose).
    pub(super) stopped: bool,
    /// The holder's agent runs on the host.
    pub(super) agent: bool,
}

/// Who holds the host, whether that cluster is stopped, whether its agent runs.
const HOLDER: &str = r#"
o=$(cat "$dir/reservation/owner" 2>/dev/null); echo "$o"
if [ -n "$o" ]; then
  c="$dir/clusters/$o"
  [ -e "$c/stopped" ] && echo stopped
  for f in "$c"/node-*/agent.pid; do
    [ -f "$f" ] && tr '\0' ' ' <"/proc/$(cat "$f")/cmdline" 2>/dev/null | grep -q " __agent " && echo agent
  done
fi
exit 0
"#;

/// Holds the host for the cluster whose token is `$1`, unless another holds it.
pub(super) const RESERVE: &str = r#"
mkdir -p "$dir" && if mkdir "$dir/reservation" 2>/dev/null; then
  printf '%s' "$1" > "$dir/reservation/owner"; echo reserved
else
  cat "$dir/reservation/owner" 2>/dev/null; echo; echo taken
fi
"#;

/// Removing the cluster's directory also stops its agent (which watches it) and the jobs
/// that agent runs.
pub(super) const RELEASE: &str = r#"
[ -n "$1" ] || exit 1
c="$dir/clusters/$1"
if [ -d "$c" ]; then
  # Stop the agent first (it ends, with what it runs, when `stopped` appears), so nothing
  # writes into the directory while it is removed.
  touch "$c/stopped" 2>/dev/null
  for f in "$c"/node-*/agent.pid; do
    p=$(cat "$f" 2>/dev/null) || continue
    i=0
    while [ -n "$p" ] && kill -0 "$p" 2>/dev/null && [ $i -lt 30 ]; do i=$((i + 1)); sleep 0.1; done
  done
  rm -rf "$c"
fi
if [ "$(cat "$dir/reservation/owner" 2>/dev/null)" = "$1" ]; then rm -rf "$dir/reservation"; fi
"#;
