//! A Terraform pipeline with `terraform` replaced by `skyform`: the usual CI lines, verbatim
//! (run in the configuration's directory, no -chdir), on an `infra "local"` configuration.
//! Exit codes and outputs are Terraform's: `plan -detailed-exitcode` exits 2 with changes and
//! 0 without, `fmt -check` exits 3 on an unformatted file, `-no-color` output has no escapes.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::process::{Command, Output, Stdio};
use support::{BIN, Workdir};

const CONFIG: &str = r#"infra "local" {}

cluster "ci" {
  resources {
    cpus = "1+"
  }
}

job "hello" {
  cluster = cluster.ci
  run     = "echo hello from CI"
}

output "greeting" {
  value = "hello"
}

output "head_ip" {
  value = cluster.ci.head_ip
}
"#;

/// One pipeline line, as a CI script has it: `skyform ARGS…` in the directory.
fn line(wd: &Workdir, line: &str) -> Output {
    let args: Vec<&str> = line
        .strip_prefix("skyform ")
        .expect("a skyform line")
        .split_whitespace()
        .collect();
    Command::new(BIN)
        .current_dir(wd.path())
        .args(&args)
        .env("HOME", wd.path().join("home"))
        .env_remove("NO_COLOR")
        .env_remove("SKYFORM_AUTO_APPROVE")
        .stdin(Stdio::null())
        .output()
        .expect("run skyform")
}

fn check(wd: &Workdir, cmd: &str, code: i32) -> String {
    let out = line(wd, cmd);
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(
        out.status.code(),
        Some(code),
        "`{cmd}`\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
    assert!(
        !stdout.contains('\u{1b}') && !stderr.contains('\u{1b}'),
        "`{cmd}`: no colour\n{stdout}{stderr}"
    );
    stdout
}

#[test]
fn the_terraform_pipeline_runs_verbatim() {
    let wd = Workdir::with_files(&[("main.sky.hcl", CONFIG)]);
    std::fs::create_dir_all(wd.path().join("home")).unwrap();

    check(&wd, "skyform init -input=false", 0);
    assert!(
        check(&wd, "skyform validate -no-color", 0)
            .starts_with("Success! The configuration is valid.")
    );
    assert_eq!(check(&wd, "skyform fmt -check -recursive", 0), "");

    let plan = check(
        &wd,
        "skyform plan -input=false -no-color -out=tfplan -detailed-exitcode",
        2,
    );
    assert!(
        plan.contains("cluster.ci") && plan.contains("job.hello"),
        "{plan}"
    );
    assert!(wd.path().join("tfplan").is_file());

    let shown: serde_json::Value =
        serde_json::from_str(&check(&wd, "skyform show -json tfplan", 0)).expect("plan JSON");
    let text = shown.to_string();
    assert!(
        text.contains("cluster.ci") && text.contains("job.hello"),
        "{text}"
    );

    check(&wd, "skyform apply -input=false -no-color tfplan", 0);

    let outputs: serde_json::Value =
        serde_json::from_str(&check(&wd, "skyform output -json", 0)).expect("outputs JSON");
    assert_eq!(outputs["greeting"]["value"], "hello", "{outputs}");
    assert_eq!(outputs["greeting"]["sensitive"], false, "{outputs}");
    assert_eq!(outputs["greeting"]["type"], "string", "{outputs}");
    assert_eq!(outputs["head_ip"]["value"], "127.0.0.1", "{outputs}");
    // The value as it is, with no line break after it, as Terraform prints it.
    assert_eq!(check(&wd, "skyform output -raw greeting", 0), "hello");

    // console reads expressions from stdin and sees the state.
    let mut console = Command::new(BIN)
        .current_dir(wd.path())
        .args(["console", "-no-color"])
        .env("HOME", wd.path().join("home"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        let mut stdin = console.stdin.take().unwrap();
        stdin
            .write_all(b"cluster.ci.head_ip\nupper(\"ok\")\n{ b = [1], a = 2 }\n")
            .unwrap();
    }
    let out = console.wait_with_output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "\"127.0.0.1\"\n\"OK\"\n{\n  \"a\" = 2\n  \"b\" = [\n    1,\n  ]\n}\n"
    );

    // Nothing left to do: 0, as Terraform's -detailed-exitcode.
    check(
        &wd,
        "skyform plan -input=false -no-color -detailed-exitcode -lock-timeout=30s -parallelism=4 -compact-warnings",
        0,
    );

    // An unformatted file fails the fmt step with 3 and names the file.
    std::fs::create_dir_all(wd.path().join("sub")).unwrap();
    std::fs::write(wd.path().join("sub/x.sky.hcl"), "locals {\na=1\n}\n").unwrap();
    assert_eq!(
        check(&wd, "skyform fmt -check -recursive", 3),
        "sub/x.sky.hcl\n"
    );
    assert_eq!(
        check(&wd, "skyform fmt -check -list=false -recursive", 3),
        ""
    );

    check(
        &wd,
        "skyform destroy -auto-approve -input=false -no-color",
        0,
    );
    check(&wd, "skyform version", 0);
    let v: serde_json::Value =
        serde_json::from_str(&check(&wd, "skyform version -json", 0)).expect("version JSON");
    assert_eq!(v["skyform_version"], env!("CARGO_PKG_VERSION"));
}

#[test]
fn apply_without_approval_and_without_input_fails_as_terraform() {
    let wd = Workdir::with_files(&[("main.sky.hcl", CONFIG)]);
    std::fs::create_dir_all(wd.path().join("home")).unwrap();
    let out = line(&wd, "skyform apply -input=false -no-color");
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("-input=false forbids asking"), "{err}");
}
