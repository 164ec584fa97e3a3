//! The local state store: a JSON file written by temp file + fsync + rename (mode 0600), and a
//! lock file created exclusively next to it.

use super::{LockInfo, State, StateError, StateStore};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone)]
pub struct LocalStore {
    path: PathBuf,
}

impl LocalStore {
    pub fn new(path: impl Into<PathBuf>) -> LocalStore {
        LocalStore { path: path.into() }
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

/// A lock taken on this host by a process that is gone.
fn is_stale(holder: &LockInfo, me: &LockInfo) -> bool {
    holder.who == me.who
        && holder.pid != 0
        && holder.pid != me.pid
        && !crate::runtime::proc::alive(holder.pid, None)
}

#[async_trait::async_trait]
impl StateStore for LocalStore {
    fn describe(&self) -> String {
        self.path.display().to_string()
    }

    async fn read(&self) -> Result<Option<State>, StateError> {
        match std::fs::read(&self.path) {
            Ok(bytes) => State::from_json(&bytes).map(Some),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Self::io("cannot read", &self.path)(e)),
        }
    }

    async fn write(&self, state: &State) -> Result<(), StateError> {
        self.ensure_dir()?;
        Self::write_atomic(&self.path, &state.to_json())
    }

    async fn lock(&self, info: &LockInfo) -> Result<(), StateError> {
        self.ensure_dir()?;
        let path = self.lock_path();
        let body = serde_json::to_vec_pretty(info).unwrap_or_default();
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
        {
            Ok(mut f) => {
                f.write_all(&body)
                    .and_then(|()| f.sync_all())
                    .map_err(Self::io("cannot write lock", &path))?;
                Ok(())
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                // The holder may be between creating and filling the file: read again briefly.
                for _ in 0..20 {
                    if let Some(holder) = self.lock_holder().await? {
                        if is_stale(&holder, info) {
                            // A skyform on this machine died holding the lock (kill -9, power
                            // loss): nothing can be running under it, so take it over.
                            eprintln!(
                                "warning: removing the lock {} of skyform process {} ({}), which no longer runs",
                                holder.id, holder.pid, holder.operation
                            );
                            let _ = std::fs::remove_file(&path);
                            return Box::pin(self.lock(info)).await;
                        }
                        return Err(StateError::Locked(Box::new(holder)));
                    }
                    if !path.exists() {
                        // Released between our attempts: try again from the top.
                        return Box::pin(self.lock(info)).await;
                    }
                    tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                }
                Err(StateError::Locked(Box::new(LockInfo {
                    id: "unknown".into(),
                    who: "unknown (empty lock file)".into(),
                    operation: "unknown".into(),
                    created: "unknown".into(),
                    version: String::new(),
                    pid: 0,
                })))
            }
            Err(e) => Err(Self::io("cannot create lock", &path)(e)),
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
            None if !path.exists() => Err(StateError::WrongLock {
                given: id.to_string(),
                held: None,
            }),
            None => std::fs::remove_file(&path).map_err(Self::io("cannot remove lock", &path)),
        }
    }

    async fn lock_holder(&self) -> Result<Option<LockInfo>, StateError> {
        let path = self.lock_path();
        match std::fs::read(&path) {
            Ok(bytes) if bytes.is_empty() => Ok(None),
            Ok(bytes) => Ok(serde_json::from_slice(&bytes).ok()),
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
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(store.path())
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600, "the state file is private");
    }
}
