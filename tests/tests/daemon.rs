//! Real-time sync: two client daemons (watcher + push socket, `SYNC_INTERVAL=1`)
//! carry a create, an edit and a delete across within seconds.
#![allow(missing_docs)]

use std::time::Duration;

use fsync_tests::{assert_same_tree, wait_until, Backend, PauseDir, Server};

/// How long a change may take to reach the other daemon.
const REAL_TIME: Duration = Duration::from_secs(10);

fn daemons(backend: Backend) {
    let Some((_server, a, b)) = Server::start_on(backend).map(Server::pair) else {
        return;
    };
    let _da = a.spawn_daemon();
    let _db = b.spawn_daemon();

    a.write("live/hello.txt", "hello from A\n");
    wait_until(REAL_TIME, "A's new file on B", || {
        b.try_read("live/hello.txt").as_deref() == Some(b"hello from A\n")
    });

    b.write("live/hello.txt", "B answers\n");
    wait_until(REAL_TIME, "B's edit on A", || {
        a.try_read("live/hello.txt").as_deref() == Some(b"B answers\n")
    });

    a.write("live/second.txt", "second\n");
    a.remove("live/hello.txt");
    wait_until(REAL_TIME, "A's delete and new file on B", || {
        !b.path("live/hello.txt").exists()
            && b.try_read("live/second.txt").as_deref() == Some(b"second\n")
    });
    assert_same_tree(&a, &b);
}

fsync_tests::backend_tests! {
    daemons: daemons_sync_in_real_time,
    daemons_sync_in_real_time_on_postgres
}

/// A daemon started while the server is down does not exit: it says once that it
/// waits, and syncs as soon as the server is back.
#[test]
fn a_daemon_started_while_the_server_is_down_waits_for_it() {
    let opts = fsync_tests::ServerOptions::default();
    let (mut server, a, b) = fsync_tests::Server::start_with(&opts).pair();
    a.sync();
    server.kill();
    a.write("written while the server was down.txt", "waiting");
    let mut daemon = a.spawn_daemon();
    fsync_tests::wait_until(
        fsync_tests::EVENT_TIMEOUT,
        "the daemon to say it waits",
        || daemon.log().contains("the server cannot be reached"),
    );
    assert!(!daemon.exited(), "the daemon gave up:\n{}", daemon.log());
    server.restart(&opts);
    fsync_tests::wait_until(fsync_tests::EVENT_TIMEOUT, "the file to reach B", || {
        b.sync();
        b.try_read("written while the server was down.txt")
            .is_some()
    });
    let log = daemon.log();
    assert_eq!(
        log.matches("the server cannot be reached").count(),
        1,
        "{log}"
    );
    assert!(log.contains("the server answers again"), "{log}");
    daemon.kill();
}

/// A small file saved while a big one is on its way is synced at once, on both sides:
/// A's upload of a 24 MiB file and then B's download of it are each held in their
/// background lane (a failpoint), and a small file saved meanwhile reaches B; released,
/// the big file arrives whole.
#[test]
fn small_files_pass_big_transfers() {
    let (_server, a, b) = Server::start().pair();
    let pause_a = PauseDir::default();
    let pause_b = PauseDir::default();
    let mut da = a.spawn_daemon_with_env(&pause_a.env("client.lane.upload=pause"));
    let mut db = b.spawn_daemon_with_env(&pause_b.env("client.lane.download=pause"));
    let big: Vec<u8> = (0..24u32 << 20)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 11) as u8)
        .collect();
    a.write("big.bin", &big);
    pause_a.wait_paused("client.lane.upload", || da.exited());

    a.write("notes/first.txt", "saved during the upload\n");
    wait_until(REAL_TIME, "the small file on B during A's upload", || {
        b.try_read("notes/first.txt").as_deref() == Some(b"saved during the upload\n")
    });
    assert!(!b.path("big.bin").exists(), "the held upload was committed");

    pause_a.resume("client.lane.upload");
    pause_b.wait_paused("client.lane.download", || db.exited());
    a.write("notes/second.txt", "saved during the download\n");
    wait_until(REAL_TIME, "the small file on B during B's download", || {
        b.try_read("notes/second.txt").as_deref() == Some(b"saved during the download\n")
    });
    assert!(
        !b.path("big.bin").exists(),
        "the held download was installed"
    );

    pause_b.resume("client.lane.download");
    wait_until(REAL_TIME, "the big file on B", || {
        b.try_read("big.bin").is_some_and(|d| d == big)
    });
    assert_same_tree(&a, &b);
    assert!(
        da.log().contains("uploading in the background"),
        "{}",
        da.log()
    );
    assert!(
        db.log().contains("downloading in the background"),
        "{}",
        db.log()
    );
}
