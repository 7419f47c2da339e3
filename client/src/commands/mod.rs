//! The subcommands, and what they share: the folder, the login, the human formats.

pub mod history;
pub mod service;
pub mod status;

use std::io::IsTerminal;
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use fsync_client::api::{ApiClient, TlsOptions, READ_TIMEOUT};
use fsync_client::engine::Engine;
use fsync_client::root::{KnownRoots, RootLock};
use fsync_client::scan;
use fsync_client::session::{self, Session};
use fsync_client::state::State;
use fsync_common::SyncPath;

use crate::{AccountArgs, FolderArgs};

/// The server's address when none is given.
const DEFAULT_SERVER_URL: &str = "http://127.0.0.1:8000";

/// Everything a command was given, merged from before and after its name.
#[derive(Debug)]
pub struct Opts {
    pub account: AccountArgs,
    pub folder: FolderArgs,
    pub chunk_size: Option<u32>,
    pub reset: bool,
}

impl Opts {
    fn server_url(&self) -> &str {
        self.account
            .server_url
            .as_deref()
            .unwrap_or(DEFAULT_SERVER_URL)
    }
}

/// A synced folder before any login: its root, marker and state.
pub struct Folder {
    pub root: PathBuf,
    pub marker: PathBuf,
    pub state_dir: PathBuf,
    pub state: State,
}

/// A folder logged in: its session and engine, and (for a command that syncs) the
/// folder's lock, held while this lives.
pub struct Started {
    pub root: PathBuf,
    pub session: Session,
    pub engine: Engine,
    pub _lock: Option<RootLock>,
}

fn password(account: &AccountArgs) -> anyhow::Result<String> {
    if let Some(p) = &account.password {
        return Ok(p.clone());
    }
    if !std::io::stdin().is_terminal() {
        bail!("no password: pass --password, set FSYNC_PASSWORD, or run in a terminal to be asked");
    }
    rpassword::prompt_password("Password: ").context("reading the password")
}

/// A new account's password: from the flag or environment as given, or asked twice at
/// the terminal (a typo here would lose the account: every key derives from it).
fn new_password(account: &AccountArgs) -> anyhow::Result<String> {
    if account.password.is_some() || !std::io::stdin().is_terminal() {
        return password(account);
    }
    let first = rpassword::prompt_password("New password: ").context("reading the password")?;
    session::check_new_password(&first, account.username.as_deref().unwrap_or(""))?;
    let again =
        rpassword::prompt_password("The same password again: ").context("reading the password")?;
    if again != first {
        bail!("the two passwords differ; nothing was registered, try again");
    }
    Ok(first)
}

fn username(account: &AccountArgs) -> anyhow::Result<&str> {
    let name = account
        .username
        .as_deref()
        .context("--username (or FSYNC_USERNAME) is required")?;
    if name.trim().is_empty() {
        bail!("--username (or FSYNC_USERNAME) is empty: give the account's name");
    }
    Ok(name)
}

fn watch_dir(folder: &FolderArgs) -> anyhow::Result<PathBuf> {
    let dir = folder
        .watch_dir
        .as_ref()
        .context("--watch-dir (or FSYNC_WATCH_DIR) is required")?;
    let dir = std::fs::canonicalize(dir)
        .with_context(|| format!("the watch dir {} does not exist", dir.display()))?;
    if !dir.is_dir() {
        bail!("the watch dir {} is not a directory", dir.display());
    }
    Ok(dir)
}

fn api(opts: &Opts, state_dir: Option<&Path>) -> anyhow::Result<ApiClient> {
    let timeout = match opts.account.timeout {
        None => READ_TIMEOUT,
        Some(0) => bail!("--timeout (FSYNC_TIMEOUT) must be at least 1 second"),
        Some(s) => Duration::from_secs(s),
    };
    let tls = TlsOptions {
        ca_cert: opts.account.ca_cert.clone(),
        pin: opts.account.server_fingerprint,
    };
    let api = ApiClient::with_options(opts.server_url(), &tls, timeout)?;
    Ok(match state_dir {
        Some(d) => api.with_token_file(d.join("refresh_token")),
        None => api,
    })
}

/// The folder named by `--watch-dir`, checked (marker, nesting) and its state opened.
pub fn open_folder(opts: &Opts) -> anyhow::Result<Folder> {
    let root = watch_dir(&opts.folder)?;
    let marker = KnownRoots::from_env().prepare(&root, opts.reset)?;
    let state_dir = opts
        .folder
        .state_dir
        .clone()
        .unwrap_or_else(|| marker.clone());
    let state = session::open_state(&state_dir)?;
    Ok(Folder {
        root,
        marker,
        state_dir,
        state,
    })
}

/// Logs the folder in.
async fn login(opts: &Opts, folder: &Folder) -> anyhow::Result<Session> {
    let api = api(opts, Some(&folder.state_dir))?;
    let name = opts
        .folder
        .device_name
        .clone()
        .unwrap_or_else(|| format!("fsync-client on {}", folder.root.display()));
    let session = session::login(
        &api,
        &folder.state,
        username(&opts.account)?,
        &password(&opts.account)?,
        &name,
        session::chunk_config(opts.chunk_size)?,
    )
    .await
    .context("logging in")?;
    tracing::debug!(device = %session.device, namespace = %session.ns, root = %folder.root.display(), "logged in");
    Ok(session)
}

/// Opens the folder and logs in; `lock`: for a command that syncs, which takes the
/// folder's lock first (a second client on the folder is refused, naming the first).
pub async fn start(opts: &Opts, lock: bool) -> anyhow::Result<Started> {
    let folder = open_folder(opts)?;
    let lock = if lock {
        Some(RootLock::acquire(&folder.root, &folder.marker)?)
    } else {
        None
    };
    let session = login(opts, &folder).await?;
    Ok(started(folder, session, lock))
}

fn started(folder: Folder, session: Session, lock: Option<RootLock>) -> Started {
    let engine = Engine::new(
        folder.root.clone(),
        folder.marker,
        folder.state,
        session.clone(),
    );
    Started {
        root: folder.root,
        session,
        engine,
        _lock: lock,
    }
}

/// Whether `e` is a failure to reach the server (or a server error) that waiting
/// may cure, rather than a refusal or a local problem.
pub fn server_unreachable(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<session::SessionError>()
            .is_some_and(|s| matches!(s, session::SessionError::Api(api) if api.is_retryable()))
            || c.downcast_ref::<fsync_client::ClientError>()
                .is_some_and(fsync_client::ClientError::is_retryable)
    })
}

/// [`start`] for the daemon: while the server cannot be reached it waits, with backoff
/// up to a minute, saying so once; `None` when stopped meanwhile (Ctrl-C, SIGTERM).
pub async fn start_waiting(opts: &Opts) -> anyhow::Result<Option<Started>> {
    const MAX_WAIT: Duration = Duration::from_secs(60);
    let stop = shutdown_signal();
    tokio::pin!(stop);
    let mut wait = Duration::from_secs(1);
    let mut waiting = false;
    // The folder is checked and locked once: it stays this daemon's while it waits.
    let folder = open_folder(opts)?;
    let lock = RootLock::acquire(&folder.root, &folder.marker)?;
    loop {
        match login(opts, &folder).await {
            Ok(session) => {
                if waiting {
                    tracing::info!(server = %opts.server_url(), "the server answers again; syncing");
                }
                return Ok(Some(started(folder, session, Some(lock))));
            }
            Err(e) if server_unreachable(&e) => {
                if waiting {
                    tracing::debug!(error = %e, "the server still cannot be reached");
                } else {
                    tracing::warn!(server = %opts.server_url(), "the server cannot be reached ({}); waiting for it, retrying with backoff up to {} s", crate::describe(&e), MAX_WAIT.as_secs());
                    waiting = true;
                }
                tokio::select! {
                    () = tokio::time::sleep(wait) => {}
                    () = &mut stop => return Ok(None),
                }
                wait = (wait * 2).min(MAX_WAIT);
            }
            Err(e) => return Err(e),
        }
    }
}

pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        if let Ok(mut s) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        {
            s.recv().await;
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
    tracing::info!("stopping: finishing the current round");
}

/// "just now", "5 min ago", "3 h ago", "12 days ago".
pub fn ago(then: i64, now: i64) -> String {
    let secs = (now - then).max(0);
    match secs {
        0..60 => "just now".to_owned(),
        60..3600 => format!("{} min ago", secs / 60),
        3600..86_400 => format!("{} h ago", secs / 3600),
        _ => format!("{} days ago", secs / 86_400),
    }
}

/// Seconds since the epoch, now.
pub fn now_secs() -> i64 {
    chrono::Utc::now().timestamp()
}

/// A time (seconds since the epoch) in local time, with how long ago:
/// `2026-12-07 09:14 (5 min ago)`.
pub fn when(secs: i64) -> String {
    match chrono::DateTime::from_timestamp(secs, 0) {
        Some(t) => format!(
            "{} ({})",
            t.with_timezone(&chrono::Local).format("%Y-%m-%d %H:%M"),
            ago(secs, now_secs())
        ),
        None => format!("{secs} (seconds since the epoch)"),
    }
}

/// The synced path that `arg` names: an absolute path inside the folder, a path
/// relative to the current directory when that is inside the folder, else a path
/// relative to the folder. `.` and `..` are resolved by name (the file may be gone).
pub fn folder_path(root: &Path, arg: &str) -> anyhow::Result<SyncPath> {
    let given = Path::new(arg);
    let cwd = std::env::current_dir().ok();
    let full = if given.is_absolute() {
        given.to_owned()
    } else {
        match cwd.as_deref().filter(|c| c.starts_with(root)) {
            Some(c) => c.join(given),
            None => root.join(given),
        }
    };
    let mut clean = PathBuf::new();
    for c in full.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                clean.pop();
            }
            other => clean.push(other),
        }
    }
    // A path through a symlink to the folder (e.g. /tmp on some systems): the real
    // location of its deepest existing ancestor.
    if !clean.starts_with(root) {
        if let Some((real, rest)) = clean.ancestors().find_map(|a| {
            let real = std::fs::canonicalize(a).ok()?;
            Some((real, clean.strip_prefix(a).ok()?.to_owned()))
        }) {
            clean = real.join(rest);
        }
    }
    let rel = clean.strip_prefix(root).map_err(|_| {
        anyhow::anyhow!(
            "{arg} is outside the synced folder {}: give a path inside it",
            root.display()
        )
    })?;
    if rel.as_os_str().is_empty() {
        bail!("{arg} is the synced folder itself: name a file or folder inside it");
    }
    SyncPath::from_relative(rel).with_context(|| format!("{arg:?} is not a valid path"))
}

pub async fn register(opts: &Opts, email: Option<&str>) -> anyhow::Result<()> {
    let api = api(opts, None)?;
    let user = username(&opts.account)?;
    let r = session::register(
        &api,
        user,
        email,
        &new_password(&opts.account)?,
        fsync_store::default_kdf_params(),
    )
    .await?;
    println!(
        "registered {user} (user {}, namespace {})",
        r.user_id, r.namespace_id
    );
    Ok(())
}

pub fn conflicts(opts: &Opts) -> anyhow::Result<()> {
    let root = watch_dir(&opts.folder)?;
    let found = scan::scan(&root)?;
    let copies: Vec<_> = found
        .files
        .keys()
        .filter(|p| p.as_str().contains(".sync-conflict-"))
        .collect();
    if copies.is_empty() {
        println!("no conflict copies in {}", root.display());
    }
    for p in copies {
        println!("{p}");
    }
    Ok(())
}

pub async fn devices(opts: &Opts, revoke: Option<&str>) -> anyhow::Result<()> {
    let s = start(opts, false).await?.session;
    let all = s.api.devices().await?;
    let Some(id) = revoke else {
        let now = now_secs();
        for d in &all {
            let this = if d.id == s.device {
                "  (this device)"
            } else {
                ""
            };
            let revoked = if d.revoked { "  (revoked)" } else { "" };
            println!(
                "{}  {:<40}  last seen {}{this}{revoked}",
                d.id,
                d.name,
                ago(d.last_seen, now)
            );
        }
        return Ok(());
    };
    let wanted = id.trim().to_ascii_lowercase();
    let matches: Vec<_> = all
        .iter()
        .filter(|d| wanted.len() >= 4 && d.id.to_hex().starts_with(&wanted))
        .collect();
    let device = match matches[..] {
        [one] => one,
        [] => bail!("no device of this account has the id {id:?} (at least 4 characters; see `fsync-client devices`)"),
        _ => bail!("{id:?} names {} devices: give more of the id", matches.len()),
    };
    if device.id == s.device {
        bail!(
            "{} is this folder's own device: revoke it from another device",
            device.id
        );
    }
    s.api.revoke_device(device.id).await?;
    println!("revoked {} ({})", device.id, device.name);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_taken_relative_to_the_folder_or_absolute_inside_it() {
        let dir = tempfile::tempdir().unwrap();
        let root = std::fs::canonicalize(dir.path()).unwrap();
        let p = |arg: &str| folder_path(&root, arg).map(|p| p.as_str().to_owned());
        assert_eq!(p("a/b.txt").unwrap(), "a/b.txt");
        assert_eq!(p("./a/./b.txt").unwrap(), "a/b.txt");
        assert_eq!(p("a/x/../b.txt").unwrap(), "a/b.txt");
        let abs = root.join("docs/n.md");
        assert_eq!(p(abs.to_str().unwrap()).unwrap(), "docs/n.md");
        assert!(p("/etc/passwd")
            .unwrap_err()
            .to_string()
            .contains("outside"));
        assert!(p("../../etc/passwd")
            .unwrap_err()
            .to_string()
            .contains("outside"));
        assert!(p(".").unwrap_err().to_string().contains("folder itself"));
    }
}
