//! Request and response bodies of the HTTP and WebSocket API (JSON).
//!
//! Binary keys and wrapped keys travel as lowercase hex. Times are nanoseconds since the
//! Unix epoch (`i64`); server-side timestamps (`created_at`) are seconds.

use serde::{Deserialize, Serialize};

use crate::error::ErrorBody;
use crate::ids::{
    ChunkId, ContentHash, DeviceId, FileId, NamespaceId, PageId, Seq, UserId, VersionNo,
};
use crate::path::SyncPath;
use crate::vv::VersionVector;

// ---------------------------------------------------------------- auth

/// Key-derivation parameters of an account (`GET /api/v1/auth/params`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct KdfParams {
    /// Always `"argon2id"`.
    pub kdf: String,
    /// Memory cost in KiB.
    pub m_kib: u32,
    /// Iterations.
    pub t: u32,
    /// Parallelism.
    pub p: u32,
    /// Salt, hex (16 bytes).
    pub salt: String,
}

/// `POST /api/v1/auth/register`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct RegisterRequest {
    /// Unique username (3–64 characters of `[A-Za-z0-9_.-]`).
    pub username: String,
    /// Contact email; optional, as in the seed's schema (absent, `null` or `""`: none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    /// The client-derived `auth_key`, hex. Never the user's password.
    pub password: String,
    /// Parameters the client used to derive the master key.
    pub kdf: KdfParams,
    /// Account key wrapped with `kek`, hex.
    pub wrapped_account_key: String,
    /// Key of the first namespace wrapped with the account key, hex.
    pub wrapped_namespace_key: String,
}

/// Response of register.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RegisterResponse {
    /// The new user.
    pub user_id: UserId,
    /// The user's first namespace.
    pub namespace_id: NamespaceId,
}

/// `POST /api/v1/auth/login`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct LoginRequest {
    /// Username.
    pub username: String,
    /// The client-derived `auth_key`, hex.
    pub password: String,
    /// A name for this device, shown in the device list.
    #[serde(default)]
    pub device_name: Option<String>,
    /// The device id this client got at an earlier login, to keep using it.
    #[serde(default)]
    pub device_id: Option<DeviceId>,
}

/// A namespace the user may access, with its key wrapped by the account key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct NamespaceGrant {
    /// Namespace.
    pub id: NamespaceId,
    /// Role: `owner`, `editor` or `viewer`.
    pub role: String,
    /// Namespace key wrapped with the account key, hex.
    pub wrapped_key: String,
}

/// Response of login.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct LoginResponse {
    /// Bearer access token (JWT, HS256).
    pub access_token: String,
    /// Always `"bearer"`.
    pub token_type: String,
    /// Seconds until the access token expires.
    pub expires_in: u64,
    /// Opaque refresh token, bound to this device; rotates on every use.
    pub refresh_token: String,
    /// This device.
    pub device_id: DeviceId,
    /// The user.
    pub user_id: UserId,
    /// Account key wrapped with `kek`, hex.
    pub wrapped_account_key: String,
    /// Accessible namespaces.
    pub namespaces: Vec<NamespaceGrant>,
}

/// `POST /api/v1/auth/refresh` and `POST /api/v1/auth/logout`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct RefreshRequest {
    /// The current refresh token.
    pub refresh_token: String,
}

/// Response of refresh.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct TokenResponse {
    /// New access token.
    pub access_token: String,
    /// Always `"bearer"`.
    pub token_type: String,
    /// Seconds until it expires.
    pub expires_in: u64,
    /// New refresh token (the old one is now invalid).
    pub refresh_token: String,
}

/// One device of the user (`GET /api/v1/devices`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct DeviceInfo {
    /// Device.
    pub id: DeviceId,
    /// Name given at login.
    pub name: String,
    /// Registration time, seconds since the epoch.
    pub created_at: i64,
    /// Last authenticated request, seconds since the epoch.
    pub last_seen: i64,
    /// Revoked devices cannot refresh or use tokens.
    pub revoked: bool,
}

/// The caller's storage use (`GET /api/v1/usage`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct UsageResponse {
    /// Stored bytes (compressed, encrypted blobs) of the namespaces the user owns: what
    /// the quota counts.
    pub used_bytes: u64,
    /// The quota set by the server's operator; `null` for none. Uploads that would pass
    /// it are refused with 507 `quota_exceeded`.
    pub quota_bytes: Option<u64>,
}

// ---------------------------------------------------------------- chunks

/// `POST /api/v1/chunks/missing`, and the body of a batch download.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct ChunkIdsRequest {
    /// Namespace the chunks belong to.
    pub namespace: NamespaceId,
    /// Chunk ids.
    pub ids: Vec<ChunkId>,
}

/// Response of `chunks/missing`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct MissingResponse {
    /// The subset of the asked ids the server does not hold.
    pub missing: Vec<ChunkId>,
}

/// Response of a chunk upload (single or batch).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct StoredResponse {
    /// Chunks newly stored.
    pub stored: u32,
    /// Chunks that were already present.
    pub existing: u32,
}

// ---------------------------------------------------------------- files

/// One entry of a manifest: a chunk and its plaintext length. On the wire `[id, len]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkRef(pub ChunkId, pub u32);

impl ChunkRef {
    /// The chunk id.
    pub fn id(&self) -> ChunkId {
        self.0
    }
    /// The plaintext length.
    pub fn len(&self) -> u32 {
        self.1
    }
    /// True for a zero-length chunk (never produced by the chunker).
    pub fn is_empty(&self) -> bool {
        self.1 == 0
    }
}

/// `POST /api/v1/files/upload`: commit a manifest whose chunks are stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct CommitRequest {
    /// Namespace.
    pub namespace: NamespaceId,
    /// Path of the file.
    pub path: SyncPath,
    /// The version vector this client last synced for the path (empty for a new file).
    pub base: VersionVector,
    /// Ordered chunks. Empty when `pages` names them instead.
    pub chunks: Vec<ChunkRef>,
    /// The chunk list as manifest pages (`crate::pages`), in file order, instead of
    /// `chunks`: each page uploaded before (`pages/batch`) or kept by an earlier version.
    /// A commit naming a page the server lacks is answered 409 `missing_pages`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pages: Vec<PageId>,
    /// Plaintext size; must equal the sum of chunk lengths.
    pub size: u64,
    /// Modification time, nanoseconds since the epoch.
    pub mtime: i64,
    /// Unix mode bits: the permission part, plus [`FOLDER_MODE`] for an empty folder.
    pub mode: u32,
    /// Keyed content hash of the whole plaintext.
    pub content_hash: ContentHash,
    /// Client-chosen key; a retry with the same key returns the first answer.
    pub idempotency_key: String,
}

/// Metadata of a file's head (or of a version).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct FileMeta {
    /// Stable file id.
    pub file_id: FileId,
    /// Namespace.
    pub namespace: NamespaceId,
    /// Current path.
    pub path: SyncPath,
    /// Version number of the head.
    pub version: VersionNo,
    /// Version vector of the head.
    pub vv: VersionVector,
    /// Plaintext size.
    pub size: u64,
    /// Modification time, ns since the epoch.
    pub mtime: i64,
    /// Unix mode bits.
    pub mode: u32,
    /// Keyed content hash (absent for a tombstone).
    pub content_hash: Option<ContentHash>,
    /// True for a tombstone.
    pub deleted: bool,
    /// Device that made this version.
    pub device: DeviceId,
    /// Journal position of the last change to this file.
    pub seq: Seq,
}

/// The mode bit (`S_IFDIR`) of an entry that is an empty folder, not a file: its size
/// is 0 and it has no chunks. Folders that hold files need no entry of their own (a
/// file's path implies them); an empty one is synced, renamed and deleted like a file.
pub const FOLDER_MODE: u32 = 0o040_000;

/// Whether `mode` is that of an empty-folder entry ([`FOLDER_MODE`] plus permissions).
pub fn is_folder_mode(mode: u32) -> bool {
    mode & !0o7777 == FOLDER_MODE
}

/// What the server did with a commit (ARCHITECTURE §5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum CommitOutcome {
    /// New file, or the head was an ancestor of `base`: the commit is the new head.
    FastForward,
    /// The same content was already the head; nothing changed.
    Unchanged,
    /// A retry of an applied commit; the first answer is returned again.
    AlreadyApplied,
    /// Concurrent with the head and won; the old head was kept as a conflict copy.
    ConflictWon,
    /// Concurrent with the head and lost; the commit was kept as a conflict copy.
    ConflictLost,
}

/// Response of a commit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CommitResponse {
    /// What happened.
    pub outcome: CommitOutcome,
    /// The head of the path after the commit.
    pub head: FileMeta,
    /// The conflict copy created, if any.
    pub conflict_copy: Option<FileMeta>,
}

/// `GET /api/v1/files/list` query.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema, utoipa::IntoParams))]
#[cfg_attr(feature = "openapi", into_params(parameter_in = Query))]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    /// Namespace (defaults to the user's first namespace).
    pub namespace: Option<NamespaceId>,
    /// Only paths equal to or below this directory.
    pub prefix: Option<String>,
    /// Include tombstones.
    #[serde(default)]
    pub include_deleted: bool,
    /// Return paths strictly after this one (pagination).
    pub after: Option<String>,
    /// Page size (default [`crate::limits::DEFAULT_PAGE`]).
    pub limit: Option<u32>,
}

/// Response of list.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ListResponse {
    /// Files in path order.
    pub files: Vec<FileMeta>,
    /// Pass as `after` to get the next page; absent on the last page.
    pub next: Option<String>,
}

/// `GET /api/v1/files/download/{file_id}`: the head's manifest (the client decrypts).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Manifest {
    /// Metadata.
    pub meta: FileMeta,
    /// Ordered chunks (empty for a tombstone or an empty file, and when `pages` is
    /// given instead).
    pub chunks: Vec<ChunkRef>,
    /// The version's manifest pages, when the request asked for pages and the version
    /// has more than one: the client fetches those it lacks (`pages/fetch`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pages: Option<Vec<PageId>>,
}

/// `POST /api/v1/files/manifests`: many manifests in one request (downloads of many
/// small files).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct ManifestsRequest {
    /// Namespace of every file.
    pub namespace: NamespaceId,
    /// Files and the versions wanted (at most [`crate::limits::MAX_EVENTS_PER_BATCH`]).
    pub files: Vec<(FileId, VersionNo)>,
    /// Answer a version of more than one page with its page ids (`Manifest::pages`)
    /// rather than its whole chunk list.
    #[serde(default)]
    pub pages: bool,
}

/// `POST /api/v1/pages/missing` and `POST /api/v1/pages/fetch`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct PageIdsRequest {
    /// Namespace of the pages.
    pub namespace: NamespaceId,
    /// Page ids.
    pub ids: Vec<PageId>,
}

/// Response of `pages/missing`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct MissingPagesResponse {
    /// The subset of the asked ids the server does not hold.
    pub missing: Vec<PageId>,
}

/// One rename of a file (`GET /api/v1/files/{file_id}/renames`, oldest first).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RenameInfo {
    /// The file's version when it was renamed: the rename came after it.
    pub after_version: VersionNo,
    /// Path before.
    pub from: SyncPath,
    /// Path after.
    pub to: SyncPath,
    /// Server time of the rename, seconds since the epoch (absent for renames recorded
    /// before the server kept it).
    pub created_at: Option<i64>,
    /// Device that renamed it (absent likewise).
    pub device: Option<DeviceId>,
}

/// One version in a file's history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct VersionInfo {
    /// Version number.
    pub version: VersionNo,
    /// Its version vector.
    pub vv: VersionVector,
    /// Path at the time of the version.
    pub path: SyncPath,
    /// Plaintext size.
    pub size: u64,
    /// mtime, ns.
    pub mtime: i64,
    /// Device that made it.
    pub device: DeviceId,
    /// Server time of the commit, seconds since the epoch.
    pub created_at: i64,
    /// True for a tombstone.
    pub deleted: bool,
    /// Keyed content hash.
    pub content_hash: Option<ContentHash>,
}

/// `POST /api/v1/files/{file_id}/restore`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct RestoreRequest {
    /// Version to make the head again (as a new version).
    pub version: VersionNo,
}

/// `POST /api/v1/files/delete`: tombstone a path.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct DeleteRequest {
    /// Namespace.
    pub namespace: NamespaceId,
    /// Path to delete.
    pub path: SyncPath,
    /// The version vector the deleting client saw: the delete applies only to it.
    pub base: VersionVector,
    /// Idempotency key.
    pub idempotency_key: String,
}

/// `POST /api/v1/files/rename`: move a file or a whole folder, no data.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct RenameRequest {
    /// Namespace.
    pub namespace: NamespaceId,
    /// Old path (a file, or a folder: every file below moves).
    pub from: SyncPath,
    /// New path.
    pub to: SyncPath,
    /// Idempotency key.
    pub idempotency_key: String,
}

/// Response of delete and rename.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct OpResponse {
    /// Files affected, with their new metadata.
    pub files: Vec<FileMeta>,
    /// What the delete did (`None` for rename).
    pub outcome: Option<DeleteOutcome>,
}

/// What a delete did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum DeleteOutcome {
    /// The head was the version the client saw: it is now a tombstone.
    Deleted,
    /// The file changed since the client saw it: the modification wins, nothing deleted.
    KeptModified,
    /// Already deleted.
    AlreadyDeleted,
}

// ---------------------------------------------------------------- sync

/// One event of `POST /api/v1/sync/event`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum SyncEvent {
    /// A new file.
    Create(CommitRequest),
    /// A changed file.
    Modify(CommitRequest),
    /// A deleted file.
    Delete(DeleteRequest),
    /// A renamed file or folder.
    Rename(RenameRequest),
}

/// `POST /api/v1/sync/event` body.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct SyncEventBatch {
    /// Events, applied in order.
    pub events: Vec<SyncEvent>,
}

/// Result of one event.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum SyncEventResult {
    /// A create or modify was committed.
    Committed(Box<CommitResponse>),
    /// A delete or rename was applied.
    Applied(OpResponse),
    /// The event failed; the others are unaffected.
    Failed(ErrorBody),
}

/// Response of `sync/event`: one result per event, in order.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SyncEventResponse {
    /// Results.
    pub results: Vec<SyncEventResult>,
}

/// `GET /api/v1/sync/changes` query.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema, utoipa::IntoParams))]
#[cfg_attr(feature = "openapi", into_params(parameter_in = Query))]
#[serde(deny_unknown_fields)]
pub struct ChangesQuery {
    /// Namespace (defaults to the user's first namespace).
    pub namespace: Option<NamespaceId>,
    /// Cursor: changes after it (0 or absent: from the beginning).
    pub since: Option<u64>,
    /// Page size.
    pub limit: Option<u32>,
}

/// One journal entry: the state of a file after a change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Change {
    /// Journal position.
    pub seq: Seq,
    /// The file's metadata after the change (a tombstone for a delete).
    pub file: FileMeta,
    /// For a rename, the old path.
    pub old_path: Option<SyncPath>,
}

/// Response of `sync/changes`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ChangesResponse {
    /// Changes in journal order. A file may appear once per change.
    pub changes: Vec<Change>,
    /// Cursor to pass as `since` next time.
    pub cursor: Seq,
    /// True when more changes follow.
    pub has_more: bool,
}

/// Messages the server pushes on `/api/v1/ws`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum PushMessage {
    /// The namespace's journal reached `seq`.
    Changed {
        /// Namespace.
        namespace: NamespaceId,
        /// Latest journal position.
        seq: Seq,
    },
    /// Sent periodically; clients may ignore it.
    Heartbeat,
}

/// First message a client may send on the WebSocket to authenticate
/// (when it cannot set an `Authorization` header).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ClientMessage {
    /// Authenticate with an access token.
    Auth {
        /// The JWT.
        token: String,
    },
}

/// `GET /health`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct HealthResponse {
    /// `ok` or `degraded`.
    pub status: String,
    /// Metadata database state.
    pub database: String,
    /// Blob store state.
    pub blob_store: String,
    /// Server version.
    pub version: String,
    /// SHA-256 fingerprint of the server's TLS certificate (`AB:CD:…`), when it
    /// serves TLS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_fingerprint: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunk_ref_is_a_pair_on_the_wire() {
        let r = ChunkRef(ChunkId::from_bytes([7; 32]), 42);
        let s = serde_json::to_string(&r).unwrap();
        assert_eq!(s, format!("[\"{}\",42]", "07".repeat(32)));
    }

    #[test]
    fn sync_events_are_tagged() {
        let ev = SyncEvent::Rename(RenameRequest {
            namespace: NamespaceId::from_bytes([1; 16]),
            from: SyncPath::new("a").unwrap(),
            to: SyncPath::new("b").unwrap(),
            idempotency_key: "k".into(),
        });
        let v: serde_json::Value = serde_json::to_value(&ev).unwrap();
        assert_eq!(v["type"], "rename");
        let back: SyncEvent = serde_json::from_value(v).unwrap();
        assert_eq!(back, ev);
    }

    #[test]
    fn commit_refuses_bad_paths_and_unknown_fields() {
        let good = serde_json::json!({
            "namespace": "01".repeat(16), "path": "a.txt", "base": {}, "chunks": [],
            "size": 0, "mtime": 0, "mode": 420, "content_hash": "00".repeat(32),
            "idempotency_key": "x"
        });
        assert!(serde_json::from_value::<CommitRequest>(good.clone()).is_ok());
        let mut bad = good.clone();
        bad["path"] = "../../etc/passwd".into();
        assert!(serde_json::from_value::<CommitRequest>(bad).is_err());
        let mut extra = good;
        extra["surprise"] = 1.into();
        assert!(serde_json::from_value::<CommitRequest>(extra).is_err());
    }

    #[test]
    fn push_message_shape() {
        let m = PushMessage::Changed {
            namespace: NamespaceId::from_bytes([2; 16]),
            seq: Seq(9),
        };
        let v = serde_json::to_value(&m).unwrap();
        assert_eq!(v["type"], "changed");
        assert_eq!(v["seq"], 9);
    }
}
