//! The provider: clusters on pools of existing machines. A cluster of N nodes holds N whole
//! hosts of its pool; jobs go to the queue of skyform's runtime on its head.

use super::pool::{HostReport, Pool, RELEASE, RESERVE};
use super::probing::{Facts, shape};
use super::remote::RemoteCluster;
use super::transport::Output;
use super::{HOST_DIR, Host, runtime};
use crate::providers::{ErrorKind, ProviderError};
use std::collections::BTreeMap;
use std::path::PathBuf;

/// What a cluster on a pool keeps in state.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
struct Private {
    token: String,
    lineage: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pool: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    hosts: Vec<String>,
    /// The skyform build whose agents run on the hosts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    build: Option<String>,
    /// The cluster's address, for its runtime.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    name: Option<String>,
    /// CPUs and GPUs of each node, what the head's queue schedules by.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    per_node: Option<(f64, f64)>,
}

/// Clusters on pools of existing machines. A cluster of N nodes holds N whole hosts: each
/// is reserved on the host itself (an atomic `mkdir`), so two clusters — even from two
/// states — never get the same host.
#[derive(Debug)]
pub struct SshProvider {
    pub pools: BTreeMap<String, Pool>,
    /// The skyform binary installed on hosts as their agent (this program by default).
    pub agent_exe: PathBuf,
    /// What each pool looked like, kept for a moment while nothing here changed it:
    /// refreshing many clusters of one pool probes its hosts once, and a long-running
    /// caller (the controller) still sees a host that stops answering.
    reports: tokio::sync::Mutex<BTreeMap<String, (std::time::Instant, Vec<HostReport>)>>,
}

/// Whether a cluster's creation finished: it holds as many hosts as it was placed on (`held`)
/// and its runtime runs on each.
fn finished(held: &[&HostReport], res: &crate::state::ResourceState) -> bool {
    let want = res
        .placement
        .as_ref()
        .map_or(1, |c| c.num_nodes.max(1) as usize);
    held.len() == want && held.iter().all(|s| s.agent && s.runtime)
}

/// Managed jobs and services on pools.
const NO_MANAGED: &str = "managed jobs and services on ssh pools are not in this build yet: declare a cluster on the pool and run a job on it";

impl SshProvider {
    pub fn new(pools: Vec<Pool>) -> SshProvider {
        SshProvider {
            pools: pools.into_iter().map(|p| (p.name.clone(), p)).collect(),
            agent_exe: crate::runtime::link::agent_exe(),
            reports: tokio::sync::Mutex::new(BTreeMap::new()),
        }
    }

    fn pool(&self, name: &str) -> Result<&Pool, ProviderError> {
        self.pools.get(name).ok_or_else(|| ProviderError {
            kind: ErrorKind::Config,
            message: format!("no infra \"ssh\" \"{name}\" block declares this pool"),
        })
    }

    /// The pool a cluster is on: the one it recorded, else its placement's (an intent).
    fn pool_of(&self, p: &Private, res: &crate::state::ResourceState) -> Option<&Pool> {
        let name = p.pool.as_ref().or_else(|| {
            res.placement
                .as_ref()
                .and_then(|c| c.offering.region.as_ref())
        })?;
        self.pools.get(name)
    }

    /// Every host of a pool: facts and holder, probed at most every few seconds, and
    /// again after [`Self::forget`].
    async fn host_reports(&self, pool: &Pool) -> Vec<HostReport> {
        const FRESH: std::time::Duration = std::time::Duration::from_secs(3);
        let mut cache = self.reports.lock().await;
        if let Some((at, s)) = cache.get(&pool.name)
            && at.elapsed() < FRESH
        {
            return s.clone();
        }
        // Fresh from when the probe began: a host can change while it runs. (The lock is
        // held meanwhile, so a `forget` waits for it and then drops it.)
        let began = std::time::Instant::now();
        let fresh = pool.probe_hosts().await;
        cache.insert(pool.name.clone(), (began, fresh.clone()));
        fresh
    }

    /// Holds changed: probe again next time.
    async fn forget(&self, pool: &Pool) {
        self.reports.lock().await.remove(&pool.name);
    }

    async fn on_host(
        pool: &Pool,
        host: &Host,
        script: &str,
        args: &[&str],
    ) -> Result<Output, ProviderError> {
        let c = pool.access.connect(host).await?;
        let out = c.script(&format!("{HOST_DIR}\n{script}"), args).await;
        c.close().await;
        out
    }

    /// Provisions the hosts a cluster holds (workdir, setup) and starts its runtime.
    async fn set_up(
        &self,
        pool: &Pool,
        mut p: Private,
        spec: &crate::model::ClusterSpec,
        req: &crate::providers::Request<'_>,
    ) -> Result<crate::providers::Created, ProviderError> {
        let hosts: Vec<Host> = p
            .hosts
            .iter()
            .map(|h| h.parse::<Host>().map_err(ProviderError::other))
            .collect::<Result<_, _>>()?;
        let ips: Vec<String> = hosts.iter().map(|h| h.address.clone()).collect();
        super::remote::provision(&pool.access, &hosts, &ips, &p.token, spec, &req.root).await?;
        p.name = Some(req.address.to_string());
        self.boot(pool, &mut p, spec).await?;
        Ok(crate::providers::Created {
            computed: Self::computed(&p.hosts),
            private: serde_json::to_value(&p).unwrap_or_default(),
        })
    }

    /// Starts (or refreshes) the runtime on a cluster's hosts: agents, the head's queue.
    async fn boot(
        &self,
        pool: &Pool,
        p: &mut Private,
        spec: &crate::model::ClusterSpec,
    ) -> Result<(), ProviderError> {
        let hosts: Vec<Host> = p
            .hosts
            .iter()
            .map(|h| h.parse::<Host>().map_err(ProviderError::other))
            .collect::<Result<_, _>>()?;
        let (cpus, gpus) = p.per_node.unwrap_or((1.0, 0.0));
        let info = crate::runtime::ClusterInfo {
            name: p.name.clone().unwrap_or_default(),
            num_nodes: hosts.len() as u32,
            cpus_per_node: cpus,
            gpus_per_node: gpus,
            envs: spec.envs.clone(),
            ips: hosts.iter().map(|h| h.address.clone()).collect(),
            links: BTreeMap::new(),
            autostop: None,
            build: None,
            hosts: Vec::new(),
        };
        let booted = runtime::boot(
            &pool.access,
            &hosts,
            &hosts,
            &p.token,
            info,
            spec.autostop
                .as_ref()
                .map(|a| (a, runtime::pool_autostop_script(a.down))),
            &self.agent_exe,
        )
        .await;
        // Agents started (some, at least): a probe kept from before would show them absent,
        // and a caller watching the cluster (the controller) would take it as lost.
        self.forget(pool).await;
        p.build = Some(booted?);
        Ok(())
    }

    /// The cluster a job runs on: its pool, hosts (head first) and identifiers.
    fn job_target(
        &self,
        cluster: Option<&crate::state::ResourceState>,
    ) -> Result<(&Pool, Vec<Host>, Private, String), ProviderError> {
        let cluster =
            cluster.ok_or_else(|| ProviderError::other("the job's cluster is not in state"))?;
        let p: Private = serde_json::from_value(cluster.private.clone())
            .map_err(|_| ProviderError::other("the job's cluster has no hosts recorded"))?;
        let pool = self
            .pool_of(&p, cluster)
            .ok_or_else(|| ProviderError::other("the job's pool is no longer declared"))?;
        let hosts: Vec<Host> = p
            .hosts
            .iter()
            .filter_map(|h| h.parse::<Host>().ok())
            .collect();
        if hosts.is_empty() {
            return Err(ProviderError::other("the job's cluster holds no hosts"));
        }
        let build = p.build.clone().ok_or_else(|| {
            ProviderError::other(
                "the job's cluster was created before skyform ran jobs on pools; replace it with `skyform apply -replace=CLUSTER`",
            )
        })?;
        Ok((pool, hosts, p, build))
    }

    async fn job_status(
        &self,
        res: &crate::state::ResourceState,
        cluster: Option<&crate::state::ResourceState>,
    ) -> Result<Option<crate::runtime::JobStatus>, ProviderError> {
        let (pool, hosts, p, build) = self.job_target(cluster)?;
        let job = crate::providers::jobs::job_id(&res.private).unwrap_or_default();
        remote(pool, hosts, &p, &build).status(job).await
    }

    fn computed(hosts: &[String]) -> BTreeMap<String, serde_json::Value> {
        let ips: Vec<String> = hosts
            .iter()
            .filter_map(|h| h.parse::<Host>().ok())
            .map(|h| h.address)
            .collect();
        BTreeMap::from([
            (
                "head_ip".into(),
                serde_json::json!(ips.first().cloned().unwrap_or_default()),
            ),
            ("ips".into(), serde_json::json!(ips)),
            ("hosts".into(), serde_json::json!(hosts)),
            ("status".into(), serde_json::json!("UP")),
        ])
    }
}

#[async_trait::async_trait]
impl crate::providers::Provider for SshProvider {
    fn name(&self) -> &'static str {
        "ssh"
    }

    /// Creating a cluster on a pool runs its setup, which may rightly take long.
    fn create_is_bounded(&self) -> bool {
        false
    }

    /// Managed jobs come as a cluster and a job on it (the controller composes them).
    fn runs_managed_jobs(&self) -> bool {
        false
    }

    async fn offerings(&self) -> Result<Vec<crate::optimizer::Offering>, ProviderError> {
        Ok(self.survey().await?.offerings)
    }

    /// The free, reachable hosts of each pool, one offering per distinct shape; a host that
    /// does not answer offers nothing and says why.
    async fn survey(&self) -> Result<crate::providers::Survey, ProviderError> {
        let mut out = crate::providers::Survey::default();
        for pool in self.pools.values() {
            let mut shapes: BTreeMap<String, (Facts, u32)> = BTreeMap::new();
            for seen in self.host_reports(pool).await {
                match (&seen.facts, &seen.holder) {
                    (Ok(f), None) => shapes.entry(shape(f)).or_insert((f.clone(), 0)).1 += 1,
                    (Err(e), _) => out
                        .unavailable
                        .push(format!("ssh pool {}: {}", pool.name, e.message)),
                    _ => {}
                }
            }
            for (name, (f, count)) in shapes {
                out.offerings.push(crate::optimizer::Offering {
                    cloud: "ssh".into(),
                    region: Some(pool.name.clone()),
                    zone: None,
                    instance_type: name,
                    accelerators: f.gpus.iter().map(|(g, n)| (g.clone(), *n)).collect(),
                    cpus: f.cpus,
                    memory_gib: f.memory_gib,
                    spot: false,
                    price: pool.price_micros,
                    max_nodes: Some(count),
                });
            }
        }
        Ok(out)
    }

    fn new_private(
        &self,
        _address: &crate::model::Address,
        spec: &crate::model::Spec,
        lineage: &str,
    ) -> serde_json::Value {
        if matches!(spec, crate::model::Spec::Job(_)) {
            return crate::providers::jobs::new_private();
        }
        serde_json::to_value(Private {
            token: uuid::Uuid::new_v4().simple().to_string(),
            lineage: lineage.to_string(),
            ..Private::default()
        })
        .unwrap_or_default()
    }

    async fn refresh(
        &self,
        _address: &crate::model::Address,
        res: &crate::state::ResourceState,
        _cluster: Option<&crate::state::ResourceState>,
    ) -> Result<crate::providers::Observed, ProviderError> {
        use crate::providers::Observed;
        if matches!(*res.spec, crate::model::Spec::Job(_)) {
            if _cluster.is_none() {
                return Ok(Observed::Gone {
                    reason: "its cluster is not in state".into(),
                });
            }
            return Ok(match self.job_status(res, _cluster).await {
                Ok(Some(s)) => Observed::Up(crate::providers::jobs::computed(&s)),
                Ok(None) => Observed::Gone {
                    reason: "the job is not in its cluster's queue".into(),
                },
                Err(e) if e.kind == ErrorKind::NotFound => Observed::Gone { reason: e.message },
                Err(e) => return Err(e),
            });
        }
        let Ok(p) = serde_json::from_value::<Private>(res.private.clone()) else {
            return Ok(Observed::Gone {
                reason: "no hosts recorded".into(),
            });
        };
        let Some(pool) = self.pool_of(&p, res) else {
            return Ok(Observed::Gone {
                reason: "its pool is no longer declared".into(),
            });
        };
        let seen = self.host_reports(pool).await;
        let ours: Vec<String> = seen
            .iter()
            .filter(|s| s.holder.as_deref() == Some(p.token.as_str()))
            .map(|s| s.host.to_string())
            .collect();
        if res.status == crate::state::Status::Creating {
            let want = res
                .placement
                .as_ref()
                .map_or(1, |c| c.num_nodes.max(1) as usize);
            if ours.is_empty() {
                return Ok(Observed::Gone {
                    reason: "its creation reserved no host".into(),
                });
            }
            // Adopted only once its runtime runs everywhere: a creation killed while it
            // reserved, synced or ran setup is replaced, which releases what it held.
            let held: Vec<&HostReport> = seen
                .iter()
                .filter(|s| s.holder.as_deref() == Some(p.token.as_str()))
                .collect();
            if finished(&held, res) {
                let mut found = Self::found(pool, &p.token, &held).await?;
                let mut adopted: Private =
                    serde_json::from_value(found.private.clone()).unwrap_or_default();
                adopted.lineage = p.lineage.clone();
                found.private = serde_json::to_value(adopted).unwrap_or_default();
                return Ok(Observed::Adopted(found));
            }
            return Ok(Observed::Degraded {
                reason: if ours.len() == want {
                    "its creation was interrupted before its runtime started".into()
                } else {
                    format!(
                        "its creation was interrupted with {} of {want} host(s)",
                        ours.len()
                    )
                },
                computed: Self::computed(&ours),
            });
        }
        let answering = p.hosts.iter().all(|h| {
            seen.iter()
                .any(|s| &s.host.to_string() == h && s.facts.is_ok())
        });
        if answering && !p.hosts.is_empty() && ours.is_empty() {
            return Ok(Observed::Gone {
                reason: "its hosts were released outside skyform".into(),
            });
        }
        for (rank, h) in p.hosts.iter().enumerate() {
            let s = seen.iter().find(|s| &s.host.to_string() == h);
            let why = match s {
                None => Some(format!("host {h} (node {rank}) is no longer in the pool")),
                Some(s) if s.facts.is_err() => Some(format!(
                    "host {h} (node {rank}) does not answer: {}",
                    s.facts
                        .as_ref()
                        .err()
                        .map(|e| e.message.as_str())
                        .unwrap_or_default()
                )),
                Some(s) if s.holder.as_deref() != Some(p.token.as_str()) => Some(format!(
                    "host {h} (node {rank}) is no longer reserved for it"
                )),
                _ => None,
            };
            if let Some(reason) = why {
                return Ok(Observed::Degraded {
                    reason,
                    computed: Self::computed(&p.hosts),
                });
            }
        }
        let mut computed = Self::computed(&p.hosts);
        if p.build.is_some() {
            let mine = |h: &String| seen.iter().find(|s| &s.host.to_string() == h);
            if p.hosts.first().and_then(mine).is_some_and(|s| s.stopped) {
                computed.insert("status".into(), serde_json::json!("STOPPED"));
                return Ok(Observed::Up(computed));
            }
            for (rank, h) in p.hosts.iter().enumerate() {
                if mine(h).is_some_and(|s| !s.agent) {
                    return Ok(Observed::Degraded {
                        reason: format!(
                            "the agent of node {rank} on {h} is not running (did the host restart?)"
                        ),
                        computed,
                    });
                }
            }
        }
        Ok(Observed::Up(computed))
    }

    async fn create(
        &self,
        req: crate::providers::Request<'_>,
    ) -> Result<crate::providers::Created, ProviderError> {
        match req.spec {
            crate::model::Spec::Cluster(_) => {}
            crate::model::Spec::Job(j) => return self.submit(&req, &j.cluster).await,
            _ => {
                return Err(ProviderError {
                    kind: ErrorKind::Config,
                    message: NO_MANAGED.into(),
                });
            }
        }
        let placement = req
            .placement
            .ok_or_else(|| ProviderError::other("an ssh cluster needs a placement"))?;
        let o = &placement.offering;
        let pool = self.pool(o.region.as_deref().unwrap_or_default())?;
        let mut p: Private = serde_json::from_value(req.private.clone())
            .map_err(|e| ProviderError::other(format!("bad private state: {e}")))?;
        p.pool = Some(pool.name.clone());
        let want = placement.num_nodes.max(1) as usize;
        // Hosts of the planned shape, free when looked at; each is then reserved atomically.
        self.forget(pool).await;
        let seen = self.host_reports(pool).await;
        self.forget(pool).await;
        let mut got: Vec<String> = Vec::new();
        for s in &seen {
            if got.len() == want {
                break;
            }
            let fits = matches!(&s.facts, Ok(f) if shape(f) == o.instance_type);
            if !fits || s.holder.is_some() {
                continue;
            }
            let out = Self::on_host(pool, &s.host, RESERVE, &[&p.token, &p.lineage]).await;
            if out.is_ok_and(|o| o.stdout.trim_end().ends_with("reserved")) {
                got.push(s.host.to_string());
            }
        }
        if got.len() < want {
            for h in &got {
                if let Ok(host) = h.parse::<Host>() {
                    let _ = Self::on_host(pool, &host, RELEASE, &[&p.token]).await;
                }
            }
            return Err(ProviderError {
                kind: ErrorKind::Capacity,
                message: format!(
                    "pool {} has {} free host(s) of shape {}, {want} needed",
                    pool.name,
                    got.len(),
                    o.instance_type
                ),
            });
        }
        p.hosts = got;
        p.per_node = Some((o.cpus, o.gpus()));
        match req.spec {
            crate::model::Spec::Cluster(spec) => self.set_up(pool, p, spec, &req).await,
            _ => Err(ProviderError::other("only clusters hold hosts")),
        }
    }

    /// Workdir, setup or envs changed: sync and run setup again on the same hosts.
    async fn update(
        &self,
        req: crate::providers::Request<'_>,
    ) -> Result<crate::providers::Created, ProviderError> {
        let crate::model::Spec::Cluster(spec) = req.spec else {
            // Jobs change by replacement only.
            return Ok(crate::providers::Created {
                computed: BTreeMap::new(),
                private: req.private.clone(),
            });
        };
        let p: Private = serde_json::from_value(req.private.clone())
            .map_err(|e| ProviderError::other(format!("bad private state: {e}")))?;
        let pool = self.pool(p.pool.as_deref().unwrap_or_default())?;
        self.set_up(pool, p, spec, &req).await
    }

    /// Releases the cluster's hosts.
    async fn delete(
        &self,
        _address: &crate::model::Address,
        res: &crate::state::ResourceState,
        cluster: Option<&crate::state::ResourceState>,
    ) -> Result<(), ProviderError> {
        if matches!(*res.spec, crate::model::Spec::Job(_)) {
            return self.cancel(res, cluster).await;
        }
        let Ok(p) = serde_json::from_value::<Private>(res.private.clone()) else {
            return Ok(());
        };
        let Some(pool) = self.pool_of(&p, res) else {
            return Ok(());
        };
        // Every host of the pool: an interrupted create may have reserved some it did not
        // record. Only reservations with this cluster's token are released. A recorded
        // host that does not answer fails the delete (its reservation must not be lost);
        // others that do not answer hold nothing of this cluster's.
        self.forget(pool).await;
        let mut set = tokio::task::JoinSet::new();
        for host in pool.hosts.clone() {
            let pool = pool.clone();
            let token = p.token.clone();
            let recorded = p.hosts.contains(&host.to_string());
            set.spawn(async move {
                let script = format!("{RELEASE}\n{}", runtime::unauthorize_script());
                let r = Self::on_host(&pool, &host, &script, &[&token]).await;
                (host, recorded, r)
            });
        }
        let mut failed = Vec::new();
        while let Some(Ok((host, recorded, r))) = set.join_next().await {
            if let Err(e) = r {
                if recorded {
                    failed.push((host, e));
                } else {
                    tracing::debug!(%host, error = %e, "cannot look for a reservation");
                }
            }
        }
        failed.sort_by(|a, b| a.0.cmp(&b.0));
        match failed.into_iter().next() {
            None => Ok(()),
            Some((host, e)) => Err(ProviderError {
                kind: e.kind,
                message: format!("cannot release host {host}: {}", e.message),
            }),
        }
    }

    /// Stops the cluster's agents (and what they run) on every host; the hosts stay held.
    async fn stop(&self, res: &crate::state::ResourceState) -> Result<(), ProviderError> {
        self.on_every_host(res, &runtime::stop_script()).await
    }

    /// Starts the agents again.
    async fn start(
        &self,
        res: &crate::state::ResourceState,
    ) -> Result<serde_json::Value, ProviderError> {
        let crate::model::Spec::Cluster(spec) = res.spec.as_ref() else {
            return Err(ProviderError::other("only clusters start"));
        };
        self.on_every_host(res, &format!("{HOST_DIR}\n{}", runtime::UNMARK_STOPPED))
            .await?;
        let mut p: Private = serde_json::from_value(res.private.clone())
            .map_err(|e| ProviderError::other(format!("bad private state: {e}")))?;
        let pool = self.pool(p.pool.as_deref().unwrap_or_default())?;
        self.boot(pool, &mut p, spec).await?;
        self.forget(pool).await;
        Ok(serde_json::to_value(&p).unwrap_or_default())
    }

    /// Imports the cluster whose token holds hosts of a pool: `POOL/TOKEN` (the token is the
    /// name of its directory under `clusters/` on each host).
    async fn import(
        &self,
        _address: &crate::model::Address,
        id: &str,
    ) -> Result<crate::providers::Created, ProviderError> {
        let (pool_name, token) = id.split_once('/').ok_or_else(|| ProviderError {
            kind: ErrorKind::Config,
            message: format!("{id:?} is not POOL/TOKEN"),
        })?;
        let pool = self.pool(pool_name)?;
        self.forget(pool).await;
        let seen = self.host_reports(pool).await;
        let held: Vec<&HostReport> = seen
            .iter()
            .filter(|s| s.holder.as_deref() == Some(token))
            .collect();
        if held.is_empty() {
            return Err(ProviderError {
                kind: ErrorKind::NotFound,
                message: format!("no host of pool {pool_name} is held by {token}"),
            });
        }
        Self::found(pool, token, &held).await
    }

    /// Clusters on this backend's pools whose hosts carry `lineage` in their reservation
    /// and whose token none of `held` records, by the address their head's `cluster.json`
    /// names: `POOL/TOKEN` each. A pool that cannot be probed is skipped.
    async fn find_own(
        &self,
        lineage: &str,
        held: &[&crate::state::ResourceState],
    ) -> Result<Vec<(crate::model::Address, String)>, ProviderError> {
        let mut out = Vec::new();
        for (pool, token, hosts) in self.unheld(lineage, held).await {
            if !hosts.iter().any(|s| s.runtime) {
                continue;
            }
            let hosts: Vec<&HostReport> = hosts.iter().collect();
            let Ok(found) = Self::found(pool, &token, &hosts).await else {
                continue;
            };
            let name = serde_json::from_value::<Private>(found.private)
                .ok()
                .and_then(|p| p.name)
                .and_then(|n| n.parse::<crate::model::Address>().ok());
            if let Some(address) = name {
                out.push((address, format!("{}/{token}", pool.name)));
            }
        }
        out.sort();
        Ok(out)
    }

    /// Releases the hosts held by creations of this lineage that never finished (their
    /// runtime does not run on every host they hold): those state does not record — a run
    /// killed between reserving and recording — and those it records as still creating,
    /// whose run was killed (this run holds the lock, so no other is making them). Refresh
    /// then finds the recorded ones gone and the plan creates them again on free hosts;
    /// finished clusters state lacks are left to `find_own`.
    async fn release_unfinished(
        &self,
        lineage: &str,
        held: &[&crate::state::ResourceState],
    ) -> Result<Vec<String>, ProviderError> {
        let mut doomed: Vec<(&Pool, String, Vec<Host>)> = Vec::new();
        for (pool, token, hosts) in self.unheld(lineage, held).await {
            if !hosts.iter().any(|s| s.runtime) {
                doomed.push((pool, token, hosts.into_iter().map(|s| s.host).collect()));
            }
        }
        for res in held {
            if res.status != crate::state::Status::Creating
                || !matches!(*res.spec, crate::model::Spec::Cluster(_))
            {
                continue;
            }
            let Ok(p) = serde_json::from_value::<Private>(res.private.clone()) else {
                continue;
            };
            let Some(pool) = self.pool_of(&p, res) else {
                continue;
            };
            let seen = self.host_reports(pool).await;
            let ours: Vec<&HostReport> = seen
                .iter()
                .filter(|s| s.holder.as_deref() == Some(p.token.as_str()))
                .collect();
            if !ours.is_empty() && !finished(&ours, res) {
                let hosts = ours.iter().map(|s| s.host.clone()).collect();
                doomed.push((pool, p.token.clone(), hosts));
            }
        }
        let mut out = Vec::new();
        for (pool, token, hosts) in doomed {
            for host in &hosts {
                Self::on_host(pool, host, RELEASE, &[&token]).await?;
                out.push(format!(
                    "released host {host} of pool {}, held by a creation ({token}) that a killed run of this state left unfinished",
                    pool.name
                ));
            }
            self.forget(pool).await;
        }
        Ok(out)
    }

    fn ssh_entry(
        &self,
        res: &crate::state::ResourceState,
    ) -> Result<crate::providers::SshEntry, ProviderError> {
        let p: Private = serde_json::from_value(res.private.clone())
            .map_err(|_| ProviderError::other("no hosts recorded"))?;
        let pool = self.pool(p.pool.as_deref().unwrap_or_default())?;
        let head: Host = p
            .hosts
            .first()
            .ok_or_else(|| ProviderError::other("no hosts recorded"))?
            .parse()
            .map_err(ProviderError::other)?;
        let a = &pool.access;
        Ok(crate::providers::SshEntry {
            user: head.user.clone().or_else(|| a.user.clone()),
            address: head.address.clone(),
            port: head.port.or(a.port),
            identity: a.identity_file.clone(),
            known_hosts: a.known_hosts.clone(),
            accept_new: false,
            config_file: a.config_file.clone(),
        })
    }

    fn log_paths(
        &self,
        _res: &crate::state::ResourceState,
        _cluster: Option<&crate::state::ResourceState>,
    ) -> Vec<PathBuf> {
        Vec::new()
    }

    /// Each rank's log is read where it runs: on the host of the node the head gave it.
    async fn read_logs(
        &self,
        res: &crate::state::ResourceState,
        cluster: Option<&crate::state::ResourceState>,
        offsets: &[u64],
    ) -> Result<Vec<Vec<u8>>, ProviderError> {
        let crate::model::Spec::Job(j) = res.spec.as_ref() else {
            return Ok(Vec::new());
        };
        let (pool, hosts, p, build) = self.job_target(cluster)?;
        let job = crate::providers::jobs::job_id(&res.private).unwrap_or_default();
        remote(pool, hosts, &p, &build)
            .read_logs(job, j.num_nodes, offsets)
            .await
    }
}

/// The cluster's runtime, as its clients reach it.
fn remote<'a>(
    pool: &'a Pool,
    hosts: Vec<Host>,
    p: &'a Private,
    build: &'a str,
) -> RemoteCluster<'a> {
    RemoteCluster {
        access: &pool.access,
        hosts,
        token: &p.token,
        build,
    }
}

impl SshProvider {
    /// What state records for the cluster whose token holds `held` (hosts of `pool`): the
    /// head's `cluster.json` gives the nodes' order and the build they run.
    async fn found(
        pool: &Pool,
        token: &str,
        held: &[&HostReport],
    ) -> Result<crate::providers::Created, ProviderError> {
        let pool_name = &pool.name;
        let not_found = |why: String| ProviderError {
            kind: ErrorKind::NotFound,
            message: why,
        };
        let mut info = None;
        for s in held {
            let out = Self::on_host(
                pool,
                &s.host,
                r#"cat "$dir/clusters/$1/cluster.json" 2>/dev/null"#,
                &[token],
            )
            .await?;
            if let Ok(i) = serde_json::from_str::<crate::runtime::ClusterInfo>(&out.stdout) {
                info = Some((s.host.clone(), i));
                break;
            }
        }
        let (head, info) = info.ok_or_else(|| {
            not_found(format!(
                "the hosts held by {token} have no cluster.json: not a cluster skyform started"
            ))
        })?;
        let held_names: Vec<String> = held.iter().map(|s| s.host.to_string()).collect();
        let hosts = if info.hosts.is_empty() {
            // Older heads recorded addresses only: match them, head first.
            let mut hosts: Vec<String> = vec![head.to_string()];
            for (rank, ip) in info.ips.iter().enumerate().skip(1) {
                let h = held
                    .iter()
                    .find(|s| &s.host.address == ip && !hosts.contains(&s.host.to_string()))
                    .ok_or_else(|| {
                        not_found(format!(
                            "node {rank} ({ip}) of {token} is not held in pool {pool_name}"
                        ))
                    })?;
                hosts.push(h.host.to_string());
            }
            hosts
        } else {
            // The head recorded each node's host: take them in its order.
            if let Some((rank, h)) = info
                .hosts
                .iter()
                .enumerate()
                .find(|(_, h)| !held_names.contains(h))
            {
                return Err(not_found(format!(
                    "node {rank} ({h}) of {token} is not held in pool {pool_name}"
                )));
            }
            info.hosts.clone()
        };
        let p = Private {
            token: token.to_string(),
            lineage: held.first().map(|s| s.lineage.clone()).unwrap_or_default(),
            pool: Some(pool.name.clone()),
            hosts,
            build: info.build.clone(),
            name: Some(info.name.clone()),
            per_node: Some((info.cpus_per_node, info.gpus_per_node)),
        };
        Ok(crate::providers::Created {
            computed: Self::computed(&p.hosts),
            private: serde_json::to_value(&p).unwrap_or_default(),
        })
    }

    /// The hosts of each pool held under `lineage` by a token none of `held` records,
    /// grouped by pool and token.
    async fn unheld(
        &self,
        lineage: &str,
        held: &[&crate::state::ResourceState],
    ) -> Vec<(&Pool, String, Vec<HostReport>)> {
        let known: std::collections::BTreeSet<String> = held
            .iter()
            .filter_map(|r| serde_json::from_value::<Private>(r.private.clone()).ok())
            .map(|p| p.token)
            .collect();
        let mut out = Vec::new();
        if lineage.is_empty() {
            return out;
        }
        for pool in self.pools.values() {
            let mut by_token: BTreeMap<String, Vec<HostReport>> = BTreeMap::new();
            for s in self.host_reports(pool).await {
                if let Some(t) = &s.holder
                    && s.lineage == lineage
                    && !known.contains(t)
                {
                    by_token.entry(t.clone()).or_default().push(s);
                }
            }
            out.extend(by_token.into_iter().map(|(t, h)| (pool, t, h)));
        }
        out
    }

    /// Runs `script` (with the cluster's token as `$1`) on every host the cluster holds.
    async fn on_every_host(
        &self,
        res: &crate::state::ResourceState,
        script: &str,
    ) -> Result<(), ProviderError> {
        let p: Private = serde_json::from_value(res.private.clone())
            .map_err(|_| ProviderError::other("no hosts recorded"))?;
        let pool = self.pool(p.pool.as_deref().unwrap_or_default())?;
        for h in &p.hosts {
            let host: Host = h.parse().map_err(ProviderError::other)?;
            let out = Self::on_host(pool, &host, script, &[&p.token]).await?;
            if out.code != Some(0) {
                return Err(ProviderError::other(format!(
                    "on {host}: {}",
                    out.stderr.trim()
                )));
            }
        }
        self.forget(pool).await;
        Ok(())
    }

    /// Submits a job to the queue on its cluster's head.
    async fn submit(
        &self,
        req: &crate::providers::Request<'_>,
        cluster_addr: &crate::model::Address,
    ) -> Result<crate::providers::Created, ProviderError> {
        let (pool, hosts, p, build) = self.job_target(req.cluster)?;
        remote(pool, hosts, &p, &build)
            .submit(req, cluster_addr)
            .await
    }

    /// Cancels a job that has not ended, and waits (a little) until the head confirms.
    async fn cancel(
        &self,
        res: &crate::state::ResourceState,
        cluster: Option<&crate::state::ResourceState>,
    ) -> Result<(), ProviderError> {
        let Ok((pool, hosts, p, build)) = self.job_target(cluster) else {
            // No cluster, nothing runs the job.
            return Ok(());
        };
        let job = crate::providers::jobs::job_id(&res.private).unwrap_or_default();
        remote(pool, hosts, &p, &build).cancel(job).await
    }
}
