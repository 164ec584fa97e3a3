//! `skyform controller run|start|status|stop`.

use super::EXIT_OK;
use super::args::ControllerCommand;
use crate::controller::{Controller, Ended, Settings, book, spawn};
use crate::engine::{Engine, Error, Result};

pub async fn command(engine: &Engine, command: &ControllerCommand) -> Result<i32> {
    match command {
        ControllerCommand::Run { exit_when_idle } => run(engine, *exit_when_idle).await,
        ControllerCommand::Start => {
            if let Some(c) = crate::config::controller::Declared::of(engine.config()) {
                return Err(Error::new(format!(
                    "this configuration runs its controller where {} says",
                    c.address
                ))
                .hint("skyform apply starts and updates it there; `skyform controller status` says whether it runs"));
            }
            let store = engine.store().await?;
            match spawn::ensure_running(
                store.as_ref(),
                engine.dir(),
                &engine.config().workspace,
                None,
                &spawn::passed_vars(engine.inputs()),
            )
            .await?
            {
                Some(pid) => say!(
                    "Started the controller (process {pid}); it logs to .skyform/controller.log."
                ),
                None => say!("The controller already runs."),
            }
            Ok(EXIT_OK)
        }
        ControllerCommand::Status { json } => status(engine, *json).await,
        ControllerCommand::Stop => stop(engine).await,
    }
}

async fn run(engine: &Engine, exit_when_idle: bool) -> Result<i32> {
    let settings = Settings {
        exit_when_idle,
        ..Settings::from_env()
    };
    let mut controller = Controller::start(engine, settings).await?;
    eprintln!(
        "{} controller: holding the lease of {} (process {})",
        book::rfc3339_now(),
        engine.store().await?.describe(),
        std::process::id()
    );
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|e| Error::new(format!("cannot watch for signals: {e}")))?;
    let ended = tokio::select! {
        r = controller.run() => Some(r?),
        _ = term.recv() => None,
        _ = tokio::signal::ctrl_c() => None,
    };
    match ended {
        Some(Ended::Idle) => eprintln!(
            "{} controller: nothing left to watch; stopping",
            book::rfc3339_now()
        ),
        Some(Ended::LostLease(who)) => {
            return Err(
                Error::new(format!("the controller lost its lease to {who}"))
                    .hint("another controller acts for this state now"),
            );
        }
        None => {
            controller.release().await;
            eprintln!("{} controller: stopped", book::rfc3339_now());
        }
    }
    Ok(EXIT_OK)
}

async fn status(engine: &Engine, json: bool) -> Result<i32> {
    let store = engine.store().await?;
    let (b, _) = book::read(store.as_ref()).await?;
    let now = book::now_ms();
    let live = b.lease.as_ref().filter(|l| l.is_live(now));
    if json {
        let runs: Vec<_> = b
            .runs
            .iter()
            .map(|(task, r)| {
                serde_json::json!({
                    "task_id": task,
                    "address": r.address.to_string(),
                    "status": r.phase.as_str(),
                    "attempt": r.attempt,
                    "placement": r.current.as_ref().map(|p| p.candidate.offering.infra()),
                    "history": r.history,
                })
            })
            .collect();
        say!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "running": live.is_some(),
                "lease": live,
                "managed_jobs": runs,
            }))
            .unwrap_or_default()
        );
        return Ok(EXIT_OK);
    }
    match live {
        Some(l) => say!("controller: running, {}", l.describe()),
        None => say!("controller: not running"),
    }
    let active = b.runs.values().filter(|r| r.is_active()).count();
    say!(
        "managed jobs: {} on record, {active} being watched",
        b.runs.len()
    );
    if live.is_none() && active > 0 {
        say!("hint: `skyform controller start` resumes watching them");
    }
    Ok(EXIT_OK)
}

async fn stop(engine: &Engine) -> Result<i32> {
    let store = engine.store().await?;
    let (b, _) = book::read(store.as_ref()).await?;
    let Some(lease) = b.lease.filter(|l| l.is_live(book::now_ms())) else {
        say!("The controller is not running.");
        return Ok(EXIT_OK);
    };
    if lease.host != book::host_name() {
        return Err(Error::new(format!(
            "the controller runs on another machine: {}",
            lease.describe()
        ))
        .hint("stop it there (or its Deployment); its lease lapses on its own once it stops"));
    }
    crate::runtime::proc::signal(lease.pid, libc::SIGTERM, false);
    for _ in 0..150 {
        if !crate::runtime::proc::alive(lease.pid, None) {
            say!("Stopped the controller (process {}).", lease.pid);
            return Ok(EXIT_OK);
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    Err(Error::new(format!(
        "the controller (process {}) did not stop within 15s",
        lease.pid
    )))
}
