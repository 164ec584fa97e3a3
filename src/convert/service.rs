//! `service:` → the service's attributes and blocks.

use super::hcl::{self, Block, Item};
use super::yaml::{Node, V};
use super::{ConvertError, Doc, describe, subst};
use std::collections::BTreeMap;

const SERVICE_KEYS: &[&str] = &[
    "readiness_probe",
    "replicas",
    "replica_policy",
    "ports",
    "load_balancing_policy",
    "tls",
    "load_balancer",
    "pool",
    "workers",
    // Older SkyServe versions (examples/serve/external-lb).
    "external_load_balancers",
    "route53_hosted_zone",
];

pub(super) fn convert(
    doc: &mut Doc,
    v: &Node,
    end: usize,
    envs: &BTreeMap<String, Option<String>>,
    out: &mut Vec<(usize, Item)>,
) -> Result<(), ConvertError> {
    let Some(m) = v.as_map() else {
        return Err(doc.error(v, format!("service must be a mapping, found {}", v.kind())));
    };
    let ends = doc.entry_ends(m, end);
    let given = |n: &str| m.iter().find(|(k, v)| k.key_text() == n && !v.is_null());
    if let (Some(_), Some((k, _))) = (given("replicas"), given("replica_policy")) {
        return Err(doc.error(
            k,
            "service: replicas and replica_policy cannot both be given (SkyPilot refuses it too)"
                .into(),
        ));
    }
    let count = |n: &Node, field: &str, doc: &Doc| -> Result<String, ConvertError> {
        match n.as_int() {
            Some(i) if i >= 0 => Ok(i.to_string()),
            _ => Err(doc.error(
                n,
                format!("{field} must be a whole number >= 0, found {}", describe(n)),
            )),
        }
    };
    for (i, (k, val)) in m.iter().enumerate() {
        let name = k.key_text();
        let field = format!("service.{name}");
        let line = k.line;
        if !SERVICE_KEYS.contains(&name.as_str()) {
            return Err(doc.unknown(k, &name, SERVICE_KEYS, "service"));
        }
        if val.is_null() {
            continue;
        }
        match name.as_str() {
            "readiness_probe" => match &val.v {
                V::Str(p) => out.push((line, Item::Attr("readiness_probe".into(), subst(p, envs)))),
                V::Map(pm) => {
                    let mut b = Block::new("readiness_probe");
                    let pends = doc.entry_ends(pm, ends[i]);
                    let mut extra = Vec::new();
                    for (j, (pk, pv)) in pm.iter().enumerate() {
                        let pname = pk.key_text();
                        let pfield = format!("{field}.{pname}");
                        match pname.as_str() {
                            "path" => match pv.as_str() {
                                Some(p) => b.attr("path", subst(p, envs)),
                                None => return Err(doc.error(pv, format!("{pfield} must be a string, found {}", pv.kind()))),
                            },
                            "initial_delay_seconds" | "timeout_seconds" => b.attr(&pname, count(pv, &pfield, doc)?),
                            "post_data" => match &pv.v {
                                V::Str(s) => b.attr("post_data", subst(s, envs)),
                                V::Map(_) => b.attr("post_data", json_subst(&pv.to_json(), envs)),
                                _ => return Err(doc.error(pv, format!("{pfield} must be a string or a mapping, found {}", pv.kind()))),
                            },
                            "headers" => match &pv.v {
                                V::Map(h) => {
                                    let entries: Vec<(String, String)> = h
                                        .iter()
                                        .map(|(hk, hv)| (hk.key_text(), subst(&hv.scalar_text().unwrap_or_default(), envs)))
                                        .collect();
                                    b.attr("headers", hcl::object(&entries));
                                }
                                _ => return Err(doc.error(pv, format!("{pfield} must be a mapping, found {}", pv.kind()))),
                            },
                            "endpoint_probe_interval_seconds" => extra.push(doc.unsupported(pk, pends[j], &pfield, "skyform probes every replica on its own schedule; it cannot be set")),
                            "consecutive_failure_threshold_timeout" => extra.push(doc.unsupported(pk, pends[j], &pfield, "skyform takes a replica out of rotation at its first failed probe after it was ready")),
                            _ => return Err(doc.unknown(pk, &pname, &["path", "initial_delay_seconds", "timeout_seconds", "post_data", "headers", "endpoint_probe_interval_seconds", "consecutive_failure_threshold_timeout"], "service.readiness_probe")),
                        }
                    }
                    out.extend(extra.into_iter().map(|e| (line, e)));
                    if b.items.iter().all(|i| matches!(i, Item::Attr(n, _) if n == "path")) {
                        if let Some(Item::Attr(_, p)) = b.items.first() {
                            out.push((line, Item::Attr("readiness_probe".into(), p.clone())));
                        }
                    } else {
                        out.push((line, Item::Block(b)));
                    }
                }
                _ => return Err(doc.error(val, format!("{field} must be a path or a mapping, found {}", val.kind()))),
            },
            "replicas" => out.push((line, Item::Attr("replicas".into(), count(val, &field, doc)?))),
            "replica_policy" => {
                let Some(rm) = val.as_map() else {
                    return Err(doc.error(val, format!("{field} must be a mapping, found {}", val.kind())));
                };
                let rends = doc.entry_ends(rm, ends[i]);
                let has = |n: &str| rm.iter().any(|(k, v)| k.key_text() == n && !v.is_null());
                let mut b = Block::new("replica_policy");
                let mut extra = Vec::new();
                for (j, (rk, rv)) in rm.iter().enumerate() {
                    let rname = rk.key_text();
                    let rfield = format!("{field}.{rname}");
                    if rv.is_null() {
                        continue;
                    }
                    match rname.as_str() {
                        "min_replicas" | "max_replicas" | "num_overprovision" | "base_ondemand_fallback_replicas" | "upscale_delay_seconds" | "downscale_delay_seconds" => {
                            b.attr(&rname, count(rv, &rfield, doc)?);
                        }
                        "target_qps_per_replica" => match &rv.v {
                            V::Int(_) | V::Float(_) if has("max_replicas") => b.attr(&rname, hcl::number(rv.as_f64().unwrap_or(0.0))),
                            V::Int(_) | V::Float(_) => extra.push(doc.unsupported(rk, rends[j], &rfield, "without max_replicas the count is fixed at min_replicas, so SkyPilot never uses it either; add max_replicas to autoscale")),
                            V::Map(_) => extra.push(doc.unsupported(rk, rends[j], &rfield, "skyform has one target for all replicas: give a number")),
                            _ => return Err(doc.error(rv, format!("{rfield} must be a number, found {}", rv.kind()))),
                        },
                        "dynamic_ondemand_fallback" => match rv.as_bool() {
                            Some(x) => b.attr(&rname, x.to_string()),
                            None => return Err(doc.error(rv, format!("{rfield} must be true or false, found {}", describe(rv)))),
                        },
                        "spot_placer" => extra.push(doc.unsupported(rk, rends[j], &rfield, "skyform places spot replicas by price across the candidates; there is no placer to choose")),
                        _ => return Err(doc.unknown(rk, &rname, &["min_replicas", "max_replicas", "num_overprovision", "target_qps_per_replica", "dynamic_ondemand_fallback", "base_ondemand_fallback_replicas", "spot_placer", "upscale_delay_seconds", "downscale_delay_seconds"], "service.replica_policy")),
                    }
                }
                out.extend(extra.into_iter().map(|e| (line, e)));
                if !has("min_replicas") {
                    return Err(doc.error(val, format!("{field} needs min_replicas (SkyPilot requires it too)")));
                }
                out.push((line, Item::Block(b)));
            }
            "load_balancing_policy" => match val.as_str().map(str::to_lowercase) {
                Some(p) if p == "least_load" || p == "round_robin" => {
                    out.push((line, Item::Attr("load_balancing_policy".into(), hcl::string(&p))));
                }
                Some(p) => out.push((line, doc.unsupported(k, ends[i], &field, &format!("skyform balances with least_load (the default) or round_robin, not {p}")))),
                None => return Err(doc.error(val, format!("{field} must be a string, found {}", val.kind()))),
            },
            "ports" => out.push((line, doc.unsupported(k, ends[i], &field, "skyform's endpoint listens on the replicas' port (the first of resources.ports); there is no separate load balancer port"))),
            "tls" => out.push((line, doc.unsupported(k, ends[i], &field, "skyform's load balancer speaks plain HTTP: put a TLS proxy in front of the endpoint"))),
            "load_balancer" => out.push((line, doc.unsupported(k, ends[i], &field, "skyform's load balancer has no settings"))),
            "pool" | "workers" => out.push((line, doc.unsupported(k, ends[i], &field, "skyform has no worker pools: use a cluster with num_nodes and queue jobs on it"))),
            _ => out.push((line, doc.unsupported(k, ends[i], &field, "skyform runs one load balancer per service, on the machine that runs the controller"))),
        }
    }
    Ok(())
}

/// A JSON value as HCL, with env substitution in its strings.
fn json_subst(v: &serde_json::Value, envs: &BTreeMap<String, Option<String>>) -> String {
    match v {
        serde_json::Value::String(s) => subst(s, envs),
        serde_json::Value::Array(a) => format!(
            "[{}]",
            a.iter()
                .map(|x| json_subst(x, envs))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        serde_json::Value::Object(m) => hcl::object(
            &m.iter()
                .map(|(k, x)| (k.clone(), json_subst(x, envs)))
                .collect::<Vec<_>>(),
        ),
        other => hcl::json(other),
    }
}
