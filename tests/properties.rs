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
