//! Decoding evaluated block bodies into typed specs, with a diagnostic for every problem.

use super::diag::{Diagnostic, Diagnostics, did_you_mean};
use super::functions::hex;
use super::load::{AttrDecl, BodyDecl};
use super::schema::{self, BlockSchema, Ty};
use super::value::{
    erase_unknown_types, has_unknown, safe_evaluate, to_json, typed_samples, unknown_type,
};
use crate::model::backend;
use crate::model::{
    Accelerator, Accelerators, Address, Autostop, ClusterSpec, ControllerSpec, Cpus, JobSpec, Kind,
    LbPolicy, Lifecycle, ManagedJobSpec, Memory, ReadinessProbe, Recovery, ReplicaPolicy,
    Resources, ServiceSpec, Spec, UNKNOWN, UpdateMode,
};
use hcl::Value;
use sha2::Digest;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

mod service;
mod workdir;

use service::service_settings;
pub use workdir::hash_dir;
use workdir::workdir;

/// Evaluates one attribute for decoding; `None` when it failed (and was reported).
type EvalAttr<'a> = dyn FnMut(&AttrDecl) -> Option<Value> + 'a;

/// Evaluates and type-checks the attributes of `body` per `schema`.
struct Fields<'b> {
    body: &'b BodyDecl,
    values: BTreeMap<String, (Value, &'b AttrDecl)>,
}

fn fields<'b>(
    body: &'b BodyDecl,
    schema: &BlockSchema,
    eval: &mut EvalAttr<'_>,
    what: &str,
    diags: &mut Diagnostics,
) -> Fields<'b> {
    let mut values = BTreeMap::new();
    for (name, attr) in &body.attrs {
        let Some(spec) = schema.attr(name) else {
            continue;
        };
        if matches!(spec.ty, Ty::References) || schema::META_ATTRS.contains(&name.as_str()) {
            continue;
        }
        let Some(v) = eval(attr) else { continue };
        if let Some(problem) = type_problem(&v, spec.ty) {
            if let Some(t) = unknown_type(&v) {
                // The value waits for apply, but its type is already known to be wrong.
                diags.push(
                    Diagnostic::error(format!(
                        "{name} must be {}, but {} is {}",
                        spec.ty.describe(),
                        shown_expression(attr),
                        t.describe()
                    ))
                    .at(attr.file, Some(attr.span.clone()))
                    .label(format!("known after apply, but {}", t.describe()))
                    .hint(format!("{name} takes {}", spec.ty.describe())),
                );
                continue;
            }
            diags.push(
                Diagnostic::error(format!(
                    "wrong type for {name:?} in {what}: expected {}, found {problem}",
                    spec.ty.describe()
                ))
                .at(attr.file, Some(attr.span.clone()))
                .label(format!("this is {problem}"))
                .hint(format!("{name} takes {}", spec.ty.describe())),
            );
            continue;
        }
        // What leaves evaluation holds plain unknowns only.
        values.insert(name.clone(), (erase_unknown_types(v), attr));
    }
    Fields { body, values }
}

/// The expression of an attribute as written, for a message; "its value" when it is long.
fn shown_expression(attr: &AttrDecl) -> String {
    use hcl_edit::Decorate;
    // Without the comments and spaces around it.
    let mut expr = attr.expr.clone();
    expr.decor_mut().clear();
    let text = expr.to_string();
    let text = text.trim();
    if text.is_empty() || text.len() > 60 || text.contains('\n') {
        "its value".into()
    } else {
        text.to_string()
    }
}

fn describe_value(v: &Value) -> String {
    match v {
        Value::Null => "null".into(),
        Value::Bool(_) => "a bool".into(),
        Value::Number(_) => "a number".into(),
        Value::String(_) => "a string".into(),
        Value::Array(_) => "a list".into(),
        Value::Object(_) => "a map".into(),
    }
}

fn is_unknown(v: &Value) -> bool {
    v.as_str().is_some_and(|s| s.contains(UNKNOWN))
}

/// `None` when `v` has type `ty`; else what it is.
/// An unknown of known type is checked as a value of its type; a plain unknown (its type is not
/// known) is not checked. A string that merely contains an unknown was built by interpolation:
/// it is a string.
fn type_problem(v: &Value, ty: Ty) -> Option<String> {
    if v.as_str() == Some(UNKNOWN) {
        return None;
    }
    if let Some(t) = unknown_type(v) {
        return type_problem(&t.sample(), ty).map(|_| t.describe().to_string());
    }
    let sampled;
    let v = if has_unknown(v) {
        sampled = typed_samples(v);
        &sampled
    } else {
        v
    };
    let ok = match ty {
        Ty::String => v.is_string(),
        Ty::Number => v.is_number(),
        Ty::Count => v
            .as_f64()
            .is_some_and(|f| (0.0..=1_000_000.0).contains(&f) && f.fract() == 0.0),
        Ty::Bool => v.is_boolean(),
        Ty::ListOfStrings => v.as_array().is_some_and(|a| a.iter().all(Value::is_string)),
        Ty::ListOfNumbers => v.as_array().is_some_and(|a| a.iter().all(Value::is_number)),
        Ty::MapOfStrings => v.as_object().is_some_and(|o| {
            o.values()
                .all(|x| x.is_string() || x.is_number() || x.is_boolean())
        }),
        Ty::Accelerators => {
            v.is_string() || v.as_array().is_some_and(|a| a.iter().all(Value::is_string))
        }
        Ty::StringOrNumber => v.is_string() || v.is_number(),
        Ty::ClusterRef => v.as_object().is_some_and(|o| {
            o.get("address")
                .and_then(Value::as_str)
                .is_some_and(|a| a.starts_with("cluster.") || a.contains(".cluster."))
        }),
        Ty::Any | Ty::References => true,
    };
    if ok {
        return None;
    }
    Some(match (ty, v) {
        (Ty::Count, Value::Number(n)) => {
            format!("{n}, which is not a whole number from 0 to 1000000")
        }
        (Ty::MapOfStrings, Value::Object(o)) => match o
            .iter()
            .find(|(_, x)| !(x.is_string() || x.is_number() || x.is_boolean()))
        {
            Some((k, x)) => format!("a map whose entry {k:?} is {}", describe_value(x)),
            None => "a map".into(),
        },
        (Ty::ClusterRef, Value::Object(o))
            if !o.contains_key("address")
                && o.values()
                    .all(|x| x.as_object().is_some_and(|i| i.contains_key("address"))) =>
        {
            let keys: Vec<String> = o.keys().map(|k| format!("[{k:?}]")).collect();
            format!(
                "all instances of a cluster with for_each (pick one: {})",
                keys.join(", ")
            )
        }
        (Ty::ClusterRef, Value::Array(a))
            if a.iter()
                .all(|x| x.as_object().is_some_and(|i| i.contains_key("address"))) =>
        {
            format!(
                "all {} instances of a cluster with count (pick one with [INDEX])",
                a.len()
            )
        }
        (Ty::ClusterRef, Value::String(s)) if !s.contains(UNKNOWN) => format!("the string {s:?}"),
        (Ty::ClusterRef, Value::Object(o)) if o.contains_key("address") => {
            "a reference to something other than a cluster".into()
        }
        _ => describe_value(v),
    })
}

impl Fields<'_> {
    fn str(&self, name: &str) -> Option<String> {
        self.values.get(name).and_then(|(v, _)| match v {
            Value::String(s) => Some(s.clone()),
            Value::Number(n) => Some(n.to_string()),
            _ => None,
        })
    }
    fn f64(&self, name: &str) -> Option<f64> {
        self.values.get(name).and_then(|(v, _)| v.as_f64())
    }
    fn u32(&self, name: &str) -> Option<u32> {
        self.f64(name).map(|f| f.min(f64::from(u32::MAX)) as u32)
    }
    fn bool(&self, name: &str) -> Option<bool> {
        self.values.get(name).and_then(|(v, _)| v.as_bool())
    }
    fn numbers(&self, name: &str) -> Vec<f64> {
        self.values
            .get(name)
            .and_then(|(v, _)| v.as_array())
            .map(|a| a.iter().filter_map(Value::as_f64).collect())
            .unwrap_or_default()
    }
    fn map(&self, name: &str) -> BTreeMap<String, String> {
        self.values
            .get(name)
            .and_then(|(v, _)| v.as_object())
            .map(|o| {
                o.iter()
                    .map(|(k, v)| {
                        let s = match v {
                            Value::String(s) => s.clone(),
                            other => other.to_string(),
                        };
                        (k.clone(), s)
                    })
                    .collect()
            })
            .unwrap_or_default()
    }
    fn attr(&self, name: &str) -> Option<&AttrDecl> {
        self.values
            .get(name)
            .map(|(_, a)| *a)
            .or_else(|| self.body.attrs.get(name))
    }
}

fn nested<'b>(body: &'b BodyDecl, name: &str) -> impl Iterator<Item = &'b BodyDecl> + 'b {
    let name = name.to_string();
    body.blocks
        .iter()
        .filter(move |b| b.0 == name)
        .map(|b| &b.1)
}

/// A request that does not parse, reported at the attribute that holds it.
fn request_error<T>(
    attr: &AttrDecl,
    r: Result<T, crate::model::RequestError>,
    what: &str,
    diags: &mut Diagnostics,
) -> Option<T> {
    match r {
        Ok(v) => Some(v),
        Err(e) => {
            diags.push(
                Diagnostic::error(format!("invalid {what}: {}", e.message))
                    .hint(e.hint.clone())
                    .at(attr.file, Some(attr.span.clone()))
                    .label(e.message),
            );
            None
        }
    }
}

fn decode_resources(
    body: Option<&BodyDecl>,
    eval: &mut EvalAttr<'_>,
    what: &str,
    diags: &mut Diagnostics,
    top: bool,
) -> Resources {
    let Some(body) = body else {
        return Resources::default();
    };
    let schema = if top {
        &schema::RESOURCES
    } else {
        &schema::CANDIDATE
    };
    let f = fields(body, schema, eval, what, diags);
    let mut r = Resources::default();
    if let Some((v, attr)) = f.values.get("accelerators")
        && !is_unknown(v)
    {
        {
            r.accelerators = match v {
                Value::String(s) => {
                    request_error(attr, s.parse::<Accelerator>(), "accelerators", diags)
                        .map(Accelerators::One)
                }
                Value::Array(items) => {
                    let parsed: Option<Vec<Accelerator>> = items
                        .iter()
                        .map(|i| {
                            request_error(
                                attr,
                                i.as_str().unwrap_or_default().parse::<Accelerator>(),
                                "accelerators",
                                diags,
                            )
                        })
                        .collect();
                    // toset(...) reaches us as a sorted list; tell it apart by its expression.
                    let is_set = matches!(&attr.expr, hcl_edit::expr::Expression::FuncCall(fc) if fc.name.name.as_str() == "toset");
                    parsed.map(|p| {
                        if is_set {
                            Accelerators::AnyOf(p)
                        } else {
                            Accelerators::Ordered(p)
                        }
                    })
                }
                _ => None,
            };
        }
    }
    if let (Some(s), Some(attr)) = (f.str("cpus"), f.attr("cpus")) {
        r.cpus = request_error(attr, s.parse::<Cpus>(), "cpus", diags);
    }
    if let (Some(s), Some(attr)) = (f.str("memory"), f.attr("memory")) {
        r.memory = request_error(attr, s.parse::<Memory>(), "memory", diags);
    }
    r.use_spot = f.bool("use_spot");
    r.infra = f.str("infra");
    if let (Some(infra), Some(attr)) = (&r.infra, f.attr("infra")) {
        check_infra_string(infra, attr, diags);
    }
    r.instance_type = f.str("instance_type");
    r.disk_size = f.u32("disk_size");
    r.ports = f
        .numbers("ports")
        .into_iter()
        .filter_map(|p| {
            if (1.0..=65535.0).contains(&p) && p.fract() == 0.0 {
                Some(p as u16)
            } else {
                None
            }
        })
        .collect();
    if f.numbers("ports").len() != r.ports.len()
        && let Some(a) = f.attr("ports")
    {
        diags.push(
            Diagnostic::error("ports must be whole numbers from 1 to 65535")
                .at(a.file, Some(a.span.clone()))
                .label("out of range")
                .hint("write ports = [8080]"),
        );
    }
    r.max_hourly_cost = f.f64("max_hourly_cost");
    if r.max_hourly_cost.is_some_and(|c| c < 0.0)
        && let Some(a) = f.attr("max_hourly_cost")
    {
        diags.push(
            Diagnostic::error("max_hourly_cost must not be negative")
                .at(a.file, Some(a.span.clone()))
                .label("negative")
                .hint("write a price in dollars per hour, e.g. 40.0"),
        );
    }
    r.image_id = f.str("image_id");
    if top {
        r.any_of = nested(body, "any_of")
            .map(|b| decode_resources(Some(b), eval, "any_of", diags, false))
            .collect();
        r.ordered = nested(body, "ordered")
            .map(|b| decode_resources(Some(b), eval, "ordered", diags, false))
            .collect();
        if !r.any_of.is_empty()
            && !r.ordered.is_empty()
            && let Some((_, b, file, span)) = body.blocks.iter().find(|b| b.0 == "ordered")
        {
            let _ = b;
            diags.push(
                Diagnostic::error("resources has both any_of and ordered blocks")
                    .at(*file, Some(span.clone()))
                    .label("ordered here")
                    .hint("use any_of (cheapest wins) or ordered (first that fits wins), not both"),
            );
        }
    }
    r
}

fn check_infra_string(infra: &str, attr: &AttrDecl, diags: &mut Diagnostics) {
    let first = infra.split('/').next().unwrap_or_default();
    let parts = infra.split('/').count();
    let problem = if infra.is_empty() || infra.split('/').any(str::is_empty) {
        Some("empty part".to_string())
    } else if first != "*" && backend::lookup(first).is_none() {
        Some(format!("{first:?} is not a known infra"))
    } else if parts > 3 {
        Some("more than cloud/region/zone".to_string())
    } else if backend::is_this_machine(first) && parts > 1 {
        Some("local takes no region".to_string())
    } else {
        None
    };
    if let Some(p) = problem {
        let mut d = Diagnostic::error(format!("invalid infra {infra:?}: {p}"))
            .at(attr.file, Some(attr.span.clone()))
            .label(p);
        let names = backend::BACKENDS
            .iter()
            .flat_map(|b| std::iter::once(b.name).chain(b.aliases.iter().copied()));
        d = match did_you_mean(first, names) {
            Some(s) if s != first => d.hint(format!("did you mean {s:?}? Forms: cloud[/region[/zone]], k8s/CONTEXT, ssh/POOL, local; \"*\" matches any part")),
            _ => d.hint("forms: cloud[/region[/zone]], k8s/CONTEXT, ssh/POOL, local; \"*\" matches any part"),
        };
        diags.push(d);
    }
}

/// The directories decode needs: the module's (for relative paths) and the root's.
#[derive(Debug, Clone)]
pub struct Dirs<'a> {
    pub module: &'a Path,
    pub root: &'a Path,
    /// Values unknown until apply are acceptable everywhere (`validate` without variables).
    pub unknown_ok: bool,
}

/// Attributes the planner needs to know (placement, fit, node count, and the workdir whose
/// contents it hashes): a value known only after apply is an error there.
const KNOWN_AT_PLAN: [&str; 10] = [
    "num_nodes",
    "replicas",
    "workdir",
    "accelerators",
    "cpus",
    "memory",
    "use_spot",
    "infra",
    "instance_type",
    "disk_size",
];

/// Reports attributes in `KNOWN_AT_PLAN` whose value is unknown; true when there were none.
fn require_known(
    body: &BodyDecl,
    eval: &mut EvalAttr<'_>,
    what: &str,
    diags: &mut Diagnostics,
) -> bool {
    let mut ok = true;
    let mut check = |b: &BodyDecl, diags: &mut Diagnostics| {
        for name in KNOWN_AT_PLAN {
            let Some(attr) = b.attrs.get(name) else {
                continue;
            };
            if attr
                .refs
                .iter()
                .all(|r| Kind::parse(&r.root).is_none() && r.root != "module")
            {
                continue;
            }
            if let Some(v) = eval(attr)
                && has_unknown(&v)
            {
                ok = false;
                diags.push(
                    Diagnostic::error(format!("{name} of {what} depends on a value known only after apply"))
                        .at(attr.file, Some(attr.span.clone()))
                        .label("must be known when planning")
                        .hint(if name == "workdir" {
                            "the plan hashes the workdir's contents: use a literal path, a variable or a local here"
                        } else {
                            "placement and fit are decided by the plan: use a literal, a variable or a local here"
                        }),
                );
            }
        }
    };
    check(body, diags);
    if let Some(r) = body.block("resources") {
        check(r, diags);
        for (_, c, _, _) in &r.blocks {
            check(c, diags);
        }
    }
    ok
}

/// Decodes one resource instance's body into its spec.
pub fn decode(
    kind: Kind,
    body: &BodyDecl,
    eval: &mut EvalAttr<'_>,
    what: &str,
    dirs: &Dirs<'_>,
    diags: &mut Diagnostics,
) -> Option<Spec> {
    let before = diags.error_count();
    if !dirs.unknown_ok && !require_known(body, eval, what, diags) {
        return None;
    }
    let schema = schema::of(kind);
    let f = fields(body, schema, eval, what, diags);
    let resources = decode_resources(body.block("resources"), eval, "resources", diags, true);
    let num_nodes = f.u32("num_nodes").unwrap_or(1);
    if num_nodes == 0
        && let Some(a) = f.attr("num_nodes")
    {
        diags.push(
            Diagnostic::error("num_nodes must be at least 1")
                .at(a.file, Some(a.span.clone()))
                .label("zero nodes")
                .hint("write num_nodes = 1, or remove the block to have none"),
        );
    }
    let spec = match kind {
        Kind::Cluster => {
            let (workdir, workdir_hash) = workdir(&f, dirs.module, dirs.root, diags);
            let autostop = body.block("autostop").map(|b| {
                let a = fields(b, &schema::AUTOSTOP, eval, "autostop", diags);
                Autostop {
                    idle_minutes: a.u32("idle_minutes").unwrap_or(0),
                    down: a.bool("down").unwrap_or(false),
                }
            });
            Spec::Cluster(Box::new(ClusterSpec {
                num_nodes,
                resources,
                workdir,
                workdir_hash,
                envs: f.map("envs"),
                setup: f.str("setup"),
                autostop,
                retry_until_up: f.bool("retry_until_up").unwrap_or(false),
            }))
        }
        Kind::Job => {
            let cluster = f
                .values
                .get("cluster")
                .and_then(|(v, _)| v.as_object())
                .and_then(|o| o.get("address"))
                .and_then(Value::as_str)
                .and_then(|s| s.parse::<Address>().ok());
            let cluster_unknown = f.values.get("cluster").is_some_and(|(v, _)| is_unknown(v));
            if cluster.is_none() && cluster_unknown {
                // Its cluster failed (and was reported): nothing to add.
                return None;
            }
            let Some(cluster) = cluster else {
                if diags.error_count() == before
                    && let Some(a) = f.attr("cluster")
                {
                    diags.push(
                        Diagnostic::error(format!("cluster of {what} must be a reference to one cluster"))
                            .at(a.file, Some(a.span.clone()))
                            .label("not a single cluster")
                            .hint("write cluster = cluster.NAME (with [KEY] for a cluster with for_each or count)"),
                    );
                }
                return None;
            };
            Spec::Job(JobSpec {
                cluster,
                num_nodes,
                resources: Resources::shared(resources),
                run: f.str("run").unwrap_or_default(),
                envs: f.map("envs"),
                secrets: f.map("secrets"),
            })
        }
        Kind::ManagedJob => {
            let (workdir, workdir_hash) = workdir(&f, dirs.module, dirs.root, diags);
            let recovery = body.block("recovery").map(|b| {
                let r = fields(b, &schema::RECOVERY, eval, "recovery", diags);
                // SkyPilot's default, and the one of a managed job without the block.
                let strategy = r
                    .str("strategy")
                    .unwrap_or_else(|| "eager_next_region".into());
                if !["failover", "eager_next_region"].contains(&strategy.as_str())
                    && let Some(a) = r.attr("strategy")
                {
                    diags.push(
                        Diagnostic::error(format!("unknown recovery strategy {strategy:?}"))
                            .at(a.file, Some(a.span.clone()))
                            .label("not a strategy")
                            .hint("use \"failover\" or \"eager_next_region\""),
                    );
                }
                Recovery {
                    strategy,
                    max_restarts_on_errors: r.u32("max_restarts_on_errors").unwrap_or(0),
                    recover_on_exit_codes: r
                        .numbers("recover_on_exit_codes")
                        .into_iter()
                        .map(|n| n as i32)
                        .collect(),
                }
            });
            Spec::ManagedJob(Box::new(ManagedJobSpec {
                num_nodes,
                resources,
                workdir,
                workdir_hash,
                setup: f.str("setup"),
                run: f.str("run").unwrap_or_default(),
                envs: f.map("envs"),
                secrets: f.map("secrets"),
                recovery,
            }))
        }
        Kind::Service => {
            let (workdir, workdir_hash) = workdir(&f, dirs.module, dirs.root, diags);
            let settings = service_settings(body, &f, eval, diags);
            Spec::Service(Box::new(ServiceSpec {
                resources,
                workdir,
                workdir_hash,
                setup: f.str("setup"),
                run: f.str("run").unwrap_or_default(),
                envs: f.map("envs"),
                secrets: f.map("secrets"),
                readiness_probe: settings.probe,
                replica_policy: settings.policy,
                load_balancing_policy: settings.lb,
                update_mode: settings.update,
            }))
        }
        Kind::Controller => {
            let infra = f.str("infra").unwrap_or_default();
            let k8s = infra.split_once('/').filter(|(b, ctx)| {
                crate::model::backend::lookup(b).is_some_and(|b| b.name == "k8s")
                    && !ctx.is_empty()
                    && !ctx.contains(['/', '*'])
            });
            if k8s.is_none()
                && let Some(a) = f.attr("infra")
            {
                diags.push(
                    Diagnostic::error(format!("a controller runs on Kubernetes, not {infra:?}"))
                        .at(a.file, Some(a.span.clone()))
                        .label("not one Kubernetes context")
                        .hint("write infra = \"k8s/NAME\" for a declared infra \"kubernetes\" \"NAME\" block; on this machine, apply starts the controller in the background without a block"),
                );
            }
            Spec::Controller(ControllerSpec {
                infra: k8s.map_or(infra.clone(), |(_, ctx)| format!("k8s/{ctx}")),
                image: f
                    .str("image")
                    .unwrap_or_else(|| DEFAULT_CONTROLLER_IMAGE.to_string()),
                envs: f.map("envs"),
                secrets: f.map("secrets"),
                config: String::new(),
                workspace: String::new(),
            })
        }
    };
    let _ = to_json;
    (diags.error_count() == before).then_some(spec)
}

/// The image a declared controller runs when it names none: skyform of this version.
pub const DEFAULT_CONTROLLER_IMAGE: &str =
    concat!("ghcr.io/skyform-dev/skyform:", env!("CARGO_PKG_VERSION"));

/// `lifecycle { … }`: literal settings, checked once per block.
pub fn lifecycle(body: &BodyDecl, kind: Kind, diags: &mut Diagnostics) -> Lifecycle {
    let schema = schema::of(kind);
    let mut attributes: Vec<&str> = Vec::new();
    for n in schema
        .attrs
        .iter()
        .map(|a| a.name)
        .chain(schema.blocks.iter().map(|b| b.name))
    {
        // A shorthand and its block share a name (a service's readiness_probe).
        if !schema::META_ATTRS.contains(&n) && n != "lifecycle" && !attributes.contains(&n) {
            attributes.push(n);
        }
    }
    let Some(b) = body.block("lifecycle") else {
        return Lifecycle::default();
    };
    let mut problems = Vec::new();
    let mut literal = |attr: &AttrDecl| -> Option<Value> {
        let v = safe_evaluate(&attr.eval_expr, &hcl::eval::Context::new()).ok();
        if v.is_none() {
            problems.push(
                Diagnostic::error(format!(
                    "lifecycle setting {:?} must be a literal value",
                    attr.name
                ))
                .at(attr.file, Some(attr.span.clone()))
                .label("not a literal")
                .hint(format!(
                    "write {} = true or {} = false",
                    attr.name, attr.name
                )),
            );
        }
        v
    };
    let f = fields(b, &schema::LIFECYCLE, &mut literal, "lifecycle", diags);
    for p in problems {
        diags.push(p);
    }
    let mut ignore = Vec::new();
    if let Some(a) = b.attrs.get("ignore_changes") {
        // A list of bare attribute names: ignore_changes = [setup, envs]
        match &a.expr {
            hcl_edit::expr::Expression::Array(arr) => {
                for e in arr.iter() {
                    let name = match e {
                        hcl_edit::expr::Expression::Variable(v) => Some(v.as_str().to_string()),
                        hcl_edit::expr::Expression::String(s) => Some(s.value().to_string()),
                        _ => None,
                    };
                    if let Some(name) = &name
                        && !attributes.contains(&name.as_str())
                    {
                        use hcl_edit::Span;
                        diags.push(
                            Diagnostic::error(format!("ignore_changes names {name:?}, which is not an attribute of a {kind}"))
                                .at(a.file, e.span().or(Some(a.span.clone())))
                                .label("no such attribute")
                                .hint(match did_you_mean(name, attributes.iter().copied()) {
                                    Some(s) => format!("did you mean {s}?"),
                                    None => format!("a {kind} has: {}", attributes.join(", ")),
                                }),
                        );
                        continue;
                    }
                    match name {
                        // `replicas = N` is stored as the replica_policy it stands for.
                        Some(n) if kind == Kind::Service && n == "replicas" => {
                            ignore.push("replica_policy".into());
                        }
                        Some(n) => ignore.push(n),
                        None => diags.push(
                            Diagnostic::error("ignore_changes holds attribute names")
                                .at(a.file, Some(a.span.clone()))
                                .label("not an attribute name")
                                .hint("write ignore_changes = [setup, envs]"),
                        ),
                    }
                }
            }
            _ => diags.push(
                Diagnostic::error("ignore_changes must be a list of attribute names")
                    .at(a.file, Some(a.span.clone()))
                    .label("not a list")
                    .hint("write ignore_changes = [setup, envs]"),
            ),
        }
    }
    Lifecycle {
        prevent_destroy: f.bool("prevent_destroy").unwrap_or(false),
        ignore_changes: ignore,
        create_before_destroy: f.bool("create_before_destroy").unwrap_or(false),
    }
}

/// The literal JSON form of a value (for module outputs and similar).
pub fn value_json(v: &Value) -> serde_json::Value {
    to_json(v)
}

#[cfg(test)]
mod tests {
    use crate::config::Collect;
    use crate::model::{LbPolicy, ReplicaPolicy, ServiceSpec, Spec, UpdateMode};
    use std::collections::BTreeMap;

    /// The service a configuration declares, or its errors.
    fn service(text: &str) -> Result<ServiceSpec, Vec<String>> {
        let dir = tempfile::tempdir().expect("a temporary directory");
        std::fs::write(dir.path().join("main.sky.hcl"), text).expect("a configuration file");
        let (config, mut diags) = crate::config::load(dir.path());
        let mut sink = Collect::default();
        let (_, more) = crate::config::evaluate(&config, &BTreeMap::new(), &mut sink);
        diags.extend(more);
        if diags.has_errors() {
            return Err(diags.items.iter().map(|d| d.message.clone()).collect());
        }
        match sink.instances.into_iter().next().map(|i| i.spec) {
            Some(Spec::Service(s)) => Ok(*s),
            other => panic!("not a service: {other:?}"),
        }
    }

    /// A `recovery` block that names no strategy keeps the default strategy, as a managed
    /// job without the block has.
    #[test]
    fn recovery_without_a_strategy_is_eager_next_region() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let text = "managed_job \"m\" {\n  run = \"true\"\n  recovery {\n    max_restarts_on_errors = 2\n  }\n}\n";
        std::fs::write(dir.path().join("main.sky.hcl"), text).expect("a configuration file");
        let (config, diags) = crate::config::load(dir.path());
        assert!(!diags.has_errors(), "{:?}", diags.items);
        let mut sink = Collect::default();
        crate::config::evaluate(&config, &BTreeMap::new(), &mut sink);
        let Some(Spec::ManagedJob(m)) = sink.instances.into_iter().next().map(|i| i.spec) else {
            panic!("not a managed job");
        };
        let recovery = m.recovery.expect("a recovery block");
        assert_eq!(recovery.strategy, "eager_next_region");
        assert_eq!(recovery.max_restarts_on_errors, 2);
        assert_eq!(
            crate::controller::policy::Policy::of(Some(&recovery)).strategy,
            crate::controller::policy::Policy::default().strategy
        );
    }

    #[test]
    fn a_service_without_a_policy_runs_one_replica_with_the_defaults() {
        let s = service("service \"web\" {\n  run = \"serve\"\n}\n").unwrap();
        assert_eq!(s.replica_policy, ReplicaPolicy::fixed(1));
        assert_eq!(s.readiness_probe, None);
        assert_eq!(s.probe().path, "/");
        assert_eq!(s.lb_policy(), LbPolicy::LeastLoad);
        assert_eq!(s.update_mode(), UpdateMode::Rolling);
    }

    #[test]
    fn shorthands_mean_their_blocks() {
        let s = service(
            "service \"web\" {\n  run = \"serve\"\n  replicas = 3\n  readiness_probe = \"/health\"\n}\n",
        )
        .unwrap();
        assert_eq!(s.replica_policy, ReplicaPolicy::fixed(3));
        assert_eq!(s.probe().path, "/health");
        assert_eq!(s.probe().initial_delay_seconds, None);
    }

    #[test]
    fn every_setting_is_read() {
        let s = service(
            r#"
service "web" {
  run                   = "serve"
  load_balancing_policy = "round_robin"
  update_mode           = "blue_green"
  readiness_probe {
    path                  = "/v1/models"
    post_data             = { model = "m", max_tokens = 1 }
    headers               = { Authorization = "Bearer x" }
    timeout_seconds       = 5
    initial_delay_seconds = 60
  }
  replica_policy {
    min_replicas                    = 0
    max_replicas                    = 4
    target_qps_per_replica          = 2.5
    upscale_delay_seconds           = 10
    downscale_delay_seconds         = 20
    num_overprovision               = 1
    base_ondemand_fallback_replicas = 1
    dynamic_ondemand_fallback       = true
  }
}
"#,
        )
        .unwrap();
        let p = s.probe();
        assert_eq!(p.path, "/v1/models");
        assert_eq!(p.method(), "POST");
        assert_eq!(
            p.post_data,
            Some(serde_json::json!({"model": "m", "max_tokens": 1}))
        );
        assert_eq!(
            p.headers.get("Authorization").map(String::as_str),
            Some("Bearer x")
        );
        assert_eq!(p.timeout().as_secs(), 5);
        assert_eq!(p.initial_delay().as_secs(), 60);
        let r = &s.replica_policy;
        assert_eq!((r.min_replicas, r.max()), (0, 4));
        assert_eq!(r.target_qps_per_replica, Some(2.5));
        assert_eq!(r.upscale_delay().as_secs(), 10);
        assert_eq!(r.downscale_delay().as_secs(), 20);
        assert_eq!(r.overprovision(), 1);
        assert_eq!(r.base_ondemand(), 1);
        assert!(r.dynamic_ondemand());
        assert_eq!(s.lb_policy(), LbPolicy::RoundRobin);
        assert_eq!(s.update_mode(), UpdateMode::BlueGreen);
    }

    #[test]
    fn a_string_post_data_is_sent_as_written() {
        let s = service(
            "service \"web\" {\n  run = \"serve\"\n  readiness_probe {\n    post_data = \"ping\"\n  }\n}\n",
        )
        .unwrap();
        assert_eq!(s.probe().body().as_deref(), Some("ping"));
        assert_eq!(s.probe().path, "/");
    }

    #[test]
    fn ignoring_replicas_ignores_the_policy_it_stands_for() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        std::fs::write(
            dir.path().join("main.sky.hcl"),
            "service \"web\" {\n  run = \"serve\"\n  replicas = 2\n  lifecycle {\n    ignore_changes = [replicas]\n  }\n}\n",
        )
        .expect("a configuration file");
        let (config, mut diags) = crate::config::load(dir.path());
        let mut sink = Collect::default();
        let (_, more) = crate::config::evaluate(&config, &BTreeMap::new(), &mut sink);
        diags.extend(more);
        assert!(!diags.has_errors(), "{:?}", diags.items);
        assert_eq!(
            sink.instances[0].lifecycle.ignore_changes,
            vec!["replica_policy".to_string()]
        );
    }

    #[test]
    fn autoscaling_needs_max_and_target() {
        let ok = "service \"web\" {\n  run = \"serve\"\n  replica_policy {\n    min_replicas = 0\n    max_replicas = 2\n    target_qps_per_replica = 1\n  }\n}\n";
        assert!(service(ok).unwrap().replica_policy.autoscales());
        let no_target = ok.replace("    target_qps_per_replica = 1\n", "");
        assert_eq!(
            service(&no_target).unwrap_err(),
            vec!["max_replicas without target_qps_per_replica".to_string()]
        );
        let zero_max = ok.replace("max_replicas = 2", "max_replicas = 0");
        assert_eq!(
            service(&zero_max).unwrap_err(),
            vec!["max_replicas = 0 never starts a replica".to_string()]
        );
        let zero_target = ok.replace("= 1\n", "= 0\n");
        assert_eq!(
            service(&zero_target).unwrap_err(),
            vec!["target_qps_per_replica must be above 0, not 0".to_string()]
        );
    }
}
