//! A data directory of the release before packs (a loose blob file per chunk, no pack
//! rows) keeps working: every file downloads from it as it is, `fsync-gc run` moves
//! its blobs into packs, and every file downloads again afterwards.
#![allow(missing_docs)]

use fsync_testkit::postgres::{execute_blocking, rows_blocking};
use fsync_tests::{assert_same_tree, check, random_bytes, Server, ServerOptions};

/// Rewrites the server's store into the layout before packs: each chunk's blob cut out
/// of its pack into `blobs/<ns>/<ab>/<cd>/<id>`, its row pointing nowhere, the packs
/// and their rows gone.
fn to_loose_layout(server: &Server) {
    let url = server.sqlite_url();
    let blobs = server.data_dir().join("blobs");
    let chunks = rows_blocking(
        &url,
        "SELECT namespace_id, id, pack_id, CAST(pack_offset AS TEXT), \
         CAST(stored_size AS TEXT) FROM chunks",
    )
    .unwrap();
    assert!(
        chunks.len() > 3,
        "too few chunks to mean anything: {chunks:?}"
    );
    for r in &chunks {
        let (ns, id, pack) = (&r[0], &r[1], &r[2]);
        let (offset, len): (usize, usize) = (r[3].parse().unwrap(), r[4].parse().unwrap());
        let bytes = std::fs::read(blobs.join("packs").join(ns).join(pack)).unwrap();
        let leaf = blobs.join(ns).join(&id[0..2]).join(&id[2..4]);
        std::fs::create_dir_all(&leaf).unwrap();
        std::fs::write(leaf.join(id), &bytes[offset..offset + len]).unwrap();
    }
    for sql in [
        "UPDATE chunks SET pack_id = NULL, pack_offset = NULL",
        "DELETE FROM packs",
    ] {
        execute_blocking(&url, sql).unwrap();
    }
    std::fs::remove_dir_all(blobs.join("packs")).unwrap();
}

#[test]
fn a_store_written_before_packs_downloads_before_and_after_gc_packs_it() {
    let server = Server::start();
    let alice = server.register("alice");
    let a = alice.device();
    a.write("notes/a.txt", "a small file");
    a.write("big.bin", random_bytes(3, 2 << 20));
    a.write("mid.bin", random_bytes(4, 300_000));
    assert_eq!(a.sync().uploaded, 3);
    to_loose_layout(&server);
    let opts = ServerOptions::default();
    server.assert_gc_verify_clean(&opts);

    let b = alice.device();
    assert_eq!(b.sync().downloaded, 3, "read from the loose blobs");
    assert_same_tree(&a, &b);

    let out = server.gc(&opts, &["run", "--json"]);
    check(&out, "fsync-gc run");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        report["loose_blobs_packed"].as_u64().unwrap() > 3,
        "{report}"
    );
    let loose = rows_blocking(
        &server.sqlite_url(),
        "SELECT id FROM chunks WHERE pack_id IS NULL",
    )
    .unwrap();
    assert!(loose.is_empty(), "chunks still loose: {loose:?}");
    server.assert_gc_verify_clean(&opts);

    let c = alice.device();
    assert_eq!(c.sync().downloaded, 3, "read from the packs");
    assert_same_tree(&a, &c);
}
