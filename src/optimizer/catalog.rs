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

mod index;
mod rows;
#[cfg(test)]
mod tests;
mod update;

pub use update::{DEFAULT_CATALOG_URL, Updated, update};

use super::{Micros, Offering, micros_from_dollars};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// One machine shape at one place, as the catalog lists it (an owned copy of a row; the
/// catalog keeps its rows in a compact form, see `catalog/rows.rs`).
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

/// One cloud's catalog, compact: rows that refer to tables of the cloud's machine shapes and
/// (sorted) strings by number; see `catalog/rows.rs`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CloudCatalog {
    strings: rows::Strings,
    /// Rows with an instance type.
    vms: rows::Rows,
    /// Accelerators priced on their own (GCP), per zone: the row's price is for `count` GPUs.
    gpus: rows::Rows,
}

impl CloudCatalog {
    /// The catalog of these rows: `vms` with an instance type, `gpus` (GCP's separately
    /// priced accelerators) without.
    pub fn from_rows(vms: &[Vm], gpus: &[Vm]) -> CloudCatalog {
        let (strings, vms, gpus) = rows::encode(vms, gpus);
        CloudCatalog { strings, vms, gpus }
    }

    fn from_parts(strings: rows::Strings, vms: rows::Rows, gpus: rows::Rows) -> CloudCatalog {
        CloudCatalog { strings, vms, gpus }
    }

    fn parts(&self) -> (&rows::Strings, &rows::Rows, &rows::Rows) {
        (&self.strings, &self.vms, &self.gpus)
    }

    /// The rows with an instance type, as owned values.
    pub fn vms(&self) -> Vec<Vm> {
        self.vms.iter().map(|r| r.vm(&self.strings)).collect()
    }

    /// The separately priced accelerators, as owned values.
    pub fn gpus(&self) -> Vec<Vm> {
        self.gpus.iter().map(|r| r.vm(&self.strings)).collect()
    }

    /// How many rows the cloud's file had that are kept (both kinds).
    pub fn rows(&self) -> usize {
        self.vms.len() + self.gpus.len()
    }

    /// Whether a machine of the catalog is in `region` (as written).
    pub fn has_region(&self, region: &str) -> bool {
        self.strings
            .find(region)
            .is_some_and(|id| self.vms.iter().any(|r| r.region == id))
    }

    /// Whether a machine of the catalog is in `zone` (as written).
    pub fn has_zone(&self, zone: &str) -> bool {
        self.strings
            .find(zone)
            .is_some_and(|id| self.vms.iter().any(|r| r.zone == id))
    }

    /// The regions of the catalog's machines, sorted.
    pub fn regions(&self) -> Vec<&str> {
        self.regions_where(|_| true)
    }

    /// The regions of the catalog's machines in one of `zones`, sorted.
    pub fn regions_of_zones(&self, zones: &[String]) -> Vec<String> {
        let ids: Vec<u32> = zones.iter().filter_map(|z| self.strings.find(z)).collect();
        self.regions_where(|r| ids.contains(&r.zone))
            .into_iter()
            .map(String::from)
            .collect()
    }

    fn regions_where(&self, keep: impl Fn(&rows::Row) -> bool) -> Vec<&str> {
        let mut seen = vec![false; self.strings.len()];
        for r in self.vms.iter().filter(|r| keep(r)) {
            if let Some(s) = seen.get_mut(r.region as usize) {
                *s = true;
            }
        }
        // Ids are in string order.
        self.strings
            .iter()
            .zip(seen)
            .filter_map(|(s, seen)| seen.then_some(s))
            .collect()
    }
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

/// The files of a catalog directory, as found before reading them.
struct Scan {
    /// `(cloud, path of its vms.csv)`, in cloud name order.
    clouds: Vec<(String, PathBuf)>,
    /// `common/accelerators.csv`, when it is a file.
    common: Option<PathBuf>,
    /// One per file (clouds in order, then common), taken before reading: a file that
    /// changes while it is read makes the stamp differ next time.
    stamps: Vec<index::Stamp>,
    modified: Vec<Option<std::time::SystemTime>>,
}

impl Scan {
    fn of(dir: &Path) -> Result<Scan, CatalogError> {
        let rd = std::fs::read_dir(dir).map_err(|source| CatalogError::Io {
            path: dir.display().to_string(),
            source,
        })?;
        let mut found: Vec<(String, PathBuf, String, std::fs::Metadata)> = rd
            .filter_map(Result::ok)
            .filter_map(|e| {
                let path = e.path().join("vms.csv");
                let meta = std::fs::metadata(&path).ok().filter(|m| m.is_file())?;
                let name = e.file_name().to_string_lossy().into_owned();
                Some((name.to_lowercase(), path, format!("{name}/vms.csv"), meta))
            })
            .collect();
        // By cloud, then path (as the paths were sorted before the index existed).
        found.sort_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));
        let common_path = dir.join("common").join("accelerators.csv");
        let common_meta = std::fs::metadata(&common_path).ok().filter(|m| m.is_file());
        let mut scan = Scan {
            clouds: Vec::with_capacity(found.len()),
            common: None,
            stamps: Vec::with_capacity(found.len() + 1),
            modified: Vec::with_capacity(found.len() + 1),
        };
        for (cloud, path, name, meta) in found {
            scan.stamps.push(index::Stamp::of(name, &meta));
            scan.modified.push(meta.modified().ok());
            scan.clouds.push((cloud, path));
        }
        if let Some(meta) = common_meta {
            scan.stamps
                .push(index::Stamp::of("common/accelerators.csv".into(), &meta));
            scan.modified.push(meta.modified().ok());
            scan.common = Some(common_path);
        }
        Ok(scan)
    }
}

impl Catalog {
    /// Reads every `<cloud>/vms.csv` under `dir` (clouds in name order), through the
    /// directory's prebuilt index when it is current (see `catalog/index.rs`); otherwise parses the
    /// CSVs and writes the index for the next run.
    pub fn load(dir: &Path) -> Result<Catalog, CatalogError> {
        Self::load_indexed(dir, &index::places(dir))
    }

    /// As [`Self::load`] with the index looked for (and written) at `places`, in order.
    fn load_indexed(dir: &Path, places: &[PathBuf]) -> Result<Catalog, CatalogError> {
        let scan = Scan::of(dir)?;
        if let Some(c) = index::read(places, &scan.stamps)
            .filter(|c| c.clouds.len() == scan.clouds.len())
            .filter(|c| c.accelerators.is_some() == scan.common.is_some())
        {
            return Ok(Self::assemble(scan, c.clouds, c.accelerators));
        }
        let (clouds, accelerators) = Self::parse_files(&scan)?;
        let contents = index::Contents {
            stamps: scan.stamps.clone(),
            clouds,
            accelerators,
        };
        index::write(places, &contents);
        Ok(Self::assemble(scan, contents.clouds, contents.accelerators))
    }

    /// Reads every `<cloud>/vms.csv` under `dir` from the CSVs themselves, neither reading
    /// nor writing an index.
    pub fn load_csv(dir: &Path) -> Result<Catalog, CatalogError> {
        let scan = Scan::of(dir)?;
        let (clouds, accelerators) = Self::parse_files(&scan)?;
        Ok(Self::assemble(scan, clouds, accelerators))
    }

    /// Parses the files a scan found.
    #[allow(clippy::type_complexity)]
    fn parse_files(
        scan: &Scan,
    ) -> Result<(Vec<CloudCatalog>, Option<BTreeMap<String, Vec<String>>>), CatalogError> {
        // One thread per file: the files are independent and GCP's is most of the work.
        let parsed: Vec<Result<CloudCatalog, CatalogError>> = std::thread::scope(|scope| {
            let handles: Vec<_> = scan
                .clouds
                .iter()
                .map(|(_, path)| {
                    scope.spawn(move || {
                        let bytes = std::fs::read(path).map_err(|source| CatalogError::Io {
                            path: path.display().to_string(),
                            source,
                        })?;
                        parse_vms(&bytes).map_err(|message| CatalogError::Format {
                            path: path.display().to_string(),
                            message,
                        })
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
        let clouds = parsed.into_iter().collect::<Result<Vec<_>, _>>()?;
        // A common file that cannot be read is left out, as if it were not there; the
        // index then records it as absent (with a stamp that makes a later run retry).
        let accelerators = scan
            .common
            .as_ref()
            .and_then(|p| std::fs::read(p).ok())
            .map(|bytes| parse_accelerators(&bytes));
        Ok((clouds, accelerators))
    }

    /// The catalog of a scan's files and what they hold.
    fn assemble(
        scan: Scan,
        parsed: Vec<CloudCatalog>,
        accelerators: Option<BTreeMap<String, Vec<String>>>,
    ) -> Catalog {
        let mut catalog = Catalog::default();
        let mut modified = scan.modified.into_iter();
        let cloud_modified: Vec<_> = modified.by_ref().take(scan.clouds.len()).collect();
        if let (Some(path), Some(map)) = (scan.common, accelerators) {
            catalog.files.push(LoadedFile {
                cloud: "common".into(),
                rows: map.len(),
                modified: modified.next().flatten(),
                path,
            });
            catalog.accelerator_clouds = map;
        }
        for (((cloud, path), cc), modified) in
            scan.clouds.into_iter().zip(parsed).zip(cloud_modified)
        {
            catalog.files.push(LoadedFile {
                cloud: cloud.clone(),
                rows: cc.rows(),
                modified,
                path,
            });
            catalog.clouds.insert(cloud, cc);
        }
        catalog
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
        build(&[(
            cloud,
            multiplier,
            cc,
            self.picks(cloud, multiplier, regions, kinds),
        )])
    }

    /// What [`Self::offerings_of_kinds`] makes offerings of, in order.
    fn picks(&self, cloud: &str, multiplier: f64, regions: &[String], kinds: Kinds) -> Vec<Pick> {
        let Some(cc) = self.clouds.get(cloud) else {
            return Vec::new();
        };
        // Per string id, so that rows are checked by number.
        let in_scope = cc
            .strings
            .flags(|r| regions.is_empty() || regions.iter().any(|x| x.eq_ignore_ascii_case(r)));
        // Separately priced GPUs (GCP) are joined with their hosts on another thread
        // meanwhile: GCP's catalog is the largest, and this is much of its work.
        let join = !cc.gpus.is_empty() && kinds.gpu;
        std::thread::scope(|scope| {
            let joined = join.then(|| scope.spawn(|| join_gpus(cc, multiplier, &in_scope, kinds)));
            let mut picks = row_picks(cc, &in_scope, kinds);
            if let Some(h) = joined {
                picks.extend(h.join().unwrap_or_else(|e| std::panic::resume_unwind(e)));
            }
            picks
        })
    }

    /// The offerings of several clouds (cloud, price multiplier, regions), built in parallel.
    pub fn offerings_of(
        &self,
        wanted: &[(String, f64, Vec<String>)],
        kinds: Kinds,
    ) -> Vec<Offering> {
        let picks: Vec<Vec<Pick>> = std::thread::scope(|scope| {
            let handles: Vec<_> = wanted
                .iter()
                .map(|(cloud, m, regions)| {
                    scope.spawn(move || self.picks(cloud, *m, regions, kinds))
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().unwrap_or_else(|e| std::panic::resume_unwind(e)))
                .collect()
        });
        let empty = CloudCatalog::default();
        let jobs: Vec<Job<'_>> = wanted
            .iter()
            .zip(picks)
            .map(|((cloud, m, _), p)| {
                (
                    cloud.as_str(),
                    *m,
                    self.clouds.get(cloud).unwrap_or(&empty),
                    p,
                )
            })
            .collect();
        build(&jobs)
    }

    /// Accelerator names and counts the catalogs offer (for "did you mean").
    pub fn accelerator_names(&self) -> Vec<(String, f64)> {
        let mut v: Vec<(String, f64)> = self
            .clouds
            .values()
            .flat_map(|c| {
                c.vms
                    .iter()
                    .chain(c.gpus.iter())
                    .filter(rows::Row::has_accelerator)
                    .map(|r| (c.strings.get(r.accelerator).to_string(), r.count))
            })
            .collect();
        v.sort_by(|a, b| a.0.cmp(&b.0).then(a.1.total_cmp(&b.1)));
        v.dedup();
        v
    }
}

/// A future offering: which rows (by position in their cloud's lists) it is made of and its
/// price in dollars, before the multiplier. Choosing is done on these; offerings (a few heap
/// strings each) are built once their number is known.
#[derive(Debug, Clone, Copy)]
enum Pick {
    /// A row of `vms`: on demand for its region, or spot in its zone.
    Row { vm: u32, spot: bool, price: f64 },
    /// A separately priced GPU (a row of `gpus`) on a host machine (of `vms`) of its zone:
    /// spot there, or on demand for the GPU's region.
    Joined {
        host: u32,
        gpu: u32,
        spot: bool,
        price: f64,
    },
}

/// A cloud's share of a build: its name, price multiplier, catalog and picks.
type Job<'a> = (&'a str, f64, &'a CloudCatalog, Vec<Pick>);

/// The offerings of `(cloud, multiplier, catalog, picks)` in order. The list is allocated
/// once, whole, with empty offerings (which allocate nothing), and filled in two halves on
/// two threads: growing and copying it, or joining per-thread lists, would touch its memory
/// twice.
fn build(jobs: &[Job<'_>]) -> Vec<Offering> {
    let total: usize = jobs.iter().map(|j| j.3.len()).sum();
    let empty = Offering {
        cloud: String::new(),
        region: None,
        zone: None,
        instance_type: String::new(),
        accelerators: Vec::new(),
        cpus: 0.0,
        memory_gib: 0.0,
        spot: false,
        price: 0,
        max_nodes: None,
    };
    let mut out = vec![empty; total];
    type Piece<'s> = (
        &'s str,
        f64,
        &'s CloudCatalog,
        &'s [Pick],
        &'s mut [Offering],
    );
    let (mut first, mut second): (Vec<Piece>, Vec<Piece>) = (Vec::new(), Vec::new());
    let mut rest: &mut [Offering] = &mut out;
    let (half, mut seen) = (total / 2, 0);
    for (cloud, m, cc, picks) in jobs {
        let (slots, tail) = std::mem::take(&mut rest).split_at_mut(picks.len());
        rest = tail;
        let n = picks.len();
        if seen + n <= half {
            first.push((cloud, *m, cc, picks, slots));
        } else if seen >= half {
            second.push((cloud, *m, cc, picks, slots));
        } else {
            let (pa, pb) = picks.split_at(half - seen);
            let (sa, sb) = slots.split_at_mut(half - seen);
            first.push((cloud, *m, cc, pa, sa));
            second.push((cloud, *m, cc, pb, sb));
        }
        seen += n;
    }
    let fill = |pieces: Vec<Piece>| {
        for (cloud, m, cc, picks, slots) in pieces {
            for (slot, pick) in slots.iter_mut().zip(picks) {
                *slot = match *pick {
                    Pick::Row { vm, spot, price } => {
                        offering(cloud, cc, cc.vms.row(vm), spot, price, m)
                    }
                    Pick::Joined {
                        host,
                        gpu,
                        spot,
                        price,
                    } => joined(
                        cloud,
                        cc,
                        cc.vms.row(host),
                        cc.gpus.row(gpu),
                        spot,
                        price,
                        m,
                    ),
                };
            }
        }
    };
    if total < 2048 {
        fill(first);
        fill(second);
    } else {
        std::thread::scope(|scope| {
            scope.spawn(|| fill(second));
            fill(first);
        });
    }
    out
}

/// The offering of a row: spot in its zone, or on demand for its whole region.
fn offering(
    cloud: &str,
    cc: &CloudCatalog,
    vm: rows::Row,
    spot: bool,
    price: f64,
    multiplier: f64,
) -> Offering {
    let s = &cc.strings;
    Offering {
        cloud: cloud.to_string(),
        region: Some(s.get(vm.region).to_string()),
        zone: (spot && vm.zone != rows::NONE).then(|| s.get(vm.zone).to_string()),
        instance_type: s.get(vm.instance_type).to_string(),
        accelerators: accelerators(s, &vm),
        cpus: vm.vcpus,
        memory_gib: vm.memory_gib,
        spot,
        price: micros_from_dollars(price * multiplier),
        max_nodes: None,
    }
}

fn accelerators(s: &rows::Strings, vm: &rows::Row) -> Vec<(String, f64)> {
    if vm.has_accelerator() {
        vec![(s.get(vm.accelerator).to_string(), vm.count)]
    } else {
        Vec::new()
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
    let (mut vms, mut gpus) = (Vec::new(), Vec::new());
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
                gpus.push(vm);
            }
        } else {
            vms.push(vm);
        }
    }
    Ok(CloudCatalog::from_rows(&vms, &gpus))
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

/// The rows of a cloud with an instance type that become offerings: spot per zone in catalog
/// order, then on demand per (region, instance type) in that order. `in_scope` is per
/// string id (for regions).
fn row_picks(cc: &CloudCatalog, in_scope: &[bool], kinds: Kinds) -> Vec<Pick> {
    let mut out = Vec::new();
    // On demand: one offering per (region, instance type), the cheapest row and the first
    // of equals; spot: per zone. Catalogs list the zones of a pair one after another, so
    // runs of a pair are folded as they come and only the runs' winners are sorted.
    // (region, instance type, row, price); ids sort as their strings do.
    let mut on_demand: Vec<(u32, u32, u32, f64)> = Vec::new();
    // Hosts of separately priced GPUs (GCP's a2, a3, a4, g2) come only with their GPUs.
    let host_family = if cc.gpus.is_empty() {
        Vec::new()
    } else {
        cc.strings
            .flags(|t| GPU_HOST_FAMILIES.iter().any(|f| t.starts_with(f)))
    };
    let flag = |flags: &[bool], id: u32| flags.get(id as usize).copied().unwrap_or(false);
    for (i, vm) in cc.vms.iter().enumerate() {
        if !flag(in_scope, vm.region)
            || (!vm.has_accelerator() && flag(&host_family, vm.instance_type))
        {
            continue;
        }
        let wanted = if vm.has_accelerator() {
            kinds.gpu
        } else {
            kinds.cpu
        };
        if !wanted {
            continue;
        }
        let i = i as u32;
        if let Some(p) = vm.price.filter(|_| kinds.on_demand) {
            match on_demand.last_mut() {
                Some(last) if last.0 == vm.region && last.1 == vm.instance_type => {
                    if p < last.3 {
                        *last = (last.0, last.1, i, p);
                    }
                }
                _ => on_demand.push((vm.region, vm.instance_type, i, p)),
            }
        }
        if let Some(sp) = vm.spot_price.filter(|_| kinds.spot) {
            out.push(Pick::Row {
                vm: i,
                spot: true,
                price: sp,
            });
        }
    }
    // Stable, so runs of one pair keep their order and the first of equals still wins.
    on_demand.sort_by_key(|a| (u64::from(a.0) << 32) | u64::from(a.1));
    on_demand.dedup_by(|later, kept| {
        let same = (later.0, later.1) == (kept.0, kept.1);
        if same && later.3 < kept.3 {
            std::mem::swap(later, kept);
        }
        same
    });
    out.reserve(on_demand.len());
    out.extend(on_demand.into_iter().map(|(_, _, vm, price)| Pick::Row {
        vm,
        spot: false,
        price,
    }));
    out
}

/// Offerings for separately priced accelerators: GPU row + host VM in the same zone; spot
/// ones first. `multiplier` decides ties between on-demand prices as the offerings will
/// show them.
fn join_gpus(cc: &CloudCatalog, multiplier: f64, in_scope: &[bool], kinds: Kinds) -> Vec<Pick> {
    let s = &cc.strings;
    // Host VMs by zone (sorted by zone id, in catalog order within one): only the families
    // GPUs are joined with (n1 and the fixed families), a small part of the catalog.
    let may_host = s.flags(may_host_gpus);
    let n1 = s.flags(|t| t.starts_with("n1-"));
    let mut fixed_ids: BTreeMap<(u32, u64), Option<Vec<u32>>> = BTreeMap::new();
    let flag = |flags: &[bool], id: u32| flags.get(id as usize).copied().unwrap_or(false);
    let mut hosts: Vec<(u32, u32, rows::Row)> = cc
        .vms
        .iter()
        .enumerate()
        .filter(|(_, v)| {
            !v.has_accelerator() && flag(&may_host, v.instance_type) && v.zone != rows::NONE
        })
        .map(|(i, v)| (v.zone, i as u32, v))
        .collect();
    hosts.sort_by_key(|h| h.0);
    let mut spot = Vec::new();
    // On demand per (region, host type, GPU, count): the cheapest, the first of equals. Only
    // the winners become offerings. Ids order as their strings.
    type Key = (u32, u32, u32, u64);
    let mut on_demand: BTreeMap<Key, (u32, u32, f64, Micros)> = BTreeMap::new();
    for (g, gpu) in cc.gpus.iter().enumerate() {
        if !flag(in_scope, gpu.region) || !gpu.has_accelerator() {
            continue;
        }
        let (name, count) = (s.get(gpu.accelerator), gpu.count);
        if name.starts_with("tpu-") || gpu.zone == rows::NONE {
            continue;
        }
        let from = hosts.partition_point(|h| h.0 < gpu.zone);
        let to = hosts.partition_point(|h| h.0 <= gpu.zone);
        let Some(zone_hosts) = hosts.get(from..to).filter(|z| !z.is_empty()) else {
            continue;
        };
        // The fixed host types as ids (a type the table lacks has no machine here).
        let fixed = fixed_ids
            .entry((gpu.accelerator, count.to_bits()))
            .or_insert_with(|| {
                fixed_hosts(name, count)
                    .map(|types| types.iter().filter_map(|t| s.find(t)).collect::<Vec<u32>>())
            })
            .as_deref();
        // Every n1 host with at least the default vCPUs for the GPUs; the optimizer
        // applies SkyPilot's 4 GiB per vCPU when the request says neither cpus nor
        // memory (T4:1 → n1-highmem-4), and the request's own numbers otherwise.
        let need = n1_default_cpus(name, count);
        let fits = |h: &rows::Row| match fixed {
            Some(types) => types.contains(&h.instance_type),
            // Up to four times the default: enough room for a `cpus` request without
            // multiplying the offerings by every n1 size.
            None => flag(&n1, h.instance_type) && h.vcpus >= need && h.vcpus <= 4.0 * need,
        };
        let g = g as u32;
        for (_, h, host) in zone_hosts.iter().filter(|h| fits(&h.2)) {
            if let (Some(hp), Some(gp), true) = (host.spot_price, gpu.spot_price, kinds.spot) {
                spot.push(Pick::Joined {
                    host: *h,
                    gpu: g,
                    spot: true,
                    price: hp + gp,
                });
            }
            if let (Some(hp), Some(gp), true) = (host.price, gpu.price, kinds.on_demand) {
                let price = micros_from_dollars((hp + gp) * multiplier);
                let key = (
                    gpu.region,
                    host.instance_type,
                    gpu.accelerator,
                    count as u64,
                );
                match on_demand.get(&key) {
                    Some((_, _, _, p)) if *p <= price => {}
                    _ => {
                        on_demand.insert(key, (*h, g, hp + gp, price));
                    }
                }
            }
        }
    }
    spot.extend(
        on_demand
            .into_values()
            .map(|(host, gpu, price, _)| Pick::Joined {
                host,
                gpu,
                spot: false,
                price,
            }),
    );
    spot
}

/// Whether a machine type belongs to a family that separately priced GPUs are joined with.
fn may_host_gpus(instance_type: &str) -> bool {
    instance_type.starts_with("n1-")
        || GPU_HOST_FAMILIES
            .iter()
            .any(|f| instance_type.starts_with(f))
}

/// The offering of a GPU row on a host machine of its zone: spot in that zone, or on demand
/// for the GPU's region.
fn joined(
    cloud: &str,
    cc: &CloudCatalog,
    host: rows::Row,
    gpu: rows::Row,
    spot: bool,
    price: f64,
    multiplier: f64,
) -> Offering {
    let s = &cc.strings;
    Offering {
        cloud: cloud.to_string(),
        region: Some(s.get(gpu.region).to_string()),
        zone: (spot && gpu.zone != rows::NONE).then(|| s.get(gpu.zone).to_string()),
        instance_type: s.get(host.instance_type).to_string(),
        accelerators: accelerators(s, &gpu),
        cpus: host.vcpus,
        memory_gib: host.memory_gib,
        spot,
        price: micros_from_dollars(price * multiplier),
        max_nodes: None,
    }
}
