//! This process's resident memory, from Linux's `/proc/self`: the current and the peak
//! resident set size, and resetting the peak (`clear_refs` 5). The bounded-memory tests
//! and `fsync-bench` measure with it. Where `/proc/self` lacks these files (another
//! OS, some sandboxes) every call is an error.

use std::io;

/// A size field of `/proc/self/status`, in bytes: `VmRSS` (now), `VmHWM` (the peak
/// since the start or the last [`reset_peak`]).
pub fn status_bytes(field: &str) -> io::Result<u64> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    let invalid = |what: String| io::Error::new(io::ErrorKind::InvalidData, what);
    let value = status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .ok_or_else(|| invalid(format!("no {field} in /proc/self/status")))?;
    let kib: u64 = value
        .trim()
        .strip_suffix("kB")
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| invalid(format!("unreadable {field}: {value:?}")))?;
    Ok(kib * 1024)
}

/// Resets the peak RSS (`VmHWM`) to the current RSS; returns it, in bytes.
pub fn reset_peak() -> io::Result<u64> {
    std::fs::write("/proc/self/clear_refs", "5")?;
    status_bytes("VmHWM")
}

/// How far the peak RSS rose above the RSS at the start while `f` ran, in bytes, with
/// `f`'s result.
pub fn peak_growth<T>(f: impl FnOnce() -> T) -> io::Result<(u64, T)> {
    let base = reset_peak()?;
    let out = f();
    Ok((status_bytes("VmHWM")?.saturating_sub(base), out))
}
