//! The plan, review and apply workflow on this machine: plans, locks, CI, state surgery, outputs, import.

use super::*;

#[test]
fn quickstart_lifecycle() {
    let sb = from_example("quickstart");
    let out = sb.stdout(&["apply", "-auto-approve"]);
    assert!(out.contains("Apply complete! Resources: 3 added"), "{out}");
    assert!(out.contains("head_ip = \"127.0.0.1\""), "{out}");
    let mut serials = vec![sb.serial()];

    let statuses = sb.wait_jobs_done(Duration::from_secs(30));
    assert!(
        statuses.iter().all(|(_, s)| s == "SUCCEEDED"),
        "{statuses:?}"
    );
    let logs = sb.stdout(&["logs", "job.train"]);
    assert!(
        logs.contains("(rank 1) rank 1 of 2 training for 3 epochs"),
        "{logs}"
    );
    assert!(logs.contains("epoch 3 loss"), "{logs}");
    assert!(
        sb.stdout(&["logs", "job.prepare"])
            .contains("preparing dataset tiny"),
        "the cluster's envs reach the job"
    );
    // setup ran on every node of the sandbox
    let local = sb.path().join(".skyform/local");
    let cluster_dir = std::fs::read_dir(&local)
        .expect("sandboxes")
        .next()
        .expect("one sandbox")
        .expect("entry")
        .path();
    for node in ["node-0", "node-1"] {
        assert!(
            cluster_dir.join(node).join("workdir/setup.done").exists(),
            "setup ran on {node}"
        );
    }

    // Nothing changed: the plan is empty.
    let plan = sb.output(&["plan", "-detailed-exitcode"]);
    assert_eq!(
        plan.status.code(),
        Some(0),
        "{}{}",
        text(&plan.stdout),
        text(&plan.stderr)
    );
    assert!(text(&plan.stdout).contains("No changes."));

    // Editing a job's run: a replace with a line diff, exit 2.
    let main = sb.path().join("main.sky.hcl");
    let cfg = std::fs::read_to_string(&main).expect("config");
    std::fs::write(&main, cfg.replace("default = 3", "default = 4")).expect("edit");
    let plan = sb.output(&["plan", "-detailed-exitcode"]);
    let ptext = text(&plan.stdout);
    assert_eq!(plan.status.code(), Some(2), "{ptext}");
    assert!(ptext.contains("# job.train must be replaced"), "{ptext}");
    assert!(ptext.contains("# (run forces replacement)"), "{ptext}");
    assert!(
        ptext.contains("-     sh train.sh 3") && ptext.contains("+     sh train.sh 4"),
        "line diff:\n{ptext}"
    );
    assert!(
        ptext.contains("Plan: 0 to add, 0 to change, 1 to replace, 0 to destroy."),
        "{ptext}"
    );
    serials.push(sb.serial());

    sb.stdout(&["apply", "-auto-approve"]);
    serials.push(sb.serial());
    sb.wait_jobs_done(Duration::from_secs(30));
    assert!(
        sb.stdout(&["logs", "job.train"])
            .contains("training for 4 epochs")
    );
    assert_eq!(
        sb.output(&["plan", "-detailed-exitcode"]).status.code(),
        Some(0),
        "apply converged"
    );

    let before_destroy = sb.processes();
    assert!(
        !before_destroy.is_empty(),
        "node agents run while the cluster exists"
    );
    let out = sb.stdout(&["destroy", "-auto-approve"]);
    assert!(
        out.contains("Destroy complete! Resources: 3 destroyed."),
        "{out}"
    );
    serials.push(sb.serial());
    assert!(
        sb.processes().is_empty(),
        "no process left after destroy: {:?}",
        sb.processes()
    );
    assert_eq!(
        std::fs::read_dir(&local).expect("local dir").count(),
        0,
        "no sandbox left"
    );
    assert!(
        sb.stored_state()["resources"]
            .as_object()
            .is_some_and(|r| r.is_empty())
    );
    for w in serials.windows(2) {
        assert!(
            w[0] < w[1] || (w[0] == w[1] && w[0] == serials[1]),
            "serial only grows: {serials:?}"
        );
    }
    assert!(serials.last() > serials.first());
}

const SLOW_SETUP: &str = r#"
cluster "dev" {
  setup = "sleep 1.5"
}

job "hello" {
  cluster = cluster.dev
  run     = "echo hello"
}
"#;

#[test]
fn stale_and_foreign_plans_are_refused() {
    let sb = Workdir::with_files(&[(
        "main.sky.hcl",
        "variable \"n\" {\n  default = \"1\"\n}\n\ncluster \"dev\" {}\n\njob \"a\" {\n  cluster = cluster.dev\n  run     = \"echo ${var.n}\"\n}\n",
    )]);
    sb.stdout(&["apply", "-auto-approve"]);
    // Relative to -chdir, as every path is.
    let plan_s = "plan.json".to_string();
    sb.stdout(&["plan", "-var", "n=2", "-out", &plan_s]);
    // show -json reads the saved plan
    let shown: Value =
        serde_json::from_str(&sb.stdout(&["show", "-json", &plan_s])).expect("show -json");
    assert_eq!(
        shown["resource_changes"][1]["actions"],
        serde_json::json!(["delete", "create"])
    );
    // Someone else applies first: the saved plan is stale.
    sb.stdout(&["apply", "-auto-approve", "-var", "n=3"]);
    let out = sb.output(&["apply", &plan_s]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("stale plan"),
        "{}",
        text(&out.stderr)
    );

    // A plan made from another configuration is refused with its own message.
    sb.stdout(&["plan", "-out", &plan_s]);
    let main = sb.path().join("main.sky.hcl");
    let cfg = std::fs::read_to_string(&main).expect("config");
    std::fs::write(&main, cfg.replace("echo", "printf")).expect("edit");
    let out = sb.output(&["apply", &plan_s]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("the configuration changed since the plan was made"),
        "{}",
        text(&out.stderr)
    );

    // A plan from another skyform version is refused with its own message.
    sb.stdout(&["plan", "-out", &plan_s]);
    let path = sb.path().join(&plan_s);
    let saved = std::fs::read_to_string(&path).expect("plan");
    let other = saved.replace(
        &format!("\"skyform_version\":\"{}\"", env!("CARGO_PKG_VERSION")),
        "\"skyform_version\":\"0.0.1\"",
    );
    assert_ne!(saved, other, "the plan records its version");
    std::fs::write(&path, other).expect("edit");
    let out = sb.output(&["apply", &plan_s]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("the plan was made by skyform 0.0.1"),
        "{}",
        text(&out.stderr)
    );

    // A fresh saved plan applies exactly.
    sb.stdout(&["plan", "-out", &plan_s]);
    let out = sb.stdout(&["apply", &plan_s]);
    assert!(out.contains("1 replaced"), "{out}");
    sb.stdout(&["destroy", "-auto-approve"]);
}

/// The pull-request flow, as CI runs it: a markdown plan for the review, the saved plan
/// read back as JSON (valid by the published schema), applied with `-json` events and
/// `-check-serial`, then refused as stale; drift found with `-refresh-only` and recorded
/// only by its apply.
#[test]
fn review_then_apply_from_ci() {
    let sb = Workdir::with_files(&[(
        "main.sky.hcl",
        "cluster \"dev\" {}\n\njob \"a\" {\n  cluster = cluster.dev\n  run     = \"echo reviewed\"\n}\n",
    )]);
    let md = sb.stdout(&["plan", "-format", "markdown", "-out", "plan.json"]);
    assert!(md.starts_with("### skyform plan"), "{md}");
    assert!(
        md.contains("<details><summary>") && md.contains("plan digest"),
        "{md}"
    );
    assert!(
        !md.contains("hint:"),
        "markdown is the comment, nothing else: {md}"
    );

    let shown: Value = serde_json::from_str(&sb.stdout(&["show", "-json", "plan.json"])).unwrap();
    let schema: Value = serde_json::from_str(
        &std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/schema/plan-v1.schema.json"),
        )
        .unwrap(),
    )
    .unwrap();
    let validator = jsonschema::draft202012::new(&schema).unwrap();
    assert!(validator.is_valid(&shown), "show -json follows the schema");
    let serial = shown["serial"].as_u64().unwrap();

    // The state moved: -check-serial refuses before anything is done.
    let out = sb.output(&["apply", "-check-serial", "999", "plan.json"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("not 999 (-check-serial)"),
        "{}",
        text(&out.stderr)
    );

    let out = sb.stdout(&[
        "apply",
        "-json",
        "-check-serial",
        &serial.to_string(),
        "plan.json",
    ]);
    let events: Vec<Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    let kinds: Vec<&str> = events.iter().map(|e| e["type"].as_str().unwrap()).collect();
    for k in ["planned", "attempt", "applied", "state", "summary"] {
        assert!(kinds.contains(&k), "{k} in {kinds:?}");
    }
    assert_eq!(kinds.first(), Some(&"planned"));
    assert_eq!(kinds.last(), Some(&"summary"));
    let summary = events.last().unwrap();
    assert_eq!(summary["ok"], true, "{summary}");
    assert_eq!(summary["added"], 2, "{summary}");
    assert!(events.iter().all(|e| e["timestamp"].is_string()));

    // The same plan again: stale.
    let out = sb.output(&["apply", "plan.json"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("stale plan"),
        "{}",
        text(&out.stderr)
    );

    // Someone removes the sandbox by hand: refresh-only reports it, changes nothing...
    sb.wait_jobs_done(Duration::from_secs(30));
    let dir = sb.stored_state()["resources"]["cluster.dev"]["private"]["dir"]
        .as_str()
        .unwrap()
        .to_string();
    // A refresh-only plan saved before that records only what it showed: nothing. Applied
    // after the removal, it is refused rather than recording what nobody reviewed.
    sb.stdout(&["plan", "-refresh-only", "-out", "quiet.json"]);
    std::fs::remove_dir_all(&dir).unwrap();
    let out = sb.output(&["apply", "quiet.json"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("more changed outside skyform since the refresh-only plan"),
        "{}",
        text(&out.stderr)
    );
    // Its agents notice and end; from then on refresh finds the cluster gone.
    wait_for("the agents to end", Duration::from_secs(10), || {
        sb.processes().is_empty()
    });
    let before = sb.serial();
    let out = sb.output(&["plan", "-refresh-only", "-detailed-exitcode"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stdout));
    let plan = text(&out.stdout);
    assert!(
        plan.contains("was removed") && plan.contains("refresh-only"),
        "{plan}"
    );
    assert!(
        !plan.contains("will perform the following actions"),
        "{plan}"
    );
    assert_eq!(sb.serial(), before, "plan writes nothing");
    // ... and its apply records it in state without creating anything.
    let out = sb.stdout(&["apply", "-refresh-only", "-auto-approve"]);
    assert!(out.contains("no resource was touched"), "{out}");
    assert_eq!(sb.serial(), before + 1);
    assert!(
        sb.stored_state()["resources"]["cluster.dev"].is_null(),
        "the state forgets what is gone"
    );
    assert!(!Path::new(&dir).exists(), "refresh-only created nothing");
    let out = sb.output(&["plan", "-refresh-only", "-detailed-exitcode"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stdout));
    sb.stdout(&["destroy", "-auto-approve"]);
}

#[test]
fn concurrent_applies_one_waits_or_fails_naming_the_holder() {
    let sb = Workdir::with_files(&[("main.sky.hcl", SLOW_SETUP)]);
    let a = sb
        .command(&["apply", "-auto-approve"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn a");
    let b = sb
        .command(&["apply", "-auto-approve"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn b");
    let a = a.wait_with_output().expect("a");
    let b = b.wait_with_output().expect("b");
    let results = [(&a, "a"), (&b, "b")];
    let winners = results.iter().filter(|(o, _)| o.status.success()).count();
    assert_eq!(
        winners,
        1,
        "exactly one apply wins:\na: {}{}\nb: {}{}",
        text(&a.stdout),
        text(&a.stderr),
        text(&b.stdout),
        text(&b.stderr)
    );
    let loser = results
        .iter()
        .find(|(o, _)| !o.status.success())
        .expect("a loser")
        .0;
    let err = text(&loser.stderr);
    assert!(
        err.contains("the state is locked")
            && err.contains("(apply)")
            && err.contains("force-unlock"),
        "{err}"
    );
    // Nothing corrupted: the state is whole and the plan is empty.
    assert_eq!(
        sb.stored_state()["resources"].as_object().map(|r| r.len()),
        Some(2)
    );
    assert_eq!(
        sb.output(&["plan", "-detailed-exitcode"]).status.code(),
        Some(0)
    );
    // With a lock timeout, the second one waits instead.
    sb.stdout(&["destroy", "-auto-approve"]);
    let a = sb
        .command(&["apply", "-auto-approve"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn a");
    wait_for("the first apply to lock", Duration::from_secs(10), || {
        sb.path().join(".skyform/state.json.lock").exists()
    });
    let b = sb.output(&["apply", "-auto-approve", "-lock-timeout", "30s"]);
    assert!(b.status.success(), "{}", text(&b.stderr));
    assert!(a.wait_with_output().expect("a").status.success());
    sb.stdout(&["destroy", "-auto-approve"]);
}

#[test]
fn state_surgery_and_outputs() {
    let sb = Workdir::with_files(&[(
        "main.sky.hcl",
        "variable \"token\" {\n  default   = \"hunter2\"\n  sensitive = true\n}\n\ncluster \"dev\" {}\n\njob \"a\" {\n  cluster = cluster.dev\n  run     = \"true\"\n  secrets = { TOKEN = var.token }\n}\n\noutput \"ip\" {\n  value = cluster.dev.head_ip\n}\n\noutput \"token\" {\n  value     = var.token\n  sensitive = true\n}\n",
    )]);
    sb.stdout(&["apply", "-auto-approve"]);
    assert_eq!(sb.stdout(&["state", "list"]), "cluster.dev\njob.a\n");
    assert_eq!(sb.stdout(&["output", "ip", "-raw"]), "127.0.0.1");
    let all = sb.stdout(&["output"]);
    assert!(
        all.contains("token = (sensitive value)") && !all.contains("hunter2"),
        "{all}"
    );
    for cmd in [
        vec!["state", "show", "job.a"],
        vec!["show", "-json"],
        vec!["show"],
    ] {
        let out = sb.stdout(&cmd);
        assert!(!out.contains("hunter2"), "{cmd:?} shows a secret:\n{out}");
    }
    let pulled = sb.stdout(&["state", "pull"]);
    let serial = sb.serial();
    sb.stdout(&["state", "mv", "job.a", "job.b"]);
    assert_eq!(sb.stdout(&["state", "list"]), "cluster.dev\njob.b\n");
    assert_eq!(sb.serial(), serial + 1);
    // Pushing an older copy is refused; -force allows it.
    let file = sb.path().join("old.json");
    std::fs::write(&file, pulled).expect("write");
    let f = file.to_string_lossy().to_string();
    let out = sb.output(&["state", "push", &f]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("not above the state's"),
        "{}",
        text(&out.stderr)
    );
    sb.stdout(&["state", "push", "-force", &f]);
    assert_eq!(sb.stdout(&["state", "list"]), "cluster.dev\njob.a\n");
    sb.stdout(&["state", "rm", "job.a"]);
    assert_eq!(sb.stdout(&["state", "list"]), "cluster.dev\n");
    // The lock: a held lock is reported and force-unlock removes it only with the right id.
    let lock = sb.path().join(".skyform/state.json.lock");
    std::fs::write(&lock, r#"{"id":"1f3c9a2e-0000","who":"alice@ci-runner-7","operation":"apply","created":"2026-11-28T12:03:11Z","version":"0.1.0","pid":0}"#).expect("lock");
    let out = sb.output(&["plan"]);
    let err = text(&out.stderr);
    assert!(
        err.contains("alice@ci-runner-7 (apply)") && err.contains("force-unlock 1f3c9a2e-0000"),
        "{err}"
    );
    assert_eq!(
        sb.output(&["force-unlock", "ffff", "-force"]).status.code(),
        Some(1)
    );
    sb.stdout(&["force-unlock", "1f3c9a2e", "-force"]);
    sb.stdout(&["destroy", "-auto-approve"]);
}

#[test]
fn values_unknown_at_plan_time_are_filled_in_at_apply() {
    let sb = Workdir::with_files(&[(
        "main.sky.hcl",
        "cluster \"dev\" {}\n\njob \"ping\" {\n  cluster = cluster.dev\n  run     = \"echo head is ${cluster.dev.head_ip}\"\n}\n",
    )]);
    let plan = sb.stdout(&["plan"]);
    assert!(plan.contains("run       = (known after apply)"), "{plan}");
    sb.stdout(&["apply", "-auto-approve"]);
    sb.wait_jobs_done(Duration::from_secs(20));
    assert_eq!(sb.stdout(&["logs", "job.ping"]), "head is 127.0.0.1\n");
    assert_eq!(
        sb.output(&["plan", "-detailed-exitcode"]).status.code(),
        Some(0)
    );
    sb.stdout(&["destroy", "-auto-approve"]);
}

#[test]
fn prevent_destroy_blocks_destroy_and_env_flags_read_like_booleans() {
    let sb = Workdir::with_files(&[(
        "main.sky.hcl",
        "cluster \"keep\" {\n  lifecycle {\n    prevent_destroy = true\n  }\n}\n",
    )]);
    let out = sb
        .command(&["apply"])
        .env("SKYFORM_AUTO_APPROVE", "1")
        .env("SKYFORM_NO_COLOR", "1")
        .output()
        .expect("apply");
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = sb.output(&["destroy", "-auto-approve"]);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(
        err.contains("cluster.keep has lifecycle.prevent_destroy, but the plan would destroy it"),
        "{err}"
    );
    assert!(!err.contains("\nerror: \n"), "no empty error line: {err}");
    assert_eq!(
        sb.stored_state()["resources"].as_object().map(|r| r.len()),
        Some(1),
        "nothing was destroyed"
    );
    // Lift the protection, then destroy.
    std::fs::write(sb.path().join("main.sky.hcl"), "cluster \"keep\" {}\n").expect("edit");
    sb.stdout(&["destroy", "-auto-approve"]);
    assert!(sb.processes().is_empty());
}

/// An `import` block takes a running cluster that the state forgot back into state: the
/// plan says it will be imported, apply records it (no new sandbox), and it is managed as
/// before — its jobs run, destroy stops it.
#[test]
fn import_adopts_a_running_cluster() {
    let cluster = "cluster \"dev\" {\n  num_nodes = 2\n}\n";
    let sb = Workdir::with_files(&[("main.sky.hcl", cluster)]);
    sb.stdout(&["apply", "-auto-approve"]);
    let dir = sb.stored_state()["resources"]["cluster.dev"]["private"]["dir"]
        .as_str()
        .unwrap()
        .to_string();
    sb.stdout(&["state", "rm", "cluster.dev"]);
    let relative = Path::new(&dir)
        .strip_prefix(sb.path().canonicalize().unwrap())
        .unwrap()
        .display()
        .to_string();
    std::fs::write(
        sb.path().join("main.sky.hcl"),
        format!(
            "{cluster}\nimport {{\n  to = cluster.dev\n  id = \"local:{relative}\"\n}}\n\njob \"j\" {{\n  cluster = cluster.dev\n  run     = \"echo on the imported cluster\"\n}}\n"
        ),
    )
    .unwrap();
    let plan = sb.stdout(&["plan"]);
    assert!(plan.contains("# cluster.dev will be imported"), "{plan}");
    assert!(
        plan.contains("Plan: 1 to import, 1 to add"),
        "the job is new, the cluster is not: {plan}"
    );
    let json: Value = serde_json::from_str(&sb.stdout(&["plan", "-json"])).unwrap();
    let change = json["resource_changes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["address"] == "cluster.dev")
        .unwrap()
        .clone();
    assert_eq!(change["actions"], serde_json::json!(["no-op"]));
    assert_eq!(
        change["importing"]["id"],
        format!("local:{relative}").as_str()
    );
    let out = sb.stdout(&["apply", "-auto-approve"]);
    assert!(out.contains("1 imported, 1 added"), "{out}");
    let state = sb.stored_state();
    assert_eq!(
        state["resources"]["cluster.dev"]["private"]["dir"],
        dir.as_str()
    );
    let jobs = sb.wait_jobs_done(Duration::from_secs(30));
    assert_eq!(jobs, [("job.j".to_string(), "SUCCEEDED".to_string())]);
    assert!(
        sb.stdout(&["logs", "job.j"])
            .contains("on the imported cluster")
    );
    let out = sb.output(&["plan", "-detailed-exitcode"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stdout));

    // The same sandbox under a second address is refused: destroying one would take both.
    let config = std::fs::read_to_string(sb.path().join("main.sky.hcl")).unwrap();
    std::fs::write(
        sb.path().join("main.sky.hcl"),
        format!(
            "{config}\ncluster \"twin\" {{\n  num_nodes = 2\n}}\n\nimport {{\n  to = cluster.twin\n  id = \"local:{relative}\"\n}}\n"
        ),
    )
    .unwrap();
    let out = sb.output(&["plan"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr)
            .contains("cannot import cluster.twin: cluster.dev is that cluster already"),
        "{}",
        text(&out.stderr)
    );
    std::fs::write(sb.path().join("main.sky.hcl"), config).unwrap();
    sb.stdout(&["destroy", "-auto-approve"]);
    assert!(
        !Path::new(&dir).exists(),
        "destroy removes the imported sandbox"
    );

    // An id that finds nothing is a plan error at the import block.
    std::fs::write(
        sb.path().join("main.sky.hcl"),
        format!("{cluster}\nimport {{\n  to = cluster.dev\n  id = \"local:{relative}\"\n}}\n"),
    )
    .unwrap();
    let out = sb.output(&["plan"]);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(
        err.contains("cannot import cluster.dev: no sandbox at")
            && err.contains("main.sky.hcl:5:1"),
        "{err}"
    );
}
