//! PostgreSQL restarted, and down, in the middle of a sync round. The shared test
//! cluster is never touched: the test runs its own throw-away PostgreSQL 15 instance
//! (initdb in a temp dir, its own port and socket dir). Missing PostgreSQL binaries
//! fail the test: it must never be skipped.
#![allow(missing_docs)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use fsync_tests::{
    assert_same_tree, check, free_port, random_bytes, temp_files, Client, Server, ServerOptions,
    EVENT_TIMEOUT,
};

const PG_BIN: &str = "/usr/lib/postgresql/15/bin";
const KIB: usize = 1024;

/// A private PostgreSQL instance; stopped (immediately) and removed on drop.
struct PrivatePostgres {
    dir: tempfile::TempDir,
    port: u16,
    /// `runuser -u postgres --` when running as root (PostgreSQL refuses root).
    as_postgres: bool,
}

fn output(cmd: &mut Command, what: &str) -> Output {
    let out = cmd.stdin(Stdio::null()).output();
    let out = out.unwrap_or_else(|e| panic!("cannot run {what}: {e}"));
    check(&out, what);
    out
}

/// `id FLAG [USER]`: a numeric user or group id (of this process without `user`).
fn id_of(flag: &str, user: Option<&str>) -> u32 {
    let out = output(Command::new("id").arg(flag).args(user), "id");
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .expect("a numeric id")
}

impl PrivatePostgres {
    fn start() -> Self {
        for b in ["initdb", "pg_ctl"] {
            let p = Path::new(PG_BIN).join(b);
            assert!(
                p.is_file(),
                "{} is missing: this test needs PostgreSQL 15's server binaries \
                 (apt-get install postgresql-15); it must not be skipped",
                p.display()
            );
        }
        let as_postgres = id_of("-u", None) == 0;
        let chown_to_postgres = |dir: &Path| {
            if as_postgres {
                let (user, group) = (id_of("-u", Some("postgres")), id_of("-g", Some("postgres")));
                std::os::unix::fs::chown(dir, Some(user), Some(group))
                    .unwrap_or_else(|e| panic!("chown {} to postgres: {e}", dir.display()));
            }
        };
        let dir = tempfile::Builder::new()
            .prefix("fsync-pg-")
            .tempdir()
            .expect("temp dir");
        chown_to_postgres(dir.path());
        let pg = Self {
            dir,
            port: free_port(),
            as_postgres,
        };
        std::fs::create_dir(pg.sock()).expect("socket dir");
        chown_to_postgres(&pg.sock());
        let data = pg.data();
        output(
            pg.cmd("initdb")
                .arg("-D")
                .arg(&data)
                .args(["-U", "postgres", "--auth=trust", "--no-sync"])
                .args(["-E", "UTF8", "--locale=C"]),
            "initdb",
        );
        pg.ctl(&["start"]);
        pg
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn sock(&self) -> PathBuf {
        self.dir.path().join("sock")
    }

    fn cmd(&self, bin: &str) -> Command {
        let exe = Path::new(PG_BIN).join(bin);
        if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(exe);
            c
        } else {
            Command::new(exe)
        }
    }

    /// `pg_ctl ACTION` (waiting for it to finish), with this instance's options.
    fn ctl(&self, action: &[&str]) {
        let opts = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off",
            self.port,
            self.sock().display()
        );
        output(
            self.cmd("pg_ctl")
                .arg("-D")
                .arg(self.data())
                .arg("-l")
                .arg(self.dir.path().join("postgres.log"))
                .args(["-w", "-t", "60", "-o", &opts])
                .args(action),
            &format!("pg_ctl {}", action.join(" ")),
        );
    }

    fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        let _ = self
            .cmd("pg_ctl")
            .arg("-D")
            .arg(self.data())
            .args(["-m", "immediate", "-w", "stop"])
            .stdin(Stdio::null())
            .output();
    }
}

fn write_files(c: &Client, seed: u64, prefix: &str) -> u64 {
    let big = random_bytes(seed, 1024 * KIB + 7);
    c.write(&format!("{prefix}/big.bin"), big);
    c.write(&format!("{prefix}/small.txt"), format!("seed {seed}"));
    2
}

#[test]
fn postgres_restarted_mid_sync_the_server_recovers_and_the_sync_completes() {
    let pg = PrivatePostgres::start();
    let opts = ServerOptions {
        database_url: Some(pg.url()),
        ..ServerOptions::default()
    };
    let (server, a, b) = Server::start_with(&opts).pair();
    let point = "client.upload.before_commit";

    // 1. Restarted while A waits between its chunk upload and its commit: every
    //    pooled connection died; the server reconnects and the commit goes through.
    let first = write_files(&a, 1, "one");
    let (pause, mut run) = a.spawn_paused(point);
    pg.ctl(&["-m", "fast", "restart"]);
    pause.resume(point);
    let s = run.summary(EVENT_TIMEOUT * 2);
    assert_eq!(s.uploaded, first, "{s:?}\n{}", run.log());
    assert_eq!(b.sync().downloaded, first);
    assert_same_tree(&a, &b);

    // 2. Down when A commits: A is told clearly, nothing is committed, and once
    //    PostgreSQL is back the next round completes.
    let second = write_files(&a, 2, "two");
    let (pause, mut run) = a.spawn_paused(point);
    pg.ctl(&["-m", "fast", "stop"]);
    pause.resume(point);
    // The server's pool gives up after its acquire timeout (10 s).
    run.wait_exit(EVENT_TIMEOUT * 2);
    let log = run.log();
    assert!(log.contains("try again later"), "no clear error:\n{log}");
    pg.ctl(&["start"]);
    let s = b.sync();
    assert_eq!(s.downloaded, 0, "committed while PostgreSQL was down");
    assert_eq!(a.sync().uploaded, second);
    assert_eq!(b.sync().downloaded, second);
    assert_same_tree(&a, &b);
    assert_eq!(temp_files(b.root()), Vec::<String>::new());
    server.assert_gc_verify_clean(&opts);
}
