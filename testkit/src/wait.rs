//! Polling with a deadline (never a bare sleep): a condition is checked, then checked
//! again after a pause, until it holds or the time is up. A poll that runs out of time
//! says what it awaited and for how long ([`TimedOut`]).

use std::fmt;
use std::future::Future;
use std::time::{Duration, Instant};

/// Pause between two checks of [`wait_until`] and [`wait_until_async`].
pub const POLL: Duration = Duration::from_millis(25);

/// A poll that ran out of time: what it awaited, and for how long.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TimedOut {
    /// What was awaited (e.g. "B's copy of a.txt").
    pub what: String,
    /// How long it was awaited.
    pub after: Duration,
}

impl fmt::Display for TimedOut {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "timed out after {:?} waiting for {}",
            self.after, self.what
        )
    }
}

impl std::error::Error for TimedOut {}

/// Calls `check` until it returns `Some`, pausing `every` between two calls; at least
/// one call, and none once `timeout` has passed.
pub fn poll<T>(
    timeout: Duration,
    every: Duration,
    what: &str,
    mut check: impl FnMut() -> Option<T>,
) -> Result<T, TimedOut> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check() {
            return Ok(v);
        }
        if Instant::now() >= deadline {
            return Err(TimedOut {
                what: what.to_owned(),
                after: timeout,
            });
        }
        std::thread::sleep(every);
    }
}

/// [`poll`] for asynchronous checks, sleeping on the tokio timer.
pub async fn poll_async<T, F: Future<Output = Option<T>>>(
    timeout: Duration,
    every: Duration,
    what: &str,
    mut check: impl FnMut() -> F,
) -> Result<T, TimedOut> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return Ok(v);
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(TimedOut {
                what: what.to_owned(),
                after: timeout,
            });
        }
        tokio::time::sleep(every).await;
    }
}

/// Polls `cond` every [`POLL`] until it holds; panics naming `what` after `timeout`.
#[track_caller]
pub fn wait_until(timeout: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    if let Err(e) = poll(timeout, POLL, what, || cond().then_some(())) {
        panic!("{e}");
    }
}

/// [`wait_until`] for asynchronous conditions.
pub async fn wait_until_async<F: Future<Output = bool>>(
    timeout: Duration,
    what: &str,
    mut cond: impl FnMut() -> F,
) {
    let polled = poll_async(timeout, POLL, what, || {
        let f = cond();
        async move { f.await.then_some(()) }
    });
    if let Err(e) = polled.await {
        panic!("{e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[should_panic(expected = "timed out after 10ms waiting for the impossible")]
    fn a_wait_that_times_out_says_what_and_how_long() {
        let mut calls = 0;
        assert_eq!(poll(Duration::ZERO, POLL, "x", || Some(7)), Ok(7));
        wait_until(Duration::from_millis(10), "the impossible", || {
            calls += 1;
            assert!(calls < 100, "polled {calls} times in 10 ms");
            false
        });
    }

    #[tokio::test]
    async fn the_async_poll_awaits_its_check() {
        let mut n = 0;
        let third = poll_async(Duration::from_secs(5), POLL, "n", || {
            n += 1;
            std::future::ready((n == 3).then_some(n))
        });
        assert_eq!(third.await, Ok(3));
    }
}
