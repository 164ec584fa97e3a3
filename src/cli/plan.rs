//! The reconcile commands: init, validate, plan, apply, destroy, show, output, graph.

use super::report::Terminal;
use super::{EXIT_CHANGES, EXIT_ERROR, EXIT_OK, PlanFlags, PlanFormat, RunFlags};
use crate::engine::store::BackendChange;
use crate::engine::{ApplyOptions, Engine, Error, LockOptions, PlanOptions, Result};
use crate::model::{Kind, backend};
use crate::plan::{Action, Plan};
use crate::render;
use crate::state::LocalStore;
use std::path::Path;

impl PlanFlags {
    pub fn lock_options(&self) -> LockOptions {
        self.lock.options()
    }

    pub fn plan_options(&self, destroy: bool) -> Result<PlanOptions> {
        PlanOptions {
            destroy,
            refresh: self.refresh,
            refresh_only: self.refresh_only,
            ..PlanOptions::default()
        }
        .with_addresses(&self.target, &self.replace)
    }
}

pub async fn init(engine: &Engine, how: BackendChange, json: bool) -> Result<i32> {
    engine.require_parsed()?;
    let (place, created) = engine.init_backend(how).await?;
    if !json {
        if created {
            say!("Created the state at {place}.");
        } else {
            say!("The state at {place} is ready.");
        }
        say!("Infra:");
    }
    let mut kinds: Vec<&str> = engine
        .config()
        .infra
        .iter()
        .map(|i| i.kind.as_str())
        .collect();
    if kinds.is_empty() {
        kinds.push("local");
    }
    // Each kind once, in the order declared (several ssh pools or contexts are one backend).
    let mut seen = std::collections::BTreeSet::new();
    kinds.retain(|k| seen.insert(*k));
    let registry = engine.registry();
    let mut hints = Vec::new();
    let mut rows = Vec::new();
    for k in kinds {
        let found = backend::of_infra_type(k);
        let status = match (found, registry.get(k)) {
            (Some(b), _) if b.on_this_machine => "ready (this machine)".to_string(),
            (_, Some(p)) => match p.check().await {
                Ok(s) => s,
                Err(e) => {
                    hints.push(match found.and_then(|b| b.setup_hint) {
                        Some(h) => format!("{k}: {h}"),
                        None => format!("{k}: check the infra \"{k}\" blocks (see docs/{k}.md)"),
                    });
                    e.message
                }
            },
            (Some(b), None) if b.catalog => {
                "plans only: prices from the catalogs; no backend in this build yet".to_string()
            }
            _ => "not available in this build yet".to_string(),
        };
        rows.push(serde_json::json!({"type": k, "status": status}));
        if !json {
            say!("  {k:<12} {status}");
        }
    }
    if json {
        let doc = serde_json::json!({
            "state": place.to_string(),
            "created": created,
            "infra": rows,
            "hints": hints,
        });
        say!("{}", serde_json::to_string_pretty(&doc).unwrap_or_default());
        return Ok(EXIT_OK);
    }
    for h in hints {
        say!("\nhint: {h}");
    }
    say!("\nhint: run `skyform plan` to see what would be created");
    Ok(EXIT_OK)
}

pub fn validate(engine: &Engine, term: &Terminal, json: bool) -> Result<i32> {
    engine.workspace()?;
    let mut diags = engine.diagnostics().clone();
    diags.extend(crate::config::validate(engine.config(), engine.inputs()));
    diags.sort();
    let sources = &engine.config().sources;
    if json {
        say!(
            "{}",
            serde_json::to_string_pretty(&diags.to_json(sources)).unwrap_or_default()
        );
    } else if !diags.items.is_empty() {
        eprint!("{}", diags.render(sources, term.style.color));
    }
    if diags.has_errors() {
        return Ok(EXIT_ERROR);
    }
    if !json {
        say!(
            "{}",
            term.style.green("Success! The configuration is valid.")
        );
    }
    Ok(EXIT_OK)
}

/// What `plan` is asked to do beyond planning.
#[derive(Debug)]
pub struct PlanRequest<'a> {
    pub flags: &'a PlanFlags,
    pub out: Option<&'a Path>,
    pub detailed_exitcode: bool,
    pub format: PlanFormat,
    pub destroy: bool,
}

pub async fn plan(engine: &Engine, term: &Terminal, req: PlanRequest<'_>) -> Result<i32> {
    engine.require_valid()?;
    let opts = req.flags.plan_options(req.destroy)?;
    let mut session = engine.session("plan", req.flags.lock_options()).await?;
    let planned = session.plan(&opts).await;
    session.release().await;
    let plan = planned?;
    print_plan(term, &plan, req.format);
    let json = req.format != PlanFormat::Human;
    if let Some(path) = req.out {
        let bytes = serde_json::to_vec(&plan).map_err(|e| Error::new(e.to_string()))?;
        LocalStore::write_atomic(path, &bytes)?;
        if !json {
            say!(
                "\nSaved the plan to {}. Apply exactly it with `skyform apply {}`.",
                path.display(),
                path.display()
            );
        }
    } else if !json && plan.has_changes() {
        say!(
            "\nhint: save this plan with -out plan.json and apply exactly it with `skyform apply plan.json`"
        );
    }
    Ok(if req.detailed_exitcode && plan.has_changes() {
        EXIT_CHANGES
    } else {
        EXIT_OK
    })
}

/// What `apply` (or `destroy`) is asked to do.
#[derive(Debug)]
pub struct ApplyRequest<'a> {
    pub planfile: Option<&'a Path>,
    pub flags: &'a PlanFlags,
    pub auto_approve: bool,
    pub input: bool,
    pub run: &'a RunFlags,
    pub wait: bool,
    pub destroy: bool,
}

fn read_plan(p: &Path) -> Result<Plan> {
    let bytes = std::fs::read(p)
        .map_err(|e| Error::new(format!("cannot read plan {}: {e}", p.display())))?;
    serde_json::from_slice(&bytes).map_err(|e| {
        Error::new(format!("{} is not a skyform plan: {e}", p.display()))
            .hint("make one with skyform plan -out FILE")
    })
}

pub async fn apply(engine: &Engine, term: &Terminal, req: ApplyRequest<'_>) -> Result<i32> {
    let saved = req.planfile.map(read_plan).transpose()?;
    crate::runtime::proc::ignore_sigpipe();
    engine.require_valid()?;
    let op = if req.destroy { "destroy" } else { "apply" };
    let mut session = engine.session(op, req.flags.lock_options()).await?;
    let result = apply_in(engine, term, &mut session, saved, &req).await;
    session.release().await;
    result
}

async fn apply_in(
    engine: &Engine,
    term: &Terminal,
    session: &mut crate::engine::Session<'_>,
    saved: Option<Plan>,
    req: &ApplyRequest<'_>,
) -> Result<i32> {
    let json = req.run.json;
    if json && req.wait {
        return Err(Error::new("apply -json does not wait for jobs (-wait)")
            .hint("follow them with `skyform status -json` after the apply"));
    }
    if let Some(want) = req.run.check_serial {
        session.check_serial(want)?;
    }
    let plan = match saved {
        Some(p) => session.take_saved(p).await?,
        None => {
            if json && !(req.auto_approve || super::env_flag("SKYFORM_AUTO_APPROVE")) {
                return Err(Error::new(
                    "apply -json cannot ask for approval: its output is for machines",
                )
                .hint("pass -auto-approve, or apply a saved plan: skyform plan -out plan.json && skyform apply -json plan.json"));
            }
            let p = session.plan(&req.flags.plan_options(req.destroy)?).await?;
            if !json {
                say_inline!("{}", render::human::plan(&p, &term.style));
            }
            if !p.has_changes() {
                // Nothing to do, but what refresh learned (resources gone) is kept.
                session.keep_refreshed().await?;
                if json {
                    emit_summary(&crate::apply::Summary::default(), &p, &session.state);
                }
                return Ok(EXIT_OK);
            }
            let what = if req.destroy {
                "destroy these resources"
            } else if p.refresh_only {
                "record these changes in the state"
            } else {
                "perform these actions"
            };
            if !term.confirm(what, req.auto_approve, req.input)? {
                say!("Apply cancelled.");
                return Ok(EXIT_ERROR);
            }
            if !json {
                say!();
            }
            p
        }
    };
    let (tx, rx) = tokio::sync::watch::channel(false);
    let ctrl_c = tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            eprintln!(
                "\nInterrupt received: finishing the operations in flight, then stopping. Interrupt again to abandon them."
            );
            let _ = tx.send(true);
            if tokio::signal::ctrl_c().await.is_ok() {
                std::process::exit(130);
            }
        }
    });
    let options = ApplyOptions {
        parallelism: req.run.parallelism,
        failover: req.run.failover(),
        interrupt: Some(rx),
    };
    let applied = session.apply(&plan, options).await;
    ctrl_c.abort();
    let applied = applied?;
    let summary = &applied;
    let state = &session.state;
    if json {
        emit_summary(summary, &plan, state);
        return Ok(if summary.ok() { EXIT_OK } else { EXIT_ERROR });
    }
    if plan.refresh_only {
        let n = plan.drift.len();
        say!(
            "{}",
            term.style.green(&format!(
                "Apply complete! The state records what changed outside skyform ({n} change{}); no resource was touched.",
                if n == 1 { "" } else { "s" }
            ))
        );
        return Ok(EXIT_OK);
    }
    say_inline!(
        "{}",
        render::human::apply_summary(summary, state, req.destroy, &term.style)
    );
    if !summary.ok() {
        return Ok(EXIT_ERROR);
    }
    if req.wait {
        return wait_for_jobs(engine, &plan).await;
    }
    if !req.destroy
        && plan
            .changes
            .iter()
            .any(|c| c.address.kind != Kind::Cluster && c.action.is_change())
    {
        say!("\nhint: follow the jobs with `skyform status` and `skyform logs ADDRESS -f`");
    }
    Ok(EXIT_OK)
}

/// `apply -json`: the last line, what was done.
fn emit_summary(s: &crate::apply::Summary, plan: &Plan, state: &crate::state::State) {
    super::progress::Progress::emit("summary", render::json::apply_summary(s, plan, state));
}

/// `apply -wait`: waits for the jobs the plan created; fails if any did not succeed.
async fn wait_for_jobs(engine: &Engine, plan: &Plan) -> Result<i32> {
    let watched: Vec<_> = plan
        .changes
        .iter()
        .filter(|c| {
            matches!(c.address.kind, Kind::Job | Kind::ManagedJob)
                && matches!(c.action, Action::Create | Action::Replace)
        })
        .map(|c| c.address.clone())
        .collect();
    say!("\nWaiting for {} job(s)...", watched.len());
    let statuses = engine.wait_for_jobs(&watched).await?;
    for (a, s) in &statuses {
        say!("  {a}: {s}");
    }
    Ok(if statuses.iter().all(|(_, s)| s == "SUCCEEDED") {
        EXIT_OK
    } else {
        EXIT_ERROR
    })
}

/// A plan in the chosen format, on stdout.
fn print_plan(term: &Terminal, plan: &Plan, format: PlanFormat) {
    match format {
        PlanFormat::Json => super::write_json_out(&render::json::plan(plan)),
        PlanFormat::Markdown => say_inline!("{}", render::markdown::plan(plan)),
        PlanFormat::Human => say_inline!("{}", render::human::plan(plan, &term.style)),
    }
}

pub async fn show(
    engine: &Engine,
    term: &Terminal,
    planfile: Option<&Path>,
    json: bool,
    format: PlanFormat,
) -> Result<i32> {
    if let Some(p) = planfile {
        let bytes = std::fs::read(p)
            .map_err(|e| Error::new(format!("cannot read plan {}: {e}", p.display())))?;
        let plan: Plan = serde_json::from_slice(&bytes)
            .map_err(|e| Error::new(format!("{} is not a skyform plan: {e}", p.display())))?;
        print_plan(term, &plan, format);
        return Ok(EXIT_OK);
    }
    if format == PlanFormat::Markdown {
        return Err(Error::new("-format markdown shows plans only")
            .hint("skyform show -format markdown PLANFILE"));
    }
    let state = engine.read_state().await?;
    if json {
        say!(
            "{}",
            serde_json::to_string_pretty(&render::json::state(&state)).unwrap_or_default()
        );
    } else {
        say_inline!("{}", render::human::state(&state));
    }
    Ok(EXIT_OK)
}

/// A value's type as Terraform writes it in `output -json`: `"string"`, `"number"`,
/// `"bool"`, `["tuple", [...]]`, `["object", {...}]` (HCL's literals are tuples and objects).
fn type_of(v: &serde_json::Value) -> serde_json::Value {
    use serde_json::{Value, json};
    match v {
        Value::Null => json!("dynamic"),
        Value::Bool(_) => json!("bool"),
        Value::Number(_) => json!("number"),
        Value::String(_) => json!("string"),
        Value::Array(a) => json!(["tuple", a.iter().map(type_of).collect::<Vec<_>>()]),
        Value::Object(o) => {
            // Attribute types in name order, as Terraform lists them.
            let mut keys: Vec<&String> = o.keys().collect();
            keys.sort();
            let types: serde_json::Map<String, Value> = keys
                .into_iter()
                .map(|k| (k.clone(), type_of(&o[k])))
                .collect();
            json!(["object", types])
        }
    }
}

pub async fn output(engine: &Engine, name: Option<&str>, json: bool, raw: bool) -> Result<i32> {
    let state = engine.read_state().await?;
    let Some(n) = name else {
        if json {
            // Terraform's shape: outputs by name, each with `sensitive`, `type` and `value`;
            // a null one is left out, as Terraform keeps none.
            let m: serde_json::Map<String, serde_json::Value> = state
                .outputs
                .iter()
                .filter(|(_, o)| !o.value.is_null())
                .map(|(k, o)| {
                    (
                        k.clone(),
                        serde_json::json!({
                            "sensitive": o.sensitive,
                            "type": type_of(&o.value),
                            "value": o.value,
                        }),
                    )
                })
                .collect();
            say!("{}", serde_json::to_string_pretty(&m).unwrap_or_default());
        } else {
            say_inline!("{}", render::human::outputs(&state));
        }
        return Ok(EXIT_OK);
    };
    let o = state.outputs.get(n).ok_or_else(|| {
        Error::new(format!("no output {n:?}")).hint("list them with `skyform output`")
    })?;
    if raw {
        // As Terraform: the value alone, with no line break after it (for `$(…)` and files).
        match &o.value {
            serde_json::Value::String(s) => say_inline!("{s}"),
            serde_json::Value::Number(_) | serde_json::Value::Bool(_) => {
                say_inline!("{}", o.value);
            }
            _ => {
                return Err(Error::new("-raw works only for strings, numbers and bools")
                    .hint("use -json for lists and maps"));
            }
        }
        let _ = std::io::Write::flush(&mut std::io::stdout());
    } else if json {
        say!(
            "{}",
            serde_json::to_string_pretty(&o.value).unwrap_or_default()
        );
    } else {
        say!("{}", render::human::value(&o.value));
    }
    Ok(EXIT_OK)
}

pub fn graph(engine: &Engine, format: &str) -> Result<i32> {
    engine.require_valid()?;
    let mut collect = crate::config::Collect::default();
    let (_, diags) = crate::config::evaluate(engine.config(), engine.inputs(), &mut collect);
    engine.report(diags)?;
    let g = crate::graph::Graph::build(
        collect
            .instances
            .iter()
            .map(|i| (i.address.clone(), i.depends_on.clone())),
    );
    match format {
        "dot" => say_inline!("{}", g.to_dot()),
        "mermaid" => say_inline!("{}", g.to_mermaid()),
        other => {
            return Err(Error::new(format!("unknown graph format {other:?}"))
                .hint("use -format dot or -format mermaid"));
        }
    }
    Ok(EXIT_OK)
}

/// `skyform console`: evaluates expressions, one a line, against the configuration and state.
pub async fn console(engine: &Engine, term: &Terminal) -> Result<i32> {
    super::console::run(engine, term.style.color).await
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    #[test]
    fn output_types_are_written_as_terraform_writes_them() {
        // What `terraform output -json` printed for `{a = 1, b = [1, "x", true]}`.
        assert_eq!(
            super::type_of(&json!({"b": [1, "x", true], "a": 1})),
            json!(["object", {"a": "number", "b": ["tuple", ["number", "string", "bool"]]}])
        );
        assert_eq!(super::type_of(&json!("127.0.0.1")), json!("string"));
    }
}
