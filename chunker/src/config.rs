//! Chunk-size configuration and its validation.

use fastcdc::v2020::{
    AVERAGE_MAX, AVERAGE_MIN, MAXIMUM_MAX, MAXIMUM_MIN, MINIMUM_MAX, MINIMUM_MIN,
};
use fsync_common::limits::{
    DEFAULT_AVG_CHUNK, DEFAULT_MAX_CHUNK, DEFAULT_MIN_CHUNK, MAX_CHUNK_PLAINTEXT,
};

use crate::error::ChunkerError;

/// `FastCDC` chunk sizes in bytes. Every chunk is at least `min` and at most `max` bytes
/// long, except the last chunk of an input, which may be shorter than `min`.
///
/// `avg` is the target size; fastcdc rounds it to the nearest power of two when it
/// builds its masks, so a non-power-of-two `avg` behaves like the nearest one.
///
/// A config is checked by [`ChunkerConfig::new`], [`ChunkerConfig::validate`] and
/// [`Chunker::new`](crate::Chunker::new); the fields are public for reading and for
/// building literals, which are validated when a `Chunker` is made from them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ChunkerConfig {
    /// Minimum chunk size (64 B ..= 1 MiB, even).
    pub min: u32,
    /// Target average chunk size (256 B ..= 4 MiB).
    pub avg: u32,
    /// Maximum chunk size (1 KiB ..= `MAX_CHUNK_PLAINTEXT`, 4 MiB).
    pub max: u32,
}

impl ChunkerConfig {
    /// The default: [`DEFAULT_MIN_CHUNK`] / [`DEFAULT_AVG_CHUNK`] / [`DEFAULT_MAX_CHUNK`]
    /// (16 / 64 / 256 KiB).
    pub const DEFAULT: Self = Self {
        min: DEFAULT_MIN_CHUNK,
        avg: DEFAULT_AVG_CHUNK,
        max: DEFAULT_MAX_CHUNK,
    };

    /// A validated configuration.
    pub fn new(min: u32, avg: u32, max: u32) -> Result<Self, ChunkerError> {
        let config = Self { min, avg, max };
        config.validate()?;
        Ok(config)
    }

    /// Checks the rules listed on the fields, plus `min <= avg <= max`.
    pub fn validate(&self) -> Result<(), ChunkerError> {
        let reason = if self.min < MINIMUM_MIN {
            Some("min is below fastcdc's lower bound of 64 bytes")
        } else if self.min > MINIMUM_MAX {
            Some("min is above fastcdc's upper bound of 1 MiB")
        } else if !self.min.is_multiple_of(2) {
            // v2020 rolls two bytes per step starting at min/2*2, so with an odd min it
            // can cut one byte short of min.
            Some("min must be even (fastcdc v2020 may cut at min - 1 otherwise)")
        } else if self.avg < AVERAGE_MIN {
            Some("avg is below fastcdc's lower bound of 256 bytes")
        } else if self.avg > AVERAGE_MAX {
            Some("avg is above fastcdc's upper bound of 4 MiB")
        } else if self.max < MAXIMUM_MIN {
            Some("max is below fastcdc's lower bound of 1 KiB")
        } else if self.max > MAXIMUM_MAX || self.max as usize > MAX_CHUNK_PLAINTEXT {
            Some("max is above MAX_CHUNK_PLAINTEXT (4 MiB)")
        } else if self.min > self.avg {
            Some("min is greater than avg")
        } else if self.avg > self.max {
            Some("avg is greater than max")
        } else {
            None
        };
        match reason {
            None => Ok(()),
            Some(reason) => Err(ChunkerError::InvalidConfig {
                config: *self,
                reason,
            }),
        }
    }
}

impl Default for ChunkerConfig {
    fn default() -> Self {
        Self::DEFAULT
    }
}
