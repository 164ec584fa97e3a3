//! The engine as a library, the way a controller (or any program) calls it: open a run, plan,
//! apply, plan again, destroy — on this machine's real processes, with no CLI in between.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use skyform::engine::{
    ApplyOptions, Engine, LockOptions, Notice, Options, PlanOptions, Quiet, Reporter,
};
use skyform::model::Address;
use skyform::plan::Action;
use std::sync::{Arc, Mutex};

/// Remembers what the engine told it, in words a test can compare.
#[derive(Default)]
struct Recorder {
    seen: Mutex<Vec<String>>,
}

impl Reporter for Recorder {
    fn notice(&self, notice: Notice<'_>) {
        let line = match notice {
            Notice::Applying(plan) => format!("applying {} changes", plan.changes.len()),
            Notice::Apply(e) => format!("event {e:?}"),
            Notice::Refreshed { resources, .. } => format!("refreshed {resources}"),
            Notice::Warning(w) => format!("warning {w}"),
            Notice::Diagnostics(d, _) => format!("diagnostics {}", d.items.len()),
            other => format!("{other:?}"),
        };
        self.seen.lock().unwrap().push(line);
    }
}

fn open(dir: &std::path::Path, reporter: Arc<dyn Reporter>) -> Engine {
    Engine::open(
        Options {
            dir: dir.to_path_buf(),
            // The test binary is not skyform: nodes run the real one as their agent.
            agent_exe: Some(env!("CARGO_BIN_EXE_skyform").into()),
            ..Options::default()
        },
        reporter,
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn a_program_plans_applies_and_destroys_through_the_engine() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("main.sky.hcl"),
        "cluster \"dev\" {}\n\njob \"hello\" {\n  cluster = cluster.dev\n  run     = \"echo hello from the engine\"\n}\n",
    )
    .unwrap();
    let recorder = Arc::new(Recorder::default());
    let engine = open(dir.path(), recorder.clone());
    engine.require_valid().unwrap();
    assert!(
        Arc::ptr_eq(&engine.registry(), &engine.registry()),
        "one registry per run"
    );

    // Plan and apply under one lock, as `apply` does.
    let mut session = engine
        .session("apply", LockOptions::default())
        .await
        .unwrap();
    let plan = session.plan(&PlanOptions::default()).await.unwrap();
    let creates: Vec<String> = plan
        .changes
        .iter()
        .filter(|c| c.action == Action::Create)
        .map(|c| c.address.to_string())
        .collect();
    assert_eq!(creates, ["cluster.dev", "job.hello"]);
    let applied = session.apply(&plan, ApplyOptions::default()).await.unwrap();
    assert_eq!(session.state.resources.len(), 2);
    session.release().await;
    assert!(applied.ok(), "{:?}", applied.failures);
    assert_eq!(applied.added, 2);
    let seen = recorder.seen.lock().unwrap().clone();
    assert!(seen.contains(&"applying 2 changes".to_string()), "{seen:?}");
    assert!(
        seen.iter().any(|l| l.starts_with("event Done")),
        "apply's events reach the reporter: {seen:?}"
    );

    // The job really ran: the engine waits for it and reads its log.
    let job: Address = "job.hello".parse().unwrap();
    let statuses = engine
        .wait_for_jobs(std::slice::from_ref(&job))
        .await
        .unwrap();
    assert_eq!(statuses, [(job.clone(), "SUCCEEDED".to_string())]);
    let mut log = Vec::new();
    engine
        .logs(&job, false, &mut |_, chunk| log.extend_from_slice(chunk))
        .await
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&log), "hello from the engine\n");

    // A second run (a new engine, as a controller's next turn would be) finds nothing to do.
    let again = open(dir.path(), Arc::new(Quiet));
    let mut session = again.session("plan", LockOptions::default()).await.unwrap();
    let plan = session.plan(&PlanOptions::default()).await.unwrap();
    session.release().await;
    assert!(!plan.has_changes(), "{:?}", plan.changes);

    // While a session holds the lock, another cannot take it.
    let holder = again
        .session("apply", LockOptions::default())
        .await
        .unwrap();
    let refused = open(dir.path(), Arc::new(Quiet))
        .session("apply", LockOptions::default())
        .await
        .expect_err("the state is locked");
    assert!(refused.to_string().contains("lock"), "{refused}");
    holder.release().await;

    // Destroy: a plan with `destroy`, applied.
    let mut session = again
        .session("destroy", LockOptions::default())
        .await
        .unwrap();
    let plan = session
        .plan(&PlanOptions {
            destroy: true,
            ..PlanOptions::default()
        })
        .await
        .unwrap();
    let applied = session.apply(&plan, ApplyOptions::default()).await.unwrap();
    session.release().await;
    assert!(applied.ok(), "{:?}", applied.failures);
    assert_eq!(applied.destroyed, 2);
    assert!(again.read_state().await.unwrap().resources.is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_broken_configuration_is_reported_as_diagnostics_not_applied() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("main.sky.hcl"),
        "cluster \"dev\" {\n  colour = \"blue\"\n}\n",
    )
    .unwrap();
    let recorder = Arc::new(Recorder::default());
    let engine = open(dir.path(), recorder.clone());
    let err = engine
        .require_valid()
        .expect_err("an attribute clusters do not have");
    assert_eq!(err, skyform::engine::Error::InvalidConfig);
    let seen = recorder.seen.lock().unwrap().clone();
    assert!(
        seen.iter()
            .any(|l| l.starts_with("diagnostics ") && l != "diagnostics 0"),
        "{seen:?}"
    );
    // Nothing was written: no state exists.
    assert!(engine.read_state().await.is_err());
}
