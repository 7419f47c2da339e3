//! Registration and login: keys are derived from the password on this device and never
//! leave it; the server gets the derived `auth_key` and wrapped keys only.

use std::path::Path;
use std::sync::Arc;

use fsync_chunker::{Chunker, ChunkerConfig};
use fsync_common::wire::{KdfParams, NamespaceGrant, RegisterRequest, RegisterResponse};
use fsync_common::{DeviceId, NamespaceId};
use fsync_store::{AccountKey, BlobCodec, MasterKey, NamespaceKey};

use crate::api::{ApiClient, ClientError};
use crate::engine::SyncKeys;
use crate::state::{LoginRecord, State, StateError};

/// A logged-in session: the API client, and the keys and identity it syncs with.
#[derive(Clone)]
pub struct Session {
    /// API client.
    pub api: ApiClient,
    /// Namespace synced.
    pub ns: NamespaceId,
    /// This device.
    pub device: DeviceId,
    /// Blob codec (namespace keys).
    pub codec: Arc<BlobCodec>,
    /// Chunker (namespace id key).
    pub chunker: Arc<Chunker>,
    /// The namespace's id key (to check chunks read back from local files).
    pub id_key: fsync_common::IdKey,
}

impl Session {
    /// What the engine needs of the session besides the server.
    pub fn keys(&self) -> SyncKeys {
        SyncKeys {
            ns: self.ns,
            device: self.device,
            codec: self.codec.clone(),
            chunker: self.chunker.clone(),
            id_key: self.id_key.clone(),
        }
    }
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("ns", &self.ns)
            .field("device", &self.device)
            .finish_non_exhaustive()
    }
}

/// Why a login or registration failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SessionError {
    /// The server refused or could not be reached.
    #[error(transparent)]
    Api(#[from] ClientError),
    /// Key derivation or unwrapping failed (a wrong password shows up at login instead).
    #[error("keys: {0}")]
    Keys(#[from] fsync_store::KeyError),
    /// The server sent KDF parameters outside the safe range.
    #[error("the server's key-derivation parameters are unsafe: {0}")]
    UnsafeParams(fsync_store::KeyError),
    /// The account has no namespace, or not the one this folder syncs with.
    #[error("{0}")]
    Namespace(String),
    /// Local state.
    #[error(transparent)]
    State(#[from] StateError),
    /// Chunker configuration (`CHUNK_SIZE`).
    #[error("chunk size: {0}")]
    Chunker(#[from] fsync_chunker::ChunkerError),
    /// A new account's password is too weak (every key derives from it, and the server
    /// can guess at a weak one offline).
    #[error("password too weak: {0}")]
    WeakPassword(String),
}

/// The fewest characters a new account's password may have.
pub const MIN_PASSWORD_CHARS: usize = 10;

/// Checks a new account's password: at least [`MIN_PASSWORD_CHARS`] characters, not one
/// character repeated, and not containing the username. The reason names what to
/// change.
pub fn check_new_password(password: &str, username: &str) -> Result<(), SessionError> {
    let weak = |why: String| Err(SessionError::WeakPassword(why));
    let chars = password.chars().count();
    if chars < MIN_PASSWORD_CHARS {
        return weak(format!(
            "it has {chars} characters; use at least {MIN_PASSWORD_CHARS} (a few unrelated \
             words make a strong one that is easy to type)"
        ));
    }
    let mut distinct: Vec<char> = password.chars().collect();
    distinct.sort_unstable();
    distinct.dedup();
    if distinct.len() < 4 {
        return weak("it uses fewer than 4 different characters".to_owned());
    }
    let user = username.to_lowercase();
    if user.chars().count() >= 3 && password.to_lowercase().contains(&user) {
        return weak("it contains the username".to_owned());
    }
    Ok(())
}

async fn derive(password: String, params: KdfParams) -> Result<MasterKey, SessionError> {
    tokio::task::spawn_blocking(move || MasterKey::derive(&password, &params))
        .await
        .expect("key derivation task")
        .map_err(SessionError::Keys)
}

fn unhex(what: &str, s: &str) -> Result<Vec<u8>, SessionError> {
    hex::decode(s)
        .map_err(|_| SessionError::Namespace(format!("the server sent a malformed {what}")))
}

/// Registers a new account with a fresh account key and first namespace.
pub async fn register(
    api: &ApiClient,
    username: &str,
    email: Option<&str>,
    password: &str,
    params: KdfParams,
) -> Result<RegisterResponse, SessionError> {
    check_new_password(password, username)?;
    fsync_store::validate_kdf_params(&params).map_err(SessionError::UnsafeParams)?;
    let master = derive(password.to_owned(), params.clone()).await?;
    let account = AccountKey::generate();
    let ns_key = NamespaceKey::generate();
    let req = RegisterRequest {
        username: username.to_owned(),
        email: email.map(str::to_owned),
        password: master.auth_key().to_hex(),
        kdf: params,
        wrapped_account_key: hex::encode(master.kek().wrap(&account)),
        wrapped_namespace_key: hex::encode(account.wrap_namespace_key(&ns_key)),
    };
    Ok(api.register(&req).await?)
}

/// Logs in, unwraps the keys, and binds the folder's state to the namespace.
///
/// A folder that logged in before resumes with its stored refresh token and the
/// wrapped keys kept in its state (no login request, so restarts do not count against
/// the server's login limit); the password is still needed to unwrap them, and a
/// wrong one, a refused token or keys that no longer unwrap fall back to a full login.
pub async fn login(
    api: &ApiClient,
    state: &State,
    username: &str,
    password: &str,
    device_name: &str,
    chunk_config: ChunkerConfig,
) -> Result<Session, SessionError> {
    // A folder belongs to one account: logging another one in would register a device
    // for it and then be refused at the namespace, leaving a device behind each time.
    if let Some(record) = state.login_record()? {
        if record.username != username {
            return Err(SessionError::Namespace(format!(
                "this folder is synced with the account {}, not {username}: log in as {0}, \
                 or sync another folder with {username}",
                record.username
            )));
        }
    }
    if let (Some(record), Some(device)) = (state.login_record()?, state.device_id()?) {
        if record.username == username && fsync_store::validate_kdf_params(&record.kdf).is_ok() {
            let master = derive(password.to_owned(), record.kdf.clone()).await?;
            // Unwrap first: a wrong password must not spend the stored token.
            let unwrapped = unhex("wrapped account key", &record.wrapped_account_key)
                .ok()
                .and_then(|w| master.kek().unwrap(&w).ok());
            if let Some(account) = unwrapped {
                let auth_key = master.auth_key().to_hex();
                if api
                    .resume_stored(username, &auth_key, device_name, device)
                    .await?
                {
                    tracing::debug!("resumed the stored session");
                    return open_namespace(
                        api,
                        state,
                        username,
                        device,
                        &account,
                        &record.namespaces,
                        chunk_config,
                    );
                }
            }
        }
    }
    let params = api.auth_params(username).await?;
    fsync_store::validate_kdf_params(&params).map_err(SessionError::UnsafeParams)?;
    let master = derive(password.to_owned(), params.clone()).await?;
    let resp = api
        .login(
            username,
            &master.auth_key().to_hex(),
            device_name,
            state.device_id()?,
        )
        .await?;
    let account = master
        .kek()
        .unwrap(&unhex("wrapped account key", &resp.wrapped_account_key)?)?;
    let session = open_namespace(
        api,
        state,
        username,
        resp.device_id,
        &account,
        &resp.namespaces,
        chunk_config,
    )?;
    // Only a login that can sync this folder is recorded as its own.
    state.set_device_id(resp.device_id)?;
    state.set_login_record(&LoginRecord {
        username: username.to_owned(),
        kdf: params,
        wrapped_account_key: resp.wrapped_account_key.clone(),
        namespaces: resp.namespaces.clone(),
    })?;
    Ok(session)
}

/// Picks the folder's namespace among `grants` (the one it synced with before, else the
/// first) and unwraps its keys.
fn open_namespace(
    api: &ApiClient,
    state: &State,
    username: &str,
    device: DeviceId,
    account: &AccountKey,
    grants: &[NamespaceGrant],
    chunk_config: ChunkerConfig,
) -> Result<Session, SessionError> {
    let wanted: Option<NamespaceId> = state.namespace()?;
    let grant = match wanted {
        Some(ns) => grants.iter().find(|g| g.id == ns).ok_or_else(|| {
            SessionError::Namespace(format!(
                "this folder was synced with namespace {ns}, which the account {username} cannot access"
            ))
        })?,
        None => grants
            .first()
            .ok_or_else(|| SessionError::Namespace("the account has no namespace".into()))?,
    };
    state.set_namespace(grant.id)?;
    let keys = account
        .unwrap_namespace_key(&unhex("wrapped namespace key", &grant.wrapped_key)?)?
        .derive();
    Ok(Session {
        api: api.clone(),
        ns: grant.id,
        device,
        codec: Arc::new(BlobCodec::new(&keys)),
        chunker: Arc::new(Chunker::new(&keys.id_key, chunk_config)?),
        id_key: keys.id_key.clone(),
    })
}

/// The chunker configuration for an average chunk size (`CHUNK_SIZE`): min = avg/4,
/// max = avg×4, as FastCDC recommends.
pub fn chunk_config(avg: Option<u32>) -> Result<ChunkerConfig, SessionError> {
    match avg {
        None => Ok(ChunkerConfig::DEFAULT),
        Some(avg) => Ok(ChunkerConfig::new(avg / 4, avg, avg.saturating_mul(4))?),
    }
}

/// Creates the state dir (mode 0700 on Unix) and opens its database.
pub fn open_state(state_dir: &Path) -> Result<State, SessionError> {
    std::fs::create_dir_all(state_dir).map_err(|e| {
        SessionError::State(StateError::Corrupt(format!(
            "cannot create the state dir {}: {e}",
            state_dir.display()
        )))
    })?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(state_dir, std::fs::Permissions::from_mode(0o700));
    }
    Ok(State::open(&state_dir.join("state.db"))?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weak_passwords_are_refused_with_the_reason() {
        let why = |pw: &str, user: &str| match check_new_password(pw, user) {
            Ok(()) => String::new(),
            Err(e) => e.to_string(),
        };
        assert!(why("", "dave").contains("0 characters"));
        assert!(why("123456789", "dave").contains("9 characters"));
        assert!(why("aaaabbbbcccc", "dave").contains("fewer than 4"));
        assert!(why("xxDAVExx1234", "dave").contains("username"));
        // A short username is not looked for (it would refuse too much).
        assert_eq!(why("correct horse battery", "or"), "");
        assert_eq!(why("correct horse battery staple", "dave"), "");
        // Characters, not bytes: ten accented letters are ten.
        assert_eq!(why("éàüöçñøåæß", "dave"), "");
    }
}
