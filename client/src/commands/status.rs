//! `status`: what is not in sync yet. The local side comes from the folder and its
//! state alone, so it is shown offline too; the remote side needs the server, and when
//! it cannot be reached the answer says so instead of failing.

use std::collections::{BTreeMap, HashMap};
use std::io::IsTerminal;

use fsync_client::scan;
use fsync_client::state::BaseEntry;
use fsync_common::wire::FileMeta;
use fsync_common::SyncPath;

use super::{login, open_folder, server_unreachable, when, Folder, Opts};

/// Remote changes not applied here yet, or why they are not known.
enum Remote {
    Pending(Vec<FileMeta>),
    Unknown(String),
}

pub async fn status(opts: &Opts) -> anyhow::Result<()> {
    let folder = open_folder(opts)?;
    let base = folder.state.all()?;
    let scan = scan::scan(&folder.root)?;
    let mut local = 0;
    for (p, f) in &scan.files {
        match base.get(p) {
            None => println!("upload pending (new)       {p}"),
            Some(b) if !b.same_stat(f) => println!("upload pending (changed)   {p}"),
            Some(_) => continue,
        }
        local += 1;
    }
    for p in base.keys().filter(|p| !scan.files.contains_key(*p)) {
        println!("delete pending             {p}");
        local += 1;
    }
    let remote = remote_pending(opts, &folder, &base).await?;
    if let Remote::Pending(files) = &remote {
        for f in files {
            println!(
                "download pending           {}{}",
                f.path,
                if f.deleted { " (deleted there)" } else { "" }
            );
        }
    }
    for p in &scan.nested_roots {
        println!(
            "not synced                 {} — a synced folder of its own inside this one: \
             syncing is paused until one of the two stops",
            p.display()
        );
    }
    for (p, why) in &scan.skipped {
        println!("not synced                 {} — {why}", p.display());
    }
    let conflicts = scan
        .files
        .keys()
        .filter(|p| p.as_str().contains(".sync-conflict-"))
        .count();
    println!("conflict copies: {conflicts}");
    match folder.state.last_sync()? {
        Some(t) => println!("last sync: {}", when(t)),
        None => println!("last sync: never"),
    }
    match &remote {
        Remote::Pending(files) => println!("pending: {local} local, {} remote", files.len()),
        Remote::Unknown(why) => {
            println!("pending: {local} local; remote changes unknown: {why}");
        }
    }
    Ok(())
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
        anyhow::Ok(s.api.changes(s.ns, cursor, 1000).await?)
    };
    let changes = match asked.await {
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
    Ok(Remote::Pending(pending))
}
