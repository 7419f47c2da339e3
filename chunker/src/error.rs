//! The crate's error type.

use crate::config::ChunkerConfig;

/// Why chunking or hashing failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ChunkerError {
    /// Reading the input (or opening a file in [`Chunker::digest_files`]) failed.
    /// `ErrorKind::Interrupted` is retried internally and never surfaces here.
    ///
    /// [`Chunker::digest_files`]: crate::Chunker::digest_files
    #[error("reading input to chunk: {0}")]
    Io(#[from] std::io::Error),

    /// The chunk-size configuration is unusable: sizes out of order, beyond
    /// [`MAX_CHUNK_PLAINTEXT`](fsync_common::limits::MAX_CHUNK_PLAINTEXT), or
    /// outside the ranges fastcdc v2020 accepts.
    #[error(
        "invalid chunker config (min={} avg={} max={}): {reason}",
        config.min,
        config.avg,
        config.max
    )]
    InvalidConfig {
        /// The rejected configuration.
        config: ChunkerConfig,
        /// Which rule it breaks.
        reason: &'static str,
    },
}

impl From<fastcdc::v2020::Error> for ChunkerError {
    fn from(e: fastcdc::v2020::Error) -> Self {
        // fastcdc's `Empty` is end of input (never surfaced by its iterator) and `Other`
        // is an internal invariant breach; its own conversion maps both to io errors.
        Self::Io(std::io::Error::from(e))
    }
}
