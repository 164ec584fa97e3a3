//! The one table of backends: the name state and offerings use for each, the `infra` block
//! type that declares it, the aliases a user may write, and what kind of offer it makes.
//! Everything that needs a backend's name (config parsing, the optimizer, the provider
//! registry, `init`) asks here instead of matching strings of its own.

/// One backend skyform knows of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backend {
    /// The name in state (`provider`), in offerings (`cloud`) and in infra strings.
    pub name: &'static str,
    /// The `infra "TYPE"` block that declares it.
    pub infra_type: &'static str,
    /// Other spellings accepted in infra strings (`k8s/ctx` or `kubernetes/ctx`).
    pub aliases: &'static [&'static str],
    /// A pool of capacity (a request takes a share of a machine one already has) rather
    /// than a catalog of machine shapes rented whole.
    pub capacity: bool,
    /// Priced from the SkyPilot catalogs (`<cloud>/vms.csv`).
    pub catalog: bool,
    /// Whether this build can create resources on it.
    pub provisions: bool,
    /// This machine: its files are read directly, cheaply.
    pub on_this_machine: bool,
    /// What `init` suggests when the backend cannot be used from here.
    pub setup_hint: Option<&'static str>,
}

/// Every backend, in the order `init` and docs list them.
pub const BACKENDS: &[Backend] = &[
    Backend {
        name: "local",
        infra_type: "local",
        aliases: &[],
        capacity: true,
        catalog: false,
        provisions: true,
        on_this_machine: true,
        setup_hint: None,
    },
    Backend {
        name: "aws",
        infra_type: "aws",
        aliases: &[],
        capacity: false,
        catalog: true,
        provisions: true,
        on_this_machine: false,
        setup_hint: Some(
            "plans work without credentials, apply needs them (AWS_PROFILE, or AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY; see docs/aws.md)",
        ),
    },
    Backend {
        name: "gcp",
        infra_type: "gcp",
        aliases: &[],
        capacity: false,
        catalog: true,
        provisions: true,
        on_this_machine: false,
        setup_hint: Some(
            "plans work without credentials, apply needs them and a project (gcloud auth application-default login, GOOGLE_APPLICATION_CREDENTIALS or credentials_file; see docs/gcp.md)",
        ),
    },
    Backend {
        name: "lambda",
        infra_type: "lambda",
        aliases: &[],
        capacity: false,
        catalog: true,
        provisions: false,
        on_this_machine: false,
        setup_hint: None,
    },
    Backend {
        name: "ssh",
        infra_type: "ssh",
        aliases: &[],
        capacity: true,
        catalog: false,
        provisions: true,
        on_this_machine: false,
        setup_hint: None,
    },
    Backend {
        name: "k8s",
        infra_type: "kubernetes",
        aliases: &["kubernetes"],
        capacity: true,
        catalog: false,
        provisions: true,
        on_this_machine: false,
        setup_hint: None,
    },
];

/// The backend a name, alias or infra block type names (case-insensitive).
pub fn lookup(name: &str) -> Option<&'static Backend> {
    let name = name.to_ascii_lowercase();
    BACKENDS
        .iter()
        .find(|b| b.name == name || b.infra_type == name || b.aliases.iter().any(|a| *a == name))
}

/// The canonical name for `name` (an alias or infra type), or `name` in lower case when
/// unknown.
pub fn canonical(name: &str) -> String {
    lookup(name).map_or_else(|| name.to_ascii_lowercase(), |b| b.name.to_string())
}

/// The backend an `infra "TYPE"` block declares.
pub fn of_infra_type(infra_type: &str) -> Option<&'static Backend> {
    BACKENDS.iter().find(|b| b.infra_type == infra_type)
}

/// Whether offerings of `cloud` are shares of machines one already has.
pub fn is_capacity(cloud: &str) -> bool {
    lookup(cloud).is_some_and(|b| b.capacity)
}

/// Whether `name` is this machine.
pub fn is_this_machine(name: &str) -> bool {
    lookup(name).is_some_and(|b| b.on_this_machine)
}

/// Whether `cloud` is priced from the catalogs.
pub fn is_catalog_cloud(cloud: &str) -> bool {
    lookup(cloud).is_some_and(|b| b.catalog)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aliases_and_types_name_one_backend() {
        assert_eq!(canonical("kubernetes"), "k8s");
        assert_eq!(canonical("K8S"), "k8s");
        assert_eq!(canonical("aws"), "aws");
        assert_eq!(canonical("Azure"), "azure");
        assert_eq!(canonical("*"), "*");
        assert_eq!(of_infra_type("kubernetes").map(|b| b.name), Some("k8s"));
        assert!(
            of_infra_type("k8s").is_none(),
            "blocks are written infra \"kubernetes\""
        );
    }

    #[test]
    fn capacity_and_catalog_backends() {
        for c in ["local", "ssh", "k8s", "kubernetes"] {
            assert!(is_capacity(c), "{c}");
        }
        for c in ["aws", "gcp", "lambda", "nowhere"] {
            assert!(!is_capacity(c), "{c}");
        }
        assert!(is_catalog_cloud("gcp") && !is_catalog_cloud("ssh"));
    }

    #[test]
    fn names_are_unique() {
        let mut all: Vec<&str> = BACKENDS
            .iter()
            .flat_map(|b| std::iter::once(b.name).chain(b.aliases.iter().copied()))
            .collect();
        let n = all.len();
        all.sort_unstable();
        all.dedup();
        assert_eq!(all.len(), n);
    }
}
