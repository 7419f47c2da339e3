//! Two server nodes without a shared file system: one PostgreSQL database and one S3
//! bucket (SeaweedFS), each node with a data directory of its own, one client on
//! each (ARCHITECTURE §7).
#![allow(missing_docs)]

use fsync_testkit::s3::{scratch_flags, test_s3_endpoint};
use fsync_tests::{assert_same_tree, postgres_url, random_bytes, rounds, Server, ServerOptions};

#[test]
fn two_nodes_on_one_database_and_one_bucket_sync_two_clients() {
    let (Some(base), Some(endpoint)) = (postgres_url(), test_s3_endpoint()) else {
        println!("NOTE: needs FSYNC_TEST_DATABASE_URL and FSYNC_TEST_S3_ENDPOINT; not run");
        return;
    };
    let db = fsync_testkit::postgres::ScratchDatabase::create_blocking(&base)
        .unwrap_or_else(|e| panic!("a test database: {e:#}"));
    let opts = ServerOptions {
        database_url: Some(db.url().to_owned()),
        storage: scratch_flags(&endpoint, "nodes"),
        ..ServerOptions::default()
    };
    let (one, two) = (Server::start_with(&opts), Server::start_with(&opts));
    let alice = one.register("alice");
    let a = alice.device();
    let b = alice.via(&two.url()).device();
    a.write("docs/report.txt", "written on A, through node one");
    a.write("big.bin", random_bytes(7, 3 << 20));
    assert_eq!(a.sync().uploaded, 2);
    assert_eq!(
        b.sync().downloaded,
        2,
        "node two serves what node one stored"
    );
    b.write("docs/report.txt", "edited on B, through node two");
    b.write("from-b.txt", "new on B");
    rounds(&[&b, &a]);
    assert_same_tree(&a, &b);
    assert_eq!(a.read("docs/report.txt"), b"edited on B, through node two");
    // No pack landed on either node's disk: they are all in the bucket.
    for node in [&one, &two] {
        let packs = node.data_dir().join("blobs/packs");
        let local = std::fs::read_dir(&packs).map_or(0, Iterator::count);
        assert_eq!(local, 0, "packs on a node's disk: {}", packs.display());
    }
    // Either node's fsync-gc sees the same, undamaged store.
    one.assert_gc_verify_clean(&opts);
    two.assert_gc_verify_clean(&opts);
}
