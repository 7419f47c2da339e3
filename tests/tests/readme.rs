//! The README's two set-up commands, run as written (read from the README, so a change
//! there is what is tested): the first brings a server to a healthy `/health` on the
//! embedded defaults, the second is what `.ci/run` runs. Only the port and the data
//! directory are moved, through the server's own environment variables, so that the
//! test neither collides with a server on 8000 nor writes into the checkout.
#![allow(missing_docs)]

use std::os::unix::process::CommandExt as _;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use fsync_tests::{free_port, http_get, wait_until};

/// The repository's root (this crate is `tests/`).
fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the crate lies in the repository")
}

/// The commands of the README's first `sh` block, comments and blank lines dropped.
fn setup_commands() -> Vec<String> {
    let readme = std::fs::read_to_string(repo().join("README.md")).expect("README.md");
    let block = readme
        .split("```sh\n")
        .nth(1)
        .and_then(|rest| rest.split("```").next())
        .expect("README.md starts with a ```sh block");
    block
        .lines()
        .map(|l| l.split(" #").next().unwrap_or("").trim().to_owned())
        .filter(|l| !l.is_empty())
        .collect()
}

#[test]
fn the_readme_starts_with_exactly_two_commands_and_the_second_is_ci() {
    let commands = setup_commands();
    assert_eq!(commands.len(), 2, "{commands:?}");
    let ci = std::fs::read_to_string(repo().join(".ci/run")).expect(".ci/run");
    let ci_command = ci
        .lines()
        .find_map(|l| l.strip_prefix("exec "))
        .expect(".ci/run ends in `exec COMMAND`");
    assert_eq!(commands[1], ci_command.trim(), "README vs .ci/run");
}

#[test]
fn the_readmes_first_command_serves_a_healthy_server() {
    let first = setup_commands().remove(0);
    let data = tempfile::tempdir().expect("temp dir");
    let log_path = data.path().join("output.log");
    let log = std::fs::File::create(&log_path).expect("log file");
    let port = free_port();
    // Its own process group: cargo and the server it starts stop together.
    let mut child = Command::new("bash")
        .args(["-c", &format!("exec {first}")])
        .current_dir(repo())
        .env("SERVER_PORT", port.to_string())
        .env("FSYNC_DATA_DIR", data.path())
        .env_remove("DATABASE_URL")
        .env_remove("POSTGRES_URL")
        .env_remove("BLOB_STORE")
        .stdout(Stdio::null())
        .stderr(log)
        .process_group(0)
        .spawn()
        .unwrap_or_else(|e| panic!("{first}: {e}"));
    // A release build may come first: minutes on a cold checkout.
    let healthy = || {
        http_get(port, "/health")
            .is_ok_and(|(status, body)| status == 200 && body.contains("\"ok\""))
    };
    let started = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        wait_until(
            Duration::from_secs(1500),
            "the README's server to be healthy",
            || healthy() || child.try_wait().ok().flatten().is_some(),
        );
    }));
    let ok = started.is_ok() && healthy();
    let group = format!("-{}", child.id());
    let _ = Command::new("kill").args(["-TERM", "--", &group]).status();
    let _ = child.wait();
    let output = std::fs::read_to_string(&log_path).unwrap_or_default();
    assert!(ok, "`{first}` did not serve a healthy /health:\n{output}");
    assert!(
        data.path().join("fsync.db").exists(),
        "the embedded SQLite default"
    );
}
