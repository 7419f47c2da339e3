//! `fsync-client`: keeps a folder in sync through an fsync server.

mod commands;

use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use fsync_client::daemon::{self, DaemonOptions};
use fsync_common::VersionNo;

use commands::{history, service, status, Opts};

/// fsync client: keeps a folder in sync through an fsync server, end-to-end encrypted.
///
/// Without a command it syncs the folder and keeps it in sync (`--once`: one round).
#[derive(Debug, Parser)]
#[command(name = "fsync-client", version)]
struct Cli {
    #[command(flatten)]
    account: AccountArgs,
    #[command(flatten)]
    folder: FolderArgs,
    #[command(flatten)]
    daemon: DaemonArgs,
    /// More log output.
    #[arg(short, long, global = true)]
    verbose: bool,
    #[command(subcommand)]
    command: Option<Cmd>,
}

/// How to reach the account (before or after the command name).
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Account")]
struct AccountArgs {
    /// Server address, e.g. <http://127.0.0.1:8000> or <https://sync.example.org>
    /// [default: <http://127.0.0.1:8000>].
    #[arg(long, env = "FSYNC_SERVER_URL", global = true)]
    server_url: Option<String>,
    /// Account name.
    #[arg(long, env = "FSYNC_USERNAME", global = true)]
    username: Option<String>,
    /// Password (prefer `FSYNC_PASSWORD` or the prompt: flags show up in `ps`).
    #[arg(long, env = "FSYNC_PASSWORD", hide_env_values = true, global = true)]
    password: Option<String>,
    /// PEM file of a private CA to trust for https (besides the system's roots).
    #[arg(long, env = "FSYNC_CA_CERT", global = true)]
    ca_cert: Option<PathBuf>,
    /// Trust only the server certificate with this SHA-256 fingerprint (AB:CD:…, as
    /// `fsync-server` prints it); for a self-signed certificate.
    #[arg(long, env = "FSYNC_SERVER_FINGERPRINT", global = true)]
    server_fingerprint: Option<fsync_client::api::Fingerprint>,
    /// Seconds to wait for an answer of a server that took the connection, before
    /// giving up on the request [default: 30].
    #[arg(long, env = "FSYNC_TIMEOUT", global = true)]
    timeout: Option<u64>,
}

/// Which synced folder (before or after the command name).
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Folder")]
struct FolderArgs {
    /// The folder to keep in sync.
    #[arg(long, env = "FSYNC_WATCH_DIR", global = true)]
    watch_dir: Option<PathBuf>,
    /// Where local state lives (default: <watch-dir>/.fsync).
    #[arg(long, env = "FSYNC_STATE_DIR", global = true)]
    state_dir: Option<PathBuf>,
    /// Name of this device in the device list (default: "fsync-client on <watch-dir>").
    #[arg(long, env = "FSYNC_DEVICE_NAME", global = true)]
    device_name: Option<String>,
}

/// Syncing (`--once` and `--sync-interval`: without a command only).
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Syncing")]
struct DaemonArgs {
    /// Seconds between periodic rescans (and polls while the push socket is down).
    #[arg(long, env = "SYNC_INTERVAL", default_value_t = 30)]
    sync_interval: u64,
    /// Average chunk size in bytes (min = avg/4, max = avg*4) [default: 65536].
    #[arg(long, env = "CHUNK_SIZE", global = true)]
    chunk_size: Option<u32>,
    /// Sync once and exit.
    #[arg(long)]
    once: bool,
    /// Accept a watch dir whose `.fsync` marker is gone and start over with it (only
    /// when you know the folder is the right one: an unmounted disk also loses it).
    #[arg(long, global = true)]
    reset: bool,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Create an account (and its first encrypted namespace).
    Register {
        /// Contact email (optional).
        #[arg(long)]
        email: Option<String>,
    },
    /// What is not in sync yet, and why (works offline: local changes are known here).
    Status {
        /// Print it as JSON, for scripts.
        #[arg(long)]
        json: bool,
    },
    /// A file's version history: dates, devices, renames.
    Versions {
        /// The file: relative to the current directory inside the folder, else to the
        /// folder; or absolute.
        path: String,
    },
    /// Bring back an old version of a file (as a new version), a deleted file, or the
    /// deleted files of a folder.
    Restore {
        /// File or folder: relative to the current directory inside the folder, else to
        /// the folder; or absolute.
        path: String,
        /// Version to bring back, as `versions` prints it (`v2` or `2`); a deleted file
        /// or folder comes back as it last was.
        #[arg(long, value_parser = parse_version)]
        version: Option<VersionNo>,
    },
    /// Deleted files that can be restored (`restore PATH` brings one back).
    Trash,
    /// List conflict copies in the folder.
    Conflicts,
    /// The account's devices (`devices revoke ID` ends one's access at once).
    Devices {
        #[command(subcommand)]
        action: Option<DevicesCmd>,
    },
    /// Run the daemon for this folder as a systemd user service.
    Service {
        #[command(subcommand)]
        action: ServiceCmd,
    },
}

#[derive(Debug, Subcommand)]
enum ServiceCmd {
    /// Write a systemd user unit that runs the daemon for this folder (with these
    /// flags), and enable and start it. The password goes into a file beside it, mode
    /// 0600: the daemon needs it at every start.
    Install {
        /// Only write the unit and the password file (start it yourself).
        #[arg(long)]
        no_enable: bool,
    },
    /// Stop and disable this folder's unit, and remove it and its password file.
    Uninstall,
}

#[derive(Debug, Subcommand)]
enum DevicesCmd {
    /// Revoke a device: its tokens stop working and its connections close.
    Revoke {
        /// The device's id as `devices` prints it (or a unique prefix of it).
        id: String,
    },
}

/// `v2` or `2`, as `versions` prints it.
fn parse_version(s: &str) -> Result<VersionNo, String> {
    let digits = s.trim().trim_start_matches(['v', 'V']);
    match digits.parse::<u64>() {
        Ok(n) if n > 0 => Ok(VersionNo(n)),
        _ => Err(format!(
            "{s:?} is not a version: give it as `versions` prints it, e.g. v2"
        )),
    }
}

/// Logging to stderr: the daemon and `--once` say what they do (`info`); a subcommand
/// answers on stdout, and logs only warnings before it unless `--verbose`.
fn init_logging(verbose: bool, subcommand: bool) {
    let default = match (verbose, subcommand) {
        (true, _) => "debug",
        (false, true) => "warn",
        (false, false) => "info",
    };
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

async fn run(cli: Cli) -> anyhow::Result<()> {
    let opts = Opts {
        account: cli.account.clone(),
        folder: cli.folder.clone(),
        chunk_size: cli.daemon.chunk_size,
        reset: cli.daemon.reset,
    };
    match &cli.command {
        Some(Cmd::Register { email }) => commands::register(&opts, email.as_deref()).await?,
        Some(Cmd::Status { json }) => status::status(&opts, *json).await?,
        Some(Cmd::Versions { path }) => history::versions(&opts, path).await?,
        Some(Cmd::Restore { path, version }) => history::restore(&opts, path, *version).await?,
        Some(Cmd::Trash) => history::trash(&opts).await?,
        Some(Cmd::Devices { action }) => {
            let revoke = action.as_ref().map(|DevicesCmd::Revoke { id }| id.as_str());
            commands::devices(&opts, revoke).await?;
        }
        Some(Cmd::Conflicts) => commands::conflicts(&opts)?,
        Some(Cmd::Service { action }) => match action {
            ServiceCmd::Install { no_enable } => {
                service::install(&opts, *no_enable, cli.daemon.sync_interval).await?;
            }
            ServiceCmd::Uninstall => service::uninstall(&opts)?,
        },
        None if !cli.daemon.once => {
            let Some(started) = commands::start_waiting(&opts).await? else {
                return Ok(());
            };
            let d = DaemonOptions {
                interval: Duration::from_secs(cli.daemon.sync_interval.max(1)),
            };
            let api = started.session.api.clone();
            let root = started.root.clone();
            daemon::run(started.engine, api, &root, d, commands::shutdown_signal()).await;
        }
        None => {
            let mut started = commands::start(&opts, true).await?;
            let r = started.engine.sync_once().await?;
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
    init_logging(cli.verbose, cli.command.is_some());
    fsync_client::progress::enable_if_terminal();
    if let Err(e) = run(cli).await {
        eprintln!("fsync-client: {}", describe(&e));
        std::process::exit(1);
    }
}

/// An error with its causes, each said once: many errors already name their cause in
/// their own text, and `{:#}` would repeat it ("… (os error 2): … (os error 2)").
pub fn describe(e: &anyhow::Error) -> String {
    fsync_common::one_line(e.as_ref())
}
