//! `skyform console`: expressions evaluated against the configuration and state, as
//! `terraform console` does. Each expression becomes a hidden root output and the planner
//! evaluates it (offline: no refresh, no lock), so it sees exactly what `plan` sees —
//! variables, locals, resource attributes known from state, functions. Values not known until
//! an apply print as `(known after apply)`.

use crate::config::decl::{BodyDecl, OutputDecl, attr_decl};
use crate::engine::{Engine, Error, Result};
use std::io::{BufRead as _, IsTerminal as _, Write as _};

/// The hidden output an expression is evaluated as.
const NAME: &str = "__console";

pub async fn run(engine: &Engine, color: bool) -> Result<i32> {
    engine.require_valid()?;
    // Before the first apply (or init) there is no state: nothing is known from it yet.
    let state = engine.read_state().await.unwrap_or_default();
    // Placements need the catalogs; without them cloud attributes are just unknown.
    let offerings = match engine.offerings(true).await {
        Ok((o, _)) => o,
        Err(_) => engine.offerings(false).await.map(|(o, _)| o)?,
    };
    let tty = std::io::stdin().is_terminal();
    let stdin = std::io::stdin();
    let mut failed = false;
    let mut lines = stdin.lock().lines();
    loop {
        if tty {
            print!("> ");
            let _ = std::io::stdout().flush();
        }
        let Some(line) = lines.next() else {
            if tty {
                say!();
            }
            break;
        };
        let line = line.map_err(|e| Error::new(format!("cannot read standard input: {e}")))?;
        let expr = line.trim();
        if expr.is_empty() {
            continue;
        }
        if tty && expr == "exit" {
            break;
        }
        match eval(engine, &state, &offerings, expr, color) {
            Ok(text) => say!("{text}"),
            Err(text) => {
                eprint!("{text}");
                failed = true;
                // Without a terminal the first error ends the run, as in Terraform.
                if !tty {
                    break;
                }
            }
        }
    }
    Ok(if failed {
        super::EXIT_ERROR
    } else {
        super::EXIT_OK
    })
}

/// One expression's value, shown as `terraform console` shows it; or the diagnostics.
fn eval(
    engine: &Engine,
    state: &crate::state::State,
    offerings: &[crate::optimizer::Offering],
    expr: &str,
    color: bool,
) -> std::result::Result<String, String> {
    let mut config = engine.config().clone();
    let text = format!("value = {expr}\n");
    let body = hcl_edit::parser::parse_body(&text)
        .map_err(|e| format!("error: not an expression: {}\n", e.message()))?;
    let Some(attr) = body.attributes().next() else {
        return Err("error: not an expression\n".into());
    };
    let file = config.sources.add("<console>", text.clone());
    let mut decl = BodyDecl::default();
    decl.attrs.insert("value".into(), attr_decl(file, attr));
    config.root.outputs.insert(
        NAME.into(),
        OutputDecl {
            name: NAME.into(),
            file,
            span: 0..0,
            body: decl,
        },
    );
    let (plan, diags) = crate::plan::plan(
        &config,
        engine.inputs(),
        state,
        offerings,
        &crate::plan::Options::default(),
    );
    if diags.has_errors() {
        let mut errors = diags.clone();
        errors
            .items
            .retain(|d| d.severity == crate::config::diag::Severity::Error);
        return Err(errors.render(&config.sources, color));
    }
    let value = plan
        .outputs
        .get(NAME)
        .and_then(|o| o.after.clone())
        .unwrap_or(serde_json::Value::Null);
    Ok(show(&value, 0))
}

/// A value as Terraform's console prints it: strings quoted, lists and maps over lines.
fn show(v: &serde_json::Value, indent: usize) -> String {
    use serde_json::Value;
    let pad = "  ".repeat(indent + 1);
    let end = "  ".repeat(indent);
    match v {
        Value::Array(a) if !a.is_empty() => {
            let items: Vec<String> = a
                .iter()
                .map(|x| format!("{pad}{},\n", show(x, indent + 1)))
                .collect();
            format!("[\n{}{end}]", items.concat())
        }
        Value::Object(o) if !o.is_empty() => {
            // Keys in order, as Terraform prints a map or object.
            let sorted: std::collections::BTreeMap<&String, &Value> = o.iter().collect();
            let items: Vec<String> = sorted
                .iter()
                .map(|(k, x)| format!("{pad}\"{k}\" = {}\n", show(x, indent + 1)))
                .collect();
            format!("{{\n{}{end}}}", items.concat())
        }
        other => crate::render::human::value(other),
    }
}
