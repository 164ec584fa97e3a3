//! Clusters on a pool of existing machines, against real OpenSSH servers on loopback
//! (`scripts/sshd.sh`, started by `scripts/test.sh`). One test, in order: the scenarios share
//! the servers' reservations. Ignored by a plain `cargo test`; with `--include-ignored` a
//! missing server is a failure, not a skip.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use support::BIN;

struct Servers {
    dir: PathBuf,
    hosts: Vec<String>,
}

impl Servers {
    fn get() -> Servers {
        let (dir, hosts) = support::servers::ssh_servers();
        Servers { dir, hosts }
    }

    /// The server of `host` (1-based directory), killed or started again.
    fn index(&self, host: &str) -> usize {
        self.hosts.iter().position(|h| h == host).unwrap() + 1
    }

    fn kill(&self, host: &str) {
        let pid = std::fs::read_to_string(self.dir.join(format!("host-{}/pid", self.index(host))))
            .unwrap();
        let st = Command::new("kill").arg(pid.trim()).status().unwrap();
        assert!(st.success());
        std::thread::sleep(std::time::Duration::from_millis(200));
    }

    fn start(&self, host: &str) {
        let h = self.dir.join(format!("host-{}", self.index(host)));
        let sshd = if Path::new("/usr/sbin/sshd").exists() {
            "/usr/sbin/sshd"
        } else {
            "sshd"
        };
        let st = Command::new(sshd)
            .arg("-f")
            .arg(h.join("sshd_config"))
            .arg("-E")
            .arg(h.join("log"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .unwrap();
        assert!(st.success(), "sshd restarts (it detaches)");
        std::thread::sleep(std::time::Duration::from_millis(300));
    }

    fn reserved(&self) -> Vec<String> {
        self.hosts
            .iter()
            .enumerate()
            .filter(|(i, _)| {
                // The mark is a symbolic link to nothing (its target is its text).
                self.dir
                    .join(format!("host-{}/skyform/reservation", i + 1))
                    .symlink_metadata()
                    .is_ok()
            })
            .map(|(_, h)| h.clone())
            .collect()
    }
}

/// A configuration directory on the pool of the servers, with its own home.
struct Work {
    dir: support::Workdir,
    pool: String,
}

impl std::ops::Deref for Work {
    type Target = support::Workdir;
    fn deref(&self) -> &support::Workdir {
        &self.dir
    }
}

impl Work {
    fn new(s: &Servers) -> Work {
        // Autostop's minutes are seconds here.
        let dir = support::Workdir::new()
            .with_home()
            .env("SKYFORM_IDLE_MINUTE", "1");
        let pool = support::servers::pool_block("rack", &s.hosts, &s.dir);
        Work { dir, pool }
    }

    /// The pool's block, then `body`.
    fn config(&self, body: &str) {
        self.write_config(&format!("{}{body}", self.pool));
    }

    /// As `ok`, with `SKYFORM_NO_RSYNC` set: workdirs go as tar streams.
    fn ok_with_tar(&self, args: &[&str]) -> String {
        let (ok, text) = support::servers::run(self.command(args).env("SKYFORM_NO_RSYNC", "1"));
        assert!(ok, "skyform {args:?} failed:\n{text}");
        text
    }

    fn hosts_of(&self, addr: &str) -> Vec<String> {
        let state: Value = serde_json::from_str(&self.ok(&["state", "pull"])).unwrap();
        state["resources"][addr]["computed"]["hosts"]
            .as_array()
            .unwrap_or_else(|| panic!("{addr} has hosts: {state}"))
            .iter()
            .map(|h| h.as_str().unwrap().to_string())
            .collect()
    }
}

/// The ssh backend passes the provider conformance suite.
async fn conforms(s: &Servers) {
    use skyform::providers::Provider;
    use skyform::providers::conformance::{self, Fixture};
    use skyform::providers::ssh::{Pool, SshProvider};
    let home = tempfile::Builder::new()
        .prefix("sk")
        .tempdir_in("/tmp")
        .unwrap();
    let settings = serde_json::json!({
        "hosts": s.hosts,
        "user": "root",
        "identity_file": s.dir.join("id_ed25519").display().to_string(),
    });
    let pool = Pool::from_infra("rack", settings.as_object().unwrap(), home.path()).unwrap();
    let mut p = SshProvider::new(vec![pool]);
    // The agent installed on the hosts is skyform, not this test program.
    p.agent_exe = PathBuf::from(BIN);
    let offering = p.offerings().await.unwrap().remove(0);
    assert_eq!(offering.max_nodes, Some(3), "{offering:?}");
    conformance::run(&p, &Fixture::cluster(2, Some(offering), home.path())).await;
    assert!(s.reserved().is_empty(), "nothing held afterwards");
}

#[test]
#[ignore = "needs sshd: run ./scripts/test.sh"]
fn clusters_hold_whole_hosts_and_move_off_a_dead_one() {
    let s = Servers::get();
    assert!(s.hosts.len() >= 3, "three servers");
    tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(conforms(&s));
    let w = Work::new(&s);

    // Two clusters on three hosts: each host goes to one cluster only.
    w.config("cluster \"a\" {\n  num_nodes = 2\n}\ncluster \"b\" {}\n");
    let plan = w.ok(&["plan"]);
    assert!(plan.contains("ssh/rack"), "{plan}");
    assert!(plan.contains("$0.00/h"), "{plan}");
    w.ok(&["apply", "-auto-approve"]);
    let a = w.hosts_of("cluster.a");
    let b = w.hosts_of("cluster.b");
    assert_eq!(a.len(), 2);
    assert_eq!(b.len(), 1);
    assert!(!a.contains(&b[0]), "no host in two clusters: {a:?} {b:?}");
    assert_eq!(s.reserved().len(), 3);

    // `skyform ssh` reaches the head host, and passes arguments as written.
    let out = w.ok(&[
        "ssh",
        "cluster.b",
        "--",
        "printf",
        "%s|",
        "'; rm -rf /",
        "$HOME",
    ]);
    assert!(out.starts_with("'; rm -rf /|$HOME|"), "{out}");
    let out = w.ok(&[
        "ssh",
        "cluster.b",
        "--",
        "sh",
        "-c",
        "echo $SKYFORM_HOST_DIR",
    ]);
    let dir = s.dir.join(format!("host-{}/skyform", s.index(&b[0])));
    assert!(out.contains(&dir.display().to_string()), "{out}");

    // The generated ssh config reaches each cluster's head with plain ssh.
    let config = w.dir.path().join(".skyform/ssh_config");
    let text = std::fs::read_to_string(&config).unwrap();
    assert!(
        text.contains("Host a\n") && text.contains("Host b\n"),
        "{text}"
    );
    let out = Command::new("ssh")
        .arg("-F")
        .arg(&config)
        .args([
            "-o",
            "BatchMode=yes",
            "b",
            "--",
            "echo",
            "$SKYFORM_HOST_DIR",
        ])
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(&dir.display().to_string()),
        "{out:?}"
    );

    // The pool is full: a third cluster has nowhere to go.
    w.config("cluster \"a\" {\n  num_nodes = 2\n}\ncluster \"b\" {}\ncluster \"c\" {}\n");
    let (ok, text) = w.run(&["plan"]);
    assert!(!ok && text.contains("no placement for cluster.c"), "{text}");

    // Give a's hosts back, then lose b's host: b is replaced on a free one.
    w.config("cluster \"b\" {}\n");
    w.ok(&["apply", "-auto-approve"]);
    assert_eq!(s.reserved(), b);
    s.kill(&b[0]);
    let plan = w.ok(&["plan"]);
    assert!(plan.contains("does not answer"), "{plan}");
    assert!(plan.contains("must be replaced"), "{plan}");
    let out = w.ok(&["apply", "-auto-approve"]);
    assert!(out.contains("left for a later clean-up"), "{out}");
    let moved = w.hosts_of("cluster.b");
    assert_ne!(moved, b, "{out}");

    // The dead host comes back: the next apply releases what the old b held there.
    s.start(&b[0]);
    let plan = w.ok(&["plan"]);
    assert!(
        plan.contains("Earlier attempts may have left machines behind"),
        "{plan}"
    );
    w.ok(&["apply", "-auto-approve"]);
    assert_eq!(s.reserved(), moved);

    w.ok(&["destroy", "-auto-approve"]);
    assert!(s.reserved().is_empty(), "destroy releases every host");
    assert!(!config.exists(), "no clusters, no ssh config");

    // Hosts may be names from an ssh config file (ssh reads the user's ~/.ssh/config by
    // default; `ssh_config` names another), which says how to reach them.
    let w = Work::new(&s);
    let (addr, port) = s.hosts[0].split_once(':').unwrap();
    std::fs::create_dir_all(w.dir.path().join("home/.ssh")).unwrap();
    std::fs::write(
        w.dir.path().join("home/.ssh/config"),
        format!(
            "Host gpu-box-1\n  HostName {addr}\n  Port {port}\n  User root\n  IdentityFile {}\n",
            s.dir.join("id_ed25519").display()
        ),
    )
    .unwrap();
    std::fs::write(
        w.dir.path().join("main.sky.hcl"),
        format!(
            "infra \"ssh\" \"named\" {{\n  hosts      = [\"gpu-box-1\"]\n  ssh_config = \"{}\"\n}}\ncluster \"n\" {{}}\n",
            w.dir.path().join("home/.ssh/config").display()
        ),
    )
    .unwrap();
    w.ok(&["apply", "-auto-approve"]);
    assert_eq!(w.hosts_of("cluster.n"), ["gpu-box-1"]);
    assert_eq!(s.reserved(), [s.hosts[0].clone()]);
    let out = w.ok(&["ssh", "cluster.n", "--", "echo", "via", "ssh_config"]);
    assert!(out.contains("via ssh_config"), "{out}");
    // A job runs there too.
    let config = std::fs::read_to_string(w.dir.path().join("main.sky.hcl")).unwrap();
    std::fs::write(
        w.dir.path().join("main.sky.hcl"),
        format!(
            "{config}job \"j\" {{\n  cluster = cluster.n\n  run     = \"echo named-host-job\"\n}}\n"
        ),
    )
    .unwrap();
    w.ok(&["apply", "-auto-approve"]);
    w.wait_for("job.j", "SUCCEEDED");
    assert!(w.ok(&["logs", "job.j"]).contains("named-host-job"));
    w.ok(&["destroy", "-auto-approve"]);
    assert!(s.reserved().is_empty());

    // Workdir and setup on every host, with the cluster's environment taken literally.
    let w = Work::new(&s);
    std::fs::create_dir_all(w.dir.path().join("src")).unwrap();
    std::fs::write(w.dir.path().join("src/data.txt"), "from the workdir").unwrap();
    let cluster = |setup: &str| {
        format!(
            "cluster \"s\" {{\n  num_nodes = 2\n  workdir   = \"./src\"\n  envs      = {{ NASTY = \"'; rm -rf /\" }}\n  setup     = <<-EOT\n    {setup}\n  EOT\n}}\n"
        )
    };
    w.config(&cluster(
        r#"printf '%s|%s|%s|%s' "$(cat data.txt)" "$NASTY" "$SKYFORM_NODE_RANK" "$SKYFORM_NUM_NODES" > marker"#,
    ));
    w.ok(&["apply", "-auto-approve"]);
    let state: Value = serde_json::from_str(&w.ok(&["state", "pull"])).unwrap();
    let token = state["resources"]["cluster.s"]["private"]["token"]
        .as_str()
        .unwrap()
        .to_string();
    let workdir = |host: &str| {
        s.dir.join(format!(
            "host-{}/skyform/clusters/{token}/workdir",
            s.index(host)
        ))
    };
    let hosts = w.hosts_of("cluster.s");
    for (rank, h) in hosts.iter().enumerate() {
        let marker = std::fs::read_to_string(workdir(h).join("marker")).unwrap();
        assert_eq!(marker, format!("from the workdir|'; rm -rf /|{rank}|2"));
    }
    // A changed setup runs again in place, on the same hosts; the workdir mirrors the
    // local one (a deleted file goes). The first sync went with rsync where this machine
    // has it; this one goes as a tar stream.
    std::fs::remove_file(w.dir.path().join("src/data.txt")).unwrap();
    std::fs::write(w.dir.path().join("src/new.txt"), "new").unwrap();
    w.config(&cluster("ls > listing"));
    let plan = w.ok(&["plan"]);
    assert!(plan.contains("updated in place"), "{plan}");
    w.ok_with_tar(&["apply", "-auto-approve"]);
    assert_eq!(w.hosts_of("cluster.s"), hosts);
    for h in &hosts {
        let listing = std::fs::read_to_string(workdir(h).join("listing")).unwrap();
        assert_eq!(
            listing.split_whitespace().collect::<Vec<_>>(),
            ["listing", "new.txt"]
        );
    }
    // A failing setup fails the apply with the end of its log.
    let broken = format!(
        "{}cluster \"f\" {{\n  setup = \"echo broken-setup >&2; exit 3\"\n}}\n",
        cluster("ls > listing")
    );
    w.config(&broken);
    let (ok, out) = w.run(&["apply", "-auto-approve"]);
    assert!(!ok, "{out}");
    assert!(
        out.contains("setup failed on") && out.contains("exit code 3"),
        "{out}"
    );
    assert!(out.contains("broken-setup"), "{out}");
    w.ok(&["destroy", "-auto-approve"]);
    assert!(s.reserved().is_empty());
    assert!(
        !workdir(&hosts[0]).exists(),
        "destroy removes the cluster's files"
    );

    // Before the scenarios that stop a host's sshd: a service wants two hosts at once.
    a_service_serves_from_the_pool_and_rolls_to_a_new_version(&s);
    jobs_on_a_pool(&s);
    autostop_on_a_pool(&s);
    managed_job_moves_off_a_dead_host(&s);
    across_network_namespaces(&s);
}

/// A service on the pool: its replica runs on a host of its own, listening on that host's
/// address; the controller's balancer at the endpoint serves it, and a new version comes up
/// on another host before the old one drains — no failed request in between.
fn a_service_serves_from_the_pool_and_rolls_to_a_new_version(s: &Servers) {
    let w = Work {
        dir: support::Workdir::new()
            .with_home()
            .env("SKYFORM_CONTROLLER_TICK_MS", "300")
            .env("SKYFORM_CONTROLLER_GRACE_MS", "1000")
            .env("SKYFORM_SERVE_PROBE_MS", "300"),
        pool: support::servers::pool_block("rack", &s.hosts, &s.dir),
    };
    let port = support::free_port();
    let service = |version: &str| {
        format!(
            "service \"web\" {{\n  run = \"python3 {}/testdata/services/replica.py --host $SKYFORM_NODE_IPS --port $PORT --version {version}\"\n  resources {{\n    ports = [{port}]\n  }}\n  readiness_probe {{\n    path                  = \"/\"\n    initial_delay_seconds = 30\n  }}\n}}\n",
            env!("CARGO_MANIFEST_DIR")
        )
    };
    let get = move || support::http(port, "GET", "/x").unwrap();
    w.config(&service("v1"));
    w.ok(&["apply", "-auto-approve"]);
    let row = w.wait_until("service.web", "a ready replica", |r| {
        support::replicas(r).iter().any(|x| x.2 == "READY")
    });
    assert_eq!(s.reserved().len(), 1, "one host for the replica: {row}");
    let first = get();
    assert!(first.starts_with("HTTP/1.1 200"), "{first}");
    assert!(first.contains("version=v1"), "{first}");
    // A new version: up on another host, then the old replica drains.
    w.config(&service("v2"));
    w.ok(&["apply", "-auto-approve"]);
    support::serve_until_rolled(&w, "service.web", port, 2);
    assert!(get().contains("version=v2"));
    w.ok(&["destroy", "-auto-approve"]);
    let began = std::time::Instant::now();
    while !s.reserved().is_empty() {
        assert!(
            began.elapsed() < std::time::Duration::from_secs(30),
            "still held: {:?}",
            s.reserved()
        );
        std::thread::sleep(std::time::Duration::from_millis(300));
    }
}

/// A managed job on the pool gets a host of its own; when that host's sshd stops, the
/// controller (a real background process) moves the job to a free host, where it finishes,
/// with the same task id.
fn managed_job_moves_off_a_dead_host(s: &Servers) {
    let w = Work {
        dir: support::Workdir::new()
            .with_home()
            .env("SKYFORM_CONTROLLER_TICK_MS", "300")
            .env("SKYFORM_CONTROLLER_GRACE_MS", "1000"),
        pool: support::servers::pool_block("rack", &s.hosts, &s.dir),
    };
    let starts = w.path().join("starts");
    w.config(&format!(
        "managed_job \"train\" {{\n  run = \"echo start $SKYFORM_TASK_ID $(hostname) >> {}; for i in $(seq 1 16); do echo step $i; sleep 0.5; done\"\n}}\n",
        starts.display()
    ));
    w.ok(&["apply", "-auto-approve"]);
    let running = w.wait_until("managed_job.train", "running", |j| j["status"] == "RUNNING");
    let first = running["placement"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(first.starts_with("ssh/rack"), "{running}");
    let held = s.reserved();
    assert_eq!(held.len(), 1, "one host for the job: {held:?}");
    s.kill(&held[0]);
    let began = std::time::Instant::now();
    let done = loop {
        let j = w.status_row("managed_job.train");
        if matches!(j["status"].as_str(), Some("SUCCEEDED" | "FAILED")) {
            break j;
        }
        assert!(
            began.elapsed() < std::time::Duration::from_secs(90),
            "the job did not end: {j}\ncontroller log:\n{}",
            std::fs::read_to_string(w.path().join(".skyform/controller.log")).unwrap_or_default()
        );
        std::thread::sleep(std::time::Duration::from_millis(300));
    };
    s.start(&held[0]);
    assert_eq!(done["status"], "SUCCEEDED", "{done}");
    assert_eq!(done["attempt"], 2, "{done}");
    let history = done["history"].to_string();
    assert!(history.contains("does not answer"), "{history}");
    let lines = std::fs::read_to_string(&starts).unwrap();
    let ids: Vec<&str> = lines
        .lines()
        .filter_map(|l| l.split_whitespace().nth(1))
        .collect();
    assert_eq!(ids.len(), 2, "{lines}");
    assert_eq!(ids[0], ids[1], "one task id across placements: {lines}");
    let logs = w.ok(&["logs", "managed_job.train"]);
    assert!(logs.contains("step 16"), "{logs}");
    // The dead host's placement is removed once it answers again; then nothing is held.
    let began = std::time::Instant::now();
    while !s.reserved().is_empty() {
        assert!(
            began.elapsed() < std::time::Duration::from_secs(60),
            "still held: {:?}",
            s.reserved()
        );
        std::thread::sleep(std::time::Duration::from_millis(300));
    }
    w.ok(&["destroy", "-auto-approve"]);
}

/// A 2-node job whose second node is a host in a network namespace of its own: the head
/// (on loopback) links to it across the namespaces, and each rank runs on its own network.
fn across_network_namespaces(s: &Servers) {
    let Some(far) = support::servers::netns_server() else {
        // Under CI=true, a machine that can make network namespaces must have had one.
        support::skip_or_fail(
            "across_network_namespaces",
            "this machine gave scripts/sshd.sh no network namespace (it needs root and iproute2)",
            support::servers::netns_possible(),
        );
        return;
    };
    let far_ip = far.split(':').next().unwrap();
    let w = Work::new(s);
    w.write_config(&format!(
        "{}cluster \"x\" {{\n  num_nodes = 2\n}}\njob \"where\" {{\n  cluster = cluster.x\n  num_nodes = 2\n  run = \"echo ips=$(echo $SKYFORM_NODE_IPS); ip -4 -o addr show | grep -c ' {far_ip}/' || true\"\n}}\n",
        support::servers::pool_block("far", &[s.hosts[0].clone(), far.clone()], &s.dir)
    ));
    w.ok(&["apply", "-auto-approve"]);
    assert_eq!(w.hosts_of("cluster.x"), [s.hosts[0].clone(), far.clone()]);
    w.wait_for("job.where", "SUCCEEDED");
    let logs = w.ok(&["logs", "job.where"]);
    let loopback = s.hosts[0].split(':').next().unwrap();
    let ips = format!("ips={loopback} {far_ip}");
    assert_eq!(rank_lines(&logs, 0), [ips.clone(), "0".into()], "{logs}");
    assert_eq!(rank_lines(&logs, 1), [ips, "1".into()], "{logs}");
    w.ok(&["destroy", "-auto-approve"]);
    assert!(s.reserved().is_empty());
}

/// Lines of a job's logs that start with `(rank R) `, without the prefix.
fn rank_lines(logs: &str, rank: u32) -> Vec<String> {
    let prefix = format!("(rank {rank}) ");
    logs.lines()
        .filter_map(|l| l.strip_prefix(&prefix).map(str::to_string))
        .collect()
}

/// The runtime on a pool: a 2-node job sees its rank and the nodes' addresses, fractional
/// GPUs share a device while a whole-cluster job queues behind them, logs stream while a
/// job runs, exit codes and cancel reach the head.
fn jobs_on_a_pool(s: &Servers) {
    for i in 1..=s.hosts.len() {
        std::fs::write(s.dir.join(format!("host-{i}/gpus")), "T4 1\n").unwrap();
    }
    let w = Work::new(s);
    let cluster = "cluster \"g\" {\n  num_nodes = 2\n  envs = { NASTY = \"'; rm -rf /\" }\n  resources {\n    accelerators = \"T4:1\"\n  }\n}\n";
    let job = |name: &str, nodes: u32, gpus: &str, run: &str| {
        let resources = if gpus == "0" {
            String::new()
        } else {
            format!("  resources {{\n    accelerators = \"T4:{gpus}\"\n  }}\n")
        };
        format!(
            "job \"{name}\" {{\n  cluster   = cluster.g\n  num_nodes = {nodes}\n{resources}  run = <<-EOT\n    {run}\n  EOT\n}}\n"
        )
    };
    let report = r#"printf 'rank=%s nodes=%s ips=%s nasty=%s cuda=%s dir=%s\n' "$SKYFORM_NODE_RANK" "$SKYFORM_NUM_NODES" "$(echo $SKYFORM_NODE_IPS | tr ' ' ,)" "$NASTY" "$CUDA_VISIBLE_DEVICES" "$SKYFORM_HOST_DIR""#;
    w.config(&format!("{cluster}{}", job("multi", 2, "1", report)));
    w.ok(&["apply", "-auto-approve"]);
    let hosts = w.hosts_of("cluster.g");
    w.wait_for("job.multi", "SUCCEEDED");
    let logs = w.ok(&["logs", "job.multi"]);
    let ips: Vec<&str> = hosts.iter().map(|h| h.split(':').next().unwrap()).collect();
    for (rank, h) in hosts.iter().enumerate() {
        let dir = s.dir.join(format!("host-{}/skyform", s.index(h)));
        assert_eq!(
            rank_lines(&logs, rank as u32),
            [format!(
                "rank={rank} nodes=2 ips={} nasty='; rm -rf / cuda=0 dir={}",
                ips.join(","),
                dir.display()
            )],
            "{logs}"
        );
    }

    // Two half-GPU jobs share node 0's device; a job wanting both nodes' whole GPUs waits.
    // a and b run until the test opens a gate (the hosts share this machine's files), so c
    // is submitted while they hold the device however slow the machine is.
    let gate = w.path().join("gate");
    let until_gate = format!(
        "i=0; while [ ! -e '{}' ] && [ $i -lt 1200 ]; do sleep 0.1; i=$((i+1)); done",
        gate.display()
    );
    let halves = format!(
        "{}{}",
        job("a", 1, "0.5", &format!("{report}; {until_gate}")),
        job("b", 1, "0.5", &format!("{report}; {until_gate}"))
    );
    w.config(&format!("{cluster}{halves}"));
    w.ok(&["apply", "-auto-approve"]);
    w.wait_for("job.a", "RUNNING");
    w.wait_for("job.b", "RUNNING");
    w.config(&format!("{cluster}{halves}{}", job("c", 2, "1", report)));
    w.ok(&["apply", "-auto-approve"]);
    assert_eq!(w.status_of("job.c"), "QUEUED", "c waits behind a and b");
    std::fs::write(&gate, "").unwrap();
    w.wait_for("job.c", "SUCCEEDED");
    assert_eq!(w.status_of("job.a"), "SUCCEEDED");
    assert_eq!(w.status_of("job.b"), "SUCCEEDED");
    // The head's records: a and b ran together on GPU 0 of node 0; c started once both
    // had ended.
    let head = s.dir.join(format!("host-{}/skyform", s.index(&hosts[0])));
    let state = w.state();
    let record = |job: &str| -> Value {
        let id = state["resources"][job]["private"]["job_id"]
            .as_str()
            .unwrap();
        let token = state["resources"]["cluster.g"]["private"]["token"]
            .as_str()
            .unwrap();
        let path = head.join(format!("clusters/{token}/jobs/{id}/status.json"));
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
    };
    let (a, b, c) = (record("job.a"), record("job.b"), record("job.c"));
    let at = |v: &Value, k: &str| v[k].as_str().unwrap().to_string();
    assert!(
        at(&a, "started") < at(&b, "ended") && at(&b, "started") < at(&a, "ended"),
        "a and b overlap: {a} {b}"
    );
    assert!(
        at(&c, "started") >= at(&a, "ended") && at(&c, "started") >= at(&b, "ended"),
        "c waited: {a} {b} {c}"
    );
    for r in [&a, &b] {
        assert_eq!(r["nodes"], serde_json::json!([0]), "{r}");
        assert_eq!(r["devices"], serde_json::json!([[0]]), "{r}");
    }
    for j in ["job.a", "job.b"] {
        let logs = w.ok(&["logs", j]);
        assert!(
            logs.contains("cuda=0") && logs.contains(&format!("dir={}", head.display())),
            "{j} ran on node 0's GPU 0: {logs}"
        );
    }

    // Logs stream while the job runs.
    w.config(&format!(
        "{cluster}{}",
        job("stream", 1, "0", "echo first; sleep 4; echo second")
    ));
    w.ok(&["apply", "-auto-approve"]);
    let mut follow = w
        .command(&["logs", "-f", "job.stream"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(follow.stdout.take().unwrap()));
    let first = lines.next().unwrap().unwrap();
    let seen_first = std::time::Instant::now();
    assert_eq!(first, "first");
    let second = lines.next().unwrap().unwrap();
    assert_eq!(second, "second");
    assert!(
        seen_first.elapsed() > std::time::Duration::from_secs(2),
        "the first line came while the job ran, not at its end"
    );
    assert!(
        follow.wait().unwrap().success(),
        "logs -f ends with the job"
    );

    // Exit codes reach state; a removed job is cancelled on its nodes.
    w.config(&format!(
        "{cluster}{}{}",
        job("fails", 1, "0", "exit 4"),
        job("long", 1, "0", "sleep 300")
    ));
    w.ok(&["apply", "-auto-approve"]);
    w.wait_for("job.fails", "FAILED");
    w.wait_for("job.long", "RUNNING");
    let status: Value = serde_json::from_str(&w.ok(&["status", "-json"])).unwrap();
    let fails = status
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["address"] == "job.fails")
        .unwrap();
    assert_eq!(fails["exit_code"], 4);
    let state = w.state();
    let token = state["resources"]["cluster.g"]["private"]["token"]
        .as_str()
        .unwrap()
        .to_string();
    let long = state["resources"]["job.long"]["private"]["job_id"]
        .as_str()
        .unwrap()
        .to_string();
    w.config(cluster);
    w.ok(&["apply", "-auto-approve"]);
    let record: Value = serde_json::from_str(
        &std::fs::read_to_string(head.join(format!("clusters/{token}/jobs/{long}/status.json")))
            .unwrap(),
    )
    .unwrap();
    assert_eq!(record["state"], "CANCELLED", "{record}");

    // The state forgets the cluster; an import block takes it back by its token, and its
    // runtime works as before.
    let held = s.reserved();
    w.ok(&["state", "rm", "cluster.g"]);
    w.config(&format!(
        "{cluster}import {{\n  to = cluster.g\n  id = \"ssh:rack/{token}\"\n}}\n{}",
        job("again", 2, "1", "echo rank $SKYFORM_NODE_RANK")
    ));
    let plan = w.ok(&["plan"]);
    assert!(
        plan.contains("# cluster.g will be imported") && plan.contains("1 to import, 1 to add"),
        "{plan}"
    );
    w.ok(&["apply", "-auto-approve"]);
    assert_eq!(s.reserved(), held, "the same hosts, nothing reserved anew");
    w.wait_for("job.again", "SUCCEEDED");
    let logs = w.ok(&["logs", "job.again"]);
    assert_eq!(rank_lines(&logs, 0), ["rank 0"], "{logs}");
    assert_eq!(rank_lines(&logs, 1), ["rank 1"], "{logs}");

    w.ok(&["destroy", "-auto-approve"]);
    assert!(s.reserved().is_empty());
    for i in 1..=s.hosts.len() {
        let keys = std::fs::read_to_string(s.dir.join(format!("host-{i}/authorized_keys")))
            .unwrap_or_default();
        assert!(
            !keys.contains(&token),
            "destroy removes the cluster's key: {keys}"
        );
        std::fs::remove_file(s.dir.join(format!("host-{i}/gpus"))).unwrap();
    }
}

/// Autostop on a pool: idle, a cluster stops (its agents end, the hosts stay held) and
/// starts again; with `down`, it releases its hosts and the next plan creates it again.
fn autostop_on_a_pool(s: &Servers) {
    let w = Work::new(s);
    w.config(
        "cluster \"idle\" {\n  num_nodes = 2\n  autostop {\n    idle_minutes = 3\n  }\n}\njob \"j\" {\n  cluster = cluster.idle\n  run = \"sleep 2\"\n}\n",
    );
    w.ok(&["apply", "-auto-approve"]);
    // An interactive login on the head (a terminal) keeps the cluster up while it lasts:
    // the job ends after 2 s, idleness would stop it 3 s later, the session lasts 10 s.
    let started = std::time::Instant::now();
    let mut session = Command::new("ssh")
        .arg("-F")
        .arg(w.dir.path().join(".skyform/ssh_config"))
        .args(["-tt", "-o", "BatchMode=yes", "idle", "sleep", "10"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_secs(8).saturating_sub(started.elapsed()));
    assert_eq!(
        w.status_of("cluster.idle"),
        "UP",
        "an open session holds it up"
    );
    assert!(session.wait().unwrap().success(), "the session ran");
    w.wait_for("cluster.idle", "STOPPED");
    assert_eq!(
        w.status_of("job.j"),
        "SUCCEEDED",
        "a running job kept it up"
    );
    assert_eq!(s.reserved().len(), 2, "a stopped cluster keeps its hosts");
    let plan = w.ok(&["plan"]);
    assert!(plan.contains("No changes"), "{plan}");
    let before = std::time::SystemTime::now();
    w.ok(&["start", "cluster.idle"]);
    let looked = w.status_of("cluster.idle");
    // Every node's agent was started again by `start` (its log, begun anew at each start,
    // is newer; its pid file is gone again if autostop already stopped it)…
    let fresh: Vec<bool> = (1..=s.hosts.len())
        .filter_map(|i| {
            let clusters = s.dir.join(format!("host-{i}/skyform/clusters"));
            let token = std::fs::read_dir(clusters).ok()?.flatten().next()?.path();
            let log = std::fs::read_dir(&token)
                .ok()?
                .flatten()
                .map(|e| e.path().join("agent.log"))
                .find(|p| p.exists())?;
            Some(log.metadata().ok()?.modified().ok()? >= before)
        })
        .collect();
    assert_eq!(fresh, [true, true], "both agents started anew");
    // …and the cluster is UP, unless its idle time (3 s here) passed before status looked,
    // in which case autostop, armed again by the start, has stopped it again.
    if before.elapsed().unwrap_or_default() < std::time::Duration::from_secs(3) {
        assert_eq!(looked, "UP");
    } else {
        assert!(matches!(looked.as_str(), "UP" | "STOPPED"), "{looked}");
    }

    w.ok(&["destroy", "-auto-approve"]);
    assert!(s.reserved().is_empty());

    w.config(
        "cluster \"gone\" {\n  num_nodes = 2\n  autostop {\n    idle_minutes = 2\n    down = true\n  }\n}\n",
    );
    w.ok(&["apply", "-auto-approve"]);
    assert_eq!(s.reserved().len(), 2);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !s.reserved().is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "autostop released nothing"
        );
        std::thread::sleep(std::time::Duration::from_millis(300));
    }
    let plan = w.ok(&["plan"]);
    assert!(plan.contains("will be created"), "{plan}");
}
