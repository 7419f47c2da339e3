//! Randomized end-to-end sync: a real server (in this process, on a real socket, with
//! SQLite or PostgreSQL and a local blob store) and three client engines with their own
//! folders and state, driven by a seeded generator of user operations and sync rounds;
//! then quiescence, then a check of the invariants (ARCHITECTURE §9) against a model of
//! every content ever written.
//!
//! Everything a seed does follows from the seed (rounds run one at a time), so a failing
//! seed replays with `FSYNC_SIM_SEED=<seed> cargo test -p fsync-tests --test randomized`
//! or `cargo run --release -p fsync-tests --bin fsync-sim -- --seed <seed>`.
//!
//! The model: every content is unique (a header names seed, device and counter), so a
//! content's bytes identify where it came from.
//! - *kept*: a content that was in a device's folder when one of its rounds ended well
//!   (the server acknowledged it or sent it).
//! - *superseded*: a content a user overwrote, truncated or deleted on some device.
//! - *moved*: a content a user renamed or moved (a rename races a delete like an edit).
//!
//! Checks after quiescence:
//! - I1/I7 every folder holds the same tree (paths and bytes, conflict copies included),
//!   and it is the server's list of heads;
//! - I2/I3 every kept content that no user superseded is in that tree (a delete never
//!   beats an edit it did not see); every kept content is in the tree or in the
//!   server's version history;
//! - I4 a content deleted by a user (never moved) is not in the tree, but as a conflict
//!   copy made by an edit that raced the delete;
//! - I5 no temp file is left and every file holds a content some user wrote;
//! - I6 `fsync-gc verify`'s check finds every referenced chunk in the blob store.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use fsync_client::engine::Engine;
use fsync_client::session::{self, Session};
use fsync_common::{ContentHash, IdKey};
use fsync_server::{Collector, NoProgress, GC_BATCH};
use fsync_testkit::client::Account;
use fsync_testkit::postgres::ScratchDatabase;
use fsync_testkit::server::{lift_rate_limits, Database, TestServer};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::{Backend, PASSWORD};

/// Folders (devices) per seed.
pub const DEVICES: usize = 3;
/// Full passes over every device that quiescence may take.
const MAX_QUIET_PASSES: usize = 8;
/// Directories files are created in ("" is the root).
const DIRS: &[&str] = &["", "a/", "b/", "a/c/", "d/"];
/// File names.
const NAMES: &[&str] = &["x", "y", "z.txt", "w.bin"];
/// Directories a folder move may move (and where to).
const MOVABLE: &[(&str, &str)] = &[("a", "d"), ("d", "a"), ("b", "d/b"), ("d/b", "b")];
const SECRET: &str = "randomized-sync-secret-0123456789abcdef";

/// What one seed runs.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// The seed.
    pub seed: u64,
    /// User operations and rounds before quiescence.
    pub steps: usize,
    /// Metadata database of the server.
    pub backend: Backend,
    /// Base URL of a PostgreSQL server (for [`Backend::Postgres`]).
    pub postgres: Option<String>,
}

/// What a seed did.
#[derive(Debug, Clone, Default)]
pub struct SimReport {
    /// User operations applied.
    pub ops: usize,
    /// Sync rounds run (quiescence included).
    pub rounds: usize,
    /// Conflicts the server resolved.
    pub conflicts: usize,
    /// Files in the converged tree.
    pub files: usize,
    /// Contents written.
    pub contents: usize,
}

/// A failed seed: what broke, and the operations that led there.
#[derive(Debug)]
pub struct SimFailure {
    /// The seed.
    pub seed: u64,
    /// Backend it ran on.
    pub backend: Backend,
    /// What broke.
    pub message: String,
    /// Every step, in order.
    pub log: Vec<String>,
}

impl std::fmt::Display for SimFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "seed {} on {:?} failed: {}",
            self.seed, self.backend, self.message
        )?;
        writeln!(f, "steps:")?;
        for (i, l) in self.log.iter().enumerate() {
            writeln!(f, "  {i:4} {l}")?;
        }
        let db = match self.backend {
            Backend::Sqlite => "",
            Backend::Postgres => " --db postgres",
        };
        write!(
            f,
            "replay: cargo run --release -p fsync-tests --bin fsync-sim -- --seed {}{db}",
            self.seed
        )
    }
}

impl std::error::Error for SimFailure {}

/// A server in this process on a real socket (the kit's), with its blob directory.
struct SimServer {
    inner: TestServer,
    files: PathBuf,
}

impl SimServer {
    async fn start(dir: &Path, database: Database) -> anyhow::Result<Self> {
        let files = dir.join("blobs");
        let args = ["--files-directory", &files.to_string_lossy()];
        let inner = TestServer::start(dir, SECRET, database, &args, lift_rate_limits).await?;
        Ok(Self { inner, files })
    }

    /// Stops the server and drops its PostgreSQL database.
    async fn stop(self) {
        let _ = self.inner.stop().await;
    }

    /// `fsync-gc verify`: every referenced chunk has its blob.
    async fn verify(&self) -> anyhow::Result<()> {
        let gc = Collector::open_local(&self.inner.database_url, &self.files).await?;
        let report = gc.verify(None, GC_BATCH, &NoProgress).await?;
        let damage = &report.damage;
        anyhow::ensure!(report.is_clean(), "I6: damage in the store: {damage:?}");
        Ok(())
    }
}

/// One device: a folder, its state dir inside, and a logged-in engine (none while
/// "restarting").
struct Device {
    name: String,
    root: PathBuf,
    engine: Option<Engine>,
    /// The session the engine was started with (for direct API calls).
    session: Option<Session>,
    /// Steps until which the device is offline (no rounds).
    offline_until: usize,
}

impl Device {
    async fn start(&mut self, url: &str, account: &Account) -> anyhow::Result<()> {
        let chunks = session::chunk_config(Some(4096))?;
        let dev = account
            .login_device(url, &self.root, &self.name, chunks, true)
            .await?;
        self.session = Some(dev.session);
        self.engine = Some(dev.engine);
        Ok(())
    }

    fn full(&self, rel: &str) -> PathBuf {
        self.root.join(rel)
    }

    /// True when `rel` cannot be a new file here (it exists, or the path is blocked).
    fn taken(&self, rel: &str) -> bool {
        self.full(rel).exists() || !can_be_file(&self.root, rel)
    }

    fn engine(&self) -> &Engine {
        self.engine.as_ref().expect("started")
    }

    fn session(&self) -> &Session {
        self.session.as_ref().expect("started")
    }

    /// Files of the folder (relative path → bytes), state dir and temp files excluded.
    fn files(&self) -> BTreeMap<String, Vec<u8>> {
        let mut out = BTreeMap::new();
        walk(&self.root, &self.root, &mut out, &mut BTreeSet::new());
        out
    }

    /// The empty folders below the root (synced as entries of their own): a folder
    /// move or delete can leave one behind.
    fn empty_folders(&self) -> BTreeSet<String> {
        let mut out = BTreeSet::new();
        walk(&self.root, &self.root, &mut BTreeMap::new(), &mut out);
        out
    }
}

fn walk(
    root: &Path,
    dir: &Path,
    out: &mut BTreeMap<String, Vec<u8>>,
    empty: &mut BTreeSet<String>,
) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let mut any = false;
    for e in entries.flatten() {
        any = true;
        let p = e.path();
        let rel = p
            .strip_prefix(root)
            .expect("inside the root")
            .to_string_lossy()
            .replace('\\', "/");
        if rel == fsync_client::scan::STATE_DIR {
            continue;
        }
        let Ok(ft) = e.file_type() else { continue };
        if ft.is_dir() {
            walk(root, &p, out, empty);
        } else if let Ok(data) = std::fs::read(&p) {
            out.insert(rel, data);
        }
    }
    if !any && dir != root {
        let rel = dir
            .strip_prefix(root)
            .expect("inside the root")
            .to_string_lossy()
            .replace('\\', "/");
        empty.insert(rel);
    }
}

/// What every user did, for the checks.
#[derive(Default)]
struct Model {
    /// Every content written, with how many times those exact bytes were written.
    written: HashMap<Vec<u8>, usize>,
    kept: HashSet<Vec<u8>>,
    superseded: HashSet<Vec<u8>>,
    deleted: HashSet<Vec<u8>>,
    moved: HashSet<Vec<u8>>,
    counter: u64,
}

impl Model {
    fn wrote(&mut self, data: &[u8]) {
        *self.written.entry(data.to_vec()).or_default() += 1;
    }
}

/// Runs one seed to the end; `Err` names the first broken invariant.
pub async fn run_seed(cfg: &SimConfig) -> Result<SimReport, SimFailure> {
    let mut log = Vec::new();
    let result = run_inner(cfg, &mut log).await;
    result.map_err(|e| SimFailure {
        seed: cfg.seed,
        backend: cfg.backend,
        message: format!("{e:#}"),
        log,
    })
}

async fn run_inner(cfg: &SimConfig, log: &mut Vec<String>) -> anyhow::Result<SimReport> {
    // Folders, state and the server's files in memory when the machine has a tmpfs:
    // the same code paths (fsync included), a fraction of the time per seed.
    let shm = Path::new("/dev/shm");
    let dir = if shm.is_dir() {
        tempfile::tempdir_in(shm)?
    } else {
        tempfile::tempdir()?
    };
    let database = match cfg.backend {
        Backend::Sqlite => Database::Url(format!(
            "sqlite://{}?mode=rwc",
            dir.path().join("fsync.db").display()
        )),
        Backend::Postgres => {
            let base = cfg
                .postgres
                .as_deref()
                .ok_or_else(|| anyhow::anyhow!("no PostgreSQL URL for a PostgreSQL run"))?;
            Database::Scratch(ScratchDatabase::create(base).await?)
        }
    };
    let server = SimServer::start(&dir.path().join("server"), database).await?;
    let result = drive(cfg, &server, dir.path(), log).await;
    let verified = if result.is_ok() {
        server.verify().await
    } else {
        Ok(())
    };
    server.stop().await;
    let report = result?;
    verified?;
    Ok(report)
}

async fn drive(
    cfg: &SimConfig,
    server: &SimServer,
    dir: &Path,
    log: &mut Vec<String>,
) -> anyhow::Result<SimReport> {
    let mut rng = StdRng::seed_from_u64(cfg.seed);
    let url = &server.inner.url;
    let account = Account::register(url, "sim", "sim@example.com", PASSWORD).await?;
    let mut devices = Vec::new();
    for i in 0..DEVICES {
        let root = dir.join(format!("dev{i}"));
        std::fs::create_dir_all(root.join(fsync_client::scan::STATE_DIR))?;
        let mut d = Device {
            name: format!("dev{i}"),
            root,
            engine: None,
            session: None,
            offline_until: 0,
        };
        d.start(url, &account).await?;
        devices.push(d);
    }
    let id_key = devices[0].engine().keys().id_key.clone();
    let mut model = Model::default();
    let mut report = SimReport::default();

    for step in 0..cfg.steps {
        let dev = rng.gen_range(0..DEVICES);
        let roll = rng.gen_range(0..100u32);
        let line = if roll < 28 {
            if devices[dev].offline_until > step {
                format!("dev{dev}: offline, no round")
            } else {
                report.rounds += 1;
                round(&mut devices[dev], &mut model, &mut report).await?.0
            }
        } else if roll < 31 {
            let d = &mut devices[dev];
            d.engine = None;
            d.start(url, &account).await?;
            format!("dev{dev}: restart")
        } else if roll < 34 {
            let until = step + rng.gen_range(5..40);
            devices[dev].offline_until = until;
            format!("dev{dev}: offline until step {until}")
        } else {
            report.ops += 1;
            user_op(&mut rng, cfg.seed, &devices, dev, &mut model)?
        };
        log.push(line);
    }

    // Quiescence: everyone online, rounds until a whole pass changes nothing.
    log.push("quiescence".into());
    let mut quiet = false;
    for _ in 0..MAX_QUIET_PASSES {
        let mut idle = true;
        for d in &mut devices {
            report.rounds += 1;
            let (line, was_idle) = round(d, &mut model, &mut report).await?;
            idle &= was_idle;
            log.push(line);
        }
        if idle {
            quiet = true;
            break;
        }
    }
    anyhow::ensure!(
        quiet,
        "I1: still not quiet after {MAX_QUIET_PASSES} passes over every device"
    );
    check(&devices, &model, &id_key, &mut report).await?;
    report.contents = model.written.len();
    Ok(report)
}

/// One sync round; on success every content in the folder counts as kept. Its line
/// for the step log, and whether it was idle.
async fn round(
    d: &mut Device,
    model: &mut Model,
    report: &mut SimReport,
) -> anyhow::Result<(String, bool)> {
    let before = d.files();
    let engine = d.engine.as_mut().expect("the device is started");
    let r = engine
        .sync_once()
        .await
        .map_err(|e| anyhow::anyhow!("{}: sync round failed: {e}", d.name))?;
    report.conflicts += r.conflicts;
    // Files the round left for later were not acknowledged.
    let deferred: HashSet<&str> = r.deferred.iter().map(|(p, _)| p.as_str()).collect();
    let after = d.files();
    for (p, data) in &after {
        if !deferred.contains(p.as_str()) {
            model.kept.insert(data.clone());
        }
    }
    // What the round did to the folder, for the step log.
    let mut changes = String::new();
    for p in before.keys().chain(after.keys()).collect::<BTreeSet<_>>() {
        let _ = match (before.get(p), after.get(p)) {
            (Some(x), Some(y)) if x == y => Ok(()),
            (None, Some(y)) => write!(changes, " +{p}={}", label(y)),
            (Some(_), None) => write!(changes, " -{p}"),
            (_, y) => write!(changes, " ~{p}={}", y.map_or(String::new(), |y| label(y))),
        };
    }
    let idle = r.is_idle() && r.deferred.is_empty() && r.conflicts == 0;
    Ok((
        format!(
            "{}: round up={} down={} del_here={} del_there={} ren={} conflicts={} deferred={:?} |{changes}",
            d.name,
            r.uploaded,
            r.downloaded,
            r.deleted_local,
            r.deleted_remote,
            r.renamed,
            r.conflicts,
            r.deferred
        ),
        idle,
    ))
}

/// New unique content: a header naming its origin, then text or random bytes of a
/// size from tiny to several chunks (the sim's chunks average 4 KiB), and now and then
/// of a hundred chunks or more: a chunk list of several manifest pages.
fn new_content(rng: &mut StdRng, seed: u64, dev: usize, model: &mut Model) -> Vec<u8> {
    model.counter += 1;
    let mut data = format!("seed {seed} dev{dev} #{}\n", model.counter).into_bytes();
    let len = match rng.gen_range(0..100u32) {
        0..70 => rng.gen_range(0..200),
        70..95 => rng.gen_range(200..20_000),
        95..98 => rng.gen_range(20_000..60_000),
        _ => rng.gen_range(400_000..1_200_000),
    };
    if rng.gen_bool(0.5) {
        data.extend((0..len).map(|_| rng.gen_range(b'a'..=b'z')));
    } else {
        data.extend((0..len).map(|_| rng.gen::<u8>()));
    }
    data
}

fn random_path(rng: &mut StdRng) -> String {
    let dir = DIRS[rng.gen_range(0..DIRS.len())];
    let name = NAMES[rng.gen_range(0..NAMES.len())];
    format!("{dir}{name}")
}

/// True when `rel` can be a file here: no file on the way, no directory at it.
fn can_be_file(root: &Path, rel: &str) -> bool {
    let full = root.join(rel);
    if full.is_dir() {
        return false;
    }
    let mut p = Path::new(rel).parent();
    while let Some(dir) = p.filter(|p| !p.as_os_str().is_empty()) {
        if root.join(dir).is_file() {
            return false;
        }
        p = dir.parent();
    }
    true
}

/// Creates the folders `path` needs.
fn make_parent(path: &Path) -> anyhow::Result<()> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    Ok(())
}

fn write_file(path: &Path, data: &[u8]) -> anyhow::Result<()> {
    make_parent(path)?;
    Ok(std::fs::write(path, data)?)
}

/// Removes empty directories up to the root (as a user's file manager would leave
/// them; the sync does not sync empty directories).
fn prune_empty(root: &Path, from: &Path) {
    let mut p = from.parent();
    while let Some(dir) = p {
        if dir == root || std::fs::remove_dir(dir).is_err() {
            break;
        }
        p = dir.parent();
    }
}

/// One user operation on `dev`'s folder.
fn user_op(
    rng: &mut StdRng,
    seed: u64,
    devices: &[Device],
    dev: usize,
    model: &mut Model,
) -> anyhow::Result<String> {
    let d = &devices[dev];
    let files: Vec<(String, Vec<u8>)> = d.files().into_iter().collect();
    let roll = rng.gen_range(0..100u32);
    if files.is_empty() || roll < 25 {
        // Create a new file (where none is).
        let rel = random_path(rng);
        if d.taken(&rel) {
            return Ok(format!("dev{dev}: create {rel}: taken, skipped"));
        }
        let data = new_content(rng, seed, dev, model);
        write_file(&d.full(&rel), &data)?;
        model.wrote(&data);
        return Ok(format!("dev{dev}: create {rel} ({} bytes)", data.len()));
    }
    if roll < 32 {
        // The same new name on two devices.
        let other = (dev + rng.gen_range(1..DEVICES)) % DEVICES;
        let rel = random_path(rng);
        let (a, b) = (&devices[dev], &devices[other]);
        if a.taken(&rel) || b.taken(&rel) {
            return Ok(format!(
                "dev{dev}+dev{other}: same new name {rel}: taken, skipped"
            ));
        }
        let da = new_content(rng, seed, dev, model);
        let db = new_content(rng, seed, other, model);
        write_file(&a.full(&rel), &da)?;
        write_file(&b.full(&rel), &db)?;
        model.wrote(&da);
        model.wrote(&db);
        return Ok(format!("dev{dev}+dev{other}: same new name {rel}"));
    }
    let (rel, old) = files[rng.gen_range(0..files.len())].clone();
    let full = d.full(&rel);
    match roll {
        32..55 => {
            // Rewrite.
            let data = new_content(rng, seed, dev, model);
            std::fs::write(&full, &data)?;
            model.superseded.insert(old);
            model.wrote(&data);
            Ok(format!("dev{dev}: rewrite {rel} ({} bytes)", data.len()))
        }
        55..67 => {
            // A small edit inside the file.
            model.counter += 1;
            let mark = format!("[dev{dev} edit #{}]", model.counter);
            let at = rng.gen_range(0..=old.len());
            let mut data = old.clone();
            data.splice(at..at, mark.bytes());
            std::fs::write(&full, &data)?;
            model.superseded.insert(old);
            model.wrote(&data);
            Ok(format!("dev{dev}: insert at {at} in {rel}"))
        }
        67..72 => {
            let len = rng.gen_range(0..=old.len());
            let f = std::fs::OpenOptions::new().write(true).open(&full)?;
            f.set_len(len as u64)?;
            drop(f);
            let data = old[..len].to_vec();
            model.superseded.insert(old);
            model.wrote(&data);
            Ok(format!("dev{dev}: truncate {rel} to {len}"))
        }
        72..84 => {
            std::fs::remove_file(&full)?;
            prune_empty(&d.root, &full);
            model.superseded.insert(old.clone());
            model.deleted.insert(old);
            Ok(format!("dev{dev}: delete {rel}"))
        }
        84..95 => {
            let to = random_path(rng);
            if d.taken(&to) {
                return Ok(format!("dev{dev}: rename {rel} -> {to}: taken, skipped"));
            }
            let dst = d.full(&to);
            make_parent(&dst)?;
            std::fs::rename(&full, &dst)?;
            prune_empty(&d.root, &full);
            model.moved.insert(old);
            Ok(format!("dev{dev}: rename {rel} -> {to}"))
        }
        _ => {
            let (from, to) = MOVABLE[rng.gen_range(0..MOVABLE.len())];
            let (src, dst) = (d.full(from), d.full(to));
            if !src.is_dir() || dst.exists() || !can_be_file(&d.root, to) {
                return Ok(format!(
                    "dev{dev}: move folder {from} -> {to}: not possible, skipped"
                ));
            }
            make_parent(&dst)?;
            std::fs::rename(&src, &dst)?;
            for (p, data) in &files {
                if p.starts_with(&format!("{from}/")) {
                    model.moved.insert(data.clone());
                }
            }
            Ok(format!("dev{dev}: move folder {from} -> {to}"))
        }
    }
}

/// The invariants after quiescence.
async fn check(
    devices: &[Device],
    model: &Model,
    id_key: &IdKey,
    report: &mut SimReport,
) -> anyhow::Result<()> {
    let trees: Vec<BTreeMap<String, Vec<u8>>> = devices.iter().map(Device::files).collect();
    let tree = &trees[0];
    report.files = tree.len();
    // I5: no temp file, no content nobody wrote.
    for (d, t) in devices.iter().zip(&trees) {
        for (p, data) in t {
            let name = p.rsplit('/').next().unwrap_or(p);
            let temp = name.starts_with(fsync_client::scan::TEMP_PREFIX);
            anyhow::ensure!(!temp, "I5: temp file {p} left in {}", d.name);
            anyhow::ensure!(
                model.written.contains_key(data),
                "I5: {}:{p} holds {} bytes nobody wrote",
                d.name,
                data.len()
            );
        }
    }
    // I1/I7: the same tree everywhere, and the same empty folders.
    let folders: Vec<BTreeSet<String>> = devices.iter().map(Device::empty_folders).collect();
    for (d, f) in devices.iter().zip(&folders).skip(1) {
        anyhow::ensure!(
            *f == folders[0],
            "I1: the empty folders of {} and {} differ: {:?} and {:?}",
            devices[0].name,
            d.name,
            folders[0],
            f
        );
    }
    for (d, t) in devices.iter().zip(&trees).skip(1) {
        if t != tree {
            anyhow::bail!(
                "I1: {} and {} differ:\n{}{}",
                devices[0].name,
                d.name,
                diff(tree, t),
                explain(devices, tree, t, id_key).await
            );
        }
    }
    // ... and it is the server's list of heads.
    let s = devices[0].session();
    let heads = s.api.list_all(s.ns, None, false).await?;
    let (folder_heads, file_heads): (Vec<_>, Vec<_>) = heads
        .iter()
        .partition(|m| fsync_common::wire::is_folder_mode(m.mode));
    let server_folders: BTreeSet<String> =
        folder_heads.iter().map(|m| m.path.to_string()).collect();
    anyhow::ensure!(
        server_folders == folders[0],
        "I1: the empty folders differ from the server's folder entries: server {:?}, folders {:?}",
        server_folders,
        folders[0]
    );
    let server: BTreeMap<String, Option<ContentHash>> = file_heads
        .iter()
        .map(|m| (m.path.to_string(), m.content_hash))
        .collect();
    let local: BTreeMap<String, Option<ContentHash>> = tree
        .iter()
        .map(|(p, d)| (p.clone(), Some(fsync_chunker::content_hash(id_key, d))))
        .collect();
    anyhow::ensure!(
        server == local,
        "I1: the folders differ from the server's heads: server {:?}, folders {:?}",
        server.keys().collect::<Vec<_>>(),
        local.keys().collect::<Vec<_>>()
    );
    let in_tree: HashSet<&Vec<u8>> = tree.values().collect();
    // I2/I3: a kept content no user superseded is still there.
    for data in &model.kept {
        if !model.superseded.contains(data)
            && model.written.get(data) == Some(&1)
            && !in_tree.contains(data)
        {
            anyhow::bail!(
                "I2/I3: kept content {} is gone although nobody overwrote or deleted it\n{}",
                describe(data),
                whereabouts(devices, data, id_key).await
            );
        }
    }
    // I2: every kept content is in the tree or in history.
    let all = s.api.list_all(s.ns, None, true).await?;
    let mut history: HashSet<ContentHash> = HashSet::new();
    for m in &all {
        for v in s.api.versions(m.file_id).await? {
            if let Some(h) = v.content_hash {
                history.insert(h);
            }
        }
    }
    for data in &model.kept {
        if !in_tree.contains(data) {
            let h = fsync_chunker::content_hash(id_key, data);
            anyhow::ensure!(
                history.contains(&h),
                "I2: kept content {} is neither in the tree nor in history",
                describe(data)
            );
        }
    }
    // I4: deleted content (never moved, written once) stays deleted.
    for data in &model.deleted {
        if !model.moved.contains(data) && model.written.get(data) == Some(&1) {
            // A conflict copy is a new file: a delete of the version it holds that
            // raced the conflict applied to the path, not to the copy (see
            // RELIABILITY.md); a deleted content back at a plain path is resurrection.
            let paths: BTreeSet<&String> = tree
                .iter()
                .filter(|(p, d)| *d == data && !p.contains(".sync-conflict-"))
                .map(|(p, _)| p)
                .collect();
            anyhow::ensure!(
                paths.is_empty(),
                "I4: deleted content {} came back at {paths:?}",
                describe(data)
            );
        }
    }
    Ok(())
}

fn describe(data: &[u8]) -> String {
    let head = data.split(|b| *b == b'\n').next().unwrap_or_default();
    format!("{:?} ({} bytes)", String::from_utf8_lossy(head), data.len())
}

fn diff(a: &BTreeMap<String, Vec<u8>>, b: &BTreeMap<String, Vec<u8>>) -> String {
    let mut out = String::new();
    let keys: BTreeSet<&String> = a.keys().chain(b.keys()).collect();
    for k in keys {
        match (a.get(k), b.get(k)) {
            (Some(x), Some(y)) if x == y => {}
            (x, y) => {
                let side = |d: Option<&Vec<u8>>| d.map_or("-".into(), |d| describe(d));
                let _ = writeln!(out, "  {k}: {} vs {}", side(x), side(y));
            }
        }
    }
    out
}

/// For a failure message: the server's history and every device's base of the paths
/// on which `a` and `b` differ.
async fn explain(
    devices: &[Device],
    a: &BTreeMap<String, Vec<u8>>,
    b: &BTreeMap<String, Vec<u8>>,
    id_key: &IdKey,
) -> String {
    let mut out = String::new();
    let s = devices[0].session();
    let Ok(all) = s.api.list_all(s.ns, None, true).await else {
        return out;
    };
    let short = |h: &ContentHash| h.to_string()[..8].to_owned();
    let mut names: HashMap<String, String> = HashMap::new();
    for d in devices {
        for data in d.files().into_values() {
            names.insert(
                short(&fsync_chunker::content_hash(id_key, &data)),
                describe(&data),
            );
        }
    }
    for (p, _) in a.iter().chain(b.iter()) {
        if a.get(p) == b.get(p) {
            continue;
        }
        let _ = writeln!(out, "  path {p}:");
        for m in all.iter().filter(|m| m.path.to_string() == *p) {
            if let Ok(versions) = s.api.versions(m.file_id).await {
                for v in versions {
                    let h = v.content_hash.as_ref().map(short).unwrap_or_default();
                    let _ = writeln!(
                        out,
                        "    server file {} v{} {} vv={:?} deleted={} {h} {}",
                        m.file_id,
                        v.version.0,
                        v.path,
                        v.vv,
                        v.deleted,
                        names.get(&h).cloned().unwrap_or_default()
                    );
                }
            }
        }
        for d in devices {
            let e = d.engine();
            let base = fsync_common::SyncPath::new(p)
                .ok()
                .and_then(|sp| e.state().get(&sp).ok().flatten());
            let base = base.map_or("-".into(), |b| {
                let hash = short(&b.content_hash);
                format!("file {} v{} vv={:?} {hash}", b.file_id, b.version.0, b.vv)
            });
            let _ = writeln!(out, "    {} base: {base}", d.name);
        }
    }
    out
}

/// For a failure message: every server version that holds `data`, and what followed it.
async fn whereabouts(devices: &[Device], data: &[u8], id_key: &IdKey) -> String {
    let mut out = String::new();
    let s = devices[0].session();
    let h = fsync_chunker::content_hash(id_key, data);
    let Ok(all) = s.api.list_all(s.ns, None, true).await else {
        return out;
    };
    for m in &all {
        let Ok(versions) = s.api.versions(m.file_id).await else {
            continue;
        };
        if versions.iter().any(|v| v.content_hash == Some(h)) {
            for v in versions {
                let _ = writeln!(
                    out,
                    "  file {} v{} {} vv={:?} deleted={} device={} mtime={} ours={}",
                    m.file_id,
                    v.version.0,
                    v.path,
                    v.vv,
                    v.deleted,
                    v.device,
                    v.mtime,
                    v.content_hash == Some(h)
                );
            }
        }
    }
    for d in devices {
        let _ = writeln!(out, "  {} device id {}", d.name, d.engine().keys().device);
    }
    out
}

/// A content's origin, from its header (`dev1#7`), for the step log.
fn label(data: &[u8]) -> String {
    let head = data.split(|b| *b == b'\n').next().unwrap_or_default();
    let head = String::from_utf8_lossy(head);
    let mut words = head.split(' ').skip(2);
    match (words.next(), words.next()) {
        (Some(dev), Some(n)) => format!("{dev}{n}/{}", data.len()),
        _ => format!("?/{}", data.len()),
    }
}
