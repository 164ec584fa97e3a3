//! Resources: one resource block into its instances, each decoded into a spec and handed to
//! the [`InstanceSink`], whose answer (the computed attributes) is what references read.

use super::expansion::InstanceValues;
use super::references::Node;
use super::values::{all_attrs, bind, evaluate_attr};
use super::{BlockValue, Evaluator, Instance, InstanceSink, Scope};
use crate::config::decode;
use crate::config::diag::Diagnostics;
use crate::config::load::{AttrDecl, Ref};
use crate::config::schema;
use crate::config::value::{json_to_hcl, typed_unknown, unknown};
use crate::model::{Address, Kind, UNKNOWN};
use hcl::Value;
use std::collections::BTreeSet;

impl<R: InstanceSink> Evaluator<'_, R> {
    pub(super) fn eval_resource(&mut self, scope: &mut Scope<'_>, kind: Kind, name: &str) {
        let module = scope.module;
        let Some(decl) = module.resources.get(&(kind, name.to_string())) else {
            return;
        };
        let what = format!("{kind} \"{name}\"");
        let base = Address::new(kind, name).in_module(scope.path.clone());
        let mut deps = self.dependencies(scope, &decl.body);
        deps.extend(scope.inherited.iter().cloned());
        if matches!(kind, Kind::ManagedJob | Kind::Service)
            && let Some(c) = &self.controller
        {
            // Handed to the controller: it must run first, and stop only after they ended
            // (a service's replicas removed).
            deps.insert(c.address.clone());
        }
        if kind == Kind::Controller && !self.check_controller(scope, decl) {
            return;
        }
        let deps: Vec<Address> = deps.into_iter().collect();
        let Some(keys) = self.expand(scope, &decl.body, &what) else {
            // Its instances are not known (the cause is reported): what uses it sees an
            // unknown and reports nothing more.
            let node = Node::Resource(kind, name.to_string());
            scope.set_unknown(&node);
            self.taint(&node);
            return;
        };
        let lifecycle = decode::lifecycle(&decl.body, kind, self.diags);
        let body_refs = decl.body.refs();
        let mut values = InstanceValues::for_block(&decl.body);
        let mut instances = BTreeSet::new();
        // What is sensitive, or touches a failed declaration, depends on the block alone (not
        // on the instance): found once.
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
        let mut all_sensitive: BTreeSet<String> = BTreeSet::new();
        if !keys.is_empty() {
            all_sensitive.extend(sensitive.iter().cloned());
            if decl.body.attrs.contains_key("secrets") {
                // Secrets are secret whatever they are made of.
                all_sensitive.insert("secrets".into());
            }
        }
        let tainted: BTreeSet<&str> = all_attrs(&decl.body)
            .into_iter()
            .filter(|a| self.touches_tainted(&a.refs.iter().collect::<Vec<_>>()))
            .map(|a| a.name.as_str())
            .collect();
        // One context for the block (functions and what it refers to); each instance only
        // binds its `each` / `count` in it.
        let mut ctx = self.context(scope, &body_refs);
        // Nothing refers to the block's value (a sweep of jobs, say): it is not built.
        let wanted = scope.used.contains(&Node::Resource(kind, name.to_string()));
        for (key, bindings) in keys {
            let address = base.clone().with_key(key.clone());
            bind(&mut ctx, &bindings);
            let mut eval_diags = Diagnostics::default();
            let spec = {
                let diags = &mut eval_diags;
                let mut evaluate = |attr: &AttrDecl| -> Option<Value> {
                    match evaluate_attr(attr, &ctx) {
                        Ok(v) => Some(v),
                        Err(_) if tainted.contains(attr.name.as_str()) => Some(unknown()),
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
            let Some(mut spec) = spec.filter(|_| !failed) else {
                continue;
            };
            if let (crate::model::Spec::Controller(c), Some(declared)) =
                (&mut spec, &self.controller)
            {
                c.config = declared.file.clone();
                c.workspace = self.workspace.to_string();
            }
            if wanted || !scope.path.is_empty() {
                // Read by the references to the block, and by those to its module.
                instances.insert(address.clone());
            }
            let attrs_json = wanted.then(|| spec.attributes());
            let computed = self.resolver.resource(Instance {
                address: address.clone(),
                spec,
                lifecycle: lifecycle.clone(),
                depends_on: deps.clone(),
                sensitive: sensitive.clone(),
                file: decl.file,
                span: decl.span.clone(),
                referenced: wanted,
            });
            let Some(attrs_json) = attrs_json else {
                continue;
            };
            let mut obj = hcl::Map::new();
            for (k, v) in attrs_json {
                obj.insert(k, json_to_hcl(&v));
            }
            obj.insert("name".into(), Value::from(name));
            obj.insert("address".into(), Value::from(address.to_string()));
            for (k, v) in computed {
                // Unknown until apply, but of a known type: carried, so it is type-checked
                // wherever it is used.
                let v = match schema::computed_type(kind, &k) {
                    Some(ty) if v.as_str() == Some(UNKNOWN) => typed_unknown(ty),
                    _ => json_to_hcl(&v),
                };
                obj.insert(k, v);
            }
            values.add(key, Value::Object(obj));
        }
        let value = values.value();
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
}

impl<R: InstanceSink> Evaluator<'_, R> {
    /// A controller is declared once, in the root module, with the state where it can read
    /// it.
    fn check_controller(
        &mut self,
        scope: &Scope<'_>,
        decl: &crate::config::load::ResourceDecl,
    ) -> bool {
        use crate::config::Diagnostic;
        let problem = if !scope.path.is_empty() {
            Some((
                "a controller is declared in the root module, not in a module",
                "move the controller block to the configuration's own files",
            ))
        } else if self
            .controller
            .as_ref()
            .is_some_and(|c| c.address.name != decl.name)
        {
            Some((
                "a configuration declares one controller",
                "remove all but one controller block",
            ))
        } else if self.controller.as_ref().is_some_and(|c| c.local_state) {
            Some((
                "a controller elsewhere cannot read a state kept in a file on this machine",
                "keep the state in a bucket (skyform { state \"s3\" { … } }, see docs/state.md), or remove the block: apply starts the controller here by itself",
            ))
        } else {
            None
        };
        let Some((message, hint)) = problem else {
            return true;
        };
        self.diags.push(
            Diagnostic::error(message)
                .at(decl.file, Some(decl.span.clone()))
                .label("this controller")
                .hint(hint),
        );
        false
    }
}

#[cfg(test)]
mod tests {
    use crate::config::eval::testing::evaluate_one;
    use crate::model::UNKNOWN;
    use serde_json::json;

    #[test]
    fn references_read_the_spec_and_what_the_sink_answers() {
        let e = evaluate_one(
            r#"
cluster "c" {
  num_nodes = 2
}
job "j" {
  cluster = cluster.c
  run     = "ssh ${cluster.c.head_ip} x${cluster.c.num_nodes}"
}
output "address" {
  value = job.j.address
}
"#,
        );
        assert_eq!(e.errors(), Vec::<String>::new());
        // num_nodes comes from the cluster's spec; head_ip from the sink (unknown here).
        assert_eq!(e.attr("job.j", "run"), json!(format!("ssh {UNKNOWN} x2")));
        assert_eq!(e.output("address"), json!("job.j"));
    }

    #[test]
    fn attributes_built_from_sensitive_values_are_marked() {
        let e = evaluate_one(
            r#"
variable "key" {
  type      = string
  default   = "k"
  sensitive = true
}
cluster "c" {}
job "j" {
  cluster = cluster.c
  run     = "train"
  envs    = { KEY = var.key }
}
"#,
        );
        assert_eq!(e.errors(), Vec::<String>::new());
        let job = e
            .instances
            .iter()
            .find(|i| i.address.to_string() == "job.j")
            .map(|i| i.sensitive.iter().cloned().collect::<Vec<_>>());
        assert_eq!(job, Some(vec!["envs".to_string()]));
    }

    #[test]
    fn a_value_of_the_wrong_type_is_reported_at_the_value() {
        let e = evaluate_one("cluster \"c\" {\n  num_nodes = \"many\"\n}\n");
        assert_eq!(
            e.errors(),
            [
                r#"wrong type for "num_nodes" in cluster: expected a whole number, found a string @ main.sky.hcl:2:15"#
            ]
        );
    }

    #[test]
    fn an_unknown_of_known_type_is_checked_against_the_attribute() {
        let e = evaluate_one(
            r#"
cluster "b" {}
locals {
  ips = cluster.b.ips
}
cluster "a" {
  envs  = cluster.b.head_ip
  setup = local.ips
}
cluster "c" {
  envs = { IPS = cluster.b.ips }
}
cluster "d" {
  envs = "${cluster.b.head_ip}:80"
}
cluster "e" {
  envs = length(cluster.b.ips)
}
"#,
        );
        assert_eq!(
            e.errors(),
            [
                // A template is a string whatever it holds: found when loading.
                r#"wrong type for "envs" in cluster: expected a map of strings, found a string @ main.sky.hcl:14:10"#,
                r#"wrong type for "envs" in cluster "c": expected a map of strings, found a map whose entry "IPS" is a list @ main.sky.hcl:11:10"#,
                // A function whose result type is fixed gives an unknown of that type.
                "envs must be a map of strings, but length(cluster.b.ips) is a number @ main.sky.hcl:17:10",
                "envs must be a map of strings, but cluster.b.head_ip is a string @ main.sky.hcl:7:11",
                "setup must be a string, but local.ips is a list of strings @ main.sky.hcl:8:11",
            ]
        );
    }

    #[test]
    fn unknowns_of_the_right_type_or_of_unknown_type_plan_as_before() {
        let e = evaluate_one(
            r#"
cluster "b" {}
job "j" {
  cluster = cluster.b
  run     = cluster.b.head_ip
  envs    = { IP = cluster.b.head_ip, N = job.k.exit_code, S = "${cluster.b.status}" }
}
job "k" {
  cluster = cluster.b
  run     = "x"
}
cluster "c" {
  envs = lookup({ UP = { A = "1" } }, cluster.b.status, {})
}
output "ip" {
  value = cluster.b.head_ip
}
"#,
        );
        // lookup() may give anything: of an unknown, it gives an unknown of unknown type,
        // checked once known.
        assert_eq!(e.errors(), Vec::<String>::new());
        // What leaves evaluation holds the plain unknown, whatever its type was.
        assert_eq!(e.attr("job.j", "run"), json!(UNKNOWN));
        assert_eq!(
            e.attr("job.j", "envs"),
            json!({ "IP": UNKNOWN, "N": UNKNOWN, "S": UNKNOWN })
        );
        assert_eq!(e.output("ip"), json!(UNKNOWN));
    }

    #[test]
    fn a_workdir_known_only_after_apply_is_an_error_when_planning() {
        // The plan hashes the workdir's contents: it cannot wait for apply.
        let e =
            evaluate_one("cluster \"b\" {}\ncluster \"a\" {\n  workdir = cluster.b.head_ip\n}\n");
        assert_eq!(
            e.errors(),
            [
                r#"workdir of cluster "a" depends on a value known only after apply @ main.sky.hcl:3:13"#
            ]
        );
    }
}
