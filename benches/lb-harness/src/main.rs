//! Runs skyform's load balancer (src/serve/) standalone over fixed replicas:
//!
//!     lb-harness --listen 127.0.0.1:8080 --upstream 127.0.0.1:9001 --upstream 127.0.0.1:9002 \
//!                [--policy least_load|round_robin] [--threads N]
//!
//! Used by scripts/bench-lb.sh; runs until killed.

#[path = "../../../src/serve/mod.rs"]
#[allow(dead_code, unused_imports)]
mod serve;

use std::time::Duration;

fn usage() -> ! {
    eprintln!(
        "usage: lb-harness --listen HOST:PORT --upstream HOST:PORT... [--policy least_load|round_robin] [--threads N]"
    );
    std::process::exit(2)
}

fn main() {
    let mut listen = None;
    let mut upstreams = Vec::new();
    let mut policy = serve::Policy::LeastLoad;
    let mut threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let value = args.next().unwrap_or_else(|| usage());
        match arg.as_str() {
            "--listen" => listen = Some(value),
            "--upstream" => upstreams.push(value),
            "--policy" => policy = serve::Policy::parse(&value).unwrap_or_else(|| usage()),
            "--threads" => threads = value.parse().unwrap_or_else(|_| usage()),
            _ => usage(),
        }
    }
    let (Some(listen), false) = (listen, upstreams.is_empty()) else {
        usage()
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .enable_all()
        .build()
        .unwrap_or_else(|e| {
            eprintln!("lb-harness: {e}");
            std::process::exit(1)
        });
    runtime.block_on(async move {
        let config = serve::Config {
            policy,
            queue_timeout: Duration::from_secs(5),
            ..serve::Config::default()
        };
        let lb = match serve::Balancer::bind(listen.as_str(), config).await {
            Ok(lb) => lb,
            Err(e) => {
                eprintln!("lb-harness: listen on {listen}: {e}");
                std::process::exit(1)
            }
        };
        let ready = upstreams
            .iter()
            .enumerate()
            .map(|(i, addr)| serve::Upstream {
                id: format!("r{i}"),
                addr: addr.clone(),
                version: "bench".into(),
            })
            .collect();
        lb.set_ready(ready);
        println!("listening {}", lb.local_addr());
        std::future::pending::<()>().await;
    });
}
