//! A cloud's catalog rows in a compact form: fixed 56-byte rows that refer to a sorted table
//! of the cloud's strings by number. The same bytes are the index's on-disk layout, so a
//! catalog read through the index is the file's buffer itself: no row is copied, and no
//! string is allocated, until an offering is built from it.
//!
//! Ids are positions in the sorted table, so comparing two ids of one cloud compares their
//! strings: sorting and grouping rows by region or instance type needs no string compare.

use super::Vm;
use std::sync::Arc;

/// Absent zone or accelerator.
pub(super) const NONE: u32 = u32::MAX;
/// Bytes per row: four string ids and five numbers.
pub(super) const ROW: usize = 4 * 4 + 5 * 8;

/// The strings a cloud's rows refer to, sorted and unique.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct Strings {
    text: String,
    /// Where each string ends in `text`.
    ends: Vec<u32>,
}

impl Strings {
    /// The table of `list`, which must be sorted and without repeats (`None` otherwise).
    pub fn from_sorted<'a>(list: impl IntoIterator<Item = &'a str>) -> Option<Strings> {
        let mut s = Strings::default();
        let mut last: Option<&str> = None;
        for item in list {
            if last.is_some_and(|l| l >= item) {
                return None;
            }
            s.text.push_str(item);
            s.ends.push(u32::try_from(s.text.len()).ok()?);
            last = Some(item);
        }
        Some(s)
    }

    pub fn len(&self) -> usize {
        self.ends.len()
    }

    /// The string of `id` ("" for an id out of range, which validated rows never hold).
    pub fn get(&self, id: u32) -> &str {
        let i = id as usize;
        let start = match i {
            0 => 0,
            _ => self.ends.get(i - 1).map_or(0, |e| *e as usize),
        };
        let end = self.ends.get(i).map_or(start, |e| *e as usize);
        self.text.get(start..end).unwrap_or("")
    }

    /// The id of `s`, if the table has it.
    pub fn find(&self, s: &str) -> Option<u32> {
        let (mut lo, mut hi) = (0u32, self.ends.len() as u32);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            match self.get(mid).cmp(s) {
                std::cmp::Ordering::Less => lo = mid + 1,
                std::cmp::Ordering::Greater => hi = mid,
                std::cmp::Ordering::Equal => return Some(mid),
            }
        }
        None
    }

    /// One flag per id: whether `f` holds for its string.
    pub fn flags(&self, f: impl Fn(&str) -> bool) -> Vec<bool> {
        (0..self.len() as u32).map(|i| f(self.get(i))).collect()
    }

    pub fn iter(&self) -> impl Iterator<Item = &str> {
        (0..self.len() as u32).map(|i| self.get(i))
    }
}

/// One row, decoded: string ids into the cloud's [`Strings`] and numbers.
#[derive(Debug, Clone, Copy)]
pub(super) struct Row {
    pub instance_type: u32,
    pub region: u32,
    /// [`NONE`] when the row has no zone.
    pub zone: u32,
    /// [`NONE`] when the row has no accelerator.
    pub accelerator: u32,
    pub count: f64,
    pub vcpus: f64,
    pub memory_gib: f64,
    pub price: Option<f64>,
    pub spot_price: Option<f64>,
}

fn u32_at(b: &[u8; ROW], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn f64_at(b: &[u8; ROW], at: usize) -> f64 {
    let mut w = [0u8; 8];
    w.copy_from_slice(&b[at..at + 8]);
    f64::from_bits(u64::from_le_bytes(w))
}

/// Prices are finite when present (see `parse_f64`), so NaN stands for "no price".
fn price(v: f64) -> Option<f64> {
    Some(v).filter(|v| v.is_finite())
}

impl Row {
    pub fn decode(b: &[u8; ROW]) -> Row {
        Row {
            instance_type: u32_at(b, 0),
            region: u32_at(b, 4),
            zone: u32_at(b, 8),
            accelerator: u32_at(b, 12),
            count: f64_at(b, 16),
            vcpus: f64_at(b, 24),
            memory_gib: f64_at(b, 32),
            price: price(f64_at(b, 40)),
            spot_price: price(f64_at(b, 48)),
        }
    }

    fn encode(&self, out: &mut Vec<u8>) {
        for v in [self.instance_type, self.region, self.zone, self.accelerator] {
            out.extend_from_slice(&v.to_le_bytes());
        }
        for v in [
            self.count,
            self.vcpus,
            self.memory_gib,
            self.price.unwrap_or(f64::NAN),
            self.spot_price.unwrap_or(f64::NAN),
        ] {
            out.extend_from_slice(&v.to_bits().to_le_bytes());
        }
    }

    pub fn has_accelerator(&self) -> bool {
        self.accelerator != NONE
    }

    /// Whether every id is one of a table of `n` strings (or absent where it may be).
    fn valid(&self, n: usize) -> bool {
        let ok = |id: u32| (id as usize) < n;
        ok(self.instance_type)
            && ok(self.region)
            && (self.zone == NONE || ok(self.zone))
            && (self.accelerator == NONE || ok(self.accelerator))
    }

    /// The row as an owned [`Vm`].
    pub fn vm(&self, s: &Strings) -> Vm {
        let opt = |id: u32| (id != NONE).then(|| s.get(id).to_string());
        Vm {
            instance_type: s.get(self.instance_type).to_string(),
            accelerator: opt(self.accelerator).map(|a| (a, self.count)),
            vcpus: self.vcpus,
            memory_gib: self.memory_gib,
            price: self.price,
            spot_price: self.spot_price,
            region: s.get(self.region).to_string(),
            zone: opt(self.zone),
        }
    }
}

/// A run of rows inside a shared buffer (the index file as read, or an encoded CSV).
#[derive(Clone, Default)]
pub(super) struct Rows {
    bytes: Arc<Vec<u8>>,
    start: usize,
    len: usize,
}

impl std::fmt::Debug for Rows {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Rows({})", self.len)
    }
}

impl PartialEq for Rows {
    fn eq(&self, other: &Rows) -> bool {
        self.bytes() == other.bytes()
    }
}

impl Rows {
    /// The `len` rows at `start` of `bytes`, if they are there and refer only to strings
    /// of a table of `strings` entries.
    pub fn within(bytes: &Arc<Vec<u8>>, start: usize, len: usize, strings: usize) -> Option<Rows> {
        let end = len.checked_mul(ROW)?.checked_add(start)?;
        let rows = Rows {
            bytes: Arc::clone(bytes),
            start,
            len,
        };
        (end <= bytes.len() && rows.iter().all(|r| r.valid(strings))).then_some(rows)
    }

    pub fn bytes(&self) -> &[u8] {
        self.bytes
            .get(self.start..self.start + self.len * ROW)
            .unwrap_or(&[])
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn iter(&self) -> impl Iterator<Item = Row> + '_ {
        self.bytes().as_chunks::<ROW>().0.iter().map(Row::decode)
    }

    /// Row `i` (only called with the position of a row this list has).
    pub fn row(&self, i: u32) -> Row {
        let (chunks, _) = self.bytes().as_chunks::<ROW>();
        chunks.get(i as usize).map_or(
            Row {
                instance_type: 0,
                region: 0,
                zone: NONE,
                accelerator: NONE,
                count: 0.0,
                vcpus: 0.0,
                memory_gib: 0.0,
                price: None,
                spot_price: None,
            },
            Row::decode,
        )
    }
}

/// The compact form of a cloud's rows: its string table and the rows with an instance type
/// (`vms`) and without (`gpus`), each list in its given order.
pub(super) fn encode(vms: &[Vm], gpus: &[Vm]) -> (Strings, Rows, Rows) {
    let all = || vms.iter().chain(gpus);
    let mut names: Vec<&str> = all()
        .flat_map(|v| {
            [
                Some(v.instance_type.as_str()),
                Some(v.region.as_str()),
                v.zone.as_deref(),
                v.accelerator.as_ref().map(|a| a.0.as_str()),
            ]
        })
        .flatten()
        .collect();
    names.sort_unstable();
    names.dedup();
    let strings = Strings::from_sorted(names.iter().copied()).unwrap_or_default();
    let id = |s: &str| names.binary_search(&s).map_or(NONE, |i| i as u32);
    let mut bytes = Vec::with_capacity((vms.len() + gpus.len()) * ROW);
    for v in all() {
        Row {
            instance_type: id(&v.instance_type),
            region: id(&v.region),
            zone: v.zone.as_deref().map_or(NONE, id),
            accelerator: v.accelerator.as_ref().map_or(NONE, |a| id(&a.0)),
            count: v.accelerator.as_ref().map_or(0.0, |a| a.1),
            vcpus: v.vcpus,
            memory_gib: v.memory_gib,
            price: v.price,
            spot_price: v.spot_price,
        }
        .encode(&mut bytes);
    }
    let bytes = Arc::new(bytes);
    let vms_rows = Rows {
        bytes: Arc::clone(&bytes),
        start: 0,
        len: vms.len(),
    };
    let gpu_rows = Rows {
        bytes,
        start: vms.len() * ROW,
        len: gpus.len(),
    };
    (strings, vms_rows, gpu_rows)
}
