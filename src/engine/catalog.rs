//! The price catalogs a run reads, and the offerings of the clouds a configuration declares
//! (its regions, zones and price multipliers applied).

use super::{Engine, Error, Result, expand_home};
use crate::config::{InfraConfig, diag::did_you_mean};
use crate::model::backend;
use crate::optimizer::catalog::{self, Catalog, Kinds};
use crate::optimizer::{Candidate, Offering};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// What `skyform offers` asks for: a request, and which kinds of offerings to build.
#[derive(Debug, Clone)]
pub struct OffersQuery {
    pub resources: crate::model::Resources,
    pub nodes: u32,
    pub kinds: Kinds,
    /// `--catalog-dir` / `SKYFORM_CATALOG_DIR`.
    pub catalog_dir: Option<PathBuf>,
}

impl Engine {
    /// Where the catalogs are: the flag (or `SKYFORM_CATALOG_DIR`), the configuration's
    /// `catalog_dir`, else `~/.skyform/catalogs`.
    pub fn catalog_dir(&self, flag: Option<PathBuf>) -> PathBuf {
        if let Some(d) = flag {
            return d;
        }
        if let Some(d) = &self.config.catalog_dir {
            // Relative to the configuration, like every other path in it.
            return self.dir.join(expand_home(d));
        }
        expand_home("~/.skyform/catalogs")
    }

    /// The catalog offerings of the clouds the configuration declares; none when it
    /// declares no cloud.
    pub fn catalog_offerings(&self) -> Result<Vec<Offering>> {
        let flag = std::env::var_os("SKYFORM_CATALOG_DIR").map(PathBuf::from);
        Ok(self.scoped_offerings(flag, None)?.unwrap_or_default())
    }

    /// The catalog offerings of the clouds the configuration declares, with its regions,
    /// zones and price multipliers; `None` when it declares no cloud. `kinds` defaults to
    /// what the configuration's requests can ask for.
    fn scoped_offerings(
        &self,
        flag_dir: Option<PathBuf>,
        kinds: Option<Kinds>,
    ) -> Result<Option<Vec<Offering>>> {
        let config = &self.config;
        let clouds: Vec<&InfraConfig> = config
            .infra
            .iter()
            .filter(|i| backend::of_infra_type(&i.kind).is_some_and(|b| b.catalog))
            .collect();
        if clouds.is_empty() {
            return Ok(None);
        }
        let dir = self.catalog_dir(flag_dir);
        let catalog = load_catalog(&dir)?;
        let mut wanted: Vec<(String, f64, Vec<String>)> = Vec::new();
        let mut scopes: BTreeMap<String, (Vec<String>, Vec<String>)> = BTreeMap::new();
        // Offerings no request of this configuration can use are not built: without the
        // word `use_spot` nothing asks for spot, and without `accelerators` or
        // `instance_type` nothing asks for a GPU machine.
        let mentions =
            |word: &str| (0..config.sources.len()).any(|i| config.sources.text(i).contains(word));
        let kinds = kinds.unwrap_or(Kinds {
            on_demand: true,
            spot: mentions("use_spot"),
            gpu: mentions("accelerators") || mentions("instance_type"),
            cpu: true,
        });
        for infra in clouds {
            let regions = string_list(infra, "regions");
            let multiplier = infra
                .settings
                .get("price_multiplier")
                .and_then(|m| m.as_f64())
                .unwrap_or(1.0);
            if !(multiplier.is_finite() && multiplier > 0.0) {
                return Err(Error::new(format!(
                    "infra \"{}\": price_multiplier = {multiplier} is not a positive number",
                    infra.kind
                ))
                .hint("a multiplier scales the catalog's prices: 0.8 for a 20% discount"));
            }
            let Some(cloud) = catalog.clouds.get(&infra.kind) else {
                return Err(Error::new(format!(
                    "infra \"{}\" is declared, but {} has no {}/vms.csv",
                    infra.kind,
                    dir.display(),
                    infra.kind
                ))
                .hint("`skyform catalog update` fetches it"));
            };
            // Asked per declared region; the catalog's whole list only to explain a bad one.
            if let Some(bad) = regions.iter().find(|r| !cloud.has_region(r)) {
                let names = cloud.regions();
                let hint = match did_you_mean(bad, names.iter().copied()) {
                    Some(s) => format!("did you mean {s:?}?"),
                    None => format!("the {} catalog has: {}", infra.kind, names.join(", ")),
                };
                return Err(Error::new(format!(
                    "infra \"{}\": region {bad:?} is not in the catalog",
                    infra.kind
                ))
                .hint(hint));
            }
            let zones = string_list(infra, "zones");
            if let Some(bad) = zones.iter().find(|z| !cloud.has_zone(z)) {
                return Err(Error::new(format!(
                    "infra \"{}\": zone {bad:?} is not in the catalog",
                    infra.kind
                ))
                .hint("zones look like us-east-1a (aws) or us-central1-b (gcp)"));
            }
            let zone_regions = cloud.regions_of_zones(&zones);
            wanted.push((infra.kind.clone(), multiplier, regions));
            scopes.insert(infra.kind.clone(), (zones, zone_regions));
        }
        // zones: spot offerings in those zones; on-demand ones in their regions.
        let mut offerings = catalog.offerings_of(&wanted, kinds);
        // Only when some cloud names zones: a pass over every offering otherwise.
        if scopes.values().any(|(zones, _)| !zones.is_empty()) {
            offerings.retain(|o| {
                scopes.get(&o.cloud).is_none_or(|(zones, zone_regions)| {
                    zones.is_empty()
                        || match &o.zone {
                            Some(z) => zones.contains(z),
                            None => o.region.as_ref().is_some_and(|r| zone_regions.contains(r)),
                        }
                })
            });
        }
        Ok(Some(offerings))
    }

    /// Every offering this configuration can place on: the declared clouds' catalogs (with
    /// `catalogs`) and what each backend offers now; plus one line for each part that
    /// offers nothing now, and why.
    pub async fn offerings(&self, catalogs: bool) -> Result<(Vec<Offering>, Vec<String>)> {
        let mut offerings = if catalogs {
            self.catalog_offerings()?
        } else {
            Vec::new()
        };
        let mut unavailable = Vec::new();
        for p in self.registry().providers.values() {
            match p.survey().await {
                Ok(o) => {
                    offerings.extend(o.offerings);
                    unavailable.extend(
                        o.unavailable
                            .into_iter()
                            .map(|why| format!("{why}; it offers nothing in this plan")),
                    );
                }
                Err(e) => unavailable.push(format!("{} offers nothing: {e}", p.name())),
            }
        }
        Ok((offerings, unavailable))
    }

    /// `skyform offers`: the ranked offers for a request. In a configuration that declares
    /// clouds, its regions, zones and prices apply; elsewhere every cloud of the catalogs at
    /// list price. This machine only when the request's infra names it.
    pub async fn offers(&self, q: &OffersQuery) -> Result<Vec<Candidate>> {
        let list_dir = self.catalog_dir(q.catalog_dir.clone());
        let mut offerings = match self.scoped_offerings(q.catalog_dir.clone(), Some(q.kinds))? {
            Some(o) => o,
            None => {
                let catalog = load_catalog(&list_dir)?;
                let wanted: Vec<(String, f64, Vec<String>)> = catalog
                    .clouds
                    .keys()
                    .map(|c| (c.clone(), 1.0, Vec::new()))
                    .collect();
                catalog.offerings_of(&wanted, q.kinds)
            }
        };
        if q.resources
            .infra
            .as_deref()
            .and_then(|i| i.split('/').next())
            .is_some_and(backend::is_this_machine)
        {
            // Offers are about where one could rent: this machine as if it were declared.
            let places = crate::providers::Places::for_dir(&self.dir, &self.config.workspace);
            let registry = crate::providers::Registry::from_config(None, &places);
            for p in registry.providers.values() {
                offerings.extend(p.offerings().await.unwrap_or_default());
            }
        }
        crate::optimizer::rank(
            &q.resources,
            q.nodes.max(1),
            &offerings,
            &Default::default(),
        )
        .map_err(|no| {
            // Where the public accelerator list says it can be found, when not here.
            let list = std::fs::read(list_dir.join("common").join("accelerators.csv"))
                .map(|b| catalog::parse_accelerators(&b))
                .unwrap_or_default();
            let listed: Vec<String> = q
                .resources
                .accelerators
                .iter()
                .flat_map(|a| a.choices().to_vec())
                .filter_map(|a| {
                    let clouds = list.get(&a.name.to_uppercase())?;
                    Some(format!(
                        "the public list has {} on {}",
                        a.name,
                        clouds.join(", ")
                    ))
                })
                .collect();
            let reason = if listed.is_empty() {
                no.reason.clone()
            } else {
                format!("{}; {}", no.reason, listed.join("; "))
            };
            Error::new(format!("no offer matches: {reason}"))
                .hint("relax the request; `skyform offers NAME:COUNT --all` lists what the catalogs have for an accelerator")
        })
    }

    /// Downloads the public catalogs into the catalog directory.
    pub async fn update_catalogs(
        &self,
        flag_dir: Option<PathBuf>,
        url: String,
        clouds: Vec<String>,
        timeout: std::time::Duration,
    ) -> Result<Vec<catalog::Updated>> {
        let target = self.catalog_dir(flag_dir);
        tokio::task::spawn_blocking(move || catalog::update(&url, &clouds, &target, timeout))
            .await
            .map_err(|e| Error::new(e.to_string()))?
            .map_err(|e| {
                Error::new(e.to_string()).hint("check the URL (--url or SKYFORM_CATALOG_URL) and the network; the old catalogs are unchanged")
            })
    }
}

/// Reads the catalogs in `dir`; fails with what to do when there are none.
pub fn load_catalog(dir: &Path) -> Result<Catalog> {
    let catalog = Catalog::load(dir).map_err(|e| {
        Error::new(e.to_string()).hint(format!(
            "put SkyPilot-format catalogs in {} (<cloud>/vms.csv) with `skyform catalog update`, or point SKYFORM_CATALOG_DIR (or catalog_dir, or --catalog-dir for offers) at them",
            dir.display()
        ))
    })?;
    if catalog.clouds.is_empty() {
        return Err(Error::new(format!("no catalogs in {}", dir.display()))
            .hint("a catalog directory holds <cloud>/vms.csv files (aws, gcp, lambda, …) in SkyPilot's format"));
    }
    Ok(catalog)
}

/// A list-of-strings setting of an infra block (empty when absent).
fn string_list(infra: &InfraConfig, name: &str) -> Vec<String> {
    infra
        .settings
        .get(name)
        .and_then(|r| r.as_array())
        .map(|a| {
            a.iter()
                .filter_map(|x| x.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}
