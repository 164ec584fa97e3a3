//! The configuration a declared controller runs with (`controller "NAME" { infra = … }`).
//!
//! A controller needs only where the state is and how to reach the backends: the `state`
//! block and the `infra` blocks, whose settings are literal (read before anything is
//! evaluated), so they can be written out as they are. Jobs, variables and modules stay
//! behind: the controller reads what to run from the state. What names a file or a
//! program on the applying machine is left out; the controller's own context is reached
//! with the credentials of its pod instead.

use super::{Config, InfraConfig, StateBackend};
use crate::model::Kind;
use hcl::{Block, Body};

/// Settings that name something on the applying machine.
const MACHINE_LOCAL: [(&str, &str); 2] = [("kubernetes", "kubeconfig"), ("aws", "profile")];

/// The `main.sky.hcl` of a declared controller: the state block and the infra blocks, without
/// those of this machine (the controller never runs jobs where it runs).
pub fn file_for(config: &Config) -> String {
    let mut body = Body::builder();
    if let Some(state) = &config.state_backend {
        body = body.add_block(
            Block::builder("skyform")
                .add_block(state_block(state))
                .build(),
        );
    }
    for infra in config.infra.iter().filter(|i| i.kind != "local") {
        body = body.add_block(infra_block(infra));
    }
    let text = hcl::to_string(&body.build()).unwrap_or_default();
    format!(
        "# Written by skyform apply for its controller: the state and infra blocks of the\n# configuration it was applied from.\n{text}"
    )
}

fn state_block(state: &StateBackend) -> Block {
    let mut b = Block::builder("state").add_label(state.kind.as_str());
    for (k, v) in &state.settings {
        b = b.add_attribute((k.as_str(), v.as_str()));
    }
    b.build()
}

fn infra_block(infra: &InfraConfig) -> Block {
    let mut b = Block::builder("infra").add_label(infra.kind.as_str());
    if let Some(name) = &infra.name {
        b = b.add_label(name.as_str());
    }
    for (k, v) in &infra.settings {
        if MACHINE_LOCAL.contains(&(infra.kind.as_str(), k.as_str())) {
            continue;
        }
        b = b.add_attribute((k.as_str(), super::value::json_to_hcl(v)));
    }
    b.build()
}

/// A controller the root module declares: its address (managed jobs depend on it, so it
/// runs before they are handed over and stops after they are cancelled), the file it runs
/// with, and whether the state is somewhere it can reach.
#[derive(Debug, Clone)]
pub struct Declared {
    pub address: crate::model::Address,
    pub file: String,
    /// The state is the local file, which a controller elsewhere cannot read.
    pub local_state: bool,
}

impl Declared {
    pub fn of(config: &Config) -> Option<Declared> {
        let (_, name) = config
            .root
            .resources
            .keys()
            .find(|(kind, _)| *kind == Kind::Controller)?;
        Some(Declared {
            address: crate::model::Address::new(Kind::Controller, name.clone()),
            file: file_for(config),
            local_state: config
                .state_backend
                .as_ref()
                .is_none_or(|b| b.kind == "local"),
        })
    }
}

/// Whether the configuration declares a controller to run elsewhere: then apply never
/// starts one in the background here.
pub fn declared(config: &Config) -> bool {
    config
        .root
        .resources
        .keys()
        .any(|(kind, _)| *kind == Kind::Controller)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_file_keeps_state_and_infra_and_leaves_this_machine_out() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("main.sky.hcl"),
            r#"
skyform {
  state "s3" {
    bucket   = "team"
    key      = "ml/state.json"
    endpoint = "http://127.0.0.1:5000"
  }
}
infra "local" {}
infra "kubernetes" "prod" {
  context    = "prod-admin"
  kubeconfig = "~/.kube/prod"
  namespace  = "ml"
}
infra "aws" {
  regions = ["us-east-1"]
}
controller "main" {
  infra = "k8s/prod"
}
"#,
        )
        .unwrap();
        let (config, diags) = super::super::load(dir.path());
        assert!(!diags.has_errors(), "{diags:?}");
        assert!(declared(&config));
        let text = file_for(&config);
        // It loads as a configuration of its own, with the same state and backends.
        std::fs::create_dir(dir.path().join("c")).unwrap();
        std::fs::write(dir.path().join("c/main.sky.hcl"), &text).unwrap();
        let (again, diags) = super::super::load(&dir.path().join("c"));
        assert!(!diags.has_errors(), "{text}\n{diags:?}");
        assert_eq!(again.state_backend, config.state_backend);
        let kinds: Vec<(&str, Option<&str>)> = again
            .infra
            .iter()
            .map(|i| (i.kind.as_str(), i.name.as_deref()))
            .collect();
        assert_eq!(kinds, [("kubernetes", Some("prod")), ("aws", None)]);
        let k8s = &again.infra[0].settings;
        assert_eq!(
            k8s.get("context").and_then(|v| v.as_str()),
            Some("prod-admin")
        );
        assert!(!k8s.contains_key("kubeconfig"), "{text}");
        assert!(!declared(&again));
    }

    #[test]
    fn managed_jobs_and_services_depend_on_the_controller() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("main.sky.hcl"),
            r#"
skyform {
  state "s3" {
    bucket = "team"
  }
}
infra "kubernetes" "prod" {}
controller "main" {
  infra = "k8s/prod"
}
managed_job "train" {
  run = "true"
}
service "web" {
  run = "true"
}
cluster "dev" {}
job "j" {
  cluster = cluster.dev
  run     = "true"
}
"#,
        )
        .unwrap();
        let (config, diags) = super::super::load(dir.path());
        assert!(!diags.has_errors(), "{diags:?}");
        let mut sink = super::super::Collect::default();
        let (_, diags) =
            super::super::evaluate(&config, &std::collections::BTreeMap::new(), &mut sink);
        assert!(!diags.has_errors(), "{diags:?}");
        let mut on_controller: Vec<String> = sink
            .instances
            .iter()
            .filter(|i| i.depends_on.iter().any(|d| d.kind == Kind::Controller))
            .map(|i| i.address.to_string())
            .collect();
        on_controller.sort();
        // Removed before the controller is: a service's replicas are the controller's to end.
        assert_eq!(on_controller, ["managed_job.train", "service.web"]);
    }
}
