//! Golden tests: configurations and prior states → expected diagnostics and plans.
//!
//! - `testdata/config/invalid/<case>/` holds a broken configuration (`*.sky.hcl`) and
//!   `expected.txt`, the diagnostics exactly as `skyform plan` prints them.
//! - `testdata/plan/<case>/` holds a configuration and optionally `prior/` (the configuration
//!   as last applied: the prior state is what applying it leaves), `prior_patch.json` (changes
//!   to that state: a tainted cluster, a failed job) and `options.json` ({"destroy", "replace",
//!   "target", "vars", "price_per_hour"}), with `expected.txt` (human) and `expected.json`
//!   (`plan -json`).
//!
//! Run with `SKYFORM_BLESS=1` to (re)write the expected files, then review the diff.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use skyform::config::{self, Collect, VarArgs};
use skyform::model::Address;
use skyform::optimizer::{Offering, micros_from_dollars};
use skyform::plan::{self, Options};
use skyform::render::{self, Style};
use skyform::state::State;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

mod support;

fn cases(dir: &str) -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join(dir);
    let mut v: Vec<PathBuf> = std::fs::read_dir(&root)
        .unwrap_or_else(|e| panic!("{}: {e}", root.display()))
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.is_dir())
        .collect();
    v.sort();
    v
}

fn bless() -> bool {
    std::env::var_os("SKYFORM_BLESS").is_some()
}

/// Compares `actual` with the file, or writes it when blessing. Returns a failure message.
fn check(path: &Path, actual: &str) -> Option<String> {
    if bless() {
        std::fs::write(path, actual).expect("write golden");
        return None;
    }
    let expected = std::fs::read_to_string(path).unwrap_or_default();
    if expected == actual {
        return None;
    }
    let diff = similar::TextDiff::from_lines(&expected, actual);
    Some(format!(
        "{} differs (SKYFORM_BLESS=1 rewrites it):\n{}",
        path.display(),
        diff.unified_diff().header("expected", "actual")
    ))
}

fn validate_output(dir: &Path) -> (String, bool) {
    let (mut config, mut diags) = config::load(dir);
    let env = BTreeMap::new();
    let (inputs, vd) = config::inputs(&mut config, &VarArgs::default(), &env);
    diags.extend(vd);
    // Structure and evaluation problems, all in one pass (as plan reports them).
    let mut c = Collect::default();
    let (_, ed) = config::evaluate(&config, &inputs, &mut c);
    diags.extend(ed);
    diags.sort();
    (diags.render(&config.sources, false), diags.has_errors())
}

#[test]
fn invalid_configs_give_exact_diagnostics() {
    let all = cases("testdata/config/invalid");
    assert!(
        all.len() >= 30,
        "expected at least 30 invalid-config cases, found {}",
        all.len()
    );
    let mut failures = Vec::new();
    for case in all {
        let (out, has_errors) = validate_output(&case);
        if !has_errors {
            failures.push(format!("{}: no error reported", case.display()));
            continue;
        }
        // Every error names file:line:col and carries a hint.
        if !out.contains("┌─") && !out.contains("-->") {
            failures.push(format!("{}: no source position in:\n{out}", case.display()));
        }
        if !out.contains("hint: ") {
            failures.push(format!("{}: no hint in:\n{out}", case.display()));
        }
        if let Some(f) = check(&case.join("expected.txt"), &out) {
            failures.push(f);
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

/// The one offering golden plans see: a fixed local machine (so plans do not depend on the
/// machine running the tests).
fn offerings(price: f64) -> Vec<Offering> {
    vec![Offering {
        cloud: "local".into(),
        region: None,
        zone: None,
        instance_type: "local".into(),
        accelerators: vec![("L4".into(), 1.0)],
        cpus: 8.0,
        memory_gib: 32.0,
        spot: false,
        price: micros_from_dollars(price),
        max_nodes: None,
    }]
}

#[derive(serde::Deserialize, Default)]
#[serde(default)]
struct CaseOptions {
    destroy: bool,
    replace: Vec<String>,
    target: Vec<String>,
    vars: Vec<String>,
    price_per_hour: f64,
    /// Offer the clouds of the fixture catalog (testdata/catalogs) as well.
    clouds: bool,
    /// Clusters that import blocks found (address → id), as the CLI would pass them.
    imports: BTreeMap<String, String>,
}

/// The local machine, and with `clouds` every offering of the fixture catalog.
fn case_offerings(opts: &CaseOptions) -> Vec<Offering> {
    let mut v = offerings(opts.price_per_hour);
    if opts.clouds {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/catalogs");
        let catalog = skyform::optimizer::catalog::Catalog::load(&dir).expect("fixture catalog");
        for cloud in ["aws", "gcp", "lambda"] {
            v.extend(catalog.offerings(cloud, 1.0, &[]));
        }
    }
    v
}

/// Plans `config` against `prior`, applies it perfectly, and settles the outputs.
fn settle(
    config: &config::Config,
    inputs: &BTreeMap<String, config::InputValue>,
    prior: &State,
    offers: &[Offering],
) -> State {
    let (p, d) = plan::plan(config, inputs, prior, offers, &Options::default());
    assert!(!d.has_errors(), "{}", d.render(&config.sources, false));
    let mut state = support::applied(&p, prior);
    let (again, _) = plan::plan(config, inputs, &state, offers, &Options::default());
    state.outputs = support::applied(&again, &state).outputs;
    state
}

pub fn plan_case(case: &Path) -> Rendered {
    let opts: CaseOptions = std::fs::read(case.join("options.json"))
        .ok()
        .map(|b| serde_json::from_slice(&b).expect("options.json"))
        .unwrap_or_default();
    let (mut config, mut diags) = config::load(case);
    let (inputs, vd) = config::inputs(
        &mut config,
        &VarArgs {
            vars: opts.vars.clone(),
            var_files: Vec::new(),
        },
        &BTreeMap::new(),
    );
    diags.extend(vd);
    assert!(
        !diags.has_errors(),
        "{}: {}",
        case.display(),
        diags.render(&config.sources, false)
    );
    let mut state = State::new();
    state.lineage = "00000000-0000-4000-8000-000000000000".into();
    let prior_dir = case.join("prior");
    if prior_dir.is_dir() {
        let (prior_config, pd) = config::load(&prior_dir);
        assert!(
            !pd.has_errors(),
            "{}: {}",
            prior_dir.display(),
            pd.render(&prior_config.sources, false)
        );
        state = settle(&prior_config, &inputs, &state, &case_offerings(&opts));
    }
    if let Ok(bytes) = std::fs::read(case.join("prior_patch.json")) {
        let patch: BTreeMap<String, serde_json::Value> =
            serde_json::from_slice(&bytes).expect("prior_patch.json");
        for (addr, p) in patch {
            let addr: Address = addr.parse().expect("address in patch");
            let r = state
                .resources
                .get_mut(&addr)
                .expect("patched address in prior state");
            if let Some(st) = p.get("status") {
                r.status = serde_json::from_value(st.clone()).expect("status");
            }
            if let Some(c) = p.get("computed").and_then(|c| c.as_object()) {
                for (k, v) in c {
                    r.computed.insert(k.clone(), v.clone());
                }
            }
        }
    }
    let mut options = Options::default();
    if let Ok(bytes) = std::fs::read(case.join("degraded.json")) {
        options.degraded = serde_json::from_slice::<BTreeMap<String, String>>(&bytes)
            .expect("degraded.json")
            .into_iter()
            .map(|(k, v)| (k.parse().expect("address"), v))
            .collect();
    }
    let parse = |v: &[String]| {
        v.iter()
            .map(|s| s.parse::<Address>().expect("address"))
            .collect::<Vec<_>>()
    };
    options.imports = opts
        .imports
        .iter()
        .map(|(a, id)| (a.parse().expect("address"), (id.clone(), BTreeMap::new())))
        .collect();
    options.destroy = opts.destroy;
    options.replace = parse(&opts.replace);
    options.targets = parse(&opts.target);
    let (plan, pd) = plan::plan(&config, &inputs, &state, &case_offerings(&opts), &options);
    assert!(
        !pd.has_errors(),
        "{}: {}",
        case.display(),
        pd.render(&config.sources, false)
    );
    let human = render::human::plan(&plan, &Style { color: false });
    let mut json = serde_json::to_string_pretty(&render::json::plan(&plan)).expect("json");
    json.push('\n');
    let markdown = render::markdown::plan(&plan);
    Rendered {
        human,
        json,
        markdown,
    }
}

/// One plan, in each format.
#[derive(Debug, PartialEq)]
pub struct Rendered {
    pub human: String,
    pub json: String,
    pub markdown: String,
}

/// The JSON plan's schema, as published in the repository.
fn plan_schema() -> jsonschema::Validator {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/schema/plan-v1.schema.json");
    let schema: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).expect("the schema")).expect("JSON");
    jsonschema::draft202012::new(&schema).expect("a valid schema")
}

/// Where a JSON plan breaks its schema, one line each.
fn schema_errors(case: &Path, json: &str) -> Option<String> {
    let doc: serde_json::Value = serde_json::from_str(json).expect("JSON plan");
    let errors: Vec<String> = plan_schema()
        .iter_errors(&doc)
        .map(|e| format!("  at {}: {e}", e.instance_path()))
        .collect();
    (!errors.is_empty()).then(|| {
        format!(
            "{}: the JSON plan does not follow docs/schema/plan-v1.schema.json:\n{}",
            case.display(),
            errors.join("\n")
        )
    })
}

/// The schema rejects what it should: it is not vacuous.
#[test]
fn the_plan_schema_rejects_broken_plans() {
    let case = Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/plan/01-create");
    let good: serde_json::Value = serde_json::from_str(&plan_case(&case).json).unwrap();
    assert!(plan_schema().is_valid(&good));
    let mut v = good.clone();
    v["resource_changes"][0]["actions"] = serde_json::json!(["create", "delete"]);
    assert!(!plan_schema().is_valid(&v), "actions in the wrong order");
    let mut v = good.clone();
    v["resource_changes"][0]
        .as_object_mut()
        .unwrap()
        .remove("after_unknown");
    assert!(!plan_schema().is_valid(&v), "a missing field");
    let mut v = good.clone();
    v["cost"]["after_micros"] = serde_json::json!(-1);
    assert!(!plan_schema().is_valid(&v), "a negative cost");
    let mut v = good;
    v["format_version"] = serde_json::json!("2");
    assert!(!plan_schema().is_valid(&v), "another format version");
}

#[test]
fn plans_match_goldens() {
    let all = cases("testdata/plan");
    assert!(
        all.len() >= 8,
        "expected at least 8 plan cases, found {}",
        all.len()
    );
    let mut failures = Vec::new();
    for case in all {
        let r = plan_case(&case);
        if r != plan_case(&case) {
            failures.push(format!(
                "{}: two plans of the same inputs differ",
                case.display()
            ));
        }
        let Rendered {
            human,
            json,
            markdown,
        } = r;
        failures.extend(check(&case.join("expected.txt"), &human));
        failures.extend(check(&case.join("expected.json"), &json));
        failures.extend(check(&case.join("expected.md"), &markdown));
        if markdown.chars().count() > render::markdown::LIMIT {
            failures.push(format!(
                "{}: the markdown plan has {} characters, more than one comment holds",
                case.display(),
                markdown.chars().count()
            ));
        }
        failures.extend(schema_errors(&case, &json));
        // Secrets never reach output.
        for needle in ["hunter2", "sk-live"] {
            if human.contains(needle) || json.contains(needle) || markdown.contains(needle) {
                failures.push(format!(
                    "{}: a sensitive value ({needle}) appears in the plan",
                    case.display()
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}
