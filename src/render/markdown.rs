//! The plan as a review document for a pull request comment (GitHub-flavoured Markdown): a
//! summary table, one collapsible section per changed resource with its attribute changes,
//! line diffs of scripts and its placement with the failover list, and the plan's digest.
//! Never longer than [`LIMIT`] characters: when the whole plan does not fit, resources keep
//! their header line and lose their details, last first, and the comment says so.

use super::human::value;
use crate::model::UNKNOWN;
use crate::model::spec::computed_attributes;
use crate::optimizer::dollars;
use crate::plan::{Action, Change, Plan};
use serde_json::Value;
use std::fmt::Write;

/// What one comment may hold (GitHub's limit is 65,536).
pub const LIMIT: usize = 65_000;

/// Lines of drift, leftovers, notes and outputs listed before "…and N more".
const LIST: usize = 100;

/// Failover candidates listed per placement.
const SHOWN_CANDIDATES: usize = 10;

/// Text safe inside HTML and a Markdown table cell, with nothing Markdown would act on.
fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '|' => out.push_str("&#124;"),
            '`' => out.push_str("&#96;"),
            // Markdown would still act on these inside inline HTML (emphasis, links,
            // mentions): entities keep them literal. (GitHub leaves `_` inside words alone.)
            '*' => out.push_str("&#42;"),
            '[' => out.push_str("&#91;"),
            ']' => out.push_str("&#93;"),
            '\\' => out.push_str("&#92;"),
            '@' => out.push_str("&#64;"),
            '~' => out.push_str("&#126;"),
            '\n' => out.push_str("<br>"),
            _ => out.push(c),
        }
    }
    out
}

fn code(s: &str) -> String {
    format!("<code>{}</code>", esc(s))
}

fn verb(a: Action) -> &'static str {
    match a {
        Action::Create => "will be created",
        Action::Update => "will be updated in place",
        Action::Replace => "must be replaced",
        Action::Delete => "will be destroyed",
        Action::NoOp => "no change",
    }
}

fn sign(a: Action) -> &'static str {
    match a {
        Action::Create => "+",
        Action::Update => "~",
        Action::Replace => "-/+",
        Action::Delete => "-",
        Action::NoOp => " ",
    }
}

/// The one line every changed resource keeps, however long the plan.
fn header(c: &Change) -> String {
    if let Some(id) = &c.import {
        return format!(
            "{} {} will be imported from {}",
            code("<="),
            code(&c.address.to_string()),
            code(id)
        );
    }
    let mut h = format!(
        "{} {} {}",
        code(sign(c.action)),
        code(&c.address.to_string()),
        verb(c.action)
    );
    if matches!(c.action, Action::Create | Action::Replace)
        && let Some(p) = c.candidates.first()
    {
        let _ = write!(
            h,
            " on {} ({}/h)",
            code(&format!(
                "{} {}",
                p.offering.infra(),
                p.offering.instance_type
            )),
            dollars(p.hourly)
        );
    }
    h
}

fn shown(c: &Change, key: &str, v: &Value) -> String {
    if c.hides(key) {
        "<em>(sensitive value)</em>".into()
    } else if v.as_str().is_some_and(|s| s.contains(UNKNOWN)) {
        "<em>(known after apply)</em>".into()
    } else {
        code(&value(v))
    }
}

fn is_multiline(v: Option<&Value>) -> bool {
    v.and_then(Value::as_str).is_some_and(|s| s.contains('\n'))
}

/// A resource's details: attribute table, script diffs, placement and failover list.
fn details(c: &Change) -> String {
    let mut out = String::new();
    if c.import.is_some() {
        out.push_str(
            "The existing cluster is taken into state as the configuration describes it; nothing is created.\n\n",
        );
    }
    for r in &c.reasons {
        let _ = writeln!(out, "- {}", esc(r));
    }
    if !c.reasons.is_empty() {
        out.push('\n');
    }
    let (before, after) = c.attribute_pairs();
    let mut keys: Vec<&String> = before.keys().chain(after.keys()).collect();
    keys.sort();
    keys.dedup();
    let hidden = |k: &str| c.hides(k);
    let mut rows = Vec::new();
    let mut scripts = Vec::new();
    for k in keys {
        let (b, a) = (before.get(k), after.get(k));
        if b == a && c.action != Action::Delete {
            continue;
        }
        if c.action == Action::Create && a.and_then(Value::as_object).is_some_and(|o| o.is_empty())
        {
            continue;
        }
        if (is_multiline(b) || is_multiline(a)) && !hidden(k) {
            scripts.push((
                k,
                b.and_then(Value::as_str).unwrap_or(""),
                a.and_then(Value::as_str).unwrap_or(""),
            ));
            continue;
        }
        let cell = |v: Option<&Value>| v.map_or(String::new(), |v| shown(c, k, v));
        rows.push(format!("| {} | {} | {} |", code(k), cell(b), cell(a)));
    }
    if matches!(c.action, Action::Create | Action::Replace) {
        for a in computed_attributes(c.address.kind) {
            if *a != "placement" {
                rows.push(format!("| {} | | <em>(known after apply)</em> |", code(a)));
            }
        }
    }
    if !rows.is_empty() {
        out.push_str("| attribute | before | after |\n| --- | --- | --- |\n");
        for r in rows {
            out.push_str(&r);
            out.push('\n');
        }
        out.push('\n');
    }
    for (k, b, a) in scripts {
        let _ = writeln!(out, "{}:\n\n```diff", code(k));
        let diff = similar::TextDiff::from_lines(b, a);
        for change in diff.iter_all_changes() {
            let line = change.value().trim_end_matches('\n');
            let mark = match change.tag() {
                similar::ChangeTag::Delete => '-',
                similar::ChangeTag::Insert => '+',
                similar::ChangeTag::Equal => ' ',
            };
            // A fence inside a script must not end ours.
            let _ = writeln!(out, "{mark} {}", line.replace("```", "`\u{200b}``"));
        }
        out.push_str("```\n\n");
    }
    if matches!(c.action, Action::Create | Action::Replace) && !c.candidates.is_empty() {
        let total = c.candidates.len();
        let _ = writeln!(
            out,
            "Placement and failover list ({} of {total} candidate{}):\n",
            total.min(SHOWN_CANDIDATES + 1),
            if total == 1 { "" } else { "s" }
        );
        out.push_str("| # | infra | instance | accelerators | spot | nodes | $/h |\n| --- | --- | --- | --- | --- | --- | --- |\n");
        for (i, x) in c.candidates.iter().take(SHOWN_CANDIDATES + 1).enumerate() {
            let acc: Vec<String> = x
                .offering
                .accelerators
                .iter()
                .map(|(n, k)| format!("{n}:{}", crate::model::request::fmt_num(*k)))
                .collect();
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {} | {} | {} |",
                if i == 0 {
                    "**1**".to_string()
                } else {
                    (i + 1).to_string()
                },
                esc(&x.offering.infra()),
                esc(&x.offering.instance_type),
                esc(&acc.join(" ")),
                if x.offering.spot { "yes" } else { "" },
                x.num_nodes,
                dollars(x.hourly)
            );
        }
        out.push('\n');
    }
    if c.action != Action::Delete
        && let Some(cost) = super::human::ServiceCost::of(c)
    {
        let _ = writeln!(out, "{}\n", esc(&cost.line()));
    }
    for n in &c.notes {
        let _ = writeln!(out, "> {}", esc(n));
    }
    out
}

fn section(c: &Change) -> String {
    format!(
        "<details><summary>{}</summary>\n\n{}</details>\n",
        header(c),
        details(c)
    )
}

/// The plan's digest: SHA-256 of the saved plan's bytes, to match a review to an apply.
pub fn digest(p: &Plan) -> String {
    use sha2::Digest;
    let bytes = serde_json::to_vec(p).unwrap_or_default();
    format!("sha256:{:x}", sha2::Sha256::digest(bytes))
}

/// The whole plan as Markdown, at most [`LIMIT`] characters.
pub fn plan(p: &Plan) -> String {
    let mut head = String::from("### skyform plan\n\n");
    let (add, change, replace, destroy) = p.counts();
    let delta = i128::from(p.cost_after) - i128::from(p.cost_before);
    let (ih, ic, ir) = match p.imports() {
        0 => ("", "", String::new()),
        n => ("import | ", "---: | ", format!("{n} | ")),
    };
    let _ = writeln!(
        head,
        "| {ih}add | change | replace | destroy | cost before | cost after |\n| {ic}---: | ---: | ---: | ---: | ---: | ---: |\n| {ir}{add} | {change} | {replace} | {destroy} | {}/h | {}/h ({}{}/h) |\n",
        dollars(p.cost_before),
        dollars(p.cost_after),
        if delta < 0 { "-" } else { "+" },
        dollars(u64::try_from(delta.unsigned_abs()).unwrap_or(u64::MAX))
    );
    if !p.drift.is_empty() {
        head.push_str("**Changes outside skyform** since the last apply:\n\n");
        for d in p.drift.iter().take(LIST) {
            let _ = writeln!(head, "- {}", esc(&super::human::drift(d)));
        }
        more_line(&mut head, p.drift.len());
    }
    if !p.leftovers.is_empty() {
        head.push_str("**Left behind by earlier attempts** (apply removes them):\n\n");
        for a in p.leftovers.iter().take(LIST) {
            let _ = writeln!(head, "- {}", code(&a.to_string()));
        }
        more_line(&mut head, p.leftovers.len());
    }
    if p.refresh_only {
        let _ = writeln!(head, "{}\n", super::human::refresh_only_line(p));
    }
    let changed: Vec<&Change> = p
        .changes
        .iter()
        .filter(|c| c.action.is_change() || c.import.is_some())
        .collect();
    if changed.is_empty() && !p.has_changes() && !p.refresh_only {
        head.push_str("No changes. The infrastructure matches the configuration.\n\n");
    }
    let mut tail = String::new();
    let notes: Vec<&String> = p
        .changes
        .iter()
        .filter(|c| !c.action.is_change())
        .flat_map(|c| c.notes.iter())
        .collect();
    if !notes.is_empty() {
        tail.push_str("**Notes**\n\n");
        let all = notes.len();
        for n in notes.into_iter().take(LIST) {
            let _ = writeln!(tail, "- {}", esc(n));
        }
        more_line(&mut tail, all);
    }
    let outs: Vec<_> = p
        .outputs
        .iter()
        .filter(|(_, o)| o.action.is_change())
        .collect();
    if !outs.is_empty() {
        tail.push_str("**Outputs**\n\n| output | before | after |\n| --- | --- | --- |\n");
        let all = outs.len();
        for (name, o) in outs.into_iter().take(LIST) {
            let cell = |v: &Option<Value>| match v {
                _ if o.sensitive => "<em>(sensitive value)</em>".to_string(),
                Some(v) if v.as_str().is_some_and(|s| s.contains(UNKNOWN)) => {
                    "<em>(known after apply)</em>".to_string()
                }
                Some(v) => code(&value(v)),
                None => String::new(),
            };
            let _ = writeln!(
                tail,
                "| {} | {} | {} |",
                code(name),
                cell(&o.before),
                cell(&o.after)
            );
        }
        more_line(&mut tail, all);
    }
    let _ = writeln!(
        tail,
        "<sub>plan digest {} · state {} serial {} · skyform {}</sub>",
        code(&digest(p)),
        code(&p.lineage),
        p.serial,
        esc(&p.skyform_version)
    );
    // Everything fits, or the details of the last resources give way to their headers.
    let sections: Vec<String> = changed.iter().map(|c| section(c)).collect();
    // The body and the tail are joined by one newline.
    let full: usize = head.len() + 1 + tail.len() + sections.iter().map(String::len).sum::<usize>();
    if full <= LIMIT {
        return format!("{head}{}\n{tail}", sections.concat());
    }
    let headers: Vec<String> = changed
        .iter()
        .map(|c| format!("- {}\n", header(c)))
        .collect();
    let note_room = 400;
    let mut budget = LIMIT.saturating_sub(head.len() + tail.len() + note_room);
    let header_total: usize = headers.iter().map(String::len).sum();
    let mut body = String::new();
    let mut detailed = 0;
    if header_total <= budget {
        budget -= header_total;
        let mut cut = false;
        for (s, h) in sections.iter().zip(&headers) {
            // A full section replaces its header line, until one does not fit.
            cut |= s.len() > budget + h.len();
            if cut {
                body.push_str(h);
            } else {
                budget = budget + h.len() - s.len();
                body.push_str(s);
                detailed += 1;
            }
        }
        let _ = writeln!(
            body,
            "\n> **This plan is too long for one comment** ({full} characters): the details of the last {} of {} changed resources are left out, their header lines kept. Run `skyform show PLANFILE` for all of it.\n",
            changed.len() - detailed,
            changed.len()
        );
    } else {
        // Not even every header fits: as many as do, then how many were left out.
        let mut shown = 0;
        for h in &headers {
            if h.len() > budget {
                break;
            }
            budget -= h.len();
            body.push_str(h);
            shown += 1;
        }
        let _ = writeln!(
            body,
            "\n> **This plan is too long for one comment** ({full} characters): {} of {} changed resources are listed, without details. Run `skyform show PLANFILE` for all of it.\n",
            shown,
            changed.len()
        );
    }
    format!("{head}{body}\n{tail}")
}

/// Ends a list of `all` items of which [`LIST`] were written: how many more, and a blank line.
fn more_line(out: &mut String, all: usize) {
    if all > LIST {
        let _ = writeln!(out, "- …and {} more", all - LIST);
    }
    out.push('\n');
}
