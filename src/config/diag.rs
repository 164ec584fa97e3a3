//! Diagnostics: every problem in a configuration, with where, why and what to do.
//!
//! Problems are collected, never thrown one at a time; rendering uses codespan-reporting for
//! the snippet and adds `hint:` lines of our own.

use codespan_reporting::diagnostic::{Diagnostic as CsDiagnostic, Label};
use codespan_reporting::files::SimpleFiles;
use codespan_reporting::term::{self, termcolor};
use serde::Serialize;
use std::ops::Range;
use std::path::{Path, PathBuf};

/// An index into [`Sources`].
pub type FileId = usize;

/// The configuration files read, by id, for rendering snippets and positions.
#[derive(Debug, Default, Clone)]
pub struct Sources {
    files: Vec<(String, String)>,
}

impl Sources {
    pub fn add(&mut self, name: impl Into<String>, text: impl Into<String>) -> FileId {
        self.files.push((name.into(), text.into()));
        self.files.len() - 1
    }

    pub fn name(&self, id: FileId) -> &str {
        self.files.get(id).map_or("<unknown>", |f| f.0.as_str())
    }

    pub fn text(&self, id: FileId) -> &str {
        self.files.get(id).map_or("", |f| f.1.as_str())
    }

    /// 1-based line and column (in characters) of a byte offset.
    pub fn line_col(&self, id: FileId, offset: usize) -> (usize, usize) {
        let text = self.text(id);
        let offset = offset.min(text.len());
        let before = text.get(..offset).unwrap_or(text);
        let line = before.matches('\n').count() + 1;
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        let col = before[line_start..].chars().count() + 1;
        (line, col)
    }

    pub fn len(&self) -> usize {
        self.files.len()
    }

    pub fn is_empty(&self) -> bool {
        self.files.is_empty()
    }
}

/// A place in a source file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    pub file: FileId,
    pub span: Range<usize>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Error,
    Warning,
}

/// One problem found in a configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub severity: Severity,
    /// What is wrong, in one line.
    pub message: String,
    pub location: Option<Location>,
    /// Shown under the snippet, next to the marked span.
    pub label: String,
    /// Extra context lines (e.g. the members of a cycle).
    pub notes: Vec<String>,
    /// What to do about it.
    pub hint: Option<String>,
}

impl Diagnostic {
    pub fn error(message: impl Into<String>) -> Diagnostic {
        Diagnostic {
            severity: Severity::Error,
            message: message.into(),
            location: None,
            label: String::new(),
            notes: Vec::new(),
            hint: None,
        }
    }

    pub fn warning(message: impl Into<String>) -> Diagnostic {
        Diagnostic {
            severity: Severity::Warning,
            ..Diagnostic::error(message)
        }
    }

    pub fn at(mut self, file: FileId, span: Option<Range<usize>>) -> Diagnostic {
        if let Some(span) = span {
            self.location = Some(Location { file, span });
        }
        self
    }

    pub fn label(mut self, label: impl Into<String>) -> Diagnostic {
        self.label = label.into();
        self
    }

    pub fn note(mut self, note: impl Into<String>) -> Diagnostic {
        self.notes.push(note.into());
        self
    }

    pub fn hint(mut self, hint: impl Into<String>) -> Diagnostic {
        self.hint = Some(hint.into());
        self
    }

    pub fn is_error(&self) -> bool {
        self.severity == Severity::Error
    }

    /// `file:line:col` of the start, if the problem has a place.
    pub fn position(&self, sources: &Sources) -> Option<String> {
        let loc = self.location.as_ref()?;
        let (line, col) = sources.line_col(loc.file, loc.span.start);
        Some(format!("{}:{line}:{col}", sources.name(loc.file)))
    }
}

/// A collection of diagnostics with the sources they point into.
#[derive(Debug, Default, Clone)]
pub struct Diagnostics {
    pub items: Vec<Diagnostic>,
}

impl Diagnostics {
    pub fn push(&mut self, d: Diagnostic) {
        self.items.push(d);
    }

    pub fn extend(&mut self, other: Diagnostics) {
        self.items.extend(other.items);
    }

    pub fn has_errors(&self) -> bool {
        self.items.iter().any(Diagnostic::is_error)
    }

    pub fn error_count(&self) -> usize {
        self.items.iter().filter(|d| d.is_error()).count()
    }

    /// Sorts by file, position and message and drops exact repeats, so output is stable.
    pub fn sort(&mut self) {
        self.items.sort_by(|a, b| {
            let key = |d: &Diagnostic| {
                (
                    d.location
                        .as_ref()
                        .map(|l| (l.file, l.span.start, l.span.end)),
                    d.message.clone(),
                )
            };
            key(a).cmp(&key(b))
        });
        self.items.dedup();
    }

    /// Renders every diagnostic as the terminal shows it.
    pub fn render(&self, sources: &Sources, color: bool) -> String {
        let mut files = SimpleFiles::new();
        for i in 0..sources.len() {
            files.add(sources.name(i).to_string(), sources.text(i).to_string());
        }
        let config = term::Config::default();
        let mut out = String::new();
        for d in &self.items {
            let severity = match d.severity {
                Severity::Error => codespan_reporting::diagnostic::Severity::Error,
                Severity::Warning => codespan_reporting::diagnostic::Severity::Warning,
            };
            let mut cs = CsDiagnostic::new(severity).with_message(&d.message);
            if let Some(loc) = &d.location {
                let mut span = loc.span.clone();
                if span.end <= span.start {
                    span.end = span.start;
                }
                cs = cs.with_labels(vec![Label::primary(loc.file, span).with_message(&d.label)]);
            }
            cs = cs.with_notes(d.notes.clone());
            let mut buf: Vec<u8> = Vec::new();
            let rendered = if color {
                let mut w = termcolor::Ansi::new(&mut buf);
                term::emit(&mut w, &config, &files, &cs)
            } else {
                let mut w = termcolor::NoColor::new(&mut buf);
                term::emit(&mut w, &config, &files, &cs)
            };
            if rendered.is_err() {
                // A span outside its file is our bug; still say what is wrong.
                buf.clear();
                buf.extend_from_slice(format!("error: {}\n", d.message).as_bytes());
            }
            out.push_str(&String::from_utf8_lossy(&buf));
            if let Some(h) = &d.hint {
                out.push_str("hint: ");
                out.push_str(h);
                out.push('\n');
            }
            out.push('\n');
        }
        let errors = self.error_count();
        let warnings = self.items.len() - errors;
        if errors > 0 {
            out.push_str(&format!(
                "{} error{}{}; nothing was planned.\n",
                errors,
                if errors == 1 { "" } else { "s" },
                if warnings > 0 {
                    format!(
                        ", {warnings} warning{}",
                        if warnings == 1 { "" } else { "s" }
                    )
                } else {
                    String::new()
                }
            ));
        }
        out
    }

    /// The machine-readable form used by `validate -json`.
    pub fn to_json(&self, sources: &Sources) -> serde_json::Value {
        let items: Vec<serde_json::Value> = self
            .items
            .iter()
            .map(|d| {
                let range = d.location.as_ref().map(|l| {
                    let (sl, sc) = sources.line_col(l.file, l.span.start);
                    let (el, ec) = sources.line_col(l.file, l.span.end);
                    serde_json::json!({
                        "filename": sources.name(l.file),
                        "start": {"line": sl, "column": sc, "byte": l.span.start},
                        "end": {"line": el, "column": ec, "byte": l.span.end},
                    })
                });
                serde_json::json!({
                    "severity": d.severity,
                    "summary": d.message,
                    "detail": d.label,
                    "notes": d.notes,
                    "hint": d.hint,
                    "range": range,
                })
            })
            .collect();
        serde_json::json!({
            "format_version": "1",
            "valid": !self.has_errors(),
            "error_count": self.error_count(),
            "warning_count": self.items.len() - self.error_count(),
            "diagnostics": items,
        })
    }
}

/// "did you mean" for a name among candidates.
pub fn did_you_mean<'a>(
    name: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<String> {
    let mut best: Option<(f64, &str)> = None;
    for c in candidates {
        let score = strsim::jaro_winkler(name, c);
        if score > 0.8 && best.is_none_or(|(s, _)| score > s) {
            best = Some((score, c));
        }
    }
    best.map(|(_, c)| c.to_string())
}

/// A path shown relative to `base` when it is inside it (for stable messages and goldens).
pub fn display_path(path: &Path, base: &Path) -> String {
    path.strip_prefix(base)
        .map(PathBuf::from)
        .unwrap_or_else(|_| path.to_path_buf())
        .display()
        .to_string()
}
