//! The expression function set (SPEC §2): `length`, `merge`, `format`, `file`, ….
//!
//! Any argument holding a value known only after apply makes the result unknown: of the
//! function's result type where that is fixed (`length` gives a number), else of unknown type.

use super::value::{UnknownType, has_unknown, typed_unknown};
use crate::model::UNKNOWN;
use hcl::eval::{Context, FuncArgs, FuncDef, ParamType};
use hcl::{Map, Value};
use sha2::Digest;
use std::cell::RefCell;
use std::path::PathBuf;

thread_local! {
    /// The directory `file()` and `filemd5()` resolve relative paths against.
    static BASE_DIR: RefCell<PathBuf> = RefCell::new(PathBuf::from("."));
}

/// Sets the directory of the module being evaluated, for `file()`.
pub fn set_base_dir(dir: PathBuf) {
    BASE_DIR.with(|b| *b.borrow_mut() = dir);
}

macro_rules! unknown_guard {
    ($args:expr) => {
        if $args.iter().any(has_unknown) {
            return Ok(Value::String(UNKNOWN.to_string()));
        }
    };
    ($args:expr, $ty:expr) => {
        if $args.iter().any(has_unknown) {
            return Ok(typed_unknown($ty));
        }
    };
}

fn num(v: &Value) -> Result<f64, String> {
    v.as_f64()
        .ok_or_else(|| format!("expected a number, got {v}"))
}

fn to_display(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "null".into(),
        other => other.to_string(),
    }
}

fn length(args: FuncArgs) -> Result<Value, String> {
    unknown_guard!(args, UnknownType::Number);
    Ok(Value::from(match &args[0] {
        Value::String(s) => s.chars().count(),
        Value::Array(a) => a.len(),
        Value::Object(o) => o.len(),
        other => return Err(format!("length() takes a string, list or map, not {other}")),
    }))
}

fn lookup(args: FuncArgs) -> Result<Value, String> {
    unknown_guard!(args);
    let map = args[0].as_object().ok_or("lookup() takes a map first")?;
    let key = args[1].as_str().ok_or("lookup() takes a string key")?;
    match map.get(key) {
        Some(v) => Ok(v.clone()),
        None => args
            .get(2)
            .cloned()
            .ok_or_else(|| format!("key {key:?} not in map and no default given")),
    }
}

fn merge(args: FuncArgs) -> Result<Value, String> {
    unknown_guard!(args);
    let mut out = Map::new();
    for a in args.iter() {
        match a {
            Value::Object(o) => out.extend(o.clone()),
            Value::Null => {}
            other => return Err(format!("merge() takes maps, not {other}")),
        }
    }
    Ok(Value::Object(out))
}

fn concat(args: FuncArgs) -> Result<Value, String> {
    unknown_guard!(args);
    let mut out = Vec::new();
    for a in args.iter() {
        match a {
            Value::Array(v) => out.extend(v.iter().cloned()),
            other => return Err(format!("concat() takes lists, not {other}")),
        }
    }
    Ok(Value::Array(out))
}

/// Sets are lists of unique values in sorted order (HCL has no set value of its own).
fn toset(args: FuncArgs) -> Result<Value, String> {
    unknown_guard!(args);
    let items = match &args[0] {
        Value::Array(v) => v.clone(),
        other => return Err(format!("toset() takes a list, not {other}")),
    };
    let mut strs: Vec<(String, Value)> = items.into_iter().map(|v| (to_display(&v), v)).collect();
    strs.sort_by(|a, b| a.0.cmp(&b.0));
    strs.dedup_by(|a, b| a.0 == b.0);
    Ok(Value::Array(strs.into_iter().map(|(_, v)| v).collect()))
}

fn tolist(args: FuncArgs) -> Result<Value, String> {
    unknown_guard!(args);
    match &args[0] {
        Value::Array(v) => Ok(Value::Array(v.clone())),
        other => Err(format!("tolist() takes a list or set, not {other}")),
    }
}

fn format_fn(args: FuncArgs) -> Result<Value, String> {
    unknown_guard!(args, UnknownType::String);
    let spec = args[0]
        .as_str()
        .ok_or("format() takes a format string first")?;
    let mut out = String::new();
    let mut rest = args.iter().skip(1);
    let mut chars = spec.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        // optional precision: %.2f
        let mut precision: Option<usize> = None;
        if chars.peek() == Some(&'.') {
            chars.next();
            let mut digits = String::new();
            while let Some(d) = chars.peek().copied().filter(char::is_ascii_digit) {
                digits.push(d);
                chars.next();
            }
            precision = digits.parse().ok();
        }
        let verb = chars.next().ok_or("format string ends with %")?;
        if verb == '%' {
            out.push('%');
            continue;
        }
        let arg = rest
            .next()
            .ok_or_else(|| format!("not enough arguments for %{verb}"))?;
        match verb {
            's' | 'v' => out.push_str(&to_display(arg)),
            'q' => {
                out.push_str(&serde_json::to_string(&to_display(arg)).map_err(|e| e.to_string())?)
            }
            'd' => out.push_str(&format!("{}", num(arg)?.trunc() as i64)),
            'f' => out.push_str(&format!("{:.*}", precision.unwrap_or(6), num(arg)?)),
            other => return Err(format!("unsupported format verb %{other}")),
        }
    }
    Ok(Value::String(out))
}

fn join(args: FuncArgs) -> Result<Value, String> {
    unknown_guard!(args, UnknownType::String);
    let sep = args[0]
        .as_str()
        .ok_or("join() takes a separator string first")?;
    let list = args[1].as_array().ok_or("join() takes a list second")?;
    Ok(Value::String(
        list.iter().map(to_display).collect::<Vec<_>>().join(sep),
    ))
}

fn split(args: FuncArgs) -> Result<Value, String> {
    unknown_guard!(args, UnknownType::ListOfStrings);
    let sep = args[0].as_str().ok_or("split() takes a separator first")?;
    let s = args[1].as_str().ok_or("split() takes a string second")?;
    if s.is_empty() {
        return Ok(Value::Array(Vec::new()));
    }
    Ok(Value::Array(s.split(sep).map(Value::from).collect()))
}

fn replace(args: FuncArgs) -> Result<Value, String> {
    unknown_guard!(args, UnknownType::String);
    let s = args[0].as_str().ok_or("replace() takes a string")?;
    let from = args[1].as_str().ok_or("replace() takes a substring")?;
    let to = args[2].as_str().ok_or("replace() takes a replacement")?;
    Ok(Value::String(s.replace(from, to)))
}

fn lower(args: FuncArgs) -> Result<Value, String> {
    unknown_guard!(args, UnknownType::String);
    Ok(Value::String(
        args[0].as_str().unwrap_or_default().to_lowercase(),
    ))
}

fn upper(args: FuncArgs) -> Result<Value, String> {
    unknown_guard!(args, UnknownType::String);
    Ok(Value::String(
        args[0].as_str().unwrap_or_default().to_uppercase(),
    ))
}

fn trimspace(args: FuncArgs) -> Result<Value, String> {
    unknown_guard!(args, UnknownType::String);
    Ok(Value::String(
        args[0].as_str().unwrap_or_default().trim().to_string(),
    ))
}

fn read_relative(path: &str) -> Result<Vec<u8>, String> {
    let p = BASE_DIR.with(|b| b.borrow().join(path));
    // Configuration files, not data: a size limit keeps `file("/dev/zero")` from eating memory.
    const LIMIT: u64 = 16 << 20;
    if let Ok(m) = std::fs::metadata(&p)
        && (!m.is_file() || m.len() > LIMIT)
    {
        return Err(format!("{path:?} is not a regular file of at most 16 MiB"));
    }
    std::fs::read(&p).map_err(|e| {
        let why = match e.kind() {
            std::io::ErrorKind::NotFound => "no such file".to_string(),
            _ => e.to_string(),
        };
        format!("cannot read {path:?}: {why}")
    })
}

fn file(args: FuncArgs) -> Result<Value, String> {
    unknown_guard!(args, UnknownType::String);
    let bytes = read_relative(args[0].as_str().unwrap_or_default())?;
    String::from_utf8(bytes)
        .map(Value::String)
        .map_err(|_| "file() reads UTF-8 text only".to_string())
}

fn filemd5(args: FuncArgs) -> Result<Value, String> {
    unknown_guard!(args, UnknownType::String);
    let bytes = read_relative(args[0].as_str().unwrap_or_default())?;
    Ok(Value::String(hex(&md5::Md5::digest(&bytes))))
}

fn sha256(args: FuncArgs) -> Result<Value, String> {
    unknown_guard!(args, UnknownType::String);
    let d = sha2::Sha256::digest(args[0].as_str().unwrap_or_default().as_bytes());
    Ok(Value::String(hex(&d)))
}

fn jsonencode(args: FuncArgs) -> Result<Value, String> {
    unknown_guard!(args, UnknownType::String);
    serde_json::to_string(&args[0])
        .map(Value::String)
        .map_err(|e| e.to_string())
}

fn min(args: FuncArgs) -> Result<Value, String> {
    unknown_guard!(args, UnknownType::Number);
    let mut best: Option<f64> = None;
    for a in args.iter() {
        let v = num(a)?;
        best = Some(best.map_or(v, |b: f64| b.min(v)));
    }
    best.map(Value::from)
        .ok_or_else(|| "min() needs at least one number".into())
}

fn max(args: FuncArgs) -> Result<Value, String> {
    unknown_guard!(args, UnknownType::Number);
    let mut best: Option<f64> = None;
    for a in args.iter() {
        let v = num(a)?;
        best = Some(best.map_or(v, |b: f64| b.max(v)));
    }
    best.map(Value::from)
        .ok_or_else(|| "max() needs at least one number".into())
}

fn range(args: FuncArgs) -> Result<Value, String> {
    unknown_guard!(args);
    let nums: Vec<f64> = args.iter().map(num).collect::<Result<_, _>>()?;
    let (start, end, step) = match nums.as_slice() {
        [e] => (0.0, *e, 1.0),
        [s, e] => (*s, *e, 1.0),
        [s, e, st] => (*s, *e, *st),
        _ => return Err("range() takes 1 to 3 numbers".into()),
    };
    if step == 0.0 {
        return Err("range() step must not be 0".into());
    }
    let mut out = Vec::new();
    let mut x = start;
    while (step > 0.0 && x < end) || (step < 0.0 && x > end) {
        out.push(Value::from(x));
        if out.len() > 1_000_000 {
            return Err("range() would produce more than 1,000,000 numbers".into());
        }
        x += step;
    }
    Ok(Value::Array(out))
}

fn keys(args: FuncArgs) -> Result<Value, String> {
    unknown_guard!(args, UnknownType::ListOfStrings);
    let o = args[0].as_object().ok_or("keys() takes a map")?;
    let mut k: Vec<&String> = o.keys().collect();
    k.sort();
    Ok(Value::Array(
        k.into_iter().map(|s| Value::from(s.clone())).collect(),
    ))
}

fn values(args: FuncArgs) -> Result<Value, String> {
    unknown_guard!(args);
    let o = args[0].as_object().ok_or("values() takes a map")?;
    let mut kv: Vec<(&String, &Value)> = o.iter().collect();
    kv.sort_by(|a, b| a.0.cmp(b.0));
    Ok(Value::Array(
        kv.into_iter().map(|(_, v)| v.clone()).collect(),
    ))
}

fn contains(args: FuncArgs) -> Result<Value, String> {
    unknown_guard!(args, UnknownType::Bool);
    let list = args[0].as_array().ok_or("contains() takes a list first")?;
    Ok(Value::Bool(list.contains(&args[1])))
}

fn tostring(args: FuncArgs) -> Result<Value, String> {
    unknown_guard!(args, UnknownType::String);
    Ok(Value::String(to_display(&args[0])))
}

fn tonumber(args: FuncArgs) -> Result<Value, String> {
    unknown_guard!(args, UnknownType::Number);
    match &args[0] {
        Value::Number(_) => Ok(args[0].clone()),
        Value::String(s) => s
            .trim()
            .parse::<f64>()
            .ok()
            .filter(|f| f.is_finite())
            .map(Value::from)
            .ok_or_else(|| format!("{s:?} is not a finite number")),
        other => Err(format!("tonumber() takes a string or number, not {other}")),
    }
}

fn coalesce(args: FuncArgs) -> Result<Value, String> {
    unknown_guard!(args);
    args.iter()
        .find(|v| !v.is_null() && v.as_str() != Some(""))
        .cloned()
        .ok_or_else(|| "coalesce() found no non-null argument".into())
}

/// Declares every function in a context.
pub fn declare_all(ctx: &mut Context) {
    let any = || ParamType::Any;
    let s = || ParamType::String;
    let fixed = |params: Vec<ParamType>, f: hcl::eval::Func| {
        let mut b = FuncDef::builder();
        for p in params {
            b = b.param(p);
        }
        b.build(f)
    };
    let variadic = |f: hcl::eval::Func| FuncDef::builder().variadic_param(ParamType::Any).build(f);
    ctx.declare_func("length", fixed(vec![any()], length));
    ctx.declare_func(
        "lookup",
        FuncDef::builder()
            .param(any())
            .param(s())
            .variadic_param(any())
            .build(lookup),
    );
    ctx.declare_func("merge", variadic(merge));
    ctx.declare_func("concat", variadic(concat));
    ctx.declare_func("toset", fixed(vec![any()], toset));
    ctx.declare_func("tolist", fixed(vec![any()], tolist));
    ctx.declare_func(
        "format",
        FuncDef::builder()
            .param(any())
            .variadic_param(any())
            .build(format_fn),
    );
    ctx.declare_func("join", fixed(vec![any(), any()], join));
    ctx.declare_func("split", fixed(vec![any(), any()], split));
    ctx.declare_func("replace", fixed(vec![any(), any(), any()], replace));
    ctx.declare_func("lower", fixed(vec![any()], lower));
    ctx.declare_func("upper", fixed(vec![any()], upper));
    ctx.declare_func("trimspace", fixed(vec![any()], trimspace));
    ctx.declare_func("file", fixed(vec![any()], file));
    ctx.declare_func("filemd5", fixed(vec![any()], filemd5));
    ctx.declare_func("sha256", fixed(vec![any()], sha256));
    ctx.declare_func("jsonencode", fixed(vec![any()], jsonencode));
    ctx.declare_func("min", variadic(min));
    ctx.declare_func("max", variadic(max));
    ctx.declare_func("range", variadic(range));
    ctx.declare_func("keys", fixed(vec![any()], keys));
    ctx.declare_func("values", fixed(vec![any()], values));
    ctx.declare_func("contains", fixed(vec![any(), any()], contains));
    ctx.declare_func("tostring", fixed(vec![any()], tostring));
    ctx.declare_func("tonumber", fixed(vec![any()], tonumber));
    ctx.declare_func("coalesce", variadic(coalesce));
}

pub const NAMES: [&str; 26] = [
    "length",
    "lookup",
    "merge",
    "concat",
    "toset",
    "tolist",
    "format",
    "join",
    "split",
    "replace",
    "lower",
    "upper",
    "trimspace",
    "file",
    "filemd5",
    "sha256",
    "jsonencode",
    "min",
    "max",
    "range",
    "keys",
    "values",
    "contains",
    "tostring",
    "tonumber",
    "coalesce",
];

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
