//! Streaming a 1 GiB input keeps the chunker's memory bounded (issue 2: "`FastCDC` v2020
//! streaming over any `Read` with bounded memory whatever the file size").
//!
//! Its own test binary, so its own process: the peak resident set size (`VmHWM`) it
//! measures is not disturbed by other tests' allocations. Linux only (`/proc`).
#![cfg(target_os = "linux")]

use std::io::{self, Read};

use fsync_chunker::{Chunker, ChunkerConfig, HashOptions};
use fsync_common::IdKey;
use fsync_testkit::memory;

const MIB: u64 = 1024 * 1024;
const GIB: u64 = 1024 * MIB;

/// `len` pseudo-random bytes, generated as they are read: never held in memory as a
/// whole. Byte `i` depends on `i` only (word `i / 8` is splitmix64 of `seed + i / 8`),
/// not on how the reads are sized.
struct Generated {
    pos: u64,
    len: u64,
    seed: u64,
}

impl Generated {
    fn new(len: u64, seed: u64) -> Self {
        Self { pos: 0, len, seed }
    }
}

fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

impl Read for Generated {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = usize::try_from(self.len - self.pos).map_or(buf.len(), |r| r.min(buf.len()));
        let mut out = &mut buf[..n];
        while !out.is_empty() {
            let word = splitmix64(self.seed.wrapping_add(self.pos / 8)).to_le_bytes();
            let skip = (self.pos % 8) as usize;
            let take = (8 - skip).min(out.len());
            out[..take].copy_from_slice(&word[skip..skip + take]);
            out = &mut out[take..];
            self.pos += take as u64;
        }
        Ok(n)
    }
}

/// [`memory::peak_growth`], failing the test where `/proc/self` cannot tell.
fn peak_growth<T>(f: impl FnOnce() -> T) -> (u64, T) {
    memory::peak_growth(f).expect("measure the peak RSS in /proc/self")
}

/// The probe itself works here: touching 128 MiB shows in the peak, and a reset
/// forgets it. Without this, a kernel that ignored the reset would let any leak pass.
fn check_the_probe() {
    let (grew, ()) = peak_growth(|| {
        let big = vec![0xA5u8; 128 * MIB as usize];
        std::hint::black_box(&big);
    });
    assert!(
        grew >= 120 * MIB,
        "touching 128 MiB raised VmHWM by {grew} bytes only"
    );
    let peak = memory::status_bytes("VmHWM").expect("read VmHWM");
    let after_reset = memory::reset_peak().expect("reset VmHWM");
    assert!(
        after_reset + 100 * MIB <= peak,
        "the peak did not reset: {after_reset} bytes after, {peak} before"
    );
}

/// Streams 1 GiB of generated data through the streaming digests the client hashes
/// files with, `digest_reader` and `digest_reader_parallel`, and bounds how much the
/// process's peak RSS grows meanwhile.
///
/// What may grow with the input is the per-chunk metadata the digest returns: one
/// 48-byte `ChunkInfo` per chunk, O(size / avg chunk), about 0.75 MiB for 1 GiB at the
/// default 64 KiB average (up to twice that in `Vec` capacity while it grows). The
/// bounds allow for it; everything else must stay in the stream's buffers:
/// - `digest_reader`: about 2 × `max` (256 KiB), bounded here by 16 MiB;
/// - `digest_reader_parallel`: two batches of up to 16 MiB + `max`, bounded by 64 MiB.
///
/// Reading the input whole (1 GiB), or holding all its chunks, breaks both.
#[test]
fn streaming_a_gibibyte_keeps_peak_memory_bounded() {
    check_the_probe();

    let config = ChunkerConfig::default();
    let chunker = Chunker::new(&IdKey::from_bytes([42; 32]), config).unwrap();
    let len = GIB;
    let most_chunks = len / u64::from(config.min) + 1;
    let mut digests = Vec::new();
    for (name, bound, parallel) in [
        ("digest_reader", 16 * MIB, false),
        ("digest_reader_parallel", 64 * MIB, true),
    ] {
        if parallel {
            // Start rayon's thread pool first: not what is measured.
            chunker
                .digest_reader_parallel(Generated::new(MIB, 1), HashOptions::default())
                .unwrap();
        }
        let input = Generated::new(len, 7);
        // As the client hashes files.
        let opts = HashOptions::default();
        let (grew, digest) = peak_growth(|| {
            if parallel {
                chunker.digest_reader_parallel(input, opts)
            } else {
                chunker.digest_reader(input, opts)
            }
        });
        let digest = digest.unwrap();
        assert_eq!(digest.size, len, "{name}");
        let chunks = digest.chunks.len() as u64;
        assert!(chunks > len / u64::from(config.max) && chunks <= most_chunks);
        assert!(
            grew < bound,
            "{name}: peak RSS grew by {} MiB while streaming {} MiB ({chunks} chunks); \
             the bound is {} MiB",
            grew / MIB,
            len / MIB,
            bound / MIB
        );
        eprintln!(
            "{name}: peak RSS grew by {:.1} MiB ({chunks} chunks)",
            grew as f64 / MIB as f64
        );
        digests.push(digest);
    }
    // Both hashed the same bytes.
    assert_eq!(digests[0], digests[1]);
}
