//! The cluster runtime on a cluster's instances, the same one pools run (agent, queue,
//! links, logs): the instances are reached over ssh at their public addresses as the image's
//! user with the imported key, the nodes reach each other at their private addresses, and
//! each cluster trusts its machines' host keys on first use in a known_hosts file of its own
//! (addresses are reused all the time in a VPC), forgotten when the cluster goes.

use super::{AwsProvider, Node, Private};
use crate::model::{ClusterSpec, Host};
use crate::optimizer::Candidate;
use crate::providers::ssh::{Access, HOST_DIR, RemoteCluster, remote, runtime};
use crate::providers::{ErrorKind, ProviderError};
use crate::state::ResourceState;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The login user of the default images (Ubuntu).
pub(super) const USER: &str = "ubuntu";

/// What each node runs when the cluster autostops (the token is `$1`): it shuts itself down,
/// and EC2 applies the instance's shutdown behaviour — stop (disks kept), or terminate for
/// `down = true` (set at launch). No credentials are needed on the machine.
const AUTOSTOP: &str = r#"sudo -n shutdown -h now "skyform: autostop of cluster $1""#;

/// How long a new machine may take to accept ssh (boot, sshd, cloud-init writing the key).
const SSH_WAIT: Duration = Duration::from_secs(600);

/// Answers the head gives when asked whether the cluster's runtime runs: the build in its
/// `cluster.json`, and `agent` when the node's agent runs. Needs [`runtime::AGENT_CHECKS`].
const RUNNING: &str = r#"
c="$dir/clusters/$1"
[ -f "$c/cluster.json" ] && sed -n 's/.*"build": *"\([^"]*\)".*/build \1/p' "$c/cluster.json"
running_agents "$c"
exit 0
"#;

/// What setting up a cluster's machines needs besides the machines.
#[derive(Debug, Clone, Copy)]
pub(super) struct SetUp<'a> {
    pub spec: &'a ClusterSpec,
    pub placement: Option<&'a Candidate>,
    /// The cluster's address, for its runtime.
    pub name: &'a str,
    /// The configuration directory, when the workdir is synced and setup run.
    pub root: Option<&'a Path>,
    pub progress: &'a crate::providers::Progress,
}

impl AwsProvider {
    /// Where a cluster's host keys are kept.
    pub(super) fn known_hosts(&self, token: &str) -> PathBuf {
        self.key_dir.join("known_hosts.d").join(token)
    }

    /// How skyform reaches the instances of the cluster with `token`.
    pub(super) fn access(&self, token: &str) -> Access {
        Access {
            user: Some(USER.into()),
            port: None,
            identity_file: Some(self.private_key()),
            config_file: None,
            known_hosts: self.known_hosts(token),
            control_dir: crate::providers::ssh::control_dir(),
            connect_timeout: Duration::from_secs(10),
        }
    }

    /// The nodes as skyform reaches them (public addresses, else private) and as they reach
    /// each other (private addresses), head first.
    fn hosts(nodes: &[Node]) -> (Vec<Host>, Vec<Host>) {
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

    /// Sets up running instances as the cluster: waits for ssh, syncs the workdir and runs
    /// setup (with a configuration directory; without, as after a start, the machines keep
    /// what they had), and starts the runtime; records the build it runs.
    pub(super) async fn set_up(
        &self,
        p: &mut Private,
        nodes: &[Node],
        how: &SetUp<'_>,
    ) -> Result<(), ProviderError> {
        let SetUp {
            spec,
            placement,
            name,
            root,
            progress,
        } = *how;
        let access = self.access(&p.token);
        let (hosts, peers) = Self::hosts(nodes);
        remote::wait_for_ssh(&access, &hosts, SSH_WAIT, progress).await?;
        // A cluster that autostopped marked itself stopped before its machines went down.
        for host in &hosts {
            let c = access.connect(host).await?;
            let script = format!("{HOST_DIR}\n{}", runtime::UNMARK_STOPPED);
            let out = c.script(&script, &[&p.token]).await;
            c.close().await;
            out?;
        }
        let ips: Vec<String> = peers.iter().map(|h| h.address.clone()).collect();
        if let Some(root) = root {
            remote::provision(&access, &hosts, &ips, &p.token, spec, root).await?;
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
        let build = runtime::boot(
            &access,
            &hosts,
            &peers,
            &p.token,
            info,
            spec.autostop.as_ref().map(|a| (a, AUTOSTOP.to_string())),
            &self.agent_exe,
        )
        .await?;
        p.build = Some(build);
        p.cluster = Some(name.to_string());
        Ok(())
    }

    /// The build whose runtime runs on every node, when it does (a creation that was
    /// killed before its runtime started has none).
    pub(super) async fn runtime_of(&self, p: &Private, nodes: &[Node]) -> Option<String> {
        let access = self.access(&p.token);
        let (hosts, _) = Self::hosts(nodes);
        let mut build = None;
        for (rank, host) in hosts.iter().enumerate() {
            let c = access.connect(host).await.ok()?;
            let script = format!("{HOST_DIR}\n{}\n{RUNNING}", runtime::AGENT_CHECKS);
            let out = c.script(&script, &[&p.token]).await;
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
    /// not: a node that does not answer ssh, or whose agent is gone (the instance restarted).
    pub(super) async fn runtime_down(&self, p: &Private, nodes: &[Node]) -> Option<String> {
        let access = self.access(&p.token);
        let (hosts, _) = Self::hosts(nodes);
        for (rank, (host, node)) in hosts.iter().zip(nodes).enumerate() {
            if node.state != "running" {
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
                    &[&p.token],
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

    /// The running cluster a job goes to: its runtime, as its clients reach it.
    pub(super) fn job_target(
        &self,
        cluster: Option<&ResourceState>,
    ) -> Result<(Access, Vec<Host>, Private), ProviderError> {
        let cluster =
            cluster.ok_or_else(|| ProviderError::other("the job's cluster is not in state"))?;
        let p = Private::read(cluster)
            .ok_or_else(|| ProviderError::other("the job's cluster has no instances recorded"))?;
        if p.build.is_none() {
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
        Ok((self.access(&p.token), hosts, p))
    }
}

/// The runtime of a cluster reached through `access`.
pub(super) fn remote_cluster<'a>(
    access: &'a Access,
    hosts: Vec<Host>,
    p: &'a Private,
) -> RemoteCluster<'a> {
    RemoteCluster {
        access,
        hosts,
        token: &p.token,
        build: p.build.as_deref().unwrap_or_default(),
    }
}
