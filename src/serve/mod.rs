//! The load balancer of services: a reverse proxy at a service's endpoint over its ready
//! replicas (docs/services.md, "The load balancer").
//!
//! A library piece with no knowledge of providers or state: its owner (the controller) tells
//! it which replicas are ready with [`Balancer::set_ready`], at any time, and reads back what
//! the autoscaler and updates need — requests per second over the last minute, what is in
//! flight on each replica, whether requests are waiting for a replica.
//!
//! Clients speak HTTP/1.1 or HTTP/2 (h2c with prior knowledge) to it; it speaks HTTP/1.1 to
//! the replicas over kept-alive connections (hyper's connection-level client, so that the
//! balancer decides when a request may be tried again: see `proxy.rs`).

mod pool;
mod proxy;
mod rate;

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::{TcpListener, ToSocketAddrs};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use pool::{Picker, Slot};
pub use rate::WINDOW_SECS;

/// How the next request's replica is chosen (`load_balancing_policy`): the replica with
/// the fewest requests in flight (SkyServe's default), or each in turn.
pub use crate::model::LbPolicy as Policy;

/// One replica the balancer may send requests to.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Upstream {
    /// The owner's name for the replica; the key of its figures.
    pub id: String,
    /// `host:port` it listens on (HTTP/1.1).
    pub addr: String,
    /// The service version it runs, for the owner's bookkeeping.
    pub version: String,
}

#[derive(Debug, Clone)]
pub struct Config {
    pub policy: Policy,
    /// How long a request waits for a ready replica before it is answered 503.
    pub queue_timeout: Duration,
    /// How long connecting to a replica may take before it counts as a failed connect.
    pub connect_timeout: Duration,
    /// How long a replica that refused a connection is passed over (while others are left).
    pub eject_for: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            policy: Policy::LeastLoad,
            queue_timeout: Duration::from_secs(60),
            connect_timeout: Duration::from_secs(5),
            eject_for: Duration::from_secs(2),
        }
    }
}

/// What the balancer knows of one replica: a ready one, or one taken out of the ready set
/// that still has requests in flight (draining).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamStats {
    pub upstream: Upstream,
    pub ready: bool,
    pub in_flight: usize,
    /// Requests sent to it since it joined (attempts, including failed connects).
    pub requests: u64,
    pub connect_failures: u64,
}

type ReadySet = Arc<[Arc<Slot>]>;

#[derive(Debug)]
pub(crate) struct Shared {
    config: Config,
    picker: Picker,
    ready: watch::Sender<ReadySet>,
    /// Every replica with figures worth keeping: the ready ones and the draining ones.
    known: Mutex<HashMap<String, Arc<Slot>>>,
    rate: rate::RateWindow,
    waiting: watch::Sender<usize>,
}

impl Shared {
    fn ready_set(&self) -> ReadySet {
        self.ready.borrow().clone()
    }

    /// Waits until the ready set is no longer `seen`, or the deadline passes (false), counted
    /// among the waiting requests meanwhile.
    async fn wait_for_change(&self, seen: &ReadySet, deadline: tokio::time::Instant) -> bool {
        let mut rx = self.ready.subscribe();
        if !Arc::ptr_eq(&rx.borrow_and_update(), seen) {
            return true;
        }
        let _waiting = Waiting::new(&self.waiting);
        matches!(
            tokio::time::timeout_at(deadline, rx.changed()).await,
            Ok(Ok(()))
        )
    }

    fn slot(&self, id: &str) -> Option<Arc<Slot>> {
        self.known.lock().ok()?.get(id).cloned()
    }
}

/// One request waiting for a replica, counted while it lives.
struct Waiting<'a>(&'a watch::Sender<usize>);

impl<'a> Waiting<'a> {
    fn new(count: &'a watch::Sender<usize>) -> Self {
        count.send_modify(|n| *n += 1);
        Waiting(count)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.send_modify(|n| *n = n.saturating_sub(1));
    }
}

/// A running load balancer. Dropping it (or [`Balancer::shutdown`]) stops accepting
/// connections; requests already accepted run to their end. Made inside a Tokio runtime,
/// on which its connections run; share it behind an `Arc` (its methods take `&self`).
#[derive(Debug)]
pub struct Balancer {
    shared: Arc<Shared>,
    local_addr: SocketAddr,
    accept: JoinHandle<()>,
}

impl Balancer {
    /// Listens at `addr` and serves with no replica ready yet.
    pub async fn bind(addr: impl ToSocketAddrs, config: Config) -> std::io::Result<Balancer> {
        Balancer::serve(TcpListener::bind(addr).await?, config)
    }

    /// Serves on a listener the caller bound.
    pub fn serve(listener: TcpListener, config: Config) -> std::io::Result<Balancer> {
        let local_addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            picker: Picker::new(config.policy),
            config,
            ready: watch::Sender::new(Arc::from(Vec::new())),
            known: Mutex::new(HashMap::new()),
            rate: rate::RateWindow::new(),
            waiting: watch::Sender::new(0),
        });
        let accept = tokio::spawn(accept_loop(listener, shared.clone()));
        Ok(Balancer {
            shared,
            local_addr,
            accept,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    pub fn config(&self) -> &Config {
        &self.shared.config
    }

    /// Replaces the set of ready replicas. A replica that stays (same id and address) keeps
    /// its figures and connections; one left out gets no new requests, and the ones it has
    /// run to their end (see [`Balancer::wait_drained`]). Requests waiting for a replica
    /// are woken.
    pub fn set_ready(&self, upstreams: Vec<Upstream>) {
        let Ok(mut known) = self.shared.known.lock() else {
            return;
        };
        let mut set: Vec<Arc<Slot>> = Vec::with_capacity(upstreams.len());
        for up in upstreams {
            if set.iter().any(|s| s.upstream.id == up.id) {
                continue;
            }
            let slot = match known.get(&up.id) {
                Some(slot) if slot.upstream == up => slot.clone(),
                _ => Arc::new(Slot::new(up.clone())),
            };
            known.insert(up.id.clone(), slot.clone());
            set.push(slot);
        }
        known.retain(|_, slot| slot.in_flight() > 0 || set.iter().any(|s| Arc::ptr_eq(s, slot)));
        self.shared.ready.send_replace(Arc::from(set));
    }

    /// The replicas requests go to now.
    pub fn ready(&self) -> Vec<Upstream> {
        self.shared
            .ready_set()
            .iter()
            .map(|s| s.upstream.clone())
            .collect()
    }

    /// Figures of every ready or draining replica, ordered by id.
    pub fn stats(&self) -> Vec<UpstreamStats> {
        let ready = self.shared.ready_set();
        let Ok(known) = self.shared.known.lock() else {
            return Vec::new();
        };
        let mut stats: Vec<UpstreamStats> = known
            .values()
            .filter(|slot| {
                let is_ready = ready.iter().any(|s| Arc::ptr_eq(s, slot));
                is_ready || slot.in_flight() > 0
            })
            .map(|slot| UpstreamStats {
                upstream: slot.upstream.clone(),
                ready: ready.iter().any(|s| Arc::ptr_eq(s, slot)),
                in_flight: slot.in_flight(),
                requests: slot.requests(),
                connect_failures: slot.connect_failures(),
            })
            .collect();
        stats.sort_by(|a, b| a.upstream.id.cmp(&b.upstream.id));
        stats
    }

    /// Requests in flight on the replica `id` (0 for one the balancer does not know).
    pub fn in_flight(&self, id: &str) -> usize {
        self.shared.slot(id).map_or(0, |s| s.in_flight())
    }

    /// Waits until nothing is in flight on replica `id`, at most `timeout`; true if drained.
    /// Take the replica out of the ready set first, or new requests keep arriving.
    pub async fn wait_drained(&self, id: &str, timeout: Duration) -> bool {
        let Some(slot) = self.shared.slot(id) else {
            return true;
        };
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = slot.drained.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if slot.in_flight() == 0 {
                return true;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return slot.in_flight() == 0;
            }
        }
    }

    /// Takes replica `id` out of the ready set and waits until its requests are done (at
    /// most `timeout`; true if drained): what scaling down and updates do before stopping it.
    pub async fn drain(&self, id: &str, timeout: Duration) -> bool {
        let keep: Vec<Upstream> = self.ready().into_iter().filter(|u| u.id != id).collect();
        self.set_ready(keep);
        self.wait_drained(id, timeout).await
    }

    /// Requests per second over the last 60 complete seconds (the autoscaler's input).
    pub fn qps(&self) -> f64 {
        self.shared.rate.qps()
    }

    /// Requests per second over the last `secs` complete seconds (1 to 60): the
    /// autoscaler's input where a shorter window is asked for (tests).
    pub fn qps_over(&self, secs: u64) -> f64 {
        self.shared.rate.qps_over(secs)
    }

    /// Requests that arrived in the last 60 complete seconds.
    pub fn requests_last_minute(&self) -> u64 {
        self.shared.rate.last_window()
    }

    /// Requests waiting for a ready replica now.
    pub fn waiting(&self) -> usize {
        *self.shared.waiting.borrow()
    }

    /// A receiver that changes whenever the number of waiting requests does: a service
    /// scaled to zero learns here that its first request arrived.
    pub fn watch_waiting(&self) -> watch::Receiver<usize> {
        self.shared.waiting.subscribe()
    }

    /// Stops accepting connections.
    pub fn shutdown(&self) {
        self.accept.abort();
    }
}

impl Drop for Balancer {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder.http1().timer(TokioTimer::new());
    builder.http2().timer(TokioTimer::new());
    let builder = Arc::new(builder);
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::warn!("load balancer accept: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let shared = shared.clone();
        let builder = builder.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let shared = shared.clone();
                async move { Ok::<_, Infallible>(proxy::handle(shared, req, peer).await) }
            });
            if let Err(e) = builder
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                tracing::debug!("load balancer connection from {peer}: {e}");
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn up(id: &str, port: u16) -> Upstream {
        Upstream {
            id: id.into(),
            addr: format!("127.0.0.1:{port}"),
            version: "1".into(),
        }
    }

    #[tokio::test]
    async fn set_ready_keeps_figures_of_staying_replicas_and_lists_draining_ones() {
        let lb = Balancer::bind("127.0.0.1:0", Config::default())
            .await
            .expect("bind");
        lb.set_ready(vec![up("a", 1), up("b", 2), up("a", 3)]);
        // A repeated id counts once, the first wins.
        assert_eq!(lb.ready(), vec![up("a", 1), up("b", 2)]);
        let a = lb.shared.slot("a").expect("a");
        let claim = pool::InFlight::new(a.clone());
        lb.set_ready(vec![up("b", 2), up("c", 4)]);
        let stats = lb.stats();
        let ids: Vec<_> = stats
            .iter()
            .map(|s| (s.upstream.id.as_str(), s.ready, s.in_flight))
            .collect();
        assert_eq!(ids, [("a", false, 1), ("b", true, 0), ("c", true, 0)]);
        assert!(!lb.wait_drained("a", Duration::from_millis(50)).await);
        let waiter = tokio::spawn({
            let slot = a.clone();
            async move {
                let n = slot.drained.notified();
                tokio::pin!(n);
                n.as_mut().enable();
                if slot.in_flight() > 0 {
                    n.await;
                }
            }
        });
        drop(claim);
        waiter.await.expect("woken when drained");
        assert!(lb.wait_drained("a", Duration::from_millis(50)).await);
        // Drained and not ready: forgotten at the next change.
        lb.set_ready(vec![up("b", 2)]);
        assert_eq!(lb.stats().len(), 1);
        assert_eq!(lb.in_flight("a"), 0);
        // Same id, new address: a new replica, figures start over.
        let b = lb.shared.slot("b").expect("b");
        let _ = pool::InFlight::new(b.clone());
        lb.set_ready(vec![up("b", 5)]);
        assert_eq!(
            lb.stats().iter().find(|s| s.ready).map(|s| s.requests),
            Some(0)
        );
        assert_eq!(Policy::parse("round_robin"), Some(Policy::RoundRobin));
        assert_eq!(
            Policy::parse(Policy::LeastLoad.as_str()),
            Some(Policy::LeastLoad)
        );
        assert_eq!(Policy::parse("random"), None);
    }
}
