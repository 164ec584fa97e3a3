//! Values shared by loading, decoding, variables and evaluation: HCL values to and from JSON,
//! values known only after apply, and evaluating an expression without letting the HCL library
//! panic. It imports nothing else of `config`, so every part of it may import this.

use crate::model::UNKNOWN;
use hcl::Value;
use hcl::eval::{Context, Evaluate};

/// The value that stands for one known only after apply.
pub fn unknown() -> Value {
    Value::String(UNKNOWN.into())
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
    fn division_by_zero_is_an_error_not_a_panic() {
        let err = safe_evaluate(&expr("1 / 0"), &Context::new());
        assert!(err.is_err_and(|e| e.to_string().contains("no finite result")));
        let six_thirds = safe_evaluate(&expr("6 / 3"), &Context::new());
        assert_eq!(six_thirds.ok().and_then(|v| v.as_f64()), Some(2.0));
    }
}
