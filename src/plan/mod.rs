//! The plan: what apply will do, as data. Pure: config + refreshed state + offerings in,
//! the same `Plan` out, byte for byte.

pub mod drift;

pub use drift::{Drift, DriftChange};

use crate::config::{
    self, Config, Diagnostic, Diagnostics, InputValue, Instance, InstanceSink, OutputValue,
};
use crate::model::spec::{computed_attributes, effect_of};
use crate::model::{Address, Effect, Kind, Spec, UNKNOWN};
use crate::optimizer::{self, Candidate, Micros, Offering};
use crate::state::{State, Status};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

pub const PLAN_FORMAT_VERSION: &str = "1";

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    NoOp,
    Create,
    Update,
    Replace,
    Delete,
}

impl Action {
    pub fn is_change(self) -> bool {
        self != Action::NoOp
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Change {
    pub address: Address,
    pub action: Action,
    /// Why, one line each ("run forces replacement").
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub reasons: Vec<String>,
    /// Shared with state's copy (and `after` with `before` when they are equal).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "crate::state::shared_spec::option"
    )]
    pub before: Option<Arc<Spec>>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "crate::state::shared_spec::option"
    )]
    pub after: Option<Arc<Spec>>,
    /// Top-level attributes whose values are sensitive (never rendered).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sensitive: Vec<String>,
    /// Ranked placements, best first (for kinds that get machines).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub candidates: Vec<Candidate>,
    /// Cheaper or other placements left out by `infra` or `max_hourly_cost`, and why.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub excluded: Vec<optimizer::Excluded>,
    /// A spot service's on-demand fallback replica: its placement, for the cost range.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ondemand: Option<Box<Candidate>>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub depends_on: Vec<Address>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub create_before_destroy: bool,
    /// Notes that are not changes (a job that failed).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
    /// An `import` block's id: apply takes the existing cluster into state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub import: Option<String>,
}

impl Change {
    /// The attributes before and after (empty when absent), for renderers.
    pub fn attribute_pairs(
        &self,
    ) -> (
        serde_json::Map<String, serde_json::Value>,
        serde_json::Map<String, serde_json::Value>,
    ) {
        let of = |s: &Option<Arc<Spec>>| s.as_deref().map(Spec::attributes).unwrap_or_default();
        (of(&self.before), of(&self.after))
    }

    /// Whether an attribute's value is never shown (sensitive, or `secrets`).
    pub fn hides(&self, key: &str) -> bool {
        key == "secrets" || self.sensitive.iter().any(|s| s == key)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OutputChange {
    pub action: Action,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub before: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after: Option<serde_json::Value>,
    #[serde(default)]
    pub sensitive: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Plan {
    pub format_version: String,
    pub skyform_version: String,
    pub lineage: String,
    pub serial: u64,
    pub config_digest: String,
    /// Variable values the plan was made with (sensitive ones are stored, never shown).
    pub variables: BTreeMap<String, serde_json::Value>,
    pub destroy: bool,
    pub changes: Vec<Change>,
    pub outputs: BTreeMap<String, OutputChange>,
    pub cost_before: Micros,
    pub cost_after: Micros,
    /// Things refresh noticed (a node gone, a sandbox removed by hand).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub drift: Vec<Drift>,
    /// Resources with earlier failed attempts whose clean-up was not confirmed: apply
    /// removes what those attempts left behind.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub leftovers: Vec<Address>,
    /// A refresh-only plan: no resource changes; applying it records `drift` in state.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub refresh_only: bool,
}

impl Plan {
    /// The refresh-only form of a plan: what refresh found, and no changes.
    pub fn into_refresh_only(mut self) -> Plan {
        self.refresh_only = true;
        self.changes.clear();
        self.outputs.clear();
        self.leftovers.clear();
        self.cost_after = self.cost_before;
        self
    }

    pub fn counts(&self) -> (usize, usize, usize, usize) {
        let n = |a| self.changes.iter().filter(|c| c.action == a).count();
        (
            n(Action::Create),
            n(Action::Update),
            n(Action::Replace),
            n(Action::Delete),
        )
    }

    /// Clusters that `import` blocks take into state.
    pub fn imports(&self) -> usize {
        self.changes.iter().filter(|c| c.import.is_some()).count()
    }

    pub fn has_changes(&self) -> bool {
        if self.refresh_only {
            return !self.drift.is_empty();
        }
        self.imports() > 0
            || self.changes.iter().any(|c| c.action.is_change())
            || self.outputs.values().any(|o| o.action.is_change())
            || !self.leftovers.is_empty()
    }
}

/// Inputs that shape the plan beyond config and state.
#[derive(Debug, Clone, Default)]
pub struct Options {
    pub destroy: bool,
    pub targets: Vec<Address>,
    pub replace: Vec<Address>,
    /// Why refresh considers a resource broken (it will be replaced).
    pub degraded: BTreeMap<Address, String>,
    pub drift: Vec<Drift>,
    /// Clusters that `import` blocks take into state, found by their backends: the id, and
    /// the computed attributes found.
    pub imports: BTreeMap<Address, (String, BTreeMap<String, serde_json::Value>)>,
}

/// The planner: told about every instance by the evaluator, it decides each change.
struct Planner<'a> {
    state: &'a State,
    offerings: &'a [Offering],
    options: &'a Options,
    changes: Changes,
    diags: Diagnostics,
    placement_cache: std::collections::HashMap<String, Placements>,
    /// Instances with `prevent_destroy`, and where they are declared.
    protected: Vec<(Address, usize, std::ops::Range<usize>)>,
    /// The services whose endpoint takes each port.
    endpoints: BTreeMap<u16, Vec<Endpoint>>,
}

/// A service's endpoint: where the service is declared and whether it says `ports`.
struct Endpoint {
    address: Address,
    file: usize,
    span: std::ops::Range<usize>,
    declared: bool,
}

/// The changes decided so far, in the order they were: a change is large, so they are kept in
/// a list (no half-full tree nodes of them) with an index by address.
#[derive(Default)]
struct Changes {
    list: Vec<Change>,
    index: std::collections::HashMap<Address, usize>,
}

impl Changes {
    fn get(&self, address: &Address) -> Option<&Change> {
        self.index.get(address).map(|&i| &self.list[i])
    }

    /// Adds a change; a second one for the same address replaces the first.
    fn insert(&mut self, change: Change) {
        match self.index.get(&change.address) {
            Some(&i) => self.list[i] = change,
            None => {
                self.index.insert(change.address.clone(), self.list.len());
                self.list.push(change);
            }
        }
    }

    /// The changes sorted by address (the plan's order).
    fn into_sorted(self) -> Vec<Change> {
        let mut list = self.list;
        // Evaluation hands over each block's instances in order: a few sorted runs.
        list.sort_by(|a, b| a.address.cmp(&b.address));
        list
    }
}

/// The position of an address's change in changes sorted by address.
fn find(changes: &[Change], address: &Address) -> Option<usize> {
    changes.binary_search_by(|c| c.address.cmp(address)).ok()
}

fn attrs_json(spec: &Spec) -> serde_json::Map<String, serde_json::Value> {
    spec.attributes()
}

impl InstanceSink for Planner<'_> {
    fn resource(&mut self, inst: Instance) -> BTreeMap<String, serde_json::Value> {
        let addr = inst.address.clone();
        let prior = self.state.resources.get(&addr);
        let mut inst = inst;
        // ignore_changes: the attributes keep their applied values.
        if let Some(p) = prior
            && !inst.lifecycle.ignore_changes.is_empty()
        {
            let before = attrs_json(&p.spec);
            let mut after = attrs_json(&inst.spec);
            for k in &inst.lifecycle.ignore_changes {
                match before.get(k) {
                    Some(v) => {
                        after.insert(k.clone(), v.clone());
                    }
                    None => {
                        after.remove(k);
                    }
                }
            }
            if let Some(spec) = inst.spec.with_attributes(after) {
                inst.spec = spec;
            }
        }
        let mut reasons = Vec::new();
        let mut notes = Vec::new();
        let importing = prior
            .is_none()
            .then(|| self.options.imports.get(&addr))
            .flatten();
        let mut action = match prior {
            None if importing.is_some() => Action::NoOp,
            None => Action::Create,
            Some(p) => {
                // Equal specs have equal attributes: the common case with many unchanged
                // instances skips their JSON forms.
                let (before, after) = if *p.spec == inst.spec {
                    Default::default()
                } else {
                    (attrs_json(&p.spec), attrs_json(&inst.spec))
                };
                let keys: BTreeSet<&String> = before.keys().chain(after.keys()).collect();
                let mut act = Action::NoOp;
                let mut in_place: Vec<&str> = Vec::new();
                for k in keys {
                    if inst.lifecycle.ignore_changes.iter().any(|i| i == k) {
                        continue;
                    }
                    if before.get(k) != after.get(k) {
                        match effect_of(addr.kind, k) {
                            Effect::Replace => {
                                act = Action::Replace;
                                reasons.push(format!("{k} forces replacement"));
                            }
                            Effect::InPlace => {
                                in_place.push(k);
                                if act == Action::NoOp {
                                    act = Action::Update;
                                }
                            }
                        }
                    }
                }
                if act == Action::Update {
                    let noun = if in_place.len() == 1 {
                        "changes"
                    } else {
                        "change"
                    };
                    reasons.push(format!("{} {noun} in place", in_place.join(", ")));
                }
                // Running machines whose setup never finished (SkyPilot's INIT) are set up
                // again in place.
                if act == Action::NoOp
                    && addr.kind == Kind::Cluster
                    && p.computed.get("status").and_then(|s| s.as_str()) == Some("INIT")
                {
                    act = Action::Update;
                    reasons.push("its setup did not finish (status INIT)".into());
                }
                if p.status == Status::Tainted || p.status == Status::Creating {
                    act = Action::Replace;
                    let why = self
                        .options
                        .degraded
                        .get(&addr)
                        .cloned()
                        .unwrap_or_else(|| "its creation did not finish".into());
                    reasons.push(format!("tainted: {why}"));
                }
                act
            }
        };
        if prior.is_some() && self.options.replace.iter().any(|r| addr.matches(r)) {
            action = Action::Replace;
            reasons.push("replacement requested with -replace".into());
        }
        // A job follows its cluster: a replaced or recreated cluster means a new queue.
        if let Spec::Job(job) = &inst.spec {
            if let Some(cc) = self.changes.get(&job.cluster)
                && prior.is_some()
                && matches!(cc.action, Action::Replace | Action::Create)
                && action != Action::Replace
            {
                action = Action::Replace;
                reasons.push(format!("its cluster {} is replaced", job.cluster));
            }
            if let Some(p) = prior
                && action == Action::NoOp
                && p.computed
                    .get("status")
                    .and_then(|s| s.as_str())
                    .is_some_and(|s| s == "FAILED" || s == "CANCELLED")
            {
                let code = p
                    .computed
                    .get("exit_code")
                    .and_then(serde_json::Value::as_i64)
                    .map_or_else(|| "-".to_string(), |c| c.to_string());
                // Quoted for the shell when the address has a key.
                let flag = if addr.key.is_some() {
                    format!("'-replace={addr}'")
                } else {
                    format!("-replace={addr}")
                };
                let why = p
                    .computed
                    .get("reason")
                    .and_then(|r| r.as_str())
                    .map(|r| format!(": {r}"))
                    .unwrap_or_default();
                notes.push(format!(
                    "{addr} {} (exit code {code}){why}; run it again with {flag}",
                    p.computed
                        .get("status")
                        .and_then(|s| s.as_str())
                        .unwrap_or("failed")
                        .to_lowercase()
                ));
            }
            self.check_fit(&inst, job);
        }
        if let Spec::Service(service) = &inst.spec
            && !self.options.destroy
        {
            self.check_endpoint(&inst, service);
        }
        // Placement: keep the current one unless the resource is (re)created.
        let mut candidates = Vec::new();
        let mut excluded = Vec::new();
        if let Some((request, nodes)) = inst.spec.placement_request() {
            if self.options.destroy {
                // Destroying needs no placement: nothing is created.
            } else if matches!(action, Action::Create | Action::Replace) {
                match self.placements(request, nodes) {
                    Ok((c, e)) => {
                        excluded = e;
                        candidates = c;
                    }
                    Err(no) => {
                        self.diags.push(
                            Diagnostic::error(format!("no placement for {addr}: {}", no.reason))
                                .at(inst.file, Some(inst.span.clone()))
                                .label("nothing available satisfies this request")
                                .hint(if self.offerings.iter().any(|o| crate::model::backend::is_this_machine(&o.cloud)) {
                                    "relax the resources block, or declare a cloud (infra \"aws\", \"gcp\", \"lambda\") whose catalog has it"
                                } else {
                                    "relax the resources block, or declare infra \"local\" {} to run on this machine"
                                }),
                        );
                    }
                }
            } else if let Some(p) = prior.and_then(|p| p.placement.as_deref().cloned()) {
                candidates = vec![p];
            }
        }
        let ondemand = if candidates.is_empty() {
            None
        } else {
            self.ondemand_fallback(&inst.spec)
        };
        if inst.lifecycle.prevent_destroy {
            self.protected
                .push((addr.clone(), inst.file, inst.span.clone()));
        }
        let computed = match (action, prior) {
            // Nothing reads this instance's attributes: no answer to build.
            _ if !inst.referenced => BTreeMap::new(),
            (Action::NoOp, None) if importing.is_some() => {
                importing.map(|(_, c)| c.clone()).unwrap_or_default()
            }
            (Action::NoOp | Action::Update, Some(p)) => {
                let mut m = p.computed.to_map();
                for a in computed_attributes(addr.kind) {
                    m.entry((*a).to_string()).or_insert(serde_json::Value::Null);
                }
                if let Some(c) = candidates.first() {
                    m.insert(
                        "placement".into(),
                        serde_json::Value::String(c.offering.infra()),
                    );
                }
                m
            }
            _ => computed_attributes(addr.kind)
                .iter()
                .map(|a| ((*a).to_string(), serde_json::Value::String(UNKNOWN.into())))
                .collect(),
        };
        // An imported cluster is taken as the configuration describes it.
        let before = prior
            .map(|p| p.spec.clone())
            .or_else(|| importing.map(|_| Arc::new(inst.spec.clone())));
        // Unchanged (most resources of a large plan): one copy, state's.
        let after = match &before {
            Some(b) if **b == inst.spec => b.clone(),
            _ => Arc::new(inst.spec),
        };
        self.changes.insert(Change {
            address: addr,
            action,
            reasons,
            before,
            after: Some(after),
            sensitive: inst.sensitive.into_iter().collect(),
            candidates,
            excluded,
            ondemand: ondemand.map(Box::new),
            depends_on: inst.depends_on.into_iter().collect(),
            create_before_destroy: inst.lifecycle.create_before_destroy,
            notes,
            import: importing.map(|(id, _)| id.clone()),
        });
        computed
    }
}

/// How deep a failover list goes (and how many left-out placements a plan lists).
const MAX_CANDIDATES: usize = 100;
const MAX_EXCLUDED: usize = 10;

type Placements = Result<(Vec<Candidate>, Vec<optimizer::Excluded>), optimizer::NoMatch>;

impl Planner<'_> {
    /// The ranked placements of a request, computed once per distinct request (a sweep of a
    /// thousand identical jobs ranks once).
    fn placements(&mut self, request: &crate::model::Resources, nodes: u32) -> Placements {
        let key = format!(
            "{nodes}:{}",
            serde_json::to_string(request).unwrap_or_default()
        );
        if let Some(hit) = self.placement_cache.get(&key) {
            return hit.clone();
        }
        let result =
            optimizer::rank(request, nodes, self.offerings, &BTreeSet::new()).map(|mut c| {
                let e = optimizer::excluded(request, nodes, self.offerings, &c, MAX_EXCLUDED);
                c.truncate(MAX_CANDIDATES);
                (c, e)
            });
        self.placement_cache.insert(key, result.clone());
        result
    }

    /// Where one on-demand replica of a spot service would run, when it keeps some on demand.
    fn ondemand_fallback(&mut self, spec: &Spec) -> Option<Candidate> {
        let Spec::Service(s) = spec else { return None };
        let p = &s.replica_policy;
        if !s.resources.spot() || (p.base_ondemand() == 0 && !p.dynamic_ondemand()) {
            return None;
        }
        let mut request = s.resources.clone();
        request.use_spot = Some(false);
        for c in request.any_of.iter_mut().chain(request.ordered.iter_mut()) {
            c.use_spot = c.use_spot.map(|_| false);
        }
        let (c, _) = self.placements(&request, 1).ok()?;
        c.into_iter().next()
    }

    /// Notes the port a service's endpoint takes (see [`Planner::endpoint_conflicts`]).
    fn check_endpoint(&mut self, inst: &Instance, service: &crate::model::ServiceSpec) {
        self.endpoints
            .entry(service.endpoint_port())
            .or_default()
            .push(Endpoint {
                address: inst.address.clone(),
                file: inst.file,
                span: inst.span.clone(),
                declared: !service.resources.ports.is_empty(),
            });
    }

    /// Every load balancer listens where the controller runs, so two services cannot share
    /// an endpoint port: each service after the first (in address order) on a port is an
    /// error.
    fn endpoint_conflicts(&mut self) {
        for (port, services) in &mut self.endpoints {
            services.sort_by(|a, b| a.address.cmp(&b.address));
            let Some((first, rest)) = services.split_first() else {
                continue;
            };
            for later in rest {
                let hint = if later.declared {
                    "give one of them another first `ports` entry".to_string()
                } else {
                    format!(
                        "a service without `ports` serves at {port}: give this one another, e.g. `ports = [{}]`",
                        port.saturating_add(1)
                    )
                };
                self.diags.push(
                    Diagnostic::error(format!(
                        "{} would serve at port {port}, which {} already serves at",
                        later.address, first.address
                    ))
                    .at(later.file, Some(later.span.clone()))
                    .label("its endpoint's port is taken")
                    .hint(hint),
                );
            }
        }
    }

    /// A job must fit on its cluster's nodes.
    fn check_fit(&mut self, inst: &Instance, job: &crate::model::JobSpec) {
        let Some(cluster) = self.changes.get(&job.cluster) else {
            return;
        };
        let Some(Spec::Cluster(cs)) = cluster.after.as_deref() else {
            return;
        };
        let Some(place) = cluster.candidates.first() else {
            return;
        };
        let o = &place.offering;
        let mut problems = Vec::new();
        if job.num_nodes > cs.num_nodes {
            problems.push(format!(
                "num_nodes = {} but {} has {} node(s)",
                job.num_nodes, job.cluster, cs.num_nodes
            ));
        }
        if let Some(c) = job.resources.cpus
            && c.value > o.cpus
        {
            problems.push(format!(
                "cpus = {c} but each node of {} has {} vCPU",
                job.cluster,
                crate::model::request::fmt_num(o.cpus)
            ));
        }
        if let Some(acc) = &job.resources.accelerators {
            let fits = acc.choices().iter().any(|a| {
                o.accelerators
                    .iter()
                    .any(|(n, c)| n.eq_ignore_ascii_case(&a.name) && *c + 1e-9 >= a.count)
            });
            if !fits {
                let have = if o.accelerators.is_empty() {
                    "no accelerators".to_string()
                } else {
                    o.accelerators
                        .iter()
                        .map(|(n, c)| format!("{n}:{}", crate::model::request::fmt_num(*c)))
                        .collect::<Vec<_>>()
                        .join(", ")
                };
                problems.push(format!(
                    "accelerators = {acc} but each node of {} has {have}",
                    job.cluster
                ));
            }
        }
        for p in problems {
            self.diags.push(
                Diagnostic::error(format!("{} does not fit on its cluster: {p}", inst.address))
                    .at(inst.file, Some(inst.span.clone()))
                    .label("asks for more than the cluster has")
                    .hint(format!(
                        "lower the job's request, or give {} more resources",
                        job.cluster
                    )),
            );
        }
    }
}

/// Whether a job in state has run to its end (it costs nothing any more).
fn has_ended(r: &crate::state::ResourceState) -> bool {
    r.computed
        .get("status")
        .and_then(|s| s.as_str())
        .is_some_and(|s| matches!(s, "SUCCEEDED" | "FAILED" | "CANCELLED"))
}

/// Makes the plan. `state` is the refreshed prior state.
pub fn plan(
    config: &Config,
    inputs: &BTreeMap<String, InputValue>,
    state: &State,
    offerings: &[Offering],
    options: &Options,
) -> (Plan, Diagnostics) {
    let mut planner = Planner {
        state,
        offerings,
        options,
        // Most plans have about one change per resource in state: room for them at once
        // spares growing a list of large changes (and holding it twice while it moves).
        changes: Changes {
            list: Vec::with_capacity(state.resources.len()),
            index: std::collections::HashMap::with_capacity(state.resources.len()),
        },
        diags: Diagnostics::default(),
        protected: Vec::new(),
        placement_cache: Default::default(),
        endpoints: BTreeMap::new(),
    };
    let (outputs, mut diags) = config::evaluate(config, inputs, &mut planner);
    planner.endpoint_conflicts();
    diags.extend(std::mem::take(&mut planner.diags));
    let mut changes = std::mem::take(&mut planner.changes).into_sorted();

    if options.destroy {
        for c in changes.iter_mut() {
            c.reasons.clear();
            c.notes.clear();
            c.candidates.clear();
            c.excluded.clear();
        }
        changes.retain(|c| state.resources.contains_key(&c.address));
        for c in changes.iter_mut() {
            c.action = Action::Delete;
            c.after = None;
        }
    }
    // In state, not in config: delete. Both are sorted by address: one walk.
    let mut gone = Vec::new();
    let mut configured = changes.iter().map(|c| &c.address).peekable();
    for (addr, res) in &state.resources {
        while configured.next_if(|a| *a < addr).is_some() {}
        if configured.peek() != Some(&addr) {
            gone.push(Change {
                address: addr.clone(),
                action: Action::Delete,
                reasons: if options.destroy {
                    vec![]
                } else {
                    vec!["not in the configuration".into()]
                },
                before: Some(res.spec.clone()),
                after: None,
                sensitive: res.sensitive.clone(),
                candidates: Vec::new(),
                excluded: Vec::new(),
                ondemand: None,
                depends_on: res.dependencies.clone(),
                create_before_destroy: false,
                notes: Vec::new(),
                import: None,
            });
        }
    }
    if !gone.is_empty() {
        changes.extend(gone);
        changes.sort_by(|a, b| a.address.cmp(&b.address));
    }
    // Addresses given with -target and -replace must name something.
    for (flag, list) in [
        ("-target", &options.targets),
        ("-replace", &options.replace),
    ] {
        for pattern in list.iter() {
            if !changes.iter().any(|c| c.address.matches(pattern)) {
                let all: Vec<String> = changes.iter().map(|c| c.address.to_string()).collect();
                let shown = pattern.to_string();
                let hint = match config::diag::did_you_mean(&shown, all.iter().map(String::as_str))
                {
                    Some(s) => format!("did you mean {s}?"),
                    None => "list the addresses with `skyform state list`, or see them in a plan"
                        .to_string(),
                };
                diags.push(
                    Diagnostic::error(format!("{flag} {shown} matches no resource")).hint(hint),
                );
            }
        }
    }
    if !options.targets.is_empty() {
        diags.push(
            Diagnostic::warning(
                "targeting is in effect: this plan leaves out changes to other resources",
            )
            .hint("use -target for exceptional cases only, and run a full plan afterwards"),
        );
    }
    // -target: keep changes to the targets and what they depend on — or, when destroying,
    // what depends on them (it cannot outlive them).
    if !options.targets.is_empty() {
        let mut users: BTreeMap<Address, Vec<Address>> = BTreeMap::new();
        for c in &changes {
            for d in &c.depends_on {
                users.entry(d.clone()).or_default().push(c.address.clone());
            }
        }
        let mut keep: BTreeSet<Address> = BTreeSet::new();
        let mut stack: Vec<Address> = changes
            .iter()
            .map(|c| &c.address)
            .filter(|a| options.targets.iter().any(|t| a.matches(t)))
            .cloned()
            .collect();
        while let Some(a) = stack.pop() {
            if !keep.insert(a.clone()) {
                continue;
            }
            if options.destroy {
                stack.extend(users.get(&a).into_iter().flatten().cloned());
            } else if let Some(i) = find(&changes, &a) {
                stack.extend(changes[i].depends_on.iter().cloned());
            }
        }
        for c in changes.iter_mut() {
            if !keep.contains(&c.address) {
                c.action = Action::NoOp;
                c.reasons.clear();
            }
        }
    }
    // prevent_destroy: checked on what the plan will really do (after -target).
    for (addr, file, span) in &planner.protected {
        let Some(c) = find(&changes, addr).map(|i| &changes[i]) else {
            continue;
        };
        let verb = match c.action {
            Action::Delete => "destroy",
            Action::Replace => "replace",
            _ => continue,
        };
        let label = if c.reasons.is_empty() {
            "protected".to_string()
        } else {
            c.reasons.join("; ")
        };
        diags.push(
            Diagnostic::error(format!(
                "{addr} has lifecycle.prevent_destroy, but the plan would {verb} it"
            ))
            .at(*file, Some(span.clone()))
            .label(label)
            .hint(format!(
                "undo the change, or remove prevent_destroy first if you mean to {verb} it"
            )),
        );
    }
    let cost = |spec_candidates: Option<&Candidate>| spec_candidates.map_or(0, |c| c.hourly);
    let cost_before: Micros = state
        .resources
        .values()
        .filter(|r| !has_ended(r))
        .map(|r| cost(r.placement.as_deref()))
        .sum();
    let cost_after: Micros = changes
        .iter()
        .filter(|c| c.action != Action::Delete)
        .map(|c| match c.action {
            Action::NoOp | Action::Update => state
                .resources
                .get(&c.address)
                .filter(|r| !has_ended(r))
                .map_or(0, |r| cost(r.placement.as_deref())),
            _ => cost(c.candidates.first()),
        })
        .sum();
    let outputs = output_changes(&outputs, state, options.destroy);
    let mut variables = BTreeMap::new();
    // The values as the configuration used them (converted to their declared types), so a
    // saved plan applies with exactly these.
    for (k, v) in inputs {
        let Some(decl) = config.root.variables.get(k) else {
            continue;
        };
        let ty = config::vars::declared_type(decl, &mut Diagnostics::default());
        if let Ok(value) = config::vars::convert_input(v, &ty) {
            variables.insert(k.clone(), config::eval::to_json(&value));
        }
    }
    diags.sort();
    let plan = Plan {
        format_version: PLAN_FORMAT_VERSION.into(),
        skyform_version: env!("CARGO_PKG_VERSION").into(),
        lineage: state.lineage.clone(),
        serial: state.serial,
        config_digest: config.digest.clone(),
        variables,
        destroy: options.destroy,
        changes,
        outputs,
        cost_before,
        cost_after,
        drift: options.drift.clone(),
        leftovers: state
            .resources
            .iter()
            .filter(|(_, r)| !r.leftovers.is_empty())
            .map(|(a, _)| a.clone())
            .collect(),
        refresh_only: false,
    };
    (plan, diags)
}

fn output_changes(
    outputs: &BTreeMap<String, OutputValue>,
    state: &State,
    destroy: bool,
) -> BTreeMap<String, OutputChange> {
    let mut out = BTreeMap::new();
    for (name, v) in outputs {
        let before = state.outputs.get(name).map(|o| o.value.clone());
        let after = if destroy { None } else { Some(v.value.clone()) };
        let action = match (&before, &after) {
            (None, Some(_)) => Action::Create,
            (Some(_), None) => Action::Delete,
            (Some(b), Some(a)) if b != a => Action::Update,
            _ => Action::NoOp,
        };
        out.insert(
            name.clone(),
            OutputChange {
                action,
                before,
                after,
                sensitive: v.sensitive,
            },
        );
    }
    for (name, o) in &state.outputs {
        out.entry(name.clone()).or_insert(OutputChange {
            action: Action::Delete,
            before: Some(o.value.clone()),
            after: None,
            sensitive: o.sensitive,
        });
    }
    out
}

/// Digest of a plan's decisions, shown in reviews (sha256 over its JSON).
pub fn digest(plan: &Plan) -> String {
    use sha2::Digest;
    let bytes = serde_json::to_vec(plan).unwrap_or_default();
    format!(
        "sha256:{}",
        config::functions::hex(&sha2::Sha256::digest(bytes))
    )
}

/// The kinds that get placement (for cost and failover lists).
pub fn placed(kind: Kind) -> bool {
    kind != Kind::Job
}
