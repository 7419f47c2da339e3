//! Concurrent edits through the real server (ARCHITECTURE §5): both versions survive,
//! every device ends with the same conflict copy (I2, I7), an edit beats a concurrent
//! delete (I3), and the trees converge (I1).
#![allow(missing_docs)]

use std::time::{Duration, SystemTime};

use fsync_tests::{assert_same_tree, conflict_copies, rounds, Backend, Client, Server, Summary};

/// The server and two devices holding the synced file `doc.txt`.
fn synced_pair(server: Server) -> (Server, Client, Client) {
    let (server, a, b) = server.pair();
    a.write("doc.txt", "the original\n");
    rounds(&[&a, &b]);
    assert_same_tree(&a, &b);
    (server, a, b)
}

/// `doc.txt` holds `head` and the conflict copy `copy` on both devices, under the same
/// name.
fn assert_both_conflicted(a: &Client, b: &Client, head: &str, copy: &str) {
    let on_a = assert_conflict("A", a, head, copy);
    let on_b = assert_conflict("B", b, head, copy);
    assert_eq!(on_a, on_b);
    assert_same_tree(a, b);
}

/// Asserts `doc.txt` holds `head` and its single conflict copy holds `copy` on `c`;
/// returns the copy's name.
fn assert_conflict(name: &str, c: &Client, head: &str, copy: &str) -> String {
    let copies = conflict_copies(&c.tree());
    assert_eq!(copies.len(), 1, "{name}: conflict copies {copies:?}");
    let path = &copies[0];
    assert!(
        path.starts_with("doc.sync-conflict-") && path.rsplit('.').next() == Some("txt"),
        "{name}: unexpected conflict copy name {path}"
    );
    assert_eq!(String::from_utf8_lossy(&c.read("doc.txt")), head, "{name}");
    assert_eq!(String::from_utf8_lossy(&c.read(path)), copy, "{name}");
    path.clone()
}

fn concurrent_edits(backend: Backend) {
    let Some((_server, a, b)) = Server::start_on(backend).map(synced_pair) else {
        return;
    };
    // Offline edits; A's is the later one, so A's version wins wherever it lands.
    let later = SystemTime::now() + Duration::from_secs(10);
    b.write_at("doc.txt", "edited on B\n", later - Duration::from_secs(10));
    a.write_at("doc.txt", "edited on A, later\n", later);
    assert_eq!(a.sync().conflicts, 0);
    assert_eq!(b.sync().conflicts, 1, "B's commit was not a conflict");
    a.sync();
    assert_both_conflicted(&a, &b, "edited on A, later\n", "edited on B\n");
    // Stable: another round changes nothing.
    assert!(a.sync() == Summary::default());
    assert!(b.sync() == Summary::default());
}

fsync_tests::backend_tests! {
    concurrent_edits: concurrent_edits_keep_both_versions,
    concurrent_edits_keep_both_versions_on_postgres
}

#[test]
fn a_later_concurrent_edit_wins_and_the_earlier_becomes_the_copy() {
    let (_server, a, b) = synced_pair(Server::start());
    // B's edit is the later one but reaches the server second.
    let later = SystemTime::now() + Duration::from_secs(10);
    a.write_at("doc.txt", "edited on A\n", later - Duration::from_secs(10));
    b.write_at("doc.txt", "edited on B, later\n", later);
    a.sync();
    assert_eq!(b.sync().conflicts, 1, "B's commit was not a conflict");
    rounds(&[&a, &b]);
    assert_both_conflicted(&a, &b, "edited on B, later\n", "edited on A\n");
}

#[test]
fn an_edit_beats_a_concurrent_delete() {
    let (_server, a, b) = synced_pair(Server::start());
    a.remove("doc.txt");
    b.write("doc.txt", "edited on B\n");
    assert_eq!(a.sync().deleted_there, 1);
    rounds(&[&b, &a]);
    assert_eq!(a.read("doc.txt"), b"edited on B\n");
    assert_eq!(b.read("doc.txt"), b"edited on B\n");
    assert!(conflict_copies(&a.tree()).is_empty());
    assert_same_tree(&a, &b);
}

#[test]
fn a_stale_delete_does_not_remove_a_newer_edit() {
    let (_server, a, b) = synced_pair(Server::start());
    // The edit reaches the server first; A's delete names the version A saw.
    b.write("doc.txt", "edited on B\n");
    a.remove("doc.txt");
    rounds(&[&b, &a, &b]);
    assert_eq!(a.read("doc.txt"), b"edited on B\n");
    assert_eq!(b.read("doc.txt"), b"edited on B\n");
    assert_same_tree(&a, &b);
}
