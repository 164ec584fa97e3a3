//! SkyPilot's environment variables beside skyform's own, so scripts written for SkyPilot
//! (`$SKYPILOT_NODE_RANK`, …) run unchanged. Every backend calls [`add_vars`] where it sets
//! `SKYFORM_NODE_RANK`, so the two sets always carry the same values in the same formats.

use std::collections::BTreeMap;

/// Which script the variables are for: SkyPilot names setup's rank and addresses apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Setup,
    Run,
}

/// Adds SkyPilot's names for the `SKYFORM_*` values already in `envs`: the rank, the node
/// count, the node addresses (one a line; `ips` when `envs` has none), the task id
/// (`SKYFORM_TASK_ID`, else `SKYFORM_JOB_ID`) and, when known, the GPUs per node (a whole
/// number, as SkyPilot gives it).
pub fn add_vars(
    envs: &mut BTreeMap<String, String>,
    phase: Phase,
    ips: Option<&[String]>,
    gpus_per_node: Option<f64>,
) {
    let get = |k: &str| envs.get(k).cloned();
    let rank = get("SKYFORM_NODE_RANK");
    let nodes = get("SKYFORM_NUM_NODES");
    let ips = get("SKYFORM_NODE_IPS").or_else(|| ips.map(|i| i.join("\n")));
    let task = get("SKYFORM_TASK_ID").or_else(|| get("SKYFORM_JOB_ID"));
    let gpus = gpus_per_node.map(|g| (g.max(0.0).ceil() as u64).to_string());
    let (rank_key, ips_key) = match phase {
        Phase::Run => ("SKYPILOT_NODE_RANK", "SKYPILOT_NODE_IPS"),
        Phase::Setup => ("SKYPILOT_SETUP_NODE_RANK", "SKYPILOT_SETUP_NODE_IPS"),
    };
    let pairs = [
        (rank_key, rank),
        (ips_key, ips),
        ("SKYPILOT_NUM_NODES", nodes),
        ("SKYPILOT_TASK_ID", task),
        ("SKYPILOT_NUM_GPUS_PER_NODE", gpus),
    ];
    for (k, v) in pairs {
        if let Some(v) = v {
            envs.insert(k.to_string(), v);
        }
    }
}

/// GPUs per node of a single accelerator request (`A100:8` → 8); none for a choice of
/// several, which only the placement settles.
pub fn gpus_of(r: &crate::model::Resources) -> Option<f64> {
    match &r.accelerators {
        Some(crate::model::Accelerators::One(a)) => Some(a.count),
        Some(_) => None,
        None => Some(0.0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_and_setup_names() {
        let mut e = BTreeMap::new();
        e.insert("SKYFORM_NODE_RANK".to_string(), "1".to_string());
        e.insert("SKYFORM_NUM_NODES".to_string(), "2".to_string());
        e.insert(
            "SKYFORM_NODE_IPS".to_string(),
            "10.0.0.1\n10.0.0.2".to_string(),
        );
        e.insert("SKYFORM_JOB_ID".to_string(), "j-1".to_string());
        let mut run = e.clone();
        add_vars(&mut run, Phase::Run, None, Some(0.5));
        assert_eq!(run["SKYPILOT_NODE_RANK"], "1");
        assert_eq!(run["SKYPILOT_NUM_NODES"], "2");
        assert_eq!(run["SKYPILOT_NODE_IPS"], "10.0.0.1\n10.0.0.2");
        assert_eq!(run["SKYPILOT_TASK_ID"], "j-1");
        assert_eq!(run["SKYPILOT_NUM_GPUS_PER_NODE"], "1");
        let mut setup = e;
        setup.remove("SKYFORM_NODE_IPS");
        add_vars(
            &mut setup,
            Phase::Setup,
            Some(&["a".into(), "b".into()]),
            None,
        );
        assert_eq!(setup["SKYPILOT_SETUP_NODE_RANK"], "1");
        assert_eq!(setup["SKYPILOT_SETUP_NODE_IPS"], "a\nb");
        assert!(!setup.contains_key("SKYPILOT_NODE_RANK"));
        assert!(!setup.contains_key("SKYPILOT_NUM_GPUS_PER_NODE"));
    }
}
