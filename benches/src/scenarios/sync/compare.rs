//! `--compare`: the peers measured next to fsync (rsync's delta transfer, restic's
//! backup) and `fsync-client --once` as a separate process, timed with
//! `/usr/bin/time -v`.

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use anyhow::{ensure, Context as _};
use fsync_testkit::memory;

use super::tree::same_file;
use super::{Ctx, Part, MB};
use crate::harness::{self, Account, Server};

/// rsync's delta transfer of `src` onto a copy of `old`: (bytes sent, bytes received).
pub(super) fn rsync_delta(src: &Path, old: &Path, scratch: &Path) -> anyhow::Result<(u64, u64)> {
    let dst = scratch.join("rsync-dst");
    std::fs::copy(old, &dst)?;
    let out = Command::new("rsync")
        .args(["-I", "--no-whole-file", "--stats"])
        .arg(src)
        .arg(&dst)
        .output()
        .context("running rsync")?;
    ensure!(
        out.status.success(),
        "rsync failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let _ = std::fs::remove_file(&dst);
    let text = String::from_utf8_lossy(&out.stdout);
    let field = |name: &str| -> anyhow::Result<u64> {
        let line = text
            .lines()
            .find(|l| l.starts_with(name))
            .with_context(|| format!("rsync --stats printed no {name:?}"))?;
        let digits: String = line[name.len()..]
            .chars()
            .skip_while(|c| !c.is_ascii_digit())
            .take_while(|c| c.is_ascii_digit() || *c == ',' || *c == '.')
            .filter(char::is_ascii_digit)
            .collect();
        digits.parse().with_context(|| format!("parsing {line:?}"))
    };
    Ok((field("Total bytes sent:")?, field("Total bytes received:")?))
}

pub(super) fn tool_available(tool: &str, args: &[&str]) -> bool {
    Command::new(tool)
        .args(args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// What [`timed_process`] measured of one process.
struct ProcessRun {
    /// Wall time.
    secs: f64,
    /// Peak RSS (KiB), from `/usr/bin/time -v`.
    rss_kib: Option<u64>,
    /// User + system CPU seconds, from `/usr/bin/time -v`.
    cpu_secs: Option<f64>,
}

/// Runs `cmd` under `/usr/bin/time -v` when it exists: wall time, peak RSS and CPU time.
fn timed_process(mut cmd: Command, what: &str) -> anyhow::Result<ProcessRun> {
    let gnu_time = Path::new("/usr/bin/time").exists();
    let mut full = if gnu_time {
        let mut c = Command::new("/usr/bin/time");
        c.arg("-v").arg(cmd.get_program()).args(cmd.get_args());
        for (k, v) in cmd.get_envs() {
            match v {
                Some(v) => c.env(k, v),
                None => c.env_remove(k),
            };
        }
        c
    } else {
        std::mem::replace(&mut cmd, Command::new("true"))
    };
    let started = Instant::now();
    let out = full.output().with_context(|| format!("running {what}"))?;
    let secs = started.elapsed().as_secs_f64();
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(
        out.status.success(),
        "{what} failed ({}): {stderr}",
        out.status
    );
    let field = |name: &str| {
        stderr
            .lines()
            .find_map(|l| l.trim().strip_prefix(name))
            .map(|v| v.trim().to_owned())
    };
    let rss_kib = field("Maximum resident set size (kbytes):").and_then(|v| v.parse().ok());
    let cpu = |name: &str| field(name).and_then(|v| v.parse::<f64>().ok());
    let cpu_secs = match (cpu("User time (seconds):"), cpu("System time (seconds):")) {
        (Some(u), Some(s)) => Some(u + s),
        _ => None,
    };
    Ok(ProcessRun {
        secs,
        rss_kib,
        cpu_secs,
    })
}

/// This process's user + system CPU seconds so far (`/proc/self/stat`, 100 ticks/s).
fn own_cpu_secs() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name (which may hold spaces) start at field 3.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / 100.0)
}

/// `fsync-client --once` on `root` as a process, against `server` as `account`, with
/// the server's share measured alongside: the bench process hosts the server and is
/// otherwise idle meanwhile, so its CPU time during the run is the server's, and its
/// peak RSS above its RSS at the start is what the server took for the run (the
/// bench's own data and the idle server are in that baseline). Records throughput,
/// CPU time and peak RSS.
#[allow(clippy::too_many_arguments)]
async fn client_process(
    ctx: &mut Ctx<'_>,
    server: &Server,
    account: &Account,
    client_bin: &Path,
    root: &Path,
    roots_file: &Path,
    what: &str,
    bytes: u64,
) -> anyhow::Result<ProcessRun> {
    let p = Part::InitialSync;
    let mut cmd = Command::new(client_bin);
    cmd.arg("--watch-dir")
        .arg(root)
        .args(["--server-url", &server.url, "--username", &account.username])
        .arg("--once")
        .env("FSYNC_PASSWORD", &account.password)
        .env("FSYNC_ROOTS_FILE", roots_file)
        .env("RUST_LOG", "warn");
    let peak_reset = memory::reset_peak().is_ok();
    let rss_before = memory::status_bytes("VmRSS").ok();
    let cpu_before = own_cpu_secs();
    let run = tokio::task::spawn_blocking(move || timed_process(cmd, "fsync-client --once"))
        .await
        .expect("process task")?;
    let server_cpu = own_cpu_secs()
        .zip(cpu_before)
        .map(|(after, before)| after - before);
    let server_growth = memory::status_bytes("VmHWM")
        .ok()
        .filter(|_| peak_reset)
        .zip(rss_before)
        .map(|(peak, before)| peak.saturating_sub(before));
    let case = format!("{what}: fsync-client --once process");
    ctx.push(p, "throughput", "MB/s", &case, bytes as f64 / MB / run.secs);
    if let Some(cpu) = run.cpu_secs {
        ctx.push(p, "CPU time", "s", &case, cpu);
    }
    if let Some(kib) = run.rss_kib {
        ctx.push(p, "peak RSS", "MiB", &case, kib as f64 / 1024.0);
    }
    let server_case = format!("{what}: server (bench process) meanwhile");
    if let Some(cpu) = server_cpu {
        ctx.push(p, "CPU time", "s", &server_case, cpu);
    }
    if let Some(bytes) = server_growth {
        ctx.push(
            p,
            "peak RSS",
            "MiB",
            &format!("{server_case} (growth above the bench's RSS)"),
            bytes as f64 / (1024.0 * 1024.0),
        );
    }
    Ok(run)
}

/// restic's backup of the large file, and `fsync-client --once` uploading it as a
/// separate process.
pub(super) async fn compare_large(
    ctx: &mut Ctx<'_>,
    server: &Server,
    dir: &Path,
    file: &Path,
    case: &str,
    bytes: u64,
    rounds: (f64, f64),
) -> anyhow::Result<()> {
    let p = Part::InitialSync;
    if !Path::new("/usr/bin/time").exists() {
        ctx.notes
            .push("/usr/bin/time is not installed: peak RSS was not measured.".into());
    }
    // fsync-client as a process, on a fresh account, with a hard link of the file:
    // one uploads it, a second (a new device, empty folder) downloads it.
    let client_bin = std::env::current_exe()?.with_file_name("fsync-client");
    let mut client_rss = None;
    if client_bin.exists() {
        let account = harness::register(server, &harness::username("proc")).await?;
        let roots_file = dir.join("fsync-roots");
        let up_root = dir.join("proc-root");
        std::fs::create_dir_all(&up_root)?;
        std::fs::hard_link(file, up_root.join("large.bin"))?;
        let up = client_process(
            ctx,
            server,
            &account,
            &client_bin,
            &up_root,
            &roots_file,
            &format!("{case}, upload"),
            bytes,
        )
        .await?;
        client_rss = up.rss_kib;
        let down_root = dir.join("proc-down");
        std::fs::create_dir_all(&down_root)?;
        client_process(
            ctx,
            server,
            &account,
            &client_bin,
            &down_root,
            &roots_file,
            &format!("{case}, download"),
            bytes,
        )
        .await?;
        same_file(file, &down_root.join("large.bin"))?;
    } else {
        ctx.notes.push(format!(
            "{} not found: build it (cargo build --release -p fsync-client) to measure the client as a process.",
            client_bin.display()
        ));
    }
    let rss = compare_restic(ctx, dir, file, case, bytes, rounds).await?;
    if let (Some(kib), Some(c)) = (rss, client_rss) {
        ctx.push(
            p,
            "fsync / restic",
            "ratio",
            &format!("{case}: peak RSS, fsync-client process vs restic"),
            c as f64 / kib as f64,
        );
    }
    Ok(())
}

/// `restic backup` of `source` into a fresh local repository, then `restic restore` of
/// it into an empty folder, next to fsync's A upload and B download rounds of the same
/// data (`rounds`: their seconds); returns restic's peak RSS during the backup. Skipped
/// with a note when restic is not installed.
pub(super) async fn compare_restic(
    ctx: &mut Ctx<'_>,
    dir: &Path,
    source: &Path,
    case: &str,
    bytes: u64,
    (up_secs, down_secs): (f64, f64),
) -> anyhow::Result<Option<u64>> {
    let p = Part::InitialSync;
    if !tool_available("restic", &["version"]) {
        ctx.notes.push(format!(
            "restic is not installed: the {case} comparison was skipped."
        ));
        return Ok(None);
    }
    let version = Command::new("restic").arg("version").output()?;
    let peer = format!(
        "Peer: {} (local repository, RESTIC_PASSWORD set, default options).",
        String::from_utf8_lossy(&version.stdout).trim()
    );
    if !ctx.notes.contains(&peer) {
        ctx.notes.push(peer);
    }
    let work = tempfile::Builder::new().prefix("restic-").tempdir_in(dir)?;
    let env = [
        ("RESTIC_PASSWORD", "x".to_owned()),
        (
            "RESTIC_REPOSITORY",
            work.path().join("repo").display().to_string(),
        ),
        (
            "RESTIC_CACHE_DIR",
            work.path().join("cache").display().to_string(),
        ),
    ];
    let restic = |args: &[&str]| {
        let mut cmd = Command::new("restic");
        cmd.args(args).envs(env.iter().map(|(k, v)| (*k, v)));
        cmd
    };
    let init = restic(&["init", "--quiet"]).output()?;
    ensure!(
        init.status.success(),
        "restic init failed: {}",
        String::from_utf8_lossy(&init.stderr)
    );
    let mut backup = restic(&["backup", "--quiet", "--exclude", ".fsync"]);
    backup.arg(source);
    let target = work.path().join("restored");
    let mut restore = restic(&["restore", "latest", "--quiet", "--target"]);
    restore.arg(&target);
    let (backup, restore) = tokio::task::spawn_blocking(move || {
        let b = timed_process(backup, "restic backup")?;
        let r = timed_process(restore, "restic restore")?;
        anyhow::Ok((b, r))
    })
    .await
    .expect("process task")?;
    if let Some(cpu) = backup.cpu_secs {
        ctx.push(p, "CPU time", "s", &format!("{case}: restic backup"), cpu);
    }
    let mbs = |secs: f64| bytes as f64 / MB / secs;
    for (what, secs, ours, side) in [
        ("restic backup", backup.secs, up_secs, "A upload round"),
        (
            "restic restore",
            restore.secs,
            down_secs,
            "B download round",
        ),
    ] {
        ctx.push(
            p,
            "throughput",
            "MB/s",
            &format!("{case}: {what}"),
            mbs(secs),
        );
        ctx.push(
            p,
            "fsync / restic",
            "ratio",
            &format!("{case}: throughput, {side} vs {what}"),
            mbs(ours) / mbs(secs),
        );
    }
    if let Some(kib) = backup.rss_kib {
        ctx.push(
            p,
            "peak RSS",
            "MiB",
            &format!("{case}: restic backup"),
            kib as f64 / 1024.0,
        );
    }
    ctx.say(&format!(
        "restic backup {:.2} s, restore {:.2} s",
        backup.secs, restore.secs
    ));
    Ok(backup.rss_kib)
}
