//! The apply engine against an in-process provider and the in-memory store: ordering,
//! skip-only-dependents, and a state write (with a higher serial) after every change.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use skyform::apply::{Applier, Event};
use skyform::model::{Address, Spec};
use skyform::optimizer::Offering;
use skyform::plan::{self, Options};
use skyform::providers::{Created, Observed, Provider, ProviderError, Registry, Request};
use skyform::state::{MemoryStore, ResourceState, State, StateStore};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

/// Records calls; fails creation of addresses listed in `fail`.
#[derive(Debug, Default)]
struct Fake {
    calls: Mutex<Vec<String>>,
    fail: Vec<String>,
}

#[async_trait::async_trait]
impl Provider for Fake {
    fn name(&self) -> &'static str {
        "local"
    }
    async fn offerings(&self) -> Result<Vec<Offering>, ProviderError> {
        Ok(vec![])
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
        self.calls
            .lock()
            .unwrap()
            .push(format!("create {}", req.address));
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        if self.fail.contains(&req.address.to_string()) {
            return Err(ProviderError::other("boom"));
        }
        Ok(Created {
            computed: BTreeMap::from([("status".to_string(), serde_json::json!("UP"))]),
            private: req.private.clone(),
        })
    }
    async fn update(&self, req: Request<'_>) -> Result<Created, ProviderError> {
        self.calls
            .lock()
            .unwrap()
            .push(format!("update {}", req.address));
        Ok(Created {
            computed: BTreeMap::new(),
            private: req.private.clone(),
        })
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
    fn log_paths(&self, _: &ResourceState, _: Option<&ResourceState>) -> Vec<PathBuf> {
        Vec::new()
    }
}

const CONFIG: &str = r#"
cluster "a" {}
cluster "b" {}
job "a1" {
  cluster = cluster.a
  run     = "one"
}
job "a2" {
  cluster    = cluster.a
  depends_on = [job.a1]
  run        = "two"
}
job "b1" {
  cluster = cluster.b
  run     = "three"
}
"#;

fn offers() -> Vec<Offering> {
    vec![Offering {
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
    }]
}

async fn run(
    fail: &[&str],
    prior: State,
) -> (
    skyform::apply::Summary,
    State,
    Vec<State>,
    Vec<String>,
    Vec<Event>,
) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("main.sky.hcl"), CONFIG).unwrap();
    let (mut cfg, d) = skyform::config::load(dir.path());
    assert!(!d.has_errors());
    let (inputs, _) = skyform::config::inputs(&mut cfg, &Default::default(), &BTreeMap::new());
    let (plan, d) = plan::plan(&cfg, &inputs, &prior, &offers(), &Options::default());
    assert!(!d.has_errors(), "{}", d.render(&cfg.sources, false));
    let fake = Arc::new(Fake {
        fail: fail.iter().map(|s| s.to_string()).collect(),
        ..Fake::default()
    });
    let mut providers: BTreeMap<&'static str, Arc<dyn Provider>> = BTreeMap::new();
    providers.insert("local", fake.clone());
    let registry = Arc::new(Registry::new(providers));
    let store = MemoryStore::new();
    store.write(&prior).await.unwrap();
    let events = Mutex::new(Vec::new());
    let on_event = |e: &Event| events.lock().unwrap().push(e.clone());
    let (_tx, rx) = tokio::sync::watch::channel(false);
    let applier = Applier {
        resolve: None,
        registry,
        store: &store,
        root: dir.path().to_path_buf(),
        parallelism: 10,
        on_event: &on_event,
        interrupt: rx,
        failover: skyform::apply::FailoverOptions::default(),
    };
    let mut state = prior.clone();
    let summary = applier.apply(&plan, &mut state).await.unwrap();
    let calls = fake.calls.lock().unwrap().clone();
    (
        summary,
        state,
        store.history(),
        calls,
        events.into_inner().unwrap(),
    )
}

#[tokio::test]
async fn creates_in_dependency_order_and_writes_state_after_each_change() {
    let (summary, state, history, calls, _) = run(&[], State::new()).await;
    assert!(summary.ok());
    assert_eq!(summary.added, 5);
    let pos = |s: &str| {
        calls
            .iter()
            .position(|c| c == s)
            .unwrap_or_else(|| panic!("{s} not called: {calls:?}"))
    };
    assert!(pos("create cluster.a") < pos("create job.a1"));
    assert!(pos("create job.a1") < pos("create job.a2"));
    assert!(pos("create cluster.b") < pos("create job.b1"));
    // Serials rise by one with every write; every resource was recorded as `creating` (its
    // intent) in an earlier write than the one recording it `ready`.
    for w in history.windows(2) {
        assert_eq!(
            w[1].serial,
            w[0].serial + 1,
            "serials: {:?}",
            history.iter().map(|s| s.serial).collect::<Vec<_>>()
        );
    }
    for addr in state.resources.keys() {
        let status_at = |i: usize| history[i].resources.get(addr).map(|r| r.status);
        let creating =
            (0..history.len()).find(|i| status_at(*i) == Some(skyform::state::Status::Creating));
        let ready =
            (0..history.len()).find(|i| status_at(*i) == Some(skyform::state::Status::Ready));
        assert!(
            matches!((creating, ready), (Some(c), Some(r)) if c < r),
            "{addr}: intent {creating:?}, ready {ready:?}"
        );
    }
    assert!(
        state
            .resources
            .values()
            .all(|r| r.status == skyform::state::Status::Ready)
    );
}

#[tokio::test]
async fn a_failure_skips_only_its_dependents() {
    let (summary, state, _, calls, events) = run(&["job.a1"], State::new()).await;
    assert_eq!(summary.failures.len(), 1);
    assert_eq!(summary.failures[0].0.to_string(), "job.a1");
    assert_eq!(
        summary
            .skipped
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>(),
        vec!["job.a2"]
    );
    assert!(
        calls.contains(&"create job.b1".to_string()),
        "independent branches finish: {calls:?}"
    );
    assert!(!calls.contains(&"create job.a2".to_string()));
    assert!(events.iter().any(|e| matches!(e, Event::Skipped { address, because } if address.to_string() == "job.a2" && because.to_string() == "job.a1")));
    // The failed resource stays in state, tainted, so the next plan replaces it.
    assert_eq!(
        state
            .resources
            .get(&"job.a1".parse().unwrap())
            .map(|r| r.status),
        Some(skyform::state::Status::Tainted)
    );
}

/// A cloud with no room in one region.
#[derive(Debug, Default)]
struct Cloud {
    full: Vec<String>,
    /// Placements where create never answers.
    hung: Vec<String>,
    tried: Mutex<Vec<String>>,
    /// The placements of the attempts deleted (cleaned up).
    deleted: Mutex<Vec<String>>,
}

#[async_trait::async_trait]
impl Provider for Cloud {
    fn name(&self) -> &'static str {
        "aws"
    }
    async fn offerings(&self) -> Result<Vec<Offering>, ProviderError> {
        Ok(vec![])
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
        let infra = req
            .placement
            .map(|p| p.offering.infra())
            .unwrap_or_default();
        self.tried.lock().unwrap().push(infra.clone());
        if self.hung.contains(&infra) {
            std::future::pending::<()>().await;
        }
        if self.full.contains(&infra) {
            return Err(ProviderError {
                kind: skyform::providers::ErrorKind::Capacity,
                message: "InsufficientInstanceCapacity".into(),
            });
        }
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
        res: &ResourceState,
        _: Option<&ResourceState>,
    ) -> Result<(), ProviderError> {
        let infra = res
            .placement
            .as_ref()
            .map(|p| p.offering.infra())
            .unwrap_or_default();
        self.deleted.lock().unwrap().push(infra);
        Ok(())
    }
    fn log_paths(&self, _: &ResourceState, _: Option<&ResourceState>) -> Vec<PathBuf> {
        Vec::new()
    }
}

/// The plan of one `A100:8` cluster in `dir`, over AWS offers (region, instance type,
/// $/h in micro-dollars).
fn a100_plan(dir: &std::path::Path, offers: &[(&str, &str, u64)]) -> plan::Plan {
    std::fs::write(
        dir.join("main.sky.hcl"),
        "cluster \"big\" {\n  resources {\n    accelerators = \"A100:8\"\n  }\n}\n",
    )
    .unwrap();
    let (mut cfg, _) = skyform::config::load(dir);
    let (inputs, _) = skyform::config::inputs(&mut cfg, &Default::default(), &BTreeMap::new());
    let offers: Vec<Offering> = offers
        .iter()
        .map(|(region, kind, price)| Offering {
            cloud: "aws".into(),
            region: Some((*region).into()),
            zone: None,
            instance_type: (*kind).into(),
            accelerators: vec![("A100".into(), 8.0)],
            cpus: 96.0,
            memory_gib: 1152.0,
            spot: false,
            price: *price,
            max_nodes: None,
        })
        .collect();
    let (plan, d) = plan::plan(&cfg, &inputs, &State::new(), &offers, &Options::default());
    assert!(!d.has_errors(), "{}", d.render(&cfg.sources, false));
    plan
}

/// Applies `plan` (from scratch) with `cloud` as the aws backend.
async fn apply_on(
    cloud: &Arc<Cloud>,
    plan: &plan::Plan,
    root: &std::path::Path,
    failover: skyform::apply::FailoverOptions,
    on_event: &(dyn Fn(&Event) + Send + Sync),
) -> (skyform::apply::Summary, State) {
    let mut providers: BTreeMap<&'static str, Arc<dyn Provider>> = BTreeMap::new();
    providers.insert("aws", cloud.clone());
    let store = MemoryStore::new();
    let (_tx, rx) = tokio::sync::watch::channel(false);
    let applier = Applier {
        resolve: None,
        registry: Arc::new(Registry::new(providers)),
        store: &store,
        root: root.to_path_buf(),
        parallelism: 4,
        on_event,
        interrupt: rx,
        failover,
    };
    let mut state = State::new();
    let summary = applier.apply(plan, &mut state).await.unwrap();
    (summary, state)
}

/// A placement that never answers times out, is cleaned up, and blocks its region: the
/// next placement in that region is skipped.
#[tokio::test]
async fn a_hung_placement_times_out_and_blocks_its_region() {
    let dir = tempfile::tempdir().unwrap();
    let plan = a100_plan(
        dir.path(),
        &[
            ("us-east-1", "p4d.24xlarge", 32_000_000),
            ("us-east-1", "p4de.24xlarge", 40_000_000),
            ("us-west-2", "p4d.24xlarge", 41_000_000),
        ],
    );
    let cloud = Arc::new(Cloud {
        hung: vec!["aws/us-east-1".into()],
        ..Cloud::default()
    });
    let failover = skyform::apply::FailoverOptions {
        attempt_timeout: std::time::Duration::from_millis(200),
        ..Default::default()
    };
    let (summary, state) = apply_on(&cloud, &plan, dir.path(), failover, &|_| {}).await;
    assert!(summary.ok(), "{:?}", summary.failures);
    assert_eq!(
        *cloud.tried.lock().unwrap(),
        ["aws/us-east-1", "aws/us-west-2"]
    );
    assert_eq!(
        *cloud.deleted.lock().unwrap(),
        ["aws/us-east-1"],
        "cleaned up first"
    );
    let r = &state.resources[&"cluster.big".parse::<Address>().unwrap()];
    assert!(
        r.attempts[0].result.contains("no answer within 200ms"),
        "{:?}",
        r.attempts
    );
    assert!(r.leftovers.is_empty());
}

#[tokio::test]
async fn a_full_placement_fails_over_to_the_next_one_in_the_plan() {
    let dir = tempfile::tempdir().unwrap();
    let plan = a100_plan(
        dir.path(),
        &[
            ("us-east-1", "p4d.24xlarge", 32_000_000),
            ("us-east-2", "p4d.24xlarge", 32_500_000),
            ("us-west-2", "p4d.24xlarge", 33_000_000),
        ],
    );
    assert_eq!(plan.changes[0].candidates.len(), 3);
    let cloud = Arc::new(Cloud {
        full: vec!["aws/us-east-1".into(), "aws/us-east-2".into()],
        ..Cloud::default()
    });
    let events = Mutex::new(Vec::new());
    let on_event = |e: &Event| events.lock().unwrap().push(e.clone());
    let (summary, state) = apply_on(&cloud, &plan, dir.path(), Default::default(), &on_event).await;
    assert!(summary.ok(), "{:?}", summary.failures);
    assert_eq!(
        *cloud.tried.lock().unwrap(),
        vec!["aws/us-east-1", "aws/us-east-2", "aws/us-west-2"],
        "walks down the planned list, in order"
    );
    let r = &state.resources[&"cluster.big".parse::<Address>().unwrap()];
    assert_eq!(
        r.placement.as_ref().unwrap().offering.infra(),
        "aws/us-west-2"
    );
    let results: Vec<&str> = r.attempts.iter().map(|a| a.result.as_str()).collect();
    assert_eq!(
        results,
        vec![
            "InsufficientInstanceCapacity",
            "InsufficientInstanceCapacity",
            "ok"
        ],
        "state keeps the history"
    );
    let failed_over = events
        .lock()
        .unwrap()
        .iter()
        .filter(|e| matches!(e, Event::FailedOver { .. }))
        .count();
    assert_eq!(failed_over, 2);

    // Every placement full: the resource fails, saying so.
    let cloud = Arc::new(Cloud {
        full: vec![
            "aws/us-east-1".into(),
            "aws/us-east-2".into(),
            "aws/us-west-2".into(),
        ],
        ..Cloud::default()
    });
    let (summary, _) = apply_on(&cloud, &plan, dir.path(), Default::default(), &|_| {}).await;
    assert_eq!(summary.failures.len(), 1);
    assert!(
        summary.failures[0]
            .1
            .contains("no placement left after 3 attempts"),
        "{}",
        summary.failures[0].1
    );
}
