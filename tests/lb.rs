//! The load balancer (`skyform::serve`) over real HTTP replicas: `testdata/services/replica.py`
//! processes on loopback, load generated in-process, bounded in count and time.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::{http1, http2};
use hyper::{Request, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use skyform::serve::{Balancer, Config, Policy, Upstream};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};

/// One replica process, killed when dropped.
struct Replica {
    child: Child,
    upstream: Upstream,
}

impl Replica {
    async fn start(id: &str, version: &str) -> Replica {
        Replica::start_with(id, version, &[]).await
    }

    async fn start_with(id: &str, version: &str, extra: &[&str]) -> Replica {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/testdata/services/replica.py");
        let mut child = Command::new("python3")
            .args([script, "--port", "0", "--version", version])
            .args(extra)
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("python3 runs the test replica");
        let stdout = child.stdout.take().expect("stdout");
        let mut lines = BufReader::new(stdout).lines();
        let line = tokio::time::timeout(Duration::from_secs(10), lines.next_line())
            .await
            .expect("replica starts within 10 s")
            .expect("read replica stdout")
            .expect("replica prints its address");
        let addr = line
            .strip_prefix("listening ")
            .expect("listening line")
            .to_string();
        let upstream = Upstream {
            id: id.into(),
            addr,
            version: version.into(),
        };
        Replica { child, upstream }
    }

    fn kill(&mut self) {
        self.child.start_kill().expect("kill replica");
    }
}

fn config(policy: Policy) -> Config {
    Config {
        policy,
        queue_timeout: Duration::from_secs(5),
        ..Config::default()
    }
}

async fn balancer(config: Config) -> Balancer {
    Balancer::bind("127.0.0.1:0", config)
        .await
        .expect("bind balancer")
}

type H1 = http1::SendRequest<Full<Bytes>>;

async fn h1(addr: SocketAddr) -> H1 {
    let stream = TcpStream::connect(addr).await.expect("connect to balancer");
    let (sender, conn) = http1::handshake(TokioIo::new(stream))
        .await
        .expect("handshake");
    tokio::spawn(conn);
    sender
}

fn request(addr: SocketAddr, method: &str, path: &str, body: &str) -> Request<Full<Bytes>> {
    Request::builder()
        .method(method)
        .uri(path)
        .header("host", addr.to_string())
        .body(Full::new(Bytes::from(body.to_string())))
        .expect("request")
}

/// Status and body of one request on `client`, or None if the connection failed.
async fn call(client: &mut H1, req: Request<Full<Bytes>>) -> Option<(StatusCode, String)> {
    client.ready().await.ok()?;
    let resp = client.send_request(req).await.ok()?;
    let status = resp.status();
    let body = resp.into_body().collect().await.ok()?.to_bytes();
    Some((status, String::from_utf8_lossy(&body).into_owned()))
}

async fn get(addr: SocketAddr, path: &str) -> Option<(StatusCode, String)> {
    call(&mut h1(addr).await, request(addr, "GET", path, "")).await
}

/// `workers` keep-alive clients sending GET `path` until `max` requests were sent or `time`
/// passed; every answer, with 0 for a request whose connection broke.
async fn load(
    addr: SocketAddr,
    workers: usize,
    max: usize,
    time: Duration,
    path: &str,
) -> Vec<(u16, String)> {
    let sent = Arc::new(AtomicUsize::new(0));
    let until = Instant::now() + time;
    let tasks: Vec<_> = (0..workers)
        .map(|_| {
            let sent = sent.clone();
            let path = path.to_string();
            tokio::spawn(async move {
                let mut out = Vec::new();
                let mut client = h1(addr).await;
                while Instant::now() < until && sent.fetch_add(1, Ordering::Relaxed) < max {
                    match call(&mut client, request(addr, "GET", &path, "")).await {
                        Some((status, body)) => out.push((status.as_u16(), body)),
                        None => {
                            out.push((0, String::new()));
                            client = h1(addr).await;
                        }
                    }
                }
                out
            })
        })
        .collect();
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.expect("load worker"));
    }
    all
}

fn versions(answers: &[(u16, String)]) -> HashMap<String, usize> {
    let mut by = HashMap::new();
    for (_, body) in answers {
        let v = body.split_whitespace().next().unwrap_or("").to_string();
        *by.entry(v).or_insert(0) += 1;
    }
    by
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_serve_through_the_endpoint_under_both_policies() {
    let a = Replica::start("a", "v1").await;
    let b = Replica::start("b", "v2").await;
    for policy in [Policy::RoundRobin, Policy::LeastLoad] {
        let lb = balancer(config(policy)).await;
        lb.set_ready(vec![a.upstream.clone(), b.upstream.clone()]);
        let answers = load(lb.local_addr(), 4, 200, Duration::from_secs(20), "/hello").await;
        assert_eq!(answers.len(), 200);
        assert!(
            answers.iter().all(|(s, _)| *s == 200),
            "{policy:?}: {answers:?}"
        );
        let by = versions(&answers);
        let (v1, v2) = (
            by.get("version=v1").copied().unwrap_or(0),
            by.get("version=v2").copied().unwrap_or(0),
        );
        assert_eq!(v1 + v2, 200, "{by:?}");
        // Round robin alternates; least load spreads ties and the load evenly enough.
        let floor = if policy == Policy::RoundRobin { 90 } else { 40 };
        assert!(v1 >= floor && v2 >= floor, "{policy:?} distribution {by:?}");
        let stats = lb.stats();
        assert_eq!(stats.iter().map(|s| s.requests).sum::<u64>(), 200);
        assert!(
            stats.iter().all(|s| s.in_flight == 0 && s.ready),
            "{stats:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_body_reaches_the_replica_and_errors_pass_through() {
    let a = Replica::start("a", "v1").await;
    let lb = balancer(config(Policy::LeastLoad)).await;
    lb.set_ready(vec![a.upstream.clone()]);
    let addr = lb.local_addr();
    let mut client = h1(addr).await;
    let body = "x".repeat(100_000);
    let (status, echoed) = call(&mut client, request(addr, "POST", "/echo", &body))
        .await
        .expect("echo");
    assert_eq!((status, echoed.len()), (StatusCode::OK, body.len()));
    // A replica's own error is its answer, not a reason to try elsewhere.
    call(&mut client, request(addr, "POST", "/admin/fail", ""))
        .await
        .expect("fail");
    let (status, text) = call(&mut client, request(addr, "GET", "/", ""))
        .await
        .expect("get");
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    assert!(text.contains("failing"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_killed_under_load_fails_no_request() {
    let mut a = Replica::start("a", "v1").await;
    let b = Replica::start("b", "v2").await;
    let lb = balancer(config(Policy::LeastLoad)).await;
    // The owner does not take the dead replica out: the balancer alone must cope.
    lb.set_ready(vec![a.upstream.clone(), b.upstream.clone()]);
    let addr = lb.local_addr();
    let load =
        tokio::spawn(
            async move { load(addr, 6, 3_000, Duration::from_secs(4), "/slow?ms=5").await },
        );
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    let before = lb.stats();
    a.kill();
    let answers = load.await.expect("load");
    let failed: Vec<_> = answers.iter().filter(|(s, _)| *s != 200).collect();
    assert!(
        failed.is_empty(),
        "{} of {} failed: {:?}",
        failed.len(),
        answers.len(),
        &failed[..failed.len().min(5)]
    );
    let by = versions(&answers);
    assert!(
        by.get("version=v1").copied().unwrap_or(0) > 0,
        "a served before dying: {by:?}"
    );
    let after = lb.stats();
    let a_after = after
        .iter()
        .find(|s| s.upstream.id == "a")
        .expect("a still listed");
    let b_before = before.iter().find(|s| s.upstream.id == "b").expect("b");
    let b_after = after.iter().find(|s| s.upstream.id == "b").expect("b");
    assert!(a_after.connect_failures > 0, "{after:?}");
    assert!(
        b_after.requests > b_before.requests + 50,
        "b took over: {before:?} {after:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_streaming_response_passes_through_as_it_comes() {
    let a = Replica::start("a", "v1").await;
    let lb = balancer(config(Policy::LeastLoad)).await;
    lb.set_ready(vec![a.upstream.clone()]);
    let addr = lb.local_addr();
    let mut client = h1(addr).await;
    let start = Instant::now();
    let resp = client
        .send_request(request(addr, "GET", "/stream?chunks=5&ms=300", ""))
        .await
        .expect("stream");
    assert_eq!(resp.status(), StatusCode::OK);
    let mut body = resp.into_body();
    let mut arrivals = Vec::new();
    let mut text = String::new();
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame.expect("frame").into_data() {
            arrivals.push(start.elapsed());
            text.push_str(&String::from_utf8_lossy(&data));
        }
    }
    assert_eq!(text.lines().count(), 5, "{text}");
    // The first chunk came long before the last was written (1.2 s later).
    assert!(arrivals[0] < Duration::from_millis(700), "{arrivals:?}");
    assert!(
        *arrivals.last().expect("chunks") >= Duration::from_millis(1_100),
        "{arrivals:?}"
    );
    assert!(arrivals.len() >= 4, "chunks arrived together: {arrivals:?}");
    // The in-flight count covers the whole stream, and ends with it.
    assert_eq!(lb.in_flight("a"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_no_ready_replica_a_request_waits_for_one() {
    let lb = balancer(Config {
        queue_timeout: Duration::from_secs(10),
        ..config(Policy::LeastLoad)
    })
    .await;
    let addr = lb.local_addr();
    let mut waiting = lb.watch_waiting();
    let start = Instant::now();
    let request = tokio::spawn(async move { get(addr, "/wake").await });
    // The owner learns that a request waits (a service scaled to zero starts a replica).
    tokio::time::timeout(Duration::from_secs(5), waiting.wait_for(|n| *n == 1))
        .await
        .expect("the waiting request is signalled")
        .expect("watch");
    assert_eq!(lb.waiting(), 1);
    let a = Replica::start("a", "v1").await;
    lb.set_ready(vec![a.upstream.clone()]);
    let (status, body) = request.await.expect("task").expect("answer");
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(body.starts_with("version=v1"), "{body}");
    assert!(start.elapsed() < Duration::from_secs(10));
    assert_eq!(lb.waiting(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_no_replica_within_the_bound_a_request_gets_503() {
    let lb = balancer(Config {
        queue_timeout: Duration::from_millis(400),
        ..config(Policy::RoundRobin)
    })
    .await;
    let start = Instant::now();
    let (status, body) = get(lb.local_addr(), "/").await.expect("answer");
    let waited = start.elapsed();
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(body.starts_with("no ready replica"), "{body}");
    assert!(
        waited >= Duration::from_millis(400) && waited < Duration::from_secs(3),
        "{waited:?}"
    );
    assert_eq!(lb.waiting(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drained_replica_finishes_its_requests_and_gets_no_new_ones() {
    let a = Replica::start("a", "v1").await;
    let b = Replica::start("b", "v2").await;
    let lb = Arc::new(balancer(config(Policy::LeastLoad)).await);
    lb.set_ready(vec![a.upstream.clone()]);
    let addr = lb.local_addr();
    let slow: Vec<_> = (0..3)
        .map(|_| tokio::spawn(async move { get(addr, "/slow?ms=1000").await }))
        .collect();
    let until = Instant::now() + Duration::from_secs(5);
    while lb.in_flight("a") < 3 && Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(lb.in_flight("a"), 3);
    lb.set_ready(vec![a.upstream.clone(), b.upstream.clone()]);
    let drain = {
        let lb = lb.clone();
        tokio::spawn(async move { lb.drain("a", Duration::from_secs(5)).await })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    // Out of the ready set, still counted while its requests run; new ones go to b.
    assert_eq!(
        lb.ready().iter().map(|u| u.id.as_str()).collect::<Vec<_>>(),
        ["b"]
    );
    assert_eq!(lb.in_flight("a"), 3);
    let (_, body) = get(addr, "/").await.expect("answer");
    assert!(body.starts_with("version=v2"), "{body}");
    let drained_at = Instant::now();
    assert!(drain.await.expect("drain"), "a drained");
    assert_eq!(lb.in_flight("a"), 0);
    for s in slow {
        let (status, body) = s.await.expect("task").expect("answer");
        assert_eq!(status, StatusCode::OK);
        assert!(body.starts_with("version=v1"), "{body}");
    }
    assert!(drained_at.elapsed() < Duration::from_secs(2));
    assert!(
        lb.stats().iter().all(|s| s.upstream.id == "b"),
        "{:?}",
        lb.stats()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qps_counts_a_known_load() {
    let a = Replica::start("a", "v1").await;
    let lb = balancer(config(Policy::LeastLoad)).await;
    lb.set_ready(vec![a.upstream.clone()]);
    let answers = load(lb.local_addr(), 4, 240, Duration::from_secs(20), "/").await;
    assert_eq!(answers.len(), 240);
    // The figure covers complete seconds: once the last request's second is over, all count.
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    assert_eq!(lb.requests_last_minute(), 240);
    assert!((lb.qps() - 4.0).abs() < 1e-9, "{}", lb.qps());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_clients_are_served_over_h2c() {
    let a = Replica::start("a", "v1").await;
    let b = Replica::start("b", "v2").await;
    let lb = balancer(config(Policy::RoundRobin)).await;
    lb.set_ready(vec![a.upstream.clone(), b.upstream.clone()]);
    let addr = lb.local_addr();
    let stream = TcpStream::connect(addr).await.expect("connect");
    let (sender, conn) =
        http2::handshake::<_, _, Full<Bytes>>(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .expect("h2c");
    tokio::spawn(conn);
    // Twenty concurrent streams on one connection.
    let streams: Vec<_> = (0..20)
        .map(|i| {
            let mut sender = sender.clone();
            tokio::spawn(async move {
                let req = Request::builder()
                    .uri(format!("http://{addr}/h2/{i}"))
                    .body(Full::new(Bytes::new()))
                    .expect("request");
                let resp = sender.send_request(req).await.expect("h2 response");
                assert_eq!(resp.version(), hyper::Version::HTTP_2);
                let status = resp.status().as_u16();
                let body = resp.into_body().collect().await.expect("body").to_bytes();
                (status, String::from_utf8_lossy(&body).into_owned())
            })
        })
        .collect();
    let mut answers = Vec::new();
    for s in streams {
        answers.push(s.await.expect("stream"));
    }
    assert!(
        answers
            .iter()
            .all(|(s, b)| *s == 200 && b.contains("path=/h2/")),
        "{answers:?}"
    );
    let by = versions(&answers);
    assert_eq!(by.len(), 2, "{by:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_a_replica_dropped_is_sent_again_only_when_safe() {
    let crashing = Replica::start_with("a", "v1", &["--crash-on", "/boom"]).await;
    let b = Replica::start("b", "v2").await;
    // Round robin starts with the first replica: the crashing one.
    let lb = balancer(config(Policy::RoundRobin)).await;
    lb.set_ready(vec![crashing.upstream.clone(), b.upstream.clone()]);
    let addr = lb.local_addr();
    // A request with a body went out to a replica that died holding it: never sent twice.
    let (status, text) = get_or_post(addr, "POST", "/boom", "payload").await;
    assert_eq!(status, StatusCode::BAD_GATEWAY, "{text}");
    assert!(text.starts_with("replica a failed"), "{text}");
    let b_requests = |lb: &Balancer| {
        lb.stats()
            .iter()
            .find(|s| s.upstream.id == "b")
            .map(|s| s.requests)
    };
    assert_eq!(
        b_requests(&lb),
        Some(0),
        "the POST reached b: {:?}",
        lb.stats()
    );

    // A GET without a body is safe to repeat: the next replica answers it.
    let crashing = Replica::start_with("c", "v3", &["--crash-on", "/boom"]).await;
    let lb = balancer(config(Policy::RoundRobin)).await;
    lb.set_ready(vec![crashing.upstream.clone(), b.upstream.clone()]);
    let (status, text) = get_or_post(lb.local_addr(), "GET", "/boom", "").await;
    assert_eq!(status, StatusCode::OK, "{text}");
    assert!(text.starts_with("version=v2"), "{text}");
    let stats = lb.stats();
    assert!(
        stats
            .iter()
            .all(|s| s.requests == 1 && s.connect_failures == 0),
        "{stats:?}"
    );
}

async fn get_or_post(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: &str,
) -> (StatusCode, String) {
    call(&mut h1(addr).await, request(addr, method, path, body))
        .await
        .expect("an answer")
}
