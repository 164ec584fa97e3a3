//! State in Azure Blob Storage, against Azurite, Microsoft's emulator, on loopback
//! (`scripts/azurite.sh`, from npm; `scripts/test.sh` starts it and exports
//! `SKYFORM_TEST_AZURE_ENDPOINT`): the same conformance suite as every state store — 16
//! clients racing for the lock, a stale write refused — then an apply and a destroy through
//! the CLI. (GCS has no emulator that speaks the API object_store uses: docs/state.md.)
//! Ignored by a plain `cargo test`; with `--include-ignored` a missing emulator is a
//! failure, not a skip.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use skyform::state::conformance;
use skyform::state::{ObjectStateStore, StateStore};
use std::process::Command;
use std::sync::Arc;

fn azure() -> String {
    std::env::var("SKYFORM_TEST_AZURE_ENDPOINT").expect(
        "SKYFORM_TEST_AZURE_ENDPOINT is not set: these tests need Azurite; run ./scripts/test.sh, \
         or eval \"$(scripts/azurite.sh start)\" first",
    )
}

/// A new container, so tests do not see each other.
fn container(name: &str) -> String {
    let c = format!("{name}-{}", uuid::Uuid::new_v4().simple());
    let status = Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/azurite.sh"))
        .args(["container", &c])
        .status()
        .expect("scripts/azurite.sh");
    assert!(status.success(), "creating container {c} on Azurite");
    c
}

/// Azurite's well-known development account (public: Azure's own documentation gives it).
const AZURITE_ACCOUNT: &str = "devstoreaccount1";
const AZURITE_KEY: &str =
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";

fn azure_store(container: &str, key: &str) -> ObjectStateStore {
    let s = object_store::azure::MicrosoftAzureBuilder::new()
        .with_container_name(container)
        .with_account(AZURITE_ACCOUNT)
        .with_access_key(AZURITE_KEY)
        .with_endpoint(format!("{}/{AZURITE_ACCOUNT}", azure()))
        .with_allow_http(true)
        .build()
        .expect("azure client");
    ObjectStateStore::new(Arc::new(s), format!("azure://{container}/{key}"), key)
}

#[tokio::test]
#[ignore = "needs Azurite: run ./scripts/test.sh"]
async fn azure_store_conforms() {
    let b = container("conform");
    let make = || azure_store(&b, "team/state.json");
    conformance::run(&make()).await;
    conformance::run_shared(&make).await;
}

/// `skyform` in `dir` with the environment Azure's own tools use for Azurite: the emulator
/// switch and its address (its well-known account and key are object_store's defaults).
fn skyform(dir: &std::path::Path, args: &[&str]) -> std::process::Output {
    Command::new(support::BIN)
        .args(args)
        .current_dir(dir)
        .env("NO_COLOR", "1")
        .env("AZURE_STORAGE_USE_EMULATOR", "true")
        .env("AZURITE_BLOB_STORAGE_URL", azure())
        .output()
        .expect("skyform runs")
}

/// Apply writes the state into the container (read back by a second client), destroy
/// leaves it without resources, and neither leaves the lock held.
#[tokio::test]
#[ignore = "needs Azurite: run ./scripts/test.sh"]
async fn apply_keeps_state_in_azure() {
    let c = container("apply");
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("main.sky.hcl"),
        format!(
            "skyform {{\n  state \"azure\" {{\n    container = \"{c}\"\n    account   = \"{AZURITE_ACCOUNT}\"\n    key       = \"team/state.json\"\n  }}\n}}\n\ninfra \"local\" {{}}\n\ncluster \"dev\" {{}}\n\njob \"hello\" {{\n  cluster = cluster.dev\n  run     = \"echo hello\"\n}}\n"
        ),
    )
    .unwrap();
    let run = |args: &[&str]| {
        let out = skyform(dir.path(), args);
        assert!(
            out.status.success(),
            "skyform {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    };
    run(&["init"]);
    run(&["apply", "-auto-approve"]);
    let store = azure_store(&c, "team/state.json");
    let state = store
        .read()
        .await
        .unwrap()
        .expect("a state in the container");
    let addrs: Vec<String> = state.resources.keys().map(|a| a.to_string()).collect();
    assert_eq!(addrs, ["cluster.dev", "job.hello"]);
    assert!(
        !dir.path().join(".skyform/state.json").exists(),
        "no local state file beside the configuration"
    );
    run(&["destroy", "-auto-approve"]);
    let state = store.read().await.unwrap().expect("the state stays");
    assert!(state.resources.is_empty(), "{:?}", state.resources.keys());
    let holder = store.lock_holder().await.unwrap();
    assert!(holder.is_none(), "the lock was left held: {holder:?}");
}
