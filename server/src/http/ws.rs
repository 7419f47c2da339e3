//! `GET /api/v1/ws`: pushes `{type:"changed", namespace, seq}` after every commit in the
//! user's namespaces. Authenticated by bearer header or by a first `{type:"auth"}`
//! message; closed (1008) when the token expires or the device is revoked.
//!
//! Refusals before the upgrade are JSON error bodies like every other endpoint's: a bad
//! bearer token is 401 `unauthorized` (checked first), and a request that is not a
//! WebSocket upgrade (no `Connection: upgrade`, `Upgrade: websocket`,
//! `Sec-WebSocket-Version: 13` or `Sec-WebSocket-Key`) is 400 `bad_request` naming what
//! is missing.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::State;
use axum::http::request::Parts;
use axum::response::Response;
use fsync_common::wire::{ClientMessage, PushMessage};
use fsync_common::{DeviceId, NamespaceId, UserId};

use super::error::ApiError;
use super::extract::{authenticate, bearer, Auth};
use crate::db::DeviceStatus;
use crate::domain::accounts::ACCOUNT_DISABLED;
use crate::state::{now_secs, AppState, Limits};

const HEARTBEAT: Duration = Duration::from_secs(20);
/// A send that takes longer (the client stopped reading and the buffers are full) ends
/// the connection: a stuck send would keep the revocation and expiry checks from
/// running.
const SEND_TIMEOUT: Duration = Duration::from_secs(10);
const AUTH_TIMEOUT: Duration = Duration::from_secs(10);

/// Upgrades the connection.
pub async fn upgrade(
    State(state): State<AppState>,
    parts: Parts,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Result<Response, ApiError> {
    // A bad header token is refused before upgrading; no header means "auth message".
    let pre = match bearer(&parts) {
        Some(t) => Some((authenticate(&state, t).await?, expiry(&state, t))),
        None => None,
    };
    let ws = ws.map_err(|e| {
        ApiError::BadRequest(format!(
            "not a WebSocket upgrade request: {}",
            e.body_text()
        ))
    })?;
    Ok(ws.on_upgrade(move |socket| serve(state, socket, pre)))
}

/// Why a socket must close, when the database says its device was revoked or its
/// account disabled; `None` otherwise (a failed look-up keeps the socket: the next one
/// decides).
async fn gone(state: &AppState, auth: &Auth) -> Option<&'static str> {
    match state
        .repo
        .device_active(auth.user, auth.device, now_secs())
        .await
    {
        Ok(DeviceStatus::Revoked) => Some("device revoked"),
        Ok(DeviceStatus::Disabled) => Some(ACCOUNT_DISABLED),
        Ok(DeviceStatus::Active) | Err(_) => None,
    }
}

fn expiry(state: &AppState, token: &str) -> u64 {
    state.tokens.verify(token).map_or(0, |(_, _, c)| c.exp)
}

async fn first_message_auth(state: &AppState, socket: &mut WebSocket) -> Option<(Auth, u64)> {
    let msg = tokio::time::timeout(AUTH_TIMEOUT, socket.recv())
        .await
        .ok()??
        .ok()?;
    let Message::Text(text) = msg else {
        return None;
    };
    let ClientMessage::Auth { token } = serde_json::from_str(text.as_str()).ok()?;
    let auth = authenticate(state, &token).await.ok()?;
    Some((auth, expiry(state, &token)))
}

async fn close(mut socket: WebSocket, reason: impl Into<axum::extract::ws::Utf8Bytes>) {
    let frame = Message::Close(Some(CloseFrame {
        code: 1008,
        reason: reason.into(),
    }));
    // Dropping the socket after a timeout closes the connection anyway.
    let _ = tokio::time::timeout(SEND_TIMEOUT, socket.send(frame)).await;
}

async fn serve(state: AppState, mut socket: WebSocket, pre: Option<(Auth, u64)>) {
    // Subscribed before the device is checked: a revocation after the check below is
    // received here, one before it is seen by the check.
    let mut revoked = state.revoked.subscribe();
    let pre = match pre {
        Some(p) => Some(p),
        None => first_message_auth(&state, &mut socket).await,
    };
    let Some((auth, exp)) = pre else {
        return close(socket, "authentication required").await;
    };
    if let Some(why) = gone(&state, &auth).await {
        return close(socket, why).await;
    }
    let slot = match state.ws_slots.take(auth.user, auth.device, &state.limits) {
        Ok(slot) => slot,
        Err(why) => {
            tracing::warn!(user = %auth.user, device = %auth.device, "{why}");
            return close(socket, why).await;
        }
    };
    let Ok(grants) = state.repo.namespaces_of(auth.user).await else {
        return close(socket, "server error").await;
    };
    let mine: HashSet<NamespaceId> = grants.iter().map(|g| g.id).collect();
    let mut rx = state.push.subscribe();
    state
        .metrics
        .ws_connections
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    // Tell the client where each journal stands now, so it can catch up at once.
    for ns in &mine {
        if let Ok(seq) = state.repo.last_seq(*ns).await {
            if send(
                &mut socket,
                &PushMessage::Changed {
                    namespace: *ns,
                    seq,
                },
            )
            .await
            .is_err()
            {
                break;
            }
        }
    }
    let now = now_secs() as u64;
    let until_expiry = tokio::time::sleep(Duration::from_secs(exp.saturating_sub(now)));
    tokio::pin!(until_expiry);
    let mut beat = tokio::time::interval(HEARTBEAT);
    loop {
        tokio::select! {
            () = &mut until_expiry => {
                close(socket, "token expired").await;
                break;
            }
            event = revoked.recv() => match event {
                Ok(device) if device == auth.device => {
                    // Revoked, or its account disabled or deleted: the database says which.
                    close(socket, gone(&state, &auth).await.unwrap_or("device revoked")).await;
                    break;
                }
                Ok(_) => {}
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                    // Missed revocations: ask the database.
                    if let Some(why) = gone(&state, &auth).await {
                        close(socket, why).await;
                        break;
                    }
                }
                Err(tokio::sync::broadcast::error::RecvError::Closed) => break,
            },
            _ = beat.tick() => {
                // Each beat asks the database too: `fsync-server admin` disables
                // accounts and revokes devices from another process, which on SQLite
                // cannot tell this one.
                if let Some(why) = gone(&state, &auth).await {
                    close(socket, why).await;
                    break;
                }
                if send(&mut socket, &PushMessage::Heartbeat).await.is_err() { break; }
            }
            msg = rx.recv() => match msg {
                Ok((ns, seq)) if mine.contains(&ns) => {
                    if send(&mut socket, &PushMessage::Changed { namespace: ns, seq }).await.is_err() { break; }
                }
                Ok(_) => {}
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                    // Missed pushes: resend the current positions.
                    for ns in &mine {
                        if let Ok(seq) = state.repo.last_seq(*ns).await {
                            let _ = send(&mut socket, &PushMessage::Changed { namespace: *ns, seq }).await;
                        }
                    }
                }
                Err(tokio::sync::broadcast::error::RecvError::Closed) => break,
            },
            incoming = socket.recv() => match incoming {
                Some(Ok(Message::Close(_)) | Err(_)) | None => break,
                Some(Ok(_)) => {}
            },
        }
    }
    // The place first, so that a client that sees the gauge drop finds it free.
    drop(slot);
    state
        .metrics
        .ws_connections
        .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
}

async fn send(socket: &mut WebSocket, m: &PushMessage) -> Result<(), axum::Error> {
    let text = serde_json::to_string(m).expect("push messages serialize");
    tokio::time::timeout(SEND_TIMEOUT, socket.send(Message::Text(text.into())))
        .await
        .map_err(|_| axum::Error::new("the client did not read a push in time"))?
}

/// Open push sockets per user and per device, capped by [`Limits`]: a leaked token or
/// a buggy client cannot hold file descriptors and memory without bound.
#[derive(Debug, Default)]
pub struct WsSlots {
    open: Mutex<(HashMap<UserId, usize>, HashMap<DeviceId, usize>)>,
}

/// One open socket's place; given back on drop.
pub(crate) struct WsSlot {
    slots: Arc<WsSlots>,
    user: UserId,
    device: DeviceId,
}

impl WsSlots {
    /// A place for one more socket of `user`'s `device`, or the reason there is none
    /// (sent to the client as the close reason).
    pub(crate) fn take(
        self: &Arc<Self>,
        user: UserId,
        device: DeviceId,
        limits: &Limits,
    ) -> Result<WsSlot, String> {
        let mut open = self.open.lock().expect("ws slots lock");
        let (users, devices) = &mut *open;
        let (u, d) = (
            users.get(&user).copied().unwrap_or(0),
            devices.get(&device).copied().unwrap_or(0),
        );
        if d >= limits.ws_per_device {
            return Err(format!(
                "too many connections: this device already has {d} push sockets open (at most {})",
                limits.ws_per_device
            ));
        }
        if u >= limits.ws_per_user {
            return Err(format!(
                "too many connections: this account already has {u} push sockets open (at most {})",
                limits.ws_per_user
            ));
        }
        *users.entry(user).or_default() += 1;
        *devices.entry(device).or_default() += 1;
        Ok(WsSlot {
            slots: Arc::clone(self),
            user,
            device,
        })
    }
}

impl Drop for WsSlot {
    fn drop(&mut self) {
        let mut open = self.slots.open.lock().expect("ws slots lock");
        if let Some(n) = open.0.get_mut(&self.user) {
            *n -= 1;
            if *n == 0 {
                open.0.remove(&self.user);
            }
        }
        if let Some(n) = open.1.get_mut(&self.device) {
            *n -= 1;
            if *n == 0 {
                open.1.remove(&self.device);
            }
        }
    }
}
