//! The controller on the local backend, as a real background process: a managed job whose
//! node dies is launched again and finishes; one controller acts per state; a controller
//! killed at any point of a recovery resumes with exactly one placement per job.

mod support;

use serde_json::Value;
use std::time::{Duration, Instant};
use support::Workdir;

/// A managed job that notes each start (with its task id) next to the configuration, then
/// works for `seconds`.
fn config(seconds: u32) -> String {
    format!(
        r#"managed_job "train" {{
  run = "echo start $SKYFORM_TASK_ID >> {{dir}}/starts; for i in $(seq 1 {seconds}); do echo step $i; sleep 0.5; done"
}}
"#
    )
}

/// A work directory whose controller decides fast.
fn workdir(seconds: u32) -> Workdir {
    let w = Workdir::new()
        .env("SKYFORM_CONTROLLER_TICK_MS", "200")
        .env("SKYFORM_CONTROLLER_GRACE_MS", "400")
        .env_remove("SKYFORM_CRASH_AFTER");
    let text = config(seconds).replace("{dir}", &w.path().display().to_string());
    w.write_config(&text);
    w
}

fn wait_for<T>(what: &str, timeout: Duration, mut probe: impl FnMut() -> Option<T>) -> T {
    let began = Instant::now();
    loop {
        if let Some(v) = probe() {
            return v;
        }
        assert!(began.elapsed() < timeout, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The managed job as `status -json` shows it.
fn job(w: &Workdir) -> Value {
    w.status_row("managed_job.train")
}

fn book(w: &Workdir) -> Value {
    let text = std::fs::read_to_string(w.path().join(".skyform/state.json.controller"))
        .unwrap_or_else(|_| "{}".into());
    serde_json::from_str(&text).unwrap_or(Value::Null)
}

/// The agent process of the job's current placement, once it runs.
fn running_agent(w: &Workdir) -> Option<u32> {
    let b = book(w);
    let run = b["runs"].as_object()?.values().next()?.clone();
    if run["phase"] != "RUNNING" {
        return None;
    }
    run["current"]["private"]["agents"][0]["pid"]
        .as_u64()
        .map(|p| p as u32)
}

fn starts(w: &Workdir) -> Vec<String> {
    std::fs::read_to_string(w.path().join("starts"))
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

fn kill(pid: u32) {
    let _ = std::process::Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status();
}

/// What a finished test leaves: no sandbox, no process (the controller stops by itself).
fn assert_clean(w: &Workdir) {
    wait_for("the controller to stop", Duration::from_secs(30), || {
        w.processes().is_empty().then_some(())
    });
    let left: Vec<_> = std::fs::read_dir(w.path().join(".skyform/local"))
        .map(|d| d.filter_map(Result::ok).map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "placements left behind: {left:?}");
}

#[test]
fn a_managed_job_whose_node_dies_is_launched_again_and_finishes() {
    let w = workdir(8);
    w.ok(&["apply", "-auto-approve"]);
    let agent = wait_for("the job to run", Duration::from_secs(20), || {
        running_agent(&w)
    });
    // `logs -f` follows the job across its recovery.
    let follower = w
        .command(&["logs", "-f", "managed_job.train"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("logs -f");
    wait_for("a step in the logs", Duration::from_secs(10), || {
        w.stdout(&["logs", "managed_job.train"])
            .contains("step 1")
            .then_some(())
    });
    kill(agent);
    let done = wait_for("the job to finish", Duration::from_secs(40), || {
        let j = job(&w);
        (j["status"] != "RUNNING"
            && j["status"] != "STARTING"
            && j["status"] != "RECOVERING"
            && j["status"] != "PENDING")
            .then_some(j)
    });
    assert_eq!(done["status"], "SUCCEEDED", "{done}");
    assert_eq!(done["attempt"], 2, "{done}");
    let events: Vec<&str> = done["history"]
        .as_array()
        .expect("history")
        .iter()
        .filter_map(|e| e["event"].as_str())
        .collect();
    assert_eq!(
        events,
        ["launched", "lost", "recovered", "succeeded"],
        "{done}"
    );
    let lost = &done["history"][1];
    assert!(
        lost["reason"]
            .as_str()
            .is_some_and(|r| r.contains("not running")),
        "{lost}"
    );
    // The same task id on both placements: checkpoints are found again.
    let s = starts(&w);
    assert_eq!(s.len(), 2, "{s:?}");
    assert_eq!(s[0], s[1]);
    let logs = w.stdout(&["logs", "managed_job.train"]);
    assert!(logs.contains("step 8"), "{logs}");
    assert_eq!(
        logs.matches("step 1\n").count(),
        2,
        "both placements' logs are kept: {logs}"
    );
    let followed = follower
        .wait_with_output()
        .expect("logs -f ends with the job");
    let followed = String::from_utf8_lossy(&followed.stdout);
    assert_eq!(followed, logs, "logs -f saw what logs shows");
    let status = w.stdout(&["status"]);
    assert!(status.contains("MANAGED JOB"), "{status}");
    assert_clean(&w);
    w.ok(&["destroy", "-auto-approve"]);
}

#[test]
fn two_controllers_for_one_state_never_both_act() {
    let w = workdir(6);
    w.ok(&["apply", "-auto-approve"]);
    wait_for("the job to run", Duration::from_secs(20), || {
        running_agent(&w)
    });
    let (ok, text) = w.run(&["controller", "run"]);
    assert!(!ok, "a second controller must not run: {text}");
    assert!(
        text.contains("already runs") && text.contains("process"),
        "the loser says who holds the lease: {text}"
    );
    let status = w.stdout(&["controller", "status"]);
    assert!(status.contains("controller: running"), "{status}");
    wait_for("the job to finish", Duration::from_secs(30), || {
        (job(&w)["status"] == "SUCCEEDED").then_some(())
    });
    assert_eq!(starts(&w).len(), 1, "launched once");
    assert_clean(&w);
    w.ok(&["destroy", "-auto-approve"]);
}

#[test]
fn destroying_a_running_managed_job_cancels_it_and_removes_its_placement() {
    let w = workdir(200);
    w.ok(&["apply", "-auto-approve"]);
    wait_for("the job to run", Duration::from_secs(20), || {
        running_agent(&w)
    });
    w.ok(&["destroy", "-auto-approve"]);
    assert_clean(&w);
    assert_eq!(starts(&w).len(), 1);
}

/// The controller killed (SIGKILL) right after its K-th call to the backend or write of its
/// book, during a launch and a recovery, then started again: the job finishes, its
/// placement was launched once per loss (an interrupted launch is taken, not repeated), and
/// nothing is left behind.
#[test]
fn a_controller_killed_during_a_recovery_resumes_with_one_placement() {
    for point in [
        "call:1", "call:2", "call:3", "write:2", "write:4", "write:6",
    ] {
        let w = workdir(6);
        // The controller that will crash runs in the foreground; apply finds it.
        let mut crashing = w
            .command(&["controller", "run"])
            .env("SKYFORM_CRASH_AFTER", point)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("controller");
        wait_for("the controller's lease", Duration::from_secs(10), || {
            book(&w)["lease"].is_object().then_some(())
        });
        w.ok(&["apply", "-auto-approve"]);
        // Lose the first placement once it runs (unless the controller died before that).
        let began = Instant::now();
        let mut killed_node = false;
        while began.elapsed() < Duration::from_secs(20) {
            if let Ok(Some(_)) = crashing.try_wait() {
                break;
            }
            if let Some(agent) = running_agent(&w) {
                kill(agent);
                killed_node = true;
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        // Wait for the crash (or the job's end), then start a controller again.
        let _ = wait_for("the crash", Duration::from_secs(30), || {
            crashing.try_wait().ok().flatten().or_else(|| {
                (job(&w)["status"] == "SUCCEEDED").then(|| {
                    let _ = crashing.kill();
                    crashing.wait().expect("wait")
                })
            })
        });
        w.ok(&["controller", "start"]);
        let done = wait_for("the job to finish", Duration::from_secs(60), || {
            let j = job(&w);
            matches!(j["status"].as_str(), Some("SUCCEEDED" | "FAILED")).then_some(j)
        });
        assert_eq!(done["status"], "SUCCEEDED", "{point}: {done}");
        let s = starts(&w);
        let most = if killed_node { 2 } else { 1 };
        assert!(
            s.len() == most && s.iter().all(|l| *l == s[0]),
            "{point}: starts {s:?} (node killed: {killed_node}), {done}"
        );
        assert_clean(&w);
        w.ok(&["destroy", "-auto-approve"]);
    }
}

/// Managed jobs that depend on managed jobs run as a pipeline: each starts after the one
/// before it succeeded, and a failure cancels the rest.
#[test]
fn managed_jobs_that_depend_on_managed_jobs_run_as_a_pipeline() {
    let w = Workdir::new()
        .env("SKYFORM_CONTROLLER_TICK_MS", "200")
        .env("SKYFORM_CONTROLLER_GRACE_MS", "400");
    let order = w.path().join("order");
    let o = order.display();
    w.write_config(&format!(
        r#"managed_job "first" {{
  run = "echo first >> {o}; sleep 1; echo first-done >> {o}"
}}

managed_job "second" {{
  run        = "echo second >> {o}"
  depends_on = [managed_job.first]
}}

managed_job "broken" {{
  run = "exit 3"
}}

managed_job "after_broken" {{
  run        = "echo never >> {o}"
  depends_on = [managed_job.broken]
}}
"#
    ));
    w.ok(&["apply", "-auto-approve"]);
    let status = |a: &str| {
        w.status_row(a)["status"]
            .as_str()
            .unwrap_or("-")
            .to_string()
    };
    wait_for("the pipelines to end", Duration::from_secs(40), || {
        let all = ["first", "second", "broken", "after_broken"]
            .map(|n| status(&format!("managed_job.{n}")));
        all.iter()
            .all(|s| matches!(s.as_str(), "SUCCEEDED" | "FAILED" | "CANCELLED"))
            .then_some(())
    });
    assert_eq!(status("managed_job.second"), "SUCCEEDED");
    assert_eq!(status("managed_job.broken"), "FAILED");
    let cancelled = w.status_row("managed_job.after_broken");
    assert_eq!(cancelled["status"], "CANCELLED", "{cancelled}");
    assert!(
        cancelled["reason"]
            .as_str()
            .is_some_and(|r| r.contains("managed_job.broken ended FAILED")),
        "{cancelled}"
    );
    let text = std::fs::read_to_string(&order).unwrap_or_default();
    assert_eq!(
        text.lines().collect::<Vec<_>>(),
        ["first", "first-done", "second"],
        "second starts after first succeeded; nothing after a failure runs"
    );
    assert_clean(&w);
    w.ok(&["destroy", "-auto-approve"]);
}

/// The background controller apply starts loads the configuration as apply did, so it gets
/// the variables apply was given (`-var`, `-var-file`), through its environment and never
/// on its command line (which `ps` shows anyone).
#[test]
fn the_background_controller_gets_the_variables_apply_was_given() {
    let w = Workdir::new()
        .env("SKYFORM_CONTROLLER_TICK_MS", "200")
        .env("SKYFORM_CONTROLLER_GRACE_MS", "400")
        .env_remove("SKYFORM_CRASH_AFTER")
        .env_remove("SKYFORM_VAR_steps")
        .env_remove("SKYFORM_VAR_word");
    let out = w.path().join("out");
    w.write("extra.skyvars.hcl", "word = \"from-a-file\"\n");
    w.write_config(&format!(
        r#"variable "steps" {{
  type = number
}}

variable "word" {{}}

managed_job "train" {{
  run = "echo ${{var.word}} ${{var.steps}} >> {}; sleep 2"
}}
"#,
        out.display()
    ));
    let vars = ["-var", "steps=3", "-var-file", "extra.skyvars.hcl"];
    let args =
        |cmd: &'static [&'static str]| -> Vec<&str> { cmd.iter().copied().chain(vars).collect() };
    w.ok(&args(&["apply", "-auto-approve"]));
    let pid = wait_for("the controller's lease", Duration::from_secs(10), || {
        book(&w)["lease"]["pid"].as_u64()
    });
    let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
    let environ = String::from_utf8_lossy(&environ);
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    let cmdline = String::from_utf8_lossy(&cmdline);
    assert!(
        environ.contains("SKYFORM_VAR_steps=3\0")
            && environ.contains("SKYFORM_VAR_word=from-a-file\0"),
        "the controller's environment: {environ}"
    );
    assert!(
        !cmdline.contains("steps") && !cmdline.contains("from-a-file"),
        "{cmdline}"
    );
    let done = wait_for("the job to end", Duration::from_secs(30), || {
        let b = book(&w);
        let run = b["runs"].as_object()?.values().next()?.clone();
        run["phase"]
            .as_str()
            .is_some_and(|p| matches!(p, "SUCCEEDED" | "FAILED" | "FAILED_SETUP"))
            .then_some(run)
    });
    assert_eq!(done["phase"], "SUCCEEDED", "{done}");
    let text = std::fs::read_to_string(&out).unwrap_or_default();
    assert_eq!(text, "from-a-file 3\n");
    assert_clean(&w);
    w.ok(&args(&["destroy", "-auto-approve"]));
}

/// A controller in the foreground, holding the lease once this answers.
fn foreground_controller(w: &Workdir) -> std::process::Child {
    let child = w
        .command(&["controller", "run"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("controller");
    let pid = u64::from(child.id());
    wait_for("the controller's lease", Duration::from_secs(10), || {
        (book(w)["lease"]["pid"].as_u64() == Some(pid)).then_some(())
    });
    child
}

/// The controller killed with `kill -9` at random moments while it launches two managed
/// jobs and recovers them (their node agents are killed at random moments too), and
/// started again, a few times a round. Then the last controller must bring each job to
/// exactly one live placement — the one its book names, its agent running — with no other
/// sandbox on the machine and each job started once plus once per loss, and destroy must
/// leave nothing. `SKYFORM_KILL_ROUNDS` rounds (3 by default; `scripts/kill-rounds.sh
/// controller` runs many); `SKYFORM_KILL_SEED` replays a run's moments.
#[test]
fn a_controller_killed_at_random_moments_ends_with_one_placement_per_job() {
    let mut moments = support::crash::Moments::from_env("random kills of the controller");
    let seed = moments.seed;
    for round in 1..=moments.rounds {
        let w = Workdir::new()
            .env("SKYFORM_CONTROLLER_TICK_MS", "200")
            .env("SKYFORM_CONTROLLER_GRACE_MS", "400")
            .env_remove("SKYFORM_CRASH_AFTER");
        let starts = w.path().join("starts");
        let s = starts.display();
        w.write_config(&format!(
            r#"managed_job "a" {{
  run = "echo a $SKYFORM_TASK_ID >> {s}; for i in $(seq 1 1200); do sleep 0.5; done"
}}

managed_job "b" {{
  run = "echo b $SKYFORM_TASK_ID >> {s}; for i in $(seq 1 1200); do sleep 0.5; done"
}}
"#
        ));
        let mut ctl = foreground_controller(&w);
        w.ok(&["apply", "-auto-approve"]);
        let mut lost = std::collections::BTreeMap::<String, usize>::new();
        let mut said = Vec::new();
        for _ in 0..1 + moments.next() % 3 {
            // Sometimes a node is lost first, so that the kill may land in its recovery.
            if moments.next().is_multiple_of(2) {
                let b = book(&w);
                let running: Vec<(String, u64)> = b["runs"]
                    .as_object()
                    .map(|r| {
                        r.values()
                            .filter(|r| r["phase"] == "RUNNING")
                            .filter_map(|r| {
                                let name = r["address"].as_str()?.rsplit('.').next()?;
                                let pid = r["current"]["private"]["agents"][0]["pid"].as_u64()?;
                                Some((name.to_string(), pid))
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                if !running.is_empty() {
                    let (name, pid) = &running[moments.next() as usize % running.len()];
                    kill(*pid as u32);
                    *lost.entry(name.clone()).or_default() += 1;
                    said.push(format!("node of {name} killed"));
                }
            }
            let delay = moments.within(Duration::from_millis(1500));
            std::thread::sleep(delay);
            let _ = ctl.kill();
            let _ = ctl.wait();
            said.push(format!("controller killed after {delay:?}"));
            ctl = foreground_controller(&w);
        }
        let what = format!("round {round} (seed {seed}): {}", said.join(", "));
        // Time for the last controller to look at every placement twice (a lost node is
        // seen as lost only after the grace).
        std::thread::sleep(Duration::from_secs(1));
        let t = Instant::now();
        let b = wait_for(
            &format!("both jobs running on one placement, {what}"),
            Duration::from_secs(60),
            || {
                let b = book(&w);
                let runs = b["runs"].as_object()?;
                (runs.len() == 2
                    && runs.values().all(|r| {
                        r["phase"] == "RUNNING"
                            && r["leftovers"].as_array().is_none_or(Vec::is_empty)
                            && r["suspect_since"].is_null()
                    }))
                .then(|| b.clone())
            },
        );
        // Exactly the placements the book names exist (RUNNING is the backend's word for
        // each), with their agents alive where the book knows them (a placement taken up
        // after a kill is known by the identifiers chosen before its create).
        let mut named: Vec<String> = Vec::new();
        for r in b["runs"].as_object().into_iter().flat_map(|r| r.values()) {
            let p = &r["current"]["private"];
            if let Some(pid) = p["agents"][0]["pid"].as_u64() {
                assert!(
                    std::path::Path::new(&format!("/proc/{pid}")).exists(),
                    "{what}: the agent of {} is not running: {r}",
                    r["address"]
                );
            }
            let dir = p["dir"].as_str().unwrap_or("");
            named.push(
                std::path::Path::new(dir)
                    .file_name()
                    .map(|n| n.to_string_lossy().to_string())
                    .unwrap_or_default(),
            );
        }
        named.sort();
        let mut present: Vec<String> = std::fs::read_dir(w.path().join(".skyform/local"))
            .map(|d| {
                d.filter_map(Result::ok)
                    .map(|e| e.file_name().to_string_lossy().to_string())
                    .collect()
            })
            .unwrap_or_default();
        present.sort();
        assert_eq!(present, named, "{what}: sandboxes on the machine");
        // Each job started once, and once more per lost node at most, always as itself.
        let lines = starts_of(&starts);
        for job in ["a", "b"] {
            let mine: Vec<&String> = lines.iter().filter(|l| l.starts_with(job)).collect();
            let most = 1 + lost.get(job).copied().unwrap_or(0);
            assert!(
                !mine.is_empty() && mine.len() <= most && mine.iter().all(|l| *l == mine[0]),
                "{what}: starts of {job}: {mine:?} (at most {most})"
            );
        }
        let settled = t.elapsed();
        w.ok(&["destroy", "-auto-approve"]);
        let destroyed = t.elapsed();
        let _ = ctl.kill();
        let _ = ctl.wait();
        assert_clean(&w);
        eprintln!(
            "{what}: settled in {settled:?}, destroyed at {destroyed:?}, clean at {:?}",
            t.elapsed()
        );
    }
}

fn starts_of(path: &std::path::Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}
