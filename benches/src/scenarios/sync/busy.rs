//! The `busy` part: two daemons while a large file travels. A new large file appears
//! on A (renamed into the folder, written whole); 1.5 s later a small file is saved on
//! A, during A's upload, and once the large file is committed, 0.5 s later another,
//! during B's download: the time until each small file is visible on B. Then 1-byte
//! overwrites of the large file in the running daemon: the time until the server has
//! the edit (a third device's push socket) and until B has it.

use std::os::unix::fs::FileExt as _;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use fsync_common::wire::PushMessage;
use fsync_common::{NamespaceId, Seq, SyncPath};
use tokio::sync::mpsc;

use super::latency::{visible, DaemonThread};
use super::{write_large, Ctx, Part, DATA_SEED};
use crate::harness::{self, Device, Server};
use crate::timing::median;

/// How long after the large file appeared the first small file is saved.
const INTO_UPLOAD: Duration = Duration::from_millis(1500);
/// How long after the large file was committed the second small file is saved.
const INTO_DOWNLOAD: Duration = Duration::from_millis(500);
/// Longest a large transfer may take.
const LARGE_DEADLINE: Duration = Duration::from_secs(300);
/// Pause after each step, so both daemons finish the rounds it caused.
const SETTLE: Duration = Duration::from_millis(500);

/// The push socket of a device that only listens, and the journal position it saw.
struct Observer {
    dev: Device,
    ns: NamespaceId,
    pushes: mpsc::Receiver<PushMessage>,
    cursor: Seq,
}

impl Observer {
    /// Waits for a commit past the cursor; the paths committed since.
    async fn next_commit(&mut self, deadline: Duration) -> anyhow::Result<Vec<SyncPath>> {
        loop {
            match tokio::time::timeout(deadline, self.pushes.recv()).await {
                Ok(Some(PushMessage::Changed { seq, .. })) if seq > self.cursor => break,
                Ok(Some(_)) => {}
                Ok(None) => bail!("the observer's push socket closed"),
                Err(_) => bail!("nothing was committed within {deadline:?}"),
            }
        }
        let page = self.dev.api.changes(self.ns, self.cursor, 1000).await?;
        self.cursor = page.cursor.max(self.cursor);
        Ok(page.changes.into_iter().map(|c| c.file.path).collect())
    }

    /// Waits until `path` is committed.
    async fn committed(&mut self, path: &str, deadline: Duration) -> anyhow::Result<()> {
        let t0 = Instant::now();
        loop {
            let left = deadline.saturating_sub(t0.elapsed());
            if self
                .next_commit(left)
                .await?
                .iter()
                .any(|p| p.as_str() == path)
            {
                return Ok(());
            }
        }
    }

    /// Forgets the pushes so far.
    async fn drain(&mut self) -> anyhow::Result<()> {
        while let Ok(Some(_)) = tokio::time::timeout(SETTLE, self.pushes.recv()).await {}
        let page = self.dev.api.changes(self.ns, self.cursor, 1000).await?;
        self.cursor = page.cursor.max(self.cursor);
        Ok(())
    }
}

/// Waits until the file at `path` has `size` bytes and `byte` at `offset`.
async fn arrived(path: &Path, size: u64, offset: u64, byte: u8) -> anyhow::Result<()> {
    let check = || {
        let f = std::fs::File::open(path).ok()?;
        if f.metadata().ok()?.len() != size {
            return None;
        }
        let mut b = [0u8];
        f.read_exact_at(&mut b, offset).ok()?;
        (b[0] == byte).then_some(())
    };
    fsync_testkit::poll_async(
        LARGE_DEADLINE,
        Duration::from_millis(20),
        "a large file on B",
        || std::future::ready(check()),
    )
    .await
    .map_err(|_| anyhow::anyhow!("a large file did not reach B within {LARGE_DEADLINE:?}"))
}

pub(super) async fn busy(ctx: &mut Ctx<'_>, server: &Server, dir: &Path) -> anyhow::Result<()> {
    let account = harness::register(server, &harness::username("busy")).await?;
    let a = DaemonThread::start(&server.url, &account, dir, "busy-a")?;
    let b = DaemonThread::start(&server.url, &account, dir, "busy-b")?;
    let dev = Device::new(&server.url, &account, dir, "busy-observer").await?;
    let ns = dev.engine.keys().ns;
    let pushes = dev.api.subscribe().await?;
    let mut obs = Observer {
        dev,
        ns,
        pushes,
        cursor: Seq(0),
    };
    obs.drain().await?;
    let mib = ctx.args.large_mib;
    let size = u64::from(mib) << 20;
    let (mut up, mut down, mut large) = (Vec::new(), Vec::new(), Vec::new());
    let (mut up_alone, mut down_alone) = (0, 0);
    let repeat = ctx.args.edit_repeat;
    for r in 0..repeat {
        let name = format!("large-{r}.bin");
        let staged = dir.join(format!("busy-staged-{r}.bin"));
        // Seeds far apart: `write_large` seeds each 1 MiB piece with `seed + k`.
        write_large(&staged, mib, DATA_SEED + (u64::from(r) + 1) * 1_000_000)?;
        let mut last = [0u8];
        std::fs::File::open(&staged)?.read_exact_at(&mut last, size - 1)?;
        let t0 = Instant::now();
        std::fs::rename(&staged, a.root.join(&name)).context("moving the large file in")?;
        tokio::time::sleep(INTO_UPLOAD).await;
        // During A's upload.
        let small = format!("saved during the upload of {name}\n");
        let t1 = Instant::now();
        std::fs::write(a.root.join(format!("up-{r}.txt")), &small)?;
        up.push(visible(&b.root.join(format!("up-{r}.txt")), small.as_bytes(), t1).await?);
        if std::fs::metadata(b.root.join(&name)).is_err() {
            up_alone += 1;
        }
        // During B's download.
        obs.committed(&name, LARGE_DEADLINE).await?;
        tokio::time::sleep(INTO_DOWNLOAD).await;
        let small = format!("saved during the download of {name}\n");
        let t2 = Instant::now();
        std::fs::write(a.root.join(format!("down-{r}.txt")), &small)?;
        down.push(visible(&b.root.join(format!("down-{r}.txt")), small.as_bytes(), t2).await?);
        if std::fs::metadata(b.root.join(&name)).is_err() {
            down_alone += 1;
        }
        arrived(&b.root.join(&name), size, size - 1, last[0]).await?;
        large.push(t0.elapsed());
        tokio::time::sleep(SETTLE).await;
        obs.drain().await?;
        ctx.say(&format!("busy: {name} synced"));
    }
    // 1-byte overwrites of the first large file, in the running daemon.
    let path_a = a.root.join("large-0.bin");
    let path_b = b.root.join("large-0.bin");
    let (mut committed, mut on_b) = (Vec::new(), Vec::new());
    for (k, at) in [size / 2, size / 4, size - 1]
        .into_iter()
        .cycle()
        .take(repeat as usize * 3)
        .enumerate()
    {
        let byte = 0xA5 ^ (k as u8);
        let f = std::fs::OpenOptions::new().write(true).open(&path_a)?;
        let t0 = Instant::now();
        f.write_all_at(&[byte], at)?;
        drop(f);
        obs.committed("large-0.bin", LARGE_DEADLINE).await?;
        committed.push(t0.elapsed());
        arrived(&path_b, size, at, byte).await?;
        on_b.push(t0.elapsed());
        tokio::time::sleep(SETTLE).await;
        obs.drain().await?;
    }
    drop((a, b));
    let p = Part::Busy;
    let ms = |v: &[Duration]| -> Vec<f64> { v.iter().map(|d| d.as_secs_f64() * 1e3).collect() };
    let n = repeat as usize;
    let case = format!("p50 of {n}, {mib} MiB");
    ctx.push(
        p,
        "small file → visible on B, during A's upload",
        "ms",
        &case,
        median(&mut ms(&up)),
    );
    ctx.push(
        p,
        "small file → visible on B, during B's download",
        "ms",
        &case,
        median(&mut ms(&down)),
    );
    ctx.push(
        p,
        "new large file → visible on B",
        "ms",
        &case,
        median(&mut ms(&large)),
    );
    let case = format!("p50 of {}, {mib} MiB", committed.len());
    ctx.push(
        p,
        "1-byte overwrite → committed (daemon)",
        "ms",
        &case,
        median(&mut ms(&committed)),
    );
    ctx.push(
        p,
        "1-byte overwrite → visible on B (daemon)",
        "ms",
        &case,
        median(&mut ms(&on_b)),
    );
    ctx.notes.push(format!(
        "Busy: a new {mib} MiB random file renamed into A's folder; a small file saved on A {} ms later \
         (B had the large file then in {} of {n}: the small file passed the transfer in the others) and, {} ms \
         after the large file was committed, another (B had it then in {} of {n}). Then 1-byte overwrites \
         (middle, quarter, end) of the first large file in A's running daemon; committed = a third \
         device's push socket saw it.",
        INTO_UPLOAD.as_millis(),
        n - up_alone,
        INTO_DOWNLOAD.as_millis(),
        n - down_alone,
    ));
    ctx.say("busy done");
    Ok(())
}
