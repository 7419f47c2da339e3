--! Renames in a file's history: journal rows get the time and the device that made
--! them (older rows keep NULL), and renames an index of their own, so that a file's
--! renames are found without reading the journal. Rendered per dialect like
--! 0001_init.sql; the rendered text of an applied migration must never change.
-- fsync metadata schema, migration 4: who renamed a file, and when.
ALTER TABLE changes ADD COLUMN created_at BIGINT;
ALTER TABLE changes ADD COLUMN device_id TEXT;
CREATE INDEX changes_renames ON changes(file_id, seq) WHERE old_path IS NOT NULL;
