//! Expansion: `count` and `for_each` into the keys of a block's instances, each with the
//! `count.index` / `each.key` / `each.value` it binds.

use super::values::Bindings;
use super::{Evaluator, InstanceSink, Scope};
use crate::config::diag::{Diagnostic, Diagnostics};
use crate::config::load::{BodyDecl, Ref};
use crate::config::value::{has_unknown, unknown};
use crate::model::{InstanceKey, UNKNOWN};
use hcl::Value;

impl<R: InstanceSink> Evaluator<'_, R> {
    /// Expands `count` / `for_each` into instance keys with their bindings.
    pub(super) fn expand(
        &mut self,
        scope: &Scope<'_>,
        body: &BodyDecl,
        what: &str,
    ) -> Option<Vec<(Option<InstanceKey>, Bindings)>> {
        if let Some(count) = body.attrs.get("count") {
            let refs: Vec<&Ref> = count.refs.iter().collect();
            let ctx = self.context(scope, &refs);
            let v = self.eval_attr(count, &ctx, &refs)?;
            if has_unknown(&v) && self.touches_tainted(&refs) {
                // Unknown because a declaration it uses failed, and that was reported already.
                return None;
            }
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
            let ctx = self.context(scope, &refs);
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
            if has_unknown(&v) && self.touches_tainted(&refs) {
                return None;
            }
            if has_unknown(&v) && self.missing_vars_unknown {
                // Validating without variable values: check the body once, for a stand-in key.
                let unknown = unknown();
                return Some(vec![(
                    Some(InstanceKey::Key("*".into())),
                    Bindings {
                        each: Some((unknown.clone(), unknown)),
                        count: None,
                    },
                )]);
            }
            if has_unknown(&v) {
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
}

/// What references see of a block's instances: a list with `count`, a map by key with
/// `for_each`, the one object otherwise.
#[derive(Debug)]
pub(super) struct InstanceValues {
    is_count: bool,
    is_each: bool,
    list: Vec<Value>,
    map: hcl::Map<String, Value>,
    single: Value,
}

impl InstanceValues {
    /// For a block, from whether it declares `count` or `for_each`.
    pub(super) fn for_block(body: &BodyDecl) -> InstanceValues {
        InstanceValues {
            is_count: body.attrs.contains_key("count"),
            is_each: body.attrs.contains_key("for_each"),
            list: Vec::new(),
            map: hcl::Map::new(),
            single: Value::Null,
        }
    }

    /// Adds the value of the instance with this key.
    pub(super) fn add(&mut self, key: Option<InstanceKey>, value: Value) {
        match key {
            Some(InstanceKey::Index(_)) => self.list.push(value),
            Some(InstanceKey::Key(k)) => {
                self.map.insert(k, value);
            }
            None => self.single = value,
        }
    }

    /// The block's value.
    pub(super) fn value(self) -> Value {
        if self.is_count {
            Value::Array(self.list)
        } else if self.is_each {
            Value::Object(self.map)
        } else {
            self.single
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::config::eval::testing::evaluate_one;
    use serde_json::json;

    #[test]
    fn for_each_over_a_set_makes_one_instance_per_distinct_key_in_order() {
        let e = evaluate_one(
            r#"
cluster "c" {}
job "j" {
  for_each = toset(["b", "a", "b"])
  cluster  = cluster.c
  run      = "echo ${each.key}=${each.value}"
}
"#,
        );
        assert_eq!(e.errors(), Vec::<String>::new());
        assert_eq!(
            e.addresses(),
            ["cluster.c", r#"job.j["a"]"#, r#"job.j["b"]"#]
        );
        assert_eq!(e.attr(r#"job.j["a"]"#, "run"), json!("echo a=a"));
        assert_eq!(e.attr(r#"job.j["b"]"#, "run"), json!("echo b=b"));
    }

    #[test]
    fn for_each_over_a_map_binds_key_and_value() {
        let e = evaluate_one(
            r#"
cluster "c" {
  for_each = { small = 1, big = 4 }
  num_nodes = each.value
}
output "sizes" {
  value = { for k, c in cluster.c : k => c.num_nodes }
}
"#,
        );
        assert_eq!(e.errors(), Vec::<String>::new());
        assert_eq!(
            e.addresses(),
            [r#"cluster.c["big"]"#, r#"cluster.c["small"]"#]
        );
        assert_eq!(e.output("sizes"), json!({ "big": 4, "small": 1 }));
    }

    #[test]
    fn count_makes_indexed_instances_and_a_list() {
        let e = evaluate_one(
            r#"
cluster "c" {}
job "j" {
  count   = 3
  cluster = cluster.c
  run     = "n${count.index}"
}
output "runs" {
  value = [for j in job.j : j.run]
}
"#,
        );
        assert_eq!(e.errors(), Vec::<String>::new());
        assert_eq!(
            e.addresses(),
            ["cluster.c", "job.j[0]", "job.j[1]", "job.j[2]"]
        );
        assert_eq!(e.output("runs"), json!(["n0", "n1", "n2"]));
    }

    #[test]
    fn count_of_zero_makes_no_instance_and_no_error() {
        let e = evaluate_one("cluster \"c\" {\n  count = 0\n}\n");
        assert_eq!(e.errors(), Vec::<String>::new());
        assert!(e.addresses().is_empty());
    }

    #[test]
    fn a_negative_count_is_an_error_at_the_count() {
        let e = evaluate_one("cluster \"c\" {\n  count = -1\n}\n");
        let errors = e.errors();
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(
            errors[0].starts_with("invalid count for cluster \"c\""),
            "{errors:?}"
        );
        assert!(errors[0].ends_with("main.sky.hcl:2:11"), "{errors:?}");
        assert!(e.addresses().is_empty());
    }

    #[test]
    fn a_list_with_duplicates_is_not_a_set() {
        let e = evaluate_one("cluster \"c\" {\n  for_each = [\"a\", \"a\"]\n}\n");
        let errors = e.errors();
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(errors[0].contains("duplicate values"), "{errors:?}");
        assert!(errors[0].ends_with("main.sky.hcl:2:14"), "{errors:?}");
    }

    #[test]
    fn for_each_keys_known_only_after_apply_are_an_error() {
        let e = evaluate_one(
            r#"
cluster "c" {}
cluster "d" {
  for_each = toset([cluster.c.head_ip])
}
"#,
        );
        let errors = e.errors();
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(errors[0].contains("known only after apply"), "{errors:?}");
        assert_eq!(e.addresses(), ["cluster.c"]);
    }
}
