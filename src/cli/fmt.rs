//! `skyform fmt`: rewrites `*.sky.hcl` and `*.skyvars.hcl` files in Terraform's canonical
//! layout (see [`format`]), with `terraform fmt`'s flags, output and exit codes.

mod layout;
mod lex;

pub use layout::format;

use std::io::Read as _;
use std::path::{Path, PathBuf};

/// Whether `text` has opened more brackets (or heredocs, or quotes) than it closed: a
/// console expression that goes on on the next line.
pub fn unfinished(text: &str) -> bool {
    let toks = lex::tokens(text);
    let mut depth = 0;
    for t in &toks {
        depth += t.bracket_change();
        match t.kind {
            lex::Kind::OHeredoc | lex::Kind::OQuote => depth += 1,
            lex::Kind::CHeredoc | lex::Kind::CQuote => depth -= 1,
            _ => {}
        }
    }
    depth > 0
}

/// The files `fmt` reads in a directory, as `terraform fmt` reads `.tf` and `.tfvars`.
const EXTENSIONS: [&str; 2] = [".sky.hcl", ".skyvars.hcl"];

/// `terraform fmt`'s exit codes: 2 when a file cannot be read or parsed, 3 when `-check`
/// finds a file to rewrite.
pub const EXIT_FMT_ERROR: i32 = 2;
pub const EXIT_FMT_CHECK: i32 = 3;

/// What `fmt` is asked to do (Terraform's flags).
#[derive(Debug, Clone)]
pub struct FmtOptions {
    /// Files or directories; `-` reads standard input; none: the current directory.
    pub targets: Vec<PathBuf>,
    pub list: bool,
    pub write: bool,
    pub diff: bool,
    pub check: bool,
    pub recursive: bool,
}

/// Runs `fmt`; returns the exit code. Problems go to stderr and the other files are still
/// formatted, as Terraform does.
pub fn run(opts: &FmtOptions) -> i32 {
    let mut o = opts.clone();
    let stdin = o.targets.first().is_some_and(|t| t.as_os_str() == "-");
    if stdin {
        o.list = false;
        o.write = false;
    }
    let show_list = o.list;
    if o.check {
        o.list = true;
        o.write = false;
    }
    let mut out = String::new();
    let mut errors = 0;
    let mut fail = |msg: String| {
        eprintln!("error: {msg}");
        errors += 1;
    };
    if stdin {
        let mut text = String::new();
        match std::io::stdin().read_to_string(&mut text) {
            Ok(_) => {
                if let Err(e) = file(&o, "<stdin>", &text, &mut out) {
                    fail(e);
                }
            }
            Err(e) => fail(format!("cannot read standard input: {e}")),
        }
    } else {
        let targets = if o.targets.is_empty() {
            vec![PathBuf::from(".")]
        } else {
            o.targets.clone()
        };
        for t in targets {
            match std::fs::metadata(&t) {
                Err(_) => {
                    fail(format!("no file or directory at {}", t.display()));
                    break;
                }
                Ok(m) if m.is_dir() => dir(&o, &t, &mut out, &mut fail),
                Ok(_) if !is_config(&t) => fail(format!(
                    "only {} files can be processed with skyform fmt ({})",
                    EXTENSIONS.join(" and "),
                    t.display()
                )),
                Ok(_) => path(&o, &t, &mut out, &mut fail),
            }
        }
    }
    if !o.check || show_list {
        say_inline!("{out}");
    }
    if errors > 0 {
        EXIT_FMT_ERROR
    } else if o.check && !out.is_empty() {
        EXIT_FMT_CHECK
    } else {
        super::EXIT_OK
    }
}

fn is_config(p: &Path) -> bool {
    let name = p
        .file_name()
        .map(|n| n.to_string_lossy())
        .unwrap_or_default();
    EXTENSIONS.iter().any(|e| name.ends_with(e))
}

/// Names `fmt` skips in a directory, as Terraform does: hidden files and directories
/// (`.skyform`), editor backups (`x~`, `#x#`).
fn ignored(name: &str) -> bool {
    name.starts_with('.') || name.ends_with('~') || (name.starts_with('#') && name.ends_with('#'))
}

fn dir(o: &FmtOptions, d: &Path, out: &mut String, fail: &mut impl FnMut(String)) {
    let entries = match std::fs::read_dir(d) {
        Ok(e) => e,
        Err(e) => return fail(format!("cannot read directory {}: {e}", d.display())),
    };
    let mut entries: Vec<_> = entries.filter_map(Result::ok).collect();
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let name = e.file_name().to_string_lossy().to_string();
        if ignored(&name) {
            continue;
        }
        // `./x` is written `x`, as Terraform writes it.
        let p = if d == Path::new(".") {
            PathBuf::from(&name)
        } else {
            d.join(&name)
        };
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            if o.recursive {
                dir(o, &p, out, fail);
            }
        } else if is_config(&p) {
            path(o, &p, out, fail);
        }
    }
}

fn path(o: &FmtOptions, p: &Path, out: &mut String, fail: &mut impl FnMut(String)) {
    let text = match std::fs::read_to_string(p) {
        Ok(t) => t,
        Err(e) => return fail(format!("cannot read {}: {e}", p.display())),
    };
    let name = p.display().to_string();
    match file(o, &name, &text, out) {
        Err(e) => fail(e),
        Ok(Some(formatted)) if o.write => {
            if let Err(e) = std::fs::write(p, formatted) {
                fail(format!("cannot write {name}: {e}"));
            }
        }
        Ok(_) => {}
    }
}

/// Formats one file's text; appends what is to be shown to `out`; returns the new text when
/// it differs. A file that does not parse is left alone (the formatter could mangle it).
fn file(
    o: &FmtOptions,
    name: &str,
    text: &str,
    out: &mut String,
) -> Result<Option<String>, String> {
    if let Err(e) = hcl_edit::parser::parse_body(text) {
        let at = e.location();
        return Err(format!(
            "{name}:{}:{}: {}; not formatted",
            at.line(),
            at.column(),
            e.message()
        ));
    }
    let formatted = format(text);
    let changed = formatted != text;
    if changed {
        if o.list {
            out.push_str(name);
            out.push('\n');
        }
        if o.diff {
            let d = similar::TextDiff::from_lines(text, &formatted);
            out.push_str(
                &d.unified_diff()
                    .header(&format!("old/{name}"), &format!("new/{name}"))
                    .to_string(),
            );
        }
    }
    if !o.list && !o.write && !o.diff {
        out.push_str(&formatted);
        // Terraform prints through a writer that ends each write with one line break.
        if !formatted.ends_with('\n') {
            out.push('\n');
        }
    }
    Ok(changed.then_some(formatted))
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
    fn indents_aligns_and_keeps_heredocs() {
        // Terraform's output for the same input (blank lines are kept, as Terraform keeps them).
        let src = "cluster \"a\" {\nnum_nodes = 1   \n\n\n  resources {\ncpus = \"2+\" # {\n}\nsetup = <<-EOT\n   echo {\n  EOT\n}\n";
        let want = "cluster \"a\" {\n  num_nodes = 1\n\n\n  resources {\n    cpus = \"2+\" # {\n  }\n  setup = <<-EOT\n   echo {\n  EOT\n}\n";
        assert_eq!(format(src), want);
        assert_eq!(format(want), want);
    }

    /// Terraform's own output (scripts/fmt-goldens.sh) reproduced byte for byte, and kept.
    #[test]
    fn terraform_goldens() {
        let base = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/fmt");
        let mut names: Vec<_> = std::fs::read_dir(base.join("in"))
            .expect("testdata/fmt/in")
            .filter_map(Result::ok)
            .map(|e| e.file_name())
            .collect();
        names.sort();
        assert!(
            names.len() > 10,
            "goldens missing: run scripts/fmt-goldens.sh"
        );
        let mut wrong = Vec::new();
        for n in names {
            let input = std::fs::read_to_string(base.join("in").join(&n)).expect("input");
            let golden = std::fs::read_to_string(base.join("out").join(&n)).expect("golden");
            let got = format(&input);
            if got != golden {
                let d = similar::TextDiff::from_lines(&golden, &got);
                wrong.push(format!(
                    "{}:\n{}",
                    n.to_string_lossy(),
                    d.unified_diff().header("terraform", "skyform")
                ));
            } else if format(&golden) != golden {
                wrong.push(format!("{}: not idempotent", n.to_string_lossy()));
            }
        }
        assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    }

    /// Any prefix of a file (broken syntax included) formats without a panic.
    #[test]
    fn truncated_input_does_not_panic() {
        let base = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/fmt/in");
        for e in std::fs::read_dir(base).expect("testdata/fmt/in").flatten() {
            let name = e.file_name().to_string_lossy().to_string();
            if name.starts_with("repo--") {
                continue;
            }
            let text = std::fs::read_to_string(e.path()).expect("input");
            for (i, _) in text.char_indices().step_by(3) {
                let _ = format(&text[..i]);
            }
        }
    }

    #[test]
    fn unfinished_expressions() {
        use super::unfinished;
        assert!(unfinished("{"));
        assert!(unfinished("[1,\n  f(2"));
        assert!(unfinished("<<EOT\nx\n"));
        assert!(!unfinished("<<EOT\nx\nEOT\n"));
        assert!(!unfinished("{ a = \"}\" }"));
        assert!(!unfinished("1 + 2"));
    }

    #[test]
    fn terraform_rewrites() {
        let src = "variable \"v\" {\ntype=list\n  default  = \"${var.x}\"\n}\nresource foo \"bar\" {}\nobj = {a: 1, b=2}\nz = -1 - -2\n";
        let want = "variable \"v\" {\n  type    = list(any)\n  default = var.x\n}\nresource \"foo\" \"bar\" {}\nobj = { a : 1, b = 2 }\nz   = -1 - -2\n";
        assert_eq!(format(src), want);
    }
}
