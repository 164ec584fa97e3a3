//! Reading a configuration directory: files → declarations with spans and static references.
//!
//! Nothing is evaluated here. Structure problems (unknown blocks and attributes, missing
//! required parts, duplicates, references to undeclared things) are all collected.

pub use super::decl::*;

mod check;
mod syntax;

use syntax::syntax_help;

use super::diag::{Diagnostic, Diagnostics, FileId, Sources, did_you_mean, display_path};
use super::schema::{self, INFRA_TYPES, TOP_LEVEL};
use crate::model::Kind;
use hcl_edit::Span;
use hcl_edit::expr::Expression;
use hcl_edit::structure::{Block, Body, Structure};
use std::collections::BTreeMap;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Reads configuration directories, sharing one [`Sources`] and one [`Diagnostics`].
#[derive(Debug)]
pub struct Loader {
    pub sources: Sources,
    pub diags: Diagnostics,
    /// For stable file names in messages.
    base: PathBuf,
    /// Module directories being loaded (to report recursion).
    stack: Vec<PathBuf>,
    cache: BTreeMap<PathBuf, Arc<ModuleSource>>,
}

impl Loader {
    pub fn new(base: &Path) -> Loader {
        Loader {
            sources: Sources::default(),
            diags: Diagnostics::default(),
            base: base.to_path_buf(),
            stack: Vec::new(),
            cache: BTreeMap::new(),
        }
    }

    /// Reads every `*.sky.hcl` in `dir` (in name order) and the modules it calls.
    pub fn load_dir(&mut self, dir: &Path) -> ModuleSource {
        let mut module = ModuleSource {
            dir: dir.to_path_buf(),
            ..ModuleSource::default()
        };
        let mut names = match std::fs::read_dir(dir) {
            Ok(rd) => rd
                .filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| {
                    p.file_name()
                        .and_then(|n| n.to_str())
                        .is_some_and(|n| n.ends_with(".sky.hcl"))
                })
                .collect::<Vec<_>>(),
            Err(e) => {
                self.diags.push(
                    Diagnostic::error(format!(
                        "cannot read configuration directory {}: {e}",
                        dir.display()
                    ))
                    .hint("run skyform in a directory of *.sky.hcl files, or pass -chdir DIR"),
                );
                return module;
            }
        };
        names.sort();
        if names.is_empty() && self.stack.is_empty() {
            self.diags.push(
                Diagnostic::error(format!(
                    "no configuration files (*.sky.hcl) in {}",
                    dir.display()
                ))
                .hint("create main.sky.hcl, or start from examples/quickstart"),
            );
        }
        self.stack
            .push(dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf()));
        for path in names {
            self.load_file(&path, &mut module);
        }
        self.stack.pop();
        module
    }

    fn load_file(&mut self, path: &Path, module: &mut ModuleSource) {
        let name = display_path(path, &self.base);
        let text = match std::fs::read(path) {
            Ok(bytes) => match String::from_utf8(bytes) {
                Ok(t) => t,
                Err(_) => {
                    self.diags.push(
                        Diagnostic::error(format!("{name} is not valid UTF-8"))
                            .hint("save the file as UTF-8"),
                    );
                    return;
                }
            },
            Err(e) => {
                self.diags
                    .push(Diagnostic::error(format!("cannot read {name}: {e}")));
                return;
            }
        };
        let file = self.sources.add(name, text.clone());
        let body = match hcl_edit::parser::parse_body(&text) {
            Ok(b) => b,
            Err(e) => {
                // The parser may point inside a multi-byte character: mark from its start.
                let mut offset = e.location().offset().min(text.len());
                while !text.is_char_boundary(offset) {
                    offset -= 1;
                }
                // Mark one character, never a line break (it would render as two lines).
                let end = text[offset..]
                    .chars()
                    .next()
                    .filter(|c| *c != '\n' && *c != '\r')
                    .map_or(offset, |c| offset + c.len_utf8());
                let msg = e
                    .message()
                    .lines()
                    .next()
                    .unwrap_or("syntax error")
                    .to_string();
                let (message, label, hint) = syntax_help(&msg, &text, offset);
                self.diags.push(
                    Diagnostic::error(message)
                        .at(file, Some(offset..end))
                        .label(label)
                        .hint(hint),
                );
                return;
            }
        };
        self.collect_top(file, &body, module);
    }

    fn collect_top(&mut self, file: FileId, body: &Body, module: &mut ModuleSource) {
        for structure in body.iter() {
            let block = match structure {
                Structure::Block(b) => b,
                Structure::Attribute(attr) => {
                    self.diags.push(
                        Diagnostic::error(format!(
                            "unexpected attribute {:?} at the top level",
                            attr.key.as_str()
                        ))
                        .at(file, attr.span())
                        .label("attributes belong inside a block")
                        .hint("put it in a locals { } block, or inside the block it configures"),
                    );
                    continue;
                }
            };
            let ident = block.ident.as_str();
            let header = header_span(block);
            let labels: Vec<&str> = block.labels.iter().map(|l| l.as_str()).collect();
            match ident {
                "skyform" => {
                    if self.expect_labels(file, block, &labels, 0, "skyform { … }") {
                        if module.skyform.is_some() {
                            self.diags.push(
                                Diagnostic::error("duplicate skyform block")
                                    .at(file, header.clone())
                                    .label("a second skyform block")
                                    .hint("merge the settings into one skyform block"),
                            );
                        } else {
                            let b = self.check_body(file, &block.body, &schema::SKYFORM, "skyform");
                            module.skyform = Some((file, b));
                        }
                    }
                }
                "infra" => self.collect_infra(file, block, &labels, module),
                "import" => {
                    if self.expect_labels(file, block, &labels, 0, "import { … }") {
                        let body = self.check_body_at(
                            file,
                            &block.body,
                            &schema::IMPORT,
                            "import",
                            header.clone(),
                        );
                        self.collect_import(file, &body, header, module);
                    }
                }
                "variable" | "output" | "module" => {
                    let Some(name) = self.one_name(file, block, &labels) else {
                        continue;
                    };
                    let (schema, what) = match ident {
                        "variable" => (&schema::VARIABLE, "variable"),
                        "output" => (&schema::OUTPUT, "output"),
                        _ => (&schema::MODULE, "module"),
                    };
                    let first = match ident {
                        "variable" => module
                            .variables
                            .get(&name)
                            .map(|d| (d.file, d.span.clone())),
                        "output" => module.outputs.get(&name).map(|d| (d.file, d.span.clone())),
                        _ => module.modules.get(&name).map(|d| (d.file, d.span.clone())),
                    };
                    if let Some(first) = first {
                        self.duplicate(file, header, what, &name, first);
                        continue;
                    }
                    let body = self.check_body_at(file, &block.body, schema, what, header.clone());
                    match ident {
                        "variable" => {
                            module.variables.insert(
                                name.clone(),
                                VariableDecl {
                                    name,
                                    file,
                                    span: header.unwrap_or(0..0),
                                    body,
                                },
                            );
                        }
                        "output" => {
                            module.outputs.insert(
                                name.clone(),
                                OutputDecl {
                                    name,
                                    file,
                                    span: header.unwrap_or(0..0),
                                    body,
                                },
                            );
                        }
                        _ => {
                            let loaded = self.load_module_source(file, &body, &module.dir);
                            module.modules.insert(
                                name.clone(),
                                ModuleCallDecl {
                                    name,
                                    file,
                                    span: header.unwrap_or(0..0),
                                    body,
                                    module: loaded,
                                },
                            );
                        }
                    }
                }
                "locals" => {
                    if !self.expect_labels(file, block, &labels, 0, "locals { … }") {
                        continue;
                    }
                    let body = self.check_body(file, &block.body, &schema::LOCALS, "locals");
                    for (name, attr) in body.attrs {
                        if let Some(prev) = module.locals.get(&name) {
                            let first = (prev.file, prev.span.clone());
                            self.duplicate(
                                file,
                                Some(attr.span.clone()),
                                "local value",
                                &name,
                                first,
                            );
                            continue;
                        }
                        module.locals.insert(name, attr);
                    }
                }
                _ => {
                    if let Some(kind) = Kind::parse(ident) {
                        let Some(name) = self.one_name(file, block, &labels) else {
                            continue;
                        };
                        if let Some(prev) = module.resources.get(&(kind, name.clone())) {
                            let first = (prev.file, prev.span.clone());
                            self.duplicate(file, header, ident, &name, first);
                            continue;
                        }
                        let schema = schema::of(kind);
                        let body =
                            self.check_body_at(file, &block.body, schema, ident, header.clone());
                        if body.attrs.contains_key("count") && body.attrs.contains_key("for_each") {
                            let span = body.attrs.get("for_each").map(|a| a.span.clone());
                            self.diags.push(
                                Diagnostic::error(format!(
                                    "{ident} \"{name}\" sets both count and for_each"
                                ))
                                .at(file, span)
                                .label("for_each here, count above")
                                .hint("use count for N identical copies, or for_each for one per key — not both"),
                            );
                        }
                        module.resources.insert(
                            (kind, name.clone()),
                            ResourceDecl {
                                kind,
                                name,
                                file,
                                span: header.unwrap_or(0..0),
                                body,
                            },
                        );
                    } else {
                        let mut d = Diagnostic::error(format!("unknown block type {ident:?}"))
                            .at(file, block.ident.span())
                            .label("not a skyform block");
                        d = match did_you_mean(ident, TOP_LEVEL) {
                            Some(s) => d.hint(format!("did you mean {s:?}?")),
                            None => {
                                d.hint(format!("the block types are: {}", TOP_LEVEL.join(", ")))
                            }
                        };
                        self.diags.push(d);
                    }
                }
            }
        }
    }

    fn collect_infra(
        &mut self,
        file: FileId,
        block: &Block,
        labels: &[&str],
        module: &mut ModuleSource,
    ) {
        let header = header_span(block);
        let Some(kind) = labels.first() else {
            self.diags.push(
                Diagnostic::error("infra block without a type")
                    .at(file, header)
                    .label("expected infra \"TYPE\"")
                    .hint("write infra \"local\" {}, infra \"aws\" { … }, infra \"ssh\" \"POOL\" { … }"),
            );
            return;
        };
        let Some((_, named, schema)) = INFRA_TYPES.iter().find(|t| t.0 == *kind) else {
            let names: Vec<&str> = INFRA_TYPES.iter().map(|t| t.0).collect();
            let mut d = Diagnostic::error(format!("unknown infra type {kind:?}"))
                .at(file, block.labels.first().and_then(|l| l.span()).or(header))
                .label("not an infra type");
            // A backend's name where its block type is wanted (`k8s`), or a near word.
            let alias = match *kind {
                "kube" => Some("kubernetes"),
                "machines" | "existing" => Some("ssh"),
                k => crate::model::backend::lookup(k).map(|b| b.infra_type),
            }
            .map(String::from);
            d = match alias.or_else(|| did_you_mean(kind, names.iter().copied())) {
                Some(s) => d.hint(format!(
                    "did you mean {s:?}? The infra types are: {}",
                    names.join(", ")
                )),
                None => d.hint(format!("the infra types are: {}", names.join(", "))),
            };
            self.diags.push(d);
            return;
        };
        let want = if *named { 2 } else { 1 };
        let shape = if *named {
            format!("infra \"{kind}\" \"NAME\" {{ … }}")
        } else {
            format!("infra \"{kind}\" {{ … }}")
        };
        if !self.expect_labels(file, block, labels, want, &shape) {
            return;
        }
        let name = labels.get(1).map(|s| s.to_string());
        if module
            .infra
            .iter()
            .any(|i| i.kind == *kind && i.name == name)
        {
            let what = match &name {
                Some(n) => format!("{kind} \"{n}\""),
                None => kind.to_string(),
            };
            self.diags.push(
                Diagnostic::error(format!("duplicate infra {what}"))
                    .at(file, header)
                    .label("declared again here")
                    .hint("merge the settings (regions, zones, …) into one block of this type"),
            );
            return;
        }
        let body = self.check_body(file, &block.body, schema, &format!("infra \"{kind}\""));
        if *kind == "ssh" {
            self.check_ssh_hosts(file, &body, header.clone());
        }
        module.infra.push(InfraDecl {
            kind: kind.to_string(),
            name,
            file,
            span: header.unwrap_or(0..0),
            body,
        });
    }

    /// `hosts` of an ssh pool: present, and each one `[USER@]ADDRESS[:PORT]`.
    fn check_ssh_hosts(
        &mut self,
        file: FileId,
        body: &BodyDecl,
        header: Option<std::ops::Range<usize>>,
    ) {
        let Some(hosts) = body.attrs.get("hosts") else {
            self.diags.push(
                Diagnostic::error("an ssh pool needs hosts")
                    .at(file, header)
                    .label("no hosts")
                    .hint("write hosts = [\"10.0.0.5\", \"ubuntu@10.0.0.6:2222\"], or names from ~/.ssh/config"),
            );
            return;
        };
        let Expression::Array(items) = &hosts.expr else {
            return;
        };
        for item in items {
            let Expression::String(h) = item else {
                continue;
            };
            if let Err(e) = h.parse::<crate::model::Host>() {
                self.diags.push(
                    Diagnostic::error(format!("bad host in an ssh pool: {e}"))
                        .at(file, Some(hosts.span.clone()))
                        .label("in this list")
                        .hint("each host is ADDRESS, ADDRESS:PORT or USER@ADDRESS:PORT (a name from ~/.ssh/config works too)"),
                );
            }
        }
    }

    fn load_module_source(
        &mut self,
        file: FileId,
        body: &BodyDecl,
        from: &Path,
    ) -> Option<Arc<ModuleSource>> {
        let source = body.attrs.get("source")?;
        let Expression::String(s) = &source.expr else {
            self.diags.push(
                Diagnostic::error("module source must be a literal string")
                    .at(file, Some(source.span.clone()))
                    .label("not a plain string")
                    .hint("write source = \"./modules/NAME\""),
            );
            return None;
        };
        let s = s.value().as_str();
        if !(s.starts_with("./") || s.starts_with("../")) {
            self.diags.push(
                Diagnostic::error(format!("module source {s:?} is not a local path"))
                    .at(file, Some(source.span.clone()))
                    .label("only local modules are supported")
                    .hint(
                        "write a path relative to this file's directory, starting with ./ or ../",
                    ),
            );
            return None;
        }
        let dir = from.join(s);
        let canonical = match dir.canonicalize() {
            Ok(c) if c.is_dir() => c,
            _ => {
                let parent = Path::new(s).parent().map(|p| from.join(p));
                let siblings: Vec<String> = parent
                    .and_then(|p| std::fs::read_dir(p).ok())
                    .map(|rd| {
                        rd.filter_map(Result::ok)
                            .filter(|e| e.path().is_dir())
                            .map(|e| e.file_name().to_string_lossy().to_string())
                            .collect()
                    })
                    .unwrap_or_default();
                let last = Path::new(s)
                    .file_name()
                    .map(|n| n.to_string_lossy().to_string())
                    .unwrap_or_default();
                let hint = match did_you_mean(&last, siblings.iter().map(String::as_str)) {
                    Some(m) => format!(
                        "did you mean {:?}?",
                        Path::new(s).with_file_name(m).display().to_string()
                    ),
                    None => {
                        "check the path; it is relative to the directory of this file".to_string()
                    }
                };
                self.diags.push(
                    Diagnostic::error(format!("module source {s:?} is not a directory"))
                        .at(file, Some(source.span.clone()))
                        .label("no such directory")
                        .hint(hint),
                );
                return None;
            }
        };
        if self.stack.contains(&canonical) {
            self.diags.push(
                Diagnostic::error(format!("module {s:?} calls itself"))
                    .at(file, Some(source.span.clone()))
                    .label("recursive module call")
                    .hint("a module may not include itself, directly or through others"),
            );
            return None;
        }
        if let Some(m) = self.cache.get(&canonical) {
            return Some(m.clone());
        }
        let loaded = self.load_dir(&canonical);
        for i in &loaded.imports {
            self.diags.push(
                Diagnostic::error("import blocks belong in the root configuration")
                    .at(i.file, Some(i.span.clone()))
                    .label("in a module")
                    .hint("only clusters of the root configuration are imported: move the block and its cluster there"),
            );
        }
        let arc = Arc::new(loaded);
        self.cache.insert(canonical, arc.clone());
        Some(arc)
    }

    fn expect_labels(
        &mut self,
        file: FileId,
        block: &Block,
        labels: &[&str],
        n: usize,
        shape: &str,
    ) -> bool {
        if labels.len() == n {
            return true;
        }
        let ident = block.ident.as_str();
        let msg = if labels.len() < n {
            format!(
                "{ident} block needs {n} label{}",
                if n == 1 { "" } else { "s" }
            )
        } else {
            format!("{ident} block has too many labels")
        };
        self.diags.push(
            Diagnostic::error(msg)
                .at(file, header_span(block))
                .label(format!(
                    "{} label{} here",
                    labels.len(),
                    if labels.len() == 1 { "" } else { "s" }
                ))
                .hint(format!("write {shape}")),
        );
        false
    }

    fn duplicate(
        &mut self,
        file: FileId,
        span: Option<Range<usize>>,
        what: &str,
        name: &str,
        first: (FileId, Range<usize>),
    ) {
        let (line, col) = self.sources.line_col(first.0, first.1.start);
        self.diags.push(
            Diagnostic::error(format!("duplicate {what} {name:?}"))
                .at(file, span)
                .label("declared again here")
                .note(format!(
                    "first declared at {}:{line}:{col}",
                    self.sources.name(first.0)
                ))
                .hint("names must be unique within a module: rename or remove one of them"),
        );
    }

    fn collect_import(
        &mut self,
        file: FileId,
        body: &BodyDecl,
        header: Option<Range<usize>>,
        module: &mut ModuleSource,
    ) {
        let (Some(to), Some(id)) = (body.attrs.get("to"), body.attrs.get("id")) else {
            return; // The schema check reported what is missing.
        };
        let text = to.expr.to_string();
        let to_addr = match text.trim().parse::<crate::model::Address>() {
            Ok(a) if a.kind == Kind::Cluster && a.module.is_empty() => a,
            _ => {
                self.diags.push(
                    Diagnostic::error(format!(
                        "import to {}: not a cluster of this configuration",
                        text.trim()
                    ))
                    .at(file, Some(to.span.clone()))
                    .label("expected cluster.NAME or cluster.NAME[KEY]")
                    .hint("only clusters are imported; jobs run again instead"),
                );
                return;
            }
        };
        let hcl_edit::expr::Expression::String(s) = &id.expr else {
            self.diags.push(
                Diagnostic::error("import id must be a string written out")
                    .at(file, Some(id.span.clone()))
                    .label("not a literal string")
                    .hint("write the id as \"BACKEND:ID\", e.g. \"local:.skyform/local/dev-1a2b3c4d\""),
            );
            return;
        };
        let value = s.value().to_string();
        if !value.contains(':') {
            self.diags.push(
                Diagnostic::error(format!("import id {value:?} does not name its backend"))
                    .at(file, Some(id.span.clone()))
                    .label("expected BACKEND:ID")
                    .hint("local:SANDBOX_DIR, ssh:POOL/TOKEN, aws:REGION/TOKEN, gcp:TOKEN or k8s:CONTEXT/NAME (see docs/language.md#import)"),
            );
            return;
        }
        if let Some(prev) = module.imports.iter().find(|i| i.to == to_addr) {
            let first = (prev.file, prev.span.clone());
            self.duplicate(file, header, "import", &to_addr.to_string(), first);
            return;
        }
        module.imports.push(ImportDecl {
            to: to_addr,
            id: value,
            file,
            span: header.unwrap_or(0..0),
        });
    }

    /// The one label of a `KIND "NAME" { … }` block, when there is exactly one and it is a
    /// valid name; otherwise a diagnostic.
    fn one_name(&mut self, file: FileId, block: &Block, labels: &[&str]) -> Option<String> {
        let shape = format!("{} \"NAME\" {{ … }}", block.ident.as_str());
        if !self.expect_labels(file, block, labels, 1, &shape) {
            return None;
        }
        let name = labels[0];
        if valid_name(name) {
            return Some(name.to_string());
        }
        self.diags.push(
            Diagnostic::error(format!("invalid name {name:?}"))
                .at(file, block.labels.first().and_then(|l| l.span()))
                .label("names are letters, digits, '_' and '-', starting with a letter or '_'")
                .hint("rename it, e.g. \"train_1\""),
        );
        None
    }
}

fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

/// The span of a block's header: its identifier through its last label.
fn header_span(block: &Block) -> Option<Range<usize>> {
    let start = block.ident.span()?.start;
    let end = block
        .labels
        .last()
        .and_then(|l| l.span())
        .or_else(|| block.ident.span())?
        .end;
    Some(start..end)
}
