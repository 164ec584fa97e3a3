//! Jobs and managed jobs on local clusters: dependencies, sizes, sweeps, sandboxes, workdirs.

use super::*;

#[test]
fn failed_dependency_cancels_the_dependent_job() {
    let sb = Workdir::with_files(&[(
        "main.sky.hcl",
        "cluster \"dev\" {}\n\njob \"first\" {\n  cluster = cluster.dev\n  run     = \"exit 3\"\n}\n\njob \"second\" {\n  cluster    = cluster.dev\n  depends_on = [job.first]\n  run        = \"echo never\"\n}\n",
    )]);
    let out = sb.output(&["apply", "-auto-approve", "-wait"]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "-wait fails when a job fails: {}",
        text(&out.stdout)
    );
    let statuses = sb.wait_jobs_done(Duration::from_secs(20));
    assert_eq!(
        statuses,
        vec![
            ("job.first".to_string(), "FAILED".to_string()),
            ("job.second".to_string(), "CANCELLED".to_string())
        ]
    );
    let plan = text(&sb.output(&["plan"]).stdout);
    assert!(
        plan.contains("job.first failed (exit code 3); run it again with -replace=job.first"),
        "{plan}"
    );
    sb.stdout(&["destroy", "-auto-approve"]);
}

#[test]
fn a_job_too_big_for_its_cluster_is_a_plan_error() {
    let sb = Workdir::with_files(&[(
        "main.sky.hcl",
        "cluster \"dev\" {}\n\njob \"big\" {\n  cluster = cluster.dev\n  run     = \"true\"\n  resources {\n    cpus = \"100000\"\n  }\n}\n",
    )]);
    let out = sb.output(&["plan"]);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(
        err.contains("job.big does not fit on its cluster") && err.contains("main.sky.hcl:3:1"),
        "{err}"
    );
}

/// Every load balancer listens where the controller runs: two services on one port are a
/// plan error that names both, and another port for one of them clears it.
#[test]
fn two_services_on_one_endpoint_port_are_a_plan_error() {
    let service = |name: &str, ports: &str| {
        format!("service \"{name}\" {{\n  run = \"true\"\n  resources {{\n{ports}  }}\n}}\n\n")
    };
    let sb = Workdir::with_files(&[(
        "main.sky.hcl",
        &format!("{}{}", service("a", ""), service("b", "")),
    )]);
    let out = sb.output(&["plan"]);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(
        err.contains("service.b would serve at port 8000, which service.a already serves at")
            && err.contains("main.sky.hcl:7:1")
            && err.contains("ports = [8001]"),
        "{err}"
    );
    sb.write(
        "main.sky.hcl",
        &format!(
            "{}{}",
            service("a", ""),
            service("b", "    ports = [8001]\n")
        ),
    );
    let out = sb.output(&["plan"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
}

#[test]
fn sweep_module_runs_managed_jobs_on_temporary_clusters() {
    let sb = Workdir::with_files(&[]);
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    copy_dir(
        &root.join("examples/sweep"),
        &sb.path().join("examples/sweep"),
    );
    copy_dir(
        &root.join("modules/sweep"),
        &sb.path().join("modules/sweep"),
    );
    let dir = sb.path().join("examples/sweep");
    let run = |args: &[&str]| {
        Command::new(BIN)
            .arg(format!("-chdir={}", dir.display()))
            .args(args)
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .output()
            .expect("run")
    };
    let out = run(&["apply", "-auto-approve", "-wait"]);
    assert!(
        out.status.success(),
        "{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains("module.sweep.managed_job.run[\"3e-4\"]: SUCCEEDED"),
        "{stdout}"
    );
    let logs = text(&run(&["logs", "module.sweep.managed_job.run[\"1e-3\"]"]).stdout);
    assert!(logs.contains("final loss for lr=1e-3"), "{logs}");
    // Each job's temporary cluster is torn down when the job ends.
    wait_for(
        "temporary clusters to be torn down",
        Duration::from_secs(10),
        || processes_mentioning(&dir).is_empty(),
    );
    assert_eq!(
        run(&["plan", "-detailed-exitcode"]).status.code(),
        Some(0),
        "finished managed jobs are a no-op"
    );
    assert!(run(&["destroy", "-auto-approve"]).status.success());
    assert_eq!(
        std::fs::read_dir(dir.join(".skyform/local"))
            .expect("local")
            .count(),
        0
    );
}

#[test]
fn a_relative_chdir_records_absolute_sandboxes() {
    let sb = Workdir::with_files(&[("main.sky.hcl", "cluster \"dev\" {}\n")]);
    let parent = sb.path().parent().expect("parent");
    let name = sb
        .path()
        .file_name()
        .expect("name")
        .to_string_lossy()
        .to_string();
    let out = Command::new(BIN)
        .current_dir(parent)
        .arg(format!("-chdir={name}"))
        .args(["apply", "-auto-approve"])
        .output()
        .expect("apply");
    assert!(out.status.success(), "{}", text(&out.stderr));
    let dir = sb.stored_state()["resources"]["cluster.dev"]["private"]["dir"]
        .as_str()
        .expect("dir")
        .to_string();
    assert!(
        Path::new(&dir).is_absolute() && Path::new(&dir).is_dir(),
        "{dir}"
    );
    // Seen from anywhere else, the cluster is still there.
    assert_eq!(
        sb.output(&["plan", "-detailed-exitcode"]).status.code(),
        Some(0)
    );
    sb.stdout(&["destroy", "-auto-approve"]);
}

#[test]
fn a_job_after_a_failed_managed_job_is_cancelled() {
    let sb = Workdir::with_files(&[(
        "main.sky.hcl",
        "cluster \"c\" {}\n\nmanaged_job \"fail\" {\n  run = \"echo failing; exit 7\"\n}\n\njob \"after\" {\n  cluster    = cluster.c\n  run        = \"echo after\"\n  depends_on = [managed_job.fail]\n}\n",
    )]);
    sb.stdout(&["apply", "-auto-approve"]);
    let statuses = sb.wait_jobs_done(Duration::from_secs(20));
    assert_eq!(
        statuses,
        vec![("job.after".to_string(), "CANCELLED".to_string())]
    );
    sb.stdout(&["destroy", "-auto-approve"]);
    // The controller apply started stops by itself once nothing is left to watch.
    wait_for("the controller to stop", Duration::from_secs(30), || {
        sb.processes().is_empty()
    });
}

#[test]
fn workdir_changes_are_mirrored_to_the_nodes() {
    let sb = Workdir::with_files(&[
        (
            "main.sky.hcl",
            "cluster \"c\" {\n  workdir = \"./src\"\n}\n",
        ),
        ("src/a.txt", "a"),
        ("src/b.txt", "b"),
    ]);
    sb.stdout(&["apply", "-auto-approve"]);
    let dir = sb.stored_state()["resources"]["cluster.c"]["private"]["dir"]
        .as_str()
        .expect("dir")
        .to_string();
    let node = Path::new(&dir).join("node-0/workdir");
    assert!(node.join("b.txt").exists());
    // Remove a file and add a link: both change the content hash and reach the node.
    std::fs::remove_file(sb.path().join("src/b.txt")).expect("rm");
    std::os::unix::fs::symlink("a.txt", sb.path().join("src/l")).expect("ln");
    let plan = sb.output(&["plan", "-detailed-exitcode"]);
    assert_eq!(plan.status.code(), Some(2), "{}", text(&plan.stdout));
    assert!(
        text(&plan.stdout).contains("will be updated in place"),
        "{}",
        text(&plan.stdout)
    );
    sb.stdout(&["apply", "-auto-approve"]);
    assert!(
        !node.join("b.txt").exists(),
        "deleted files are deleted on the nodes"
    );
    assert_eq!(
        std::fs::read_link(node.join("l")).expect("link"),
        Path::new("a.txt")
    );
    // Retargeting the link is a change too.
    std::fs::remove_file(sb.path().join("src/l")).expect("rm");
    std::os::unix::fs::symlink("/etc", sb.path().join("src/l")).expect("ln");
    assert_eq!(
        sb.output(&["plan", "-detailed-exitcode"]).status.code(),
        Some(2)
    );
    sb.stdout(&["destroy", "-auto-approve"]);
}
