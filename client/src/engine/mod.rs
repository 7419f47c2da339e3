//! The sync engine: one round = pull remote changes → scan and hash local changes →
//! plan (pure, [`crate::planner`]) → execute the [`Plan`] phase by phase: forgets,
//! remote deletes and renames, uploads, downloads, the other local operations. The
//! journal cursor advances only when every remote change of the round was applied, so
//! a failed round is simply repeated.
//!
//! The executor reaches the server only through [`Remote`] and the sync root only
//! through [`LocalFs`]: the daemon plugs in [`ApiClient`] and [`DiskFs`], the planner's
//! property test a repository and an in-memory folder.
//!
//! - `survey`: pull the journal, scan and hash the folder, plan;
//! - `remote_ops`: remote deletes and renames;
//! - `upload`: chunks the server lacks, then the commits and their answers;
//! - `download`: manifests, chunks (local reuse first), verified atomic writes;
//! - `local_ops`: local deletes, moves, adopts and restats;
//! - `lanes`: big transfers in the background while rounds go on (the daemon).

mod download;
mod lanes;
mod local_fs;
mod local_ops;
mod remote;
mod remote_ops;
mod survey;
mod upload;

pub use upload::QUOTA_PAUSE;

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::SystemTime;

use fsync_chunker::{Chunker, FileDigest};
use fsync_common::wire::FileMeta;
use fsync_common::{DeviceId, IdKey, NamespaceId, Seq, SyncPath};
use fsync_store::BlobCodec;

use crate::api::{ApiClient, ClientError};
use crate::planner::{LocalEntry, Plan};
use crate::session::Session;
use crate::state::{BaseEntry, State, StateError};

pub use local_fs::{DiskFs, Found, LocalFs, LocalReader, TempWriter};
pub use remote::Remote;

/// Chunks fetched per download window (bounds memory for large files).
const DOWNLOAD_WINDOW: usize = 128;
/// Most bytes of small files whose chunks are fetched in one request.
const PREFETCH_GROUP_BYTES: u64 = 16 * 1024 * 1024;
/// Bytes of blobs gathered before one batch upload. The server writes each batch as one
/// pack (two fsyncs, or one S3 PUT): 40 MiB keeps that under 64 per GiB uploaded
/// (`fsync-bench sync`, BENCHMARKS.md), within `MAX_BATCH_BODY`.
const UPLOAD_BATCH_BYTES: usize = 40 * 1024 * 1024;
/// Upload batch requests running at once while the next batch is encoded.
const UPLOAD_IN_FLIGHT: usize = 2;
/// Files at least this large are hashed with the chunker's parallel path.
const PARALLEL_HASH_BYTES: u64 = 16 * 1024 * 1024;
/// Chunks read, then encoded in parallel, at a time.
const ENCODE_GROUP: usize = 32;

/// Why a local operation waits for the next round.
const CHANGED_MEANWHILE: &str =
    "the local file changed since it was last synced; retried next round";

/// Why a sync round failed. The daemon retries with backoff.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SyncError {
    /// The sync root or its marker is missing (an unmounted disk?): nothing is sent.
    #[error("sync root {0} is missing or lost its .fsync marker (unmounted?); not syncing, no deletes sent")]
    RootMissing(PathBuf),
    /// The sync root cannot be synced as it is (a nested sync root).
    #[error(transparent)]
    Root(#[from] crate::root::RootError),
    /// The server could not be reached or refused.
    #[error(transparent)]
    Api(#[from] ClientError),
    /// Local state database.
    #[error(transparent)]
    State(#[from] StateError),
    /// Local file system.
    #[error("{what} {path}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// Where.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// Data from the server failed verification; nothing was written.
    #[error("refused data from the server for {path}: {reason}")]
    Verify {
        /// File.
        path: String,
        /// What failed.
        reason: String,
    },
}

/// The keys and identity the engine syncs one namespace with.
#[derive(Clone)]
pub struct SyncKeys {
    /// Namespace synced.
    pub ns: NamespaceId,
    /// This device.
    pub device: DeviceId,
    /// Blob codec (namespace keys).
    pub codec: Arc<BlobCodec>,
    /// Chunker (namespace id key).
    pub chunker: Arc<Chunker>,
    /// The namespace's id key (to check chunks read back from local files).
    pub id_key: IdKey,
}

impl std::fmt::Debug for SyncKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SyncKeys")
            .field("ns", &self.ns)
            .field("device", &self.device)
            .finish_non_exhaustive()
    }
}

/// What a round did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RoundReport {
    /// Files committed.
    pub uploaded: usize,
    /// Files written locally.
    pub downloaded: usize,
    /// Local files deleted because the server deleted them.
    pub deleted_local: usize,
    /// Deletes sent.
    pub deleted_remote: usize,
    /// Renames (either side).
    pub renamed: usize,
    /// Conflicts resolved by the server (a copy was made).
    pub conflicts: usize,
    /// Files left for a later round (still being written, changed during transfer, failed).
    pub deferred: Vec<(String, String)>,
    /// Uploads are paused: the server refused one for the account's quota (its reason).
    /// The files wait in `deferred`; downloads and deletes went on.
    pub over_quota: Option<String>,
}

impl RoundReport {
    /// True when the round changed nothing.
    pub fn is_idle(&self) -> bool {
        self.uploaded + self.downloaded + self.deleted_local + self.deleted_remote + self.renamed
            == 0
    }
}

/// A round between planning and executing: what was pulled, scanned and planned.
/// [`Engine::execute`] runs it; its `plan` may be reordered inside each phase first.
#[derive(Debug)]
pub struct Round {
    /// What to do.
    pub plan: Plan,
    since: Seq,
    cursor: Seq,
    base: BTreeMap<SyncPath, BaseEntry>,
    local: BTreeMap<SyncPath, LocalEntry>,
    remote: Vec<FileMeta>,
    digests: HashMap<SyncPath, FileDigest>,
    report: RoundReport,
}

impl Round {
    /// The synced base the plan was made from.
    pub fn base(&self) -> &BTreeMap<SyncPath, BaseEntry> {
        &self.base
    }

    /// The scanned local tree the plan was made from.
    pub fn local(&self) -> &BTreeMap<SyncPath, LocalEntry> {
        &self.local
    }

    /// The remote changes the plan was made from (latest state per file).
    pub fn remote(&self) -> &[FileMeta] {
        &self.remote
    }
}

/// What a transfer needs, apart from the engine (a background lane holds its own).
#[derive(Clone)]
pub(super) struct Transfer {
    fs: Arc<dyn LocalFs>,
    remote: Arc<dyn Remote>,
    keys: SyncKeys,
    quota: Arc<upload::QuotaGate>,
}

/// The engine of one sync root.
pub struct Engine {
    fs: Arc<dyn LocalFs>,
    remote: Arc<dyn Remote>,
    state: State,
    keys: SyncKeys,
    /// Temp files of an earlier, interrupted run were removed.
    cleaned: bool,
    /// Entries the last scan could not sync (logged once, not every round).
    reported_skips: std::collections::HashSet<PathBuf>,
    /// Big transfers in the background (off unless turned on).
    lanes: lanes::Lanes,
    /// Uploads paused after a refusal for the account's quota.
    quota: Arc<upload::QuotaGate>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("keys", &self.keys)
            .field("state", &self.state)
            .finish_non_exhaustive()
    }
}

fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

impl Engine {
    /// An engine syncing the folder `root` through the session's server; `marker` is
    /// the directory whose presence proves the root is the one that was synced
    /// (normally `<root>/.fsync`).
    pub fn new(root: PathBuf, marker: PathBuf, state: State, session: Session) -> Self {
        let keys = session.keys();
        let remote: Arc<ApiClient> = Arc::new(session.api);
        Self::with_parts(Arc::new(DiskFs::new(root, marker)), remote, state, keys)
    }

    /// An engine over any folder and server.
    pub fn with_parts(
        fs: Arc<dyn LocalFs>,
        remote: Arc<dyn Remote>,
        state: State,
        keys: SyncKeys,
    ) -> Self {
        // Test builds arm fault injection by environment: say so loudly at start.
        fsync_common::failpoint::init();
        Self {
            fs,
            remote,
            state,
            keys,
            cleaned: false,
            reported_skips: std::collections::HashSet::new(),
            lanes: lanes::Lanes::default(),
            quota: Arc::default(),
        }
    }

    /// The parts a transfer uses.
    fn transfer(&self) -> Transfer {
        Transfer {
            fs: self.fs.clone(),
            remote: self.remote.clone(),
            keys: self.keys.clone(),
            quota: self.quota.clone(),
        }
    }

    /// Moves big transfers (16 MiB or more to send or fetch for one file) to background
    /// tasks, so that later rounds sync small changes meanwhile; the returned `Notify`
    /// is woken whenever one finishes, and the round after commits or installs it. For
    /// a daemon: without this, a round transfers everything itself before it ends.
    pub fn transfer_in_background(&mut self) -> Arc<tokio::sync::Notify> {
        self.lanes.enabled = true;
        self.lanes.finished.clone()
    }

    /// The local state.
    pub fn state(&self) -> &State {
        &self.state
    }

    /// The namespace, device and keys synced with.
    pub fn keys(&self) -> &SyncKeys {
        &self.keys
    }

    /// One full sync round: [`Engine::prepare`], then [`Engine::execute`].
    pub async fn sync_once(&mut self) -> Result<RoundReport, SyncError> {
        let round = self.prepare().await?;
        self.execute(round).await
    }

    /// Pulls the remote changes, scans the folder and plans.
    pub async fn prepare(&mut self) -> Result<Round, SyncError> {
        if !self.fs.is_present() {
            return Err(SyncError::RootMissing(self.fs.root().to_owned()));
        }
        if !self.cleaned {
            self.fs.remove_stale_temp_files();
            self.cleaned = true;
        }
        self.survey().await
    }

    /// Executes a prepared round, phase by phase.
    pub async fn execute(&mut self, round: Round) -> Result<RoundReport, SyncError> {
        let Round {
            plan,
            since,
            cursor,
            base,
            local,
            remote: _,
            digests,
            mut report,
        } = round;
        let Plan {
            forget,
            remote,
            mut uploads,
            downloads,
            local: local_ops,
        } = plan;
        let cx = Context {
            base: &base,
            local: &local,
            digests: &digests,
        };
        self.lanes.retain(
            uploads.iter().map(|u| &u.path),
            downloads.iter().map(|m| &m.path),
        );
        for path in &forget {
            self.state.remove(path)?;
        }
        self.run_remote_ops(remote, cx, &mut uploads, &mut report)
            .await?;
        self.upload(uploads, cx, &mut report).await?;
        report.over_quota = self.quota.paused();
        let reuse = download::reuse_map(&base, &local);
        let mut remote_ok = true;
        // Empty folders come last, after the local deletes: a folder that a remote delete
        // emptied (and so removed here) and that the other side keeps comes back.
        let (folders, files): (Vec<_>, Vec<_>) = downloads
            .into_iter()
            .partition(|m| fsync_common::wire::is_folder_mode(m.mode));
        for (path, why) in self.download_many(files, &reuse, &mut report).await? {
            remote_ok = false;
            if let Some(why) = why {
                report.deferred.push((path, why));
            }
        }
        for op in local_ops {
            let path_for_log = local_ops::op_path(&op);
            match self.apply_local(op, cx, &reuse, &mut report).await {
                Ok(true) => {}
                Ok(false) => {
                    remote_ok = false;
                    report
                        .deferred
                        .push((path_for_log, CHANGED_MEANWHILE.into()));
                }
                Err(e) => {
                    remote_ok = false;
                    report.deferred.push((path_for_log, deferrable(e)?));
                }
            }
        }
        for (path, why) in self.download_many(folders, &reuse, &mut report).await? {
            remote_ok = false;
            if let Some(why) = why {
                report.deferred.push((path, why));
            }
        }
        if remote_ok && cursor > since {
            self.state.set_cursor(cursor)?;
        }
        self.state.set_last_sync(now_secs())?;
        Ok(report)
    }
}

/// What a round's execution reads: the base, the scan and the digests of the files
/// hashed this round.
#[derive(Clone, Copy)]
struct Context<'a> {
    base: &'a BTreeMap<SyncPath, BaseEntry>,
    local: &'a BTreeMap<SyncPath, LocalEntry>,
    digests: &'a HashMap<SyncPath, FileDigest>,
}

/// Sorts the error of one file's operation: `Ok(reason)` leaves that file for a later
/// round (the server refused it, or its data or local I/O failed); anything else
/// (network, local state) ends the round.
fn deferrable(e: SyncError) -> Result<String, SyncError> {
    match e {
        SyncError::Api(e) if !e.is_retryable() || matches!(e, ClientError::Api { .. }) => {
            Ok(e.to_string())
        }
        e @ (SyncError::Verify { .. } | SyncError::Io { .. }) => {
            tracing::warn!(error = %e, "not applied");
            Ok(e.to_string())
        }
        e => Err(e),
    }
}

/// A fresh idempotency key.
fn idem() -> String {
    hex::encode(rand::random::<[u8; 16]>())
}
