//! Kills, interrupts and vanished parts during an apply: nothing is lost track of.

use super::*;

fn twenty_jobs() -> String {
    let mut s = String::from(
        "cluster \"dev\" {\n  num_nodes = 2\n}\n\njob \"step\" {\n  for_each = toset([",
    );
    let keys: Vec<String> = (0..20).map(|i| format!("\"{i:02}\"")).collect();
    s.push_str(&keys.join(", "));
    s.push_str("])\n  cluster = cluster.dev\n  run     = \"echo step ${each.key}\"\n}\n");
    s
}

/// Counts queue records per job name across all sandboxes.
fn queue_records(sb: &Workdir) -> std::collections::BTreeMap<String, usize> {
    let mut m = std::collections::BTreeMap::new();
    let local = sb.path().join(".skyform/local");
    for c in std::fs::read_dir(local)
        .expect("local")
        .filter_map(Result::ok)
    {
        let Ok(rd) = std::fs::read_dir(c.path().join("queue")) else {
            continue;
        };
        for q in rd.filter_map(Result::ok) {
            if q.path().extension().is_some_and(|e| e == "json") {
                let v: Value =
                    serde_json::from_slice(&std::fs::read(q.path()).expect("queue record"))
                        .expect("json");
                *m.entry(v["name"].as_str().unwrap_or_default().to_string())
                    .or_insert(0) += 1;
            }
        }
    }
    m
}

#[test]
fn kill_9_mid_apply_then_apply_converges() {
    let sb = Workdir::with_files(&[("main.sky.hcl", &twenty_jobs())]);
    let mut child = sb
        .command(&["apply", "-auto-approve", "-parallelism", "1"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn");
    // Kill once some, but not all, jobs are recorded.
    wait_for("jobs to be recorded", Duration::from_secs(30), || {
        read_state(sb.path())
            .and_then(|v| {
                v["resources"]
                    .as_object()
                    .map(|r| r.keys().filter(|k| k.starts_with("job.")).count())
            })
            .is_some_and(|n| n >= 3)
    });
    child.kill().expect("kill -9");
    child.wait().expect("reap");
    let recorded = sb.stored_state()["resources"]
        .as_object()
        .map(|r| r.len())
        .unwrap_or(0);

    let out = sb.stdout(&["apply", "-auto-approve"]);
    assert!(
        out.contains("Apply complete!") || out.contains("No changes."),
        "{out}"
    );
    let statuses = sb.wait_jobs_done(Duration::from_secs(60));
    assert_eq!(statuses.len(), 20, "every job is in state: {statuses:?}");
    assert!(
        statuses.iter().all(|(_, s)| s == "SUCCEEDED"),
        "{statuses:?}"
    );
    let records = queue_records(&sb);
    assert_eq!(records.len(), 20, "{records:?}");
    assert!(
        records.values().all(|n| *n == 1),
        "no job was submitted twice: {records:?} (killed with {recorded} resources recorded)"
    );
    assert_eq!(
        sb.output(&["plan", "-detailed-exitcode"]).status.code(),
        Some(0),
        "converged"
    );
    sb.stdout(&["destroy", "-auto-approve"]);
    assert!(
        sb.processes().is_empty(),
        "no orphan process: {:?}",
        sb.processes()
    );
    assert_eq!(
        std::fs::read_dir(sb.path().join(".skyform/local"))
            .expect("local")
            .count(),
        0
    );
}

/// Whether process `pid` has a handler for SIGINT (its `SigCgt` mask in /proc).
fn catches_sigint(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            let mask = s.lines().find_map(|l| l.strip_prefix("SigCgt:"))?;
            u64::from_str_radix(mask.trim(), 16).ok()
        })
        // SIGINT is signal 2: bit 1 of the mask.
        .is_some_and(|mask| mask & (1 << 1) != 0)
}

/// Ctrl-C mid-apply: the call in flight finishes and is recorded, nothing new starts, the
/// lock is released. Nothing here depends on the machine's speed: the cluster's setup waits
/// for a gate the test opens only once skyform has said it got the interrupt, and the
/// interrupt is sent only once skyform catches SIGINT (before, it would simply die).
#[test]
fn ctrl_c_mid_apply_leaves_a_valid_state() {
    let sb = Workdir::new();
    let gate = sb.path().join("gate");
    sb.write_config(&format!(
        "cluster \"dev\" {{\n  setup = \"i=0; while [ ! -e '{}' ] && [ $i -lt 1200 ]; do sleep 0.05; i=$((i+1)); done\"\n}}\n\n\
         job \"hello\" {{\n  cluster = cluster.dev\n  run     = \"echo hello\"\n}}\n",
        gate.display()
    ));
    let mut child = sb
        .command(&["apply", "-auto-approve"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let stdout = child.stdout.take().expect("stdout");
    let stdout = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = std::io::Read::read_to_string(&mut std::io::BufReader::new(stdout), &mut s);
        s
    });
    let (said, heard) = std::sync::mpsc::channel();
    let stderr = child.stderr.take().expect("stderr");
    std::thread::spawn(move || {
        for line in std::io::BufRead::lines(std::io::BufReader::new(stderr)).map_while(Result::ok) {
            let _ = said.send(line);
        }
    });
    wait_for(
        "the cluster to be recorded as being created",
        Duration::from_secs(30),
        || {
            read_state(sb.path())
                .is_some_and(|v| v["resources"]["cluster.dev"]["status"] == "creating")
        },
    );
    wait_for("skyform to catch SIGINT", Duration::from_secs(30), || {
        catches_sigint(child.id())
    });
    let status = Command::new("kill")
        .arg("-INT")
        .arg(child.id().to_string())
        .status()
        .expect("kill -INT");
    assert!(status.success());
    let mut stderr_lines = Vec::new();
    loop {
        let line = heard
            .recv_timeout(Duration::from_secs(30))
            .unwrap_or_else(|e| panic!("{e}: no word of the interrupt: {stderr_lines:?}"));
        let got_it = line.contains("Interrupt received");
        stderr_lines.push(line);
        if got_it {
            break;
        }
    }
    std::fs::write(&gate, "").expect("open the gate");
    let exit = child.wait().expect("wait");
    let stdout = stdout.join().expect("stdout reader");
    assert!(!exit.success(), "an interrupted apply exits non-zero");
    assert!(stdout.contains("Apply interrupted"), "{stdout}");
    // The in-flight cluster finished and was recorded; the job did not start.
    let state = sb.stored_state();
    assert_eq!(
        state["resources"]["cluster.dev"]["status"], "ready",
        "{state:#}"
    );
    assert!(state["resources"].get("job.hello").is_none());
    assert!(
        sb.path()
            .join(".skyform/state.json.lock")
            .exists()
            .then_some(())
            .is_none(),
        "the lock is released"
    );
    let out = sb.stdout(&["apply", "-auto-approve"]);
    assert!(out.contains("1 added"), "{out}");
    sb.stdout(&["destroy", "-auto-approve"]);
}

#[test]
fn a_sandbox_removed_by_hand_is_recreated() {
    let sb = Workdir::with_files(&[("main.sky.hcl", "cluster \"dev\" {}\n")]);
    sb.stdout(&["apply", "-auto-approve"]);
    let local = sb.path().join(".skyform/local");
    // Kill the node agent: refresh sees a dead node and the plan replaces the cluster.
    let pid = sb.stored_state()["resources"]["cluster.dev"]["private"]["agents"][0]["pid"]
        .as_u64()
        .expect("pid");
    Command::new("kill")
        .arg("-9")
        .arg(pid.to_string())
        .status()
        .expect("kill");
    wait_for("the agent to die", Duration::from_secs(5), || {
        std::fs::read_to_string(format!("/proc/{pid}/stat")).map_or(true, |s| s.contains(") Z"))
    });
    let plan = sb.output(&["plan", "-detailed-exitcode"]);
    assert_eq!(plan.status.code(), Some(2));
    assert!(
        text(&plan.stdout).contains("node 0 is not running"),
        "{}",
        text(&plan.stdout)
    );
    sb.stdout(&["apply", "-auto-approve"]);
    // Remove the sandbox by hand: the next plan creates it again.
    wait_for("the sandbox to be removed", Duration::from_secs(5), || {
        std::fs::read_dir(&local)
            .map(|rd| {
                rd.filter_map(Result::ok)
                    .all(|e| std::fs::remove_dir_all(e.path()).is_ok())
            })
            .unwrap_or(true)
    });
    let plan = sb.output(&["plan", "-detailed-exitcode"]);
    assert_eq!(plan.status.code(), Some(2));
    assert!(
        {
            let t = text(&plan.stdout);
            t.contains("was removed")
                && (t.contains("# cluster.dev will be created")
                    || t.contains("# cluster.dev must be replaced"))
        },
        "{}",
        text(&plan.stdout)
    );
    sb.stdout(&["apply", "-auto-approve"]);
    sb.stdout(&["destroy", "-auto-approve"]);
    assert!(sb.processes().is_empty());
}

#[test]
fn a_dead_agent_fails_the_apply_instead_of_hanging() {
    let sb = Workdir::with_files(&[(
        "main.sky.hcl",
        "cluster \"c\" {\n  setup = \"sleep 30\"\n}\n",
    )]);
    let child = sb
        .command(&["apply", "-auto-approve"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let local = sb.path().join(".skyform/local");
    let mut agent = None;
    wait_for(
        "the agent to announce itself",
        Duration::from_secs(10),
        || {
            agent = std::fs::read_dir(&local)
                .ok()
                .and_then(|mut rd| rd.next())
                .and_then(|e| e.ok())
                .and_then(|e| std::fs::read(e.path().join("node-0/agent.json")).ok())
                .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
                .and_then(|v| v["pid"].as_u64());
            agent.is_some()
        },
    );
    Command::new("kill")
        .arg("-9")
        .arg(agent.expect("pid").to_string())
        .status()
        .expect("kill");
    let t = Instant::now();
    let out = child.wait_with_output().expect("wait");
    assert!(
        t.elapsed() < Duration::from_secs(20),
        "apply noticed the dead agent"
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stdout).contains("stopped while setup ran"),
        "{}",
        text(&out.stdout)
    );
    sb.stdout(&["destroy", "-auto-approve"]);
    assert!(sb.processes().is_empty(), "{:?}", sb.processes());
}

#[test]
fn removing_a_sandbox_under_a_running_job_leaves_no_orphan() {
    let sb = Workdir::with_files(&[(
        "main.sky.hcl",
        "cluster \"c\" {\n  num_nodes = 2\n}\n\njob \"long\" {\n  cluster   = cluster.c\n  num_nodes = 2\n  run       = \"sleep 777\"\n}\n",
    )]);
    sb.stdout(&["apply", "-auto-approve"]);
    wait_for("the job to run", Duration::from_secs(10), || {
        sb.job_statuses().iter().any(|(_, s)| s == "RUNNING")
    });
    // The agents write while we delete (as they would under a user's `rm -rf`): retry.
    wait_for(
        "the sandboxes to be removed",
        Duration::from_secs(5),
        || {
            let p = sb.path().join(".skyform/local");
            std::fs::remove_dir_all(&p).is_ok() || !p.exists()
        },
    );
    let status = sb.stdout(&["status"]);
    assert!(
        status.contains("DEGRADED") || status.contains("LOST") || !status.contains("RUNNING"),
        "{status}"
    );
    sb.stdout(&["apply", "-auto-approve"]);
    sb.stdout(&["destroy", "-auto-approve"]);
    wait_for("every process to end", Duration::from_secs(10), || {
        sb.processes().is_empty()
    });
}
