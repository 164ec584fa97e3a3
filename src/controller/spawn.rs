//! Starting the controller in the background on the machine that applied: a detached
//! `skyform controller run -exit-when-idle` in the configuration directory, logging to
//! `.skyform/controller.log`. It stops by itself once no managed job needs it.
//!
//! The controller loads the configuration as apply did, so it gets the variables apply was
//! given: `-var` and `-var-file` values go to it as `SKYFORM_VAR_name` in its environment
//! (never on its command line, which any user of the machine can read in `ps`); the
//! `SKYFORM_VAR_*` apply saw it inherits, and it reads `*.auto.skyvars.hcl` itself.

use super::book;
use crate::config::InputValue;
use crate::config::vars::{RawValue, ValueSource};
use crate::state::{StateError, StateStore};
use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Stdio};

/// Starts a background controller unless one holds a live lease; answers its process id
/// when it started one.
pub async fn ensure_running(
    store: &dyn StateStore,
    dir: &Path,
    workspace: &str,
    exe: Option<&Path>,
    vars: &[(String, String)],
) -> Result<Option<u32>, StateError> {
    let (b, _) = book::read(store).await?;
    if b.lease.as_ref().is_some_and(|l| l.is_live(book::now_ms())) {
        return Ok(None);
    }
    // One start per state from this process within a few seconds: a controller just started
    // takes its lease a moment later (and lingers a while before it stops as idle).
    static STARTED: std::sync::Mutex<Vec<(std::path::PathBuf, String, std::time::Instant)>> =
        std::sync::Mutex::new(Vec::new());
    if let Ok(mut started) = STARTED.lock() {
        started.retain(|(_, _, at)| at.elapsed() < std::time::Duration::from_secs(3));
        if started.iter().any(|(d, w, _)| d == dir && w == workspace) {
            return Ok(None);
        }
        started.push((
            dir.to_path_buf(),
            workspace.to_string(),
            std::time::Instant::now(),
        ));
    }
    start(dir, workspace, exe, vars)
        .map(Some)
        .map_err(|source| StateError::Io {
            what: "cannot start the controller from",
            path: dir.display().to_string(),
            source,
        })
}

/// The variables a controller started by this run must be given: the values of `-var` and
/// `-var-file`, as `SKYFORM_VAR_*` environment variables (name, value as text).
pub fn passed_vars(inputs: &BTreeMap<String, InputValue>) -> Vec<(String, String)> {
    inputs
        .iter()
        .filter(|(_, v)| matches!(v.source, ValueSource::Flag | ValueSource::VarFile(_)))
        .map(|(name, v)| {
            let text = match &v.raw {
                RawValue::Text(t) => t.clone(),
                // Read back as a string for string variables, else parsed as an expression,
                // as a `-var` value is.
                RawValue::Parsed(hcl::Value::String(s)) => s.clone(),
                RawValue::Parsed(other) => other.to_string(),
            };
            (format!("SKYFORM_VAR_{name}"), text)
        })
        .collect()
}

/// Starts `skyform controller run -exit-when-idle` detached from this process's session,
/// with `vars` (from [`passed_vars`]) added to its environment.
pub fn start(
    dir: &Path,
    workspace: &str,
    exe: Option<&Path>,
    vars: &[(String, String)],
) -> std::io::Result<u32> {
    use std::os::unix::process::CommandExt;
    let exe = match exe {
        Some(e) => e.to_path_buf(),
        None => match std::env::var_os("SKYFORM_AGENT_EXE") {
            Some(e) => e.into(),
            None => std::env::current_exe()?,
        },
    };
    let logs = dir.join(".skyform");
    std::fs::create_dir_all(&logs)?;
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(logs.join("controller.log"))?;
    let child = Command::new(exe)
        .args(["controller", "run", "-exit-when-idle"])
        .current_dir(dir)
        .env("SKYFORM_WORKSPACE", workspace)
        // A crash point asked of the run that starts it is that run's, not the controller's.
        .env_remove("SKYFORM_CRASH_AFTER")
        .envs(vars.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .process_group(0)
        .spawn()?;
    Ok(child.id())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input(raw: RawValue, source: ValueSource) -> InputValue {
        InputValue {
            raw,
            source,
            location: None,
        }
    }

    #[test]
    fn flags_and_var_files_are_passed_as_text_the_rest_is_not() {
        let object: hcl::Value = hcl::from_str::<hcl::Value>("v = { a = 1, b = [\"x\"] }")
            .ok()
            .and_then(|v| v.as_object().and_then(|o| o.get("v").cloned()))
            .unwrap_or_default();
        let inputs = BTreeMap::from([
            (
                "flag".into(),
                input(RawValue::Text("a b".into()), ValueSource::Flag),
            ),
            (
                "file".into(),
                input(
                    RawValue::Parsed(hcl::Value::String("s".into())),
                    ValueSource::VarFile("x.skyvars.hcl".into()),
                ),
            ),
            (
                "num".into(),
                input(
                    RawValue::Parsed(hcl::Value::from(3)),
                    ValueSource::VarFile("x.skyvars.hcl".into()),
                ),
            ),
            (
                "obj".into(),
                input(
                    RawValue::Parsed(object.clone()),
                    ValueSource::VarFile("x.skyvars.hcl".into()),
                ),
            ),
            (
                "env".into(),
                input(
                    RawValue::Text("e".into()),
                    ValueSource::Env("SKYFORM_VAR_env".into()),
                ),
            ),
            (
                "auto".into(),
                input(
                    RawValue::Text("a".into()),
                    ValueSource::AutoFile("a.auto.skyvars.hcl".into()),
                ),
            ),
        ]);
        let passed: BTreeMap<String, String> = passed_vars(&inputs).into_iter().collect();
        assert_eq!(
            passed.keys().collect::<Vec<_>>(),
            [
                "SKYFORM_VAR_file",
                "SKYFORM_VAR_flag",
                "SKYFORM_VAR_num",
                "SKYFORM_VAR_obj"
            ]
        );
        assert_eq!(passed["SKYFORM_VAR_flag"], "a b");
        assert_eq!(passed["SKYFORM_VAR_file"], "s");
        assert_eq!(passed["SKYFORM_VAR_num"], "3");
        // An object is passed as an expression that parses back to the same value.
        let expr: hcl::Expression = passed["SKYFORM_VAR_obj"].parse().expect("an expression");
        assert_eq!(
            hcl::Value::from(expr),
            object,
            "{}",
            passed["SKYFORM_VAR_obj"]
        );
    }
}
