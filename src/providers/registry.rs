//! The backends of one run, built once from the configuration and shared by everything the
//! run does (refresh, offers, imports, apply, status), so connection caches (ssh masters,
//! Kubernetes clients) are made once.

use super::Provider;
use super::aws::{AwsProvider, AwsSettings};
use super::gcp::{GcpProvider, GcpSettings};
use super::kubernetes::{Context, KubeProvider};
use super::local::LocalProvider;
use super::ssh::{Pool, SshProvider};
use crate::config::{Config, InfraConfig};
use crate::model::backend;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The providers available to this run, by backend name (`model::backend`).
#[derive(Debug, Clone)]
pub struct Registry {
    pub providers: BTreeMap<&'static str, Arc<dyn Provider>>,
    /// Parts of the configuration left out, one line each (a pool whose settings are bad).
    pub warnings: Vec<String>,
}

/// Where a registry's backends keep what they make on this machine.
#[derive(Debug, Clone)]
pub struct Places {
    /// The local backend's sandboxes (per workspace).
    pub local_root: PathBuf,
    /// The user's home, for `~/` in settings and default key paths.
    pub home: PathBuf,
    /// The skyform binary clusters run as their node agents; `None`: `SKYFORM_AGENT_EXE`,
    /// else this program (a library caller whose program is not skyform names it).
    pub agent_exe: Option<PathBuf>,
}

impl Places {
    /// The usual places for a configuration in `dir` and a workspace: sandboxes under
    /// `DIR/.skyform/local` (workspace-keyed), the home from `$HOME`.
    pub fn for_dir(dir: &Path, workspace: &str) -> Places {
        Places {
            local_root: dir.join(crate::state::workspace_key(".skyform/local", workspace)),
            home: std::env::var_os("HOME").map_or_else(|| PathBuf::from("/"), PathBuf::from),
            agent_exe: None,
        }
    }
}

impl Registry {
    /// Every backend of this build. A backend is there even when the configuration does not
    /// declare it, so resources in state stay manageable; it offers new placements only when
    /// declared (`local` also when no infra is declared at all: the embedded default).
    pub fn from_config(config: Option<&Config>, places: &Places) -> Registry {
        let infra: &[InfraConfig] = config.map_or(&[], |c| &c.infra);
        let declared = |name: &'static str| {
            infra
                .iter()
                .filter(move |i| backend::of_infra_type(&i.kind).is_some_and(|b| b.name == name))
        };
        let mut providers: BTreeMap<&'static str, Arc<dyn Provider>> = BTreeMap::new();
        let mut warnings = Vec::new();

        let mut local = LocalProvider::new(
            places.local_root.clone(),
            declared("local").next().map(|i| &i.settings),
        );
        if let Some(exe) = &places.agent_exe {
            local.agent_exe = exe.clone();
        }
        // What already runs here stays manageable; new placements only where allowed.
        local.offer = config.is_none() || infra.is_empty() || declared("local").next().is_some();
        providers.insert("local", Arc::new(local));

        // Clients are made lazily: plans need no credentials.
        let aws =
            AwsSettings::from_infra(declared("aws").next().map(|i| &i.settings), &places.home);
        let mut aws = AwsProvider::new(aws, places.home.join(".skyform/ssh"));
        if let Some(exe) = &places.agent_exe {
            aws.agent_exe = exe.clone();
        }
        providers.insert("aws", Arc::new(aws));

        let gcp =
            GcpSettings::from_infra(declared("gcp").next().map(|i| &i.settings), &places.home);
        let mut gcp = GcpProvider::new(gcp, places.home.join(".skyform/ssh"));
        if let Some(exe) = &places.agent_exe {
            gcp.agent_exe = exe.clone();
        }
        providers.insert("gcp", Arc::new(gcp));

        let mut pools = Vec::new();
        for i in declared("ssh") {
            let name = i.name.clone().unwrap_or_default();
            match Pool::from_infra(&name, &i.settings, &places.home) {
                Ok(p) => pools.push(p),
                Err(e) => warnings.push(format!(
                    "infra \"ssh\" \"{name}\": {e}; the pool is left out"
                )),
            }
        }
        let mut ssh = SshProvider::new(pools);
        if let Some(exe) = &places.agent_exe {
            ssh.agent_exe = exe.clone();
        }
        providers.insert("ssh", Arc::new(ssh));

        let contexts = declared("k8s")
            .map(|i| {
                let name = i.name.clone().unwrap_or_default();
                Context::from_infra(&name, &i.settings, &places.home)
            })
            .collect();
        providers.insert("k8s", Arc::new(KubeProvider::new(contexts)));

        Registry {
            providers,
            warnings,
        }
    }

    /// A registry of exactly these providers (tests, and callers that build their own).
    pub fn new(providers: BTreeMap<&'static str, Arc<dyn Provider>>) -> Registry {
        Registry {
            providers,
            warnings: Vec::new(),
        }
    }

    /// The provider of a backend, by its name or an alias.
    pub fn get(&self, name: &str) -> Option<&dyn Provider> {
        let name = backend::lookup(name).map_or(name, |b| b.name);
        self.providers.get(name).map(|b| b.as_ref())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_provisioning_backend_has_a_provider_under_its_name() {
        let dir = tempfile::tempdir().expect("tempdir");
        let r = Registry::from_config(None, &Places::for_dir(dir.path(), "default"));
        for b in backend::BACKENDS {
            assert_eq!(r.get(b.name).is_some(), b.provisions, "{}", b.name);
            if let Some(p) = r.get(b.name) {
                assert_eq!(p.name(), b.name);
            }
        }
        assert_eq!(r.get("kubernetes").map(|p| p.name()), Some("k8s"));
        assert!(r.warnings.is_empty());
    }
}
