//! The desired state of each resource kind, as decoded from configuration.
//!
//! Specs are plain data with canonical serde forms: the plan diffs their JSON forms attribute
//! by attribute, and state stores them as written.

use super::address::{Address, Kind};
use super::request::{Accelerators, Cpus, Memory};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

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
    /// The empty request, one value for the whole process.
    pub fn none() -> Arc<Resources> {
        static NONE: OnceLock<Arc<Resources>> = OnceLock::new();
        NONE.get_or_init(|| Arc::new(Resources::default())).clone()
    }

    /// `r` to keep in a job: the shared empty request when it asks for nothing.
    pub fn shared(r: Resources) -> Arc<Resources> {
        if r == Resources::default() {
            Resources::none()
        } else {
            Arc::new(r)
        }
    }
}

/// Serde for a job's shared resources: written as the request itself.
mod shared_resources {
    use super::Resources;
    use serde::{Deserialize, Deserializer, Serialize, Serializer};
    use std::sync::Arc;

    pub fn serialize<S: Serializer>(r: &Arc<Resources>, s: S) -> Result<S::Ok, S::Error> {
        r.as_ref().serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Arc<Resources>, D::Error> {
        Resources::deserialize(d).map(Resources::shared)
    }
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
    /// Shared: a job mostly asks for none (its cluster has them), and all such jobs hold
    /// one empty value ([`Resources::shared`]).
    #[serde(default = "Resources::none", with = "shared_resources")]
    pub resources: Arc<Resources>,
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

/// How a service learns that a replica can take requests: an HTTP request that must answer
/// 200 (SkyPilot's semantics). Unset fields take SkyPilot's defaults through the accessors.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReadinessProbe {
    #[serde(default = "ReadinessProbe::default_path")]
    pub path: String,
    /// A string, or an object sent as JSON; when present the probe is a POST.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub post_data: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_seconds: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initial_delay_seconds: Option<u32>,
}

impl Default for ReadinessProbe {
    fn default() -> Self {
        ReadinessProbe {
            path: Self::default_path(),
            post_data: None,
            headers: BTreeMap::new(),
            timeout_seconds: None,
            initial_delay_seconds: None,
        }
    }
}

impl ReadinessProbe {
    /// SkyPilot's defaults.
    pub const DEFAULT_TIMEOUT_SECONDS: u32 = 15;
    pub const DEFAULT_INITIAL_DELAY_SECONDS: u32 = 1200;

    fn default_path() -> String {
        "/".into()
    }

    /// How long one probe may take.
    pub fn timeout(&self) -> Duration {
        Duration::from_secs(u64::from(
            self.timeout_seconds
                .unwrap_or(Self::DEFAULT_TIMEOUT_SECONDS),
        ))
    }

    /// How long failures are forgiven after a replica starts, until its first success.
    pub fn initial_delay(&self) -> Duration {
        Duration::from_secs(u64::from(
            self.initial_delay_seconds
                .unwrap_or(Self::DEFAULT_INITIAL_DELAY_SECONDS),
        ))
    }

    /// `"POST"` when there is a body to send, else `"GET"`.
    pub fn method(&self) -> &'static str {
        if self.post_data.is_some() {
            "POST"
        } else {
            "GET"
        }
    }

    /// The body of a POST probe: a string as written, anything else as JSON text.
    pub fn body(&self) -> Option<String> {
        self.post_data.as_ref().map(|d| match d {
            serde_json::Value::String(s) => s.clone(),
            other => other.to_string(),
        })
    }
}

/// How many replicas a service runs. `replicas = N` is `min_replicas = max_replicas = N`.
/// Unset fields take SkyPilot's defaults through the accessors.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReplicaPolicy {
    pub min_replicas: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_replicas: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_qps_per_replica: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upscale_delay_seconds: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub downscale_delay_seconds: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub num_overprovision: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_ondemand_fallback_replicas: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dynamic_ondemand_fallback: Option<bool>,
}

impl ReplicaPolicy {
    /// SkyPilot's defaults.
    pub const DEFAULT_UPSCALE_DELAY_SECONDS: u32 = 300;
    pub const DEFAULT_DOWNSCALE_DELAY_SECONDS: u32 = 1200;

    /// Exactly `n` replicas, no autoscaling (`replicas = n`). Written as `replica_policy {
    /// min_replicas = n }` always was, so switching to the shorthand changes nothing.
    pub fn fixed(n: u32) -> ReplicaPolicy {
        ReplicaPolicy {
            min_replicas: n,
            max_replicas: None,
            target_qps_per_replica: None,
            upscale_delay_seconds: None,
            downscale_delay_seconds: None,
            num_overprovision: None,
            base_ondemand_fallback_replicas: None,
            dynamic_ondemand_fallback: None,
        }
    }

    /// The most replicas (before overprovisioning): `max_replicas`, or `min_replicas`.
    pub fn max(&self) -> u32 {
        self.max_replicas
            .unwrap_or(self.min_replicas)
            .max(self.min_replicas)
    }

    /// Whether the number of replicas follows the load.
    pub fn autoscales(&self) -> bool {
        self.target_qps_per_replica.is_some() && self.max() > self.min_replicas
    }

    /// How long a higher replica count must be wanted before scaling up.
    pub fn upscale_delay(&self) -> Duration {
        Duration::from_secs(u64::from(
            self.upscale_delay_seconds
                .unwrap_or(Self::DEFAULT_UPSCALE_DELAY_SECONDS),
        ))
    }

    /// How long a lower replica count must be wanted before scaling down.
    pub fn downscale_delay(&self) -> Duration {
        Duration::from_secs(u64::from(
            self.downscale_delay_seconds
                .unwrap_or(Self::DEFAULT_DOWNSCALE_DELAY_SECONDS),
        ))
    }

    /// Replicas kept beyond what the load needs.
    pub fn overprovision(&self) -> u32 {
        self.num_overprovision.unwrap_or(0)
    }

    /// Replicas kept on demand when the service asks for spot machines.
    pub fn base_ondemand(&self) -> u32 {
        self.base_ondemand_fallback_replicas.unwrap_or(0)
    }

    /// Whether missing spot replicas are covered by on-demand ones.
    pub fn dynamic_ondemand(&self) -> bool {
        self.dynamic_ondemand_fallback.unwrap_or(false)
    }
}

/// How the load balancer picks a ready replica for a request.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LbPolicy {
    /// The replica with the fewest requests in flight.
    #[default]
    LeastLoad,
    RoundRobin,
}

impl LbPolicy {
    pub const ALL: [LbPolicy; 2] = [LbPolicy::LeastLoad, LbPolicy::RoundRobin];

    pub fn as_str(self) -> &'static str {
        match self {
            LbPolicy::LeastLoad => "least_load",
            LbPolicy::RoundRobin => "round_robin",
        }
    }

    pub fn parse(s: &str) -> Option<LbPolicy> {
        Self::ALL.into_iter().find(|p| p.as_str() == s)
    }
}

/// How a new version replaces the old one.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UpdateMode {
    /// New replicas come up while old ones drain, one for one.
    #[default]
    Rolling,
    /// Traffic moves once the new version has `min_replicas` ready.
    BlueGreen,
}

impl UpdateMode {
    pub const ALL: [UpdateMode; 2] = [UpdateMode::Rolling, UpdateMode::BlueGreen];

    pub fn as_str(self) -> &'static str {
        match self {
            UpdateMode::Rolling => "rolling",
            UpdateMode::BlueGreen => "blue_green",
        }
    }

    pub fn parse(s: &str) -> Option<UpdateMode> {
        Self::ALL.into_iter().find(|p| p.as_str() == s)
    }
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
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub load_balancing_policy: Option<LbPolicy>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub update_mode: Option<UpdateMode>,
}

impl ServiceSpec {
    /// The port the service's endpoint listens on: its first `ports` entry, else 8000.
    pub fn endpoint_port(&self) -> u16 {
        self.resources.ports.first().copied().unwrap_or(8000)
    }

    /// What identifies a version of the service: a digest of what its replicas run (run,
    /// setup, resources, envs, secrets, workdir contents). Replica policy, probe, load
    /// balancing and update mode change how the service runs, not what, so they are left out.
    pub fn version_key(&self) -> String {
        use sha2::Digest;
        let parts = serde_json::json!({
            "run": self.run,
            "setup": self.setup,
            "resources": self.resources,
            "envs": self.envs,
            "secrets": self.secrets,
            "workdir_hash": self.workdir_hash,
        });
        let digest = sha2::Sha256::digest(parts.to_string().as_bytes());
        let mut out = String::with_capacity(7 + 64);
        out.push_str("sha256:");
        for b in digest {
            use std::fmt::Write;
            let _ = write!(out, "{b:02x}");
        }
        out
    }

    /// The readiness probe with its defaults, written or not.
    pub fn probe(&self) -> ReadinessProbe {
        self.readiness_probe.clone().unwrap_or_default()
    }

    pub fn lb_policy(&self) -> LbPolicy {
        self.load_balancing_policy.unwrap_or_default()
    }

    pub fn update_mode(&self) -> UpdateMode {
        self.update_mode.unwrap_or_default()
    }
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
/// The larger kinds are boxed: a large configuration is mostly jobs, and a spec is as large
/// as its largest kind.
pub enum Spec {
    Cluster(Box<ClusterSpec>),
    Job(JobSpec),
    ManagedJob(Box<ManagedJobSpec>),
    Service(Box<ServiceSpec>),
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

#[cfg(test)]
mod tests {
    use super::*;

    fn service() -> ServiceSpec {
        ServiceSpec {
            resources: Resources::default(),
            workdir: None,
            workdir_hash: None,
            setup: None,
            run: "serve".into(),
            envs: BTreeMap::new(),
            secrets: BTreeMap::new(),
            readiness_probe: None,
            replica_policy: ReplicaPolicy::fixed(1),
            load_balancing_policy: None,
            update_mode: None,
        }
    }

    #[test]
    fn defaults_are_skypilots() {
        let s = service();
        let p = s.probe();
        assert_eq!(p.path, "/");
        assert_eq!(p.timeout(), Duration::from_secs(15));
        assert_eq!(p.initial_delay(), Duration::from_secs(1200));
        assert_eq!(p.method(), "GET");
        assert_eq!(p.body(), None);
        let r = &s.replica_policy;
        assert_eq!(r.upscale_delay(), Duration::from_secs(300));
        assert_eq!(r.downscale_delay(), Duration::from_secs(1200));
        assert_eq!(r.overprovision(), 0);
        assert_eq!((r.min_replicas, r.max()), (1, 1));
        assert!(!r.autoscales());
        assert_eq!(s.lb_policy(), LbPolicy::LeastLoad);
        assert_eq!(s.update_mode(), UpdateMode::Rolling);
    }

    #[test]
    fn written_settings_override_defaults() {
        let mut s = service();
        s.readiness_probe = Some(ReadinessProbe {
            path: "/health".into(),
            post_data: Some(serde_json::json!({"prompt": "hi"})),
            timeout_seconds: Some(3),
            initial_delay_seconds: Some(0),
            ..ReadinessProbe::default()
        });
        s.replica_policy = ReplicaPolicy {
            min_replicas: 0,
            max_replicas: Some(4),
            target_qps_per_replica: Some(2.5),
            upscale_delay_seconds: Some(1),
            downscale_delay_seconds: Some(2),
            num_overprovision: Some(1),
            ..ReplicaPolicy::fixed(0)
        };
        s.load_balancing_policy = Some(LbPolicy::RoundRobin);
        s.update_mode = Some(UpdateMode::BlueGreen);
        let p = s.probe();
        assert_eq!(p.timeout(), Duration::from_secs(3));
        assert_eq!(p.initial_delay(), Duration::ZERO);
        assert_eq!(p.method(), "POST");
        assert_eq!(p.body().as_deref(), Some(r#"{"prompt":"hi"}"#));
        let r = &s.replica_policy;
        assert!(r.autoscales());
        assert_eq!(r.max(), 4);
        assert_eq!(r.upscale_delay(), Duration::from_secs(1));
        assert_eq!(r.downscale_delay(), Duration::from_secs(2));
        assert_eq!(r.overprovision(), 1);
        assert_eq!(s.lb_policy(), LbPolicy::RoundRobin);
        assert_eq!(s.update_mode(), UpdateMode::BlueGreen);
        assert_eq!(LbPolicy::parse("round_robin"), Some(LbPolicy::RoundRobin));
        assert_eq!(UpdateMode::parse("blue_green"), Some(UpdateMode::BlueGreen));
        assert_eq!(UpdateMode::parse("canary"), None);
    }

    #[test]
    fn a_version_is_what_replicas_run() {
        let base = service();
        let key = base.version_key();
        assert!(key.starts_with("sha256:") && key.len() == 71, "{key}");
        // How it runs is not a new version.
        let mut same = base.clone();
        same.replica_policy = ReplicaPolicy::fixed(3);
        same.readiness_probe = Some(ReadinessProbe::default());
        same.load_balancing_policy = Some(LbPolicy::RoundRobin);
        same.update_mode = Some(UpdateMode::BlueGreen);
        assert_eq!(same.version_key(), key);
        // What it runs is.
        let changes: [fn(&mut ServiceSpec); 6] = [
            |s| s.run = "serve --v2".into(),
            |s| s.setup = Some("pip install x".into()),
            |s| s.resources.cpus = Some("4".parse().unwrap()),
            |s| {
                s.envs.insert("A".into(), "1".into());
            },
            |s| {
                s.secrets.insert("T".into(), "x".into());
            },
            |s| s.workdir_hash = Some("sha256:00".into()),
        ];
        for change in changes {
            let mut s = base.clone();
            change(&mut s);
            assert_ne!(s.version_key(), key, "{s:?}");
        }
    }

    #[test]
    fn old_services_read_and_print_unchanged() {
        let old = serde_json::json!({
            "kind": "service",
            "resources": {},
            "run": "serve",
            "readiness_probe": {"path": "/h", "initial_delay_seconds": 0},
            "replica_policy": {"min_replicas": 2, "max_replicas": 4, "target_qps_per_replica": 1.0}
        });
        let spec: Spec = serde_json::from_value(old.clone()).expect("an old service reads");
        assert_eq!(serde_json::to_value(&spec).ok(), Some(old));
    }
}
