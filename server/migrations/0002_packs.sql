--! Pack files (see fsync_store::pack). Rendered per dialect like 0001_init.sql; the
--! rendered text of an applied migration must never change.
-- fsync metadata schema, migration 2: pack files.

-- One row per pack file of a namespace, inserted in the transaction that records its
-- chunks. state: 'live', or 'retired' once a repack moved its live blobs elsewhere (the
-- file stays for the grace period, for readers that looked it up before the switch).
-- live_bytes: stored bytes of the chunk rows pointing into it, kept by the collector.
CREATE TABLE packs (
    namespace_id TEXT NOT NULL REFERENCES namespaces(id),
    id           TEXT NOT NULL,
    size         BIGINT NOT NULL,
    blobs        BIGINT NOT NULL,
    live_bytes   BIGINT NOT NULL,
    state        TEXT NOT NULL,
    created_at   BIGINT NOT NULL,
    retired_at   BIGINT,
    PRIMARY KEY (namespace_id, id)
);

-- Where a chunk's blob lies: in pack pack_id at pack_offset, stored_size bytes long.
-- NULL pack_id: a loose blob of a store written before packs (one file per chunk).
ALTER TABLE chunks ADD COLUMN pack_id TEXT;
ALTER TABLE chunks ADD COLUMN pack_offset BIGINT;
CREATE INDEX chunks_pack ON chunks(namespace_id, pack_id);
