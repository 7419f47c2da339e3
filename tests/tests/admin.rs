//! `fsync-server admin` beside a serving `fsync-server`, with real clients: usage per
//! account, a quota that refuses uploads (and loses nothing, and stops nothing else),
//! a disabled account refused at once and let in again, devices listed and revoked,
//! an account deleted with its blobs; and `fsync-gc stats` reporting usage per account.
#![allow(missing_docs)]

use std::time::Duration;

use fsync_tests::{random_bytes, wait_until, Backend, Client, Server};

/// The JSON `admin users show NAME --json` prints.
fn user(server: &Server, name: &str) -> serde_json::Value {
    let out = server.admin_ok(&["users", "show", name, "--json"]);
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"))
}

fn stored(server: &Server, name: &str) -> u64 {
    user(server, name)["stored_bytes"]
        .as_u64()
        .expect("stored_bytes")
}

/// How many pack files the server's blob directory holds.
fn pack_files(server: &Server) -> usize {
    fn walk(dir: &std::path::Path) -> usize {
        std::fs::read_dir(dir).map_or(0, |entries| {
            entries
                .flatten()
                .map(|e| match e.file_type() {
                    Ok(t) if t.is_dir() => walk(&e.path()),
                    Ok(_) if e.path().to_string_lossy().contains("/packs/") => 1,
                    _ => 0,
                })
                .sum()
        })
    }
    walk(&server.data_dir().join("blobs"))
}

/// The stdout of a `--once` round that must succeed.
fn sync_out(c: &Client) -> String {
    c.run_ok(&["--once"])
}

fn quotas(backend: Backend) {
    let Some((server, a, b)) = Server::start_on(backend).map(Server::pair) else {
        return;
    };
    a.write("small.txt", random_bytes(1, 1000));
    a.write("keep.txt", "kept");
    assert_eq!(a.sync().uploaded, 2);
    b.sync();
    let used = stored(&server, "alice");
    assert!(used >= 1000, "alice stores {used} bytes");
    let list = server.admin_ok(&["users", "list"]);
    assert!(
        list.contains("alice") && list.contains("active") && list.contains("none"),
        "{list}"
    );

    // A quota just above what is stored: the next upload is refused, with the reason.
    let quota = (used + 500).to_string();
    let said = server.admin_ok(&["quota", "set", "alice", &quota]);
    assert!(said.contains("quota of alice set to"), "{said}");
    a.write("big.bin", random_bytes(2, 64 * 1024));
    let out = sync_out(&a);
    assert!(out.contains("synced: 0 uploaded"), "{out}");
    assert!(
        out.contains("not synced yet: big.bin") && out.contains("storage quota exceeded"),
        "{out}"
    );
    assert_eq!(
        a.read("big.bin"),
        random_bytes(2, 64 * 1024),
        "the file is kept"
    );
    assert_eq!(stored(&server, "alice"), used, "nothing of it was stored");

    // Over quota, everything else still syncs: B's delete reaches A.
    b.remove("keep.txt");
    assert_eq!(b.sync().deleted_there, 1);
    let out = sync_out(&a);
    assert!(out.contains("1 deleted here"), "{out}");
    assert!(!a.path("keep.txt").exists());
    assert!(out.contains("not synced yet: big.bin"), "{out}");

    // `status` shows the storage, the quota and why the upload waits.
    let human = a.run_ok(&["status"]);
    assert!(
        human.contains("storage: ") && human.contains(" of "),
        "{human}"
    );
    let json: serde_json::Value =
        serde_json::from_str(&a.run_ok(&["status", "--json"])).expect("status --json");
    assert_eq!(json["storage"]["quota_bytes"].as_u64(), Some(used + 500));
    assert_eq!(json["storage"]["used_bytes"].as_u64(), Some(used));
    assert!(
        json["pending"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["path"] == "big.bin" && p["state"] == "upload-new"),
        "{json}"
    );

    // Bad input says what is wrong and changes nothing.
    let err = server.admin_fails(&["quota", "set", "alice", "lots"]);
    assert!(err.contains("not a size"), "{err}");
    let err = server.admin_fails(&["quota", "set", "nobody", "1G"]);
    assert!(err.contains("no account named \"nobody\""), "{err}");
    assert_eq!(
        user(&server, "alice")["quota_bytes"].as_u64(),
        Some(used + 500)
    );

    // Lifted: the file goes up and reaches B.
    server.admin_ok(&["quota", "set", "alice", "none"]);
    assert!(user(&server, "alice")["quota_bytes"].is_null());
    assert_eq!(a.sync().uploaded, 1);
    assert_eq!(b.sync().downloaded, 1);
    assert_eq!(b.read("big.bin"), random_bytes(2, 64 * 1024));
    assert!(stored(&server, "alice") > used + 64 * 1024);

    // `fsync-gc stats` reports the same usage per account.
    let stats = server.gc(&server.options(), &["stats", "--json"]);
    fsync_tests::check(&stats, "fsync-gc stats");
    let stats: serde_json::Value = serde_json::from_slice(&stats.stdout).expect("stats --json");
    let users = stats["users"].as_array().expect("users in stats");
    assert_eq!(users.len(), 1, "{stats}");
    assert_eq!(users[0]["username"], "alice");
    assert_eq!(
        users[0]["stored_bytes"].as_u64(),
        Some(stored(&server, "alice"))
    );
    server.assert_gc_verify_clean(&server.options());
}

fsync_tests::backend_tests! {
    quotas: a_quota_refuses_uploads_and_loses_nothing,
    a_quota_refuses_uploads_and_loses_nothing_on_postgres
}

/// How long a push socket may take to close after its account is disabled: at once on
/// PostgreSQL (NOTIFY), at the next heartbeat (20 s) on SQLite.
const SOCKET_CLOSE: Duration = Duration::from_secs(30);

fn disabled_accounts(backend: Backend) {
    let Some((server, a, b)) = Server::start_on(backend).map(Server::pair) else {
        return;
    };
    let bob = server.register("bob");
    let bobs = bob.device();
    a.write("before.txt", "before");
    a.sync();
    // B logs in under a name of its own, to be found in the device list.
    let device_name = [("FSYNC_DEVICE_NAME".to_owned(), "laptop-b".to_owned())];
    fsync_tests::check(
        &b.run_with_env(&["--once"], &device_name),
        "B's first round",
    );
    bobs.write("bob.txt", "bob's");
    bobs.sync();
    let mut daemon = b.spawn_daemon();
    wait_until(fsync_tests::EVENT_TIMEOUT, "B's daemon to sync", || {
        b.try_read("before.txt").is_some() && daemon.log().contains("push socket open")
    });

    let said = server.admin_ok(&["users", "disable", "alice"]);
    assert!(said.contains("alice disabled"), "{said}");
    // Her requests are refused at once, with the reason; bob's are not.
    let err = a.run_fails(&["--once"], "a disabled account's round");
    assert!(err.contains("disabled by the server's operator"), "{err}");
    server.register("carol");
    let newcomer = fsync_tests::Account::at(&server.url(), "alice").device();
    let err = newcomer.run_fails(&["--once"], "a disabled account's login");
    assert!(err.contains("disabled by the server's operator"), "{err}");
    bobs.write("bob2.txt", "still works");
    assert_eq!(bobs.sync().uploaded, 1);
    // Her daemon's push socket is closed with the reason.
    wait_until(SOCKET_CLOSE, "the daemon's socket to close", || {
        daemon.log().contains("push socket closed by the server")
    });
    // The close frame's reason, not only a refused request, names why.
    let log = daemon.log();
    let closed = log
        .lines()
        .find(|l| l.contains("push socket closed by the server"))
        .unwrap_or_default();
    assert!(
        closed.contains("disabled by the server's operator"),
        "{log}"
    );
    assert!(user(&server, "alice")["disabled"].as_bool().unwrap());
    let list = server.admin_ok(&["users", "list"]);
    assert!(list.contains("disabled"), "{list}");

    // Enabled again: nothing was lost, the daemon syncs again by itself.
    server.admin_ok(&["users", "enable", "alice"]);
    a.write("after.txt", "after");
    assert_eq!(a.sync().uploaded, 1);
    wait_until(
        fsync_tests::EVENT_TIMEOUT,
        "the daemon to sync again",
        || b.try_read("after.txt").as_deref() == Some(b"after"),
    );
    daemon.kill();

    // Devices: listed, one revoked (its next request refused), bad ids refused.
    let devices: serde_json::Value =
        serde_json::from_str(&server.admin_ok(&["devices", "list", "alice", "--json"]))
            .expect("devices --json");
    let devices = devices.as_array().unwrap();
    // A and B: the login refused while disabled registered none.
    assert_eq!(devices.len(), 2, "{devices:?}");
    let b_id = devices
        .iter()
        .find(|d| d["name"] == "laptop-b")
        .and_then(|d| d["id"].as_str())
        .unwrap_or_else(|| panic!("no laptop-b in {devices:?}"))
        .to_owned();
    let said = server.admin_ok(&["devices", "revoke", "alice", &b_id]);
    assert!(said.contains("revoked"), "{said}");
    let devices: serde_json::Value =
        serde_json::from_str(&server.admin_ok(&["devices", "list", "alice", "--json"])).unwrap();
    let revoked: Vec<&str> = devices
        .as_array()
        .unwrap()
        .iter()
        .filter(|d| d["revoked"] == true)
        .map(|d| d["name"].as_str().unwrap())
        .collect();
    assert_eq!(revoked, ["laptop-b"]);
    // Its session is over: B's next round has to log in with the password again, and
    // does so as a new device (revoking ends a session; disabling locks an account out).
    let out = b.run_ok(&["--once", "--verbose"]);
    assert!(out.contains("synced: "), "{out}");
    let devices: serde_json::Value =
        serde_json::from_str(&server.admin_ok(&["devices", "list", "alice", "--json"])).unwrap();
    assert_eq!(devices.as_array().unwrap().len(), 3, "{devices}");
    let err = server.admin_fails(&["devices", "revoke", "bob", &b_id]);
    assert!(err.contains("bob has no device"), "{err}");
    let err = server.admin_fails(&["devices", "revoke", "alice", "not-hex"]);
    assert!(err.contains("invalid value"), "{err}");

    // Deleted: only with --yes; then her login fails, her blobs are gone, bob's stay.
    let err = server.admin_fails(&["users", "delete", "alice"]);
    assert!(err.contains("--yes"), "{err}");
    assert!(user(&server, "alice")["files"].as_u64().unwrap() >= 2);
    let packs_before = pack_files(&server);
    let said = server.admin_ok(&["users", "delete", "alice", "--yes", "--json"]);
    let said: serde_json::Value = serde_json::from_str(&said).expect("delete --json");
    assert_eq!(said["username"], "alice");
    let deleted = said["blobs_deleted"].as_u64().unwrap();
    assert!(deleted >= 1, "{said}");
    assert_eq!(
        pack_files(&server),
        packs_before - deleted as usize,
        "{said}"
    );
    let err = server.admin_fails(&["users", "show", "alice"]);
    assert!(err.contains("no account named"), "{err}");
    let err = a.run_fails(&["--once"], "a deleted account's round");
    assert!(
        err.contains("invalid username or password") || err.contains("revoked"),
        "{err}"
    );
    let users: serde_json::Value =
        serde_json::from_str(&server.admin_ok(&["users", "list", "--json"])).unwrap();
    let names: Vec<&str> = users
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["username"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["bob", "carol"]);
    let fresh = bob.device();
    assert_eq!(fresh.sync().downloaded, 2, "bob's files are whole");
    server.assert_gc_verify_clean(&server.options());
}

fsync_tests::backend_tests! {
    disabled_accounts: an_account_is_disabled_enabled_revoked_and_deleted,
    an_account_is_disabled_enabled_revoked_and_deleted_on_postgres
}

/// The admin tools refuse a data dir that is not a server's, creating nothing.
#[test]
fn admin_refuses_a_directory_that_is_no_server_s() {
    let dir = tempfile::tempdir().unwrap();
    let out = fsync_tests::server_command()
        .args(["--data-dir"])
        .arg(dir.path().join("nothing"))
        .args(["admin", "users", "list"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = fsync_tests::stderr(&out);
    assert!(err.contains("no fsync database at"), "{err}");
    assert!(
        !dir.path().join("nothing").exists(),
        "it created the data dir"
    );
}
