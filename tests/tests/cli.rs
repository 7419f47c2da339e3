//! The `status`, `versions`, `restore` and `conflicts` subcommands against a real
//! server.
#![allow(missing_docs)]

use std::time::{Duration, SystemTime};

use fsync_tests::{assert_same_tree, check, conflict_copies, rounds, stderr, Server, PASSWORD};

#[test]
fn status_reports_pending_uploads_downloads_and_deletes() {
    let (_server, a, b) = Server::start().pair();
    a.write("synced.txt", "synced");
    a.write("gone.txt", "will be deleted");
    rounds(&[&a, &b]);

    let clean = a.run_ok(&["status"]);
    assert!(
        clean.contains("pending: 0 local, 0 remote"),
        "status of a synced folder:\n{clean}"
    );
    assert!(clean.contains("last sync: "), "{clean}");
    assert!(!clean.contains("last sync: never"), "{clean}");

    a.write("new.txt", "new");
    a.write("synced.txt", "changed");
    a.remove("gone.txt");
    let status = a.run_ok(&["status"]);
    for line in [
        "upload pending (new)       new.txt",
        "upload pending (changed)   synced.txt",
        "delete pending             gone.txt",
        "pending: 3 local, 0 remote",
    ] {
        assert!(status.contains(line), "no {line:?} in:\n{status}");
    }
    a.sync();
    let status = b.run_ok(&["status"]);
    for line in [
        "download pending           new.txt",
        "download pending           synced.txt",
        "download pending           gone.txt (deleted there)",
        "pending: 0 local, 3 remote",
    ] {
        assert!(status.contains(line), "no {line:?} in:\n{status}");
    }
    // status only looks: a round afterwards still does the work.
    let s = b.sync();
    assert_eq!((s.downloaded, s.deleted_here), (2, 1), "{s:?}");
    assert_same_tree(&a, &b);
}

#[test]
fn versions_lists_history_and_restore_brings_back_an_old_version() {
    let (_server, a, b) = Server::start().pair();
    for text in ["version one\n", "version two, longer\n", "three\n"] {
        a.write("doc.txt", text);
        a.sync();
    }
    let history = a.run_ok(&["versions", "doc.txt"]);
    let lines: Vec<&str> = history.lines().collect();
    assert_eq!(lines.len(), 3, "{history}");
    // Newest first, with sizes.
    for (line, (v, size)) in lines.iter().zip([("v3", 6), ("v2", 20), ("v1", 12)]) {
        assert!(line.starts_with(&format!("{v} ")), "{history}");
        assert!(line.contains(&format!(" {size} bytes")), "{history}");
        assert!(line.ends_with("doc.txt"), "{history}");
    }

    let out = a.run_ok(&["restore", "doc.txt", "--version", "1"]);
    let restored = "restored doc.txt to version 1 as version 4";
    assert!(out.contains(restored), "{out}");
    assert_eq!(a.read("doc.txt"), b"version one\n");
    b.sync();
    assert_eq!(b.read("doc.txt"), b"version one\n");
    let history = b.run_ok(&["versions", "doc.txt"]);
    assert!(history.starts_with("v4 "), "{history}");
    assert_eq!(history.lines().count(), 4, "{history}");
    assert_same_tree(&a, &b);

    let stderr = a.run_fails(&["versions", "nope.txt"], "versions of an unknown file");
    assert!(stderr.contains("not known to the server"), "{stderr}");
}

#[test]
fn a_deleted_file_can_be_restored() {
    let (_server, a, b) = Server::start().pair();
    a.write("doc.txt", "version one\n");
    a.sync();
    a.write("doc.txt", "version two\n");
    a.sync();
    a.remove("doc.txt");
    a.sync();
    let history = a.run_ok(&["versions", "doc.txt"]);
    let newest = history.lines().next().unwrap();
    assert!(newest.contains("(deleted)"), "{history}");
    a.run_ok(&["restore", "doc.txt", "--version", "1"]);
    assert_eq!(a.read("doc.txt"), b"version one\n");
    b.sync();
    assert_same_tree(&a, &b);
}

#[test]
fn conflicts_lists_the_conflict_copies() {
    let (_server, a, b) = Server::start().pair();
    a.write("plan.md", "plan\n");
    a.write("other.md", "other\n");
    rounds(&[&a, &b]);
    let none = a.run_ok(&["conflicts"]);
    assert_eq!(
        none,
        format!("no conflict copies in {}\n", a.root().display())
    );

    let t = SystemTime::now();
    b.write_at("plan.md", "B's plan\n", t);
    a.write_at("plan.md", "A's plan\n", t + Duration::from_secs(10));
    rounds(&[&a, &b, &a]);
    let copies = conflict_copies(&a.tree());
    assert_eq!(copies.len(), 1, "{copies:?}");
    let expected = format!("{}\n", copies[0]);
    assert_eq!(a.run_ok(&["conflicts"]), expected);
    assert_eq!(b.run_ok(&["conflicts"]), expected);
    assert!(a.run_ok(&["status"]).contains("conflict copies: 1"));
}

/// Successful logins so far, from the server's request counter.
fn logins(server: &Server) -> u64 {
    server.metric(
        "fsync_http_requests_total{method=\"POST\",route=\"/api/v1/auth/login\",status=\"200\"}",
    )
}

#[test]
fn restarts_resume_the_session_instead_of_logging_in_again() {
    let server = Server::start();
    let alice = server.register("alice");
    let a = alice.device();
    a.write("first.txt", "first");
    a.sync();
    let after_first = logins(&server);
    assert_eq!(after_first, 1);
    // More runs than the server allows logins per minute (10): each resumes the
    // stored session, none logs in, none waits for a 429.
    for i in 0..12 {
        a.write(&format!("run-{i}.txt"), format!("run {i}"));
        assert_eq!(a.sync().uploaded, 1, "run {i}");
    }
    assert_eq!(logins(&server), after_first, "a restart logged in again");
    let token = a.root().join(".fsync/refresh_token");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&token)
            .expect("token file")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "token file mode {mode:o}");
    }

    // A stored session does not stand in for the password: a wrong one is refused.
    let wrong = [("FSYNC_PASSWORD".into(), "not the password".into())];
    let out = a.run_with_env(&["--once"], &wrong);
    assert!(!out.status.success(), "a wrong password synced");
    assert!(stderr(&out).contains("logging in"), "{}", stderr(&out));

    // A revoked (here: removed) token falls back to a full login.
    std::fs::remove_file(&token).expect("remove the token file");
    a.write("last.txt", "last");
    assert_eq!(a.sync().uploaded, 1);
    assert_eq!(logins(&server), after_first + 1);
}

/// Every key derives from the password, so registration refuses a weak one with the
/// reason, and registers nothing (the name stays free).
#[test]
fn register_refuses_a_weak_password_and_registers_nothing() {
    let server = Server::start();
    for (password, why) in [
        ("", "it has 0 characters"),
        ("x", "it has 1 characters"),
        ("abababababababab", "fewer than 4 different characters"),
        ("Dave-the-builder-1", "contains the username"),
    ] {
        let out = server.register_with_password("dave", password);
        let err = stderr(&out);
        assert!(!out.status.success(), "{password:?} was accepted");
        assert!(
            err.contains("password too weak") && err.contains(why),
            "{password:?}: {err}"
        );
    }
    check(
        &server.register_with_password("dave", PASSWORD),
        "register with a strong password",
    );
}

/// Messages say what to fix: a server URL without its scheme, an empty username; and
/// the server logs a refused login (never the password). (No conflict copies at all:
/// `conflicts_lists_the_conflict_copies`.)
#[test]
fn messages_name_what_to_fix() {
    let (server, a, _b) = Server::start().pair();
    a.write("note.txt", "a note");
    a.sync();

    let out = a
        .command_with(Some("127.0.0.1:8000"), None)
        .arg("--once")
        .output()
        .unwrap();
    let err = stderr(&out);
    assert!(!out.status.success());
    assert!(
        err.contains("has no scheme: write http://127.0.0.1:8000"),
        "{err}"
    );

    let out = a
        .command_with(None, Some(""))
        .arg("--once")
        .output()
        .unwrap();
    let err = stderr(&out);
    assert!(!out.status.success());
    assert!(err.contains("FSYNC_USERNAME) is empty"), "{err}");

    let wrong = [("FSYNC_PASSWORD".into(), "not the password at all".into())];
    assert!(!a.run_with_env(&["--once"], &wrong).status.success());
    let log = server.log_text();
    assert!(log.contains("login refused"), "{log}");
    assert!(
        !log.contains("not the password at all"),
        "the password in the log"
    );
}

/// `devices` lists the account's devices, marks this one, and `devices revoke` ends
/// another's access (by a prefix of its id); this folder's own device, an unknown id
/// and a too short one are refused with the reason.
#[test]
fn devices_are_listed_and_another_is_revoked() {
    let (_server, a, b) = Server::start().pair();
    a.sync();
    b.sync();
    let list = a.run_ok(&["devices"]);
    let lines: Vec<&str> = list.lines().collect();
    assert_eq!(lines.len(), 2, "{list}");
    assert_eq!(list.matches("(this device)").count(), 1, "{list}");
    let own = lines.iter().find(|l| l.contains("(this device)")).unwrap();
    let other = lines.iter().find(|l| !l.contains("(this device)")).unwrap();
    let id_of = |line: &str| line.split_whitespace().next().unwrap().to_owned();
    let (own, other) = (id_of(own), id_of(other));
    assert!(list.contains("last seen just now"), "{list}");

    let err = a.run_fails(&["devices", "revoke", &own], "revoked its own device");
    assert!(err.contains("this folder's own device"), "{err}");
    let err = a.run_fails(&["devices", "revoke", "ffff"], "revoked no device");
    assert!(
        err.contains("no device of this account has the id"),
        "{err}"
    );
    let err = a.run_fails(&["devices", "revoke", "ab"], "took a 2-character id");
    assert!(err.contains("at least 4 characters"), "{err}");

    let done = a.run_ok(&["devices", "revoke", &other[..8]]);
    assert!(done.starts_with(&format!("revoked {other}")), "{done}");
    let list = a.run_ok(&["devices"]);
    assert!(
        list.lines()
            .any(|l| l.starts_with(&other) && l.contains("(revoked)")),
        "{list}"
    );
}
