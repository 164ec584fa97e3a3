//! Price and shape catalogs in SkyPilot's public CSV format, turned into [`Offering`]s.
//!
//! A catalog directory holds `<cloud>/vms.csv` for each cloud (aws, gcp, lambda, …) and
//! optionally `common/accelerators.csv`. Columns are found by name, so files from older or
//! newer schema versions (with `Arch`, `LocalDiskType`, … or without) read the same.
//!
//! Offerings: on-demand per (cloud, region, instance type) — the zones of a region share its
//! price and are tried in turn when provisioning — and spot per (cloud, zone, instance type),
//! because spot prices differ by zone. GCP prices most GPUs separately from their host VM
//! (rows with an empty `InstanceType`); they are joined with their host types as SkyPilot
//! does: fixed families for A100, A100-80GB, L4, H100, H200, B200, and the cheapest n1 host
//! with enough vCPUs and at least 4 GiB per vCPU for the others.

use super::{Micros, Offering, micros_from_dollars};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// One machine shape at one place, as the catalog lists it.
#[derive(Debug, Clone, PartialEq)]
pub struct Vm {
    pub instance_type: String,
    pub accelerator: Option<(String, f64)>,
    pub vcpus: f64,
    pub memory_gib: f64,
    pub price: Option<f64>,
    pub spot_price: Option<f64>,
    pub region: String,
    pub zone: Option<String>,
}

/// One cloud's catalog.
#[derive(Debug, Clone, Default)]
pub struct CloudCatalog {
    /// Rows with an instance type.
    pub vms: Vec<Vm>,
    /// Accelerators priced on their own (GCP), per zone: the row's price is for `count` GPUs.
    pub gpus: Vec<Vm>,
}

/// Which offerings to build: on demand and/or spot, with and/or without accelerators.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Kinds {
    pub on_demand: bool,
    pub spot: bool,
    pub gpu: bool,
    pub cpu: bool,
}

impl Kinds {
    pub const ALL: Kinds = Kinds {
        on_demand: true,
        spot: true,
        gpu: true,
        cpu: true,
    };
}

/// A file that was read, for `skyform catalog list`.
#[derive(Debug, Clone, PartialEq)]
pub struct LoadedFile {
    pub cloud: String,
    pub path: PathBuf,
    pub rows: usize,
    pub modified: Option<std::time::SystemTime>,
}

/// All catalogs of a directory.
#[derive(Debug, Clone, Default)]
pub struct Catalog {
    pub clouds: BTreeMap<String, CloudCatalog>,
    pub files: Vec<LoadedFile>,
    /// `common/accelerators.csv`: which clouds offer each accelerator (upper-cased name →
    /// cloud names as written), when the file is there.
    pub accelerator_clouds: BTreeMap<String, Vec<String>>,
}

#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error("cannot read catalog {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Format { path: String, message: String },
}

fn parse_f64(s: &str) -> Option<f64> {
    let t = s.trim();
    if t.is_empty() {
        return None;
    }
    t.parse::<f64>().ok().filter(|v| v.is_finite())
}

impl Catalog {
    /// Reads every `<cloud>/vms.csv` under `dir` (clouds in name order).
    pub fn load(dir: &Path) -> Result<Catalog, CatalogError> {
        let mut catalog = Catalog::default();
        let rd = std::fs::read_dir(dir).map_err(|source| CatalogError::Io {
            path: dir.display().to_string(),
            source,
        })?;
        let mut clouds: Vec<(String, PathBuf)> = rd
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.join("vms.csv").is_file())
            .filter_map(|p| {
                Some((
                    p.file_name()?.to_string_lossy().to_lowercase(),
                    p.join("vms.csv"),
                ))
            })
            .collect();
        clouds.sort();
        // One thread per file: the files are independent and GCP's is most of the work.
        let parsed: Vec<Result<(String, PathBuf, CloudCatalog), CatalogError>> =
            std::thread::scope(|scope| {
                let handles: Vec<_> = clouds
                    .into_iter()
                    .map(|(cloud, path)| {
                        scope.spawn(move || {
                            let bytes =
                                std::fs::read(&path).map_err(|source| CatalogError::Io {
                                    path: path.display().to_string(),
                                    source,
                                })?;
                            let cc = parse_vms(&bytes).map_err(|message| CatalogError::Format {
                                path: path.display().to_string(),
                                message,
                            })?;
                            Ok((cloud, path, cc))
                        })
                    })
                    .collect();
                handles
                    .into_iter()
                    .map(|h| {
                        h.join().unwrap_or_else(|_| {
                            Err(CatalogError::Format {
                                path: String::new(),
                                message: "reading the catalog failed".into(),
                            })
                        })
                    })
                    .collect()
            });
        let common = dir.join("common").join("accelerators.csv");
        if let Ok(bytes) = std::fs::read(&common) {
            catalog.accelerator_clouds = parse_accelerators(&bytes);
            catalog.files.push(LoadedFile {
                cloud: "common".into(),
                rows: catalog.accelerator_clouds.len(),
                modified: std::fs::metadata(&common).and_then(|m| m.modified()).ok(),
                path: common,
            });
        }
        for result in parsed {
            let (cloud, path, cc) = result?;
            catalog.files.push(LoadedFile {
                cloud: cloud.clone(),
                rows: cc.vms.len() + cc.gpus.len(),
                modified: std::fs::metadata(&path).and_then(|m| m.modified()).ok(),
                path,
            });
            catalog.clouds.insert(cloud, cc);
        }
        Ok(catalog)
    }

    /// Every offering of `cloud` (on-demand per region, spot per zone), prices multiplied by
    /// `multiplier`, restricted to `regions` when given.
    pub fn offerings(&self, cloud: &str, multiplier: f64, regions: &[String]) -> Vec<Offering> {
        self.offerings_of_kinds(cloud, multiplier, regions, Kinds::ALL)
    }

    /// As [`Self::offerings`], building only the kinds asked for (offerings nobody can ask
    /// for cost time and memory: most of a catalog is spot prices per zone).
    pub fn offerings_of_kinds(
        &self,
        cloud: &str,
        multiplier: f64,
        regions: &[String],
        kinds: Kinds,
    ) -> Vec<Offering> {
        let Some(cc) = self.clouds.get(cloud) else {
            return Vec::new();
        };
        let in_scope =
            |r: &str| regions.is_empty() || regions.iter().any(|x| x.eq_ignore_ascii_case(r));
        let mut out = Vec::new();
        // On demand: one offering per (region, instance type); spot: per zone.
        let mut on_demand: BTreeMap<(&str, &str), (&Vm, f64)> = BTreeMap::new();
        // Hosts of separately priced GPUs (GCP's a2, a3, a4, g2) come only with their GPUs.
        let gpu_host = |vm: &Vm| {
            !cc.gpus.is_empty()
                && vm.accelerator.is_none()
                && GPU_HOST_FAMILIES
                    .iter()
                    .any(|f| vm.instance_type.starts_with(f))
        };
        for vm in cc
            .vms
            .iter()
            .filter(|v| in_scope(&v.region) && !gpu_host(v))
        {
            let wanted = if vm.accelerator.is_some() {
                kinds.gpu
            } else {
                kinds.cpu
            };
            if !wanted {
                continue;
            }
            if let Some(p) = vm.price.filter(|_| kinds.on_demand) {
                on_demand
                    .entry((vm.region.as_str(), vm.instance_type.as_str()))
                    .and_modify(|e| {
                        if p < e.1 {
                            *e = (vm, p);
                        }
                    })
                    .or_insert((vm, p));
            }
            if let Some(sp) = vm.spot_price.filter(|_| kinds.spot) {
                out.push(offering(cloud, vm, vm.zone.clone(), true, sp, multiplier));
            }
        }
        for ((_, _), (vm, p)) in on_demand {
            out.push(offering(cloud, vm, None, false, p, multiplier));
        }
        if !cc.gpus.is_empty() && kinds.gpu {
            out.extend(join_gpus(cloud, cc, multiplier, &in_scope, kinds));
        }
        out
    }

    /// The offerings of several clouds (cloud, price multiplier, regions), built in parallel.
    pub fn offerings_of(
        &self,
        wanted: &[(String, f64, Vec<String>)],
        kinds: Kinds,
    ) -> Vec<Offering> {
        std::thread::scope(|scope| {
            let handles: Vec<_> = wanted
                .iter()
                .map(|(cloud, m, regions)| {
                    scope.spawn(move || self.offerings_of_kinds(cloud, *m, regions, kinds))
                })
                .collect();
            handles
                .into_iter()
                .flat_map(|h| h.join().unwrap_or_default())
                .collect()
        })
    }

    /// Accelerator names and counts the catalogs offer (for "did you mean").
    pub fn accelerator_names(&self) -> Vec<(String, f64)> {
        let mut v: Vec<(String, f64)> = self
            .clouds
            .values()
            .flat_map(|c| c.vms.iter().chain(c.gpus.iter()))
            .filter_map(|vm| vm.accelerator.clone())
            .collect();
        v.sort_by(|a, b| a.0.cmp(&b.0).then(a.1.total_cmp(&b.1)));
        v.dedup();
        v
    }
}

fn offering(
    cloud: &str,
    vm: &Vm,
    zone: Option<String>,
    spot: bool,
    price: f64,
    multiplier: f64,
) -> Offering {
    Offering {
        cloud: cloud.to_string(),
        region: Some(vm.region.clone()),
        zone,
        instance_type: vm.instance_type.clone(),
        accelerators: vm.accelerator.iter().cloned().collect(),
        cpus: vm.vcpus,
        memory_gib: vm.memory_gib,
        spot,
        price: micros_from_dollars(price * multiplier),
        max_nodes: None,
    }
}

/// Reads one `vms.csv`, finding columns by name.
fn parse_vms(bytes: &[u8]) -> Result<CloudCatalog, String> {
    let mut rdr = csv::ReaderBuilder::new().flexible(true).from_reader(bytes);
    let headers = rdr.headers().map_err(|e| e.to_string())?.clone();
    let col = |name: &str| {
        headers
            .iter()
            .position(|h| h.trim().eq_ignore_ascii_case(name))
    };
    let (Some(it), Some(region)) = (col("InstanceType"), col("Region")) else {
        return Err("not a catalog: the header has no InstanceType or Region column".into());
    };
    let (acc, accn, cpus, mem, price, spot, zone) = (
        col("AcceleratorName"),
        col("AcceleratorCount"),
        col("vCPUs"),
        col("MemoryGiB"),
        col("Price"),
        col("SpotPrice"),
        col("AvailabilityZone"),
    );
    let mut cc = CloudCatalog::default();
    for record in rdr.records() {
        let r = record.map_err(|e| e.to_string())?;
        let get = |i: Option<usize>| i.and_then(|i| r.get(i)).unwrap_or("").trim();
        let accelerator = match get(acc) {
            "" => None,
            name => Some((name.to_string(), parse_f64(get(accn)).unwrap_or(1.0))),
        };
        let vm = Vm {
            instance_type: get(Some(it)).to_string(),
            accelerator,
            vcpus: parse_f64(get(cpus)).unwrap_or(0.0),
            memory_gib: parse_f64(get(mem)).unwrap_or(0.0),
            price: parse_f64(get(price)),
            spot_price: parse_f64(get(spot)),
            region: get(Some(region)).to_string(),
            zone: Some(get(zone).to_string()).filter(|z| !z.is_empty()),
        };
        if vm.region.is_empty() {
            continue;
        }
        if vm.instance_type.is_empty() {
            if vm.accelerator.is_some() {
                cc.gpus.push(vm);
            }
        } else {
            cc.vms.push(vm);
        }
    }
    Ok(cc)
}

/// Families whose machines always carry separately priced GPUs.
const GPU_HOST_FAMILIES: [&str; 4] = ["a2-", "a3-", "a4-", "g2-"];

/// `AcceleratorName,Clouds` with Clouds a Python-style list (`"['AWS', 'GCP']"`).
pub fn parse_accelerators(bytes: &[u8]) -> BTreeMap<String, Vec<String>> {
    let mut rdr = csv::ReaderBuilder::new().flexible(true).from_reader(bytes);
    let mut out = BTreeMap::new();
    for r in rdr.records().filter_map(Result::ok) {
        let (Some(name), Some(clouds)) = (r.get(0), r.get(1)) else {
            continue;
        };
        let list: Vec<String> = clouds
            .trim_matches(|c| c == '[' || c == ']')
            .split(',')
            .map(|c| c.trim().trim_matches('\'').trim_matches('"').to_string())
            .filter(|c| !c.is_empty())
            .collect();
        if !name.trim().is_empty() {
            out.insert(name.trim().to_uppercase(), list);
        }
    }
    out
}

/// The host instance types a separately priced accelerator runs on (GCP's fixed families).
fn fixed_hosts(name: &str, count: f64) -> Option<Vec<String>> {
    let n = count as u32;
    let list: Vec<String> = match (name, n) {
        ("A100", 16) => vec!["a2-megagpu-16g".into()],
        ("A100", 1 | 2 | 4 | 8) => vec![format!("a2-highgpu-{n}g")],
        ("A100-80GB", 1 | 2 | 4 | 8) => vec![format!("a2-ultragpu-{n}g")],
        ("H100", 1 | 2 | 4 | 8) => vec![format!("a3-highgpu-{n}g")],
        ("H100-MEGA", 8) => vec!["a3-megagpu-8g".into()],
        ("H200", 8) => vec!["a3-ultragpu-8g".into()],
        ("B200", 8) => vec!["a4-highgpu-8g".into()],
        ("L4", 1) => [
            "g2-standard-4",
            "g2-standard-8",
            "g2-standard-12",
            "g2-standard-16",
            "g2-standard-32",
        ]
        .iter()
        .map(|s| (*s).to_string())
        .collect(),
        ("L4", 2) => vec!["g2-standard-24".into()],
        ("L4", 4) => vec!["g2-standard-48".into()],
        ("L4", 8) => vec!["g2-standard-96".into()],
        ("A100" | "A100-80GB" | "H100" | "H100-MEGA" | "H200" | "B200" | "L4", _) => Vec::new(),
        _ => return None,
    };
    Some(list)
}

/// Default vCPUs of an n1 host for `count` GPUs of `name` (SkyPilot's choice).
fn n1_default_cpus(name: &str, count: f64) -> f64 {
    let per_gpu = match name {
        "V100" | "P100" => 8.0,
        _ => 4.0,
    };
    per_gpu * count
}

/// Offerings for separately priced accelerators: GPU row + host VM in the same zone.
fn join_gpus(
    cloud: &str,
    cc: &CloudCatalog,
    multiplier: f64,
    in_scope: &dyn Fn(&str) -> bool,
    kinds: Kinds,
) -> Vec<Offering> {
    // Host VMs by zone, then by instance type.
    let mut hosts: BTreeMap<&str, Vec<&Vm>> = BTreeMap::new();
    for vm in cc.vms.iter().filter(|v| v.accelerator.is_none()) {
        if let Some(z) = &vm.zone {
            hosts.entry(z.as_str()).or_default().push(vm);
        }
    }
    let mut spot = Vec::new();
    let mut on_demand: BTreeMap<(String, String, String, u64), (Offering, Micros)> =
        BTreeMap::new();
    for gpu in cc.gpus.iter().filter(|g| in_scope(&g.region)) {
        let Some((name, count)) = &gpu.accelerator else {
            continue;
        };
        if name.starts_with("tpu-") {
            continue;
        }
        let Some(zone) = &gpu.zone else { continue };
        let Some(zone_hosts) = hosts.get(zone.as_str()) else {
            continue;
        };
        let candidates: Vec<&Vm> = match fixed_hosts(name, *count) {
            Some(types) => zone_hosts
                .iter()
                .filter(|h| types.contains(&h.instance_type))
                .copied()
                .collect(),
            None => {
                // Every n1 host with at least the default vCPUs for the GPUs; the optimizer
                // applies SkyPilot's 4 GiB per vCPU when the request says neither cpus nor
                // memory (T4:1 → n1-highmem-4), and the request's own numbers otherwise.
                let need = n1_default_cpus(name, *count);
                zone_hosts
                    .iter()
                    // Up to four times the default: enough room for a `cpus` request
                    // without multiplying the offerings by every n1 size.
                    .filter(|h| {
                        h.instance_type.starts_with("n1-")
                            && h.vcpus >= need
                            && h.vcpus <= 4.0 * need
                    })
                    .copied()
                    .collect()
            }
        };
        for host in candidates {
            let joined = Vm {
                instance_type: host.instance_type.clone(),
                accelerator: Some((name.clone(), *count)),
                vcpus: host.vcpus,
                memory_gib: host.memory_gib,
                price: None,
                spot_price: None,
                region: gpu.region.clone(),
                zone: None,
            };
            if let (Some(hp), Some(gp), true) = (host.spot_price, gpu.spot_price, kinds.spot) {
                spot.push(offering(
                    cloud,
                    &joined,
                    Some(zone.clone()),
                    true,
                    hp + gp,
                    multiplier,
                ));
            }
            if let (Some(hp), Some(gp), true) = (host.price, gpu.price, kinds.on_demand) {
                let o = offering(cloud, &joined, None, false, hp + gp, multiplier);
                let key = (
                    gpu.region.clone(),
                    host.instance_type.clone(),
                    name.clone(),
                    *count as u64,
                );
                match on_demand.get(&key) {
                    Some((_, p)) if *p <= o.price => {}
                    _ => {
                        let p = o.price;
                        on_demand.insert(key, (o, p));
                    }
                }
            }
        }
    }
    spot.extend(on_demand.into_values().map(|(o, _)| o));
    spot
}

#[cfg(test)]
mod tests {
    use super::*;

    const GCP: &str = "InstanceType,vCPUs,MemoryGiB,AcceleratorName,AcceleratorCount,GpuInfo,Region,AvailabilityZone,Price,SpotPrice
g2-standard-4,4.0,16.0,,,,us-east4,us-east4-a,0.14631,0.05851
g2-standard-96,96.0,384.0,,,,us-east4,us-east4-a,3.51147,1.40429
n1-standard-4,4.0,15.0,,,,us-east4,us-east4-a,0.2,0.05
n1-highmem-4,4.0,26.0,,,,us-east4,us-east4-a,0.25,0.06
,,,L4,1,{'Gpus': []},us-east4,us-east4-a,0.55821,0.2
,,,L4,8,{'Gpus': []},us-east4,us-east4-a,4.46565,1.6
,,,T4,1,{'Gpus': []},us-east4,us-east4-a,0.35,0.1
";

    #[test]
    fn joins_gcp_gpus_with_their_hosts() {
        let cc = parse_vms(GCP.as_bytes()).unwrap();
        let mut c = Catalog::default();
        c.clouds.insert("gcp".into(), cc);
        let offers = c.offerings("gcp", 1.0, &[]);
        let od = |name: &str, n: f64| {
            offers
                .iter()
                .filter(|o| {
                    !o.spot
                        && o.accelerators
                            .first()
                            .is_some_and(|a| a.0 == name && a.1 == n)
                })
                .map(|o| (o.instance_type.clone(), o.price))
                .collect::<Vec<_>>()
        };
        assert_eq!(od("L4", 1.0), vec![("g2-standard-4".to_string(), 704_520)]);
        assert_eq!(
            od("L4", 8.0),
            vec![("g2-standard-96".to_string(), 7_977_120)]
        );
        // T4 rides on any n1 host with at least 4 vCPUs; the optimizer's default of 4 GiB per
        // vCPU then prefers n1-highmem-4 to the cheaper n1-standard-4 (15 GiB).
        let mut t4 = od("T4", 1.0);
        t4.sort();
        assert_eq!(
            t4,
            vec![
                ("n1-highmem-4".to_string(), 600_000),
                ("n1-standard-4".to_string(), 550_000)
            ]
        );
        let req = crate::model::Resources {
            accelerators: Some(crate::model::Accelerators::One("T4:1".parse().unwrap())),
            ..Default::default()
        };
        let best = &super::super::rank(&req, 1, &offers, &Default::default()).unwrap()[0];
        assert_eq!(best.offering.instance_type, "n1-highmem-4");
        let spot: Vec<_> = offers
            .iter()
            .filter(|o| o.spot && o.instance_type == "g2-standard-96")
            .collect();
        assert_eq!(spot.len(), 1);
        assert_eq!(spot[0].zone.as_deref(), Some("us-east4-a"));
        assert_eq!(spot[0].price, 3_004_290);
    }

    #[test]
    fn tolerates_other_schemas() {
        let v3 = "InstanceType,AcceleratorName,AcceleratorCount,vCPUs,MemoryGiB,GpuInfo,Price,SpotPrice,Region,AvailabilityZone\n\
                  p4de.24xlarge,A100-80GB,8,96.0,1152.0,A100-80GB,40.9657,,us-east-1,us-east-1a\n";
        let cc = parse_vms(v3.as_bytes()).unwrap();
        assert_eq!(cc.vms[0].accelerator, Some(("A100-80GB".into(), 8.0)));
        assert_eq!(cc.vms[0].spot_price, None);
        let lambda = "InstanceType,AcceleratorName,AcceleratorCount,vCPUs,MemoryGiB,Price,Region,GpuInfo,SpotPrice\n\
                      gpu_1x_a10,A10,1.0,30.0,200.0,0.75,us-east-1,\"{'Gpus': []}\",\n";
        let cc = parse_vms(lambda.as_bytes()).unwrap();
        assert_eq!(cc.vms[0].zone, None);
        assert_eq!(cc.vms[0].price, Some(0.75));
        assert!(parse_vms(b"a,b\n1,2\n").is_err());
    }
}

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
        let rows = parsed.vms.len() + parsed.gpus.len();
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
