//! Resource requests as users write them: `"A100:8"`, `"32+"`, `"4x"`.
//!
//! Each type parses from and prints to its canonical string, so plans, state and diffs show
//! exactly the form a user would write.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;
use std::str::FromStr;

/// A malformed resource string, with what to write instead.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct RequestError {
    pub message: String,
    pub hint: String,
}

fn bad(message: impl Into<String>, hint: impl Into<String>) -> RequestError {
    RequestError {
        message: message.into(),
        hint: hint.into(),
    }
}

/// Formats a float without a trailing `.0` for whole numbers.
pub fn fmt_num(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{}", v as i64)
    } else {
        format!("{v}")
    }
}

/// A size for people: at most one decimal (`3.6`, `32`).
pub fn fmt_size(v: f64) -> String {
    let r = (v * 10.0).round() / 10.0;
    fmt_num(r)
}

/// One accelerator with a (possibly fractional) count: `A100:8`, `L4`, `A100:0.5`.
#[derive(Debug, Clone, PartialEq)]
pub struct Accelerator {
    pub name: String,
    pub count: f64,
}

impl FromStr for Accelerator {
    type Err = RequestError;
    fn from_str(s: &str) -> Result<Self, RequestError> {
        let s = s.trim();
        let (name, count) = match s.split_once(':') {
            Some((n, c)) => (n, Some(c)),
            None => (s, None),
        };
        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
        {
            return Err(bad(
                format!(
                    "{s:?} is not an accelerator: the name must be letters, digits, '-' or '_'"
                ),
                "write NAME or NAME:COUNT, e.g. \"A100:8\" or \"L4\"",
            ));
        }
        let count = match count {
            None => 1.0,
            Some(c) => match c.trim().parse::<f64>() {
                Ok(v) if v.is_finite() && v > 0.0 => v,
                _ => {
                    return Err(bad(
                        format!("the count after ':' in {s:?} must be a positive number"),
                        "write NAME:COUNT, e.g. \"A100:8\" or \"A100:0.5\"",
                    ));
                }
            },
        };
        if count > 1.0 && count.fract() != 0.0 {
            return Err(bad(
                format!("{s:?}: only counts below 1 may be fractional"),
                "use a whole number of GPUs, or a fraction of one such as \"A100:0.5\"",
            ));
        }
        Ok(Accelerator {
            name: name.to_string(),
            count,
        })
    }
}

impl fmt::Display for Accelerator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.name, fmt_num(self.count))
    }
}

/// The `accelerators` attribute: one, a set (cheapest of) or a list (in this order).
#[derive(Debug, Clone, PartialEq)]
pub enum Accelerators {
    One(Accelerator),
    AnyOf(Vec<Accelerator>),
    Ordered(Vec<Accelerator>),
}

impl Accelerators {
    pub fn choices(&self) -> &[Accelerator] {
        match self {
            Accelerators::One(a) => std::slice::from_ref(a),
            Accelerators::AnyOf(v) | Accelerators::Ordered(v) => v,
        }
    }
}

impl fmt::Display for Accelerators {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Accelerators::One(a) => write!(f, "{a}"),
            Accelerators::AnyOf(v) => {
                let s: Vec<_> = v.iter().map(ToString::to_string).collect();
                write!(f, "any of {}", s.join(", "))
            }
            Accelerators::Ordered(v) => {
                let s: Vec<_> = v.iter().map(ToString::to_string).collect();
                write!(f, "in order {}", s.join(", "))
            }
        }
    }
}

impl Serialize for Accelerators {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Accelerators::One(a) => s.collect_str(a),
            Accelerators::AnyOf(v) => {
                let strs: Vec<String> = v.iter().map(ToString::to_string).collect();
                #[derive(Serialize)]
                struct AnyOf {
                    any_of: Vec<String>,
                }
                AnyOf { any_of: strs }.serialize(s)
            }
            Accelerators::Ordered(v) => {
                let strs: Vec<String> = v.iter().map(ToString::to_string).collect();
                strs.serialize(s)
            }
        }
    }
}

impl<'de> Deserialize<'de> for Accelerators {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Repr {
            One(String),
            Ordered(Vec<String>),
            AnyOf { any_of: Vec<String> },
        }
        let parse = |v: Vec<String>| -> Result<Vec<Accelerator>, D::Error> {
            v.iter()
                .map(|s| s.parse().map_err(serde::de::Error::custom))
                .collect()
        };
        Ok(match Repr::deserialize(d)? {
            Repr::One(s) => Accelerators::One(s.parse().map_err(serde::de::Error::custom)?),
            Repr::Ordered(v) => Accelerators::Ordered(parse(v)?),
            Repr::AnyOf { any_of } => Accelerators::AnyOf(parse(any_of)?),
        })
    }
}

/// `cpus`: exactly N, or at least N (`"N+"`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Cpus {
    pub value: f64,
    pub at_least: bool,
}

impl Cpus {
    pub fn satisfied_by(&self, have: f64) -> bool {
        if self.at_least {
            have >= self.value
        } else {
            (have - self.value).abs() < 1e-9
        }
    }
}

fn parse_plus(s: &str, what: &str, example: &str) -> Result<(f64, bool), RequestError> {
    let t = s.trim();
    let (num, at_least) = match t.strip_suffix('+') {
        Some(n) => (n, true),
        None => (t, false),
    };
    match num.parse::<f64>() {
        Ok(v) if v.is_finite() && v > 0.0 => Ok((v, at_least)),
        _ => Err(bad(
            format!("{s:?} is not a valid {what}"),
            format!(
                "write a positive number, optionally followed by '+' for \"at least\": {example}"
            ),
        )),
    }
}

impl FromStr for Cpus {
    type Err = RequestError;
    fn from_str(s: &str) -> Result<Self, RequestError> {
        let (value, at_least) = parse_plus(s, "CPU count", "\"8\" or \"32+\"")?;
        Ok(Cpus { value, at_least })
    }
}

impl fmt::Display for Cpus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}{}",
            fmt_num(self.value),
            if self.at_least { "+" } else { "" }
        )
    }
}

/// `memory` in GiB: exactly N, at least N (`"N+"`), or at least N GiB per vCPU (`"Nx"`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Memory {
    Exact(f64),
    AtLeast(f64),
    PerCpu(f64),
}

impl Memory {
    pub fn satisfied_by(&self, have_gib: f64, cpus: f64) -> bool {
        match *self {
            Memory::Exact(v) => (have_gib - v).abs() < 1e-6,
            Memory::AtLeast(v) => have_gib >= v,
            Memory::PerCpu(v) => have_gib >= v * cpus,
        }
    }
}

impl FromStr for Memory {
    type Err = RequestError;
    fn from_str(s: &str) -> Result<Self, RequestError> {
        let t = s.trim();
        if let Some(n) = t.strip_suffix('x') {
            return match n.parse::<f64>() {
                Ok(v) if v.is_finite() && v > 0.0 => Ok(Memory::PerCpu(v)),
                _ => Err(bad(
                    format!("{s:?} is not a valid memory size"),
                    "write GiB as \"64\", at least \"64+\", or per vCPU \"4x\"",
                )),
            };
        }
        let (v, at_least) =
            parse_plus(s, "memory size", "\"64\", \"64+\" or \"4x\" (GiB per vCPU)")?;
        Ok(if at_least {
            Memory::AtLeast(v)
        } else {
            Memory::Exact(v)
        })
    }
}

impl fmt::Display for Memory {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Memory::Exact(v) => write!(f, "{}", fmt_num(v)),
            Memory::AtLeast(v) => write!(f, "{}+", fmt_num(v)),
            Memory::PerCpu(v) => write!(f, "{}x", fmt_num(v)),
        }
    }
}

macro_rules! string_serde {
    ($($t:ty),*) => {$(
        impl Serialize for $t {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }
        impl<'de> Deserialize<'de> for $t {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                String::deserialize(d)?.parse().map_err(serde::de::Error::custom)
            }
        }
    )*};
}
string_serde!(Accelerator, Cpus, Memory);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accelerators() {
        assert_eq!("A100:8".parse::<Accelerator>().unwrap().count, 8.0);
        assert_eq!("L4".parse::<Accelerator>().unwrap().to_string(), "L4:1");
        assert_eq!("A100:0.5".parse::<Accelerator>().unwrap().count, 0.5);
        for bad in [
            "A100:x", "A100:", ":4", "A100:-1", "A100:1.5", "A 100", "A100:inf",
        ] {
            assert!(bad.parse::<Accelerator>().is_err(), "{bad}");
        }
    }

    #[test]
    fn cpus_and_memory() {
        assert!("32+".parse::<Cpus>().unwrap().satisfied_by(64.0));
        assert!(!"32".parse::<Cpus>().unwrap().satisfied_by(64.0));
        for bad in ["32++", "+", "", "x", "-2", "0"] {
            assert!(bad.parse::<Cpus>().is_err(), "{bad}");
        }
        assert_eq!("4x".parse::<Memory>().unwrap(), Memory::PerCpu(4.0));
        assert!("4x".parse::<Memory>().unwrap().satisfied_by(32.0, 8.0));
        assert!("128++".parse::<Memory>().is_err());
        assert_eq!("16+".parse::<Memory>().unwrap().to_string(), "16+");
    }
}
