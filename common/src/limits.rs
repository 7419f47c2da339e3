//! Constants shared by server and client.

/// Default FastCDC minimum chunk size.
pub const DEFAULT_MIN_CHUNK: u32 = 16 * 1024;
/// Default FastCDC average chunk size, chosen from `fsync-bench chunk-sweep` (16, 64,
/// 256 and 1024 KiB; BENCHMARKS.md): 64 KiB sent the fewest bytes for 1-byte edits
/// of a large file (with 128 KiB), kept twice the dedup of 256 KiB on a disk image
/// with 1 % of its pages rewritten per version, and needs a quarter of 16 KiB's
/// metadata rows and manifest bytes. (Changing it changes every chunk boundary:
/// existing data no longer dedups against new uploads.)
pub const DEFAULT_AVG_CHUNK: u32 = 64 * 1024;
/// Default FastCDC maximum chunk size.
pub const DEFAULT_MAX_CHUNK: u32 = 256 * 1024;
/// Upper bound on any chunk's plaintext, whatever the configuration: decoding refuses
/// to decompress beyond it.
pub const MAX_CHUNK_PLAINTEXT: usize = 4 * 1024 * 1024;
/// Upper bound on a stored blob: plaintext bound + header + tag + zstd slack.
pub const MAX_BLOB_SIZE: usize = MAX_CHUNK_PLAINTEXT + 64 * 1024;
/// Most chunk ids in one `chunks/missing` or batch request.
pub const MAX_IDS_PER_REQUEST: usize = 10_000;
/// Most events in one `sync/event` batch.
pub const MAX_EVENTS_PER_BATCH: usize = 1_000;
/// Most manifest pages in one `pages/batch` or `pages/fetch` request (a 1 GiB file has
/// about 130).
pub const MAX_PAGES_PER_REQUEST: usize = 2_048;
/// Largest body of a batch chunk upload (one pack on the server) and of a batch
/// download.
pub const MAX_BATCH_BODY: usize = 48 * 1024 * 1024;
/// Default and maximum page size of list and changes endpoints.
pub const DEFAULT_PAGE: u32 = 1_000;
/// Maximum page size of list and changes endpoints.
pub const MAX_PAGE: u32 = 10_000;
