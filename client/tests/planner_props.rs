//! Planner and executor property test (issue #7 item 1, issue #12).
//!
//! Two devices and a server. Each case is a random schedule of user edits on either
//! device (write, delete, rename, chmod, touch over a small path alphabet, so that
//! collisions, renames and same-name creates are common; contents from a small shared
//! alphabet or fresh) and sync rounds, followed by alternating sync rounds until neither
//! device has anything left to do. A sync round is the real engine's
//! (`fsync_client::Engine::prepare`, then `execute`): the real planner, the real
//! executor with its real state database, chunker and blob codec. Before a plan is
//! executed, the operations inside each of its phases are shuffled with a
//! proptest-chosen seed (seed 0 keeps the planner's order).
//!
//! The engine's two seams are filled by this test: its [`Remote`] is `fsync_server`'s
//! metadata repository on SQLite, called directly rather than through HTTP (the pure
//! rules in `server/src/domain/resolve.rs` are crate-private; the repository is the
//! narrowest public door to them, and it brings the real journal, conflict-copy names
//! and path rules), with blobs in a map; its [`LocalFs`] is an in-memory folder. Both
//! keep the ledger the invariants are checked against; neither decides anything the
//! engine would. A content is a token whose bytes are the token's digits and a few
//! dots: one chunk per file.
//!
//! Checked, besides "nothing panics" and "the planner is a pure function":
//! - I1: once the edits stop, both folders equal the server's live tree (paths,
//!   contents, modes) within [`ROUND_LIMIT`] busy rounds per device, and a further
//!   round on each plans nothing;
//! - I2: a local file is overwritten or deleted by the sync only if the server has its
//!   content, and at the end every content that a device scanned or the server
//!   acknowledged, and that no user or legitimate delete dropped since, is in the tree;
//! - I3: the server replaces or tombstones a version on behalf of a device only if that
//!   device held exactly that version in its folder. Versions are told apart by the
//!   write that made them (an "instance"), not by content, so a device that holds the
//!   same bytes from elsewhere does not count as having seen another device's file;
//! - I4: a file tombstoned by a device that held it does not come back at its path
//!   unless a user chmod-ed, renamed or copied that content somewhere.
//!
//! `planner_converges_and_loses_nothing` runs the rounds of the two devices one after
//! the other. `planner_converges_and_loses_nothing_with_overlapping_rounds`
//! also lets a device execute a plan made before the other device's round, like two
//! daemons syncing at once; it reaches the server's race paths (kept-modified deletes,
//! merges, refused renames, stale downloads); it found two races in the engine's
//! handling of renames (`engine_rename_race_*`).
//! `PROPTEST_CASES` overrides the number of cases (default [`DEFAULT_CASES`]); the last
//! line on stderr (`--nocapture`) counts what the cases exercised.
//!
//! What the test does not reach: no user edit lands in the middle of a round and no
//! request fails in transit, so the "changed while hashing / uploading" deferrals and
//! network errors never happen (the fault-point and simulation suites in `tests/`
//! cover those on real folders and a real server).

#![allow(missing_docs)]

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fmt::Write as _;
use std::io::Read;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use fsync_chunker::{Chunker, ChunkerConfig};
use fsync_client::engine::{Found, LocalReader, Round, TempWriter};
use fsync_client::planner::{plan, LocalOp, PlanInput, RemoteOp};
use fsync_client::scan::{LocalFile, Scan};
use fsync_client::{ClientError, Engine, LocalFs, Remote, State, SyncError, SyncKeys};
use fsync_common::pages::Page;
use fsync_common::wire::{
    ChangesResponse, CommitOutcome, CommitRequest, CommitResponse, DeleteOutcome, DeleteRequest,
    FileMeta, KdfParams, Manifest, OpResponse, RenameRequest, SyncEvent, SyncEventResult,
};
use fsync_common::{
    ChunkId, ContentHash, DeviceId, ErrorBody, ErrorCode, FileId, IdKey, NamespaceId, PageId, Seq,
    SyncPath, UserId, VersionNo,
};
use fsync_server::{Actor, DbError, MetaRepo, NewUser};
use fsync_store::{BlobCodec, NamespaceKey, NamespaceKeys};
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};

/// Cases per run unless `PROPTEST_CASES` says otherwise.
const DEFAULT_CASES: u32 = 256;
/// Busy rounds per device within which the trees must have converged (I1).
const ROUND_LIMIT: usize = 4;
/// Rounds per device after which a case counts as not converging at all.
const HARD_LIMIT: usize = 12;
/// Paths the edits pick from (together with the files present, conflict copies
/// included). `d` is only ever a folder, so no path is both a file and a folder.
const ALPHABET: [&str; 5] = ["a", "b", "c.txt", "d/a", "d/b"];
/// Tokens below this are the small shared content alphabet; fresh contents are unique.
const FRESH_BASE: u32 = 100;
/// mtime step of a user write: half a second, so conflict-copy names (whole seconds)
/// collide now and then.
const TICK: i64 = 500_000_000;

// ------------------------------------------------------------------ the cases

/// A path: an index into the alphabet plus the files present (in path order), or a
/// name (the regression cases).
#[derive(Clone, Copy)]
enum Sel {
    Any(u8),
    Named(&'static str),
}

impl std::fmt::Debug for Sel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Any(n) => write!(f, "{n}"),
            Self::Named(s) => write!(f, "{s:?}"),
        }
    }
}

/// The content a write puts in a file.
#[derive(Debug, Clone, Copy)]
enum Content {
    /// A content never seen before.
    Fresh,
    /// One of three shared contents (same-content creates, adopts, merges).
    Small(u8),
    /// The content of another file: a copy (rename detection by content).
    CopyOf(Sel),
}

/// A user action on one device's folder.
#[derive(Debug, Clone, Copy)]
enum Edit {
    /// Create or overwrite (in place keeps the inode, else an atomic save).
    Write {
        path: Sel,
        content: Content,
        in_place: bool,
    },
    Delete {
        path: Sel,
    },
    /// `mv from to` (replaces `to`).
    Rename {
        from: Sel,
        to: Sel,
    },
    /// Toggles the executable bit; the mtime stays.
    Chmod {
        path: Sel,
    },
    /// A new mtime, the same content.
    Touch {
        path: Sel,
    },
}

#[derive(Debug, Clone, Copy)]
enum Step {
    Edit(usize, Edit),
    /// A sync round of a device, with the seed of its shuffles.
    Sync(usize, u64),
    /// Device `d` pulls and plans, the other device runs a whole round, then `d`
    /// executes its (now stale) plan: two daemons syncing at the same time.
    Overlap(usize, u64),
}

#[derive(Debug, Clone)]
struct Case {
    /// Which device has the larger id (the tie-break of last-writer-wins).
    swap_ids: bool,
    /// Files written on device 0, then synced to the server and to device 1.
    initial: Vec<(Sel, Content)>,
    steps: Vec<Step>,
    /// Seeds the shuffles of the final rounds (0: the planner's order).
    final_seed: u64,
}

fn sel() -> impl Strategy<Value = Sel> {
    any::<u8>().prop_map(Sel::Any)
}

fn content() -> impl Strategy<Value = Content> {
    prop_oneof![
        3 => Just(Content::Fresh),
        2 => (0u8..3).prop_map(Content::Small),
        1 => sel().prop_map(Content::CopyOf),
    ]
}

fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        4 => (sel(), content(), any::<bool>()).prop_map(|(path, content, in_place)| {
            Edit::Write { path, content, in_place }
        }),
        2 => sel().prop_map(|path| Edit::Delete { path }),
        2 => (sel(), sel()).prop_map(|(from, to)| Edit::Rename { from, to }),
        1 => sel().prop_map(|path| Edit::Chmod { path }),
        1 => sel().prop_map(|path| Edit::Touch { path }),
    ]
}

/// `overlap`: also rounds that overlap the other device's.
fn step(overlap: bool) -> impl Strategy<Value = Step> {
    let sync = (0usize..2, any::<u64>());
    let overlapping = (0usize..2, any::<u64>()).prop_map(move |(d, s)| {
        if overlap {
            Step::Overlap(d, s)
        } else {
            Step::Sync(d, s)
        }
    });
    prop_oneof![
        6 => (0usize..2, edit()).prop_map(|(d, e)| Step::Edit(d, e)),
        2 => sync.prop_map(|(d, s)| Step::Sync(d, s)),
        1 => overlapping,
    ]
}

fn case(overlap: bool) -> impl Strategy<Value = Case> {
    (
        any::<bool>(),
        vec((sel(), content()), 0..4),
        vec(step(overlap), 0..14),
        any::<u64>(),
    )
        .prop_map(|(swap_ids, initial, steps, final_seed)| Case {
            swap_ids,
            initial,
            steps,
            final_seed,
        })
}

// ------------------------------------------------------------------ contents

/// The namespace keys of every case (one per process, so a token always has the same
/// hash).
fn ns_keys() -> &'static NamespaceKeys {
    static KEYS: OnceLock<NamespaceKeys> = OnceLock::new();
    KEYS.get_or_init(|| NamespaceKey::generate().derive())
}

fn id_key() -> &'static IdKey {
    &ns_keys().id_key
}

/// Content hash → token, for every token whose bytes were made.
fn tokens() -> MutexGuard<'static, HashMap<ContentHash, u32>> {
    static TOKENS: OnceLock<Mutex<HashMap<ContentHash, u32>>> = OnceLock::new();
    TOKENS
        .get_or_init(Mutex::default)
        .lock()
        .expect("not poisoned")
}

/// The bytes of a token: its digits, then 0–4 dots (distinct for distinct tokens).
fn bytes_of(token: u32) -> Vec<u8> {
    let mut b = token.to_string().into_bytes();
    b.resize(b.len() + (token % 5) as usize, b'.');
    b
}

fn hash_of(token: u32) -> ContentHash {
    let h = fsync_chunker::content_hash(id_key(), &bytes_of(token));
    tokens().insert(h, token);
    h
}

fn token_of(hash: ContentHash) -> u32 {
    *tokens()
        .get(&hash)
        .expect("every content in play was made by this test")
}

fn token_of_bytes(bytes: &[u8]) -> u32 {
    token_of(fsync_chunker::content_hash(id_key(), bytes))
}

fn p(s: &str) -> SyncPath {
    SyncPath::new(s).expect("valid test path")
}

fn short(c: u32) -> String {
    if c >= FRESH_BASE {
        format!("#{c}")
    } else {
        format!("s{c}")
    }
}

/// splitmix64: the shuffles are a function of the proptest-chosen seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Fisher–Yates; seed 0 keeps the order.
    fn shuffle<T>(&mut self, v: &mut [T], seed: u64) {
        if seed == 0 {
            return;
        }
        for i in (1..v.len()).rev() {
            let j = (self.next() % (i as u64 + 1)) as usize;
            v.swap(i, j);
        }
    }
}

// ------------------------------------------------------------------ the model

/// A file in a device's folder. `instance` names the user write that made these
/// bytes (a copy is a new instance); downloads carry the instance of the version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct File {
    content: u32,
    instance: u64,
    mode: u32,
    mtime: i64,
    inode: u64,
    born: i64,
}

impl File {
    fn stat(&self, path: &SyncPath) -> LocalFile {
        LocalFile {
            path: path.clone(),
            size: bytes_of(self.content).len() as u64,
            mtime: self.mtime,
            inode: self.inode,
            born: self.born,
            mode: self.mode,
        }
    }
}

/// What the invariants need to remember.
#[derive(Debug, Default)]
struct Ledger {
    /// Content → still required (scanned or acknowledged, and not dropped since).
    required: BTreeMap<u32, bool>,
    /// Every content some server version holds (history included).
    on_server: HashSet<u32>,
    /// The instance of every server version, by (file, version number).
    versions: HashMap<(FileId, u64), u64>,
    /// Instances each device ever held in its folder.
    held: [HashSet<u64>; 2],
    /// Contents a user chmod-ed, renamed or copied.
    user_kept: HashSet<u32>,
    /// (path, content) tombstoned by a delete whose sender held the version.
    deleted: Vec<(SyncPath, u32)>,
    violations: Vec<String>,
}

impl Ledger {
    fn require(&mut self, c: u32) {
        self.required.insert(c, true);
    }

    fn drop_content(&mut self, c: u32) {
        self.required.insert(c, false);
    }

    fn instance(&self, m: &FileMeta) -> u64 {
        self.versions[&(m.file_id, m.version.0)]
    }
}

/// How a round ended.
#[derive(Debug, Default, Clone, Copy)]
struct RoundEnd {
    ops: usize,
    aborted: bool,
}

impl RoundEnd {
    fn idle(self) -> bool {
        self.ops == 0 && !self.aborted
    }
}

/// The two folders, the server's blobs and the ledger, shared by the test and the
/// engines' seams.
#[derive(Default)]
struct World {
    files: [BTreeMap<SyncPath, File>; 2],
    /// The instance of the version each device fetched a manifest of, by path: what
    /// the download installed there brings.
    fetched: [HashMap<SyncPath, u64>; 2],
    blobs: HashMap<ChunkId, Vec<u8>>,
    clock: i64,
    next_fresh: u32,
    next_instance: u64,
    ledger: Ledger,
    log: Vec<String>,
    seen: BTreeMap<&'static str, u64>,
}

fn op_kind_remote(op: &RemoteOp) -> &'static str {
    match op {
        RemoteOp::Delete { .. } => "op DeleteRemote",
        RemoteOp::Rename { .. } => "op RenameRemote",
    }
}

fn op_kind_local(op: &LocalOp) -> &'static str {
    match op {
        LocalOp::Move { .. } => "op MoveLocal",
        LocalOp::Delete { .. } => "op DeleteLocal",
        LocalOp::Adopt { .. } => "op Adopt",
        LocalOp::Restat { .. } => "op Restat",
    }
}

/// The plan, one line per operation, with the kind of each.
fn describe_plan(round: &Round) -> Vec<(&'static str, String)> {
    let plan = &round.plan;
    let mut out = Vec::new();
    for path in &plan.forget {
        out.push(("op Forget", format!("Forget {path}")));
    }
    for op in &plan.remote {
        let line = match op {
            RemoteOp::Delete { path, base } => format!("DeleteRemote {path} base={base:?}"),
            RemoteOp::Rename { from, to, changed } => {
                format!("RenameRemote {from} -> {to} changed={changed}")
            }
        };
        out.push((op_kind_remote(op), line));
    }
    for u in &plan.uploads {
        out.push(("op Upload", format!("Upload {} base={:?}", u.path, u.base)));
    }
    for m in &plan.downloads {
        out.push(("op Download", format!("Download {}", describe_meta(m))));
    }
    for op in &plan.local {
        let line = match op {
            LocalOp::Move { from, meta } => format!("MoveLocal {from} -> {}", describe_meta(meta)),
            LocalOp::Delete { path } => format!("DeleteLocal {path}"),
            LocalOp::Adopt { meta } => format!("Adopt {}", describe_meta(meta)),
            LocalOp::Restat { path } => format!("Restat {path}"),
        };
        out.push((op_kind_local(op), line));
    }
    out
}

fn describe_meta(m: &FileMeta) -> String {
    let vv: Vec<String> =
        m.vv.iter()
            .map(|(d, n)| format!("{}:{n}", &d.to_hex()[..2]))
            .collect();
    format!(
        "{}={} [{} v{} {{{}}} {:o}]{}",
        m.path,
        m.content_hash.map_or("-".into(), |h| short(token_of(h))),
        &m.file_id.to_hex()[..6],
        m.version.0,
        vv.join(","),
        m.mode,
        if m.deleted { " DELETED" } else { "" }
    )
}

impl World {
    fn now(&mut self) -> i64 {
        self.clock += TICK;
        self.clock
    }

    /// A new file's inode and birth time on device `d`: the lowest inode number not in
    /// use there, as file systems hand a freed inode to the next file created (a
    /// deleted file and a new one often share it; only the birth time differs).
    fn inode(&mut self, d: usize) -> (u64, i64) {
        let used: BTreeSet<u64> = self.files[d].values().map(|f| f.inode).collect();
        let inode = (1..=used.len() as u64 + 1)
            .find(|i| !used.contains(i))
            .expect("n files leave one of 1..=n+1 free");
        (inode, self.now())
    }

    fn instance(&mut self) -> u64 {
        self.next_instance += 1;
        self.next_instance
    }

    fn log(&mut self, line: String) {
        self.log.push(line);
    }

    fn count(&mut self, what: &'static str) {
        *self.seen.entry(what).or_default() += 1;
    }

    fn violation(&mut self, what: String) {
        self.log.push(format!("!! {what}"));
        self.ledger.violations.push(what);
    }

    // ---------------------------------------------------------- user edits

    fn pick(&self, d: usize, sel: Sel) -> SyncPath {
        match sel {
            Sel::Named(s) => p(s),
            Sel::Any(n) => {
                let mut all: BTreeSet<SyncPath> = ALPHABET.iter().map(|s| p(s)).collect();
                all.extend(self.files[d].keys().cloned());
                let i = usize::from(n) % all.len();
                all.into_iter().nth(i).expect("in range")
            }
        }
    }

    /// A user overwrites or deletes whatever is at `path`.
    fn user_drop(&mut self, d: usize, path: &SyncPath) {
        if let Some(old) = self.files[d].get(path) {
            let c = old.content;
            self.ledger.drop_content(c);
        }
    }

    fn fresh(&mut self) -> u32 {
        self.next_fresh += 1;
        self.next_fresh
    }

    fn edit(&mut self, d: usize, e: Edit) {
        match e {
            Edit::Write {
                path,
                content,
                in_place,
            } => {
                let path = self.pick(d, path);
                let c = match content {
                    Content::Fresh => self.fresh(),
                    Content::Small(k) => 1 + u32::from(k),
                    Content::CopyOf(sel) => {
                        let src = self.pick(d, sel);
                        if let Some(f) = self.files[d].get(&src) {
                            let c = f.content;
                            self.ledger.user_kept.insert(c);
                            c
                        } else {
                            self.fresh()
                        }
                    }
                };
                hash_of(c); // makes the token known by its hash
                let mtime = self.now();
                let fresh_inode = self.inode(d);
                let instance = self.instance();
                self.user_drop(d, &path);
                let old = self.files[d].get(&path).copied();
                let f = File {
                    content: c,
                    instance,
                    mode: old.map_or(0o644, |o| o.mode),
                    mtime,
                    inode: match old {
                        Some(o) if in_place => o.inode,
                        _ => fresh_inode.0,
                    },
                    born: match old {
                        Some(o) if in_place => o.born,
                        _ => fresh_inode.1,
                    },
                };
                self.files[d].insert(path.clone(), f);
                self.ledger.held[d].insert(instance);
                self.log(format!("dev{d}: write {path} = {}", short(c)));
            }
            Edit::Delete { path } => {
                let path = self.pick(d, path);
                if self.files[d].contains_key(&path) {
                    self.user_drop(d, &path);
                    self.files[d].remove(&path);
                    self.log(format!("dev{d}: rm {path}"));
                }
            }
            Edit::Rename { from, to } => {
                let from = self.pick(d, from);
                let to = self.pick(d, to);
                if from != to && self.files[d].contains_key(&from) {
                    self.user_drop(d, &to);
                    let f = self.files[d].remove(&from).expect("checked");
                    self.ledger.user_kept.insert(f.content);
                    self.files[d].insert(to.clone(), f);
                    self.log(format!("dev{d}: mv {from} {to}"));
                }
            }
            Edit::Chmod { path } => {
                let path = self.pick(d, path);
                if let Some(f) = self.files[d].get_mut(&path) {
                    f.mode = if f.mode == 0o644 { 0o755 } else { 0o644 };
                    let c = f.content;
                    self.ledger.user_kept.insert(c);
                    self.log(format!("dev{d}: chmod {path}"));
                }
            }
            Edit::Touch { path } => {
                let path = self.pick(d, path);
                let mtime = self.now();
                if let Some(f) = self.files[d].get_mut(&path) {
                    f.mtime = mtime;
                    self.log(format!("dev{d}: touch {path}"));
                }
            }
        }
    }

    // ---------------------------------------------------------- ledger

    /// The server replaced or tombstoned version `prev` on behalf of `d` (I3).
    fn server_removed(&mut self, d: usize, prev: &FileMeta, how: &str) {
        let (false, Some(h)) = (prev.deleted, prev.content_hash) else {
            return;
        };
        let c = token_of(h);
        if self.ledger.held[d].contains(&self.ledger.instance(prev)) {
            self.ledger.drop_content(c);
            if how == "delete" {
                self.ledger.deleted.push((prev.path.clone(), c));
            }
        } else {
            self.violation(format!(
                "I3: dev{d}'s {how} replaced {} (version {} of {}), which it never held",
                describe_meta(prev),
                prev.version.0,
                &prev.file_id.to_hex()[..6],
            ));
        }
    }

    /// The sync removes or overwrites a local file: the server must have its content.
    fn local_drop(&mut self, d: usize, path: &SyncPath, old: u32, new: Option<u32>, why: &str) {
        if Some(old) == new {
            return;
        }
        if self.ledger.on_server.contains(&old) {
            self.ledger.drop_content(old);
        } else {
            self.violation(format!(
                "I2: dev{d}'s {why} at {path} destroyed {}, which the server never had",
                short(old)
            ));
        }
    }
}

type Shared = Arc<Mutex<World>>;

fn lock(w: &Shared) -> MutexGuard<'_, World> {
    w.lock().expect("not poisoned")
}

// ------------------------------------------------------------------ the folder

/// Device `d`'s folder, in memory.
struct MemFs {
    w: Shared,
    d: usize,
}

fn not_found(path: &SyncPath) -> SyncError {
    SyncError::Io {
        what: "opening",
        path: path.to_local(Path::new("/mem")),
        source: std::io::ErrorKind::NotFound.into(),
    }
}

/// An open file: its bytes at the time of opening.
struct MemReader(std::io::Cursor<Vec<u8>>);

impl Read for MemReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.0.read(buf)
    }
}

impl LocalReader for MemReader {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        let data = self.0.get_ref();
        let start = usize::try_from(offset).unwrap_or(usize::MAX);
        let src = data
            .get(start..start.saturating_add(buf.len()))
            .ok_or(std::io::ErrorKind::UnexpectedEof)?;
        buf.copy_from_slice(src);
        Ok(())
    }
}

/// A download being written.
struct MemTemp {
    w: Shared,
    d: usize,
    dst: SyncPath,
    data: Vec<u8>,
    stat: Option<File>,
}

impl TempWriter for MemTemp {
    fn write_all(&mut self, data: &[u8]) -> Result<(), SyncError> {
        self.data.extend_from_slice(data);
        Ok(())
    }

    fn finish(&mut self, mode: u32, mtime: i64) -> Result<LocalFile, SyncError> {
        let mut w = lock(&self.w);
        let (inode, born) = w.inode(self.d);
        let f = File {
            content: token_of_bytes(&self.data),
            instance: 0,
            mode: mode & 0o777,
            mtime,
            inode,
            born,
        };
        self.stat = Some(f);
        Ok(f.stat(&self.dst))
    }

    fn sync(&mut self) -> Result<(), SyncError> {
        Ok(())
    }

    fn install(self: Box<Self>) -> Result<(), SyncError> {
        let mut w = lock(&self.w);
        let d = self.d;
        let mut f = self.stat.expect("finished before installed");
        f.instance = w.fetched[d]
            .remove(&self.dst)
            .expect("a download follows its manifest");
        if let Some(old) = w.files[d].insert(self.dst.clone(), f) {
            w.local_drop(d, &self.dst, old.content, Some(f.content), "download");
        }
        w.ledger.held[d].insert(f.instance);
        w.log(format!(
            "   dev{d}: wrote {}={}",
            self.dst,
            short(f.content)
        ));
        Ok(())
    }
}

impl LocalFs for MemFs {
    fn root(&self) -> &Path {
        Path::new("/mem")
    }

    fn is_present(&self) -> bool {
        true
    }

    fn remove_stale_temp_files(&self) {}

    fn sync_folders(&self, _paths: &[SyncPath]) -> Result<(), SyncError> {
        Ok(())
    }

    fn scan(&self) -> Result<Scan, SyncError> {
        let w = lock(&self.w);
        let files = w.files[self.d]
            .iter()
            .map(|(p, f)| (p.clone(), f.stat(p)))
            .collect();
        Ok(Scan {
            files,
            ..Scan::default()
        })
    }

    fn stat(&self, path: &SyncPath) -> Result<Found, SyncError> {
        let w = lock(&self.w);
        Ok(match w.files[self.d].get(path) {
            Some(f) => Found::File(f.stat(path)),
            // `d` is a folder whenever a file lies below it.
            None if w.files[self.d]
                .keys()
                .any(|k| k.as_str().starts_with(&format!("{path}/"))) =>
            {
                Found::Other
            }
            None => Found::Nothing,
        })
    }

    fn open(&self, path: &SyncPath) -> Result<Box<dyn LocalReader>, SyncError> {
        let w = lock(&self.w);
        let f = w.files[self.d].get(path).ok_or_else(|| not_found(path))?;
        Ok(Box::new(MemReader(std::io::Cursor::new(bytes_of(
            f.content,
        )))))
    }

    fn create_temp(&self, dst: &SyncPath) -> Result<Box<dyn TempWriter>, SyncError> {
        Ok(Box::new(MemTemp {
            w: self.w.clone(),
            d: self.d,
            dst: dst.clone(),
            data: Vec::new(),
            stat: None,
        }))
    }

    fn remove(&self, path: &SyncPath) -> Result<(), SyncError> {
        let mut w = lock(&self.w);
        let d = self.d;
        let f = w.files[d].remove(path).ok_or_else(|| not_found(path))?;
        w.local_drop(d, path, f.content, None, "local delete");
        w.log(format!("   dev{d}: rm {path}"));
        Ok(())
    }

    fn rename(&self, from: &SyncPath, to: &SyncPath) -> Result<(), SyncError> {
        let mut w = lock(&self.w);
        let d = self.d;
        let f = w.files[d].remove(from).ok_or_else(|| not_found(from))?;
        if let Some(old) = w.files[d].insert(to.clone(), f) {
            w.local_drop(d, to, old.content, Some(f.content), "move");
        }
        w.log(format!("   dev{d}: mv {from} {to}"));
        Ok(())
    }
}

// ------------------------------------------------------------------ the server

/// Device `d`'s server: the repository, with the ledger kept on every answer.
struct RepoRemote {
    repo: Arc<dyn MetaRepo>,
    w: Shared,
    d: usize,
    actor: Actor,
}

/// What the HTTP layer would answer for a repository error (the engine acts on the
/// codes `not_found` and `missing_chunks` only).
fn refusal(e: &DbError) -> ErrorBody {
    let code = match e {
        DbError::NotFound(_) => ErrorCode::NotFound,
        DbError::MissingChunks(_) => ErrorCode::MissingChunks,
        _ => ErrorCode::Conflict,
    };
    let mut body = ErrorBody::new(code, e.to_string());
    if let DbError::MissingChunks(ids) = e {
        body.error.missing.clone_from(ids);
    }
    body
}

fn api_error(e: &DbError) -> ClientError {
    ClientError::Api {
        status: 409,
        body: refusal(e),
    }
}

impl RepoRemote {
    fn w(&self) -> MutexGuard<'_, World> {
        lock(&self.w)
    }

    /// The version before `m` of the same file.
    async fn previous(&self, m: &FileMeta) -> Option<FileMeta> {
        if m.version.0 <= 1 {
            return None;
        }
        let prev = self
            .repo
            .manifest(m.file_id, Some(VersionNo(m.version.0 - 1)))
            .await
            .expect("the previous version exists");
        Some(prev.meta)
    }

    async fn commit_file(&self, req: &CommitRequest) -> Result<CommitResponse, DbError> {
        let d = self.d;
        let c = token_of(req.content_hash);
        let inst = {
            let w = self.w();
            let f = w.files[d]
                .get(&req.path)
                .expect("a committed file is in the folder");
            assert_eq!(f.content, c, "the engine commits what it hashed");
            f.instance
        };
        let result = self.repo.commit(self.actor, req, 0).await;
        let r = match &result {
            Ok(r) => r.clone(),
            Err(e) => {
                self.w()
                    .log(format!("   server: commit {} refused: {e}", req.path));
                return result;
            }
        };
        let prev = self.previous(&r.head).await;
        let mut w = self.w();
        let head_key = (r.head.file_id, r.head.version.0);
        let merged =
            r.outcome == CommitOutcome::Unchanged && !w.ledger.versions.contains_key(&head_key);
        let line = format!(
            "   server: commit {}={} base={:?} -> {}{:?} head {}{}",
            req.path,
            short(c),
            req.base,
            if merged { "merge " } else { "" },
            r.outcome,
            describe_meta(&r.head),
            r.conflict_copy
                .as_ref()
                .map_or(String::new(), |m| format!(" copy {}", describe_meta(m)))
        );
        w.log(line);
        w.count(match r.outcome {
            _ if merged => "commit Merge",
            CommitOutcome::FastForward => "commit FastForward",
            CommitOutcome::Unchanged => "commit Unchanged",
            CommitOutcome::AlreadyApplied => "commit AlreadyApplied",
            CommitOutcome::ConflictWon => "commit ConflictWon",
            CommitOutcome::ConflictLost => "commit ConflictLost",
        });
        for m in std::iter::once(&r.head).chain(r.conflict_copy.as_ref()) {
            if let Some(h) = m.content_hash {
                w.ledger.on_server.insert(token_of(h));
                w.ledger.require(token_of(h));
            }
        }
        match r.outcome {
            CommitOutcome::FastForward => {
                w.ledger.versions.insert(head_key, inst);
                if let Some(prev) = prev.filter(|p| p.content_hash != r.head.content_hash) {
                    w.server_removed(d, &prev, "commit");
                }
            }
            CommitOutcome::Unchanged | CommitOutcome::AlreadyApplied => {
                if merged {
                    let prev = prev.expect("a merge follows a version");
                    let old = w.ledger.instance(&prev);
                    w.ledger.versions.insert(head_key, old);
                }
                // Same bytes as the head: this device holds that version now.
                let held = w.ledger.instance(&r.head);
                w.ledger.held[d].insert(held);
            }
            CommitOutcome::ConflictWon => {
                w.ledger.versions.insert(head_key, inst);
                let prev = prev.expect("a conflict follows a version");
                let old = w.ledger.instance(&prev);
                let copy = r.conflict_copy.as_ref().expect("a copy");
                w.ledger
                    .versions
                    .insert((copy.file_id, copy.version.0), old);
            }
            CommitOutcome::ConflictLost => {
                let copy = r.conflict_copy.as_ref().expect("a copy");
                w.ledger
                    .versions
                    .insert((copy.file_id, copy.version.0), inst);
            }
        }
        drop(w);
        result
    }

    async fn delete_file(&self, req: &DeleteRequest) -> Result<OpResponse, DbError> {
        let r = self.repo.delete(self.actor, req, 0).await;
        let (path, base) = (&req.path, &req.base);
        match &r {
            Ok(r) => {
                let prev = match r.outcome {
                    Some(DeleteOutcome::Deleted) => {
                        Some(self.previous(&r.files[0]).await.expect("a tombstone"))
                    }
                    _ => None,
                };
                let mut w = self.w();
                w.log(format!(
                    "   server: delete {path} base={base:?} -> {:?}",
                    r.outcome
                ));
                w.count(match r.outcome {
                    Some(DeleteOutcome::Deleted) => "delete Deleted",
                    Some(DeleteOutcome::KeptModified) => "delete KeptModified",
                    _ => "delete AlreadyDeleted",
                });
                if let Some(prev) = prev {
                    w.server_removed(self.d, &prev, "delete");
                }
            }
            Err(e) => {
                let mut w = self.w();
                w.count("delete refused");
                w.log(format!("   server: delete {path} refused: {e}"));
            }
        }
        r
    }

    async fn rename_file(&self, req: &RenameRequest) -> Result<OpResponse, DbError> {
        let r = self.repo.rename(self.actor, req, 0).await;
        let (from, to) = (&req.from, &req.to);
        let mut w = self.w();
        match &r {
            Ok(_) => {
                w.count("rename ok");
                w.log(format!("   server: rename {from} -> {to} ok"));
            }
            Err(e) => {
                w.count("rename refused");
                w.log(format!("   server: rename {from} -> {to} refused: {e}"));
            }
        }
        drop(w);
        r
    }

    /// A manifest, remembered as what a download at its path brings.
    async fn fetch_manifest(
        &self,
        file: FileId,
        version: Option<VersionNo>,
    ) -> Result<Manifest, ClientError> {
        let m = self
            .repo
            .manifest(file, version)
            .await
            .map_err(|e| api_error(&e))?;
        if !m.meta.deleted {
            let mut w = self.w();
            let instance = w.ledger.instance(&m.meta);
            w.fetched[self.d].insert(m.meta.path.clone(), instance);
        }
        Ok(m)
    }
}

#[async_trait::async_trait]
impl Remote for RepoRemote {
    async fn changes(
        &self,
        ns: NamespaceId,
        since: Seq,
        limit: u32,
    ) -> Result<ChangesResponse, ClientError> {
        self.repo
            .changes(ns, since, limit)
            .await
            .map_err(|e| api_error(&e))
    }

    async fn missing(
        &self,
        _ns: NamespaceId,
        ids: &[ChunkId],
    ) -> Result<Vec<ChunkId>, ClientError> {
        let w = self.w();
        Ok(ids
            .iter()
            .filter(|id| !w.blobs.contains_key(id))
            .copied()
            .collect())
    }

    async fn put_batch(
        &self,
        ns: NamespaceId,
        blobs: &[(ChunkId, Vec<u8>)],
    ) -> Result<(), ClientError> {
        let sizes: Vec<(ChunkId, u64)> =
            blobs.iter().map(|(id, b)| (*id, b.len() as u64)).collect();
        self.w().blobs.extend(blobs.iter().cloned());
        self.repo
            .record_chunks(ns, &sizes, 0)
            .await
            .map_err(|e| api_error(&e))
    }

    async fn fetch_batch(
        &self,
        _ns: NamespaceId,
        ids: &[ChunkId],
    ) -> Result<Vec<(ChunkId, Vec<u8>)>, ClientError> {
        let w = self.w();
        Ok(ids
            .iter()
            .filter_map(|id| w.blobs.get(id).map(|b| (*id, b.clone())))
            .collect())
    }

    async fn events(&self, events: Vec<SyncEvent>) -> Result<Vec<SyncEventResult>, ClientError> {
        let mut out = Vec::with_capacity(events.len());
        for e in events {
            out.push(match e {
                SyncEvent::Create(req) | SyncEvent::Modify(req) => {
                    match self.commit_file(&req).await {
                        Ok(r) => SyncEventResult::Committed(Box::new(r)),
                        Err(e) => SyncEventResult::Failed(refusal(&e)),
                    }
                }
                SyncEvent::Delete(req) => match self.delete_file(&req).await {
                    Ok(r) => SyncEventResult::Applied(r),
                    Err(e) => SyncEventResult::Failed(refusal(&e)),
                },
                SyncEvent::Rename(req) => match self.rename_file(&req).await {
                    Ok(r) => SyncEventResult::Applied(r),
                    Err(e) => SyncEventResult::Failed(refusal(&e)),
                },
            });
        }
        Ok(out)
    }

    async fn commit(&self, req: &CommitRequest) -> Result<CommitResponse, ClientError> {
        self.commit_file(req).await.map_err(|e| api_error(&e))
    }

    async fn delete(&self, req: &DeleteRequest) -> Result<OpResponse, ClientError> {
        self.delete_file(req).await.map_err(|e| api_error(&e))
    }

    async fn manifest(
        &self,
        file: FileId,
        version: Option<VersionNo>,
    ) -> Result<Manifest, ClientError> {
        self.fetch_manifest(file, version).await
    }

    async fn manifests(
        &self,
        _ns: NamespaceId,
        files: &[(FileId, VersionNo)],
        _as_pages: bool,
    ) -> Result<Vec<Manifest>, ClientError> {
        let mut out = Vec::with_capacity(files.len());
        for &(file, version) in files {
            out.push(self.fetch_manifest(file, Some(version)).await?);
        }
        Ok(out)
    }

    async fn put_pages(&self, ns: NamespaceId, pages: &[Page]) -> Result<(), ClientError> {
        self.repo
            .store_pages(ns, pages, 0)
            .await
            .map(drop)
            .map_err(|e| api_error(&e))
    }

    async fn fetch_pages(&self, ns: NamespaceId, ids: &[PageId]) -> Result<Vec<Page>, ClientError> {
        let found = self
            .repo
            .page_bodies(ns, ids)
            .await
            .map_err(|e| api_error(&e))?;
        found
            .into_iter()
            .map(|(id, body)| {
                Page::from_body(id, &body).map_err(|e| ClientError::Protocol(e.to_string()))
            })
            .collect()
    }
}

// ------------------------------------------------------------------ the rounds

/// A case's two devices, their engines and the shared world.
struct Sim {
    w: Shared,
    engines: [Engine; 2],
}

impl Sim {
    fn w(&self) -> MutexGuard<'_, World> {
        lock(&self.w)
    }

    fn edit(&self, d: usize, e: Edit) {
        self.w().edit(d, e);
    }

    fn abort(&self, d: usize, e: &SyncError) -> RoundEnd {
        let mut w = self.w();
        w.count("round aborted");
        w.log(format!("   dev{d}: round aborted: {e}"));
        RoundEnd {
            ops: 0,
            aborted: true,
        }
    }

    /// One sync round of device `d`.
    async fn round(&mut self, d: usize, seed: u64) -> RoundEnd {
        match self.prepare(d, seed).await {
            Ok(round) => self.execute(d, round, seed).await,
            Err(e) => self.abort(d, &e),
        }
    }

    /// Pulls, scans and plans.
    async fn prepare(&mut self, d: usize, seed: u64) -> Result<Round, SyncError> {
        {
            let mut w = self.w();
            let scanned: Vec<u32> = w.files[d].values().map(|f| f.content).collect();
            for c in scanned {
                w.ledger.require(c);
            }
        }
        let round = self.engines[d].prepare().await?;
        let input = PlanInput {
            base: round.base(),
            local: round.local(),
            remote: round.remote(),
        };
        assert_eq!(
            plan(input),
            round.plan,
            "the planner is not a pure function"
        );
        let remote_desc: Vec<String> = round.remote().iter().map(describe_meta).collect();
        let mut w = self.w();
        w.log(format!(
            "dev{d}: round (seed {seed}), remote [{}]",
            remote_desc.join(", ")
        ));
        for (kind, line) in describe_plan(&round) {
            w.count(kind);
            w.log(format!("   plan: {line}"));
        }
        Ok(round)
    }

    /// Executes a plan, in a shuffled order inside each phase.
    async fn execute(&mut self, d: usize, mut round: Round, seed: u64) -> RoundEnd {
        let mut rng = Rng(seed);
        let plan = &mut round.plan;
        rng.shuffle(&mut plan.forget, seed);
        rng.shuffle(&mut plan.remote, seed);
        rng.shuffle(&mut plan.uploads, seed);
        rng.shuffle(&mut plan.downloads, seed);
        rng.shuffle(&mut plan.local, seed);
        let ops = plan.len();
        {
            // The folder holds an adopted version only if the bytes are still there.
            let mut w = self.w();
            for op in &plan.local {
                if let LocalOp::Adopt { meta } = op {
                    let here = w.files[d].get(&meta.path).map(|f| f.content);
                    if here.is_some() && here == meta.content_hash.map(token_of) {
                        let held = w.ledger.instance(meta);
                        w.ledger.held[d].insert(held);
                    }
                }
            }
        }
        match self.engines[d].execute(round).await {
            Ok(report) => {
                let mut w = self.w();
                for (path, why) in report.deferred {
                    w.count("local op deferred");
                    w.log(format!("   dev{d}: deferred {path}: {why}"));
                }
                RoundEnd {
                    ops,
                    aborted: false,
                }
            }
            Err(e) => self.abort(d, &e),
        }
    }
}

// ------------------------------------------------------------------ a case

type Tree = BTreeMap<SyncPath, (u32, u32)>;

fn tree(files: &BTreeMap<SyncPath, File>) -> Tree {
    files
        .iter()
        .map(|(p, f)| (p.clone(), (f.content, f.mode)))
        .collect()
}

fn show(t: &Tree) -> String {
    let items: Vec<String> = t
        .iter()
        .map(|(p, (c, m))| format!("{p}={} {m:o}", short(*c)))
        .collect();
    format!("{{{}}}", items.join(", "))
}

/// What a passing case reports.
struct Outcome {
    /// Busy rounds per device the final phase needed.
    rounds: usize,
    seen: BTreeMap<&'static str, u64>,
}

/// Runs one case in a fresh account (`n` makes its ids unique in the repository).
async fn run_case(
    repo: &Arc<dyn MetaRepo>,
    dir: &Path,
    n: u64,
    case: &Case,
) -> Result<Outcome, String> {
    let mut id = [0u8; 16];
    id[..8].copy_from_slice(&n.to_le_bytes());
    let user = UserId::from_bytes(id);
    let ns = NamespaceId::from_bytes(id);
    let account = NewUser {
        id: user,
        username: format!("u{n}"),
        email: Some("u@example.org".into()),
        auth_hash: "hash".into(),
        kdf: KdfParams {
            kdf: "argon2id".into(),
            m_kib: 8192,
            t: 1,
            p: 1,
            salt: "00".repeat(16),
        },
        wrapped_account_key: "aa".repeat(40),
        namespace: ns,
        wrapped_namespace_key: "bb".repeat(40),
    };
    repo.create_user(account, 0)
        .await
        .map_err(|e| e.to_string())?;
    let w: Shared = Arc::new(Mutex::new(World {
        clock: 1_700_000_000_000_000_000,
        next_fresh: FRESH_BASE - 1,
        ..World::default()
    }));
    let mut engines = Vec::new();
    for d in 0..2 {
        // The first byte tells the devices apart in conflict-copy names.
        let tag = if (d == 0) == case.swap_ids {
            0x2b
        } else {
            0x1a
        };
        let mut b = [tag; 8];
        b[1..].copy_from_slice(&n.to_le_bytes()[..7]);
        let device = repo
            .register_device(user, None, DeviceId::from_bytes(b), "dev", 0)
            .await
            .map_err(|e| e.to_string())?;
        let state =
            State::open(&dir.join(format!("state-{n}-{d}.db"))).map_err(|e| e.to_string())?;
        let keys = SyncKeys {
            ns,
            device,
            codec: Arc::new(BlobCodec::new(ns_keys())),
            chunker: Arc::new(
                Chunker::new(id_key(), ChunkerConfig::DEFAULT).map_err(|e| e.to_string())?,
            ),
            id_key: id_key().clone(),
        };
        let fs = MemFs { w: w.clone(), d };
        let remote = RepoRemote {
            repo: repo.clone(),
            w: w.clone(),
            d,
            actor: Actor { user, device },
        };
        engines.push(Engine::with_parts(
            Arc::new(fs),
            Arc::new(remote),
            state,
            keys,
        ));
    }
    let engines: [Engine; 2] = engines.try_into().expect("two devices");
    let mut w = Sim { w, engines };
    let fail = |log: &[String], what: &str| -> String {
        let mut out = format!("{what}\n--- trace ---\n");
        for line in log {
            let _ = writeln!(out, "{line}");
        }
        out
    };
    // A synced base: device 0's files on the server and on device 1.
    for &(path, content) in &case.initial {
        let write = Edit::Write {
            path,
            content,
            in_place: false,
        };
        w.edit(0, write);
    }
    if !case.initial.is_empty() {
        w.round(0, 0).await;
        w.round(1, 0).await;
    }
    for step in &case.steps {
        match *step {
            Step::Edit(d, e) => w.edit(d, e),
            Step::Sync(d, seed) => {
                w.round(d, seed).await;
            }
            Step::Overlap(d, seed) => match w.prepare(d, seed).await {
                Ok(planned) => {
                    w.round(1 - d, seed.rotate_left(17)).await;
                    w.w().log(format!("dev{d}: executes the plan above"));
                    w.execute(d, planned, seed).await;
                }
                Err(e) => {
                    w.abort(d, &e);
                }
            },
        }
        let violation = w.w().ledger.violations.first().cloned();
        if let Some(v) = violation {
            return Err(fail(&w.w().log, &v));
        }
    }
    // The edits stop: alternate rounds until both devices have nothing to do.
    w.w().log("--- edits stop ---".into());
    let mut rng = Rng(case.final_seed);
    let mut rounds = [0usize; 2];
    let mut busy = [0usize; 2];
    let mut idle_streak = 0;
    let mut i = 0;
    while idle_streak < 2 {
        let d = i % 2;
        if rounds[d] >= HARD_LIMIT {
            let what = format!("I1: still busy after {HARD_LIMIT} rounds per device");
            return Err(fail(&w.w().log, &what));
        }
        let seed = if case.final_seed == 0 {
            0
        } else {
            rng.next() | 1
        };
        let end = w.round(d, seed).await;
        rounds[d] += 1;
        if end.idle() {
            idle_streak += 1;
        } else {
            idle_streak = 0;
            busy[d] = rounds[d];
        }
        i += 1;
        let violation = w.w().ledger.violations.first().cloned();
        if let Some(v) = violation {
            return Err(fail(&w.w().log, &v));
        }
    }
    // I1: both folders hold the server's live tree.
    let listed = repo
        .list_files(ns, None, false, None, 1000)
        .await
        .map_err(|e| e.to_string())?;
    let server: Tree = listed
        .files
        .iter()
        .map(|m| {
            let c = m.content_hash.map_or(0, token_of);
            (m.path.clone(), (c, m.mode & 0o777))
        })
        .collect();
    for d in 0..2 {
        let t = tree(&w.w().files[d]);
        if t != server {
            let what = format!(
                "I1: dev{d} holds {} but the server {}",
                show(&t),
                show(&server)
            );
            return Err(fail(&w.w().log, &what));
        }
    }
    let needed = busy[0].max(busy[1]);
    if needed > ROUND_LIMIT {
        let what = format!("I1: converged only after {busy:?} busy rounds (limit {ROUND_LIMIT})");
        return Err(fail(&w.w().log, &what));
    }
    // I2: every content still required is in the tree.
    let present: HashSet<u32> = server.values().map(|&(c, _)| c).collect();
    let world = w.w();
    for (&c, &required) in &world.ledger.required {
        if required && !present.contains(&c) {
            let what = format!("I2: content {} was lost", short(c));
            return Err(fail(&world.log, &what));
        }
    }
    // I4: a deleted file does not come back at its path unless a user kept it.
    for (path, c) in &world.ledger.deleted {
        let back = server.get(path).is_some_and(|&(now, _)| now == *c);
        if *c >= FRESH_BASE && back && !world.ledger.user_kept.contains(c) {
            let what = format!("I4: {path}={} came back after its delete", short(*c));
            return Err(fail(&world.log, &what));
        }
    }
    let seen = world.seen.clone();
    Ok(Outcome {
        rounds: needed,
        seen,
    })
}

/// One repository for many cases (each in its own account).
struct Env {
    rt: tokio::runtime::Runtime,
    repo: Arc<dyn MetaRepo>,
    next: std::sync::atomic::AtomicU64,
    rounds: std::sync::Mutex<BTreeMap<usize, u64>>,
    seen: std::sync::Mutex<BTreeMap<&'static str, u64>>,
    dir: tempfile::TempDir,
}

impl Env {
    fn new() -> Self {
        // tmpfs when there is one: the repository writes many small transactions.
        let dir = tempfile::tempdir_in("/dev/shm")
            .or_else(|_| tempfile::tempdir())
            .expect("temp dir");
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let repo = rt
            .block_on(fsync_server::open_sqlite(&dir.path().join("meta.sqlite")))
            .expect("open the repository");
        Self {
            rt,
            repo,
            next: std::sync::atomic::AtomicU64::new(1),
            rounds: std::sync::Mutex::default(),
            seen: std::sync::Mutex::default(),
            dir,
        }
    }

    fn run(&self, case: &Case) -> Result<(), String> {
        let n = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let outcome = self
            .rt
            .block_on(run_case(&self.repo, self.dir.path(), n, case))?;
        *self
            .rounds
            .lock()
            .expect("not poisoned")
            .entry(outcome.rounds)
            .or_default() += 1;
        let mut seen = self.seen.lock().expect("not poisoned");
        for (k, v) in outcome.seen {
            *seen.entry(k).or_default() += v;
        }
        Ok(())
    }

    /// Runs `case` with the planner's order and a few shuffles of the final rounds.
    fn check(&self, case: &Case) {
        for final_seed in 0..6 {
            let case = Case {
                final_seed,
                ..case.clone()
            };
            if let Err(e) = self.run(&case) {
                panic!("final seed {final_seed}: {e}");
            }
        }
    }
}

fn property(overlap: bool) {
    let env = Env::new();
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(DEFAULT_CASES);
    let mut runner = TestRunner::new(Config {
        cases,
        failure_persistence: None,
        max_shrink_iters: 4096,
        ..Config::default()
    });
    let result = runner.run(&case(overlap), |c| env.run(&c).map_err(TestCaseError::fail));
    eprintln!(
        "planner_props: cases by busy rounds per device {:?}; exercised {:?}",
        env.rounds.lock().expect("not poisoned"),
        env.seen.lock().expect("not poisoned")
    );
    if let Err(e) = result {
        panic!("{e}");
    }
}

/// Rounds of the two devices one after the other.
#[test]
fn planner_converges_and_loses_nothing() {
    property(false);
}

/// Rounds that also overlap: a device executes a plan made before the other device's
/// round. Reaches the server's race paths (kept-modified deletes, merges, refused
/// renames, stale downloads); it found the engine's rename races below.
#[test]
fn planner_converges_and_loses_nothing_with_overlapping_rounds() {
    property(true);
}

// ------------------------------------------------------------------ regressions
// Shrunk cases the property found, as plain tests.

/// Runs a case with the default device order and the planner's order in the final
/// rounds.
fn regression(initial: Vec<(Sel, Content)>, steps: Vec<Step>) {
    Env::new().check(&Case {
        swap_ids: false,
        initial,
        steps,
        final_seed: 0,
    });
}

fn mv(dev: usize, from: &'static str, to: &'static str) -> Step {
    Step::Edit(
        dev,
        Edit::Rename {
            from: at(from),
            to: at(to),
        },
    )
}

fn write(dev: usize, path: &'static str, content: Content) -> Step {
    Step::Edit(
        dev,
        Edit::Write {
            path: at(path),
            content,
            in_place: false,
        },
    )
}

/// Overwrites in place (the inode stays) with a fresh content.
fn edit_in_place(dev: usize, path: &'static str) -> Step {
    Step::Edit(
        dev,
        Edit::Write {
            path: at(path),
            content: Content::Fresh,
            in_place: true,
        },
    )
}

fn chmod(dev: usize, path: &'static str) -> Step {
    Step::Edit(dev, Edit::Chmod { path: at(path) })
}

use Sel::Named as at;

/// A chmod then a rename on one device: the rename was sent as unchanged, the base
/// took the new mode, and the mode never reached the server (the folders differed for
/// ever).
#[test]
fn a_chmod_travels_with_a_rename() {
    regression(
        vec![(at("a"), Content::Fresh)],
        vec![chmod(0, "a"), mv(0, "a", "b")],
    );
}

/// Device 0 moves `a` to `b` and creates a new `a`; device 1 had changed its `a`. Its
/// upload went out twice — once as new, once on top of the moved file's version
/// vector, which the new file's vector did not exceed — so the server fast-forwarded
/// over device 0's new `a`, which device 1 never saw (I3).
#[test]
fn an_upload_never_builds_on_another_files_version() {
    regression(
        vec![(at("a"), Content::Fresh)],
        vec![
            mv(0, "a", "b"),
            Step::Sync(0, 0),
            write(0, "a", Content::Fresh),
            chmod(1, "a"),
        ],
    );
}

/// Device 0 moves `d/a` to `a` and puts a copy of it at `d/a`. Device 1 planned both
/// "move your `d/a` to `a`" and "adopt your `d/a` as the new file": in the planner's
/// order the move went first and the adopt recorded a file that was gone, so the next
/// round deleted device 0's new `d/a` on the server (I3); in the other order the
/// move was refused and the moved file never arrived (I1).
#[test]
fn a_file_moved_away_and_replaced_is_reconciled_once() {
    regression(
        vec![(at("d/a"), Content::Fresh)],
        vec![
            mv(0, "d/a", "a"),
            Step::Sync(0, 0),
            write(0, "d/a", Content::CopyOf(at("a"))),
        ],
    );
}

/// Device 0 moves `b` to `d/a` while device 1 creates its own `d/a`, and the two
/// rounds overlap: device 1's upload met the moved file at `d/a` and won. Device 1
/// then had base entries for that file at `b` and at `d/a`; the planner looked at the
/// `d/a` one only (an echo) and kept the stale `b` for ever (I1).
#[test]
fn a_file_with_two_base_entries_still_moves() {
    regression(
        vec![(at("b"), Content::Fresh)],
        vec![
            mv(0, "b", "d/a"),
            write(1, "d/a", Content::Fresh),
            Step::Overlap(1, 0),
        ],
    );
}

/// Device 1 moves `a` to `d/b` while device 0 edits `a` and moves it to `d/b` too, in
/// overlapping rounds: device 1's upload of `d/b` lost to the moved file, which it
/// fetched to `d/b`, while its download of the edited `a` was refused (the file had
/// moved). Device 1 then held base entries for one file at `a` and at `d/b`; when
/// device 0 moved it on to `b`, the planner acted on the stale `a` (forget it, fetch
/// `b`) and left the local `d/b` for ever (I1). Found at 10,000 cases.
#[test]
fn a_remote_move_acts_on_the_base_whose_file_is_here() {
    regression(
        vec![(at("a"), Content::Fresh)],
        vec![
            write(0, "a", Content::Fresh),
            Step::Sync(0, 0),
            mv(1, "a", "d/b"),
            mv(0, "a", "d/b"),
            Step::Overlap(1, 0),
            Step::Sync(0, 0),
            mv(0, "d/b", "b"),
        ],
    );
}

// ------------------------------------------------------------------ engine races
// Found with overlapping rounds; the cause was in `engine.rs` (`run_remote_ops`: an
// applied rename recorded the rename answer's version vector as the base, and uploaded
// a changed file on top of it), not in the planner. When a remote edit lands between
// the pull and the rename, that vector includes an edit this device never saw. The
// engine now keeps the vector it saw.

/// Device 0 moves and edits `a` while device 1 edits `a`; device 0's rename executes
/// after device 1's commit. Its upload then fast-forwards over device 1's edit, which
/// it never saw (I3): the edit survives only in history, without a conflict copy.
#[test]
fn engine_rename_race_overwrites_an_unseen_edit() {
    regression(
        vec![(at("a"), Content::Fresh)],
        vec![
            mv(0, "a", "b"),
            edit_in_place(0, "b"),
            edit_in_place(1, "a"),
            Step::Overlap(0, 0),
        ],
    );
}

/// The same without device 0's edit: its base takes the new vector with the old
/// content, the change looks like an echo from then on, and device 0 never downloads
/// device 1's edit (I1).
#[test]
fn engine_rename_race_never_downloads_the_edit() {
    regression(
        vec![(at("a"), Content::Fresh)],
        vec![mv(0, "a", "b"), edit_in_place(1, "a"), Step::Overlap(0, 0)],
    );
}
