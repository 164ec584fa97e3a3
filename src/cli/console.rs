//! `skyform console`: expressions evaluated against the configuration and state, as
//! `terraform console` does. Each expression becomes a hidden root output and the planner
//! evaluates it (offline: no refresh, no lock), so it sees exactly what `plan` sees —
//! variables, locals, resource attributes known from state, functions. Values not known until
//! an apply print as `(known after apply)`.

use crate::config::decl::{BodyDecl, OutputDecl, attr_decl};
use crate::config::diag::{Diagnostics, Severity};
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
    let (config, value, diags) = eval_as_output(engine, state, offerings, expr)?;
    if diags.has_errors() {
        // A value derived from a sensitive one is refused as an output's: Terraform's
        // console prints it masked.
        if diags.items.iter().any(|d| {
            d.severity == Severity::Error && d.message.ends_with("shows a sensitive value")
        }) && diags.error_count() == 1
        {
            return Ok("(sensitive value)".into());
        }
        let mut errors = diags.clone();
        errors.items.retain(|d| d.severity == Severity::Error);
        let mut text = errors.render(&config.sources, color);
        // The count line speaks of planning; here only the expression was evaluated.
        if let Some(i) = text.trim_end().rfind('\n')
            && text[i..].contains("nothing was planned")
        {
            text.truncate(i + 1);
        }
        return Err(text);
    }
    Ok(show(&value, 0))
}

/// Evaluates `expr` as a hidden root output of the configuration, with the planner.
fn eval_as_output(
    engine: &Engine,
    state: &crate::state::State,
    offerings: &[crate::optimizer::Offering],
    expr: &str,
) -> std::result::Result<(crate::config::Config, serde_json::Value, Diagnostics), String> {
    let mut config = engine.config().clone();
    let text = format!("value = {expr}\n");
    let body = hcl_edit::parser::parse_body(&text)
        .map_err(|e| format!("error: not an expression: {}\n", e.message()))?;
    let mut attrs = body.attributes();
    let (Some(attr), None) = (attrs.next(), attrs.next()) else {
        return Err("error: not one expression\n".into());
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
    let value = plan
        .outputs
        .get(NAME)
        .and_then(|o| o.after.clone())
        .unwrap_or(serde_json::Value::Null);
    Ok((config, value, diags))
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
