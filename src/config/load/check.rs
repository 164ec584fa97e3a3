//! Checking a block's body against its schema: unknown and misspelt attributes and
//! blocks, missing required ones, static types, and the references each attribute makes.

use super::{Loader, header_span};
use crate::config::decl::*;
use crate::config::diag::{Diagnostic, FileId, did_you_mean};
use crate::config::schema::{BlockSchema, Ty};
use hcl_edit::Span;
use hcl_edit::expr::Expression;
use hcl_edit::structure::{Body, Structure};
use std::collections::BTreeSet;
use std::ops::Range;

impl Loader {
    /// Checks a body against its schema and collects its attributes with references.
    pub(super) fn check_body(
        &mut self,
        file: FileId,
        body: &Body,
        schema: &BlockSchema,
        what: &str,
    ) -> BodyDecl {
        self.check_body_at(file, body, schema, what, None)
    }

    /// As [`Self::check_body`]; `header` is where "missing …" problems point (the block's
    /// header), else the body's opening.
    pub(super) fn check_body_at(
        &mut self,
        file: FileId,
        body: &Body,
        schema: &BlockSchema,
        what: &str,
        header: Option<Range<usize>>,
    ) -> BodyDecl {
        let mut out = BodyDecl::default();
        let mut seen_blocks: BTreeSet<String> = BTreeSet::new();
        // Attributes written, even those rejected (so "missing" is not said of them).
        let mut present: BTreeSet<String> = BTreeSet::new();
        for structure in body.iter() {
            match structure {
                Structure::Attribute(attr) => {
                    let name = attr.key.as_str().to_string();
                    if !schema.open && schema.attr(&name).is_none() {
                        let known: Vec<&str> = schema.attrs.iter().map(|a| a.name).collect();
                        let mut d =
                            Diagnostic::error(format!("unknown attribute {name:?} in {what}"))
                                .at(file, attr.key.span())
                                .label("not an attribute of this block");
                        let alias = ALIASES
                            .iter()
                            .find(|(from, to)| {
                                *from == name
                                    && (schema.attr(to).is_some() || schema.block(to).is_some())
                            })
                            .map(|(_, to)| *to);
                        d = if schema.block(&name).is_some() {
                            d.hint(format!("{name} is a block: write {name} {{ … }}"))
                        } else if let Some(to) = alias {
                            d.hint(format!("did you mean {to:?}?"))
                        } else {
                            match did_you_mean(&name, known.iter().copied()) {
                                Some(s) => d.hint(format!("did you mean {s:?}?")),
                                None => d.hint(format!("{what} accepts: {}", known.join(", "))),
                            }
                        };
                        self.diags.push(d);
                        continue;
                    }
                    if out.attrs.contains_key(&name) {
                        self.diags.push(
                            Diagnostic::error(format!("attribute {name:?} is set twice in {what}"))
                                .at(file, attr.key.span())
                                .label("set again here")
                                .hint("keep one of them"),
                        );
                        continue;
                    }
                    let decl = attr_decl(file, attr);
                    present.insert(name.clone());
                    if let Some(spec) = schema.attr(&name) {
                        if !self.check_static_type(&decl, spec.ty, what) {
                            // Reported; evaluating it would only report it again.
                            continue;
                        }
                        if spec.ty == Ty::References {
                            self.check_references(&decl);
                        }
                    }
                    out.attrs.insert(name, decl);
                }
                Structure::Block(block) => {
                    let name = block.ident.as_str().to_string();
                    let Some(nested) = schema.block(&name) else {
                        let known: Vec<&str> = schema.blocks.iter().map(|b| b.name).collect();
                        let mut d = Diagnostic::error(format!("unknown block {name:?} in {what}"))
                            .at(file, block.ident.span())
                            .label("not allowed here");
                        d = if schema.attr(&name).is_some() {
                            d.hint(format!("{name} is an attribute: write {name} = …"))
                        } else {
                            match did_you_mean(&name, known.iter().copied()) {
                                Some(s) => d.hint(format!("did you mean {s:?}?")),
                                None if known.is_empty() => {
                                    d.hint(format!("{what} has no nested blocks"))
                                }
                                None => d.hint(format!(
                                    "{what} accepts the blocks: {}",
                                    known.join(", ")
                                )),
                            }
                        };
                        self.diags.push(d);
                        continue;
                    };
                    let labelled = name == "state";
                    if labelled && block.labels.len() != 1 {
                        self.diags.push(
                            Diagnostic::error("state block needs one label: the backend")
                                .at(file, header_span(block))
                                .label("expected state \"local\", \"s3\", \"gcs\" or \"azure\"")
                                .hint("write state \"s3\" { bucket = \"…\", key = \"…\" }"),
                        );
                        continue;
                    }
                    if !labelled && !block.labels.is_empty() {
                        self.diags.push(
                            Diagnostic::error(format!("{name} block takes no labels"))
                                .at(file, block.labels.first().and_then(|l| l.span()))
                                .label("unexpected label")
                                .hint(format!("write {name} {{ … }}")),
                        );
                        continue;
                    }
                    if !nested.repeated && !seen_blocks.insert(name.clone()) {
                        self.diags.push(
                            Diagnostic::error(format!("duplicate {name} block in {what}"))
                                .at(file, header_span(block))
                                .label("a second one here")
                                .hint(format!("merge them into one {name} block")),
                        );
                        continue;
                    }
                    let mut inner = self.check_body_at(
                        file,
                        &block.body,
                        nested.schema,
                        &name,
                        header_span(block),
                    );
                    if labelled {
                        let kind = block
                            .labels
                            .first()
                            .map(|l| l.as_str().to_string())
                            .unwrap_or_default();
                        const BACKENDS: [&str; 4] = ["local", "s3", "gcs", "azure"];
                        if !BACKENDS.contains(&kind.as_str()) {
                            let mut d =
                                Diagnostic::error(format!("unknown state backend {kind:?}"))
                                    .at(file, block.labels.first().and_then(|l| l.span()))
                                    .label("not a state backend");
                            d = match did_you_mean(&kind, BACKENDS) {
                                Some(s) => d.hint(format!(
                                    "did you mean {s:?}? The backends are: {}",
                                    BACKENDS.join(", ")
                                )),
                                None => {
                                    d.hint(format!("the backends are: {}", BACKENDS.join(", ")))
                                }
                            };
                            self.diags.push(d);
                        }
                        inner.label = Some(kind);
                    }
                    out.blocks
                        .push((name, inner, file, header_span(block).unwrap_or(0..0)));
                }
            }
        }
        for attr in schema.attrs.iter().filter(|a| a.required) {
            if !present.contains(attr.name) {
                self.diags.push(
                    Diagnostic::error(format!(
                        "missing required attribute {:?} in {what}",
                        attr.name
                    ))
                    .at(
                        file,
                        header
                            .clone()
                            .or_else(|| body.span().map(|s| s.start.saturating_sub(1)..s.start))
                            .or(Some(0..0)),
                    )
                    .label(format!("{what} needs {}", attr.name))
                    .hint(format!(
                        "add {} = {}",
                        attr.name,
                        example_for(attr.ty)
                    )),
                );
            }
        }
        for nested in schema.blocks.iter().filter(|b| b.required) {
            if !out.blocks.iter().any(|b| b.0 == nested.name) {
                self.diags.push(
                    Diagnostic::error(format!(
                        "missing required block {:?} in {what}",
                        nested.name
                    ))
                    .at(
                        file,
                        header
                            .clone()
                            .or_else(|| body.span().map(|s| s.start.saturating_sub(1)..s.start))
                            .or(Some(0..0)),
                    )
                    .label(format!("{what} needs a {} block", nested.name))
                    .hint(format!("add {} {{ … }}", nested.name)),
                );
            }
        }
        out
    }

    /// `depends_on = [cluster.a, job.b]` holds references, not strings.
    fn check_references(&mut self, decl: &AttrDecl) {
        let Expression::Array(items) = &decl.expr else {
            return;
        };
        if decl.name == "ignore_changes" {
            return;
        }
        for item in items.iter() {
            if matches!(item, Expression::Variable(_) | Expression::Traversal(_)) {
                continue;
            }
            let shown = match item {
                Expression::String(s) => s.value().to_string(),
                _ => "KIND.NAME".into(),
            };
            self.diags.push(
                Diagnostic::error(format!("{} holds references, not values", decl.name))
                    .at(decl.file, item.span())
                    .label("not a reference")
                    .hint(format!("remove the quotes: {} = [{shown}]", decl.name)),
            );
        }
    }

    /// Type problems visible without evaluating: a literal of the wrong kind.
    /// False when the literal has the wrong type (and that was reported).
    fn check_static_type(&mut self, decl: &AttrDecl, ty: Ty, what: &str) -> bool {
        if decl.name == "ignore_changes" {
            // Checked with the lifecycle block, which knows the resource's attributes.
            return true;
        }
        let literal = match &decl.expr {
            Expression::String(_)
            | Expression::StringTemplate(_)
            | Expression::HeredocTemplate(_) => "a string",
            Expression::Number(_) => "a number",
            Expression::Bool(_) => "a bool",
            Expression::Array(_) => "a list",
            Expression::Object(_) => "an object",
            _ => return true,
        };
        let ok = match ty {
            Ty::String => literal == "a string",
            Ty::Number | Ty::Count => literal == "a number",
            Ty::Bool => literal == "a bool",
            Ty::ListOfStrings | Ty::ListOfNumbers | Ty::References => literal == "a list",
            Ty::MapOfStrings => literal == "an object",
            Ty::Accelerators => literal == "a string" || literal == "a list",
            Ty::StringOrNumber => literal == "a string" || literal == "a number",
            Ty::ClusterRef => false,
            Ty::Any => true,
        };
        if !ok {
            self.diags.push(
                Diagnostic::error(format!(
                    "wrong type for {:?} in {what}: expected {}, found {literal}",
                    decl.name,
                    ty.describe()
                ))
                .at(decl.file, Some(decl.span.clone()))
                .label(format!("this is {literal}"))
                .hint(format!("write {} = {}", decl.name, example_for(ty))),
            );
        }
        ok
    }
}

fn example_for(ty: Ty) -> &'static str {
    match ty {
        Ty::String => "\"…\"",
        Ty::Number => "1.5",
        Ty::Count => "1",
        Ty::Bool => "true",
        Ty::ListOfStrings => "[\"a\", \"b\"]",
        Ty::ListOfNumbers => "[8080]",
        Ty::MapOfStrings => "{ KEY = \"value\" }",
        Ty::Accelerators => "\"A100:8\"",
        Ty::StringOrNumber => "\"8+\"",
        Ty::ClusterRef => "cluster.NAME",
        Ty::Any => "…",
        Ty::References => "[cluster.NAME]",
    }
}

/// Names users reach for, and the attribute skyform calls it.
const ALIASES: [(&str, &str); 14] = [
    ("gpus", "accelerators"),
    ("gpu", "accelerators"),
    ("command", "run"),
    ("cmd", "run"),
    ("script", "run"),
    ("nodes", "num_nodes"),
    ("env", "envs"),
    ("environment", "envs"),
    ("image", "image_id"),
    ("spot", "use_spot"),
    ("disk", "disk_size"),
    ("region", "infra"),
    ("cloud", "infra"),
    ("memory_gb", "memory"),
];
