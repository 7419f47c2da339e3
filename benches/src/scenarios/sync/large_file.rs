//! The large file: its `initial-sync` (with the `--compare` peers) and the
//! `small-edit` part, 1-byte overwrites and inserts synced A → server → B.

use std::collections::HashSet;
use std::io::Write as _;
use std::path::Path;

use anyhow::ensure;
use fsync_chunker::HashOptions;
use fsync_client::api::ApiStats;
use fsync_common::ChunkId;

use super::compare::{compare_large, rsync_delta, tool_available};
use super::tree::{durability_record, same_file, transfer_records};
use super::{pair, Ctx, Part, DATA_SEED};
use crate::data::{self, DataKind};
use crate::harness::{Device, Server};
use crate::timing::median;

/// The large file is written in pieces of this size.
const PIECE: usize = 16 << 20;

/// Writes `mib` MiB of random bytes to `path`.
pub(crate) fn write_large(path: &Path, mib: u32, seed: u64) -> anyhow::Result<()> {
    let mut f = std::io::BufWriter::new(std::fs::File::create(path)?);
    let mut left = (mib as usize) << 20;
    let mut k = 0u64;
    while left > 0 {
        let n = left.min(PIECE);
        f.write_all(&data::generate(DataKind::Random, n, seed.wrapping_add(k)))?;
        left -= n;
        k += 1;
    }
    f.into_inner()?.sync_all()?;
    Ok(())
}

/// Initial sync of the large file (and restic's and a client process's), then the
/// small edits.
pub(super) async fn large_parts(
    ctx: &mut Ctx<'_>,
    server: &Server,
    dir: &Path,
) -> anyhow::Result<()> {
    let (mut a, mut b) = pair(server, dir, "large").await?;
    let mib = ctx.args.large_mib;
    let name = "large.bin";
    let path_a = a.root.join(name);
    let path_b = b.root.join(name);
    {
        let p = path_a.clone();
        tokio::task::spawn_blocking(move || write_large(&p, mib, DATA_SEED + 1))
            .await
            .expect("write task")?;
    }
    ctx.say(&format!("large file of {mib} MiB written"));
    let writes_before = server.durable_writes();
    let up = a.round().await?;
    let writes = server.durable_writes() - writes_before;
    let down = b.round().await?;
    ensure!(
        up.report.uploaded == 1 && down.report.downloaded == 1,
        "the large file did not sync"
    );
    same_file(&path_a, &path_b)?;
    ctx.say(&format!(
        "large file: A round {:.2} s, B round {:.2} s",
        up.secs, down.secs
    ));
    let bytes = u64::from(mib) << 20;
    let case = format!("large random file ({mib} MiB)");
    if ctx.wants(Part::InitialSync) {
        transfer_records(ctx, &case, bytes, 1, &up, &down);
        durability_record(ctx, &case, bytes, writes);
        if ctx.args.compare {
            compare_large(
                ctx,
                server,
                dir,
                &path_a,
                &case,
                bytes,
                (up.secs, down.secs),
            )
            .await?;
        }
    }
    if ctx.wants(Part::SmallEdit) {
        small_edits(ctx, &mut a, &mut b, name, dir, &server.database_url).await?;
    }
    Ok(())
}

/// Where an edit is made.
#[derive(Debug, Clone, Copy)]
enum Pos {
    Start,
    Middle,
    End,
}

impl Pos {
    fn offset(self, len: u64) -> u64 {
        match self {
            Self::Start => 0,
            Self::Middle => len / 2,
            Self::End => len.saturating_sub(1),
        }
    }

    fn label(self) -> &'static str {
        match self {
            Self::Start => "start",
            Self::Middle => "middle",
            Self::End => "end",
        }
    }
}

/// Overwrites one byte in place (same inode, same size): it becomes its value + 1.
fn overwrite_byte(path: &Path, pos: Pos) -> anyhow::Result<()> {
    use std::os::unix::fs::FileExt as _;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)?;
    let off = pos.offset(f.metadata()?.len());
    let mut b = [0u8; 1];
    f.read_exact_at(&mut b, off)?;
    b[0] = b[0].wrapping_add(1);
    f.write_all_at(&b, off)?;
    f.sync_all()?;
    Ok(())
}

/// Inserts one byte (a save that rewrites the file: temp file, then rename over it).
fn insert_byte(path: &Path, pos: Pos, tmp_dir: &Path, value: u8) -> anyhow::Result<()> {
    let mut data = std::fs::read(path)?;
    let off = match pos {
        Pos::End => data.len(),
        _ => pos.offset(data.len() as u64) as usize,
    };
    data.insert(off, value);
    let tmp = tmp_dir.join("edit.tmp");
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(&data)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

/// The 1-byte edits, each made `edit_repeat` times, with rsync alongside.
pub(crate) async fn small_edits(
    ctx: &mut Ctx<'_>,
    a: &mut Device,
    b: &mut Device,
    name: &str,
    dir: &Path,
    database_url: &str,
) -> anyhow::Result<()> {
    let path_a = a.root.join(name);
    let path_b = b.root.join(name);
    let scratch = dir.join("edit-scratch");
    std::fs::create_dir_all(&scratch)?;
    let rsync = ctx.args.compare && tool_available("rsync", &["--version"]);
    if ctx.args.compare && !rsync {
        ctx.notes
            .push("rsync is not installed: the small-edit comparison was skipped.".into());
    }
    let chunker = a.engine.keys().chunker.clone();
    let digest = |p: &Path| -> anyhow::Result<Vec<(ChunkId, u32)>> {
        let d = chunker.digest_reader(std::fs::File::open(p)?, HashOptions::default())?;
        Ok(d.chunks.iter().map(|c| (c.id, c.len)).collect())
    };
    let mut known: HashSet<ChunkId> = digest(&path_a)?.into_iter().map(|(id, _)| id).collect();
    let mut value = 0u8;
    for insert in [false, true] {
        for pos in [Pos::Start, Pos::Middle, Pos::End] {
            let case = format!(
                "{} 1 byte at {}",
                if insert { "insert" } else { "overwrite" },
                pos.label()
            );
            let mut cols: [Vec<f64>; 9] = Default::default();
            for _ in 0..ctx.args.edit_repeat {
                value = value.wrapping_add(1);
                if insert {
                    insert_byte(&path_a, pos, &scratch, value)?;
                } else {
                    overwrite_byte(&path_a, pos)?;
                }
                let chunks = digest(&path_a)?;
                let new: Vec<&(ChunkId, u32)> = chunks
                    .iter()
                    .filter(|(id, _)| !known.contains(id))
                    .collect();
                let new_bytes: u64 = new.iter().map(|(_, l)| u64::from(*l)).sum();
                let new_count = new.len();
                known.extend(chunks.iter().map(|(id, _)| *id));
                let meta_before = crate::scenarios::metadata_bytes(database_url).await?;
                let up = a.round().await?;
                let meta_after = crate::scenarios::metadata_bytes(database_url).await?;
                ensure!(
                    up.report.uploaded == 1,
                    "A did not commit the edit: {:?}",
                    up.report
                );
                let peer = if rsync {
                    Some(rsync_delta(&path_a, &path_b, &scratch)?)
                } else {
                    None
                };
                let down = b.round().await?;
                ensure!(
                    down.report.downloaded == 1,
                    "B did not get the edit: {:?}",
                    down.report
                );
                same_file(&path_a, &path_b)?;
                cols[8].push(meta_after.saturating_sub(meta_before) as f64);
                let wire = |t: ApiStats| (t.bytes_up + t.bytes_down) as f64;
                cols[0].push(up.traffic.bytes_up as f64);
                cols[1].push(down.traffic.bytes_down as f64);
                cols[2].push(wire(up.traffic) + wire(down.traffic));
                cols[3].push(new_count as f64);
                cols[4].push(new_bytes as f64);
                cols[5].push(up.secs * 1e3);
                cols[6].push(down.secs * 1e3);
                if let Some((sent, received)) = peer {
                    cols[7].push((sent + received) as f64);
                }
            }
            let p = Part::SmallEdit;
            let [up, down, total, new_n, new_b, t_up, t_down, rs, meta] = &mut cols;
            ctx.push(
                p,
                "A bytes up (edit → committed)",
                "bytes",
                &case,
                median(up),
            );
            ctx.push(
                p,
                "B bytes down (committed → visible)",
                "bytes",
                &case,
                median(down),
            );
            ctx.push(
                p,
                "A + B bytes, both directions",
                "bytes",
                &case,
                median(total),
            );
            ctx.push(
                p,
                "metadata stored (database growth)",
                "bytes",
                &case,
                median(meta),
            );
            ctx.push(p, "new chunks", "count", &case, median(new_n));
            ctx.push(p, "new chunk bytes", "bytes", &case, median(new_b));
            ctx.push(p, "edit → committed (A round)", "ms", &case, median(t_up));
            ctx.push(
                p,
                "committed → visible (B round)",
                "ms",
                &case,
                median(t_down),
            );
            if !rs.is_empty() {
                let rsync_total = median(rs);
                ctx.push(
                    p,
                    "rsync bytes sent + received",
                    "bytes",
                    &case,
                    rsync_total,
                );
                let a_wire = median(up);
                ctx.push(
                    p,
                    "A bytes up / rsync bytes",
                    "ratio",
                    &case,
                    a_wire / rsync_total,
                );
                ctx.push(
                    p,
                    "B bytes down / rsync bytes",
                    "ratio",
                    &case,
                    median(down) / rsync_total,
                );
            }
            ctx.say(&format!("small edit: {case} done"));
        }
    }
    Ok(())
}
