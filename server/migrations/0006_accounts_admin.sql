--! The operator's controls over accounts (`fsync-server admin`): a disabled account's
--! tokens and logins are refused, and a quota caps the stored bytes of the namespaces
--! an account owns (NULL: no cap). Rendered per dialect like 0001_init.sql; the
--! rendered text of an applied migration must never change.
-- fsync metadata schema, migration 6: disabled accounts and quotas.
ALTER TABLE users ADD COLUMN disabled BIGINT NOT NULL DEFAULT 0;
ALTER TABLE users ADD COLUMN quota_bytes BIGINT;
CREATE INDEX namespaces_owner ON namespaces(owner_id);
