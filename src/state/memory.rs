//! An in-memory state store: for tests of the engine, and the reference the conformance
//! suite holds every store to. It records each write, so tests can check the serials.

use super::{LockInfo, State, StateError, StateStore};
use std::sync::Mutex;

#[derive(Debug, Default)]
pub struct MemoryStore {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    state: Option<State>,
    lock: Option<LockInfo>,
    /// Every state written, in order.
    history: Vec<State>,
    /// Side documents and their versions (a counter).
    sides: std::collections::BTreeMap<String, (Vec<u8>, u64)>,
}

impl MemoryStore {
    pub fn new() -> MemoryStore {
        MemoryStore::default()
    }

    /// Every state written so far, oldest first.
    pub fn history(&self) -> Vec<State> {
        self.inner
            .lock()
            .map(|i| i.history.clone())
            .unwrap_or_default()
    }
}

#[async_trait::async_trait]
impl StateStore for MemoryStore {
    fn describe(&self) -> String {
        "memory".into()
    }

    async fn read(&self) -> Result<Option<State>, StateError> {
        Ok(self
            .inner
            .lock()
            .map_err(|_| StateError::Corrupt("poisoned".into()))?
            .state
            .clone())
    }

    async fn write(&self, state: &State) -> Result<(), StateError> {
        let mut i = self
            .inner
            .lock()
            .map_err(|_| StateError::Corrupt("poisoned".into()))?;
        i.state = Some(state.clone());
        i.history.push(state.clone());
        Ok(())
    }

    async fn lock(&self, info: &LockInfo) -> Result<(), StateError> {
        let mut i = self
            .inner
            .lock()
            .map_err(|_| StateError::Corrupt("poisoned".into()))?;
        match &i.lock {
            Some(h) => Err(StateError::Locked(Box::new(h.clone()))),
            None => {
                i.lock = Some(info.clone());
                Ok(())
            }
        }
    }

    async fn unlock(&self, id: &str) -> Result<(), StateError> {
        let mut i = self
            .inner
            .lock()
            .map_err(|_| StateError::Corrupt("poisoned".into()))?;
        match &i.lock {
            Some(h) if h.id == id => {
                i.lock = None;
                Ok(())
            }
            other => Err(StateError::WrongLock {
                given: id.to_string(),
                held: other.as_ref().map(|h| h.id.clone()),
            }),
        }
    }

    async fn remove(&self) -> Result<(), StateError> {
        self.inner
            .lock()
            .map_err(|_| StateError::Corrupt("poisoned".into()))?
            .state = None;
        Ok(())
    }

    async fn workspaces(&self) -> Result<Vec<String>, StateError> {
        Ok(Vec::new())
    }

    async fn lock_holder(&self) -> Result<Option<LockInfo>, StateError> {
        Ok(self
            .inner
            .lock()
            .map_err(|_| StateError::Corrupt("poisoned".into()))?
            .lock
            .clone())
    }

    async fn read_side(&self, name: &str) -> Result<Option<(Vec<u8>, String)>, StateError> {
        let i = self
            .inner
            .lock()
            .map_err(|_| StateError::Corrupt("poisoned".into()))?;
        Ok(i.sides.get(name).map(|(b, v)| (b.clone(), v.to_string())))
    }

    async fn write_side(
        &self,
        name: &str,
        bytes: &[u8],
        expect: Option<&str>,
    ) -> Result<String, StateError> {
        let mut i = self
            .inner
            .lock()
            .map_err(|_| StateError::Corrupt("poisoned".into()))?;
        let now = i.sides.get(name).map(|(_, v)| v.to_string());
        if now.as_deref() != expect {
            return Err(StateError::Conflict {
                url: format!("memory:{name}"),
            });
        }
        let version = i.sides.get(name).map_or(1, |(_, v)| v + 1);
        i.sides.insert(name.to_string(), (bytes.to_vec(), version));
        Ok(version.to_string())
    }
}
