//! Test support shared by the integration tests.
#![allow(dead_code)]

pub mod servers;

use serde_json::json;
use skyform::model::{Kind, spec::computed_attributes};
use skyform::plan::{Action, Plan};
use skyform::state::{OutputState, ResourceState, State, Status};
use std::collections::BTreeMap;

/// The state a successful apply of `plan` would leave, with fixed computed values — what a
/// perfect provider would report. Pure, so golden and property tests can chain plans.
pub fn applied(plan: &Plan, prior: &State) -> State {
    let mut state = prior.clone();
    state.serial += 1;
    for c in &plan.changes {
        match c.action {
            Action::Delete => {
                state.resources.remove(&c.address);
            }
            Action::NoOp => {}
            Action::Create | Action::Update | Action::Replace => {
                let Some(spec) = c.after.clone() else {
                    continue;
                };
                let mut computed: BTreeMap<String, serde_json::Value> = BTreeMap::new();
                for a in computed_attributes(c.address.kind) {
                    let v = match (c.address.kind, *a) {
                        (Kind::Cluster, "head_ip") => json!("127.0.0.1"),
                        (Kind::Cluster, "ips") => json!(["127.0.0.1"]),
                        (Kind::Cluster, "status") => json!("UP"),
                        (Kind::Job, "status") => json!("SUCCEEDED"),
                        (Kind::Job, "exit_code") => json!(0),
                        (Kind::ManagedJob, "status") => json!("RUNNING"),
                        (Kind::Service, "status") => json!("READY"),
                        (Kind::Service, "endpoint") => json!("http://127.0.0.1:8000"),
                        (_, "placement") => json!(c.candidates.first().map(|p| p.offering.infra())),
                        _ => serde_json::Value::Null,
                    };
                    computed.insert((*a).to_string(), v);
                }
                state.resources.insert(
                    c.address.clone(),
                    ResourceState {
                        status: Status::Ready,
                        provider: "local".into(),
                        spec,
                        computed,
                        private: serde_json::Value::Null,
                        placement: c.candidates.first().cloned(),
                        dependencies: c.depends_on.clone(),
                        sensitive: c.sensitive.clone(),
                        attempts: Vec::new(),
                        leftovers: Vec::new(),
                    },
                );
            }
        }
    }
    state.outputs = plan
        .outputs
        .iter()
        .filter_map(|(k, o)| {
            o.after.clone().map(|v| {
                (
                    k.clone(),
                    OutputState {
                        value: v,
                        sensitive: o.sensitive,
                    },
                )
            })
        })
        .filter(|(_, o)| !skyform::model::contains_unknown(&o.value))
        .collect();
    state
}

/// What apply does for values unknown at plan time: once their dependencies exist, the
/// configuration is evaluated again (`plan` against the new state) and the specs recorded.
pub fn resolve_unknowns(state: &mut State, replan: &Plan) {
    for c in &replan.changes {
        let (Some(after), Some(r)) = (&c.after, state.resources.get_mut(&c.address)) else {
            continue;
        };
        let has_unknown = |s: &skyform::model::Spec| {
            skyform::model::contains_unknown(&serde_json::Value::Object(s.attributes()))
        };
        if has_unknown(&r.spec) && !has_unknown(after) {
            r.spec = after.clone();
        }
    }
}
