//! Named fault-injection points, for the end-to-end fault tests only.
//!
//! Code calls [`hit`] at a named point (`"client.download.before_rename"`, …). Nothing
//! happens unless the process was started with the environment variable
//! `FSYNC_FAILPOINTS=name=action[,name=action…]`; it is read once, and when unset a
//! hit costs one atomic load. Actions:
//!
//! - `abort`: [`std::process::abort`], a crash at exactly that point;
//! - `error`: the hit returns an injected I/O error (`ErrorKind::Other`);
//! - `enospc`: the hit returns an injected "no space left" error (`StorageFull`);
//! - `pause`: creates `<FSYNC_FAILPOINT_DIR>/<name>.hit`, then blocks the calling
//!   thread until `<FSYNC_FAILPOINT_DIR>/<name>.resume` exists (a test does its thing
//!   at that exact moment, then resumes the process);
//! - `off`: nothing.
//!
//! A point is disarmed for good, whatever its action, once
//! `<FSYNC_FAILPOINT_DIR>/<name>.resume` exists (e.g. a disk that fills up, then has
//! room again).
//!
//! `N*action` applies the action to the first `N` hits only (`2*error`). An unparsable
//! `FSYNC_FAILPOINTS` panics: a fault test must never silently run without its fault.

use std::io;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

/// The environment variable that arms failpoints.
pub const ENV: &str = "FSYNC_FAILPOINTS";
/// The environment variable naming the directory of `pause` handshake files.
pub const DIR_ENV: &str = "FSYNC_FAILPOINT_DIR";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Action {
    Abort,
    Error,
    Enospc,
    Pause,
    Off,
}

#[derive(Debug)]
struct Point {
    name: String,
    action: Action,
    /// Hits left that take the action; `u64::MAX`: all.
    left: AtomicU64,
}

#[derive(Debug)]
struct Armed {
    points: Vec<Point>,
    dir: Option<PathBuf>,
}

impl Point {
    /// Whether this hit takes the action (counts it down).
    fn take(&self) -> bool {
        self.left
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| match n {
                0 => None,
                u64::MAX => Some(u64::MAX),
                n => Some(n - 1),
            })
            .is_ok()
    }
}

fn parse(spec: &str, dir: Option<PathBuf>) -> Result<Armed, String> {
    let mut points = Vec::new();
    for item in spec.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let (name, action) = item
            .split_once('=')
            .ok_or_else(|| format!("{item:?} is not name=action"))?;
        let (count, action) = match action.split_once('*') {
            Some((n, a)) => (
                n.trim()
                    .parse::<u64>()
                    .map_err(|_| format!("bad count in {item:?}"))?,
                a,
            ),
            None => (u64::MAX, action),
        };
        let action = match action.trim() {
            "abort" => Action::Abort,
            "error" => Action::Error,
            "enospc" => Action::Enospc,
            "pause" => Action::Pause,
            "off" => Action::Off,
            other => return Err(format!("unknown action {other:?} in {item:?}")),
        };
        if action == Action::Pause && dir.is_none() {
            return Err(format!("{item:?} needs {DIR_ENV}"));
        }
        points.push(Point {
            name: name.trim().to_owned(),
            action,
            left: AtomicU64::new(count),
        });
    }
    Ok(Armed { points, dir })
}

fn armed() -> Option<&'static Armed> {
    static ARMED: OnceLock<Option<Armed>> = OnceLock::new();
    ARMED
        .get_or_init(|| {
            let spec = std::env::var(ENV).ok().filter(|s| !s.trim().is_empty())?;
            let dir = std::env::var_os(DIR_ENV).map(PathBuf::from);
            let armed = parse(&spec, dir).unwrap_or_else(|e| panic!("{ENV}: {e}"));
            eprintln!(
                "WARNING: FAULT INJECTION IS ARMED ({ENV}={spec}): this process will crash, \
                 fail or pause ON PURPOSE. Never set {ENV} outside tests."
            );
            Some(armed)
        })
        .as_ref()
}

/// Reads `FSYNC_FAILPOINTS` now (printing the warning if it is set) rather than at the
/// first hit. Returns whether any failpoint is armed.
pub fn init() -> bool {
    armed().is_some()
}

/// The failpoint `name`: `Ok(())` unless it is armed with `error` or `enospc`; it
/// does not return when armed with `abort`, and blocks when armed with `pause`.
pub fn hit(name: &str) -> io::Result<()> {
    let Some(armed) = armed() else {
        return Ok(());
    };
    let Some(point) = armed.points.iter().find(|p| p.name == name) else {
        return Ok(());
    };
    if !point.take() {
        return Ok(());
    }
    let resume = armed
        .dir
        .as_ref()
        .map(|dir| dir.join(format!("{name}.resume")));
    if resume.as_ref().is_some_and(|r| r.exists()) {
        return Ok(());
    }
    match point.action {
        Action::Off => Ok(()),
        Action::Abort => {
            eprintln!("failpoint {name}: abort");
            std::process::abort()
        }
        Action::Error => Err(io::Error::other(format!("injected fault at {name}"))),
        Action::Enospc => Err(io::Error::new(
            io::ErrorKind::StorageFull,
            format!("injected: no space left on device (at {name})"),
        )),
        Action::Pause => {
            let resume = resume.expect("checked when parsed");
            eprintln!("failpoint {name}: paused until {} exists", resume.display());
            std::fs::write(resume.with_extension("hit"), b"")?;
            while !resume.exists() {
                std::thread::sleep(Duration::from_millis(10));
            }
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_actions_and_counts() {
        let a = parse(" a.b=abort, c=2*error ,d=enospc,e=off", None).unwrap();
        let got: Vec<_> = a
            .points
            .iter()
            .map(|p| (p.name.as_str(), p.action, p.left.load(Ordering::SeqCst)))
            .collect();
        assert_eq!(
            got,
            [
                ("a.b", Action::Abort, u64::MAX),
                ("c", Action::Error, 2),
                ("d", Action::Enospc, u64::MAX),
                ("e", Action::Off, u64::MAX),
            ]
        );
        assert!(parse("x", None).is_err());
        assert!(parse("x=explode", None).is_err());
        assert!(parse("x=y*error", None).is_err());
        assert!(parse("x=pause", None).is_err(), "pause needs a directory");
        assert!(parse("x=pause", Some(PathBuf::from("/tmp"))).is_ok());
    }

    #[test]
    fn counts_limit_the_hits_that_act() {
        let a = parse("c=2*error,d=error", None).unwrap();
        let takes = |p: &Point| (0..4).map(|_| p.take()).collect::<Vec<_>>();
        assert_eq!(takes(&a.points[0]), [true, true, false, false]);
        assert_eq!(takes(&a.points[1]), [true, true, true, true]);
    }

    #[test]
    fn unarmed_hits_pass() {
        // The test process does not set FSYNC_FAILPOINTS.
        if std::env::var_os(ENV).is_none() {
            assert!(hit("anything").is_ok());
            assert!(!init());
        }
    }
}
