//! A service's own settings: `replicas` or `replica_policy`, `readiness_probe`,
//! `load_balancing_policy` and `update_mode`, each checked with SkyPilot's rules.

use super::*;

/// What a service block says about how it serves, beyond what its replicas run.
pub(super) struct ServiceSettings {
    pub(super) probe: Option<ReadinessProbe>,
    pub(super) policy: ReplicaPolicy,
    pub(super) lb: Option<LbPolicy>,
    pub(super) update: Option<UpdateMode>,
}

/// An error at an attribute: what is wrong, the label under it, and what to do.
pub(super) fn attr_error(attr: &AttrDecl, message: String, label: &str, hint: &str) -> Diagnostic {
    Diagnostic::error(message)
        .at(attr.file, Some(attr.span.clone()))
        .label(label)
        .hint(hint)
}

pub(super) fn service_settings(
    body: &BodyDecl,
    f: &Fields<'_>,
    eval: &mut EvalAttr<'_>,
    diags: &mut Diagnostics,
) -> ServiceSettings {
    // readiness_probe: the block, or its shorthand `readiness_probe = "/path"`.
    let probe_block = body.block("readiness_probe").map(|b| {
        let r = fields(b, &schema::READINESS_PROBE, eval, "readiness_probe", diags);
        let post_data = r.values.get("post_data").and_then(|(v, attr)| match v {
            Value::String(_) | Value::Object(_) => Some(to_json(v)),
            other => {
                diags.push(attr_error(
                    attr,
                    format!(
                        "post_data of readiness_probe must be a string or an object, not {}",
                        describe_value(other)
                    ),
                    "neither a string nor an object",
                    "write post_data = \"text\" or post_data = { model = \"m\" } (sent as JSON); the probe then POSTs it",
                ));
                None
            }
        });
        let probe = ReadinessProbe {
            path: r.str("path").unwrap_or_else(|| "/".into()),
            post_data,
            headers: r.map("headers"),
            timeout_seconds: r.u32("timeout_seconds"),
            initial_delay_seconds: r.u32("initial_delay_seconds"),
        };
        if probe.timeout_seconds == Some(0)
            && let Some(a) = r.attr("timeout_seconds")
        {
            diags.push(attr_error(
                a,
                "timeout_seconds of readiness_probe must be at least 1".into(),
                "no time to answer",
                "write a timeout in seconds, e.g. timeout_seconds = 15 (the default)",
            ));
        }
        (probe, r.attr("path").cloned())
    });
    let probe_short = f.str("readiness_probe").map(|path| {
        (
            ReadinessProbe {
                path,
                ..ReadinessProbe::default()
            },
            f.attr("readiness_probe").cloned(),
        )
    });
    let probe = match (probe_block, probe_short) {
        (Some(block), Some((_, Some(attr)))) => {
            diags.push(attr_error(
                &attr,
                "readiness_probe is set twice: as an attribute and as a block".into(),
                "the shorthand, beside a readiness_probe block",
                "keep one: readiness_probe = \"/path\" for a GET of a path, or the block for the other settings",
            ));
            Some(block)
        }
        (block, short) => block.or(short),
    };
    if let Some((p, Some(attr))) = &probe
        && !p.path.starts_with('/')
        && !p.path.contains(UNKNOWN)
    {
        diags.push(attr_error(
            attr,
            format!(
                "the readiness probe path {:?} does not start with /",
                p.path
            ),
            "not a path",
            &format!("write the path part of the URL, e.g. \"/{}\"", p.path),
        ));
    }
    let probe = probe.map(|(p, _)| p);

    // The replica policy: `replicas = N`, or the block, or one replica.
    let block = body.block("replica_policy");
    let policy = match (f.u32("replicas"), block) {
        (Some(n), block) => {
            if let Some(a) = f.attr("replicas") {
                if block.is_some() {
                    diags.push(attr_error(
                        a,
                        "replicas and replica_policy are both set".into(),
                        "replicas = N is the shorthand of a replica_policy",
                        "keep replicas = N for a fixed number of replicas, or replica_policy { … } to autoscale; not both",
                    ));
                } else if n == 0 {
                    diags.push(attr_error(
                        a,
                        "replicas = 0 never starts a replica".into(),
                        "zero replicas",
                        "to scale to zero when idle, write replica_policy { min_replicas = 0, max_replicas = N, target_qps_per_replica = Q }",
                    ));
                }
            }
            ReplicaPolicy::fixed(n)
        }
        (None, Some(b)) => replica_policy(b, eval, diags),
        (None, None) => ReplicaPolicy::fixed(1),
    };
    let lb = f.str("load_balancing_policy").and_then(|v| {
        let p = LbPolicy::parse(&v);
        if p.is_none()
            && !v.contains(UNKNOWN)
            && let Some(a) = f.attr("load_balancing_policy")
        {
            let all: Vec<String> = LbPolicy::ALL
                .iter()
                .map(|p| format!("{:?}", p.as_str()))
                .collect();
            diags.push(attr_error(
                a,
                format!("unknown load_balancing_policy {v:?}"),
                "not a policy",
                &format!(
                    "use {} (the default: the replica with the fewest requests in flight)",
                    all.join(" or ")
                ),
            ));
        }
        p
    });
    let update = f.str("update_mode").and_then(|v| {
        let m = UpdateMode::parse(&v);
        if m.is_none()
            && !v.contains(UNKNOWN)
            && let Some(a) = f.attr("update_mode")
        {
            let all: Vec<String> = UpdateMode::ALL
                .iter()
                .map(|p| format!("{:?}", p.as_str()))
                .collect();
            diags.push(attr_error(
                a,
                format!("unknown update_mode {v:?}"),
                "not an update mode",
                &format!(
                    "use {} (the default: new replicas replace old ones as they become ready)",
                    all.join(" or ")
                ),
            ));
        }
        m
    });
    ServiceSettings {
        probe,
        policy,
        lb,
        update,
    }
}

/// `replica_policy { … }`, with SkyPilot's rules: autoscaling needs both max_replicas and
/// target_qps_per_replica, and scaling to zero needs autoscaling. One problem is reported at
/// a time, the first of these, so a fix is never asked for twice.
pub(super) fn replica_policy(
    b: &BodyDecl,
    eval: &mut EvalAttr<'_>,
    diags: &mut Diagnostics,
) -> ReplicaPolicy {
    let r = fields(b, &schema::REPLICA_POLICY, eval, "replica_policy", diags);
    let p = ReplicaPolicy {
        min_replicas: r.u32("min_replicas").unwrap_or(1),
        max_replicas: r.u32("max_replicas"),
        target_qps_per_replica: r.f64("target_qps_per_replica"),
        upscale_delay_seconds: r.u32("upscale_delay_seconds"),
        downscale_delay_seconds: r.u32("downscale_delay_seconds"),
        num_overprovision: r.u32("num_overprovision"),
        base_ondemand_fallback_replicas: r.u32("base_ondemand_fallback_replicas"),
        dynamic_ondemand_fallback: r.bool("dynamic_ondemand_fallback"),
    };
    // A missing min_replicas was reported when loading.
    let Some(min_attr) = r.attr("min_replicas") else {
        return p;
    };
    let at = |name: &str| r.attr(name);
    let problem = if let (Some(max), Some(a)) = (p.max_replicas, at("max_replicas"))
        && max < p.min_replicas
    {
        Some(attr_error(
            a,
            format!(
                "max_replicas ({max}) is below min_replicas ({})",
                p.min_replicas
            ),
            "smaller than min_replicas",
            "raise max_replicas or lower min_replicas",
        ))
    } else if let (Some(t), Some(a)) = (p.target_qps_per_replica, at("target_qps_per_replica"))
        && t <= 0.0
    {
        Some(attr_error(
            a,
            format!("target_qps_per_replica must be above 0, not {t}"),
            "not a rate",
            "write the requests per second one replica handles, e.g. target_qps_per_replica = 5",
        ))
    } else if let (Some(_), None, Some(a)) =
        (p.max_replicas, p.target_qps_per_replica, at("max_replicas"))
    {
        Some(attr_error(
            a,
            "max_replicas without target_qps_per_replica".into(),
            "autoscaling needs a target",
            if p.min_replicas == 0 {
                "scaling to zero is autoscaling: add target_qps_per_replica = Q (requests per second per replica)"
            } else {
                "add target_qps_per_replica = Q (requests per second per replica) to scale between min and max by load, or remove max_replicas for a fixed number"
            },
        ))
    } else if let (Some(0), Some(a)) = (p.max_replicas, at("max_replicas")) {
        Some(attr_error(
            a,
            "max_replicas = 0 never starts a replica".into(),
            "no replica, whatever the load",
            "write the most replicas the load may bring up, at least 1",
        ))
    } else if let (None, Some(_), Some(a)) = (
        p.max_replicas,
        p.target_qps_per_replica,
        at("target_qps_per_replica"),
    ) {
        Some(attr_error(
            a,
            "target_qps_per_replica without max_replicas".into(),
            "autoscaling needs a maximum",
            if p.min_replicas == 0 {
                "scaling to zero is autoscaling: add max_replicas = N, the most replicas the load may bring up"
            } else {
                "add max_replicas = N, the most replicas the load may bring up, or remove target_qps_per_replica for a fixed number"
            },
        ))
    } else if p.min_replicas == 0 && p.max_replicas.is_none() {
        Some(attr_error(
            min_attr,
            "min_replicas = 0 without autoscaling never starts a replica".into(),
            "scale to zero needs autoscaling",
            "add max_replicas = N and target_qps_per_replica = Q: the first request then starts a replica",
        ))
    } else {
        None
    };
    if let Some(d) = problem {
        diags.push(d);
    }
    p
}
