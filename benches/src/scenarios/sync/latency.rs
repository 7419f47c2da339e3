//! The `latency` part: two daemons, each on its own thread and runtime, and the time
//! from an edit on A to its commit (seen by a third device's push socket) and to B's
//! copy.

use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use fsync_client::daemon::{self, DaemonOptions};
use fsync_common::wire::PushMessage;

use super::{Ctx, Part};
use crate::harness::{self, Account, Device, Server};
use crate::timing::median;

/// Size of the file edited in the latency test.
const LATENCY_FILE: usize = 4096;
/// Polling period of B's copy in the latency test.
const POLL: Duration = Duration::from_millis(2);
/// An edit not visible on B after this long fails the run.
const VISIBLE_DEADLINE: Duration = Duration::from_secs(20);
/// Pause after an edit became visible, so that both daemons finish the rounds it
/// caused (A sees its own commit pushed, B its own download) before the next edit.
const SETTLE: Duration = Duration::from_millis(300);

/// A daemon on its own thread and runtime (as a separate process would have).
pub(super) struct DaemonThread {
    pub(super) root: PathBuf,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl DaemonThread {
    pub(super) fn start(
        url: &str,
        account: &Account,
        dir: &Path,
        name: &str,
    ) -> anyhow::Result<Self> {
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<anyhow::Result<PathBuf>>();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let (url, account, dir, name) = (
            url.to_owned(),
            account.clone(),
            dir.to_owned(),
            name.to_owned(),
        );
        let thread = std::thread::Builder::new()
            .name(format!("daemon-{name}"))
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e.into()));
                        return;
                    }
                };
                rt.block_on(async move {
                    let dev = match Device::new(&url, &account, &dir, &name).await {
                        Ok(d) => d,
                        Err(e) => {
                            let _ = ready_tx.send(Err(e));
                            return;
                        }
                    };
                    let root = dev.root.clone();
                    let _ = ready_tx.send(Ok(root.clone()));
                    let opts = DaemonOptions {
                        interval: Duration::from_secs(30),
                    };
                    daemon::run(dev.engine, dev.api.clone(), &root, opts, async {
                        let _ = stopped.await;
                    })
                    .await;
                });
            })?;
        let root = ready_rx
            .recv()
            .context("the daemon thread ended before it was ready")??;
        Ok(Self {
            root,
            stop: Some(stop),
            thread: Some(thread),
        })
    }
}

impl Drop for DaemonThread {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The `q` quantile of sorted `values` (nearest rank).
fn percentile(values: &[f64], q: f64) -> f64 {
    values[((q * values.len() as f64).ceil() as usize).clamp(1, values.len()) - 1]
}

/// Content of the latency file for edit `i`.
fn latency_content(i: u32) -> Vec<u8> {
    let line = format!("edit {i:06} of the latency test\n");
    line.as_bytes()
        .iter()
        .copied()
        .cycle()
        .take(LATENCY_FILE)
        .collect()
}

/// Waits until `path` holds `want`; the time it took from `since`. Polls the file's
/// stat and reads it only when the stat changed: reading it every time would feed
/// B's file watcher a stream of access events (see BENCHMARKS.md).
pub(super) async fn visible(path: &Path, want: &[u8], since: Instant) -> anyhow::Result<Duration> {
    use std::os::unix::fs::MetadataExt as _;
    let stat = |md: &std::fs::Metadata| (md.ino(), md.size(), md.mtime_nsec(), md.mtime());
    let mut last = None;
    let mut buf = Vec::with_capacity(want.len());
    let mut check = || {
        let md = std::fs::symlink_metadata(path).ok()?;
        let now = Some(stat(&md));
        if now == last {
            return None;
        }
        last = now;
        buf.clear();
        let mut f = std::fs::File::open(path).ok()?;
        (f.read_to_end(&mut buf).is_ok() && buf == want).then(|| since.elapsed())
    };
    let left = VISIBLE_DEADLINE.saturating_sub(since.elapsed());
    fsync_testkit::poll_async(left, POLL, "an edit on B", || std::future::ready(check()))
        .await
        .map_err(|_| anyhow::anyhow!("an edit was not visible on B within {VISIBLE_DEADLINE:?}"))
}

pub(super) async fn latency(ctx: &mut Ctx<'_>, server: &Server, dir: &Path) -> anyhow::Result<()> {
    let account = harness::register(server, &harness::username("latency")).await?;
    let a = DaemonThread::start(&server.url, &account, dir, "latency-a")?;
    let b = DaemonThread::start(&server.url, &account, dir, "latency-b")?;
    // A third device that only listens to the push socket, to time the commit.
    let observer = Device::new(&server.url, &account, dir, "latency-observer").await?;
    let mut pushes = observer.api.subscribe().await?;
    let mut cursor = fsync_common::Seq(0);
    let (pa, pb) = (a.root.join("note.txt"), b.root.join("note.txt"));
    // Warm-up: the file's creation.
    let first = latency_content(0);
    std::fs::write(&pa, &first)?;
    visible(&pb, &first, Instant::now()).await?;
    tokio::time::sleep(SETTLE).await;
    // The push socket reports the journal's position, then every commit.
    while let Ok(Some(m)) = tokio::time::timeout(SETTLE, pushes.recv()).await {
        if let PushMessage::Changed { seq, .. } = m {
            cursor = cursor.max(seq);
        }
    }
    let mut ms = Vec::new();
    let mut committed_ms = Vec::new();
    for i in 1..=ctx.args.edits {
        let content = latency_content(i);
        let t0 = Instant::now();
        std::fs::write(&pa, &content)?;
        // Committed: the server pushed a journal position past the last one.
        loop {
            let left = VISIBLE_DEADLINE.saturating_sub(t0.elapsed());
            match tokio::time::timeout(left, pushes.recv()).await {
                Ok(Some(PushMessage::Changed { seq, .. })) if seq > cursor => {
                    cursor = seq;
                    committed_ms.push(t0.elapsed().as_secs_f64() * 1e3);
                    break;
                }
                Ok(Some(_)) => {}
                Ok(None) => bail!("the observer's push socket closed"),
                Err(_) => bail!("an edit was not committed within {VISIBLE_DEADLINE:?}"),
            }
        }
        let d = visible(&pb, &content, t0).await?;
        ms.push(d.as_secs_f64() * 1e3);
        tokio::time::sleep(SETTLE).await;
    }
    committed_ms.sort_by(f64::total_cmp);
    let p = Part::Latency;
    let n = committed_ms.len();
    ctx.push(
        p,
        "edit → committed (push to a third device)",
        "ms",
        &format!("p50 of {n}"),
        median(&mut committed_ms.clone()),
    );
    ctx.push(
        p,
        "edit → committed (push to a third device)",
        "ms",
        &format!("p99 of {n}"),
        percentile(&committed_ms, 0.99),
    );
    drop((a, b));
    let mean = ms.iter().sum::<f64>() / ms.len() as f64;
    ms.sort_by(f64::total_cmp);
    ctx.push(
        p,
        "edit → visible on B",
        "ms",
        &format!("p50 of {n}"),
        median(&mut ms.clone()),
    );
    ctx.push(
        p,
        "edit → visible on B",
        "ms",
        &format!("p99 of {n}"),
        percentile(&ms, 0.99),
    );
    ctx.push(
        p,
        "edit → visible on B",
        "ms",
        &format!("max of {n}"),
        ms[n - 1],
    );
    ctx.push(
        p,
        "edit → visible on B",
        "ms",
        &format!("min of {n}"),
        ms[0],
    );
    ctx.push(
        p,
        "edit → visible on B",
        "ms",
        &format!("mean of {n}"),
        mean,
    );
    ctx.notes.push(format!(
        "Latency: a {LATENCY_FILE}-byte file rewritten on A (std::fs::write) {n} times, {} ms apart \
         after each became visible; B's copy stat'ed every {} ms (read when its stat changed). Daemons: file watcher, \
         {} ms debounce, push socket.",
        SETTLE.as_millis(),
        POLL.as_millis(),
        60
    ));
    ctx.say("latency done");
    Ok(())
}
