--! Manifest pages (fsync_common::pages, ARCHITECTURE §2). Rendered per dialect like
--! 0001_init.sql; the rendered text of an applied migration must never change.
-- fsync metadata schema, migration 5: manifest pages.

-- One row per page of a namespace: its encoding, entry count and plaintext size.
-- last_touched: when it was stored or last uploaded again (the sweep's grace period).
-- Page ids are 32 raw bytes in all three tables.
CREATE TABLE manifest_pages (
    namespace_id TEXT NOT NULL REFERENCES namespaces(id),
    id           {{blob}} NOT NULL,
    body         {{blob}} NOT NULL,
    entries      BIGINT NOT NULL,
    size         BIGINT NOT NULL,
    created_at   BIGINT NOT NULL,
    last_touched BIGINT NOT NULL,
    PRIMARY KEY (namespace_id, id)
);

-- Every chunk a page lists, once per page: the chunks' mark set (with version_chunks).
-- Keyed by chunk, the question GC asks; a dead page's rows are deleted by the keys its
-- body lists. No other index: this table grows by a page's entries per edit.
CREATE TABLE page_chunks (
    namespace_id TEXT NOT NULL,
    chunk_id     TEXT NOT NULL,
    page_id      {{blob}} NOT NULL,
    PRIMARY KEY (namespace_id, chunk_id, page_id)
){{without_rowid}};

-- Every page a version names, once per version: the pages' mark set. Keyed by page,
-- the question GC asks; a pruned version's rows are deleted by the keys its page list
-- gives (file_versions.pages), so no index on the version and no cascade.
CREATE TABLE version_pages (
    namespace_id TEXT NOT NULL,
    page_id      {{blob}} NOT NULL,
    version_id   BIGINT NOT NULL,
    PRIMARY KEY (namespace_id, page_id, version_id)
){{without_rowid}};

-- A version of more than one page keeps its page ids here (32 raw bytes each, in file
-- order) and an empty manifest; a version of one page or none keeps its chunk list
-- in manifest, as before.
ALTER TABLE file_versions ADD COLUMN pages {{blob}};
