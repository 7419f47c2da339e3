//! Prometheus counters, rendered as text at `/metrics`.
//!
//! Requests and their latency are labelled by method and route, the route being the
//! matched path template (`/api/v1/chunks/{id}`, never the path with its ids; requests
//! that match no route are `unmatched`), so the series stay few.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use axum::body::{Body, Bytes, HttpBody};

/// Latency histogram bucket bounds, seconds.
const BUCKETS: [f64; 10] = [0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0];

/// One latency histogram: cumulative bucket counts, count, sum.
#[derive(Debug, Default, Clone, Copy)]
struct Histogram {
    buckets: [u64; BUCKETS.len()],
    count: u64,
    sum: f64,
}

impl Histogram {
    fn observe(&mut self, seconds: f64) {
        for (n, bound) in self.buckets.iter_mut().zip(BUCKETS) {
            if seconds <= bound {
                *n += 1;
            }
        }
        self.count += 1;
        self.sum += seconds;
    }
}

/// (method, route).
type RouteKey = (&'static str, String);

/// Counters of the server.
#[derive(Debug, Default)]
pub struct Metrics {
    requests: Mutex<BTreeMap<(&'static str, String, u16), u64>>,
    latency: Mutex<BTreeMap<RouteKey, Histogram>>,
    /// Request body bytes received (counted as the body is read, whatever its framing).
    pub bytes_in: AtomicU64,
    /// Response body bytes sent, all responses.
    pub bytes_out: AtomicU64,
    /// Blob bytes sent (single and batch chunk downloads): part of `bytes_out`.
    pub blob_bytes_out: AtomicU64,
    /// Blobs newly stored.
    pub chunks_stored: AtomicU64,
    /// Chunk ids answered present by `chunks/missing`.
    pub dedup_hits: AtomicU64,
    /// Manifest pages newly stored by `pages/batch`.
    pub pages_stored: AtomicU64,
    /// Manifest pages sent by `pages/fetch`.
    pub pages_sent: AtomicU64,
    /// Rotated-out refresh tokens presented again (each revoked its login).
    pub refresh_reuse: AtomicU64,
    /// Uploads refused because they would pass the account's quota.
    pub quota_refusals: AtomicU64,
    /// Packs written by the group commit of single-blob uploads.
    pub upload_groups: AtomicU64,
    /// Single-blob uploads written by group commit (over `upload_groups`: the mean
    /// group size).
    pub grouped_blobs: AtomicU64,
    /// Open WebSockets.
    pub ws_connections: AtomicU64,
}

/// The method as a label: the standard ones by name, anything else `other`, so that
/// made-up methods cannot add series.
pub fn method_label(method: &axum::http::Method) -> &'static str {
    match method.as_str() {
        "GET" => "GET",
        "HEAD" => "HEAD",
        "POST" => "POST",
        "PUT" => "PUT",
        "DELETE" => "DELETE",
        "PATCH" => "PATCH",
        "OPTIONS" => "OPTIONS",
        "TRACE" => "TRACE",
        "CONNECT" => "CONNECT",
        _ => "other",
    }
}

impl Metrics {
    /// Records one request: `route` is the matched path template.
    pub fn record(&self, method: &'static str, route: &str, status: u16, seconds: f64) {
        *self
            .requests
            .lock()
            .expect("metrics lock")
            .entry((method, route.to_owned(), status))
            .or_insert(0) += 1;
        self.latency
            .lock()
            .expect("metrics lock")
            .entry((method, route.to_owned()))
            .or_default()
            .observe(seconds);
    }

    /// Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        out.push_str("# TYPE fsync_http_requests_total counter\n");
        for ((m, r, s), n) in self.requests.lock().expect("metrics lock").iter() {
            let _ = writeln!(
                out,
                "fsync_http_requests_total{{method=\"{m}\",route=\"{r}\",status=\"{s}\"}} {n}"
            );
        }
        out.push_str("# TYPE fsync_http_request_duration_seconds histogram\n");
        let latency = self.latency.lock().expect("metrics lock").clone();
        for ((m, r), h) in &latency {
            let labels = format!("method=\"{m}\",route=\"{r}\"");
            for (bound, n) in BUCKETS.iter().zip(h.buckets) {
                let _ = writeln!(
                    out,
                    "fsync_http_request_duration_seconds_bucket{{{labels},le=\"{bound}\"}} {n}"
                );
            }
            let _ = writeln!(
                out,
                "fsync_http_request_duration_seconds_bucket{{{labels},le=\"+Inf\"}} {}",
                h.count
            );
            let _ = writeln!(
                out,
                "fsync_http_request_duration_seconds_sum{{{labels}}} {}",
                h.sum
            );
            let _ = writeln!(
                out,
                "fsync_http_request_duration_seconds_count{{{labels}}} {}",
                h.count
            );
        }
        for (name, kind, v) in [
            ("fsync_bytes_in_total", "counter", &self.bytes_in),
            ("fsync_bytes_out_total", "counter", &self.bytes_out),
            (
                "fsync_blob_bytes_out_total",
                "counter",
                &self.blob_bytes_out,
            ),
            ("fsync_chunks_stored_total", "counter", &self.chunks_stored),
            ("fsync_dedup_hits_total", "counter", &self.dedup_hits),
            ("fsync_pages_stored_total", "counter", &self.pages_stored),
            ("fsync_pages_sent_total", "counter", &self.pages_sent),
            ("fsync_upload_groups_total", "counter", &self.upload_groups),
            (
                "fsync_refresh_token_reuse_total",
                "counter",
                &self.refresh_reuse,
            ),
            ("fsync_grouped_blobs_total", "counter", &self.grouped_blobs),
            (
                "fsync_quota_refusals_total",
                "counter",
                &self.quota_refusals,
            ),
            ("fsync_websocket_connections", "gauge", &self.ws_connections),
        ] {
            let _ = writeln!(
                out,
                "# TYPE {name} {kind}\n{name} {}",
                v.load(Ordering::Relaxed)
            );
        }
        out
    }
}

/// Which byte counter a [`Counted`] body adds to.
#[derive(Debug, Clone, Copy)]
pub enum Direction {
    /// Request bodies: `bytes_in`.
    In,
    /// Response bodies: `bytes_out`.
    Out,
}

/// A body that adds the bytes of each data frame to a counter as the frame passes:
/// what was actually read or sent, whatever the framing (`Content-Length`, chunked, a
/// stream). Size hints and trailers pass through unchanged.
pub struct Counted {
    inner: Body,
    metrics: Arc<Metrics>,
    direction: Direction,
}

impl Counted {
    /// Wraps `inner`.
    pub fn body(inner: Body, metrics: Arc<Metrics>, direction: Direction) -> Body {
        Body::new(Self {
            inner,
            metrics,
            direction,
        })
    }
}

impl HttpBody for Counted {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, axum::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled {
            if let Some(data) = frame.data_ref() {
                let counter = match self.direction {
                    Direction::In => &self.metrics.bytes_in,
                    Direction::Out => &self.metrics.bytes_out,
                };
                counter.fetch_add(data.len() as u64, Ordering::Relaxed);
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latency_is_per_route_with_cumulative_buckets() {
        let m = Metrics::default();
        m.record("GET", "/a/{id}", 200, 0.003);
        m.record("GET", "/a/{id}", 404, 0.2);
        m.record("POST", "/b", 200, 7.0);
        let text = m.render();
        for line in [
            r#"fsync_http_request_duration_seconds_bucket{method="GET",route="/a/{id}",le="0.001"} 0"#,
            r#"fsync_http_request_duration_seconds_bucket{method="GET",route="/a/{id}",le="0.005"} 1"#,
            r#"fsync_http_request_duration_seconds_bucket{method="GET",route="/a/{id}",le="0.25"} 2"#,
            r#"fsync_http_request_duration_seconds_bucket{method="GET",route="/a/{id}",le="+Inf"} 2"#,
            r#"fsync_http_request_duration_seconds_count{method="GET",route="/a/{id}"} 2"#,
            r#"fsync_http_request_duration_seconds_bucket{method="POST",route="/b",le="5"} 0"#,
            r#"fsync_http_request_duration_seconds_bucket{method="POST",route="/b",le="+Inf"} 1"#,
            r#"fsync_http_request_duration_seconds_sum{method="POST",route="/b"} 7"#,
        ] {
            assert!(text.lines().any(|l| l == line), "no {line:?} in:\n{text}");
        }
    }

    #[test]
    fn made_up_methods_share_one_label() {
        let m = axum::http::Method::from_bytes(b"BREW").unwrap();
        assert_eq!(method_label(&m), "other");
        assert_eq!(method_label(&axum::http::Method::PUT), "PUT");
    }
}
