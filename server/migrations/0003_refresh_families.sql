--! Refresh-token families, for reuse detection (RFC 9700 §4.14.2). Rendered per
--! dialect like 0001_init.sql; the rendered text of an applied migration must never
--! change.
-- fsync metadata schema, migration 3: refresh-token families.

-- family: the login every token of a chain of rotations descends from (the first
-- token's hash). rotated_at: when the token was exchanged for successor_hash; NULL
-- while it is its family's live token. A rotated token presented again is a reuse
-- (one copy was stolen): its whole family is revoked, unless it is the same rotation
-- retried within a few seconds (an answer lost in flight). Rotated rows stay until
-- they expire, so that a reuse is recognised.
ALTER TABLE refresh_tokens ADD COLUMN family TEXT NOT NULL DEFAULT '';
ALTER TABLE refresh_tokens ADD COLUMN rotated_at BIGINT;
ALTER TABLE refresh_tokens ADD COLUMN successor_hash TEXT;
UPDATE refresh_tokens SET family = token_hash WHERE family = '';
CREATE INDEX refresh_tokens_family ON refresh_tokens(family);
