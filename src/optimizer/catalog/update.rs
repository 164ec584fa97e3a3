//! `skyform catalog update`: downloading the public catalogs, each file checked before it
//! replaces the old one.

use super::{CatalogError, parse_vms};
use std::path::{Path, PathBuf};

/// Where `skyform catalog update` fetches from: SkyPilot's public catalogs, schema v8.
pub const DEFAULT_CATALOG_URL: &str =
    "https://raw.githubusercontent.com/skypilot-org/skypilot-catalog/master/catalogs/v8";

/// What `update` did for one file.
#[derive(Debug, Clone, PartialEq)]
pub struct Updated {
    pub path: PathBuf,
    pub rows: usize,
    pub bytes: usize,
}

/// Downloads `<base>/<cloud>/vms.csv` for each cloud (and `common/accelerators.csv` when the
/// server has it) into `dir`. Each file is checked to be a catalog before it replaces the old
/// one (temp file, then rename), so a failed or truncated download never leaves a broken
/// catalog behind. Blocking: call it off the async runtime.
pub fn update(
    base: &str,
    clouds: &[String],
    dir: &Path,
    timeout: std::time::Duration,
) -> Result<Vec<Updated>, CatalogError> {
    let tls = ureq::tls::TlsConfig::builder()
        .provider(ureq::tls::TlsProvider::Rustls)
        .root_certs(ureq::tls::RootCerts::PlatformVerifier)
        .build();
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .tls_config(tls)
        .timeout_global(Some(timeout))
        .build()
        .into();
    let fetch = |url: &str| -> Result<Vec<u8>, String> {
        let mut resp = agent.get(url).call().map_err(|e| e.to_string())?;
        resp.body_mut()
            .with_config()
            .limit(512 << 20)
            .read_to_vec()
            .map_err(|e| e.to_string())
    };
    let base = base.trim_end_matches('/');
    // Everything is fetched and checked first; only then are files replaced, so a failure
    // leaves the catalogs as they were.
    let mut fetched: Vec<(PathBuf, Vec<u8>, usize)> = Vec::new();
    for cloud in clouds {
        let url = format!("{base}/{cloud}/vms.csv");
        let bytes = fetch(&url).map_err(|message| CatalogError::Format {
            path: url.clone(),
            message,
        })?;
        let parsed = parse_vms(&bytes).map_err(|message| CatalogError::Format {
            path: url.clone(),
            message,
        })?;
        let rows = parsed.rows();
        if rows == 0 {
            return Err(CatalogError::Format {
                path: url,
                message: "the catalog has no rows".into(),
            });
        }
        fetched.push((dir.join(cloud).join("vms.csv"), bytes, rows));
    }
    // The accelerator list is optional.
    if let Ok(bytes) = fetch(&format!("{base}/common/accelerators.csv")) {
        let rows = bytes
            .iter()
            .filter(|b| **b == b'\n')
            .count()
            .saturating_sub(1);
        fetched.push((dir.join("common").join("accelerators.csv"), bytes, rows));
    }
    let mut done = Vec::new();
    for (path, bytes, rows) in fetched {
        write_replacing(&path, &bytes)?;
        done.push(Updated {
            path,
            rows,
            bytes: bytes.len(),
        });
    }
    Ok(done)
}

fn write_replacing(path: &Path, bytes: &[u8]) -> Result<(), CatalogError> {
    let io = |source| CatalogError::Io {
        path: path.display().to_string(),
        source,
    };
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(io)?;
    let tmp = dir.join(format!(".vms.csv.tmp-{}", std::process::id()));
    std::fs::write(&tmp, bytes).map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)
}
