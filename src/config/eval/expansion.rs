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
