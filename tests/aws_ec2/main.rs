//! The AWS backend and the failover engine, against moto's real EC2 server on loopback
//! (`scripts/moto.sh`, started by `scripts/test.sh`) behind `scripts/ec2-proxy.py`, which
//! gives each test its own moto account and injects EC2's capacity, quota, auth and
//! throttling errors, or hangs, for chosen requests. Ignored by a plain `cargo test`; with
//! `--include-ignored` a missing moto is a failure, not a skip.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../support/mod.rs"]
mod support;

mod clusters;
mod failover;
mod jobs;

use aws_sdk_ec2 as ec2;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn moto() -> String {
    std::env::var("SKYFORM_TEST_MOTO_ENDPOINT").expect(
        "SKYFORM_TEST_MOTO_ENDPOINT is not set: these tests need moto; run ./scripts/test.sh, \
         or eval \"$(scripts/moto.sh start)\" first",
    )
}

/// The servers that moto's instances become (`scripts/sshd.sh cloud`): `ADDRESS DIR` lines.
fn machines() -> PathBuf {
    let dir = std::env::var("SKYFORM_TEST_CLOUD_DIR").expect(
        "SKYFORM_TEST_CLOUD_DIR is not set: these tests need machines behind moto's instances; \
         run ./scripts/test.sh, or eval \"$(scripts/sshd.sh cloud 3)\" first",
    );
    PathBuf::from(dir).join("machines")
}

/// The fault-injecting proxy in front of moto, with a moto account of its own.
struct Proxy(support::servers::Proxy);

impl std::ops::Deref for Proxy {
    type Target = support::servers::Proxy;
    fn deref(&self) -> &support::servers::Proxy {
        &self.0
    }
}

impl Proxy {
    fn start() -> Proxy {
        Proxy::start_with(&[])
    }

    /// With more options of the proxy (`--boot-seconds N`, …).
    fn start_with(options: &[&str]) -> Proxy {
        // A fresh 12-digit account per test (never moto's default 123456789012).
        let n = uuid::Uuid::new_v4().as_u128() % 900_000_000_000 + 100_000_000_000;
        Proxy(support::servers::Proxy::start(
            Command::new("python3")
                .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/ec2-proxy.py"))
                .arg(moto())
                .args(["--account", &n.to_string()])
                .arg("--machines")
                .arg(machines())
                .args(options),
        ))
    }

    fn rules(&self, rules: Value) {
        let status = Command::new("curl")
            .args(["-sf", "-X", "POST", "--data-binary"])
            .arg(rules.to_string())
            .arg(format!("{}/_proxy/rules", self.url))
            .stdout(Stdio::null())
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// The RunInstances calls seen, in order: (zone, instance type, outcome).
    fn calls(&self) -> Vec<(String, String, String)> {
        let out = Command::new("curl")
            .args(["-sf", &format!("{}/_proxy/log", self.url)])
            .output()
            .unwrap();
        let log: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
        log.iter()
            .map(|c| {
                let s = |k: &str| c[k].as_str().unwrap_or_default().to_string();
                (s("zone"), s("instance_type"), s("outcome"))
            })
            .collect()
    }

    fn client(&self, region: &str) -> ec2::Client {
        let conf = ec2::config::Builder::new()
            .behavior_version(ec2::config::BehaviorVersion::latest())
            .region(ec2::config::Region::new(region.to_string()))
            .endpoint_url(&self.url)
            .credentials_provider(ec2::config::Credentials::new(
                "testing", "testing", None, None, "test",
            ))
            .build();
        ec2::Client::from_conf(conf)
    }

    /// Instances not terminated in `region`: (id, zone, skyform:token tag).
    async fn live(&self, region: &str) -> Vec<(String, String, String)> {
        let out = self
            .client(region)
            .describe_instances()
            .send()
            .await
            .unwrap();
        let mut v: Vec<_> = out
            .reservations()
            .iter()
            .flat_map(|r| r.instances())
            .filter(|i| {
                !matches!(
                    i.state().and_then(|s| s.name()).map(|n| n.as_str()),
                    Some("terminated" | "shutting-down")
                )
            })
            .map(|i| {
                let token = i
                    .tags()
                    .iter()
                    .find(|t| t.key() == Some("skyform:token"))
                    .and_then(|t| t.value())
                    .unwrap_or_default();
                (
                    i.instance_id().unwrap_or_default().to_string(),
                    i.placement()
                        .and_then(|p| p.availability_zone())
                        .unwrap_or_default()
                        .to_string(),
                    token.to_string(),
                )
            })
            .collect();
        v.sort();
        v
    }

    /// Security groups other than the default, and key pairs, in `region`.
    async fn groups_and_keys(&self, region: &str) -> (Vec<String>, Vec<String>) {
        let c = self.client(region);
        let groups = c.describe_security_groups().send().await.unwrap();
        let keys = c.describe_key_pairs().send().await.unwrap();
        (
            groups
                .security_groups()
                .iter()
                .filter_map(|g| g.group_name())
                .filter(|n| *n != "default")
                .map(str::to_string)
                .collect(),
            keys.key_pairs()
                .iter()
                .filter_map(|k| k.key_name())
                .map(str::to_string)
                .collect(),
        )
    }
}

/// A configuration directory whose `infra "aws"` goes through its own proxy.
struct Work {
    dir: support::Workdir,
    proxy: Proxy,
}

impl std::ops::Deref for Work {
    type Target = support::Workdir;
    fn deref(&self) -> &support::Workdir {
        &self.dir
    }
}

impl Work {
    fn new(regions: &[&str], body: &str) -> Work {
        Work::with_proxy(Proxy::start(), regions, body)
    }

    fn with_proxy(proxy: Proxy, regions: &[&str], body: &str) -> Work {
        let dir = support::Workdir::new()
            .with_home()
            .env(
                "SKYFORM_CATALOG_DIR",
                PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("testdata/catalogs"),
            )
            .env("AWS_ACCESS_KEY_ID", "testing")
            .env("AWS_SECRET_ACCESS_KEY", "testing")
            .env_remove("AWS_PROFILE")
            .env_remove("AWS_ENDPOINT_URL")
            // The controller apply starts decides in test time.
            .env("SKYFORM_CONTROLLER_TICK_MS", "300")
            .env("SKYFORM_CONTROLLER_GRACE_MS", "1000")
            .env("SKYFORM_SERVE_PROBE_MS", "300");
        let w = Work { dir, proxy };
        w.config(regions, body);
        w
    }

    /// The `infra "aws"` block for `regions` at the proxy, then `body`.
    fn config(&self, regions: &[&str], body: &str) {
        let regions: Vec<String> = regions.iter().map(|r| format!("\"{r}\"")).collect();
        self.dir.write_config(&format!(
            "infra \"aws\" {{\n  endpoint = \"{}\"\n  regions  = [{}]\n}}\n{body}",
            self.proxy.url,
            regions.join(", ")
        ));
    }

    fn candidates(&self) -> Vec<Value> {
        let plan: Value = serde_json::from_str(&self.ok(&["plan", "-json"])).unwrap();
        plan["resource_changes"][0]["candidates"]
            .as_array()
            .unwrap()
            .clone()
    }
}

fn zone_of(c: &Value) -> String {
    c["zone"].as_str().unwrap_or_default().to_string()
}

const SPOT_A10G: &str = r#"
cluster "train" {
  resources {
    accelerators = "A10G:1"
    use_spot     = true
  }
}
"#;
