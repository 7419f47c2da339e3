--! Manifest pages (fsync_common::pages, ARCHITECTURE §2). Rendered per dialect like
--! 0001_init.sql; the rendered text of an applied migration must never change.
-- fsync metadata schema, migration 5: manifest pages.

-- One row per page of a namespace: its encoding, entry count and plaintext size.
-- last_touched: when it was stored or last uploaded again (the sweep's grace period).
CREATE TABLE manifest_pages (
    namespace_id TEXT NOT NULL REFERENCES namespaces(id),
    id           TEXT NOT NULL,
    body         {{blob}} NOT NULL,
    entries      BIGINT NOT NULL,
    size         BIGINT NOT NULL,
    created_at   BIGINT NOT NULL,
    last_touched BIGINT NOT NULL,
    PRIMARY KEY (namespace_id, id)
);

-- Every chunk a page lists, once per page: the chunks' mark set (with version_chunks).
CREATE TABLE page_chunks (
    namespace_id TEXT NOT NULL,
    page_id      TEXT NOT NULL,
    chunk_id     TEXT NOT NULL,
    PRIMARY KEY (namespace_id, page_id, chunk_id)
);
CREATE INDEX page_chunks_chunk ON page_chunks(namespace_id, chunk_id);

-- Every page a version references, once per version: the pages' mark set.
CREATE TABLE version_pages (
    version_id   BIGINT NOT NULL REFERENCES file_versions(id) ON DELETE CASCADE,
    namespace_id TEXT NOT NULL,
    page_id      TEXT NOT NULL,
    PRIMARY KEY (version_id, page_id)
);
CREATE INDEX version_pages_page ON version_pages(namespace_id, page_id);

-- A version of more than one page keeps its page ids here (32 raw bytes each, in file
-- order) and an empty manifest; a version of one page or none keeps its chunk list
-- in manifest, as before.
ALTER TABLE file_versions ADD COLUMN pages {{blob}};
