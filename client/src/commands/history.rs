//! `versions`, `restore` and `trash`: a file's history, bringing back an old version or
//! deleted files, and the list of what was deleted.

use std::collections::{HashMap, HashSet};

use anyhow::{bail, Context};
use fsync_client::root::{RootError, RootLock};
use fsync_client::scan::STATE_DIR;
use fsync_client::session::Session;
use fsync_common::wire::{FileMeta, VersionInfo};
use fsync_common::{DeviceId, SyncPath, VersionNo};
use futures_util::{stream, StreamExt, TryStreamExt};

use super::{folder_path, start, when, Opts, Started};

/// Requests for version histories running at once (`trash`).
const HISTORY_REQUESTS: usize = 8;

/// The account's device names by id (a device of another account, or one the server
/// no longer lists, shows as its short id).
async fn device_names(s: &Session) -> anyhow::Result<HashMap<DeviceId, String>> {
    Ok(s.api
        .devices()
        .await?
        .into_iter()
        .map(|d| (d.id, d.name))
        .collect())
}

fn device_name(names: &HashMap<DeviceId, String>, id: DeviceId) -> String {
    names
        .get(&id)
        .cloned()
        .unwrap_or_else(|| format!("device {}", id.short()))
}

/// Every file the server knows at `p` or below it, tombstones included.
async fn files_at(s: &Session, p: &SyncPath) -> anyhow::Result<Vec<FileMeta>> {
    Ok(s.api.list_all(s.ns, Some(p.as_str()), true).await?)
}

pub async fn versions(opts: &Opts, path: &str) -> anyhow::Result<()> {
    let Started { root, session, .. } = start(opts, false).await?;
    let p = folder_path(&root, path)?;
    let files = files_at(&session, &p).await?;
    let at: Vec<_> = files.iter().filter(|f| f.path == p).collect();
    // The live file, else the latest deleted one at the path.
    let Some(file) = at
        .iter()
        .find(|f| !f.deleted)
        .or_else(|| at.iter().max_by_key(|f| f.seq))
    else {
        if files.is_empty() {
            bail!("{p} is not known to the server");
        }
        return folder_history(&session, &p, files).await;
    };
    let history = session.api.versions(file.file_id).await?;
    let renames = session.api.renames(file.file_id).await?;
    let names = device_names(&session).await?;
    let by = |d: Option<DeviceId>| {
        d.map_or_else(
            || "an earlier client".to_owned(),
            |d| device_name(&names, d),
        )
    };
    // Newest first: the renames made after a version come before its line.
    for v in &history {
        for r in renames
            .iter()
            .rev()
            .filter(|r| r.after_version == v.version)
        {
            let at = r
                .created_at
                .map_or_else(|| "(date not recorded)".to_owned(), when);
            println!(
                "      {at}  renamed {} → {}  by {}",
                r.from,
                r.to,
                by(r.device)
            );
        }
        println!(
            "v{:<4} {}  {:>12} bytes  {:<28}  {}{}",
            v.version,
            when(v.created_at),
            v.size,
            device_name(&names, v.device),
            v.path,
            if v.deleted { "  (deleted)" } else { "" },
        );
    }
    Ok(())
}

/// Files listed in a folder's history at most (the most recently changed).
const FOLDER_HISTORY_FILES: usize = 200;

/// A folder's history: the latest change of each file below it (deleted ones too),
/// newest first, with its date and device.
async fn folder_history(s: &Session, p: &SyncPath, mut files: Vec<FileMeta>) -> anyhow::Result<()> {
    files.sort_by_key(|f| std::cmp::Reverse(f.seq));
    let total = files.len();
    let deleted = files.iter().filter(|f| f.deleted).count();
    files.truncate(FOLDER_HISTORY_FILES);
    let names = device_names(s).await?;
    let histories: Vec<Vec<VersionInfo>> = stream::iter(files.iter().map(|f| {
        let api = s.api.clone();
        let id = f.file_id;
        async move { api.versions(id).await }
    }))
    .buffered(HISTORY_REQUESTS)
    .try_collect()
    .await?;
    println!(
        "{p}/  folder: {total} files below it ({deleted} deleted); each one's latest change, newest first"
    );
    for (f, history) in files.iter().zip(&histories) {
        let at = history
            .first()
            .map_or_else(String::new, |v| when(v.created_at));
        println!(
            "  v{:<4} {at}  {:<28}  {}{}",
            f.version,
            device_name(&names, f.device),
            f.path,
            if f.deleted { "  (deleted)" } else { "" },
        );
    }
    if total > files.len() {
        println!("  … and {} files changed earlier", total - files.len());
    }
    Ok(())
}

/// The newest version of a history that holds content (what a deleted file last was).
fn last_content(history: &[VersionInfo]) -> Option<VersionNo> {
    history
        .iter()
        .filter(|v| !v.deleted)
        .map(|v| v.version)
        .max()
}

/// The deleted files among `files` whose path no live file took, newest deletion
/// first, each path once (a path deleted twice names its latest file).
fn trashed(files: &[FileMeta]) -> Vec<&FileMeta> {
    let live: HashSet<&SyncPath> = files
        .iter()
        .filter(|f| !f.deleted)
        .map(|f| &f.path)
        .collect();
    let mut seen = HashSet::new();
    let mut out: Vec<&FileMeta> = files
        .iter()
        .filter(|f| f.deleted && !live.contains(&f.path))
        .collect();
    out.sort_by_key(|f| std::cmp::Reverse(f.seq));
    out.retain(|f| seen.insert(&f.path));
    out
}

/// `restore PATH [--version N]`: an old version of a live file, a deleted file (its last
/// content unless `--version`), or every deleted file below a folder. Then the folder is
/// synced, unless its daemon runs (which then brings the files in).
pub async fn restore(opts: &Opts, path: &str, version: Option<VersionNo>) -> anyhow::Result<()> {
    let mut started = start(opts, false).await?;
    let s = started.session.clone();
    let p = folder_path(&started.root, path)?;
    let files = files_at(&s, &p).await?;
    let exact: Vec<&FileMeta> = files.iter().filter(|f| f.path == p).collect();
    let targets: Vec<(&FileMeta, Option<VersionNo>)> = if let Some(f) =
        exact.iter().find(|f| !f.deleted)
    {
        let Some(v) = version else {
            bail!("{p} is not deleted: give the version to bring back with --version (see `fsync-client versions {p}`)");
        };
        vec![(*f, Some(v))]
    } else if let Some(f) = exact.iter().max_by_key(|f| f.seq) {
        vec![(*f, version)]
    } else {
        if version.is_some() {
            bail!("{p} is not a file the server knows: --version needs a file");
        }
        // A folder: each deleted file below it whose path is free.
        let below = trashed(&files);
        if below.is_empty() {
            if files.iter().all(|f| f.deleted) {
                bail!("{p} is not known to the server");
            }
            bail!("nothing under {p} is deleted (see `fsync-client trash`)");
        }
        below.into_iter().map(|f| (f, None)).collect()
    };
    for (f, wanted) in targets {
        let v = if let Some(v) = wanted {
            v
        } else {
            let history = s.api.versions(f.file_id).await?;
            last_content(&history)
                .with_context(|| format!("{} has no version with content", f.path))?
        };
        let r = s
            .api
            .restore(f.file_id, v)
            .await
            .with_context(|| format!("restoring {} to v{v}", f.path))?;
        println!("restored {} from v{v} as v{}", f.path, r.head.version);
    }
    let marker = started.root.join(STATE_DIR);
    let _lock = match RootLock::acquire(&started.root, &marker) {
        Ok(lock) => lock,
        Err(RootError::InUse { .. }) => {
            println!("the running fsync-client of this folder brings the restored files here");
            return Ok(());
        }
        Err(e) => return Err(e.into()),
    };
    started.engine.sync_once().await?;
    Ok(())
}

/// `trash`: deleted files whose path no live file took, newest deletion first, with
/// when, by which device, and the size they had.
pub async fn trash(opts: &Opts) -> anyhow::Result<()> {
    let Started { session: s, .. } = start(opts, false).await?;
    let all = s.api.list_all(s.ns, None, true).await?;
    let deleted = trashed(&all);
    if deleted.is_empty() {
        println!("the trash is empty: no deleted file can be restored");
        return Ok(());
    }
    let names = device_names(&s).await?;
    let histories: Vec<Vec<VersionInfo>> = stream::iter(deleted.iter().map(|f| {
        let api = s.api.clone();
        let id = f.file_id;
        async move { api.versions(id).await }
    }))
    .buffered(HISTORY_REQUESTS)
    .try_collect()
    .await?;
    for (f, history) in deleted.iter().zip(&histories) {
        // Newest first.
        let at = history
            .iter()
            .find(|v| v.deleted)
            .map_or_else(String::new, |v| when(v.created_at));
        let size = history.iter().find(|v| !v.deleted).map_or(0, |v| v.size);
        println!(
            "{}  deleted {at} by {}, was {size} bytes",
            f.path,
            device_name(&names, f.device)
        );
    }
    println!(
        "{} deleted files; `fsync-client restore PATH` brings back a file or a folder's files",
        deleted.len()
    );
    Ok(())
}
