//! `fsync-client service install|uninstall` with the real binaries. No systemd user
//! manager runs on the test machines (no session bus), so the unit is checked by
//! `systemd-analyze --user verify` (syntax, and that its `ExecStart` is executable),
//! then started as systemd would start it (its `ExecStart`, its `EnvironmentFile`) and
//! stopped with systemd's stop signal, SIGTERM; `systemctl` itself is a script that
//! records what it was asked.
#![allow(missing_docs)]

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use fsync_tests::{
    check, random_bytes, server_command, wait_until, Client, Server, ServerOptions, EVENT_TIMEOUT,
    PASSWORD,
};

/// The values of `key=` lines in a unit.
fn unit_values<'a>(unit: &'a str, key: &str) -> Vec<&'a str> {
    unit.lines()
        .filter_map(|l| l.strip_prefix(key)?.strip_prefix('='))
        .collect()
}

/// Splits a command line quoted the way systemd reads it (double quotes, `\\` and `\"`
/// escapes, `%%` and `$$`).
fn split_exec(line: &str) -> Vec<String> {
    let mut args = Vec::new();
    let mut chars = line.chars().peekable();
    loop {
        while chars.peek() == Some(&' ') {
            chars.next();
        }
        let Some(first) = chars.next() else { break };
        let mut arg = String::new();
        if first == '"' {
            while let Some(c) = chars.next() {
                match c {
                    '"' => break,
                    '\\' => arg.push(chars.next().expect("escape")),
                    c => arg.push(c),
                }
            }
        } else {
            arg.push(first);
            while let Some(&c) = chars.peek() {
                if c == ' ' {
                    break;
                }
                arg.push(c);
                chars.next();
            }
        }
        args.push(arg.replace("%%", "%").replace("$$", "$"));
    }
    args
}

struct Env {
    _dir: tempfile::TempDir,
    config: PathBuf,
    runtime: PathBuf,
    calls: PathBuf,
    path: String,
}

impl Env {
    /// A config dir, a runtime dir for systemd-analyze, and a `systemctl` script that
    /// appends its arguments to `calls` and succeeds.
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let (config, runtime, bin) = (
            dir.path().join("config"),
            dir.path().join("runtime"),
            dir.path().join("bin"),
        );
        for d in [&config, &runtime, &bin] {
            std::fs::create_dir_all(d).unwrap();
        }
        std::fs::set_permissions(&runtime, std::fs::Permissions::from_mode(0o700)).unwrap();
        let calls = dir.path().join("systemctl-calls");
        let script = bin.join("systemctl");
        std::fs::write(
            &script,
            format!("#!/bin/sh\necho \"$@\" >> '{}'\n", calls.display()),
        )
        .unwrap();
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
        let path = format!(
            "{}:{}",
            bin.display(),
            std::env::var("PATH").unwrap_or_default()
        );
        Self {
            _dir: dir,
            config,
            runtime,
            calls,
            path,
        }
    }

    fn vars(&self) -> Vec<(String, String)> {
        vec![
            ("XDG_CONFIG_HOME".into(), self.config.display().to_string()),
            ("PATH".into(), self.path.clone()),
        ]
    }

    fn calls(&self) -> String {
        std::fs::read_to_string(&self.calls).unwrap_or_default()
    }

    fn units(&self) -> Vec<PathBuf> {
        let dir = self.config.join("systemd/user");
        let mut v: Vec<_> = std::fs::read_dir(dir)
            .map(|d| d.map(|e| e.unwrap().path()).collect())
            .unwrap_or_default();
        v.sort();
        v
    }
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

#[test]
fn the_service_unit_runs_the_daemon_and_stops_on_sigterm() {
    let (_server, a, b) = Server::start().pair();
    a.write("before.txt", "synced before the service");
    a.sync();
    let env = Env::new();

    // A wrong password is refused before anything is written.
    let mut wrong = env.vars();
    wrong.push(("FSYNC_PASSWORD".into(), "not the password at all".into()));
    let out = a.run_with_env(&["service", "install"], &wrong);
    assert!(!out.status.success(), "a wrong password was stored");
    assert!(env.units().is_empty(), "{:?}", env.units());

    // Install: the unit and the password file, then daemon-reload and enable --now.
    let out = a.run_with_env(&["service", "install"], &env.vars());
    check(&out, "service install");
    let units = env.units();
    assert_eq!(units.len(), 1, "{units:?}");
    let unit_path = &units[0];
    let name = unit_path.file_name().unwrap().to_str().unwrap().to_owned();
    assert!(
        name.starts_with("fsync-client-root-") && name.ends_with(".service"),
        "{name}"
    );
    let calls = env.calls();
    assert_eq!(
        calls.lines().collect::<Vec<_>>(),
        [
            "--user daemon-reload".to_owned(),
            format!("--user enable {name}"),
            format!("--user restart {name}"),
        ],
        "{calls}"
    );
    let unit = std::fs::read_to_string(unit_path).unwrap();
    // systemd takes EnvironmentFile= literally (no quotes): an absolute path.
    let env_file = PathBuf::from(unit_values(&unit, "EnvironmentFile")[0]);
    assert!(env_file.is_absolute() && env_file.is_file(), "{unit}");
    assert_eq!(mode(&env_file), 0o600, "the password file must be private");
    let secret = std::fs::read_to_string(&env_file).unwrap();
    // The value as systemd's environment-file parser reads it: in double quotes, with
    // `\"` and `\\` escapes.
    let password = secret
        .lines()
        .find_map(|l| l.strip_prefix("FSYNC_PASSWORD="))
        .map(|v| split_exec(v).remove(0))
        .expect("FSYNC_PASSWORD in the environment file");
    assert_eq!(password, PASSWORD, "{secret}");
    assert!(
        !unit.contains(PASSWORD),
        "the password is in the unit:\n{unit}"
    );

    // systemd reads it: syntax, sections, and an executable ExecStart.
    let verify = Command::new("systemd-analyze")
        .args(["--user", "verify"])
        .arg(unit_path)
        .env("XDG_RUNTIME_DIR", &env.runtime)
        .output()
        .expect("systemd-analyze (Debian's systemd package) is on this machine");
    check(&verify, "systemd-analyze --user verify");
    // systemd-analyze exits 0 on a line it ignores; it must have nothing to say.
    let said = String::from_utf8_lossy(&verify.stderr);
    assert!(said.trim().is_empty(), "systemd-analyze warned:\n{said}");

    // Started as systemd starts it: ExecStart, with the environment file's password.
    let exec = split_exec(unit_values(&unit, "ExecStart")[0]);
    let root = a_root(&a);
    assert!(exec.iter().any(|arg| arg == &root), "{exec:?}");
    let mut daemon = Command::new(&exec[0])
        .args(&exec[1..])
        .env_clear()
        .env("FSYNC_PASSWORD", &password)
        .env("HOME", env.config.parent().unwrap())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the unit's ExecStart");
    a.write("by-the-service.txt", "synced by the service's daemon");
    wait_until(
        EVENT_TIMEOUT,
        "the service's daemon to upload the file",
        || {
            b.sync();
            b.path("by-the-service.txt").exists()
        },
    );

    // systemd stops it with SIGTERM: the daemon finishes its round and exits cleanly.
    let pid = i32::try_from(daemon.id()).unwrap();
    let killed = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    wait_until(
        Duration::from_secs(30),
        "the daemon to stop on SIGTERM",
        || daemon.try_wait().unwrap().is_some(),
    );
    let out = daemon.wait_with_output().unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "SIGTERM: {:?}\n{log}", out.status);
    assert!(log.contains("stopping"), "{log}");

    // Uninstall: disable --now, both files removed.
    let out = a.run_with_env(&["service", "uninstall"], &env.vars());
    check(&out, "service uninstall");
    assert!(env.units().is_empty());
    assert!(!env_file.exists());
    assert!(
        env.calls()
            .contains(&format!("--user disable --now {name}")),
        "{}",
        env.calls()
    );
    let out = a.run_with_env(&["service", "uninstall"], &env.vars());
    assert!(!out.status.success(), "a second uninstall found a service");
}

fn a_root(c: &Client) -> String {
    std::fs::canonicalize(c.root())
        .unwrap()
        .display()
        .to_string()
}

/// The server's example system unit (`server/dist/fsync-server.service`) is valid for
/// systemd and hardened (`systemd-analyze security` rates it 2.0 or better), and the
/// server stops cleanly on SIGTERM (what `systemctl stop` sends) while a client uploads:
/// exit 0; after a restart the client's next round completes the file and nothing
/// stored is damaged.
#[test]
fn the_server_unit_is_hardened_and_the_server_stops_cleanly_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let shipped = include_str!("../../server/dist/fsync-server.service");
    let exe = server_command()
        .get_program()
        .to_string_lossy()
        .into_owned();
    let unit: String = shipped
        .lines()
        .map(|l| {
            if l.starts_with("ExecStart=") {
                format!("ExecStart={exe}\n")
            } else {
                format!("{l}\n")
            }
        })
        .collect();
    let unit_path = dir.path().join("fsync-server.service");
    std::fs::write(&unit_path, unit).unwrap();
    let verify = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&unit_path)
        .output()
        .expect("systemd-analyze (Debian's systemd package) is on this machine");
    check(
        &verify,
        "systemd-analyze verify server/dist/fsync-server.service",
    );
    let said = String::from_utf8_lossy(&verify.stderr);
    assert!(said.trim().is_empty(), "systemd-analyze warned:\n{said}");
    let security = Command::new("systemd-analyze")
        .args(["security", "--offline=yes", "--threshold=20"])
        .arg(&unit_path)
        .output()
        .unwrap();
    check(&security, "systemd-analyze security (exposure at most 2.0)");

    let (mut server, a, b) = Server::start().pair();
    let data = random_bytes(17, 96 << 20);
    a.write("big.bin", &data);
    let mut run = a.spawn_once();
    wait_until(
        EVENT_TIMEOUT * 2,
        "the upload's first batch to be stored",
        || server.requests("POST", "/api/v1/chunks/batch") >= 1,
    );
    server.terminate();
    let status = server.wait_exit(Duration::from_secs(60));
    assert!(
        status.success(),
        "fsync-server on SIGTERM: {status:?}\n{}",
        server.log_text()
    );
    assert!(
        server.log_text().contains("shutting down"),
        "{}",
        server.log_text()
    );
    // The client's round ends one way or the other (finished, or refused mid-way).
    run.wait_exit(EVENT_TIMEOUT * 4);
    server.restart(&ServerOptions::default());
    a.sync();
    b.sync();
    assert!(
        std::fs::read(b.path("big.bin")).unwrap() == data,
        "big.bin differs on B"
    );
    server.assert_gc_verify_clean(&ServerOptions::default());
}
