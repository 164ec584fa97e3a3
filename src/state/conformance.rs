//! The behaviour every state store must have. Each store's tests call [`run`]; it is part
//! of the library (not `cfg(test)`) so the integration tests against real servers use it.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use super::{LockInfo, State, StateError, StateStore, lock_with_timeout};
use std::sync::Arc;
use std::time::Duration;

/// Runs the whole suite against an empty store.
pub async fn run(store: &dyn StateStore) {
    read_write(store).await;
    lock_contention(store).await;
    lock_timeout_waits_for_release(store).await;
    side_documents_swap(store).await;
}

/// A side document is written only over the version its writer read.
async fn side_documents_swap(store: &dyn StateStore) {
    assert!(store.read_side("book").await.expect("read").is_none());
    let v1 = store
        .write_side("book", b"one", None)
        .await
        .expect("create");
    assert!(
        matches!(
            store.write_side("book", b"again", None).await,
            Err(StateError::Conflict { .. })
        ),
        "a second create loses"
    );
    let (bytes, seen) = store.read_side("book").await.expect("read").expect("there");
    assert_eq!(
        (bytes.as_slice(), seen.as_str()),
        (&b"one"[..], v1.as_str())
    );
    let v2 = store
        .write_side("book", b"two", Some(&v1))
        .await
        .expect("update at the version read");
    assert!(
        matches!(
            store.write_side("book", b"stale", Some(&v1)).await,
            Err(StateError::Conflict { .. })
        ),
        "a write over an old version loses"
    );
    let (bytes, now) = store.read_side("book").await.expect("read").expect("there");
    assert_eq!((bytes.as_slice(), now.as_str()), (&b"two"[..], v2.as_str()));
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

/// Tests that need several clients of one store, as separate processes would be: `make`
/// opens a new client each time. Every store runs [`lock_race`]; stores with conditional
/// writes also run [`stale_write_rejected`].
pub async fn run_shared<S: StateStore>(make: &impl Fn() -> S) {
    lock_race(make).await;
    stale_write_rejected(make).await;
}

/// Sixteen clients take the lock at once: exactly one wins, the others name the winner.
pub async fn lock_race<S: StateStore>(make: &impl Fn() -> S) {
    for round in 0..3 {
        let clients: Vec<(S, LockInfo)> =
            (0..16).map(|_| (make(), LockInfo::new("apply"))).collect();
        let attempts = clients.iter().map(|(s, info)| s.lock(info));
        let results = futures::future::join_all(attempts).await;
        let winners: Vec<&LockInfo> = results
            .iter()
            .zip(&clients)
            .filter(|(r, _)| r.is_ok())
            .map(|(_, (_, i))| i)
            .collect();
        assert_eq!(
            winners.len(),
            1,
            "round {round}: exactly one client gets the lock"
        );
        for r in &results {
            match r {
                Ok(()) => {}
                Err(StateError::Locked(h)) => {
                    assert_eq!(h.id, winners[0].id, "losers name the winner")
                }
                Err(e) => panic!("round {round}: a loser got {e:?} instead of contention"),
            }
        }
        make().unlock(&winners[0].id).await.expect("unlock");
    }
}

/// A client that read an old state cannot overwrite a newer one.
pub async fn stale_write_rejected<S: StateStore>(make: &impl Fn() -> S) {
    let (a, b) = (make(), make());
    let mut base = a.read().await.expect("read").unwrap_or_default();
    b.read().await.expect("read");
    base.serial += 10;
    b.write(&base).await.expect("b writes first");
    let mut stale = base.clone();
    stale.serial += 1;
    match a.write(&stale).await {
        Err(StateError::Conflict { .. }) => {}
        other => panic!("a stale write must be refused, got {other:?}"),
    }
    assert_eq!(
        make().read().await.expect("read").map(|s| s.serial),
        Some(base.serial),
        "the newer state survives"
    );
    // Having read the newer state, the client may write again.
    a.read().await.expect("read");
    a.write(&stale).await.expect("write after re-reading");
}

#[cfg(test)]
mod tests {
    #[tokio::test]
    async fn memory_store_conforms() {
        super::run(&crate::state::MemoryStore::new()).await;
    }
}
