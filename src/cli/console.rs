//! `skyform console`: expressions evaluated against the configuration and state (by the
//! engine), printed as `terraform console` prints them.

use crate::engine::console::Evaluated;
use crate::engine::{Engine, Error, Result};
use std::io::{BufRead as _, IsTerminal as _, Write as _};

pub async fn run(engine: &Engine, color: bool) -> Result<i32> {
    let console = engine.console().await?;
    let tty = std::io::stdin().is_terminal();
    let stdin = std::io::stdin();
    let mut failed = false;
    let mut lines = stdin.lock().lines();
    let mut pending = String::new();
    loop {
        if tty {
            say_inline!("{}", if pending.is_empty() { "> " } else { "  " });
            let _ = std::io::stdout().flush();
        }
        let Some(line) = lines.next() else {
            if tty {
                say!();
            }
            break;
        };
        let line = line.map_err(|e| Error::new(format!("cannot read standard input: {e}")))?;
        // An expression whose brackets, quotes or heredoc are still open goes on.
        pending.push_str(&line);
        pending.push('\n');
        if super::fmt::unfinished(&pending) {
            continue;
        }
        let whole = std::mem::take(&mut pending);
        let expr = whole.trim();
        if expr.is_empty() {
            continue;
        }
        if tty && expr == "exit" {
            break;
        }
        let problem = match console.eval(expr) {
            Evaluated::Value(v) => {
                say!("{}", show(&v, 0));
                continue;
            }
            Evaluated::Sensitive => {
                say!("(sensitive value)");
                continue;
            }
            Evaluated::NotAnExpression(why) => format!("error: not an expression: {why}\n"),
            Evaluated::Errors(diags, sources) => {
                let mut text = diags.render(&sources, color);
                // The count line speaks of planning; here only the expression was evaluated.
                if let Some(i) = text.trim_end().rfind('\n')
                    && text[i..].contains("nothing was planned")
                {
                    text.truncate(i + 1);
                }
                text
            }
        };
        eprint!("{problem}");
        failed = true;
        // Without a terminal the first error ends the run.
        if !tty {
            break;
        }
    }
    Ok(if failed {
        super::EXIT_ERROR
    } else {
        super::EXIT_OK
    })
}

/// A value as Terraform's console prints it: strings quoted, lists and maps over lines, keys
/// in order.
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
            let sorted: std::collections::BTreeMap<&String, &Value> = o.iter().collect();
            let items: Vec<String> = sorted
                .iter()
                .map(|(k, x)| format!("{pad}\"{k}\" = {}\n", show(x, indent + 1)))
                .collect();
            format!("{{\n{}{end}}}", items.concat())
        }
        // Text over several lines prints as a heredoc, indented where it is nested.
        Value::String(text) if text.contains('\n') => {
            if indent == 0 {
                format!("<<EOT\n{text}\nEOT")
            } else {
                let lines: Vec<String> = text.split('\n').map(|l| format!("{end}{l}")).collect();
                format!("<<-EOT\n{}\n{end}EOT", lines.join("\n"))
            }
        }
        other => crate::render::human::value(other),
    }
}
