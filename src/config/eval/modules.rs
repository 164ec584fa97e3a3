//! Module calls: a `module` block into one call of the child module per instance, with its
//! inputs checked against the child's variables; the child's outputs become the block's value.

use super::expansion::InstanceValues;
use super::references::Node;
use super::values::bind;
use super::{BlockValue, Evaluator, InstanceSink, Scope};
use crate::config::diag::{Diagnostic, FileId, did_you_mean};
use crate::config::functions;
use crate::config::load::Ref;
use crate::config::vars::{self, VarType};
use crate::model::{Address, ModuleStep};
use hcl::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::ops::Range;

/// What a module exports to its caller, and the instances inside it.
#[derive(Debug, Clone, Default)]
pub(super) struct ModuleResult {
    pub(super) outputs: BTreeMap<String, (Value, bool)>,
    pub(super) instances: BTreeSet<Address>,
}

/// What a module is called with.
#[derive(Debug, Default)]
pub(super) struct ModuleCall {
    /// Input values by variable name.
    pub(super) given: BTreeMap<String, Value>,
    /// Inputs given a value that was rejected (reported already).
    pub(super) rejected: BTreeSet<String>,
    /// Inputs whose values are sensitive.
    pub(super) sensitive_inputs: BTreeSet<String>,
    /// Instances every resource in the module depends on (the module block's dependencies).
    pub(super) inherited: BTreeSet<Address>,
    /// The module block, for "missing input" messages.
    pub(super) call_site: Option<(FileId, Range<usize>)>,
}

impl<R: InstanceSink> Evaluator<'_, R> {
    pub(super) fn eval_module_call(&mut self, scope: &mut Scope<'_>, name: &str) {
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
            // As for a resource: unknown to what uses it, with the cause reported once.
            let node = Node::Module(name.to_string());
            scope.set_unknown(&node);
            self.taint(&node);
            return;
        };
        let mut values = InstanceValues::for_block(&decl.body);
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
                let mut ctx = self.context(scope, &refs);
                bind(&mut ctx, &bindings);
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
            let call = ModuleCall {
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
            values.add(key, Value::Object(obj));
        }
        let value = values.value();
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

#[cfg(test)]
mod tests {
    use crate::config::eval::testing::evaluate;
    use serde_json::json;

    const CHILD: &str = r#"
variable "n" {
  type = number
}
variable "prefix" {
  type    = string
  default = "w"
}
cluster "c" {
  count = var.n
  setup = "${var.prefix}${count.index}"
}
output "setups" {
  value = [for c in cluster.c : c.setup]
}
"#;

    #[test]
    fn a_module_output_carries_values_from_inside_the_module() {
        let e = evaluate(&[
            (
                "main.sky.hcl",
                r#"
module "m" {
  source = "./modules/m"
  n      = 2
}
output "setups" {
  value = module.m.setups
}
"#,
            ),
            ("modules/m/main.sky.hcl", CHILD),
        ]);
        assert_eq!(e.errors(), Vec::<String>::new());
        assert_eq!(
            e.addresses(),
            ["module.m.cluster.c[0]", "module.m.cluster.c[1]"]
        );
        assert_eq!(e.output("setups"), json!(["w0", "w1"]));
    }

    #[test]
    fn what_depends_on_a_module_or_a_block_depends_on_their_instances() {
        // Nothing inside the module refers to its jobs, nor anything in the root to job.r:
        // their values are not built, but what depends on them still knows their instances.
        let e = evaluate(&[
            (
                "main.sky.hcl",
                r#"
module "m" {
  source = "./modules/j"
}
cluster "c" {}
job "r" {
  for_each = toset(["a", "b"])
  cluster  = cluster.c
  run      = "x"
}
job "after" {
  cluster    = cluster.c
  run        = "y"
  depends_on = [module.m, job.r]
}
"#,
            ),
            (
                "modules/j/main.sky.hcl",
                "cluster \"k\" {}\njob \"j\" {\n  count   = 2\n  cluster = cluster.k\n  run     = \"z\"\n}\n",
            ),
        ]);
        assert_eq!(e.errors(), Vec::<String>::new());
        let after = e
            .instances
            .iter()
            .find(|i| i.address.to_string() == "job.after")
            .map(|i| {
                i.depends_on
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
            });
        assert_eq!(
            after,
            Some(vec![
                "cluster.c".to_string(),
                r#"job.r["a"]"#.to_string(),
                r#"job.r["b"]"#.to_string(),
                "module.m.cluster.k".to_string(),
                "module.m.job.j[0]".to_string(),
                "module.m.job.j[1]".to_string(),
            ])
        );
    }

    #[test]
    fn a_module_with_for_each_is_called_once_per_key() {
        let e = evaluate(&[
            (
                "main.sky.hcl",
                r#"
module "m" {
  source   = "./modules/m"
  for_each = { x = 1, y = 2 }
  n        = each.value
  prefix   = each.key
}
output "setups" {
  value = { for k, m in module.m : k => m.setups }
}
"#,
            ),
            ("modules/m/main.sky.hcl", CHILD),
        ]);
        assert_eq!(e.errors(), Vec::<String>::new());
        assert_eq!(
            e.addresses(),
            [
                r#"module.m["x"].cluster.c[0]"#,
                r#"module.m["y"].cluster.c[0]"#,
                r#"module.m["y"].cluster.c[1]"#,
            ]
        );
        assert_eq!(
            e.output("setups"),
            json!({ "x": ["x0"], "y": ["y0", "y1"] })
        );
    }

    #[test]
    fn inputs_are_checked_against_the_modules_variables() {
        let e = evaluate(&[
            (
                "main.sky.hcl",
                "module \"m\" {\n  source = \"./modules/m\"\n  nn     = 1\n}\n",
            ),
            ("modules/m/main.sky.hcl", CHILD),
        ]);
        let errors = e.errors();
        assert_eq!(errors.len(), 2, "{errors:?}");
        assert!(
            errors[0].starts_with(r#"module "m" has no variable "nn" @ "#)
                && errors[0].ends_with("main.sky.hcl:3:12"),
            "{errors:?}"
        );
        // The required input that was not given is reported at the module block.
        assert!(
            errors[1].starts_with(r#"no value for required variable "n" @ "#)
                && errors[1].ends_with("main.sky.hcl:1:1"),
            "{errors:?}"
        );
        assert_eq!(e.hints()[0], r#"did you mean "n"?"#);
    }

    #[test]
    fn an_input_of_the_wrong_type_is_reported_at_the_input() {
        let e = evaluate(&[
            (
                "main.sky.hcl",
                "module \"m\" {\n  source = \"./modules/m\"\n  n      = [1]\n}\n",
            ),
            ("modules/m/main.sky.hcl", CHILD),
        ]);
        let errors = e.errors();
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(
            errors[0].starts_with(r#"wrong type for module input "n": "#)
                && errors[0].ends_with("main.sky.hcl:3:12"),
            "{errors:?}"
        );
    }

    #[test]
    fn a_module_input_known_only_after_apply_is_checked_by_its_type() {
        let e = evaluate(&[
            (
                "main.sky.hcl",
                r#"
cluster "a" {}
module "m" {
  source = "./modules/m"
  ips    = cluster.a.ips
  n      = length(cluster.a.ips)
  s      = cluster.a.head_ip
  any    = cluster.a.ips
  bad    = cluster.a.head_ip
}
"#,
            ),
            (
                "modules/m/main.sky.hcl",
                r#"
variable "ips" { type = list(string) }
variable "n" { type = string }
variable "s" { type = string }
variable "any" {}
variable "bad" { type = list(string) }
cluster "c" {
  setup = "${var.s} ${var.n} ${join(",", var.ips)}"
  envs  = var.n
}
cluster "d" {
  setup = var.any
}
"#,
            ),
        ]);
        // The number converts to the variable's string, which a map does not take; an input
        // of no declared type keeps the type it had.
        assert_eq!(
            e.errors(),
            [
                "wrong type for module input \"bad\": expected list(string), got a string (known after apply) @ main.sky.hcl:9:12",
                "envs must be a map of strings, but var.n is a string @ modules/m/main.sky.hcl:9:11",
                "setup must be a string, but var.any is a list of strings @ modules/m/main.sky.hcl:12:11",
            ]
        );
    }
}
