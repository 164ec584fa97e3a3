//! A prebuilt index of a catalog directory, so that a run does not parse 38,000 CSV rows.
//!
//! The index is a cache of what [`parse_vms`](super::parse_vms) and
//! [`parse_accelerators`](super::parse_accelerators) make of the files, never a source of truth:
//!
//! - It records a stamp of every file it was built from (relative path, size, modification
//!   and change times, inode) and the list of files itself, so a changed, added or removed
//!   CSV makes it stale; a stale index is rebuilt from the CSVs.
//! - It records a hash of the code that reads catalogs and of this file, so an index written
//!   by another version of skyform is rebuilt instead of trusted.
//! - It carries a checksum of its contents and every read is bounds-checked: a truncated or
//!   corrupt index is ignored (and rebuilt), never a panic or a wrong price.
//! - It is written to a temp file in the same directory and renamed into place, so concurrent
//!   runs each see a whole index or none.
//!
//! Where: `<catalog dir>/.skyform-catalog.idx` when that directory may be written to (it is
//! skyform's own `~/.skyform/catalogs` by default); for a read-only catalog directory (no
//! write bit, a read-only mount, another user's) the index goes to
//! `$XDG_CACHE_HOME/skyform/catalog-index/<hash of the directory's path>.idx`
//! (`~/.cache/…` without XDG_CACHE_HOME).
//!
//! The layout is laid out by hand (little-endian; per cloud a sorted string table, a table
//! of machine shapes and fixed-size rows, the form `catalog/rows.rs` keeps in memory) rather than through
//! serde_json: the rows are used where they lie in the file's buffer, which is the point.

use super::CloudCatalog;
#[cfg(test)]
use super::Vm;
use super::rows::{NONE, ROW, Rows, SHAPE, Shape, Strings};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The name of the index next to the CSVs.
pub const INDEX_FILE: &str = ".skyform-catalog.idx";

const MAGIC: &[u8; 8] = b"SKYFCIX\n";
/// Bumped by hand when the layout changes; the code hash below catches the rest.
const FORMAT: u32 = 3;

/// The code that decides what a catalog means: an index built by other code is not trusted.
const CODE_HASH: u64 = {
    let a = hash_const(include_bytes!("../catalog.rs"), 0);
    let b = hash_const(include_bytes!("rows.rs"), a);
    hash_const(include_bytes!("index.rs"), b)
};

const fn hash_const(bytes: &[u8], seed: u64) -> u64 {
    // FNV-1a; at compile time only.
    let mut h = 0xcbf2_9ce4_8422_2325 ^ seed;
    let mut i = 0;
    while i < bytes.len() {
        h ^= bytes[i] as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
        i += 1;
    }
    h
}

/// A checksum of the index's contents. Words go round-robin into four lanes (independent
/// chains, so the CPU overlaps them: reading the index is on every run's path). Each step
/// is a bijection of its lane for a given word and of the word for a given lane, and the
/// lanes are combined so that each one, the others fixed, maps one to one onto the result:
/// any change confined to one word always changes the result. It guards against truncation
/// and stray writes, not against an adversary.
pub(super) fn checksum(bytes: &[u8]) -> u64 {
    const K: u64 = 0xff51_afd7_ed55_8ccd;
    let step = |h: u64, w: u64| (h ^ w).wrapping_mul(K).rotate_left(31);
    let word = |c: &[u8; 8]| u64::from_le_bytes(*c);
    let seed = 0x9e37_79b9_7f4a_7c15 ^ bytes.len() as u64;
    let mut lanes = [
        seed,
        seed.rotate_left(16),
        seed.rotate_left(32),
        seed.rotate_left(48),
    ];
    let (blocks, rest) = bytes.as_chunks::<32>();
    for b in blocks {
        let (w, _) = b.as_chunks::<8>();
        for (lane, w) in lanes.iter_mut().zip(w) {
            *lane = step(*lane, word(w));
        }
    }
    let (words, tail) = rest.as_chunks::<8>();
    for (lane, w) in lanes.iter_mut().zip(words) {
        *lane = step(*lane, word(w));
    }
    let mut last = [0u8; 8];
    last[..tail.len()].copy_from_slice(tail);
    lanes[3] = (lanes[3] ^ word(&last))
        .wrapping_mul(0xc4ce_b9fe_1a85_ec53)
        .rotate_left(31);
    let h = lanes
        .iter()
        .fold(0u64, |h, lane| h.wrapping_mul(K).wrapping_add(*lane));
    h ^ (h >> 29)
}

/// What a file looked like when it was read. Equal stamps mean the index may be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Stamp {
    /// Relative to the catalog directory, `/`-separated: `gcp/vms.csv`.
    pub name: String,
    pub len: u64,
    pub mtime: (i64, u32),
    pub ctime: (i64, u32),
    pub inode: u64,
}

impl Stamp {
    pub fn of(name: String, meta: &std::fs::Metadata) -> Stamp {
        #[cfg(unix)]
        {
            use std::os::unix::fs::MetadataExt as _;
            Stamp {
                name,
                len: meta.len(),
                mtime: (meta.mtime(), meta.mtime_nsec().clamp(0, 999_999_999) as u32),
                ctime: (meta.ctime(), meta.ctime_nsec().clamp(0, 999_999_999) as u32),
                inode: meta.ino() ^ meta.dev().rotate_left(32),
            }
        }
        #[cfg(not(unix))]
        {
            let mtime = meta
                .modified()
                .ok()
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .map_or((0, 0), |d| (d.as_secs() as i64, d.subsec_nanos()));
            Stamp {
                name,
                len: meta.len(),
                mtime,
                ctime: (0, 0),
                inode: 0,
            }
        }
    }
}

/// What an index holds: the stamps of the files and what they parse to, in the order the
/// directory scan lists them.
#[derive(Debug, Clone, Default, PartialEq)]
pub(super) struct Contents {
    pub stamps: Vec<Stamp>,
    /// One per `<cloud>/vms.csv`, in scan order.
    pub clouds: Vec<CloudCatalog>,
    /// `common/accelerators.csv`, when it was there.
    pub accelerators: Option<BTreeMap<String, Vec<String>>>,
}

/// The places an index of `dir` may be: next to the CSVs, then the cache.
pub(super) fn places(dir: &Path) -> Vec<PathBuf> {
    let mut v = vec![dir.join(INDEX_FILE)];
    if let Some(p) = cache_place(dir) {
        v.push(p);
    }
    v
}

fn cache_place(dir: &Path) -> Option<PathBuf> {
    let base = match std::env::var_os("XDG_CACHE_HOME").filter(|v| !v.is_empty()) {
        Some(x) => PathBuf::from(x),
        None => PathBuf::from(std::env::var_os("HOME").filter(|v| !v.is_empty())?).join(".cache"),
    };
    let abs = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
    let key = checksum(abs.as_os_str().as_encoded_bytes());
    Some(
        base.join("skyform")
            .join("catalog-index")
            .join(format!("{key:016x}.idx")),
    )
}

/// The first index among `places` that is whole, made by this code and built from files
/// with exactly these `stamps`.
pub(super) fn read(places: &[PathBuf], stamps: &[Stamp]) -> Option<Contents> {
    places.iter().find_map(|p| {
        let bytes = Arc::new(std::fs::read(p).ok()?);
        let c = decode(&bytes, stamps);
        if c.is_none() {
            tracing::debug!("catalog index {} is stale or damaged", p.display());
        }
        c
    })
}

/// Writes the index to the first of `places` that takes it: next to the CSVs unless that
/// directory is read-only, else the cache. Failing to write is not an error (the next run
/// parses the CSVs again).
pub(super) fn write(places: &[PathBuf], contents: &Contents) {
    // Encoded only once a place is found that may take it.
    let mut bytes: Option<Vec<u8>> = None;
    for (i, p) in places.iter().enumerate() {
        let Some(parent) = p.parent() else { continue };
        if i == 0 {
            // Next to the catalogs only when the directory is meant to be written: a
            // read-only mode is respected even where the user could override it (root).
            let writable = std::fs::metadata(parent).is_ok_and(|m| !m.permissions().readonly());
            if !writable {
                continue;
            }
        } else if std::fs::create_dir_all(parent).is_err() {
            continue;
        }
        let bytes = bytes.get_or_insert_with(|| encode(contents));
        match write_replacing(parent, p, bytes) {
            Ok(()) => return,
            Err(e) => tracing::debug!("cannot write catalog index {}: {e}", p.display()),
        }
    }
}

fn write_replacing(parent: &Path, path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::sync::atomic::{AtomicU64, Ordering};
    static SEQ: AtomicU64 = AtomicU64::new(0);
    // Unique per process and per call: threads and processes never share a temp file.
    let tmp = parent.join(format!(
        "{INDEX_FILE}.tmp-{}-{}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    ));
    let result = std::fs::write(&tmp, bytes).and_then(|()| std::fs::rename(&tmp, path));
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

fn put_u32(out: &mut Vec<u8>, v: u32) {
    out.extend_from_slice(&v.to_le_bytes());
}

fn put_u64(out: &mut Vec<u8>, v: u64) {
    out.extend_from_slice(&v.to_le_bytes());
}

fn put_len(out: &mut Vec<u8>, n: usize) {
    put_u32(out, u32::try_from(n).unwrap_or(u32::MAX));
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    put_len(out, s.len());
    out.extend_from_slice(s.as_bytes());
}

/// Header: magic, format, code hash, body length, body checksum; then the body: stamps,
/// accelerator list, and per cloud its sorted string table, its shapes and its rows as they
/// are kept in memory (`catalog/rows.rs`), so that reading the index copies no row.
pub(super) fn encode(c: &Contents) -> Vec<u8> {
    let rows: usize = c.clouds.iter().map(CloudCatalog::rows).sum();
    let mut body = Vec::with_capacity(rows * ROW + 64 * 1024);
    put_len(&mut body, c.stamps.len());
    for s in &c.stamps {
        put_str(&mut body, &s.name);
        put_u64(&mut body, s.len);
        put_u64(&mut body, s.mtime.0 as u64);
        put_u32(&mut body, s.mtime.1);
        put_u64(&mut body, s.ctime.0 as u64);
        put_u32(&mut body, s.ctime.1);
        put_u64(&mut body, s.inode);
    }
    match &c.accelerators {
        None => put_u32(&mut body, NONE),
        Some(map) => {
            put_len(&mut body, map.len());
            for (name, clouds) in map {
                put_str(&mut body, name);
                put_len(&mut body, clouds.len());
                for cloud in clouds {
                    put_str(&mut body, cloud);
                }
            }
        }
    }
    put_len(&mut body, c.clouds.len());
    for cc in &c.clouds {
        let (strings, vms, gpus) = cc.parts();
        put_len(&mut body, strings.len());
        for s in strings.iter() {
            put_str(&mut body, s);
        }
        // One table for both lists (`rows::encode` shares it).
        put_len(&mut body, vms.shapes().len());
        for shape in vms.shapes() {
            shape.encode(&mut body);
        }
        for rows in [vms, gpus] {
            put_len(&mut body, rows.len());
            body.extend_from_slice(rows.bytes());
        }
    }
    let mut out = Vec::with_capacity(body.len() + 36);
    out.extend_from_slice(MAGIC);
    put_u32(&mut out, FORMAT);
    put_u64(&mut out, CODE_HASH);
    put_u64(&mut out, body.len() as u64);
    put_u64(&mut out, checksum(&body));
    out.extend_from_slice(&body);
    out
}

/// A bounds-checked reader: every read of a damaged index ends in `None`, never a panic.
struct Reader<'a> {
    bytes: &'a [u8],
    /// Where the next read starts.
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let end = self.at.checked_add(n)?;
        let head = self.bytes.get(self.at..end)?;
        self.at = end;
        Some(head)
    }

    fn array<const N: usize>(&mut self) -> Option<[u8; N]> {
        self.take(N)?.try_into().ok()
    }

    fn u32(&mut self) -> Option<u32> {
        self.array().map(u32::from_le_bytes)
    }

    fn u64(&mut self) -> Option<u64> {
        self.array().map(u64::from_le_bytes)
    }

    fn str(&mut self) -> Option<&'a str> {
        let n = self.u32()? as usize;
        std::str::from_utf8(self.take(n)?).ok()
    }

    fn rest(&self) -> usize {
        self.bytes.len().saturating_sub(self.at)
    }
}

/// The index's contents, if `bytes` is a whole index by this code of files with `stamps`.
/// The catalogs' rows stay in `bytes`, which they share.
pub(super) fn decode(bytes: &Arc<Vec<u8>>, stamps: &[Stamp]) -> Option<Contents> {
    let mut r = Reader {
        bytes: bytes.as_slice(),
        at: 0,
    };
    if r.take(MAGIC.len())? != MAGIC || r.u32()? != FORMAT || r.u64()? != CODE_HASH {
        return None;
    }
    let len = usize::try_from(r.u64()?).ok()?;
    let sum = r.u64()?;
    let body = r.bytes.get(r.at..)?;
    if body.len() != len || checksum(body) != sum {
        return None;
    }
    let n = r.u32()? as usize;
    if n != stamps.len() {
        return None;
    }
    for want in stamps {
        let have = Stamp {
            name: r.str()?.to_string(),
            len: r.u64()?,
            mtime: (r.u64()? as i64, r.u32()?),
            ctime: (r.u64()? as i64, r.u32()?),
            inode: r.u64()?,
        };
        if &have != want {
            return None;
        }
    }
    let accelerators = match r.u32()? {
        NONE => None,
        n => {
            let mut map = BTreeMap::new();
            for _ in 0..n {
                let name = r.str()?.to_string();
                let m = r.u32()? as usize;
                // Each name takes at least its 4-byte length: a damaged count cannot ask
                // for more.
                let mut clouds = Vec::with_capacity(m.min(r.rest() / 4));
                for _ in 0..m {
                    clouds.push(r.str()?.to_string());
                }
                map.insert(name, clouds);
            }
            Some(map)
        }
    };
    let n = r.u32()? as usize;
    let mut clouds = Vec::with_capacity(n.min(r.rest() / 12));
    for _ in 0..n {
        let count = r.u32()? as usize;
        let mut list = Vec::with_capacity(count.min(r.rest() / 4));
        for _ in 0..count {
            list.push(r.str()?);
        }
        let strings = Strings::from_sorted(list)?;
        let count = r.u32()? as usize;
        let shapes: Arc<[Shape]> = r
            .take(count.checked_mul(SHAPE)?)?
            .as_chunks::<SHAPE>()
            .0
            .iter()
            .map(Shape::decode)
            .collect();
        if !shapes.iter().all(|s| s.valid(strings.len())) {
            return None;
        }
        let mut rows = || {
            let len = r.u32()? as usize;
            let at = r.at;
            r.take(len.checked_mul(ROW)?)?;
            Rows::within(bytes, at, len, &shapes, strings.len())
        };
        let (vms, gpus) = (rows()?, rows()?);
        clouds.push(CloudCatalog::from_parts(strings, vms, gpus));
    }
    if r.rest() != 0 {
        return None;
    }
    Some(Contents {
        stamps: stamps.to_vec(),
        clouds,
        accelerators,
    })
}

#[cfg(test)]
mod tests {
    use super::super::{Catalog, Kinds};
    use super::*;
    use proptest::prelude::*;

    fn fixture() -> tempfile::TempDir {
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/catalogs");
        let tmp = tempfile::tempdir().unwrap();
        for cloud in ["aws", "gcp", "lambda"] {
            std::fs::create_dir_all(tmp.path().join(cloud)).unwrap();
            std::fs::copy(
                src.join(cloud).join("vms.csv"),
                tmp.path().join(cloud).join("vms.csv"),
            )
            .unwrap();
        }
        std::fs::create_dir_all(tmp.path().join("common")).unwrap();
        std::fs::write(
            tmp.path().join("common/accelerators.csv"),
            "AcceleratorName,Clouds\nA100,\"['AWS', 'GCP']\"\nL4,\"['GCP']\"\n",
        )
        .unwrap();
        tmp
    }

    /// Index places inside the test's own directories: next to the CSVs, then a "cache".
    fn places_in(dir: &Path, cache: &Path) -> Vec<PathBuf> {
        vec![dir.join(INDEX_FILE), cache.join("cache.idx")]
    }

    fn assert_same(a: &Catalog, b: &Catalog) {
        assert_eq!(a.clouds, b.clouds);
        assert_eq!(a.files, b.files);
        assert_eq!(a.accelerator_clouds, b.accelerator_clouds);
        for cloud in a.clouds.keys() {
            for kinds in [
                Kinds::ALL,
                Kinds {
                    on_demand: true,
                    spot: false,
                    gpu: true,
                    cpu: false,
                },
            ] {
                assert_eq!(
                    a.offerings_of_kinds(cloud, 0.8, &[], kinds),
                    b.offerings_of_kinds(cloud, 0.8, &[], kinds)
                );
            }
        }
    }

    /// Whether the index at `place` is current for `dir`.
    fn current(dir: &Path, place: &Path) -> bool {
        let scan = super::super::Scan::of(dir).unwrap();
        read(&[place.to_path_buf()], &scan.stamps).is_some()
    }

    #[test]
    fn index_gives_the_same_catalog_and_offerings_as_the_csvs() {
        let dir = fixture();
        let cache = tempfile::tempdir().unwrap();
        let places = places_in(dir.path(), cache.path());
        let from_csv = Catalog::load_csv(dir.path()).unwrap();
        assert!(!places[0].exists(), "load_csv writes no index");
        let first = Catalog::load_indexed(dir.path(), &places).unwrap();
        assert!(current(dir.path(), &places[0]));
        let second = Catalog::load_indexed(dir.path(), &places).unwrap();
        assert_same(&from_csv, &first);
        assert_same(&from_csv, &second);
        assert_eq!(from_csv.clouds.len(), 3);
        assert_eq!(from_csv.accelerator_clouds["L4"], vec!["GCP".to_string()]);
        assert!(
            !places[1].exists(),
            "a writable catalog directory keeps its own index"
        );
    }

    #[test]
    fn a_changed_csv_rebuilds_the_index() {
        let dir = fixture();
        let cache = tempfile::tempdir().unwrap();
        let places = places_in(dir.path(), cache.path());
        Catalog::load_indexed(dir.path(), &places).unwrap();
        // A row more.
        let aws = dir.path().join("aws/vms.csv");
        let mut text = std::fs::read_to_string(&aws).unwrap();
        text.push_str("zz.test,,,2.0,4.0,,0.5,0.1,us-east-1,us-east-1a\n");
        std::fs::write(&aws, &text).unwrap();
        assert!(!current(dir.path(), &places[0]));
        let after = Catalog::load_indexed(dir.path(), &places).unwrap();
        assert!(
            after.clouds["aws"]
                .vms()
                .iter()
                .any(|v| v.instance_type == "zz.test")
        );
        assert_same(&Catalog::load_csv(dir.path()).unwrap(), &after);
        assert!(current(dir.path(), &places[0]));
        // The same size: one price changed in place.
        let changed = text.replace("zz.test,,,2.0,4.0,,0.5,", "zz.test,,,2.0,4.0,,0.7,");
        assert_eq!(changed.len(), text.len());
        std::fs::write(&aws, &changed).unwrap();
        let after = Catalog::load_indexed(dir.path(), &places).unwrap();
        let vms = after.clouds["aws"].vms();
        let vm = vms.iter().find(|v| v.instance_type == "zz.test");
        assert_eq!(vm.and_then(|v| v.price), Some(0.7));
        // A cloud more, and one less.
        std::fs::create_dir_all(dir.path().join("extra")).unwrap();
        std::fs::write(
            dir.path().join("extra/vms.csv"),
            "InstanceType,Region,Price\nx1,r1,1.0\n",
        )
        .unwrap();
        let after = Catalog::load_indexed(dir.path(), &places).unwrap();
        assert!(after.clouds.contains_key("extra"));
        std::fs::remove_dir_all(dir.path().join("lambda")).unwrap();
        let after = Catalog::load_indexed(dir.path(), &places).unwrap();
        assert!(!after.clouds.contains_key("lambda"));
        assert_same(&Catalog::load_csv(dir.path()).unwrap(), &after);
        // The accelerator list removed.
        std::fs::remove_file(dir.path().join("common/accelerators.csv")).unwrap();
        let after = Catalog::load_indexed(dir.path(), &places).unwrap();
        assert!(after.accelerator_clouds.is_empty());
        assert_same(&Catalog::load_csv(dir.path()).unwrap(), &after);
    }

    #[test]
    fn a_corrupt_index_is_ignored_and_rebuilt() {
        let dir = fixture();
        let cache = tempfile::tempdir().unwrap();
        let places = places_in(dir.path(), cache.path());
        let want = Catalog::load_csv(dir.path()).unwrap();
        Catalog::load_indexed(dir.path(), &places).unwrap();
        let good = std::fs::read(&places[0]).unwrap();
        let mut damaged: Vec<Vec<u8>> = vec![
            Vec::new(),
            b"not an index".to_vec(),
            good[..good.len() / 2].to_vec(),
            good[..good.len() - 1].to_vec(),
            [good.as_slice(), b"x"].concat(),
        ];
        // Single bytes changed: in the header, in the stamps, strings and rows.
        for at in [
            0,
            9,
            13,
            30,
            50,
            good.len() / 3,
            good.len() / 2,
            good.len() - 3,
        ] {
            let mut b = good.clone();
            b[at] ^= 0x5a;
            damaged.push(b);
        }
        for bytes in damaged {
            std::fs::write(&places[0], &bytes).unwrap();
            let scan = super::super::Scan::of(dir.path()).unwrap();
            assert!(decode(&Arc::new(bytes.clone()), &scan.stamps).is_none());
            let got = Catalog::load_indexed(dir.path(), &places).unwrap();
            assert_same(&want, &got);
            assert_eq!(std::fs::read(&places[0]).unwrap(), good, "rebuilt");
        }
    }

    #[test]
    fn a_read_only_catalog_directory_keeps_its_index_in_the_cache() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = fixture();
        let cache = tempfile::tempdir().unwrap();
        let places = places_in(dir.path(), &cache.path().join("sub"));
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o555)).unwrap();
        let first = Catalog::load_indexed(dir.path(), &places);
        let second = Catalog::load_indexed(dir.path(), &places);
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        assert!(!places[0].exists());
        assert!(current(dir.path(), &places[1]));
        let want = Catalog::load_csv(dir.path()).unwrap();
        assert_same(&want, &first.unwrap());
        assert_same(&want, &second.unwrap());
    }

    #[test]
    fn concurrent_loads_agree_and_leave_a_whole_index() {
        let dir = fixture();
        let cache = tempfile::tempdir().unwrap();
        let places = places_in(dir.path(), cache.path());
        let want = Catalog::load_csv(dir.path()).unwrap();
        std::thread::scope(|s| {
            let handles: Vec<_> = (0..8)
                .map(|_| s.spawn(|| Catalog::load_indexed(dir.path(), &places).unwrap()))
                .collect();
            for h in handles {
                assert_same(&want, &h.join().unwrap());
            }
        });
        assert!(current(dir.path(), &places[0]));
        let leftovers: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .filter_map(Result::ok)
            .filter(|e| e.file_name().to_string_lossy().contains(".tmp-"))
            .collect();
        assert!(leftovers.is_empty());
    }

    #[test]
    fn long_lists_round_trip_in_order() {
        let row = |i: usize| Vm {
            instance_type: format!("t{i}"),
            accelerator: i
                .is_multiple_of(3)
                .then(|| (format!("G{}", i % 7), (i % 8) as f64)),
            vcpus: i as f64,
            memory_gib: 2.0 * i as f64,
            price: (!i.is_multiple_of(5)).then_some(i as f64 / 100.0),
            spot_price: i.is_multiple_of(4).then_some(i as f64 / 300.0),
            region: format!("r{}", i % 11),
            zone: i.is_multiple_of(2).then(|| format!("z{}", i % 13)),
        };
        // Long and empty lists, odd and even lengths.
        for sizes in [
            [1000, 4095, 4096, 10, 0, 9001],
            [3000, 2000, 0, 0, 5, 10_000],
        ] {
            let mut next = 0;
            let mut list = |n: usize| {
                next += n;
                (next - n..next).map(row).collect::<Vec<_>>()
            };
            let c = Contents {
                stamps: Vec::new(),
                clouds: sizes
                    .chunks(2)
                    .map(|p| CloudCatalog::from_rows(&list(p[0]), &list(p[1])))
                    .collect(),
                accelerators: None,
            };
            assert_eq!(decode(&Arc::new(encode(&c)), &[]), Some(c));
        }
    }

    /// The full shared catalogs through an index, when they are there.
    #[test]
    fn the_shared_catalogs_round_trip() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/catalogs/skypilot");
        if !dir.join("gcp/vms.csv").is_file() {
            return;
        }
        let tmp = tempfile::tempdir().unwrap();
        let places = vec![tmp.path().join("index")];
        let want = Catalog::load_csv(&dir).unwrap();
        let first = Catalog::load_indexed(&dir, &places).unwrap();
        assert!(current(&dir, &places[0]));
        let second = Catalog::load_indexed(&dir, &places).unwrap();
        assert_eq!(want.clouds, first.clouds);
        assert_eq!(want.clouds, second.clouds);
        assert_eq!(want.files, second.files);
        assert_eq!(want.accelerator_clouds, second.accelerator_clouds);
    }

    fn vm() -> impl Strategy<Value = Vm> {
        let name = "[a-z0-9._-]{0,12}";
        let price = proptest::option::of(0.0f64..1e4);
        (
            (name, name, proptest::option::of(name)),
            proptest::option::of((name, 0.0f64..16.0)),
            (0.0f64..512.0, 0.0f64..4096.0, price.clone(), price),
        )
            .prop_map(|((it, region, zone), acc, (vcpus, mem, price, spot))| Vm {
                instance_type: it,
                accelerator: acc,
                vcpus,
                memory_gib: mem,
                price,
                spot_price: spot,
                region,
                zone,
            })
    }

    proptest! {
        #[test]
        fn the_checksum_sees_every_byte(
            bytes in proptest::collection::vec(any::<u8>(), 1..300),
            at in any::<proptest::sample::Index>(),
            flip in 1u8..,
        ) {
            let mut other = bytes.clone();
            other[at.index(bytes.len())] ^= flip;
            prop_assert_ne!(checksum(&bytes), checksum(&other));
            prop_assert_ne!(checksum(&bytes), checksum(&bytes[..bytes.len() - 1]));
        }

        #[test]
        fn encoding_round_trips(
            clouds in proptest::collection::vec(
                (proptest::collection::vec(vm(), 0..20), proptest::collection::vec(vm(), 0..5)),
                0..4,
            ),
            accelerators in proptest::option::of(proptest::collection::btree_map(
                "[A-Z0-9]{1,6}",
                proptest::collection::vec("[A-Za-z]{1,5}", 0..3),
                0..5,
            )),
            len in 0u64..1_000_000,
        ) {
            let stamps = vec![Stamp {
                name: "aws/vms.csv".into(),
                len,
                mtime: (1_700_000_000, 5),
                ctime: (-3, 999_999_999),
                inode: 42,
            }];
            let c = Contents {
                stamps: stamps.clone(),
                clouds: clouds
                    .into_iter()
                    .map(|(vms, gpus)| CloudCatalog::from_rows(&vms, &gpus))
                    .collect(),
                accelerators,
            };
            let bytes = Arc::new(encode(&c));
            let back = decode(&bytes, &stamps);
            prop_assert_eq!(&back, &Some(c.clone()));
            // The rows read back are the rows written.
            for (a, b) in back.iter().flat_map(|b| &b.clouds).zip(&c.clouds) {
                prop_assert_eq!(a.vms(), b.vms());
                prop_assert_eq!(a.gpus(), b.gpus());
            }
            let mut other = stamps.clone();
            other[0].len += 1;
            prop_assert_eq!(decode(&bytes, &other), None);
            prop_assert_eq!(decode(&bytes, &[]), None);
        }
    }
}
