//! `fsync-client`: keeps a folder in sync through an fsync server.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use fsync_client::api::ApiClient;
use fsync_client::daemon::{self, DaemonOptions};
use fsync_client::engine::Engine;
use fsync_client::root::KnownRoots;
use fsync_client::scan;
use fsync_client::session::{self, Session};
use fsync_common::{SyncPath, VersionNo};

/// fsync client: keeps a folder in sync through an fsync server, end-to-end encrypted.
#[derive(Debug, Parser)]
#[command(name = "fsync-client", version)]
struct Cli {
    /// The folder to keep in sync.
    #[arg(long, env = "FSYNC_WATCH_DIR", global = true)]
    watch_dir: Option<PathBuf>,
    /// Server address, e.g. <http://127.0.0.1:8000> or <https://sync.example.org>.
    #[arg(
        long,
        env = "FSYNC_SERVER_URL",
        default_value = "http://127.0.0.1:8000",
        global = true
    )]
    server_url: String,
    /// Account name.
    #[arg(long, env = "FSYNC_USERNAME", global = true)]
    username: Option<String>,
    /// Password (prefer `FSYNC_PASSWORD` or the prompt: flags show up in `ps`).
    #[arg(long, env = "FSYNC_PASSWORD", hide_env_values = true, global = true)]
    password: Option<String>,
    /// PEM file of a private CA to trust for https.
    #[arg(long, env = "FSYNC_CA_CERT", global = true)]
    ca_cert: Option<PathBuf>,
    /// Where local state lives (default: <watch-dir>/.fsync).
    #[arg(long, env = "FSYNC_STATE_DIR", global = true)]
    state_dir: Option<PathBuf>,
    /// Name of this device in the device list.
    #[arg(long, env = "FSYNC_DEVICE_NAME", global = true)]
    device_name: Option<String>,
    /// Seconds between periodic rescans (and polls while the push socket is down).
    #[arg(long, env = "SYNC_INTERVAL", default_value_t = 30, global = true)]
    sync_interval: u64,
    /// Average chunk size in bytes (min = avg/4, max = avg*4) [default: 65536].
    #[arg(long, env = "CHUNK_SIZE", global = true)]
    chunk_size: Option<u32>,
    /// Sync once and exit.
    #[arg(long, global = true)]
    once: bool,
    /// Accept a watch dir whose `.fsync` marker is gone and start over with it (only
    /// when you know the folder is the right one: an unmounted disk also loses it).
    #[arg(long, global = true)]
    reset: bool,
    /// More log output.
    #[arg(short, long, global = true)]
    verbose: bool,
    #[command(subcommand)]
    command: Option<Cmd>,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Create an account (and its first encrypted namespace).
    Register {
        /// Contact email.
        #[arg(long)]
        email: String,
    },
    /// What is not in sync yet, and why.
    Status,
    /// A file's version history.
    Versions {
        /// Path relative to the watch dir.
        path: String,
    },
    /// Make an old version the current one again (as a new version).
    Restore {
        /// Path relative to the watch dir.
        path: String,
        /// Version number (see `versions`).
        #[arg(long)]
        version: u64,
    },
    /// List conflict copies in the folder.
    Conflicts,
    /// The account's devices (`devices revoke ID` ends one's access at once).
    Devices {
        #[command(subcommand)]
        action: Option<DevicesCmd>,
    },
}

#[derive(Debug, Subcommand)]
enum DevicesCmd {
    /// Revoke a device: its tokens stop working and its connections close.
    Revoke {
        /// The device's id as `devices` prints it (or a unique prefix of it).
        id: String,
    },
}

/// "just now", "5 min ago", "3 h ago", "12 days ago".
fn ago(then: i64, now: i64) -> String {
    let secs = (now - then).max(0);
    match secs {
        0..60 => "just now".to_owned(),
        60..3600 => format!("{} min ago", secs / 60),
        3600..86_400 => format!("{} h ago", secs / 3600),
        _ => format!("{} days ago", secs / 86_400),
    }
}

async fn devices(cli: &Cli, action: Option<&DevicesCmd>) -> anyhow::Result<()> {
    let (_, s, _) = start(cli).await?;
    let all = s.api.devices().await?;
    let Some(DevicesCmd::Revoke { id }) = action else {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
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

fn init_logging(verbose: bool) {
    let default = if verbose { "debug" } else { "info" };
    let filter = tracing_subscriber::EnvFilter::try_from_env("RUST_LOG").unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new(format!("fsync_client={default},warn"))
    });
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .init();
}

fn password(cli: &Cli) -> anyhow::Result<String> {
    if let Some(p) = &cli.password {
        return Ok(p.clone());
    }
    if !std::io::stdin().is_terminal() {
        bail!("no password: pass --password, set FSYNC_PASSWORD, or run in a terminal to be asked");
    }
    rpassword::prompt_password("Password: ").context("reading the password")
}

/// A new account's password: from the flag or environment as given, or asked twice at
/// the terminal (a typo here would lose the account: every key derives from it).
fn new_password(cli: &Cli) -> anyhow::Result<String> {
    if cli.password.is_some() || !std::io::stdin().is_terminal() {
        return password(cli);
    }
    let first = rpassword::prompt_password("New password: ").context("reading the password")?;
    fsync_client::session::check_new_password(&first, cli.username.as_deref().unwrap_or(""))?;
    let again =
        rpassword::prompt_password("The same password again: ").context("reading the password")?;
    if again != first {
        bail!("the two passwords differ; nothing was registered, try again");
    }
    Ok(first)
}

fn username(cli: &Cli) -> anyhow::Result<&str> {
    let name = cli
        .username
        .as_deref()
        .context("--username (or FSYNC_USERNAME) is required")?;
    if name.trim().is_empty() {
        bail!("--username (or FSYNC_USERNAME) is empty: give the account's name");
    }
    Ok(name)
}

fn watch_dir(cli: &Cli) -> anyhow::Result<PathBuf> {
    let dir = cli
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

fn api(cli: &Cli, state_dir: Option<&Path>) -> anyhow::Result<ApiClient> {
    let api = ApiClient::new(&cli.server_url, cli.ca_cert.as_deref())?;
    Ok(match state_dir {
        Some(d) => api.with_token_file(d.join("refresh_token")),
        None => api,
    })
}

async fn start(cli: &Cli) -> anyhow::Result<(PathBuf, Session, Engine)> {
    let root = watch_dir(cli)?;
    let marker = KnownRoots::from_env().prepare(&root, cli.reset)?;
    let state_dir = cli.state_dir.clone().unwrap_or_else(|| marker.clone());
    let state = session::open_state(&state_dir)?;
    let api = api(cli, Some(&state_dir))?;
    let name = cli
        .device_name
        .clone()
        .unwrap_or_else(|| format!("fsync-client on {}", root.display()));
    let session = session::login(
        &api,
        &state,
        username(cli)?,
        &password(cli)?,
        &name,
        session::chunk_config(cli.chunk_size)?,
    )
    .await
    .context("logging in")?;
    tracing::info!(device = %session.device, namespace = %session.ns, root = %root.display(), "logged in");
    let engine = Engine::new(root.clone(), marker, state, session.clone());
    Ok((root, session, engine))
}

/// Whether `e` is a failure to reach the server (or a server error) that waiting
/// may cure, rather than a refusal or a local problem.
fn server_unreachable(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<session::SessionError>()
            .is_some_and(|s| matches!(s, session::SessionError::Api(api) if api.is_retryable()))
            || c.downcast_ref::<fsync_client::ClientError>()
                .is_some_and(fsync_client::ClientError::is_retryable)
    })
}

/// [`start`] for the daemon: while the server cannot be reached it waits, with backoff
/// up to a minute, saying so once; `None` when stopped meanwhile (Ctrl-C, SIGTERM).
async fn start_waiting(cli: &Cli) -> anyhow::Result<Option<(PathBuf, Session, Engine)>> {
    const MAX_WAIT: Duration = Duration::from_secs(60);
    let stop = shutdown_signal();
    tokio::pin!(stop);
    let mut wait = Duration::from_secs(1);
    let mut waiting = false;
    loop {
        match start(cli).await {
            Ok(started) => {
                if waiting {
                    tracing::info!(server = %cli.server_url, "the server answers again; syncing");
                }
                return Ok(Some(started));
            }
            Err(e) if server_unreachable(&e) => {
                if waiting {
                    tracing::debug!(error = %e, "the server still cannot be reached");
                } else {
                    tracing::warn!(server = %cli.server_url, "the server cannot be reached ({e:#}); waiting for it, retrying with backoff up to {} s", MAX_WAIT.as_secs());
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

async fn shutdown_signal() {
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

async fn lookup_file(
    engine: &Engine,
    s: &Session,
    path: &str,
) -> anyhow::Result<fsync_common::FileId> {
    let p = SyncPath::new(path).with_context(|| format!("{path:?} is not a valid path"))?;
    if let Some(b) = engine.state().all()?.get(&p) {
        return Ok(b.file_id);
    }
    let files = s.api.list_all(s.ns, Some(p.as_str()), true).await?;
    files
        .into_iter()
        .find(|f| f.path == p)
        .map(|f| f.file_id)
        .with_context(|| format!("{path} is not known to the server"))
}

async fn status(cli: &Cli) -> anyhow::Result<()> {
    let (root, s, engine) = start(cli).await?;
    let base = engine.state().all()?;
    let scan = scan::scan(&root)?;
    let mut pending = 0;
    for (p, f) in &scan.files {
        match base.get(p) {
            None => println!("upload pending (new)       {p}"),
            Some(b) if !b.same_stat(f) => {
                println!("upload pending (changed)   {p}");
            }
            Some(_) => continue,
        }
        pending += 1;
    }
    for p in base.keys().filter(|p| !scan.files.contains_key(*p)) {
        println!("delete pending             {p}");
        pending += 1;
    }
    let changes = s.api.changes(s.ns, engine.state().cursor()?, 1000).await?;
    // The latest change of each file, minus what this folder already holds: the
    // device's own commits come back in the journal until the cursor passes them.
    let by_id: std::collections::HashMap<_, _> = base.values().map(|b| (b.file_id, b)).collect();
    let mut latest = std::collections::BTreeMap::new();
    for c in &changes.changes {
        latest.insert(c.file.file_id, &c.file);
    }
    let mut remote: Vec<_> = latest
        .into_values()
        .filter(|f| match by_id.get(&f.file_id) {
            Some(b) => f.deleted || b.vv != f.vv || b.path != f.path,
            None => !f.deleted,
        })
        .collect();
    remote.sort_by_key(|f| f.seq);
    for f in &remote {
        println!(
            "download pending           {}{}",
            f.path,
            if f.deleted { " (deleted there)" } else { "" }
        );
    }
    for (p, why) in &scan.skipped {
        println!("not synced                 {} — {why}", p.display());
    }
    let conflicts = scan
        .files
        .keys()
        .filter(|p| p.as_str().contains(".sync-conflict-"))
        .count();
    println!("conflict copies: {conflicts}");
    match engine.state().last_sync()? {
        Some(t) => println!("last sync: {t} (seconds since the epoch)"),
        None => println!("last sync: never"),
    }
    println!("pending: {} local, {} remote", pending, remote.len());
    Ok(())
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match &cli.command {
        Some(Cmd::Register { email }) => {
            let api = api(&cli, None)?;
            let user = username(&cli)?;
            let r = session::register(
                &api,
                user,
                email,
                &new_password(&cli)?,
                fsync_store::default_kdf_params(),
            )
            .await?;
            println!(
                "registered {user} (user {}, namespace {})",
                r.user_id, r.namespace_id
            );
        }
        Some(Cmd::Status) => status(&cli).await?,
        Some(Cmd::Versions { path }) => {
            let (_, s, engine) = start(&cli).await?;
            let id = lookup_file(&engine, &s, path).await?;
            for v in s.api.versions(id).await? {
                println!(
                    "v{:<4} {:>12} bytes  device {}  {}{}",
                    v.version,
                    v.size,
                    v.device.short(),
                    v.path,
                    if v.deleted { "  (deleted)" } else { "" }
                );
            }
        }
        Some(Cmd::Restore { path, version }) => {
            let (_, s, mut engine) = start(&cli).await?;
            let id = lookup_file(&engine, &s, path).await?;
            let r = s.api.restore(id, VersionNo(*version)).await?;
            println!(
                "restored {path} to version {version} as version {}",
                r.head.version
            );
            engine.sync_once().await?;
        }
        Some(Cmd::Devices { action }) => devices(&cli, action.as_ref()).await?,
        Some(Cmd::Conflicts) => {
            let root = watch_dir(&cli)?;
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
        }
        None if !cli.once => {
            let Some((root, s, engine)) = start_waiting(&cli).await? else {
                return Ok(());
            };
            let opts = DaemonOptions {
                interval: Duration::from_secs(cli.sync_interval.max(1)),
            };
            daemon::run(engine, s.api, &root, opts, shutdown_signal()).await;
        }
        None => {
            let (_, _, mut engine) = start(&cli).await?;
            let r = engine.sync_once().await?;
            println!(
                "synced: {} uploaded, {} downloaded, {} deleted here, {} deleted there, {} renamed, {} conflicts",
                r.uploaded, r.downloaded, r.deleted_local, r.deleted_remote, r.renamed, r.conflicts
            );
            for (p, why) in &r.deferred {
                println!("not synced yet: {p} — {why}");
            }
        }
    }
    Ok(())
}

#[tokio::main]
async fn main() {
    let cli = Cli::parse();
    init_logging(cli.verbose);
    fsync_client::progress::enable_if_terminal();
    if let Err(e) = run(cli).await {
        eprintln!("fsync-client: {e:#}");
        std::process::exit(1);
    }
}
