//! Cross-node fan-out of the WebSocket events (ARCHITECTURE §4 and §7): with several
//! server processes on one PostgreSQL database, a commit or a device revocation
//! handled by one node must reach the sockets held by the others. Each node publishes
//! its events with `NOTIFY` on one channel and `LISTEN`s to it, feeding the events of
//! other nodes into its in-process broadcast (where its own are already).
//!
//! Delivery is best effort, like the in-process broadcast: while the listening
//! connection is down, events are lost (logged); clients still poll `sync/changes`, and
//! a revoked device's requests are refused by every node whatever its socket heard.
//! SQLite serves one process, so there is nothing to fan out.

use std::time::Duration;

use fsync_common::{DeviceId, NamespaceId, Seq};
use sqlx::postgres::{PgListener, PgPoolOptions};
use tokio::sync::mpsc;

use crate::state::AppState;

/// The `NOTIFY` channel.
pub const CHANNEL: &str = "fsync_events";
/// Events waiting to be published; beyond this they are dropped (with a warning), as a
/// slow database must not hold up commits.
const QUEUE: usize = 4096;
/// Wait before listening again after the database refused.
const RETRY: Duration = Duration::from_secs(1);
/// Longest wait for the publishing connection.
const PUBLISH_TIMEOUT: Duration = Duration::from_secs(2);

/// One event for the other nodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// A namespace's journal reached `Seq`.
    Changed(NamespaceId, Seq),
    /// A device was revoked.
    Revoked(DeviceId),
}

/// The payload of `event` sent by `node`: `<node>:c:<namespace>:<seq>` or
/// `<node>:r:<device>`.
pub fn encode(node: u64, event: &Event) -> String {
    match event {
        Event::Changed(ns, seq) => format!("{node:016x}:c:{}:{}", ns.to_hex(), seq.0),
        Event::Revoked(device) => format!("{node:016x}:r:{}", device.to_hex()),
    }
}

/// The sender and event of a payload; `None` for anything else (another program's
/// `NOTIFY` on the channel must not stop the node).
pub fn decode(payload: &str) -> Option<(u64, Event)> {
    let mut parts = payload.split(':');
    let node = u64::from_str_radix(parts.next()?, 16).ok()?;
    let event = match (parts.next()?, parts.next()?, parts.next()) {
        ("c", ns, Some(seq)) => {
            Event::Changed(NamespaceId::from_hex(ns).ok()?, Seq(seq.parse().ok()?))
        }
        ("r", device, None) => Event::Revoked(DeviceId::from_hex(device).ok()?),
        _ => return None,
    };
    parts.next().is_none().then_some((node, event))
}

/// Where a node's own events go to be published.
#[derive(Debug, Clone)]
pub struct Publisher {
    tx: mpsc::Sender<Event>,
}

impl Publisher {
    /// Queues `event` for the other nodes.
    pub fn publish(&self, event: Event) {
        if let Err(e) = self.tx.try_send(event) {
            tracing::warn!(error = %e, "cross-node event dropped: other nodes' sockets learn of it by polling");
        }
    }
}

/// Starts publishing `state`'s events to, and receiving other nodes' events from, the
/// PostgreSQL database at `url`, and installs the publisher in `state`. The listening
/// connection is open before this returns, so no event published afterwards by another
/// node is missed. Both tasks end, and their connections close, once the last clone of
/// the state is gone.
pub async fn start(url: &str, state: &mut AppState) -> Result<(), sqlx::Error> {
    let node: u64 = rand::random();
    let listener = listen(url).await?;
    // One connection keeps the events in order; a short acquire timeout keeps a dead
    // database from holding each queued event for the default 30 s.
    let publish_pool = PgPoolOptions::new()
        .max_connections(1)
        .acquire_timeout(PUBLISH_TIMEOUT)
        .connect(url)
        .await?;
    let (tx, mut rx) = mpsc::channel::<Event>(QUEUE);
    state.fanout = Some(Publisher { tx });
    // Dropped when the publisher ends, which tells the listener to end too.
    let (alive, mut gone) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        let _alive = alive;
        while let Some(event) = rx.recv().await {
            let sent = sqlx::query("SELECT pg_notify($1, $2)")
                .bind(CHANNEL)
                .bind(encode(node, &event))
                .execute(&publish_pool)
                .await;
            if let Err(e) = sent {
                tracing::warn!(error = %e, "cannot publish a cross-node event");
            }
        }
    });

    // The broadcast senders, not the state: a state clone here would hold the
    // publisher, and the tasks would never end.
    let (push, revoked) = (state.push.clone(), state.revoked.clone());
    let url = url.to_owned();
    tokio::spawn(async move {
        let mut listening = Some(listener);
        loop {
            let Some(listener) = listening.as_mut() else {
                // The connection failed in a way the listener does not recover from by
                // itself (a reset, say): wait a moment, then open a new one.
                let fresh = tokio::select! {
                    _ = &mut gone => break,
                    l = async {
                        tokio::time::sleep(RETRY).await;
                        listen(&url).await
                    } => l,
                };
                match fresh {
                    Ok(l) => {
                        tracing::warn!(
                            "cross-node events: listening again; events sent meanwhile were missed"
                        );
                        listening = Some(l);
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "cross-node events: cannot listen, retrying");
                    }
                }
                continue;
            };
            let received = tokio::select! {
                _ = &mut gone => break,
                r = listener.try_recv() => r,
            };
            match received {
                Ok(Some(n)) => match decode(n.payload()) {
                    Some((from, _)) if from == node => {}
                    Some((_, Event::Changed(ns, seq))) => {
                        let _ = push.send((ns, seq));
                    }
                    Some((_, Event::Revoked(device))) => {
                        let _ = revoked.send(device);
                    }
                    None => tracing::debug!(payload = n.payload(), "ignored a foreign NOTIFY"),
                },
                // The connection was lost and is back: what was sent meanwhile is gone.
                Ok(None) => tracing::warn!(
                    "cross-node events: listening again after a lost connection; \
                     events sent meanwhile were missed"
                ),
                Err(e) => {
                    tracing::warn!(error = %e, "cross-node events: the listening connection failed");
                    listening = None;
                }
            }
        }
    });
    Ok(())
}

/// Publishes `events` to every node on the PostgreSQL database at `url` from a process
/// that serves nothing (`fsync-server admin`), on one short-lived connection.
pub async fn publish_once(url: &str, events: &[Event]) -> Result<(), sqlx::Error> {
    if events.is_empty() {
        return Ok(());
    }
    let pool = PgPoolOptions::new()
        .max_connections(1)
        .acquire_timeout(PUBLISH_TIMEOUT)
        .connect(url)
        .await?;
    let node: u64 = rand::random();
    for event in events {
        sqlx::query("SELECT pg_notify($1, $2)")
            .bind(CHANNEL)
            .bind(encode(node, event))
            .execute(&pool)
            .await?;
    }
    pool.close().await;
    Ok(())
}

/// A connection listening on [`CHANNEL`].
async fn listen(url: &str) -> Result<PgListener, sqlx::Error> {
    let mut listener = PgListener::connect(url).await?;
    listener.listen(CHANNEL).await?;
    Ok(listener)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_round_trip_and_garbage_is_ignored() {
        let ns = NamespaceId::from_bytes([7; 16]);
        let device = DeviceId::from_bytes([9; 8]);
        for event in [Event::Changed(ns, Seq(42)), Event::Revoked(device)] {
            assert_eq!(
                decode(&encode(u64::MAX - 1, &event)),
                Some((u64::MAX - 1, event))
            );
        }
        for bad in [
            "",
            "hello",
            "zz:c:07:1",
            "01:c:07070707070707070707070707070707",
            "01:c:07070707070707070707070707070707:x",
            "01:c:07070707070707070707070707070707:1:2",
            "01:r:0909090909090909:extra",
            "01:q:0909090909090909",
        ] {
            assert_eq!(decode(bad), None, "{bad:?}");
        }
    }
}
