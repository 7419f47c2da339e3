//! Fixed-window rate limits keyed by client IP, username or user.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// A limit: at most `max` hits per `window`.
#[derive(Debug, Clone, Copy)]
pub struct Limit {
    /// Hits allowed per window.
    pub max: u32,
    /// Window length.
    pub window: Duration,
}

/// Counts hits per key in fixed windows.
#[derive(Debug)]
pub struct RateLimiter {
    windows: Mutex<HashMap<String, (Instant, u32)>>,
}

impl Default for RateLimiter {
    fn default() -> Self {
        Self::new()
    }
}

impl RateLimiter {
    /// An empty limiter.
    pub fn new() -> Self {
        Self {
            windows: Mutex::new(HashMap::new()),
        }
    }

    /// Records a hit on `key`. `Err(seconds)` tells how long to wait when over the limit.
    pub fn hit(&self, key: &str, limit: Limit) -> Result<(), u64> {
        let now = Instant::now();
        let mut map = self.windows.lock().expect("rate limiter lock");
        if map.len() > 100_000 {
            map.retain(|_, (start, _)| now.duration_since(*start) < limit.window);
        }
        let entry = map.entry(key.to_owned()).or_insert((now, 0));
        if now.duration_since(entry.0) >= limit.window {
            *entry = (now, 0);
        }
        if entry.1 >= limit.max {
            let wait = limit.window.saturating_sub(now.duration_since(entry.0));
            return Err(wait.as_secs().max(1));
        }
        entry.1 += 1;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_past_the_limit_per_key() {
        let l = RateLimiter::new();
        let lim = Limit {
            max: 3,
            window: Duration::from_secs(60),
        };
        for _ in 0..3 {
            l.hit("a", lim).unwrap();
        }
        let wait = l.hit("a", lim).unwrap_err();
        assert!((1..=60).contains(&wait));
        l.hit("b", lim).unwrap();
    }
}
