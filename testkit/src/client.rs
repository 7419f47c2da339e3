//! Accounts and client engines, registered and logged in the way the client does it
//! (`fsync_client::session`), with the cheap test KDF parameters
//! ([`fsync_store::test_kdf_params`]) so that logins do not dominate a test's time.

use std::path::Path;

use anyhow::Context as _;
use fsync_chunker::ChunkerConfig;
use fsync_client::api::ApiClient;
use fsync_client::engine::Engine;
use fsync_client::scan::STATE_DIR;
use fsync_client::session::{self, Session};

/// A registered account.
#[derive(Debug, Clone)]
pub struct Account {
    /// Its username.
    pub username: String,
    /// Its password.
    pub password: String,
}

impl Account {
    /// Registers `username` on the server at `server_url` as `fsync-client register`
    /// does.
    pub async fn register(
        server_url: &str,
        username: &str,
        email: &str,
        password: &str,
    ) -> anyhow::Result<Self> {
        let api = ApiClient::new(server_url, None)?;
        session::register(
            &api,
            username,
            Some(email),
            password,
            fsync_store::test_kdf_params(),
        )
        .await
        .with_context(|| format!("registering {username}"))?;
        Ok(Self {
            username: username.to_owned(),
            password: password.to_owned(),
        })
    }

    /// Logs in the device `name` whose sync root is `root` (its state dir, the
    /// `.fsync` marker, created if missing) and makes its engine, chunking with
    /// `chunks`. With `keep_token`, the refresh token is kept in the state dir as the
    /// client keeps it, so that a later login of the same folder resumes the session.
    pub async fn login_device(
        &self,
        server_url: &str,
        root: &Path,
        name: &str,
        chunks: ChunkerConfig,
        keep_token: bool,
    ) -> anyhow::Result<EngineDevice> {
        let marker = root.join(STATE_DIR);
        std::fs::create_dir_all(&marker)
            .with_context(|| format!("creating {}", marker.display()))?;
        let state = session::open_state(&marker)?;
        let mut api = ApiClient::new(server_url, None)?;
        if keep_token {
            api = api.with_token_file(marker.join("refresh_token"));
        }
        let session = session::login(&api, &state, &self.username, &self.password, name, chunks)
            .await
            .with_context(|| format!("logging in {name}"))?;
        Ok(EngineDevice {
            engine: Engine::new(root.to_owned(), marker, state, session.clone()),
            session,
            api,
        })
    }
}

/// A logged-in device: its engine, its session and its API client (which shares the
/// engine's connection pool and counters).
pub struct EngineDevice {
    /// The engine on the device's folder.
    pub engine: Engine,
    /// The session it was made from (for direct API calls).
    pub session: Session,
    /// The API client it logged in with.
    pub api: ApiClient,
}
