//! SkyPilot YAML read into a small tree that keeps each node's line and column, so that
//! warnings and errors can point into the file.

use saphyr::{LoadableYamlNode, MarkedYaml, Scalar, YamlData};

/// A YAML node and where it starts (line 1-based, column 1-based).
#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    pub line: usize,
    pub col: usize,
    pub v: V,
}

#[derive(Debug, Clone, PartialEq)]
pub enum V {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    Seq(Vec<Node>),
    /// Keys in the order written.
    Map(Vec<(Node, Node)>),
}

impl Node {
    pub fn as_map(&self) -> Option<&[(Node, Node)]> {
        match &self.v {
            V::Map(m) => Some(m),
            _ => None,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match &self.v {
            V::Str(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_f64(&self) -> Option<f64> {
        match &self.v {
            V::Int(i) => Some(*i as f64),
            V::Float(f) => Some(*f),
            _ => None,
        }
    }

    pub fn as_int(&self) -> Option<i64> {
        match &self.v {
            V::Int(i) => Some(*i),
            _ => None,
        }
    }

    /// A bool, with the YAML 1.1 spellings SkyPilot's PyYAML reads as bools.
    pub fn as_bool(&self) -> Option<bool> {
        match &self.v {
            V::Bool(b) => Some(*b),
            V::Str(s) => match s.as_str() {
                "yes" | "Yes" | "YES" | "on" | "On" | "ON" => Some(true),
                "no" | "No" | "NO" | "off" | "Off" | "OFF" => Some(false),
                _ => None,
            },
            _ => None,
        }
    }

    pub fn is_null(&self) -> bool {
        self.v == V::Null
    }

    /// A mapping key's text (keys are scalars in SkyPilot's files).
    pub fn key_text(&self) -> String {
        self.scalar_text().unwrap_or_default()
    }

    /// A scalar as Python's `str()` would print it (SkyPilot coerces env values that way).
    pub fn scalar_text(&self) -> Option<String> {
        Some(match &self.v {
            V::Null => "None".into(),
            V::Bool(true) => "True".into(),
            V::Bool(false) => "False".into(),
            V::Int(i) => i.to_string(),
            V::Float(f) => py_float(*f),
            V::Str(s) => s.clone(),
            V::Seq(_) | V::Map(_) => return None,
        })
    }

    /// What kind of value this is, for "expected …, found …" errors.
    pub fn kind(&self) -> &'static str {
        match &self.v {
            V::Null => "null",
            V::Bool(_) => "a bool",
            V::Int(_) => "an integer",
            V::Float(_) => "a number",
            V::Str(_) => "a string",
            V::Seq(_) => "a list",
            V::Map(_) => "a mapping",
        }
    }

    /// The value as JSON (for `post_data` objects and the like).
    pub fn to_json(&self) -> serde_json::Value {
        match &self.v {
            V::Null => serde_json::Value::Null,
            V::Bool(b) => (*b).into(),
            V::Int(i) => (*i).into(),
            V::Float(f) => serde_json::Number::from_f64(*f)
                .map(serde_json::Value::Number)
                .unwrap_or(serde_json::Value::Null),
            V::Str(s) => s.clone().into(),
            V::Seq(s) => s.iter().map(Node::to_json).collect(),
            V::Map(m) => m
                .iter()
                .map(|(k, v)| (k.key_text(), v.to_json()))
                .collect::<serde_json::Map<_, _>>()
                .into(),
        }
    }
}

/// A float as Python's `str()` writes it: `3.0`, `0.0001`, `1e-05`, `1.5e+16`.
fn py_float(f: f64) -> String {
    if f.is_nan() {
        return "nan".into();
    }
    if f.is_infinite() {
        return if f > 0.0 { "inf".into() } else { "-inf".into() };
    }
    if f == 0.0 {
        return if f.is_sign_negative() { "-0.0" } else { "0.0" }.into();
    }
    let sci = format!("{f:e}");
    let (mantissa, exp) = sci.split_once('e').unwrap_or((&sci, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    if (-4..16).contains(&exp) {
        let s = f.to_string();
        if s.contains('.') { s } else { format!("{s}.0") }
    } else {
        let sign = if exp < 0 { '-' } else { '+' };
        format!("{mantissa}e{sign}{:02}", exp.abs())
    }
}

/// A problem reading the YAML, with where it is.
#[derive(Debug, Clone, PartialEq)]
pub struct YamlError {
    pub line: usize,
    pub col: usize,
    pub message: String,
}

/// Every document of a (multi-document) YAML file. Empty documents are left out, as
/// SkyPilot's loader skips them.
pub fn load(text: &str) -> Result<Vec<Node>, YamlError> {
    let docs = MarkedYaml::load_from_str(text).map_err(|e| YamlError {
        line: e.marker().line(),
        col: e.marker().col() + 1,
        message: e.info().to_string(),
    })?;
    let chars: Vec<char> = text.chars().collect();
    let mut out = Vec::new();
    for d in &docs {
        let n = node(d, &chars)?;
        if !n.is_null() {
            out.push(n);
        }
    }
    Ok(out)
}

fn node(y: &MarkedYaml<'_>, src: &[char]) -> Result<Node, YamlError> {
    let (line, col) = (y.span.start.line(), y.span.start.col() + 1);
    let err = |message: String| YamlError { line, col, message };
    let v = match &y.data {
        // PyYAML (YAML 1.1, what SkyPilot reads with) takes a float only with a dot:
        // `1e-4` is the string "1e-4" there, a common learning rate in envs.
        YamlData::Value(Scalar::FloatingPoint(f)) => {
            let raw: String = src
                .get(y.span.start.index()..y.span.end.index())
                .map(|c| c.iter().collect())
                .unwrap_or_default();
            let raw = raw.trim();
            let lower = raw.to_lowercase();
            if !raw.is_empty()
                && !raw.contains('.')
                && !lower.contains("inf")
                && !lower.contains("nan")
            {
                V::Str(raw.to_string())
            } else {
                V::Float(f.into_inner())
            }
        }
        YamlData::Value(s) => scalar(s),
        YamlData::Representation(text, style, tag) => {
            match Scalar::parse_from_cow_and_metadata(text.clone(), *style, tag.as_ref()) {
                Some(s) => scalar(&s),
                None => return Err(err(format!("{text:?} is not a valid value for its tag"))),
            }
        }
        YamlData::Sequence(items) => V::Seq(
            items
                .iter()
                .map(|i| node(i, src))
                .collect::<Result<_, _>>()?,
        ),
        YamlData::Mapping(m) => {
            let mut entries = Vec::new();
            for (k, v) in m {
                let key = node(k, src)?;
                if matches!(key.v, V::Seq(_) | V::Map(_)) {
                    // As PyYAML (SkyPilot's reader) says: "found unhashable key". Often an
                    // unrendered template (`{{name}}`).
                    return Err(YamlError {
                        line: key.line,
                        col: key.col,
                        message: format!(
                            "a mapping key must be a plain value, found {} (an unrendered {{{{template}}}}?)",
                            key.kind()
                        ),
                    });
                }
                entries.push((key, node(v, src)?));
            }
            V::Map(entries)
        }
        YamlData::Tagged(_, inner) => return node(inner, src).map(|n| Node { line, col, ..n }),
        YamlData::Alias(_) => return Err(err("YAML aliases (*name) are not supported".into())),
        YamlData::BadValue => return Err(err("a value that cannot be read".into())),
    };
    Ok(Node { line, col, v })
}

fn scalar(s: &Scalar<'_>) -> V {
    match s {
        Scalar::Null => V::Null,
        Scalar::Boolean(b) => V::Bool(*b),
        Scalar::Integer(i) => V::Int(*i),
        Scalar::FloatingPoint(f) => V::Float(f.into_inner()),
        Scalar::String(s) => V::Str(s.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_positions_and_skips_empty_documents() {
        let docs = load("# c\n---\nname: a\nresources:\n  cpus: 4+\n---\n---\nrun: |\n  echo hi\n")
            .expect("loads");
        assert_eq!(docs.len(), 2);
        let m = docs[0].as_map().expect("map");
        assert_eq!(m[1].0.key_text(), "resources");
        assert_eq!((m[1].0.line, m[1].0.col), (4, 1));
        let inner = m[1].1.as_map().expect("map");
        assert_eq!((inner[0].1.line, inner[0].1.col), (5, 9));
        assert_eq!(
            docs[1].as_map().expect("map")[0].1.as_str(),
            Some("echo hi\n")
        );
    }

    #[test]
    fn numbers_read_as_skypilot_reads_them() {
        let d = load("a: 1e-4\nb: 1.0e-5\nc: 3.0\nd: 2.50\ne: 7\nf: 1.5e16\ng: \"1e-4\"\n")
            .expect("loads");
        let m = d[0].as_map().expect("map");
        let text: Vec<String> = m
            .iter()
            .map(|(_, v)| v.scalar_text().unwrap_or_default())
            .collect();
        assert_eq!(
            text,
            ["1e-4", "1e-05", "3.0", "2.5", "7", "1.5e+16", "1e-4"]
        );
        assert_eq!(m[0].1.as_str(), Some("1e-4"));
    }

    #[test]
    fn syntax_errors_have_a_position() {
        let e = load("a: [1, 2\nb: 3\n").expect_err("bad");
        assert!(e.line >= 1 && e.col >= 1, "{e:?}");
    }
}
