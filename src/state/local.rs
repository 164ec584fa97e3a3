//! The local state store: a JSON file written by temp file + fsync + rename (mode 0600), and a
//! lock file created exclusively next to it.

use super::{LockInfo, ResourceState, State, StateError, StateStore};
use crate::model::Address;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// The local store keeps the state as one JSON document, plus a journal next to it
/// (`state.json.journal`) of changes since that document was written: one JSON line per
/// change, appended and fsync'd. Reads replay the journal; a full write replaces both. A
/// change therefore costs the size of the change, not of the state, and the whole document is
/// rewritten once the journal holds about half as many entries as the state has resources.
#[derive(Debug)]
pub struct LocalStore {
    path: PathBuf,
    /// Journal lines written since the last full write.
    journaled: std::sync::atomic::AtomicUsize,
    codec: super::seal::Codec,
}

impl Clone for LocalStore {
    fn clone(&self) -> Self {
        LocalStore::new(self.path.clone()).with_codec(self.codec.clone())
    }
}

/// One journal line: the resources changed (None = removed) and the serial it brings.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct JournalEntry {
    lineage: String,
    serial: u64,
    changes: Vec<(Address, Option<ResourceState>)>,
}

impl LocalStore {
    pub fn new(path: impl Into<PathBuf>) -> LocalStore {
        LocalStore {
            path: path.into(),
            journaled: std::sync::atomic::AtomicUsize::new(0),
            codec: super::seal::Codec::default(),
        }
    }

    /// Encrypts the document (an encrypted store keeps no journal: it would hold plaintext).
    pub fn with_codec(mut self, codec: super::seal::Codec) -> LocalStore {
        self.codec = codec;
        self
    }

    fn journal_path(&self) -> PathBuf {
        let mut p = self.path.clone().into_os_string();
        p.push(".journal");
        PathBuf::from(p)
    }

    /// Reads the state document and replays the journal over it.
    pub fn load(&self) -> Result<Option<State>, StateError> {
        // A plaintext document is read as it streams in: a large state's text is not held
        // beside the state it becomes.
        match std::fs::File::open(&self.path) {
            Ok(file) => {
                let mut reader = std::io::BufReader::with_capacity(1 << 16, file);
                let head = std::io::BufRead::fill_buf(&mut reader)
                    .map_err(Self::io("cannot read", &self.path))?;
                if self.codec.reads_as_plaintext(head)
                    && let Ok(mut state) = State::from_reader(reader)
                {
                    self.replay(&mut state)?;
                    return Ok(Some(state));
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(_) => {}
        }
        // Sealed, or not a state: read whole, which also says what is wrong.
        match std::fs::read(&self.path) {
            Ok(bytes) => {
                let mut state = self
                    .codec
                    .decode(&bytes, &self.path.display().to_string())?;
                self.replay(&mut state)?;
                Ok(Some(state))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Self::io("cannot read", &self.path)(e)),
        }
    }

    fn store_full(&self, state: &State) -> Result<(), StateError> {
        self.ensure_dir()?;
        // Keep the previous document as a backup, without a moment when there is no state.
        let backup = with_suffix(&self.path, ".backup");
        if self.codec.encrypts() && !super::seal::is_sealed_file(&self.path) {
            // Encrypting a plaintext state: its plaintext must not live on as the backup.
            let _ = std::fs::remove_file(&backup);
        } else if self.path.exists() {
            let staging = with_suffix(&self.path, ".backup.tmp");
            let _ = std::fs::remove_file(&staging);
            if std::fs::hard_link(&self.path, &staging).is_ok() {
                let _ = std::fs::rename(&staging, &backup);
            }
        }
        Self::write_atomic(&self.path, &self.codec.encode(state)?)?;
        // Everything the journal held is in the document now.
        match std::fs::remove_file(self.journal_path()) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(Self::io("cannot remove", &self.journal_path())(e)),
        }
        self.journaled.store(0, std::sync::atomic::Ordering::SeqCst);
        Ok(())
    }

    fn append(&self, state: &State, changed: &[Address]) -> Result<(), StateError> {
        let n = self.journaled.load(std::sync::atomic::Ordering::SeqCst);
        if !self.path.exists() || n >= (state.resources.len() / 2).max(32) {
            return self.store_full(state);
        }
        let entry = JournalEntry {
            lineage: state.lineage.clone(),
            serial: state.serial,
            changes: changed
                .iter()
                .map(|a| (a.clone(), state.resources.get(a).cloned()))
                .collect(),
        };
        let mut line =
            serde_json::to_vec(&entry).map_err(|e| StateError::Corrupt(e.to_string()))?;
        line.push(b'\n');
        let path = self.journal_path();
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(&path)
            .map_err(Self::io("cannot open", &path))?;
        f.write_all(&line)
            .and_then(|()| f.sync_data())
            .map_err(Self::io("cannot write", &path))?;
        self.journaled
            .store(n + 1, std::sync::atomic::Ordering::SeqCst);
        Ok(())
    }

    /// Applies the journal's complete lines that follow `state`'s serial, in order.
    fn replay(&self, state: &mut State) -> Result<(), StateError> {
        let bytes = match std::fs::read(self.journal_path()) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(Self::io("cannot read", &self.journal_path())(e)),
        };
        for line in bytes.split(|b| *b == b'\n') {
            // A line cut short by a crash does not parse: it and anything after it are ignored.
            let Ok(entry) = serde_json::from_slice::<JournalEntry>(line) else {
                break;
            };
            if entry.lineage != state.lineage || entry.serial <= state.serial {
                continue;
            }
            for (addr, res) in entry.changes {
                match res {
                    Some(r) => {
                        state.resources.insert(addr, r);
                    }
                    None => {
                        state.resources.remove(&addr);
                    }
                }
            }
            state.serial = entry.serial;
        }
        Ok(())
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn lock_path(&self) -> PathBuf {
        let mut p = self.path.clone().into_os_string();
        p.push(".lock");
        PathBuf::from(p)
    }

    fn io<'p>(
        what: &'static str,
        path: &'p Path,
    ) -> impl FnOnce(std::io::Error) -> StateError + 'p {
        move |source| StateError::Io {
            what,
            path: path.display().to_string(),
            source,
        }
    }

    fn ensure_dir(&self) -> Result<(), StateError> {
        if let Some(dir) = self.path.parent()
            && !dir.as_os_str().is_empty()
        {
            std::fs::create_dir_all(dir).map_err(Self::io("cannot create", dir))?;
        }
        Ok(())
    }

    /// Writes `bytes` to `path` atomically with mode 0600.
    pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), StateError> {
        let dir = path.parent().unwrap_or(Path::new("."));
        let tmp = dir.join(format!(
            ".{}.tmp-{}-{}",
            path.file_name()
                .map(|n| n.to_string_lossy().to_string())
                .unwrap_or_default(),
            std::process::id(),
            uuid::Uuid::new_v4().simple()
        ));
        let result = (|| {
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&tmp)?;
            f.write_all(bytes)?;
            f.sync_all()?;
            std::fs::rename(&tmp, path)?;
            if let Ok(d) = std::fs::File::open(dir) {
                d.sync_all()?;
            }
            Ok(())
        })();
        if result.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        result.map_err(Self::io("cannot write", path))
    }
}

/// The id reported for a lock file that cannot be read (`force-unlock unknown` removes it).
const UNREADABLE: &str = "unknown";

impl LocalStore {
    /// Removes a stale lock, once: a `.break` file created exclusively makes sure that of two
    /// processes finding the same stale lock, only one removes it (and not the other's new one).
    fn break_stale_lock(&self, stale: &LockInfo) -> Result<bool, StateError> {
        let path = self.lock_path();
        let breaker = with_suffix(&path, ".break");
        if std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&breaker)
            .is_err()
        {
            return Ok(false);
        }
        let still_same = std::fs::read(&path)
            .ok()
            .and_then(|b| serde_json::from_slice::<LockInfo>(&b).ok())
            .is_some_and(|h| h.id == stale.id);
        if still_same {
            eprintln!(
                "warning: removing the lock {} of skyform process {} ({}), which no longer runs",
                stale.id, stale.pid, stale.operation
            );
            let _ = std::fs::remove_file(&path);
        }
        let _ = std::fs::remove_file(&breaker);
        Ok(still_same)
    }
}

/// The version of a side document: a hash of its bytes.
fn content_version(bytes: &[u8]) -> String {
    use sha2::Digest;
    let d = sha2::Sha256::digest(bytes);
    d.iter().take(16).map(|b| format!("{b:02x}")).collect()
}

fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut p = path.to_path_buf().into_os_string();
    p.push(suffix);
    PathBuf::from(p)
}

#[async_trait::async_trait]
impl StateStore for LocalStore {
    fn describe(&self) -> String {
        self.path.display().to_string()
    }

    async fn read(&self) -> Result<Option<State>, StateError> {
        self.load()
    }

    async fn write(&self, state: &State) -> Result<(), StateError> {
        self.store_full(state)
    }

    async fn remove(&self) -> Result<(), StateError> {
        for p in [
            self.path.clone(),
            self.journal_path(),
            with_suffix(&self.path, ".backup"),
        ] {
            match std::fs::remove_file(&p) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(Self::io("cannot remove", &p)(e)),
            }
        }
        Ok(())
    }

    async fn workspaces(&self) -> Result<Vec<String>, StateError> {
        let (Some(dir), Some(file)) = (self.path.parent(), self.path.file_name()) else {
            return Ok(Vec::new());
        };
        let mut names: Vec<String> = std::fs::read_dir(dir.join("workspaces"))
            .map(|rd| {
                rd.filter_map(Result::ok)
                    .filter(|e| e.path().join(file).exists())
                    .filter_map(|e| e.file_name().into_string().ok())
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        Ok(names)
    }

    async fn read_side(&self, name: &str) -> Result<Option<(Vec<u8>, String)>, StateError> {
        let path = with_suffix(&self.path, &format!(".{name}"));
        match std::fs::read(&path) {
            Ok(bytes) => {
                let version = content_version(&bytes);
                Ok(Some((bytes, version)))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Self::io("cannot read", &path)(e)),
        }
    }

    async fn write_side(
        &self,
        name: &str,
        bytes: &[u8],
        expect: Option<&str>,
    ) -> Result<String, StateError> {
        self.ensure_dir()?;
        let path = with_suffix(&self.path, &format!(".{name}"));
        // Compare and swap under an advisory lock held for the read and the rename only; the
        // version is the content's hash, so equal bytes are the same version.
        let guard_path = with_suffix(&path, ".cas");
        let guard = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(&guard_path)
            .map_err(Self::io("cannot open", &guard_path))?;
        guard.lock().map_err(Self::io("cannot lock", &guard_path))?;
        let now = match std::fs::read(&path) {
            Ok(b) => Some(content_version(&b)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(Self::io("cannot read", &path)(e)),
        };
        if now.as_deref() != expect {
            return Err(StateError::Conflict {
                url: path.display().to_string(),
            });
        }
        Self::write_atomic(&path, bytes)?;
        Ok(content_version(bytes))
    }

    async fn write_changes(&self, state: &State, changed: &[Address]) -> Result<(), StateError> {
        if self.codec.encrypts() {
            return self.store_full(state);
        }
        self.append(state, changed)
    }

    async fn lock(&self, info: &LockInfo) -> Result<(), StateError> {
        self.ensure_dir()?;
        let path = self.lock_path();
        let body = serde_json::to_vec_pretty(info).unwrap_or_default();
        let mut unreadable_since: Option<std::time::Instant> = None;
        loop {
            match std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&path)
            {
                Ok(mut f) => {
                    return f
                        .write_all(&body)
                        .and_then(|()| f.sync_all())
                        .map_err(Self::io("cannot write lock", &path));
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(Self::io("cannot create lock", &path)(e)),
            }
            let Some(holder) = self.lock_holder().await? else {
                // Released between our two looks: try again.
                continue;
            };
            if holder.id == UNREADABLE {
                // The holder may be between creating the file and filling it.
                let since = *unreadable_since.get_or_insert_with(std::time::Instant::now);
                if since.elapsed() < std::time::Duration::from_millis(500) {
                    tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                    continue;
                }
                return Err(StateError::Locked(Box::new(holder)));
            }
            if super::is_stale(&holder, info) && self.break_stale_lock(&holder)? {
                continue;
            }
            return Err(StateError::Locked(Box::new(holder)));
        }
    }

    async fn unlock(&self, id: &str) -> Result<(), StateError> {
        let path = self.lock_path();
        match self.lock_holder().await? {
            Some(h) if h.id == id => {
                std::fs::remove_file(&path).map_err(Self::io("cannot remove lock", &path))
            }
            Some(h) => Err(StateError::WrongLock {
                given: id.to_string(),
                held: Some(h.id),
            }),
            None => Err(StateError::WrongLock {
                given: id.to_string(),
                held: None,
            }),
        }
    }

    async fn lock_holder(&self) -> Result<Option<LockInfo>, StateError> {
        let path = self.lock_path();
        match std::fs::read(&path) {
            // A lock file that exists but cannot be read still holds the lock.
            Ok(bytes) => Ok(Some(serde_json::from_slice(&bytes).unwrap_or_else(|_| {
                LockInfo {
                    id: UNREADABLE.into(),
                    who: "unknown (the lock file is empty or unreadable)".into(),
                    operation: "unknown".into(),
                    created: "unknown".into(),
                    version: String::new(),
                    pid: 0,
                }
            }))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Self::io("cannot read lock", &path)(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn conformance() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::new(dir.path().join(".skyform/state.json"));
        crate::state::conformance::run(&store).await;
        // Local files have the lock and atomic rename, not conditional writes.
        let path = store.path().to_path_buf();
        crate::state::conformance::lock_race(&|| LocalStore::new(path.clone())).await;
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(store.path())
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600, "the state file is private");
    }

    #[tokio::test]
    async fn journal_replays_and_survives_a_torn_line() {
        use crate::model::{ClusterSpec, Kind, Spec};
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::new(dir.path().join("state.json"));
        let mut s = State::new();
        store.write(&s).await.unwrap();
        let res = |n: u32| {
            ResourceState::new(
                crate::state::Status::Ready,
                "local",
                Spec::Cluster(Box::new(ClusterSpec {
                    num_nodes: n,
                    ..ClusterSpec::default()
                }))
                .into(),
            )
        };
        let a = Address::new(Kind::Cluster, "a");
        let b = Address::new(Kind::Cluster, "b");
        for (i, addr) in [&a, &b].into_iter().enumerate() {
            s.resources.insert(addr.clone(), res(i as u32 + 1));
            s.serial += 1;
            store
                .write_changes(&s, std::slice::from_ref(addr))
                .await
                .unwrap();
        }
        s.resources.remove(&a);
        s.serial += 1;
        store
            .write_changes(&s, std::slice::from_ref(&a))
            .await
            .unwrap();
        assert!(
            store.journal_path().exists(),
            "small changes go to the journal"
        );
        assert_eq!(store.read().await.unwrap().unwrap(), s);
        // A crash in the middle of an append leaves a partial line: it is ignored.
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(store.journal_path())
            .unwrap();
        f.write_all(b"{\"lineage\":\"").unwrap();
        assert_eq!(store.read().await.unwrap().unwrap(), s);
        // A full write folds the journal into the document.
        store.write(&s).await.unwrap();
        assert!(!store.journal_path().exists());
        assert_eq!(store.read().await.unwrap().unwrap(), s);
    }
}
