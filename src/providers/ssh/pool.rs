//! A pool of existing machines: its settings, what each of its hosts has and who holds it,
//! and the scripts that hold and give back a host (an atomic `mkdir` on the host itself).

use super::probing::{Facts, probe};
use super::runtime::AGENT_CHECKS;
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
                control_dir: super::transport::control_dir(),
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
                        lineage: String::new(),
                        stopped: false,
                        agent: false,
                        runtime: false,
                    },
                    Ok(c) => {
                        let facts = probe(&c).await;
                        let out = c
                            .script(&format!("{HOST_DIR}\n{AGENT_CHECKS}\n{HOLDER}"), &[])
                            .await
                            .map(|o| o.stdout)
                            .unwrap_or_default();
                        c.close().await;
                        let mut lines = out.lines();
                        let mark = lines.next().unwrap_or_default().trim();
                        let (token, lineage) = mark.split_once(' ').unwrap_or((mark, ""));
                        let rest: Vec<&str> = lines.collect();
                        HostReport {
                            host,
                            facts,
                            holder: Some(token.to_string()).filter(|t| !t.is_empty()),
                            lineage: lineage.to_string(),
                            stopped: rest.contains(&"stopped"),
                            agent: rest.contains(&"agent"),
                            runtime: rest.contains(&"runtime"),
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
    /// The lineage of the state that made that cluster (empty for older marks).
    pub(super) lineage: String,
    /// The holder's runtime was set up on the host (its `cluster.json` is there).
    pub(super) runtime: bool,
    /// The holder is stopped (its agents ended on purpose).
    pub(super) stopped: bool,
    /// The holder's agent runs on the host.
    pub(super) agent: bool,
}

/// Who holds the host (the reservation's mark: `TOKEN LINEAGE`, or a token alone from
/// older builds, whose mark was a directory with an `owner` file), then whether that
/// cluster is stopped, whether its agent runs, and whether its runtime was set up here.
/// Needs [`AGENT_CHECKS`].
const HOLDER: &str = r#"
r="$dir/reservation"
o=$(readlink "$r" 2>/dev/null) || o=$(cat "$r/owner" 2>/dev/null)
echo "$o"
t=${o%% *}
if [ -n "$t" ]; then
  c="$dir/clusters/$t"
  [ -e "$c/stopped" ] && echo stopped
  [ -e "$c/cluster.json" ] && echo runtime
  running_agents "$c"
fi
exit 0
"#;

/// Holds the host for the cluster whose token is `$1`, made by the state of lineage `$2`,
/// unless another holds it. The mark is a symbolic link whose target is `TOKEN LINEAGE`:
/// made in one step, so a run killed at any moment leaves either no reservation or one
/// that says whose it is.
pub(super) const RESERVE: &str = r#"
r="$dir/reservation"
# An older build's mark is a directory, which `ln` would put the link into.
mkdir -p "$dir" && if ! [ -d "$r" ] && ln -s "$1 $2" "$r" 2>/dev/null; then
  echo reserved
else
  o=$(readlink "$r" 2>/dev/null) || o=$(cat "$r/owner" 2>/dev/null)
  if [ "${o%% *}" = "$1" ]; then echo reserved; else echo "$o"; echo taken; fi
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
o=$(readlink "$dir/reservation" 2>/dev/null) || o=$(cat "$dir/reservation/owner" 2>/dev/null)
if [ "${o%% *}" = "$1" ]; then rm -rf "$dir/reservation"; fi
"#;
