//! Values: the context an expression is evaluated in (exactly what it refers to), evaluating
//! an attribute, and which failures are caused by values known only after apply.

use super::references::Node;
use super::{Evaluator, InstanceSink, Scope};
use crate::config::diag::{Diagnostic, did_you_mean};
use crate::config::functions;
use crate::config::load::{AttrDecl, BodyDecl, Ref};
use crate::config::value::{has_unknown, safe_evaluate, unknown};
use crate::model::{Kind, UNKNOWN};
use hcl::Value;
use hcl::eval::Context;
use std::collections::BTreeMap;

/// The instance being evaluated: its `each` / `count` bindings.
#[derive(Debug, Clone, Default)]
pub(super) struct Bindings {
    pub(super) each: Option<(Value, Value)>,
    pub(super) count: Option<u64>,
}

impl<R: InstanceSink> Evaluator<'_, R> {
    pub(super) fn refs_sensitive(&self, scope: &Scope<'_>, refs: &[&Ref]) -> bool {
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
    /// Built once per block: its instances differ only in their bindings ([`bind`]).
    pub(super) fn context(&self, scope: &Scope<'_>, refs: &[&Ref]) -> Context<'static> {
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
        ctx
    }

    /// Evaluates one attribute; problems become diagnostics at its expression.
    pub(super) fn eval_attr(
        &mut self,
        decl: &AttrDecl,
        ctx: &Context<'_>,
        refs: &[&Ref],
    ) -> Option<Value> {
        match evaluate_attr(decl, ctx) {
            Ok(v) => Some(v),
            // Caused by a declaration that failed (and was reported): no second report.
            Err(_) if self.touches_tainted(refs) => Some(unknown()),
            Err(d) => {
                self.diags.push(*d);
                None
            }
        }
    }

    pub(super) fn taint(&mut self, node: &Node) {
        let key = match node {
            Node::Var(n) => ("var".to_string(), n.clone()),
            Node::Local(n) => ("local".to_string(), n.clone()),
            Node::Resource(k, n) => (k.as_str().to_string(), n.clone()),
            Node::Module(n) => ("module".to_string(), n.clone()),
            Node::Output(_) => return,
        };
        self.tainted.insert(key);
    }

    pub(super) fn touches_tainted(&self, refs: &[&Ref]) -> bool {
        !self.tainted.is_empty()
            && refs.iter().any(|r| {
                r.attrs
                    .first()
                    .is_some_and(|f| self.tainted.contains(&(r.root.clone(), f.clone())))
            })
    }
}

/// Binds one instance's `each` / `count` in a block's context, replacing the previous
/// instance's (all instances of a block bind the same names).
pub(super) fn bind(ctx: &mut Context<'_>, bindings: &Bindings) {
    if let Some((k, v)) = &bindings.each {
        let mut m = hcl::Map::new();
        m.insert("key".into(), k.clone());
        m.insert("value".into(), v.clone());
        ctx.declare_var("each", Value::Object(m));
    }
    if let Some(i) = bindings.count {
        let mut m = hcl::Map::new();
        m.insert("index".into(), Value::from(i));
        ctx.declare_var("count", Value::Object(m));
    }
}

/// Evaluates one attribute. A failure caused by a value known only after apply (indexing an
/// unknown list, say) yields an unknown; any other failure is a diagnostic at the expression.
pub(super) fn evaluate_attr(decl: &AttrDecl, ctx: &Context<'_>) -> Result<Value, Box<Diagnostic>> {
    let e = match safe_evaluate(&decl.eval_expr, ctx) {
        Ok(v) => return Ok(v),
        Err(e) => e,
    };
    use hcl::eval::ErrorKind;
    let caused_by_unknown = match e.kind() {
        ErrorKind::UndefinedFunc(_) | ErrorKind::UndefinedVar(_) => false,
        ErrorKind::Unexpected(v, _) | ErrorKind::UnaryOp(_, v) => has_unknown(v),
        ErrorKind::BinaryOp(a, _, b) => has_unknown(a) || has_unknown(b),
        ErrorKind::FuncCall(_, m) => m.contains(UNKNOWN),
        _ => e.expr().is_some_and(|x| x.to_string().contains(UNKNOWN)),
    };
    if caused_by_unknown {
        return Ok(unknown());
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
pub(super) fn all_attrs(body: &BodyDecl) -> Vec<&AttrDecl> {
    let mut v: Vec<&AttrDecl> = body.attrs.values().collect();
    for (_, b, _, _) in &body.blocks {
        v.extend(all_attrs(b));
    }
    v
}

#[cfg(test)]
mod tests {
    use crate::config::eval::testing::evaluate_one;
    use crate::model::UNKNOWN;
    use serde_json::json;

    #[test]
    fn a_failure_caused_by_an_unknown_value_is_an_unknown_not_an_error() {
        // Collect leaves every computed attribute unknown: the index and the sum wait for apply.
        let e = evaluate_one(
            r#"
cluster "c" {}
output "first" {
  value = cluster.c.ips[3]
}
output "sum" {
  value = cluster.c.head_ip + 1
}
"#,
        );
        assert_eq!(e.errors(), Vec::<String>::new());
        assert_eq!(e.output("first"), json!(UNKNOWN));
        assert_eq!(e.output("sum"), json!(UNKNOWN));
    }

    #[test]
    fn an_unknown_function_is_reported_with_the_nearest_name() {
        let e = evaluate_one("locals {\n  n = lenght([1, 2])\n}\n");
        assert_eq!(
            e.errors(),
            [r#"cannot evaluate "n": unknown function lenght() @ main.sky.hcl:2:7"#]
        );
        assert_eq!(e.hints(), ["did you mean length()?"]);
    }

    #[test]
    fn what_depends_on_a_failed_declaration_is_not_reported_again() {
        let e = evaluate_one(
            r#"
locals {
  a = lenght([1])
  b = "${local.a}-x"
}
output "o" {
  value = local.b
}
"#,
        );
        assert_eq!(e.errors().len(), 1, "{:?}", e.errors());
        assert!(
            e.output("o").as_str().is_some_and(|s| s.contains(UNKNOWN)),
            "{:?}",
            e.output("o")
        );
    }

    #[test]
    fn expressions_see_locals_variables_and_the_workspace() {
        let e = evaluate_one(
            r#"
variable "n" {
  type    = number
  default = 2
}
locals {
  twice = var.n * 2
}
output "o" {
  value = "${skyform.workspace}-${local.twice}"
}
"#,
        );
        assert_eq!(e.errors(), Vec::<String>::new());
        assert_eq!(e.output("o"), json!("default-4"));
    }

    #[test]
    fn a_value_derived_from_a_sensitive_variable_must_be_marked() {
        let e = evaluate_one(
            r#"
variable "token" {
  type      = string
  default   = "s3cret"
  sensitive = true
}
locals {
  header = "Bearer ${var.token}"
}
output "shown" {
  value = local.header
}
output "hidden" {
  value     = local.header
  sensitive = true
}
"#,
        );
        assert_eq!(
            e.errors(),
            [r#"output "shown" shows a sensitive value @ main.sky.hcl:11:11"#]
        );
        assert!(e.outputs.get("hidden").is_some_and(|o| o.sensitive));
    }
}
