//! The metadata repository: one narrow trait, one SQL implementation shared by the two
//! databases (`sqlite.rs`, `postgres.rs` open and configure their pools), one test
//! suite (`testsuite.rs`) run against both.

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use fsync_common::pages::Page;
use fsync_common::wire::{
    ChangesResponse, CommitRequest, CommitResponse, DeleteRequest, DeviceInfo, KdfParams,
    ListResponse, Manifest, NamespaceGrant, OpResponse, RenameInfo, RenameRequest, VersionInfo,
};
use fsync_common::{
    ChunkId, DeviceId, FileId, NamespaceId, PackId, PageId, Seq, SyncPath, UserId, VersionNo,
};

use crate::domain::manifest::RequestError;
use crate::domain::roles::Role;

pub(crate) mod gc;
mod migrations;
mod postgres;
mod sql;
mod sqlite;
#[cfg(test)]
pub(crate) mod testsuite;

pub use postgres::open_postgres;
pub(crate) use sql::TOUCH_SLACK_SECS;
pub use sqlite::open_sqlite;

/// Errors of the metadata repository. No SQL text reaches a client: the API layer
/// maps these to status codes (in `http/error.rs`, the one place) and logs the details
/// of [`DbError::Backend`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DbError {
    /// Registration: the username is taken (409 `conflict`).
    #[error("username is already taken")]
    UsernameTaken,
    /// A rename's target already holds a live file or folder (409 `conflict`).
    #[error("{0} already exists")]
    PathExists(SyncPath),
    /// A restore of a deleted file whose path another live file now holds (409
    /// `conflict`).
    #[error("{0} is now used by another file; move it away before restoring")]
    PathInUse(SyncPath),
    /// The row does not exist or is not visible to the caller.
    #[error("{0} not found")]
    NotFound(&'static str),
    /// The commit references chunks the server does not hold.
    #[error("{} chunks are missing", .0.len())]
    MissingChunks(Vec<ChunkId>),
    /// The commit names manifest pages the server does not hold.
    #[error("{} manifest pages are missing", .0.len())]
    MissingPages(Vec<PageId>),
    /// The request breaks a rule (sizes do not add up, a rename into itself…); nothing
    /// was written (400 `bad_request`).
    #[error(transparent)]
    Invalid(#[from] RequestError),
    /// The database URL names no supported database.
    #[error("{0}")]
    UnsupportedUrl(String),
    /// The database failed.
    #[error("database error: {0}")]
    Backend(#[from] sqlx::Error),
    /// The database cannot be reached or used as configured, said with what to do
    /// (the server's start: no such database, a refused role, nothing listening).
    #[error("{0}")]
    Setup(String),
    /// Stored data could not be decoded (corruption or a bug).
    #[error("corrupt row: {0}")]
    Corrupt(String),
    /// The blob store failed while the repository waited on it
    /// ([`ChunkRepo::record_pack`]).
    #[error("blob store: {0}")]
    Blob(#[source] fsync_store::StoreError),
}

/// Makes sure blobs are stored, called by [`ChunkRepo::record_pack`] while it holds the
/// namespace lock (see the `gc` module for why).
#[async_trait]
pub trait BlobConfirm: Send + Sync {
    /// Ensures the blob of every id is stored (re-storing any that went missing).
    async fn confirm(&self, ids: &[ChunkId]) -> Result<(), fsync_store::StoreError>;
}

/// A user's stored credentials.
#[derive(Debug, Clone)]
pub struct UserRecord {
    /// User id.
    pub id: UserId,
    /// Username.
    pub username: String,
    /// Argon2id PHC string of the client's auth key.
    pub auth_hash: String,
    /// KDF parameters the client derives its keys with.
    pub kdf: KdfParams,
    /// Account key wrapped with the client's `kek`, hex.
    pub wrapped_account_key: String,
    /// Disabled by the operator: logins and tokens are refused.
    pub disabled: bool,
}

/// What [`AccountRepo::device_active`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceStatus {
    /// The device is the user's, not revoked, and the account is enabled.
    Active,
    /// No such device of this user, or it was revoked.
    Revoked,
    /// The device is fine but the operator disabled the account.
    Disabled,
}

/// One account as the operator sees it ([`AdminRepo::users`]).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct UserSummary {
    /// User id.
    pub id: UserId,
    /// Username.
    pub username: String,
    /// Contact email, if one was given.
    pub email: Option<String>,
    /// Registered, seconds since the epoch.
    pub created_at: i64,
    /// Disabled by the operator.
    pub disabled: bool,
    /// Most stored bytes the account's namespaces may hold (`None`: no cap).
    pub quota_bytes: Option<u64>,
    /// Stored bytes (compressed, encrypted blobs) of the namespaces it owns: what a
    /// quota counts.
    pub stored_bytes: u64,
    /// Live files in the namespaces it owns.
    pub files: u64,
    /// Their plaintext bytes (the heads).
    pub file_bytes: u64,
    /// Devices not revoked.
    pub devices: u64,
    /// The latest request of any of its devices, seconds since the epoch.
    pub last_seen: Option<i64>,
}

/// What [`AdminRepo::delete_user`] deleted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeletedUser {
    /// The account's devices (revoked, not revoked).
    pub devices: Vec<DeviceId>,
    /// The namespaces it owned, whose blobs are left in the blob store.
    pub namespaces: Vec<NamespaceId>,
}

/// An account's quota and what counts against it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Usage {
    /// The account (for a namespace: its owner).
    pub user: UserId,
    /// Stored bytes of the namespaces it owns.
    pub used_bytes: u64,
    /// Its quota, `None` for no cap.
    pub quota_bytes: Option<u64>,
}

/// What registration stores.
#[derive(Debug, Clone)]
pub struct NewUser {
    /// User id.
    pub id: UserId,
    /// Username.
    pub username: String,
    /// Contact email, if one was given (stored as `''` when none was: the column
    /// predates optional emails and is `NOT NULL`).
    pub email: Option<String>,
    /// Argon2id PHC string of the auth key.
    pub auth_hash: String,
    /// KDF parameters.
    pub kdf: KdfParams,
    /// Wrapped account key, hex.
    pub wrapped_account_key: String,
    /// First namespace.
    pub namespace: NamespaceId,
    /// Its key wrapped with the account key, hex.
    pub wrapped_namespace_key: String,
}

/// What [`AccountRepo::rotate_refresh`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rotation {
    /// Exchanged: the successor is stored.
    Rotated(TokenOwner),
    /// Unknown, expired, or its device revoked: nothing stored.
    Invalid,
    /// A rotated-out token presented again: its family is revoked.
    Reused(TokenOwner),
    /// The account is disabled: nothing changed (the token works again once it is
    /// enabled).
    Disabled(TokenOwner),
}

/// The user and device a refresh token is bound to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenOwner {
    /// User.
    pub user: UserId,
    /// Device the token is bound to.
    pub device: DeviceId,
}

/// Who is acting: the authenticated user and device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Actor {
    /// User.
    pub user: UserId,
    /// Device.
    pub device: DeviceId,
}

/// One write of a `sync/event` batch ([`WriteRepo::apply_batch`]).
#[derive(Debug, Clone, Copy)]
pub enum BatchOp<'a> {
    /// A create or modify: [`MetaRepo::commit`].
    Commit(&'a CommitRequest),
    /// [`MetaRepo::delete`].
    Delete(&'a DeleteRequest),
    /// [`MetaRepo::rename`].
    Rename(&'a RenameRequest),
}

impl BatchOp<'_> {
    /// The namespace the write goes to.
    pub fn namespace(&self) -> NamespaceId {
        match self {
            Self::Commit(r) => r.namespace,
            Self::Delete(r) => r.namespace,
            Self::Rename(r) => r.namespace,
        }
    }
}

/// The answer to one [`BatchOp`].
#[derive(Debug, Clone)]
pub enum BatchAnswer {
    /// Answer of a commit.
    Committed(Box<CommitResponse>),
    /// Answer of a delete or rename.
    Applied(OpResponse),
}

/// The metadata repository: one trait per entity ([`AccountRepo`], [`ChunkRepo`],
/// [`PageRepo`], [`WriteRepo`], [`FileRepo`], [`JournalRepo`]), so that a caller names the part it
/// uses; `dyn MetaRepo` is all of them.
#[async_trait]
pub trait MetaRepo:
    AccountRepo + AdminRepo + ChunkRepo + PageRepo + WriteRepo + FileRepo + JournalRepo
{
    /// Checks the database answers.
    async fn ping(&self) -> Result<(), DbError>;
}

/// Manifest pages (`fsync_common::pages`), stored once per namespace.
#[async_trait]
pub trait PageRepo: Send + Sync + std::fmt::Debug {
    /// The subset of `ids` not stored in `ns`; the present ones are marked touched.
    async fn missing_pages(
        &self,
        ns: NamespaceId,
        ids: &[PageId],
        now: i64,
    ) -> Result<Vec<PageId>, DbError>;
    /// Stores pages (already checked against their ids) that `ns` lacks, in one
    /// transaction under the namespace lock; pages already there are touched. Every
    /// chunk they list must be recorded, or nothing is stored and the answer is
    /// [`DbError::MissingChunks`]. Returns how many were new.
    async fn store_pages(
        &self,
        ns: NamespaceId,
        pages: &[Page],
        now: i64,
    ) -> Result<usize, DbError>;
    /// The bodies of the pages among `ids` that `ns` holds, in the order asked
    /// (duplicates once).
    async fn page_bodies(
        &self,
        ns: NamespaceId,
        ids: &[PageId],
    ) -> Result<Vec<(PageId, Vec<u8>)>, DbError>;
}

/// Users, devices, refresh tokens and namespace membership.
#[async_trait]
pub trait AccountRepo: Send + Sync + std::fmt::Debug {
    /// Creates a user with its first namespace. [`DbError::UsernameTaken`] when the
    /// username is taken.
    async fn create_user(&self, user: NewUser, now: i64) -> Result<(), DbError>;
    /// Finds a user by username.
    async fn find_user(&self, username: &str) -> Result<Option<UserRecord>, DbError>;
    /// Returns `device` when it belongs to the user and is not revoked, else registers a
    /// new device with `new_id`.
    async fn register_device(
        &self,
        user: UserId,
        device: Option<DeviceId>,
        new_id: DeviceId,
        name: &str,
        now: i64,
    ) -> Result<DeviceId, DbError>;
    /// Whether the device belongs to the user, is not revoked, and the account is
    /// enabled; records `last_seen` when it is.
    async fn device_active(
        &self,
        user: UserId,
        device: DeviceId,
        now: i64,
    ) -> Result<DeviceStatus, DbError>;
    /// The user's devices.
    async fn list_devices(&self, user: UserId) -> Result<Vec<DeviceInfo>, DbError>;
    /// Revokes a device and drops its refresh tokens. False when not the user's.
    async fn revoke_device(&self, user: UserId, device: DeviceId) -> Result<bool, DbError>;
    /// Stores a refresh token hash.
    async fn insert_refresh(
        &self,
        token_hash: &str,
        owner: TokenOwner,
        expires_at: i64,
        now: i64,
    ) -> Result<(), DbError>;
    /// Atomically exchanges a refresh token for its successor `new_hash` (same family),
    /// marking the old one rotated. A token rotated less than `retry_grace` seconds ago whose
    /// successor is still unused is the same rotation retried (its answer lost): it is
    /// exchanged again, and the unused successor counts as rotated. Any other rotated
    /// token is a reuse: every token of its family is deleted.
    async fn rotate_refresh(
        &self,
        old_hash: &str,
        new_hash: &str,
        expires_at: i64,
        now: i64,
        retry_grace: i64,
    ) -> Result<Rotation, DbError>;
    /// Deletes a refresh token of `owner`'s user and device, with its family (logout).
    /// False when no such token exists, which includes a token of another user or
    /// device: that one is left alone.
    async fn delete_refresh(&self, token_hash: &str, owner: TokenOwner) -> Result<bool, DbError>;
    /// The namespaces the user can access.
    async fn namespaces_of(&self, user: UserId) -> Result<Vec<NamespaceGrant>, DbError>;
    /// The user's role in a namespace: `None` when not a member, or when the stored
    /// role is unknown (logged; such a member gets no access).
    async fn role_in(&self, user: UserId, ns: NamespaceId) -> Result<Option<Role>, DbError>;
}

/// The operator's view and controls of accounts (`fsync-server admin`), and quotas.
#[async_trait]
pub trait AdminRepo: Send + Sync + std::fmt::Debug {
    /// Every account (or only `username`'s), by username, with its usage.
    async fn users(&self, username: Option<&str>) -> Result<Vec<UserSummary>, DbError>;
    /// Disables or enables an account. Returns its devices that are not revoked (whose
    /// open sockets are to be told).
    async fn set_disabled(&self, user: UserId, disabled: bool) -> Result<Vec<DeviceId>, DbError>;
    /// Sets (or, with `None`, removes) an account's quota in stored bytes.
    async fn set_quota(&self, user: UserId, quota: Option<u64>) -> Result<(), DbError>;
    /// Deletes an account with its devices, tokens, and the namespaces it owns (their
    /// files, history, journal, chunk and pack rows; the packs themselves become
    /// orphans for the caller to delete). Returns the devices it had and the
    /// namespaces deleted.
    async fn delete_user(&self, user: UserId) -> Result<DeletedUser, DbError>;
    /// The usage and quota of the account owning `ns`; `used_bytes` is only summed
    /// when there is a quota (0 otherwise). `None` when `ns` does not exist.
    async fn quota_of(&self, ns: NamespaceId) -> Result<Option<Usage>, DbError>;
    /// An account's usage and quota.
    async fn usage_of(&self, user: UserId) -> Result<Usage, DbError>;
}

/// Which chunks a namespace holds.
#[async_trait]
pub trait ChunkRepo: Send + Sync + std::fmt::Debug {
    /// The subset of `ids` not stored in `ns`; the present ones are marked touched.
    async fn missing_chunks(
        &self,
        ns: NamespaceId,
        ids: &[ChunkId],
        now: i64,
    ) -> Result<Vec<ChunkId>, DbError>;
    /// Records stored chunks as loose blobs (the layout before packs: tests and tools
    /// that build such a store). Existing rows are touched.
    async fn record_chunks(
        &self,
        ns: NamespaceId,
        chunks: &[(ChunkId, u64)],
        now: i64,
    ) -> Result<(), DbError>;
    /// True when the chunk is recorded in `ns`.
    async fn has_chunk(&self, ns: NamespaceId, id: ChunkId) -> Result<bool, DbError>;
    /// Records the blobs of a pack that is durable in the pack store, in one
    /// transaction under the namespace lock: the pack's row, a row pointing into it for
    /// each chunk not yet recorded, a touch for each that is (its blob stays where it
    /// was; the copy in this pack is dead bytes for a repack to drop). `confirm` runs
    /// under the lock first (it makes sure the pack is still there). Returns the ids that
    /// were already recorded (every other entry is new).
    async fn record_pack(
        &self,
        ns: NamespaceId,
        pack: &NewPack,
        now: i64,
        confirm: &dyn BlobConfirm,
    ) -> Result<Vec<ChunkId>, DbError>;
    /// Where the blobs of the recorded chunks among `ids` lie; absent ids are left out.
    async fn locate_chunks(
        &self,
        ns: NamespaceId,
        ids: &[ChunkId],
    ) -> Result<HashMap<ChunkId, BlobLocation>, DbError>;
}

/// A pack written to the pack store, to be recorded by [`ChunkRepo::record_pack`].
#[derive(Debug, Clone)]
pub struct NewPack {
    /// The pack.
    pub id: PackId,
    /// Its size in bytes.
    pub size: u64,
    /// Its blobs, each id once.
    pub entries: Vec<fsync_store::pack::PackEntry>,
}

/// Where a recorded chunk's blob lies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlobLocation {
    /// In a pack.
    Packed {
        /// The pack.
        pack: PackId,
        /// Byte offset in the pack.
        offset: u64,
        /// Length in bytes.
        len: u32,
    },
    /// A loose blob (one file per chunk) of a store written before packs.
    Loose {
        /// Its recorded size.
        size: u64,
    },
}

/// Writes to a namespace's files: commits, deletes, renames, and batches of them.
#[async_trait]
pub trait WriteRepo: Send + Sync + std::fmt::Debug {
    /// Commits a manifest (ARCHITECTURE §5).
    async fn commit(
        &self,
        actor: Actor,
        req: &CommitRequest,
        now: i64,
    ) -> Result<CommitResponse, DbError>;
    /// Tombstones a path, if the head is the version the client saw.
    async fn delete(
        &self,
        actor: Actor,
        req: &DeleteRequest,
        now: i64,
    ) -> Result<OpResponse, DbError>;
    /// Moves a file or every file below a folder, as one operation.
    async fn rename(
        &self,
        actor: Actor,
        req: &RenameRequest,
        now: i64,
    ) -> Result<OpResponse, DbError>;
    /// Applies writes in order, with exactly the outcome (and idempotency answers) that
    /// calling [`WriteRepo::commit`], [`WriteRepo::delete`] and [`WriteRepo::rename`] one
    /// after the other would give: one result per op, in order; a failed op changes
    /// nothing and does not stop the others. Consecutive ops on one namespace are
    /// applied in one transaction under its lock.
    async fn apply_batch(
        &self,
        actor: Actor,
        ops: &[BatchOp<'_>],
        now: i64,
    ) -> Vec<Result<BatchAnswer, DbError>>;
}

/// Reading files and their history, and restoring an old version.
#[async_trait]
pub trait FileRepo: Send + Sync + std::fmt::Debug {
    /// Lists heads in path order.
    async fn list_files(
        &self,
        ns: NamespaceId,
        prefix: Option<&str>,
        include_deleted: bool,
        after: Option<&str>,
        limit: u32,
    ) -> Result<ListResponse, DbError>;
    /// The namespace of a file, for authorization.
    async fn file_namespace(&self, file: FileId) -> Result<Option<NamespaceId>, DbError>;
    /// A version's manifest (`None`: the head).
    async fn manifest(&self, file: FileId, version: Option<VersionNo>)
        -> Result<Manifest, DbError>;
    /// The manifests of many versions of files in `ns`, in the order asked (a few
    /// queries, not two per file); one missing or in another namespace is `NotFound`.
    /// With `as_pages`, a version of more than one page is answered with its page ids
    /// (`Manifest::pages`) instead of its chunks.
    async fn manifests(
        &self,
        ns: NamespaceId,
        wanted: &[(FileId, VersionNo)],
        as_pages: bool,
    ) -> Result<Vec<Manifest>, DbError>;
    /// A file's history, newest first.
    async fn versions(&self, file: FileId) -> Result<Vec<VersionInfo>, DbError>;
    /// A file's renames, oldest first.
    async fn renames(&self, file: FileId) -> Result<Vec<RenameInfo>, DbError>;
    /// Makes an old version the head again, as a new version.
    async fn restore(
        &self,
        actor: Actor,
        file: FileId,
        version: VersionNo,
        now: i64,
    ) -> Result<CommitResponse, DbError>;
}

/// The change journal of a namespace.
#[async_trait]
pub trait JournalRepo: Send + Sync + std::fmt::Debug {
    /// Changes after `since`, in journal order.
    async fn changes(
        &self,
        ns: NamespaceId,
        since: Seq,
        limit: u32,
    ) -> Result<ChangesResponse, DbError>;
    /// The namespace's latest journal position.
    async fn last_seq(&self, ns: NamespaceId) -> Result<Seq, DbError>;
}

/// Applies the embedded migrations with sqlx's migrator, which records them in
/// `_sqlx_migrations` and refuses a changed, already-applied script.
async fn migrate(pool: &sqlx::AnyPool, dialect: sql::Dialect) -> Result<(), DbError> {
    sqlx::migrate::Migrator::with_migrations(migrations::for_dialect(dialect))
        .run(pool)
        .await
        .map_err(|e| DbError::Backend(e.into()))
}

/// What a database URL names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum DbUrl<'a> {
    /// `postgres://…` (the whole URL).
    Postgres(&'a str),
    /// `sqlite://PATH` (the path, without query).
    Sqlite(&'a std::path::Path),
}

/// Parses a database URL: `postgres://…`, `postgresql://…`, `sqlite://PATH` or `sqlite:PATH`.
pub(crate) fn parse_url(url: &str) -> Result<DbUrl<'_>, DbError> {
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        Ok(DbUrl::Postgres(url))
    } else if let Some(path) = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))
    {
        let path = path.split('?').next().unwrap_or(path);
        Ok(DbUrl::Sqlite(std::path::Path::new(path)))
    } else {
        Err(DbError::UnsupportedUrl(format!(
            "unsupported database URL scheme in {:?}: use postgres://… or sqlite://PATH",
            url.split(':').next().unwrap_or("")
        )))
    }
}

/// Whether the database at `url` has fsync's tables (its migrations table), checked
/// without creating or changing anything. False for a database that exists without
/// them; an error when it cannot be reached.
pub(crate) async fn has_fsync_schema(url: &str) -> Result<bool, DbError> {
    use sqlx::Connection as _;
    sqlx::any::install_default_drivers();
    let mut conn = match parse_url(url)? {
        DbUrl::Sqlite(path) => {
            // Read-only and never created: `mode=ro` on an existing file.
            let url = format!("sqlite://{}?mode=ro", path.display());
            sqlx::AnyConnection::connect(&url).await?
        }
        DbUrl::Postgres(url) => sqlx::AnyConnection::connect(url).await?,
    };
    let found = sqlx::query("SELECT COUNT(*) FROM _sqlx_migrations")
        .fetch_one(&mut conn)
        .await
        .is_ok();
    let _ = conn.close().await;
    Ok(found)
}

/// Why `storage` does not name an existing server's stores, said for the operator of
/// `tool` (which never creates them): no SQLite file, a database without fsync's tables,
/// no blob directory. `None` when they look like a server's.
pub(crate) async fn not_a_server_store(
    storage: &crate::StorageConfig,
    tool: &str,
) -> Result<Option<String>, DbError> {
    let url = storage.database_url();
    if let DbUrl::Sqlite(path) = parse_url(&url)? {
        if !path.is_file() {
            return Ok(Some(format!(
                "no fsync database at {}: give the server's --data-dir (or DATABASE_URL); \
                 {tool} does not create one",
                path.display()
            )));
        }
    }
    if !has_fsync_schema(&url).await? {
        return Ok(Some(format!(
            "the database {} has no fsync tables: is it the server's? {tool} does not \
             create them",
            redact_url(&url)
        )));
    }
    let files = storage.files_directory();
    if storage.blob_store.is_none() && !files.is_dir() {
        return Ok(Some(format!(
            "the blob directory {} does not exist: give the server's --data-dir (or \
             FILES_DIRECTORY); {tool} does not create one",
            files.display()
        )));
    }
    Ok(None)
}

/// `url` with the password of its user part (if any) replaced by `***`, for messages.
pub(crate) fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => {
            let user = &rest[..at];
            let user = user.split_once(':').map_or(user, |(u, _)| u);
            let masked = if rest[..at].contains(':') { ":***" } else { "" };
            format!("{scheme}://{user}{masked}{}", &rest[at..])
        }
        None => url.to_owned(),
    }
}

/// Opens the repository named by a database URL: `postgres://…` or `sqlite://PATH`.
pub async fn open(url: &str) -> Result<Arc<dyn MetaRepo>, DbError> {
    match parse_url(url)? {
        DbUrl::Postgres(url) => open_postgres(url).await,
        DbUrl::Sqlite(path) => open_sqlite(path).await,
    }
}

#[cfg(test)]
mod url_tests {
    use super::redact_url;

    #[test]
    fn redact_url_hides_only_the_password() {
        assert_eq!(
            redact_url("postgres://fsync:s3cret@db:5432/fsync"),
            "postgres://fsync:***@db:5432/fsync"
        );
        assert_eq!(
            redact_url("postgres://fsync@db/fsync"),
            "postgres://fsync@db/fsync"
        );
        assert_eq!(redact_url("postgres://db/x@y"), "postgres://db/x@y");
        assert_eq!(
            redact_url("sqlite://data/fsync.db"),
            "sqlite://data/fsync.db"
        );
    }
}
