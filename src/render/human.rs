//! The plan as people read it: Terraform's shape with placements, costs and script diffs.

use super::Style;
use crate::model::spec::computed_attributes;
use crate::model::{Address, UNKNOWN};
use crate::optimizer::dollars;
use crate::plan::{Action, Change, Drift, Plan};
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

/// One finding of refresh, in a sentence that starts with its address.
pub fn drift(d: &Drift) -> String {
    use crate::plan::DriftChange as C;
    let what = match &d.change {
        C::AdoptedSubmitted => "adopted (it was submitted before skyform stopped)".to_string(),
        C::AdoptedCreated => "adopted (its creation finished after skyform stopped)".to_string(),
        C::Degraded { reason } => reason.clone(),
        C::Gone { reason } => format!("{reason}; it will be created again"),
        C::RefreshFailed { error } => format!("refresh failed: {error}"),
        C::Left => "no longer exists; it leaves the state".to_string(),
        C::Attribute { key, was, now } => {
            let show = |v: &Option<Value>| v.as_ref().map_or("(none)".to_string(), value);
            format!("{key} {} → {}", show(was), show(now))
        }
        C::Status { was, now } => {
            let name = |s: &crate::state::Status| format!("{s:?}").to_lowercase();
            format!("{} → {}", name(was), name(now))
        }
    };
    format!("{}: {what}", d.address)
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
    if let Some(crate::model::Spec::ManagedJob(m)) = c.after.as_deref() {
        let _ = write!(s, "\n          {}", recovery_line(m, &c.candidates));
    }
    if let Some(cost) = ServiceCost::of(c) {
        let _ = write!(s, "\n          {}", cost.line());
    }
    Some(s)
}

/// What a service costs per hour at its fewest and at its most replicas: its placement's
/// price per replica, with a spot service's on-demand replicas at their own price.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceCost {
    pub min_replicas: u32,
    pub max_replicas: u32,
    /// Replicas kept beyond what the load needs (`num_overprovision`), at min and at max.
    pub spare: u32,
    /// The price of one replica at the placement (spot when the service asks for spot).
    pub replica_hourly: crate::optimizer::Micros,
    pub spot: bool,
    /// Replicas kept on demand (`base_ondemand_fallback_replicas`, spot services only).
    pub ondemand_replicas: u32,
    /// The price of one on-demand replica, when the plan found one.
    pub ondemand_hourly: Option<crate::optimizer::Micros>,
    /// Missing spot replicas are covered by on-demand ones (`dynamic_ondemand_fallback`).
    pub dynamic_ondemand: bool,
}

impl ServiceCost {
    /// The costs of a service's change, when it has a placement.
    pub fn of(c: &Change) -> Option<ServiceCost> {
        let Some(crate::model::Spec::Service(s)) = c.after.as_deref() else {
            return None;
        };
        let place = c.candidates.first()?;
        let per = |x: &crate::optimizer::Candidate| x.hourly / u64::from(x.num_nodes.max(1));
        let p = &s.replica_policy;
        let spot = place.offering.spot;
        Some(ServiceCost {
            min_replicas: p.min_replicas,
            max_replicas: p.max(),
            spare: p.overprovision(),
            replica_hourly: per(place),
            spot,
            ondemand_replicas: if spot { p.base_ondemand() } else { 0 },
            ondemand_hourly: c.ondemand.as_deref().map(per),
            dynamic_ondemand: spot && p.dynamic_ondemand(),
        })
    }

    /// The replicas running when the load wants `wanted` of them.
    pub fn running(&self, wanted: u32) -> u32 {
        wanted + self.spare
    }

    /// The hourly cost of `n` running replicas: the first on demand, the rest at the
    /// placement's price.
    pub fn hourly(&self, n: u32) -> crate::optimizer::Micros {
        let ondemand = n.min(self.ondemand_replicas);
        let od_price = self.ondemand_hourly.unwrap_or(self.replica_hourly);
        u64::from(ondemand) * od_price + u64::from(n - ondemand) * self.replica_hourly
    }

    /// `replicas 1–4: $0.50/h at 1, $2.00/h at 4`, and how spot and on demand are split.
    pub fn line(&self) -> String {
        let (lo, hi) = (
            self.running(self.min_replicas),
            self.running(self.max_replicas),
        );
        let mut out = if self.min_replicas == self.max_replicas {
            format!("replicas {}", self.min_replicas)
        } else {
            format!("replicas {}–{}", self.min_replicas, self.max_replicas)
        };
        if self.spare > 0 {
            let _ = write!(out, " + {} spare", self.spare);
        }
        if lo == hi {
            let _ = write!(out, ": {}/h", dollars(self.hourly(lo)));
        } else {
            let _ = write!(
                out,
                ": {}/h at {lo}, {}/h at {hi}",
                dollars(self.hourly(lo)),
                dollars(self.hourly(hi))
            );
        }
        if self.ondemand_replicas > 0 {
            let price = self
                .ondemand_hourly
                .map_or("price unknown".to_string(), |h| format!("{}/h", dollars(h)));
            let _ = write!(
                out,
                " ({} on demand at {price} each, the rest spot)",
                self.ondemand_replicas
            );
        } else if self.spot {
            out.push_str(" (all spot)");
        }
        if self.dynamic_ondemand {
            out.push_str("; missing spot replicas are covered on demand");
        }
        out
    }
}

/// What the controller does when a managed job loses its placement: the strategy and the
/// regions it would try, in order, when the first one is lost.
fn recovery_line(
    m: &crate::model::ManagedJobSpec,
    candidates: &[crate::optimizer::Candidate],
) -> String {
    use crate::controller::policy::{self, Policy, Strategy};
    let p = Policy::of(m.recovery.as_ref());
    let (name, how) = match p.strategy {
        Strategy::EagerNextRegion => ("eager_next_region", "the lost region last"),
        Strategy::Failover => ("failover", "the lost region first"),
    };
    let lost = candidates.first().map(policy::region_of);
    let mut regions: Vec<String> = Vec::new();
    for c in policy::order(candidates.to_vec(), p.strategy, lost.as_deref()) {
        let r = policy::region_of(&c);
        if !regions.contains(&r) {
            regions.push(r);
        }
    }
    let mut line = match (lost.as_deref(), regions.as_slice()) {
        (Some(lost), [_, _, ..]) => format!(
            "recovery ({name}): if {lost} is lost, tries {} ({how})",
            regions.join(" → ")
        ),
        _ => format!(
            "recovery ({name}): launched again in {} if lost",
            regions.first().map_or("its place", String::as_str)
        ),
    };
    if p.max_restarts_on_errors > 0 {
        let _ = write!(
            line,
            "; restarts on errors: up to {}",
            p.max_restarts_on_errors
        );
    }
    line
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
    if c.action == Action::Update
        && let Some(cost) = ServiceCost::of(c)
    {
        let _ = writeln!(out, "{indent}  {}", s.dim(&format!("# {}", cost.line())));
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
            let _ = writeln!(out, "  - {}", drift(d));
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

/// What apply says when it is done: failures and what they skipped, the totals and cost,
/// the failover history, and the outputs.
pub fn apply_summary(
    s: &crate::apply::Summary,
    state: &crate::state::State,
    destroy: bool,
    style: &Style,
) -> String {
    let mut out = String::from("\n");
    if s.interrupted {
        let _ = writeln!(
            out,
            "{}",
            style.yellow("Apply interrupted: the state records everything that was done.")
        );
    }
    if !s.failures.is_empty() {
        let _ = writeln!(
            out,
            "{}",
            style.red(&format!(
                "{} failed: {} error{}.",
                if destroy { "Destroy" } else { "Apply" },
                s.failures.len(),
                if s.failures.len() == 1 { "" } else { "s" }
            ))
        );
        for (addr, e) in &s.failures {
            let _ = writeln!(out, "  {addr}: {e}");
        }
        if !s.skipped.is_empty() {
            let names: Vec<String> = s.skipped.iter().map(ToString::to_string).collect();
            let _ = writeln!(out, "  skipped because of these: {}", names.join(", "));
        }
        let _ = writeln!(
            out,
            "hint: fix the cause and run `skyform {}` again; finished work is kept",
            if destroy { "destroy" } else { "apply" }
        );
    }
    if destroy && s.ok() {
        let _ = writeln!(
            out,
            "{}",
            style.green(&format!(
                "Destroy complete! Resources: {} destroyed.",
                s.destroyed
            ))
        );
    } else if s.ok() {
        let imported = if s.imported > 0 {
            format!("{} imported, ", s.imported)
        } else {
            String::new()
        };
        let _ = writeln!(
            out,
            "{}",
            style.green(&format!(
                "Apply complete! Resources: {imported}{} added, {} changed, {} replaced, {} destroyed. Cost now {}/h.",
                s.added,
                s.changed,
                s.replaced,
                s.destroyed,
                dollars(state.hourly_cost())
            ))
        );
    }
    let history: Vec<(&Address, &crate::state::Attempt)> = state
        .resources
        .iter()
        .filter(|(_, r)| r.attempts.len() > 1)
        .flat_map(|(a, r)| r.attempts.iter().map(move |t| (a, t)))
        .collect();
    if !history.is_empty() {
        out.push_str("\nFailover history\n");
        let rows: Vec<Vec<String>> = history
            .iter()
            .map(|(a, t)| {
                vec![
                    a.to_string(),
                    t.infra.clone(),
                    t.instance_type.clone(),
                    format!("{:.1}s", t.seconds),
                    t.result.clone(),
                ]
            })
            .collect();
        let table = table(&["resource", "infra", "instance", "time", "result"], &rows);
        for line in table.lines() {
            let _ = writeln!(out, "  {line}");
        }
    }
    if !state.outputs.is_empty() && !destroy {
        out.push_str("\nOutputs:\n");
        for line in outputs(state).lines() {
            let _ = writeln!(out, "  {line}");
        }
    }
    out
}

/// The state's outputs, `name = value` a line, sensitive ones hidden.
pub fn outputs(state: &crate::state::State) -> String {
    let mut out = String::new();
    for (k, o) in &state.outputs {
        let v = if o.sensitive {
            SENSITIVE.to_string()
        } else {
            value(&o.value)
        };
        let _ = writeln!(out, "{k} = {v}");
    }
    out
}

/// `skyform offers`: the first `shown` of the ranked offers as a table.
pub fn offers(ranked: &[crate::optimizer::Candidate], shown: usize) -> String {
    use crate::model::request::{fmt_num, fmt_size};
    let mut out = String::new();
    let row = |out: &mut String, cols: [&str; 7]| {
        let _ = writeln!(
            out,
            "{:<36} {:<20} {:<14} {:>5} {:>9} {:<5} {:>10}",
            cols[0], cols[1], cols[2], cols[3], cols[4], cols[5], cols[6]
        );
    };
    row(
        &mut out,
        [
            "INFRA",
            "INSTANCE",
            "ACCELERATORS",
            "vCPU",
            "MEMORY",
            "SPOT",
            "$/h",
        ],
    );
    for c in ranked.iter().take(shown) {
        let o = &c.offering;
        let acc = o
            .accelerators
            .iter()
            .map(|(n, k)| format!("{n}:{}", fmt_num(*k)))
            .collect::<Vec<_>>()
            .join(",");
        row(
            &mut out,
            [
                &o.infra(),
                &o.instance_type,
                if acc.is_empty() { "-" } else { &acc },
                &fmt_num(o.cpus),
                &format!("{} GiB", fmt_size(o.memory_gib)),
                if o.spot { "spot" } else { "-" },
                dollars(c.hourly).trim_start_matches('$'),
            ],
        );
    }
    if shown < ranked.len() {
        let _ = writeln!(
            out,
            "\n(showing {shown} of {}; --all for every one, -json for machines)",
            ranked.len()
        );
    }
    out
}

/// `skyform show` without a plan: every resource in state with its attributes, sensitive
/// ones hidden.
pub fn state(state: &crate::state::State) -> String {
    let mut out = String::new();
    if state.resources.is_empty() {
        out.push_str("The state is empty.\n");
    }
    for (addr, r) in &state.resources {
        let _ = writeln!(out, "# {addr}  ({:?})", r.status);
        for (k, v) in r.spec.attributes() {
            let shown = if r.sensitive.contains(&k) || k == "secrets" {
                SENSITIVE.to_string()
            } else {
                value(&v)
            };
            let _ = writeln!(out, "    {k} = {shown}");
        }
        for (k, v) in r.computed.iter() {
            let _ = writeln!(out, "    {k} = {}", value(v));
        }
        out.push('\n');
    }
    out
}

/// An apply event as a line of progress; `None` for events people need not see.
pub fn event(e: &crate::apply::Event, s: &Style) -> Option<String> {
    use crate::apply::Event;
    Some(match e {
        Event::Started { address, what } => format!("{address}: {what}..."),
        Event::Done {
            address,
            what,
            seconds,
        } => format!("{address}: {what} ({seconds:.1}s)"),
        Event::Failed { address, error } => format!("{address}: {} {error}", s.red("failed:")),
        Event::FailedOver {
            address,
            infra,
            instance_type,
            error,
            seconds,
            blocked,
            next,
        } => {
            format!(
                "{address}: {infra} {instance_type} failed after {seconds:.1}s: {error}\n{address}:   {blocked}; trying {next}"
            )
        }
        Event::Skipped { address, because } => {
            format!("{address}: skipped because {because} failed")
        }
        Event::StateWritten { .. } => return None,
        Event::Progress { address, what } => format!("{address}: {what}"),
    })
}
