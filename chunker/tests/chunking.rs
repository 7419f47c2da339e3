//! Behaviour of the chunker through its public API.

use std::collections::HashSet;
use std::io::{self, Read};

use fsync_chunker::{
    chunk_id, content_hash, Chunk, ChunkInfo, Chunker, ChunkerConfig, ChunkerError, ContentHasher,
    FileDigest, HashOptions,
};
use fsync_common::IdKey;
use proptest::prelude::*;
use rand::rngs::StdRng;
use rand::{Rng, RngCore, SeedableRng};
use sha2::{Digest, Sha256};

const KIB: u32 = 1024;
/// Small sizes, so that modest inputs give many chunks.
const SMALL: ChunkerConfig = ChunkerConfig {
    min: 2 * KIB,
    avg: 8 * KIB,
    max: 32 * KIB,
};

fn key(byte: u8) -> IdKey {
    IdKey::from_bytes([byte; 32])
}

fn chunker(config: ChunkerConfig) -> Chunker {
    Chunker::new(&key(7), config).unwrap()
}

fn random_bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut data = vec![0u8; len];
    StdRng::seed_from_u64(seed).fill_bytes(&mut data);
    data
}

fn streamed(chunker: &Chunker, data: &[u8]) -> Vec<Chunk> {
    chunker.chunks(data).collect::<Result<_, _>>().unwrap()
}

fn infos(chunks: &[Chunk]) -> Vec<ChunkInfo> {
    chunks.iter().map(Chunk::info).collect()
}

fn lens(chunks: &[ChunkInfo]) -> Vec<u32> {
    chunks.iter().map(|c| c.len).collect()
}

fn digest(chunker: &Chunker, data: &[u8], opts: HashOptions) -> FileDigest {
    chunker.digest_reader(data, opts).unwrap()
}

/// A reader that hands out 1..=7 bytes per call and sometimes fails with
/// `Interrupted` (which must be retried, not reported).
struct Stingy<'a> {
    data: &'a [u8],
    rng: StdRng,
}

impl Read for Stingy<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.rng.gen_ratio(1, 5) {
            return Err(io::ErrorKind::Interrupted.into());
        }
        let n = self.rng.gen_range(1..=7).min(buf.len());
        let n = n.min(self.data.len());
        buf[..n].copy_from_slice(&self.data[..n]);
        self.data = &self.data[n..];
        Ok(n)
    }
}

/// Yields `ok_bytes` bytes of zeros, then fails.
struct FailsAfter {
    ok_bytes: usize,
}

impl Read for FailsAfter {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.ok_bytes == 0 {
            return Err(io::Error::other("disk on fire"));
        }
        let n = buf.len().min(self.ok_bytes);
        buf[..n].fill(0);
        self.ok_bytes -= n;
        Ok(n)
    }
}

/// Checks every invariant that relates a streamed chunk list to its input.
fn check_stream_invariants(chunker: &Chunker, data: &[u8]) {
    let config = chunker.config();
    let chunks = streamed(chunker, data);

    // Concatenation is the input; offsets are contiguous.
    let mut offset = 0u64;
    let mut rebuilt = Vec::with_capacity(data.len());
    for c in &chunks {
        assert_eq!(c.offset, offset);
        offset += u64::from(c.len());
        rebuilt.extend_from_slice(&c.data);
        assert_eq!(c.id, chunk_id(&key(7), &c.data));
    }
    assert_eq!(rebuilt, data);

    // Sizes: min..=max except the last, which is 1..=max.
    for (i, c) in chunks.iter().enumerate() {
        assert!(c.len() <= config.max, "chunk {i} too long: {}", c.len());
        assert!(!c.is_empty());
        if i + 1 < chunks.len() {
            assert!(c.len() >= config.min, "chunk {i} too short: {}", c.len());
        }
    }

    // Streaming, in-memory and parallel agree on boundaries and ids.
    let expected = infos(&chunks);
    assert_eq!(chunker.chunk_slice(data), expected);
    assert_eq!(chunker.chunk_slice_parallel(data), expected);
    let opts = HashOptions::with_sha256();
    let seq = chunker.digest_reader(data, opts).unwrap();
    assert_eq!(seq.chunks, expected);
    assert_eq!(seq.size, data.len() as u64);
    assert_eq!(seq.content_hash, content_hash(&key(7), data));
    assert_eq!(chunker.digest_reader_parallel(data, opts).unwrap(), seq);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    #[test]
    fn streaming_in_memory_and_parallel_agree(len in 0usize..2 << 20, seed: u64) {
        check_stream_invariants(&chunker(SMALL), &random_bytes(seed, len));
    }

    #[test]
    fn short_and_interrupted_reads_change_nothing(len in 0usize..256 << 10, seed: u64) {
        let chunker = chunker(SMALL);
        let data = random_bytes(seed, len);
        let opts = HashOptions::with_sha256();
        let stingy = Stingy { data: &data, rng: StdRng::seed_from_u64(seed ^ 1) };
        prop_assert_eq!(
            chunker.digest_reader(stingy, opts).unwrap(),
            chunker.digest_reader(&data[..], opts).unwrap()
        );
    }

    #[test]
    fn any_key_streams_like_in_memory(k: [u8; 32], len in 0usize..512 << 10, seed: u64) {
        let chunker = Chunker::new(&IdKey::from_bytes(k), SMALL).unwrap();
        let data = random_bytes(seed, len);
        let streamed: Vec<ChunkInfo> = chunker.chunks(&data[..]).map(|c| c.unwrap().info()).collect();
        prop_assert_eq!(chunker.chunk_slice(&data), streamed);
    }
}

#[test]
fn eight_mib_with_default_config_streams_like_in_memory() {
    let data = random_bytes(8, 8 << 20);
    check_stream_invariants(&chunker(ChunkerConfig::default()), &data);
}

#[test]
fn deterministic_across_runs_and_instances() {
    let data = random_bytes(3, 1 << 20);
    let a = chunker(SMALL).digest_reader(&data[..], HashOptions::default());
    let b = chunker(SMALL).digest_reader(&data[..], HashOptions::default());
    assert_eq!(a.unwrap(), b.unwrap());
}

/// Boundaries and ids must stay stable across releases: a change here silently
/// defeats dedup against everything already stored.
#[test]
fn golden_vector_is_stable() {
    let mut data = vec![0u8; 200_000];
    blake3::Hasher::new()
        .update(b"fsync chunker golden input")
        .finalize_xof()
        .fill(&mut data);
    let chunker = chunker(SMALL);
    let chunks = chunker.chunk_slice(&data);
    assert_eq!(lens(&chunks), GOLDEN_LENS);
    assert_eq!(chunks[0].id.to_hex(), GOLDEN_FIRST_ID);
    let digest = digest(&chunker, &data, HashOptions::default());
    assert_eq!(digest.content_hash.to_hex(), GOLDEN_CONTENT_HASH);
}

const GOLDEN_LENS: &[u32] = &[
    11939, 3981, 9437, 11602, 7715, 9157, 11196, 11288, 7128, 14699, 11593, 9931, 13470, 10315,
    11180, 6764, 8833, 11765, 10368, 7639,
];
const GOLDEN_FIRST_ID: &str = "24f5ef212285e101737489e7ceb1b174a4e43009bfc4ad886ed89e1672c0b957";
const GOLDEN_CONTENT_HASH: &str =
    "e1bd17f7055a091f3a3196e421fab91b543effd808abc2eb797d37e4ab104954";

/// The derivations documented in the crate doc, recomputed from the primitives.
#[test]
fn derivations_follow_the_documentation() {
    use fastcdc::v2020::{FastCDC, Normalization};

    let data = random_bytes(10, 1 << 20);
    let k = key(7);
    let derived = blake3::derive_key("fsync 2026-01 chunker fastcdc gear seed v1", k.as_bytes());
    let seed = u64::from_le_bytes(derived[..8].try_into().unwrap());
    let (min, avg, max) = (SMALL.min, SMALL.avg, SMALL.max);
    let cdc = FastCDC::with_level_and_seed(&data, min, avg, max, Normalization::Level1, seed);
    let expected: Vec<ChunkInfo> = cdc
        .map(|c| ChunkInfo {
            offset: c.offset as u64,
            len: c.length as u32,
            id: fsync_common::ChunkId::from_bytes(
                *blake3::keyed_hash(k.as_bytes(), &data[c.offset..][..c.length]).as_bytes(),
            ),
        })
        .collect();
    assert_eq!(chunker(SMALL).chunk_slice(&data), expected);

    let context = "fsync 2026-01 chunker file content hash key v1";
    let content_key = blake3::derive_key(context, k.as_bytes());
    assert_eq!(
        content_hash(&k, &data).as_bytes(),
        blake3::keyed_hash(&content_key, &data).as_bytes()
    );
}

#[test]
fn another_namespace_gets_other_ids_and_other_boundaries() {
    let data = random_bytes(4, 1 << 20);
    let one = Chunker::new(&key(1), SMALL).unwrap();
    let two = Chunker::new(&key(2), SMALL).unwrap();
    let (a, b) = (one.chunk_slice(&data), two.chunk_slice(&data));
    assert_ne!(lens(&a), lens(&b), "gear table must be seeded by the key");
    let ids_a: HashSet<_> = a.iter().map(|c| c.id).collect();
    assert!(b.iter().all(|c| !ids_a.contains(&c.id)));

    // Same boundaries would still give other ids: check on a one-chunk input.
    let small = &data[..1000];
    assert_ne!(one.chunk_slice(small)[0].id, two.chunk_slice(small)[0].id);
}

#[test]
fn a_one_byte_insert_changes_at_most_three_chunks() {
    let chunker = chunker(ChunkerConfig::default());
    let original = random_bytes(64, 64 << 20);
    let mut edited = original.clone();
    edited.insert(original.len() / 2, 0x5a);

    let before = chunker.chunk_slice_parallel(&original);
    let before: HashSet<_> = before.iter().map(|c| c.id).collect();
    let after = chunker.chunk_slice_parallel(&edited);
    let new = after.iter().filter(|c| !before.contains(&c.id)).count();
    let n = before.len();
    assert!(n > 500, "expected many chunks, got {n}");
    assert!((1..=3).contains(&new), "{new} chunks changed");
}

#[test]
fn empty_input_has_no_chunks_and_the_keyed_empty_hash() {
    let chunker = chunker(SMALL);
    assert_eq!(chunker.chunks(io::empty()).count(), 0);
    assert!(chunker.chunk_slice(&[]).is_empty());
    let sha = HashOptions::with_sha256();
    let digest = chunker.digest_reader(io::empty(), sha).unwrap();
    assert_eq!(digest.size, 0);
    assert!(digest.chunks.is_empty());
    assert_eq!(digest.content_hash, content_hash(&key(7), b""));
    assert_ne!(
        digest.content_hash.as_bytes(),
        chunk_id(&key(7), b"").as_bytes()
    );
    assert_eq!(digest.sha256, Some(Sha256::digest(b"").into()));
    let par = chunker.digest_reader_parallel(io::empty(), sha).unwrap();
    assert_eq!(par, digest);
}

#[test]
fn input_shorter_than_min_is_one_whole_chunk() {
    let chunker = chunker(SMALL);
    for len in [1, 100, SMALL.min as usize - 1, SMALL.min as usize] {
        let data = random_bytes(len as u64, len);
        let chunks = streamed(&chunker, &data);
        assert_eq!(chunks.len(), 1, "len {len}");
        assert_eq!(chunks[0].data, data);
        assert_eq!(chunker.chunk_slice(&data), infos(&chunks));
    }
}

#[test]
fn one_chunk_file_content_hash_differs_from_its_chunk_id() {
    let data = b"hello, world";
    let digest = digest(&chunker(SMALL), data, HashOptions::default());
    assert_eq!(digest.chunks.len(), 1);
    assert_eq!(digest.chunks[0].id, chunk_id(&key(7), data));
    let (hash, id) = (digest.content_hash, digest.chunks[0].id);
    assert_ne!(hash.as_bytes(), id.as_bytes());
}

#[test]
fn ids_are_keyed_blake3_of_the_plaintext() {
    let data = random_bytes(5, 100_000);
    let k = key(7);
    for c in chunker(SMALL).chunk_slice(&data) {
        let bytes = &data[c.offset as usize..][..c.len as usize];
        let keyed = blake3::keyed_hash(k.as_bytes(), bytes);
        assert_eq!(c.id.as_bytes(), keyed.as_bytes());
        assert_ne!(c.id.as_bytes(), blake3::hash(bytes).as_bytes());
    }
}

#[test]
fn pathological_input_gets_max_sized_chunks() {
    let data = vec![0u8; 10 * SMALL.max as usize + 5];
    let chunks = chunker(SMALL).chunk_slice(&data);
    assert_eq!(chunks.len(), 11);
    assert!(chunks[..10].iter().all(|c| c.len == SMALL.max));
    assert_eq!(chunks[10].len, 5);
}

#[test]
fn content_hash_does_not_depend_on_chunk_sizes() {
    let data = random_bytes(6, 1 << 20);
    let opts = HashOptions::with_sha256();
    let small = digest(&chunker(SMALL), &data, opts);
    let default = digest(&chunker(ChunkerConfig::default()), &data, opts);
    assert_ne!(small.chunks, default.chunks);
    assert_eq!(small.content_hash, default.content_hash);
    assert_eq!(small.sha256, default.sha256);
}

#[test]
fn content_hasher_over_the_chunks_matches_the_digest() {
    let data = random_bytes(8, 1 << 20);
    let chunker = chunker(SMALL);
    let digest = digest(&chunker, &data, HashOptions::default());
    let mut hasher = ContentHasher::new(&key(7));
    let mut offset = 0usize;
    for c in &digest.chunks {
        hasher.update(&data[offset..offset + c.len as usize]);
        offset += c.len as usize;
    }
    assert_eq!(hasher.finalize(), digest.content_hash);
    assert_eq!(hasher.finalize(), content_hash(&key(7), &data));
    let mut other = ContentHasher::new(&key(8));
    other.update(&data);
    assert_ne!(other.finalize(), digest.content_hash);
}

#[test]
fn sha256_is_plain_sha256_when_enabled_and_absent_otherwise() {
    let data = random_bytes(7, 300_000);
    let chunker = chunker(SMALL);
    let sha = HashOptions::with_sha256();
    let on = digest(&chunker, &data, sha);
    assert_eq!(on.sha256, Some(Sha256::digest(&data).into()));
    let off = digest(&chunker, &data, HashOptions::default());
    assert_eq!(off.sha256, None);
    assert_eq!(off.content_hash, on.content_hash);
    let par_on = chunker.digest_reader_parallel(&data[..], sha).unwrap();
    assert_eq!(par_on, on);
}

#[test]
fn chunk_file_hands_every_chunk_in_order_to_the_callback() {
    let data = random_bytes(8, 3 << 20);
    let chunker = chunker(SMALL);
    for parallel in [false, true] {
        let mut seen = Vec::new();
        let collect = |c: Chunk| {
            seen.push(c);
            Ok::<_, ChunkerError>(())
        };
        let digest = if parallel {
            chunker.chunk_file_parallel(&data[..], HashOptions::default(), collect)
        } else {
            chunker.chunk_file(&data[..], HashOptions::default(), collect)
        }
        .unwrap();
        assert!(seen.len() > 64, "more than one parallel batch");
        assert_eq!(infos(&seen), digest.chunks);
        let joined: Vec<u8> = seen.iter().flat_map(|c| c.data.iter().copied()).collect();
        assert_eq!(joined, data);
    }
}

#[derive(Debug)]
enum UploadError {
    Chunker(ChunkerError),
    Full,
}

impl From<ChunkerError> for UploadError {
    fn from(e: ChunkerError) -> Self {
        Self::Chunker(e)
    }
}

#[test]
fn a_callback_error_stops_chunking() {
    let data = random_bytes(9, 1 << 20);
    let chunker = chunker(SMALL);
    let opts = HashOptions::default();
    for parallel in [false, true] {
        let mut calls = 0;
        let fail_the_second = |_: Chunk| {
            calls += 1;
            (calls != 2).then_some(()).ok_or(UploadError::Full)
        };
        let result = if parallel {
            chunker.chunk_file_parallel(&data[..], opts, fail_the_second)
        } else {
            chunker.chunk_file(&data[..], opts, fail_the_second)
        };
        assert!(matches!(result, Err(UploadError::Full)), "{parallel}");
        assert_eq!(calls, 2, "{parallel}");
    }
}

#[test]
fn a_read_error_is_reported_once_then_the_stream_ends() {
    let chunker = chunker(SMALL);
    let (opts, fails) = (HashOptions::default(), || FailsAfter { ok_bytes: 100_000 });
    let mut chunks = chunker.chunks(fails());
    let mut ok = 0;
    let err = loop {
        match chunks.next().expect("an error before the end") {
            Ok(_) => ok += 1,
            Err(e) => break e,
        }
    };
    assert!(matches!(&err, ChunkerError::Io(e) if e.to_string() == "disk on fire"));
    assert!(ok >= 1);
    assert!(chunks.next().is_none());

    let seq = chunker.digest_reader(fails(), opts);
    assert!(matches!(seq, Err(ChunkerError::Io(_))));
    let par = chunker.chunk_file_parallel(fails(), opts, |_| Err(UploadError::Full));
    // 100 kB of zeros is three max-size chunks and a failing read, all in the first
    // batch: the error comes before any chunk reaches the callback.
    assert!(matches!(
        par,
        Err(UploadError::Chunker(ChunkerError::Io(_)))
    ));
    let par = chunker.digest_reader_parallel(fails(), opts);
    assert!(matches!(par, Err(ChunkerError::Io(_))));
}

#[test]
fn digest_files_matches_digest_reader_per_file_and_reports_missing_files() {
    let dir = tempfile::tempdir().unwrap();
    let mut paths = Vec::new();
    let mut contents = Vec::new();
    for (i, len) in [0usize, 10, 50_000, 1 << 20].into_iter().enumerate() {
        let path = dir.path().join(format!("f{i}"));
        let data = random_bytes(i as u64, len);
        std::fs::write(&path, &data).unwrap();
        paths.push(path);
        contents.push(data);
    }
    paths.push(dir.path().join("missing"));

    let chunker = chunker(SMALL);
    let results = chunker.digest_files(&paths, HashOptions::with_sha256());
    assert_eq!(results.len(), paths.len());
    for (result, data) in results.iter().zip(&contents) {
        let expected = digest(&chunker, data, HashOptions::with_sha256());
        assert_eq!(result.as_ref().unwrap(), &expected);
    }
    assert!(matches!(
        results.last().unwrap(),
        Err(ChunkerError::Io(e)) if e.kind() == io::ErrorKind::NotFound
    ));
}

#[test]
fn invalid_configs_are_rejected() {
    let cases = [
        (32, 256, 1024, "below fastcdc's lower bound of 64"),
        (2 << 20, 2 << 20, 4 << 20, "min is above"),
        (65, 256, 1024, "even"),
        (64, 128, 1024, "avg is below"),
        (64, 256, 512, "max is below"),
        (64, 256, (4 << 20) + 2, "MAX_CHUNK_PLAINTEXT"),
        (64, 8 << 20, 16 << 20, "avg is above"),
        (4096, 2048, 8192, "min is greater than avg"),
        (1024, 8192, 4096, "avg is greater than max"),
    ];
    for (min, avg, max, reason) in cases {
        let config = ChunkerConfig { min, avg, max };
        let err = ChunkerConfig::new(min, avg, max).unwrap_err();
        assert!(
            matches!(&err, ChunkerError::InvalidConfig { config: c, reason: r } if *c == config && r.contains(reason)),
            "{min}/{avg}/{max}: {err}"
        );
        assert!(matches!(
            Chunker::new(&key(1), config),
            Err(ChunkerError::InvalidConfig { .. })
        ));
    }
    // The edges of the allowed ranges are accepted.
    for (min, avg, max) in [
        (64, 256, 1024),
        (1 << 20, 4 << 20, 4 << 20),
        (4096, 4096, 4096),
    ] {
        ChunkerConfig::new(min, avg, max).unwrap();
    }
    assert_eq!(
        ChunkerConfig::default(),
        ChunkerConfig::new(16 * KIB, 64 * KIB, 256 * KIB).unwrap()
    );
}

#[test]
fn debug_output_hides_key_material_and_plaintext() {
    let chunker = Chunker::new(&IdKey::from_bytes([0xab; 32]), SMALL).unwrap();
    assert_eq!(
        format!("{chunker:?}"),
        "Chunker { config: ChunkerConfig { min: 2048, avg: 8192, max: 32768 }, .. }"
    );
    let chunk = streamed(&chunker, b"secret plaintext").remove(0);
    let shown = format!("{chunk:?}");
    let hidden = shown.contains("len: 16") && !shown.contains("data");
    assert!(hidden, "{shown}");
}
