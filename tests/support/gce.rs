//! The harness of the GCP tests (`tests/gcp.rs`, `tests/gcp_fake.rs`, `tests/gcp_jobs.rs`):
//! the project's Compute Engine fake (`scripts/gce-fake.py`, one per test) whose instances
//! are real OpenSSH servers on loopback (`scripts/sshd.sh cloud`), a configuration
//! directory whose `infra "gcp"` is that fake, and the check of what the fake accepted and
//! answered against Google's discovery document for compute v1. Included by each of those
//! files with `#[path]`, beside `mod support`.
#![allow(dead_code)]

use crate::support;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The servers the fake's instances become (`scripts/sshd.sh cloud`), if they are here.
pub fn machines(test: &str) -> Option<PathBuf> {
    let python = Command::new("python3")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !python {
        support::skip_or_fail(test, "python3 (for scripts/gce-fake.py) is missing", true);
        return None;
    }
    match std::env::var("SKYFORM_TEST_CLOUD_DIR") {
        Ok(dir) => Some(PathBuf::from(dir).join("machines")),
        Err(_) => {
            support::skip_or_fail(
                test,
                "SKYFORM_TEST_CLOUD_DIR is not set: the fake's instances need machines; run ./scripts/test.sh, or eval \"$(scripts/sshd.sh cloud 3)\" first",
                true,
            );
            None
        }
    }
}

/// The Compute Engine fake of one test; it records every call (`--record`), and what the
/// backend sent and got is checked against the discovery document when it is here.
pub struct Fake {
    pub proxy: support::servers::Proxy,
    pub record: tempfile::TempDir,
}

impl std::ops::Deref for Fake {
    type Target = support::servers::Proxy;
    fn deref(&self) -> &support::servers::Proxy {
        &self.proxy
    }
}

impl Fake {
    pub fn start(machines: Option<&Path>, options: &[&str]) -> Fake {
        let record = tempfile::tempdir().unwrap();
        let mut cmd = Command::new("python3");
        cmd.arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/gce-fake.py"))
            .arg("--record")
            .arg(record.path().join("calls.jsonl"))
            .args(["--op-seconds", "0.3"])
            .args(options);
        if let Some(m) = machines {
            cmd.arg("--machines").arg(m);
        }
        Fake {
            proxy: support::servers::Proxy::start(&mut cmd),
            record,
        }
    }

    pub fn recorded(&self) -> PathBuf {
        self.record.path().join("calls.jsonl")
    }

    /// The calls so far, checked against the discovery document (when it is here).
    pub fn check_schema(&self) {
        if let Some(doc) = discovery() {
            let (_, bad) = violations(&doc, &self.recorded());
            assert!(
                bad.is_empty(),
                "{} violations:\n{}",
                bad.len(),
                bad.join("\n")
            );
        }
    }

    pub fn get(&self, what: &str) -> Value {
        let out = Command::new("curl")
            .args(["-sf", &format!("{}/_fake/{what}", self.url)])
            .output()
            .unwrap();
        serde_json::from_slice(&out.stdout).unwrap()
    }

    pub fn rules(&self, rules: Value) {
        let status = Command::new("curl")
            .args(["-sf", "-X", "POST", "--data-binary"])
            .arg(rules.to_string())
            .arg(format!("{}/_fake/rules", self.url))
            .stdout(Stdio::null())
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// The inserts seen, in order: (zone, machine type, outcome).
    pub fn calls(&self) -> Vec<(String, String, String)> {
        self.get("log")
            .as_array()
            .unwrap()
            .iter()
            .map(|c| {
                let s = |k: &str| c[k].as_str().unwrap_or_default().to_string();
                (s("zone"), s("machine_type"), s("outcome"))
            })
            .collect()
    }

    /// The instances that exist: (zone, name, status).
    pub fn instances(&self) -> Vec<(String, String, String)> {
        self.get("instances")
            .as_array()
            .unwrap()
            .iter()
            .map(|i| {
                let s = |k: &str| i[k].as_str().unwrap_or_default().to_string();
                (s("zone"), s("name"), s("status"))
            })
            .collect()
    }

    /// GCE takes a spot instance back (`POST /_fake/preempt/ZONE/NAME`): what its machine
    /// ran ends, it goes TERMINATED and then, as skyform's spot VMs are, deleted.
    pub fn preempt(&self, zone: &str, name: &str) {
        let status = Command::new("curl")
            .args(["-sf", "-X", "POST"])
            .arg(format!("{}/_fake/preempt/{zone}/{name}", self.url))
            .stdout(Stdio::null())
            .status()
            .unwrap();
        assert!(status.success(), "preempting {zone}/{name}");
    }

    pub fn firewalls(&self) -> Vec<Value> {
        self.get("firewalls").as_array().unwrap().clone()
    }

    pub fn assert_empty(&self) {
        assert!(self.instances().is_empty(), "{:?}", self.instances());
        assert!(self.firewalls().is_empty(), "{:?}", self.firewalls());
        self.check_schema();
    }
}

/// A configuration directory whose `infra "gcp"` is its own fake.
pub struct Work {
    pub dir: support::Workdir,
    pub fake: Fake,
    /// The configuration's `infra "gcp"` block.
    pub infra: String,
}

impl std::ops::Deref for Work {
    type Target = support::Workdir;
    fn deref(&self) -> &support::Workdir {
        &self.dir
    }
}

impl Work {
    pub fn new(test: &str, regions: &[&str], body: &str) -> Option<Work> {
        Work::with(test, &[], regions, body)
    }

    pub fn with(test: &str, options: &[&str], regions: &[&str], body: &str) -> Option<Work> {
        let machines = machines(test)?;
        let fake = Fake::start(Some(&machines), options);
        let dir = support::Workdir::new()
            .with_home()
            .env(
                "SKYFORM_CATALOG_DIR",
                PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("testdata/catalogs"),
            )
            .env_remove("GOOGLE_APPLICATION_CREDENTIALS")
            // The controller apply starts decides in test time.
            .env("SKYFORM_CONTROLLER_TICK_MS", "300")
            .env("SKYFORM_CONTROLLER_GRACE_MS", "1000")
            .env("SKYFORM_SERVE_PROBE_MS", "300");
        let regions: Vec<String> = regions.iter().map(|r| format!("\"{r}\"")).collect();
        let infra = format!(
            "infra \"gcp\" {{\n  project  = \"skyform-test\"\n  endpoint = \"{}\"\n  regions  = [{}]\n}}\n",
            fake.url,
            regions.join(", ")
        );
        dir.write_config(&format!("{infra}{body}"));
        Some(Work { dir, fake, infra })
    }

    /// The configuration becomes `body` on the same fake.
    pub fn body(&self, body: &str) {
        self.dir.write_config(&format!("{}{body}", self.infra));
    }

    pub fn candidates(&self) -> Vec<Value> {
        let plan: Value = serde_json::from_str(&self.ok(&["plan", "-json"])).unwrap();
        plan["resource_changes"][0]["candidates"]
            .as_array()
            .unwrap()
            .clone()
    }
}

pub fn zone_of(c: &Value) -> String {
    c["zone"].as_str().unwrap_or_default().to_string()
}

pub const SPOT_L4: &str = r#"
cluster "train" {
  resources {
    accelerators = "L4:1"
    use_spot     = true
  }
}
"#;

/// Waits until every instance of the fake is in `want`.
pub fn wait_for_instances(fake: &Fake, want: &str) {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let states: Vec<String> = fake.instances().into_iter().map(|i| i.2).collect();
        if !states.is_empty() && states.iter().all(|s| s == want) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "instances are {states:?}, not {want}"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// Google's discovery document for compute v1 (`scripts/compute-discovery.sh` fetches it).
pub fn discovery() -> Option<Value> {
    let path = std::env::var("SKYFORM_TEST_COMPUTE_DISCOVERY").ok()?;
    serde_json::from_slice(&std::fs::read(path).ok()?).ok()
}

/// A discovery schema as JSON Schema: `$ref`s into `definitions`, int64 as digit strings,
/// enums kept, and no property GCE's schema lacks (that is the drift this finds).
pub fn json_schema(s: &Value) -> Value {
    if let Some(r) = s.get("$ref").and_then(Value::as_str) {
        return serde_json::json!({"$ref": format!("#/definitions/{r}")});
    }
    let mut out = serde_json::Map::new();
    match s.get("type").and_then(Value::as_str) {
        Some("object") => {
            out.insert("type".into(), "object".into());
            if let Some(props) = s.get("properties").and_then(Value::as_object) {
                let p: serde_json::Map<String, Value> = props
                    .iter()
                    .map(|(k, v)| (k.clone(), json_schema(v)))
                    .collect();
                out.insert("properties".into(), Value::Object(p));
            }
            out.insert(
                "additionalProperties".into(),
                s.get("additionalProperties")
                    .map_or(Value::Bool(false), json_schema),
            );
        }
        Some("array") => {
            out.insert("type".into(), "array".into());
            if let Some(items) = s.get("items") {
                out.insert("items".into(), json_schema(items));
            }
        }
        Some("string") => {
            out.insert("type".into(), "string".into());
            if matches!(
                s.get("format").and_then(Value::as_str),
                Some("int64" | "uint64")
            ) {
                out.insert("pattern".into(), "^-?[0-9]+$".into());
            }
            if let Some(e) = s.get("enum") {
                out.insert("enum".into(), e.clone());
            }
        }
        Some(t @ ("integer" | "number" | "boolean")) => {
            out.insert("type".into(), t.into());
        }
        _ => {}
    }
    Value::Object(out)
}

/// Every method of the discovery document by id: (path template, request schema, response
/// schema).
pub fn methods(
    doc: &Value,
) -> std::collections::BTreeMap<String, (String, Option<String>, Option<String>)> {
    let mut out = std::collections::BTreeMap::new();
    for r in doc["resources"].as_object().unwrap().values() {
        for m in r["methods"]
            .as_object()
            .into_iter()
            .flat_map(|m| m.values())
        {
            let name = |k: &str| m[k]["$ref"].as_str().map(str::to_string);
            out.insert(
                m["id"].as_str().unwrap_or_default().to_string(),
                (
                    m["path"].as_str().unwrap_or_default().to_string(),
                    name("request"),
                    name("response"),
                ),
            );
        }
    }
    out
}

/// Checks what a fake recorded (`--record`) against the discovery document: every call it
/// accepted is a method of compute v1 at that method's path, with a request body of the
/// method's schema, and every answer it gave is of the method's response schema. Answers
/// the violations.
pub fn violations(doc: &Value, record: &Path) -> (usize, Vec<String>) {
    let definitions: serde_json::Map<String, Value> = doc["schemas"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), json_schema(v)))
        .collect();
    let methods = methods(doc);
    let mut validators = std::collections::BTreeMap::new();
    let mut check = |schema: &str, v: &Value, what: &str, bad: &mut Vec<String>| {
        let validator = validators.entry(schema.to_string()).or_insert_with(|| {
            jsonschema::draft202012::new(&serde_json::json!({
                "$ref": format!("#/definitions/{schema}"),
                "definitions": definitions,
            }))
            .unwrap()
        });
        for e in validator.iter_errors(v) {
            bad.push(format!("{what} ({schema}): {e} at {}", e.instance_path()));
        }
    };
    let mut bad = Vec::new();
    let text = std::fs::read_to_string(record).unwrap_or_default();
    let mut n = 0;
    for line in text.lines() {
        let call: Value = serde_json::from_str(line).unwrap();
        let path = call["path"].as_str().unwrap_or_default();
        let Some(id) = call["method"].as_str() else {
            // An error answer: GCE's error shape.
            let e = &call["response"]["error"];
            if !(e["code"].is_u64() && e["message"].is_string() && e["errors"].is_array()) {
                bad.push(format!(
                    "{path}: not GCE's error shape: {}",
                    call["response"]
                ));
            }
            continue;
        };
        n += 1;
        let Some((template, request, response)) = methods.get(id) else {
            bad.push(format!("{path}: {id} is no method of compute v1"));
            continue;
        };
        let path_ok = path_matches(&format!("/compute/v1/{template}"), path);
        if !path_ok {
            bad.push(format!("{path} is not the path of {id} ({template})"));
        }
        // The client sends `{}` with a POST that takes no body, as GCE accepts.
        let no_body = call["request"].is_null() || call["request"] == serde_json::json!({});
        match (request, no_body) {
            (Some(schema), false) => {
                check(schema, &call["request"], &format!("{id} request"), &mut bad)
            }
            (Some(_), true) => bad.push(format!("{id}: no request body")),
            (None, false) => bad.push(format!("{id}: takes no request body")),
            (None, true) => {}
        }
        if let Some(schema) = response {
            check(
                schema,
                &call["response"],
                &format!("{id} response"),
                &mut bad,
            );
        }
    }
    (n, bad)
}

/// Whether `path` is an instance of a discovery path template (`{param}` segments).
pub fn path_matches(template: &str, path: &str) -> bool {
    let want: Vec<&str> = template.split('/').collect();
    let got: Vec<&str> = path.split('/').collect();
    want.len() == got.len()
        && want
            .iter()
            .zip(&got)
            .all(|(w, g)| (w.starts_with('{') && !g.is_empty()) || w == g)
}
