//! The machine-readable plan (`plan -json`, `show -json`). Format documented in
//! `docs/json-format.md`; sensitive values never appear, unknowns are listed by name.

use crate::model::UNKNOWN;
use crate::optimizer::Candidate;
use crate::plan::{Action, Plan};
use serde::Serialize;
use serde_json::{Map, Value, json};

fn scrub(attrs: Map<String, Value>, sensitive: &[String], unknown: &mut Vec<String>) -> Value {
    let mut out = Map::new();
    for (k, v) in attrs {
        if sensitive.iter().any(|s| s == &k) || k == "secrets" {
            let masked = match &v {
                Value::Object(o) => {
                    Value::Object(o.keys().map(|k| (k.clone(), Value::Null)).collect())
                }
                _ => Value::Null,
            };
            out.insert(k, masked);
            continue;
        }
        if crate::model::contains_unknown(&v) {
            unknown.push(k.clone());
            out.insert(k, Value::Null);
            continue;
        }
        out.insert(k, v);
    }
    Value::Object(out)
}

/// One placement, borrowed from the plan (a plan can hold a hundred per resource, so they
/// are written out, never copied into a JSON tree).
#[derive(Debug, Serialize)]
pub struct JsonCandidate<'a> {
    infra: String,
    cloud: &'a str,
    region: Option<&'a str>,
    zone: Option<&'a str>,
    instance_type: &'a str,
    accelerators: Vec<JsonAccelerator<'a>>,
    cpus: f64,
    memory_gib: f64,
    spot: bool,
    num_nodes: u32,
    hourly_cost_micros: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<&'a str>,
}

#[derive(Debug, Serialize)]
struct JsonAccelerator<'a> {
    name: &'a str,
    count: f64,
}

fn candidate<'a>(c: &'a Candidate, reason: Option<&'a str>) -> JsonCandidate<'a> {
    let o = &c.offering;
    JsonCandidate {
        infra: o.infra(),
        cloud: &o.cloud,
        region: o.region.as_deref(),
        zone: o.zone.as_deref(),
        instance_type: &o.instance_type,
        accelerators: o
            .accelerators
            .iter()
            .map(|(n, k)| JsonAccelerator { name: n, count: *k })
            .collect(),
        cpus: o.cpus,
        memory_gib: o.memory_gib,
        spot: o.spot,
        num_nodes: c.num_nodes,
        hourly_cost_micros: c.hourly,
        reason,
    }
}

#[derive(Debug, Serialize)]
pub struct JsonChange<'a> {
    address: String,
    module: String,
    kind: crate::model::Kind,
    name: &'a str,
    key: Option<Value>,
    actions: Vec<&'static str>,
    reasons: &'a [String],
    before: Option<Value>,
    after: Option<Value>,
    after_unknown: Vec<String>,
    sensitive: &'a [String],
    depends_on: Vec<String>,
    placement: Option<JsonCandidate<'a>>,
    candidates: Vec<JsonCandidate<'a>>,
    excluded: Vec<JsonCandidate<'a>>,
    notes: &'a [String],
    /// Present when an `import` block takes this cluster into state.
    #[serde(skip_serializing_if = "Option::is_none")]
    importing: Option<Value>,
    /// A placed service's replica range and what it costs at each end.
    #[serde(skip_serializing_if = "Option::is_none")]
    service: Option<JsonService>,
}

/// The replica range of a service and its hourly cost at min and at max replicas.
#[derive(Debug, Serialize)]
pub struct JsonService {
    min_replicas: u32,
    max_replicas: u32,
    num_overprovision: u32,
    replica_hourly_cost_micros: u64,
    spot: bool,
    ondemand_replicas: u32,
    ondemand_replica_hourly_cost_micros: Option<u64>,
    dynamic_ondemand_fallback: bool,
    hourly_cost_micros_at_min: u64,
    hourly_cost_micros_at_max: u64,
}

fn service(c: &crate::plan::Change) -> Option<JsonService> {
    let s = super::human::ServiceCost::of(c)?;
    Some(JsonService {
        min_replicas: s.min_replicas,
        max_replicas: s.max_replicas,
        num_overprovision: s.spare,
        replica_hourly_cost_micros: s.replica_hourly,
        spot: s.spot,
        ondemand_replicas: s.ondemand_replicas,
        ondemand_replica_hourly_cost_micros: s.ondemand_hourly,
        dynamic_ondemand_fallback: s.dynamic_ondemand,
        hourly_cost_micros_at_min: s.hourly(s.running(s.min_replicas)),
        hourly_cost_micros_at_max: s.hourly(s.running(s.max_replicas)),
    })
}

#[derive(Debug, Serialize)]
pub struct JsonSummary {
    add: usize,
    change: usize,
    replace: usize,
    destroy: usize,
}

#[derive(Debug, Serialize)]
pub struct JsonCost {
    before_micros: u64,
    after_micros: u64,
}

/// The plan document (`plan -json`, `show -json`); see docs/json-format.md.
#[derive(Debug, Serialize)]
pub struct JsonPlan<'a> {
    format_version: &'a str,
    skyform_version: &'a str,
    lineage: &'a str,
    serial: u64,
    config_digest: &'a str,
    destroy: bool,
    resource_changes: Vec<JsonChange<'a>>,
    output_changes: Map<String, Value>,
    /// Each finding in a sentence, as `plan` prints it.
    drift: Vec<String>,
    /// Resources whose earlier attempts may have left machines behind.
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    leftovers: &'a [crate::model::Address],
    /// Only what refresh found: no resource changes (absent otherwise).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    refresh_only: bool,
    summary: JsonSummary,
    cost: JsonCost,
}

/// Terraform's action lists: a replace is `["delete", "create"]`.
pub fn action_list(a: Action) -> Vec<&'static str> {
    match a {
        Action::NoOp => vec!["no-op"],
        Action::Create => vec!["create"],
        Action::Update => vec!["update"],
        Action::Replace => vec!["delete", "create"],
        Action::Delete => vec!["delete"],
    }
}

/// The plan as a JSON document.
pub fn plan(p: &Plan) -> JsonPlan<'_> {
    let changes: Vec<JsonChange<'_>> = p
        .changes
        .iter()
        .map(|c| {
            let mut after_unknown = Vec::new();
            let mut ignored = Vec::new();
            let before = c
                .before
                .as_ref()
                .map(|b| scrub(b.attributes(), &c.sensitive, &mut ignored));
            let after = c
                .after
                .as_ref()
                .map(|a| scrub(a.attributes(), &c.sensitive, &mut after_unknown));
            if matches!(c.action, Action::Create | Action::Replace) {
                after_unknown.extend(
                    crate::model::spec::computed_attributes(c.address.kind)
                        .iter()
                        .map(|s| (*s).to_string()),
                );
            }
            JsonChange {
                address: c.address.to_string(),
                module: crate::model::address::module_path_string(&c.address.module),
                kind: c.address.kind,
                name: &c.address.name,
                key: c.address.key.as_ref().map(|k| match k {
                    crate::model::InstanceKey::Index(i) => json!(i),
                    crate::model::InstanceKey::Key(s) => json!(s),
                }),
                actions: action_list(c.action),
                reasons: &c.reasons,
                before,
                after,
                after_unknown,
                sensitive: &c.sensitive,
                depends_on: c.depends_on.iter().map(ToString::to_string).collect(),
                placement: c.candidates.first().map(|x| candidate(x, None)),
                candidates: c.candidates.iter().map(|x| candidate(x, None)).collect(),
                excluded: c
                    .excluded
                    .iter()
                    .map(|e| candidate(&e.candidate, Some(&e.reason)))
                    .collect(),
                notes: &c.notes,
                importing: c.import.as_ref().map(|id| json!({ "id": id })),
                service: service(c),
            }
        })
        .collect();
    let outputs: Map<String, Value> = p
        .outputs
        .iter()
        .map(|(k, o)| {
            let hide = |v: &Option<Value>| -> Value {
                match v {
                    _ if o.sensitive => Value::Null,
                    Some(v) if v.as_str().is_some_and(|s| s.contains(UNKNOWN)) => Value::Null,
                    Some(v) => v.clone(),
                    None => Value::Null,
                }
            };
            (
                k.clone(),
                json!({
                    "actions": action_list(o.action),
                    "before": hide(&o.before),
                    "after": hide(&o.after),
                    "after_unknown": o.after.as_ref().is_some_and(crate::model::contains_unknown),
                    "sensitive": o.sensitive,
                }),
            )
        })
        .collect();
    let (add, change, replace, destroy) = p.counts();
    JsonPlan {
        format_version: &p.format_version,
        skyform_version: &p.skyform_version,
        lineage: &p.lineage,
        serial: p.serial,
        config_digest: &p.config_digest,
        destroy: p.destroy,
        resource_changes: changes,
        output_changes: outputs,
        drift: p.drift.iter().map(super::human::drift).collect(),
        leftovers: &p.leftovers,
        refresh_only: p.refresh_only,
        summary: JsonSummary {
            add,
            change,
            replace,
            destroy,
        },
        cost: JsonCost {
            before_micros: p.cost_before,
            after_micros: p.cost_after,
        },
    }
}

/// `apply -json`: one `planned` event (its fields) per change, before anything is done.
pub fn planned(plan: &Plan) -> Vec<Value> {
    plan.changes
        .iter()
        .filter(|c| c.action.is_change())
        .map(|c| {
            let placement = c.candidates.first().map(|p| {
                json!({
                    "infra": p.offering.infra(),
                    "instance_type": p.offering.instance_type,
                    "hourly_cost_micros": p.hourly,
                })
            });
            json!({
                "address": c.address.to_string(),
                "actions": action_list(c.action),
                "reasons": c.reasons,
                "placement": placement,
                "candidates": c.candidates.len(),
            })
        })
        .collect()
}

/// `apply -json`: the fields of the last event, what was done.
pub fn apply_summary(s: &crate::apply::Summary, plan: &Plan, state: &crate::state::State) -> Value {
    let failures: Vec<Value> = s
        .failures
        .iter()
        .map(|(a, e)| json!({"address": a.to_string(), "error": e}))
        .collect();
    json!({
        "ok": s.ok(),
        "interrupted": s.interrupted,
        "imported": s.imported,
        "added": s.added,
        "changed": s.changed,
        "replaced": s.replaced,
        "destroyed": s.destroyed,
        "failures": failures,
        "skipped": s.skipped.iter().map(ToString::to_string).collect::<Vec<_>>(),
        "serial": state.serial,
        "lineage": state.lineage,
        "cost_before_micros": plan.cost_before,
        "cost_after_micros": state.hourly_cost(),
    })
}

/// `status -json`: one object per resource.
pub fn status(state: &crate::state::State) -> Value {
    state
        .resources
        .iter()
        .map(|(a, r)| {
            if let Some(svc) = super::status::ServiceStatus::of(r) {
                // A service the controller runs: its endpoint, load and replicas.
                return json!({
                    "address": a.to_string(),
                    "status": r.computed.get("status"),
                    "endpoint": svc.endpoint,
                    "qps": r.computed.get("qps"),
                    "version": r.computed.get("version"),
                    "ready_replicas": svc.ready(),
                    "live_replicas": svc.live(),
                    "replicas": r.computed.get("replicas"),
                    "placement": r.placement.as_ref().map(|p| p.offering.infra()),
                    "hourly_cost_micros": svc.hourly,
                    "reason": r.computed.get("reason"),
                });
            }
            if r.provider == crate::controller::handoff::NAME {
                // A managed job: where the controller runs it now, and how it got there.
                return json!({
                    "address": a.to_string(),
                    "status": r.computed.get("status"),
                    "exit_code": r.computed.get("exit_code"),
                    "placement": r.computed.get("placement"),
                    "hourly_cost_micros": r.computed.get("hourly"),
                    "attempt": r.computed.get("attempt"),
                    "reason": r.computed.get("reason"),
                    "history": r.computed.get("history"),
                });
            }
            json!({
                "address": a.to_string(),
                "status": r.computed.get("status"),
                "exit_code": r.computed.get("exit_code"),
                "placement": r.placement.as_ref().map(|p| p.offering.infra()),
                "hourly_cost_micros": r.placement.as_ref().map(|p| p.hourly),
            })
        })
        .collect()
}

/// The state as JSON (`show -json`, `state show`), with sensitive values removed.
pub fn state(state: &crate::state::State) -> Value {
    let mut v = serde_json::to_value(state).unwrap_or_default();
    if let Some(res) = v.get_mut("resources").and_then(|r| r.as_object_mut()) {
        for (addr, r) in state.resources.iter() {
            let Some(spec) = res
                .get_mut(&addr.to_string())
                .and_then(|r| r.get_mut("spec"))
                .and_then(|s| s.as_object_mut())
            else {
                continue;
            };
            for k in r.sensitive.iter().map(String::as_str).chain(["secrets"]) {
                if let Some(x) = spec.get_mut(k) {
                    *x = Value::Null;
                }
            }
        }
    }
    if let Some(outs) = v.get_mut("outputs").and_then(|o| o.as_object_mut()) {
        for o in outs.values_mut() {
            if o.get("sensitive").and_then(Value::as_bool) == Some(true) {
                o["value"] = Value::Null;
            }
        }
    }
    v
}

/// An apply event as `apply -json` reports it: its type and fields.
pub fn event(e: &crate::apply::Event) -> (&'static str, Value) {
    use crate::apply::Event;
    match e {
        Event::Started { address, what } => (
            "attempt",
            json!({"address": address.to_string(), "what": what}),
        ),
        Event::Done {
            address,
            what,
            seconds,
        } => (
            "applied",
            json!({"address": address.to_string(), "what": what, "seconds": seconds}),
        ),
        Event::Failed { address, error } => (
            "error",
            json!({"address": address.to_string(), "error": error}),
        ),
        Event::FailedOver {
            address,
            infra,
            instance_type,
            error,
            seconds,
            blocked,
            next,
        } => (
            "failover",
            json!({
                "address": address.to_string(), "infra": infra,
                "instance_type": instance_type, "error": error, "seconds": seconds,
                "blocked": blocked, "next": next,
            }),
        ),
        Event::Skipped { address, because } => (
            "skipped",
            json!({"address": address.to_string(), "because": because.to_string()}),
        ),
        Event::StateWritten { serial } => ("state", json!({"serial": serial})),
        Event::Progress { address, what } => (
            "progress",
            json!({"address": address.to_string(), "what": what}),
        ),
    }
}
