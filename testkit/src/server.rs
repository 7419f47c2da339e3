//! A real fsync server in this process, on `127.0.0.1:<ephemeral>`: the state the
//! `fsync-server` binary would build from its flags, served by `fsync_server::run`.

use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser as _;
use fsync_server::AppState;

use crate::postgres::ScratchDatabase;

/// The metadata database of a [`TestServer`].
#[derive(Debug, Clone)]
pub enum Database {
    /// An SQLite file, `fsync.db` in the server's data directory.
    Sqlite,
    /// A [`ScratchDatabase`], which the server takes: dropped with it.
    Scratch(ScratchDatabase),
    /// This URL, as it is, and left as it is (e.g. a second node of a deployment on
    /// the first one's database).
    Url(String),
}

/// A server running in this process; stopped (and its scratch database dropped) by
/// [`TestServer::stop`], or on drop.
#[derive(Debug)]
pub struct TestServer {
    /// `http://127.0.0.1:<port>`.
    pub url: String,
    /// The address it listens on.
    pub addr: SocketAddr,
    /// The metadata database's URL.
    pub database_url: String,
    scratch: Option<ScratchDatabase>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
}

impl TestServer {
    /// Builds the state of `fsync-server --data-dir DATA_DIR --secret-key SECRET
    /// --database-url … ARGS…`, lets `tweak` adjust it (limits, a repository of its
    /// own, …) and serves it.
    pub async fn start(
        data_dir: &Path,
        secret: &str,
        database: Database,
        args: &[&str],
        tweak: impl FnOnce(&mut AppState),
    ) -> anyhow::Result<Self> {
        let (database_url, scratch) = match database {
            Database::Sqlite => (
                format!("sqlite://{}", data_dir.join("fsync.db").display()),
                None,
            ),
            Database::Scratch(db) => (db.url().to_owned(), Some(db)),
            Database::Url(url) => (url, None),
        };
        let mut flags: Vec<OsString> = vec!["fsync-server".into(), "--data-dir".into()];
        flags.push(data_dir.into());
        flags.extend(["--secret-key", secret, "--database-url", &database_url].map(Into::into));
        flags.extend(args.iter().map(Into::into));
        let config = fsync_server::Config::try_parse_from(flags)?;
        let mut state = fsync_server::build_state(&config)
            .await
            .context("building the server's state")?;
        tweak(&mut state);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .context("binding 127.0.0.1:0")?;
        let addr = listener.local_addr()?;
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(fsync_server::run(listener, state, async {
            let _ = stopped.await;
        }));
        Ok(Self {
            url: format!("http://{addr}"),
            addr,
            database_url,
            scratch,
            stop: Some(stop),
            task: Some(task),
        })
    }

    /// Stops the server: in-flight requests finish, open connections (push sockets,
    /// idle keep-alives) are cut after 2 s at most; then drops its scratch database
    /// (the error is that drop's).
    pub async fn stop(mut self) -> anyhow::Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = tokio::time::timeout(Duration::from_secs(2), task).await;
        }
        match self.scratch.take() {
            Some(db) => db.drop_database().await,
            None => Ok(()),
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            task.abort();
        }
        if let Some(db) = self.scratch.take() {
            let _ = db.drop_database_blocking();
        }
    }
}

/// Lifts the per-user and per-address rate limits (their defaults would throttle a
/// busy test or benchmark and measure the limit, not the server).
pub fn lift_rate_limits(state: &mut AppState) {
    state.limits.api_per_user.max = u32::MAX;
    state.limits.auth_per_user.max = u32::MAX;
    state.limits.auth_per_ip.max = u32::MAX;
}
