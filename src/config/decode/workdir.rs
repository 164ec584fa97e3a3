//! A `workdir`: where it is, and the digest of its contents that makes a change of them a
//! change of the resource.

use super::*;

/// Content hash of a directory: paths, executable bits and contents, in path order.
pub fn hash_dir(dir: &Path) -> std::io::Result<String> {
    thread_local! {
        static CACHE: std::cell::RefCell<BTreeMap<PathBuf, String>> = const { std::cell::RefCell::new(BTreeMap::new()) };
    }
    if let Some(h) = CACHE.with(|c| c.borrow().get(dir).cloned()) {
        return Ok(h);
    }
    let mut files = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d)? {
            let entry = entry?;
            let ft = entry.file_type()?;
            let path = entry.path();
            if ft.is_dir() {
                if path
                    .file_name()
                    .is_some_and(|n| n == ".git" || n == ".skyform")
                {
                    continue;
                }
                stack.push(path);
            } else if ft.is_file() || ft.is_symlink() {
                files.push(path);
            }
        }
    }
    files.sort();
    let mut h = sha2::Sha256::new();
    for f in &files {
        use std::os::unix::fs::PermissionsExt;
        let rel = f.strip_prefix(dir).unwrap_or(f);
        if let Ok(target) = std::fs::read_link(f) {
            // A link is its target, whatever that points to.
            h.update(rel.to_string_lossy().as_bytes());
            h.update([1]);
            h.update(target.to_string_lossy().as_bytes());
            continue;
        }
        let meta = std::fs::metadata(f)
            .map_err(|e| std::io::Error::new(e.kind(), format!("{}: {e}", rel.display())))?;
        h.update(rel.to_string_lossy().as_bytes());
        h.update([0, u8::from(meta.permissions().mode() & 0o111 != 0)]);
        let content = std::fs::read(f)
            .map_err(|e| std::io::Error::new(e.kind(), format!("{}: {e}", rel.display())))?;
        h.update((content.len() as u64).to_le_bytes());
        h.update(&content);
    }
    let out = format!("sha256:{}", hex(&h.finalize()));
    CACHE.with(|c| c.borrow_mut().insert(dir.to_path_buf(), out.clone()));
    Ok(out)
}

/// Resolves and hashes a workdir given relative to `module_dir`; reported relative to `root`.
pub(super) fn workdir(
    f: &Fields<'_>,
    module_dir: &Path,
    root: &Path,
    diags: &mut Diagnostics,
) -> (Option<String>, Option<String>) {
    let Some(w) = f.str("workdir") else {
        return (None, None);
    };
    if w.contains(UNKNOWN) {
        return (Some(w), Some(UNKNOWN.to_string()));
    }
    let abs = module_dir.join(&w);
    let shown = abs
        .strip_prefix(root)
        .map(|p| p.display().to_string())
        .unwrap_or_else(|_| abs.display().to_string());
    let shown = if shown.is_empty() {
        ".".to_string()
    } else {
        shown
    };
    match hash_dir(&abs) {
        Ok(h) => (Some(shown), Some(h)),
        Err(e) => {
            if let Some(a) = f.attr("workdir") {
                diags.push(
                    Diagnostic::error(format!("cannot read workdir {w:?}: {e}"))
                        .at(a.file, Some(a.span.clone()))
                        .label(format!("{w:?} is not a readable directory"))
                        .hint("workdir is relative to the directory of this file"),
                );
            }
            (Some(shown), None)
        }
    }
}
