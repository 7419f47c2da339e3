//! `fsync-gc`: garbage collection of the chunk store, safe while servers serve.
//!
//! ```text
//! fsync-gc run [--dry-run] [--grace 24h] [--keep-versions N] [--keep-days D] [--namespace ID] [--json]
//! fsync-gc verify [--namespace ID] [--json]      # exit 1 when anything is damaged
//! fsync-gc stats [--grace 24h] [--namespace ID] [--json]
//! ```
//!
//! It reads the server's storage settings: `DATABASE_URL` (or `POSTGRES_URL`),
//! `FILES_DIRECTORY`, `FSYNC_DATA_DIR`, from flags, the environment or `.env`.

use std::io::IsTerminal as _;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};
use fsync_common::NamespaceId;
use fsync_server::{
    Collector, Damage, GcError, NoProgress, Progress, Retention, RunOptions, RunReport, Stats,
    StorageConfig, VerifyReport,
};

/// Exit status when `verify` finds damage.
const EXIT_DAMAGE: u8 = 1;
/// Exit status on errors (including another collection running).
const EXIT_ERROR: u8 = 2;

/// Garbage collection, verification and statistics of an fsync server's stores: run it
/// beside the server, on the same database and blob store.
#[derive(Debug, Parser)]
#[command(name = "fsync-gc", version)]
struct Cli {
    #[command(flatten)]
    storage: StorageConfig,
    /// Print one JSON object on stdout instead of text.
    #[arg(long, global = true)]
    json: bool,
    /// Log level: off, error, warn, info, debug, trace, or a tracing filter whose every
    /// directive names one. Anything else is refused.
    #[arg(long, env = "LOG_LEVEL", default_value = "warn", global = true, value_parser = fsync_server::parse_log_level)]
    log_level: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Prune versions by retention, delete unreferenced chunks and orphan blobs.
    Run(RunArgs),
    /// Check that every recorded chunk's blob exists with its recorded size and that
    /// every referenced chunk is recorded; list damage and exit 1 if any.
    Verify(VerifyArgs),
    /// Chunks, stored bytes, referenced logical bytes, dedup ratio, reclaimable bytes.
    Stats(StatsArgs),
}

#[derive(Debug, Args)]
struct RunArgs {
    /// Report what would be removed; remove nothing.
    #[arg(long)]
    dry_run: bool,
    /// Keep chunks uploaded or touched, and orphan blobs written, within this long
    /// (`90s`, `30m`, `24h`, `7d`).
    #[arg(long, default_value = "24h", value_parser = parse_duration)]
    grace: Duration,
    /// Keep the N newest versions of every file (the head counts).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    keep_versions: Option<u64>,
    /// Keep versions replaced (edited over or deleted) within D days; tombstones older
    /// than D days go with all their versions.
    #[arg(long)]
    keep_days: Option<u64>,
    /// Only this namespace (hex id).
    #[arg(long)]
    namespace: Option<NamespaceId>,
}

#[derive(Debug, Args)]
struct VerifyArgs {
    /// Only this namespace (hex id).
    #[arg(long)]
    namespace: Option<NamespaceId>,
    /// First rebuild the chunk index from the packs alone: record every blob of every
    /// intact pack that has no row, and point into it the rows that name a pack with
    /// no row (after a database restored from an older backup). Deletes nothing.
    #[arg(long)]
    rebuild_index: bool,
}

#[derive(Debug, Args)]
struct StatsArgs {
    /// Unreferenced chunks untouched for this long count as reclaimable.
    #[arg(long, default_value = "24h", value_parser = parse_duration)]
    grace: Duration,
    /// Only this namespace (hex id).
    #[arg(long)]
    namespace: Option<NamespaceId>,
}

/// Parses `90s`, `30m`, `24h`, `7d`, `2w` (a bare number is seconds).
fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a duration like 90s, 30m, 24h or 7d"))?;
    let secs = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        "w" => 7 * 86_400,
        _ => {
            return Err(format!(
                "unknown unit {unit:?} in {s:?}: use s, m, h, d or w"
            ))
        }
    };
    n.checked_mul(secs)
        .map(Duration::from_secs)
        .ok_or_else(|| format!("{s:?} is too long"))
}

/// A progress bar on stderr.
struct Bar(indicatif::ProgressBar);

impl Bar {
    fn new() -> Self {
        let bar = indicatif::ProgressBar::new_spinner();
        bar.enable_steady_tick(Duration::from_millis(120));
        Self(bar)
    }
}

impl Progress for Bar {
    fn stage(&self, name: &str, total: Option<u64>) {
        let template = if total.is_some() {
            "{spinner} {msg} [{bar:30}] {pos}/{len} ({elapsed})"
        } else {
            "{spinner} {msg}: {human_pos} ({elapsed})"
        };
        if let Ok(style) = indicatif::ProgressStyle::with_template(template) {
            self.0.set_style(style.progress_chars("=> "));
        }
        self.0.reset();
        if let Some(t) = total {
            self.0.set_length(t);
        } else {
            self.0.unset_length();
        }
        self.0.set_message(name.to_owned());
    }

    fn advance(&self, n: u64) {
        self.0.inc(n);
    }

    fn finish(&self) {
        self.0.finish_and_clear();
    }
}

fn bytes(n: u64) -> String {
    fsync_common::size::format(n)
}

fn print_run(r: &RunReport) {
    let verb = if r.dry_run { "would remove" } else { "removed" };
    println!(
        "fsync-gc run{}: {verb} {} versions ({} files whole), {} chunks ({}), {} manifest pages, {} orphan blobs ({}), {} partial uploads ({}); {} failed blob deletions; {:.1} s",
        if r.dry_run { " (dry run)" } else { "" },
        r.versions_pruned,
        r.files_removed,
        r.chunks_deleted,
        bytes(r.bytes_reclaimed),
        r.pages_deleted,
        r.orphan_blobs_deleted,
        bytes(r.orphan_bytes_reclaimed),
        r.temp_files_deleted,
        bytes(r.temp_bytes_reclaimed),
        r.blob_delete_failures,
        r.elapsed_ms as f64 / 1000.0,
    );
    let verb = if r.dry_run { "would" } else { "did" };
    println!(
        "packs: {verb} delete {} empty ({}) and {} orphan, repack {} ({} copied in {:.1} s), pack {} loose blobs",
        r.packs_deleted,
        bytes(r.pack_bytes_reclaimed),
        r.orphan_packs_deleted,
        r.packs_repacked,
        bytes(r.repacked_bytes),
        r.repack_ms as f64 / 1000.0,
        r.loose_blobs_packed,
    );
}

fn print_verify(r: &VerifyReport) {
    for d in &r.damage {
        match d {
            Damage::MissingPage { namespace, page } => {
                println!("NO PAGE     {namespace} {page}: a version names it, it is not stored");
            }
            Damage::Unrecorded { namespace, chunk } => {
                println!("UNRECORDED  {namespace} {chunk}: referenced by a version, no chunk row");
            }
            Damage::MissingBlob {
                namespace,
                chunk,
                referenced,
            } => println!(
                "MISSING     {namespace} {chunk}: recorded, no blob{}",
                if *referenced {
                    " (referenced by a version)"
                } else {
                    ""
                }
            ),
            Damage::SizeMismatch {
                namespace,
                chunk,
                recorded,
                stored,
            } => println!(
                "SIZE        {namespace} {chunk}: recorded {recorded} bytes, stored {stored}"
            ),
            Damage::MissingPack {
                namespace,
                pack,
                chunks,
            } => println!("MISSING     {namespace} pack {pack}: {chunks} chunk rows point into it, no file"),
            Damage::CorruptPack {
                namespace,
                pack,
                reason,
            } => println!("CORRUPT     {namespace} pack {pack}: {reason}"),
            Damage::NotInPack {
                namespace,
                chunk,
                pack,
                ..
            } => println!("NOT IN PACK {namespace} {chunk}: its row names pack {pack}, whose trailer does not list it there"),
            other => println!("DAMAGE      {other:?}"),
        }
    }
    println!(
        "fsync-gc verify: {} chunks, {} packs and {} loose blobs checked, {} damaged{}, {} orphan blobs, {} orphan packs",
        r.chunks_checked,
        r.packs_checked,
        r.blobs_checked,
        r.damage_count,
        if r.damage_count > r.damage.len() as u64 {
            format!(" ({} listed)", r.damage.len())
        } else {
            String::new()
        },
        r.orphan_blobs,
        r.orphan_packs,
    );
}

fn print_stats(s: &Stats) {
    println!("files                   {}", s.files);
    println!("versions                {}", s.versions);
    println!(
        "chunks                  {} ({} stored)",
        s.chunks,
        bytes(s.stored_bytes)
    );
    println!(
        "referenced chunks       {} ({} stored)",
        s.referenced_chunks,
        bytes(s.referenced_stored_bytes)
    );
    println!(
        "referenced logical      {} (heads: {})",
        bytes(s.referenced_logical_bytes),
        bytes(s.head_logical_bytes)
    );
    println!("dedup ratio             {:.2}", s.dedup_ratio);
    println!(
        "unreferenced chunks     {} ({})",
        s.unreferenced_chunks,
        bytes(s.unreferenced_bytes)
    );
    println!(
        "reclaimable now         {} chunks ({})",
        s.reclaimable_chunks,
        bytes(s.reclaimable_bytes)
    );
    println!(
        "packs                   {} ({}), {:.0} % live ({} in no chunk row's use)",
        s.packs,
        bytes(s.pack_bytes),
        s.pack_fill * 100.0,
        bytes(s.pack_bytes.saturating_sub(s.pack_live_bytes))
    );
    println!(
        "loose blobs             {} (an older store's; `run` packs them)",
        s.loose_chunks
    );
    if !s.users.is_empty() {
        println!("usage per account:");
        for u in &s.users {
            println!(
                "  {:<20} {:>10} stored, quota {:>10}, {} files ({}){}",
                u.username,
                bytes(u.stored_bytes),
                u.quota_bytes.map_or_else(|| "none".to_owned(), bytes),
                u.files,
                bytes(u.file_bytes),
                if u.disabled { ", disabled" } else { "" }
            );
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let collector = Collector::open_existing(&cli.storage)
        .await
        .context("opening the server's stores")?;
    let bar;
    let progress: &dyn Progress = if std::io::stderr().is_terminal() {
        bar = Bar::new();
        &bar
    } else {
        &NoProgress
    };
    match cli.command {
        Command::Run(a) => {
            let opts = RunOptions {
                dry_run: a.dry_run,
                grace: a.grace,
                retention: Retention {
                    keep_versions: a.keep_versions,
                    keep_days: a.keep_days,
                },
                namespace: a.namespace,
                ..RunOptions::default()
            };
            let report = collector.run(&opts, progress).await?;
            if cli.json {
                println!("{}", serde_json::to_string(&report)?);
            } else {
                print_run(&report);
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Verify(a) => {
            if a.rebuild_index {
                let r = collector
                    .rebuild_index(a.namespace, fsync_server::GC_BATCH, progress)
                    .await?;
                if cli.json {
                    println!("{}", serde_json::to_string(&r)?);
                } else {
                    for (ns, pack, why) in &r.damaged_packs {
                        println!("UNREADABLE  {ns} pack {pack}: {why} (not adopted)");
                    }
                    println!(
                        "fsync-gc verify --rebuild-index: {} packs read, {} chunk rows recorded, {} pointed at the pack holding their blob",
                        r.packs_read, r.chunks_recorded, r.chunks_moved
                    );
                }
            }
            let report = collector
                .verify(a.namespace, fsync_server::GC_BATCH, progress)
                .await?;
            if cli.json {
                println!("{}", serde_json::to_string(&report)?);
            } else {
                print_verify(&report);
            }
            Ok(if report.is_clean() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(EXIT_DAMAGE)
            })
        }
        Command::Stats(a) => {
            let stats = collector.stats(a.namespace, a.grace, None).await?;
            if cli.json {
                println!("{}", serde_json::to_string(&stats)?);
            } else {
                print_stats(&stats);
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    if let Err(e) = fsync_server::load_dotenv() {
        eprintln!("fsync-gc: reading .env in the working directory: {e}");
        return ExitCode::from(EXIT_ERROR);
    }
    let cli = Cli::parse();
    let filter = match tracing_subscriber::EnvFilter::try_new(&cli.log_level) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("fsync-gc: --log-level {:?}: {e}", cli.log_level);
            return ExitCode::from(EXIT_ERROR);
        }
    };
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false)
        .init();
    match run(cli).await {
        Ok(code) => code,
        Err(e) => {
            if let Some(GcError::Busy(_)) = e.downcast_ref::<GcError>() {
                eprintln!("fsync-gc: {e}");
            } else {
                eprintln!("fsync-gc: {}", fsync_common::one_line(e.as_ref()));
            }
            ExitCode::from(EXIT_ERROR)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(parse_duration("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("90"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("30m"), Ok(Duration::from_secs(1800)));
        assert_eq!(parse_duration("24h"), Ok(Duration::from_secs(86_400)));
        assert_eq!(parse_duration("7d"), Ok(Duration::from_secs(604_800)));
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        assert!(parse_duration("h").is_err());
        assert!(parse_duration("3y").is_err());
        assert!(parse_duration("-1h").is_err());
        assert!(parse_duration("99999999999999999999w").is_err());
    }

    #[test]
    fn cli_is_well_formed() {
        use clap::CommandFactory as _;
        Cli::command().debug_assert();
    }

    #[test]
    fn keep_versions_must_keep_the_head() {
        assert!(Cli::try_parse_from(["fsync-gc", "run", "--keep-versions", "0"]).is_err());
        let cli = Cli::try_parse_from([
            "fsync-gc",
            "run",
            "--dry-run",
            "--grace",
            "1h",
            "--keep-versions",
            "3",
            "--keep-days",
            "30",
            "--json",
        ])
        .unwrap();
        assert!(cli.json);
        let Command::Run(a) = cli.command else {
            panic!("not run")
        };
        assert!(a.dry_run);
        assert_eq!(a.grace, Duration::from_secs(3600));
        assert_eq!((a.keep_versions, a.keep_days), (Some(3), Some(30)));
    }
}
