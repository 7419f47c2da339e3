//! Group commit of single-blob uploads over real HTTP: the `PUT /chunks/{id}` calls
//! that arrive while a pack of their namespace is being written are written together
//! as the next pack, each answered only once its chunk is recorded; a failed group
//! fails each of its uploads with the cause and records none of them.

#![allow(missing_docs)]

#[allow(dead_code)]
#[macro_use]
mod common;

use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use common::{account, backends, chunk_path, Resp, Server};
use fsync_common::wire::StoredResponse;
use fsync_common::{ChunkId, NamespaceId, PackId};
use fsync_server::GroupCommit;
use fsync_store::{async_trait, StoreError};
use fsync_testkit::packs::{HookedPacks, Hooks};
use fsync_testkit::wait_until_async;
use futures_util::future::{join, join_all};
use tokio::sync::Notify;

const TIMEOUT: Duration = Duration::from_secs(30);

/// Holds the first pack put until released; fails the puts from the `fail_from`th
/// (counted from 0) on.
#[derive(Debug)]
struct HoldFirstPut {
    puts: AtomicUsize,
    entered: Notify,
    release: Notify,
    fail_from: AtomicUsize,
}

impl Default for HoldFirstPut {
    fn default() -> Self {
        Self {
            puts: AtomicUsize::new(0),
            entered: Notify::new(),
            release: Notify::new(),
            fail_from: AtomicUsize::new(usize::MAX),
        }
    }
}

#[async_trait]
impl Hooks for HoldFirstPut {
    async fn before_put(&self, _ns: &NamespaceId, _id: &PackId) -> Result<(), StoreError> {
        let n = self.puts.fetch_add(1, SeqCst);
        if n == 0 {
            self.entered.notify_one();
            self.release.notified().await;
        }
        if n >= self.fail_from.load(SeqCst) {
            return Err(StoreError::Backend("injected put failure".into()));
        }
        Ok(())
    }
}

async fn put(srv: &Server, token: &str, ns: NamespaceId, (id, blob): &(ChunkId, Vec<u8>)) -> Resp {
    srv.put_bytes(&chunk_path(id, ns), Some(token), blob.clone())
        .await
}

type Held = (Arc<HookedPacks<HoldFirstPut>>, Arc<GroupCommit>);

/// A server whose pack puts go through [`HoldFirstPut`].
async fn held_server(backend: &common::Backend) -> (Server, Held) {
    let slot: Arc<OnceLock<Held>> = Arc::default();
    let set = slot.clone();
    let srv = Server::start_with(backend, move |s| {
        let hooked = HookedPacks::new(s.packs.clone(), HoldFirstPut::default());
        s.packs = hooked.clone();
        set.set((hooked, s.group_commit.clone())).expect("set once");
    })
    .await;
    let held = slot.get().expect("the tweak ran").clone();
    (srv, held)
}

/// Sends the first blob alone; once its pack write has begun, sends the others, waits
/// until every one of them waits for a group, then lets the first write finish.
/// Returns each upload's status, the first's first.
async fn upload_while_first_is_held(
    srv: &Server,
    (packs, group): &Held,
    token: &str,
    ns: NamespaceId,
    blobs: &[(ChunkId, Vec<u8>)],
) -> Vec<u16> {
    let put = |b| async move { put(srv, token, ns, b).await.status.as_u16() };
    let rest = async {
        packs.hooks.entered.notified().await;
        let release = async {
            let n = blobs.len() - 1;
            wait_until_async(TIMEOUT, "the later uploads wait for a group", || async {
                group.waiting() == n
            })
            .await;
            packs.hooks.release.notify_one();
        };
        join(join_all(blobs[1..].iter().map(put)), release).await.0
    };
    let (first, rest) = join(put(&blobs[0]), rest).await;
    std::iter::once(first).chain(rest).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn single_uploads_during_a_pack_write_share_the_next_pack() {
    for backend in backends() {
        let (srv, held) = held_server(&backend).await;
        let (user, dev) = account(&srv, "group", "d").await;
        let blobs: Vec<_> = (0..17)
            .map(|i| user.blob(format!("blob {i} ").repeat(40 + i).as_bytes()))
            .collect();

        let statuses =
            upload_while_first_is_held(&srv, &held, &dev.token, user.namespace, &blobs).await;
        assert_eq!(statuses, vec![201; 17], "{backend}");
        assert_eq!(
            held.0.hooks.puts.load(SeqCst),
            2,
            "{backend}: two packs, not 17"
        );
        assert_eq!(srv.metric("fsync_upload_groups_total").await, 2);
        assert_eq!(srv.metric("fsync_grouped_blobs_total").await, 17);
        assert_eq!(srv.metric("fsync_chunks_stored_total").await, 17);
        for (id, blob) in &blobs {
            let r = srv
                .get(&chunk_path(id, user.namespace), Some(&dev.token))
                .await;
            assert_eq!(&r.expect(200).body, blob, "{backend}");
        }
        // Idempotent, as before group commit: 200, already there.
        let r = put(&srv, &dev.token, user.namespace, &blobs[5]).await;
        let r: StoredResponse = r.expect(200).json();
        assert_eq!((r.stored, r.existing), (0, 1));
        assert_eq!(held.1.waiting(), 0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failed_group_fails_each_of_its_uploads_and_records_none() {
    for backend in backends() {
        let (srv, held) = held_server(&backend).await;
        let (user, dev) = account(&srv, "groupfail", "d").await;
        let ns = user.namespace;
        let blobs: Vec<_> = (0..4)
            .map(|i| user.blob(format!("failing {i} ").repeat(30).as_bytes()))
            .collect();
        // The first pack is written; the group after it fails.
        let hooks = &held.0.hooks;
        hooks.fail_from.store(1, SeqCst);
        let statuses = upload_while_first_is_held(&srv, &held, &dev.token, ns, &blobs).await;
        assert_eq!(statuses, vec![201, 503, 503, 503], "{backend}");
        let ids: Vec<ChunkId> = blobs.iter().map(|b| b.0).collect();
        let missing: fsync_common::wire::MissingResponse = srv
            .post_json(
                "/api/v1/chunks/missing",
                Some(&dev.token),
                &serde_json::json!({"namespace": ns, "ids": ids}),
            )
            .await;
        assert_eq!(
            missing.missing,
            ids[1..],
            "{backend}: the failed group is not recorded"
        );
        // The store recovers: the same uploads succeed.
        hooks.fail_from.store(usize::MAX, SeqCst);
        for b in &blobs[1..] {
            put(&srv, &dev.token, ns, b).await.expect(201);
        }
    }
}
