//! The conformance suite every [`BlobStore`] backend runs in its tests
//! (cargo feature `testsuite`).
//!
//! Each check uses fresh random namespaces, so the suite can run against a shared,
//! non-empty store (e.g. an S3 bucket). Failures panic with a description.

use std::future::Future;
use std::pin::Pin;
use std::task::Poll;

use fsync_common::{ChunkId, NamespaceId};
use rand::rngs::OsRng;
use rand::RngCore;

use crate::backend::{BlobInfo, BlobStore, PutOutcome};

pub mod packs;

/// Runs every check of the suite.
pub async fn run_all(store: &dyn BlobStore) {
    put_get_round_trip(store).await;
    idempotent_put(store).await;
    contains_many_mixed(store).await;
    delete_semantics(store).await;
    list_pagination(store).await;
    namespaces_isolated(store).await;
    concurrent_puts_same_id(store).await;
    health_check(store).await;
}

fn random_ns() -> NamespaceId {
    let mut b = [0u8; 16];
    OsRng.fill_bytes(&mut b);
    NamespaceId::from_bytes(b)
}

fn random_id() -> ChunkId {
    let mut b = [0u8; 32];
    OsRng.fill_bytes(&mut b);
    ChunkId::from_bytes(b)
}

fn random_blob(len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    OsRng.fill_bytes(&mut v);
    v
}

/// `store.put` of a copy of `blob`, which must not fail.
async fn put(store: &dyn BlobStore, ns: &NamespaceId, id: &ChunkId, blob: &[u8]) -> PutOutcome {
    store.put(ns, id, blob.to_vec()).await.unwrap()
}

/// `store.get`, which must not fail.
async fn read(store: &dyn BlobStore, ns: &NamespaceId, id: &ChunkId) -> Option<Vec<u8>> {
    store.get(ns, id).await.unwrap()
}

fn ids_of(page: &[BlobInfo]) -> Vec<ChunkId> {
    page.iter().map(|b| b.id).collect()
}

/// Polls all futures concurrently on the current task; outputs in input order.
async fn join_all<F: Future>(futures: Vec<F>) -> Vec<F::Output> {
    let mut futures: Vec<Pin<Box<F>>> = futures.into_iter().map(Box::pin).collect();
    let mut outputs: Vec<Option<F::Output>> = futures.iter().map(|_| None).collect();
    std::future::poll_fn(move |cx| {
        let mut pending = false;
        for (future, output) in futures.iter_mut().zip(outputs.iter_mut()) {
            if output.is_none() {
                match future.as_mut().poll(cx) {
                    Poll::Ready(v) => *output = Some(v),
                    Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            Poll::Pending
        } else {
            Poll::Ready(
                outputs
                    .iter_mut()
                    .map(|o| o.take().expect("polled to completion"))
                    .collect(),
            )
        }
    })
    .await
}

/// Put then get returns the same bytes; absent ids read as `None`.
pub async fn put_get_round_trip(store: &dyn BlobStore) {
    let ns = random_ns();
    for len in [0, 1, 100, 1024 * 1024] {
        let id = random_id();
        let blob = random_blob(len);
        let outcome = put(store, &ns, &id, &blob).await;
        assert_eq!(outcome, PutOutcome::Stored, "len {len}");
        assert_eq!(read(store, &ns, &id).await, Some(blob), "len {len}");
    }
    assert_eq!(store.get(&ns, &random_id()).await.unwrap(), None);
    assert_eq!(store.get(&random_ns(), &random_id()).await.unwrap(), None);
}

/// A second put of an id reports `AlreadyPresent` and keeps one intact blob.
pub async fn idempotent_put(store: &dyn BlobStore) {
    let ns = random_ns();
    let id = random_id();
    let blob = random_blob(5000);
    assert_eq!(put(store, &ns, &id, &blob).await, PutOutcome::Stored);
    let again = put(store, &ns, &id, &blob).await;
    assert_eq!(again, PutOutcome::AlreadyPresent);
    assert_eq!(store.get(&ns, &id).await.unwrap(), Some(blob));
    assert_eq!(store.list(&ns, None, 10).await.unwrap().len(), 1);
}

/// `contains_many` answers per id, in order.
pub async fn contains_many_mixed(store: &dyn BlobStore) {
    let ns = random_ns();
    let ids: Vec<ChunkId> = (0..6).map(|_| random_id()).collect();
    for id in ids.iter().step_by(2) {
        put(store, &ns, id, b"x").await;
    }
    let answers = store.contains_many(&ns, &ids).await.unwrap();
    assert_eq!(answers, [true, false, true, false, true, false]);
    let none = store.contains_many(&ns, &[]).await.unwrap();
    assert_eq!(none, Vec::<bool>::new());
    let elsewhere = store.contains_many(&random_ns(), &ids[..1]).await;
    assert_eq!(elsewhere.unwrap(), [false]);
}

/// Delete removes; deleting an absent blob is `false`.
pub async fn delete_semantics(store: &dyn BlobStore) {
    let ns = random_ns();
    let id = random_id();
    put(store, &ns, &id, b"doomed").await;
    assert!(store.delete(&ns, &id).await.unwrap());
    assert_eq!(store.get(&ns, &id).await.unwrap(), None);
    assert_eq!(store.contains_many(&ns, &[id]).await.unwrap(), [false]);
    assert!(!store.delete(&ns, &id).await.unwrap());
    assert!(!store.delete(&ns, &random_id()).await.unwrap());
    // Deleted then stored again.
    assert_eq!(put(store, &ns, &id, b"again").await, PutOutcome::Stored);
    assert_eq!(read(store, &ns, &id).await.as_deref(), Some(&b"again"[..]));
}

/// `list` pages through 250 blobs in id order; `after` is exclusive.
pub async fn list_pagination(store: &dyn BlobStore) {
    let ns = random_ns();
    assert!(store.list(&ns, None, 100).await.unwrap().is_empty());
    let mut ids: Vec<ChunkId> = (0..250).map(|_| random_id()).collect();
    for batch in ids.chunks(25) {
        let puts = batch.iter().map(|id| {
            let size = usize::from(id.as_bytes()[0]);
            store.put(&ns, id, vec![7; size])
        });
        for outcome in join_all(puts.collect()).await {
            outcome.unwrap();
        }
    }
    ids.sort_unstable();

    let mut listed = Vec::new();
    let mut after = None;
    let mut pages = Vec::new();
    loop {
        let page = store.list(&ns, after, 100).await.unwrap();
        pages.push(page.len());
        let Some(last) = page.last() else { break };
        after = Some(last.id);
        listed.extend(page);
    }
    assert_eq!(pages, [100, 100, 50, 0]);
    assert_eq!(ids_of(&listed), ids);
    for info in &listed {
        let size = u64::from(info.id.as_bytes()[0]);
        assert_eq!(info.size, size, "size of {}", info.id);
    }

    let from_tenth = store.list(&ns, Some(ids[10]), 5).await.unwrap();
    assert_eq!(ids_of(&from_tenth), ids[11..16]);
    let past_the_end = store.list(&ns, Some(ids[249]), 100).await.unwrap();
    assert!(past_the_end.is_empty());
    assert!(store.list(&ns, None, 0).await.unwrap().is_empty());
    // `after` need not be a stored id.
    let mut between = *ids[20].as_bytes();
    between[31] = between[31].wrapping_add(1);
    let between = ChunkId::from_bytes(between);
    if between > ids[20] && between < ids[21] {
        let page = store.list(&ns, Some(between), 1).await.unwrap();
        assert_eq!(page[0].id, ids[21]);
    }
    let zero = ChunkId::from_bytes([0; 32]);
    let page = store.list(&ns, Some(zero), 1).await.unwrap();
    assert_eq!(page[0].id, ids[0]);
}

/// The same id in two namespaces is two independent blobs.
pub async fn namespaces_isolated(store: &dyn BlobStore) {
    let (a, b) = (random_ns(), random_ns());
    let id = random_id();
    put(store, &a, &id, b"in a").await;
    assert_eq!(store.get(&b, &id).await.unwrap(), None);
    assert_eq!(put(store, &b, &id, b"in b").await, PutOutcome::Stored);
    assert_eq!(read(store, &a, &id).await.as_deref(), Some(&b"in a"[..]));
    assert_eq!(read(store, &b, &id).await.as_deref(), Some(&b"in b"[..]));
    put(store, &b, &random_id(), b"only b").await;
    assert_eq!(store.list(&a, None, 10).await.unwrap().len(), 1);
    assert_eq!(store.list(&b, None, 10).await.unwrap().len(), 2);
    assert!(store.delete(&a, &id).await.unwrap());
    assert_eq!(read(store, &b, &id).await.as_deref(), Some(&b"in b"[..]));
}

/// 16 concurrent puts of one id (different bytes, as different nonces give) leave
/// exactly one intact blob, equal to one of them.
pub async fn concurrent_puts_same_id(store: &dyn BlobStore) {
    let ns = random_ns();
    let id = random_id();
    let candidates: Vec<Vec<u8>> = (0..16u8).map(|i| vec![i; 256 * 1024]).collect();
    let puts = candidates
        .iter()
        .map(|blob| store.put(&ns, &id, blob.clone()));
    let outcomes: Vec<PutOutcome> = join_all(puts.collect())
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    assert!(outcomes.contains(&PutOutcome::Stored), "{outcomes:?}");
    let stored = store.get(&ns, &id).await.unwrap().expect("blob stored");
    assert!(
        candidates.contains(&stored),
        "stored blob is a mix of several puts"
    );
    let listed = store.list(&ns, None, 10).await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].size, 256 * 1024);
}

/// `check` succeeds on a healthy store.
pub async fn health_check(store: &dyn BlobStore) {
    store.check().await.unwrap();
}
