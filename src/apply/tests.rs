//! The walk against an in-process provider: a deleted cluster takes its jobs with it, and
//! jobs of a cluster that stays are cancelled in one call.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use super::{Applier, Event, FailoverOptions, Summary};
use crate::model::{Address, Spec};
use crate::optimizer::Offering;
use crate::plan::{self, Options};
use crate::providers::{Created, Observed, Provider, ProviderError, Registry, Request};
use crate::state::{MemoryStore, ResourceState, State};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

#[derive(Debug, Default)]
struct Fake {
    calls: Mutex<Vec<String>>,
}

#[async_trait::async_trait]
impl Provider for Fake {
    fn name(&self) -> &'static str {
        "local"
    }
    async fn offerings(&self) -> Result<Vec<Offering>, ProviderError> {
        Ok(vec![Offering {
            cloud: "local".into(),
            region: None,
            zone: None,
            instance_type: "local".into(),
            accelerators: vec![],
            cpus: 4.0,
            memory_gib: 8.0,
            spot: false,
            price: 0,
            max_nodes: None,
        }])
    }
    fn new_private(&self, address: &Address, _: &Spec, _: &str) -> serde_json::Value {
        serde_json::json!({ "id": address.to_string() })
    }
    async fn refresh(
        &self,
        _: &Address,
        _: &ResourceState,
        _: Option<&ResourceState>,
    ) -> Result<Observed, ProviderError> {
        Ok(Observed::Up(BTreeMap::new()))
    }
    async fn create(&self, req: Request<'_>) -> Result<Created, ProviderError> {
        Ok(Created {
            computed: BTreeMap::new(),
            private: req.private.clone(),
        })
    }
    async fn update(&self, req: Request<'_>) -> Result<Created, ProviderError> {
        self.create(req).await
    }
    async fn delete(
        &self,
        address: &Address,
        _: &ResourceState,
        _: Option<&ResourceState>,
    ) -> Result<(), ProviderError> {
        self.calls.lock().unwrap().push(format!("delete {address}"));
        Ok(())
    }
    async fn delete_jobs(
        &self,
        jobs: &[(&Address, &ResourceState)],
        _: &ResourceState,
    ) -> Vec<Result<(), ProviderError>> {
        let names: Vec<String> = jobs.iter().map(|(a, _)| a.to_string()).collect();
        self.calls
            .lock()
            .unwrap()
            .push(format!("delete_jobs {}", names.join(" ")));
        jobs.iter().map(|_| Ok(())).collect()
    }
    fn log_paths(&self, _: &ResourceState, _: Option<&ResourceState>) -> Vec<PathBuf> {
        Vec::new()
    }
}

const JOBS: &str = r#"
cluster "a" {}
cluster "b" {}
job "j" {
  for_each = toset(["x", "y", "z"])
  cluster  = cluster.a
  run      = "echo ${each.key}"
}
job "k" {
  cluster = cluster.b
  run     = "true"
}
"#;

/// Plans `config` against `prior` (everything, or its destruction) and applies it.
async fn apply(config: &str, prior: &State, destroy: bool) -> (Summary, State, Vec<String>) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("main.sky.hcl"), config).unwrap();
    let (mut cfg, d) = crate::config::load(dir.path());
    assert!(!d.has_errors());
    let (inputs, _) = crate::config::inputs(&mut cfg, &Default::default(), &BTreeMap::new());
    let fake = Arc::new(Fake::default());
    let offers = fake.offerings().await.unwrap();
    let options = Options {
        destroy,
        ..Options::default()
    };
    let (plan, d) = plan::plan(&cfg, &inputs, prior, &offers, &options);
    assert!(!d.has_errors(), "{}", d.render(&cfg.sources, false));
    let mut providers: BTreeMap<&'static str, Arc<dyn Provider>> = BTreeMap::new();
    providers.insert("local", fake.clone());
    let store = MemoryStore::new();
    let on_event = |_: &Event| {};
    let (_tx, rx) = tokio::sync::watch::channel(false);
    let applier = Applier {
        resolve: None,
        registry: Arc::new(Registry::new(providers)),
        store: &store,
        root: dir.path().to_path_buf(),
        parallelism: 2,
        on_event: &on_event,
        interrupt: rx,
        failover: FailoverOptions::default(),
    };
    let mut state = prior.clone();
    let summary = applier.apply(&plan, &mut state).await.unwrap();
    // Every write recorded a higher serial.
    let serials: Vec<u64> = store.history().iter().map(|s| s.serial).collect();
    assert!(serials.windows(2).all(|w| w[1] == w[0] + 1), "{serials:?}");
    let calls = fake.calls.lock().unwrap().clone();
    (summary, state, calls)
}

#[tokio::test]
async fn a_deleted_cluster_takes_its_jobs_with_it() {
    let (summary, state, _) = apply(JOBS, &State::new(), false).await;
    assert!(summary.ok() && summary.added == 6, "{summary:?}");
    let (summary, state, calls) = apply(JOBS, &state, true).await;
    assert!(summary.ok(), "{summary:?}");
    assert_eq!(summary.destroyed, 6);
    assert!(state.resources.is_empty());
    // Only the clusters are called: their jobs go with them.
    let mut calls = calls;
    calls.sort();
    assert_eq!(calls, ["delete cluster.a", "delete cluster.b"]);
}

#[tokio::test]
async fn jobs_of_a_cluster_that_stays_are_cancelled_in_one_call() {
    let (_, state, _) = apply(JOBS, &State::new(), false).await;
    let only_clusters = "cluster \"a\" {}\ncluster \"b\" {}\n";
    let (summary, state, calls) = apply(only_clusters, &state, false).await;
    assert!(summary.ok(), "{summary:?}");
    assert_eq!(summary.destroyed, 4);
    let left: Vec<String> = state.resources.keys().map(ToString::to_string).collect();
    assert_eq!(left, ["cluster.a", "cluster.b"]);
    let mut calls = calls;
    calls.sort();
    assert_eq!(
        calls,
        [
            "delete_jobs job.j[\"x\"] job.j[\"y\"] job.j[\"z\"]",
            "delete_jobs job.k"
        ]
    );
}

#[tokio::test]
async fn many_jobs_are_recorded_creating_in_few_writes() {
    let keys: Vec<String> = (0..300).map(|i| format!("\"k{i}\"")).collect();
    let config = format!(
        "cluster \"a\" {{}}\njob \"j\" {{\n  for_each = toset([{}])\n  cluster = cluster.a\n  run = \"true\"\n}}\n",
        keys.join(", ")
    );
    let (summary, state, _) = apply(&config, &State::new(), false).await;
    assert_eq!(summary.added, 301);
    assert!(
        state
            .resources
            .values()
            .all(|r| r.status == crate::state::Status::Ready)
    );
    // Intents go ahead in batches: far fewer writes than jobs over `parallelism`.
    assert!(state.serial < 100, "{} writes", state.serial);
}
