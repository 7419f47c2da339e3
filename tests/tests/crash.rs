//! Crash safety (I5): a client killed with SIGKILL in the middle of downloading a
//! large file never leaves a partial file at the synced path, and the next successful
//! run leaves no `.fsync-tmp-*` file behind.
#![allow(missing_docs)]

use std::time::Duration;

use fsync_tests::{random_bytes, temp_files, wait_until, Server, EVENT_TIMEOUT};
use rand::{Rng, SeedableRng};

const MIB: usize = 1024 * 1024;
/// Killed runs. Runs after the first resume the stored session instead of logging in,
/// so the server's login limit (10 per user and minute) does not bound them.
const KILLS: usize = 20;

#[test]
fn a_download_killed_midway_leaves_no_partial_file() {
    let server = Server::start();
    let alice = server.register("alice");
    let a = alice.device();
    let data = random_bytes(64, 32 * MIB);
    a.write("big.bin", &data);
    a.sync();

    let seed: u64 = rand::random();
    println!("kill delays from seed {seed}");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut b = alice.device();
    let mut mid_download = 0;
    for i in 0..KILLS {
        let stale = temp_files(b.root());
        // Debug logs: "logged in" is a debug line, and a stall shows where it was.
        let mut run =
            b.spawn_once_with_env(&[("RUST_LOG".into(), "fsync_client=debug,warn".into())]);
        // Fault injection: SIGKILL at a random moment after an event, so that the
        // kills land in the download rather than in the login: half of the runs wait
        // for the download's own temp file, the others for the login.
        if i % 2 == 0 {
            wait_until(EVENT_TIMEOUT, "the download to start", || {
                temp_files(b.root()).iter().any(|t| !stale.contains(t)) || run.exited()
            });
            std::thread::sleep(Duration::from_millis(rng.gen_range(0..150)));
        } else {
            wait_until(EVENT_TIMEOUT, "the login", || {
                run.log().contains("logged in") || run.exited()
            });
            std::thread::sleep(Duration::from_millis(rng.gen_range(0..600)));
        }
        let finished = run.exited();
        run.kill();
        let temps = temp_files(b.root());
        let fresh_temp = temps.iter().any(|t| !stale.contains(t));
        if let Some(got) = b.try_read("big.bin") {
            assert!(
                got == data,
                "kill {i}: a partial big.bin ({} of {} bytes) is visible",
                got.len(),
                data.len()
            );
        }
        println!(
            "kill {i}: exited before the kill: {finished}, mid-download: {fresh_temp}, \
             big.bin present: {}, temp files: {temps:?}",
            b.path("big.bin").exists()
        );
        if fresh_temp && !b.path("big.bin").exists() {
            mid_download += 1;
        }
        if b.path("big.bin").exists() {
            // Downloaded before the kill: go on with a fresh device.
            assert!(temps.is_empty(), "temp files next to a complete download");
            b = alice.device();
        }
    }
    assert!(mid_download > 0, "no kill landed mid-download");

    // The next successful run completes the file and removes the temp files that the
    // killed runs left behind.
    b.sync();
    let got = b.read("big.bin");
    assert!(got == data, "big.bin differs after the final run");
    assert_eq!(
        temp_files(b.root()),
        Vec::<String>::new(),
        "temp files of the killed runs are left behind after a successful run"
    );
}
