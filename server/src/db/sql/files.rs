//! Files and their versions: writing a version, conflict copies, listing, manifests,
//! history and restore.

use async_trait::async_trait;
use std::fmt::Write as _;

use fsync_common::pages::Page;
use fsync_common::wire::{
    ChunkRef, CommitOutcome, CommitResponse, FileMeta, ListResponse, Manifest, RenameInfo,
    VersionInfo,
};
use fsync_common::{
    ChunkId, ContentHash, DeviceId, FileId, NamespaceId, PageId, SyncPath, VersionNo, VersionVector,
};
use sqlx::any::AnyRow;
use sqlx::{AssertSqlSafe, Row};
use std::collections::HashMap;

use super::chunks::unique_ids;
use super::pages;
use super::rows::{file_meta, i64_of, json, parse, prefix_range, to_json, FILE_COLS};
use super::tx::NsTx;
use super::{SqlRepo, Tx};
use crate::db::{Actor, DbError, FileRepo};
use crate::domain::resolve::conflict_path;

/// True when a live file is at `path`.
pub(super) async fn live_at(tx: &mut Tx, ns: NamespaceId, path: &str) -> Result<bool, DbError> {
    let row = sqlx::query(
        "SELECT 1 FROM files WHERE namespace_id = $1 AND path = $2 AND is_deleted = 0 LIMIT 1",
    )
    .bind(ns.to_hex())
    .bind(path)
    .fetch_optional(&mut **tx)
    .await?;
    Ok(row.is_some())
}

/// True when a live file is below the folder `dir`.
pub(super) async fn live_below(tx: &mut Tx, ns: NamespaceId, dir: &str) -> Result<bool, DbError> {
    let (lo, hi) = prefix_range(dir);
    let row = sqlx::query(
        "SELECT 1 FROM files WHERE namespace_id = $1 AND path >= $2 AND path < $3 AND is_deleted = 0 LIMIT 1",
    )
    .bind(ns.to_hex())
    .bind(lo)
    .bind(hi)
    .fetch_optional(&mut **tx)
    .await?;
    Ok(row.is_some())
}

/// A file's head row by id.
pub(super) async fn file_by_id(tx: &mut Tx, file: FileId) -> Result<Option<FileMeta>, DbError> {
    let sql = format!("SELECT {FILE_COLS} FROM files WHERE id = $1");
    let row = sqlx::query(AssertSqlSafe(sql))
        .bind(file.to_hex())
        .fetch_optional(&mut **tx)
        .await?;
    row.as_ref().map(file_meta).transpose()
}

/// What a new version records.
pub(super) struct VersionData<'a> {
    pub(super) path: &'a SyncPath,
    pub(super) vv: &'a VersionVector,
    pub(super) size: u64,
    pub(super) mtime: i64,
    pub(super) mode: u32,
    pub(super) checksum: Option<ContentHash>,
    pub(super) deleted: bool,
    pub(super) device: DeviceId,
    pub(super) chunks: &'a [ChunkRef],
}

/// Writes a new version of `file` (creating the file row when `prev` is `None`), its
/// chunk references and a journal entry. Returns the new head.
pub(super) async fn write_version(
    w: &mut NsTx,
    file: FileId,
    prev: Option<&FileMeta>,
    v: &VersionData<'_>,
) -> Result<FileMeta, DbError> {
    let ns = w.ns;
    let version = VersionNo(prev.map_or(0, |p| p.version.0) + 1);
    let seq = w.next_seq();
    w.writes += 1;
    let vv_json = to_json(v.vv);
    // A chunk list of more than one page is stored as pages (once per namespace) and
    // the version keeps their ids; a shorter one stays inline, as before pages.
    let paged = fsync_common::pages::paginate(v.chunks);
    let (manifest, page_list) = if paged.len() > 1 {
        let ids: Vec<PageId> = paged.iter().map(Page::id).collect();
        (String::new(), Some(fsync_common::pages::pack_ids(&ids)))
    } else {
        (to_json(&v.chunks), None)
    };
    let checksum = v.checksum.map(|c| c.to_hex());
    let deleted = i64::from(v.deleted);
    // One statement for a new file and a new head of an existing one (its namespace
    // never changes).
    sqlx::query(
        "INSERT INTO files (id, namespace_id, path, head_version, vv, size, mtime, mode, checksum, \
         is_deleted, device_id, seq) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12) \
         ON CONFLICT (id) DO UPDATE SET path = excluded.path, head_version = excluded.head_version, \
         vv = excluded.vv, size = excluded.size, mtime = excluded.mtime, mode = excluded.mode, \
         checksum = excluded.checksum, is_deleted = excluded.is_deleted, \
         device_id = excluded.device_id, seq = excluded.seq",
    )
    .bind(file.to_hex())
    .bind(ns.to_hex())
    .bind(v.path.as_str())
    .bind(i64_of(version.0))
    .bind(&vv_json)
    .bind(i64_of(v.size))
    .bind(v.mtime)
    .bind(i64::from(v.mode))
    .bind(checksum.clone())
    .bind(deleted)
    .bind(v.device.to_hex())
    .bind(i64_of(seq.0))
    .execute(&mut *w.tx)
    .await?;
    let row = sqlx::query(
        "INSERT INTO file_versions (file_id, version, path, vv, size, mtime, mode, checksum, is_deleted, \
         device_id, manifest, created_at, pages) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13) RETURNING id",
    )
    .bind(file.to_hex())
    .bind(i64_of(version.0))
    .bind(v.path.as_str())
    .bind(&vv_json)
    .bind(i64_of(v.size))
    .bind(v.mtime)
    .bind(i64::from(v.mode))
    .bind(checksum)
    .bind(deleted)
    .bind(v.device.to_hex())
    .bind(manifest)
    .bind(w.now)
    .bind(page_list)
    .fetch_one(&mut *w.tx)
    .await?;
    let version_id: i64 = row.try_get(0)?;
    if paged.len() > 1 {
        let mut seen = std::collections::HashSet::new();
        for p in paged {
            if seen.insert(p.id()) {
                w.page_refs.push((version_id, p.id()));
                w.pages.entry(p.id()).or_insert(p);
            }
        }
    } else {
        let ids: Vec<ChunkId> = v.chunks.iter().map(ChunkRef::id).collect();
        w.refs
            .extend(unique_ids(&ids).into_iter().map(|id| (version_id, id)));
    }
    w.journal(seq, file, version, None);
    let head = FileMeta {
        file_id: file,
        namespace: ns,
        path: v.path.clone(),
        version,
        vv: v.vv.clone(),
        size: v.size,
        mtime: v.mtime,
        mode: v.mode,
        content_hash: v.checksum,
        deleted: v.deleted,
        device: v.device,
        seq,
    };
    // The path's head is now this version: a live file is the only live one at its path
    // (the repository keeps it so), and a tombstone replaced the live head, if any.
    w.heads
        .insert(v.path.as_str().to_owned(), Some(head.clone()));
    Ok(head)
}

/// The columns of `file_versions` (aliased `v`) that [`version_manifest`] decodes.
const VERSION_COLS: &str = "v.vv AS v_vv, v.size AS v_size, v.mtime AS v_mtime, v.mode AS v_mode, \
     v.checksum AS v_checksum, v.is_deleted AS v_deleted, v.device_id AS v_device, \
     v.manifest AS v_manifest, v.pages AS v_pages";
/// File versions looked up per query of `manifests` (two parameters each).
const MANIFESTS_PER_QUERY: usize = 400;

static FILE_COLS_OF_F: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    FILE_COLS
        .split(", ")
        .map(|c| format!("f.{c}"))
        .collect::<Vec<_>>()
        .join(", ")
});

/// How a version keeps its chunk list.
#[derive(Clone)]
enum Stored {
    /// Inline (a list of one page or none).
    Chunks(Vec<ChunkRef>),
    /// As pages, in file order.
    Pages(Vec<PageId>),
}

/// The chunk list of a row with `manifest` and `pages` columns named `m` and `p`.
fn stored(row: &AnyRow, m: &str, p: &str) -> Result<Stored, DbError> {
    match row.try_get::<Option<Vec<u8>>, _>(p)? {
        Some(raw) => fsync_common::pages::unpack_ids(&raw)
            .map(Stored::Pages)
            .ok_or_else(|| DbError::Corrupt(format!("page list of {} bytes", raw.len()))),
        None => Ok(Stored::Chunks(json(
            &row.try_get::<String, _>(m)?,
            "manifest",
        )?)),
    }
}

/// The chunk lists of `stored`, reading the pages they name (in `ns`) in one go. A
/// page a stored version names and the namespace lacks is corruption under the
/// namespace lock (`locked`); read without it, the version may have been pruned and its
/// pages swept since its row was read, so it is reported gone (and `fsync-gc verify`
/// tells the two apart).
async fn resolve_stored(
    conn: &mut sqlx::AnyConnection,
    ns: NamespaceId,
    stored: Vec<Stored>,
    locked: bool,
) -> Result<Vec<Vec<ChunkRef>>, DbError> {
    let lists: Vec<&[PageId]> = stored
        .iter()
        .filter_map(|s| match s {
            Stored::Pages(p) => Some(p.as_slice()),
            Stored::Chunks(_) => None,
        })
        .collect();
    let mut resolved = match pages::resolve(conn, ns, &lists).await {
        Err(DbError::MissingPages(ids)) if locked => {
            return Err(DbError::Corrupt(format!(
                "a version names {} manifest pages that are not stored (first {})",
                ids.len(),
                ids[0]
            )))
        }
        Err(DbError::MissingPages(ids)) => {
            tracing::warn!(namespace = %ns, first = %ids[0], missing = ids.len(),
                "a version's manifest pages are gone: pruned meanwhile, or damage (fsync-gc verify)");
            return Err(DbError::NotFound("file version"));
        }
        r => r?.into_iter(),
    };
    Ok(stored
        .into_iter()
        .map(|s| match s {
            Stored::Chunks(c) => c,
            Stored::Pages(_) => resolved.next().expect("one list per paged version"),
        })
        .collect())
}

/// A version's manifest from a row of [`VERSION_COLS`] (its chunks still to resolve):
/// the head's identity and path, the version's own data.
fn version_manifest(
    row: &AnyRow,
    head: FileMeta,
    v: VersionNo,
) -> Result<(FileMeta, Stored), DbError> {
    let checksum: Option<String> = row.try_get("v_checksum")?;
    let meta = FileMeta {
        version: v,
        vv: json(&row.try_get::<String, _>("v_vv")?, "version vector")?,
        size: row.try_get::<i64, _>("v_size")? as u64,
        mtime: row.try_get("v_mtime")?,
        mode: row.try_get::<i64, _>("v_mode")? as u32,
        content_hash: checksum
            .map(|c| parse::<ContentHash>(&c, "checksum"))
            .transpose()?,
        deleted: row.try_get::<i64, _>("v_deleted")? != 0,
        device: parse(&row.try_get::<String, _>("v_device")?, "device id")?,
        ..head
    };
    Ok((meta, stored(row, "v_manifest", "v_pages")?))
}

/// The chunk list of one version of a file in `ns`.
pub(super) async fn manifest_of(
    tx: &mut Tx,
    ns: NamespaceId,
    file: FileId,
    version: VersionNo,
) -> Result<Vec<ChunkRef>, DbError> {
    let row = sqlx::query(
        "SELECT manifest, pages FROM file_versions WHERE file_id = $1 AND version = $2",
    )
    .bind(file.to_hex())
    .bind(i64_of(version.0))
    .fetch_optional(&mut **tx)
    .await?
    .ok_or(DbError::NotFound("version"))?;
    let s = stored(&row, "manifest", "pages")?;
    let mut lists = resolve_stored(tx, ns, vec![s], true).await?;
    Ok(lists.pop().expect("one list"))
}

/// Creates a conflict copy: a new file holding an existing manifest (no re-upload).
pub(super) async fn conflict_copy(
    w: &mut NsTx,
    original: &SyncPath,
    mtime: i64,
    device: DeviceId,
    data: (u64, u32, Option<ContentHash>),
    chunks: &[ChunkRef],
) -> Result<FileMeta, DbError> {
    let mut attempt = 0;
    let path = loop {
        let candidate = conflict_path(original, mtime, device, attempt);
        if w.head(candidate.as_str()).await?.is_none() {
            break candidate;
        }
        attempt += 1;
    };
    let vv = VersionVector::new().incremented(device);
    let (size, mode, checksum) = data;
    write_version(
        w,
        FileId::from_bytes(rand::random()),
        None,
        &VersionData {
            path: &path,
            vv: &vv,
            size,
            mtime,
            mode,
            checksum,
            deleted: false,
            device,
            chunks,
        },
    )
    .await
}

/// The largest version-vector counter a client may send. Far above any real history
/// (one version per nanosecond for a century stays below it), and low enough that the

#[async_trait]
impl FileRepo for SqlRepo {
    async fn list_files(
        &self,
        ns: NamespaceId,
        prefix: Option<&str>,
        include_deleted: bool,
        after: Option<&str>,
        limit: u32,
    ) -> Result<ListResponse, DbError> {
        let mut sql = format!("SELECT {FILE_COLS} FROM files WHERE namespace_id = $1");
        let mut binds: Vec<String> = vec![ns.to_hex()];
        if let Some(p) = prefix.filter(|p| !p.is_empty()) {
            let (lo, hi) = prefix_range(p);
            let _ = write!(
                sql,
                " AND (path = ${} OR (path >= ${} AND path < ${}))",
                binds.len() + 1,
                binds.len() + 2,
                binds.len() + 3
            );
            binds.extend([p.to_owned(), lo, hi]);
        }
        if !include_deleted {
            sql.push_str(" AND is_deleted = 0");
        }
        if let Some(a) = after {
            // The cursor is `path` or `path U+0001 file id` (paths cannot hold controls).
            let (path, id) = a.split_once('\u{1}').unwrap_or((a, ""));
            let _ = write!(
                sql,
                " AND (path > ${} OR (path = ${} AND id > ${}))",
                binds.len() + 1,
                binds.len() + 1,
                binds.len() + 2
            );
            binds.extend([
                path.to_owned(),
                if id.is_empty() {
                    "~".repeat(33)
                } else {
                    id.to_owned()
                },
            ]);
        }
        let _ = write!(sql, " ORDER BY path, id LIMIT {}", u64::from(limit) + 1);
        let mut q = sqlx::query(AssertSqlSafe(sql));
        for b in &binds {
            q = q.bind(b.as_str());
        }
        let rows = q.fetch_all(&self.pool).await?;
        let mut files = rows.iter().map(file_meta).collect::<Result<Vec<_>, _>>()?;
        let next = if files.len() > limit as usize {
            files.truncate(limit as usize);
            files
                .last()
                .map(|f| format!("{}\u{1}{}", f.path, f.file_id))
        } else {
            None
        };
        Ok(ListResponse { files, next })
    }

    async fn file_namespace(&self, file: FileId) -> Result<Option<NamespaceId>, DbError> {
        let row = sqlx::query("SELECT namespace_id FROM files WHERE id = $1")
            .bind(file.to_hex())
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| parse(&r.try_get::<String, _>(0)?, "namespace id"))
            .transpose()
    }

    async fn manifest(
        &self,
        file: FileId,
        version: Option<VersionNo>,
    ) -> Result<Manifest, DbError> {
        let sql = format!("SELECT {FILE_COLS} FROM files WHERE id = $1");
        let row = sqlx::query(AssertSqlSafe(sql))
            .bind(file.to_hex())
            .fetch_optional(&self.pool)
            .await?
            .ok_or(DbError::NotFound("file"))?;
        let head = file_meta(&row)?;
        let v = version.unwrap_or(head.version);
        let row = sqlx::query(AssertSqlSafe(format!(
            "SELECT {VERSION_COLS} FROM file_versions v WHERE v.file_id = $1 AND v.version = $2"
        )))
        .bind(file.to_hex())
        .bind(i64_of(v.0))
        .fetch_optional(&self.pool)
        .await?
        .ok_or(DbError::NotFound("version"))?;
        let ns = head.namespace;
        let (meta, s) = version_manifest(&row, head, v)?;
        let chunks = resolve_stored(&mut *self.pool.acquire().await?, ns, vec![s], false)
            .await?
            .pop()
            .expect("one list");
        Ok(Manifest {
            meta,
            chunks,
            pages: None,
        })
    }

    async fn manifests(
        &self,
        ns: NamespaceId,
        wanted: &[(FileId, VersionNo)],
        as_pages: bool,
    ) -> Result<Vec<Manifest>, DbError> {
        let mut found: HashMap<(FileId, VersionNo), (FileMeta, Stored)> = HashMap::new();
        for part in wanted.chunks(MANIFESTS_PER_QUERY) {
            let pairs = (0..part.len())
                .map(|i| format!("(${}, ${})", 2 + 2 * i, 3 + 2 * i))
                .collect::<Vec<_>>()
                .join(",");
            let sql = format!(
                "SELECT {}, {VERSION_COLS}, v.version AS asked FROM file_versions v \
                 JOIN files f ON f.id = v.file_id \
                 WHERE f.namespace_id = $1 AND (v.file_id, v.version) IN (VALUES {pairs})",
                FILE_COLS_OF_F.as_str()
            );
            let mut q = sqlx::query(AssertSqlSafe(sql)).bind(ns.to_hex());
            for (file, version) in part {
                q = q.bind(file.to_hex()).bind(i64_of(version.0));
            }
            for row in q.fetch_all(&self.pool).await? {
                let head = file_meta(&row)?;
                let v = VersionNo(row.try_get::<i64, _>("asked")? as u64);
                found.insert((head.file_id, v), version_manifest(&row, head, v)?);
            }
        }
        // In the order asked; one that is missing (or in another namespace) fails all.
        let (metas, stored): (Vec<FileMeta>, Vec<Stored>) = wanted
            .iter()
            .map(|k| {
                found
                    .get(k)
                    .cloned()
                    .ok_or(DbError::NotFound("file version"))
            })
            .collect::<Result<Vec<_>, _>>()?
            .into_iter()
            .unzip();
        if as_pages {
            return Ok(metas
                .into_iter()
                .zip(stored)
                .map(|(meta, s)| match s {
                    Stored::Chunks(chunks) => Manifest {
                        meta,
                        chunks,
                        pages: None,
                    },
                    Stored::Pages(p) => Manifest {
                        meta,
                        chunks: Vec::new(),
                        pages: Some(p),
                    },
                })
                .collect());
        }
        let chunks = resolve_stored(&mut *self.pool.acquire().await?, ns, stored, false).await?;
        Ok(metas
            .into_iter()
            .zip(chunks)
            .map(|(meta, chunks)| Manifest {
                meta,
                chunks,
                pages: None,
            })
            .collect())
    }

    async fn renames(&self, file: FileId) -> Result<Vec<RenameInfo>, DbError> {
        let row = sqlx::query("SELECT path FROM files WHERE id = $1")
            .bind(file.to_hex())
            .fetch_optional(&self.pool)
            .await?
            .ok_or(DbError::NotFound("file"))?;
        let current: SyncPath = parse(&row.try_get::<String, _>(0)?, "path")?;
        let rows = sqlx::query(
            "SELECT version, old_path, created_at, device_id FROM changes \
             WHERE file_id = $1 AND old_path IS NOT NULL ORDER BY seq",
        )
        .bind(file.to_hex())
        .fetch_all(&self.pool)
        .await?;
        let mut out: Vec<RenameInfo> = Vec::with_capacity(rows.len());
        for r in &rows {
            let from: SyncPath = parse(&r.try_get::<String, _>(1)?, "path")?;
            // Each rename ends where the next one starts; the last at the file's path.
            if let Some(prev) = out.last_mut() {
                prev.to = from.clone();
            }
            out.push(RenameInfo {
                after_version: VersionNo(r.try_get::<i64, _>(0)? as u64),
                from,
                to: current.clone(),
                created_at: r.try_get(2)?,
                device: r
                    .try_get::<Option<String>, _>(3)?
                    .map(|d| parse(&d, "device id"))
                    .transpose()?,
            });
        }
        Ok(out)
    }

    async fn versions(&self, file: FileId) -> Result<Vec<VersionInfo>, DbError> {
        let rows = sqlx::query(
            "SELECT version, vv, path, size, mtime, device_id, created_at, is_deleted, checksum FROM file_versions \
             WHERE file_id = $1 ORDER BY version DESC",
        )
        .bind(file.to_hex())
        .fetch_all(&self.pool)
        .await?;
        if rows.is_empty() {
            return Err(DbError::NotFound("file"));
        }
        rows.iter()
            .map(|r| {
                let checksum: Option<String> = r.try_get(8)?;
                Ok(VersionInfo {
                    version: VersionNo(r.try_get::<i64, _>(0)? as u64),
                    vv: json(&r.try_get::<String, _>(1)?, "version vector")?,
                    path: parse(&r.try_get::<String, _>(2)?, "path")?,
                    size: r.try_get::<i64, _>(3)? as u64,
                    mtime: r.try_get(4)?,
                    device: parse(&r.try_get::<String, _>(5)?, "device id")?,
                    created_at: r.try_get(6)?,
                    deleted: r.try_get::<i64, _>(7)? != 0,
                    content_hash: checksum
                        .map(|c| parse::<ContentHash>(&c, "checksum"))
                        .transpose()?,
                })
            })
            .collect()
    }

    async fn restore(
        &self,
        actor: Actor,
        file: FileId,
        version: VersionNo,
        now: i64,
    ) -> Result<CommitResponse, DbError> {
        let ns = self
            .file_namespace(file)
            .await?
            .ok_or(DbError::NotFound("file"))?;
        let old = self.manifest(file, Some(version)).await?;
        let mut w = NsTx::begin(self, ns, actor.device, now).await?;
        let head = file_by_id(&mut w.tx, file)
            .await?
            .ok_or(DbError::NotFound("file"))?;
        // Read the chunk list again under the lock: garbage collection may have pruned
        // the version (and swept its chunks) since `old` was read.
        let chunks = manifest_of(&mut w.tx, ns, file, version).await?;
        if head.deleted && live_at(&mut w.tx, ns, head.path.as_str()).await? {
            return Err(DbError::PathInUse(head.path));
        }
        let vv = head.vv.incremented(actor.device);
        let v = VersionData {
            path: &head.path,
            vv: &vv,
            size: old.meta.size,
            mtime: old.meta.mtime,
            mode: old.meta.mode,
            checksum: old.meta.content_hash,
            deleted: old.meta.deleted,
            device: actor.device,
            chunks: &chunks,
        };
        let new = write_version(&mut w, file, Some(&head), &v).await?;
        w.finish().await?;
        Ok(CommitResponse {
            outcome: CommitOutcome::FastForward,
            head: new,
            conflict_copy: None,
        })
    }
}
