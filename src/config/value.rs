//! Values shared by loading, decoding, variables and evaluation: HCL values to and from JSON,
//! values known only after apply (with their type, when it is known), and evaluating an
//! expression without letting the HCL library panic. It imports nothing else of `config`, so every part of it may import this.

use crate::model::UNKNOWN;
use hcl::Value;
use hcl::eval::{Context, Evaluate};

/// The value that stands for one known only after apply.
pub fn unknown() -> Value {
    Value::String(UNKNOWN.into())
}

/// The type of a value known only after apply, where the type is known although the value is
/// not: a resource's computed attributes (`head_ip` is a string before the cluster exists).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnknownType {
    String,
    Number,
    Bool,
    ListOfStrings,
}

impl UnknownType {
    const ALL: [UnknownType; 4] = [
        UnknownType::String,
        UnknownType::Number,
        UnknownType::Bool,
        UnknownType::ListOfStrings,
    ];

    pub fn describe(self) -> &'static str {
        match self {
            UnknownType::String => "a string",
            UnknownType::Number => "a number",
            UnknownType::Bool => "a bool",
            UnknownType::ListOfStrings => "a list of strings",
        }
    }

    /// The marker: the plain unknown followed by the type's name, so that everything that
    /// looks for [`UNKNOWN`] (interpolation, functions, `count`) treats it as unknown.
    fn marker(self) -> String {
        let name = match self {
            UnknownType::String => "string",
            UnknownType::Number => "number",
            UnknownType::Bool => "bool",
            UnknownType::ListOfStrings => "list(string)",
        };
        format!("{UNKNOWN}{name}\u{1}")
    }

    /// A known value of this type, to stand in for the unknown one in type checks.
    pub fn sample(self) -> Value {
        match self {
            UnknownType::String => Value::from(""),
            UnknownType::Number => Value::from(0),
            UnknownType::Bool => Value::Bool(false),
            UnknownType::ListOfStrings => Value::Array(vec![Value::from("")]),
        }
    }
}

/// The value that stands for one of type `ty` known only after apply.
pub fn typed_unknown(ty: UnknownType) -> Value {
    Value::String(ty.marker())
}

/// The type of `v` when it is exactly an unknown of known type.
pub fn unknown_type(v: &Value) -> Option<UnknownType> {
    let s = v.as_str()?;
    UnknownType::ALL.into_iter().find(|t| s == t.marker())
}

/// `v` with every unknown of known type replaced by a known value of that type: what type
/// checks look at. Plain unknowns stay as they are (their type is not known).
pub fn typed_samples(v: &Value) -> Value {
    match v {
        Value::String(_) => unknown_type(v).map_or_else(|| v.clone(), UnknownType::sample),
        Value::Array(a) => Value::Array(a.iter().map(typed_samples).collect()),
        Value::Object(o) => Value::Object(
            o.iter()
                .map(|(k, x)| (k.clone(), typed_samples(x)))
                .collect(),
        ),
        other => other.clone(),
    }
}

/// `v` with the types of its unknowns forgotten: what leaves evaluation (specs, outputs) holds
/// only the plain [`UNKNOWN`], as the rest of the program expects.
pub fn erase_unknown_types(v: Value) -> Value {
    // Most values hold no unknown: looking costs less than rebuilding them.
    if has_unknown(&v) { erase(v) } else { v }
}

fn erase(v: Value) -> Value {
    match v {
        Value::String(s) if s.contains(UNKNOWN) => {
            let mut s = s;
            for t in UnknownType::ALL {
                if s.contains(&t.marker()) {
                    s = s.replace(&t.marker(), UNKNOWN);
                }
            }
            Value::String(s)
        }
        Value::Array(a) => Value::Array(a.into_iter().map(erase).collect()),
        Value::Object(o) => Value::Object(o.into_iter().map(|(k, x)| (k, erase(x))).collect()),
        other => other,
    }
}

/// Whether any part of `v` is known only after apply.
pub fn has_unknown(v: &Value) -> bool {
    match v {
        Value::String(s) => s.contains(UNKNOWN),
        Value::Array(a) => a.iter().any(has_unknown),
        Value::Object(o) => o.values().any(has_unknown),
        _ => false,
    }
}

/// Evaluates an expression, turning a panic inside the HCL library (it asserts that numbers
/// are finite, so `1/0` panics there) into an ordinary evaluation error.
pub fn safe_evaluate(expr: &hcl::Expression, ctx: &Context<'_>) -> Result<Value, hcl::eval::Error> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| expr.evaluate(ctx))) {
        Ok(r) => r,
        Err(_) => Err(hcl::eval::Error::from(hcl::eval::ErrorKind::Message(
            "the arithmetic has no finite result (a division by zero, or a number too large)"
                .into(),
        ))),
    }
}

/// An HCL value as JSON (specs, state and plans hold JSON).
pub fn to_json(v: &Value) -> serde_json::Value {
    serde_json::to_value(v).unwrap_or(serde_json::Value::Null)
}

/// A JSON value as HCL, for expressions to read (computed attributes, state, `-var` JSON).
pub fn json_to_hcl(v: &serde_json::Value) -> Value {
    match v {
        serde_json::Value::Null => Value::Null,
        serde_json::Value::Bool(b) => Value::Bool(*b),
        serde_json::Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                Value::from(i)
            } else if let Some(u) = n.as_u64() {
                Value::from(u)
            } else {
                Value::from(n.as_f64().unwrap_or(0.0))
            }
        }
        serde_json::Value::String(s) => Value::String(s.clone()),
        serde_json::Value::Array(a) => Value::Array(a.iter().map(json_to_hcl).collect()),
        serde_json::Value::Object(o) => {
            Value::Object(o.iter().map(|(k, v)| (k.clone(), json_to_hcl(v))).collect())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn expr(text: &str) -> hcl::Expression {
        text.parse().expect("test expressions parse")
    }

    #[test]
    fn json_and_hcl_round_trip() {
        let json = serde_json::json!({
            "n": 3, "neg": -2, "big": u64::MAX, "f": 1.5, "s": "x", "b": true,
            "none": null, "list": [1, "a", [false]], "map": { "k": { "v": 0 } },
        });
        assert_eq!(to_json(&json_to_hcl(&json)), json);
    }

    #[test]
    fn unknown_anywhere_inside_is_found() {
        assert!(has_unknown(&unknown()));
        let nested = json_to_hcl(&serde_json::json!({ "a": [1, { "b": UNKNOWN }] }));
        assert!(has_unknown(&nested));
        // Unknown text inside a longer string (an interpolation) is still unknown.
        assert!(has_unknown(&Value::String(format!("ip {UNKNOWN}"))));
        assert!(!has_unknown(&json_to_hcl(
            &serde_json::json!({ "a": [1, "x"] })
        )));
    }

    #[test]
    fn typed_unknowns_are_unknown_keep_their_type_and_erase_to_the_plain_one() {
        let ip = typed_unknown(UnknownType::String);
        let ips = typed_unknown(UnknownType::ListOfStrings);
        assert!(has_unknown(&ip) && has_unknown(&ips));
        assert_eq!(unknown_type(&ip), Some(UnknownType::String));
        assert_eq!(unknown_type(&ips), Some(UnknownType::ListOfStrings));
        assert_eq!(unknown_type(&unknown()), None);
        // Interpolated, it is part of a string, not a value of its own type.
        let text = Value::String(format!("http://{}:80", ip.as_str().unwrap_or_default()));
        assert_eq!(unknown_type(&text), None);
        let nested = Value::Array(vec![ip.clone(), unknown(), text]);
        assert_eq!(
            typed_samples(&nested),
            Value::Array(vec![
                Value::from(""),
                unknown(),
                Value::String(format!("http://{}:80", ip.as_str().unwrap_or_default())),
            ])
        );
        assert_eq!(
            erase_unknown_types(nested),
            Value::Array(vec![
                unknown(),
                unknown(),
                Value::String(format!("http://{UNKNOWN}:80")),
            ])
        );
    }

    #[test]
    fn division_by_zero_is_an_error_not_a_panic() {
        let err = safe_evaluate(&expr("1 / 0"), &Context::new());
        assert!(err.is_err_and(|e| e.to_string().contains("no finite result")));
        let six_thirds = safe_evaluate(&expr("6 / 3"), &Context::new());
        assert_eq!(six_thirds.ok().and_then(|v| v.as_f64()), Some(2.0));
    }
}
