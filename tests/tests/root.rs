//! The sync-root marker (ARCHITECTURE §6): a synced root that lost its `.fsync` marker
//! and its files (an unmounted disk) or that is gone is refused, and nothing is
//! deleted anywhere; `--reset` starts over without deleting either.
#![allow(missing_docs)]

use fsync_tests::{assert_same_tree, rounds, Account, Client, Server, Summary};

fn synced_pair(server: &Server) -> (Account, Client, Client) {
    let alice = server.register("alice");
    let (a, b) = (alice.device(), alice.device());
    a.write("one.txt", "one");
    a.write("dir/two.txt", "two");
    rounds(&[&a, &b]);
    assert_same_tree(&a, &b);
    (alice, a, b)
}

/// A's files are still on the server: A's next round deletes nothing and a new
/// device receives all of them.
fn assert_nothing_deleted(alice: &Account, a: &Client) {
    let before = a.tree();
    let s = a.sync();
    assert_eq!(s.deleted_here, 0, "{s:?}");
    assert_eq!(a.tree(), before);
    let c = alice.device();
    c.sync();
    assert_same_tree(a, &c);
}

#[test]
fn an_unmounted_root_is_refused_and_nothing_is_deleted() {
    let server = Server::start();
    let (alice, a, b) = synced_pair(&server);
    // What an unmounted disk looks like: the mount point is an empty folder.
    std::fs::remove_dir_all(b.root()).unwrap();
    std::fs::create_dir(b.root()).unwrap();
    let stderr = b.run_fails(&["--once"], "--once accepted an unmounted root");
    assert!(
        stderr.contains(".fsync marker"),
        "the error does not name the missing marker:\n{stderr}"
    );
    assert!(b.tree().is_empty(), "files written to the unmounted root");
    assert!(!b.path(".fsync").exists(), "the marker was recreated");
    assert_nothing_deleted(&alice, &a);

    // The user says the folder is the right one: it starts over, downloading
    // everything and still deleting nothing.
    let s = Summary::parse(&b.run_ok(&["--once", "--reset"]));
    assert_eq!((s.downloaded, s.deleted_there), (2, 0), "{s:?}");
    assert_same_tree(&a, &b);
    assert_nothing_deleted(&alice, &a);
}

#[test]
fn a_missing_root_is_refused_and_nothing_is_deleted() {
    let server = Server::start();
    let (alice, a, b) = synced_pair(&server);
    std::fs::remove_dir_all(b.root()).unwrap();
    let stderr = b.run_fails(&["--once"], "--once accepted a missing root");
    assert!(stderr.contains("does not exist"), "{stderr}");
    assert!(!b.root().exists(), "the missing root was created");
    assert_nothing_deleted(&alice, &a);
}
