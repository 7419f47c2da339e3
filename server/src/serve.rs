//! The accept loop, on TCP or TLS: every connection is served by hyper's HTTP/1.1
//! server with a deadline for each request head, and no client address holds more than
//! its share of connections, so a few slow or half-open clients cannot hold the server.
//!
//! - **Header deadline** (`Limits::header_timeout`, `REQUEST_HEADER_TIMEOUT_SECS`): a
//!   request's head (request line and headers) must arrive within it, and an idle
//!   keep-alive connection waiting for its next request is closed after it too.
//!   Bodies are read by the handlers with their own limits; an upgraded WebSocket is
//!   no longer HTTP and keeps its own heartbeat and send timeouts (`http/ws.rs`).
//! - **Body idle deadline** (`Limits::body_idle_timeout`,
//!   `REQUEST_BODY_IDLE_TIMEOUT_SECS`): a request body that the handler waits on and
//!   that brings no data for this long fails the request, so a client cannot send its
//!   head and then trickle or stall the body.
//! - **Connections per IP** (`Limits::connections_per_ip`, `MAX_CONNECTIONS_PER_IP`,
//!   0: no cap): one more from the same address is closed at once, before a byte is
//!   read. Behind a reverse proxy every connection comes from the proxy: raise the cap
//!   or set it to 0 there, and let the proxy cap its clients.
//!
//! Shutdown: the loop stops accepting, open connections finish their current request
//! (hyper's graceful shutdown) and the call returns when the last one has closed.

use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::extract::ConnectInfo;
use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::sync::{mpsc, watch};
use tower::ServiceExt as _;

use crate::state::Limits;

/// Open connections per client address.
#[derive(Debug, Default)]
struct PerIp {
    open: Mutex<HashMap<IpAddr, usize>>,
}

/// One connection's place in [`PerIp`]; given back on drop.
struct Place {
    counts: Arc<PerIp>,
    ip: IpAddr,
}

impl PerIp {
    fn take(self: &Arc<Self>, ip: IpAddr, cap: usize) -> Option<Place> {
        let mut open = self.open.lock().expect("per-IP lock");
        let n = open.entry(ip).or_default();
        if cap != 0 && *n >= cap {
            return None;
        }
        *n += 1;
        Some(Place {
            counts: Arc::clone(self),
            ip,
        })
    }
}

impl Drop for Place {
    fn drop(&mut self) {
        let mut open = self.counts.open.lock().expect("per-IP lock");
        if let Some(n) = open.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.ip);
            }
        }
    }
}

/// Serves `app` on `listener` until `shutdown` resolves (see the module documentation).
pub(crate) async fn serve<L>(
    mut listener: L,
    app: Router,
    limits: &Limits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()>
where
    L: axum::serve::Listener<Addr = SocketAddr>,
{
    let per_ip = Arc::new(PerIp::default());
    let (cap, header_timeout) = (limits.connections_per_ip, limits.header_timeout);
    // Dropped to tell the connections to finish; each holds a `done` sender, so that
    // the receiver ends once the last connection has closed.
    let (stop, stopping) = watch::channel(());
    let (done, mut all_done) = mpsc::channel::<()>(1);
    tokio::pin!(shutdown);
    let mut refused_logged = false;
    loop {
        let (io, addr) = tokio::select! {
            conn = listener.accept() => conn,
            () = &mut shutdown => break,
        };
        let Some(place) = per_ip.take(addr.ip(), cap) else {
            // Logged once per burst, not per connection (a flood must not fill the log).
            if !refused_logged {
                tracing::warn!(ip = %addr.ip(), cap, "too many connections from one address; refusing more");
                refused_logged = true;
            }
            drop(io);
            continue;
        };
        refused_logged = false;
        let body_idle = limits.body_idle_timeout;
        let service = app
            .clone()
            .map_request(move |req: hyper::Request<hyper::body::Incoming>| {
                let mut req = req.map(|inner| {
                    axum::body::Body::new(IdleBody {
                        inner,
                        idle: body_idle,
                        timer: None,
                    })
                });
                req.extensions_mut().insert(ConnectInfo(addr));
                req
            });
        let mut stopping = stopping.clone();
        let done = done.clone();
        tokio::spawn(async move {
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(header_timeout);
            let conn = builder
                .serve_connection(TokioIo::new(io), TowerToHyperService::new(service))
                .with_upgrades();
            tokio::pin!(conn);
            tokio::select! {
                r = conn.as_mut() => {
                    if let Err(e) = r {
                        tracing::debug!(error = %e, "connection ended with an error");
                    }
                }
                _ = stopping.changed() => {
                    conn.as_mut().graceful_shutdown();
                    let _ = conn.await;
                }
            }
            drop((place, done));
        });
    }
    drop(listener);
    drop(stop);
    drop(done);
    let _ = all_done.recv().await;
    Ok(())
}

/// A request body that fails when the handler waits on it for `idle` without data.
struct IdleBody {
    inner: hyper::body::Incoming,
    idle: Duration,
    /// Started when a poll finds no data, dropped when data arrives.
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl http_body::Body for IdleBody {
    type Data = bytes::Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<bytes::Bytes>, Self::Error>>> {
        if let Poll::Ready(frame) = Pin::new(&mut self.inner).poll_frame(cx) {
            self.timer = None;
            return Poll::Ready(frame.map(|f| f.map_err(Into::into)));
        }
        let idle = self.idle;
        let timer = self
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(idle)));
        match timer.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Some(Err(format!(
                "no request body data for {} s",
                idle.as_secs()
            )
            .into()))),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}
