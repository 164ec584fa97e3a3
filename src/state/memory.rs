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
}
