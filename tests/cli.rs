//! The smaller commands, end to end: init, validate -json, fmt, graph, show, output.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::path::Path;
use std::process::Command;
use support::{BIN, command_in, output_in as run};

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).to_string()
}

const CONFIG: &str = "cluster \"dev\" {}\n\njob \"a\" {\n  cluster = cluster.dev\n  run     = \"true\"\n}\n\njob \"b\" {\n  cluster    = cluster.dev\n  depends_on = [job.a]\n  run        = \"true\"\n}\n";

#[test]
fn init_validate_graph_and_show() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(tmp.path().join("main.sky.hcl"), CONFIG).unwrap();
    let out = run(tmp.path(), &["init"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("local        ready (this machine)"),
        "{}",
        text(&out.stdout)
    );
    assert!(tmp.path().join(".skyform/state.json").exists());

    let v: serde_json::Value =
        serde_json::from_slice(&run(tmp.path(), &["validate", "-json"]).stdout).unwrap();
    assert_eq!(v["valid"], true);

    let dot = text(&run(tmp.path(), &["graph"]).stdout);
    assert!(
        dot.contains("\"cluster.dev\" -> \"job.a\"") && dot.contains("\"job.a\" -> \"job.b\""),
        "{dot}"
    );
    let mermaid = text(&run(tmp.path(), &["graph", "-format", "mermaid"]).stdout);
    assert!(
        mermaid.starts_with("graph LR") && mermaid.contains("-->"),
        "{mermaid}"
    );
    let bad = run(tmp.path(), &["graph", "-format", "png"]);
    assert_eq!(bad.status.code(), Some(1));
    assert!(text(&bad.stderr).contains("hint: use -format dot or -format mermaid"));

    assert!(text(&run(tmp.path(), &["show"]).stdout).contains("The state is empty."));
    let missing = run(tmp.path(), &["output", "nope"]);
    assert_eq!(missing.status.code(), Some(1));
}

#[test]
fn validate_json_reports_positions() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(
        tmp.path().join("main.sky.hcl"),
        "cluster \"dev\" {\n  num_node = 2\n}\n",
    )
    .unwrap();
    let out = run(tmp.path(), &["validate", "-json"]);
    assert_eq!(out.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["valid"], false);
    let d = &v["diagnostics"][0];
    assert_eq!(d["summary"], "unknown attribute \"num_node\" in cluster");
    assert_eq!(d["range"]["filename"], "main.sky.hcl");
    assert_eq!(d["range"]["start"]["line"], 2);
    assert_eq!(d["range"]["start"]["column"], 3);
    assert_eq!(d["hint"], "did you mean \"num_nodes\"?");
}

#[test]
fn fmt_check_diff_and_rewrite() {
    let tmp = tempfile::tempdir().unwrap();
    let messy = "cluster \"dev\" {\nnum_nodes = 2   \n\n\n}\n";
    std::fs::write(tmp.path().join("main.sky.hcl"), messy).unwrap();
    let check = run(tmp.path(), &["fmt", "-check", "-diff"]);
    assert_eq!(check.status.code(), Some(3), "{}", text(&check.stderr));
    assert!(
        text(&check.stdout).contains("+  num_nodes = 2"),
        "{}",
        text(&check.stdout)
    );
    assert_eq!(
        std::fs::read_to_string(tmp.path().join("main.sky.hcl")).unwrap(),
        messy,
        "-check writes nothing"
    );
    let listed = run(tmp.path(), &["fmt"]);
    assert!(listed.status.success());
    assert_eq!(
        text(&listed.stdout),
        "main.sky.hcl\n",
        "lists what it rewrote"
    );
    // As `terraform fmt` leaves it: blank lines are kept.
    assert_eq!(
        std::fs::read_to_string(tmp.path().join("main.sky.hcl")).unwrap(),
        "cluster \"dev\" {\n  num_nodes = 2\n\n\n}\n"
    );
    assert_eq!(run(tmp.path(), &["fmt", "-check"]).status.code(), Some(0));
}

#[test]
fn no_prompt_without_a_terminal() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(tmp.path().join("main.sky.hcl"), CONFIG).unwrap();
    let out = Command::new(BIN)
        .arg(format!("-chdir={}", tmp.path().display()))
        .arg("apply")
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(
        err.contains(
            "approval is needed to perform these actions, and there is no terminal to ask"
        ) && err.contains("hint: pass -auto-approve"),
        "{err}"
    );
    assert!(
        !text(&out.stdout).contains('\u{1b}'),
        "no colour without a terminal"
    );
}

#[test]
fn offers_and_a_cloud_plan_from_the_fixture_catalog() {
    let catalogs = Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/catalogs");
    let tmp = tempfile::tempdir().unwrap();
    let run_cat = |args: &[&str]| {
        Command::new(BIN)
            .arg(format!("-chdir={}", tmp.path().display()))
            .args(args)
            .env("SKYFORM_CATALOG_DIR", &catalogs)
            .output()
            .unwrap()
    };
    let out = run_cat(&["offers", "A10G:8,L4:8", "--all"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let table = text(&out.stdout);
    let first = table.lines().nth(1).unwrap_or_default();
    assert!(
        first.starts_with("gcp/us-east4")
            && first.contains("g2-standard-96")
            && first.ends_with("7.98"),
        "{table}"
    );
    let none = run_cat(&["offers", "H100:8", "--infra", "aws"]);
    assert_eq!(none.status.code(), Some(1));
    assert!(
        text(&none.stderr).contains("no offer matches"),
        "{}",
        text(&none.stderr)
    );
    let list = text(&run_cat(&["catalog", "list"]).stdout);
    assert!(
        list.contains("gcp") && list.contains("aws") && list.contains("lambda"),
        "{list}"
    );

    std::fs::write(
        tmp.path().join("main.sky.hcl"),
        "infra \"gcp\" {\n  price_multiplier = 0.5\n}\n\ncluster \"train\" {\n  num_nodes = 2\n  resources {\n    accelerators = toset([\"A10G:8\", \"L4:8\"])\n  }\n}\n",
    )
    .unwrap();
    let plan = run_cat(&["plan", "-json"]);
    assert!(plan.status.success(), "{}", text(&plan.stderr));
    let v: serde_json::Value = serde_json::from_slice(&plan.stdout).unwrap();
    let change = &v["resource_changes"][0];
    assert_eq!(change["placement"]["infra"], "gcp/us-east4");
    assert_eq!(change["placement"]["instance_type"], "g2-standard-96");
    // Half price (the multiplier) for two nodes: the full hourly price of one node.
    assert_eq!(change["placement"]["hourly_cost_micros"], 7_977_120);
    assert!(
        change["candidates"].as_array().is_some_and(|c| c.len() > 1),
        "the failover list is in the plan"
    );
    // What the search space left out, and why: GCP is cheaper, but the request says AWS.
    std::fs::write(
        tmp.path().join("main.sky.hcl"),
        "infra \"gcp\" {}\ninfra \"aws\" {}\n\ncluster \"train\" {\n  resources {\n    accelerators = toset([\"A10G:8\", \"L4:8\"])\n    infra        = \"aws/*\"\n  }\n}\n",
    )
    .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&run_cat(&["plan", "-json"]).stdout).unwrap();
    let change = &v["resource_changes"][0];
    assert_eq!(change["placement"]["instance_type"], "g5.48xlarge");
    let first_excluded = &change["excluded"][0];
    assert_eq!(first_excluded["instance_type"], "g2-standard-96");
    assert_eq!(first_excluded["reason"], "outside infra = \"aws/*\"");
    std::fs::write(
        tmp.path().join("main.sky.hcl"),
        "infra \"gcp\" {\n  price_multiplier = 0.5\n}\n\ncluster \"train\" {\n  num_nodes = 2\n  resources {\n    accelerators = toset([\"A10G:8\", \"L4:8\"])\n  }\n}\n",
    )
    .unwrap();
    // offers in a configuration's directory uses its prices and scope.
    let table = text(&run_cat(&["offers", "L4:8"]).stdout);
    let first = table.lines().nth(1).unwrap_or_default();
    assert!(
        first.starts_with("gcp/us-east4") && first.ends_with("3.99"),
        "{table}"
    );
    assert!(!table.contains("aws/"), "only the declared clouds: {table}");
    let human = text(&run_cat(&["plan"]).stdout);
    assert!(
        human.contains("failover (next 1 of 1): gcp/us-central1 g2-standard-96"),
        "{human}"
    );
}

/// A one-file-at-a-time HTTP server on loopback serving `root` (404 for what is missing).
fn serve(root: std::path::PathBuf) -> (String, std::thread::JoinHandle<()>) {
    use std::io::{BufRead, BufReader, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let handle = std::thread::spawn(move || {
        for stream in listener.incoming().take(8) {
            let Ok(mut stream) = stream else { continue };
            let mut line = String::new();
            let _ = BufReader::new(&stream).read_line(&mut line);
            let path = line
                .split_whitespace()
                .nth(1)
                .unwrap_or("/")
                .trim_start_matches('/')
                .to_string();
            let file = root.join(&path);
            let (status, body) = match std::fs::read(&file) {
                Ok(b) if !path.contains("..") => ("200 OK", b),
                _ => ("404 Not Found", b"missing".to_vec()),
            };
            let _ = write!(
                stream,
                "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            let _ = stream.write_all(&body);
        }
    });
    (url, handle)
}

#[test]
fn catalog_update_downloads_checks_and_replaces() {
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/catalogs");
    let (url, _server) = serve(fixture.clone());
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("catalogs");
    let out = Command::new(BIN)
        .args(["catalog", "update", "--url", &url, "--catalog-dir"])
        .arg(&dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    for cloud in ["aws", "gcp", "lambda"] {
        assert_eq!(
            std::fs::read(dir.join(cloud).join("vms.csv")).unwrap(),
            std::fs::read(fixture.join(cloud).join("vms.csv")).unwrap()
        );
    }
    // A cloud the server does not have fails, and nothing is replaced (not even the clouds
    // that did download).
    std::fs::write(dir.join("aws/vms.csv"), b"InstanceType,Region\nold,here\n").unwrap();
    let (url, _server) = serve(fixture.clone());
    let bad = Command::new(BIN)
        .args([
            "catalog",
            "update",
            "--url",
            &url,
            "--clouds",
            "aws,azure",
            "--catalog-dir",
        ])
        .arg(&dir)
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(1));
    assert!(
        text(&bad.stderr).contains("404")
            && text(&bad.stderr).contains("the old catalogs are unchanged"),
        "{}",
        text(&bad.stderr)
    );
    assert!(dir.join("gcp/vms.csv").exists());
    assert_eq!(
        std::fs::read(dir.join("aws/vms.csv")).unwrap(),
        b"InstanceType,Region\nold,here\n"
    );
}

/// Client-side encryption of a local state: turning it on needs `init -migrate-state`, which
/// encrypts in place; after that the file holds no plaintext, and a missing or wrong key is a
/// clear error, never a silent plaintext write.
#[test]
fn encrypted_state_migrates_in_place_and_needs_its_key() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    std::fs::write(dir.join("main.sky.hcl"), CONFIG).unwrap();
    let with_key = |args: &[&str], key: Option<&str>| {
        let mut c = command_in(dir, args);
        c.env_remove("SKYFORM_STATE_KEY");
        if let Some(k) = key {
            c.env("SKYFORM_STATE_KEY", k);
        }
        c.output().unwrap()
    };
    const KEY: &str = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=";
    const OTHER: &str = "ZmVkY2JhOTg3NjU0MzIxMGZlZGNiYTk4NzY1NDMyMTA=";
    let out = with_key(&["apply", "-auto-approve"], None);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let lineage = serde_json::from_slice::<serde_json::Value>(
        &std::fs::read(dir.join(".skyform/state.json")).unwrap(),
    )
    .unwrap()["lineage"]
        .as_str()
        .unwrap()
        .to_string();

    let config = format!(
        "skyform {{\n  state \"local\" {{\n    encryption_key_env = \"SKYFORM_STATE_KEY\"\n  }}\n}}\n\n{CONFIG}"
    );
    std::fs::write(dir.join("main.sky.hcl"), config).unwrap();
    let out = with_key(&["plan"], Some(KEY));
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("init -migrate-state"),
        "{}",
        text(&out.stderr)
    );

    let out = with_key(&["init", "-migrate-state"], Some(KEY));
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("is encrypted now"),
        "{}",
        text(&out.stdout)
    );
    let raw = std::fs::read_to_string(dir.join(".skyform/state.json")).unwrap();
    assert!(raw.contains("AES-256-GCM"), "{raw}");
    assert!(
        !raw.contains(&lineage) && !raw.contains("job.a"),
        "no plaintext: {raw}"
    );
    assert_no_plaintext(dir, &lineage);

    let out = with_key(&["plan"], Some(KEY));
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("No changes"),
        "{}",
        text(&out.stdout)
    );

    let out = with_key(&["state", "list"], None);
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(
        err.contains("$SKYFORM_STATE_KEY, which is not set"),
        "{err}"
    );
    assert!(err.contains("hint:"), "{err}");
    let out = with_key(&["state", "list"], Some(OTHER));
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("wrong key"),
        "{}",
        text(&out.stderr)
    );

    // Every later write stays encrypted (no plaintext journal either).
    let out = with_key(&["destroy", "-auto-approve"], Some(KEY));
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_no_plaintext(dir, &lineage);
}

fn assert_no_plaintext(dir: &Path, lineage: &str) {
    for entry in std::fs::read_dir(dir.join(".skyform")).unwrap() {
        let p = entry.unwrap().path();
        let name = p.file_name().unwrap().to_string_lossy().to_string();
        if name.starts_with("state.json") && p.is_file() {
            let body = std::fs::read_to_string(&p).unwrap_or_default();
            assert!(!body.contains(lineage), "{name} holds plaintext: {body}");
        }
    }
}

/// Workspaces: separate states and sandboxes side by side; the selection sticks; deleting
/// one that still holds resources is refused.
#[test]
fn workspaces_keep_separate_states() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    std::fs::write(dir.join("main.sky.hcl"), CONFIG).unwrap();
    std::fs::write(
        dir.join("ws.sky.hcl"),
        "output \"ws\" {\n  value = skyform.workspace\n}\n",
    )
    .unwrap();
    let ok = |args: &[&str]| {
        let out = run(dir, args);
        assert!(out.status.success(), "{args:?}: {}", text(&out.stderr));
        text(&out.stdout)
    };
    ok(&["apply", "-auto-approve"]);
    assert!(ok(&["workspace", "new", "staging"]).contains("Created and switched"));
    assert_eq!(ok(&["workspace", "list"]), "  default\n* staging\n");
    // The new workspace starts empty: everything is created again, in its own sandboxes.
    let plan = ok(&["plan"]);
    assert!(
        plan.contains("Plan: 3 to add"),
        "a fresh workspace plans creates: {plan}"
    );
    ok(&["apply", "-auto-approve"]);
    assert!(dir.join(".skyform/workspaces/staging/state.json").exists());
    assert!(dir.join(".skyform/workspaces/staging/local").is_dir());
    assert!(ok(&["-workspace", "default", "plan"]).contains("No changes"));
    assert!(
        ok(&["output", "ws"]).contains("staging"),
        "skyform.workspace"
    );
    assert!(ok(&["-workspace", "default", "output", "ws"]).contains("default"));

    ok(&["workspace", "select", "default"]);
    let out = run(dir, &["workspace", "delete", "staging"]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("still has 3 resources"),
        "{}",
        text(&out.stderr)
    );
    ok(&["-workspace", "staging", "destroy", "-auto-approve"]);
    // Another run holds the workspace's lock: delete waits for it (-lock-timeout), then
    // refuses naming the holder; -lock=false does it beside the lock.
    let lock = dir.join(".skyform/workspaces/staging/state.json.lock");
    std::fs::write(
        &lock,
        r#"{"id":"held-elsewhere","who":"alice@ci-runner-7","operation":"apply","created":"2026-11-28T12:00:00Z","version":"0","pid":0}"#,
    )
    .unwrap();
    let out = run(dir, &["workspace", "delete", "-lock-timeout=1s", "staging"]);
    assert!(
        !out.status.success() && text(&out.stderr).contains("alice@ci-runner-7"),
        "{}",
        text(&out.stderr)
    );
    assert!(ok(&["workspace", "delete", "-lock=false", "staging"]).contains("Deleted"));
    assert_eq!(ok(&["workspace", "list"]), "* default\n");
    let out = run(dir, &["workspace", "select", "staging"]);
    assert!(text(&out.stderr).contains("hint: skyform workspace new staging"));
    let out = run(dir, &["-workspace", "../x", "plan"]);
    assert!(text(&out.stderr).contains("is not a workspace name"));
    ok(&["destroy", "-auto-approve"]);
}

/// `-lock=false` runs beside a held lock and leaves it alone.
#[test]
fn lock_false_skips_the_lock_and_leaves_it() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    std::fs::write(dir.join("main.sky.hcl"), "cluster \"dev\" {}\n").unwrap();
    assert!(run(dir, &["init"]).status.success());
    let lock = dir.join(".skyform/state.json.lock");
    std::fs::write(
        &lock,
        r#"{"id":"held-elsewhere","who":"alice@ci-runner-7","operation":"apply","created":"2026-11-28T12:00:00Z","version":"0","pid":0}"#,
    )
    .unwrap();
    let out = run(dir, &["plan"]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("alice@ci-runner-7"),
        "{}",
        text(&out.stderr)
    );
    let out = run(dir, &["plan", "-lock=false"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        std::fs::read_to_string(&lock)
            .unwrap()
            .contains("held-elsewhere")
    );
}

/// State surgery takes the lock as Terraform's does: refused while another holds it (after
/// `-lock-timeout`), and done beside it with `-lock=false`.
#[test]
fn state_commands_take_the_lock() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    std::fs::write(dir.join("main.sky.hcl"), "cluster \"dev\" {}\n").unwrap();
    let out = run(dir, &["apply", "-auto-approve"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let lock = dir.join(".skyform/state.json.lock");
    std::fs::write(
        &lock,
        r#"{"id":"held-elsewhere","who":"alice@ci-runner-7","operation":"apply","created":"2026-11-28T12:00:00Z","version":"0","pid":0}"#,
    )
    .unwrap();
    let began = std::time::Instant::now();
    let out = run(
        dir,
        &[
            "state",
            "mv",
            "-lock-timeout=1s",
            "cluster.dev",
            "cluster.prod",
        ],
    );
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("alice@ci-runner-7"),
        "{}",
        text(&out.stderr)
    );
    assert!(
        began.elapsed() >= std::time::Duration::from_secs(1),
        "it waited"
    );
    let list = |dir: &std::path::Path| text(&run(dir, &["state", "list"]).stdout);
    assert_eq!(list(dir), "cluster.dev\n", "nothing moved");
    for (args, after) in [
        (
            &["state", "mv", "-lock=false", "cluster.dev", "cluster.prod"][..],
            "cluster.prod\n",
        ),
        (
            &["state", "mv", "-lock=false", "cluster.prod", "cluster.dev"][..],
            "cluster.dev\n",
        ),
    ] {
        let out = run(dir, args);
        assert!(out.status.success(), "{args:?}: {}", text(&out.stderr));
        assert_eq!(list(dir), after);
    }
    assert!(!run(dir, &["state", "rm", "cluster.dev"]).status.success());
    assert!(
        std::fs::read_to_string(&lock)
            .unwrap()
            .contains("held-elsewhere"),
        "the other run's lock is left alone"
    );
    std::fs::remove_file(&lock).unwrap();
    let out = run(dir, &["destroy", "-auto-approve"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
}

/// `ssh` on a local cluster runs the command in its head node's workdir, exit code and all;
/// `stop` ends its agents and keeps its files, `start` brings it back and jobs run again.
#[test]
fn ssh_stop_and_start_a_local_cluster() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    std::fs::write(dir.join("main.sky.hcl"), "cluster \"dev\" {}\n").unwrap();
    let out = run(dir, &["apply", "-auto-approve"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = run(
        dir,
        &["ssh", "cluster.dev", "--", "sh", "-c", "pwd; exit 7"],
    );
    assert_eq!(out.status.code(), Some(7));
    assert!(
        text(&out.stdout).trim_end().ends_with("node-0/workdir"),
        "{}",
        text(&out.stdout)
    );
    let agent = agent_pid(dir);
    let out = run(dir, &["stop", "cluster.dev"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(!running(agent), "the agent still runs");
    let status = text(&run(dir, &["status"]).stdout);
    assert!(status.contains("STOPPED"), "{status}");
    // A stopped cluster is what the configuration asks for: nothing to change.
    let out = run(dir, &["plan", "-detailed-exitcode"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stdout));
    // A stopped cluster takes no job: apply says so.
    std::fs::write(
        dir.join("main.sky.hcl"),
        "cluster \"dev\" {}\njob \"j\" {\n  cluster = cluster.dev\n  run = \"echo after-start\"\n}\n",
    )
    .unwrap();
    let out = run(dir, &["apply", "-auto-approve"]);
    assert!(!out.status.success());
    assert!(
        text(&out.stdout).contains("the cluster is stopped"),
        "{}",
        text(&out.stdout)
    );
    let out = run(dir, &["start", "cluster.dev"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_ne!(agent_pid(dir), agent);
    assert!(run(dir, &["apply", "-auto-approve"]).status.success());
    wait_until(|| text(&run(dir, &["status"]).stdout).contains("SUCCEEDED"));
    assert!(text(&run(dir, &["logs", "job.j"]).stdout).contains("after-start"));
    let out = run(dir, &["ssh", "job.nope"]);
    assert!(text(&out.stderr).contains("is not a cluster"));
    assert!(run(dir, &["destroy", "-auto-approve"]).status.success());
}

/// Whether a process runs (a zombie nobody reaped yet does not).
fn running(pid: u64) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        !s.rsplit(')')
            .next()
            .unwrap_or("")
            .trim_start()
            .starts_with('Z')
    })
}

fn agent_pid(dir: &Path) -> u64 {
    let state: serde_json::Value =
        serde_json::from_slice(&run(dir, &["state", "pull"]).stdout).unwrap();
    state["resources"]["cluster.dev"]["private"]["agents"][0]["pid"]
        .as_u64()
        .unwrap_or_else(|| panic!("an agent pid in {state}"))
}

fn wait_until(mut cond: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !cond() {
        assert!(std::time::Instant::now() < deadline, "timed out");
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}

/// Autostop: a cluster idle (nothing queued or running) for `idle_minutes` stops itself; with
/// `down`, it removes itself and the next plan creates it again. A minute is a second here.
#[test]
fn autostop_stops_or_tears_down_an_idle_local_cluster() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let apply = |config: &str| {
        std::fs::write(dir.join("main.sky.hcl"), config).unwrap();
        let out = command_in(dir, &["apply", "-auto-approve"])
            .env("SKYFORM_IDLE_MINUTE", "1")
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", text(&out.stderr));
    };
    apply(
        "cluster \"dev\" {\n  autostop {\n    idle_minutes = 2\n  }\n}\njob \"busy\" {\n  cluster = cluster.dev\n  run = \"sleep 3\"\n}\n",
    );
    // The job keeps it busy for 3 s; then 2 s of idleness stop it.
    std::thread::sleep(std::time::Duration::from_secs(2));
    let status = text(&run(dir, &["status"]).stdout);
    assert!(status.contains("UP"), "stopped while a job ran: {status}");
    wait_until(|| text(&run(dir, &["status"]).stdout).contains("STOPPED"));
    let status = text(&run(dir, &["status"]).stdout);
    assert!(status.contains("SUCCEEDED"), "{status}");
    assert!(run(dir, &["destroy", "-auto-approve"]).status.success());

    apply("cluster \"dev\" {\n  autostop {\n    idle_minutes = 1\n    down = true\n  }\n}\n");
    wait_until(|| {
        let out = run(dir, &["plan", "-detailed-exitcode"]);
        out.status.code() == Some(2) && text(&out.stdout).contains("will be created")
    });
}

/// Every command's help: flags with one dash (as the docs and Terraform write them), each with
/// a one-line description.
#[test]
fn help_uses_single_dash_flags_with_descriptions() {
    use clap::CommandFactory;
    fn walk(cmd: &clap::Command, path: Vec<String>, out: &mut Vec<(Vec<String>, clap::Command)>) {
        for sub in cmd.get_subcommands() {
            if sub.is_hide_set() || sub.get_name() == "help" {
                continue;
            }
            let mut p = path.clone();
            p.push(sub.get_name().to_string());
            out.push((p.clone(), sub.clone()));
            walk(sub, p, out);
        }
    }
    let root = skyform::cli::Cli::command();
    let root_help = text(&Command::new(BIN).arg("-help").output().unwrap().stdout);
    assert!(
        root_help.contains("Main commands:\n  init ") && root_help.contains("All other commands:"),
        "grouped as Terraform's: {root_help}"
    );
    for sub in root
        .get_subcommands()
        .filter(|s| !s.is_hide_set() && s.get_name() != "help")
    {
        assert!(
            root_help.contains(&format!("\n  {} ", sub.get_name())),
            "{} missing from the root help",
            sub.get_name()
        );
    }
    let mut all = vec![(Vec::new(), root.clone())];
    walk(&root, Vec::new(), &mut all);
    assert!(all.len() > 30, "{}", all.len());
    for (path, cmd) in &all {
        for arg in cmd.get_arguments() {
            if arg.is_hide_set() {
                continue;
            }
            let help = arg.get_help().map(|h| h.to_string()).unwrap_or_default();
            assert!(
                !help.trim().is_empty() && !help.contains('\n'),
                "skyform {} {}: a one-line description",
                path.join(" "),
                arg.get_id()
            );
        }
        let mut args: Vec<&str> = path.iter().map(String::as_str).collect();
        args.push("-help");
        let out = Command::new(BIN).args(&args).output().unwrap();
        assert_eq!(out.status.code(), Some(0), "{args:?}");
        let help = text(&out.stdout);
        let bad = help.split_whitespace().find(|w| {
            let w = w.trim_start_matches(['[', '(', '`', '\'']);
            w.starts_with("--") && w[2..].starts_with(|c: char| c.is_ascii_alphabetic())
        });
        assert!(
            bad.is_none(),
            "skyform {}: {bad:?} in\n{help}",
            path.join(" ")
        );
        let lines: Vec<&str> = help.lines().collect();
        for (i, l) in lines.iter().enumerate() {
            if !l.trim_start().starts_with('-') {
                continue;
            }
            // The description follows the flag on its line, or (clap's layout for long
            // lines) on the next line, indented further.
            let same_line = l
                .trim()
                .split_once("  ")
                .is_some_and(|(_, d)| !d.trim().is_empty());
            let next_line = lines.get(i + 1).is_some_and(|n| {
                let indent = |s: &str| s.len() - s.trim_start().len();
                !n.trim().is_empty() && !n.trim_start().starts_with('-') && indent(n) > indent(l)
            });
            assert!(
                same_line || next_line,
                "skyform {}: no description for {l:?}",
                path.join(" ")
            );
        }
    }
}

/// `fmt` with Terraform's flags and exit codes: standard input, files, -recursive, -list,
/// -write, and 2 for a file that does not parse (the others are still formatted).
#[test]
fn fmt_flags_as_terraform() {
    use std::io::Write;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    std::fs::create_dir_all(dir.join("sub/.hidden")).unwrap();
    for f in [
        "a.sky.hcl",
        "sub/b.sky.hcl",
        "sub/.hidden/c.sky.hcl",
        "dev.auto.skyvars.hcl",
    ] {
        std::fs::write(dir.join(f), "x=1\nyy=2\n").unwrap();
    }
    std::fs::write(dir.join("notes.txt"), "x=1\n").unwrap();

    let mut c = command_in(dir, &["fmt", "-"]);
    c.stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped());
    let mut child = c.spawn().unwrap();
    child.stdin.take().unwrap().write_all(b"a=1").unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(text(&out.stdout), "a = 1\n");

    let out = run(dir, &["fmt", "-list=false", "-write=false", "a.sky.hcl"]);
    assert_eq!(text(&out.stdout), "x  = 1\nyy = 2\n", "prints the result");
    let out = run(dir, &["fmt", "-check"]);
    assert_eq!(out.status.code(), Some(3));
    assert_eq!(text(&out.stdout), "a.sky.hcl\ndev.auto.skyvars.hcl\n");
    let out = run(dir, &["fmt", "-check", "-recursive"]);
    assert_eq!(
        text(&out.stdout),
        "a.sky.hcl\ndev.auto.skyvars.hcl\nsub/b.sky.hcl\n",
        "hidden directories are skipped"
    );
    let out = run(dir, &["fmt", "-write=false", "-diff", "sub"]);
    assert_eq!(out.status.code(), Some(0));
    assert!(
        text(&out.stdout)
            .starts_with("sub/b.sky.hcl\n--- old/sub/b.sky.hcl\n+++ new/sub/b.sky.hcl\n"),
        "{}",
        text(&out.stdout)
    );
    assert_eq!(
        std::fs::read_to_string(dir.join("sub/b.sky.hcl")).unwrap(),
        "x=1\nyy=2\n"
    );

    std::fs::write(dir.join("bad.sky.hcl"), "x = ").unwrap();
    let out = run(dir, &["fmt", "-recursive"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("bad.sky.hcl"),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(
        std::fs::read_to_string(dir.join("bad.sky.hcl")).unwrap(),
        "x = "
    );
    assert_eq!(
        std::fs::read_to_string(dir.join("sub/b.sky.hcl")).unwrap(),
        "x  = 1\nyy = 2\n",
        "the other files are formatted"
    );
    assert_eq!(run(dir, &["fmt", "missing"]).status.code(), Some(2));
    assert_eq!(run(dir, &["fmt", "notes.txt"]).status.code(), Some(2));
}

/// `-compact-warnings`: warnings without errors as one line each, without their hints.
#[test]
fn compact_warnings() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(tmp.path().join("main.sky.hcl"), CONFIG).unwrap();
    let full = run(tmp.path(), &["plan", "-target=job.a"]);
    assert!(full.status.success(), "{}", text(&full.stderr));
    assert!(
        text(&full.stderr).contains("hint: use -target for exceptional cases only"),
        "{}",
        text(&full.stderr)
    );
    let compact = run(tmp.path(), &["plan", "-target=job.a", "-compact-warnings"]);
    assert!(compact.status.success());
    let err = text(&compact.stderr);
    assert!(
        err.contains("warning: targeting is in effect") && !err.contains("hint:"),
        "{err}"
    );
}

/// `console` without a terminal: one expression a line, or several lines while brackets or a
/// heredoc are open; values printed as Terraform's console prints them.
#[test]
fn console_reads_expressions_from_stdin() {
    use std::io::Write;
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(
        tmp.path().join("main.sky.hcl"),
        format!("{CONFIG}\nvariable \"n\" {{\n  type    = number\n  default = 2\n}}\n"),
    )
    .unwrap();
    let mut c = command_in(tmp.path(), &["console"]);
    c.stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = c.spawn().unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"var.n * 3\n[\n  \"a\\nb\",\n]\n<<EOT\nx\nEOT\njob.a.run\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(
        text(&out.stdout),
        "6\n[\n  <<-EOT\n  a\n  b\n  EOT,\n]\n<<EOT\nx\n\nEOT\n\"true\"\n"
    );
}

/// `init -migrate-state` holds both backends' locks: refused while another run holds the
/// old one, and done beside it with `-lock=false`, as Terraform's.
#[test]
fn migrate_state_takes_the_lock_unless_told_not_to() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    std::fs::write(dir.join("main.sky.hcl"), "cluster \"dev\" {}\n").unwrap();
    let out = run(dir, &["init"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        dir.join(".skyform/state.json").exists(),
        "init made a state"
    );
    std::fs::write(
        dir.join("main.sky.hcl"),
        "skyform {\n  state \"local\" {\n    path = \"moved.json\"\n  }\n}\n\ncluster \"dev\" {}\n",
    )
    .unwrap();
    std::fs::write(
        dir.join(".skyform/state.json.lock"),
        r#"{"id":"held-elsewhere","who":"alice@ci-runner-7","operation":"apply","created":"2026-11-28T12:00:00Z","version":"0","pid":0}"#,
    )
    .unwrap();
    let out = run(dir, &["init", "-migrate-state", "-lock-timeout=1s"]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("alice@ci-runner-7"),
        "{}",
        text(&out.stderr)
    );
    assert!(!dir.join("moved.json").exists(), "nothing copied");
    let out = run(dir, &["init", "-migrate-state", "-lock=false"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(dir.join("moved.json").exists(), "copied beside the lock");
}
