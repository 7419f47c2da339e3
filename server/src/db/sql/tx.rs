//! [`NsTx`], the write transaction on one namespace and its caches.

use std::collections::{HashMap, HashSet};

use fsync_common::pages::Page;
use fsync_common::wire::FileMeta;
use fsync_common::{ChunkId, DeviceId, FileId, NamespaceId, PageId, Seq, SyncPath, VersionNo};
use sqlx::{AssertSqlSafe, Row};

use super::rows::{file_meta, i64_of, json, multi_row_values, placeholders, to_json, FILE_COLS};
use super::{pages, SqlRepo, Tx, IN_BATCH};
use crate::db::DbError;

/// A write transaction on one namespace, holding the namespace lock from its first
/// statement to its commit. Journal positions are allocated here (no one else can while
/// the lock is held); rows that nothing inside the transaction reads back — journal
/// entries, chunk references, idempotency answers — are buffered and inserted by
/// [`NsTx::finish`] with a few multi-row statements, still inside the transaction and
/// under the lock. Heads and idempotency answers read once are cached, and kept up to
/// date by the writes made through this value.
pub(super) struct NsTx {
    pub(super) tx: Tx,
    _guard: Option<tokio::sync::OwnedMutexGuard<()>>,
    pub(super) ns: NamespaceId,
    /// The device whose idempotency keys `answers` holds.
    device: DeviceId,
    pub(super) now: i64,
    /// `namespaces.last_seq` when the transaction began, and the last one allocated.
    seq_start: u64,
    seq: u64,
    journal: Vec<(Seq, FileId, VersionNo, Option<String>)>,
    /// (`file_versions.id`, chunk): references to insert.
    pub(super) refs: Vec<(i64, ChunkId)>,
    /// Pages of the versions written, to store where the namespace lacks them, and
    /// (`file_versions.id`, page) references to insert.
    pub(super) pages: HashMap<PageId, Page>,
    pub(super) page_refs: Vec<(i64, PageId)>,
    /// Idempotency answers by key (`None`: known absent), as stored JSON.
    answers: HashMap<String, Option<String>>,
    new_answers: Vec<(String, String)>,
    /// `head_at` by path, for paths read or written in this transaction.
    pub(super) heads: HashMap<String, Option<FileMeta>>,
    /// Counts writes, so that a caller can tell whether a failed step wrote anything.
    pub(super) writes: u64,
}

impl NsTx {
    /// Begins the transaction and takes the namespace lock.
    pub(super) async fn begin(
        repo: &SqlRepo,
        ns: NamespaceId,
        device: DeviceId,
        now: i64,
    ) -> Result<Self, DbError> {
        let guard = repo.write_guard().await;
        let mut tx = repo.pool.begin().await?;
        let row = sqlx::query(
            "UPDATE namespaces SET last_seq = last_seq WHERE id = $1 RETURNING last_seq",
        )
        .bind(ns.to_hex())
        .fetch_optional(&mut *tx)
        .await?
        .ok_or(DbError::NotFound("namespace"))?;
        let seq = row.try_get::<i64, _>(0)? as u64;
        Ok(Self {
            tx,
            _guard: guard,
            ns,
            device,
            now,
            seq_start: seq,
            seq,
            journal: Vec::new(),
            refs: Vec::new(),
            pages: HashMap::new(),
            page_refs: Vec::new(),
            answers: HashMap::new(),
            new_answers: Vec::new(),
            heads: HashMap::new(),
            writes: 0,
        })
    }

    pub(super) fn next_seq(&mut self) -> Seq {
        self.seq += 1;
        Seq(self.seq)
    }

    pub(super) fn journal(
        &mut self,
        seq: Seq,
        file: FileId,
        version: VersionNo,
        old: Option<&SyncPath>,
    ) {
        self.journal
            .push((seq, file, version, old.map(|p| p.as_str().to_owned())));
    }

    /// The live file at `path`, or else its most recent tombstone.
    pub(super) async fn head(&mut self, path: &str) -> Result<Option<FileMeta>, DbError> {
        if let Some(h) = self.heads.get(path) {
            return Ok(h.clone());
        }
        let h = head_at(&mut self.tx, self.ns, path).await?;
        self.heads.insert(path.to_owned(), h.clone());
        Ok(h)
    }

    /// Reads the heads of many paths at once (a few queries instead of one per path).
    pub(super) async fn prefetch_heads(&mut self, paths: &[&str]) -> Result<(), DbError> {
        let mut seen = HashSet::new();
        let wanted: Vec<&str> = paths
            .iter()
            .copied()
            .filter(|p| !self.heads.contains_key(*p) && seen.insert(*p))
            .collect();
        for batch in wanted.chunks(IN_BATCH) {
            let sql = format!(
                "SELECT {FILE_COLS} FROM files WHERE namespace_id = $1 AND path IN ({})",
                placeholders(2, batch.len())
            );
            // Planned for its values each time (not prepared once): on PostgreSQL a cached
            // generic plan of these IN lists can filter the whole namespace row by row.
            let mut q = sqlx::query(AssertSqlSafe(sql))
                .persistent(false)
                .bind(self.ns.to_hex());
            for p in batch {
                q = q.bind(*p);
            }
            let mut best: HashMap<String, FileMeta> = HashMap::new();
            for row in q.fetch_all(&mut *self.tx).await? {
                let m = file_meta(&row)?;
                // `head_at`'s order: live first, then the newest.
                let better = best.get(m.path.as_str()).is_none_or(|b| {
                    (m.deleted, std::cmp::Reverse(m.seq)) < (b.deleted, std::cmp::Reverse(b.seq))
                });
                if better {
                    best.insert(m.path.as_str().to_owned(), m);
                }
            }
            for p in batch {
                let h = best.remove(*p);
                self.heads.insert((*p).to_owned(), h);
            }
        }
        Ok(())
    }

    /// The answer remembered for an idempotency key of this transaction's device.
    pub(super) async fn answer<T: serde::de::DeserializeOwned>(
        &mut self,
        key: &str,
    ) -> Result<Option<T>, DbError> {
        if !self.answers.contains_key(key) {
            self.prefetch_answers(&[key]).await?;
        }
        match self.answers.get(key) {
            Some(Some(s)) => json(s, "idempotency response").map(Some),
            _ => Ok(None),
        }
    }

    /// Reads the answers of many idempotency keys at once.
    pub(super) async fn prefetch_answers(&mut self, keys: &[&str]) -> Result<(), DbError> {
        let mut seen = HashSet::new();
        let wanted: Vec<&str> = keys
            .iter()
            .copied()
            .filter(|k| !self.answers.contains_key(*k) && seen.insert(*k))
            .collect();
        for batch in wanted.chunks(IN_BATCH) {
            let sql = format!(
                "SELECT key, response FROM idempotency WHERE namespace_id = $1 AND device_id = $2 \
                 AND key IN ({})",
                placeholders(3, batch.len())
            );
            // Not prepared: see `prefetch_heads`.
            let mut q = sqlx::query(AssertSqlSafe(sql))
                .persistent(false)
                .bind(self.ns.to_hex())
                .bind(self.device.to_hex());
            for k in batch {
                q = q.bind(*k);
            }
            for row in q.fetch_all(&mut *self.tx).await? {
                self.answers
                    .insert(row.try_get(0)?, Some(row.try_get::<String, _>(1)?));
            }
            for k in batch {
                self.answers.entry((*k).to_owned()).or_insert(None);
            }
        }
        Ok(())
    }

    /// Records the answer to an idempotency key.
    pub(super) fn remember<T: serde::Serialize>(&mut self, key: &str, answer: &T) {
        let s = to_json(answer);
        self.answers.insert(key.to_owned(), Some(s.clone()));
        self.new_answers.push((key.to_owned(), s));
        self.writes += 1;
    }

    /// Inserts the buffered rows, advances the namespace's journal position and commits.
    pub(super) async fn finish(mut self) -> Result<(), DbError> {
        if self.writes == 0 {
            // Nothing to keep (every op was a retry answered from the idempotency table,
            // or was refused): end the transaction without a commit's flush.
            self.tx.rollback().await?;
            return Ok(());
        }
        let pages: Vec<&Page> = self.pages.values().collect();
        pages::insert_absent(&mut self.tx, self.ns, &pages, self.now).await?;
        pages::insert_version_refs(&mut self.tx, self.ns, &self.page_refs).await?;
        let ns = self.ns.to_hex();
        for batch in self.refs.chunks(IN_BATCH) {
            let values = multi_row_values("(?, $1, ?)", 1, batch.len());
            let sql = format!(
                "INSERT INTO version_chunks (version_id, namespace_id, chunk_id) VALUES {values}"
            );
            let mut q = sqlx::query(AssertSqlSafe(sql)).bind(&ns);
            for (version_id, id) in batch {
                q = q.bind(*version_id).bind(id.to_hex());
            }
            q.execute(&mut *self.tx).await?;
        }
        for batch in self.journal.chunks(IN_BATCH / 2) {
            let values = multi_row_values("($1, ?, ?, ?, ?, $2, $3)", 3, batch.len());
            let sql = format!(
                "INSERT INTO changes (namespace_id, seq, file_id, version, old_path, created_at, device_id) VALUES {values}"
            );
            let mut q = sqlx::query(AssertSqlSafe(sql))
                .bind(&ns)
                .bind(self.now)
                .bind(self.device.to_hex());
            for (seq, file, version, old) in batch {
                q = q
                    .bind(i64_of(seq.0))
                    .bind(file.to_hex())
                    .bind(i64_of(version.0))
                    .bind(old.clone());
            }
            q.execute(&mut *self.tx).await?;
        }
        for batch in self.new_answers.chunks(IN_BATCH / 2) {
            let values = multi_row_values("($1, $2, ?, ?, $3)", 3, batch.len());
            let sql = format!(
                "INSERT INTO idempotency (namespace_id, device_id, key, response, created_at) VALUES {values}"
            );
            let mut q = sqlx::query(AssertSqlSafe(sql))
                .bind(&ns)
                .bind(self.device.to_hex())
                .bind(self.now);
            for (key, answer) in batch {
                q = q.bind(key.as_str()).bind(answer.as_str());
            }
            q.execute(&mut *self.tx).await?;
        }
        if self.seq != self.seq_start {
            sqlx::query("UPDATE namespaces SET last_seq = $2 WHERE id = $1")
                .bind(&ns)
                .bind(i64_of(self.seq))
                .execute(&mut *self.tx)
                .await?;
        }
        self.tx.commit().await?;
        Ok(())
    }
}

/// The live file at `path`, or else its most recent tombstone.
pub(super) async fn head_at(
    tx: &mut Tx,
    ns: NamespaceId,
    path: &str,
) -> Result<Option<FileMeta>, DbError> {
    let sql = format!(
        "SELECT {FILE_COLS} FROM files WHERE namespace_id = $1 AND path = $2 \
         ORDER BY is_deleted ASC, seq DESC LIMIT 1"
    );
    let row = sqlx::query(AssertSqlSafe(sql))
        .bind(ns.to_hex())
        .bind(path)
        .fetch_optional(&mut **tx)
        .await?;
    row.as_ref().map(file_meta).transpose()
}
