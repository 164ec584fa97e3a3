//! Services, served: once a pass the controller takes up the services apply declared, judges
//! each replica (its managed job's phase and its readiness probe), asks the autoscaler for
//! the count, starts and drains replicas as [`service::moves`] says, and keeps each
//! service's load balancer ([`crate::serve`]) pointed at its ready replicas. The replicas
//! it wants are answered as managed jobs to declare: the managed-job machinery launches,
//! watches, recovers and removes them.

use super::book;
use super::handoff::NAME;
use super::policy::Phase;
use super::reconcile::Controller;
use super::service::{self, Probing, Replica, ReplicaState, Scaling, ServiceRecord, replica_task};
use crate::model::{Address, ManagedJobSpec, ServiceSpec, Spec};
use crate::serve::{Balancer, Upstream};
use crate::state::{ResourceState, State, Status};
use serde_json::json;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

/// The service id apply gave a service (its key in the book).
pub fn service_id(res: &ResourceState) -> Option<&str> {
    res.private
        .get("service_id")
        .and_then(serde_json::Value::as_str)
}

/// How often replicas are probed, how long a ready one may fail, how long a drain waits,
/// how long a request waits for a replica, over how long the request rate is taken:
/// SkyServe's values, shortened by tests through
/// `SKYFORM_SERVE_{PROBE,PROBE_BUDGET,DRAIN,QUEUE,QPS_WINDOW}_MS`.
#[derive(Debug, Clone, Copy)]
struct Pacing {
    probe_every: Duration,
    budget: Duration,
    drain: Duration,
    queue: Duration,
    qps_window: Duration,
}

impl Pacing {
    fn from_env() -> Pacing {
        let ms = |name: &str, default: u64| {
            Duration::from_millis(
                std::env::var(format!("SKYFORM_SERVE_{name}_MS"))
                    .ok()
                    .and_then(|v| v.trim().parse().ok())
                    .unwrap_or(default),
            )
        };
        Pacing {
            probe_every: ms("PROBE", 10_000),
            budget: ms("PROBE_BUDGET", 180_000),
            drain: ms("DRAIN", 120_000),
            queue: ms("QUEUE", 60_000),
            qps_window: ms("QPS_WINDOW", 60_000),
        }
    }
}

/// What the controller holds for its services between passes.
pub struct Serving {
    balancers: BTreeMap<String, Arc<Balancer>>,
    /// Probe answers not judged yet, by replica task, with the host the replica was
    /// reached at.
    answers: BTreeMap<String, (bool, Option<String>)>,
    /// When each replica was last probed (unix ms).
    probed: BTreeMap<String, u64>,
    tx: mpsc::UnboundedSender<(String, bool, Option<String>)>,
    rx: mpsc::UnboundedReceiver<(String, bool, Option<String>)>,
    pacing: Pacing,
    listen: Listen,
}

/// Where the balancers listen and what address endpoints give: this machine's loopback,
/// unless `SKYFORM_SERVE_BIND` (the address to listen on) and `SKYFORM_SERVE_HOST` (the
/// address clients reach it at) say otherwise — a controller in a pod listens on every
/// address and gives the pod's.
#[derive(Debug, Clone)]
struct Listen {
    bind: String,
    host: Option<String>,
}

impl Listen {
    fn from_env() -> Listen {
        let var = |name: &str| {
            std::env::var(name)
                .ok()
                .map(|v| v.trim().to_string())
                .filter(|v| !v.is_empty())
        };
        Listen {
            bind: var("SKYFORM_SERVE_BIND").unwrap_or_else(|| "127.0.0.1".into()),
            host: var("SKYFORM_SERVE_HOST"),
        }
    }
}

impl std::fmt::Debug for Serving {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Serving")
            .field("services", &self.balancers.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl Default for Serving {
    fn default() -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        Serving {
            balancers: BTreeMap::new(),
            answers: BTreeMap::new(),
            probed: BTreeMap::new(),
            tx,
            rx,
            pacing: Pacing::from_env(),
            listen: Listen::from_env(),
        }
    }
}

/// Where a replica listens, when that is known without asking its backend: its cluster's
/// head when it runs on one, this machine when it runs here; `None` for one its backend
/// places (a pod), whose address the probe asks for.
fn known_host(run: Option<&book::Run>) -> Option<String> {
    let p = run?.current.as_ref()?;
    if let Some(c) = &p.cluster {
        return c
            .computed
            .get("head_ip")
            .and_then(serde_json::Value::as_str)
            .map(String::from);
    }
    crate::model::backend::is_this_machine(&p.provider).then(|| "127.0.0.1".to_string())
}

/// The host a replica's job runs on, asked of its backend (`head_ip` of the job).
async fn asked_host(
    registry: &crate::providers::Registry,
    address: &Address,
    p: &book::Placement,
) -> Option<String> {
    let provider = registry.get(&p.provider)?;
    let (job, cluster) = super::placement::placed(p);
    match provider.refresh(address, &job, cluster.as_ref()).await {
        Ok(
            crate::providers::Observed::Up(c)
            | crate::providers::Observed::Degraded { computed: c, .. },
        ) => c
            .get("head_ip")
            .and_then(serde_json::Value::as_str)
            .map(String::from),
        _ => None,
    }
}

/// Whether replicas placed as `cloud` get machines of their own (a pool's host, an
/// instance), reached on the service's port as its firewall opens it; elsewhere (this
/// machine, pods) each gets a port of its own.
fn machines_of_their_own(cloud: &str) -> bool {
    crate::model::backend::lookup(cloud).is_some_and(|b| b.catalog || b.name == "ssh")
}

/// A port no one listens on now, for a replica on this machine.
fn free_port() -> Option<u16> {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .ok()
}

/// The managed job one replica runs: the service's program, listening on `$PORT`.
fn replica_resource(
    res: &ResourceState,
    spec: &ServiceSpec,
    task: &str,
    (id, replica): (u32, &Replica),
    address: &Address,
) -> ResourceState {
    let mut envs = spec.envs.clone();
    envs.insert("PORT".into(), replica.port.to_string());
    envs.insert("SKYFORM_REPLICA_ID".into(), id.to_string());
    let mut resources = spec.resources.clone();
    if replica.on_demand {
        // The fallback: the same request, on demand.
        resources.use_spot = Some(false);
        for c in resources
            .any_of
            .iter_mut()
            .chain(resources.ordered.iter_mut())
        {
            c.use_spot = Some(false);
        }
    }
    envs.insert("SKYFORM_SERVICE".into(), address.to_string());
    let job = ManagedJobSpec {
        num_nodes: 1,
        resources,
        workdir: spec.workdir.clone(),
        workdir_hash: spec.workdir_hash.clone(),
        setup: spec.setup.clone(),
        run: spec.run.clone(),
        envs,
        secrets: spec.secrets.clone(),
        recovery: None,
    };
    ResourceState {
        private: json!({ "task_id": task }),
        placement: res.placement.clone(),
        sensitive: res.sensitive.clone(),
        ..ResourceState::new(
            Status::Ready,
            NAME,
            Arc::new(Spec::ManagedJob(Box::new(job))),
        )
    }
}

/// The probe's request answered 200 within its timeout (SkyServe: 200 only).
async fn probe(addr: String, p: &crate::model::ReadinessProbe) -> bool {
    let asked = async {
        let mut s = tokio::net::TcpStream::connect(&addr).await.ok()?;
        let body = p.body().unwrap_or_default();
        let mut request = format!(
            "{} {} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
            p.method(),
            p.path,
            body.len()
        );
        if p.post_data.as_ref().is_some_and(|d| !d.is_string()) {
            request.push_str("Content-Type: application/json\r\n");
        }
        for (k, v) in &p.headers {
            request.push_str(&format!("{k}: {v}\r\n"));
        }
        request.push_str("\r\n");
        request.push_str(&body);
        s.write_all(request.as_bytes()).await.ok()?;
        let mut head = Vec::new();
        let mut buf = [0u8; 256];
        while !head.windows(2).any(|w| w == b"\r\n") && head.len() < 4096 {
            let n = s.read(&mut buf).await.ok()?;
            if n == 0 {
                break;
            }
            head.extend_from_slice(&buf[..n]);
        }
        let line = String::from_utf8_lossy(&head);
        Some(line.starts_with("HTTP/1.") && line.split_whitespace().nth(1) == Some("200"))
    };
    matches!(
        tokio::time::timeout(p.timeout(), asked).await,
        Ok(Some(true))
    )
}

/// What state and `status` show of a service.
pub fn computed(
    rec: &ServiceRecord,
    id: &str,
    runs: &BTreeMap<String, book::Run>,
) -> BTreeMap<String, serde_json::Value> {
    let ready = rec.ready().count();
    let alive = rec.alive().count();
    let status = if rec.cancel {
        "SHUTTING_DOWN"
    } else if ready > 0 {
        "READY"
    } else if rec.reason.is_some() && alive == 0 {
        "FAILED"
    } else if alive > 0 {
        "REPLICA_INIT"
    } else {
        "NO_REPLICA"
    };
    let replicas: Vec<serde_json::Value> = rec
        .replicas
        .iter()
        .map(|(rid, r)| {
            let mut v = json!({
                "id": rid,
                "version": r.version,
                "state": r.state.as_str(),
                "port": r.port,
            });
            if let Some(reason) = &r.reason {
                v["reason"] = json!(reason);
            }
            if let Some(p) = runs
                .get(&replica_task(id, *rid))
                .and_then(|run| run.current.as_ref())
            {
                v["infra"] = json!(p.candidate.offering.infra());
                v["hourly"] = json!(p.candidate.hourly);
            }
            v
        })
        .collect();
    let mut m = BTreeMap::from([
        ("status".to_string(), json!(status)),
        (
            "endpoint".to_string(),
            json!(format!(
                "http://{}:{}",
                rec.host.as_deref().unwrap_or("127.0.0.1"),
                rec.port
            )),
        ),
        ("replicas".to_string(), json!(replicas)),
        ("version".to_string(), json!(rec.newest())),
        ("qps".to_string(), json!(rec.qps)),
    ]);
    if let Some(r) = &rec.reason {
        m.insert("reason".into(), json!(r));
    }
    m
}

impl Controller<'_> {
    /// One pass over the services: answers the replicas to declare, as managed jobs by
    /// task id.
    pub(super) async fn serve(&mut self, state: &State) -> BTreeMap<String, ResourceState> {
        let now = book::now_ms();
        let declared: BTreeMap<String, &ResourceState> = state
            .resources
            .values()
            .filter(|r| matches!(*r.spec, Spec::Service(_)) && r.status == Status::Ready)
            .filter_map(|r| service_id(r).map(|id| (id.to_string(), r)))
            .collect();
        for (id, res) in &declared {
            if !self.book.services.contains_key(id) {
                let port = res
                    .private
                    .get("port")
                    .and_then(serde_json::Value::as_u64)
                    .and_then(|p| u16::try_from(p).ok())
                    .unwrap_or(8000);
                let address = state
                    .resources
                    .iter()
                    .find(|(_, r)| service_id(r) == Some(id))
                    .map(|(a, _)| a.clone())
                    .unwrap_or_else(|| Address::new(crate::model::Kind::Service, id.clone()));
                self.book
                    .services
                    .insert(id.clone(), ServiceRecord::new(address, port));
                self.dirty = true;
            }
        }
        while let Ok((task, ok, host)) = self.serving.rx.try_recv() {
            self.serving.answers.insert(task, (ok, host));
        }
        let mut out = BTreeMap::new();
        let ids: Vec<String> = self.book.services.keys().cloned().collect();
        for id in ids {
            self.serve_one(&id, declared.get(&id).copied(), now, &mut out)
                .await;
        }
        // A service apply removed, with nothing left of it, is forgotten.
        let gone: Vec<String> = self
            .book
            .services
            .iter()
            .filter(|(id, r)| r.cancel && r.is_gone() && !declared.contains_key(*id))
            .map(|(id, _)| id.clone())
            .collect();
        for id in gone {
            self.book.services.remove(&id);
            self.dirty = true;
        }
        out
    }

    /// The balancer of a service, listening from its first pass.
    async fn balancer(
        &mut self,
        id: &str,
        rec: &mut ServiceRecord,
        policy: crate::model::LbPolicy,
    ) -> Option<Arc<Balancer>> {
        match self.serving.balancers.get(id) {
            Some(b) if b.config().policy == policy => return Some(b.clone()),
            // Another policy: a new balancer (requests in flight on the old one finish).
            Some(b) => b.shutdown(),
            None => {}
        }
        self.serving.balancers.remove(id);
        let config = crate::serve::Config {
            policy,
            queue_timeout: self.serving.pacing.queue,
            ..Default::default()
        };
        match Balancer::bind((self.serving.listen.bind.as_str(), rec.port), config).await {
            Ok(b) => {
                rec.host.clone_from(&self.serving.listen.host);
                let b = Arc::new(b);
                self.serving.balancers.insert(id.to_string(), b.clone());
                Some(b)
            }
            Err(e) => {
                let why = format!("its load balancer cannot listen on port {}: {e}", rec.port);
                if rec.reason.as_deref() != Some(why.as_str()) {
                    self.say(format!("{}: {why}", rec.address));
                    rec.reason = Some(why);
                }
                None
            }
        }
    }

    async fn serve_one(
        &mut self,
        id: &str,
        res: Option<&ResourceState>,
        now: u64,
        out: &mut BTreeMap<String, ResourceState>,
    ) {
        let Some(mut rec) = self.book.services.get(id).cloned() else {
            return;
        };
        let before = rec.clone();
        let spec = res.and_then(|r| match r.spec.as_ref() {
            Spec::Service(s) => Some(s.clone()),
            _ => None,
        });
        rec.cancel |= spec.is_none();
        if let Some(s) = &spec {
            let newest = rec.newest();
            if rec.version_of(&s.version_key()) > newest {
                // A new version: what was said of the last one no longer holds.
                rec.reason = None;
            }
        }
        let balancer = if rec.cancel && rec.is_gone() {
            None
        } else {
            let policy = spec.as_ref().map(|s| s.lb_policy()).unwrap_or_default();
            self.balancer(id, &mut rec, policy).await
        };
        let pacing = self.serving.pacing;
        let probe_spec = spec.as_ref().map(|s| s.probe()).unwrap_or_default();
        let probing = Probing {
            initial_delay: probe_spec.initial_delay(),
            budget: pacing.budget,
        };
        // Judge every replica by its managed job and its last probe.
        for (rid, r) in rec.replicas.iter_mut() {
            let task = replica_task(id, *rid);
            let phase = self.book.runs.get(&task).map(|run| run.phase);
            let answer = self.serving.answers.remove(&task).map(|(ok, host)| {
                if host.is_some() {
                    r.host = host;
                }
                ok
            });
            let was = r.state;
            *r = service::judge(r, phase, answer, now, probing);
            if r.state != was && r.state.is_failed() {
                *rec.failures.entry(r.version).or_default() += 1;
                self.say(format!(
                    "{}: replica {rid} {}: {}",
                    rec.address,
                    r.state.as_str(),
                    r.reason.as_deref().unwrap_or("")
                ));
            }
            if let Some(since) = r.draining {
                let idle = balancer
                    .as_ref()
                    .is_none_or(|b| b.in_flight(&rid.to_string()) == 0);
                if idle || now.saturating_sub(since) >= pacing.drain.as_millis() as u64 {
                    r.removed = true;
                }
            }
        }
        // Removed and failed replicas go once their managed job is gone.
        let runs = &self.book.runs;
        rec.replicas.retain(|rid, r| {
            let active = runs
                .get(&replica_task(id, *rid))
                .is_some_and(book::Run::is_active);
            active || !(r.removed || r.state.is_failed())
        });
        if let (Some(s), Some(b)) = (&spec, &balancer)
            && !rec.cancel
        {
            let qps = b.qps_over(pacing.qps_window.as_secs());
            rec.qps = (qps * 100.0).round() / 100.0;
            let (target, pending) = service::autoscale(
                &Scaling::of(s),
                qps,
                b.waiting(),
                rec.target,
                rec.pending,
                now,
            );
            if target != rec.target {
                self.say(format!(
                    "{}: {} → {target} replicas ({:.1} requests/s)",
                    rec.address, rec.target, rec.qps
                ));
            }
            rec.target = target;
            rec.pending = pending;
        }
        let mode = spec.as_ref().map(|s| s.update_mode()).unwrap_or_default();
        let fallback = spec
            .as_ref()
            .map(|s| service::Fallback::of(s))
            .unwrap_or_default();
        let m = service::moves(&rec, mode, fallback);
        if let Some(v) = m.roll_back {
            rec.rolled_back.push(v);
            let why = format!(
                "version {v} never became ready; rolled back to version {}",
                rec.serving_version().unwrap_or(0)
            );
            self.say(format!("{}: {why}", rec.address));
            rec.reason = Some(why);
        }
        if let Some(why) = &m.stuck
            && rec.reason.as_ref() != Some(why)
        {
            self.say(format!("{}: {why}", rec.address));
            rec.reason = Some(why.clone());
        }
        for rid in &m.drain {
            if let Some(r) = rec.replicas.get_mut(rid) {
                r.draining.get_or_insert(now);
            }
        }
        // Replicas are started with the spec in state: only of its version.
        let launch_ok = rec.serving_version() == Some(rec.newest());
        if let (Some(s), Some(res)) = (&spec, res)
            && launch_ok
        {
            let own = res
                .placement
                .as_ref()
                .is_some_and(|c| machines_of_their_own(&c.offering.cloud));
            for i in 0..m.launch {
                let port = if own {
                    s.endpoint_port()
                } else {
                    free_port().unwrap_or_else(|| s.endpoint_port())
                };
                let rid = rec.next_id;
                rec.next_id += 1;
                rec.replicas.insert(
                    rid,
                    Replica {
                        version: rec.newest(),
                        port,
                        host: None,
                        state: ReplicaState::Pending,
                        running_ms: None,
                        ready_ms: None,
                        failing_ms: None,
                        on_demand: i < m.launch_on_demand,
                        draining: None,
                        removed: false,
                        reason: None,
                    },
                );
            }
        }
        if let Some(b) = &balancer {
            let serving = service::serving_replicas(&rec, mode);
            let ready: Vec<Upstream> = rec
                .ready()
                .filter(|(rid, _)| serving.contains(rid))
                .filter_map(|(rid, r)| {
                    Some(Upstream {
                        id: rid.to_string(),
                        addr: format!("{}:{}", r.host.as_deref()?, r.port),
                        version: r.version.to_string(),
                    })
                })
                .collect();
            if b.ready() != ready {
                b.set_ready(ready);
            }
        }
        // Probe the replicas whose program runs, every period.
        for (rid, r) in &rec.replicas {
            let task = replica_task(id, *rid);
            let run = self.book.runs.get(&task);
            if r.draining.is_some()
                || r.removed
                || r.state.is_failed()
                || run.map(|x| x.phase) != Some(Phase::Running)
            {
                continue;
            }
            let last = self.serving.probed.get(&task).copied().unwrap_or(0);
            if now.saturating_sub(last) < pacing.probe_every.as_millis() as u64 {
                continue;
            }
            self.serving.probed.insert(task.clone(), now);
            let tx = self.serving.tx.clone();
            let known = r.host.clone().or_else(|| known_host(run));
            let placement = run.and_then(|x| x.current.clone());
            let registry = self.engine.registry();
            let address = rec.address.clone();
            let (port, probe_spec) = (r.port, probe_spec.clone());
            tokio::spawn(async move {
                let host = match known {
                    Some(h) => Some(h),
                    None => match &placement {
                        Some(p) => asked_host(&registry, &address, p).await,
                        None => None,
                    },
                };
                let ok = match &host {
                    Some(h) => probe(format!("{h}:{port}"), &probe_spec).await,
                    None => false,
                };
                let _ = tx.send((task, ok, host));
            });
        }
        // The replicas to declare: all but those removed or failed (a draining one runs
        // until its requests are done).
        if let (Some(s), Some(res)) = (&spec, res) {
            for (rid, r) in &rec.replicas {
                if r.removed || r.state.is_failed() {
                    continue;
                }
                let task = replica_task(id, *rid);
                let declared = replica_resource(res, s, &task, (*rid, r), &rec.address);
                out.insert(task, declared);
            }
        }
        if rec.cancel
            && rec.is_gone()
            && let Some(b) = self.serving.balancers.remove(id)
        {
            // Nothing left to serve: the endpoint closes before apply hears it is gone.
            b.shutdown();
        }
        if rec != before {
            self.dirty |= rec.replicas != before.replicas
                || rec.target != before.target
                || rec.versions != before.versions
                || rec.cancel != before.cancel
                || rec.reason != before.reason
                || rec.failures != before.failures
                || rec.host != before.host;
            self.book.services.insert(id.to_string(), rec);
        }
    }
}
