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
