//! Services on this machine, end to end: `skyform apply` hands a service to the controller
//! (a real background process), which runs its replicas (`testdata/services/replica.py`, a
//! small HTTP server that reports its version and can be told to fail) on ports of their
//! own, probes them, and serves them through its load balancer at the endpoint. The load is
//! made here, bounded in count and time, to loopback only.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use support::{Workdir, free_port};

/// A configuration directory whose controller decides in test time.
fn workdir(config: &str) -> Workdir {
    Workdir::with_files(&[("main.sky.hcl", config)])
        .env("SKYFORM_CONTROLLER_TICK_MS", "200")
        .env("SKYFORM_CONTROLLER_GRACE_MS", "400")
        .env("SKYFORM_SERVE_PROBE_MS", "200")
        .env("SKYFORM_SERVE_PROBE_BUDGET_MS", "1500")
        .env("SKYFORM_SERVE_DRAIN_MS", "5000")
        .env("SKYFORM_SERVE_QUEUE_MS", "30000")
}

fn replica_py() -> String {
    format!(
        "{}/testdata/services/replica.py",
        env!("CARGO_MANIFEST_DIR")
    )
}

/// One HTTP/1.1 request over a new connection: the status and the body.
fn request(port: u16, method: &str, path: &str) -> std::io::Result<(u16, String)> {
    let text = support::http(port, method, path)?;
    let code = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text
        .split("\r\n\r\n")
        .nth(1)
        .unwrap_or_default()
        .to_string();
    Ok((code, body))
}

/// Requests on a few threads until stopped: how many, and those that did not answer 200.
struct Load {
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicUsize>,
    failed: Arc<std::sync::Mutex<Vec<String>>>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Load {
    fn start(port: u16, threads: usize, pause: Duration) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(AtomicUsize::new(0));
        let failed = Arc::new(std::sync::Mutex::new(Vec::new()));
        let threads = (0..threads)
            .map(|_| {
                let (stop, sent, failed) = (stop.clone(), sent.clone(), failed.clone());
                std::thread::spawn(move || {
                    // Bounded: at most 10,000 requests or 2 minutes per thread.
                    let end = Instant::now() + Duration::from_secs(120);
                    for _ in 0..10_000 {
                        if stop.load(Ordering::Relaxed) || Instant::now() > end {
                            break;
                        }
                        sent.fetch_add(1, Ordering::Relaxed);
                        match request(port, "GET", "/hello") {
                            Ok((200, _)) => {}
                            other => failed.lock().unwrap().push(format!("{other:?}")),
                        }
                        std::thread::sleep(pause);
                    }
                })
            })
            .collect();
        Load {
            stop,
            sent,
            failed,
            threads,
        }
    }

    /// Stops it, asserting that at least `least` requests were sent and none failed.
    fn finish_without_failures(self, least: usize) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads {
            let _ = t.join();
        }
        let failed = self.failed.lock().unwrap().clone();
        let sent = self.sent.load(Ordering::Relaxed);
        assert!(sent >= least, "the load ran ({sent} requests)");
        assert!(
            failed.is_empty(),
            "{} of {sent} failed: {:?}",
            failed.len(),
            &failed[..failed.len().min(5)]
        );
    }
}

use support::replicas;

/// Processes whose command line contains `needle`.
fn processes_with(needle: &str) -> Vec<u32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .map(|c| {
                    let mut c = String::from_utf8_lossy(&c).replace('\0', " ");
                    c.push(' ');
                    c.contains(needle)
                })
                .unwrap_or(false)
        })
        .collect()
}

fn ready(row: &serde_json::Value) -> usize {
    replicas(row).iter().filter(|r| r.2 == "READY").count()
}

fn service(port: u16, version: &str, replicas: u32, extra: &str) -> String {
    format!(
        r#"service "web" {{
  run = "python3 {} --port $PORT --version {version}"
  resources {{
    ports = [{port}]
  }}
  readiness_probe {{
    path                  = "/ready"
    initial_delay_seconds = 8
  }}
  replica_policy {{
    min_replicas = {replicas}
  }}
{extra}}}
"#,
        replica_py()
    )
}

#[test]
fn two_replicas_serve_through_the_endpoint_and_a_killed_one_is_replaced_under_load() {
    let port = free_port();
    let w = workdir(&service(port, "v1", 2, ""));
    let out = w.ok(&["apply", "-auto-approve"]);
    assert!(out.contains("Apply complete"), "{out}");
    let row = w.wait_until("service.web", "two ready replicas", |r| ready(r) == 2);
    assert_eq!(row["status"], "READY", "{row}");
    assert_eq!(row["endpoint"], format!("http://127.0.0.1:{port}"), "{row}");
    // Both replicas answer through the endpoint, each on a port of its own.
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..40 {
        let (code, body) = request(port, "GET", "/who").unwrap();
        assert_eq!(code, 200, "{body}");
        assert!(body.contains("version=v1"), "{body}");
        seen.insert(
            body.split("port=")
                .nth(1)
                .unwrap_or("")
                .split(' ')
                .next()
                .unwrap_or("")
                .to_string(),
        );
    }
    assert_eq!(seen.len(), 2, "both replicas served: {seen:?}");
    let logs = w.ok(&["logs", "service.web"]);
    assert_eq!(
        logs.matches("listening 127.0.0.1:").count(),
        2,
        "each replica's log: {logs}"
    );
    // One replica dies under load: no request fails, and another takes its place.
    let load = Load::start(port, 4, Duration::from_millis(5));
    std::thread::sleep(Duration::from_millis(500));
    let victim = seen.iter().next().unwrap().parse::<u16>().unwrap();
    let pids = processes_with(&format!("--port {victim} "));
    assert!(
        !pids.is_empty(),
        "the replica on port {victim} has a process"
    );
    for p in pids {
        let _ = std::process::Command::new("kill")
            .args(["-9", &p.to_string()])
            .status();
    }
    let row = w.wait_until("service.web", "a replacement, ready", |r| {
        ready(r) == 2 && replicas(r).iter().any(|x| x.0 >= 3)
    });
    load.finish_without_failures(100);
    assert!(
        replicas(&row).iter().all(|r| r.0 != 1 || r.2 != "READY")
            || replicas(&row).iter().all(|r| r.0 != 2 || r.2 != "READY"),
        "the dead replica is not shown ready: {row}"
    );
    w.ok(&["destroy", "-auto-approve"]);
    assert!(request(port, "GET", "/").is_err(), "the endpoint is gone");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !w.processes().is_empty() {
        assert!(
            Instant::now() < deadline,
            "replicas stopped: {:?}",
            w.processes()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn a_rolling_update_drops_no_request_and_a_broken_version_is_rolled_back() {
    let port = free_port();
    let w = workdir(&service(port, "v1", 2, ""));
    w.ok(&["apply", "-auto-approve"]);
    w.wait_until("service.web", "two ready replicas", |r| ready(r) == 2);
    let load = Load::start(port, 3, Duration::from_millis(5));
    // A new version: new replicas come up, old ones drain as they become ready.
    w.write_config(&service(port, "v2", 2, ""));
    let plan = w.ok(&["plan"]);
    assert!(
        plan.contains("service.web will be updated in place"),
        "{plan}"
    );
    w.ok(&["apply", "-auto-approve"]);
    let row = w.wait_until("service.web", "only version 2, ready", |r| {
        let all = replicas(r);
        ready(r) == 2 && all.iter().all(|x| x.1 == 2)
    });
    assert_eq!(row["version"], 2, "{row}");
    for _ in 0..20 {
        let (code, body) = request(port, "GET", "/v").unwrap();
        assert_eq!((code, body.contains("version=v2")), (200, true), "{body}");
    }
    // A version that never becomes ready (a typo in its command): rolled back, the old
    // replicas serving on.
    w.write_config(&service(port, "v3", 2, "").replace(
        "--port $PORT --version v3",
        "--port $PORT --version v3 --no-such-flag",
    ));
    w.ok(&["apply", "-auto-approve"]);
    let row = w.wait_until("service.web", "a rollback to version 2", |r| {
        r["reason"]
            .as_str()
            .is_some_and(|s| s.contains("rolled back to version 2"))
            && replicas(r).iter().all(|x| x.1 == 2 || x.2 != "READY")
    });
    assert_eq!(ready(&row), 2, "{row}");
    load.finish_without_failures(100);
    let (code, body) = request(port, "GET", "/after").unwrap();
    assert_eq!((code, body.contains("version=v2")), (200, true), "{body}");
    // With its controller stopped, nothing answers at the endpoint, and status says so.
    w.ok(&["controller", "stop"]);
    assert_eq!(w.status_of("service.web"), "CONTROLLER_FAILED");
    assert!(request(port, "GET", "/").is_err(), "the endpoint is down");
    w.ok(&["controller", "start"]);
    w.wait_for("service.web", "READY");
    w.ok(&["destroy", "-auto-approve"]);
}

#[test]
fn a_service_scaled_to_zero_wakes_on_its_first_request_and_follows_the_load() {
    let port = free_port();
    let config = format!(
        r#"service "web" {{
  run = "python3 {} --port $PORT --version v1"
  resources {{
    ports = [{port}]
  }}
  readiness_probe = "/"
  replica_policy {{
    min_replicas            = 0
    max_replicas            = 2
    target_qps_per_replica  = 5
    upscale_delay_seconds   = 1
    downscale_delay_seconds = 3
  }}
}}
"#,
        replica_py()
    );
    let w = workdir(&config).env("SKYFORM_SERVE_QPS_WINDOW_MS", "3000");
    w.ok(&["apply", "-auto-approve"]);
    let row = w.wait_for("service.web", "NO_REPLICA");
    assert!(replicas(&row).is_empty(), "no replica runs at zero: {row}");
    // The first request is held until a replica is up, and then answered.
    let began = Instant::now();
    let (code, body) = request(port, "GET", "/first").unwrap();
    assert_eq!((code, body.contains("version=v1")), (200, true), "{body}");
    assert!(began.elapsed() < Duration::from_secs(30));
    // Load above one replica's target: a second one after the upscale delay.
    let load = Load::start(port, 4, Duration::from_millis(5));
    w.wait_until("service.web", "two ready replicas under load", |r| {
        ready(r) == 2
    });
    load.finish_without_failures(1);
    // The load gone: back to zero after the downscale delay, each replica drained.
    let row = w.wait_until("service.web", "no replica left", |r| {
        replicas(r).is_empty() && r["status"] == "NO_REPLICA"
    });
    assert_eq!(row["qps"], 0.0, "{row}");
    w.ok(&["destroy", "-auto-approve"]);
}

#[test]
fn a_blue_green_update_moves_all_traffic_at_once() {
    let port = free_port();
    let config = |version: &str| service(port, version, 2, "  update_mode = \"blue_green\"\n");
    let w = workdir(&config("v1"));
    w.ok(&["apply", "-auto-approve"]);
    w.wait_until("service.web", "two ready replicas", |r| ready(r) == 2);
    w.write_config(&config("v2"));
    w.ok(&["apply", "-auto-approve"]);
    // Requests one after another: version 1 until the switch, then version 2 only.
    let mut seen = Vec::new();
    let began = Instant::now();
    loop {
        let (code, body) = request(port, "GET", "/bg").unwrap();
        assert_eq!(code, 200, "{body}");
        seen.push(if body.contains("version=v2") { 2 } else { 1 });
        if seen.len() % 20 == 0 && support::all_ready_at(&w.status_row("service.web"), 2) {
            break;
        }
        assert!(
            began.elapsed() < Duration::from_secs(60),
            "the switch did not come"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let switch = seen.iter().position(|v| *v == 2).unwrap_or(seen.len());
    assert!(
        seen[switch..].iter().all(|v| *v == 2),
        "no request went back to version 1 after the switch: {seen:?}"
    );
    assert!(switch > 0, "version 1 served until the switch: {seen:?}");
    w.ok(&["destroy", "-auto-approve"]);
}
