//! The plan as people read it: Terraform's shape with placements, costs and script diffs.

use super::Style;
use crate::model::spec::computed_attributes;
use crate::model::{Address, UNKNOWN};
use crate::optimizer::dollars;
use crate::plan::{Action, Change, Plan};
use serde_json::Value;
use std::fmt::Write;

const KNOWN_AFTER: &str = "(known after apply)";
const SENSITIVE: &str = "(sensitive value)";
/// Failover candidates shown per placement (all with -json).
const SHOWN_CANDIDATES: usize = 5;

/// Renders a value as HCL-ish text on one line (multi-line strings are handled by callers).
pub fn value(v: &Value) -> String {
    match v {
        Value::Null => "null".into(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(s) if s.contains(UNKNOWN) => KNOWN_AFTER.into(),
        Value::String(s) => serde_json::to_string(s).unwrap_or_default(),
        Value::Array(a) => format!("[{}]", a.iter().map(value).collect::<Vec<_>>().join(", ")),
        Value::Object(o) => {
            if o.is_empty() {
                return "{}".into();
            }
            format!(
                "{{ {} }}",
                o.iter()
                    .map(|(k, v)| format!("{k} = {}", value(v)))
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        }
    }
}

fn is_multiline(v: Option<&Value>) -> bool {
    v.and_then(Value::as_str).is_some_and(|s| s.contains('\n'))
}

fn block_header(addr: &Address) -> String {
    format!("{} \"{}\"", addr.kind, addr.name)
}

fn sign(action: Action, s: &Style) -> String {
    match action {
        Action::Create => s.green("  +"),
        Action::Update => s.yellow("  ~"),
        Action::Replace => format!("{}{}{}", s.red("-"), "/", s.green("+")),
        Action::Delete => s.red("  -"),
        Action::NoOp => "   ".into(),
    }
}

fn heredoc(out: &mut String, indent: &str, marker: &str, name: &str, text: &str) {
    let _ = writeln!(out, "{indent}{marker} {name} = <<-EOT");
    for line in text.lines() {
        let _ = writeln!(out, "{indent}      {line}");
    }
    let _ = writeln!(out, "{indent}  EOT");
}

fn line_diff(out: &mut String, indent: &str, name: &str, before: &str, after: &str, s: &Style) {
    let _ = writeln!(out, "{indent}{} {name} = <<-EOT", s.yellow("~"));
    let diff = similar::TextDiff::from_lines(before, after);
    for change in diff.iter_all_changes() {
        let line = change.value().trim_end_matches('\n');
        let text = match change.tag() {
            similar::ChangeTag::Delete => s.red(&format!("-     {line}")),
            similar::ChangeTag::Insert => s.green(&format!("+     {line}")),
            similar::ChangeTag::Equal => format!("      {line}"),
        };
        let _ = writeln!(out, "{indent}  {text}");
    }
    let _ = writeln!(out, "{indent}  EOT");
}

fn placement_line(c: &Change) -> Option<String> {
    let first = c.candidates.first()?;
    let mut s = first.to_string();
    if c.candidates.len() > 1 {
        let rest: Vec<String> = c
            .candidates
            .iter()
            .skip(1)
            .take(SHOWN_CANDIDATES)
            .map(|x| {
                let acc = x
                    .offering
                    .accelerators
                    .first()
                    .map(|(n, c)| format!(" {n}:{}", crate::model::request::fmt_num(*c)))
                    .unwrap_or_default();
                format!(
                    "{} {}{acc} {}/h",
                    x.offering.infra(),
                    x.offering.instance_type,
                    dollars(x.hourly)
                )
            })
            .collect();
        let _ = write!(
            s,
            "\n          failover (next {} of {}): {}",
            rest.len(),
            c.candidates.len() - 1,
            rest.join(" · ")
        );
    }
    Some(s)
}

fn change_body(out: &mut String, c: &Change, s: &Style) {
    let indent = "      ";
    let (before, after) = c.attribute_pairs();
    let hidden = |k: &str| c.hides(k);
    let width = before
        .keys()
        .chain(after.keys())
        .map(String::len)
        .max()
        .unwrap_or(0)
        .max(9);
    let mut unchanged = 0;
    match c.action {
        Action::Create | Action::Replace | Action::Update | Action::NoOp => {
            let mut keys: Vec<&String> = after.keys().chain(before.keys()).collect();
            keys.sort();
            keys.dedup();
            for k in keys {
                let b = before.get(k);
                let a = after.get(k);
                let shown = |v: &Value| {
                    if hidden(k) {
                        SENSITIVE.to_string()
                    } else {
                        value(v)
                    }
                };
                if c.action == Action::Create {
                    let Some(a) = a else { continue };
                    if a.as_object().is_some_and(|o| o.is_empty()) {
                        continue;
                    }
                    if is_multiline(Some(a)) && !hidden(k) {
                        heredoc(
                            out,
                            indent,
                            &s.green("+"),
                            k,
                            a.as_str().unwrap_or_default(),
                        );
                    } else {
                        let _ = writeln!(out, "{indent}{} {k:width$} = {}", s.green("+"), shown(a));
                    }
                    continue;
                }
                if b == a {
                    unchanged += 1;
                    continue;
                }
                match (b, a) {
                    (Some(bv), Some(av))
                        if (is_multiline(Some(bv)) || is_multiline(Some(av))) && !hidden(k) =>
                    {
                        line_diff(
                            out,
                            indent,
                            k,
                            bv.as_str().unwrap_or_default(),
                            av.as_str().unwrap_or_default(),
                            s,
                        );
                    }
                    (Some(bv), Some(av)) => {
                        let _ = writeln!(
                            out,
                            "{indent}{} {k:width$} = {} → {}",
                            s.yellow("~"),
                            shown(bv),
                            shown(av)
                        );
                    }
                    (None, Some(av)) => {
                        let _ =
                            writeln!(out, "{indent}{} {k:width$} = {}", s.green("+"), shown(av));
                    }
                    (Some(bv), None) => {
                        let _ = writeln!(out, "{indent}{} {k:width$} = {}", s.red("-"), shown(bv));
                    }
                    (None, None) => {}
                }
            }
            if matches!(c.action, Action::Create | Action::Replace) {
                if let Some(p) = placement_line(c) {
                    let _ = writeln!(out, "{indent}{} {:width$} = {p}", s.green("+"), "placement");
                }
                for a in computed_attributes(c.address.kind) {
                    if *a == "placement" {
                        continue;
                    }
                    let _ = writeln!(out, "{indent}{} {a:width$} = {KNOWN_AFTER}", s.green("+"));
                }
            }
        }
        Action::Delete => {
            for (k, v) in &before {
                if k == "run" || k == "num_nodes" || k == "cluster" {
                    let shown = if hidden(k) {
                        SENSITIVE.to_string()
                    } else {
                        value(v)
                    };
                    let _ = writeln!(
                        out,
                        "{indent}{} {k:width$} = {}",
                        s.red("-"),
                        if is_multiline(Some(v)) {
                            "<<-EOT … EOT".to_string()
                        } else {
                            shown
                        }
                    );
                }
            }
        }
    }
    if unchanged > 0 {
        let _ = writeln!(
            out,
            "{indent}  {}",
            s.dim(&format!(
                "# ({unchanged} unchanged attribute{} hidden)",
                if unchanged == 1 { "" } else { "s" }
            ))
        );
    }
}

/// The whole plan as text.
pub fn plan(p: &Plan, s: &Style) -> String {
    let mut out = String::new();
    if !p.drift.is_empty() {
        let _ = writeln!(out, "Changes outside skyform since the last apply:");
        for d in &p.drift {
            let _ = writeln!(out, "  - {d}");
        }
        out.push('\n');
    }
    if !p.leftovers.is_empty() {
        let _ = writeln!(
            out,
            "Earlier attempts may have left machines behind (their clean-up was not confirmed); apply removes them:"
        );
        for a in &p.leftovers {
            let _ = writeln!(out, "  - {a}");
        }
        out.push('\n');
    }
    if p.refresh_only {
        let _ = writeln!(out, "{}", refresh_only_line(p));
        return out;
    }
    let changed: Vec<&Change> = p
        .changes
        .iter()
        .filter(|c| c.action.is_change() || c.import.is_some())
        .collect();
    if changed.is_empty()
        && !p.outputs.values().any(|o| o.action.is_change())
        && p.leftovers.is_empty()
    {
        let _ = writeln!(
            out,
            "{}",
            s.green("No changes. The infrastructure matches the configuration.")
        );
    } else if !changed.is_empty() {
        let _ = writeln!(out, "skyform will perform the following actions:\n");
        for c in &changed {
            if let Some(id) = &c.import {
                let _ = writeln!(
                    out,
                    "  {}",
                    s.bold(&format!("# {} will be imported", c.address))
                );
                let _ = writeln!(out, "{} {} {{", s.green(" <="), block_header(&c.address));
                let _ = writeln!(out, "        id = {}", value(&Value::String(id.clone())));
                let _ = writeln!(out, "    }}\n");
                continue;
            }
            let verb = match c.action {
                Action::Create => "will be created",
                Action::Update => "will be updated in place",
                Action::Replace => "must be replaced",
                Action::Delete => "will be destroyed",
                Action::NoOp => "",
            };
            let _ = writeln!(out, "  {}", s.bold(&format!("# {} {verb}", c.address)));
            for r in &c.reasons {
                let _ = writeln!(out, "  # ({r})");
            }
            let _ = writeln!(out, "{} {} {{", sign(c.action, s), block_header(&c.address));
            change_body(&mut out, c, s);
            let _ = writeln!(out, "    }}\n");
        }
    }
    let notes: Vec<&String> = p.changes.iter().flat_map(|c| c.notes.iter()).collect();
    if !notes.is_empty() {
        let _ = writeln!(out, "Notes:");
        for n in notes {
            let _ = writeln!(out, "  - {n}");
        }
        out.push('\n');
    }
    let outs: Vec<(&String, &crate::plan::OutputChange)> = p
        .outputs
        .iter()
        .filter(|(_, o)| o.action.is_change())
        .collect();
    if !outs.is_empty() {
        let _ = writeln!(out, "Changes to outputs:");
        for (name, o) in outs {
            let shown = |v: &Option<Value>| match v {
                _ if o.sensitive => SENSITIVE.to_string(),
                Some(v) => value(v),
                None => "null".into(),
            };
            let line = match o.action {
                Action::Create => format!("  {} {name} = {}", s.green("+"), shown(&o.after)),
                Action::Delete => format!("  {} {name} = {}", s.red("-"), shown(&o.before)),
                _ => format!(
                    "  {} {name} = {} → {}",
                    s.yellow("~"),
                    shown(&o.before),
                    shown(&o.after)
                ),
            };
            let _ = writeln!(out, "{line}");
        }
        out.push('\n');
    }
    let (add, change, replace, destroy) = p.counts();
    if !changed.is_empty() {
        let imports = match p.imports() {
            0 => String::new(),
            n => format!("{n} to import, "),
        };
        let _ = writeln!(out, "{}", s.bold(&format!("Plan: {imports}{add} to add, {change} to change, {replace} to replace, {destroy} to destroy.")));
    }
    let _ = writeln!(out, "{}", cost_line(p));
    out
}

/// What a refresh-only plan ends with.
pub fn refresh_only_line(p: &Plan) -> &'static str {
    if p.drift.is_empty() {
        "No changes outside skyform. The state matches what is running."
    } else {
        "This is a refresh-only plan: `skyform apply -refresh-only` records these changes in the state; no resource changes."
    }
}

pub fn cost_line(p: &Plan) -> String {
    let delta = i128::from(p.cost_after) - i128::from(p.cost_before);
    let sign = if delta < 0 { "-" } else { "+" };
    format!(
        "Cost: {}/h → {}/h ({sign}{}/h)",
        dollars(p.cost_before),
        dollars(p.cost_after),
        dollars(u64::try_from(delta.unsigned_abs()).unwrap_or(u64::MAX))
    )
}

/// Rows under a header, each column as wide as its widest cell (the last one unpadded).
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(cell.chars().count());
            }
        }
    }
    let line = |cells: &mut dyn Iterator<Item = &str>| {
        let mut out = String::new();
        for (i, cell) in cells.enumerate() {
            if i > 0 {
                out.push(' ');
            }
            out.push_str(cell);
            if i + 1 < widths.len() {
                let pad = widths[i].saturating_sub(cell.chars().count()) + 1;
                out.extend(std::iter::repeat_n(' ', pad));
            }
        }
        out.trim_end().to_string()
    };
    let mut out = line(&mut header.iter().copied());
    for row in rows {
        out.push('\n');
        out.push_str(&line(&mut row.iter().map(String::as_str)));
    }
    out
}
