//! Property tests of the planner: re-planning an applied configuration is a no-op, and the same
//! inputs give a byte-identical plan.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use proptest::prelude::*;
use skyform::config::{self, VarArgs};
use skyform::optimizer::Offering;
use skyform::plan::{self, Options};
use skyform::state::State;
use std::collections::BTreeMap;

#[derive(Debug, Clone)]
struct Gen {
    clusters: Vec<(u32, Option<String>)>,
    jobs: Vec<(usize, String, Vec<String>, bool)>,
}

fn configs() -> impl Strategy<Value = Gen> {
    let cluster = (1u32..4, proptest::option::of("[a-z ]{1,12}"));
    (
        proptest::collection::vec(cluster, 1..4),
        proptest::collection::vec(
            (
                0usize..4,
                "[a-z0-9 ]{1,16}",
                proptest::collection::vec("[a-z]{1,3}", 0..4),
                any::<bool>(),
            ),
            0..6,
        ),
    )
        .prop_map(|(clusters, jobs)| Gen { clusters, jobs })
}

fn render(g: &Gen) -> String {
    let mut s = String::new();
    for (i, (nodes, setup)) in g.clusters.iter().enumerate() {
        s.push_str(&format!("cluster \"c{i}\" {{\n  num_nodes = {nodes}\n"));
        if let Some(setup) = setup {
            s.push_str(&format!("  setup = \"{setup}\"\n"));
        }
        s.push_str("}\n\n");
    }
    for (j, (cluster, run, keys, depends)) in g.jobs.iter().enumerate() {
        let c = cluster % g.clusters.len();
        s.push_str(&format!(
            "job \"j{j}\" {{\n  cluster = cluster.c{c}\n  run = \"{run}\"\n"
        ));
        if !keys.is_empty() {
            let quoted: Vec<String> = keys.iter().map(|k| format!("\"{k}\"")).collect();
            s.push_str(&format!("  for_each = toset([{}])\n", quoted.join(", ")));
        }
        if *depends && j > 0 {
            s.push_str(&format!("  depends_on = [job.j{}]\n", j - 1));
        }
        s.push_str("}\n\n");
    }
    s.push_str("output \"ip\" {\n  value = cluster.c0.head_ip\n}\n");
    s
}

fn offers() -> Vec<Offering> {
    vec![Offering {
        cloud: "local".into(),
        region: None,
        zone: None,
        instance_type: "local".into(),
        accelerators: Vec::new(),
        cpus: 4.0,
        memory_gib: 8.0,
        spot: false,
        price: 0,
        max_nodes: None,
    }]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn apply_then_plan_is_a_no_op(g in configs()) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("main.sky.hcl"), render(&g)).unwrap();
        let (mut cfg, d) = config::load(dir.path());
        prop_assert!(!d.has_errors(), "{}", d.render(&cfg.sources, false));
        let (inputs, _) = config::inputs(&mut cfg, &VarArgs::default(), &BTreeMap::new());
        let empty = State::new();
        let (first, d) = plan::plan(&cfg, &inputs, &empty, &offers(), &Options::default());
        prop_assert!(!d.has_errors(), "{}", d.render(&cfg.sources, false));
        prop_assert!(first.has_changes());

        let mut state = support::applied(&first, &empty);
        let (settle, _) = plan::plan(&cfg, &inputs, &state, &offers(), &Options::default());
        state.outputs = support::applied(&settle, &state).outputs;
        let (second, d) = plan::plan(&cfg, &inputs, &state, &offers(), &Options::default());
        prop_assert!(!d.has_errors());
        let changed: Vec<String> = second.changes.iter().filter(|c| c.action.is_change()).map(|c| c.address.to_string()).collect();
        prop_assert!(!second.has_changes(), "re-plan proposes {:?} for\n{}", changed, render(&g));
    }

    #[test]
    fn the_same_inputs_give_the_same_bytes(g in configs()) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("main.sky.hcl"), render(&g)).unwrap();
        let once = || {
            let (mut cfg, _) = config::load(dir.path());
            let (inputs, _) = config::inputs(&mut cfg, &VarArgs::default(), &BTreeMap::new());
            let mut state = State::new();
            state.lineage = "fixed".into();
            let (p, _) = plan::plan(&cfg, &inputs, &state, &offers(), &Options::default());
            (serde_json::to_vec(&skyform::render::json::plan(&p)).unwrap(), skyform::render::human::plan(&p, &skyform::render::Style { color: false }))
        };
        prop_assert_eq!(once(), once());
    }
}

/// `file:line:col` of an error, if it points at a real place in a file that was read.
fn positioned(d: &config::Diagnostic, sources: &config::Sources) -> Option<String> {
    let loc = d.location.as_ref()?;
    if loc.file >= sources.len() || loc.span.start > sources.text(loc.file).len() {
        return None;
    }
    d.position(sources)
}

/// Pieces of configuration, shuffled into mostly-broken files.
fn fragments() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        Just("cluster \"a\" {".to_string()),
        Just("job \"j\" {".to_string()),
        Just("managed_job \"m\" {".to_string()),
        Just("service \"s\" {".to_string()),
        Just("module \"x\" {\n source = \"./nope\"".to_string()),
        Just("resources {".to_string()),
        Just("}".to_string()),
        Just("run = \"echo ${var.x}\"".to_string()),
        Just("cluster = cluster.a".to_string()),
        Just("count = -1".to_string()),
        Just("for_each = toset([1, \"a\", null])".to_string()),
        Just("accelerators = \"A100:x\"".to_string()),
        Just("cpus = \"32++\"".to_string()),
        Just("memory = [1, 2]".to_string()),
        Just("depends_on = [job.j, cluster.a, \"x\"]".to_string()),
        Just("variable \"x\" { type = list(map(number)) }".to_string()),
        Just("locals { l = local.l }".to_string()),
        Just("output \"o\" { value = cluster.a.ips[99] }".to_string()),
        Just("lifecycle { ignore_changes = [run, 3] }".to_string()),
        Just("envs = { A = 1, B = [2] }".to_string()),
        Just("num_nodes = 1e30".to_string()),
        Just("${".to_string()),
        Just("\"unterminated".to_string()),
        Just("<<EOT\nx\n".to_string()),
        "[ -~]{0,12}",
        "\\PC{0,6}",
    ];
    proptest::collection::vec(piece, 0..14).prop_map(|v| v.join("\n"))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    /// No input may cause a panic: every broken configuration gets diagnostics instead, and
    /// every error among them says where (file, line, column) the problem is.
    #[test]
    fn broken_configurations_never_panic(text in fragments()) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("main.sky.hcl"), &text).unwrap();
        let (mut cfg, d) = config::load(dir.path());
        let (inputs, d_inputs) = config::inputs(&mut cfg, &VarArgs::default(), &BTreeMap::new());
        let _ = d.render(&cfg.sources, false);
        let (p, d2) = plan::plan(&cfg, &inputs, &State::new(), &offers(), &Options::default());
        let _ = d2.render(&cfg.sources, false);
        let _ = skyform::render::human::plan(&p, &skyform::render::Style { color: false });
        let d3 = config::validate(&cfg, &inputs);
        let all = [&d, &d_inputs, &d2, &d3];
        let errors: Vec<&config::Diagnostic> =
            all.iter().flat_map(|ds| ds.items.iter()).filter(|e| e.is_error()).collect();
        let unplaced: Vec<&str> = errors
            .iter()
            .filter(|e| positioned(e, &cfg.sources).is_none())
            .map(|e| e.message.as_str())
            .collect();
        prop_assert!(unplaced.is_empty(), "errors without a position {:?} for:\n{}", unplaced, text);
    }
}

/// The broken pieces above, each alone in an otherwise sound file, so the property cannot
/// pass by every generated file happening to be fine: each must give a placed error.
#[test]
fn each_broken_piece_is_reported_with_a_position() {
    let cases = [
        "cluster \"a\" {",
        "}",
        "module \"x\" {\n source = \"./nope\"\n}",
        "cluster \"a\" {\n count = -1\n}",
        "cluster \"a\" {\n for_each = toset([1, \"a\", null])\n}",
        "cluster \"a\" {\n resources {\n accelerators = \"A100:x\"\n }\n}",
        "cluster \"a\" {\n resources {\n cpus = \"32++\"\n }\n}",
        "cluster \"a\" {\n resources {\n memory = [1, 2]\n }\n}",
        "cluster \"a\" {\n num_nodes = 1e30\n}",
        "cluster \"a\" {\n envs = { A = 1, B = [2] }\n}",
        "cluster \"a\" {}\njob \"j\" {\n cluster = cluster.a\n run = \"echo ${var.x}\"\n}",
        "cluster \"a\" {}\njob \"j\" {\n cluster = cluster.a\n run = \"x\"\n depends_on = [job.j, cluster.a, \"x\"]\n}",
        "cluster \"a\" {\n lifecycle { ignore_changes = [run, 3] }\n}",
        "locals { l = local.l }",
        "output \"o\" { value = cluster.a.ips[99] }",
        "variable \"x\" { type = list(map(number)) }",
        "${",
        "cluster \"a\" {\n setup = \"unterminated\n}",
        "cluster \"a\" {\n setup = <<EOT\nx\n}",
    ];
    for text in cases {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("main.sky.hcl"), text).unwrap();
        let (mut cfg, d) = config::load(dir.path());
        let (inputs, d_inputs) = config::inputs(&mut cfg, &VarArgs::default(), &BTreeMap::new());
        let (_, d2) = plan::plan(&cfg, &inputs, &State::new(), &offers(), &Options::default());
        let errors: Vec<&config::Diagnostic> = [&d, &d_inputs, &d2]
            .into_iter()
            .flat_map(|ds| ds.items.iter())
            .filter(|e| e.is_error())
            .collect();
        assert!(
            errors.iter().any(|e| positioned(e, &cfg.sources).is_some()),
            "no placed error for:\n{text}\ngot: {errors:?}"
        );
    }
}

/// Syntactically valid configurations with random, often ill-typed, attributes.
fn wellformed() -> impl Strategy<Value = String> {
    let kind = prop_oneof![
        Just("cluster"),
        Just("job"),
        Just("managed_job"),
        Just("service")
    ];
    let name = prop_oneof![Just("a"), Just("b"), Just("c")];
    let attr = prop_oneof![
        Just("num_nodes"),
        Just("run"),
        Just("cluster"),
        Just("envs"),
        Just("secrets"),
        Just("setup"),
        Just("count"),
        Just("for_each"),
        Just("depends_on"),
        Just("workdir"),
    ];
    let value = prop_oneof![
        Just("1"),
        Just("0"),
        Just("-3"),
        Just("2.5"),
        Just("\"x\""),
        Just("true"),
        Just("null"),
        Just("[]"),
        Just("{}"),
        Just("{ k = \"v\" }"),
        Just("[\"a\", \"a\"]"),
        Just("toset([\"p\", \"q\"])"),
        Just("cluster.a"),
        Just("cluster.b.head_ip"),
        Just("job.a"),
        Just("var.v"),
        Just("local.l"),
        Just("each.key"),
        Just("count.index"),
        Just("length(cluster.a.ips)"),
        Just("\"${cluster.a.head_ip}\""),
        Just("[cluster.a, job.b]"),
        Just("module.m.o"),
        Just("format(\"%d\", \"x\")"),
        Just("range(3)"),
        Just("merge({a = 1}, [1])"),
        Just("lookup({}, \"k\")"),
        Just("file(\"missing\")"),
        Just("{ for k, v in { a = 1 } : k => v }"),
        Just("[for x in range(2) : x * 2]"),
    ];
    let block = (
        kind,
        name,
        proptest::collection::vec((attr, value), 0..5),
        any::<bool>(),
    )
        .prop_map(|(k, n, attrs, res)| {
            let mut s = format!("{k} \"{n}\" {{\n");
            for (a, v) in attrs {
                s.push_str(&format!("  {a} = {v}\n"));
            }
            if res {
                s.push_str("  resources {\n    cpus = \"1+\"\n  }\n");
            }
            if k == "service" {
                s.push_str("  replica_policy {\n    min_replicas = 1\n  }\n");
            }
            s.push_str("}\n");
            s
        });
    let extra = prop_oneof![
        Just(String::new()),
        Just("variable \"v\" {\n  default = [1]\n}\n".to_string()),
        Just("locals {\n  l = var.v\n}\n".to_string()),
        Just("output \"o\" {\n  value = cluster.a\n}\n".to_string()),
    ];
    (proptest::collection::vec(block, 0..6), extra)
        .prop_map(|(b, e)| format!("{e}{}", b.join("\n")))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]

    #[test]
    fn ill_typed_configurations_never_panic(text in wellformed()) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("main.sky.hcl"), &text).unwrap();
        let (mut cfg, d) = config::load(dir.path());
        let (inputs, _) = config::inputs(&mut cfg, &VarArgs::default(), &BTreeMap::new());
        let _ = d.render(&cfg.sources, false);
        let (p, d2) = plan::plan(&cfg, &inputs, &State::new(), &offers(), &Options::default());
        let _ = d2.render(&cfg.sources, false);
        let _ = skyform::render::json::plan(&p);
        let unplaced: Vec<&str> = d.items.iter().chain(&d2.items)
            .filter(|e| e.is_error() && positioned(e, &cfg.sources).is_none())
            .map(|e| e.message.as_str())
            .collect();
        prop_assert!(unplaced.is_empty(), "errors without a position {:?} for:\n{}", unplaced, text);
        // Whatever plans cleanly also re-plans to nothing once applied.
        if !d.has_errors() && !d2.has_errors() {
            let mut state = support::applied(&p, &State::new());
            // Values unknown at plan time are filled in as their dependencies come to exist.
            for _ in 0..4 {
                let (settle, _) = plan::plan(&cfg, &inputs, &state, &offers(), &Options::default());
                support::resolve_unknowns(&mut state, &settle);
                state.outputs = support::applied(&settle, &state).outputs;
            }
            let (again, _) = plan::plan(&cfg, &inputs, &state, &offers(), &Options::default());
            let changed: Vec<String> = again.changes.iter().filter(|c| c.action.is_change()).map(|c| c.address.to_string()).collect();
            prop_assert!(!again.has_changes(), "re-plan proposes {:?} for:\n{}", changed, text);
        }
    }
}

/// A reference to a computed attribute is unknown when planning, but its type is not: `head_ip`
/// is a string whatever its value, so a map attribute given it is wrong at the first plan (and
/// not only once the value is known, when a re-plan would propose a change).
#[test]
fn an_unknown_of_known_type_is_type_checked_at_the_first_plan() {
    let text = "cluster \"b\" {}\ncluster \"a\" { envs = cluster.b.head_ip }\noutput \"o\" { value = cluster.a }\n";
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("main.sky.hcl"), text).unwrap();
    let (mut cfg, d) = config::load(dir.path());
    assert!(!d.has_errors(), "{}", d.render(&cfg.sources, false));
    let (inputs, _) = config::inputs(&mut cfg, &VarArgs::default(), &BTreeMap::new());
    let (_, d) = plan::plan(&cfg, &inputs, &State::new(), &offers(), &Options::default());
    let errors: Vec<String> = d
        .items
        .iter()
        .filter(|e| e.is_error())
        .map(|e| {
            format!(
                "{} @ {}",
                e.message,
                positioned(e, &cfg.sources).unwrap_or_default()
            )
        })
        .collect();
    assert_eq!(
        errors,
        ["envs must be a map of strings, but cluster.b.head_ip is a string @ main.sky.hcl:2:22"]
    );
}
