//! A resource's computed attributes: a handful of entries (`status`, `exit_code`,
//! `head_ip`, …) kept as a sorted vector. A `BTreeMap` would take a whole node of eleven
//! slots (over a kilobyte) for each resource's two or three entries — at 100,000 jobs, about
//! 90 MB of a plan's memory. Written and read as a JSON object, in key order, exactly as
//! the map was.

use serde::de::{MapAccess, Visitor};
use serde::ser::SerializeMap;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::Value;
use std::collections::BTreeMap;

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Computed(Vec<(String, Value)>);

impl Computed {
    pub fn new() -> Computed {
        Computed::default()
    }

    fn find(&self, key: &str) -> Result<usize, usize> {
        self.0.binary_search_by(|(k, _)| k.as_str().cmp(key))
    }

    pub fn get(&self, key: &str) -> Option<&Value> {
        self.find(key).ok().map(|i| &self.0[i].1)
    }

    pub fn contains_key(&self, key: &str) -> bool {
        self.find(key).is_ok()
    }

    /// Sets `key`, answering what it held.
    pub fn insert(&mut self, key: String, value: Value) -> Option<Value> {
        match self.find(&key) {
            Ok(i) => Some(std::mem::replace(&mut self.0[i].1, value)),
            Err(i) => {
                self.0.insert(i, (key, value));
                None
            }
        }
    }

    pub fn remove(&mut self, key: &str) -> Option<Value> {
        self.find(key).ok().map(|i| self.0.remove(i).1)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// The entries in key order.
    pub fn iter(&self) -> impl Iterator<Item = (&String, &Value)> {
        self.0.iter().map(|(k, v)| (k, v))
    }

    /// As a map, for what takes one (providers' answers, renderers).
    pub fn to_map(&self) -> BTreeMap<String, Value> {
        self.0.iter().cloned().collect()
    }
}

impl Extend<(String, Value)> for Computed {
    fn extend<I: IntoIterator<Item = (String, Value)>>(&mut self, entries: I) {
        for (k, v) in entries {
            self.insert(k, v);
        }
    }
}

impl FromIterator<(String, Value)> for Computed {
    fn from_iter<I: IntoIterator<Item = (String, Value)>>(entries: I) -> Computed {
        let mut c = Computed::new();
        c.extend(entries);
        c.0.shrink_to_fit();
        c
    }
}

impl From<BTreeMap<String, Value>> for Computed {
    fn from(map: BTreeMap<String, Value>) -> Computed {
        // Already in key order.
        Computed(map.into_iter().collect())
    }
}

impl IntoIterator for Computed {
    type Item = (String, Value);
    type IntoIter = std::vec::IntoIter<(String, Value)>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.into_iter()
    }
}

impl Serialize for Computed {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(Some(self.0.len()))?;
        for (k, v) in &self.0 {
            m.serialize_entry(k, v)?;
        }
        m.end()
    }
}

impl<'de> Deserialize<'de> for Computed {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Computed, D::Error> {
        struct Entries;
        impl<'de> Visitor<'de> for Entries {
            type Value = Computed;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("an object of computed attributes")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Computed, A::Error> {
                let mut c = Computed(Vec::with_capacity(map.size_hint().unwrap_or(0)));
                while let Some((k, v)) = map.next_entry::<String, Value>()? {
                    c.insert(k, v);
                }
                c.0.shrink_to_fit();
                Ok(c)
            }
        }
        d.deserialize_map(Entries)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use serde_json::json;

    #[test]
    fn keeps_keys_sorted_and_reads_and_writes_as_an_object() {
        let mut c = Computed::new();
        assert_eq!(c.insert("status".into(), json!("UP")), None);
        c.insert("exit_code".into(), json!(0));
        c.insert("head_ip".into(), json!("10.0.0.1"));
        assert_eq!(c.insert("status".into(), json!("DOWN")), Some(json!("UP")));
        let keys: Vec<&String> = c.iter().map(|(k, _)| k).collect();
        assert_eq!(keys, ["exit_code", "head_ip", "status"]);
        assert_eq!(c.get("status"), Some(&json!("DOWN")));
        assert!(c.contains_key("head_ip") && !c.contains_key("nope"));
        let text = serde_json::to_string(&c).unwrap();
        assert_eq!(
            text,
            r#"{"exit_code":0,"head_ip":"10.0.0.1","status":"DOWN"}"#
        );
        // Keys out of order in a file are put in order.
        let back: Computed =
            serde_json::from_str(r#"{"status":"DOWN","exit_code":0,"head_ip":"10.0.0.1"}"#)
                .unwrap();
        assert_eq!(back, c);
        assert_eq!(c.remove("head_ip"), Some(json!("10.0.0.1")));
        assert_eq!(c.len(), 2);
        assert_eq!(Computed::from(c.to_map()), c);
    }
}
