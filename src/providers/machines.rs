//! The cluster runtime on rented machines (AWS's and GCP's instances), the same one pools
//! run (agent, queue, links, logs): the machines are reached over ssh at their public
//! addresses as the image's user with the cluster's key, the nodes reach each other at
//! their private addresses, and each cluster trusts its machines' host keys on first use
//! in a known_hosts file of its own (addresses are reused all the time in a cloud network),
//! forgotten when the cluster goes.

use crate::model::{Address, Spec};
use crate::model::{ClusterSpec, Host};
use crate::optimizer::Candidate;
use crate::providers::ssh::{Access, HOST_DIR, RemoteCluster, remote, runtime};
use crate::providers::{Created, ErrorKind, Observed, ProviderError, Request, SshEntry, jobs};
use crate::state::ResourceState;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The login user of the default images (Ubuntu).
pub const USER: &str = "ubuntu";

/// What each node runs when the cluster autostops (the token is `$1`): it shuts itself down,
/// and the cloud applies what the instance was made to do then (stop, keeping its disks, or
/// terminate). No credentials are needed on the machine.
const AUTOSTOP: &str = r#"sudo -n shutdown -h now "skyform: autostop of cluster $1""#;

/// How long a new machine may take to accept ssh (boot, sshd, the key being installed).
const SSH_WAIT: Duration = Duration::from_secs(600);

/// Answers the head gives when asked whether the cluster's runtime runs: the build in its
/// `cluster.json`, and `agent` when the node's agent runs. Needs [`runtime::AGENT_CHECKS`].
const RUNNING: &str = r#"
c="$dir/clusters/$1"
[ -f "$c/cluster.json" ] && sed -n 's/.*"build": *"\([^"]*\)".*/build \1/p' "$c/cluster.json"
running_agents "$c"
exit 0
"#;

/// One rented machine as the runtime sees it.
#[derive(Debug, Clone)]
pub struct Machine {
    /// The cloud's id or name, for messages.
    pub id: String,
    pub running: bool,
    pub public_ip: Option<String>,
    pub private_ip: Option<String>,
}

/// What a failed launch attempt returns once `remove` took away what it made: its own
/// error, joined by the removal's when that failed too. A cloud that does not answer within
/// `limit` is left to the engine, which records what it could not remove.
pub async fn cleaned_up(
    e: ProviderError,
    limit: Duration,
    remove: impl std::future::Future<Output = Result<(), ProviderError>>,
) -> ProviderError {
    match tokio::time::timeout(limit, remove).await {
        Ok(Err(c)) => ProviderError {
            kind: e.kind,
            message: format!("{}; and cleaning up failed: {}", e.message, c.message),
        },
        _ => e,
    }
}

/// What setting up a cluster's machines needs besides the machines.
#[derive(Debug, Clone, Copy)]
pub struct SetUp<'a> {
    pub spec: &'a ClusterSpec,
    pub placement: Option<&'a Candidate>,
    /// The cluster's address, for its runtime.
    pub name: &'a str,
    /// The configuration directory, when the workdir is synced and setup run.
    pub root: Option<&'a Path>,
    pub progress: &'a crate::providers::Progress,
}

/// How skyform reaches one backend's machines.
#[derive(Debug, Clone)]
pub struct Fleet {
    /// Where the backend keeps its keys and the clusters' known_hosts files.
    pub key_dir: PathBuf,
    /// The private key the machines accept.
    pub identity: PathBuf,
    /// The skyform binary installed on the machines as their agent.
    pub agent_exe: PathBuf,
}

impl Fleet {
    /// Where a cluster's host keys are kept.
    pub fn known_hosts(&self, token: &str) -> PathBuf {
        self.key_dir.join("known_hosts.d").join(token)
    }

    /// How skyform reaches the machines of the cluster with `token`.
    pub fn access(&self, token: &str) -> Access {
        Access {
            user: Some(USER.into()),
            port: None,
            identity_file: Some(self.identity.clone()),
            config_file: None,
            known_hosts: self.known_hosts(token),
            control_dir: crate::providers::ssh::control_dir(),
            connect_timeout: Duration::from_secs(10),
        }
    }

    /// The nodes as skyform reaches them (public addresses, else private) and as they reach
    /// each other (private addresses), head first.
    pub fn hosts(nodes: &[Machine]) -> (Vec<Host>, Vec<Host>) {
        let host = |a: Option<&String>| Host {
            user: Some(USER.into()),
            address: a.cloned().unwrap_or_default(),
            port: None,
        };
        nodes
            .iter()
            .map(|n| {
                (
                    host(n.public_ip.as_ref().or(n.private_ip.as_ref())),
                    host(n.private_ip.as_ref().or(n.public_ip.as_ref())),
                )
            })
            .unzip()
    }

    /// Sets up running machines as the cluster with `token`: waits for ssh, syncs the
    /// workdir and runs setup (with a configuration directory; without, as after a start,
    /// the machines keep what they had), and starts the runtime; answers the build it runs.
    pub async fn set_up(
        &self,
        token: &str,
        nodes: &[Machine],
        how: &SetUp<'_>,
    ) -> Result<String, ProviderError> {
        let SetUp {
            spec,
            placement,
            name,
            root,
            progress,
        } = *how;
        let access = self.access(token);
        let (hosts, peers) = Self::hosts(nodes);
        remote::wait_for_ssh(&access, &hosts, SSH_WAIT, progress).await?;
        // A cluster that autostopped marked itself stopped before its machines went down.
        for host in &hosts {
            let c = access.connect(host).await?;
            let script = format!("{HOST_DIR}\n{}", runtime::UNMARK_STOPPED);
            let out = c.script(&script, &[token]).await;
            c.close().await;
            out?;
        }
        let ips: Vec<String> = peers.iter().map(|h| h.address.clone()).collect();
        if let Some(root) = root {
            remote::provision(&access, &hosts, &ips, token, spec, root).await?;
        }
        let (cpus, gpus) = placement.map_or((1.0, 0.0), |c| (c.offering.cpus, c.offering.gpus()));
        let info = crate::runtime::ClusterInfo {
            name: name.to_string(),
            num_nodes: hosts.len() as u32,
            cpus_per_node: cpus,
            gpus_per_node: gpus,
            envs: spec.envs.clone(),
            ips,
            links: Default::default(),
            autostop: None,
            build: None,
            hosts: Vec::new(),
        };
        runtime::boot(
            &access,
            &hosts,
            &peers,
            token,
            info,
            spec.autostop.as_ref().map(|a| (a, AUTOSTOP.to_string())),
            &self.agent_exe,
        )
        .await
    }

    /// The build whose runtime runs on every node, when it does (a creation that was
    /// killed before its runtime started has none).
    pub async fn runtime_of(&self, token: &str, nodes: &[Machine]) -> Option<String> {
        let access = self.access(token);
        let (hosts, _) = Self::hosts(nodes);
        let mut build = None;
        for (rank, host) in hosts.iter().enumerate() {
            let c = access.connect(host).await.ok()?;
            let script = format!("{HOST_DIR}\n{}\n{RUNNING}", runtime::AGENT_CHECKS);
            let out = c.script(&script, &[token]).await;
            c.close().await;
            let out = out.ok()?;
            if !out.stdout.lines().any(|l| l == "agent") {
                return None;
            }
            if rank == 0 {
                build = out
                    .stdout
                    .lines()
                    .find_map(|l| l.strip_prefix("build "))
                    .map(str::to_string);
            }
        }
        build
    }

    /// Why the runtime of a set-up cluster does not run on some running node, if it does
    /// not: a node that does not answer ssh, or whose agent is gone (the machine restarted).
    pub async fn runtime_down(&self, token: &str, nodes: &[Machine]) -> Option<String> {
        let access = self.access(token);
        let (hosts, _) = Self::hosts(nodes);
        for (rank, (host, node)) in hosts.iter().zip(nodes).enumerate() {
            if !node.running {
                continue;
            }
            let c = match access.connect(host).await {
                Ok(c) => c,
                Err(e) => {
                    return Some(format!(
                        "node {rank} ({}) does not answer: {}",
                        node.id, e.message
                    ));
                }
            };
            let out = c
                .script(
                    &format!("{HOST_DIR}\n{}\n{RUNNING}", runtime::AGENT_CHECKS),
                    &[token],
                )
                .await;
            c.close().await;
            match out {
                Ok(o) if o.stdout.lines().any(|l| l == "agent") => {}
                Ok(_) => {
                    return Some(format!(
                        "the agent of node {rank} ({}) is not running (did the instance restart?)",
                        node.id
                    ));
                }
                Err(e) => return Some(format!("node {rank} ({}): {}", node.id, e.message)),
            }
        }
        None
    }
}

/// The running cluster of rented machines a job goes to: its runtime as the job's clients
/// reach it. Both backends keep the cluster's `token` and `build` in its private state
/// under these names.
struct JobCluster {
    access: Access,
    hosts: Vec<Host>,
    token: String,
    build: Option<String>,
}

impl Fleet {
    /// The cluster a job goes to, from the cluster's state.
    fn job_cluster(&self, cluster: Option<&ResourceState>) -> Result<JobCluster, ProviderError> {
        let cluster =
            cluster.ok_or_else(|| ProviderError::other("the job's cluster is not in state"))?;
        let text = |k: &str| {
            cluster
                .private
                .get(k)
                .and_then(serde_json::Value::as_str)
                .filter(|t| !t.is_empty())
                .map(str::to_string)
        };
        let token = text("token")
            .ok_or_else(|| ProviderError::other("the job's cluster has no instances recorded"))?;
        let build = text("build");
        let hosts = job_hosts(cluster, build.as_deref())?;
        Ok(JobCluster {
            access: self.access(&token),
            hosts,
            token,
            build,
        })
    }

    /// A job on one of this backend's clusters, as refresh sees it: its status in the
    /// cluster's queue, or gone (no cluster, not in the queue, no runtime there).
    pub async fn refresh_job(
        &self,
        job: &ResourceState,
        cluster: Option<&ResourceState>,
    ) -> Result<Observed, ProviderError> {
        if cluster.is_none() {
            return Ok(Observed::Gone {
                reason: "its cluster is not in state".into(),
            });
        }
        let id = jobs::job_id(&job.private).unwrap_or_default();
        Ok(match self.job_cluster(cluster)?.remote().status(id).await {
            Ok(Some(s)) => Observed::Up(jobs::computed(&s)),
            Ok(None) => Observed::Gone {
                reason: "the job is not in its cluster's queue".into(),
            },
            Err(e) if e.kind == ErrorKind::NotFound => Observed::Gone { reason: e.message },
            Err(e) => return Err(e),
        })
    }

    /// Submits a job to its cluster's queue.
    pub async fn submit_job(
        &self,
        req: &Request<'_>,
        cluster: &Address,
    ) -> Result<Created, ProviderError> {
        self.job_cluster(req.cluster)?
            .remote()
            .submit(req, cluster)
            .await
    }

    /// Cancels a job; without its cluster nothing runs it.
    pub async fn cancel_job(
        &self,
        job: &ResourceState,
        cluster: Option<&ResourceState>,
    ) -> Result<(), ProviderError> {
        let Ok(target) = self.job_cluster(cluster) else {
            return Ok(());
        };
        let id = jobs::job_id(&job.private).unwrap_or_default();
        target.remote().cancel(id).await
    }

    /// Each rank's log of a job, read on the machine that ran it, from `offsets` on.
    pub async fn job_logs(
        &self,
        job: &ResourceState,
        cluster: Option<&ResourceState>,
        offsets: &[u64],
    ) -> Result<Vec<Vec<u8>>, ProviderError> {
        let Spec::Job(j) = job.spec.as_ref() else {
            return Ok(Vec::new());
        };
        let id = jobs::job_id(&job.private).unwrap_or_default();
        self.job_cluster(cluster)?
            .remote()
            .read_logs(id, j.num_nodes, offsets)
            .await
    }

    /// ssh to a cluster's head at its recorded address as the image's user with the
    /// backend's key; the host key is recorded on first contact, in the cluster's own
    /// known_hosts.
    pub fn ssh_entry(&self, res: &ResourceState) -> Result<SshEntry, ProviderError> {
        let head = res
            .computed
            .get("head_ip")
            .and_then(|v| v.as_str())
            .filter(|s| !s.is_empty())
            .ok_or_else(|| ProviderError::other("the cluster has no address recorded"))?;
        let token = res
            .private
            .get("token")
            .and_then(serde_json::Value::as_str)
            .filter(|t| !t.is_empty());
        Ok(SshEntry {
            user: Some(USER.into()),
            address: head.to_string(),
            port: None,
            identity: Some(self.identity.clone()),
            known_hosts: token
                .map_or_else(|| self.key_dir.join("known_hosts"), |t| self.known_hosts(t)),
            accept_new: true,
            config_file: None,
        })
    }
}

impl JobCluster {
    fn remote(&self) -> RemoteCluster<'_> {
        remote_cluster(
            &self.access,
            self.hosts.clone(),
            &self.token,
            self.build.as_deref(),
        )
    }
}

/// The hosts a job on `cluster` goes to, as its clients reach them (its recorded `ips`),
/// given the cluster's recorded build (none: its setup did not finish).
pub fn job_hosts(cluster: &ResourceState, build: Option<&str>) -> Result<Vec<Host>, ProviderError> {
    if build.is_none() {
        return Err(ProviderError {
            kind: ErrorKind::Config,
            message: "the job's cluster has no runtime yet (its setup did not finish); `skyform apply` sets it up".into(),
        });
    }
    let ips: Vec<String> = cluster
        .computed
        .get("ips")
        .and_then(|v| serde_json::from_value(v.clone()).ok())
        .unwrap_or_default();
    let hosts: Vec<Host> = ips
        .into_iter()
        .filter(|a| !a.is_empty())
        .map(|address| Host {
            user: Some(USER.into()),
            address,
            port: None,
        })
        .collect();
    if hosts.is_empty() {
        return Err(ProviderError::other(
            "the job's cluster has no address recorded",
        ));
    }
    Ok(hosts)
}

/// The runtime of a cluster reached through `access`.
pub fn remote_cluster<'a>(
    access: &'a Access,
    hosts: Vec<Host>,
    token: &'a str,
    build: Option<&'a str>,
) -> RemoteCluster<'a> {
    RemoteCluster {
        access,
        hosts,
        token,
        build: build.unwrap_or_default(),
    }
}

/// skyform's own ssh key in `key_dir` (`skyform-key`, made with ssh-keygen on first use,
/// like SkyPilot's `sky-key`), for users who have none: its public half.
pub async fn own_key(key_dir: &Path) -> Result<String, ProviderError> {
    let private = key_dir.join("skyform-key");
    let public = key_dir.join("skyform-key.pub");
    if !public.exists() {
        std::fs::create_dir_all(key_dir)?;
        let out = tokio::process::Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-C", "skyform", "-f"])
            .arg(&private)
            .output()
            .await
            .map_err(|e| {
                ProviderError::other(format!(
                    "cannot run ssh-keygen to make skyform's ssh key: {e}; install the OpenSSH client"
                ))
            })?;
        if !out.status.success() {
            return Err(ProviderError::other(format!(
                "ssh-keygen failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
    }
    Ok(std::fs::read_to_string(&public)?.trim().to_string())
}

/// What state records of a cluster of rented machines: each node's id and addresses (the
/// public one, else the private one, is where it is reached), its zone, and its status —
/// `STOPPED`, `INIT` (running machines whose setup did not finish: the plan sets them up)
/// or `UP`. `nodes` are (id, public IP, private IP), head first.
pub fn computed<'a>(
    nodes: impl Iterator<Item = (&'a str, Option<&'a str>, Option<&'a str>)>,
    zone: Option<String>,
    set_up: bool,
    stopped: bool,
) -> std::collections::BTreeMap<String, serde_json::Value> {
    use serde_json::json;
    let (mut ids, mut ips, mut private_ips) = (Vec::new(), Vec::new(), Vec::new());
    for (id, public, private) in nodes {
        ids.push(id);
        ips.push(public.or(private).unwrap_or_default());
        private_ips.push(private.unwrap_or_default());
    }
    let status = if stopped {
        "STOPPED"
    } else if set_up {
        "UP"
    } else {
        "INIT"
    };
    std::collections::BTreeMap::from([
        (
            "head_ip".into(),
            json!(ips.first().copied().unwrap_or_default()),
        ),
        ("ips".into(), json!(ips)),
        ("private_ips".into(), json!(private_ips)),
        ("instance_ids".into(), json!(ids)),
        ("zone".into(), json!(zone)),
        ("status".into(), json!(status)),
    ])
}
