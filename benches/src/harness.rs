//! What the end-to-end scenarios share: a real fsync server on loopback (in-process,
//! SQLite or a fresh PostgreSQL database), accounts registered the way a client does
//! it, and client engines on temp folders.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, ensure, Context as _};
use fsync_client::api::{ApiClient, ApiStats};
use fsync_client::engine::{Engine, RoundReport};
use fsync_client::session;
pub(crate) use fsync_testkit::client::Account;
use fsync_testkit::postgres::ScratchDatabase;
use fsync_testkit::server::{lift_rate_limits, Database, TestServer};

/// Secret of the benchmark servers (tokens only live as long as the run).
const SECRET: &str = "fsync-bench-server-secret-0123456789abcdef";
/// Environment variable with a PostgreSQL URL whose role may create databases.
pub(crate) const DATABASE_URL_ENV: &str = "FSYNC_BENCH_DATABASE_URL";

/// The server's metadata backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Db {
    /// An SQLite file in the server's data directory.
    Sqlite,
    /// A fresh database on the PostgreSQL of `FSYNC_BENCH_DATABASE_URL` (else the one
    /// `scripts/postgres.sh` starts).
    Postgres,
}

impl Db {
    /// The value of the `db` label.
    pub(crate) fn label(self) -> &'static str {
        match self {
            Self::Sqlite => "sqlite",
            Self::Postgres => "postgres",
        }
    }
}

/// The `--db` choices, deduplicated, `sqlite` when none was given.
pub(crate) fn dbs(chosen: &[Db]) -> Vec<Db> {
    let mut out: Vec<Db> = Vec::new();
    for &d in chosen {
        if !out.contains(&d) {
            out.push(d);
        }
    }
    if out.is_empty() {
        out.push(Db::Sqlite);
    }
    out
}

/// An fsync server running in this process on `127.0.0.1:<ephemeral>` (the kit's
/// [`TestServer`]: `url`, `database_url`, … through `Deref`), with its data directory.
pub(crate) struct Server {
    inner: TestServer,
    /// The server's data directory (database file, blobs).
    dir: tempfile::TempDir,
    /// Its pack store, for the count of fsyncs or PUTs its puts made.
    packs: std::sync::Arc<dyn fsync_store::PackStore>,
}

/// Where the benchmark servers keep their packs (`--blob-store`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub(crate) enum BlobBackend {
    /// The local disk (`FILES_DIRECTORY`).
    #[default]
    Local,
    /// An S3 server: `FSYNC_TEST_S3_ENDPOINT`, else `scripts/s3.sh` (SeaweedFS).
    S3,
}

impl BlobBackend {
    pub(crate) fn label(self) -> &'static str {
        match self {
            Self::Local => "local",
            Self::S3 => "s3",
        }
    }
}

/// The blob store of this run's servers, chosen once by the command line.
static BLOB_BACKEND: std::sync::OnceLock<BlobBackend> = std::sync::OnceLock::new();

/// Sets the blob store of every server this run starts (once, before the first).
pub(crate) fn use_blob_backend(b: BlobBackend) {
    let _ = BLOB_BACKEND.set(b);
}

/// The flags that put a server's packs on S3, in a prefix of the test bucket of its own.
fn s3_flags() -> anyhow::Result<Vec<String>> {
    let endpoint = match std::env::var(fsync_testkit::s3::TEST_S3_ENDPOINT) {
        Ok(e) if !e.trim().is_empty() => e.trim().to_owned(),
        _ => script_output("s3.sh", "http")?,
    };
    Ok(fsync_testkit::s3::scratch_flags(&endpoint, "bench"))
}

impl std::ops::Deref for Server {
    type Target = TestServer;

    fn deref(&self) -> &TestServer {
        &self.inner
    }
}

impl Server {
    /// Starts a server with its data under `work`. The per-user rate limits are lifted
    /// (see BENCHMARKS.md: the default of 6,000 API requests per minute would throttle
    /// the larger runs and measure the limit, not the server).
    pub(crate) async fn start(db: Db, work: &Path) -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("server-")
            .tempdir_in(work)
            .context("creating the server's data dir")?;
        let database = match db {
            Db::Sqlite => Database::Sqlite,
            Db::Postgres => Database::Scratch(
                ScratchDatabase::create_with_prefix(&postgres_base_url()?, "fsync_bench_")
                    .await
                    .with_context(|| format!("a benchmark database ({DATABASE_URL_ENV})"))?,
            ),
        };
        let flags = match BLOB_BACKEND.get().copied().unwrap_or_default() {
            BlobBackend::Local => Vec::new(),
            BlobBackend::S3 => s3_flags()?,
        };
        let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
        let mut packs = None;
        let inner = TestServer::start(dir.path(), SECRET, database, &flags, |s| {
            lift_rate_limits(s);
            packs = Some(s.packs.clone());
        })
        .await
        .with_context(|| format!("starting a server on {}", db.label()))?;
        let packs = packs.expect("the state was built");
        Ok(Self { inner, dir, packs })
    }

    /// The server's pack store (the same one, for a collector beside it).
    pub(crate) fn packs(&self) -> std::sync::Arc<dyn fsync_store::PackStore> {
        self.packs.clone()
    }

    /// The fsyncs (local disk) or PUTs (S3) the server's pack store made so far.
    pub(crate) fn durable_writes(&self) -> u64 {
        self.packs.durable_writes()
    }

    /// The server's blob directory (the default `FILES_DIRECTORY`, under its data dir).
    pub(crate) fn blob_dir(&self) -> PathBuf {
        fsync_server::StorageConfig::in_data_dir(self.dir.path().to_owned()).files_directory()
    }

    /// A new API client of this server (its own connection pool and counters).
    pub(crate) fn client(&self) -> anyhow::Result<ApiClient> {
        Ok(ApiClient::new(&self.url, None)?)
    }

    /// Stops the server (open connections, such as push sockets, are cut after a
    /// moment) and drops its PostgreSQL database.
    pub(crate) async fn stop(self) {
        let Self { inner, dir, .. } = self;
        if let Err(e) = inner.stop().await {
            eprintln!("note: could not drop the benchmark database: {e:#}");
        }
        drop(dir);
    }
}

/// The PostgreSQL URL: `FSYNC_BENCH_DATABASE_URL`, else what `scripts/postgres.sh`
/// prints (it starts the machine's PostgreSQL, installing it if needed).
fn postgres_base_url() -> anyhow::Result<String> {
    if let Ok(url) = std::env::var(DATABASE_URL_ENV) {
        if !url.trim().is_empty() {
            return Ok(url.trim().to_owned());
        }
    }
    script_output("postgres.sh", "postgres").with_context(|| format!("or set {DATABASE_URL_ENV}"))
}

/// The last line of `scripts/NAME`'s output, which must start with `starts`.
fn script_output(name: &str, starts: &str) -> anyhow::Result<String> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../scripts")
        .join(name);
    let out = Command::new("bash")
        .arg(&script)
        .output()
        .with_context(|| format!("running {}", script.display()))?;
    ensure!(
        out.status.success(),
        "{} failed ({}): {}",
        script.display(),
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    match stdout.lines().last() {
        Some(line) if line.starts_with(starts) => Ok(line.trim().to_owned()),
        _ => bail!("{} printed no URL", script.display()),
    }
}

/// An account, registered with [`fsync_store::test_kdf_params`] (cheap Argon2, so
/// logins do not dominate the figures) the way `fsync-client register` does.
pub(crate) async fn register(server: &Server, username: &str) -> anyhow::Result<Account> {
    let password = "bench: correct horse battery staple".to_owned();
    let email = format!("{username}@bench.invalid");
    Account::register(&server.url, username, &email, &password).await
}

/// A client device: a sync root (with its `.fsync` marker and state) and its engine,
/// logged in with its own API client, whose counters measure its traffic.
pub(crate) struct Device {
    /// The synced folder.
    pub root: PathBuf,
    /// The engine.
    pub engine: Engine,
    /// The engine's API client (shares the engine's counters).
    pub api: ApiClient,
}

impl Device {
    /// Creates `<dir>/<name>` as a sync root and logs in as `account`.
    pub(crate) async fn new(
        server_url: &str,
        account: &Account,
        dir: &Path,
        name: &str,
    ) -> anyhow::Result<Self> {
        Self::with_chunks(server_url, account, dir, name, session::chunk_config(None)?).await
    }

    /// [`Device::new`] with the engine's chunker set to `chunks` (as `CHUNK_SIZE` does
    /// through [`session::chunk_config`]).
    pub(crate) async fn with_chunks(
        server_url: &str,
        account: &Account,
        dir: &Path,
        name: &str,
        chunks: fsync_chunker::ChunkerConfig,
    ) -> anyhow::Result<Self> {
        let root = dir.join(name);
        let dev = account
            .login_device(server_url, &root, name, chunks, false)
            .await?;
        Ok(Self {
            engine: dev.engine,
            root,
            api: dev.api,
        })
    }

    /// One sync round, timed, with the traffic it caused.
    pub(crate) async fn round(&mut self) -> anyhow::Result<Round> {
        let before = self.api.stats();
        let started = Instant::now();
        let report = self.engine.sync_once().await?;
        let secs = started.elapsed().as_secs_f64();
        let after = self.api.stats();
        ensure!(
            report.deferred.is_empty(),
            "the round deferred {} file(s), e.g. {:?}",
            report.deferred.len(),
            report.deferred.first()
        );
        Ok(Round {
            secs,
            traffic: diff(before, after),
            report,
        })
    }
}

/// One timed sync round.
#[derive(Debug, Clone)]
pub(crate) struct Round {
    /// Wall time of `sync_once`.
    pub secs: f64,
    /// Requests and body bytes of the round.
    pub traffic: ApiStats,
    /// What it did.
    pub report: RoundReport,
}

/// Counters of `after` minus those of `before`.
pub(crate) fn diff(before: ApiStats, after: ApiStats) -> ApiStats {
    ApiStats {
        requests: after.requests - before.requests,
        bytes_up: after.bytes_up - before.bytes_up,
        bytes_down: after.bytes_down - before.bytes_down,
    }
}

/// Environment variable with a tracing filter for the server's and clients' logs
/// (on stderr), e.g. `fsync_client=debug`; unset: no logs.
pub(crate) const LOG_ENV: &str = "FSYNC_BENCH_LOG";

/// Runs `measure` on a fresh server on each of `dbs` (data under `work`), one after
/// the other on one runtime, stopping each server (and dropping its PostgreSQL
/// database) whether or not its measurement succeeded; the outcomes, in order.
pub(crate) fn on_each_db<O>(
    dbs: &[Db],
    work: &Path,
    mut measure: impl AsyncFnMut(&Server, Db) -> anyhow::Result<O>,
) -> anyhow::Result<Vec<(Db, O)>> {
    let rt = runtime()?;
    let mut out = Vec::with_capacity(dbs.len());
    for &db in dbs {
        let outcome = rt.block_on(async {
            let server = Server::start(db, work).await?;
            let r = measure(&server, db).await;
            server.stop().await;
            r
        })?;
        out.push((db, outcome));
    }
    Ok(out)
}

/// A multi-threaded tokio runtime for a scenario (and the logger, when asked for).
pub(crate) fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    if let Ok(filter) = std::env::var(LOG_ENV) {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .with_timer(tracing_subscriber::fmt::time::uptime())
            .with_writer(std::io::stderr)
            .try_init();
    }
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("bench-rt")
        .build()
        .context("starting the tokio runtime")
}

/// Unique account names within one server.
pub(crate) fn username(prefix: &str) -> String {
    format!("{prefix}_{}", hex::encode(rand::random::<[u8; 4]>()))
}

/// The scenario's scratch directory: a fresh temp dir named `prefix…` under
/// `work_dir` (created if missing) or the system temp dir; removed when dropped.
pub(crate) fn work_dir(work_dir: Option<&Path>, prefix: &str) -> anyhow::Result<tempfile::TempDir> {
    let base = match work_dir {
        Some(d) => {
            std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
            d.to_owned()
        }
        None => std::env::temp_dir(),
    };
    Ok(tempfile::Builder::new().prefix(prefix).tempdir_in(&base)?)
}
