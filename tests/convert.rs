//! `skyform convert`: SkyPilot YAML → skyform HCL.
//!
//! - Over the real SkyPilot files in `../shared/corpus/skypilot-yaml/` (not copied into the
//!   repository): every file converts (or is listed with the reason it cannot), every output
//!   is valid, `fmt` leaves it as it is, `setup`/`run` come out byte for byte, and `plan`
//!   chooses the instance type and price that SkyPilot's optimizer chose
//!   (`testdata/convert/skypilot-answers.tsv`, written by `scripts/skypilot-answers.py`).
//! - Snapshots of a handful of conversions in `testdata/convert/cases/`: `NAME.yaml` →
//!   `NAME.sky.hcl` and `NAME.warnings`. `SKYFORM_BLESS=1` rewrites them; review the diff.
//! - Bad YAML: the error names the file, line and column.
//! - A converted task run on the local backend sees SkyPilot's variables.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use saphyr::LoadableYamlNode as _;
use skyform::config::{self, Collect, VarArgs};
use skyform::convert::Converter;
use skyform::model::Spec;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use support::{BIN, Workdir};

/// Corpus files that do not convert, and why (SkyPilot cannot read them either).
const NOT_CONVERTED: &[(&str, &str)] = &[(
    "tests__test_yamls__test_huggingface_storage_mounting.yaml",
    "a Jinja template: `name: {{storage_name}}` is a mapping used as a key until it is rendered; PyYAML refuses it too (\"found unhashable key\")",
)];

/// Corpus files whose output is valid but that `plan` places differently from SkyPilot.
const PLACED_DIFFERENTLY: &[(&str, &str)] = &[
    (
        "examples__tpu__tpuvm_mnist.yaml",
        "a TPU (tpu-v2-8): skyform's catalogs offer no TPUs (plan: no placement); SkyPilot prices a TPU VM",
    ),
    (
        "examples__tpu__tpu_node_mnist.yaml",
        "a TPU node (tpu-v2-8 with an n1 host): skyform's catalogs offer no TPUs (plan: no placement)",
    ),
];

fn corpus() -> Option<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/corpus/skypilot-yaml");
    dir.join("INDEX.tsv").exists().then_some(dir)
}

fn corpus_or_skip(test: &str) -> Option<PathBuf> {
    let c = corpus();
    if c.is_none() {
        support::skip_or_fail(
            test,
            "the SkyPilot YAML corpus is not at ../shared/corpus/skypilot-yaml (it comes with the team's shared folder)",
            true,
        );
    }
    c
}

fn yaml_files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    v.sort();
    v
}

fn name_of(p: &Path) -> String {
    p.file_name().unwrap().to_string_lossy().into_owned()
}

/// A configuration directory holding `hcl` (and `infra`), with the relative workdirs it
/// names made (the directories a user converting in their repository has).
fn config_dir(hcl: &str, infra: Option<&str>) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("main.sky.hcl"), hcl).unwrap();
    if let Some(i) = infra {
        std::fs::write(dir.path().join("infra.sky.hcl"), i).unwrap();
    }
    for line in hcl.lines() {
        let t = line.trim();
        if let Some(rest) = t.strip_prefix("workdir") {
            let w = rest
                .trim_start()
                .trim_start_matches('=')
                .trim()
                .trim_matches('"');
            if !w.starts_with('/') && !w.starts_with('~') {
                std::fs::create_dir_all(dir.path().join(w)).unwrap();
            }
        }
    }
    dir
}

/// Every `variable "NAME"` declared in the HCL, with a value, as SKYFORM_VAR_ settings.
fn variable_values(hcl: &str) -> BTreeMap<String, String> {
    hcl.lines()
        .filter_map(|l| l.strip_prefix("variable \""))
        .filter_map(|l| l.split('"').next())
        .map(|n| (format!("SKYFORM_VAR_{n}"), "x".to_string()))
        .collect()
}

/// Diagnostics of `validate` (rendered), and the evaluated instances with every variable
/// given a value.
fn check(dir: &Path, hcl: &str) -> (Option<String>, Vec<Spec>) {
    let (mut cfg, mut diags) = config::load(dir);
    let (inputs, vd) = config::inputs(&mut cfg, &VarArgs::default(), &BTreeMap::new());
    diags.extend(vd);
    diags.extend(config::validate(&cfg, &inputs));
    if diags.has_errors() {
        return (Some(diags.render(&cfg.sources, false)), Vec::new());
    }
    let (inputs, _) = config::inputs(&mut cfg, &VarArgs::default(), &variable_values(hcl));
    let mut c = Collect::default();
    let (_, ed) = config::evaluate(&cfg, &inputs, &mut c);
    if ed.has_errors() {
        return (Some(ed.render(&cfg.sources, false)), Vec::new());
    }
    (None, c.instances.into_iter().map(|i| i.spec).collect())
}

/// Keys of the task documents (top level, `resources`, its candidates, `service`) that the
/// HCL mentions neither as what they map to nor in a comment.
fn dropped_keys(yaml: &str, hcl: &str) -> Vec<String> {
    fn mapped_to(key: &str) -> &str {
        match key {
            "cloud" | "region" | "zone" => "infra",
            "gpus" => "accelerators",
            "job_recovery" | "spot_recovery" => "recovery",
            "secrets" => "secrets",
            other => other,
        }
    }
    let mentioned = |word: &str| {
        hcl.lines().any(|l| {
            let t = l.trim_start();
            t.starts_with(&format!("{word} ")) || (t.starts_with('#') && t.contains(word))
        })
    };
    let mut out = Vec::new();
    let docs = saphyr::Yaml::load_from_str(yaml).unwrap_or_default();
    let mut check = |m: &saphyr::Yaml, path: &str| {
        let Some(map) = m.as_mapping() else { return };
        for (k, v) in map {
            let key = k.as_str().unwrap_or_default();
            let skip = v.is_null()
                || v.as_bool() == Some(false)
                || matches!(
                    key,
                    "name" | "execution" | "any_of" | "ordered" | "resources" | "service"
                )
                || v.as_mapping().is_some_and(|m| m.is_empty());
            if !skip && !mentioned(mapped_to(key)) {
                out.push(format!(
                    "{path}{key} is neither mapped nor kept as a comment"
                ));
            }
        }
    };
    for d in &docs {
        check(d, "");
        if let Some(r) = d.as_mapping_get("resources") {
            check(r, "resources.");
            for list in ["any_of", "ordered"] {
                for c in r
                    .as_mapping_get(list)
                    .and_then(|l| l.as_vec())
                    .into_iter()
                    .flatten()
                {
                    check(c, &format!("resources.{list}[]."));
                }
            }
        }
        if let Some(svc) = d.as_mapping_get("service") {
            check(svc, "service.");
        }
    }
    out
}

/// `setup` and `run` of a single-document YAML, as SkyPilot reads them.
fn scripts_of(text: &str) -> (Option<String>, Option<String>) {
    let docs = saphyr::Yaml::load_from_str(text).unwrap();
    let get = |k: &str| {
        docs.first()
            .and_then(|d| d.as_mapping_get(k))
            .and_then(|v| v.as_str())
            .map(str::to_string)
    };
    (get("setup"), get("run"))
}

#[test]
fn every_corpus_file_converts_validates_and_keeps_its_scripts() {
    let Some(dir) = corpus_or_skip("every_corpus_file_converts_validates_and_keeps_its_scripts")
    else {
        return;
    };
    let files = yaml_files(&dir);
    assert!(files.len() >= 30, "the corpus has {} files", files.len());
    let mut failures = Vec::new();
    let mut converted = 0;
    for f in &files {
        let name = name_of(f);
        let text = std::fs::read_to_string(f).unwrap();
        let mut conv = Converter::new(false);
        let expected_failure = NOT_CONVERTED.iter().find(|(n, _)| *n == name);
        let out = match (conv.convert(&name, &text), expected_failure) {
            (Ok(_), Some((_, why))) => {
                failures.push(format!(
                    "{name}: converts, but is listed as not converting ({why})"
                ));
                continue;
            }
            (Err(e), None) => {
                failures.push(format!("{name}: does not convert: {e}"));
                continue;
            }
            (Err(e), Some(_)) => {
                assert!(e.line > 0 && e.col > 0, "{e}");
                continue;
            }
            (Ok(out), None) => out,
        };
        converted += 1;
        let infra = conv.infra();
        let cfg = config_dir(&out.hcl, infra.as_deref());
        let (errors, specs) = check(cfg.path(), &out.hcl);
        if let Some(e) = errors {
            failures.push(format!(
                "{name}: the output is not valid:\n{e}\n{}",
                out.hcl
            ));
            continue;
        }
        // Nothing silently dropped: every key shows up, mapped or as a comment, and every
        // warning has its comment (or is a note on something mapped).
        for problem in dropped_keys(&text, &out.hcl) {
            failures.push(format!("{name}: {problem}"));
        }
        for w in &out.warnings {
            let field = if w.field.starts_with("file_mounts.") {
                "file_mounts"
            } else {
                w.field.as_str()
            };
            let noted = w.field.ends_with("spot_recovery") || w.field.ends_with("max_hourly_cost");
            if !noted && !out.hcl.contains(&format!("# {field} (line ")) {
                failures.push(format!("{name}: warning without a comment: {w}"));
            }
        }
        // What `skyform fmt` leaves as it is.
        let fmt = std::process::Command::new(BIN)
            .arg(format!("-chdir={}", cfg.path().display()))
            .args(["fmt", "-check"])
            .output()
            .unwrap();
        if !fmt.status.success() {
            failures.push(format!(
                "{name}: fmt would change the output: {}",
                String::from_utf8_lossy(&fmt.stdout)
            ));
        }
        // setup and run byte for byte (single-task files).
        if text.matches("\n---").count() == 0 {
            let (setup, run) = scripts_of(&text);
            let (mut got_setup, mut got_run) = (None, None);
            for s in &specs {
                match s {
                    Spec::Cluster(c) => got_setup = c.setup.clone(),
                    Spec::Job(j) => got_run = Some(j.run.clone()),
                    Spec::ManagedJob(m) => {
                        got_setup = m.setup.clone();
                        got_run = Some(m.run.clone());
                    }
                    Spec::Service(s) => {
                        got_setup = s.setup.clone();
                        got_run = Some(s.run.clone());
                    }
                    Spec::Controller(_) => {}
                }
            }
            if got_setup != setup {
                failures.push(format!("{name}: setup differs: {got_setup:?} != {setup:?}"));
            }
            if run.is_some() && got_run != run {
                failures.push(format!("{name}: run differs: {got_run:?} != {run:?}"));
            }
        }
    }
    assert!(converted >= 30, "only {converted} files converted");
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

/// One OK row of the answers table: file, instance type, $/h per node, nodes.
fn answers() -> Vec<(String, String, f64, u32)> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/convert/skypilot-answers.tsv");
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let f: Vec<&str> = l.split('\t').collect();
            (f.get(1) == Some(&"OK")).then(|| {
                (
                    f[0].to_string(),
                    f[4].to_string(),
                    f[5].parse().unwrap(),
                    f[6].parse().unwrap(),
                )
            })
        })
        .collect()
}

#[test]
fn plans_choose_what_skypilots_optimizer_chooses() {
    let Some(dir) = corpus_or_skip("plans_choose_what_skypilots_optimizer_chooses") else {
        return;
    };
    let catalogs = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/catalogs/skypilot");
    let rows = answers();
    assert!(rows.len() >= 22, "only {} answers", rows.len());
    let mut failures = Vec::new();
    let mut compared = 0;
    for (file, want_type, want_price, nodes) in rows {
        let text = std::fs::read_to_string(dir.join(&file)).unwrap();
        let out = Converter::new(false).convert(&file, &text).unwrap();
        // The clouds SkyPilot had enabled.
        let cfg = config_dir(
            &out.hcl,
            Some("infra \"aws\" {}\ninfra \"gcp\" {}\ninfra \"lambda\" {}\n"),
        );
        let mut cmd = std::process::Command::new(BIN);
        cmd.arg(format!("-chdir={}", cfg.path().display()))
            .args(["plan", "-json"])
            .env("SKYFORM_CATALOG_DIR", &catalogs)
            .env("NO_COLOR", "1")
            .stdin(std::process::Stdio::null());
        for (k, v) in variable_values(&out.hcl) {
            cmd.env(k, v);
        }
        let o = cmd.output().unwrap();
        // Per node (a service's placement counts its replicas as nodes): SkyPilot's price is
        // per node too.
        let got = match serde_json::from_slice::<serde_json::Value>(&o.stdout) {
            Ok(plan) => {
                let placement = plan["resource_changes"]
                    .as_array()
                    .and_then(|a| a.iter().find(|c| !c["placement"].is_null()))
                    .map(|c| c["placement"].clone())
                    .unwrap_or_default();
                let n = placement["num_nodes"].as_i64().unwrap_or(1).max(1);
                Ok((
                    placement["instance_type"]
                        .as_str()
                        .unwrap_or("(none)")
                        .to_string(),
                    placement["hourly_cost_micros"].as_i64().unwrap_or(-1) / n,
                ))
            }
            Err(_) => Err(format!(
                "plan failed: {}{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            )),
        };
        let want_micros = (want_price * 1e6).round() as i64;
        let agrees = matches!(&got, Ok((t, m)) if *t == want_type && (m - want_micros).abs() <= 10);
        match (agrees, PLACED_DIFFERENTLY.iter().find(|(n, _)| *n == file)) {
            (true, Some((_, why))) => failures.push(format!(
                "{file}: now agrees with SkyPilot; take it off PLACED_DIFFERENTLY ({why})"
            )),
            (false, None) => failures.push(format!(
                "{file}: skyform: {got:?}; SkyPilot: {want_type} at {want_micros} µ$/h per node ({nodes} nodes)"
            )),
            (true, None) => compared += 1,
            (false, Some(_)) => {}
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert!(compared >= 20, "only {compared} files compared");
}

fn cases_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/convert/cases")
}

/// Compares with the file, or writes it with SKYFORM_BLESS. Returns a failure.
fn golden(path: &Path, actual: &str) -> Option<String> {
    if std::env::var_os("SKYFORM_BLESS").is_some() {
        std::fs::write(path, actual).unwrap();
        return None;
    }
    let expected = std::fs::read_to_string(path).unwrap_or_default();
    (expected != actual).then(|| {
        format!(
            "{} differs (SKYFORM_BLESS=1 rewrites it):\n{}",
            path.display(),
            similar::TextDiff::from_lines(&expected, actual)
                .unified_diff()
                .header("expected", "actual")
        )
    })
}

#[test]
fn snapshots_of_conversions() {
    // The check of dropped keys catches a drop.
    assert_eq!(
        dropped_keys(
            "resources:\n  labels: {a: b}\nrun: x\n",
            "job \"x\" {\n  run = \"x\"\n}\n"
        ),
        ["resources.labels is neither mapped nor kept as a comment"]
    );
    let mut failures = Vec::new();
    let cases = yaml_files(&cases_dir());
    assert!(cases.len() >= 5, "{} cases", cases.len());
    for case in cases {
        let name = name_of(&case);
        let stem = name.trim_end_matches(".yaml");
        let text = std::fs::read_to_string(&case).unwrap();
        let mut conv = Converter::new(stem.ends_with("-managed"));
        let out = conv.convert(&name, &text).unwrap_or_else(|e| panic!("{e}"));
        let mut hcl = String::new();
        if let Some(i) = conv.infra() {
            hcl.push_str(&i);
            hcl.push('\n');
        }
        hcl.push_str(&out.hcl);
        failures.extend(golden(&cases_dir().join(format!("{stem}.sky.hcl")), &hcl));
        let warnings: String = out.warnings.iter().map(|w| format!("{w}\n")).collect();
        failures.extend(golden(
            &cases_dir().join(format!("{stem}.warnings")),
            &warnings,
        ));
        for problem in dropped_keys(&text, &out.hcl) {
            failures.push(format!("{name}: {problem}"));
        }
        let cfg = config_dir(&out.hcl, conv.infra().as_deref());
        if let (Some(e), _) = check(cfg.path(), &out.hcl) {
            failures.push(format!("{name}: the output is not valid:\n{e}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn bad_yaml_is_an_error_with_file_line_and_column() {
    let cases = [
        (
            "syntax.yaml",
            "run: echo hi\nresources:\n  cpus: [4\n",
            "4:1",
            "invalid YAML",
        ),
        (
            "unknown.yaml",
            "run: echo hi\nresources:\n  gpu: A100\n",
            "3:3",
            "unknown field \"gpu\"",
        ),
        (
            "unknown-top.yaml",
            "name: a\nrunn: echo hi\n",
            "2:1",
            "did you mean \"run\"",
        ),
        (
            "type.yaml",
            "run: echo hi\nnum_nodes: two\n",
            "2:12",
            "num_nodes must be a whole number",
        ),
        (
            "type-nested.yaml",
            "run: x\nresources:\n  use_spot: maybe\n",
            "3:13",
            "use_spot must be true or false",
        ),
        (
            "exclusive.yaml",
            "run: x\nservice:\n  replicas: 2\n  replica_policy:\n    min_replicas: 1\n",
            "4:3",
            "cannot both be given",
        ),
    ];
    for (file, text, at, want) in cases {
        let e = Converter::new(false)
            .convert(file, text)
            .expect_err("an error");
        let shown = e.to_string();
        assert!(
            shown.starts_with(&format!("{file}:{at}: ")),
            "{file}: {shown}"
        );
        assert!(shown.contains(want), "{file}: {shown} lacks {want:?}");
    }
    // From the command line too: nothing on stdout, the place on stderr, exit 1.
    let w = Workdir::with_files(&[("bad.yaml", "run: echo hi\nresources:\n  gpu: A100\n")]);
    let out = w.output(&["convert", "bad.yaml"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bad.yaml:3:3: unknown field \"gpu\""), "{err}");
}

#[test]
fn cli_reads_stdin_and_writes_a_directory() {
    let w = Workdir::with_files(&[
        (
            "a.yaml",
            "name: a\nresources:\n  infra: aws\n  labels: {team: ml}\nrun: echo a\n",
        ),
        ("b.yaml", "name: a\nworkdir: .\nrun: echo b\n"),
    ]);
    // Standard input: HCL on stdout, warnings on stderr.
    let mut child = w
        .command(&["convert", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write as _;
        let mut stdin = child.stdin.take().unwrap();
        stdin
            .write_all(b"resources:\n  disk_tier: best\nrun: echo hi\n")
            .unwrap();
    }
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let hcl = String::from_utf8_lossy(&out.stdout);
    assert!(hcl.contains("cluster \"task\""), "{hcl}");
    assert!(hcl.contains("# resources.disk_tier (line 2)"), "{hcl}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("warning: -:2: resources.disk_tier:"), "{err}");
    // Two files into one directory: one configuration, names kept apart, clouds declared.
    let text = w.ok(&["convert", "-out", "out", "a.yaml", "b.yaml"]);
    assert!(text.contains("a.yaml -> "), "{text}");
    let a = std::fs::read_to_string(w.path().join("out/a.sky.hcl")).unwrap();
    let b = std::fs::read_to_string(w.path().join("out/b.sky.hcl")).unwrap();
    assert!(a.contains("cluster \"a\""));
    assert!(b.contains("cluster \"a-2\""), "{b}");
    // SkyPilot reads workdir from where it runs; skyform from the configuration's directory.
    assert!(b.contains("workdir = \"..\""), "{b}");
    let infra = std::fs::read_to_string(w.path().join("out/infra.sky.hcl")).unwrap();
    assert!(infra.contains("infra \"aws\" {}"), "{infra}");
    w.ok(&["validate", "out"]);
    // -json: the same, as data.
    let json = w.stdout(&["convert", "-json", "a.yaml"]);
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["files"][0]["warnings"][0]["field"], "resources.labels");
    assert_eq!(v["files"][0]["warnings"][0]["line"], 4);
}

#[test]
fn a_converted_task_sees_skypilots_variables_on_the_local_backend() {
    // SkyPilot's own example style: rank 0 is the head, the others follow it.
    let yaml = "\
name: vars
num_nodes: 2
envs:
  OUT: null
setup: |
  env | grep '^SKYPILOT_' | sort > \"$OUT/setup-$SKYPILOT_SETUP_NODE_RANK\"
run: |
  env | grep -E '^SKY(PILOT|FORM)_' | sort > \"$OUT/run-$SKYPILOT_NODE_RANK\"
";
    let w = Workdir::with_files(&[("task.yaml", yaml)]).with_home();
    let hcl = w.stdout(&["convert", "task.yaml"]);
    w.write_config(&hcl);
    let out_dir = w.path().join("out");
    std::fs::create_dir_all(&out_dir).unwrap();
    let var = format!("OUT={}", out_dir.display());
    w.ok(&["apply", "-auto-approve", "-wait", "-var", &var]);
    let read = |f: &str| std::fs::read_to_string(out_dir.join(f)).unwrap_or_default();
    let vars = |text: String| -> BTreeMap<String, String> {
        // NODE_IPS spans lines: keep the first, enough to compare.
        text.lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    };
    for rank in ["0", "1"] {
        let run = vars(read(&format!("run-{rank}")));
        assert_eq!(
            run.get("SKYPILOT_NODE_RANK").map(String::as_str),
            Some(rank),
            "{run:?}"
        );
        assert_eq!(run.get("SKYPILOT_NODE_RANK"), run.get("SKYFORM_NODE_RANK"));
        assert_eq!(run.get("SKYPILOT_NUM_NODES").map(String::as_str), Some("2"));
        assert_eq!(run.get("SKYPILOT_NODE_IPS"), run.get("SKYFORM_NODE_IPS"));
        assert_eq!(run.get("SKYPILOT_TASK_ID"), run.get("SKYFORM_JOB_ID"));
        assert_eq!(
            run.get("SKYPILOT_NUM_GPUS_PER_NODE").map(String::as_str),
            Some("0")
        );
        let setup = vars(read(&format!("setup-{rank}")));
        assert_eq!(
            setup.get("SKYPILOT_SETUP_NODE_RANK").map(String::as_str),
            Some(rank),
            "{setup:?}"
        );
        assert_eq!(
            setup.get("SKYPILOT_NUM_NODES").map(String::as_str),
            Some("2")
        );
        assert!(setup.contains_key("SKYPILOT_SETUP_NODE_IPS"), "{setup:?}");
    }
    w.ok(&["destroy", "-auto-approve", "-var", &var]);
}
