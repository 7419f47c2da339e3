//! Progress bars for long work (hashing many files, large transfers) when stderr is a
//! terminal; nothing otherwise (logs say what happened).

use std::io::IsTerminal;
use std::sync::atomic::{AtomicBool, Ordering};

use indicatif::{ProgressBar, ProgressStyle};

static ENABLED: AtomicBool = AtomicBool::new(false);

/// Work smaller than this gets no bar.
const MIN_BYTES: u64 = 32 * 1024 * 1024;

/// Turns bars on when stderr is a terminal (call once at start).
pub fn enable_if_terminal() {
    ENABLED.store(std::io::stderr().is_terminal(), Ordering::Relaxed);
}

/// A byte-counting bar for `what`, or a hidden one for small work or no terminal.
pub fn bytes(what: &str, total: u64) -> ProgressBar {
    if !ENABLED.load(Ordering::Relaxed) || total < MIN_BYTES {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(total);
    bar.set_style(
        ProgressStyle::with_template(
            "{msg:30!} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    bar.set_message(what.to_owned());
    bar
}
