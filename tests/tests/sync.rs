//! Two devices of one account converge through the real server: creates, edits,
//! deletes, renames and folder moves (metadata only), a large file's small edit (only
//! the changed chunks travel), `.fsyncignore`, and names that cannot be synced.
#![allow(missing_docs)]

use std::io::{Seek, SeekFrom, Write};

use fsync_tests::{assert_same_tree, random_bytes, rounds, Backend, Server};

const MIB: usize = 1024 * 1024;

fn basic_operations(backend: Backend) {
    let Some((server, a, b)) = Server::start_on(backend).map(Server::pair) else {
        return;
    };
    a.write("notes.txt", "first draft\n");
    a.write("empty.txt", "");
    a.write("docs/report.md", random_bytes(1, 200_000));
    a.write("docs/old.txt", "to be deleted");
    a.write("photos/2024/a.jpg", random_bytes(2, 300_000));
    a.write("photos/2024/b.jpg", random_bytes(3, 150_000));
    a.write("photos/2024/raw/c.raw", random_bytes(4, 50_000));
    assert_eq!(a.sync().uploaded, 7);
    assert_eq!(b.sync().downloaded, 7);
    assert_same_tree(&a, &b);

    // Edit, delete, create.
    a.write("notes.txt", "second draft, a little longer\n");
    a.remove("docs/old.txt");
    a.write("new/file.txt", "new");
    let up = a.sync();
    assert_eq!((up.uploaded, up.deleted_there), (2, 1), "{up:?}");
    let down = b.sync();
    assert_eq!((down.downloaded, down.deleted_here), (2, 1), "{down:?}");
    assert_same_tree(&a, &b);
    assert!(!b.path("docs/old.txt").exists());

    // A rename and a folder move are metadata operations: no chunk stored, none
    // fetched, no file uploaded or downloaded; only the folder the move left empty
    // (`photos`) is committed, as an empty-folder entry.
    let (stored, bytes_in, bytes_out) = server.traffic();
    a.rename("docs/report.md", "docs/report-final.md");
    a.rename("photos/2024", "archive/photos-2024");
    let up = a.sync();
    assert_eq!(up.uploaded, 1, "a rename uploaded files: {up:?}");
    assert!(up.renamed >= 1, "no rename sent: {up:?}");
    let down = b.sync();
    assert_eq!(down.downloaded, 1, "a rename downloaded files: {down:?}");
    assert!(down.renamed >= 1, "no rename applied: {down:?}");
    assert_same_tree(&a, &b);
    assert!(!b.path("photos/2024").exists());
    assert!(b.path("photos").is_dir(), "the emptied folder is gone on B");
    assert_eq!(server.chunks_stored(), stored, "a rename stored chunks");
    assert_eq!(server.bytes_out(), bytes_out, "a rename fetched blobs");
    let sent = server.bytes_in() - bytes_in;
    assert!(sent < 64 * 1024, "a rename sent {sent} bytes");
    // The file kept its id: its history goes back to the old path.
    let history = a.run_ok(&["versions", "archive/photos-2024/raw/c.raw"]);
    assert!(
        history.contains("photos/2024/raw/c.raw") && history.contains("v1 "),
        "the moved file lost its history:\n{history}"
    );
}

fsync_tests::backend_tests! {
    basic_operations: create_modify_delete_rename_and_move_converge,
    create_modify_delete_rename_and_move_converge_on_postgres
}

#[test]
fn a_small_edit_of_a_large_file_sends_only_the_changed_chunks() {
    let (server, a, b) = Server::start().pair();
    let mut data = random_bytes(42, 48 * MIB + 12_345);
    a.write("big.bin", &data);
    rounds(&[&a, &b]);
    assert!(b.read("big.bin") == data, "B's copy of big.bin differs");

    let (stored, bytes_in, bytes_out) = server.traffic();
    let pages = |what| server.metric(&format!("fsync_pages_{what}_total"));
    // 512 chunks: the manifest is several pages (A sent them with the first commit;
    // B cut them again from its copy).
    let (pages_stored, pages_sent) = (pages("stored"), pages("sent"));
    // Overwrite 10 bytes in the middle, in place (same size, same inode).
    let middle = data.len() / 2;
    data[middle..middle + 10].copy_from_slice(b"0123456789");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .open(a.path("big.bin"))
        .unwrap();
    f.seek(SeekFrom::Start(middle as u64)).unwrap();
    f.write_all(b"0123456789").unwrap();
    drop(f);
    assert_eq!(a.sync().uploaded, 1);
    let new_chunks = server.chunks_stored() - stored;
    assert!(
        (1..=3).contains(&new_chunks),
        "a 10-byte edit stored {new_chunks} chunks"
    );
    let sent = server.bytes_in() - bytes_in;
    assert!(sent < MIB as u64, "a 10-byte edit sent {sent} bytes");
    // Only the page holding the changed chunks went up (two or three when the edit
    // moved a boundary).
    let new_pages = pages("stored") - pages_stored;
    assert!(
        (1..=3).contains(&new_pages),
        "a 10-byte edit stored {new_pages} pages"
    );

    assert_eq!(b.sync().downloaded, 1);
    assert!(b.read("big.bin") == data, "B's copy of big.bin differs");
    // B rebuilt the file from its own unchanged chunks and fetched only the new ones.
    let fetched = server.bytes_out() - bytes_out;
    assert!(fetched < MIB as u64, "B fetched {fetched} bytes");
    // And only the new pages came down: B cut the others from its synced version.
    let fetched_pages = pages("sent") - pages_sent;
    assert_eq!(fetched_pages, new_pages, "B fetched {fetched_pages} pages");
    assert_same_tree(&a, &b);
}

#[test]
fn ignored_files_never_reach_the_other_device() {
    let (_server, a, b) = Server::start().pair();
    a.write(".fsyncignore", "*.log\nbuild/\n/secret.txt\n");
    a.write("keep.txt", "keep");
    a.write("debug.log", "noise");
    a.write("sub/deep.log", "noise");
    a.write("build/out.o", "object");
    a.write("secret.txt", "top secret");
    a.write("sub/secret.txt", "only the top-level one is ignored");
    rounds(&[&a, &b]);
    assert_eq!(b.paths(), [".fsyncignore", "keep.txt", "sub/secret.txt"]);

    // Editing an ignored file changes nothing; B's ignored files stay on B.
    a.write("debug.log", "more noise");
    b.write("b.log", "B's noise");
    assert_eq!(a.sync().uploaded, 0);
    assert_eq!(b.sync().uploaded, 0);
    assert_eq!(a.sync().downloaded, 0);
    assert!(!a.path("b.log").exists());
    assert_eq!(
        b.paths(),
        [".fsyncignore", "b.log", "keep.txt", "sub/secret.txt"]
    );
}

#[test]
fn names_that_cannot_be_synced_are_reported_not_sent() {
    let (_server, a, b) = Server::start().pair();
    a.write("fine.txt", "fine");
    // A backslash is a path separator on Windows: the name cannot be synced.
    a.write("back\\slash.txt", "stays here");
    let status = a.run_ok(&["status"]);
    let line = status
        .lines()
        .find(|l| l.contains("back\\slash.txt"))
        .unwrap_or_else(|| panic!("status does not mention back\\slash.txt:\n{status}"));
    assert!(line.starts_with("not synced"), "{line}");
    let pending = "upload pending (new)       fine.txt";
    assert!(status.contains(pending), "{status}");
    rounds(&[&a, &b]);
    assert_eq!(b.paths(), ["fine.txt"]);
    // Still reported after the round.
    assert!(a.run_ok(&["status"]).contains("not synced"));
}

/// Regression (found by the randomized test): a file whose stat changed but not its
/// content (a `touch`) blocked every later remote edit of it — the download refused to
/// replace a file "changed since the last sync", every round, silently.
#[test]
fn a_touched_file_still_takes_the_remote_edit() {
    let (_server, a, b) = Server::start().pair();
    a.write("doc.txt", "version 1\n");
    rounds(&[&a, &b]);
    let later = std::time::SystemTime::now() + std::time::Duration::from_secs(30);
    b.set_mtime("doc.txt", later);
    a.write("doc.txt", "version 2 from A\n");
    rounds(&[&a, &b]);
    assert_eq!(b.read("doc.txt"), b"version 2 from A\n");
    assert_eq!(a.sync().uploaded, 0, "the touch was sent as an edit");
    assert_same_tree(&a, &b);
}

/// Regression (found by the randomized test): a file moved remotely onto a path whose
/// old file was deleted in the same batch was re-uploaded here as a new file at its old
/// path — the moved content came back from the dead.
#[test]
fn a_move_onto_a_just_deleted_path_resurrects_nothing() {
    let (_server, a, b) = Server::start().pair();
    a.write("old.txt", "the content that moves\n");
    a.write("dest.txt", "the file that is deleted\n");
    rounds(&[&a, &b]);
    a.remove("dest.txt");
    a.sync();
    a.rename("old.txt", "dest.txt");
    a.sync();
    // B learns both at once: dest.txt deleted, old.txt moved onto dest.txt.
    rounds(&[&b, &a, &b]);
    assert_eq!(b.read("dest.txt"), b"the content that moves\n");
    assert!(b.try_read("old.txt").is_none(), "old.txt came back on B");
    assert!(a.try_read("old.txt").is_none(), "old.txt came back on A");
    assert_same_tree(&a, &b);
}
