//! Per-file state of a conversion: the source lines (for comments), the warnings, the
//! variables and the infra seen, and where each YAML entry ends.

use super::ConvertError;
use super::Warning;
use super::hcl::Item;
use super::yaml::Node;
use std::collections::BTreeSet;

/// Per-file state: the source (for comments), warnings, variables and clouds seen.
#[derive(Debug)]
pub(super) struct Doc {
    pub file: String,
    pub lines: Vec<String>,
    pub warnings: Vec<Warning>,
    pub variables: Vec<Item>,
    pub clouds: BTreeSet<String>,
}

impl Doc {
    pub(super) fn new(file: &str, text: &str) -> Doc {
        Doc {
            file: file.into(),
            lines: text.lines().map(str::to_string).collect(),
            warnings: Vec::new(),
            variables: Vec::new(),
            clouds: BTreeSet::new(),
        }
    }

    pub(super) fn error(&self, at: &Node, message: String) -> ConvertError {
        ConvertError {
            file: self.file.clone(),
            line: at.line,
            col: at.col,
            message,
        }
    }

    /// "unknown field" with a did-you-mean.
    pub(super) fn unknown(&self, at: &Node, key: &str, known: &[&str], what: &str) -> ConvertError {
        let best = known
            .iter()
            .filter(|k| !k.starts_with('_'))
            .map(|k| (strsim::jaro_winkler(k, key), *k))
            .filter(|(s, _)| *s > 0.8)
            .max_by(|a, b| a.0.total_cmp(&b.0));
        let hint = match best {
            Some((_, k)) => format!(" (did you mean {k:?}?)"),
            None => String::new(),
        };
        self.error(
            at,
            format!(
                "unknown field {key:?} in {what}{hint}; SkyPilot's schema does not have it either"
            ),
        )
    }

    pub(super) fn warn(&mut self, line: usize, field: &str, message: &str) {
        self.warnings.push(Warning {
            file: self.file.clone(),
            line,
            field: field.into(),
            message: message.into(),
        });
    }

    /// A field kept as a comment (its YAML, lines `key.line..=end`), and a warning.
    pub(super) fn unsupported(
        &mut self,
        key: &Node,
        end: usize,
        field: &str,
        advice: &str,
    ) -> Item {
        self.warn(key.line, field, advice);
        self.comment(key, end, field, advice)
    }

    /// The comment alone (the caller warns).
    pub(super) fn comment(&self, key: &Node, end: usize, field: &str, advice: &str) -> Item {
        let mut lines = vec![format!("{field} (line {}): {advice}.", key.line)];
        let from = key.line.saturating_sub(1);
        let to = end.max(key.line).min(self.lines.len());
        let src: Vec<&String> = self.lines[from.min(to)..to].iter().collect();
        let indent = src
            .iter()
            .filter(|l| !l.trim().is_empty())
            .map(|l| l.len() - l.trim_start().len())
            .min()
            .unwrap_or(0);
        let first_indent = src.first().map_or(0, |l| l.len() - l.trim_start().len());
        let cut = indent.min(first_indent).min(key.col.saturating_sub(1));
        for l in src {
            let l = l.trim_end();
            lines.push(if l.len() >= cut && l.is_char_boundary(cut) {
                format!("  {}", &l[cut..])
            } else {
                format!("  {}", l.trim_start())
            });
        }
        Item::Comment(
            lines
                .into_iter()
                .map(|l| {
                    if l.trim().is_empty() {
                        String::new()
                    } else {
                        l
                    }
                })
                .collect(),
        )
    }

    /// The last line of each document (before the next `---`, or the end of the file).
    pub(super) fn document_ends(&self, docs: &[Node]) -> Vec<usize> {
        let seps: Vec<usize> = self
            .lines
            .iter()
            .enumerate()
            .filter(|(_, l)| l.starts_with("---"))
            .map(|(i, _)| i + 1)
            .collect();
        docs.iter()
            .map(|d| {
                let end = seps
                    .iter()
                    .find(|s| **s > d.line)
                    .map_or(self.lines.len(), |s| s - 1);
                self.trim_end(d.line, end)
            })
            .collect()
    }

    /// The last line of each entry of a mapping that ends at `end`.
    pub(super) fn entry_ends(&self, entries: &[(Node, Node)], end: usize) -> Vec<usize> {
        (0..entries.len())
            .map(|i| {
                let start = entries[i].0.line;
                let next = entries
                    .get(i + 1)
                    .map_or(end, |(k, _)| k.line.saturating_sub(1));
                self.trim_end(start, next.max(start))
            })
            .collect()
    }

    /// `end` moved up past blank and comment-only lines (they belong to what follows).
    pub(super) fn trim_end(&self, start: usize, mut end: usize) -> usize {
        while end > start {
            let l = self.lines.get(end - 1).map_or("", |l| l.trim());
            if l.is_empty() || l.starts_with('#') {
                end -= 1;
            } else {
                break;
            }
        }
        end
    }
}
