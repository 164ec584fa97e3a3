//! A cloud's catalog rows in a compact form: fixed 28-byte rows (shape, region, zone, prices)
//! that refer to a table of the cloud's machine shapes (instance type, accelerator, vCPUs,
//! memory: a few hundred, where the rows are tens of thousands) and to a sorted table of its
//! strings, by number. The same bytes are the index's on-disk layout, so a catalog read
//! through the index is the file's buffer itself: no row is copied, and no string is
//! allocated, until an offering is built from it.
//!
//! String ids are positions in the sorted table, so comparing two ids of one cloud compares
//! their strings: sorting and grouping rows by region or instance type needs no string
//! compare.

use super::Vm;
use std::sync::Arc;

/// Absent zone or accelerator.
pub(super) const NONE: u32 = u32::MAX;
/// Bytes per row: a shape id, two string ids and two prices.
pub(super) const ROW: usize = 3 * 4 + 2 * 8;
/// Bytes per shape: two string ids and three numbers.
pub(super) const SHAPE: usize = 2 * 4 + 3 * 8;

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

fn u32_at(b: &[u8], at: usize) -> u32 {
    let mut w = [0u8; 4];
    w.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(w)
}

fn f64_at(b: &[u8], at: usize) -> f64 {
    let mut w = [0u8; 8];
    w.copy_from_slice(&b[at..at + 8]);
    f64::from_bits(u64::from_le_bytes(w))
}

/// Prices are finite when present (see `parse_f64`), so NaN stands for "no price".
fn price(v: f64) -> Option<f64> {
    Some(v).filter(|v| v.is_finite())
}

fn put_u32(out: &mut Vec<u8>, v: u32) {
    out.extend_from_slice(&v.to_le_bytes());
}

fn put_f64(out: &mut Vec<u8>, v: f64) {
    out.extend_from_slice(&v.to_bits().to_le_bytes());
}

/// What rows of one machine shape share: instance type, accelerator, vCPUs and memory.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct Shape {
    pub instance_type: u32,
    /// [`NONE`] when the machine has no accelerator.
    pub accelerator: u32,
    pub count: f64,
    pub vcpus: f64,
    pub memory_gib: f64,
}

impl Shape {
    pub fn decode(b: &[u8; SHAPE]) -> Shape {
        Shape {
            instance_type: u32_at(b, 0),
            accelerator: u32_at(b, 4),
            count: f64_at(b, 8),
            vcpus: f64_at(b, 16),
            memory_gib: f64_at(b, 24),
        }
    }

    pub fn encode(&self, out: &mut Vec<u8>) {
        put_u32(out, self.instance_type);
        put_u32(out, self.accelerator);
        for v in [self.count, self.vcpus, self.memory_gib] {
            put_f64(out, v);
        }
    }

    /// Whether its ids are of a table of `n` strings (or absent where they may be).
    pub fn valid(&self, n: usize) -> bool {
        (self.instance_type as usize) < n
            && (self.accelerator == NONE || (self.accelerator as usize) < n)
    }

    /// Bitwise, so that shapes can be told apart by their encoding.
    fn key(&self) -> (u32, u32, u64, u64, u64) {
        (
            self.instance_type,
            self.accelerator,
            self.count.to_bits(),
            self.vcpus.to_bits(),
            self.memory_gib.to_bits(),
        )
    }
}

/// A shape for ids that do not resolve (validated rows never have one).
const NO_SHAPE: Shape = Shape {
    instance_type: 0,
    accelerator: NONE,
    count: 0.0,
    vcpus: 0.0,
    memory_gib: 0.0,
};

impl Row {
    pub fn decode(b: &[u8; ROW], shapes: &[Shape]) -> Row {
        let shape = shapes.get(u32_at(b, 0) as usize).unwrap_or(&NO_SHAPE);
        Row {
            instance_type: shape.instance_type,
            region: u32_at(b, 4),
            zone: u32_at(b, 8),
            accelerator: shape.accelerator,
            count: shape.count,
            vcpus: shape.vcpus,
            memory_gib: shape.memory_gib,
            price: price(f64_at(b, 12)),
            spot_price: price(f64_at(b, 20)),
        }
    }

    pub fn has_accelerator(&self) -> bool {
        self.accelerator != NONE
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

/// Whether the row's ids are of `shapes` shapes and a table of `n` strings.
fn valid_row(b: &[u8; ROW], shapes: usize, n: usize) -> bool {
    let zone = u32_at(b, 8);
    (u32_at(b, 0) as usize) < shapes
        && (u32_at(b, 4) as usize) < n
        && (zone == NONE || (zone as usize) < n)
}

/// A run of rows inside a shared buffer (the index file as read, or an encoded CSV).
#[derive(Clone, Default)]
pub(super) struct Rows {
    bytes: Arc<Vec<u8>>,
    start: usize,
    len: usize,
    /// The cloud's shapes, which its rows refer to.
    shapes: Arc<[Shape]>,
}

impl std::fmt::Debug for Rows {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Rows({})", self.len)
    }
}

impl PartialEq for Rows {
    fn eq(&self, other: &Rows) -> bool {
        self.bytes() == other.bytes() && self.shapes == other.shapes
    }
}

impl Rows {
    /// The `len` rows at `start` of `bytes`, if they are there and refer only to `shapes`
    /// and to strings of a table of `strings` entries.
    pub fn within(
        bytes: &Arc<Vec<u8>>,
        start: usize,
        len: usize,
        shapes: &Arc<[Shape]>,
        strings: usize,
    ) -> Option<Rows> {
        let end = len.checked_mul(ROW)?.checked_add(start)?;
        let rows = Rows {
            bytes: Arc::clone(bytes),
            start,
            len,
            shapes: Arc::clone(shapes),
        };
        let valid = |b| valid_row(b, shapes.len(), strings);
        (end <= bytes.len() && rows.bytes().as_chunks::<ROW>().0.iter().all(valid)).then_some(rows)
    }

    pub fn shapes(&self) -> &[Shape] {
        &self.shapes
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
        let shapes: &[Shape] = &self.shapes;
        self.bytes()
            .as_chunks::<ROW>()
            .0
            .iter()
            .map(move |b| Row::decode(b, shapes))
    }

    /// Row `i` (only called with the position of a row this list has).
    pub fn row(&self, i: u32) -> Row {
        let (chunks, _) = self.bytes().as_chunks::<ROW>();
        match chunks.get(i as usize) {
            Some(b) => Row::decode(b, &self.shapes),
            None => Row::decode(&[0xff; ROW], &[]),
        }
    }
}

/// The compact form of a cloud's rows: its string table and the rows with an instance type
/// (`vms`) and without (`gpus`), each list in its given order, sharing one table of shapes
/// (in the order they first appear).
pub(super) fn encode(vms: &[Vm], gpus: &[Vm]) -> (Strings, Rows, Rows) {
    let all = || vms.iter().chain(gpus);
    // Interned in order of appearance first (one hash lookup per string), then numbered in
    // sorted order: sorting every row's strings would cost more than the parse.
    let mut first: std::collections::HashMap<&str, u32> = std::collections::HashMap::new();
    let mut names: Vec<&str> = Vec::new();
    for v in all() {
        let strs = [
            Some(v.instance_type.as_str()),
            Some(v.region.as_str()),
            v.zone.as_deref(),
            v.accelerator.as_ref().map(|a| a.0.as_str()),
        ];
        for s in strs.into_iter().flatten() {
            first.entry(s).or_insert_with(|| {
                names.push(s);
                names.len() as u32 - 1
            });
        }
    }
    names.sort_unstable();
    let strings = Strings::from_sorted(names.iter().copied()).unwrap_or_default();
    for (i, s) in names.iter().enumerate() {
        first.insert(s, i as u32);
    }
    let id = |s: &str| first.get(s).copied().unwrap_or(NONE);
    let mut shapes: Vec<Shape> = Vec::new();
    let mut shape_ids = std::collections::HashMap::new();
    let mut bytes = Vec::with_capacity((vms.len() + gpus.len()) * ROW);
    for v in all() {
        let shape = Shape {
            instance_type: id(&v.instance_type),
            accelerator: v.accelerator.as_ref().map_or(NONE, |a| id(&a.0)),
            count: v.accelerator.as_ref().map_or(0.0, |a| a.1),
            vcpus: v.vcpus,
            memory_gib: v.memory_gib,
        };
        let n = shapes.len() as u32;
        let shape_id = *shape_ids.entry(shape.key()).or_insert_with(|| {
            shapes.push(shape);
            n
        });
        put_u32(&mut bytes, shape_id);
        put_u32(&mut bytes, id(&v.region));
        put_u32(&mut bytes, v.zone.as_deref().map_or(NONE, id));
        put_f64(&mut bytes, v.price.unwrap_or(f64::NAN));
        put_f64(&mut bytes, v.spot_price.unwrap_or(f64::NAN));
    }
    let bytes = Arc::new(bytes);
    let shapes: Arc<[Shape]> = shapes.into();
    let vms_rows = Rows {
        bytes: Arc::clone(&bytes),
        start: 0,
        len: vms.len(),
        shapes: Arc::clone(&shapes),
    };
    let gpu_rows = Rows {
        bytes,
        start: vms.len() * ROW,
        len: gpus.len(),
        shapes,
    };
    (strings, vms_rows, gpu_rows)
}
