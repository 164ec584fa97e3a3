//! What the controller costs while it watches many managed jobs: N managed jobs recorded in
//! state as apply records them (backend `managed`, a task id), a controller driven tick by
//! tick through the library, and an in-process backend that answers at once — so what is
//! measured is the controller's own work (its book, the state, its decisions), not a
//! cloud's. Prints the wall and CPU time of the first launch of all N (the launches recorded
//! in the book), of the tick where they are all seen running, of a steady tick, and of recovering a tenth of them; the book's
//! size and the process's peak memory. The figures go to docs/benchmarks.md.
//!
//! Run: `cargo bench --bench controller_scale` (release build). `SKYFORM_BENCH_JOBS=1000`
//! chooses N; `SKYFORM_BENCH_TICKS=20` the steady ticks measured; `SKYFORM_BENCH_DIR` where
//! the state goes (`/dev/shm` for a tmpfs: the book is written with fsync, as in use).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

use serde_json::json;
use skyform::controller::{Controller, Settings};
use skyform::engine::{Engine, Options, Quiet};
use skyform::model::{Address, ManagedJobSpec, Spec};
use skyform::optimizer::Offering;
use skyform::providers::{Created, Observed, Provider, ProviderError, Registry, Request};
use skyform::state::{ResourceState, State, Status};
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A cloud that answers at once: every create succeeds, every placement runs, except those
/// the bench marks gone (a preemption).
#[derive(Debug, Default)]
struct Fleet {
    gone: Mutex<BTreeSet<String>>,
    creates: AtomicUsize,
    refreshes: AtomicUsize,
    deletes: AtomicUsize,
}

fn id_of(res: &ResourceState) -> String {
    res.private["id"].as_str().unwrap_or("").to_string()
}

#[async_trait::async_trait]
impl Provider for Fleet {
    fn name(&self) -> &'static str {
        "aws"
    }
    /// Four regions, spot and on-demand, as a small catalog would give.
    async fn offerings(&self) -> Result<Vec<Offering>, ProviderError> {
        let mut o = Vec::new();
        for (i, region) in ["us-east-1", "us-east-2", "us-west-2", "eu-west-1"]
            .iter()
            .enumerate()
        {
            for spot in [true, false] {
                o.push(Offering {
                    cloud: "aws".into(),
                    region: Some((*region).into()),
                    zone: None,
                    instance_type: "m6i.2xlarge".into(),
                    accelerators: Vec::new(),
                    cpus: 8.0,
                    memory_gib: 32.0,
                    spot,
                    price: if spot { 150_000 } else { 384_000 } + i as u64 * 1_000,
                    max_nodes: None,
                });
            }
        }
        Ok(o)
    }
    fn runs_managed_jobs(&self) -> bool {
        true
    }
    fn new_private(&self, address: &Address, _: &Spec, _: &str) -> serde_json::Value {
        json!({
            "id": format!("{address}/{}", uuid::Uuid::new_v4().simple()),
            "instance_ids": ["i-0123456789abcdef0"],
        })
    }
    async fn refresh(
        &self,
        _: &Address,
        res: &ResourceState,
        _: Option<&ResourceState>,
    ) -> Result<Observed, ProviderError> {
        self.refreshes.fetch_add(1, Ordering::Relaxed);
        if self.gone.lock().unwrap().contains(&id_of(res)) {
            return Ok(Observed::Gone {
                reason: "the spot instance was reclaimed".into(),
            });
        }
        Ok(Observed::Up(BTreeMap::from([(
            "status".to_string(),
            json!("RUNNING"),
        )])))
    }
    async fn create(&self, req: Request<'_>) -> Result<Created, ProviderError> {
        self.creates.fetch_add(1, Ordering::Relaxed);
        Ok(Created {
            computed: BTreeMap::new(),
            private: req.private.clone(),
        })
    }
    async fn update(&self, req: Request<'_>) -> Result<Created, ProviderError> {
        Ok(Created {
            computed: BTreeMap::new(),
            private: req.private.clone(),
        })
    }
    async fn delete(
        &self,
        _: &Address,
        _: &ResourceState,
        _: Option<&ResourceState>,
    ) -> Result<(), ProviderError> {
        self.deletes.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
    fn log_paths(&self, _: &ResourceState, _: Option<&ResourceState>) -> Vec<PathBuf> {
        Vec::new()
    }
}

/// A managed job as apply records it: backend `managed`, a task id, PENDING.
fn declared(i: usize) -> (Address, ResourceState) {
    let address: Address = format!("managed_job.train[\"k{i:05}\"]").parse().unwrap();
    let task = format!("task-{i:012x}");
    let spec = Spec::ManagedJob(Box::new(ManagedJobSpec {
        num_nodes: 1,
        resources: Default::default(),
        workdir: None,
        workdir_hash: None,
        setup: None,
        run: format!("python train.py --shard {i} --checkpoint-dir /ckpt/$SKYFORM_TASK_ID"),
        envs: BTreeMap::from([("WANDB_PROJECT".to_string(), "sweep".to_string())]),
        secrets: BTreeMap::new(),
        recovery: None,
    }));
    let res = ResourceState {
        computed: BTreeMap::from([
            ("status".to_string(), json!("PENDING")),
            ("attempt".to_string(), json!(0)),
            ("exit_code".to_string(), serde_json::Value::Null),
        ])
        .into(),
        private: json!({ "task_id": task, "job_id": task, "dir": format!("/tmp/{task}") }),
        ..ResourceState::new(Status::Ready, "managed", spec.into())
    };
    (address, res)
}

/// CPU time of this process so far (every thread), in nanoseconds.
fn cpu_ns() -> u64 {
    let mut total = 0;
    if let Ok(tasks) = std::fs::read_dir("/proc/self/task") {
        for t in tasks.flatten() {
            if let Ok(s) = std::fs::read_to_string(t.path().join("schedstat")) {
                total += s
                    .split_whitespace()
                    .next()
                    .and_then(|v| v.parse::<u64>().ok())
                    .unwrap_or(0);
            }
        }
    }
    total
}

/// A line of /proc/self/status in MiB (`VmHWM`: peak resident memory).
fn mem_mib(key: &str) -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with(key))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

/// Runs `f`, answering its answer, wall seconds and CPU seconds.
async fn measured<T>(f: impl std::future::Future<Output = T>) -> (T, f64, f64) {
    let (c, t) = (cpu_ns(), Instant::now());
    let out = f.await;
    let wall = t.elapsed().as_secs_f64();
    (out, wall, (cpu_ns() - c) as f64 / 1e9)
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn book_file(dir: &std::path::Path) -> serde_json::Value {
    let text = std::fs::read(dir.join(".skyform/state.json.controller")).unwrap();
    serde_json::from_slice(&text).unwrap()
}

/// How many runs are RUNNING on their `attempt`-th placement or later (0: launched, in any
/// phase).
fn running(dir: &std::path::Path, attempt: u64) -> usize {
    let b = book_file(dir);
    b["runs"]
        .as_object()
        .unwrap()
        .values()
        .filter(|r| {
            (attempt == 0 && r["attempt"].as_u64() >= Some(1))
                || r["phase"] == "RUNNING" && r["attempt"].as_u64() >= Some(attempt)
        })
        .count()
}

fn env_num(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(default)
}

fn main() {
    let n = env_num("SKYFORM_BENCH_JOBS", 1000);
    let steady = env_num("SKYFORM_BENCH_TICKS", 20).max(1);
    let tmp = match std::env::var_os("SKYFORM_BENCH_DIR") {
        Some(d) => tempfile::tempdir_in(d),
        None => tempfile::tempdir(),
    }
    .expect("tempdir");
    let dir = tmp.path().to_path_buf();
    // The configuration is not read by the controller (it reads the state); one empty file
    // keeps the engine from complaining that there is none.
    std::fs::write(dir.join("main.sky.hcl"), "# managed jobs: see the state\n").unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let fleet = Arc::new(Fleet::default());
        let registry = Arc::new(Registry {
            providers: BTreeMap::from([("aws", fleet.clone() as Arc<dyn Provider>)]),
            warnings: Vec::new(),
        });
        let engine = Engine::open(
            Options {
                dir: dir.clone(),
                ..Options::default()
            },
            Arc::new(Quiet),
        )
        .with_registry(registry);
        {
            let mut state = State::new();
            state.resources = (0..n).map(declared).collect();
            state.serial = 1;
            engine
                .store()
                .await
                .unwrap()
                .write(&state)
                .await
                .unwrap();
        }
        let rss_before = mem_mib("VmRSS:");
        let settings = Settings {
            // Ticks are driven here; a loss is recovered on the second look.
            grace: Duration::ZERO,
            ..Settings::default()
        };
        let mut ctl = Controller::start(&engine, settings).await.unwrap();

        println!("the controller watching N managed jobs (in-process backend answering at once)");
        println!("N = {n}, state and book in {}", dir.display());
        // A pass hands a launch that takes longer than a tick to the next pass; here they
        // all answer at once, so one tick should do, but the launch is timed to the end.
        let (mut ticks, mut wall, mut cpu) = (0, 0.0, 0.0);
        while fleet.creates.load(Ordering::Relaxed) < n || running(&dir, 0) < n {
            let (out, w, c) = measured(ctl.tick()).await;
            ticks += 1;
            wall += w;
            cpu += c;
            let first_run = book_file(&dir)["runs"]
                .as_object()
                .and_then(|r| r.values().next().cloned());
            assert!(ticks < 10, "launching: {out:?}, {first_run:?}");
        }
        assert_eq!(fleet.creates.load(Ordering::Relaxed), n, "launched once each");
        println!(
            "launch all N ({ticks} tick):        wall {wall:>8.3} s   cpu {cpu:>8.3} s"
        );
        let (_, wall, cpu) = measured(ctl.tick()).await;
        assert_eq!(running(&dir, 1), n, "every job running after the next tick");
        println!("next tick (all seen RUNNING):   wall {wall:>8.3} s   cpu {cpu:>8.3} s");

        let (mut walls, mut cpus) = (Vec::new(), Vec::new());
        let refreshed = fleet.refreshes.load(Ordering::Relaxed);
        for _ in 0..steady {
            let (_, wall, cpu) = measured(ctl.tick()).await;
            walls.push(wall);
            cpus.push(cpu);
        }
        let refreshes = fleet.refreshes.load(Ordering::Relaxed) - refreshed;
        println!(
            "steady tick, median of {steady}:    wall {:>8.4} s   cpu {:>8.4} s   (max cpu {:.4} s)",
            median(&mut walls),
            median(&mut cpus),
            cpus.iter().copied().fold(0.0, f64::max)
        );

        // A tenth of the placements reclaimed at once.
        let lost = (n / 10).max(1);
        {
            let b = book_file(&dir);
            let mut gone = fleet.gone.lock().unwrap();
            for r in b["runs"].as_object().unwrap().values().take(lost) {
                gone.insert(r["current"]["private"]["id"].as_str().unwrap().to_string());
            }
        }
        let (mut ticks, mut wall, mut cpu) = (0, 0.0, 0.0);
        while running(&dir, 2) < lost {
            let (_, w, c) = measured(ctl.tick()).await;
            ticks += 1;
            wall += w;
            cpu += c;
            assert!(ticks < 10, "recovery did not finish");
        }
        println!(
            "recover {lost} lost placements:    wall {wall:>8.3} s   cpu {cpu:>8.3} s   ({ticks} ticks)"
        );

        let book = std::fs::metadata(dir.join(".skyform/state.json.controller"))
            .unwrap()
            .len();
        let state = std::fs::metadata(dir.join(".skyform/state.json"))
            .unwrap()
            .len();
        println!(
            "book {:.2} MiB, state {:.2} MiB; refresh calls per steady tick {}",
            book as f64 / 1048576.0,
            state as f64 / 1048576.0,
            refreshes / steady
        );
        println!(
            "memory: peak resident {:.1} MiB (VmHWM), resident now {:.1} MiB, before the controller {:.1} MiB",
            mem_mib("VmHWM:"),
            mem_mib("VmRSS:"),
            rss_before
        );
        ctl.release().await;
    });
}
