//! Input variables: declared types, and values from `-var`, `-var-file`, `*.auto.skyvars.hcl`
//! and `SKYFORM_VAR_*`, with the SPEC's precedence (env < auto files < -var-file < -var).

use super::diag::{Diagnostic, Diagnostics, Sources};
use super::load::VariableDecl;
use super::value::{UnknownType, safe_evaluate, typed_unknown, unknown, unknown_type};
use crate::model::UNKNOWN;
use hcl::Value;
use hcl::eval::Context;
use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;

/// A variable's declared type.
#[derive(Debug, Clone, PartialEq)]
pub enum VarType {
    Any,
    String,
    Number,
    Bool,
    List(Box<VarType>),
    Set(Box<VarType>),
    Map(Box<VarType>),
}

impl VarType {
    pub fn describe(&self) -> String {
        match self {
            VarType::Any => "any".into(),
            VarType::String => "string".into(),
            VarType::Number => "number".into(),
            VarType::Bool => "bool".into(),
            VarType::List(t) => format!("list({})", t.describe()),
            VarType::Set(t) => format!("set({})", t.describe()),
            VarType::Map(t) => format!("map({})", t.describe()),
        }
    }

    /// An unknown of this type: typed where the type is one an unknown can carry.
    fn unknown_of_this_type(&self) -> Value {
        match self {
            VarType::String => typed_unknown(UnknownType::String),
            VarType::Number => typed_unknown(UnknownType::Number),
            VarType::Bool => typed_unknown(UnknownType::Bool),
            VarType::List(t) | VarType::Set(t) if **t == VarType::String => {
                typed_unknown(UnknownType::ListOfStrings)
            }
            _ => unknown(),
        }
    }

    /// Checks (and where HCL would, converts) a value to this type.
    pub fn check(&self, v: &Value) -> Result<Value, String> {
        // A module input known only after apply: a plain unknown may be anything (checked once
        // known); one of known type is checked as a value of its type, and converts to this one.
        if v.as_str() == Some(UNKNOWN) {
            return Ok(v.clone());
        }
        if let Some(t) = unknown_type(v) {
            return match self.check(&t.sample()) {
                Ok(_) if *self == VarType::Any => Ok(v.clone()),
                Ok(_) => Ok(self.unknown_of_this_type()),
                Err(_) => Err(format!(
                    "expected {}, got {} (known after apply)",
                    self.describe(),
                    t.describe()
                )),
            };
        }
        match (self, v) {
            (VarType::Any, _) | (_, Value::Null) => Ok(v.clone()),
            (VarType::String, Value::String(_)) => Ok(v.clone()),
            (VarType::String, Value::Number(n)) => Ok(Value::String(n.to_string())),
            (VarType::String, Value::Bool(b)) => Ok(Value::String(b.to_string())),
            (VarType::Number, Value::Number(_)) => Ok(v.clone()),
            (VarType::Number, Value::String(s)) => s
                .trim()
                .parse::<f64>()
                .ok()
                .filter(|f| f.is_finite())
                .map(Value::from)
                .ok_or_else(|| format!("{s:?} is not a number")),
            (VarType::Bool, Value::Bool(_)) => Ok(v.clone()),
            (VarType::Bool, Value::String(s)) if s == "true" || s == "false" => {
                Ok(Value::Bool(s == "true"))
            }
            (VarType::List(t) | VarType::Set(t), Value::Array(items)) => {
                let mut out = items
                    .iter()
                    .map(|i| t.check(i))
                    .collect::<Result<Vec<_>, _>>()?;
                if matches!(self, VarType::Set(_)) {
                    out.sort_by_key(|v| v.to_string());
                    out.dedup();
                }
                Ok(Value::Array(out))
            }
            (VarType::Map(t), Value::Object(m)) => Ok(Value::Object(
                m.iter()
                    .map(|(k, v)| Ok((k.clone(), t.check(v)?)))
                    .collect::<Result<_, String>>()?,
            )),
            (t, v) => Err(format!("expected {}, got {}", t.describe(), kind_of(v))),
        }
    }

    fn parse(expr: &hcl::Expression) -> Option<VarType> {
        match expr {
            hcl::Expression::Variable(v) => match v.as_str() {
                "any" => Some(VarType::Any),
                "string" => Some(VarType::String),
                "number" => Some(VarType::Number),
                "bool" => Some(VarType::Bool),
                _ => None,
            },
            hcl::Expression::FuncCall(f) if f.args.len() == 1 => {
                let inner = Box::new(VarType::parse(&f.args[0])?);
                match f.name.name.as_str() {
                    "list" => Some(VarType::List(inner)),
                    "set" => Some(VarType::Set(inner)),
                    "map" => Some(VarType::Map(inner)),
                    _ => None,
                }
            }
            _ => None,
        }
    }

    /// Complex types read `-var` text as an HCL expression; simple ones take it as it is.
    fn is_complex(&self) -> bool {
        matches!(
            self,
            VarType::List(_) | VarType::Set(_) | VarType::Map(_) | VarType::Any
        )
    }
}

fn kind_of(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a bool",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "a map",
    }
}

/// The declared type of a variable (`any` when absent); bad type expressions are reported.
pub fn declared_type(decl: &VariableDecl, diags: &mut Diagnostics) -> VarType {
    let Some(attr) = decl.body.attrs.get("type") else {
        return VarType::Any;
    };
    match VarType::parse(&attr.eval_expr) {
        Some(t) => t,
        None => {
            let d = Diagnostic::error(format!("invalid type for variable {:?}", decl.name))
                .at(attr.file, Some(attr.span.clone()))
                .label("not a type")
                .hint("use string, number, bool, any, list(T), set(T) or map(T)");
            if !diags.items.contains(&d) {
                diags.push(d);
            }
            VarType::Any
        }
    }
}

/// Where a variable value came from, for messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ValueSource {
    Env(String),
    AutoFile(String),
    VarFile(String),
    Flag,
}

impl ValueSource {
    /// A value the user gave by name on purpose (not the environment).
    pub fn is_explicit(&self) -> bool {
        !matches!(self, ValueSource::Env(_))
    }
}

impl fmt::Display for ValueSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ValueSource::Env(n) => write!(f, "environment variable {n}"),
            ValueSource::AutoFile(p) => write!(f, "{p}"),
            ValueSource::VarFile(p) => write!(f, "-var-file {p}"),
            ValueSource::Flag => write!(f, "-var"),
        }
    }
}

/// A value as given: raw text (from -var or env) or an already-parsed value (from files).
#[derive(Debug, Clone)]
pub struct InputValue {
    pub raw: RawValue,
    pub source: ValueSource,
    /// Where the value was written, for values from files.
    pub location: Option<(super::diag::FileId, std::ops::Range<usize>)>,
}

#[derive(Debug, Clone)]
pub enum RawValue {
    Text(String),
    Parsed(Value),
}

/// Converts an input to the declared type.
pub fn convert_input(input: &InputValue, ty: &VarType) -> Result<Value, String> {
    match &input.raw {
        RawValue::Parsed(v) => ty.check(v),
        RawValue::Text(t) => {
            if ty.is_complex() {
                if let Ok(expr) = t.parse::<hcl::Expression>()
                    && let Ok(v) = safe_evaluate(&expr, &Context::new())
                {
                    return ty.check(&v);
                }
                if *ty == VarType::Any {
                    return Ok(Value::String(t.clone()));
                }
                return Err(format!("{t:?} is not a valid {} expression", ty.describe()));
            }
            ty.check(&Value::String(t.clone()))
        }
    }
}

/// Everything the command line and environment say about variables.
#[derive(Debug, Clone, Default)]
pub struct VarArgs {
    /// `-var name=value`, in order.
    pub vars: Vec<String>,
    /// `-var-file FILE`, in order.
    pub var_files: Vec<std::path::PathBuf>,
}

/// Collects input values by precedence. Problems are reported as diagnostics.
pub fn collect_inputs(
    dir: &Path,
    args: &VarArgs,
    env: &BTreeMap<String, String>,
    sources: &mut Sources,
    diags: &mut Diagnostics,
) -> BTreeMap<String, InputValue> {
    let mut out = BTreeMap::new();
    for (k, v) in env {
        if let Some(name) = k.strip_prefix("SKYFORM_VAR_") {
            out.insert(
                name.to_string(),
                InputValue {
                    raw: RawValue::Text(v.clone()),
                    source: ValueSource::Env(k.clone()),
                    location: None,
                },
            );
        }
    }
    let mut autos: Vec<_> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| {
                    p.file_name()
                        .and_then(|n| n.to_str())
                        .is_some_and(|n| n.ends_with(".auto.skyvars.hcl"))
                })
                .collect()
        })
        .unwrap_or_default();
    autos.sort();
    for path in autos {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().to_string())
            .unwrap_or_default();
        read_var_file(
            &path,
            &name,
            ValueSource::AutoFile(name.clone()),
            &mut out,
            sources,
            diags,
        );
    }
    for path in &args.var_files {
        let shown = path.display().to_string();
        read_var_file(
            path,
            &shown,
            ValueSource::VarFile(shown.clone()),
            &mut out,
            sources,
            diags,
        );
    }
    for kv in &args.vars {
        match kv.split_once('=') {
            Some((k, v)) if !k.trim().is_empty() => {
                out.insert(
                    k.trim().to_string(),
                    InputValue {
                        raw: RawValue::Text(v.to_string()),
                        source: ValueSource::Flag,
                        location: None,
                    },
                );
            }
            _ => diags.push(
                Diagnostic::error(format!("invalid -var {kv:?}"))
                    .hint("write -var NAME=VALUE, e.g. -var epochs=5"),
            ),
        }
    }
    out
}

fn read_var_file(
    path: &Path,
    shown: &str,
    source: ValueSource,
    out: &mut BTreeMap<String, InputValue>,
    sources: &mut Sources,
    diags: &mut Diagnostics,
) {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) => {
            diags.push(
                Diagnostic::error(format!("cannot read variable file {shown}: {e}"))
                    .hint("check the path given to -var-file"),
            );
            return;
        }
    };
    let file = sources.add(shown, text.clone());
    let body = match hcl_edit::parser::parse_body(&text) {
        Ok(b) => b,
        Err(e) => {
            let offset = e.location().offset().min(text.len());
            diags.push(
                Diagnostic::error(format!("syntax error in variable file: {}", e.message()))
                    .at(file, Some(offset..offset))
                    .label(e.message().to_string())
                    .hint("a variable file holds NAME = VALUE lines in HCL"),
            );
            return;
        }
    };
    use hcl_edit::Span;
    for structure in body.iter() {
        let hcl_edit::structure::Structure::Attribute(attr) = structure else {
            if let hcl_edit::structure::Structure::Block(b) = structure {
                diags.push(
                    Diagnostic::error("variable files hold attributes, not blocks")
                        .at(file, b.ident.span())
                        .label("a block")
                        .hint("write NAME = VALUE"),
                );
            }
            continue;
        };
        let span = attr.value.span().unwrap_or(0..0);
        let expr = hcl::Expression::from(attr.value.clone());
        match safe_evaluate(&expr, &Context::new()) {
            Ok(v) => {
                out.insert(
                    attr.key.as_str().to_string(),
                    InputValue {
                        raw: RawValue::Parsed(v),
                        source: source.clone(),
                        location: Some((file, span)),
                    },
                );
            }
            Err(e) => diags.push(
                Diagnostic::error(format!(
                    "the value of {} must be constant: {e}",
                    attr.key.as_str()
                ))
                .at(file, Some(span))
                .label("not a literal value")
                .hint("variable files hold literal values only"),
            ),
        }
    }
}
