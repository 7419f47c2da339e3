//! A client of the previous release (`scripts/prev-client.sh` builds it: main before
//! manifest pages) keeps syncing with this server next to a client of this tree. The
//! old client commits plain chunk lists and reads whole ones (`files/manifests`
//! without pages); this one commits and reads pages. Each sees the other's edits of a
//! large file (several pages) and of small ones, and the trees converge.
#![allow(missing_docs)]

use std::io::{Seek, SeekFrom, Write};

use fsync_tests::{assert_same_tree, prev_client, random_bytes, rounds, Server};

const MIB: usize = 1 << 20;

fn overwrite(path: &std::path::Path, at: usize, bytes: &[u8]) {
    let mut f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    f.seek(SeekFrom::Start(at as u64)).unwrap();
    f.write_all(bytes).unwrap();
}

#[test]
fn a_client_of_the_previous_release_syncs_with_this_one() {
    let server = Server::start();
    let account = server.register("carol");
    let old = account.device().using(prev_client());
    let new = account.device();

    // The old client creates a large file (its plain chunk list: the server cuts the
    // pages) and small ones.
    let mut big = random_bytes(7, 40 * MIB + 777);
    old.write("big.bin", &big);
    old.write("notes/a.txt", "from the old client");
    rounds(&[&old, &new]);
    assert!(
        new.read("big.bin") == big,
        "the new client's big.bin differs"
    );
    let pages = |what| server.metric(&format!("fsync_pages_{what}_total"));
    let sent = pages("sent");

    // The new client edits it: it commits pages, and fetched none to read it (it cut
    // the pages of its copy itself).
    let at = big.len() / 3;
    big[at..at + 6].copy_from_slice(b"edited");
    overwrite(&new.path("big.bin"), at, b"edited");
    new.write("notes/b.txt", "from the new client");
    assert_eq!(new.sync().uploaded, 2);
    assert!(pages("stored") >= 1, "the new client sent no page");
    rounds(&[&old, &new]);
    assert!(
        old.read("big.bin") == big,
        "the old client's big.bin differs"
    );
    assert_eq!(old.read("notes/b.txt"), b"from the new client");

    // The old client edits it again (a plain chunk list on top of a paged version); the
    // new client fetches only the page that changed.
    let at = 2 * big.len() / 3;
    big[at..at + 3].copy_from_slice(b"old");
    overwrite(&old.path("big.bin"), at, b"old");
    assert_eq!(old.sync().uploaded, 1);
    let before = pages("sent");
    assert_eq!(new.sync().downloaded, 1);
    assert!(
        new.read("big.bin") == big,
        "the new client's big.bin differs"
    );
    let fetched = pages("sent") - before;
    assert!(
        (1..=3).contains(&fetched),
        "fetched {fetched} pages for a 3-byte edit"
    );
    assert!(before >= sent);

    // Deletes and renames cross too.
    old.rename("notes/a.txt", "notes/a2.txt");
    new.remove("notes/b.txt");
    rounds(&[&old, &new]);
    rounds(&[&old, &new]);
    assert_same_tree(&old, &new);
    assert_eq!(old.paths(), ["big.bin", "notes/a2.txt"]);
}
