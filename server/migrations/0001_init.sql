--! One schema for both databases: server/src/db/migrations.rs renders it per dialect,
--! dropping these `--!` lines and filling in the {{…}} slots. The rendered text of an
--! applied migration must never change (sqlx refuses a modified script; a test pins
--! each dialect's checksum): change the schema in a new migration file.
{{header}}
-- Identifiers are lowercase hex TEXT; times are BIGINT (seconds, or ns for mtime);
-- booleans are BIGINT 0/1 so one set of queries serves both databases.

CREATE TABLE users (
    id                  TEXT PRIMARY KEY,
    username            TEXT NOT NULL UNIQUE,
    email               TEXT NOT NULL,
    auth_hash           TEXT NOT NULL,
    kdf                 TEXT NOT NULL,
    wrapped_account_key TEXT NOT NULL,
    created_at          BIGINT NOT NULL
);

CREATE TABLE devices (
    id         TEXT PRIMARY KEY,
    user_id    TEXT NOT NULL REFERENCES users(id),
    name       TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    last_seen  BIGINT NOT NULL,
    revoked    BIGINT NOT NULL DEFAULT 0
);
CREATE INDEX devices_user ON devices(user_id);

CREATE TABLE refresh_tokens (
    token_hash TEXT PRIMARY KEY,
    user_id    TEXT NOT NULL REFERENCES users(id),
    device_id  TEXT NOT NULL REFERENCES devices(id),
    expires_at BIGINT NOT NULL,
    created_at BIGINT NOT NULL
);
CREATE INDEX refresh_tokens_device ON refresh_tokens(device_id);

CREATE TABLE namespaces (
    id         TEXT PRIMARY KEY,
    owner_id   TEXT NOT NULL REFERENCES users(id),
    last_seq   BIGINT NOT NULL DEFAULT 0,
    created_at BIGINT NOT NULL
);

CREATE TABLE namespace_members (
    namespace_id TEXT NOT NULL REFERENCES namespaces(id),
    user_id      TEXT NOT NULL REFERENCES users(id),
    role         TEXT NOT NULL,
    wrapped_key  TEXT NOT NULL,
    PRIMARY KEY (namespace_id, user_id)
);
CREATE INDEX namespace_members_user ON namespace_members(user_id);

CREATE TABLE files (
    id           TEXT PRIMARY KEY,
    namespace_id TEXT NOT NULL REFERENCES namespaces(id),
    path         {{path_type}} NOT NULL,
    head_version BIGINT NOT NULL,
    vv           TEXT NOT NULL,
    size         BIGINT NOT NULL,
    mtime        BIGINT NOT NULL,
    mode         BIGINT NOT NULL,
    checksum     TEXT,
    is_deleted   BIGINT NOT NULL DEFAULT 0,
    device_id    TEXT NOT NULL,
    seq          BIGINT NOT NULL
);
-- At most one live (not deleted) file per path; tombstones may share it. The
-- repository enforces this under the namespace lock every write takes.
CREATE INDEX files_path ON files(namespace_id, path);

CREATE TABLE file_versions (
    id         {{serial_key}},
    file_id    TEXT NOT NULL REFERENCES files(id),
    version    BIGINT NOT NULL,
    path       TEXT NOT NULL,
    vv         TEXT NOT NULL,
    size       BIGINT NOT NULL,
    mtime      BIGINT NOT NULL,
    mode       BIGINT NOT NULL,
    checksum   TEXT,
    is_deleted BIGINT NOT NULL DEFAULT 0,
    device_id  TEXT NOT NULL,
    manifest   TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    UNIQUE (file_id, version)
);

-- Every chunk a version references, once per version: GC's mark set and verify's list.
CREATE TABLE version_chunks (
    version_id   BIGINT NOT NULL REFERENCES file_versions(id) ON DELETE CASCADE,
    namespace_id TEXT NOT NULL,
    chunk_id     TEXT NOT NULL,
    PRIMARY KEY (version_id, chunk_id)
);
CREATE INDEX version_chunks_chunk ON version_chunks(namespace_id, chunk_id);

CREATE TABLE chunks (
    namespace_id TEXT NOT NULL REFERENCES namespaces(id),
    id           TEXT NOT NULL,
    stored_size  BIGINT NOT NULL,
    created_at   BIGINT NOT NULL,
    last_touched BIGINT NOT NULL,
    PRIMARY KEY (namespace_id, id)
);

-- The sync journal: one row per change, seq strictly increasing per namespace.
CREATE TABLE changes (
    namespace_id TEXT NOT NULL REFERENCES namespaces(id),
    seq          BIGINT NOT NULL,
    file_id      TEXT NOT NULL REFERENCES files(id),
    version      BIGINT NOT NULL,
    old_path     TEXT,
    PRIMARY KEY (namespace_id, seq)
);

CREATE TABLE idempotency (
    namespace_id TEXT NOT NULL,
    device_id    TEXT NOT NULL,
    key          TEXT NOT NULL,
    response     TEXT NOT NULL,
    created_at   BIGINT NOT NULL,
    PRIMARY KEY (namespace_id, device_id, key)
);
