//! Local state in SQLite (WAL) under the state dir: the last synced base of every path
//! (the merge base), the journal cursor, and the device id. Never synced.

use std::collections::BTreeMap;
use std::path::Path;

use fsync_common::wire::{ChunkRef, FileMeta, KdfParams, NamespaceGrant};
use fsync_common::{
    ContentHash, DeviceId, FileId, NamespaceId, Seq, SyncPath, VersionNo, VersionVector,
};
use rusqlite::{params, Connection, OptionalExtension};

use crate::scan::LocalFile;

/// Errors of the local state database.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StateError {
    /// SQLite failed.
    #[error("local state database: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// A stored value does not decode (corruption or a newer format).
    #[error("local state is corrupt: {0}")]
    Corrupt(String),
}

/// What this device last agreed with the server about one path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BaseEntry {
    /// Path.
    pub path: SyncPath,
    /// Server file id.
    pub file_id: FileId,
    /// Server version number.
    pub version: VersionNo,
    /// Version vector of that version: the `base` of the next commit.
    pub vv: VersionVector,
    /// Keyed content hash.
    pub content_hash: ContentHash,
    /// Size.
    pub size: u64,
    /// mtime (ns) of the local file when it was last synced.
    pub mtime: i64,
    /// Unix mode bits.
    pub mode: u32,
    /// Inode of the local file when it was last synced (0 when unknown).
    pub inode: u64,
    /// Birth time (ns) of the local file when it was last synced (0 when unknown).
    pub born: i64,
    /// The chunks (for reuse when downloading other files).
    pub chunks: Vec<ChunkRef>,
}

impl BaseEntry {
    /// A base from server metadata and the stat of the local file as written.
    pub fn from_meta(meta: &FileMeta, chunks: Vec<ChunkRef>, stat: &LocalFile) -> Option<Self> {
        Some(Self {
            path: meta.path.clone(),
            file_id: meta.file_id,
            version: meta.version,
            vv: meta.vv.clone(),
            content_hash: meta.content_hash?,
            size: meta.size,
            mtime: stat.mtime,
            mode: meta.mode,
            inode: stat.inode,
            born: stat.born,
            chunks,
        })
    }

    /// Takes the local file's stat as the synced one (the content is unchanged).
    pub fn restat(&mut self, stat: &LocalFile) {
        self.size = stat.size;
        self.mtime = stat.mtime;
        self.inode = stat.inode;
        self.born = stat.born;
    }

    /// True when the local file's stat is the one recorded at the last sync, so its
    /// content can be taken as unchanged without reading it. A base without a birth
    /// time (written before they were recorded) matches on the rest: an upgrade must
    /// not re-read every file of the folder.
    pub fn same_stat(&self, f: &LocalFile) -> bool {
        self.size == f.size
            && self.mtime == f.mtime
            && self.inode == f.inode
            && (self.born == f.born || self.born == 0)
            && self.mode == f.mode
    }

    /// True when the base records exactly this stat (else a restat stores it).
    pub fn records_stat(&self, f: &LocalFile) -> bool {
        self.same_stat(f) && self.born == f.born
    }

    /// True when `f` is the very file last synced here, maybe moved and edited since:
    /// the same inode, and the same birth time where the file system records one.
    /// Where it does not, only an untouched mtime vouches for it: a freed inode goes
    /// to the next file created, and taking that file for a move of the deleted one
    /// would turn a delete and a create into a rename (and lose the deleted file's
    /// place in the trash).
    pub fn same_file(&self, f: &LocalFile) -> bool {
        if self.inode == 0 || self.inode != f.inode {
            return false;
        }
        if self.born != 0 && f.born != 0 {
            self.born == f.born
        } else {
            self.mtime == f.mtime
        }
    }
}

/// What the latest login returned that is needed to start again from a stored refresh
/// token: only wrapped keys and public parameters, never a key in the clear.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LoginRecord {
    /// The account it belongs to.
    pub username: String,
    /// The account's key-derivation parameters.
    pub kdf: KdfParams,
    /// Account key wrapped with the password-derived key-encryption key, hex.
    pub wrapped_account_key: String,
    /// Namespaces the account could access, with their wrapped keys.
    pub namespaces: Vec<NamespaceGrant>,
}

/// The local state database.
#[derive(Debug)]
pub struct State {
    conn: Connection,
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS base (
    path TEXT PRIMARY KEY,
    file_id TEXT NOT NULL,
    version INTEGER NOT NULL,
    vv TEXT NOT NULL,
    content_hash TEXT NOT NULL,
    size INTEGER NOT NULL,
    mtime INTEGER NOT NULL,
    mode INTEGER NOT NULL,
    inode INTEGER NOT NULL,
    chunks TEXT NOT NULL,
    born INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS base_file ON base(file_id);
";

fn corrupt(what: &str, e: impl std::fmt::Display) -> StateError {
    StateError::Corrupt(format!("{what}: {e}"))
}

impl State {
    /// Opens (creating) the database at `path`.
    pub fn open(path: &Path) -> Result<Self, StateError> {
        let conn = Connection::open(path)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.busy_timeout(std::time::Duration::from_secs(10))?;
        conn.execute_batch(SCHEMA)?;
        // Databases written before birth times were recorded: their rows read as
        // "unknown" (0) until the next sync records them (see `same_stat`).
        let has_born = conn
            .prepare("SELECT 1 FROM pragma_table_info('base') WHERE name = 'born'")?
            .exists([])?;
        if !has_born {
            conn.execute_batch("ALTER TABLE base ADD COLUMN born INTEGER NOT NULL DEFAULT 0")?;
        }
        Ok(Self { conn })
    }

    fn get_meta(&self, key: &str) -> Result<Option<String>, StateError> {
        Ok(self
            .conn
            .query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get(0))
            .optional()?)
    }

    fn set_meta(&self, key: &str, value: &str) -> Result<(), StateError> {
        self.conn.execute(
            "INSERT INTO meta (key, value) VALUES (?1, ?2) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            params![key, value],
        )?;
        Ok(())
    }

    /// What a login returned that a later start needs to resume without logging in
    /// again: the account's KDF parameters and its wrapped keys (useless without the
    /// password). `None` until the first login.
    pub fn login_record(&self) -> Result<Option<LoginRecord>, StateError> {
        self.get_meta("login")?
            .map(|s| serde_json::from_str(&s).map_err(|e| corrupt("login record", e)))
            .transpose()
    }

    /// Stores the [`LoginRecord`] of the latest login.
    pub fn set_login_record(&self, r: &LoginRecord) -> Result<(), StateError> {
        let json = serde_json::to_string(r).map_err(|e| corrupt("login record", e))?;
        self.set_meta("login", &json)
    }

    /// The device id this client got at its first login.
    pub fn device_id(&self) -> Result<Option<DeviceId>, StateError> {
        self.get_meta("device_id")?
            .map(|s| DeviceId::from_hex(&s).map_err(|e| corrupt("device id", e)))
            .transpose()
    }

    /// Remembers the device id.
    pub fn set_device_id(&self, d: DeviceId) -> Result<(), StateError> {
        self.set_meta("device_id", &d.to_hex())
    }

    /// The namespace this folder syncs with.
    pub fn namespace(&self) -> Result<Option<NamespaceId>, StateError> {
        self.get_meta("namespace")?
            .map(|s| NamespaceId::from_hex(&s).map_err(|e| corrupt("namespace", e)))
            .transpose()
    }

    /// Records the namespace (and refuses to switch: one folder, one namespace).
    pub fn set_namespace(&self, ns: NamespaceId) -> Result<(), StateError> {
        self.set_meta("namespace", &ns.to_hex())
    }

    /// The journal cursor: every change up to it has been applied.
    pub fn cursor(&self) -> Result<Seq, StateError> {
        Ok(Seq(self
            .get_meta("cursor")?
            .map(|s| s.parse::<u64>().map_err(|e| corrupt("cursor", e)))
            .transpose()?
            .unwrap_or(0)))
    }

    /// Advances the cursor.
    pub fn set_cursor(&self, seq: Seq) -> Result<(), StateError> {
        self.set_meta("cursor", &seq.0.to_string())
    }

    /// Seconds since the epoch of the last completed sync round.
    pub fn last_sync(&self) -> Result<Option<i64>, StateError> {
        self.get_meta("last_sync")?
            .map(|s| s.parse::<i64>().map_err(|e| corrupt("last_sync", e)))
            .transpose()
    }

    /// Records a completed sync round.
    pub fn set_last_sync(&self, secs: i64) -> Result<(), StateError> {
        self.set_meta("last_sync", &secs.to_string())
    }

    /// The base entry of one path.
    pub fn get(&self, path: &SyncPath) -> Result<Option<BaseEntry>, StateError> {
        Ok(self
            .query("WHERE path = ?1", [path.as_str()])?
            .into_values()
            .next())
    }

    /// Every base entry, by path.
    pub fn all(&self) -> Result<BTreeMap<SyncPath, BaseEntry>, StateError> {
        self.query("", [])
    }

    fn query<P: rusqlite::Params>(
        &self,
        filter: &str,
        params: P,
    ) -> Result<BTreeMap<SyncPath, BaseEntry>, StateError> {
        let mut stmt = self.conn.prepare_cached(&format!(
            "SELECT path, file_id, version, vv, content_hash, size, mtime, mode, inode, chunks, born FROM base {filter}"
        ))?;
        let rows = stmt.query_map(params, |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, i64>(2)?,
                r.get::<_, String>(3)?,
                r.get::<_, String>(4)?,
                r.get::<_, i64>(5)?,
                r.get::<_, i64>(6)?,
                r.get::<_, i64>(7)?,
                r.get::<_, i64>(8)?,
                r.get::<_, String>(9)?,
                r.get::<_, i64>(10)?,
            ))
        })?;
        let mut out = BTreeMap::new();
        for row in rows {
            let (path, file_id, version, vv, hash, size, mtime, mode, inode, chunks, born) = row?;
            let e = BaseEntry {
                path: SyncPath::new(&path).map_err(|e| corrupt("path", e))?,
                file_id: FileId::from_hex(&file_id).map_err(|e| corrupt("file id", e))?,
                version: VersionNo(version as u64),
                vv: serde_json::from_str(&vv).map_err(|e| corrupt("vv", e))?,
                content_hash: ContentHash::from_hex(&hash).map_err(|e| corrupt("hash", e))?,
                size: size as u64,
                mtime,
                mode: mode as u32,
                inode: inode as u64,
                born,
                chunks: serde_json::from_str(&chunks).map_err(|e| corrupt("chunks", e))?,
            };
            out.insert(e.path.clone(), e);
        }
        Ok(out)
    }

    /// Stores (replaces) the base of a path.
    pub fn put(&self, e: &BaseEntry) -> Result<(), StateError> {
        self.conn.execute(
            "INSERT INTO base (path, file_id, version, vv, content_hash, size, mtime, mode, inode, chunks, born)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)
             ON CONFLICT(path) DO UPDATE SET file_id = excluded.file_id, version = excluded.version,
               vv = excluded.vv, content_hash = excluded.content_hash, size = excluded.size,
               mtime = excluded.mtime, mode = excluded.mode, inode = excluded.inode, chunks = excluded.chunks,
               born = excluded.born",
            params![
                e.path.as_str(),
                e.file_id.to_hex(),
                e.version.0 as i64,
                serde_json::to_string(&e.vv).expect("vv serializes"),
                e.content_hash.to_hex(),
                e.size as i64,
                e.mtime,
                i64::from(e.mode),
                e.inode as i64,
                serde_json::to_string(&e.chunks).expect("chunks serialize"),
                e.born,
            ],
        )?;
        Ok(())
    }

    /// Forgets the base of a path.
    pub fn remove(&self, path: &SyncPath) -> Result<(), StateError> {
        self.conn
            .execute("DELETE FROM base WHERE path = ?1", [path.as_str()])?;
        Ok(())
    }

    /// Runs `f` in one transaction (many small updates at once).
    pub fn batch<T>(
        &mut self,
        f: impl FnOnce(&State) -> Result<T, StateError>,
    ) -> Result<T, StateError> {
        self.conn.execute_batch("BEGIN")?;
        match f(self) {
            Ok(v) => {
                self.conn.execute_batch("COMMIT")?;
                Ok(v)
            }
            Err(e) => {
                let _ = self.conn.execute_batch("ROLLBACK");
                Err(e)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_round_trip_and_meta() {
        let dir = tempfile::tempdir().unwrap();
        let mut st = State::open(&dir.path().join("s.db")).unwrap();
        assert_eq!(st.cursor().unwrap(), Seq(0));
        st.set_cursor(Seq(42)).unwrap();
        assert_eq!(st.cursor().unwrap(), Seq(42));
        let d = DeviceId::from_bytes([3; 8]);
        st.set_device_id(d).unwrap();
        assert_eq!(st.device_id().unwrap(), Some(d));
        let e = BaseEntry {
            path: SyncPath::new("a/b.txt").unwrap(),
            file_id: FileId::from_bytes([1; 16]),
            version: VersionNo(3),
            vv: VersionVector::new().incremented(d),
            content_hash: ContentHash::from_bytes([9; 32]),
            size: 10,
            mtime: 123,
            mode: 0o644,
            inode: 77,
            born: 1_700_000_000_123_456_789,
            chunks: vec![ChunkRef(fsync_common::ChunkId::from_bytes([5; 32]), 10)],
        };
        st.batch(|s| s.put(&e)).unwrap();
        let all = st.all().unwrap();
        assert_eq!(all.get(&e.path), Some(&e));
        st.remove(&e.path).unwrap();
        assert!(st.all().unwrap().is_empty());
        drop(st);
        let st = State::open(&dir.path().join("s.db")).unwrap();
        assert_eq!(st.cursor().unwrap(), Seq(42), "state survives a restart");
    }

    #[test]
    fn a_database_from_before_birth_times_opens_with_them_unknown() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("s.db");
        let conn = Connection::open(&db).unwrap();
        conn.execute_batch(
            "CREATE TABLE base (path TEXT PRIMARY KEY, file_id TEXT NOT NULL,
               version INTEGER NOT NULL, vv TEXT NOT NULL, content_hash TEXT NOT NULL,
               size INTEGER NOT NULL, mtime INTEGER NOT NULL, mode INTEGER NOT NULL,
               inode INTEGER NOT NULL, chunks TEXT NOT NULL);",
        )
        .unwrap();
        conn.execute(
            "INSERT INTO base VALUES ('a.txt', ?1, 1, '{}', ?2, 3, 4, 420, 77, '[]')",
            params![
                FileId::from_bytes([1; 16]).to_hex(),
                ContentHash::from_bytes([9; 32]).to_hex()
            ],
        )
        .unwrap();
        drop(conn);
        let st = State::open(&db).unwrap();
        let all = st.all().unwrap();
        let e = &all[&SyncPath::new("a.txt").unwrap()];
        assert_eq!((e.inode, e.born, e.size), (77, 0, 3));
        // Its stat still vouches for the content (an upgrade re-reads no file), but
        // is not taken as recorded until the birth time is stored.
        let stat = LocalFile {
            path: e.path.clone(),
            size: 3,
            mtime: 4,
            inode: 77,
            born: 12,
            mode: 0o644,
        };
        assert!(e.same_stat(&stat) && !e.records_stat(&stat));
        // And it writes birth times from then on, also after another open.
        let mut e = e.clone();
        e.born = 12;
        st.put(&e).unwrap();
        drop(st);
        let st = State::open(&db).unwrap();
        assert_eq!(st.all().unwrap()[&e.path].born, 12);
    }
}
