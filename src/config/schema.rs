//! What each block may contain: attribute names and types, nested blocks, required parts.
//!
//! One table drives the "unknown attribute (did you mean …)", "missing required attribute" and
//! type diagnostics for every block kind.

use super::value::UnknownType;
use crate::model::Kind;

/// The type an attribute's value must have once evaluated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ty {
    String,
    Number,
    /// A whole number ≥ 0.
    Count,
    Bool,
    ListOfStrings,
    ListOfNumbers,
    MapOfStrings,
    /// `accelerators`: a string, a list or a set of strings.
    Accelerators,
    /// A string, or a number that is read as its decimal text (`cpus = 4`).
    StringOrNumber,
    /// A reference to a cluster (`cluster.dev`).
    ClusterRef,
    /// Anything: checked by the block's own rules (e.g. `for_each`, `default`).
    Any,
    /// A list of references (`depends_on`), checked statically.
    References,
}

impl Ty {
    pub fn describe(self) -> &'static str {
        match self {
            Ty::String => "a string",
            Ty::Number => "a number",
            Ty::Count => "a whole number",
            Ty::Bool => "a bool",
            Ty::ListOfStrings => "a list of strings",
            Ty::ListOfNumbers => "a list of numbers",
            Ty::MapOfStrings => "a map of strings",
            Ty::Accelerators => "a string such as \"A100:8\", a list or a set of them",
            Ty::StringOrNumber => "a string or a number",
            Ty::ClusterRef => "a reference to a cluster",
            Ty::Any => "any value",
            Ty::References => "a list of references",
        }
    }
}

#[derive(Debug)]
pub struct Attr {
    pub name: &'static str,
    pub ty: Ty,
    pub required: bool,
}

#[derive(Debug)]
pub struct Nested {
    pub name: &'static str,
    pub schema: &'static BlockSchema,
    pub required: bool,
    /// May appear more than once.
    pub repeated: bool,
}

#[derive(Debug)]
pub struct BlockSchema {
    pub attrs: &'static [Attr],
    pub blocks: &'static [Nested],
    /// Accepts attributes not listed (locals, module inputs).
    pub open: bool,
}

impl BlockSchema {
    pub fn attr(&self, name: &str) -> Option<&Attr> {
        self.attrs.iter().find(|a| a.name == name)
    }

    pub fn block(&self, name: &str) -> Option<&Nested> {
        self.blocks.iter().find(|b| b.name == name)
    }
}

const fn a(name: &'static str, ty: Ty) -> Attr {
    Attr {
        name,
        ty,
        required: false,
    }
}

const fn req(name: &'static str, ty: Ty) -> Attr {
    Attr {
        name,
        ty,
        required: true,
    }
}

const fn b(name: &'static str, schema: &'static BlockSchema) -> Nested {
    Nested {
        name,
        schema,
        required: false,
        repeated: false,
    }
}

macro_rules! resource_attrs {
    ($($extra:expr),* $(,)?) => {
        &[
            a("accelerators", Ty::Accelerators),
            a("cpus", Ty::StringOrNumber),
            a("memory", Ty::StringOrNumber),
            a("use_spot", Ty::Bool),
            a("infra", Ty::String),
            a("instance_type", Ty::String),
            a("disk_size", Ty::Count),
            a("ports", Ty::ListOfNumbers),
            a("max_hourly_cost", Ty::Number),
            a("image_id", Ty::String),
            $($extra),*
        ]
    };
}

pub static CANDIDATE: BlockSchema = BlockSchema {
    attrs: resource_attrs!(),
    blocks: &[],
    open: false,
};

pub static RESOURCES: BlockSchema = BlockSchema {
    attrs: resource_attrs!(),
    blocks: &[
        Nested {
            name: "any_of",
            schema: &CANDIDATE,
            required: false,
            repeated: true,
        },
        Nested {
            name: "ordered",
            schema: &CANDIDATE,
            required: false,
            repeated: true,
        },
    ],
    open: false,
};

pub static LIFECYCLE: BlockSchema = BlockSchema {
    attrs: &[
        a("prevent_destroy", Ty::Bool),
        a("ignore_changes", Ty::References),
        a("create_before_destroy", Ty::Bool),
    ],
    blocks: &[],
    open: false,
};

pub static AUTOSTOP: BlockSchema = BlockSchema {
    attrs: &[req("idle_minutes", Ty::Count), a("down", Ty::Bool)],
    blocks: &[],
    open: false,
};

pub static RECOVERY: BlockSchema = BlockSchema {
    attrs: &[
        a("strategy", Ty::String),
        a("max_restarts_on_errors", Ty::Count),
        a("recover_on_exit_codes", Ty::ListOfNumbers),
    ],
    blocks: &[],
    open: false,
};

pub static READINESS_PROBE: BlockSchema = BlockSchema {
    attrs: &[
        a("path", Ty::String),
        // A string, or an object sent as JSON: checked when decoding.
        a("post_data", Ty::Any),
        a("headers", Ty::MapOfStrings),
        a("timeout_seconds", Ty::Count),
        a("initial_delay_seconds", Ty::Count),
    ],
    blocks: &[],
    open: false,
};

pub static REPLICA_POLICY: BlockSchema = BlockSchema {
    attrs: &[
        req("min_replicas", Ty::Count),
        a("max_replicas", Ty::Count),
        a("target_qps_per_replica", Ty::Number),
        a("upscale_delay_seconds", Ty::Count),
        a("downscale_delay_seconds", Ty::Count),
        a("num_overprovision", Ty::Count),
        a("base_ondemand_fallback_replicas", Ty::Count),
        a("dynamic_ondemand_fallback", Ty::Bool),
    ],
    blocks: &[],
    open: false,
};

/// Attributes every resource and module block accepts (meta-arguments).
pub const META_ATTRS: [&str; 3] = ["count", "for_each", "depends_on"];

pub static CLUSTER: BlockSchema = BlockSchema {
    attrs: &[
        a("count", Ty::Count),
        a("for_each", Ty::Any),
        a("depends_on", Ty::References),
        a("num_nodes", Ty::Count),
        a("workdir", Ty::String),
        a("envs", Ty::MapOfStrings),
        a("setup", Ty::String),
        a("retry_until_up", Ty::Bool),
    ],
    blocks: &[
        b("resources", &RESOURCES),
        b("autostop", &AUTOSTOP),
        b("lifecycle", &LIFECYCLE),
    ],
    open: false,
};

pub static JOB: BlockSchema = BlockSchema {
    attrs: &[
        a("count", Ty::Count),
        a("for_each", Ty::Any),
        a("depends_on", Ty::References),
        req("cluster", Ty::ClusterRef),
        a("num_nodes", Ty::Count),
        req("run", Ty::String),
        a("envs", Ty::MapOfStrings),
        a("secrets", Ty::MapOfStrings),
    ],
    blocks: &[b("resources", &RESOURCES), b("lifecycle", &LIFECYCLE)],
    open: false,
};

pub static MANAGED_JOB: BlockSchema = BlockSchema {
    attrs: &[
        a("count", Ty::Count),
        a("for_each", Ty::Any),
        a("depends_on", Ty::References),
        a("num_nodes", Ty::Count),
        a("workdir", Ty::String),
        a("setup", Ty::String),
        req("run", Ty::String),
        a("envs", Ty::MapOfStrings),
        a("secrets", Ty::MapOfStrings),
    ],
    blocks: &[
        b("resources", &RESOURCES),
        b("recovery", &RECOVERY),
        b("lifecycle", &LIFECYCLE),
    ],
    open: false,
};

/// The block schema of a resource kind.
pub fn of(kind: Kind) -> &'static BlockSchema {
    match kind {
        Kind::Cluster => &CLUSTER,
        Kind::Job => &JOB,
        Kind::ManagedJob => &MANAGED_JOB,
        Kind::Service => &SERVICE,
        Kind::Controller => &CONTROLLER,
    }
}

/// `controller "NAME"`: one per configuration, so no `count` or `for_each`.
pub static CONTROLLER: BlockSchema = BlockSchema {
    attrs: &[
        a("depends_on", Ty::References),
        req("infra", Ty::String),
        a("image", Ty::String),
        a("envs", Ty::MapOfStrings),
        a("secrets", Ty::MapOfStrings),
    ],
    blocks: &[b("lifecycle", &LIFECYCLE)],
    open: false,
};

pub static SERVICE: BlockSchema = BlockSchema {
    attrs: &[
        a("count", Ty::Count),
        a("for_each", Ty::Any),
        a("depends_on", Ty::References),
        a("workdir", Ty::String),
        a("setup", Ty::String),
        req("run", Ty::String),
        a("envs", Ty::MapOfStrings),
        a("secrets", Ty::MapOfStrings),
        // `replicas = N`: the shorthand of a fixed replica_policy.
        a("replicas", Ty::Count),
        // `readiness_probe = "/path"`: the shorthand of the block of the same name.
        a("readiness_probe", Ty::String),
        a("load_balancing_policy", Ty::String),
        a("update_mode", Ty::String),
    ],
    blocks: &[
        b("resources", &RESOURCES),
        b("readiness_probe", &READINESS_PROBE),
        b("replica_policy", &REPLICA_POLICY),
        b("lifecycle", &LIFECYCLE),
    ],
    open: false,
};

pub static VARIABLE: BlockSchema = BlockSchema {
    attrs: &[
        a("type", Ty::Any),
        a("default", Ty::Any),
        a("description", Ty::String),
        a("sensitive", Ty::Bool),
        a("nullable", Ty::Bool),
    ],
    blocks: &[],
    open: false,
};

/// `import { to = cluster.NAME, id = "BACKEND:ID" }`: adopt an existing cluster into state.
pub static IMPORT: BlockSchema = BlockSchema {
    attrs: &[req("to", Ty::Any), req("id", Ty::String)],
    blocks: &[],
    open: false,
};

pub static OUTPUT: BlockSchema = BlockSchema {
    attrs: &[
        req("value", Ty::Any),
        a("description", Ty::String),
        a("sensitive", Ty::Bool),
        a("depends_on", Ty::References),
    ],
    blocks: &[],
    open: false,
};

pub static LOCALS: BlockSchema = BlockSchema {
    attrs: &[],
    blocks: &[],
    open: true,
};

pub static MODULE: BlockSchema = BlockSchema {
    attrs: &[
        req("source", Ty::String),
        a("count", Ty::Count),
        a("for_each", Ty::Any),
        a("depends_on", Ty::References),
    ],
    blocks: &[],
    open: true,
};

pub static STATE_BACKEND: BlockSchema = BlockSchema {
    attrs: &[
        a("path", Ty::String),
        a("bucket", Ty::String),
        a("key", Ty::String),
        a("region", Ty::String),
        a("endpoint", Ty::String),
        a("prefix", Ty::String),
        a("container", Ty::String),
        a("account", Ty::String),
        a("profile", Ty::String),
        a("encryption_key_env", Ty::String),
    ],
    blocks: &[],
    open: false,
};

pub static SKYFORM: BlockSchema = BlockSchema {
    attrs: &[
        a("catalog_dir", Ty::String),
        a("required_version", Ty::String),
    ],
    blocks: &[b("state", &STATE_BACKEND)],
    open: false,
};

pub static INFRA_LOCAL: BlockSchema = BlockSchema {
    attrs: &[
        a("cpus", Ty::Number),
        a("memory", Ty::Number),
        a("accelerators", Ty::MapOfStrings),
        a("price_per_hour", Ty::Number),
    ],
    blocks: &[],
    open: false,
};

pub static INFRA_AWS: BlockSchema = BlockSchema {
    attrs: &[
        a("regions", Ty::ListOfStrings),
        a("zones", Ty::ListOfStrings),
        a("profile", Ty::String),
        a("endpoint", Ty::String),
        a("ssh_public_key", Ty::String),
        a("price_multiplier", Ty::Number),
    ],
    blocks: &[],
    open: false,
};

pub static INFRA_GCP: BlockSchema = BlockSchema {
    attrs: &[
        a("project", Ty::String),
        a("regions", Ty::ListOfStrings),
        a("zones", Ty::ListOfStrings),
        a("endpoint", Ty::String),
        a("credentials_file", Ty::String),
        a("ssh_public_key", Ty::String),
        a("price_multiplier", Ty::Number),
    ],
    blocks: &[],
    open: false,
};

pub static INFRA_LAMBDA: BlockSchema = BlockSchema {
    attrs: &[
        a("regions", Ty::ListOfStrings),
        a("price_multiplier", Ty::Number),
    ],
    blocks: &[],
    open: false,
};

pub static INFRA_KUBERNETES: BlockSchema = BlockSchema {
    attrs: &[
        a("context", Ty::String),
        a("namespace", Ty::String),
        a("kubeconfig", Ty::String),
        a("price_per_hour", Ty::Number),
    ],
    blocks: &[],
    open: false,
};

pub static INFRA_SSH: BlockSchema = BlockSchema {
    attrs: &[
        a("hosts", Ty::ListOfStrings),
        a("user", Ty::String),
        a("identity_file", Ty::String),
        a("ssh_config", Ty::String),
        a("port", Ty::Count),
        a("price_per_hour", Ty::Number),
    ],
    blocks: &[],
    open: false,
};

/// The type of a computed attribute of a resource of `kind` (`model::spec::computed_attributes`):
/// its value is known only after apply, its type already when planning.
pub fn computed_type(kind: Kind, attr: &str) -> Option<UnknownType> {
    match (kind, attr) {
        (Kind::Cluster, "head_ip") => Some(UnknownType::String),
        (Kind::Cluster, "ips") => Some(UnknownType::ListOfStrings),
        (Kind::Job | Kind::ManagedJob, "exit_code") => Some(UnknownType::Number),
        (Kind::Service, "endpoint") => Some(UnknownType::String),
        (_, "placement" | "status") => Some(UnknownType::String),
        _ => None,
    }
}

/// The infra types and whether they take a name label.
pub const INFRA_TYPES: [(&str, bool, &BlockSchema); 6] = [
    ("local", false, &INFRA_LOCAL),
    ("aws", false, &INFRA_AWS),
    ("gcp", false, &INFRA_GCP),
    ("lambda", false, &INFRA_LAMBDA),
    ("kubernetes", true, &INFRA_KUBERNETES),
    ("ssh", true, &INFRA_SSH),
];

/// The top-level block types.
pub const TOP_LEVEL: [&str; 12] = [
    "skyform",
    "import",
    "infra",
    "variable",
    "locals",
    "output",
    "cluster",
    "job",
    "managed_job",
    "service",
    "controller",
    "module",
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_computed_attribute_has_a_type() {
        for kind in Kind::ALL {
            for attr in crate::model::spec::computed_attributes(kind) {
                assert!(computed_type(kind, attr).is_some(), "{kind}.{attr}");
            }
        }
        assert_eq!(computed_type(Kind::Cluster, "exit_code"), None);
    }
}
