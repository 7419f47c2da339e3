//! The daemon loop: `select!` on shutdown, local file events (debounced), remote pushes
//! (WebSocket, reconnected with backoff and jitter), a big transfer finished in the
//! background (see the engine's lanes), and a periodic rescan.

use std::path::Path;
use std::time::Duration;

use notify::{RecursiveMode, Watcher};
use tokio::sync::mpsc;

use crate::api::ApiClient;
use crate::engine::{Engine, RoundReport, SyncError};
use crate::scan::is_internal_name;

/// Quiet time after the last local event before a round starts.
const DEBOUNCE: Duration = Duration::from_millis(60);
/// Longest a burst of events can postpone a round.
const MAX_DEBOUNCE: Duration = Duration::from_secs(1);
/// Retry delay after a round deferred files that are still being written.
const DEFERRED_RETRY: Duration = Duration::from_millis(500);

/// Why the daemon woke up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Wake {
    Local,
    Remote,
}

/// Options of the loop.
#[derive(Debug, Clone, Copy)]
pub struct DaemonOptions {
    /// Periodic rescan (and poll while the socket is down).
    pub interval: Duration,
}

fn relevant(event: &notify::Event, root: &Path) -> bool {
    // Reads (including the engine's own scan and hashing) change nothing; reacting to
    // them would make every round trigger the next.
    if event.kind.is_access() {
        return false;
    }
    event.paths.iter().any(|p| {
        p.strip_prefix(root).ok().is_some_and(|rel| {
            !rel.components()
                .any(|c| c.as_os_str().to_str().is_some_and(is_internal_name))
        })
    })
}

/// Runs until `shutdown` resolves: a round on every local change, push from the server
/// (`push`: the API client whose WebSocket wakes the loop) and periodic rescan. A round
/// in progress finishes first.
pub async fn run(
    mut engine: Engine,
    push: ApiClient,
    root: &Path,
    opts: DaemonOptions,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let (tx, mut rx) = mpsc::channel::<Wake>(256);
    let watch_root = root.to_path_buf();
    let local_tx = tx.clone();
    let watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        if let Ok(ev) = res {
            if relevant(&ev, &watch_root) {
                let _ = local_tx.try_send(Wake::Local);
            }
        }
    });
    let _watcher = match watcher {
        Ok(mut w) => match w.watch(root, RecursiveMode::Recursive) {
            Ok(()) => Some(w),
            Err(e) => {
                tracing::warn!(error = %e, "cannot watch the folder; relying on the periodic rescan");
                None
            }
        },
        Err(e) => {
            tracing::warn!(error = %e, "no file watcher; relying on the periodic rescan");
            None
        }
    };
    // Big transfers go to background lanes; the round after one finishes commits or
    // installs it.
    let lane_done = engine.transfer_in_background();
    let pusher = tokio::spawn(push_loop(push, tx.clone()));
    tokio::pin!(shutdown);
    let mut tick = tokio::time::interval(opts.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failures = 0u32;
    let mut last_error: Option<String> = None;
    let mut retry_at: Option<tokio::time::Instant> = None;
    loop {
        let retry = async {
            match retry_at {
                Some(t) => tokio::time::sleep_until(t).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = &mut shutdown => break,
            _ = tick.tick() => {}
            () = retry => {}
            () = lane_done.notified() => {}
            Some(w) = rx.recv() => {
                if w == Wake::Local {
                    debounce(&mut rx).await;
                }
            }
        }
        retry_at = None;
        match engine.sync_once().await {
            Ok(report) => {
                if failures > 0 {
                    tracing::info!(failed_rounds = failures, "syncing again");
                }
                failures = 0;
                log_round(&report, last_error.as_deref());
                last_error.clone_from(&report.over_quota);
                if !report.deferred.is_empty() {
                    // Uploads refused for the quota are tried again when the pause
                    // ends, not twice a second.
                    let after = if report.over_quota.is_some() {
                        crate::engine::QUOTA_PAUSE
                    } else {
                        DEFERRED_RETRY
                    };
                    retry_at = Some(tokio::time::Instant::now() + after);
                }
            }
            Err(e) => {
                failures += 1;
                let wait = backoff(failures);
                // Each distinct failure is said once; its repeats (the server down for
                // an hour) only at debug level, with the retry count.
                let text = e.to_string();
                if last_error.as_deref() == Some(text.as_str()) {
                    tracing::debug!(error = %text, failures, retry_in_ms = wait.as_millis() as u64, "sync round failed again");
                } else if matches!(e, SyncError::RootMissing(_) | SyncError::Root(_)) {
                    tracing::error!("sync paused: {text}");
                } else {
                    tracing::warn!("sync round failed, retrying with backoff (up to 60 s; repeats are logged with -v): {text}");
                }
                last_error = Some(text);
                retry_at = Some(tokio::time::Instant::now() + wait);
            }
        }
    }
    pusher.abort();
    tracing::info!("stopped");
}

/// Waits until local events pause (or `MAX_DEBOUNCE` passed), draining them.
async fn debounce(rx: &mut mpsc::Receiver<Wake>) {
    let deadline = tokio::time::Instant::now() + MAX_DEBOUNCE;
    loop {
        match tokio::time::timeout_at(
            deadline.min(tokio::time::Instant::now() + DEBOUNCE),
            rx.recv(),
        )
        .await
        {
            // A remote change does not wait behind local noise.
            Ok(Some(Wake::Local)) if tokio::time::Instant::now() < deadline => {}
            _ => break,
        }
    }
}

/// Exponential backoff with jitter: 0.5 s, 1 s, 2 s … capped at 60 s, ±25 %.
pub fn backoff(failures: u32) -> Duration {
    let base = 500u64
        .saturating_mul(1 << failures.saturating_sub(1).min(7))
        .min(60_000);
    let jitter = rand::random::<u64>() % (base / 2 + 1);
    Duration::from_millis(base - base / 4 + jitter)
}

/// Logs what a round did; `said` is the quota refusal already logged (its files are
/// not listed again each round while it lasts).
fn log_round(r: &RoundReport, said: Option<&str>) {
    if let Some(why) = &r.over_quota {
        if said != Some(why.as_str()) {
            tracing::warn!(
                files = r.deferred.iter().filter(|(_, w)| w == why).count(),
                "uploads paused: {why}"
            );
        }
    }
    if !r.is_idle() {
        tracing::info!(
            uploaded = r.uploaded,
            downloaded = r.downloaded,
            deleted_local = r.deleted_local,
            deleted_remote = r.deleted_remote,
            renamed = r.renamed,
            conflicts = r.conflicts,
            "synced"
        );
    }
    for (path, why) in &r.deferred {
        if r.over_quota.as_ref() == Some(why) {
            tracing::debug!(path = %path, reason = %why, "not synced yet");
        } else {
            tracing::info!(path = %path, reason = %why, "not synced yet");
        }
    }
}

/// Keeps a push socket open; every `changed` message wakes the loop.
async fn push_loop(api: crate::api::ApiClient, tx: mpsc::Sender<Wake>) {
    let mut failures = 0u32;
    loop {
        match api.subscribe().await {
            Ok(mut rx) => {
                failures = 0;
                tracing::debug!("push socket connected");
                while let Some(msg) = rx.recv().await {
                    if matches!(msg, fsync_common::wire::PushMessage::Changed { .. }) {
                        let _ = tx.try_send(Wake::Remote);
                    }
                }
                tracing::debug!("push socket closed");
            }
            Err(e) => {
                failures += 1;
                tracing::debug!(error = %e, "push socket unavailable");
            }
        }
        tokio::time::sleep(backoff(failures.max(1))).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_with_jitter_and_caps() {
        for n in 1..20 {
            let d = backoff(n);
            let base = 500u64.saturating_mul(1 << (n - 1).min(7)).min(60_000);
            assert!(
                d.as_millis() as u64 >= base * 3 / 4 && d.as_millis() as u64 <= base * 5 / 4,
                "{n}: {d:?}"
            );
        }
    }
}
