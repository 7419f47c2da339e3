//! The checks a write request must pass before the repository opens a transaction:
//! a commit's manifest, a base version vector, a rename's two paths. Pure functions;
//! the repository runs them on every op (one by one or in a batch).

use fsync_common::limits::MAX_CHUNK_PLAINTEXT;
use fsync_common::wire::CommitRequest;
use fsync_common::{ChunkId, DeviceId, SyncPath, VersionVector};

use crate::db::BatchOp;

/// Most chunks a single manifest may list (a 64 GiB file at the 4 MiB maximum).
pub(crate) const MAX_MANIFEST_CHUNKS: usize = 1 << 20;

/// Most pages a commit may name (the most chunks at the fewest entries per page).
pub(crate) const MAX_MANIFEST_PAGES: usize = MAX_MANIFEST_CHUNKS / fsync_common::pages::PAGE_MIN;

/// The largest version-vector counter a client may send. Far above any real history
/// (one version per nanosecond for a century stays below it), and low enough that the
/// server's increments never saturate: a counter stuck at `u64::MAX` would make an
/// increment change nothing, and a later concurrent edit would fast-forward over it.
pub(crate) const MAX_VV_COUNTER: u64 = 1 << 62;

/// A write request that breaks a rule; nothing was written. Sent as 400
/// `bad_request` with this text as the message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RequestError {
    /// A counter of the base version vector is past [`MAX_VV_COUNTER`].
    #[error("base counter {counter} of device {device} is past the limit {MAX_VV_COUNTER}")]
    BaseCounterTooLarge {
        /// The device whose counter it is.
        device: DeviceId,
        /// The counter sent.
        counter: u64,
    },
    /// The idempotency key is empty or longer than 128 characters.
    #[error("idempotency_key must be 1 to 128 characters")]
    IdempotencyKey,
    /// The manifest lists more than [`MAX_MANIFEST_CHUNKS`] chunks.
    #[error("manifest lists {0} chunks; the limit is {MAX_MANIFEST_CHUNKS}")]
    TooManyChunks(usize),
    /// A chunk's length is 0 or past the largest chunk.
    #[error("chunk {id} has length {len}; lengths must be 1 to {MAX_CHUNK_PLAINTEXT}")]
    ChunkLength {
        /// The chunk.
        id: ChunkId,
        /// Its length in the manifest.
        len: u32,
    },
    /// A commit gave both a chunk list and pages.
    #[error("a commit names its chunks or its pages, not both")]
    ChunksAndPages,
    /// The commit names more than [`MAX_MANIFEST_PAGES`] pages.
    #[error("manifest names {0} pages; the limit is {MAX_MANIFEST_PAGES}")]
    TooManyPages(usize),
    /// The manifest's size is not the sum of its chunks' lengths.
    #[error("size is {size} but the chunks add up to {total}")]
    SizeMismatch {
        /// The size sent.
        size: u64,
        /// The sum of the chunk lengths.
        total: u64,
    },
    /// The mode has bits beyond the permission bits (`0o7777`), other than an empty
    /// folder's (`FOLDER_MODE`, with size 0 and no chunks).
    #[error(
        "mode {0:o} is neither a permission mode nor an empty folder's (0o040000 with size 0)"
    )]
    Mode(u32),
    /// A rename's target lies below its source.
    #[error("cannot move a path into itself")]
    MoveIntoItself,
    /// A file below a renamed folder has no path under the target.
    #[error("{path} cannot move under {to}")]
    MoveOutside {
        /// The file's path.
        path: SyncPath,
        /// The rename's target.
        to: SyncPath,
    },
}

/// Refuses a base version vector with a counter past [`MAX_VV_COUNTER`].
pub(crate) fn check_base(base: &VersionVector) -> Result<(), RequestError> {
    match base.iter().find(|(_, n)| *n > MAX_VV_COUNTER) {
        Some((device, counter)) => Err(RequestError::BaseCounterTooLarge { device, counter }),
        None => Ok(()),
    }
}

/// Checks a commit: its base, idempotency key, chunk count and lengths, size and mode.
/// A commit that names pages is checked again once they are read
/// ([`check_manifest`] on the chunk list they hold).
pub(crate) fn check_commit(req: &CommitRequest) -> Result<(), RequestError> {
    if req.pages.is_empty() {
        return check_manifest(req);
    }
    check_base(&req.base)?;
    check_key(req)?;
    if !req.chunks.is_empty() {
        return Err(RequestError::ChunksAndPages);
    }
    if req.pages.len() > MAX_MANIFEST_PAGES {
        return Err(RequestError::TooManyPages(req.pages.len()));
    }
    Ok(())
}

fn check_key(req: &CommitRequest) -> Result<(), RequestError> {
    if req.idempotency_key.is_empty() || req.idempotency_key.len() > 128 {
        return Err(RequestError::IdempotencyKey);
    }
    Ok(())
}

/// Checks a commit with its chunk list: its base, idempotency key, chunk count and
/// lengths, size and mode.
pub(crate) fn check_manifest(req: &CommitRequest) -> Result<(), RequestError> {
    check_base(&req.base)?;
    check_key(req)?;
    if req.chunks.len() > MAX_MANIFEST_CHUNKS {
        return Err(RequestError::TooManyChunks(req.chunks.len()));
    }
    let mut total: u64 = 0;
    for c in &req.chunks {
        if c.is_empty() || c.len() as usize > MAX_CHUNK_PLAINTEXT {
            return Err(RequestError::ChunkLength {
                id: c.id(),
                len: c.len(),
            });
        }
        total += u64::from(c.len());
    }
    if total != req.size {
        return Err(RequestError::SizeMismatch {
            size: req.size,
            total,
        });
    }
    let folder = fsync_common::wire::is_folder_mode(req.mode) && req.size == 0;
    if req.mode > 0o7777 && !folder {
        return Err(RequestError::Mode(req.mode));
    }
    Ok(())
}

/// The checks of an op that need no database.
pub(crate) fn check_op(op: &BatchOp<'_>) -> Result<(), RequestError> {
    match op {
        BatchOp::Commit(req) => check_commit(req),
        BatchOp::Delete(req) => check_base(&req.base),
        BatchOp::Rename(req) if req.to.starts_with(&req.from) => Err(RequestError::MoveIntoItself),
        BatchOp::Rename(_) => Ok(()),
    }
}
