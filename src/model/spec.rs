//! The desired state of each resource kind, as decoded from configuration.
//!
//! Specs are plain data with canonical serde forms: the plan diffs their JSON forms attribute
//! by attribute, and state stores them as written.

use super::address::{Address, Kind};
use super::request::{Accelerators, Cpus, Memory};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// A value that is known only after apply. Config evaluation carries it as this exact string,
/// so it survives interpolation (`"${cluster.dev.head_ip}:8080"` stays unknown).
pub const UNKNOWN: &str = "\u{1}(known after apply)\u{1}";

/// Whether a JSON value is, or contains, an unknown.
pub fn contains_unknown(v: &serde_json::Value) -> bool {
    match v {
        serde_json::Value::String(s) => s.contains(UNKNOWN),
        serde_json::Value::Array(a) => a.iter().any(contains_unknown),
        serde_json::Value::Object(o) => o.values().any(contains_unknown),
        _ => false,
    }
}

/// What a resource asks of the machines it runs on. Outer attributes are defaults for each
/// `any_of` / `ordered` candidate.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Resources {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub accelerators: Option<Accelerators>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpus: Option<Cpus>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory: Option<Memory>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub use_spot: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub infra: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub instance_type: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub disk_size: Option<u32>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_hourly_cost: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub image_id: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub any_of: Vec<Resources>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub ordered: Vec<Resources>,
}

impl Resources {
    /// Whether spot machines are asked for (an unset `use_spot` means on demand).
    pub fn spot(&self) -> bool {
        self.use_spot.unwrap_or(false)
    }

    /// The candidate requests: each `any_of`/`ordered` block with the outer attributes as
    /// defaults, or the outer request alone.
    pub fn candidates(&self) -> Vec<Resources> {
        let inner = if self.ordered.is_empty() {
            &self.any_of
        } else {
            &self.ordered
        };
        if inner.is_empty() {
            return vec![self.clone()];
        }
        inner
            .iter()
            .map(|c| Resources {
                accelerators: c.accelerators.clone().or_else(|| self.accelerators.clone()),
                cpus: c.cpus.or(self.cpus),
                memory: c.memory.or(self.memory),
                use_spot: c.use_spot.or(self.use_spot),
                infra: c.infra.clone().or_else(|| self.infra.clone()),
                instance_type: c
                    .instance_type
                    .clone()
                    .or_else(|| self.instance_type.clone()),
                disk_size: c.disk_size.or(self.disk_size),
                ports: if c.ports.is_empty() {
                    self.ports.clone()
                } else {
                    c.ports.clone()
                },
                max_hourly_cost: c.max_hourly_cost.or(self.max_hourly_cost),
                image_id: c.image_id.clone().or_else(|| self.image_id.clone()),
                any_of: Vec::new(),
                ordered: Vec::new(),
            })
            .collect()
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Autostop {
    pub idle_minutes: u32,
    #[serde(default)]
    pub down: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClusterSpec {
    pub num_nodes: u32,
    pub resources: Resources,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub workdir: Option<String>,
    /// Content hash of `workdir` (sha256 over paths, modes and contents).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub workdir_hash: Option<String>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub envs: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub setup: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub autostop: Option<Autostop>,
    /// When every placement fails, start over from the first after a pause, until one works.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub retry_until_up: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobSpec {
    pub cluster: Address,
    pub num_nodes: u32,
    #[serde(default)]
    pub resources: Resources,
    pub run: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub envs: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub secrets: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Recovery {
    pub strategy: String,
    #[serde(default)]
    pub max_restarts_on_errors: u32,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub recover_on_exit_codes: Vec<i32>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ManagedJobSpec {
    pub num_nodes: u32,
    #[serde(default)]
    pub resources: Resources,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workdir: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workdir_hash: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub setup: Option<String>,
    pub run: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub envs: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub secrets: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recovery: Option<Recovery>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReadinessProbe {
    pub path: String,
    #[serde(default)]
    pub initial_delay_seconds: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReplicaPolicy {
    pub min_replicas: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_replicas: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_qps_per_replica: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_ondemand_fallback_replicas: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceSpec {
    #[serde(default)]
    pub resources: Resources,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workdir: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workdir_hash: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub setup: Option<String>,
    pub run: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub envs: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub secrets: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub readiness_probe: Option<ReadinessProbe>,
    pub replica_policy: ReplicaPolicy,
}

/// The controller declared as a resource (`controller "NAME" { infra = "k8s/prod" }`): apply
/// runs it there (a Kubernetes Deployment) instead of in the background on this machine.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ControllerSpec {
    /// Where it runs: `k8s/NAME`, a declared `infra "kubernetes" "NAME"` block.
    pub infra: String,
    /// The container image holding the skyform binary.
    pub image: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub envs: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub secrets: BTreeMap<String, String>,
    /// The configuration it runs with: the state block and the infra blocks, made from the
    /// configuration by the engine (the controller needs nothing else of it).
    #[serde(default)]
    pub config: String,
    /// The workspace whose state it keeps.
    #[serde(default)]
    pub workspace: String,
}

/// The desired state of one resource instance.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Spec {
    Cluster(ClusterSpec),
    Job(JobSpec),
    ManagedJob(ManagedJobSpec),
    Service(ServiceSpec),
    Controller(ControllerSpec),
}

impl Spec {
    pub fn kind(&self) -> Kind {
        match self {
            Spec::Cluster(_) => Kind::Cluster,
            Spec::Job(_) => Kind::Job,
            Spec::ManagedJob(_) => Kind::ManagedJob,
            Spec::Service(_) => Kind::Service,
            Spec::Controller(_) => Kind::Controller,
        }
    }

    /// The attributes as a JSON object without the kind tag: what the plan diffs.
    pub fn attributes(&self) -> serde_json::Map<String, serde_json::Value> {
        let v = match self {
            Spec::Cluster(s) => serde_json::to_value(s),
            Spec::Job(s) => serde_json::to_value(s),
            Spec::ManagedJob(s) => serde_json::to_value(s),
            Spec::Service(s) => serde_json::to_value(s),
            Spec::Controller(s) => serde_json::to_value(s),
        };
        match v {
            Ok(serde_json::Value::Object(m)) => m,
            _ => serde_json::Map::new(),
        }
    }

    /// A spec of the same kind with these attributes (the inverse of [`Spec::attributes`]).
    pub fn with_attributes(
        &self,
        attrs: serde_json::Map<String, serde_json::Value>,
    ) -> Option<Spec> {
        let mut m = attrs;
        m.insert(
            "kind".into(),
            serde_json::Value::String(self.kind().as_str().into()),
        );
        serde_json::from_value(serde_json::Value::Object(m)).ok()
    }

    /// The request the optimizer places, for kinds that get machines of their own.
    pub fn placement_request(&self) -> Option<(&Resources, u32)> {
        match self {
            Spec::Cluster(s) => Some((&s.resources, s.num_nodes)),
            Spec::ManagedJob(s) => Some((&s.resources, s.num_nodes)),
            Spec::Service(s) => Some((&s.resources, s.replica_policy.min_replicas.max(1))),
            Spec::Job(_) | Spec::Controller(_) => None,
        }
    }
}

/// How a change to one top-level attribute is carried out (SPEC §3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Effect {
    InPlace,
    Replace,
}

/// The effect of changing attribute `attr` of a resource of kind `kind`.
pub fn effect_of(kind: Kind, attr: &str) -> Effect {
    match (kind, attr) {
        (
            Kind::Cluster,
            "setup" | "workdir" | "workdir_hash" | "envs" | "autostop" | "retry_until_up",
        ) => Effect::InPlace,
        (Kind::ManagedJob, "recovery") => Effect::InPlace,
        // Services roll their replicas one by one rather than replacing the service.
        (Kind::Service, _) => Effect::InPlace,
        // A Deployment rolls to a new configuration or image; another place is a new one.
        (Kind::Controller, "infra") => Effect::Replace,
        (Kind::Controller, _) => Effect::InPlace,
        _ => Effect::Replace,
    }
}

/// The attributes a resource exports that are known only once it exists.
pub fn computed_attributes(kind: Kind) -> &'static [&'static str] {
    match kind {
        Kind::Cluster => &["head_ip", "ips", "placement", "status"],
        Kind::Job | Kind::ManagedJob => &["status", "exit_code", "placement"],
        Kind::Service => &["endpoint", "placement", "status"],
        Kind::Controller => &["status"],
    }
}

/// `lifecycle { ... }` settings.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Lifecycle {
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub prevent_destroy: bool,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub ignore_changes: Vec<String>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub create_before_destroy: bool,
}
