//! Rehashing an edited file against the chunk list of the version it was synced as:
//! [`Chunker::digest_against`]. The result is exactly what cutting the whole file
//! again gives, for about half the work on a small edit of a large file.
//!
//! Why it is exact: `FastCDC` decides where a chunk ends from the chunk's own bytes
//! (from its start, up to `max` bytes) and nothing else, unless the input ends first.
//! So if the bytes at a cut point `p` are those of a base chunk of length `l`, and that
//! chunk did not end at the end of its input, then `p + l` is a cut point again. The
//! file's start is a cut point; walking the base list from there, each chunk whose
//! keyed id matches the bytes at its place (one BLAKE3 pass, about twice the speed of
//! cutting and needed anyway for the ids) confirms the next cut point. At the first
//! mismatch the file is cut for real from the last confirmed point, until a chunk cut
//! there is a base chunk again (an insert or a deletion shifts what follows, which
//! matches again after it); from that chunk on, verification resumes. The base's last
//! chunk ended at the old end of the file, so it only counts if the file still ends
//! right after it.
//!
//! Verification runs of up to 8 MiB are read with one `pread` each, the next one while
//! the current one's ids are hashed in parallel and the whole-file hashes absorb the
//! one confirmed before; three buffers are reused throughout.

use std::collections::HashMap;
use std::io;

use fsync_common::ChunkId;
use rayon::prelude::*;

use crate::chunker::Chunker;
use crate::digest::{ChunkInfo, FileDigest, HashOptions, WholeFileHasher};
use crate::error::ChunkerError;
use crate::keys::chunk_id;

/// Most bytes of base chunks verified with one read.
const RUN_BYTES: u64 = 8 << 20;
/// Bytes read at once while cutting (a window's last chunk counts only if it could
/// not have grown, so the window holds several `max`-sized chunks).
const CUT_WINDOW: u64 = 4 << 20;

/// What [`Chunker::cut_window`] cut: the final chunks, the bytes they cover, and the
/// base chunk to verify next if the last of them is a base chunk.
type Window = (Vec<ChunkInfo>, Vec<u8>, Option<usize>);

/// Positional reads, as `std::os::unix::fs::FileExt` gives them (a file may be read
/// from several places without a shared cursor).
pub trait ReadAt {
    /// Fills `buf` from `offset`; fails (`UnexpectedEof`) if the input ends first.
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()>;
}

impl ReadAt for std::fs::File {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        std::os::unix::fs::FileExt::read_exact_at(self, buf, offset)
    }
}

impl ReadAt for [u8] {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let start = usize::try_from(offset).map_err(|_| io::ErrorKind::UnexpectedEof)?;
        let src = start
            .checked_add(buf.len())
            .and_then(|end| self.get(start..end))
            .ok_or(io::ErrorKind::UnexpectedEof)?;
        buf.copy_from_slice(src);
        Ok(())
    }
}

/// Where each id occurs in the base list.
struct BaseIndex<'a> {
    base: &'a [(ChunkId, u32)],
    at: HashMap<ChunkId, Vec<usize>>,
}

impl<'a> BaseIndex<'a> {
    fn new(base: &'a [(ChunkId, u32)]) -> Self {
        let mut at: HashMap<ChunkId, Vec<usize>> = HashMap::with_capacity(base.len());
        for (i, (id, _)) in base.iter().enumerate() {
            at.entry(*id).or_default().push(i);
        }
        Self { base, at }
    }

    /// The base chunk to verify after a chunk with id `id` was cut: the one after an
    /// occurrence of `id`, preferring the first at or after `expected` (repeated
    /// content has one id at many places).
    fn after(&self, id: &ChunkId, expected: usize) -> Option<usize> {
        let places = self.at.get(id)?;
        let i = places.partition_point(|&p| p < expected);
        let j = places.get(i).or(places.first())?;
        Some(j + 1).filter(|&k| k < self.base.len())
    }
}

impl Chunker {
    /// The digest of the first `size` bytes of `input`, equal to
    /// [`digest_reader`](Self::digest_reader)'s, computed by verifying the chunks of
    /// `base` (the `(id, len)` list of an earlier version of the same file, cut by this
    /// chunker) where they still fit and cutting only around what changed (see the
    /// module documentation). With a `base` from elsewhere (another chunking, or ids
    /// that do not match) the chunks are still right for the bytes, each id that of its
    /// bytes, and the hashes those of the file: only the boundaries may then differ from
    /// a fresh cut. Base chunks longer than `max`, or shorter than `min` before the
    /// last, are never taken as they are.
    pub fn digest_against<R: ReadAt + Sync + ?Sized>(
        &self,
        input: &R,
        size: u64,
        base: &[(ChunkId, u32)],
        opts: HashOptions,
    ) -> Result<FileDigest, ChunkerError> {
        let index = BaseIndex::new(base);
        let mut whole = WholeFileHasher::new(&self.content_key, opts);
        let mut chunks: Vec<ChunkInfo> = Vec::with_capacity(base.len() + 8);
        let mut bufs = RunBuffers::new(self.config.max, size);
        let mut pos = 0u64;
        // The base chunk expected at `pos`.
        let mut expected = 0usize;
        let mut verify = !base.is_empty();
        while pos < size {
            if verify {
                (expected, pos) = self.verify_runs(
                    input,
                    size,
                    base,
                    expected,
                    pos,
                    &mut bufs,
                    &mut whole,
                    &mut chunks,
                )?;
                verify = false;
                continue;
            }
            let (cut, bytes, resume) = self.cut_window(input, pos, size, &index, expected)?;
            chunks.extend(cut);
            whole.update(&bytes);
            pos += bytes.len() as u64;
            if let Some(k) = resume {
                expected = k;
                verify = true;
            }
        }
        Ok(whole.finish(chunks))
    }

    /// Verifies base chunks from `k` at `pos`, run after run, until one does not match
    /// or cannot be verified there: the next run is read while the current one's ids are
    /// hashed and the whole-file hashes absorb the one before. Returns the base chunk
    /// expected next and the position reached (a cut point); everything confirmed is in
    /// `chunks` and absorbed by `whole`.
    #[allow(clippy::too_many_arguments)]
    fn verify_runs<R: ReadAt + Sync + ?Sized>(
        &self,
        input: &R,
        size: u64,
        base: &[(ChunkId, u32)],
        mut k: usize,
        mut pos: u64,
        bufs: &mut RunBuffers,
        whole: &mut WholeFileHasher,
        chunks: &mut Vec<ChunkInfo>,
    ) -> Result<(usize, u64), ChunkerError> {
        let (min, max) = (self.config.min, self.config.max);
        let RunBuffers { cur, next, prev } = bufs;
        let mut prev_len = 0usize;
        let mut run = verifiable_run(base, k, pos, size, min, max);
        let mut bytes = run_bytes(&base[k..k + run]);
        input.read_exact_at(&mut cur[..bytes], pos)?;
        while run > 0 {
            // Where the next run starts if this one matches throughout.
            let (nk, npos) = (k + run, pos + bytes as u64);
            let nrun = verifiable_run(base, nk, npos, size, min, max);
            let nbytes = run_bytes(&base[nk..nk + nrun]);
            let ((read, ids), ()) = rayon::join(
                || {
                    rayon::join(
                        || input.read_exact_at(&mut next[..nbytes], npos),
                        || self.run_ids(&cur[..bytes], &base[k..k + run]),
                    )
                },
                || whole.update(&prev[..prev_len]),
            );
            let matched = ids
                .iter()
                .zip(&base[k..k + run])
                .take_while(|(id, b)| **id == b.0)
                .count();
            let mut off = 0u64;
            for (id, len) in &base[k..k + matched] {
                chunks.push(ChunkInfo {
                    offset: pos + off,
                    len: *len,
                    id: *id,
                });
                off += u64::from(*len);
            }
            std::mem::swap(prev, cur);
            prev_len = off as usize;
            if matched < run {
                whole.update(&prev[..prev_len]);
                return Ok((k + matched, pos + off));
            }
            read?;
            std::mem::swap(cur, next);
            (k, pos, run, bytes) = (nk, npos, nrun, nbytes);
        }
        whole.update(&prev[..prev_len]);
        Ok((k, pos))
    }

    /// Ids of the chunks of a run (`base` gives their lengths), in parallel.
    fn run_ids(&self, buf: &[u8], base: &[(ChunkId, u32)]) -> Vec<ChunkId> {
        let mut spans = Vec::with_capacity(base.len());
        let mut off = 0usize;
        for (_, len) in base {
            spans.push(off..off + *len as usize);
            off += *len as usize;
        }
        spans
            .into_par_iter()
            .map(|r| chunk_id(&self.id_key, &buf[r]))
            .collect()
    }

    /// Cuts from `pos` (a cut point) through one window. Returns the chunks cut that
    /// are final, the bytes they cover, and the base chunk to verify next if one of
    /// them is a base chunk (the window stops after it).
    fn cut_window<R: ReadAt + ?Sized>(
        &self,
        input: &R,
        pos: u64,
        size: u64,
        index: &BaseIndex<'_>,
        expected: usize,
    ) -> Result<Window, ChunkerError> {
        let len = (size - pos).min(CUT_WINDOW.max(4 * u64::from(self.config.max)));
        let mut buf = vec![0u8; len as usize];
        input.read_exact_at(&mut buf, pos)?;
        let at_end = pos + len == size;
        let max = self.config.max as usize;
        let spans: Vec<(usize, usize)> = self
            .boundaries(&buf)
            // A chunk that could have grown past the window is cut again from the next one.
            .take_while(|&(off, _)| at_end || off + max <= buf.len())
            .collect();
        let ids: Vec<ChunkId> = spans
            .par_iter()
            .map(|&(off, l)| chunk_id(&self.id_key, &buf[off..off + l]))
            .collect();
        let mut out = Vec::with_capacity(spans.len());
        let mut end = 0usize;
        let mut resume = None;
        for ((off, l), id) in spans.into_iter().zip(ids) {
            out.push(ChunkInfo {
                offset: pos + off as u64,
                len: l as u32,
                id,
            });
            end = off + l;
            if let Some(k) = index.after(&id, expected) {
                resume = Some(k);
                break;
            }
        }
        buf.truncate(end);
        Ok((out, buf, resume))
    }
}

/// The three buffers of [`Chunker::verify_runs`], each as large as a run can be.
struct RunBuffers {
    cur: Vec<u8>,
    next: Vec<u8>,
    prev: Vec<u8>,
}

impl RunBuffers {
    /// Buffers for an input of `size` bytes cut with chunks of at most `max`.
    fn new(max: u32, size: u64) -> Self {
        let cap = RUN_BYTES.max(u64::from(max)).min(size) as usize;
        Self {
            cur: vec![0; cap],
            next: vec![0; cap],
            prev: vec![0; cap],
        }
    }
}

fn run_bytes(chunks: &[(ChunkId, u32)]) -> usize {
    chunks.iter().map(|c| c.1 as usize).sum()
}

/// How many base chunks from `k` can be verified at `pos` in one read: those that fit
/// in the file, up to [`RUN_BYTES`] (at least one), stopping before the base's last
/// chunk unless the file ends right after it, and before a chunk this chunker could not
/// have cut (longer than `max`, empty, or shorter than `min` before the end).
fn verifiable_run(
    base: &[(ChunkId, u32)],
    k: usize,
    pos: u64,
    size: u64,
    min: u32,
    max: u32,
) -> usize {
    let mut end = pos;
    let mut n = 0;
    for (i, (_, len)) in base.iter().enumerate().skip(k) {
        let e = end + u64::from(*len);
        let last = i + 1 == base.len();
        let cut_here = *len <= max && *len > 0 && (*len >= min || e == size);
        if !cut_here || e > size || (last && e != size) || (n > 0 && e - pos > RUN_BYTES) {
            break;
        }
        end = e;
        n += 1;
    }
    n
}
