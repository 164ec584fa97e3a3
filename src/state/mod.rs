//! State: what skyform has created, as versioned JSON with `lineage` and `serial`.
//!
//! The format lives here; stores (where the bytes go, how they are locked) are in
//! [`local`] and behind the [`StateStore`] trait.

pub mod computed;
#[doc(hidden)]
pub mod conformance;
pub mod local;
pub mod memory;
pub mod object;
pub mod seal;

use crate::model::{Address, Kind, Spec};
use crate::optimizer::Candidate;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::Arc;

pub use computed::Computed;
pub use local::LocalStore;
pub use memory::MemoryStore;
pub use object::ObjectStateStore;

pub const FORMAT_VERSION: u32 = 1;

/// Where a resource is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Creation started and was recorded before any machine or process existed; if skyform
    /// stops here, refresh finds what was made and the next plan adopts or replaces it.
    Creating,
    Ready,
    /// Known to be broken (creation interrupted, nodes lost): the next plan replaces it.
    Tainted,
}

/// One failed or successful attempt to place a resource.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Attempt {
    pub infra: String,
    pub instance_type: String,
    pub result: String,
    pub seconds: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResourceState {
    pub status: Status,
    pub provider: String,
    /// Shared with the plan's change of the resource while the configuration says the same:
    /// a plan of many unchanged resources holds one copy of each spec, not three.
    #[serde(with = "shared_spec")]
    pub spec: Arc<Spec>,
    /// Attributes known once the resource exists (`head_ip`, `status`, `exit_code`, …).
    #[serde(default, skip_serializing_if = "Computed::is_empty")]
    pub computed: Computed,
    /// The provider's own identifiers (sandbox paths, process ids, instance ids).
    #[serde(
        default,
        skip_serializing_if = "serde_json::Value::is_null",
        deserialize_with = "exact_object"
    )]
    pub private: serde_json::Value,
    /// Boxed: most resources in a large state are jobs, which have none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub placement: Option<Box<Candidate>>,
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "exact_vec"
    )]
    pub dependencies: Vec<Address>,
    /// Top-level attributes that hold sensitive values.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sensitive: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub attempts: Vec<Attempt>,
    /// Earlier attempts whose clean-up was not confirmed (a region that stopped answering):
    /// their private identifiers, removed by the next apply or destroy.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub leftovers: Vec<Leftover>,
}

/// An attempt that may have left machines behind, kept until they are removed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Leftover {
    pub provider: String,
    pub private: serde_json::Value,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub placement: Option<Candidate>,
}

impl ResourceState {
    /// A resource with nothing known of it yet but its status, backend and specification;
    /// the other fields are set with `ResourceState { …, ..ResourceState::new(…) }`.
    pub fn new(status: Status, provider: impl Into<String>, spec: Arc<Spec>) -> ResourceState {
        ResourceState {
            status,
            provider: provider.into(),
            spec,
            computed: Computed::default(),
            private: serde_json::Value::Null,
            placement: None,
            dependencies: Vec::new(),
            sensitive: Vec::new(),
            attempts: Vec::new(),
            leftovers: Vec::new(),
        }
    }

    pub fn kind(&self) -> Kind {
        self.spec.kind()
    }

    /// Keeps the current attempt's identifiers as a leftover, before they are replaced by
    /// another attempt's: what it made is removed later, never forgotten.
    pub fn keep_as_leftover(&mut self) {
        self.leftovers.push(Leftover {
            provider: self.provider.clone(),
            private: self.private.clone(),
            placement: self.placement.as_deref().cloned(),
        });
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OutputState {
    pub value: serde_json::Value,
    #[serde(default)]
    pub sensitive: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct State {
    pub format_version: u32,
    pub skyform_version: String,
    pub lineage: String,
    pub serial: u64,
    #[serde(default, deserialize_with = "packed_resources")]
    pub resources: BTreeMap<Address, ResourceState>,
    #[serde(default)]
    pub outputs: BTreeMap<String, OutputState>,
}

/// A list read without spare room: a vector grown one by one holds at least four elements,
/// and a state holds one such list per resource.
fn exact_vec<'de, D: serde::Deserializer<'de>, T: Deserialize<'de>>(
    d: D,
) -> Result<Vec<T>, D::Error> {
    let mut v = Vec::<T>::deserialize(d)?;
    v.shrink_to_fit();
    Ok(v)
}

/// A JSON value read without spare room in its top-level object (a few identifiers, one
/// per resource of a large state).
fn exact_object<'de, D: serde::Deserializer<'de>>(d: D) -> Result<serde_json::Value, D::Error> {
    Ok(match serde_json::Value::deserialize(d)? {
        serde_json::Value::Object(grown) => {
            let mut exact = serde_json::Map::with_capacity(grown.len());
            exact.extend(grown);
            serde_json::Value::Object(exact)
        }
        other => other,
    })
}

/// The resources read into a list and then built into a map at once: inserting them one by
/// one, in the order a state lists them (sorted), leaves the map's nodes about half full, and
/// each slot holds a whole resource. The last of a repeated address wins, as with inserting.
fn packed_resources<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<BTreeMap<Address, ResourceState>, D::Error> {
    struct Visit;
    impl<'de> serde::de::Visitor<'de> for Visit {
        type Value = Vec<(Address, ResourceState)>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a map of addresses to resources")
        }
        fn visit_map<A: serde::de::MapAccess<'de>>(
            self,
            mut m: A,
        ) -> Result<Self::Value, A::Error> {
            let mut v = Vec::with_capacity(m.size_hint().unwrap_or(0));
            while let Some(entry) = m.next_entry()? {
                v.push(entry);
            }
            Ok(v)
        }
    }
    Ok(d.deserialize_map(Visit)?.into_iter().collect())
}

impl State {
    /// What everything in state costs per hour (micro-dollars), by its placements.
    pub fn hourly_cost(&self) -> u64 {
        self.resources
            .values()
            .filter_map(|r| r.placement.as_ref())
            .map(|c| c.hourly)
            .sum()
    }

    /// A new, empty state with a fresh lineage.
    pub fn new() -> State {
        State {
            format_version: FORMAT_VERSION,
            skyform_version: env!("CARGO_PKG_VERSION").to_string(),
            lineage: uuid::Uuid::new_v4().to_string(),
            serial: 0,
            resources: BTreeMap::new(),
            outputs: BTreeMap::new(),
        }
    }

    pub fn to_json(&self) -> Vec<u8> {
        let mut v = serde_json::to_vec_pretty(self).unwrap_or_default();
        v.push(b'\n');
        v
    }

    pub fn from_json(bytes: &[u8]) -> Result<State, StateError> {
        // A document that does not read may be of a newer format: then its version is
        // skimmed (the rest skipped unread, not built into a tree of JSON values) to say
        // so, rather than failing on what that format changed.
        let too_new = |version: u64| version > u64::from(FORMAT_VERSION);
        match serde_json::from_slice::<State>(bytes) {
            Ok(state) if too_new(state.format_version.into()) => {
                Err(StateError::TooNew(state.format_version.into()))
            }
            Ok(state) => Ok(state),
            Err(e) => {
                let probe: Option<VersionProbe> = serde_json::from_slice(bytes).ok();
                match probe.and_then(|p| p.0).and_then(|v| v.as_u64()) {
                    Some(version) if too_new(version) => Err(StateError::TooNew(version)),
                    _ => Err(StateError::Corrupt(e.to_string())),
                }
            }
        }
    }
}

impl State {
    /// Reads a plaintext state as it streams from `r`. An error says only that it failed:
    /// read the document whole with [`State::from_json`] to say why.
    pub fn from_reader(r: impl std::io::Read) -> Result<State, StateError> {
        let state: State =
            serde_json::from_reader(r).map_err(|e| StateError::Corrupt(e.to_string()))?;
        if state.format_version > FORMAT_VERSION {
            return Err(StateError::TooNew(state.format_version.into()));
        }
        Ok(state)
    }
}

/// `format_version` of a state document (the last one, if given twice), any other member
/// skipped unread. Not an object: the probe finds nothing, and the full read says why.
struct VersionProbe(Option<serde_json::Value>);

impl<'de> Deserialize<'de> for VersionProbe {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visit;
        impl<'de> serde::de::Visitor<'de> for Visit {
            type Value = VersionProbe;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON value")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<VersionProbe, A::Error> {
                let mut version = None;
                while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
                    if key == "format_version" {
                        version = Some(map.next_value::<serde_json::Value>()?);
                    } else {
                        map.next_value::<serde::de::IgnoredAny>()?;
                    }
                }
                Ok(VersionProbe(version))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<VersionProbe, A::Error> {
                while seq.next_element::<serde::de::IgnoredAny>()?.is_some() {}
                Ok(VersionProbe(None))
            }
            fn visit_bool<E>(self, _: bool) -> Result<VersionProbe, E> {
                Ok(VersionProbe(None))
            }
            fn visit_i64<E>(self, _: i64) -> Result<VersionProbe, E> {
                Ok(VersionProbe(None))
            }
            fn visit_u64<E>(self, _: u64) -> Result<VersionProbe, E> {
                Ok(VersionProbe(None))
            }
            fn visit_f64<E>(self, _: f64) -> Result<VersionProbe, E> {
                Ok(VersionProbe(None))
            }
            fn visit_str<E>(self, _: &str) -> Result<VersionProbe, E> {
                Ok(VersionProbe(None))
            }
            fn visit_unit<E>(self) -> Result<VersionProbe, E> {
                Ok(VersionProbe(None))
            }
        }
        d.deserialize_any(Visit)
    }
}

impl Default for State {
    fn default() -> Self {
        State::new()
    }
}

/// Who holds a lock, written into the lock file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LockInfo {
    pub id: String,
    pub who: String,
    pub operation: String,
    /// RFC 3339, UTC.
    pub created: String,
    pub version: String,
    #[serde(default)]
    pub pid: u32,
}

impl LockInfo {
    pub fn new(operation: &str) -> LockInfo {
        let user = std::env::var("USER")
            .or_else(|_| std::env::var("LOGNAME"))
            .ok()
            .or_else(user_from_passwd)
            .unwrap_or_else(|| "unknown".into());
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .unwrap_or_else(|_| "localhost".into());
        LockInfo {
            id: uuid::Uuid::new_v4().to_string(),
            who: format!("{user}@{host}"),
            operation: operation.to_string(),
            created: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            pid: std::process::id(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("{}", locked_message(.0))]
    Locked(Box<LockInfo>),
    #[error("the state file is not valid: {0}")]
    Corrupt(String),
    #[error("the state was written by a newer skyform (format {0})")]
    TooNew(u64),
    #[error("lock {given} is not the current lock ({})", .held.as_deref().unwrap_or("none is held"))]
    WrongLock { given: String, held: Option<String> },
    #[error("the state at {url} changed since this run read it; not overwriting the newer state")]
    Conflict { url: String },
    #[error("{message}")]
    Key { message: String },
    #[error("cannot {what} {url}: {message}")]
    Remote {
        what: &'static str,
        url: String,
        message: String,
    },
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// This process's user name from /etc/passwd (when $USER is not set, as in containers).
fn user_from_passwd() -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    let uid = std::fs::metadata("/proc/self").ok()?.uid();
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        (f.get(2)?.parse::<u32>().ok()? == uid).then(|| f[0].to_string())
    })
}

/// "the state is locked / by … / since … (4 minutes ago) / lock …".
fn locked_message(info: &LockInfo) -> String {
    let age = humantime::parse_rfc3339(&info.created)
        .ok()
        .and_then(|t| std::time::SystemTime::now().duration_since(t).ok())
        .map(|d| {
            let secs = d.as_secs();
            match secs {
                0..=59 => format!(" ({secs} s ago)"),
                60..=3599 => format!(" ({} min ago)", secs / 60),
                _ => format!(" ({} h {} min ago)", secs / 3600, (secs % 3600) / 60),
            }
        })
        .unwrap_or_default();
    format!(
        "the state is locked\n  by    {} ({})\n  since {}{age}\n  lock  {}",
        info.who, info.operation, info.created, info.id
    )
}

impl StateError {
    pub fn hint(&self) -> Option<String> {
        match self {
            StateError::Locked(info) => Some(format!(
                "wait with -lock-timeout=10m, or if that run is dead: skyform force-unlock {}",
                info.id
            )),
            StateError::Corrupt(_) => Some(
                "restore it from a backup (state.json.backup) or `skyform state push` a good copy"
                    .into(),
            ),
            StateError::TooNew(_) => Some("upgrade skyform".into()),
            StateError::WrongLock { .. } => {
                Some("run `skyform force-unlock` with the id shown in the lock error".into())
            }
            StateError::Conflict { .. } => Some(
                "another run changed the state; this run's copy is in .skyform/errored-state.json: \
                 compare with `skyform state pull`, then `skyform state push .skyform/errored-state.json` if it is right"
                    .into(),
            ),
            StateError::Key { .. } => Some(
                "set the variable encryption_key_env names to the state's key (32 bytes, base64: \
                 `openssl rand -base64 32` makes one); `skyform init -migrate-state` encrypts or \
                 decrypts a state when the setting changes"
                    .into(),
            ),
            StateError::Remote { .. } => Some(
                "check the bucket, the endpoint and the credentials in the environment, then run the command again".into(),
            ),
            StateError::Io { .. } => None,
        }
    }
}

/// Where state is kept. Every store passes the same conformance tests.
#[async_trait::async_trait]
pub trait StateStore: Send + Sync + std::fmt::Debug {
    /// For messages: `.skyform/state.json`, `s3://bucket/key`.
    fn describe(&self) -> String;
    async fn read(&self) -> Result<Option<State>, StateError>;
    /// Writes atomically: a reader sees the old or the new state, never a mix.
    async fn write(&self, state: &State) -> Result<(), StateError>;
    /// Records a state in which only `changed` differ from the last write (and the serial is
    /// one higher). Stores that can, record just those resources durably (a journal) and
    /// write the whole document now and then, so large applies stay linear; the default
    /// writes the whole state.
    async fn write_changes(&self, state: &State, changed: &[Address]) -> Result<(), StateError> {
        let _ = changed;
        self.write(state).await
    }
    /// Takes the lock or says who holds it.
    async fn lock(&self, info: &LockInfo) -> Result<(), StateError>;
    /// Releases the lock if `id` holds it.
    async fn unlock(&self, id: &str) -> Result<(), StateError>;
    async fn lock_holder(&self) -> Result<Option<LockInfo>, StateError>;
    /// Deletes the state (for `workspace delete`); the lock is the caller's to release.
    async fn remove(&self) -> Result<(), StateError>;
    /// Called on the default workspace's store: the other workspaces next to it, sorted.
    async fn workspaces(&self) -> Result<Vec<String>, StateError>;
    /// A side document kept next to the state (`name` is a suffix such as `controller`):
    /// its bytes and an opaque version for [`StateStore::write_side`]; None when absent.
    async fn read_side(&self, name: &str) -> Result<Option<(Vec<u8>, String)>, StateError>;
    /// Writes a side document only if it is still at version `expect` (None: only if it
    /// does not exist), and answers its new version; otherwise fails with
    /// [`StateError::Conflict`] and changes nothing. This compare-and-swap is what lets the
    /// controller and apply share a store without the state lock.
    async fn write_side(
        &self,
        name: &str,
        bytes: &[u8],
        expect: Option<&str>,
    ) -> Result<String, StateError>;
}

/// Where a workspace's state lives, given the default workspace's: `workspaces/NAME/` is
/// inserted before the file name (local) or the key (object stores).
pub fn workspace_key(base: &str, workspace: &str) -> String {
    if workspace == "default" {
        return base.to_string();
    }
    match base.rsplit_once('/') {
        Some((dir, file)) => format!("{dir}/workspaces/{workspace}/{file}"),
        None => format!("workspaces/{workspace}/{base}"),
    }
}

/// A lock taken on this host, by this user, by a skyform process that is gone (killed, or
/// crashed): any store may take it over.
pub(crate) fn is_stale(holder: &LockInfo, me: &LockInfo) -> bool {
    holder.who == me.who
        && holder.pid != 0
        && holder.pid != me.pid
        && !crate::runtime::proc::alive(holder.pid, None)
}

/// Takes the lock, retrying with backoff until `timeout` passes.
pub async fn lock_with_timeout(
    store: &dyn StateStore,
    info: &LockInfo,
    timeout: std::time::Duration,
) -> Result<(), StateError> {
    let started = tokio::time::Instant::now();
    let deadline = started + timeout;
    let mut delay = std::time::Duration::from_millis(50);
    loop {
        match store.lock(info).await {
            Err(StateError::Locked(holder)) => {
                let now = tokio::time::Instant::now();
                // The controller holds the lock only for the moment it takes to copy its
                // record into the state: wait for it whatever the timeout.
                let brief = holder.operation == "controller"
                    && now < deadline.max(started + std::time::Duration::from_secs(10));
                if now >= deadline && !brief {
                    return Err(StateError::Locked(holder));
                }
                // Sleep at most until the deadline, and try once more there.
                let until = if brief {
                    std::time::Duration::from_millis(100)
                } else {
                    deadline - now
                };
                tokio::time::sleep(delay.min(until)).await;
                delay = (delay * 2).min(std::time::Duration::from_secs(2));
            }
            other => return other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_its_own_json_and_refuses_newer_or_malformed_states() {
        let s = State::new();
        let json = String::from_utf8(s.to_json()).unwrap();
        assert_eq!(State::from_json(json.as_bytes()).unwrap(), s);
        let newer = json.replacen(
            &format!("\"format_version\": {FORMAT_VERSION}"),
            "\"format_version\": 99",
            1,
        );
        assert!(matches!(
            State::from_json(newer.as_bytes()),
            Err(StateError::TooNew(99))
        ));
        for bad in [
            "[1, {\"a\": 2}]",
            "\"x\"",
            "3",
            "null",
            "{\"format_version\": \"1\"}",
            "{",
        ] {
            assert!(
                matches!(
                    State::from_json(bad.as_bytes()),
                    Err(StateError::Corrupt(_))
                ),
                "{bad}"
            );
        }
    }

    #[test]
    fn resources_read_in_any_order_and_the_last_of_a_repeated_address_wins() {
        let doc = |run_first: &str, run_last: &str| {
            format!(
                r#"{{"format_version": 1, "skyform_version": "0", "lineage": "l", "serial": 1,
                "resources": {{
                  "job.b": {{"status": "ready", "provider": "local", "spec": {{"kind": "job", "cluster": "cluster.c", "num_nodes": 1, "resources": {{}}, "run": "{run_first}"}}}},
                  "job.a": {{"status": "ready", "provider": "local", "spec": {{"kind": "job", "cluster": "cluster.c", "num_nodes": 1, "resources": {{}}, "run": "x"}}}},
                  "job.b": {{"status": "ready", "provider": "local", "spec": {{"kind": "job", "cluster": "cluster.c", "num_nodes": 1, "resources": {{}}, "run": "{run_last}"}}}}
                }}}}"#
            )
        };
        let s = State::from_json(doc("first", "last").as_bytes()).unwrap();
        let addrs: Vec<String> = s.resources.keys().map(ToString::to_string).collect();
        assert_eq!(addrs, ["job.a", "job.b"]);
        let b = &s.resources[&"job.b".parse::<Address>().unwrap()];
        assert!(
            matches!(b.spec.as_ref(), Spec::Job(j) if j.run == "last"),
            "{:?}",
            b.spec
        );
        // No resources at all is an empty map.
        let empty = State::from_json(
            br#"{"format_version": 1, "skyform_version": "0", "lineage": "l", "serial": 1}"#,
        )
        .unwrap();
        assert!(empty.resources.is_empty());
    }
}

/// Serde for a shared `Spec`, written as the spec itself (serde's own `Arc` support needs a
/// feature of serde that would rebuild every dependency).
pub mod shared_spec {
    use crate::model::Spec;
    use serde::{Deserialize, Deserializer, Serialize, Serializer};
    use std::sync::Arc;

    pub fn serialize<S: Serializer>(spec: &Arc<Spec>, s: S) -> Result<S::Ok, S::Error> {
        spec.as_ref().serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Arc<Spec>, D::Error> {
        Spec::deserialize(d).map(Arc::new)
    }

    /// The same for an optional one.
    pub mod option {
        use super::*;

        pub fn serialize<S: Serializer>(spec: &Option<Arc<Spec>>, s: S) -> Result<S::Ok, S::Error> {
            spec.as_deref().serialize(s)
        }

        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Arc<Spec>>, D::Error> {
            Option::<Spec>::deserialize(d).map(|o| o.map(Arc::new))
        }
    }
}
