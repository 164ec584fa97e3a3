//! References: what each declaration refers to, checked against the module's declarations,
//! and the dependency order (with cycles reported) that follows from them.

use super::{Evaluator, InstanceSink, Scope};
use crate::config::diag::{Diagnostic, Diagnostics, FileId, did_you_mean};
use crate::config::load::{BodyDecl, ModuleSource, Ref};
use crate::config::schema;
use crate::model::{Address, Kind};
use petgraph::graph::{DiGraph, NodeIndex};
use std::collections::{BTreeMap, BTreeSet};
use std::ops::Range;

/// Identifies a declaration in one module's dependency graph.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum Node {
    Var(String),
    Local(String),
    Resource(Kind, String),
    Module(String),
    Output(String),
}

impl Node {
    pub(super) fn describe(&self) -> String {
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
pub(super) struct Order {
    pub(super) nodes: Vec<Node>,
    pub(super) unresolved: BTreeSet<Node>,
    /// The declarations something else in the module refers to: only their values are read.
    pub(super) used: BTreeSet<Node>,
}

impl<R: InstanceSink> Evaluator<'_, R> {
    /// The declarations of a module in dependency order; cycles and bad references reported.
    pub(super) fn order(&mut self, module: &ModuleSource) -> Order {
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
        let mut count_and_for_each: Vec<Node> = Vec::new();
        let mut unresolved: BTreeSet<Node> = BTreeSet::new();
        let mut record_refs =
            |this: &Node, file: FileId, refs: &[&Ref], ctx: RefContext, diags: &mut Diagnostics| {
                for r in refs {
                    match resolve_ref(module, r, file, ctx, diags) {
                        Ok(Some(target)) => {
                            edges.push((target, this.clone(), file, r.span.clone()))
                        }
                        Ok(None) => {}
                        Err(()) => {
                            unresolved.insert(this.clone());
                        }
                    }
                }
            };
        for (name, decl) in &module.locals {
            let node = Node::Local(name.clone());
            sites.insert(node.clone(), (decl.file, decl.span.clone()));
            let refs: Vec<&Ref> = decl.refs.iter().collect();
            record_refs(&node, decl.file, &refs, RefContext::plain(), self.diags);
        }
        for ((kind, name), decl) in &module.resources {
            let node = Node::Resource(*kind, name.clone());
            if decl.body.attrs.contains_key("count") && decl.body.attrs.contains_key("for_each") {
                // Reported when loading; which one was meant is unknown.
                count_and_for_each.push(node.clone());
            }
            sites.insert(node.clone(), (decl.file, decl.span.clone()));
            self.check_body_refs(&node, decl.file, &decl.body, &mut record_refs);
        }
        for (name, decl) in &module.modules {
            let node = Node::Module(name.clone());
            sites.insert(node.clone(), (decl.file, decl.span.clone()));
            self.check_body_refs(&node, decl.file, &decl.body, &mut record_refs);
        }
        for (name, decl) in &module.outputs {
            let node = Node::Output(name.clone());
            sites.insert(node.clone(), (decl.file, decl.span.clone()));
            let refs: Vec<&Ref> = decl.body.refs();
            record_refs(&node, decl.file, &refs, RefContext::plain(), self.diags);
        }
        for (name, decl) in &module.variables {
            sites.insert(Node::Var(name.clone()), (decl.file, decl.span.clone()));
        }
        unresolved.extend(count_and_for_each);
        let used: BTreeSet<Node> = edges.iter().map(|(from, ..)| from.clone()).collect();
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
                unresolved.insert(to);
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
            unresolved.insert(graph[i].clone());
        }
        Order {
            nodes: order,
            unresolved,
            used,
        }
    }

    pub(super) fn check_body_refs(
        &mut self,
        node: &Node,
        file: FileId,
        body: &BodyDecl,
        record_refs: &mut impl FnMut(&Node, FileId, &[&Ref], RefContext, &mut Diagnostics),
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
            record_refs(node, file, &refs, ctx, self.diags);
        }
        for (_, nested, _, _) in body.blocks.iter().filter(|b| b.0 != "lifecycle") {
            let refs = nested.refs();
            record_refs(
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

    /// Instances named by references and `depends_on` of a body.
    pub(super) fn dependencies(&mut self, scope: &Scope<'_>, body: &BodyDecl) -> BTreeSet<Address> {
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
}

/// Where a reference appears: whether `count.index` and `each.*` are available.
#[derive(Debug, Clone, Copy)]
pub(super) struct RefContext {
    count: bool,
    each: bool,
}

impl RefContext {
    pub(super) fn plain() -> RefContext {
        RefContext {
            count: false,
            each: false,
        }
    }
}

pub(super) const ROOTS: [&str; 11] = [
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
pub(super) fn resource_attributes(kind: Kind) -> Vec<&'static str> {
    let schema = schema::of(kind);
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
pub(super) fn resolve_ref(
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

pub(super) fn unknown_root(
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

#[cfg(test)]
mod tests {
    use crate::config::eval::testing::evaluate_one;

    #[test]
    fn a_reference_to_a_missing_declaration_is_reported_at_the_reference() {
        let e = evaluate_one(
            r#"
cluster "main" {}
job "j" {
  cluster = cluster.mian
  run     = "x"
}
"#,
        );
        assert_eq!(
            e.errors(),
            [r#"reference to undeclared resource "cluster.mian" @ main.sky.hcl:4:13"#]
        );
        assert_eq!(e.hints(), ["did you mean cluster.main?"]);
        // The job is not evaluated; the cluster, which does not depend on it, still is.
        assert_eq!(e.addresses(), ["cluster.main"]);
    }

    #[test]
    fn undeclared_variables_and_locals_say_how_to_declare_them() {
        let e = evaluate_one("locals {\n  a = var.size\n  b = local.nope\n}\n");
        assert_eq!(
            e.errors(),
            [
                r#"reference to undeclared variable "var.size" @ main.sky.hcl:2:7"#,
                r#"reference to undeclared local value "local.nope" @ main.sky.hcl:3:7"#,
            ]
        );
        assert_eq!(
            e.hints()[0],
            r#"declare it: variable "size" { type = string }"#
        );
    }

    #[test]
    fn an_attribute_a_resource_does_not_export_is_reported() {
        let e = evaluate_one("cluster \"c\" {}\noutput \"o\" {\n  value = cluster.c.head_iq\n}\n");
        assert_eq!(
            e.errors(),
            [r#"cluster.c has no attribute "head_iq" @ main.sky.hcl:3:11"#]
        );
        assert_eq!(e.hints(), ["did you mean cluster.c.head_ip?"]);
    }

    #[test]
    fn dependencies_decide_the_order_not_the_file() {
        let e = evaluate_one(
            r#"
job "j" {
  cluster = cluster.c
  run     = "x"
}
cluster "c" {}
"#,
        );
        assert_eq!(e.errors(), Vec::<String>::new());
        assert_eq!(e.addresses(), ["cluster.c", "job.j"]);
        let job = &e.instances[1];
        let deps: Vec<String> = job.depends_on.iter().map(|a| a.to_string()).collect();
        assert_eq!(deps, ["cluster.c"]);
    }

    #[test]
    fn a_cycle_is_reported_once_with_its_members() {
        let e = evaluate_one("locals {\n  a = local.b\n  b = local.a\n}\n");
        let errors = e.errors();
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(
            errors[0].starts_with("dependency cycle: ")
                && errors[0].contains("local.a")
                && errors[0].contains("local.b"),
            "{errors:?}"
        );
    }

    #[test]
    fn a_self_reference_is_a_cycle_of_one() {
        let e = evaluate_one("locals {\n  l = local.l\n}\n");
        assert_eq!(e.errors(), ["local.l refers to itself @ main.sky.hcl:2:7"]);
    }

    #[test]
    fn each_and_count_exist_only_where_the_block_expands() {
        let e = evaluate_one(
            r#"
cluster "c" {
  setup = "${each.key} ${count.index}"
}
"#,
        );
        assert_eq!(
            e.errors(),
            [
                "each is only available in blocks with for_each @ main.sky.hcl:3:14",
                "count.index is only available in blocks with count @ main.sky.hcl:3:26",
            ]
        );
    }
}
