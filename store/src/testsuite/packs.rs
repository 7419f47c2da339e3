//! The conformance suite every [`PackStore`] adapter runs in its tests. Fresh random
//! namespaces per check, so it runs against a shared, non-empty bucket.

use fsync_common::{NamespaceId, PackId};

use crate::backend::packs::PackStore;
use crate::backend::StoreError;

/// Runs every check of the suite.
pub async fn run_all(store: &dyn PackStore) {
    put_and_ranged_reads(store).await;
    absent_packs_are_typed_errors(store).await;
    delete_and_list(store).await;
    list_pagination_and_isolation(store).await;
    store.check().await.expect("the health check passes");
}

fn random_pack() -> PackId {
    PackId::from_bytes(rand::random())
}

fn random_ns() -> NamespaceId {
    NamespaceId::from_bytes(rand::random())
}

fn bytes(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 + 3) as u8).collect()
}

async fn put_and_ranged_reads(store: &dyn PackStore) {
    let (ns, id) = (random_ns(), random_pack());
    let data = bytes(200_000);
    store.put(&ns, &id, data.clone()).await.unwrap();
    assert_eq!(store.read_all(&ns, &id).await.unwrap(), data);
    for range in [0..1, 10..5000, 199_990..200_000, 7..7] {
        let got = store.read(&ns, &id, range.clone()).await.unwrap();
        assert_eq!(
            got,
            data[range.start as usize..range.end as usize],
            "{range:?}"
        );
    }
    // Reading past the end is an error, never a short answer taken for whole.
    let err = store.read(&ns, &id, 199_000..200_001).await.unwrap_err();
    assert!(matches!(err, StoreError::ShortRead { .. }), "{err}");
    // Putting the same pack again is harmless.
    store.put(&ns, &id, data.clone()).await.unwrap();
    assert_eq!(store.read_all(&ns, &id).await.unwrap(), data);
}

async fn absent_packs_are_typed_errors(store: &dyn PackStore) {
    let (ns, id) = (random_ns(), random_pack());
    let is_absent = |e: &StoreError| matches!(e, StoreError::PackNotFound { ns: n, id: i } if *n == ns && *i == id);
    let e = store.read(&ns, &id, 0..4).await.unwrap_err();
    assert!(is_absent(&e), "{e}");
    let e = store.read_all(&ns, &id).await.unwrap_err();
    assert!(is_absent(&e), "{e}");
    assert!(!store.delete(&ns, &id).await.unwrap());
}

async fn delete_and_list(store: &dyn PackStore) {
    let ns = random_ns();
    let id = random_pack();
    store.put(&ns, &id, bytes(10)).await.unwrap();
    let listed = store.list(&ns, None, 10).await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!((listed[0].id, listed[0].size), (id, 10));
    assert!(store.delete(&ns, &id).await.unwrap());
    assert!(!store.delete(&ns, &id).await.unwrap());
    assert!(store.list(&ns, None, 10).await.unwrap().is_empty());
}

async fn list_pagination_and_isolation(store: &dyn PackStore) {
    let (ns, other) = (random_ns(), random_ns());
    let mut ids: Vec<PackId> = (0..23).map(|_| random_pack()).collect();
    for (i, id) in ids.iter().enumerate() {
        store.put(&ns, id, bytes(i + 1)).await.unwrap();
    }
    store.put(&other, &random_pack(), bytes(5)).await.unwrap();
    ids.sort();
    let mut seen = Vec::new();
    let mut after = None;
    loop {
        let page = store.list(&ns, after, 5).await.unwrap();
        assert!(page.len() <= 5);
        if page.is_empty() {
            break;
        }
        after = page.last().map(|p| p.id);
        seen.extend(page.into_iter().map(|p| p.id));
    }
    assert_eq!(
        seen, ids,
        "every pack once, sorted, none of another namespace"
    );
    assert!(store.list(&ns, Some(ids[22]), 5).await.unwrap().is_empty());
    assert_eq!(store.list(&other, None, 5).await.unwrap().len(), 1);
}
