//! A cluster whose runtime runs on machines reached over ssh, as its clients see it: jobs
//! submitted to the head's queue, their status, cancel, and each rank's log read on the
//! node that ran it. Pools and cloud machines (AWS) both reach their clusters this way.

use super::{Access, runtime};
use crate::model::{Address, Host, Spec};
use crate::providers::{Created, ErrorKind, ProviderError, Request, jobs};
use crate::runtime::JobStatus;
use crate::runtime::link::Call;

/// A running cluster: how to reach its hosts (head first), and what its runtime is.
#[derive(Debug)]
pub struct RemoteCluster<'a> {
    pub access: &'a Access,
    pub hosts: Vec<Host>,
    /// The cluster's directory name on its hosts.
    pub token: &'a str,
    /// The skyform build its agents run.
    pub build: &'a str,
}

impl RemoteCluster<'_> {
    fn head(&self) -> Result<&Host, ProviderError> {
        self.hosts
            .first()
            .ok_or_else(|| ProviderError::other("the job's cluster has no hosts"))
    }

    /// A job's status as the head knows it (None: the head never had it).
    pub async fn status(&self, job: &str) -> Result<Option<JobStatus>, ProviderError> {
        let call = Call::Status { job: job.into() };
        let answer =
            runtime::call(self.access, self.head()?, self.token, self.build, &call).await?;
        Ok(answer.status)
    }

    /// Submits the request's job to the head's queue; the jobs it waits for must run on the
    /// same cluster (`cluster`).
    pub async fn submit(
        &self,
        req: &Request<'_>,
        cluster: &Address,
    ) -> Result<Created, ProviderError> {
        let id = jobs::job_id(req.private).unwrap_or_default();
        let mut after = Vec::new();
        for (addr, dep) in &req.after {
            let same = matches!(dep.spec.as_ref(), Spec::Job(d) if &d.cluster == cluster);
            let Some(job) = jobs::job_id(&dep.private).filter(|_| same) else {
                return Err(ProviderError {
                    kind: ErrorKind::Config,
                    message: format!(
                        "{} waits for {addr}, which does not run on {cluster}: on machines reached over ssh a job can wait only for jobs of its own cluster",
                        req.address
                    ),
                });
            };
            after.push(crate::runtime::Dependency {
                status: crate::runtime::Layout::new("").status(job),
                name: addr.to_string(),
            });
        }
        let record = jobs::record(req.address, req.spec, id, after)
            .ok_or_else(|| ProviderError::other("not a job"))?;
        let call = Call::Submit { job: record };
        let answer =
            runtime::call(self.access, self.head()?, self.token, self.build, &call).await?;
        Ok(Created {
            computed: answer
                .status
                .as_ref()
                .map(jobs::computed)
                .unwrap_or_default(),
            private: req.private.clone(),
        })
    }

    /// Cancels a job that has not ended, and waits (up to 10 s) until the head confirms.
    pub async fn cancel(&self, job: &str) -> Result<(), ProviderError> {
        let call = Call::Cancel { job: job.into() };
        let answer = runtime::call(self.access, self.head()?, self.token, self.build, &call).await;
        let mut status = match answer {
            Ok(a) => a.status,
            // The cluster's runtime is gone from its head: so is the job.
            Err(e) if e.kind == ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e),
        };
        for _ in 0..50 {
            if status.as_ref().is_none_or(|s| s.state.is_final()) {
                return Ok(());
            }
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            status = self.status(job).await?;
        }
        Err(ProviderError::other(format!(
            "the head did not confirm that job {job} stopped"
        )))
    }

    /// Each rank's log from its offset on, read on the host of the node the head gave it.
    pub async fn read_logs(
        &self,
        job: &str,
        ranks: u32,
        offsets: &[u64],
    ) -> Result<Vec<Vec<u8>>, ProviderError> {
        let nodes = self.status(job).await?.map(|s| s.nodes).unwrap_or_default();
        let mut out = vec![Vec::new(); ranks as usize];
        for (rank, node) in nodes.iter().enumerate() {
            let Some(host) = self.hosts.get(*node as usize) else {
                continue;
            };
            let offset = offsets.get(rank).copied().unwrap_or(0);
            if let Some(slot) = out.get_mut(rank) {
                *slot = runtime::read_log(self.access, host, self.token, job, rank as u32, offset)
                    .await?;
            }
        }
        Ok(out)
    }
}

/// Runs `setup` ($2) in the cluster's workdir with the environment that follows; the log
/// stays on the host, its end is printed.
const SETUP: &str = r#"
c="$dir/clusters/$1"; s="$2"; shift 2
mkdir -p "$c/workdir" && cd "$c/workdir" || exit 1
env "$@" sh -c "$s" >"$c/setup.log" 2>&1
code=$?
tail -n 5 "$c/setup.log"
exit $code
"#;

/// Syncs the workdir to every host of a cluster (head first) and runs `setup` there, all
/// hosts at once, with the cluster's environment; `ips` are the nodes' addresses as the
/// nodes see each other (`SKYFORM_NODE_IPS`).
pub async fn provision(
    access: &Access,
    hosts: &[Host],
    ips: &[String],
    token: &str,
    spec: &crate::model::ClusterSpec,
    root: &std::path::Path,
) -> Result<(), ProviderError> {
    use super::transport::{rsync_here, tar_of};
    let workdir = spec.workdir.as_ref().map(|w| root.join(w));
    let rsync = workdir.is_some() && rsync_here().await;
    // Without rsync here, every host gets the same tar stream, packed once.
    let archive = match &workdir {
        Some(w) if !rsync => Some(std::sync::Arc::new(tar_of(w).await?)),
        _ => None,
    };
    let mut set = tokio::task::JoinSet::new();
    for (rank, host) in hosts.iter().enumerate() {
        let (access, host, token) = (access.clone(), host.clone(), token.to_string());
        let (archive, workdir) = (archive.clone(), workdir.clone());
        let setup = spec.setup.clone();
        let mut envs: Vec<String> = spec.envs.iter().map(|(k, v)| format!("{k}={v}")).collect();
        envs.push(format!("SKYFORM_NODE_RANK={rank}"));
        envs.push(format!("SKYFORM_NUM_NODES={}", hosts.len()));
        envs.push(format!("SKYFORM_NODE_IPS={}", ips.join("\n")));
        envs.extend(setup_aliases(rank, hosts.len(), ips, &spec.resources));
        set.spawn(async move {
            let c = access.connect(&host).await?;
            let result = async {
                if let Some(w) = &workdir {
                    let out = c.sync_workdir(w, &token, archive.as_deref()).await?;
                    if out.code != Some(0) {
                        return Err(ProviderError::other(format!(
                            "syncing the workdir to {host} failed: {}",
                            out.stderr.trim()
                        )));
                    }
                }
                if let Some(setup) = &setup {
                    let mut args: Vec<&str> = vec![&token, setup];
                    args.extend(envs.iter().map(String::as_str));
                    let script = format!("{}\n{SETUP}", super::HOST_DIR);
                    let out = c.script(&script, &args).await?;
                    if out.code != Some(0) {
                        return Err(ProviderError::other(format!(
                            "setup failed on {host} (node {rank}) with exit code {}:\n    {}",
                            out.code.map_or("?".into(), |c| c.to_string()),
                            out.stdout.trim_end().replace('\n', "\n    ")
                        )));
                    }
                }
                Ok(())
            }
            .await;
            c.close().await;
            result
        });
    }
    super::all_done(set).await
}

/// Waits until every host answers ssh (a machine still booting: sshd not up yet, or its
/// key not yet installed by cloud-init), up to `limit`; says who is waited for, and the
/// last error once the limit is reached.
pub async fn wait_for_ssh(
    access: &Access,
    hosts: &[Host],
    limit: std::time::Duration,
    progress: &crate::providers::Progress,
) -> Result<(), ProviderError> {
    let started = std::time::Instant::now();
    for host in hosts {
        let mut said = false;
        loop {
            match access.connect(host).await {
                Ok(c) => {
                    c.close().await;
                    break;
                }
                Err(e) if started.elapsed() < limit => {
                    if !said {
                        tracing::info!(%host, error = %e, "waiting for the machine to accept ssh");
                        progress.say(format!(
                            "waiting for {} to accept ssh (booting; up to {})",
                            host.address,
                            humantime::format_duration(limit)
                        ));
                        said = true;
                    }
                    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
                }
                Err(e) => {
                    return Err(ProviderError {
                        kind: ErrorKind::Timeout,
                        message: format!(
                            "{host} did not accept ssh within {}: {}",
                            humantime::format_duration(limit),
                            e.message
                        ),
                    });
                }
            }
        }
    }
    Ok(())
}

/// SkyPilot's names for a setup's rank, node count and addresses (`runtime::skypilot`).
fn setup_aliases(
    rank: usize,
    nodes: usize,
    ips: &[String],
    resources: &crate::model::Resources,
) -> Vec<String> {
    use crate::runtime::skypilot;
    let mut e = std::collections::BTreeMap::new();
    e.insert("SKYFORM_NODE_RANK".to_string(), rank.to_string());
    e.insert("SKYFORM_NUM_NODES".to_string(), nodes.to_string());
    e.insert("SKYFORM_NODE_IPS".to_string(), ips.join("\n"));
    skypilot::add_vars(
        &mut e,
        skypilot::Phase::Setup,
        None,
        skypilot::gpus_of(resources),
    );
    e.into_iter()
        .filter(|(k, _)| k.starts_with("SKYPILOT_"))
        .map(|(k, v)| format!("{k}={v}"))
        .collect()
}

#[cfg(test)]
mod skypilot_tests {
    #[test]
    fn setup_sees_skypilots_names() {
        let r: crate::model::Resources = crate::model::Resources {
            accelerators: Some(crate::model::Accelerators::One(
                "A100:8".parse().expect("accelerator"),
            )),
            ..Default::default()
        };
        let ips = vec!["10.0.0.1".to_string(), "10.0.0.2".to_string()];
        let got = super::setup_aliases(1, 2, &ips, &r);
        for want in [
            "SKYPILOT_SETUP_NODE_RANK=1",
            "SKYPILOT_SETUP_NODE_IPS=10.0.0.1\n10.0.0.2",
            "SKYPILOT_NUM_NODES=2",
            "SKYPILOT_NUM_GPUS_PER_NODE=8",
        ] {
            assert!(got.iter().any(|g| g == want), "{want} in {got:?}");
        }
    }
}
