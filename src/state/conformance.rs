//! The behaviour every state store must have. Each store's tests call [`run`].

use super::{LockInfo, State, StateError, StateStore, lock_with_timeout};
use std::sync::Arc;
use std::time::Duration;

/// Runs the whole suite against an empty store.
pub async fn run(store: &dyn StateStore) {
    read_write(store).await;
    lock_contention(store).await;
    lock_timeout_waits_for_release(store).await;
}

async fn read_write(store: &dyn StateStore) {
    assert!(
        store.read().await.expect("read").is_none(),
        "a new store is empty"
    );
    let mut s = State::new();
    s.serial = 3;
    store.write(&s).await.expect("write");
    assert_eq!(store.read().await.expect("read").as_ref(), Some(&s));
    s.serial = 4;
    store.write(&s).await.expect("overwrite");
    assert_eq!(store.read().await.expect("read").map(|x| x.serial), Some(4));
}

async fn lock_contention(store: &dyn StateStore) {
    let a = LockInfo::new("apply");
    let b = LockInfo::new("plan");
    store.lock(&a).await.expect("first lock");
    match store.lock(&b).await {
        Err(StateError::Locked(h)) => {
            assert_eq!(h.id, a.id, "contention names the holder");
            assert_eq!(h.operation, "apply");
        }
        other => panic!("expected contention, got {other:?}"),
    }
    assert_eq!(
        store.lock_holder().await.expect("holder").map(|h| h.id),
        Some(a.id.clone())
    );
    assert!(
        matches!(store.unlock(&b.id).await, Err(StateError::WrongLock { .. })),
        "only the holder unlocks"
    );
    store.unlock(&a.id).await.expect("unlock");
    assert!(store.lock_holder().await.expect("holder").is_none());
}

async fn lock_timeout_waits_for_release(store: &dyn StateStore) {
    let a = LockInfo::new("apply");
    store.lock(&a).await.expect("lock");
    // Without a timeout: fails at once.
    let b = LockInfo::new("apply");
    assert!(matches!(
        lock_with_timeout(store, &b, Duration::ZERO).await,
        Err(StateError::Locked(_))
    ));
    // With one: succeeds once the holder lets go.
    let id = a.id.clone();
    let released = Arc::new(tokio::sync::Notify::new());
    let waiter = async {
        lock_with_timeout(store, &b, Duration::from_secs(5))
            .await
            .expect("lock after release");
    };
    let releaser = async {
        tokio::time::sleep(Duration::from_millis(200)).await;
        store.unlock(&id).await.expect("release");
        released.notify_one();
    };
    tokio::join!(waiter, releaser);
    assert_eq!(
        store.lock_holder().await.expect("holder").map(|h| h.id),
        Some(b.id.clone())
    );
    store.unlock(&b.id).await.expect("unlock");
}

#[cfg(test)]
mod tests {
    #[tokio::test]
    async fn memory_store_conforms() {
        super::run(&crate::state::MemoryStore::new()).await;
    }
}
