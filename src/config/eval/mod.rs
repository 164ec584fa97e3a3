//! Evaluation: declarations → resource instances, in dependency order.
//!
//! The evaluator walks each module's declarations in topological order, evaluates `count` /
//! `for_each` into instances, decodes each instance into a [`Spec`], and hands it to an
//! [`InstanceSink`] — the planner — which answers with the attributes the instance exports
//! (known from state, or unknown until apply). Everything is pure and synchronous.
//!
//! The walk of one module is here; its parts live in their own rooms:
//! - [`references`]: what each declaration refers to, checked, and the order that follows;
//! - [`values`]: what an expression sees (its context) and evaluating it, unknowns included;
//! - [`expansion`]: `count` / `for_each` into instance keys;
//! - [`resources`]: one resource block into instances handed to the sink;
//! - [`modules`]: a module block into calls of the child module.

mod expansion;
mod modules;
mod references;
mod resources;
mod values;

use super::diag::{Diagnostic, Diagnostics, FileId, did_you_mean};
use super::functions;
use super::load::{BodyDecl, ModuleSource, Ref};
use super::value::{erase_unknown_types, safe_evaluate, unknown};
use super::vars;
use crate::model::{Address, Kind, Lifecycle, ModulePath, Spec, UNKNOWN};
use hcl::Value;
use hcl::eval::Context;
use modules::{ModuleCall, ModuleResult};
use references::Node;
use std::collections::{BTreeMap, BTreeSet};
use std::ops::Range;
use std::path::Path;

// The value helpers moved to `config::value`; these paths stay for the crate's other users.
pub use super::value::{json_to_hcl, to_json};

/// One resource instance, fully evaluated.
#[derive(Debug, Clone)]
pub struct Instance {
    pub address: Address,
    pub spec: Spec,
    pub lifecycle: Lifecycle,
    /// Instances this one depends on (references and `depends_on`), sorted, each once. A
    /// list: a set of one or two addresses would take a whole tree node per instance.
    pub depends_on: Vec<Address>,
    /// Top-level attributes whose value derives from a sensitive variable.
    pub sensitive: BTreeSet<String>,
    /// Where the block was declared.
    pub file: FileId,
    pub span: Range<usize>,
    /// Whether any expression reads the instance's attributes: if not, the sink's answer is
    /// not used (and need not be built).
    pub referenced: bool,
}

/// The planner's side of evaluation: told about each instance in dependency order, it answers
/// with the computed attributes the instance exports (`head_ip`, `status`, …).
pub trait InstanceSink {
    fn resource(&mut self, instance: Instance) -> BTreeMap<String, serde_json::Value>;
}

/// A resolver that knows nothing: every computed attribute is unknown. Used by `validate`.
#[derive(Debug, Default)]
pub struct Collect {
    pub instances: Vec<Instance>,
}

impl InstanceSink for Collect {
    fn resource(&mut self, instance: Instance) -> BTreeMap<String, serde_json::Value> {
        if !instance.referenced {
            self.instances.push(instance);
            return BTreeMap::new();
        }
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

pub struct Evaluator<'a, R: InstanceSink> {
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
    /// The controller the root module declares, if any.
    pub controller: Option<crate::config::controller::Declared>,
}

impl<R: InstanceSink> std::fmt::Debug for Evaluator<'_, R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Evaluator").finish_non_exhaustive()
    }
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
    /// The declarations whose values something refers to (the others' are not built).
    used: BTreeSet<Node>,
}

impl Scope<'_> {
    /// Gives a declaration that failed an unknown value.
    fn set_unknown(&mut self, node: &Node) {
        let unknown = unknown();
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

impl<'a, R: InstanceSink> Evaluator<'a, R> {
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
        let call = ModuleCall {
            given,
            rejected,
            ..ModuleCall::default()
        };
        let result = self.eval_module(module, Vec::new(), call);
        result
            .outputs
            .into_iter()
            .map(|(k, (v, sensitive))| {
                (
                    k,
                    OutputValue {
                        value: to_json(&erase_unknown_types(v)),
                        sensitive,
                    },
                )
            })
            .collect()
    }

    fn eval_module(
        &mut self,
        module: &ModuleSource,
        path: ModulePath,
        call: ModuleCall,
    ) -> ModuleResult {
        let ModuleCall {
            given,
            rejected,
            sensitive_inputs,
            inherited,
            call_site,
        } = call;
        let mut order = self.order(module);
        let mut scope = Scope {
            module,
            path,
            inherited,
            vars: BTreeMap::new(),
            locals: BTreeMap::new(),
            resources: BTreeMap::new(),
            modules: BTreeMap::new(),
            outputs: BTreeMap::new(),
            used: std::mem::take(&mut order.used),
        };
        // A declaration that failed is reported once, at its cause; what depends on it sees
        // an unknown value instead, so its own, independent problems are still found (and the
        // ones the unknown would cause are not).
        let outer_tainted = std::mem::take(&mut self.tainted);
        let mut failed: BTreeSet<Node> = order.unresolved.clone();
        for node in &order.unresolved {
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
                    let ctx = self.context(&scope, &refs);
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
                    let ctx = self.context(&scope, &refs);
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
        // A module's instances, for what depends on the module block (the root has none).
        let mut instances = BTreeSet::new();
        if !scope.path.is_empty() {
            for b in scope.resources.values().chain(scope.modules.values()) {
                instances.extend(b.instances.iter().cloned());
            }
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
            let ctx = self.context(scope, &[]);
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
            scope.vars.insert(name.to_string(), (unknown(), sensitive));
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
}

/// Small configurations evaluated for the unit tests of each part: the files are written to a
/// temporary directory, loaded, and evaluated with [`Collect`] (every computed attribute unknown).
#[cfg(test)]
mod testing {
    use super::{Collect, Instance, OutputValue};
    use crate::config::{Diagnostics, Sources};
    use std::collections::BTreeMap;

    #[derive(Debug)]
    pub(super) struct Evaluated {
        pub instances: Vec<Instance>,
        pub outputs: BTreeMap<String, OutputValue>,
        pub diags: Diagnostics,
        pub sources: Sources,
    }

    impl Evaluated {
        /// The instances' addresses, in the order the sink was told of them.
        pub fn addresses(&self) -> Vec<String> {
            self.instances
                .iter()
                .map(|i| i.address.to_string())
                .collect()
        }

        /// Each error as `message @ file:line:col`.
        pub fn errors(&self) -> Vec<String> {
            self.diags
                .items
                .iter()
                .filter(|d| d.is_error())
                .map(|d| {
                    let at = d.position(&self.sources);
                    format!("{} @ {}", d.message, at.as_deref().unwrap_or("nowhere"))
                })
                .collect()
        }

        /// The hints of the errors, in order.
        pub fn hints(&self) -> Vec<String> {
            self.diags
                .items
                .iter()
                .filter_map(|d| d.hint.clone())
                .collect()
        }

        pub fn output(&self, name: &str) -> serde_json::Value {
            self.outputs
                .get(name)
                .map_or(serde_json::Value::Null, |o| o.value.clone())
        }

        /// An attribute of the instance at `address`, as the sink was given it.
        pub fn attr(&self, address: &str, name: &str) -> serde_json::Value {
            self.instances
                .iter()
                .find(|i| i.address.to_string() == address)
                .and_then(|i| i.spec.attributes().get(name).cloned())
                .unwrap_or(serde_json::Value::Null)
        }
    }

    /// Loads and evaluates `files` (path, text) with no input variables.
    pub(super) fn evaluate(files: &[(&str, &str)]) -> Evaluated {
        let dir = tempfile::tempdir().expect("a temporary directory");
        for (name, text) in files {
            let path = dir.path().join(name);
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent).expect("a module directory");
            }
            std::fs::write(&path, text).expect("a configuration file");
        }
        let (config, mut diags) = crate::config::load(dir.path());
        let mut sink = Collect::default();
        let (outputs, more) = crate::config::evaluate(&config, &BTreeMap::new(), &mut sink);
        diags.extend(more);
        Evaluated {
            instances: sink.instances,
            outputs,
            diags,
            sources: config.sources,
        }
    }

    /// As [`evaluate`], for one root file.
    pub(super) fn evaluate_one(text: &str) -> Evaluated {
        evaluate(&[("main.sky.hcl", text)])
    }
}
