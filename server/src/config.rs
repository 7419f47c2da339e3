//! Server configuration: flags, environment variables (and `.env`), validated once.

use std::path::{Path, PathBuf};

use clap::builder::TypedValueParser as _;
use clap::{Parser, ValueEnum};

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// `fsync-server` options. Every flag has an environment variable; a `.env` file in the
/// working directory is read first.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "fsync-server",
    version,
    about = "fsync server: encrypted, versioned file sync"
)]
pub struct Config {
    /// Where metadata and blobs are kept.
    #[command(flatten)]
    pub storage: StorageConfig,
    /// Without a command the server serves; `admin` runs the operator's tools on the
    /// same configuration instead.
    #[command(subcommand)]
    pub command: Option<ServerCommand>,
    /// Secret that signs access tokens (at least 32 characters). Default: generated
    /// once and kept in `<data-dir>/secret.key` (mode 0600).
    #[arg(long, env = "SECRET_KEY", hide_env_values = true)]
    pub secret_key: Option<String>,
    /// Address to listen on.
    #[arg(long, env = "SERVER_HOST", default_value = "127.0.0.1")]
    pub host: String,
    /// Port to listen on.
    #[arg(long, env = "SERVER_PORT", default_value_t = 8000)]
    pub port: u16,
    /// Log level: off, error, warn, info, debug, trace, or a tracing filter whose every
    /// directive names one (`info,fsync_server=debug`). Anything else is refused.
    #[arg(long, env = "LOG_LEVEL", default_value = "info", value_parser = parse_log_level)]
    pub log_level: String,
    /// Log format.
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: LogFormat,
    /// PEM certificate chain: serve HTTPS (needs `--tls-key`).
    #[arg(long, env = "TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of `--tls-cert`.
    #[arg(long, env = "TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Serve HTTPS with a self-signed certificate made on first start and kept in
    /// `<data-dir>/tls/`; its SHA-256 fingerprint is printed at start and shown by
    /// `/health`, for clients' `--server-fingerprint`.
    #[arg(long, env = "TLS_SELF_SIGNED", conflicts_with = "tls_cert")]
    pub tls_self_signed: bool,
    /// More names (DNS or IP) for the self-signed certificate, besides localhost, the
    /// host name and the loopback addresses (comma-separated).
    #[arg(
        long,
        env = "TLS_NAMES",
        value_delimiter = ',',
        requires = "tls_self_signed"
    )]
    pub tls_names: Vec<String>,
    /// Push sockets (WebSockets) one device may hold open at once; more are closed
    /// with code 1008 and the reason.
    #[arg(long, env = "MAX_WEBSOCKETS_PER_DEVICE", default_value_t = crate::state::DEFAULT_WS_PER_DEVICE, value_parser = clap::value_parser!(u16).range(1..).map(usize::from))]
    pub max_websockets_per_device: usize,
    /// Push sockets one account may hold open at once over all its devices.
    #[arg(long, env = "MAX_WEBSOCKETS_PER_USER", default_value_t = crate::state::DEFAULT_WS_PER_USER, value_parser = clap::value_parser!(u16).range(1..).map(usize::from))]
    pub max_websockets_per_user: usize,
    /// HTTP connections one client address may hold open at once (0: no cap; behind a
    /// reverse proxy every client has the proxy's address).
    #[arg(long, env = "MAX_CONNECTIONS_PER_IP", default_value_t = crate::state::DEFAULT_CONNECTIONS_PER_IP)]
    pub max_connections_per_ip: usize,
    /// Seconds a request's head may take to arrive (and an idle connection may wait for
    /// its next request) before the connection is closed.
    #[arg(long, env = "REQUEST_HEADER_TIMEOUT_SECS", default_value_t = crate::state::DEFAULT_HEADER_TIMEOUT_SECS, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub request_header_timeout_secs: u64,
    /// Seconds a request body may bring no data while the server waits on it before
    /// the request fails.
    #[arg(long, env = "REQUEST_BODY_IDLE_TIMEOUT_SECS", default_value_t = crate::state::DEFAULT_BODY_IDLE_TIMEOUT_SECS, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub request_body_idle_timeout_secs: u64,
}

/// `fsync-server`'s commands besides serving.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum ServerCommand {
    /// The operator's tools: list, disable, enable and delete accounts, list and revoke
    /// their devices, set quotas. Safe while the server serves (give it the same
    /// `--data-dir` / `DATABASE_URL`).
    Admin(crate::admin::AdminArgs),
}

/// The levels a `--log-level` directive may name.
const LOG_LEVELS: [&str; 6] = ["off", "error", "warn", "info", "debug", "trace"];

/// Loads `.env` from the working directory (only there, not from a parent directory);
/// a file that does not parse is an error, not silently skipped. Both binaries
/// (`fsync-server`, `fsync-gc`) call it before parsing their options.
pub fn load_dotenv() -> Result<(), DotenvError> {
    match dotenvy::from_path(".env") {
        Ok(()) => Ok(()),
        Err(dotenvy::Error::Io(e)) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(dotenvy::Error::LineParse(line, at)) => Err(DotenvError(format!(
            "cannot parse the line {line:?} (at character {}): write NAME=value, or # for \
             a comment",
            at + 1
        ))),
        Err(e) => Err(DotenvError(e.to_string())),
    }
}

/// Why `.env` could not be read, in words that name the line to fix.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct DotenvError(String);

/// Validates a `--log-level`. A tracing filter takes a bare word for a target name (all
/// of its events), so a misspelt level (`verbose`, `infoo`) would silently log nothing
/// useful: every comma-separated directive must end in one of [`LOG_LEVELS`].
pub fn parse_log_level(s: &str) -> Result<String, String> {
    let s = s.trim();
    for directive in s.split(',') {
        let directive = directive.trim();
        let level = directive
            .rsplit_once('=')
            .map_or(directive, |(_, level)| level);
        if !LOG_LEVELS.iter().any(|l| l.eq_ignore_ascii_case(level)) {
            return Err(format!(
                "{directive:?} names no log level; use one of {} or a filter such as \
                 \"info,fsync_server=debug\"",
                LOG_LEVELS.join(", ")
            ));
        }
    }
    tracing_subscriber::EnvFilter::try_new(s).map_err(|e| format!("not a log filter: {e}"))?;
    Ok(s.to_owned())
}

/// Why the configuration is unusable.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// `BLOB_STORE` or the S3 settings are unusable.
    #[error("blob store: {0}")]
    BlobStore(String),
    /// `SECRET_KEY` is too short.
    #[error("SECRET_KEY must be at least 32 characters (it signs access tokens)")]
    WeakSecret,
    /// A file or directory could not be used.
    #[error("{what} {path}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The path.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
}

impl Config {
    /// The database URL, with `POSTGRES_URL` as a fallback and SQLite as the default.
    pub fn database_url(&self) -> String {
        self.storage.database_url()
    }

    /// The blob directory.
    pub fn files_directory(&self) -> PathBuf {
        self.storage.files_directory()
    }

    /// The storage part of the configuration, which `fsync-gc` shares.
    pub fn storage(&self) -> StorageConfig {
        self.storage.clone()
    }

    /// The token-signing secret: given, or loaded from / generated into the data dir.
    pub fn secret(&self) -> Result<Vec<u8>, ConfigError> {
        if let Some(s) = &self.secret_key {
            if s.len() < 32 {
                return Err(ConfigError::WeakSecret);
            }
            return Ok(s.as_bytes().to_vec());
        }
        load_or_create_secret(&self.storage.data_dir.join("secret.key"))
    }
}

/// Where metadata and blobs live: the options `fsync-server` and `fsync-gc` share, with
/// the same flags, environment variables and defaults.
#[derive(Debug, Clone, clap::Args)]
pub struct StorageConfig {
    /// Metadata database: `postgres://…` or `sqlite://PATH` (alias `POSTGRES_URL`).
    /// Default: an SQLite file `fsync.db` in the data directory.
    #[arg(long, env = "DATABASE_URL")]
    pub database_url: Option<String>,
    /// Where blobs are stored on local disk (packs, and the loose blobs of a store
    /// written before packs). Default: `<data-dir>/blobs`.
    #[arg(long, env = "FILES_DIRECTORY")]
    pub files_directory: Option<PathBuf>,
    /// Directory for the default database, blobs and secret.
    #[arg(long, env = "FSYNC_DATA_DIR", default_value = "data")]
    pub data_dir: PathBuf,
    /// Keep packs in an S3 bucket instead: `s3://BUCKET[/PREFIX]` (with `--s3-endpoint`
    /// for an S3-compatible server). Default: the local `FILES_DIRECTORY`.
    #[arg(long, env = "BLOB_STORE")]
    pub blob_store: Option<String>,
    /// Endpoint URL of an S3-compatible server; unset: Amazon S3.
    #[arg(long, env = "S3_ENDPOINT")]
    pub s3_endpoint: Option<String>,
    /// S3 region.
    #[arg(long, env = "S3_REGION", default_value = "us-east-1")]
    pub s3_region: String,
    /// S3 access key id.
    #[arg(long, env = "AWS_ACCESS_KEY_ID")]
    pub aws_access_key_id: Option<String>,
    /// S3 secret access key.
    #[arg(long, env = "AWS_SECRET_ACCESS_KEY", hide_env_values = true)]
    pub aws_secret_access_key: Option<String>,
}

impl StorageConfig {
    /// The defaults for a data directory: SQLite and blobs inside it.
    pub fn in_data_dir(data_dir: PathBuf) -> Self {
        Self {
            database_url: None,
            files_directory: None,
            data_dir,
            blob_store: None,
            s3_endpoint: None,
            s3_region: "us-east-1".into(),
            aws_access_key_id: None,
            aws_secret_access_key: None,
        }
    }

    /// The database URL, with `POSTGRES_URL` as a fallback and SQLite as the default.
    pub fn database_url(&self) -> String {
        self.database_url
            .clone()
            .or_else(|| std::env::var("POSTGRES_URL").ok())
            .unwrap_or_else(|| format!("sqlite://{}", self.data_dir.join("fsync.db").display()))
    }

    /// The blob directory.
    pub fn files_directory(&self) -> PathBuf {
        self.files_directory
            .clone()
            .unwrap_or_else(|| self.data_dir.join("blobs"))
    }

    /// The S3 bucket of `BLOB_STORE`, if one is named; checked, but not contacted.
    pub fn s3(&self) -> Result<Option<fsync_store::S3Config>, ConfigError> {
        let Some(url) = &self.blob_store else {
            return Ok(None);
        };
        let mut c = fsync_store::S3Config::from_url(url)
            .map_err(|e| ConfigError::BlobStore(e.to_string()))?;
        if let Some(endpoint) = &self.s3_endpoint {
            if !(endpoint.starts_with("http://") || endpoint.starts_with("https://")) {
                return Err(ConfigError::BlobStore(format!(
                    "S3_ENDPOINT {endpoint:?} must be an http:// or https:// URL"
                )));
            }
        }
        c.endpoint.clone_from(&self.s3_endpoint);
        c.region.clone_from(&self.s3_region);
        match (&self.aws_access_key_id, &self.aws_secret_access_key) {
            (Some(_), None) | (None, Some(_)) => {
                return Err(ConfigError::BlobStore(
                    "set both AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or neither".into(),
                ))
            }
            _ => {}
        }
        c.access_key_id.clone_from(&self.aws_access_key_id);
        c.secret_access_key.clone_from(&self.aws_secret_access_key);
        Ok(Some(c))
    }

    /// The pack store: the S3 bucket of `BLOB_STORE`, else `FILES_DIRECTORY`.
    pub fn open_packs(&self) -> Result<std::sync::Arc<dyn fsync_store::PackStore>, ConfigError> {
        let store_err = |e: fsync_store::StoreError| ConfigError::BlobStore(e.to_string());
        Ok(match self.s3()? {
            Some(c) => std::sync::Arc::new(fsync_store::S3Packs::open(&c).map_err(store_err)?),
            None => std::sync::Arc::new(
                fsync_store::LocalPacks::open(self.files_directory()).map_err(store_err)?,
            ),
        })
    }
}

fn io_err<'a>(
    what: &'static str,
    path: &'a Path,
) -> impl FnOnce(std::io::Error) -> ConfigError + 'a {
    move |source| ConfigError::Io {
        what,
        path: path.to_owned(),
        source,
    }
}

fn load_or_create_secret(path: &Path) -> Result<Vec<u8>, ConfigError> {
    match std::fs::read_to_string(path) {
        Ok(s) if s.trim().len() >= 32 => return Ok(s.trim().as_bytes().to_vec()),
        Ok(_) => return Err(ConfigError::WeakSecret),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_err("reading", path)(e)),
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io_err("creating", dir))?;
    }
    let secret = hex::encode(rand::random::<[u8; 32]>());
    fsync_common::durable::write_atomic(path, secret.as_bytes(), Some(0o600))
        .map_err(io_err("writing", path))?;
    tracing::warn!(path = %path.display(), "SECRET_KEY not set: generated one and stored it (mode 0600); set SECRET_KEY to share it between server nodes");
    Ok(secret.into_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_secret_is_stable_and_private() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("secret.key");
        let a = load_or_create_secret(&p).unwrap();
        let b = load_or_create_secret(&p).unwrap();
        assert_eq!(a, b);
        assert_eq!(a.len(), 64);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(
                std::fs::metadata(&p).unwrap().permissions().mode() & 0o777,
                0o600
            );
        }
    }

    /// The defaults, parsed with the environment ignored (so that a developer's
    /// `SERVER_PORT` cannot change what this checks): no configuration at all serves
    /// HTTP on 127.0.0.1:8000 with SQLite, blobs and the secret under `./data`.
    #[test]
    fn with_no_configuration_the_server_serves_on_localhost_8000() {
        use clap::{CommandFactory, FromArgMatches};
        let cmd = Config::command().mut_args(|a| a.env(None));
        let c = Config::from_arg_matches(&cmd.get_matches_from(["fsync-server"])).unwrap();
        assert_eq!((c.host.as_str(), c.port), ("127.0.0.1", 8000));
        assert_eq!(c.storage.data_dir, PathBuf::from("data"));
        assert_eq!(c.storage.database_url, None);
        assert_eq!(
            c.storage().files_directory(),
            PathBuf::from("data").join("blobs")
        );
        assert_eq!(c.secret_key, None);
        assert_eq!(c.log_level, "info");
        assert_eq!(c.log_format, LogFormat::Text);
        assert_eq!((c.tls_cert, c.tls_key), (None, None));
    }

    #[test]
    fn log_levels_and_filters_are_accepted_and_anything_else_refused() {
        for ok in [
            "info",
            "DEBUG",
            "off",
            "info,fsync_server=debug",
            "warn,sqlx=error",
        ] {
            assert!(parse_log_level(ok).is_ok(), "{ok}");
        }
        for bad in [
            "verbose",
            "infoo",
            "",
            "info,fsync_server",
            "fsync_server=loud",
            "=",
        ] {
            let err = parse_log_level(bad).expect_err(bad);
            assert!(err.contains("names no log level"), "{bad}: {err}");
        }
    }

    #[test]
    fn short_secret_is_refused() {
        let c = Config::parse_from(["fsync-server", "--secret-key", "short"]);
        assert!(matches!(c.secret(), Err(ConfigError::WeakSecret)));
    }
}
