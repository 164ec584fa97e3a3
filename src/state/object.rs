//! State in an object store (S3, GCS, Azure Blob, or any `object_store` backend).
//!
//! Two objects: the state at `key` and the lock at `key.lock`. The lock is created with
//! create-if-absent (or, once released, claimed by a write conditional on the released
//! version), so of many clients exactly one gets it. Every state write is
//! conditional on the ETag this client last read or wrote: a writer that lost its lock, or
//! ran with `-lock=false`, cannot overwrite a newer state — its write fails with
//! [`StateError::Conflict`] and the caller keeps its copy (see `docs/state.md`).

use super::{LockInfo, State, StateError, StateStore};
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutPayload, UpdateVersion};
use std::sync::{Arc, Mutex};

/// What this client knows of the state object's version.
#[derive(Debug, Clone, PartialEq)]
enum Seen {
    /// Never read: the first write must create the object.
    Unknown,
    /// Read and found absent.
    Absent,
    /// Read or written at this version.
    At(UpdateVersion),
}

/// What the lock object holds once released (a conditional write, so no delete is needed).
const RELEASED: &[u8] = b"released\n";

#[derive(Debug)]
pub struct ObjectStateStore {
    store: Arc<dyn ObjectStore>,
    url: String,
    key: Path,
    lock_key: Path,
    seen: Mutex<Seen>,
    codec: super::seal::Codec,
}

impl ObjectStateStore {
    /// A store keeping state at `key` in `store`; `url` names it in messages
    /// (`s3://bucket/key`).
    pub fn new(store: Arc<dyn ObjectStore>, url: String, key: &str) -> ObjectStateStore {
        ObjectStateStore {
            store,
            url,
            key: Path::from(key),
            lock_key: Path::from(format!("{key}.lock")),
            seen: Mutex::new(Seen::Unknown),
            codec: super::seal::Codec::default(),
        }
    }

    /// The object store underneath.
    pub fn raw(&self) -> Arc<dyn ObjectStore> {
        self.store.clone()
    }

    /// Encrypts the state document with the codec's key.
    pub fn with_codec(mut self, codec: super::seal::Codec) -> ObjectStateStore {
        self.codec = codec;
        self
    }

    fn remember(&self, seen: Seen) {
        if let Ok(mut s) = self.seen.lock() {
            *s = seen;
        }
    }

    fn seen(&self) -> Seen {
        self.seen.lock().map_or(Seen::Unknown, |s| s.clone())
    }

    fn remote(&self, what: &'static str, e: object_store::Error) -> StateError {
        StateError::Remote {
            what,
            url: self.url.clone(),
            message: e.to_string(),
        }
    }

    /// An object's bytes and the version they are at; None when it does not exist.
    async fn get(
        &self,
        path: &Path,
        what: &'static str,
    ) -> Result<Option<(bytes::Bytes, UpdateVersion)>, StateError> {
        match self.store.get(path).await {
            Ok(r) => {
                let version = UpdateVersion {
                    e_tag: r.meta.e_tag.clone(),
                    version: r.meta.version.clone(),
                };
                let bytes = r.bytes().await.map_err(|e| self.remote(what, e))?;
                Ok(Some((bytes, version)))
            }
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(self.remote(what, e)),
        }
    }

    /// Whether the state object now holds exactly `bytes`; if so, remembers its version.
    async fn holds(&self, bytes: &bytes::Bytes) -> Result<bool, StateError> {
        match self.get(&self.key, "read").await? {
            Some((now, version)) if now == *bytes => {
                self.remember(Seen::At(version));
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    async fn read_lock(&self) -> Result<Option<LockInfo>, StateError> {
        Ok(self.read_lock_versioned().await?.and_then(|(info, _)| info))
    }

    /// The lock object and its version, for conditional writes: None when there is no
    /// object, `(None, version)` when it says the lock was released.
    async fn read_lock_versioned(
        &self,
    ) -> Result<Option<(Option<LockInfo>, UpdateVersion)>, StateError> {
        let Some((bytes, version)) = self.get(&self.lock_key, "read lock").await? else {
            return Ok(None);
        };
        if bytes.as_ref() == RELEASED {
            return Ok(Some((None, version)));
        }
        serde_json::from_slice(&bytes)
            .map(|info| Some((Some(info), version)))
            .map_err(|e| StateError::Corrupt(format!("lock {}.lock: {e}", self.url)))
    }

    /// Writes `body` over the lock object only if it is still at `version`; false when it
    /// changed meanwhile (or is gone).
    async fn put_lock_over(&self, version: UpdateVersion, body: &[u8]) -> Result<bool, StateError> {
        let payload = PutPayload::from(body.to_vec());
        match self
            .store
            .put_opts(&self.lock_key, payload, PutMode::Update(version).into())
            .await
        {
            Ok(_) => Ok(true),
            Err(
                object_store::Error::Precondition { .. } | object_store::Error::NotFound { .. },
            ) => Ok(false),
            Err(e) => Err(self.remote("lock", e)),
        }
    }

    /// Replaces a stale lock with ours, only if it is still that lock (If-Match): of two
    /// processes finding the same stale lock, one takes it over.
    async fn take_over(
        &self,
        stale: &LockInfo,
        version: UpdateVersion,
        body: &[u8],
    ) -> Result<bool, StateError> {
        let taken = self.put_lock_over(version, body).await?;
        if taken {
            eprintln!(
                "warning: took over the lock {} of skyform process {} ({}), which no longer runs",
                stale.id, stale.pid, stale.operation
            );
        }
        Ok(taken)
    }
}

#[async_trait::async_trait]
impl StateStore for ObjectStateStore {
    fn describe(&self) -> String {
        self.url.clone()
    }

    async fn read(&self) -> Result<Option<State>, StateError> {
        let Some((bytes, version)) = self.get(&self.key, "read").await? else {
            self.remember(Seen::Absent);
            return Ok(None);
        };
        let state = self.codec.decode(&bytes, &self.url)?;
        self.remember(Seen::At(version));
        Ok(Some(state))
    }

    async fn write(&self, state: &State) -> Result<(), StateError> {
        let mode = match self.seen() {
            Seen::At(v) => PutMode::Update(v),
            Seen::Absent | Seen::Unknown => PutMode::Create,
        };
        let payload_bytes = bytes::Bytes::from(self.codec.encode(state)?);
        let payload = PutPayload::from(payload_bytes.clone());
        match self.store.put_opts(&self.key, payload, mode.into()).await {
            Ok(r) => {
                self.remember(Seen::At(UpdateVersion {
                    e_tag: r.e_tag,
                    version: r.version,
                }));
                Ok(())
            }
            Err(
                object_store::Error::Precondition { .. }
                | object_store::Error::AlreadyExists { .. },
            ) => {
                // A retried request whose first attempt landed (its answer lost on the way
                // back) also fails its condition: then the object holds exactly our bytes.
                if self.holds(&payload_bytes).await? {
                    return Ok(());
                }
                Err(StateError::Conflict {
                    url: self.url.clone(),
                })
            }
            Err(e) => Err(self.remote("write", e)),
        }
    }

    async fn lock(&self, info: &LockInfo) -> Result<(), StateError> {
        let body = serde_json::to_vec_pretty(info).expect("a lock serializes");
        // The holder may release between our create and our read: then try again.
        for _ in 0..3 {
            let payload = PutPayload::from(body.clone());
            match self
                .store
                .put_opts(&self.lock_key, payload, PutMode::Create.into())
                .await
            {
                Ok(_) => return Ok(()),
                Err(
                    object_store::Error::AlreadyExists { .. }
                    | object_store::Error::Precondition { .. },
                ) => {
                    match self.read_lock_versioned().await? {
                        // Our own create, retried after its answer was lost.
                        Some((Some(holder), _)) if holder.id == info.id => return Ok(()),
                        Some((Some(holder), version)) if super::is_stale(&holder, info) => {
                            // Lost the race to another process taking it over: look again.
                            let taken = self.take_over(&holder, version, &body).await?;
                            if taken {
                                return Ok(());
                            }
                        }
                        Some((Some(holder), _)) => {
                            return Err(StateError::Locked(Box::new(holder)));
                        }
                        // Released: ours if no one claims it first.
                        Some((None, version))
                            if self.put_lock_over(version.clone(), &body).await? =>
                        {
                            return Ok(());
                        }
                        Some((None, _)) | None => {}
                    }
                }
                Err(e) => return Err(self.remote("lock", e)),
            }
        }
        Err(StateError::Remote {
            what: "lock",
            url: self.url.clone(),
            message: "the lock object kept appearing and vanishing".into(),
        })
    }

    /// Marks the lock released by a write conditional on the version read, never a delete:
    /// a delete retried after its answer was lost could remove the lock another process
    /// took in between.
    async fn unlock(&self, id: &str) -> Result<(), StateError> {
        match self.read_lock_versioned().await? {
            Some((Some(h), version)) if h.id == id => {
                // False: it changed since the read — our own release retried after landing,
                // or a takeover; either way it is not ours any more.
                self.put_lock_over(version, RELEASED).await?;
                Ok(())
            }
            other => Err(StateError::WrongLock {
                given: id.to_string(),
                held: other.and_then(|(h, _)| h).map(|h| h.id),
            }),
        }
    }

    async fn lock_holder(&self) -> Result<Option<LockInfo>, StateError> {
        self.read_lock().await
    }

    async fn remove(&self) -> Result<(), StateError> {
        match self.store.delete(&self.key).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => {
                self.remember(Seen::Absent);
                Ok(())
            }
            Err(e) => Err(self.remote("delete", e)),
        }
    }

    async fn workspaces(&self) -> Result<Vec<String>, StateError> {
        use futures::TryStreamExt;
        let key = self.key.as_ref();
        let (dir, file) = key.rsplit_once('/').map_or(("", key), |(d, f)| (d, f));
        let prefix = if dir.is_empty() {
            "workspaces".to_string()
        } else {
            format!("{dir}/workspaces")
        };
        let listed: Vec<object_store::ObjectMeta> = self
            .store
            .list(Some(&Path::from(prefix.as_str())))
            .try_collect()
            .await
            .map_err(|e| self.remote("list", e))?;
        let mut names: Vec<String> = listed
            .iter()
            .filter_map(|m| {
                let rest = m
                    .location
                    .as_ref()
                    .strip_prefix(&prefix)?
                    .strip_prefix('/')?;
                let (ws, f) = rest.split_once('/')?;
                (f == file).then(|| ws.to_string())
            })
            .collect();
        names.sort();
        names.dedup();
        Ok(names)
    }

    async fn read_side(&self, name: &str) -> Result<Option<(Vec<u8>, String)>, StateError> {
        let key = Path::from(format!("{}.{name}", self.key));
        Ok(self
            .get(&key, "read")
            .await?
            .map(|(bytes, v)| (bytes.to_vec(), version_text(&v))))
    }

    async fn write_side(
        &self,
        name: &str,
        bytes: &[u8],
        expect: Option<&str>,
    ) -> Result<String, StateError> {
        let key = Path::from(format!("{}.{name}", self.key));
        let mode = match expect {
            Some(v) => PutMode::Update(version_of(v)),
            None => PutMode::Create,
        };
        let payload = PutPayload::from(bytes.to_vec());
        match self.store.put_opts(&key, payload, mode.into()).await {
            Ok(r) => Ok(version_text(&UpdateVersion {
                e_tag: r.e_tag,
                version: r.version,
            })),
            Err(
                object_store::Error::Precondition { .. }
                | object_store::Error::AlreadyExists { .. }
                | object_store::Error::NotFound { .. },
            ) => {
                // A retried request whose first attempt landed also fails its condition:
                // then the object holds exactly our bytes, and the write happened.
                if let Some((now, v)) = self.get(&key, "read").await?
                    && now.as_ref() == bytes
                {
                    return Ok(version_text(&v));
                }
                Err(StateError::Conflict {
                    url: format!("{}.{name}", self.url),
                })
            }
            Err(e) => Err(self.remote("write", e)),
        }
    }
}

/// Opens the store a `state "KIND" { … }` block names. Credentials come from each cloud's
/// usual environment (`AWS_*`, `GOOGLE_*`, `AZURE_*`).
pub fn open(
    kind: &str,
    settings: &std::collections::BTreeMap<String, String>,
) -> Result<ObjectStateStore, String> {
    let get = |k: &str| settings.get(k).map(String::as_str);
    let need = |k: &str| get(k).ok_or_else(|| format!("state \"{kind}\" needs `{k}`"));
    let allowed: &[&str] = match kind {
        "s3" => &[
            "bucket",
            "key",
            "region",
            "endpoint",
            "profile",
            "encryption_key_env",
        ],
        "gcs" => &["bucket", "key", "encryption_key_env"],
        "azure" => &["container", "account", "key", "encryption_key_env"],
        _ => &[],
    };
    if let Some(k) = settings
        .keys()
        .find(|k| !allowed.contains(&k.as_str()) && !allowed.is_empty())
    {
        return Err(format!(
            "`{k}` is not a setting of state \"{kind}\" in this build (it takes {}); credentials come from the environment",
            allowed.join(", ")
        ));
    }
    let key = get("key")
        .unwrap_or("skyform/state.json")
        .trim_start_matches('/')
        .to_string();
    let (store, url): (Arc<dyn ObjectStore>, String) = match kind {
        "s3" => {
            let bucket = need("bucket")?;
            let mut b = object_store::aws::AmazonS3Builder::from_env().with_bucket_name(bucket);
            if let Some(p) = aws_profile(get("profile"))? {
                b = b
                    .with_access_key_id(p.access_key_id)
                    .with_secret_access_key(p.secret_access_key);
                if let Some(t) = p.session_token {
                    b = b.with_token(t);
                }
                if let Some(r) = p.region {
                    b = b.with_region(r);
                }
            }
            if let Some(r) = get("region") {
                b = b.with_region(r);
            }
            if let Some(e) = get("endpoint") {
                b = b
                    .with_endpoint(e)
                    .with_allow_http(e.starts_with("http://"))
                    .with_virtual_hosted_style_request(false);
            }
            let s = b.build().map_err(|e| e.to_string())?;
            (Arc::new(s), format!("s3://{bucket}/{key}"))
        }
        "gcs" => {
            let bucket = need("bucket")?;
            let s = object_store::gcp::GoogleCloudStorageBuilder::from_env()
                .with_bucket_name(bucket)
                .build()
                .map_err(|e| e.to_string())?;
            (Arc::new(s), format!("gs://{bucket}/{key}"))
        }
        "azure" => {
            let container = need("container")?;
            let mut b = object_store::azure::MicrosoftAzureBuilder::from_env()
                .with_container_name(container);
            if let Some(a) = get("account") {
                b = b.with_account(a);
            }
            let s = b.build().map_err(|e| e.to_string())?;
            (Arc::new(s), format!("azure://{container}/{key}"))
        }
        other => {
            return Err(format!(
                "unknown state backend {other:?} (local, s3, gcs, azure)"
            ));
        }
    };
    Ok(ObjectStateStore::new(store, url, &key))
}

/// Keys from an AWS shared credentials file.
#[derive(Debug, PartialEq)]
struct AwsProfile {
    access_key_id: String,
    secret_access_key: String,
    session_token: Option<String>,
    region: Option<String>,
}

/// The AWS credential chain's profile step: a `profile` in the block, or (when the
/// environment has no keys) `$AWS_PROFILE` or `default`, read from
/// `$AWS_SHARED_CREDENTIALS_FILE` (`~/.aws/credentials`) and `$AWS_CONFIG_FILE`
/// (`~/.aws/config`, for the region). None: leave it to the environment and instance roles.
fn aws_profile(explicit: Option<&str>) -> Result<Option<AwsProfile>, String> {
    let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    if explicit.is_none() && env("AWS_ACCESS_KEY_ID").is_some() {
        return Ok(None);
    }
    let name = explicit
        .map(String::from)
        .or_else(|| env("AWS_PROFILE"))
        .unwrap_or_else(|| "default".into());
    let home = env("HOME").unwrap_or_default();
    let creds_path =
        env("AWS_SHARED_CREDENTIALS_FILE").unwrap_or(format!("{home}/.aws/credentials"));
    let config_path = env("AWS_CONFIG_FILE").unwrap_or(format!("{home}/.aws/config"));
    let creds = std::fs::read_to_string(&creds_path).unwrap_or_default();
    let config = std::fs::read_to_string(&config_path).unwrap_or_default();
    match parse_aws_profile(&creds, &config, &name) {
        Some(p) => Ok(Some(p)),
        None if explicit.is_some() => Err(format!(
            "profile {name:?} has no aws_access_key_id and aws_secret_access_key in {creds_path}"
        )),
        None => Ok(None),
    }
}

/// Reads profile `name` from the text of a credentials file and a config file (INI).
fn parse_aws_profile(creds: &str, config: &str, name: &str) -> Option<AwsProfile> {
    fn section<'a>(text: &'a str, header: &str) -> Vec<(&'a str, &'a str)> {
        let mut inside = false;
        let mut out = Vec::new();
        for line in text.lines().map(str::trim) {
            if line.starts_with('[') {
                inside = line.trim_start_matches('[').trim_end_matches(']').trim() == header;
            } else if inside && let Some((k, v)) = line.split_once('=') {
                out.push((k.trim(), v.trim()));
            }
        }
        out
    }
    let get = |pairs: &[(&str, &str)], k: &str| {
        pairs
            .iter()
            .find(|(key, _)| *key == k)
            .map(|(_, v)| v.to_string())
    };
    let c = section(creds, name);
    let conf_header = if name == "default" {
        "default".to_string()
    } else {
        format!("profile {name}")
    };
    let conf = section(config, &conf_header);
    Some(AwsProfile {
        access_key_id: get(&c, "aws_access_key_id")?,
        secret_access_key: get(&c, "aws_secret_access_key")?,
        session_token: get(&c, "aws_session_token"),
        region: get(&conf, "region").or_else(|| get(&c, "region")),
    })
}

/// An object's version as one opaque string (its ETag and, where the store has them, its
/// version id), and back.
fn version_text(v: &UpdateVersion) -> String {
    format!(
        "{}\n{}",
        v.e_tag.as_deref().unwrap_or(""),
        v.version.as_deref().unwrap_or("")
    )
}

fn version_of(text: &str) -> UpdateVersion {
    let (e_tag, version) = text.split_once('\n').unwrap_or((text, ""));
    let some = |s: &str| (!s.is_empty()).then(|| s.to_string());
    UpdateVersion {
        e_tag: some(e_tag),
        version: some(version),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn memory() -> (Arc<dyn ObjectStore>, impl Fn() -> ObjectStateStore) {
        let backing: Arc<dyn ObjectStore> = Arc::new(object_store::memory::InMemory::new());
        let b = backing.clone();
        (backing, move || {
            ObjectStateStore::new(b.clone(), "memory://state.json".into(), "state.json")
        })
    }

    #[test]
    fn aws_profiles_are_read_from_the_shared_files() {
        let creds = "[default]\naws_access_key_id = AK1\naws_secret_access_key = S1\n\n[team]\naws_access_key_id=AK2\naws_secret_access_key=S2\naws_session_token = T2\n";
        let config = "[default]\nregion = us-east-1\n[profile team]\nregion = eu-west-1\n";
        let team = parse_aws_profile(creds, config, "team").unwrap();
        assert_eq!(
            team,
            AwsProfile {
                access_key_id: "AK2".into(),
                secret_access_key: "S2".into(),
                session_token: Some("T2".into()),
                region: Some("eu-west-1".into()),
            }
        );
        let default = parse_aws_profile(creds, config, "default").unwrap();
        assert_eq!(
            (default.access_key_id.as_str(), default.region.as_deref()),
            ("AK1", Some("us-east-1"))
        );
        assert!(parse_aws_profile(creds, config, "nope").is_none());
    }

    #[tokio::test]
    async fn conforms_over_in_memory_objects() {
        let (_, make) = memory();
        super::super::conformance::run(&make()).await;
        super::super::conformance::run_shared(&make).await;
    }

    #[test]
    fn open_needs_a_bucket_and_names_it() {
        let err = open("s3", &Default::default()).unwrap_err();
        assert!(err.contains("needs `bucket`"), "{err}");
        let mut s = std::collections::BTreeMap::new();
        s.insert("bucket".to_string(), "b".to_string());
        s.insert("region".to_string(), "us-east-1".to_string());
        s.insert("key".to_string(), "team/prod.json".to_string());
        assert_eq!(open("s3", &s).unwrap().describe(), "s3://b/team/prod.json");
        let mut g = s.clone();
        g.remove("region");
        assert_eq!(open("gcs", &g).unwrap().describe(), "gs://b/team/prod.json");
        assert!(
            open("ftp", &s)
                .unwrap_err()
                .contains("unknown state backend")
        );
    }
}
