//! A small HCL writer: blocks, attributes whose values are already HCL text, and comments.
//! The result goes through `skyform fmt`'s formatter, so layout here only has to be valid.

/// One line-level item of a block body.
#[derive(Debug, Clone, PartialEq)]
pub enum Item {
    /// `name = value`; the value is HCL text (may span lines, e.g. a heredoc).
    Attr(String, String),
    /// Comment lines (without the `# `).
    Comment(Vec<String>),
    Block(Block),
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct Block {
    /// `cluster "dev"`, `resources`, …
    pub head: String,
    pub items: Vec<Item>,
}

impl Block {
    pub fn new(head: impl Into<String>) -> Block {
        Block {
            head: head.into(),
            items: Vec::new(),
        }
    }

    pub fn attr(&mut self, name: &str, value: String) {
        self.items.push(Item::Attr(name.into(), value));
    }
}

/// Writes blocks with two-space indentation, `=` aligned in runs of one-line attributes (as
/// `terraform fmt` does), a blank line between a nested block and what surrounds it.
pub fn render(blocks: &[Item]) -> String {
    let mut out = String::new();
    body(blocks, 0, &mut out, true);
    out
}

fn body(items: &[Item], depth: usize, out: &mut String, top: bool) {
    let pad = "  ".repeat(depth);
    let mut i = 0;
    let mut prev_block = false;
    while i < items.len() {
        match &items[i] {
            Item::Attr(..) => {
                // A run of attributes up to the next comment, block or multi-line value.
                let start = i;
                while i < items.len() && matches!(&items[i], Item::Attr(_, v) if !v.contains('\n'))
                {
                    i += 1;
                }
                if i == start {
                    // A multi-line value stands alone.
                    if let Item::Attr(n, v) = &items[i] {
                        if prev_block {
                            out.push('\n');
                        }
                        out.push_str(&format!("{pad}{n} = {v}\n"));
                    }
                    i += 1;
                } else {
                    if prev_block {
                        out.push('\n');
                    }
                    let width = items[start..i]
                        .iter()
                        .map(|it| match it {
                            Item::Attr(n, _) => n.chars().count(),
                            _ => 0,
                        })
                        .max()
                        .unwrap_or(0);
                    for it in &items[start..i] {
                        if let Item::Attr(n, v) = it {
                            out.push_str(&format!("{pad}{n:<width$} = {v}\n"));
                        }
                    }
                }
                prev_block = false;
            }
            Item::Comment(lines) => {
                if prev_block || (top && i > 0) {
                    out.push('\n');
                }
                for l in lines {
                    if l.is_empty() {
                        out.push_str(&format!("{pad}#\n"));
                    } else {
                        out.push_str(&format!("{pad}# {l}\n"));
                    }
                }
                prev_block = false;
                i += 1;
            }
            Item::Block(b) => {
                let after_comment = i > 0 && matches!(items[i - 1], Item::Comment(_));
                if i > 0 && !after_comment {
                    out.push('\n');
                }
                if b.items.is_empty() {
                    out.push_str(&format!("{pad}{} {{}}\n", b.head));
                } else {
                    out.push_str(&format!("{pad}{} {{\n", b.head));
                    body(&b.items, depth + 1, out, false);
                    out.push_str(&format!("{pad}}}\n"));
                }
                prev_block = true;
                i += 1;
            }
        }
    }
}

/// A quoted HCL string whose value is exactly `s` (template sequences escaped).
pub fn string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    let chars: Vec<char> = s.chars().collect();
    for (i, &c) in chars.iter().enumerate() {
        let next = chars.get(i + 1).copied();
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '$' if next == Some('{') => out.push_str("$$"),
            '%' if next == Some('{') => out.push_str("%%"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// A script kept byte for byte: a heredoc when it is several lines ending in a newline (the
/// readable form), else a quoted string.
pub fn text(s: &str) -> String {
    let lines = s.matches('\n').count();
    if lines < 2 || !s.ends_with('\n') || s.contains('\r') {
        return string(s);
    }
    let mut marker = "EOT".to_string();
    let mut n = 0;
    while s.lines().any(|l| l.trim() == marker) {
        n += 1;
        marker = format!("EOT{n}");
    }
    // Heredoc bodies are templates too: only `${` and `%{` need escaping.
    let body = s.replace("${", "$${").replace("%{", "%%{");
    format!("<<{marker}\n{body}{marker}")
}

/// A map key: bare when it is an identifier, else quoted.
pub fn key(k: &str) -> String {
    let mut chars = k.chars();
    let ident = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if ident { k.to_string() } else { string(k) }
}

/// `{ K = V, … }` over already-rendered values, one entry a line.
pub fn object(entries: &[(String, String)]) -> String {
    if entries.is_empty() {
        return "{}".into();
    }
    let width = entries
        .iter()
        .map(|(k, _)| key(k).chars().count())
        .max()
        .unwrap_or(0);
    let mut out = "{\n".to_string();
    for (k, v) in entries {
        out.push_str(&format!("{:<width$} = {v}\n", key(k)));
    }
    out.push('}');
    out
}

/// A JSON value as an HCL expression.
pub fn json(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::Null => "null".into(),
        serde_json::Value::Bool(b) => b.to_string(),
        serde_json::Value::Number(n) => n.to_string(),
        serde_json::Value::String(s) => string(s),
        serde_json::Value::Array(a) => {
            format!("[{}]", a.iter().map(json).collect::<Vec<_>>().join(", "))
        }
        serde_json::Value::Object(m) => object(
            &m.iter()
                .map(|(k, v)| (k.clone(), json(v)))
                .collect::<Vec<_>>(),
        ),
    }
}

/// A number as HCL writes it (no `.0` on whole numbers).
pub fn number(f: f64) -> String {
    crate::model::request::fmt_num(f)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strings_escape_templates_and_controls() {
        assert_eq!(string("a\"b\\${X}%{y}\n"), r#""a\"b\\$${X}%%{y}\n""#);
        assert_eq!(text("one line\n"), "\"one line\\n\"");
        assert_eq!(text("a ${B}\nEOT\n"), "<<EOT1\na $${B}\nEOT\nEOT1");
    }
}
