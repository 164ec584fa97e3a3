//! The declarations a configuration is read into: attributes with their expressions, spans
//! and the references found in them, block bodies, resources, variables, outputs, module
//! calls, infra and import blocks. Plain data; `load` fills them.

use super::diag::FileId;
use crate::model::Kind;
use hcl_edit::Span;
use hcl_edit::expr::{Expression, TraversalOperator};
use hcl_edit::structure::Attribute;
use hcl_edit::visit::{self, Visit};
use std::collections::BTreeMap;
use std::ops::Range;
use std::path::PathBuf;
use std::sync::Arc;

/// A reference found in an expression: `root.attr.attr…` (index steps end the path).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ref {
    pub root: String,
    pub attrs: Vec<String>,
    pub span: Range<usize>,
}

/// An attribute with where it was written.
#[derive(Debug, Clone)]
pub struct AttrDecl {
    pub name: String,
    pub expr: Expression,
    /// The same expression in hcl-rs form, ready to evaluate.
    pub eval_expr: hcl::Expression,
    pub file: FileId,
    pub span: Range<usize>,
    pub refs: Vec<Ref>,
}

/// A block body after structural checks: its attributes and nested blocks.
#[derive(Debug, Clone, Default)]
pub struct BodyDecl {
    /// The label of a labelled nested block (`state "s3"`).
    pub label: Option<String>,
    pub attrs: BTreeMap<String, AttrDecl>,
    pub blocks: Vec<(String, BodyDecl, FileId, Range<usize>)>,
}

impl BodyDecl {
    /// Every reference in the body, nested blocks included.
    pub fn refs(&self) -> Vec<&Ref> {
        let mut out: Vec<&Ref> = self.attrs.values().flat_map(|a| a.refs.iter()).collect();
        // `lifecycle` holds settings and attribute names, never references.
        for (_, b, _, _) in self.blocks.iter().filter(|b| b.0 != "lifecycle") {
            out.extend(b.refs());
        }
        out
    }

    pub fn block(&self, name: &str) -> Option<&BodyDecl> {
        self.blocks.iter().find(|b| b.0 == name).map(|b| &b.1)
    }
}

#[derive(Debug, Clone)]
pub struct ResourceDecl {
    pub kind: Kind,
    pub name: String,
    pub file: FileId,
    /// The block's header (`cluster "dev"`), for messages about the whole block.
    pub span: Range<usize>,
    pub body: BodyDecl,
}

#[derive(Debug, Clone)]
pub struct VariableDecl {
    pub name: String,
    pub file: FileId,
    pub span: Range<usize>,
    pub body: BodyDecl,
}

#[derive(Debug, Clone)]
pub struct OutputDecl {
    pub name: String,
    pub file: FileId,
    pub span: Range<usize>,
    pub body: BodyDecl,
}

#[derive(Debug, Clone)]
pub struct ModuleCallDecl {
    pub name: String,
    pub file: FileId,
    pub span: Range<usize>,
    pub body: BodyDecl,
    /// The loaded module, when its source could be read.
    pub module: Option<Arc<ModuleSource>>,
}

#[derive(Debug, Clone)]
pub struct InfraDecl {
    pub kind: String,
    pub name: Option<String>,
    pub file: FileId,
    pub span: Range<usize>,
    pub body: BodyDecl,
}

/// One module directory, read and checked.
#[derive(Debug, Clone, Default)]
pub struct ModuleSource {
    pub dir: PathBuf,
    pub skyform: Option<(FileId, BodyDecl)>,
    pub infra: Vec<InfraDecl>,
    pub variables: BTreeMap<String, VariableDecl>,
    pub locals: BTreeMap<String, AttrDecl>,
    pub outputs: BTreeMap<String, OutputDecl>,
    pub resources: BTreeMap<(Kind, String), ResourceDecl>,
    pub modules: BTreeMap<String, ModuleCallDecl>,
    pub imports: Vec<ImportDecl>,
}

/// `import { to = cluster.dev, id = "local:…" }`: a cluster that exists in the world, to be
/// taken into state.
#[derive(Debug, Clone)]
pub struct ImportDecl {
    pub to: crate::model::Address,
    /// As written: `BACKEND:ID` (`local:.skyform/local/dev-1a2b`, `ssh:rack/TOKEN`).
    pub id: String,
    pub file: FileId,
    pub span: Range<usize>,
}

pub fn attr_decl(file: FileId, attr: &Attribute) -> AttrDecl {
    let mut collector = RefCollector::default();
    collector.visit_expr(&attr.value);
    AttrDecl {
        name: attr.key.as_str().to_string(),
        expr: attr.value.clone(),
        eval_expr: hcl::Expression::from(attr.value.clone()),
        file,
        span: attr.value.span().unwrap_or(0..0),
        refs: collector.refs,
    }
}

/// Collects references (`var.x`, `cluster.dev.head_ip`) from an expression, skipping names
/// bound by `for` expressions.
#[derive(Default)]
struct RefCollector {
    refs: Vec<Ref>,
    scopes: Vec<Vec<String>>,
}

impl RefCollector {
    fn bound(&self, name: &str) -> bool {
        self.scopes.iter().any(|s| s.iter().any(|n| n == name))
    }
}

impl Visit for RefCollector {
    fn visit_expr(&mut self, expr: &Expression) {
        match expr {
            Expression::Variable(v) => {
                let name = v.as_str();
                if !self.bound(name) {
                    self.refs.push(Ref {
                        root: name.to_string(),
                        attrs: Vec::new(),
                        span: v.span().unwrap_or(0..0),
                    });
                }
            }
            Expression::Traversal(t) => {
                if let Expression::Variable(v) = &t.expr {
                    let name = v.as_str();
                    if !self.bound(name) {
                        let mut attrs = Vec::new();
                        for op in &t.operators {
                            match op.value() {
                                TraversalOperator::GetAttr(id) => {
                                    attrs.push(id.as_str().to_string())
                                }
                                TraversalOperator::Index(Expression::String(s))
                                    if attrs.len() == 1 =>
                                {
                                    // cluster.pool["a"].x: keep walking past a literal key
                                    let _ = s;
                                    continue;
                                }
                                _ => break,
                            }
                        }
                        self.refs.push(Ref {
                            root: name.to_string(),
                            attrs,
                            span: t.span().unwrap_or(0..0),
                        });
                    }
                    // Index expressions may hold references of their own.
                    for op in &t.operators {
                        if let TraversalOperator::Index(e) = op.value() {
                            self.visit_expr(e);
                        }
                    }
                } else {
                    visit::visit_expr(self, expr);
                }
            }
            Expression::ForExpr(f) => {
                self.visit_expr(&f.intro.collection_expr);
                let mut names = vec![f.intro.value_var.as_str().to_string()];
                if let Some(k) = &f.intro.key_var {
                    names.push(k.as_str().to_string());
                }
                self.scopes.push(names);
                if let Some(k) = &f.key_expr {
                    self.visit_expr(k);
                }
                self.visit_expr(&f.value_expr);
                if let Some(c) = &f.cond {
                    self.visit_expr(&c.expr);
                }
                self.scopes.pop();
            }
            _ => visit::visit_expr(self, expr),
        }
    }
}
