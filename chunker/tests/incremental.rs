//! `Chunker::digest_against`: rehashing an edited input against the chunk list of the
//! version before gives exactly what cutting it afresh gives.

use fsync_chunker::{chunk_id, content_hash, Chunker, ChunkerConfig, FileDigest, HashOptions};
use fsync_common::{ChunkId, IdKey};
use proptest::prelude::*;
use rand::rngs::StdRng;
use rand::{Rng, RngCore, SeedableRng};

const KIB: u32 = 1024;
const SMALL: ChunkerConfig = ChunkerConfig {
    min: 2 * KIB,
    avg: 8 * KIB,
    max: 32 * KIB,
};

fn key() -> IdKey {
    IdKey::from_bytes([9; 32])
}

fn chunker(config: ChunkerConfig) -> Chunker {
    Chunker::new(&key(), config).unwrap()
}

fn random_bytes(rng: &mut StdRng, len: usize) -> Vec<u8> {
    let mut data = vec![0u8; len];
    rng.fill_bytes(&mut data);
    data
}

fn list(d: &FileDigest) -> Vec<(ChunkId, u32)> {
    d.chunks.iter().map(|c| (c.id, c.len)).collect()
}

/// One edit of `data` at a random place: overwrite, insert, delete, append, truncate,
/// or a run of repeated bytes (which gives repeated chunk ids).
fn edit(rng: &mut StdRng, data: &mut Vec<u8>) {
    let at = rng.gen_range(0..=data.len());
    let n = rng.gen_range(1..=20_000usize);
    match rng.gen_range(0..6) {
        0 => {
            let end = (at + n).min(data.len());
            let fresh = random_bytes(rng, end - at);
            data[at..end].copy_from_slice(&fresh);
        }
        1 => {
            let fresh = random_bytes(rng, n);
            data.splice(at..at, fresh);
        }
        2 => {
            let end = (at + n).min(data.len());
            data.drain(at..end);
        }
        3 => {
            let fresh = random_bytes(rng, n);
            data.extend(fresh);
        }
        4 => data.truncate(at),
        _ => {
            let byte = rng.gen();
            data.splice(at..at, std::iter::repeat_n(byte, n * 8));
        }
    }
}

/// Checks `digest_against` on `new` with `base` against a fresh digest.
fn check(chunker: &Chunker, new: &[u8], base: &[(ChunkId, u32)]) {
    let opts = HashOptions::with_sha256();
    let fresh = chunker.digest_reader(new, opts).unwrap();
    let got = chunker
        .digest_against(new, new.len() as u64, base, opts)
        .unwrap();
    assert_eq!(got, fresh);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn edits_rehash_like_a_fresh_cut(len in 0usize..1 << 20, edits in 1usize..5, seed: u64) {
        let chunker = chunker(SMALL);
        let mut rng = StdRng::seed_from_u64(seed);
        let mut data = random_bytes(&mut rng, len);
        let base = list(&chunker.digest_reader(&data[..], HashOptions::default()).unwrap());
        for _ in 0..edits {
            edit(&mut rng, &mut data);
        }
        check(&chunker, &data, &base);
    }

    /// A base list from elsewhere (another chunking, made-up ids) still gives chunks
    /// whose ids are those of their bytes, covering the input, with its hashes.
    #[test]
    fn a_foreign_base_still_gives_a_right_digest(len in 1usize..512 << 10, seed: u64) {
        let chunker = chunker(SMALL);
        let other = Chunker::new(&key(), ChunkerConfig { min: 4 * KIB, avg: 16 * KIB, max: 64 * KIB }).unwrap();
        let mut rng = StdRng::seed_from_u64(seed);
        let mut data = random_bytes(&mut rng, len);
        let mut base = list(&other.digest_reader(&data[..], HashOptions::default()).unwrap());
        base.push((ChunkId::from_bytes(rng.gen()), rng.gen_range(0..100_000)));
        edit(&mut rng, &mut data);
        let got = chunker.digest_against(&data[..], data.len() as u64, &base, HashOptions::default()).unwrap();
        prop_assert_eq!(got.size, data.len() as u64);
        prop_assert_eq!(got.content_hash, content_hash(&key(), &data));
        let mut off = 0usize;
        for c in &got.chunks {
            prop_assert_eq!(c.offset, off as u64);
            prop_assert!(c.len > 0 && c.len <= SMALL.max);
            prop_assert_eq!(c.id, chunk_id(&key(), &data[off..off + c.len as usize]));
            off += c.len as usize;
        }
        prop_assert_eq!(off, data.len());
    }
}

/// The unedited input verifies chunk for chunk; one byte changed in a 40 MiB input
/// (runs of 16 MiB, several cut windows) with the default sizes rehashes like a fresh
/// cut, as do an insert and a shorter file.
#[test]
fn large_input_with_default_sizes() {
    let chunker = chunker(ChunkerConfig::default());
    let mut rng = StdRng::seed_from_u64(40);
    let data = random_bytes(&mut rng, 40 << 20);
    let base = list(
        &chunker
            .digest_reader(&data[..], HashOptions::default())
            .unwrap(),
    );
    check(&chunker, &data, &base);
    let mut overwrite = data.clone();
    overwrite[20 << 20] ^= 1;
    check(&chunker, &overwrite, &base);
    let mut insert = data.clone();
    insert.insert(33 << 20, 7);
    check(&chunker, &insert, &base);
    check(&chunker, &data[..(17 << 20) + 5], &base);
}

#[test]
fn an_empty_base_or_input_works() {
    let chunker = chunker(SMALL);
    let mut rng = StdRng::seed_from_u64(1);
    let data = random_bytes(&mut rng, 100_000);
    check(&chunker, &data, &[]);
    check(
        &chunker,
        &[],
        &list(
            &chunker
                .digest_reader(&data[..], HashOptions::default())
                .unwrap(),
        ),
    );
}

#[test]
fn a_short_input_is_an_error_not_a_wrong_digest() {
    let chunker = chunker(SMALL);
    let data = vec![3u8; 50_000];
    let err = chunker
        .digest_against(&data[..], 60_000, &[], HashOptions::default())
        .unwrap_err();
    assert!(err.to_string().contains("reading input"), "{err}");
}
