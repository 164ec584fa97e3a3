//! `Address`: the one identity of a resource instance, shared by config, plan, state and output.
//!
//! Forms: `cluster.dev`, `job.train[0]`, `managed_job.sweep["3e-4"]`,
//! `module.sweep.managed_job.run["1e-4"]`, `module.pool[1].cluster.node`.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;
use std::str::FromStr;

/// The resource kinds a configuration can declare. The order is the display order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    Cluster,
    Job,
    ManagedJob,
    Service,
    /// The controller, declared to run somewhere other than this machine.
    Controller,
}

impl Kind {
    pub const ALL: [Kind; 5] = [
        Kind::Cluster,
        Kind::Job,
        Kind::ManagedJob,
        Kind::Service,
        Kind::Controller,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Cluster => "cluster",
            Kind::Job => "job",
            Kind::ManagedJob => "managed_job",
            Kind::Service => "service",
            Kind::Controller => "controller",
        }
    }

    pub fn parse(s: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The key of one instance of a block with `count` (an index) or `for_each` (a string key).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum InstanceKey {
    Index(u64),
    Key(String),
}

impl fmt::Display for InstanceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            InstanceKey::Index(i) => write!(f, "[{i}]"),
            InstanceKey::Key(k) => {
                // JSON string escaping is a faithful HCL string literal for keys.
                let quoted = serde_json::to_string(k).map_err(|_| fmt::Error)?;
                write!(f, "[{quoted}]")
            }
        }
    }
}

/// One step of a module path: `module.NAME` with an optional instance key.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ModuleStep {
    pub name: String,
    pub key: Option<InstanceKey>,
}

impl fmt::Display for ModuleStep {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "module.{}", self.name)?;
        if let Some(k) = &self.key {
            write!(f, "{k}")?;
        }
        Ok(())
    }
}

/// A path of module instances from the root (empty for the root module).
pub type ModulePath = Vec<ModuleStep>;

/// Display a module path as `module.a.module.b["x"]` (empty for the root).
pub fn module_path_string(path: &[ModuleStep]) -> String {
    path.iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(".")
}

/// The address of one resource instance.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Address {
    pub module: ModulePath,
    pub kind: Kind,
    pub name: String,
    pub key: Option<InstanceKey>,
}

impl Address {
    pub fn new(kind: Kind, name: impl Into<String>) -> Address {
        Address {
            module: Vec::new(),
            kind,
            name: name.into(),
            key: None,
        }
    }

    pub fn with_key(mut self, key: Option<InstanceKey>) -> Address {
        self.key = key;
        self
    }

    pub fn in_module(mut self, module: ModulePath) -> Address {
        self.module = module;
        self
    }

    /// The address without its instance key: `job.sweep["a"]` → `job.sweep`.
    pub fn block(&self) -> Address {
        Address {
            key: None,
            ..self.clone()
        }
    }

    /// True when `self` equals `pattern`, or `pattern` names the whole block (no key) or a
    /// module containing `self` (as `-target` and `-replace` expect).
    pub fn matches(&self, pattern: &Address) -> bool {
        self.module == pattern.module
            && self.kind == pattern.kind
            && self.name == pattern.name
            && (pattern.key.is_none() || self.key == pattern.key)
    }
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for step in &self.module {
            write!(f, "{step}.")?;
        }
        write!(f, "{}.{}", self.kind, self.name)?;
        if let Some(k) = &self.key {
            write!(f, "{k}")?;
        }
        Ok(())
    }
}

/// Why an address string could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid address {input:?}: {reason}")]
pub struct AddressError {
    pub input: String,
    pub reason: String,
}

impl FromStr for Address {
    type Err = AddressError;

    fn from_str(input: &str) -> Result<Address, AddressError> {
        let err = |reason: &str| AddressError {
            input: input.to_string(),
            reason: reason.to_string(),
        };
        let mut rest = input.trim();
        let mut module = Vec::new();
        loop {
            let (name, key, tail) = split_step(rest).map_err(|r| err(&r))?;
            if name == "module" {
                let (mname, mkey, tail2) = split_step(tail).map_err(|r| err(&r))?;
                if key.is_some() {
                    return Err(err("`module` takes no index; write module.NAME[KEY]"));
                }
                module.push(ModuleStep {
                    name: mname.to_string(),
                    key: mkey,
                });
                rest = tail2;
                continue;
            }
            let kind = Kind::parse(name).ok_or_else(|| {
                err("expected a kind: cluster, job, managed_job, service, controller or module")
            })?;
            if key.is_some() {
                return Err(err("the kind takes no index; write KIND.NAME[KEY]"));
            }
            let (rname, rkey, tail2) = split_step(tail).map_err(|r| err(&r))?;
            if !tail2.is_empty() {
                return Err(err("unexpected text after the resource name"));
            }
            return Ok(Address {
                module,
                kind,
                name: rname.to_string(),
                key: rkey,
            });
        }
    }
}

/// Splits `name[key].rest` into its name, optional key and the rest after the dot.
fn split_step(s: &str) -> Result<(&str, Option<InstanceKey>, &str), String> {
    let end = s.find(['.', '[']).unwrap_or(s.len());
    let name = &s[..end];
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    {
        return Err(format!("{name:?} is not a valid name"));
    }
    let mut rest = &s[end..];
    let mut key = None;
    if let Some(after) = rest.strip_prefix('[') {
        let close = if after.starts_with('"') {
            // find the closing quote, honouring escapes
            let mut escaped = false;
            let mut close_quote = None;
            for (i, c) in after.char_indices().skip(1) {
                match c {
                    '\\' if !escaped => escaped = true,
                    '"' if !escaped => {
                        close_quote = Some(i);
                        break;
                    }
                    _ => escaped = false,
                }
            }
            let q = close_quote.ok_or("unterminated string key")?;
            if after[q + 1..].starts_with(']') {
                q + 1
            } else {
                return Err("expected ] after the key".into());
            }
        } else {
            after.find(']').ok_or("missing ]")?
        };
        let inner = &after[..close];
        key = Some(if inner.starts_with('"') {
            InstanceKey::Key(
                serde_json::from_str::<String>(inner).map_err(|_| "invalid string key")?,
            )
        } else {
            InstanceKey::Index(
                inner
                    .parse()
                    .map_err(|_| format!("{inner:?} is not an index; quote string keys"))?,
            )
        });
        rest = &after[close + 1..];
    }
    let rest = match rest.strip_prefix('.') {
        Some(r) if !r.is_empty() => r,
        Some(_) => return Err("trailing dot".into()),
        None if rest.is_empty() => rest,
        None => return Err(format!("unexpected {rest:?}")),
    };
    Ok((name, key, rest))
}

impl Serialize for Address {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Address {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Address, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_and_prints() {
        for s in [
            "cluster.dev",
            "job.train[0]",
            "managed_job.sweep[\"3e-4\"]",
            "module.sweep.managed_job.run[\"1e-4\"]",
            "module.pool[1].module.inner[\"a.b\"].service.llm",
        ] {
            let a: Address = s.parse().unwrap();
            assert_eq!(a.to_string(), s);
        }
    }

    #[test]
    fn rejects_bad() {
        for s in [
            "",
            "cluster",
            "vm.x",
            "cluster.dev[",
            "cluster.dev[x]",
            "cluster.dev.",
            "job.a.b",
        ] {
            assert!(s.parse::<Address>().is_err(), "{s}");
        }
    }

    proptest! {
        #[test]
        fn roundtrip(name in "[a-z_][a-z0-9_-]{0,8}", key in proptest::option::of(prop_oneof![
            any::<u16>().prop_map(|i| InstanceKey::Index(u64::from(i))),
            "[ -~]{0,6}".prop_map(InstanceKey::Key),
        ]), kind in 0usize..4) {
            let a = Address::new(Kind::ALL[kind], name).with_key(key);
            let back: Address = a.to_string().parse().unwrap();
            prop_assert_eq!(back, a);
        }
    }
}
