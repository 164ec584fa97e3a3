//! The replicas behind the balancer: one `Slot` per upstream with its in-flight count, its
//! idle keep-alive connections and a short ejection after a failed connect; the choice of a
//! slot under each policy; and getting a connection to it.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::sync::Notify;

use super::proxy::ReqBody;
use super::{Policy, Upstream};

pub(crate) type Sender = http1::SendRequest<ReqBody>;

/// Idle connections kept per replica; more are closed when their response ends.
const MAX_IDLE: usize = 512;

/// A monotonic clock in milliseconds, so ejection deadlines fit in an atomic.
fn now_ms() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    EPOCH.get_or_init(Instant::now).elapsed().as_millis() as u64 + 1
}

#[derive(Debug)]
pub(crate) struct Slot {
    pub(crate) upstream: Upstream,
    in_flight: AtomicUsize,
    requests: AtomicU64,
    connect_failures: AtomicU64,
    ejected_until_ms: AtomicU64,
    idle: Mutex<Vec<Sender>>,
    /// Woken each time `in_flight` drops to zero (draining waits on it).
    pub(crate) drained: Notify,
}

impl Slot {
    pub(crate) fn new(upstream: Upstream) -> Self {
        Slot {
            upstream,
            in_flight: AtomicUsize::new(0),
            requests: AtomicU64::new(0),
            connect_failures: AtomicU64::new(0),
            ejected_until_ms: AtomicU64::new(0),
            idle: Mutex::new(Vec::new()),
            drained: Notify::new(),
        }
    }

    pub(crate) fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Acquire)
    }

    pub(crate) fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    pub(crate) fn connect_failures(&self) -> u64 {
        self.connect_failures.load(Ordering::Relaxed)
    }

    fn ejected(&self, now: u64) -> bool {
        self.ejected_until_ms.load(Ordering::Relaxed) > now
    }

    /// A connect failed: skip this replica for a while, so that a dead replica the owner has
    /// not yet taken out (least_load would favour it: it has nothing in flight) does not cost
    /// every request a failed connect.
    pub(crate) fn eject(&self, for_: Duration) {
        self.connect_failures.fetch_add(1, Ordering::Relaxed);
        self.ejected_until_ms
            .store(now_ms() + for_.as_millis() as u64, Ordering::Relaxed);
        // Its idle connections are as dead as it is.
        if let Ok(mut idle) = self.idle.lock() {
            idle.clear();
        }
    }

    /// Hand back a connection whose response has ended, for the next request.
    pub(crate) fn put_idle(&self, sender: Sender) {
        if sender.is_closed() {
            return;
        }
        if let Ok(mut idle) = self.idle.lock()
            && idle.len() < MAX_IDLE
        {
            idle.push(sender);
        }
    }

    fn take_idle(&self) -> Option<Sender> {
        self.idle.lock().ok()?.pop()
    }

    /// A connection ready for one request: an idle one if any is still open, else a new one.
    /// Errors are connect failures: nothing of the request has been sent.
    pub(crate) async fn connection(&self, connect_timeout: Duration) -> std::io::Result<Sender> {
        while let Some(mut sender) = self.take_idle() {
            if sender.is_closed() {
                continue;
            }
            if sender.is_ready() {
                return Ok(sender);
            }
            // Its last response has just ended; the connection's task may not have noticed.
            if let Ok(Ok(())) = tokio::time::timeout(connect_timeout, sender.ready()).await {
                return Ok(sender);
            }
        }
        let addr = self.upstream.addr.as_str();
        let stream = tokio::time::timeout(connect_timeout, TcpStream::connect(addr))
            .await
            .map_err(|_| {
                std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out")
            })??;
        stream.set_nodelay(true)?;
        let (sender, conn) = http1::Builder::new()
            .handshake(TokioIo::new(stream))
            .await
            .map_err(std::io::Error::other)?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!("upstream connection ended: {e}");
            }
        });
        Ok(sender)
    }
}

/// One request's claim on a replica: counted in its in-flight figure until dropped, which
/// happens when the response body has been passed on in full (or the client went away).
#[derive(Debug)]
pub(crate) struct InFlight(pub(crate) Arc<Slot>);

impl InFlight {
    pub(crate) fn new(slot: Arc<Slot>) -> Self {
        slot.in_flight.fetch_add(1, Ordering::AcqRel);
        slot.requests.fetch_add(1, Ordering::Relaxed);
        InFlight(slot)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if self.0.in_flight.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.drained.notify_waiters();
        }
    }
}

/// A slot's identity within one request's list of tried replicas.
pub(crate) fn key(slot: &Arc<Slot>) -> usize {
    Arc::as_ptr(slot) as usize
}

/// Picks a replica for the next attempt of a request.
#[derive(Debug, Default)]
pub(crate) struct Picker {
    policy: Policy,
    next: AtomicUsize,
}

impl Picker {
    pub(crate) fn new(policy: Policy) -> Self {
        Picker {
            policy,
            next: AtomicUsize::new(0),
        }
    }

    /// The replica to try, skipping those this request already tried; replicas ejected after
    /// a failed connect are chosen only when nothing else is left.
    pub(crate) fn pick(&self, ready: &[Arc<Slot>], tried: &[usize]) -> Option<Arc<Slot>> {
        let n = ready.len();
        if n == 0 {
            return None;
        }
        // Both policies start from a rotating index: round robin by definition, least load
        // to spread ties (an idle service) evenly instead of always taking the first.
        let start = self.next.fetch_add(1, Ordering::Relaxed) % n;
        let now = now_ms();
        let candidates = || {
            (0..n)
                .map(move |i| &ready[(start + i) % n])
                .filter(|s| !tried.contains(&key(s)))
        };
        let choose = |healthy: bool| -> Option<&Arc<Slot>> {
            let mut eligible = candidates().filter(|s| s.ejected(now) != healthy);
            match self.policy {
                Policy::RoundRobin => eligible.next(),
                Policy::LeastLoad => {
                    let mut best: Option<&Arc<Slot>> = None;
                    for s in eligible {
                        if best.is_none_or(|b| s.in_flight() < b.in_flight()) {
                            best = Some(s);
                        }
                    }
                    best
                }
            }
        };
        choose(true).or_else(|| choose(false)).cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slots(n: usize) -> Vec<Arc<Slot>> {
        (0..n)
            .map(|i| {
                Arc::new(Slot::new(Upstream {
                    id: format!("r{i}"),
                    addr: format!("127.0.0.1:{}", 1000 + i),
                    version: "1".into(),
                }))
            })
            .collect()
    }

    #[test]
    fn round_robin_rotates() {
        let s = slots(3);
        let p = Picker::new(Policy::RoundRobin);
        let ids: Vec<_> = (0..6)
            .filter_map(|_| p.pick(&s, &[]))
            .map(|s| s.upstream.id.clone())
            .collect();
        assert_eq!(ids, ["r0", "r1", "r2", "r0", "r1", "r2"]);
    }

    #[test]
    fn least_load_takes_the_idlest_and_spreads_ties() {
        let s = slots(3);
        let p = Picker::new(Policy::LeastLoad);
        let _a = InFlight::new(s[0].clone());
        let _b = InFlight::new(s[0].clone());
        let _c = InFlight::new(s[1].clone());
        for _ in 0..5 {
            assert_eq!(
                p.pick(&s, &[]).map(|s| s.upstream.id.clone()).as_deref(),
                Some("r2")
            );
        }
        drop((_a, _b, _c));
        let mut seen: Vec<_> = (0..3)
            .filter_map(|_| p.pick(&s, &[]))
            .map(|s| s.upstream.id.clone())
            .collect();
        seen.sort();
        assert_eq!(seen, ["r0", "r1", "r2"]);
    }

    #[test]
    fn tried_and_ejected_replicas_come_last() {
        let s = slots(3);
        let p = Picker::new(Policy::LeastLoad);
        s[0].eject(Duration::from_secs(60));
        let tried = [key(&s[1])];
        for _ in 0..4 {
            assert_eq!(
                p.pick(&s, &tried).map(|s| s.upstream.id.clone()).as_deref(),
                Some("r2")
            );
        }
        let tried = [key(&s[1]), key(&s[2])];
        // Only the ejected one is left: better a try than a refusal.
        assert_eq!(
            p.pick(&s, &tried).map(|s| s.upstream.id.clone()).as_deref(),
            Some("r0")
        );
        let tried = [key(&s[0]), key(&s[1]), key(&s[2])];
        assert!(p.pick(&s, &tried).is_none());
    }

    #[test]
    fn in_flight_counts_down_and_wakes_drainers() {
        let s = slots(1);
        let g = InFlight::new(s[0].clone());
        assert_eq!(s[0].in_flight(), 1);
        assert_eq!(s[0].requests(), 1);
        drop(g);
        assert_eq!(s[0].in_flight(), 0);
    }
}
