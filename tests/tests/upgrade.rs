//! Data directories of earlier releases keep working. Before packs (a loose blob file
//! per chunk, no pack rows): every file downloads from it as it is, `fsync-gc run`
//! moves its blobs into packs, and every file downloads again afterwards. Before
//! manifest pages (whole chunk lists): a large file's next edit commits as pages.
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

/// Rewrites every version of more than one page into the layout before manifest pages
/// (its chunk list inline in `file_versions.manifest`, a `version_chunks` row per chunk)
/// and removes the pages, as a store written by the release before them holds it.
fn to_inline_manifests(server: &Server) {
    let url = server.sqlite_url();
    let versions = rows_blocking(
        &url,
        "SELECT CAST(v.id AS TEXT), hex(v.pages), f.namespace_id FROM file_versions v \
         JOIN files f ON f.id = v.file_id WHERE v.pages IS NOT NULL",
    )
    .unwrap();
    assert!(!versions.is_empty(), "no version of several pages");
    for v in &versions {
        let (id, ns) = (&v[0], &v[2]);
        let ids = hex::decode(&v[1]).unwrap();
        let mut chunks = Vec::new();
        for page in ids.chunks(32) {
            let body = rows_blocking(
                &url,
                &format!(
                    "SELECT hex(body) FROM manifest_pages WHERE namespace_id = '{ns}' \
                     AND id = x'{}'",
                    hex::encode(page)
                ),
            )
            .unwrap();
            let body = hex::decode(&body[0][0]).unwrap();
            chunks.extend(fsync_common::pages::decode(&body).unwrap());
        }
        let json = serde_json::to_string(&chunks).unwrap();
        execute_blocking(
            &url,
            &format!("UPDATE file_versions SET manifest = '{json}', pages = NULL WHERE id = {id}"),
        )
        .unwrap();
        let mut seen = std::collections::HashSet::new();
        for c in chunks.iter().filter(|c| seen.insert(c.id())) {
            execute_blocking(
                &url,
                &format!(
                    "INSERT INTO version_chunks (version_id, namespace_id, chunk_id) \
                     VALUES ({id}, '{ns}', '{}')",
                    c.id()
                ),
            )
            .unwrap();
        }
    }
    for sql in [
        "DELETE FROM version_pages",
        "DELETE FROM page_chunks",
        "DELETE FROM manifest_pages",
    ] {
        execute_blocking(&url, sql).unwrap();
    }
}

/// A large file synced before manifest pages: this client takes the pages of its synced
/// version for stored, the server answers that it lacks them (409 `missing_pages`), the
/// client sends them and commits the pages again; the other device reads the edit, and
/// verify is clean.
#[test]
fn a_large_file_stored_before_pages_takes_an_edit_as_pages() {
    let (server, a, b) = Server::start().pair();
    // About 640 chunks: more than a page's 512, so several pages.
    let mut data = random_bytes(5, 40 << 20);
    a.write("big.bin", &data);
    fsync_tests::rounds(&[&a, &b]);
    to_inline_manifests(&server);
    let opts = ServerOptions::default();
    server.assert_gc_verify_clean(&opts);

    let stored = server.metric("fsync_pages_stored_total");
    let at = data.len() / 2;
    data[at..at + 4].copy_from_slice(b"edit");
    a.write("big.bin", &data);
    assert_eq!(a.sync().uploaded, 1);
    // Every page of the new version came through pages/batch (had the client fallen
    // back to the chunk list, the server would have cut them itself).
    let rows = rows_blocking(
        &server.sqlite_url(),
        "SELECT CAST(COUNT(*) AS TEXT) FROM manifest_pages",
    )
    .unwrap();
    let held: u64 = rows[0][0].parse().unwrap();
    assert!(held >= 2, "{held} pages");
    assert_eq!(
        server.metric("fsync_pages_stored_total") - stored,
        held,
        "the pages the server lacked were not sent"
    );
    assert_eq!(b.sync().downloaded, 1);
    assert!(b.read("big.bin") == data, "B's copy of big.bin differs");
    assert_same_tree(&a, &b);
    server.assert_gc_verify_clean(&opts);
}
