//! The price catalogs: `offers`, `catalog list`, `catalog update`.

use super::{EXIT_OK, OffersRequest};
use crate::engine::catalog::{OffersQuery, load_catalog};
use crate::engine::{Engine, Error, Result};
use crate::model::{Accelerator, Accelerators, RequestError, Resources};
use crate::optimizer::catalog::Kinds;
use std::path::PathBuf;

impl OffersRequest {
    fn resources(&self) -> Result<Resources> {
        let bad = |what: &str, e: RequestError| {
            Error::new(format!("invalid {what}: {}", e.message)).hint(e.hint)
        };
        let accelerators = match &self.accelerators {
            None => None,
            Some(s) => {
                let mut list: Vec<Accelerator> = s
                    .split(',')
                    .map(|a| a.parse().map_err(|e| bad("accelerators", e)))
                    .collect::<Result<_>>()?;
                Some(if list.len() == 1 {
                    Accelerators::One(list.remove(0))
                } else {
                    Accelerators::AnyOf(list)
                })
            }
        };
        Ok(Resources {
            accelerators,
            cpus: self
                .cpus
                .as_deref()
                .map(str::parse)
                .transpose()
                .map_err(|e| bad("cpus", e))?,
            memory: self
                .memory
                .as_deref()
                .map(str::parse)
                .transpose()
                .map_err(|e| bad("memory", e))?,
            use_spot: Some(self.spot),
            infra: self.infra.clone(),
            instance_type: self.instance_type.clone(),
            max_hourly_cost: self.max_hourly_cost,
            ..Default::default()
        })
    }
}

pub async fn offers(
    engine: &Engine,
    request: &OffersRequest,
    all: bool,
    json: bool,
    catalog_dir: Option<PathBuf>,
) -> Result<i32> {
    let query = OffersQuery {
        resources: request.resources()?,
        nodes: request.nodes,
        kinds: Kinds {
            on_demand: !request.spot,
            spot: request.spot,
            gpu: request.accelerators.is_some() || request.instance_type.is_some(),
            cpu: request.accelerators.is_none(),
        },
        catalog_dir,
    };
    engine.workspace()?;
    let ranked = engine.offers(&query).await?;
    if json {
        let rows: Vec<serde_json::Value> = ranked
            .iter()
            .map(|c| serde_json::to_value(c).unwrap_or_default())
            .collect();
        say!(
            "{}",
            serde_json::to_string_pretty(&rows).unwrap_or_default()
        );
        return Ok(EXIT_OK);
    }
    let shown = if all {
        ranked.len()
    } else {
        ranked.len().min(20)
    };
    say_inline!("{}", crate::render::human::offers(&ranked, shown));
    Ok(EXIT_OK)
}

pub async fn update(
    engine: &Engine,
    catalog_dir: Option<PathBuf>,
    url: String,
    clouds: Vec<String>,
    timeout: std::time::Duration,
) -> Result<i32> {
    let dir = engine.catalog_dir(catalog_dir.clone());
    say!("Downloading catalogs from {url} into {} ...", dir.display());
    for u in engine
        .update_catalogs(catalog_dir, url, clouds, timeout)
        .await?
    {
        say!(
            "  {}  {} rows, {} KiB",
            u.path.display(),
            u.rows,
            u.bytes / 1024
        );
    }
    say!("\nhint: `skyform catalog list` shows what is loaded; plans use it from now on");
    Ok(EXIT_OK)
}

pub fn list(engine: &Engine, catalog_dir: Option<PathBuf>) -> Result<i32> {
    let dir = engine.catalog_dir(catalog_dir);
    let catalog = load_catalog(&dir)?;
    say!("Catalogs in {}:", dir.display());
    say!("{:<10} {:>8}  {:<12} FILE", "CLOUD", "ROWS", "AGE");
    for f in &catalog.files {
        let age = f
            .modified
            .and_then(|m| std::time::SystemTime::now().duration_since(m).ok())
            .map_or_else(
                || "-".to_string(),
                |d| {
                    let h = d.as_secs() / 3600;
                    if h >= 48 {
                        format!("{} days", h / 24)
                    } else {
                        format!("{h} h")
                    }
                },
            );
        say!(
            "{:<10} {:>8}  {:<12} {}",
            f.cloud,
            f.rows,
            age,
            f.path.display()
        );
    }
    Ok(EXIT_OK)
}
