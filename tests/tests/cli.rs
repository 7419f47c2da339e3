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
    // The same for scripts, and no log line around the answer (only with --verbose).
    let out = a.run(&["status", "--json"]);
    check(&out, "status --json");
    assert_eq!(stderr(&out), "", "a subcommand logged without --verbose");
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("status --json");
    assert_eq!(json["local_pending"], 3, "{json}");
    assert_eq!(json["remote_pending"], 0, "{json}");
    assert!(json["last_sync"].as_i64().is_some_and(|t| t > 0), "{json}");
    let mut entries: Vec<(String, String)> = json["pending"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["path"].as_str().unwrap().into(),
                p["state"].as_str().unwrap().into(),
            )
        })
        .collect();
    entries.sort();
    assert_eq!(
        entries,
        [
            ("gone.txt".to_owned(), "delete".to_owned()),
            ("new.txt".into(), "upload-new".into()),
            ("synced.txt".into(), "upload-changed".into()),
        ],
        "{json}"
    );
    let verbose = a.run(&["status", "--verbose"]);
    assert!(!stderr(&verbose).is_empty(), "--verbose logs");
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
    let restored = "restored doc.txt from v1 as v4";
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

/// `versions` gives each version's date, the device's name and renames; `restore`
/// takes the version as `versions` prints it; paths are taken as a shell user means
/// them: relative to the current directory inside the folder, or absolute.
#[test]
fn versions_show_dates_devices_and_renames_and_paths_work_as_in_a_shell() {
    let (_server, a, _b) = Server::start().pair();
    let laptop = [("FSYNC_DEVICE_NAME".into(), "alice's laptop".into())];
    a.write("doc.txt", "one\n");
    check(&a.run_with_env(&["--once"], &laptop), "first round");
    a.rename("doc.txt", "docs/doc.txt");
    a.sync();
    a.write("docs/doc.txt", "two, longer\n");
    a.sync();

    a.rename("docs/doc.txt", "docs/final.txt");
    a.sync();
    a.rename("docs/final.txt", "docs/doc.txt");
    a.sync();

    let history = a.run_ok(&["versions", "docs/doc.txt"]);
    let lines: Vec<&str> = history.lines().collect();
    assert_eq!(lines.len(), 5, "{history}");
    let today = chrono::Local::now().format("%Y-%m-%d").to_string();
    for line in &lines {
        assert!(
            line.contains(&today) && line.contains("(just now)"),
            "{history}"
        );
        assert!(
            line.contains("alice's laptop"),
            "no device name:\n{history}"
        );
    }
    // Newest first, each rename between the versions it came between.
    let expected = [
        "renamed docs/final.txt → docs/doc.txt",
        "renamed docs/doc.txt → docs/final.txt",
        "v2 ",
        "renamed doc.txt → docs/doc.txt",
        "v1 ",
    ];
    for (line, what) in lines.iter().zip(expected) {
        assert!(line.contains(what), "{what:?} not in {line:?}:\n{history}");
    }
    assert!(
        lines[2].starts_with("v2 ") && lines[4].starts_with("v1 "),
        "{history}"
    );

    // From inside the folder, as a shell user would.
    let inside = |args: &[&str]| {
        let out = a
            .command()
            .current_dir(a.path("docs"))
            .args(args)
            .output()
            .unwrap();
        check(&out, &format!("{args:?} inside the folder"));
        String::from_utf8(out.stdout).unwrap()
    };
    assert_eq!(inside(&["versions", "doc.txt"]), history);
    assert_eq!(inside(&["versions", "./doc.txt"]), history);
    let abs = a.path("docs/doc.txt");
    assert_eq!(a.run_ok(&["versions", abs.to_str().unwrap()]), history);
    let err = a.run_fails(&["versions", "/etc/passwd"], "a path outside the folder");
    assert!(err.contains("outside the synced folder"), "{err}");

    let out = inside(&["restore", "doc.txt", "--version", "v1"]);
    assert!(out.contains("restored docs/doc.txt from v1 as v3"), "{out}");
    assert_eq!(a.read("docs/doc.txt"), b"one\n");
    let err = a.run_fails(&["restore", "docs/doc.txt"], "restore without a version");
    assert!(err.contains("is not deleted: give the version"), "{err}");
    let err = a.run_fails(
        &["restore", "docs/doc.txt", "--version", "second"],
        "a version that is no number",
    );
    assert!(err.contains("e.g. v2"), "{err}");
}

/// `trash` lists what was deleted (not what came back), and `restore PATH` brings back
/// a deleted file as it last was, or every deleted file of a folder.
#[test]
fn trash_lists_deleted_files_and_restore_brings_back_a_file_or_a_folder() {
    let (_server, a, b) = Server::start().pair();
    assert!(a.run_ok(&["trash"]).contains("the trash is empty"));
    a.write("keep.txt", "keep");
    a.write("gone.txt", "first");
    a.sync();
    a.write("gone.txt", "last words");
    a.write("old/one.txt", "one");
    a.write("old/deep/two.txt", "two");
    rounds(&[&a, &b]);
    a.remove("gone.txt");
    std::fs::remove_dir_all(a.path("old")).unwrap();
    rounds(&[&a, &b]);
    assert!(!b.path("old/one.txt").exists());

    let trash = b.run_ok(&["trash"]);
    for path in ["gone.txt", "old/one.txt", "old/deep/two.txt"] {
        assert!(
            trash
                .lines()
                .any(|l| l.starts_with(&format!("{path}  deleted "))),
            "{path} not in the trash:\n{trash}"
        );
    }
    assert!(!trash.contains("keep.txt"), "{trash}");
    assert!(trash.contains("was 10 bytes"), "{trash}");
    assert!(trash.contains("3 deleted files"), "{trash}");
    // A folder's history: the latest change of each file below it.
    let history = b.run_ok(&["versions", "old"]);
    assert!(
        history.starts_with("old/  folder: 2 files below it (2 deleted)"),
        "{history}"
    );
    for path in ["old/one.txt", "old/deep/two.txt"] {
        assert!(
            history
                .lines()
                .any(|l| l.ends_with(&format!("{path}  (deleted)"))),
            "{path} not in:\n{history}"
        );
    }

    let out = b.run_ok(&["restore", "gone.txt"]);
    assert!(out.contains("restored gone.txt from v2"), "{out}");
    assert_eq!(b.read("gone.txt"), b"last words");
    let out = b.run_ok(&["restore", "old"]);
    assert_eq!(out.matches("restored old/").count(), 2, "{out}");
    assert_eq!(b.read("old/deep/two.txt"), b"two");
    a.sync();
    assert_same_tree(&a, &b);
    assert!(a.run_ok(&["trash"]).contains("the trash is empty"));
    let err = a.run_fails(
        &["restore", "old"],
        "restoring a folder with nothing deleted",
    );
    assert!(err.contains("nothing under old is deleted"), "{err}");
}

/// A command's help lists what it takes (`register` shows no daemon flags), and the
/// account and folder flags work after the command name too.
#[test]
fn help_lists_what_each_command_takes() {
    let (_server, a, _b) = Server::start().pair();
    let help = a.run_ok(&["register", "--help"]);
    for flag in ["--email", "--server-url", "--username", "--password"] {
        assert!(help.contains(flag), "{flag} missing:\n{help}");
    }
    for flag in ["--once", "--sync-interval"] {
        assert!(!help.contains(flag), "{flag} listed:\n{help}");
    }
    // Account and folder flags after the command name work as before it.
    let out = a
        .command_with(None, None)
        .args(["status", "--reset", "--timeout", "5"])
        .output()
        .unwrap();
    check(&out, "flags after the command name");
    let help = a.run_ok(&["--help"]);
    for flag in [
        "--once",
        "--reset",
        "--watch-dir",
        "--sync-interval",
        "--timeout",
    ] {
        assert!(help.contains(flag), "{flag} missing:\n{help}");
    }
}

/// A refused login (a wrong password, then a removed token) adds no device: the
/// folder keeps its device id through every fallback.
#[test]
fn a_refused_login_adds_no_device() {
    let server = Server::start();
    let a = server.register("alice").device();
    a.sync();
    let devices = |c: &fsync_tests::Client| c.run_ok(&["devices"]).lines().count();
    assert_eq!(devices(&a), 1);
    let wrong = [("FSYNC_PASSWORD".into(), "not the password at all".into())];
    for _ in 0..2 {
        assert!(!a.run_with_env(&["--once"], &wrong).status.success());
    }
    a.sync();
    assert_eq!(devices(&a), 1, "{}", a.run_ok(&["devices"]));
    std::fs::remove_file(a.path(".fsync/refresh_token")).unwrap();
    assert!(!a.run_with_env(&["--once"], &wrong).status.success());
    a.sync();
    assert_eq!(devices(&a), 1, "{}", a.run_ok(&["devices"]));
    // Another account on this folder is refused before it reaches the server.
    server.register("bob");
    let out = a
        .command_with(None, Some("bob"))
        .arg("--once")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("this folder is synced with the account alice, not bob"),
        "{}",
        stderr(&out)
    );
    a.sync();
    assert_eq!(devices(&a), 1, "{}", a.run_ok(&["devices"]));
}
