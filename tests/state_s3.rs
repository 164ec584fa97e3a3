//! State in S3, against moto's real S3 server on loopback (started by `scripts/moto.sh`;
//! `scripts/test.sh` exports `SKYFORM_TEST_S3_ENDPOINT`). Ignored by a plain `cargo test`;
//! run with `--include-ignored`, where a missing server is a failure, not a skip.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use skyform::state::conformance;
use skyform::state::{ObjectStateStore, StateStore};
use std::process::{Command, Stdio};
use std::sync::Arc;
use support::servers::Proxy;

fn endpoint() -> String {
    std::env::var("SKYFORM_TEST_S3_ENDPOINT").expect(
        "SKYFORM_TEST_S3_ENDPOINT is not set: these tests need moto; run ./scripts/test.sh, \
         or eval \"$(scripts/moto.sh start)\" first",
    )
}

/// A new bucket (moto creates one on a plain PUT), so tests do not see each other.
fn bucket(name: &str) -> String {
    let b = format!("{name}-{}", uuid::Uuid::new_v4().simple());
    let status = Command::new("curl")
        .args(["-sf", "-X", "PUT", &format!("{}/{b}", endpoint())])
        .stdout(Stdio::null())
        .status()
        .expect("curl");
    assert!(status.success(), "creating bucket {b} on moto");
    b
}

/// A `skyform { state "s3" { … } }` block for `bucket` at `endpoint`, with `extra` settings
/// (lines like `profile = "team"`).
fn s3_block(bucket: &str, key: &str, endpoint: &str, extra: &[&str]) -> String {
    let mut settings = vec![
        format!("bucket = \"{bucket}\""),
        format!("key = \"{key}\""),
        format!("endpoint = \"{endpoint}\""),
    ];
    settings.extend(extra.iter().map(|e| e.to_string()));
    format!(
        "skyform {{\n  state \"s3\" {{\n{}  }}\n}}\n",
        settings
            .iter()
            .map(|l| format!("    {l}\n"))
            .collect::<String>()
    )
}

/// A store client for `key` in `bucket` at `endpoint`, with moto's test keys.
fn store(bucket: &str, endpoint: &str, key: &str) -> ObjectStateStore {
    let s3 = object_store::aws::AmazonS3Builder::new()
        .with_bucket_name(bucket)
        .with_region("us-east-1")
        .with_endpoint(endpoint)
        .with_allow_http(true)
        .with_access_key_id("testing")
        .with_secret_access_key("testing")
        .build()
        .expect("s3 client");
    ObjectStateStore::new(Arc::new(s3), format!("s3://{bucket}/{key}"), key)
}

/// A fresh directory whose configuration (`main.sky.hcl`) is `config`.
fn config_dir(config: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("a temp dir");
    std::fs::write(dir.path().join("main.sky.hcl"), config).expect("write the configuration");
    dir
}

/// The store of the configurations whose key is `team/state.json`, at moto.
fn client(bucket: &str) -> ObjectStateStore {
    store(bucket, &endpoint(), "team/state.json")
}

#[tokio::test]
#[ignore = "needs moto: run ./scripts/test.sh"]
async fn s3_store_conforms() {
    let b = bucket("conform");
    conformance::run(&client(&b)).await;
    conformance::run_shared(&|| client(&b)).await;
}

fn skyform(dir: &std::path::Path, args: &[&str]) -> std::process::Output {
    skyform_cmd(dir, args).output().expect("run skyform")
}

/// `skyform ARGS` in `dir` with moto's test keys in the environment.
fn skyform_cmd(dir: &std::path::Path, args: &[&str]) -> Command {
    let mut c = support::command_in(dir, args);
    c.env("AWS_ACCESS_KEY_ID", "testing")
        .env("AWS_SECRET_ACCESS_KEY", "testing")
        .env("AWS_REGION", "us-east-1");
    c
}

fn ok(dir: &std::path::Path, args: &[&str]) -> String {
    let out = skyform(dir, args);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "skyform {args:?} failed:\n{text}");
    text
}

/// Two checkouts share one S3 state: what one applies, the other sees; nothing is written
/// locally; the lock is gone afterwards.
#[tokio::test]
#[ignore = "needs moto: run ./scripts/test.sh"]
async fn apply_keeps_state_in_s3() {
    let b = bucket("cli");
    let resources = "cluster \"c\" {}\njob \"hello\" {\n  cluster = cluster.c\n  run     = \"echo hello from s3 state\"\n}\n";
    let block = s3_block(
        &b,
        "team/state.json",
        &endpoint(),
        &["region = \"us-east-1\""],
    );
    let config = format!("{block}{resources}");
    let (one, two) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    for d in [&one, &two] {
        std::fs::write(d.path().join("main.sky.hcl"), &config).unwrap();
    }
    let init = ok(one.path(), &["init"]);
    assert!(
        init.contains(&format!("s3://{b}/team/state.json")),
        "{init}"
    );
    ok(one.path(), &["apply", "-auto-approve"]);
    assert!(
        !one.path().join(".skyform/state.json").exists(),
        "state goes to the bucket, not the local file"
    );
    let listed = ok(two.path(), &["state", "list"]);
    assert!(listed.contains("job.hello"), "{listed}");

    let store = client(&b);
    let state = store.read().await.unwrap().expect("state in the bucket");
    assert!(state.resources.keys().any(|a| a.to_string() == "job.hello"));
    assert!(
        store.lock_holder().await.unwrap().is_none(),
        "the lock is released"
    );

    // Dropping the state block in a checkout that never ran init is still noticed: the
    // state is in the bucket, not in a fresh local file.
    std::fs::write(two.path().join("main.sky.hcl"), resources).unwrap();
    let out = skyform(two.path(), &["state", "list"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("the state backend changed since init"),
        "{err}"
    );
    std::fs::write(two.path().join("main.sky.hcl"), &config).unwrap();

    ok(two.path(), &["destroy", "-auto-approve"]);
    let after = store.read().await.unwrap().unwrap();
    assert!(
        after.resources.is_empty(),
        "destroy from the other checkout is recorded"
    );
    assert!(after.serial > state.serial);
    assert_eq!(after.lineage, state.lineage);
}

/// A held lock in the bucket stops another run with the holder's name and a hint.
#[tokio::test]
#[ignore = "needs moto: run ./scripts/test.sh"]
async fn contention_names_the_holder() {
    let b = bucket("lock");
    let dir = config_dir(&format!(
        "{}cluster \"c\" {{}}\n",
        s3_block(&b, "team/state.json", &endpoint(), &[])
    ));
    let holder = skyform::state::LockInfo::new("apply");
    client(&b).lock(&holder).await.unwrap();
    let out = skyform(dir.path(), &["apply", "-auto-approve"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("the state is locked"), "{err}");
    assert!(err.contains(&holder.id), "{err}");
    assert!(err.contains("hint:"), "{err}");
}

/// `scripts/faulty-proxy.py` in front of moto.
fn faulty_proxy(fail: f64, seed: u32) -> Proxy {
    Proxy::start(Command::new("python3").args([
        concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/faulty-proxy.py"),
        &endpoint(),
        "--fail",
        &fail.to_string(),
        "--seed",
        &seed.to_string(),
    ]))
}

/// The store of the configurations whose key is `k`, at `endpoint`.
fn client_at(bucket: &str, endpoint: &str) -> ObjectStateStore {
    store(bucket, endpoint, "k")
}

/// With a quarter of requests failing — 5xx answers, connections dropped before the store
/// sees them, and answers lost after it acted — the store still behaves exactly as the
/// suite demands: retried creates and conditional writes that landed are recognised as
/// ours, and never mistaken for another writer's.
#[tokio::test]
#[ignore = "needs moto: run ./scripts/test.sh"]
async fn s3_store_conforms_through_faults() {
    for seed in 1..=3 {
        let proxy = faulty_proxy(0.25, seed);
        let b = bucket("faults");
        conformance::run(&client_at(&b, &proxy.url)).await;
        conformance::run_shared(&|| client_at(&b, &proxy.url)).await;
    }
}

/// An apply through a flaky store either completes or stops with a clear error; either way
/// the state in the bucket is whole, and a later apply over a healthy connection converges.
#[tokio::test]
#[ignore = "needs moto: run ./scripts/test.sh"]
async fn apply_through_faults_converges() {
    let proxy = faulty_proxy(0.2, 7);
    let b = bucket("flaky");
    let config = |endpoint: &str| {
        format!(
            "{}cluster \"c\" {{}}\n\
             job \"a\" {{\n  cluster = cluster.c\n  run = \"true\"\n}}\n\
             job \"b\" {{\n  cluster = cluster.c\n  run = \"true\"\n  depends_on = [job.a]\n}}\n",
            s3_block(&b, "k", endpoint, &[])
        )
    };
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("main.sky.hcl");
    std::fs::write(&file, config(&proxy.url)).unwrap();
    let out = skyform(dir.path(), &["apply", "-auto-approve"]);
    let text = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(!text.contains("panicked"), "{text}");
    if !out.status.success() {
        assert!(text.contains("error:"), "a failed apply says why:\n{text}");
    }
    // Whatever happened, the bucket holds a whole state.
    let raw = client_at(&b, &endpoint())
        .read()
        .await
        .expect("a readable state");
    if out.status.success() {
        let state = raw.expect("state written");
        assert_eq!(state.resources.len(), 3, "cluster and two jobs recorded");
    }
    // Over a healthy connection, another apply converges and then nothing is left to do.
    drop(proxy);
    std::fs::write(&file, config(&endpoint())).unwrap();
    // The same bucket at another endpoint: a backend change, and the old endpoint is gone.
    let out = skyform(dir.path(), &["plan"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("skyform init -reconfigure"), "{err}");
    ok(dir.path(), &["init", "-reconfigure"]);
    if let Some(holder) = client_at(&b, &endpoint()).lock_holder().await.unwrap() {
        ok(dir.path(), &["force-unlock", "-force", &holder.id]);
    }
    ok(dir.path(), &["apply", "-auto-approve"]);
    let plan = ok(dir.path(), &["plan"]);
    assert!(plan.contains("No changes"), "{plan}");
    ok(dir.path(), &["destroy", "-auto-approve"]);
}

/// Moving state from the local file to S3: every command refuses until
/// `init -migrate-state`, which copies it under both locks, lineage and serial intact.
#[tokio::test]
#[ignore = "needs moto: run ./scripts/test.sh"]
async fn migrate_local_state_to_s3() {
    let b = bucket("migrate");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("main.sky.hcl");
    let body = "cluster \"c\" {}\njob \"j\" {\n  cluster = cluster.c\n  run = \"true\"\n}\n";
    std::fs::write(&file, body).unwrap();
    ok(dir.path(), &["apply", "-auto-approve"]);
    let local: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join(".skyform/state.json")).unwrap())
            .unwrap();

    std::fs::write(
        &file,
        format!("{}{body}", s3_block(&b, "k", &endpoint(), &[])),
    )
    .unwrap();
    for args in [&["plan"][..], &["init"][..]] {
        let out = skyform(dir.path(), args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} must refuse");
        assert!(
            err.contains("the state backend changed since init"),
            "{err}"
        );
        assert!(err.contains("init -migrate-state"), "{err}");
    }
    let init = ok(dir.path(), &["init", "-migrate-state"]);
    assert!(init.contains(&format!("to s3://{b}/k")), "{init}");
    let state = client_at(&b, &endpoint()).read().await.unwrap().unwrap();
    assert_eq!(state.lineage, local["lineage"].as_str().unwrap());
    assert_eq!(state.serial, local["serial"].as_u64().unwrap());
    assert!(
        client_at(&b, &endpoint())
            .lock_holder()
            .await
            .unwrap()
            .is_none()
    );
    let plan = ok(dir.path(), &["plan"]);
    assert!(plan.contains("No changes"), "{plan}");
    ok(dir.path(), &["destroy", "-auto-approve"]);
}

/// kill -9 of skyform mid-apply with state in S3: the next apply takes over the dead
/// process's lock (same user and host, process gone), adopts what was created, submits
/// nothing twice, and converges.
///
/// The kill must land mid-apply whatever the machine's speed: the apply cannot finish
/// before the test lets it. Half the jobs come before cluster "gate", whose setup waits for
/// a file the test writes only after the kill; the other half run on that cluster.
#[tokio::test]
#[ignore = "needs moto: run ./scripts/test.sh"]
async fn kill_9_mid_apply_with_s3_state_converges() {
    let b = bucket("kill");
    let dir = tempfile::tempdir().unwrap();
    let gate = dir.path().join("gate");
    let keys = |from: usize| -> String {
        (from..from + 6)
            .map(|i| format!("\"{i:02}\""))
            .collect::<Vec<_>>()
            .join(", ")
    };
    std::fs::write(
        dir.path().join("main.sky.hcl"),
        format!(
            "{}cluster \"dev\" {{}}\n\
             job \"early\" {{\n  for_each = toset([{}])\n  cluster = cluster.dev\n  run = \"echo step ${{each.key}}\"\n}}\n\
             cluster \"gate\" {{\n  depends_on = [job.early]\n  \
             setup = \"i=0; while [ ! -e '{}' ] && [ $i -lt 1200 ]; do sleep 0.05; i=$((i+1)); done\"\n}}\n\
             job \"late\" {{\n  for_each = toset([{}])\n  cluster = cluster.gate\n  run = \"echo step ${{each.key}}\"\n}}\n",
            s3_block(&b, "k", &endpoint(), &[]),
            keys(0),
            gate.display(),
            keys(6),
        ),
    )
    .unwrap();
    let mut child = skyform_cmd(dir.path(), &["apply", "-auto-approve", "-parallelism", "1"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let store = client_at(&b, &endpoint());
    // Once cluster "gate" is on record, every early job is submitted and the apply waits in
    // its setup, which cannot end before the gate exists.
    let gate_cluster: skyform::model::Address = "cluster.gate".parse().unwrap();
    let t = std::time::Instant::now();
    loop {
        if let Some(state) = store.read().await.ok().flatten()
            && state.resources.contains_key(&gate_cluster)
        {
            let jobs: Vec<String> = state
                .resources
                .keys()
                .map(|a| a.to_string())
                .filter(|a| a.starts_with("job."))
                .collect();
            assert!(
                jobs.len() == 6 && jobs.iter().all(|a| a.starts_with("job.early")),
                "mid-apply: the early jobs are on record, the late ones not yet: {jobs:?}"
            );
            break;
        }
        assert!(
            t.elapsed().as_secs() < 60,
            "cluster.gate was not recorded in time"
        );
        if let Some(status) = child.try_wait().unwrap() {
            panic!("the apply ended before cluster.gate was recorded: {status}");
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(
        store.lock_holder().await.unwrap().is_some(),
        "the killed run left its lock"
    );
    std::fs::write(&gate, "").unwrap();

    let out = ok(dir.path(), &["apply", "-auto-approve"]);
    assert!(out.contains("took over the lock"), "{out}");
    let state = store.read().await.unwrap().unwrap();
    assert_eq!(
        state.resources.len(),
        14,
        "both clusters and every job are recorded"
    );
    // Each job was submitted to the cluster's queue exactly once.
    let mut names = std::collections::BTreeMap::new();
    for entry in walk(&dir.path().join(".skyform/local")) {
        if entry.parent().is_some_and(|p| p.ends_with("queue"))
            && entry.extension().is_some_and(|e| e == "json")
        {
            let v: serde_json::Value =
                serde_json::from_slice(&std::fs::read(&entry).unwrap()).unwrap();
            *names
                .entry(v["name"].as_str().unwrap_or_default().to_string())
                .or_insert(0) += 1;
        }
    }
    assert_eq!(names.len(), 12, "{names:?}");
    assert!(
        names.values().all(|n| *n == 1),
        "nothing submitted twice: {names:?}"
    );
    let plan = ok(dir.path(), &["plan"]);
    assert!(plan.contains("No changes"), "{plan}");
    ok(dir.path(), &["destroy", "-auto-approve"]);
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.filter_map(Result::ok) {
            let p = e.path();
            if p.is_dir() {
                out.extend(walk(&p));
            } else {
                out.push(p);
            }
        }
    }
    out
}

/// With `encryption_key_env`, the object in the bucket is sealed: a client without the key
/// cannot read it, and a wrong key is refused.
#[tokio::test]
#[ignore = "needs moto: run ./scripts/test.sh"]
async fn encrypted_state_in_s3() {
    let b = bucket("sealed");
    let dir = config_dir(&format!(
        "{}cluster \"c\" {{}}\n",
        s3_block(
            &b,
            "k",
            &endpoint(),
            &["encryption_key_env = \"SKYFORM_STATE_KEY\""]
        )
    ));
    let run = |args: &[&str], key: &str| {
        skyform_cmd(dir.path(), args)
            .env("SKYFORM_STATE_KEY", key)
            .output()
            .unwrap()
    };
    let key = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=";
    let out = run(&["apply", "-auto-approve"], key);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let err = client_at(&b, &endpoint()).read().await.unwrap_err();
    assert!(err.to_string().contains("is encrypted"), "{err}");
    let out = run(
        &["state", "list"],
        "ZmVkY2JhOTg3NjU0MzIxMGZlZGNiYTk4NzY1NDMyMTA=",
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("wrong key"));
    let out = run(&["destroy", "-auto-approve"], key);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Workspaces in one bucket: `workspaces/NAME/` before the key's file name, listed back.
#[tokio::test]
#[ignore = "needs moto: run ./scripts/test.sh"]
async fn workspaces_in_s3() {
    let b = bucket("ws");
    let dir = config_dir(&format!(
        "{}cluster \"c\" {{}}\n",
        s3_block(&b, "team/state.json", &endpoint(), &[])
    ));
    ok(dir.path(), &["init"]);
    ok(dir.path(), &["workspace", "new", "dev"]);
    ok(dir.path(), &["apply", "-auto-approve"]);
    let listed = ok(dir.path(), &["workspace", "list"]);
    assert!(listed.contains("  default\n* dev\n"), "{listed}");
    let dev = ObjectStateStore::new(
        client_at(&b, &endpoint()).raw(),
        "dev".into(),
        "team/workspaces/dev/state.json",
    );
    let state = dev
        .read()
        .await
        .unwrap()
        .expect("dev's state under workspaces/dev/");
    assert_eq!(state.resources.len(), 1);
    let default = client(&b).read().await.unwrap().expect("default's state");
    assert!(
        default.resources.is_empty(),
        "the default workspace is untouched"
    );
    ok(dir.path(), &["destroy", "-auto-approve"]);
    ok(dir.path(), &["workspace", "select", "default"]);
    ok(dir.path(), &["workspace", "delete", "dev"]);
    assert!(dev.read().await.unwrap().is_none());
}

/// `profile` in the state block reads keys from the shared credentials file, with no keys in
/// the environment (moto accepts any keys, but without them no request is signed at all).
#[tokio::test]
#[ignore = "needs moto: run ./scripts/test.sh"]
async fn s3_profile_from_shared_credentials() {
    let b = bucket("profile");
    let dir = tempfile::tempdir().unwrap();
    let creds = dir.path().join("credentials");
    std::fs::write(
        &creds,
        "[team]\naws_access_key_id = AKIDTEAM\naws_secret_access_key = secret\n",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("main.sky.hcl"),
        format!(
            "{}cluster \"c\" {{}}\n",
            s3_block(
                &b,
                "k",
                &endpoint(),
                &["region = \"us-east-1\"", "profile = \"team\""]
            )
        ),
    )
    .unwrap();
    let run = |creds_file: &std::path::Path| {
        skyform_cmd(dir.path(), &["init"])
            .env_remove("AWS_ACCESS_KEY_ID")
            .env_remove("AWS_SECRET_ACCESS_KEY")
            .env_remove("AWS_PROFILE")
            .env("AWS_SHARED_CREDENTIALS_FILE", creds_file)
            .env("AWS_CONFIG_FILE", dir.path().join("no-config"))
            .output()
            .unwrap()
    };
    let out = run(&creds);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        client_at(&b, &endpoint()).read().await.unwrap().is_some(),
        "init created the state"
    );
    let out = run(&dir.path().join("missing"));
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("profile \"team\" has no aws_access_key_id"),
        "{err}"
    );
}
