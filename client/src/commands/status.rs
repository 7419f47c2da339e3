//! `status`: what is not in sync yet. The local side comes from the folder and its
//! state alone, so it is shown offline too; the remote side needs the server, and when
//! it cannot be reached the answer says so instead of failing.

use std::collections::{BTreeMap, HashMap};
use std::io::IsTerminal;

use fsync_client::scan;
use fsync_client::state::BaseEntry;
use fsync_common::size;
use fsync_common::wire::{FileMeta, UsageResponse};
use fsync_common::SyncPath;

use super::{login, open_folder, server_unreachable, when, Folder, Opts};

/// Remote changes not applied here yet (with the account's storage use, when the
/// server tells it), or why they are not known.
enum Remote {
    Pending(Vec<FileMeta>, Option<UsageResponse>),
    Unknown(String),
}

/// One line of `status`: a path and what is pending for it.
#[derive(serde::Serialize)]
struct Pending {
    path: String,
    /// `upload-new`, `upload-changed`, `delete`, `download`, `download-delete`,
    /// `not-synced`.
    state: &'static str,
    /// Why a path is not synced.
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<String>,
}

/// What `status --json` prints.
#[derive(serde::Serialize)]
struct Report {
    folder: String,
    pending: Vec<Pending>,
    local_pending: usize,
    /// `null` when the remote side is not known (`remote_unknown` says why).
    remote_pending: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    remote_unknown: Option<String>,
    conflict_copies: usize,
    /// Seconds since the epoch, `null` if the folder never synced.
    last_sync: Option<i64>,
    /// The account's stored bytes and quota (`null` when the server was not asked).
    #[serde(skip_serializing_if = "Option::is_none")]
    storage: Option<UsageResponse>,
}

pub async fn status(opts: &Opts, json: bool) -> anyhow::Result<()> {
    let folder = open_folder(opts)?;
    let base = folder.state.all()?;
    let scan = scan::scan(&folder.root)?;
    let line = |path: String, state, reason: Option<String>| Pending {
        path,
        state,
        reason,
    };
    let mut pending = Vec::new();
    for (p, f) in &scan.files {
        match base.get(p) {
            None => pending.push(line(p.to_string(), "upload-new", None)),
            Some(b) if !b.same_stat(f) => pending.push(line(p.to_string(), "upload-changed", None)),
            Some(_) => {}
        }
    }
    for p in base.keys().filter(|p| !scan.files.contains_key(*p)) {
        pending.push(line(p.to_string(), "delete", None));
    }
    let local = pending.len();
    let remote = remote_pending(opts, &folder, &base).await?;
    if let Remote::Pending(files, _) = &remote {
        for f in files {
            let state = if f.deleted {
                "download-delete"
            } else {
                "download"
            };
            pending.push(line(f.path.to_string(), state, None));
        }
    }
    for p in &scan.nested_roots {
        let why = "a synced folder of its own inside this one: syncing is paused until one \
                   of the two stops";
        let path = p.display().to_string();
        pending.push(line(path, "not-synced", Some(why.to_owned())));
    }
    for (p, why) in &scan.skipped {
        let path = p.display().to_string();
        pending.push(line(path, "not-synced", Some(why.clone())));
    }
    let (remote_pending, remote_unknown, storage) = match remote {
        Remote::Pending(files, usage) => (Some(files.len()), None, usage),
        Remote::Unknown(why) => (None, Some(why), None),
    };
    if let Some(UsageResponse {
        used_bytes,
        quota_bytes: Some(quota),
    }) = storage
    {
        // Uploads are refused once they would pass the quota: say so next to them.
        if used_bytes >= quota {
            let why = "storage quota reached: uploads are refused until files are deleted \
                       (and collected) or the server's operator raises the quota";
            for p in pending.iter_mut().filter(|p| p.state.starts_with("upload")) {
                p.reason = Some(why.to_owned());
            }
        }
    }
    let report = Report {
        folder: folder.root.display().to_string(),
        pending,
        local_pending: local,
        remote_pending,
        remote_unknown,
        conflict_copies: scan
            .files
            .keys()
            .filter(|p| p.as_str().contains(".sync-conflict-"))
            .count(),
        last_sync: folder.state.last_sync()?,
        storage,
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_human(&report);
    }
    Ok(())
}

fn print_human(r: &Report) {
    for p in &r.pending {
        let what = match p.state {
            "upload-new" => "upload pending (new)",
            "upload-changed" => "upload pending (changed)",
            "delete" => "delete pending",
            "download" | "download-delete" => "download pending",
            _ => "not synced",
        };
        let tail = match (p.state, &p.reason) {
            ("download-delete", _) => " (deleted there)".to_owned(),
            (_, Some(why)) => format!(" — {why}"),
            _ => String::new(),
        };
        println!("{what:<26} {}{tail}", p.path);
    }
    println!("conflict copies: {}", r.conflict_copies);
    match r.last_sync {
        Some(t) => println!("last sync: {}", when(t)),
        None => println!("last sync: never"),
    }
    if let Some(u) = &r.storage {
        match u.quota_bytes {
            Some(q) => println!(
                "storage: {} of {} used ({:.0} %){}",
                size::format(u.used_bytes),
                size::format(q),
                u.used_bytes as f64 * 100.0 / q.max(1) as f64,
                if u.used_bytes >= q {
                    " — quota reached: uploads are refused"
                } else {
                    ""
                }
            ),
            None => println!("storage: {} used (no quota)", size::format(u.used_bytes)),
        }
    }
    match (r.remote_pending, &r.remote_unknown) {
        (Some(n), _) => println!("pending: {} local, {n} remote", r.local_pending),
        (None, why) => println!(
            "pending: {} local; remote changes unknown: {}",
            r.local_pending,
            why.as_deref().unwrap_or("")
        ),
    }
}

/// The latest change of each file that this folder does not hold yet; `Unknown` when
/// the server cannot be reached or no password was given.
async fn remote_pending(
    opts: &Opts,
    folder: &Folder,
    base: &BTreeMap<SyncPath, BaseEntry>,
) -> anyhow::Result<Remote> {
    if opts
        .account
        .username
        .as_deref()
        .is_none_or(|u| u.trim().is_empty())
    {
        return Ok(Remote::Unknown(
            "no username given (--username or FSYNC_USERNAME) to ask the server".to_owned(),
        ));
    }
    if opts.account.password.is_none() && !std::io::stdin().is_terminal() {
        return Ok(Remote::Unknown(
            "no password given (--password or FSYNC_PASSWORD) to ask the server".to_owned(),
        ));
    }
    let asked = async {
        let s = login(opts, folder).await?;
        let cursor = folder.state.cursor()?;
        let changes = s.api.changes(s.ns, cursor, 1000).await?;
        // A server before quotas has no usage route: then it is not shown.
        anyhow::Ok((changes, s.api.usage().await.ok()))
    };
    let (changes, usage) = match asked.await {
        Ok(c) => c,
        Err(e) if server_unreachable(&e) => {
            return Ok(Remote::Unknown(format!(
                "the server cannot be reached ({})",
                crate::describe(&e)
            )))
        }
        Err(e) => return Err(e),
    };
    // The device's own commits come back in the journal until the cursor passes them.
    let by_id: HashMap<_, _> = base.values().map(|b| (b.file_id, b)).collect();
    let mut latest = BTreeMap::new();
    for c in changes.changes {
        latest.insert(c.file.file_id, c.file);
    }
    let mut pending: Vec<_> = latest
        .into_values()
        .filter(|f| match by_id.get(&f.file_id) {
            Some(b) => f.deleted || b.vv != f.vv || b.path != f.path,
            None => !f.deleted,
        })
        .collect();
    pending.sort_by_key(|f| f.seq);
    Ok(Remote::Pending(pending, usage))
}
