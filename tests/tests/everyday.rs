//! Everyday use as a new user meets it, with the real binaries: one client per folder
//! and no nested folders, a server that hangs, `status` offline, a log line per file,
//! and retries said once.
#![allow(missing_docs)]

use std::net::TcpListener;

use fsync_tests::{rounds, wait_until, Server, ServerOptions, EVENT_TIMEOUT};

/// The pid a running client wrote into its folder's lock file.
fn lock_holder(c: &fsync_tests::Client) -> Option<String> {
    let text = std::fs::read_to_string(c.path(".fsync/lock")).ok()?;
    text.trim().strip_prefix("process ").map(str::to_owned)
}

#[test]
fn a_second_client_on_the_same_folder_is_refused_naming_the_first() {
    let (_server, a, _b) = Server::start().pair();
    a.write("one.txt", "one");
    let mut daemon = a.spawn_daemon();
    wait_until(EVENT_TIMEOUT, "the daemon to lock its folder", || {
        lock_holder(&a).is_some()
    });
    let pid = lock_holder(&a).unwrap();
    assert_eq!(pid, daemon.child.id().to_string());
    let err = a.run_fails(&["--once"], "a second client on a folder being synced");
    assert!(
        err.contains("is being synced by another fsync-client") && err.contains(&pid),
        "the refusal does not name the other client:\n{err}"
    );
    // Looking is fine while the daemon runs.
    assert!(a.run_ok(&["status"]).contains("pending:"));
    // Once it is gone, however it ended, the folder is free again.
    daemon.kill();
    a.sync();
}

#[test]
fn nested_folders_are_refused_both_ways_naming_the_other() {
    let server = Server::start();
    let alice = server.register("alice");
    let outer = alice.device();
    outer.write("top.txt", "top");
    outer.sync();
    // A folder inside a synced one.
    let inner = alice.device_at(outer.path("inner"));
    let err = inner.run_fails(&["--once"], "a client inside a synced folder");
    assert!(
        err.contains("is inside") && err.contains(&outer.root().display().to_string()),
        "{err}"
    );
    assert!(
        !inner.path(".fsync").exists(),
        "the refused folder got a marker"
    );
    assert!(
        !inner.path("top.txt").exists(),
        "files were downloaded into it"
    );

    // The other way round: a folder holding a synced one (each device with a list of
    // roots of its own, so only the scan can tell).
    let around = alice.device();
    let held = alice.device_at(around.path("held"));
    held.sync();
    around.write("mine.txt", "around");
    let err = around.run_fails(&["--once"], "a client around a synced folder");
    assert!(
        err.contains("contains") && err.contains(&held.root().display().to_string()),
        "{err}"
    );
    // Nothing of it reached the server: a new device sees only the outer folder's file.
    let fresh = alice.device();
    fresh.sync();
    assert_eq!(fresh.paths(), vec!["top.txt".to_owned()]);
    assert!(around
        .run_ok(&["status"])
        .contains("a synced folder of its own"));
}

#[test]
fn a_server_that_takes_the_connection_but_never_answers_times_out_with_a_message() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    // Accepts and holds every connection, never answering.
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for s in listener.incoming() {
            held.push(s);
        }
    });
    let server = Server::start();
    let a = server.register("alice").via(&url).device();
    let mut run = a.spawn_once_with_env(&[("FSYNC_TIMEOUT".into(), "2".into())]);
    let status = run.wait_exit(EVENT_TIMEOUT);
    assert!(!status.success(), "{}", run.log());
    assert!(
        run.log()
            .contains("the server accepted the connection but sent no answer for 2 s"),
        "{}",
        run.log()
    );
}

#[test]
fn status_works_offline_from_local_state() {
    let opts = ServerOptions::default();
    let (mut server, a, b) = Server::start_with(&opts).pair();
    a.write("synced.txt", "synced");
    rounds(&[&a, &b]);
    server.kill();
    a.write("new.txt", "new");
    a.remove("synced.txt");
    let status = a.run_ok(&["status"]);
    for line in [
        "upload pending (new)       new.txt",
        "delete pending             synced.txt",
        "last sync: ",
        "pending: 2 local; remote changes unknown: the server cannot be reached",
    ] {
        assert!(status.contains(line), "no {line:?} in:\n{status}");
    }
    assert!(!status.contains("last sync: never"), "{status}");
}

#[test]
fn every_file_changed_gets_a_log_line_and_an_unsyncable_entry_is_said_once() {
    let (_server, a, b) = Server::start().pair();
    a.write("notes/plan.md", "plan");
    a.write("notes/old.md", "old");
    std::os::unix::fs::symlink("/etc/hostname", a.path("link")).unwrap();
    let mut run = a.spawn_once();
    run.summary(EVENT_TIMEOUT);
    let log = run.log();
    for line in [
        "uploaded path=notes/plan.md size=4",
        "uploaded path=notes/old.md size=3",
    ] {
        assert!(log.contains(line), "no {line:?} in:\n{log}");
    }
    assert!(
        log.contains("not synced") && log.contains("symbolic links are not synced"),
        "{log}"
    );
    let mut run = b.spawn_once();
    run.summary(EVENT_TIMEOUT);
    assert!(
        run.log().contains("downloaded path=notes/plan.md"),
        "{}",
        run.log()
    );

    a.remove("notes/old.md");
    a.rename("notes/plan.md", "plan.md");
    a.sync();
    let mut run = b.spawn_once();
    run.summary(EVENT_TIMEOUT);
    let log = run.log();
    assert!(
        log.contains("deleted here") && log.contains("notes/old.md"),
        "{log}"
    );
    assert!(
        log.contains("renamed here") && log.contains("from=notes/plan.md to=plan.md"),
        "{log}"
    );
}

#[test]
fn a_daemon_says_a_failing_round_once_and_when_it_syncs_again() {
    let opts = ServerOptions::default();
    let (mut server, a, b) = Server::start_with(&opts).pair();
    a.sync();
    let daemon = a.spawn_daemon();
    wait_until(EVENT_TIMEOUT, "the daemon to connect", || {
        daemon.log().contains("push socket connected")
    });
    server.kill();
    a.write("while down.txt", "x");
    // The daemon runs with --verbose: repeats show at debug level.
    wait_until(EVENT_TIMEOUT * 2, "three failed rounds", || {
        daemon.log().matches("sync round failed again").count() >= 2
    });
    let log = daemon.log();
    // The kill may also cut a request in flight ("connection reset"), a failure of its
    // own said once too; the refusals that follow, round after round, are said once.
    let said = |what: &str| {
        log.lines()
            .filter(|l| l.contains("sync round failed, retrying") && l.contains(what))
            .count()
    };
    assert_eq!(
        said("Connection refused"),
        1,
        "the failure was said more than once:\n{log}"
    );
    assert!(said("") <= 2, "failures said more than once:\n{log}");
    server.restart(&opts);
    wait_until(EVENT_TIMEOUT * 4, "the file to reach B", || {
        b.sync();
        b.try_read("while down.txt").is_some()
    });
    assert!(daemon.log().contains("syncing again"), "{}", daemon.log());
}

/// Empty folders are synced like files: created, renamed and deleted; a folder whose
/// last file is deleted stays on both sides, and one removed with its files is gone on
/// both and stays gone.
#[test]
fn empty_folders_are_created_renamed_and_deleted_like_files() {
    let (_server, a, b) = Server::start().pair();
    let dir = |c: &fsync_tests::Client, p: &str| c.path(p).is_dir();
    std::fs::create_dir_all(a.path("empty/deep")).unwrap();
    std::fs::create_dir(a.path("also")).unwrap();
    rounds(&[&a, &b]);
    assert!(dir(&b, "empty/deep") && dir(&b, "also"), "{:?}", b.paths());
    let status = b.run_ok(&["status"]);
    assert!(status.contains("pending: 0 local, 0 remote"), "{status}");

    std::fs::rename(a.path("also"), a.path("renamed")).unwrap();
    rounds(&[&a, &b]);
    assert!(!b.path("also").exists() && dir(&b, "renamed"));

    // Deleting the inner one leaves the outer one empty: it stays, on both sides.
    std::fs::remove_dir(a.path("empty/deep")).unwrap();
    rounds(&[&a, &b]);
    assert!(!b.path("empty/deep").exists() && dir(&b, "empty"));

    // A folder's last file deleted: the folder stays on both sides.
    a.write("docs/only.txt", "x");
    rounds(&[&a, &b]);
    a.remove("docs/only.txt");
    rounds(&[&a, &b, &a]);
    assert!(dir(&a, "docs") && dir(&b, "docs") && !b.path("docs/only.txt").exists());

    // A folder removed with its files: gone on both sides, and it stays gone.
    a.write("tree/x/one.txt", "1");
    rounds(&[&a, &b]);
    std::fs::remove_dir_all(a.path("tree")).unwrap();
    rounds(&[&a, &b, &a, &b]);
    assert!(!a.path("tree").exists() && !b.path("tree").exists());

    // And from the other side: B's new empty folder, then its removal.
    std::fs::create_dir(b.path("from-b")).unwrap();
    rounds(&[&b, &a]);
    assert!(dir(&a, "from-b"));
    std::fs::remove_dir(b.path("from-b")).unwrap();
    rounds(&[&b, &a]);
    assert!(!a.path("from-b").exists());
    for c in [&a, &b] {
        let s = c.sync();
        assert_eq!(s, fsync_tests::Summary::default(), "not settled: {s:?}");
    }
}
