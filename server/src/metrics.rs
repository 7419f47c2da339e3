//! Prometheus counters, rendered as text at `/metrics`.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

/// Latency histogram bucket bounds, seconds.
const BUCKETS: [f64; 10] = [0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0];

/// Counters of the server.
#[derive(Debug, Default)]
pub struct Metrics {
    requests: Mutex<BTreeMap<(String, String, u16), u64>>,
    latency: Mutex<([u64; BUCKETS.len()], u64, f64)>,
    /// Request body bytes received.
    pub bytes_in: AtomicU64,
    /// Response body bytes sent (blobs).
    pub bytes_out: AtomicU64,
    /// Blobs newly stored.
    pub chunks_stored: AtomicU64,
    /// Chunk ids answered present by `chunks/missing`.
    pub dedup_hits: AtomicU64,
    /// Open WebSockets.
    pub ws_connections: AtomicU64,
}

impl Metrics {
    /// Records one request.
    pub fn record(&self, method: &str, route: &str, status: u16, seconds: f64) {
        *self
            .requests
            .lock()
            .expect("metrics lock")
            .entry((method.to_owned(), route.to_owned(), status))
            .or_insert(0) += 1;
        let mut h = self.latency.lock().expect("metrics lock");
        for (i, b) in BUCKETS.iter().enumerate() {
            if seconds <= *b {
                h.0[i] += 1;
            }
        }
        h.1 += 1;
        h.2 += seconds;
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
        let h = self.latency.lock().expect("metrics lock");
        for (i, b) in BUCKETS.iter().enumerate() {
            let _ = writeln!(
                out,
                "fsync_http_request_duration_seconds_bucket{{le=\"{b}\"}} {}",
                h.0[i]
            );
        }
        let _ = writeln!(
            out,
            "fsync_http_request_duration_seconds_bucket{{le=\"+Inf\"}} {}",
            h.1
        );
        let _ = writeln!(out, "fsync_http_request_duration_seconds_sum {}", h.2);
        let _ = writeln!(out, "fsync_http_request_duration_seconds_count {}", h.1);
        for (name, kind, v) in [
            ("fsync_bytes_in_total", "counter", &self.bytes_in),
            ("fsync_bytes_out_total", "counter", &self.bytes_out),
            ("fsync_chunks_stored_total", "counter", &self.chunks_stored),
            ("fsync_dedup_hits_total", "counter", &self.dedup_hits),
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
