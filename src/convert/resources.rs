//! `resources:` → the `resources` block (and `autostop`, `recovery` beside it).

use super::hcl::{self, Block, Item};
use super::yaml::{Node, V};
use super::{ConvertError, Doc, Kind, describe};

/// Keys of one candidate (`_get_single_resources_schema`, plus older ones the corpus uses).
const CANDIDATE_KEYS: &[&str] = &[
    "infra",
    "cloud",
    "region",
    "zone",
    "cpus",
    "memory",
    "accelerators",
    "gpus",
    "accelerator_args",
    "instance_type",
    "use_spot",
    "job_recovery",
    "spot_recovery",
    "disk_size",
    "disk_tier",
    "network_tier",
    "local_disk",
    "max_hourly_cost",
    "ports",
    "labels",
    "image_id",
    "autostop",
    "priority",
    "priority_class",
    "volumes",
    "ephemeral_storage",
    "termination_hook",
    "_docker_login_config",
    "_is_image_managed",
    "_requires_fuse",
    "_cluster_config_overrides",
    "_no_missing_accel_warnings",
];

/// What `resources:` becomes.
#[derive(Debug, Default)]
pub(super) struct Res {
    /// The body of the `resources` block, by YAML line.
    pub items: Vec<(usize, Item)>,
    /// Items for the enclosing block (`autostop`, `recovery`, comments), by YAML line.
    pub outside: Vec<(usize, Item)>,
    /// The accelerators (HCL) the job on a plain task's cluster asks for too.
    pub job_accel: Option<String>,
}

/// Whether the resources ask for job recovery (which makes the task a managed job).
pub(super) fn has_recovery(r: &Node) -> bool {
    let Some(m) = r.as_map() else { return false };
    m.iter().any(|(k, v)| {
        let k = k.key_text();
        ((k == "job_recovery" || k == "spot_recovery") && !v.is_null())
            || ((k == "any_of" || k == "ordered")
                && matches!(&v.v, V::Seq(items) if items.iter().any(has_recovery)))
    })
}

pub(super) fn convert(
    doc: &mut Doc,
    node: &Node,
    end: usize,
    kind: Kind,
    num_nodes: i64,
) -> Result<Res, ConvertError> {
    let mut res = Res::default();
    let m = match &node.v {
        V::Null => return Ok(res),
        V::Map(m) => m,
        _ => {
            return Err(doc.error(
                node,
                format!("resources must be a mapping, found {}", node.kind()),
            ));
        }
    };
    let has_candidates = m
        .iter()
        .any(|(k, v)| matches!(k.key_text().as_str(), "any_of" | "ordered") && !v.is_null());
    let outer_cloud = cloud_of(m);
    let ends = doc.entry_ends(m, end);
    let mut cx = Cx {
        kind,
        num_nodes,
        outer: true,
        has_candidates,
        outer_cloud,
        path: "resources".into(),
    };
    let items = candidate(doc, m, &ends, &mut cx, &mut res)?;
    res.items.extend(items);
    let mut seen_any = None;
    for (i, (k, v)) in m.iter().enumerate() {
        let name = k.key_text();
        if name != "any_of" && name != "ordered" {
            continue;
        }
        if v.is_null() {
            continue;
        }
        if let Some(other) = seen_any {
            return Err(doc.error(
                k,
                format!("resources cannot have both {other} and {name} (SkyPilot refuses it too)"),
            ));
        }
        seen_any = Some(name.clone());
        let V::Seq(list) = &v.v else {
            return Err(doc.error(
                v,
                format!("resources.{name} must be a list, found {}", v.kind()),
            ));
        };
        for (j, c) in list.iter().enumerate() {
            let Some(cm) = c.as_map() else {
                return Err(doc.error(
                    c,
                    format!(
                        "resources.{name}[{j}] must be a mapping, found {}",
                        c.kind()
                    ),
                ));
            };
            let cends = doc.entry_ends(cm, end_of(doc, list.get(j + 1), ends[i]));
            let mut ccx = Cx {
                outer: false,
                path: format!("resources.{name}[{j}]"),
                ..cx.clone()
            };
            let mut b = Block::new(name.clone());
            b.items = super::sorted(candidate(doc, cm, &cends, &mut ccx, &mut res)?);
            if b.items.iter().all(|i| matches!(i, Item::Comment(_))) && !b.items.is_empty() {
                // Nothing of it could be kept: an empty candidate would be the outer block
                // itself, a choice the YAML did not offer.
                res.items.extend(b.items.into_iter().map(|i| (c.line, i)));
            } else {
                res.items.push((c.line, Item::Block(b)));
            }
        }
    }
    Ok(res)
}

/// The end line of a list item: before the next item, or the list's end.
fn end_of(doc: &Doc, next: Option<&Node>, list_end: usize) -> usize {
    match next {
        Some(n) => doc.trim_end(n.line.saturating_sub(1), n.line.saturating_sub(1)),
        None => list_end,
    }
}

#[derive(Debug, Clone)]
struct Cx {
    kind: Kind,
    num_nodes: i64,
    /// The outer `resources` mapping (not an any_of/ordered item).
    outer: bool,
    has_candidates: bool,
    outer_cloud: Option<String>,
    path: String,
}

/// The cloud an outer mapping names (`infra: gcp/…` or `cloud: gcp`), lower-cased.
fn cloud_of(m: &[(Node, Node)]) -> Option<String> {
    m.iter().find_map(|(k, v)| match k.key_text().as_str() {
        "infra" | "cloud" => v
            .as_str()
            .and_then(|s| {
                s.trim()
                    .trim_matches('/')
                    .split('/')
                    .next()
                    .map(str::to_lowercase)
            })
            .filter(|c| c != "*"),
        _ => None,
    })
}

/// One candidate's keys → attributes (and items for outside).
fn candidate(
    doc: &mut Doc,
    m: &[(Node, Node)],
    ends: &[usize],
    cx: &mut Cx,
    res: &mut Res,
) -> Result<Vec<(usize, Item)>, ConvertError> {
    let mut items: Vec<(usize, Item)> = Vec::new();
    let mut legacy: Vec<(usize, &Node, &Node)> = Vec::new();
    let mut has_infra = false;
    for (i, (k, v)) in m.iter().enumerate() {
        let key = k.key_text();
        let field = format!("{}.{key}", cx.path);
        let line = k.line;
        if key == "any_of" || key == "ordered" {
            if cx.outer {
                continue;
            }
            return Err(doc.error(k, format!("{field}: any_of and ordered cannot be nested")));
        }
        if !CANDIDATE_KEYS.contains(&key.as_str()) {
            let mut known: Vec<&str> = CANDIDATE_KEYS.to_vec();
            known.extend(["any_of", "ordered"]);
            return Err(doc.unknown(k, &key, &known, &cx.path));
        }
        if v.is_null() {
            continue;
        }
        let skip =
            |doc: &mut Doc, advice: &str| -> Item { doc.unsupported(k, ends[i], &field, advice) };
        match key.as_str() {
            "infra" => {
                has_infra = true;
                let Some(s) = v.as_str() else {
                    return Err(doc.error(v, format!("{field} must be a string, found {}", v.kind())));
                };
                match infra(s) {
                    Ok(i) => {
                        note_cloud(doc, &i);
                        items.push((line, Item::Attr("infra".into(), hcl::string(&i))));
                    }
                    Err(why) => items.push((line, skip(doc, &why))),
                }
            }
            "cloud" | "region" | "zone" => {
                if v.as_str().is_none() {
                    return Err(doc.error(v, format!("{field} must be a string, found {}", v.kind())));
                }
                legacy.push((i, k, v));
            }
            "cpus" => match &v.v {
                V::Int(_) | V::Float(_) | V::Str(_) => {
                    let text = v.scalar_text().unwrap_or_default();
                    match text.parse::<crate::model::request::Cpus>() {
                        Ok(_) => items.push((line, Item::Attr("cpus".into(), match &v.v {
                            V::Str(s) => hcl::string(s),
                            _ => hcl::number(v.as_f64().unwrap_or(0.0)),
                        }))),
                        Err(e) => items.push((line, skip(doc, &format!("skyform cannot read this ({e}); write cpus as \"N\" or \"N+\"")))),
                    }
                }
                _ => return Err(doc.error(v, format!("{field} must be a number or a string such as \"4+\", found {}", v.kind()))),
            },
            "memory" => match &v.v {
                V::Int(_) | V::Float(_) | V::Str(_) => {
                    let text = v.scalar_text().unwrap_or_default();
                    match memory(&text) {
                        Some(m) if m.parse::<crate::model::request::Memory>().is_ok() => {
                            let value = match &v.v {
                                V::Str(_) => hcl::string(&m),
                                _ => hcl::number(v.as_f64().unwrap_or(0.0)),
                            };
                            items.push((line, Item::Attr("memory".into(), value)));
                        }
                        _ => items.push((line, skip(doc, "skyform cannot read this memory request; write it in GiB as \"N\", \"N+\" or \"Nx\""))),
                    }
                }
                _ => return Err(doc.error(v, format!("{field} must be a number or a string such as \"32+\", found {}", v.kind()))),
            },
            "accelerators" | "gpus" => match accelerators(v) {
                Ok(Some((expr, uniform))) => {
                    if cx.outer && uniform {
                        res.job_accel = Some(expr.clone());
                    }
                    items.push((line, Item::Attr("accelerators".into(), expr)));
                }
                Ok(None) => {}
                Err(Bad::Type(msg)) => return Err(doc.error(v, format!("{field}: {msg}"))),
                Err(Bad::Unsupported(why)) => items.push((line, skip(doc, &why))),
            },
            "instance_type" => match v.as_str() {
                Some(s) => items.push((line, Item::Attr("instance_type".into(), hcl::string(s)))),
                None => return Err(doc.error(v, format!("{field} must be a string, found {}", v.kind()))),
            },
            "use_spot" => match v.as_bool() {
                Some(b) => items.push((line, Item::Attr("use_spot".into(), b.to_string()))),
                None => return Err(doc.error(v, format!("{field} must be true or false, found {}", describe(v)))),
            },
            "disk_size" => match disk_gib(v) {
                Some(g) => items.push((line, Item::Attr("disk_size".into(), g.to_string()))),
                None => return Err(doc.error(v, format!("{field} must be a whole number of GB or a size such as \"256GB\", found {}", describe(v)))),
            },
            "max_hourly_cost" => match v.as_f64() {
                Some(c) if c > 0.0 => {
                    // SkyPilot's cap is per node; skyform's is for all nodes together.
                    let total = c * cx.num_nodes as f64;
                    items.push((line, Item::Attr("max_hourly_cost".into(), hcl::number(total))));
                    if cx.num_nodes > 1 {
                        doc.warn(line, &field, &format!("SkyPilot's cap is per node; skyform's is for all {} nodes, so it is {} here", cx.num_nodes, hcl::number(total)));
                    }
                }
                _ => return Err(doc.error(v, format!("{field} must be a number > 0, found {}", describe(v)))),
            },
            "ports" => match ports(v) {
                Ok(list) => items.push((line, Item::Attr("ports".into(), format!("[{}]", list.iter().map(u32::to_string).collect::<Vec<_>>().join(", "))))),
                Err(Bad::Type(msg)) => return Err(doc.error(v, format!("{field}: {msg}"))),
                Err(Bad::Unsupported(why)) => items.push((line, skip(doc, &why))),
            },
            "image_id" => match &v.v {
                V::Str(s) => {
                    // SkyPilot reads a bare image name on Kubernetes as a container image.
                    let on_k8s = matches!(cx.outer_cloud.as_deref(), Some("k8s" | "kubernetes"));
                    let image = if on_k8s && !s.starts_with("docker:") {
                        format!("docker:{s}")
                    } else {
                        s.clone()
                    };
                    items.push((line, Item::Attr("image_id".into(), hcl::string(&image))));
                }
                V::Map(regions) if cx.outer && !cx.has_candidates && regions.iter().all(|(r, i)| i.as_str().is_some() && !r.key_text().starts_with("docker")) => {
                    // Per-region images: SkyPilot only visits the regions listed, so each
                    // becomes a candidate in that region with its image.
                    let cloud = cx.outer_cloud.clone().unwrap_or_else(|| "*".into());
                    for (r, img) in regions {
                        let mut b = Block::new("any_of");
                        b.attr("infra", hcl::string(&format!("{cloud}/{}", r.key_text())));
                        b.attr("image_id", hcl::string(img.as_str().unwrap_or_default()));
                        items.push((line, Item::Block(b)));
                    }
                }
                V::Map(_) => items.push((line, skip(doc, "per-region images cannot be combined with any_of/ordered (or a docker: entry) here: write one any_of block per region with its image_id"))),
                _ => return Err(doc.error(v, format!("{field} must be a string or a mapping of region to image, found {}", v.kind()))),
            },
            "autostop" => {
                if !cx.outer {
                    items.push((line, skip(doc, "skyform's autostop is per cluster: set it once in the cluster's autostop block")));
                } else if cx.kind != Kind::Cluster {
                    res.outside.push((line, skip(doc, "only clusters stop when idle in skyform; a managed job's or service's cluster goes away by itself")));
                } else if let Some(it) = autostop(doc, v, &field, ends[i])? {
                    res.outside.extend(it.into_iter().map(|i| (line, i)));
                }
            }
            "job_recovery" | "spot_recovery" => {
                if key == "spot_recovery" {
                    doc.warn(line, &field, "the legacy name of job_recovery; converted as job_recovery");
                }
                if cx.kind != Kind::ManagedJob {
                    res.outside.push((line, skip(doc, "only managed jobs recover in skyform; services replace failed replicas by themselves")));
                } else if !res.outside.iter().any(|(_, i)| matches!(i, Item::Block(b) if b.head == "recovery")) {
                    res.outside.extend(recovery(doc, v, &field, ends[i], k)?.into_iter().map(|i| (line, i)));
                }
            }
            "labels" => items.push((line, skip(doc, "skyform has no labels on machines yet"))),
            "disk_tier" => items.push((line, skip(doc, "skyform has no disk tiers: choose an instance_type with the disk you need"))),
            "network_tier" => items.push((line, skip(doc, "skyform has no network tiers: choose an instance_type with the network you need"))),
            "local_disk" | "ephemeral_storage" => items.push((line, skip(doc, "skyform cannot ask for local disk: choose an instance_type that has it"))),
            "accelerator_args" => items.push((line, skip(doc, "skyform has no TPU settings"))),
            "priority" | "priority_class" => items.push((line, skip(doc, "skyform has no job priorities"))),
            "volumes" => items.push((line, skip(doc, "skyform has no volumes yet: mount the storage in setup"))),
            "termination_hook" => items.push((line, skip(doc, "skyform has no termination hooks: trap SIGTERM in run instead"))),
            _ => items.push((line, skip(doc, "SkyPilot's internal field has no equivalent"))),
        }
    }
    if !legacy.is_empty() {
        let line = legacy[0].1.line;
        let part = |name: &str| {
            legacy
                .iter()
                .find(|(_, k, _)| k.key_text() == name)
                .and_then(|(_, _, v)| v.as_str().map(str::to_string))
        };
        if has_infra {
            return Err(doc.error(
                legacy[0].1,
                format!(
                    "{}: infra cannot be combined with cloud/region/zone (SkyPilot refuses it too)",
                    cx.path
                ),
            ));
        }
        let (cloud, region, zone) = (part("cloud"), part("region"), part("zone"));
        // A candidate that names only a region keeps the outer block's cloud.
        let cloud = cloud.or_else(|| (!cx.outer).then(|| cx.outer_cloud.clone()).flatten());
        let mut parts = vec![cloud.map_or("*".to_string(), |c| c.to_lowercase())];
        if region.is_some() || zone.is_some() {
            parts.push(region.unwrap_or_else(|| "*".into()));
        }
        if let Some(z) = zone {
            parts.push(z);
        }
        let text = parts.join("/");
        match infra(&text) {
            Ok(i) => {
                note_cloud(doc, &i);
                items.push((line, Item::Attr("infra".into(), hcl::string(&i))));
            }
            Err(why) => {
                let (idx, k, _) = legacy[0];
                let last = legacy
                    .iter()
                    .map(|(i, _, _)| ends[*i])
                    .max()
                    .unwrap_or(ends[idx]);
                items.push((
                    line,
                    doc.unsupported(k, last, &format!("{}.cloud", cx.path), &why),
                ));
            }
        }
    }
    Ok(items)
}

/// Remembers the infra a file names, for the `infra` blocks the configuration needs.
fn note_cloud(doc: &mut Doc, infra: &str) {
    let parts: Vec<&str> = infra.split('/').collect();
    match parts[0] {
        c if crate::model::backend::is_catalog_cloud(c) => {
            doc.clouds.insert(c.to_string());
        }
        "k8s" | "kubernetes" | "ssh" => {
            let name = parts.get(1).filter(|p| **p != "*");
            let kind = if parts[0] == "ssh" {
                "ssh"
            } else {
                "kubernetes"
            };
            doc.clouds.insert(match name {
                Some(n) => format!("{kind}/{n}"),
                None => kind.to_string(),
            });
        }
        _ => {}
    }
}

/// An infra string in skyform's form, or why it has none.
fn infra(s: &str) -> Result<String, String> {
    let s = s.trim().trim_matches('/');
    let mut parts: Vec<String> = s.split('/').map(str::to_string).collect();
    if parts.iter().any(String::is_empty) {
        return Err(format!("{s:?} has an empty part"));
    }
    parts[0] = parts[0].to_lowercase();
    let first = parts[0].as_str();
    if first == "ssh" && parts.len() == 2 {
        return Ok(parts.join("/"));
    }
    if first != "*" && crate::model::backend::lookup(first).is_none() {
        return Err(format!(
            "skyform has no {first:?} infra (it has aws, gcp, lambda, kubernetes, ssh and local): pick one of those"
        ));
    }
    let k8s = matches!(first, "k8s" | "kubernetes");
    if parts.len() > 3 || (k8s && parts.len() > 2) {
        return Err(format!(
            "{s:?} has more than cloud/region/zone: name the Kubernetes context in an `infra \"kubernetes\" \"NAME\"` block with `context = …` and use k8s/NAME"
        ));
    }
    Ok(parts.join("/"))
}

/// Memory in skyform's GiB form: `64GB` → `64`, `1024MB+` → `1+`, `4x` stays.
fn memory(s: &str) -> Option<String> {
    let s = s.trim();
    if let Some(n) = s.strip_suffix(['x', 'X']) {
        return n.parse::<f64>().ok().map(|_| format!("{n}x"));
    }
    let (body, plus) = match s.strip_suffix('+') {
        Some(b) => (b, "+"),
        None => (s, ""),
    };
    let lower = body.to_lowercase();
    let (num, factor) = [
        ("kb", 1.0 / 1024.0 / 1024.0),
        ("mb", 1.0 / 1024.0),
        ("gb", 1.0),
        ("tb", 1024.0),
        ("pb", 1024.0 * 1024.0),
    ]
    .iter()
    .find_map(|(u, f)| lower.strip_suffix(u).map(|n| (n.trim().to_string(), *f)))
    .unwrap_or((lower.clone(), 1.0));
    let v: f64 = num.parse().ok()?;
    Some(format!("{}{plus}", hcl::number(v * factor)))
}

/// A disk size in whole GiB (`256`, `"256GB"`, `"1Ti"`).
fn disk_gib(v: &Node) -> Option<u64> {
    if let Some(i) = v.as_int() {
        return u64::try_from(i).ok();
    }
    let s = v.as_str()?.trim().to_lowercase();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (n, unit) = s.split_at(split);
    let n: f64 = n.parse().ok()?;
    let factor = match unit {
        "" | "gb" | "gi" | "g" => 1.0,
        "kb" | "ki" | "k" => 1.0 / 1024.0 / 1024.0,
        "mb" | "mi" | "m" => 1.0 / 1024.0,
        "tb" | "ti" | "t" => 1024.0,
        "pb" | "pi" | "p" => 1024.0 * 1024.0,
        _ => return None,
    };
    Some((n * factor).floor() as u64)
}

#[derive(Debug)]
enum Bad {
    /// Not what SkyPilot's schema accepts: an error.
    Type(String),
    /// Valid for SkyPilot, not expressible here: a comment.
    Unsupported(String),
}

/// One accelerator request in skyform's form (`A100:8`), checked by skyform's parser.
fn one_accel(name: &str, count: Option<&Node>) -> Result<String, Bad> {
    let text = match count {
        None => name.trim().to_string(),
        Some(c) if c.is_null() => name.trim().to_string(),
        Some(c) => match c.as_f64() {
            Some(n) => format!("{}:{}", name.trim(), hcl::number(n)),
            None => {
                return Err(Bad::Type(format!(
                    "the count of {name} must be a number, found {}",
                    c.kind()
                )));
            }
        },
    };
    let by_memory = text.split(':').any(|p| {
        let p = p.strip_suffix('+').unwrap_or(p);
        let digits = p.trim_end_matches(|c: char| c.is_ascii_alphabetic());
        let unit = &p[digits.len()..];
        !digits.is_empty()
            && digits.chars().all(|c| c.is_ascii_digit())
            && matches!(unit.to_lowercase().as_str(), "gb" | "mb" | "tb")
    });
    if by_memory {
        return Err(Bad::Unsupported(format!(
            "skyform cannot ask for GPUs by memory ({text}): name the accelerators, e.g. toset([\"L4:1\", \"A10G:1\"])"
        )));
    }
    text.parse::<crate::model::request::Accelerator>()
        .map(|_| text.clone())
        .map_err(|e| Bad::Unsupported(format!("skyform cannot read {text:?} ({e})")))
}

/// Whether every choice asks for as many devices (then a job can ask for the same choices:
/// it reserves the first one's count on whichever the cluster got).
fn same_count(all: &[String]) -> bool {
    let count = |a: &String| {
        a.parse::<crate::model::request::Accelerator>()
            .map(|a| a.count)
            .unwrap_or(f64::NAN)
    };
    all.iter().all(|a| count(a) == count(&all[0]))
}

/// `accelerators:` in every form → (HCL expression, whether a job on the cluster can ask
/// for the same: one request, or choices of one count).
fn accelerators(v: &Node) -> Result<Option<(String, bool)>, Bad> {
    match &v.v {
        V::Null => Ok(None),
        V::Str(s) => {
            let a = one_accel(s, None)?;
            Ok(Some((hcl::string(&a), true)))
        }
        V::Map(m) if m.is_empty() => Ok(None),
        V::Map(m) => {
            let all: Vec<String> = m
                .iter()
                .map(|(k, c)| one_accel(&k.key_text(), Some(c)))
                .collect::<Result<_, _>>()?;
            if all.len() == 1 {
                Ok(Some((hcl::string(&all[0]), true)))
            } else {
                let list: Vec<String> = all.iter().map(|a| hcl::string(a)).collect();
                Ok(Some((
                    format!("toset([{}])", list.join(", ")),
                    same_count(&all),
                )))
            }
        }
        V::Seq(items) => {
            let mut all = Vec::new();
            for it in items {
                match &it.v {
                    V::Str(s) => all.push(one_accel(s, None)?),
                    V::Map(m) if m.len() == 1 => {
                        all.push(one_accel(&m[0].0.key_text(), Some(&m[0].1))?)
                    }
                    _ => {
                        return Err(Bad::Type(format!(
                            "a list item must be a string or a one-key mapping, found {}",
                            it.kind()
                        )));
                    }
                }
            }
            let list: Vec<String> = all.iter().map(|a| hcl::string(a)).collect();
            Ok(Some((format!("[{}]", list.join(", ")), same_count(&all))))
        }
        _ => Err(Bad::Type(format!(
            "must be a string, a mapping or a list, found {}",
            v.kind()
        ))),
    }
}

/// `ports:` → the list of ports (ranges expanded when short).
fn ports(v: &Node) -> Result<Vec<u32>, Bad> {
    let items: Vec<&Node> = match &v.v {
        V::Seq(s) => s.iter().collect(),
        _ => vec![v],
    };
    let mut out = Vec::new();
    for it in items {
        let text = match &it.v {
            V::Int(_) | V::Str(_) => it.scalar_text().unwrap_or_default(),
            _ => {
                return Err(Bad::Type(format!(
                    "a port must be a number or a string such as \"8080\" or \"10022-10040\", found {}",
                    it.kind()
                )));
            }
        };
        let (lo, hi) = match text.split_once('-') {
            Some((a, b)) => (a.trim().parse::<u32>(), b.trim().parse::<u32>()),
            None => (text.trim().parse::<u32>(), text.trim().parse::<u32>()),
        };
        let (Ok(lo), Ok(hi)) = (lo, hi) else {
            return Err(Bad::Type(format!(
                "{text:?} is not a port or a range of ports"
            )));
        };
        if lo == 0 || hi > 65535 || lo > hi {
            return Err(Bad::Type(format!(
                "{text:?} is not a port range within 1-65535"
            )));
        }
        if hi - lo >= 100 {
            return Err(Bad::Unsupported(format!(
                "skyform lists ports one by one, and the range {text} has {} of them: list the ones you need",
                hi - lo + 1
            )));
        }
        out.extend(lo..=hi);
    }
    Ok(out)
}

/// `autostop:` (bool, minutes, "10m"/"1h"/…, or a mapping) → an `autostop` block.
fn autostop(
    doc: &mut Doc,
    v: &Node,
    field: &str,
    end: usize,
) -> Result<Option<Vec<Item>>, ConvertError> {
    let block = |minutes: i64, down: Option<bool>| {
        let mut b = Block::new("autostop");
        b.attr("idle_minutes", minutes.to_string());
        if let Some(d) = down {
            b.attr("down", d.to_string());
        }
        Item::Block(b)
    };
    let minutes_of = |n: &Node| -> Option<i64> {
        if let Some(i) = n.as_int() {
            return (i >= 0).then_some(i);
        }
        let s = n.as_str()?.trim();
        let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
        let (num, unit) = s.split_at(split);
        let num: i64 = num.parse().ok()?;
        Some(match unit {
            "" | "m" => num,
            "h" => num * 60,
            "d" => num * 60 * 24,
            "w" => num * 60 * 24 * 7,
            _ => return None,
        })
    };
    match &v.v {
        V::Bool(false) => Ok(None),
        V::Bool(true) => Ok(Some(vec![block(5, None)])),
        V::Int(_) | V::Str(_) => match minutes_of(v) {
            Some(m) => Ok(Some(vec![block(m, None)])),
            None => match v.as_bool() {
                Some(true) => Ok(Some(vec![block(5, None)])),
                Some(false) => Ok(None),
                None => Err(doc.error(v, format!("{field} must be true/false, minutes or a duration such as \"10m\", found {}", describe(v)))),
            },
        },
        V::Map(m) => {
            let mut minutes = 5;
            let mut down = None;
            let mut extra = Vec::new();
            let ends = doc.entry_ends(m, end);
            for (i, (k, val)) in m.iter().enumerate() {
                let name = k.key_text();
                match name.as_str() {
                    "idle_minutes" => match minutes_of(val) {
                        Some(n) => minutes = n,
                        None => return Err(doc.error(val, format!("{field}.idle_minutes must be a whole number, found {}", describe(val)))),
                    },
                    "down" => match val.as_bool() {
                        Some(b) => down = Some(b),
                        None => return Err(doc.error(val, format!("{field}.down must be true or false, found {}", describe(val)))),
                    },
                    "wait_for" => extra.push(doc.unsupported(k, ends[i], &format!("{field}.wait_for"), "skyform's idle means no job queued or running and no open ssh session")),
                    "hook" | "hook_timeout" => extra.push(doc.unsupported(k, ends[i], &format!("{field}.{name}"), "skyform runs no hook before stopping: trap SIGTERM in run instead")),
                    _ => return Err(doc.unknown(k, &name, &["idle_minutes", "down", "wait_for", "hook", "hook_timeout"], field)),
                }
            }
            let mut out = extra;
            let has_idle = m.iter().any(|(k, _)| k.key_text() == "idle_minutes");
            let has_down = m.iter().any(|(k, _)| k.key_text() == "down");
            if has_idle || has_down || out.is_empty() {
                out.push(block(minutes, down));
            }
            Ok(Some(out))
        }
        _ => Err(doc.error(v, format!("{field} must be a bool, minutes or a mapping, found {}", v.kind()))),
    }
}

/// `job_recovery:` (string, mapping, or legacy `spot_recovery:`) → a `recovery` block.
fn recovery(
    doc: &mut Doc,
    v: &Node,
    field: &str,
    end: usize,
    key: &Node,
) -> Result<Vec<Item>, ConvertError> {
    let mut b = Block::new("recovery");
    let mut out = Vec::new();
    let strategy = |doc: &mut Doc,
                    s: &str,
                    at: &Node,
                    end: usize,
                    out: &mut Vec<Item>|
     -> Option<String> {
        match s.to_uppercase().as_str() {
            "FAILOVER" => Some("failover".into()),
            "EAGER_NEXT_REGION" => Some("eager_next_region".into()),
            "NONE" => {
                out.push(doc.unsupported(at, end, &format!("{field}.strategy"), "skyform always recovers a managed job from preemption; for no recovery run it as a plain job on a cluster"));
                None
            }
            _ => {
                out.push(doc.unsupported(at, end, &format!("{field}.strategy"), &format!("skyform's strategies are eager_next_region and failover, not {s}; the default (eager_next_region) is used")));
                None
            }
        }
    };
    match &v.v {
        V::Str(s) => {
            if let Some(st) = strategy(doc, s, key, end, &mut out) {
                b.attr("strategy", hcl::string(&st));
            }
        }
        V::Map(m) => {
            let ends = doc.entry_ends(m, end);
            for (i, (k, val)) in m.iter().enumerate() {
                let name = k.key_text();
                match name.as_str() {
                    "strategy" => match &val.v {
                        V::Null => {}
                        V::Str(s) => {
                            if let Some(st) = strategy(doc, s, k, ends[i], &mut out) {
                                b.attr("strategy", hcl::string(&st));
                            }
                        }
                        _ => return Err(doc.error(val, format!("{field}.strategy must be a string, found {}", val.kind()))),
                    },
                    "max_restarts_on_errors" => match val.as_int() {
                        Some(n) if n >= 0 => b.attr("max_restarts_on_errors", n.to_string()),
                        _ => return Err(doc.error(val, format!("{field}.max_restarts_on_errors must be a whole number >= 0, found {}", describe(val)))),
                    },
                    "recover_on_exit_codes" => {
                        let codes: Vec<&Node> = match &val.v {
                            V::Seq(s) => s.iter().collect(),
                            _ => vec![val],
                        };
                        let mut list = Vec::new();
                        for c in codes {
                            match c.as_int() {
                                Some(n) if (0..=255).contains(&n) => list.push(n.to_string()),
                                _ => return Err(doc.error(c, format!("{field}.recover_on_exit_codes: an exit code is 0-255, found {}", describe(c)))),
                            }
                        }
                        b.attr("recover_on_exit_codes", format!("[{}]", list.join(", ")));
                    }
                    // Plugin strategies take their own keys (min_nodes with DYNAMIC_NODE_SET).
                    _ => out.push(doc.unsupported(k, ends[i], &format!("{field}.{name}"), "a setting of a SkyPilot plugin strategy; skyform has no equivalent")),
                }
            }
        }
        _ => {
            return Err(doc.error(
                v,
                format!(
                    "{field} must be a strategy name or a mapping, found {}",
                    v.kind()
                ),
            ));
        }
    }
    if !b.items.is_empty() {
        out.push(Item::Block(b));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_units() {
        assert_eq!(memory("64GB").as_deref(), Some("64"));
        assert_eq!(memory("1024MB+").as_deref(), Some("1+"));
        assert_eq!(memory("4x").as_deref(), Some("4x"));
        assert_eq!(memory("32+").as_deref(), Some("32+"));
    }

    #[test]
    fn infra_forms() {
        assert_eq!(infra("AWS/us-east-1").as_deref(), Ok("aws/us-east-1"));
        assert_eq!(infra("*/*/us-east-1a").as_deref(), Ok("*/*/us-east-1a"));
        assert!(infra("nebius/eu-north1").is_err());
        assert!(infra("k8s/aws:eks:us-east-1:123:cluster/x").is_err());
        assert_eq!(infra("kubernetes").as_deref(), Ok("kubernetes"));
    }
}
