//! `skyform fmt`: canonical layout of `*.sky.hcl` files — two-space indentation by nesting,
//! no trailing whitespace, one blank line at most, a final newline. Heredoc bodies and
//! comments are kept as written.

use super::{EXIT_ERROR, EXIT_OK};
use std::path::Path;

/// Formats one file's text.
pub fn format(text: &str) -> String {
    let mut out = String::new();
    let mut depth: usize = 0;
    let mut heredoc: Option<String> = None;
    let mut in_comment = false;
    let mut blank = 0;
    for raw in text.lines() {
        if let Some(marker) = &heredoc {
            // Heredoc bodies are data: kept byte for byte.
            if raw.trim() == marker {
                heredoc = None;
                out.push_str(&"  ".repeat(depth));
                out.push_str(raw.trim());
            } else {
                out.push_str(raw);
            }
            out.push('\n');
            continue;
        }
        if in_comment {
            // Inside a /* … */ comment: kept as written.
            let code = strip_strings_and_comments(raw, &mut in_comment);
            out.push_str(raw.trim_end());
            out.push('\n');
            depth = (depth + code.matches(['{', '[', '(']).count())
                .saturating_sub(code.matches(['}', ']', ')']).count());
            continue;
        }
        let line = raw.trim();
        if line.is_empty() {
            blank += 1;
            continue;
        }
        let code = strip_strings_and_comments(line, &mut in_comment);
        let closes_first = code.trim_start().starts_with(['}', ']', ')']);
        // At most one blank line, and none at the start of a file or block or before a `}`.
        let after_open = out.trim_end().ends_with(['{', '[', '(']);
        if blank > 0 && !out.is_empty() && !closes_first && !after_open {
            out.push('\n');
        }
        blank = 0;
        let opens = code.matches(['{', '[', '(']).count();
        let closes = code.matches(['}', ']', ')']).count();
        let indent = if closes_first {
            depth.saturating_sub(1)
        } else {
            depth
        };
        out.push_str(&"  ".repeat(indent));
        out.push_str(line);
        out.push('\n');
        depth = (depth + opens).saturating_sub(closes);
        if let Some(pos) = code.find("<<") {
            let m = code[pos + 2..].trim_start_matches('-').trim();
            if !m.is_empty() && m.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                heredoc = Some(m.to_string());
            }
        }
    }
    while out.ends_with("\n\n") {
        out.pop();
    }
    out
}

/// The code of a line without strings and comments; `in_comment` carries a `/* … */` comment
/// from one line to the next.
fn strip_strings_and_comments(line: &str, in_comment: &mut bool) -> String {
    let mut out = String::new();
    let mut in_str = false;
    let mut escaped = false;
    let chars: Vec<char> = line.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let next = chars.get(i + 1).copied();
        if *in_comment {
            if c == '*' && next == Some('/') {
                *in_comment = false;
                i += 1;
            }
        } else if in_str {
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                in_str = false;
            }
        } else if c == '"' {
            in_str = true;
        } else if c == '#' || (c == '/' && next == Some('/')) {
            break;
        } else if c == '/' && next == Some('*') {
            *in_comment = true;
            i += 1;
        } else {
            out.push(c);
        }
        i += 1;
    }
    out
}

/// A file `fmt` cannot read or write.
#[derive(Debug)]
pub struct FmtFailure(pub String);

pub fn run(dir: &Path, check: bool, diff: bool) -> Result<i32, FmtFailure> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .map_err(|e| FmtFailure(format!("cannot read {}: {e}", dir.display())))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.to_string_lossy().ends_with(".sky.hcl"))
        .collect();
    files.sort();
    let mut changed = 0;
    for f in files {
        let text = std::fs::read_to_string(&f)
            .map_err(|e| FmtFailure(format!("cannot read {}: {e}", f.display())))?;
        let formatted = format(&text);
        if formatted == text {
            continue;
        }
        changed += 1;
        say!("{}", f.display());
        if diff {
            let d = similar::TextDiff::from_lines(&text, &formatted);
            say_inline!("{}", d.unified_diff().header("before", "after"));
        }
        if !check {
            std::fs::write(&f, formatted)
                .map_err(|e| FmtFailure(format!("cannot write {}: {e}", f.display())))?;
        }
    }
    Ok(if check && changed > 0 {
        EXIT_ERROR + 2
    } else {
        EXIT_OK
    })
}

#[cfg(test)]
mod tests {
    use super::format;

    #[test]
    fn keeps_heredocs_and_block_comments() {
        let src = "job \"j\" {\n  run = <<-EOT\n    echo a \n  EOT\n}\n/* { */\ncluster \"c\" {}\n/*\n  {\n*/\n";
        assert_eq!(
            format(src),
            src,
            "heredoc bodies (trailing spaces too) and comments are kept"
        );
    }

    #[test]
    fn indents_and_keeps_heredocs() {
        let src = "cluster \"a\" {\nnum_nodes = 1   \n\n\n  resources {\ncpus = \"2+\" # {\n}\nsetup = <<-EOT\n   echo {\n  EOT\n}\n";
        let want = "cluster \"a\" {\n  num_nodes = 1\n\n  resources {\n    cpus = \"2+\" # {\n  }\n  setup = <<-EOT\n   echo {\n  EOT\n}\n";
        assert_eq!(format(src), want);
        assert_eq!(format(want), want);
    }
}
