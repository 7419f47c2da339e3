//! Real-time sync: two client daemons (watcher + push socket, `SYNC_INTERVAL=1`)
//! carry a create, an edit and a delete across within seconds.
#![allow(missing_docs)]

use std::time::Duration;

use fsync_tests::{assert_same_tree, wait_until, Backend, Server};

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
