//! The push socket: server messages over a WebSocket.

use std::fmt;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use fsync_common::wire::PushMessage;
use futures_util::StreamExt as _;
use reqwest::StatusCode;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite;

use super::error::{api_error, describe, error_message};
use super::{ApiClient, ClientError, Inner, CONNECT_TIMEOUT, MAX_PUSH_MESSAGE, PUSH_IDLE_TIMEOUT};

impl ApiClient {
    /// Opens the push socket (`ws://` or `wss://` from the server URL, same TLS roots),
    /// authenticated by the access token (renewed once on 401). The receiver yields the
    /// server's messages — first the current position of each namespace, then a
    /// `changed` after every commit, and heartbeats. It ends when the connection is
    /// lost, closed by the server (as when the token expires), or silent for
    /// [`PUSH_IDLE_TIMEOUT`]; the caller reconnects. Dropping the receiver closes the
    /// socket.
    pub async fn subscribe(&self) -> Result<mpsc::Receiver<PushMessage>, ClientError> {
        let mut renewed = false;
        loop {
            let token = self.access_token().await?;
            self.inner.requests.fetch_add(1, Ordering::Relaxed);
            match tokio::time::timeout(CONNECT_TIMEOUT * 2, self.connect_push(&token)).await {
                Err(_) => {
                    return Err(ClientError::Network(format!(
                        "WebSocket {} timed out",
                        self.inner.ws_url
                    )))
                }
                Ok(Ok(rx)) => return Ok(rx),
                Ok(Err(ClientError::Unauthorized(_))) if !renewed => {
                    renewed = true;
                    self.renew(Some(&token)).await?;
                }
                Ok(Err(e)) => return Err(e),
            }
        }
    }

    pub(super) async fn connect_push(
        &self,
        token: &str,
    ) -> Result<mpsc::Receiver<PushMessage>, ClientError> {
        use tungstenite::client::IntoClientRequest as _;

        let url = &self.inner.ws_url;
        let net = |what: &str, e: &dyn fmt::Display| {
            ClientError::Network(format!("WebSocket {url}: {what}: {e}"))
        };
        let mut request = url
            .as_str()
            .into_client_request()
            .map_err(|e| ClientError::Config(format!("WebSocket URL {url}: {e}")))?;
        let mut value = tungstenite::http::HeaderValue::from_str(&format!("Bearer {token}"))
            .map_err(|_| {
                ClientError::Protocol("the access token is not a valid header value".into())
            })?;
        value.set_sensitive(true);
        request
            .headers_mut()
            .insert(tungstenite::http::header::AUTHORIZATION, value);
        let parsed = reqwest::Url::parse(url)
            .map_err(|e| ClientError::Config(format!("WebSocket URL {url}: {e}")))?;
        let host = parsed
            .host_str()
            .unwrap_or_default()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let port = parsed.port_or_known_default().unwrap_or(80);
        let tcp = tokio::time::timeout(
            CONNECT_TIMEOUT,
            tokio::net::TcpStream::connect((host.as_str(), port)),
        )
        .await
        .map_err(|_| net("cannot connect", &"timed out"))?
        .map_err(|e| net("cannot connect", &e))?;
        let _ = tcp.set_nodelay(true);
        let config = tungstenite::protocol::WebSocketConfig::default()
            .max_message_size(Some(MAX_PUSH_MESSAGE))
            .max_frame_size(Some(MAX_PUSH_MESSAGE));
        let (tx, rx) = mpsc::channel(64);
        if let Some(tls) = &self.inner.tls {
            let name = rustls::pki_types::ServerName::try_from(host.clone())
                .map_err(|e| ClientError::Config(format!("server name {host:?}: {e}")))?;
            let stream = tokio_rustls::TlsConnector::from(tls.clone())
                .connect(name, tcp)
                .await
                .map_err(|e| match super::tls::tls_failure(&e, url) {
                    Some(f) if f.certificate => {
                        ClientError::Certificate(format!("WebSocket {url}: {}", f.message))
                    }
                    Some(f) => net("TLS handshake failed", &f.message),
                    None => net("TLS handshake failed", &describe(&e)),
                })?;
            let (ws, _) =
                tokio_tungstenite::client_async_with_config(request, stream, Some(config))
                    .await
                    .map_err(|e| handshake_error(url, e))?;
            tokio::spawn(pump(ws, tx, self.inner.clone()));
        } else {
            let (ws, _) = tokio_tungstenite::client_async_with_config(request, tcp, Some(config))
                .await
                .map_err(|e| handshake_error(url, e))?;
            tokio::spawn(pump(ws, tx, self.inner.clone()));
        }
        tracing::debug!(url = %url, "push socket open");
        Ok(rx)
    }
}

/// A failed WebSocket handshake as a [`ClientError`].
pub(super) fn handshake_error(url: &str, e: tungstenite::Error) -> ClientError {
    match e {
        tungstenite::Error::Http(resp) => {
            let status = StatusCode::from_u16(resp.status().as_u16())
                .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            let body = resp.body().clone().unwrap_or_default();
            match status {
                StatusCode::UNAUTHORIZED => ClientError::Unauthorized(error_message(&body)),
                StatusCode::TOO_MANY_REQUESTS => ClientError::RateLimited {
                    retry_after: resp
                        .headers()
                        .get(tungstenite::http::header::RETRY_AFTER)
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.trim().parse().ok())
                        .unwrap_or(1),
                },
                _ => api_error(status, &body),
            }
        }
        tungstenite::Error::Io(e) => ClientError::Network(format!("WebSocket {url}: {e}")),
        tungstenite::Error::Tls(e) => {
            ClientError::Network(format!("WebSocket {url}: TLS: {}", describe(&e)))
        }
        other => ClientError::Protocol(format!("WebSocket {url}: handshake failed: {other}")),
    }
}

/// Forwards push messages to `tx` until the socket ends, goes silent, or `tx` closes.
pub(super) async fn pump<S>(
    mut ws: tokio_tungstenite::WebSocketStream<S>,
    tx: mpsc::Sender<PushMessage>,
    inner: Arc<Inner>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    loop {
        let next = tokio::select! {
            () = tx.closed() => {
                let _ = ws.close(None).await;
                return;
            }
            next = tokio::time::timeout(PUSH_IDLE_TIMEOUT, ws.next()) => next,
        };
        match next {
            Err(_) => {
                tracing::debug!("push socket silent too long; closing");
                let _ = ws.close(None).await;
                return;
            }
            Ok(None) => return,
            Ok(Some(Err(e))) => {
                tracing::debug!(error = %e, "push socket failed");
                return;
            }
            Ok(Some(Ok(tungstenite::Message::Text(text)))) => {
                inner
                    .bytes_down
                    .fetch_add(text.len() as u64, Ordering::Relaxed);
                match serde_json::from_str::<PushMessage>(text.as_str()) {
                    Ok(m) => {
                        if tx.send(m).await.is_err() {
                            let _ = ws.close(None).await;
                            return;
                        }
                    }
                    Err(e) => tracing::debug!(error = %e, "ignoring an unknown push message"),
                }
            }
            Ok(Some(Ok(tungstenite::Message::Close(frame)))) => {
                tracing::debug!(reason = ?frame.map(|f| f.reason.to_string()), "push socket closed by the server");
                return;
            }
            Ok(Some(Ok(_))) => {}
        }
    }
}
