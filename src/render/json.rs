//! The machine-readable plan (`plan -json`, `show -json`). Format documented in
//! `docs/json-format.md`; sensitive values never appear, unknowns are listed by name.

use crate::model::UNKNOWN;
use crate::optimizer::Candidate;
use crate::plan::{Action, Plan};
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

fn candidate(c: &Candidate) -> Value {
    json!({
        "infra": c.offering.infra(),
        "cloud": c.offering.cloud,
        "region": c.offering.region,
        "zone": c.offering.zone,
        "instance_type": c.offering.instance_type,
        "accelerators": c.offering.accelerators.iter().map(|(n, k)| json!({"name": n, "count": k})).collect::<Vec<_>>(),
        "cpus": c.offering.cpus,
        "memory_gib": c.offering.memory_gib,
        "spot": c.offering.spot,
        "num_nodes": c.num_nodes,
        "hourly_cost_micros": c.hourly,
    })
}

fn action_list(a: Action) -> Vec<&'static str> {
    match a {
        Action::NoOp => vec!["no-op"],
        Action::Create => vec!["create"],
        Action::Update => vec!["update"],
        Action::Replace => vec!["delete", "create"],
        Action::Delete => vec!["delete"],
    }
}

/// The plan as a JSON document.
pub fn plan(p: &Plan) -> Value {
    let changes: Vec<Value> = p
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
            let mut computed_unknown: Vec<String> = Vec::new();
            if matches!(c.action, Action::Create | Action::Replace) {
                computed_unknown = crate::model::spec::computed_attributes(c.address.kind)
                    .iter()
                    .map(|s| (*s).to_string())
                    .collect();
            }
            after_unknown.extend(computed_unknown);
            json!({
                "address": c.address.to_string(),
                "module": crate::model::address::module_path_string(&c.address.module),
                "kind": c.address.kind,
                "name": c.address.name,
                "key": c.address.key.as_ref().map(|k| match k {
                    crate::model::InstanceKey::Index(i) => json!(i),
                    crate::model::InstanceKey::Key(s) => json!(s),
                }),
                "actions": action_list(c.action),
                "reasons": c.reasons,
                "before": before,
                "after": after,
                "after_unknown": after_unknown,
                "sensitive": c.sensitive,
                "depends_on": c.depends_on.iter().map(ToString::to_string).collect::<Vec<_>>(),
                "placement": c.candidates.first().map(candidate),
                "candidates": c.candidates.iter().map(candidate).collect::<Vec<_>>(),
                "excluded": c.excluded.iter().map(|e| {
                    let mut v = candidate(&e.candidate);
                    v["reason"] = serde_json::Value::String(e.reason.clone());
                    v
                }).collect::<Vec<_>>(),
                "notes": c.notes,
            })
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
    json!({
        "format_version": p.format_version,
        "skyform_version": p.skyform_version,
        "lineage": p.lineage,
        "serial": p.serial,
        "config_digest": p.config_digest,
        "destroy": p.destroy,
        "resource_changes": changes,
        "output_changes": outputs,
        "drift": p.drift,
        "summary": {"add": add, "change": change, "replace": replace, "destroy": destroy},
        "cost": {
            "before_micros": p.cost_before,
            "after_micros": p.cost_after,
        },
    })
}
