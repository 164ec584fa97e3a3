//! Evaluation: declarations → resource instances, in dependency order.
//!
//! The evaluator walks each module's declarations in topological order, evaluates `count` /
//! `for_each` into instances, decodes each instance into a [`Spec`], and hands it to a
//! [`Resolver`] — the planner — which answers with the attributes the instance exports
//! (known from state, or unknown until apply). Everything is pure and synchronous.

use super::decode;
use super::diag::{Diagnostic, Diagnostics, FileId, did_you_mean};
use super::functions;
use super::load::{AttrDecl, BodyDecl, ModuleSource, Ref};
use super::vars::{self, VarType};
use crate::model::{Address, InstanceKey, Kind, Lifecycle, ModulePath, ModuleStep, Spec, UNKNOWN};
use hcl::Value;
use hcl::eval::{Context, Evaluate};
use petgraph::graph::{DiGraph, NodeIndex};
use std::collections::{BTreeMap, BTreeSet};
use std::ops::Range;
use std::path::Path;

/// One resource instance, fully evaluated.
#[derive(Debug, Clone)]
pub struct Instance {
    pub address: Address,
    pub spec: Spec,
    pub lifecycle: Lifecycle,
    /// Instances this one depends on (references and `depends_on`).
    pub depends_on: BTreeSet<Address>,
    /// Top-level attributes whose value derives from a sensitive variable.
    pub sensitive: BTreeSet<String>,
    /// Where the block was declared.
    pub file: FileId,
    pub span: Range<usize>,
}

/// The planner's side of evaluation: told about each instance in dependency order, it answers
/// with the computed attributes the instance exports (`head_ip`, `status`, …).
pub trait Resolver {
    fn resource(&mut self, instance: Instance) -> BTreeMap<String, serde_json::Value>;
}

/// A resolver that knows nothing: every computed attribute is unknown. Used by `validate`.
#[derive(Debug, Default)]
pub struct Collect {
    pub instances: Vec<Instance>,
}

impl Resolver for Collect {
    fn resource(&mut self, instance: Instance) -> BTreeMap<String, serde_json::Value> {
        let computed = crate::model::spec::computed_attributes(instance.address.kind)
            .iter()
            .map(|a| (a.to_string(), serde_json::Value::String(UNKNOWN.into())))
            .collect();
        self.instances.push(instance);
        computed
    }
}

/// An evaluated root output.
#[derive(Debug, Clone, PartialEq)]
pub struct OutputValue {
    pub value: serde_json::Value,
    pub sensitive: bool,
}

/// The variables given to the root module, with where each came from.
pub type InputValues = BTreeMap<String, vars::InputValue>;

/// Identifies a declaration in one module's dependency graph.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Node {
    Var(String),
    Local(String),
    Resource(Kind, String),
    Module(String),
    Output(String),
}

impl Node {
    fn describe(&self) -> String {
        match self {
            Node::Var(n) => format!("var.{n}"),
            Node::Local(n) => format!("local.{n}"),
            Node::Resource(k, n) => format!("{k}.{n}"),
            Node::Module(n) => format!("module.{n}"),
            Node::Output(n) => format!("output.{n}"),
        }
    }
}

/// The declarations of a module in evaluation order, what each depends on, and those whose
/// references could not be resolved (or that sit in a cycle).
struct Order {
    nodes: Vec<Node>,
    bad: BTreeSet<Node>,
}

/// What a module exports to its caller, and the instances inside it.
#[derive(Debug, Clone, Default)]
struct ModuleResult {
    outputs: BTreeMap<String, (Value, bool)>,
    instances: BTreeSet<Address>,
}

/// The evaluated value of one block: one object, a list (count) or a map (for_each).
#[derive(Debug, Clone)]
struct BlockValue {
    value: Value,
    instances: BTreeSet<Address>,
    /// For a module: whether any output is sensitive.
    sensitive: bool,
    /// For a resource: its attributes that hold sensitive values (in any instance).
    sensitive_attrs: BTreeSet<String>,
}

pub struct Evaluator<'a, R: Resolver> {
    pub diags: &'a mut Diagnostics,
    pub resolver: &'a mut R,
    pub root_dir: &'a Path,
    /// `skyform.workspace`.
    pub workspace: &'a str,
    /// Required variables without a value become unknown instead of an error (`validate`).
    pub missing_vars_unknown: bool,
    /// Declarations of the module being evaluated that failed, as (root, name): expressions
    /// using them evaluate to unknown without further diagnostics.
    pub tainted: BTreeSet<(String, String)>,
}

impl<R: Resolver> std::fmt::Debug for Evaluator<'_, R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Evaluator").finish_non_exhaustive()
    }
}

/// What a module is called with.
#[derive(Debug, Default)]
struct Call {
    /// Input values by variable name.
    given: BTreeMap<String, Value>,
    /// Inputs given a value that was rejected (reported already).
    rejected: BTreeSet<String>,
    /// Inputs whose values are sensitive.
    sensitive_inputs: BTreeSet<String>,
    /// Instances every resource in the module depends on (the module block's dependencies).
    inherited: BTreeSet<Address>,
    /// The module block, for "missing input" messages.
    call_site: Option<(FileId, Range<usize>)>,
}

/// Per-module evaluation scope.
struct Scope<'m> {
    module: &'m ModuleSource,
    path: ModulePath,
    inherited: BTreeSet<Address>,
    vars: BTreeMap<String, (Value, bool)>,
    locals: BTreeMap<String, (Value, bool)>,
    resources: BTreeMap<(Kind, String), BlockValue>,
    modules: BTreeMap<String, BlockValue>,
    outputs: BTreeMap<String, (Value, bool)>,
}

impl Scope<'_> {
    /// Gives a declaration that failed an unknown value.
    fn set_unknown(&mut self, node: &Node) {
        let unknown = Value::String(UNKNOWN.into());
        match node {
            Node::Var(n) => {
                self.vars.insert(n.clone(), (unknown, false));
            }
            Node::Local(n) => {
                self.locals.insert(n.clone(), (unknown, false));
            }
            Node::Resource(k, n) => {
                let entry = self.resources.entry((*k, n.clone())).or_insert(BlockValue {
                    value: Value::Null,
                    instances: BTreeSet::new(),
                    sensitive: false,
                    sensitive_attrs: BTreeSet::new(),
                });
                entry.value = unknown;
            }
            Node::Module(n) => {
                let entry = self.modules.entry(n.clone()).or_insert(BlockValue {
                    value: Value::Null,
                    instances: BTreeSet::new(),
                    sensitive: false,
                    sensitive_attrs: BTreeSet::new(),
                });
                entry.value = unknown;
            }
            Node::Output(n) => {
                self.outputs.insert(n.clone(), (unknown, false));
            }
        }
    }
}

/// The instance being evaluated: its `each` / `count` bindings.
#[derive(Debug, Clone, Default)]
struct Bindings {
    each: Option<(Value, Value)>,
    count: Option<u64>,
}

impl<'a, R: Resolver> Evaluator<'a, R> {
    /// Evaluates the root module; returns its outputs.
    pub fn eval_root(
        &mut self,
        module: &ModuleSource,
        inputs: &InputValues,
    ) -> BTreeMap<String, OutputValue> {
        let mut given = BTreeMap::new();
        let mut rejected = BTreeSet::new();
        for (name, input) in inputs {
            if let Some(decl) = module.variables.get(name) {
                let ty = vars::declared_type(decl, self.diags);
                match vars::convert_input(input, &ty) {
                    Ok(v) => {
                        given.insert(name.clone(), v);
                    }
                    Err(why) => {
                        rejected.insert(name.clone());
                        let (file, span, label) = match &input.location {
                            Some((f, s)) => (*f, s.clone(), format!("expected {}", ty.describe())),
                            None => (
                                decl.file,
                                decl.span.clone(),
                                format!("declared here as {}", ty.describe()),
                            ),
                        };
                        self.diags.push(
                            Diagnostic::error(format!(
                                "invalid value for variable {name:?} from {}: {why}",
                                input.source
                            ))
                            .at(file, Some(span))
                            .label(label)
                            .hint(format!("give a value of type {}", ty.describe())),
                        );
                    }
                }
            } else if input.source.is_explicit() {
                let names: Vec<&str> = module.variables.keys().map(String::as_str).collect();
                let mut d = Diagnostic::error(format!(
                    "value given for undeclared variable {name:?} ({})",
                    input.source
                ))
                .hint(match did_you_mean(name, names.iter().copied()) {
                    Some(s) => format!("did you mean {s:?}?"),
                    None => format!("declare it: variable \"{name}\" {{ type = string }}"),
                });
                if let Some((f, s)) = &input.location {
                    d = d.at(*f, Some(s.clone())).label("no such variable");
                }
                self.diags.push(d);
            }
        }
        let call = Call {
            given,
            rejected,
            ..Call::default()
        };
        let result = self.eval_module(module, Vec::new(), call);
        result
            .outputs
            .into_iter()
            .map(|(k, (v, sensitive))| {
                (
                    k,
                    OutputValue {
                        value: to_json(&v),
                        sensitive,
                    },
                )
            })
            .collect()
    }

    fn eval_module(&mut self, module: &ModuleSource, path: ModulePath, call: Call) -> ModuleResult {
        let Call {
            given,
            rejected,
            sensitive_inputs,
            inherited,
            call_site,
        } = call;
        let mut scope = Scope {
            module,
            path,
            inherited,
            vars: BTreeMap::new(),
            locals: BTreeMap::new(),
            resources: BTreeMap::new(),
            modules: BTreeMap::new(),
            outputs: BTreeMap::new(),
        };
        let order = self.order(module);
        // A declaration that failed is reported once, at its cause; what depends on it sees
        // an unknown value instead, so its own, independent problems are still found (and the
        // ones the unknown would cause are not).
        let outer_tainted = std::mem::take(&mut self.tainted);
        let mut failed: BTreeSet<Node> = order.bad.clone();
        for node in &order.bad {
            scope.set_unknown(node);
            self.taint(node);
        }
        for node in order.nodes {
            functions::set_base_dir(module.dir.clone());
            if failed.contains(&node) {
                continue;
            }
            let errors_before = self.diags.error_count();
            let this = node.clone();
            match node {
                Node::Var(name) => {
                    if rejected.contains(&name) {
                        // Its value was rejected (and reported): unknown from here on.
                        scope.set_unknown(&this);
                        self.taint(&this);
                        failed.insert(this.clone());
                    } else {
                        self.eval_var(&mut scope, &name, &given, call_site.clone());
                        if sensitive_inputs.contains(&name)
                            && let Some(v) = scope.vars.get_mut(&name)
                        {
                            // A sensitive value passed in stays sensitive inside the module.
                            v.1 = true;
                        }
                    }
                }
                Node::Local(name) => {
                    let Some(decl) = module.locals.get(&name) else {
                        continue;
                    };
                    let refs: Vec<&Ref> = decl.refs.iter().collect();
                    let ctx = self.context(&scope, &refs, &Bindings::default());
                    let sensitive = self.refs_sensitive(&scope, &refs);
                    if let Some(v) = self.eval_attr(decl, &ctx, &refs) {
                        scope.locals.insert(name, (v, sensitive));
                    } else {
                        scope.locals.insert(name, (Value::Null, sensitive));
                    }
                }
                Node::Resource(kind, name) => self.eval_resource(&mut scope, kind, &name),
                Node::Module(name) => self.eval_module_call(&mut scope, &name),
                Node::Output(name) => {
                    let Some(decl) = module.outputs.get(&name) else {
                        continue;
                    };
                    let Some(value_attr) = decl.body.attrs.get("value") else {
                        continue;
                    };
                    let refs: Vec<&Ref> = value_attr.refs.iter().collect();
                    let ctx = self.context(&scope, &refs, &Bindings::default());
                    let declared_sensitive =
                        self.literal_bool(&decl.body, "sensitive").unwrap_or(false);
                    let derived = self.refs_sensitive(&scope, &refs);
                    if derived && !declared_sensitive {
                        self.diags.push(
                            Diagnostic::error(format!("output {name:?} shows a sensitive value"))
                                .at(value_attr.file, Some(value_attr.span.clone()))
                                .label("derived from a sensitive variable")
                                .hint(
                                    "add sensitive = true to the output block if this is intended",
                                ),
                        );
                    }
                    let v = self
                        .eval_attr(value_attr, &ctx, &refs)
                        .unwrap_or(Value::Null);
                    scope
                        .outputs
                        .insert(name, (v, declared_sensitive || derived));
                }
            }
            if self.diags.error_count() > errors_before {
                scope.set_unknown(&this);
                self.taint(&this);
                failed.insert(this);
            }
        }
        self.tainted = outer_tainted;
        let mut instances = BTreeSet::new();
        for b in scope.resources.values().chain(scope.modules.values()) {
            instances.extend(b.instances.iter().cloned());
        }
        ModuleResult {
            outputs: scope.outputs,
            instances,
        }
    }

    fn literal_bool(&mut self, body: &BodyDecl, name: &str) -> Option<bool> {
        let attr = body.attrs.get(name)?;
        let v = safe_evaluate(&attr.eval_expr, &Context::new()).ok()?;
        match v {
            Value::Bool(b) => Some(b),
            _ => {
                self.diags.push(
                    Diagnostic::error(format!("{name} must be true or false"))
                        .at(attr.file, Some(attr.span.clone()))
                        .label("not a literal bool")
                        .hint(format!("write {name} = true")),
                );
                None
            }
        }
    }

    fn eval_var(
        &mut self,
        scope: &mut Scope<'_>,
        name: &str,
        given: &BTreeMap<String, Value>,
        call_site: Option<(FileId, Range<usize>)>,
    ) {
        let Some(decl) = scope.module.variables.get(name) else {
            return;
        };
        let sensitive = self.literal_bool(&decl.body, "sensitive").unwrap_or(false);
        let ty = vars::declared_type(decl, self.diags);
        if let Some(v) = given.get(name) {
            scope.vars.insert(name.to_string(), (v.clone(), sensitive));
            return;
        }
        if let Some(default) = decl.body.attrs.get("default") {
            if !default.refs.is_empty() {
                self.diags.push(
                    Diagnostic::error(format!(
                        "default of variable {name:?} refers to other values"
                    ))
                    .at(default.file, Some(default.span.clone()))
                    .label("defaults must be constant")
                    .hint("use a local value for derived settings"),
                );
                scope
                    .vars
                    .insert(name.to_string(), (Value::Null, sensitive));
                return;
            }
            let ctx = self.context(scope, &[], &Bindings::default());
            let v = self.eval_attr(default, &ctx, &[]).unwrap_or(Value::Null);
            match ty.check(&v) {
                Ok(v) => {
                    scope.vars.insert(name.to_string(), (v, sensitive));
                }
                Err(why) => {
                    self.diags.push(
                        Diagnostic::error(format!(
                            "default of variable {name:?} does not match its type: {why}"
                        ))
                        .at(default.file, Some(default.span.clone()))
                        .label(format!("expected {}", ty.describe()))
                        .hint("change the default or the type"),
                    );
                    scope
                        .vars
                        .insert(name.to_string(), (Value::Null, sensitive));
                }
            }
            return;
        }
        if self.missing_vars_unknown && call_site.is_none() {
            scope
                .vars
                .insert(name.to_string(), (Value::String(UNKNOWN.into()), sensitive));
            return;
        }
        let (file, span, hint) = match call_site {
            Some((f, s)) => (f, s, format!("set {name} = … in the module block")),
            None => (
                decl.file,
                decl.span.clone(),
                format!(
                    "pass -var {name}=VALUE, add it to a *.auto.skyvars.hcl file, or set SKYFORM_VAR_{name}"
                ),
            ),
        };
        self.diags.push(
            Diagnostic::error(format!("no value for required variable {name:?}"))
                .at(file, Some(span))
                .label("this variable has no default")
                .hint(hint),
        );
        scope
            .vars
            .insert(name.to_string(), (Value::Null, sensitive));
    }

    /// The declarations of a module in dependency order; cycles and bad references reported.
    fn order(&mut self, module: &ModuleSource) -> Order {
        let mut graph: DiGraph<Node, ()> = DiGraph::new();
        let mut index: BTreeMap<Node, NodeIndex> = BTreeMap::new();
        let mut add = |g: &mut DiGraph<Node, ()>, n: Node| {
            *index.entry(n.clone()).or_insert_with(|| g.add_node(n))
        };
        for n in module.variables.keys() {
            add(&mut graph, Node::Var(n.clone()));
        }
        for n in module.locals.keys() {
            add(&mut graph, Node::Local(n.clone()));
        }
        for (k, n) in module.resources.keys() {
            add(&mut graph, Node::Resource(*k, n.clone()));
        }
        for n in module.modules.keys() {
            add(&mut graph, Node::Module(n.clone()));
        }
        for n in module.outputs.keys() {
            add(&mut graph, Node::Output(n.clone()));
        }
        // Edges: dependency → dependent.
        let mut sites: BTreeMap<Node, (FileId, Range<usize>)> = BTreeMap::new();
        let mut edges: Vec<(Node, Node, FileId, Range<usize>)> = Vec::new();
        let mut both_meta: Vec<Node> = Vec::new();
        let mut bad: BTreeSet<Node> = BTreeSet::new();
        let mut check =
            |this: &Node, file: FileId, refs: &[&Ref], ctx: RefContext, diags: &mut Diagnostics| {
                for r in refs {
                    match resolve_ref(module, r, file, ctx, diags) {
                        Ok(Some(target)) => {
                            edges.push((target, this.clone(), file, r.span.clone()))
                        }
                        Ok(None) => {}
                        Err(()) => {
                            bad.insert(this.clone());
                        }
                    }
                }
            };
        for (name, decl) in &module.locals {
            let node = Node::Local(name.clone());
            sites.insert(node.clone(), (decl.file, decl.span.clone()));
            let refs: Vec<&Ref> = decl.refs.iter().collect();
            check(&node, decl.file, &refs, RefContext::plain(), self.diags);
        }
        for ((kind, name), decl) in &module.resources {
            let node = Node::Resource(*kind, name.clone());
            if decl.body.attrs.contains_key("count") && decl.body.attrs.contains_key("for_each") {
                // Reported when loading; which one was meant is unknown.
                both_meta.push(node.clone());
            }
            sites.insert(node.clone(), (decl.file, decl.span.clone()));
            self.check_body_refs(&node, decl.file, &decl.body, &mut check);
        }
        for (name, decl) in &module.modules {
            let node = Node::Module(name.clone());
            sites.insert(node.clone(), (decl.file, decl.span.clone()));
            self.check_body_refs(&node, decl.file, &decl.body, &mut check);
        }
        for (name, decl) in &module.outputs {
            let node = Node::Output(name.clone());
            sites.insert(node.clone(), (decl.file, decl.span.clone()));
            let refs: Vec<&Ref> = decl.body.refs();
            check(&node, decl.file, &refs, RefContext::plain(), self.diags);
        }
        for (name, decl) in &module.variables {
            sites.insert(Node::Var(name.clone()), (decl.file, decl.span.clone()));
        }
        bad.extend(both_meta);
        for (from, to, file, span) in edges {
            let (Some(&a), Some(&b)) = (index.get(&from), index.get(&to)) else {
                continue;
            };
            if a == b {
                // A self reference: a cycle of one.
                self.diags.push(
                    Diagnostic::error(format!("{} refers to itself", to.describe()))
                        .at(file, Some(span))
                        .label("a block cannot use its own attributes")
                        .hint("use a variable or local for the value, or move it to another block"),
                );
                bad.insert(to);
                continue;
            }
            graph.update_edge(a, b, ());
        }
        let sccs = petgraph::algo::tarjan_scc(&graph);
        let mut cyclic: BTreeSet<NodeIndex> = BTreeSet::new();
        for scc in &sccs {
            if scc.len() > 1 {
                let mut members: Vec<&Node> = scc.iter().map(|i| &graph[*i]).collect();
                members.sort();
                // Walk the cycle in edge order starting from the smallest member.
                let start = index[members[0]];
                let mut path = vec![start];
                let mut cur = start;
                loop {
                    let next = graph
                        .neighbors(cur)
                        .filter(|n| scc.contains(n))
                        .min_by_key(|n| graph[*n].clone());
                    match next {
                        Some(n) if n == start || path.contains(&n) => break,
                        Some(n) => {
                            path.push(n);
                            cur = n;
                        }
                        None => break,
                    }
                }
                // Edges run dependency → dependent; people read "A → B" as "A uses B".
                path.reverse();
                let names: Vec<String> = path.iter().map(|i| graph[*i].describe()).collect();
                let first = &graph[start];
                let (file, span) = sites.get(first).cloned().unwrap_or((0, 0..0));
                let mut d = Diagnostic::error(format!(
                    "dependency cycle: {} → {}",
                    names.join(" → "),
                    names[0]
                ))
                .at(file, Some(span))
                .label("part of a dependency cycle")
                .hint("break the cycle: remove one of these references or depends_on entries");
                for (k, i) in path.iter().enumerate() {
                    let next = &graph[path[(k + 1) % path.len()]];
                    let (f, sp) = sites.get(&graph[*i]).cloned().unwrap_or((0, 0..0));
                    let _ = (f, sp);
                    d = d.note(format!("{} uses {}", graph[*i].describe(), next.describe()));
                }
                self.diags.push(d);
                cyclic.extend(scc.iter().copied());
            }
        }
        // tarjan_scc returns components in reverse topological order.
        let mut order: Vec<Node> = sccs
            .into_iter()
            .rev()
            .flatten()
            .filter(|i| !cyclic.contains(i))
            .map(|i| graph[i].clone())
            .collect();
        // Variables first so defaults and inputs are in place (they have no dependencies).
        order.sort_by_key(|n| !matches!(n, Node::Var(_)));
        for i in cyclic {
            bad.insert(graph[i].clone());
        }
        Order { nodes: order, bad }
    }

    fn check_body_refs(
        &mut self,
        node: &Node,
        file: FileId,
        body: &BodyDecl,
        check: &mut impl FnMut(&Node, FileId, &[&Ref], RefContext, &mut Diagnostics),
    ) {
        let has_count = body.attrs.contains_key("count");
        let has_each = body.attrs.contains_key("for_each");
        for (name, attr) in &body.attrs {
            let refs: Vec<&Ref> = attr.refs.iter().collect();
            let ctx = if name == "count" || name == "for_each" {
                RefContext::plain()
            } else {
                RefContext {
                    count: has_count,
                    each: has_each,
                }
            };
            check(node, file, &refs, ctx, self.diags);
        }
        for (_, nested, _, _) in body.blocks.iter().filter(|b| b.0 != "lifecycle") {
            let refs = nested.refs();
            check(
                node,
                file,
                &refs,
                RefContext {
                    count: has_count,
                    each: has_each,
                },
                self.diags,
            );
        }
    }

    fn refs_sensitive(&self, scope: &Scope<'_>, refs: &[&Ref]) -> bool {
        refs.iter()
            .any(|r| match (r.root.as_str(), r.attrs.first()) {
                ("var", Some(n)) => scope.vars.get(n).is_some_and(|v| v.1),
                ("local", Some(n)) => scope.locals.get(n).is_some_and(|v| v.1),
                ("module", Some(n)) => scope.modules.get(n).is_some_and(|v| v.sensitive),
                (root, Some(n)) if Kind::parse(root).is_some() => {
                    let kind = Kind::parse(root).unwrap_or(Kind::Cluster);
                    scope
                        .resources
                        .get(&(kind, n.clone()))
                        .is_some_and(|b| match r.attrs.get(1) {
                            Some(attr) => b.sensitive_attrs.contains(attr),
                            // The whole object: sensitive if any part is.
                            None => !b.sensitive_attrs.is_empty(),
                        })
                }
                _ => false,
            })
    }

    /// A context holding exactly what `refs` name, so building it costs what the block uses.
    fn context(&self, scope: &Scope<'_>, refs: &[&Ref], b: &Bindings) -> Context<'static> {
        let mut ctx = Context::new();
        functions::declare_all(&mut ctx);
        let mut roots: BTreeMap<&str, hcl::Map<String, Value>> = BTreeMap::new();
        for r in refs {
            let first = r.attrs.first();
            match (r.root.as_str(), first) {
                ("var", Some(n)) => {
                    if let Some((v, _)) = scope.vars.get(n) {
                        roots.entry("var").or_default().insert(n.clone(), v.clone());
                    }
                }
                ("local", Some(n)) => {
                    if let Some((v, _)) = scope.locals.get(n) {
                        roots
                            .entry("local")
                            .or_default()
                            .insert(n.clone(), v.clone());
                    }
                }
                ("module", Some(n)) => {
                    if let Some(bv) = scope.modules.get(n) {
                        roots
                            .entry("module")
                            .or_default()
                            .insert(n.clone(), bv.value.clone());
                    }
                }
                ("skyform", _) => {
                    let mut m = hcl::Map::new();
                    m.insert("workspace".into(), Value::from(self.workspace));
                    roots.insert("skyform", m);
                }
                ("path", _) => {
                    let mut m = hcl::Map::new();
                    m.insert(
                        "module".into(),
                        Value::from(scope.module.dir.display().to_string()),
                    );
                    m.insert(
                        "root".into(),
                        Value::from(self.root_dir.display().to_string()),
                    );
                    m.insert(
                        "cwd".into(),
                        Value::from(
                            std::env::current_dir()
                                .map(|d| d.display().to_string())
                                .unwrap_or_default(),
                        ),
                    );
                    roots.insert("path", m);
                }
                (root, Some(n)) => {
                    if let Some(kind) = Kind::parse(root)
                        && let Some(bv) = scope.resources.get(&(kind, n.clone()))
                    {
                        roots
                            .entry(kind.as_str())
                            .or_default()
                            .insert(n.clone(), bv.value.clone());
                    }
                }
                _ => {}
            }
        }
        for (root, m) in roots {
            ctx.declare_var(root, Value::Object(m));
        }
        if let Some((k, v)) = &b.each {
            let mut m = hcl::Map::new();
            m.insert("key".into(), k.clone());
            m.insert("value".into(), v.clone());
            ctx.declare_var("each", Value::Object(m));
        }
        if let Some(i) = b.count {
            let mut m = hcl::Map::new();
            m.insert("index".into(), Value::from(i));
            ctx.declare_var("count", Value::Object(m));
        }
        ctx
    }

    /// Evaluates one attribute; problems become diagnostics at its expression.
    fn eval_attr(&mut self, decl: &AttrDecl, ctx: &Context<'_>, refs: &[&Ref]) -> Option<Value> {
        match evaluate_attr(decl, ctx) {
            Ok(v) => Some(v),
            // Caused by a declaration that failed (and was reported): no second report.
            Err(_) if self.touches_tainted(refs) => Some(Value::String(UNKNOWN.into())),
            Err(d) => {
                self.diags.push(*d);
                None
            }
        }
    }

    fn taint(&mut self, node: &Node) {
        let key = match node {
            Node::Var(n) => ("var".to_string(), n.clone()),
            Node::Local(n) => ("local".to_string(), n.clone()),
            Node::Resource(k, n) => (k.as_str().to_string(), n.clone()),
            Node::Module(n) => ("module".to_string(), n.clone()),
            Node::Output(_) => return,
        };
        self.tainted.insert(key);
    }

    fn touches_tainted(&self, refs: &[&Ref]) -> bool {
        !self.tainted.is_empty()
            && refs.iter().any(|r| {
                r.attrs
                    .first()
                    .is_some_and(|f| self.tainted.contains(&(r.root.clone(), f.clone())))
            })
    }

    /// Expands `count` / `for_each` into instance keys with their bindings.
    fn expand(
        &mut self,
        scope: &Scope<'_>,
        body: &BodyDecl,
        what: &str,
    ) -> Option<Vec<(Option<InstanceKey>, Bindings)>> {
        if let Some(count) = body.attrs.get("count") {
            let refs: Vec<&Ref> = count.refs.iter().collect();
            let ctx = self.context(scope, &refs, &Bindings::default());
            let v = self.eval_attr(count, &ctx, &refs)?;
            let n = match &v {
                Value::Number(n) => n.as_u64().or_else(|| {
                    n.as_f64()
                        .filter(|f| f.fract() == 0.0 && *f >= 0.0)
                        .map(|f| f as u64)
                }),
                // Validating without variable values: check the body once.
                Value::String(s) if s.contains(UNKNOWN) && self.missing_vars_unknown => Some(1),
                _ => None,
            };
            let Some(n) = n.filter(|n| *n <= 100_000) else {
                let why = if v.as_str().is_some_and(|s| s.contains(UNKNOWN)) {
                    "it depends on values known only after apply".to_string()
                } else {
                    format!("{v} is not a whole number from 0 to 100000")
                };
                self.diags.push(
                    Diagnostic::error(format!("invalid count for {what}: {why}"))
                        .at(count.file, Some(count.span.clone()))
                        .label("count must be a whole number known at plan time")
                        .hint("use a number, a variable or length(...) of a known list"),
                );
                return None;
            };
            return Some(
                (0..n)
                    .map(|i| {
                        (
                            Some(InstanceKey::Index(i)),
                            Bindings {
                                count: Some(i),
                                each: None,
                            },
                        )
                    })
                    .collect(),
            );
        }
        if let Some(fe) = body.attrs.get("for_each") {
            let refs: Vec<&Ref> = fe.refs.iter().collect();
            let ctx = self.context(scope, &refs, &Bindings::default());
            let v = self.eval_attr(fe, &ctx, &refs)?;
            let invalid = |diags: &mut Diagnostics, why: String| {
                diags.push(
                    Diagnostic::error(format!("invalid for_each for {what}: {why}"))
                        .at(fe.file, Some(fe.span.clone()))
                        .label("for_each needs a map or a set of strings")
                        .hint(
                            "write for_each = toset([\"a\", \"b\"]) or for_each = { a = 1, b = 2 }",
                        ),
                );
            };
            if functions_has_unknown(&v) && self.touches_tainted(&refs) {
                return None;
            }
            if functions_has_unknown(&v) && self.missing_vars_unknown {
                // Validating without variable values: check the body once, for a stand-in key.
                let unknown = Value::String(UNKNOWN.into());
                return Some(vec![(
                    Some(InstanceKey::Key("*".into())),
                    Bindings {
                        each: Some((unknown.clone(), unknown)),
                        count: None,
                    },
                )]);
            }
            if functions_has_unknown(&v) {
                self.diags.push(
                    Diagnostic::error(format!(
                        "invalid for_each for {what}: it depends on values known only after apply"
                    ))
                    .at(fe.file, Some(fe.span.clone()))
                    .label("the keys must be known when planning")
                    .hint("build the keys from variables, locals or literals; use the resource attribute inside the block instead"),
                );
                return None;
            }
            match v {
                Value::Object(m) => {
                    let mut entries: Vec<(String, Value)> = m.into_iter().collect();
                    entries.sort_by(|a, b| a.0.cmp(&b.0));
                    return Some(
                        entries
                            .into_iter()
                            .map(|(k, v)| {
                                (
                                    Some(InstanceKey::Key(k.clone())),
                                    Bindings {
                                        each: Some((Value::from(k), v)),
                                        count: None,
                                    },
                                )
                            })
                            .collect(),
                    );
                }
                Value::Array(items) => {
                    let mut keys = Vec::new();
                    for item in items {
                        match item {
                            Value::String(s) => keys.push(s),
                            // As in Terraform, a set of numbers is keyed by their text.
                            Value::Number(n) => keys.push(n.to_string()),
                            other => {
                                invalid(
                                    self.diags,
                                    format!("the set holds {other}, which is not a string"),
                                );
                                return None;
                            }
                        }
                    }
                    keys.sort();
                    let before = keys.len();
                    keys.dedup();
                    if keys.len() != before {
                        invalid(
                            self.diags,
                            "the list has duplicate values; wrap it in toset(...)".into(),
                        );
                        return None;
                    }
                    return Some(
                        keys.into_iter()
                            .map(|k| {
                                (
                                    Some(InstanceKey::Key(k.clone())),
                                    Bindings {
                                        each: Some((Value::from(k.clone()), Value::from(k))),
                                        count: None,
                                    },
                                )
                            })
                            .collect(),
                    );
                }
                other => {
                    invalid(self.diags, format!("{other} is neither a map nor a set"));
                    return None;
                }
            }
        }
        Some(vec![(None, Bindings::default())])
    }

    /// Instances named by references and `depends_on` of a body.
    fn dependencies(&mut self, scope: &Scope<'_>, body: &BodyDecl) -> BTreeSet<Address> {
        let mut out = BTreeSet::new();
        for r in body.refs() {
            let Some(n) = r.attrs.first() else { continue };
            if let Some(kind) = Kind::parse(&r.root) {
                if let Some(bv) = scope.resources.get(&(kind, n.clone())) {
                    out.extend(bv.instances.iter().cloned());
                }
            } else if r.root == "module"
                && let Some(bv) = scope.modules.get(n)
            {
                out.extend(bv.instances.iter().cloned());
            }
        }
        out
    }

    fn eval_resource(&mut self, scope: &mut Scope<'_>, kind: Kind, name: &str) {
        let module = scope.module;
        let Some(decl) = module.resources.get(&(kind, name.to_string())) else {
            return;
        };
        let what = format!("{kind} \"{name}\"");
        let base = Address::new(kind, name).in_module(scope.path.clone());
        let mut deps = self.dependencies(scope, &decl.body);
        deps.extend(scope.inherited.iter().cloned());
        let Some(keys) = self.expand(scope, &decl.body, &what) else {
            scope.resources.insert(
                (kind, name.to_string()),
                BlockValue {
                    value: Value::Null,
                    instances: BTreeSet::new(),
                    sensitive: false,
                    sensitive_attrs: BTreeSet::new(),
                },
            );
            return;
        };
        let lifecycle = decode::lifecycle(&decl.body, kind, self.diags);
        let body_refs = decl.body.refs();
        let is_count = decl.body.attrs.contains_key("count");
        let is_each = decl.body.attrs.contains_key("for_each");
        let mut list = Vec::new();
        let mut map = hcl::Map::new();
        let mut single = Value::Null;
        let mut instances = BTreeSet::new();
        let mut all_sensitive: BTreeSet<String> = BTreeSet::new();
        for (key, bindings) in keys {
            let address = base.clone().with_key(key.clone());
            let ctx = self.context(scope, &body_refs, &bindings);
            let mut sensitive = BTreeSet::new();
            for (attr_name, attr) in &decl.body.attrs {
                if kind == Kind::Job && attr_name == "cluster" {
                    // Only the cluster's address is used: nothing of it is shown.
                    continue;
                }
                let refs: Vec<&Ref> = attr.refs.iter().collect();
                if self.refs_sensitive(scope, &refs) {
                    sensitive.insert(attr_name.clone());
                }
            }
            for (block_name, nested, _, _) in &decl.body.blocks {
                if self.refs_sensitive(scope, &nested.refs()) {
                    sensitive.insert(block_name.clone());
                }
            }
            all_sensitive.extend(sensitive.iter().cloned());
            if decl.body.attrs.contains_key("secrets") {
                // Secrets are secret whatever they are made of.
                all_sensitive.insert("secrets".into());
            }
            let mut eval_diags = Diagnostics::default();
            let tainted: BTreeSet<&str> = all_attrs(&decl.body)
                .into_iter()
                .filter(|a| self.touches_tainted(&a.refs.iter().collect::<Vec<_>>()))
                .map(|a| a.name.as_str())
                .collect();
            let spec = {
                let diags = &mut eval_diags;
                let mut evaluate = |attr: &AttrDecl| -> Option<Value> {
                    match evaluate_attr(attr, &ctx) {
                        Ok(v) => Some(v),
                        Err(_) if tainted.contains(attr.name.as_str()) => {
                            Some(Value::String(UNKNOWN.into()))
                        }
                        Err(d) => {
                            diags.push(*d);
                            None
                        }
                    }
                };
                decode::decode(
                    kind,
                    &decl.body,
                    &mut evaluate,
                    &what,
                    &decode::Dirs {
                        module: &module.dir,
                        root: self.root_dir,
                        unknown_ok: self.missing_vars_unknown,
                    },
                    self.diags,
                )
            };
            let failed = eval_diags.has_errors();
            self.diags.extend(eval_diags);
            let Some(spec) = spec.filter(|_| !failed) else {
                continue;
            };
            instances.insert(address.clone());
            let attrs_json = spec.attributes();
            let computed = self.resolver.resource(Instance {
                address: address.clone(),
                spec,
                lifecycle: lifecycle.clone(),
                depends_on: deps.clone(),
                sensitive,
                file: decl.file,
                span: decl.span.clone(),
            });
            let mut obj = hcl::Map::new();
            for (k, v) in attrs_json {
                obj.insert(k, json_to_hcl(&v));
            }
            obj.insert("name".into(), Value::from(name));
            obj.insert("address".into(), Value::from(address.to_string()));
            for (k, v) in computed {
                obj.insert(k, json_to_hcl(&v));
            }
            let obj = Value::Object(obj);
            match key {
                Some(InstanceKey::Index(_)) => list.push(obj),
                Some(InstanceKey::Key(k)) => {
                    map.insert(k, obj);
                }
                None => single = obj,
            }
        }
        let value = if is_count {
            Value::Array(list)
        } else if is_each {
            Value::Object(map)
        } else {
            single
        };
        scope.resources.insert(
            (kind, name.to_string()),
            BlockValue {
                value,
                instances,
                sensitive: false,
                sensitive_attrs: all_sensitive,
            },
        );
    }

    fn eval_module_call(&mut self, scope: &mut Scope<'_>, name: &str) {
        let module = scope.module;
        let Some(decl) = module.modules.get(name) else {
            return;
        };
        let Some(child) = decl.module.clone() else {
            return;
        };
        let what = format!("module \"{name}\"");
        let module_deps = self.dependencies(scope, &decl.body);
        let Some(keys) = self.expand(scope, &decl.body, &what) else {
            return;
        };
        let is_count = decl.body.attrs.contains_key("count");
        let is_each = decl.body.attrs.contains_key("for_each");
        let mut list = Vec::new();
        let mut map = hcl::Map::new();
        let mut single = Value::Null;
        let mut instances = BTreeSet::new();
        let mut sensitive = false;
        for (key, bindings) in keys {
            let mut given = BTreeMap::new();
            let mut rejected = BTreeSet::new();
            let mut sensitive_inputs = BTreeSet::new();
            for (attr_name, attr) in &decl.body.attrs {
                if ["source", "count", "for_each", "depends_on"].contains(&attr_name.as_str()) {
                    continue;
                }
                let Some(var) = child.variables.get(attr_name) else {
                    let names: Vec<&str> = child.variables.keys().map(String::as_str).collect();
                    self.diags.push(
                        Diagnostic::error(format!("module {name:?} has no variable {attr_name:?}"))
                            .at(attr.file, Some(attr.span.clone()))
                            .label("not an input of this module")
                            .hint(match did_you_mean(attr_name, names.iter().copied()) {
                                Some(s) => format!("did you mean {s:?}?"),
                                None => format!("its inputs are: {}", names.join(", ")),
                            }),
                    );
                    continue;
                };
                let refs: Vec<&Ref> = attr.refs.iter().collect();
                if self.refs_sensitive(scope, &refs) {
                    sensitive_inputs.insert(attr_name.clone());
                }
                let ctx = self.context(scope, &refs, &bindings);
                let Some(v) = self.eval_attr(attr, &ctx, &refs) else {
                    rejected.insert(attr_name.clone());
                    continue;
                };
                let ty: VarType = vars::declared_type(var, self.diags);
                match ty.check(&v) {
                    Ok(v) => {
                        given.insert(attr_name.clone(), v);
                    }
                    Err(why) => {
                        rejected.insert(attr_name.clone());
                        self.diags.push(
                            Diagnostic::error(format!(
                                "wrong type for module input {attr_name:?}: {why}"
                            ))
                            .at(attr.file, Some(attr.span.clone()))
                            .label(format!("expected {}", ty.describe()))
                            .hint("pass a value of the variable's declared type"),
                        );
                    }
                }
            }
            let mut path = scope.path.clone();
            path.push(ModuleStep {
                name: name.to_string(),
                key: key.clone(),
            });
            let call = Call {
                given,
                rejected,
                sensitive_inputs,
                // What the module block depends on, everything inside it does.
                inherited: module_deps
                    .iter()
                    .chain(scope.inherited.iter())
                    .cloned()
                    .collect(),
                call_site: Some((decl.file, decl.span.clone())),
            };
            let result = self.eval_module(&child, path, call);
            functions::set_base_dir(module.dir.clone());
            instances.extend(result.instances);
            let mut obj = hcl::Map::new();
            for (k, (v, s)) in result.outputs {
                sensitive |= s;
                obj.insert(k, v);
            }
            let obj = Value::Object(obj);
            match key {
                Some(InstanceKey::Index(_)) => list.push(obj),
                Some(InstanceKey::Key(k)) => {
                    map.insert(k, obj);
                }
                None => single = obj,
            }
        }
        let value = if is_count {
            Value::Array(list)
        } else if is_each {
            Value::Object(map)
        } else {
            single
        };
        scope.modules.insert(
            name.to_string(),
            BlockValue {
                value,
                instances,
                sensitive,
                sensitive_attrs: BTreeSet::new(),
            },
        );
    }
}

/// Evaluates an expression, turning a panic inside the HCL library (it asserts that numbers
/// are finite, so `1/0` panics there) into an ordinary evaluation error.
pub fn safe_evaluate(expr: &hcl::Expression, ctx: &Context<'_>) -> Result<Value, hcl::eval::Error> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| expr.evaluate(ctx))) {
        Ok(r) => r,
        Err(_) => Err(hcl::eval::Error::from(hcl::eval::ErrorKind::Message(
            "the arithmetic has no finite result (a division by zero, or a number too large)"
                .into(),
        ))),
    }
}

/// Evaluates one attribute. A failure caused by a value known only after apply (indexing an
/// unknown list, say) yields an unknown; any other failure is a diagnostic at the expression.
fn evaluate_attr(decl: &AttrDecl, ctx: &Context<'_>) -> Result<Value, Box<Diagnostic>> {
    let e = match safe_evaluate(&decl.eval_expr, ctx) {
        Ok(v) => return Ok(v),
        Err(e) => e,
    };
    use hcl::eval::ErrorKind;
    let caused_by_unknown = match e.kind() {
        ErrorKind::UndefinedFunc(_) | ErrorKind::UndefinedVar(_) => false,
        ErrorKind::Unexpected(v, _) | ErrorKind::UnaryOp(_, v) => functions_has_unknown(v),
        ErrorKind::BinaryOp(a, _, b) => functions_has_unknown(a) || functions_has_unknown(b),
        ErrorKind::FuncCall(_, m) => m.contains(UNKNOWN),
        _ => e.expr().is_some_and(|x| x.to_string().contains(UNKNOWN)),
    };
    if caused_by_unknown {
        return Ok(Value::String(UNKNOWN.to_string()));
    }
    let msg = match e.kind() {
        ErrorKind::FuncCall(name, m) => format!("{name}(): {m}"),
        ErrorKind::UndefinedFunc(name) => format!("unknown function {name}()"),
        other => other.to_string(),
    };
    let mut d = Diagnostic::error(format!("cannot evaluate {:?}: {msg}", decl.name))
        .at(decl.file, Some(decl.span.clone()))
        .label(msg.clone());
    d = match e.kind() {
        ErrorKind::UndefinedFunc(name) => match did_you_mean(&name.to_string(), functions::NAMES) {
            Some(s) => d.hint(format!("did you mean {s}()?")),
            None => d.hint(format!(
                "the functions are: {}",
                functions::NAMES.join(", ")
            )),
        },
        ErrorKind::FuncCall(name, _)
            if ["file", "filemd5"].contains(&name.to_string().as_str()) =>
        {
            d.hint("paths are relative to the directory of the file that calls it")
        }
        ErrorKind::FuncCall(..) => d.hint("check the arguments given to the function"),
        _ => d.hint("check the types of the values used in this expression"),
    };
    Err(Box::new(d))
}

/// Every attribute of a body, nested blocks included.
fn all_attrs(body: &BodyDecl) -> Vec<&AttrDecl> {
    let mut v: Vec<&AttrDecl> = body.attrs.values().collect();
    for (_, b, _, _) in &body.blocks {
        v.extend(all_attrs(b));
    }
    v
}

fn functions_has_unknown(v: &Value) -> bool {
    match v {
        Value::String(s) => s.contains(UNKNOWN),
        Value::Array(a) => a.iter().any(functions_has_unknown),
        Value::Object(o) => o.values().any(functions_has_unknown),
        _ => false,
    }
}

/// Where a reference appears: whether `count.index` and `each.*` are available.
#[derive(Debug, Clone, Copy)]
struct RefContext {
    count: bool,
    each: bool,
}

impl RefContext {
    fn plain() -> RefContext {
        RefContext {
            count: false,
            each: false,
        }
    }
}

const ROOTS: [&str; 11] = [
    "var",
    "local",
    "cluster",
    "job",
    "managed_job",
    "service",
    "module",
    "each",
    "count",
    "path",
    "skyform",
];

/// The attributes a reference may read from a resource of `kind`.
fn resource_attributes(kind: Kind) -> Vec<&'static str> {
    let schema = match kind {
        Kind::Cluster => &super::schema::CLUSTER,
        Kind::Job => &super::schema::JOB,
        Kind::ManagedJob => &super::schema::MANAGED_JOB,
        Kind::Service => &super::schema::SERVICE,
    };
    let mut v: Vec<&'static str> = schema
        .attrs
        .iter()
        .map(|a| a.name)
        .chain(schema.blocks.iter().map(|b| b.name))
        .filter(|n| !["count", "for_each", "depends_on", "lifecycle"].contains(n))
        .collect();
    v.extend(crate::model::spec::computed_attributes(kind));
    v.extend(["name", "address", "workdir_hash"]);
    v
}

/// Checks a reference against the module's declarations. `Ok(Some(node))`: it depends on
/// that declaration; `Ok(None)`: a built-in (`each`, `count`, `path`); `Err`: reported.
fn resolve_ref(
    module: &ModuleSource,
    r: &Ref,
    file: FileId,
    ctx: RefContext,
    diags: &mut Diagnostics,
) -> Result<Option<Node>, ()> {
    let undeclared =
        |diags: &mut Diagnostics, what: &str, candidates: Vec<String>, hint_else: String| {
            let full = format!(
                "{}.{}",
                r.root,
                r.attrs.first().cloned().unwrap_or_default()
            );
            let cands: Vec<String> = candidates
                .iter()
                .map(|c| format!("{}.{c}", r.root))
                .collect();
            let hint = match did_you_mean(&full, cands.iter().map(String::as_str)) {
                Some(s) => format!("did you mean {s}?"),
                None => hint_else,
            };
            diags.push(
                Diagnostic::error(format!("reference to undeclared {what} \"{full}\""))
                    .at(file, Some(r.span.clone()))
                    .label(format!("{full} is not declared in this module"))
                    .hint(hint),
            );
            Err(())
        };
    let problem = |diags: &mut Diagnostics, message: String, label: &str, hint: &str| {
        diags.push(
            Diagnostic::error(message)
                .at(file, Some(r.span.clone()))
                .label(label)
                .hint(hint),
        );
        Err(())
    };
    let Some(first) = r.attrs.first() else {
        return match r.root.as_str() {
            "var" | "local" | "module" | "each" | "count" | "path" | "skyform" | "cluster"
            | "job" | "managed_job" | "service" => problem(
                diags,
                format!("incomplete reference \"{}\"", r.root),
                "needs a name after the dot",
                &format!("write {}.NAME", r.root),
            ),
            root => unknown_root(root, file, r, diags),
        };
    };
    match r.root.as_str() {
        "var" if module.variables.contains_key(first) => Ok(Some(Node::Var(first.clone()))),
        "var" => undeclared(
            diags,
            "variable",
            module.variables.keys().cloned().collect(),
            format!("declare it: variable \"{first}\" {{ type = string }}"),
        ),
        "local" if module.locals.contains_key(first) => Ok(Some(Node::Local(first.clone()))),
        "local" => undeclared(
            diags,
            "local value",
            module.locals.keys().cloned().collect(),
            format!("declare it: locals {{ {first} = … }}"),
        ),
        "module" => match module.modules.get(first) {
            Some(call) => {
                if let (Some(out), Some(child)) = (r.attrs.get(1), &call.module)
                    && !child.outputs.contains_key(out)
                {
                    let names: Vec<&str> = child.outputs.keys().map(String::as_str).collect();
                    return problem(
                        diags,
                        format!("module {first:?} has no output {out:?}"),
                        "not an output of this module",
                        &match did_you_mean(out, names.iter().copied()) {
                            Some(s) => format!("did you mean module.{first}.{s}?"),
                            None if names.is_empty() => {
                                "the module declares no outputs".to_string()
                            }
                            None => format!("its outputs are: {}", names.join(", ")),
                        },
                    );
                }
                Ok(Some(Node::Module(first.clone())))
            }
            None => undeclared(
                diags,
                "module",
                module.modules.keys().cloned().collect(),
                format!("declare it: module \"{first}\" {{ source = \"./modules/{first}\" }}"),
            ),
        },
        "each" if !ctx.each => problem(
            diags,
            "each is only available in blocks with for_each".into(),
            "no for_each here",
            "add for_each to the block, or use a variable or local",
        ),
        "each" if !matches!(first.as_str(), "key" | "value") => problem(
            diags,
            "each has only .key and .value".into(),
            "unknown attribute of each",
            "write each.key or each.value",
        ),
        "count" if !ctx.count => problem(
            diags,
            "count.index is only available in blocks with count".into(),
            "no count here",
            "add count to the block",
        ),
        "count" if first != "index" => problem(
            diags,
            "count has only .index".into(),
            "unknown attribute of count",
            "write count.index",
        ),
        "path" if !matches!(first.as_str(), "module" | "root" | "cwd") => problem(
            diags,
            "path has only .module, .root and .cwd".into(),
            "unknown attribute of path",
            "write path.module",
        ),
        "skyform" if first != "workspace" => problem(
            diags,
            "skyform has only .workspace".into(),
            "unknown attribute of skyform",
            "write skyform.workspace",
        ),
        "each" | "count" | "path" | "skyform" => Ok(None),
        root => {
            let Some(kind) = Kind::parse(root) else {
                return unknown_root(root, file, r, diags);
            };
            if !module.resources.contains_key(&(kind, first.clone())) {
                let names: Vec<String> = module
                    .resources
                    .keys()
                    .filter(|(k, _)| *k == kind)
                    .map(|(_, n)| n.clone())
                    .collect();
                return undeclared(
                    diags,
                    "resource",
                    names,
                    format!("declare it: {root} \"{first}\" {{ … }}"),
                );
            }
            if let Some(attr) = r.attrs.get(1) {
                let known = resource_attributes(kind);
                if !known.contains(&attr.as_str()) {
                    return problem(
                        diags,
                        format!("{root}.{first} has no attribute {attr:?}"),
                        "not an attribute of this resource",
                        &match did_you_mean(attr, known.iter().copied()) {
                            Some(s) => format!("did you mean {root}.{first}.{s}?"),
                            None => format!("a {root} exports: {}", known.join(", ")),
                        },
                    );
                }
            }
            Ok(Some(Node::Resource(kind, first.clone())))
        }
    }
}

fn unknown_root(
    root: &str,
    file: FileId,
    r: &Ref,
    diags: &mut Diagnostics,
) -> Result<Option<Node>, ()> {
    let mut d = Diagnostic::error(format!("unknown name {root:?}"))
        .at(file, Some(r.span.clone()))
        .label("not a variable, local, resource or module reference");
    d = match did_you_mean(root, ROOTS) {
        Some(s) => d.hint(format!("did you mean {s}?")),
        None => d.hint(
            "strings need quotes: write \"text\"; references start with var., local., cluster., …",
        ),
    };
    diags.push(d);
    Err(())
}

pub fn to_json(v: &Value) -> serde_json::Value {
    serde_json::to_value(v).unwrap_or(serde_json::Value::Null)
}

pub fn json_to_hcl(v: &serde_json::Value) -> Value {
    match v {
        serde_json::Value::Null => Value::Null,
        serde_json::Value::Bool(b) => Value::Bool(*b),
        serde_json::Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                Value::from(i)
            } else if let Some(u) = n.as_u64() {
                Value::from(u)
            } else {
                Value::from(n.as_f64().unwrap_or(0.0))
            }
        }
        serde_json::Value::String(s) => Value::String(s.clone()),
        serde_json::Value::Array(a) => Value::Array(a.iter().map(json_to_hcl).collect()),
        serde_json::Value::Object(o) => {
            Value::Object(o.iter().map(|(k, v)| (k.clone(), json_to_hcl(v))).collect())
        }
    }
}
