//! `skyform convert FILE.yaml… [-out DIR] [-json] [-managed]`: the IO around
//! [`crate::convert`] (reading the files, writing the HCL, printing the warnings).

use super::{EXIT_ERROR, EXIT_OK};
use crate::convert::{ConvertError, Converter, Warning};
use crate::engine::Error;
use std::io::Read as _;
use std::path::{Path, PathBuf};

#[derive(Debug, serde::Serialize)]
struct FileOut {
    input: String,
    output: Option<String>,
    hcl: String,
    warnings: Vec<Warning>,
}

pub fn run(files: &[PathBuf], out: Option<&Path>, json: bool, managed: bool) -> Result<i32, Error> {
    let mut conv = Converter::new(managed);
    if let Some(dir) = out {
        std::fs::create_dir_all(dir)
            .map_err(|e| Error::new(format!("cannot create {}: {e}", dir.display())))?;
        conv.workdir_base = way_back(dir);
    }
    let mut done: Vec<FileOut> = Vec::new();
    let mut errors: Vec<ConvertError> = Vec::new();
    let mut stems = std::collections::BTreeSet::new();
    for f in files {
        let (name, text) = if f.as_os_str() == "-" {
            let mut s = String::new();
            std::io::stdin()
                .read_to_string(&mut s)
                .map_err(|e| Error::new(format!("cannot read standard input: {e}")))?;
            ("-".to_string(), s)
        } else {
            let text = std::fs::read_to_string(f).map_err(|e| {
                Error::new(format!("cannot read {}: {e}", f.display()))
                    .hint("convert takes SkyPilot YAML files, or - for standard input")
            })?;
            (f.display().to_string(), text)
        };
        match conv.convert(&name, &text) {
            Ok(c) => {
                let output = out.map(|d| {
                    // One file per input; a second input of the same name gets a suffix.
                    let stem = output_stem(&name);
                    let mut candidate = stem.clone();
                    let mut n = 2;
                    while !stems.insert(candidate.clone()) {
                        candidate = format!("{stem}-{n}");
                        n += 1;
                    }
                    d.join(format!("{candidate}.sky.hcl")).display().to_string()
                });
                done.push(FileOut {
                    input: name,
                    output,
                    hcl: c.hcl,
                    warnings: c.warnings,
                });
            }
            Err(e) => errors.push(e),
        }
    }
    let infra = conv.infra();
    if json {
        let doc = serde_json::json!({
            "files": done,
            "infra": infra,
            "errors": errors,
        });
        say!("{}", serde_json::to_string_pretty(&doc).unwrap_or_default());
        return Ok(if errors.is_empty() {
            EXIT_OK
        } else {
            EXIT_ERROR
        });
    }
    for f in &done {
        for w in &f.warnings {
            eprintln!("warning: {w}");
        }
    }
    if !errors.is_empty() {
        for e in &errors {
            eprintln!("error: {e}");
        }
        return Ok(EXIT_ERROR);
    }
    match out {
        None => {
            let mut parts: Vec<&str> = Vec::new();
            if let Some(i) = &infra {
                parts.push(i);
            }
            parts.extend(done.iter().map(|f| f.hcl.as_str()));
            say_inline!("{}", parts.join("\n"));
        }
        Some(dir) => {
            std::fs::create_dir_all(dir)
                .map_err(|e| Error::new(format!("cannot create {}: {e}", dir.display())))?;
            for f in &done {
                if let Some(path) = &f.output {
                    std::fs::write(path, &f.hcl)
                        .map_err(|e| Error::new(format!("cannot write {path}: {e}")))?;
                    say!("{} -> {path}", f.input);
                }
            }
            if let Some(i) = &infra {
                let path = dir.join("infra.sky.hcl");
                if path.exists() {
                    eprintln!(
                        "note: {} exists and is left as it is; the converted files name these clouds:\n{i}",
                        path.display()
                    );
                } else {
                    std::fs::write(&path, i)
                        .map_err(|e| Error::new(format!("cannot write {}: {e}", path.display())))?;
                    say!("(clouds) -> {}", path.display());
                }
            }
        }
    }
    Ok(EXIT_OK)
}

/// `examples/serve.sky.yaml` → `serve`; standard input → `task`.
fn output_stem(name: &str) -> String {
    let base = Path::new(name)
        .file_name()
        .map_or_else(|| "task".to_string(), |f| f.to_string_lossy().into_owned());
    let mut b = base.as_str();
    for ext in [".yaml", ".yml", ".sky"] {
        b = b.strip_suffix(ext).unwrap_or(b);
    }
    if b.is_empty() || b == "-" {
        "task".into()
    } else {
        b.to_string()
    }
}

/// The relative path from `dir` back to the working directory (`..`, `../..`, `../src`),
/// or None when they are the same.
fn way_back(dir: &Path) -> Option<String> {
    let here = std::env::current_dir().ok()?.canonicalize().ok()?;
    let there = dir.canonicalize().ok()?;
    if here == there {
        return None;
    }
    let h: Vec<_> = here.components().collect();
    let t: Vec<_> = there.components().collect();
    let common = h.iter().zip(&t).take_while(|(a, b)| a == b).count();
    let mut parts: Vec<String> = vec!["..".to_string(); t.len() - common];
    parts.extend(
        h[common..]
            .iter()
            .map(|c| c.as_os_str().to_string_lossy().into_owned()),
    );
    Some(parts.join("/"))
}
