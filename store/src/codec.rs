//! The blob codec: chunk plaintext ⇄ compressed, encrypted, id-bound blob.
//!
//! ```text
//! magic "FSB1" | version u8 = 1 | flags u8 (bit 0: zstd) | nonce[24] | ciphertext + tag[16]
//! ```
//!
//! The AEAD is XChaCha20-Poly1305 with AAD = the 30-byte header ‖ the chunk id, so a
//! blob cannot be presented under another id, nor its flags flipped. Decoding bounds
//! the decompressed size, then re-derives the chunk id from the plaintext.
//!
//! Encoding probes a sample of the chunk before compressing it (see
//! [`BlobCodec::encode`]): which chunks are compressed is not part of the format.

use std::cell::RefCell;
use std::fmt;
use std::io::Read;

use chacha20poly1305::aead::AeadInPlace;
use chacha20poly1305::{Tag, XChaCha20Poly1305, XNonce};
use fsync_common::limits::{MAX_BLOB_SIZE, MAX_CHUNK_PLAINTEXT};
use fsync_common::{ChunkId, IdKey};
use rand::rngs::OsRng;
use rand::RngCore as _;

use crate::keys::NamespaceKeys;

const MAGIC: &[u8; 4] = b"FSB1";
const VERSION: u8 = 1;
const NONCE_LEN: usize = 24;
const TAG_LEN: usize = 16;
/// Flag bit 0: the plaintext was compressed with zstd before encryption.
pub(crate) const FLAG_ZSTD: u8 = 0b0000_0001;
const KNOWN_FLAGS: u8 = FLAG_ZSTD;

/// Length of a blob's header: magic, version, flags and nonce.
pub const BLOB_HEADER_LEN: usize = 4 + 1 + 1 + NONCE_LEN;
/// Bytes a blob adds to its (possibly compressed) payload: header and tag.
pub const BLOB_OVERHEAD: usize = BLOB_HEADER_LEN + TAG_LEN;
/// The zstd level used unless [`BlobCodec::with_zstd_level`] says otherwise.
pub const DEFAULT_ZSTD_LEVEL: i32 = 3;
/// Compressed payloads are kept only if they save at least this percentage.
const MIN_SAVING_PERCENT: usize = 3;

/// Error of encoding or decoding a blob.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CodecError {
    /// Not an fsync blob: wrong magic, or shorter than header + tag.
    #[error("not an fsync blob (bad magic or truncated)")]
    BadHeader,
    /// The blob's format version is not one this build reads.
    #[error("unsupported blob version {0}")]
    UnsupportedVersion(u8),
    /// The flags byte has bits this build does not know.
    #[error("unknown blob flags {0:#04x}")]
    UnknownFlags(u8),
    /// Authentication failed: wrong key, tampered blob, or a blob presented under
    /// another chunk id.
    #[error("blob authentication failed (wrong key, tampered, or wrong id)")]
    Decrypt,
    /// A plaintext or blob exceeds its bound (for decoding: the decompressed size).
    #[error("data exceeds the limit of {limit} bytes")]
    TooLarge {
        /// The bound in bytes.
        limit: usize,
    },
    /// The authenticated payload is not a valid zstd stream.
    #[error("blob payload does not decompress")]
    Decompress,
    /// The plaintext does not hash to the chunk id (a key holder stored wrong data).
    #[error("plaintext does not match its chunk id")]
    IdMismatch,
}

/// Compressibility probe: this many samples, each this long, spread over the
/// plaintext from its first byte to its last.
const PROBE_SAMPLES: usize = 4;
const PROBE_SAMPLE_LEN: usize = 2 * 1024;
const PROBE_LEN: usize = PROBE_SAMPLES * PROBE_SAMPLE_LEN;
/// Plaintexts shorter than this are compressed without probing: the probe would
/// read a large part of them anyway.
const PROBE_MIN_PLAINTEXT: usize = 2 * PROBE_LEN;
/// The probe's zstd level: the fastest that still finds repeats and skewed bytes.
const PROBE_ZSTD_LEVEL: i32 = 1;
/// The probe lets full compression run if zstd at [`PROBE_ZSTD_LEVEL`] saves at least
/// this percentage of the samples. Deliberately below [`MIN_SAVING_PERCENT`]: level 1
/// on a few KiB saves less than the configured level on the whole chunk, and only the
/// full attempt decides whether the 3 % are reached.
const PROBE_MIN_SAVING_PERCENT: usize = 1;
/// The probe also lets full compression run, without trying zstd on the samples, if
/// their byte histogram alone (order-0 entropy, which Huffman coding of the literals
/// approaches) promises a saving of about 6 %: text-like data passes here cheaply.
/// That is a collision entropy of at most `log2(180)` = 7.49 bits per byte (random
/// samples of [`PROBE_LEN`] bytes show about 7.96).
const PROBE_SKEWED_INV_SUM_SQ: u64 = 180;

/// Per-thread zstd state, reused across chunks: contexts are costly to create.
struct ZstdScratch {
    /// The compressor at the codec's level, recreated if another level is asked for.
    compressor: Option<(i32, zstd::bulk::Compressor<'static>)>,
    /// The probe's compressor at [`PROBE_ZSTD_LEVEL`].
    probe: Option<zstd::bulk::Compressor<'static>>,
    /// The probe's samples, then its compressed output.
    sample: Vec<u8>,
    probe_out: Vec<u8>,
}

thread_local! {
    static ZSTD: RefCell<ZstdScratch> = const { RefCell::new(ZstdScratch::new()) };
    static DECOMPRESSOR: RefCell<Option<zstd::bulk::Decompressor<'static>>> =
        const { RefCell::new(None) };
}

impl ZstdScratch {
    const fn new() -> Self {
        Self {
            compressor: None,
            probe: None,
            sample: Vec::new(),
            probe_out: Vec::new(),
        }
    }

    /// Whether compressing `data` in full is worth trying: `false` only when `data` is
    /// long enough to probe and its samples neither have skewed byte frequencies nor
    /// compress by [`PROBE_MIN_SAVING_PERCENT`] at [`PROBE_ZSTD_LEVEL`].
    ///
    /// The samples are [`PROBE_SAMPLES`] runs of [`PROBE_SAMPLE_LEN`] bytes spread
    /// evenly from the first byte to the last (so a compressible head or tail is
    /// seen). Data whose compressible part lies wholly between the samples, or whose
    /// only redundancy is random data repeated farther apart than a sample, is judged
    /// by what the samples show and stored raw: the price of not compressing whole
    /// chunks of random data only to throw the result away.
    fn worth_compressing(&mut self, data: &[u8]) -> bool {
        if data.len() < PROBE_MIN_PLAINTEXT {
            return true;
        }
        self.sample.clear();
        let last_start = data.len() - PROBE_SAMPLE_LEN;
        for i in 0..PROBE_SAMPLES {
            let start = last_start * i / (PROBE_SAMPLES - 1);
            self.sample
                .extend_from_slice(&data[start..start + PROBE_SAMPLE_LEN]);
        }
        if bytes_are_skewed(&self.sample) {
            return true;
        }
        if self.probe.is_none() {
            self.probe = zstd::bulk::Compressor::new(PROBE_ZSTD_LEVEL).ok();
        }
        let Some(probe) = self.probe.as_mut() else {
            // No probe (zstd failed to allocate): try the real thing.
            return true;
        };
        let budget = PROBE_LEN * (100 - PROBE_MIN_SAVING_PERCENT) / 100;
        self.probe_out.clear();
        self.probe_out.reserve(budget);
        // Too small an output buffer makes zstd fail: the samples did not compress.
        let mut out = std::io::Cursor::new(&mut self.probe_out);
        match probe.compress_to_buffer(&self.sample, &mut out) {
            Ok(n) => n <= budget,
            Err(_) => false,
        }
    }

    /// Appends `data` compressed at `level` to `out` if that takes at most `budget`
    /// bytes; otherwise (or if zstd fails, when storing `data` raw is still correct)
    /// leaves `out` as it was and returns `false`.
    fn compress_onto(&mut self, data: &[u8], level: i32, budget: usize, out: &mut Vec<u8>) -> bool {
        if self.compressor.as_ref().is_none_or(|(l, _)| *l != level) {
            self.compressor = zstd::bulk::Compressor::new(level).ok().map(|c| (level, c));
        }
        let Some((_, compressor)) = self.compressor.as_mut() else {
            return false;
        };
        let start = out.len();
        out.reserve(budget);
        let mut cursor = std::io::Cursor::new(&mut *out);
        cursor.set_position(start as u64);
        match compressor.compress_to_buffer(data, &mut cursor) {
            Ok(n) if n <= budget => true,
            _ => {
                out.truncate(start);
                false
            }
        }
    }
}

/// Whether the byte frequencies of `data` promise an entropy coder a saving of about
/// 6 %: whether its collision entropy `-log2(Σ p²)`, in bits per byte, is at most
/// `log2(PROBE_SKEWED_INV_SUM_SQ)`.
/// Collision entropy never exceeds Shannon entropy, so this errs towards compressing,
/// and needs no logarithms: `Σ p² ≥ 1 / PROBE_SKEWED_INV_SUM_SQ` in integers.
fn bytes_are_skewed(data: &[u8]) -> bool {
    let mut counts = [0u32; 256];
    for &b in data {
        counts[usize::from(b)] += 1;
    }
    let sum_sq: u64 = counts.iter().map(|&c| u64::from(c) * u64::from(c)).sum();
    let n = data.len() as u64;
    sum_sq * PROBE_SKEWED_INV_SUM_SQ >= n * n
}

/// Decompresses with the output bounded by `max` bytes, in memory bounded by `max`
/// whatever the input claims.
fn decompress_bounded(data: &[u8], max: usize) -> Result<Vec<u8>, CodecError> {
    let single_frame = zstd::zstd_safe::find_frame_compressed_size(data) == Ok(data.len());
    let declared = if single_frame {
        zstd::zstd_safe::get_frame_content_size(data).ok().flatten()
    } else {
        None
    };
    if let Some(n) = declared {
        let n = usize::try_from(n).unwrap_or(usize::MAX);
        if n > max {
            return Err(CodecError::TooLarge { limit: max });
        }
        decompress_declared(data, n)
    } else {
        decompress_streaming(data, max)
    }
}

/// One frame that declares its size `n` (as our encoder's do): decode in one shot
/// into an exactly sized buffer.
fn decompress_declared(data: &[u8], n: usize) -> Result<Vec<u8>, CodecError> {
    DECOMPRESSOR.with(|cell| {
        let mut slot = cell.borrow_mut();
        if slot.is_none() {
            *slot = Some(zstd::bulk::Decompressor::new().map_err(|_| CodecError::Decompress)?);
        }
        let decompressor = slot.as_mut().ok_or(CodecError::Decompress)?;
        let mut out = Vec::with_capacity(n);
        decompressor
            .decompress_to_buffer(data, &mut out)
            .map_err(|_| CodecError::Decompress)?;
        if out.len() == n {
            Ok(out)
        } else {
            Err(CodecError::Decompress)
        }
    })
}

/// Several frames, or no declared size: stream, reading at most `max + 1` bytes, with
/// the decoder's window (its memory) bounded too.
fn decompress_streaming(data: &[u8], max: usize) -> Result<Vec<u8>, CodecError> {
    let mut decoder =
        zstd::stream::read::Decoder::with_buffer(data).map_err(|_| CodecError::Decompress)?;
    // A window larger than the output bound is never needed, but streaming encoders
    // size it by level (up to 2^23 below the ultra levels).
    let window_log = usize::BITS - max.saturating_sub(1).leading_zeros();
    decoder
        .window_log_max(window_log.clamp(23, 27))
        .map_err(|_| CodecError::Decompress)?;
    let mut out = Vec::new();
    decoder
        .take(max as u64 + 1)
        .read_to_end(&mut out)
        .map_err(|_| CodecError::Decompress)?;
    if out.len() > max {
        return Err(CodecError::TooLarge { limit: max });
    }
    Ok(out)
}

struct Header<'a> {
    bytes: &'a [u8],
    flags: u8,
    nonce: &'a [u8],
}

fn parse_header(blob: &[u8]) -> Result<Header<'_>, CodecError> {
    if blob.len() < BLOB_OVERHEAD || &blob[..4] != MAGIC {
        return Err(CodecError::BadHeader);
    }
    if blob[4] != VERSION {
        return Err(CodecError::UnsupportedVersion(blob[4]));
    }
    let flags = blob[5];
    if flags & !KNOWN_FLAGS != 0 {
        return Err(CodecError::UnknownFlags(flags));
    }
    Ok(Header {
        bytes: &blob[..BLOB_HEADER_LEN],
        flags,
        nonce: &blob[6..BLOB_HEADER_LEN],
    })
}

/// Keyless sanity check for the server: refuses anything that is not plausibly a blob
/// (bad magic, version or flags, shorter than header + tag, longer than
/// [`MAX_BLOB_SIZE`]). It cannot check authenticity; only key holders can.
pub fn check_blob_header(blob: &[u8]) -> Result<(), CodecError> {
    parse_header(blob)?;
    if blob.len() > MAX_BLOB_SIZE {
        return Err(CodecError::TooLarge {
            limit: MAX_BLOB_SIZE,
        });
    }
    Ok(())
}

/// Offset of the flags byte in a blob.
const FLAGS_AT: usize = 5;

/// Appends a header with no flags and a fresh random nonce to the empty `blob`;
/// returns the nonce.
fn push_header(blob: &mut Vec<u8>) -> [u8; NONCE_LEN] {
    let mut nonce = [0u8; NONCE_LEN];
    OsRng.fill_bytes(&mut nonce);
    blob.extend_from_slice(MAGIC);
    blob.push(VERSION);
    blob.push(0);
    blob.extend_from_slice(&nonce);
    nonce
}

fn aad(header: &[u8], id: &ChunkId) -> [u8; BLOB_HEADER_LEN + ChunkId::LEN] {
    let mut aad = [0u8; BLOB_HEADER_LEN + ChunkId::LEN];
    aad[..BLOB_HEADER_LEN].copy_from_slice(header);
    aad[BLOB_HEADER_LEN..].copy_from_slice(id.as_bytes());
    aad
}

/// Encodes chunk plaintexts into blobs and back, for one namespace's keys.
///
/// Cheap to clone. Encoding and decoding are CPU work (zstd, AEAD, BLAKE3): in async
/// code run them on `spawn_blocking` (as [`crate::EncryptedStore`] does).
#[derive(Clone)]
pub struct BlobCodec {
    id_key: IdKey,
    cipher: XChaCha20Poly1305,
    zstd_level: i32,
    max_plaintext: usize,
}

impl fmt::Debug for BlobCodec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BlobCodec")
            .field("keys", &"<redacted>")
            .field("zstd_level", &self.zstd_level)
            .field("max_plaintext", &self.max_plaintext)
            .finish_non_exhaustive()
    }
}

impl BlobCodec {
    /// A codec with zstd level [`DEFAULT_ZSTD_LEVEL`] and plaintexts bounded by
    /// [`MAX_CHUNK_PLAINTEXT`].
    pub fn new(keys: &NamespaceKeys) -> Self {
        Self {
            id_key: keys.id_key.clone(),
            cipher: keys.enc_key.cipher(),
            zstd_level: DEFAULT_ZSTD_LEVEL,
            max_plaintext: MAX_CHUNK_PLAINTEXT,
        }
    }

    /// Sets the zstd compression level used by [`BlobCodec::encode`].
    #[must_use]
    pub fn with_zstd_level(mut self, level: i32) -> Self {
        self.zstd_level = level;
        self
    }

    /// Sets the largest plaintext accepted by [`BlobCodec::encode`] and produced by
    /// [`BlobCodec::decode`].
    #[must_use]
    pub fn with_max_plaintext(mut self, max: usize) -> Self {
        self.max_plaintext = max;
        self
    }

    /// The chunk id of `plaintext`: keyed BLAKE3 under the namespace's `id_key`
    /// (identical to `fsync-chunker`'s).
    pub fn chunk_id(&self, plaintext: &[u8]) -> ChunkId {
        ChunkId::from_bytes(*blake3::keyed_hash(self.id_key.as_bytes(), plaintext).as_bytes())
    }

    /// Encodes a chunk. Compresses with zstd only if that saves at least 3 %; encrypts
    /// under a random nonce with the header and `id` as associated data.
    ///
    /// Before compressing a chunk of 16 KiB or more, a cheap probe looks at four
    /// spread 2 KiB samples (the first and the last included); if their byte
    /// frequencies are nearly uniform and zstd level 1 saves under 1 % of them, the
    /// chunk is stored raw without trying: **probe says no → stored raw**. That skips
    /// the full, wasted zstd pass over incompressible data (media, archives, encrypted
    /// files). The trade: a chunk whose only compressible part lies between the
    /// samples (or is random data repeated farther apart than 2 KiB) is stored raw,
    /// though compressing it would have saved some bytes. Chunks that do not pass
    /// the probe would mostly have been stored raw anyway; whole-chunk repeats are
    /// deduplicated by chunk id regardless.
    ///
    /// `id` should be [`BlobCodec::chunk_id`] of `plaintext`, or decoding will fail
    /// with [`CodecError::IdMismatch`].
    pub fn encode(&self, id: &ChunkId, plaintext: &[u8]) -> Result<Vec<u8>, CodecError> {
        if plaintext.len() > self.max_plaintext {
            return Err(CodecError::TooLarge {
                limit: self.max_plaintext,
            });
        }
        let mut blob = Vec::with_capacity(BLOB_OVERHEAD + plaintext.len());
        let nonce = push_header(&mut blob);
        // The largest compressed size that still saves MIN_SAVING_PERCENT.
        let budget = plaintext.len() * (100 - MIN_SAVING_PERCENT) / 100;
        let compressed = budget > 0
            && ZSTD.with(|cell| {
                let mut zstd = cell.borrow_mut();
                zstd.worth_compressing(plaintext)
                    && zstd.compress_onto(plaintext, self.zstd_level, budget, &mut blob)
            });
        if compressed {
            blob[FLAGS_AT] = FLAG_ZSTD;
            // The capacity was sized for a raw payload: give back what the compressed
            // one does not use, keeping room for the tag so that appending it does
            // not reallocate.
            blob.shrink_to(blob.len() + TAG_LEN);
        } else {
            blob.extend_from_slice(plaintext);
        }
        self.encrypt_payload(id, nonce, &mut blob);
        Ok(blob)
    }

    /// Builds a blob around an arbitrary payload (already compressed or not) with
    /// the given flags byte, authenticated for `id`: lets tests and the fuzz targets
    /// reach the decompression and id checks of [`BlobCodec::decode`] with payloads
    /// the encoder would never produce. Only with the `fuzzing` feature.
    #[cfg(any(test, feature = "fuzzing"))]
    pub fn seal(&self, id: &ChunkId, flags: u8, payload: &[u8]) -> Vec<u8> {
        let mut blob = Vec::with_capacity(BLOB_OVERHEAD + payload.len());
        let nonce = push_header(&mut blob);
        blob[FLAGS_AT] = flags;
        blob.extend_from_slice(payload);
        self.encrypt_payload(id, nonce, &mut blob);
        blob
    }

    /// Encrypts `blob`'s payload (everything after its header, flags set) in place and
    /// appends the tag.
    fn encrypt_payload(&self, id: &ChunkId, nonce: [u8; NONCE_LEN], blob: &mut Vec<u8>) {
        let aad = aad(&blob[..BLOB_HEADER_LEN], id);
        let tag = self
            .cipher
            .encrypt_in_place_detached(
                XNonce::from_slice(&nonce),
                &aad,
                &mut blob[BLOB_HEADER_LEN..],
            )
            .expect("payload is far below XChaCha20-Poly1305's message limit");
        blob.extend_from_slice(&tag);
    }

    /// Decodes and verifies a blob stored under `id`: header, authentication tag,
    /// bounded decompression, then the plaintext's chunk id. Never returns data that
    /// does not hash to `id`.
    pub fn decode(&self, id: &ChunkId, blob: &[u8]) -> Result<Vec<u8>, CodecError> {
        let header = parse_header(blob)?;
        // A stored payload is never larger than the plaintext it encodes.
        let limit = self.max_plaintext.saturating_add(BLOB_OVERHEAD);
        if blob.len() > limit {
            return Err(CodecError::TooLarge { limit });
        }
        let tag_at = blob.len() - TAG_LEN;
        let mut payload = blob[BLOB_HEADER_LEN..tag_at].to_vec();
        self.cipher
            .decrypt_in_place_detached(
                XNonce::from_slice(header.nonce),
                &aad(header.bytes, id),
                &mut payload,
                Tag::from_slice(&blob[tag_at..]),
            )
            .map_err(|_| CodecError::Decrypt)?;
        let plaintext = if header.flags & FLAG_ZSTD == 0 {
            payload
        } else {
            decompress_bounded(&payload, self.max_plaintext)?
        };
        if self.chunk_id(&plaintext) != *id {
            return Err(CodecError::IdMismatch);
        }
        Ok(plaintext)
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use proptest::prelude::*;
    use rand::rngs::StdRng;
    use rand::{Rng, RngCore, SeedableRng};

    use super::*;
    use crate::keys::NamespaceKey;

    fn codec() -> BlobCodec {
        BlobCodec::new(&NamespaceKey::generate().derive())
    }

    fn random_bytes(seed: u64, len: usize) -> Vec<u8> {
        let mut v = vec![0u8; len];
        StdRng::seed_from_u64(seed).fill_bytes(&mut v);
        v
    }

    fn text(seed: u64, len: usize) -> Vec<u8> {
        const WORDS: &[&str] = &[
            "the ", "quick ", "brown ", "fox ", "jumps\n", "over ", "a ", "lazy ", "dog. ",
        ];
        let mut rng = StdRng::seed_from_u64(seed);
        let mut v = Vec::with_capacity(len + 8);
        while v.len() < len {
            v.extend_from_slice(WORDS[rng.gen_range(0..WORDS.len())].as_bytes());
        }
        v.truncate(len);
        v
    }

    fn is_compressed(blob: &[u8]) -> bool {
        blob[5] & FLAG_ZSTD != 0
    }

    /// `data`'s chunk id and blob.
    fn encoded(codec: &BlobCodec, data: &[u8]) -> (ChunkId, Vec<u8>) {
        let id = codec.chunk_id(data);
        let blob = codec.encode(&id, data).unwrap();
        (id, blob)
    }

    /// Asserts that `blob` with any one of `bits` flipped does not decode.
    fn assert_flips_rejected(
        codec: &BlobCodec,
        id: &ChunkId,
        blob: &[u8],
        bits: impl Iterator<Item = usize>,
    ) {
        for bit in bits {
            let mut bad = blob.to_vec();
            bad[bit / 8] ^= 1 << (bit % 8);
            let rejected = codec.decode(id, &bad).is_err();
            assert!(rejected, "bit {bit} flipped was accepted");
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]
        #[test]
        fn round_trip(seed in any::<u64>(), len in 0usize..300 * 1024, kind in 0u8..3) {
            let codec = codec();
            let data = match kind {
                0 => random_bytes(seed, len),
                1 => text(seed, len),
                _ => interleave(&random_bytes(seed, len), &text(seed, len), 1024, 2),
            };
            let id = codec.chunk_id(&data);
            let blob = codec.encode(&id, &data).unwrap();
            prop_assert!(check_blob_header(&blob).is_ok());
            prop_assert!(blob.len() <= data.len() + BLOB_OVERHEAD);
            prop_assert_eq!(codec.decode(&id, &blob).unwrap(), data);
        }
    }

    #[test]
    fn empty_plaintext_round_trips_raw() {
        let codec = codec();
        let id = codec.chunk_id(b"");
        let blob = codec.encode(&id, b"").unwrap();
        assert_eq!(blob.len(), BLOB_OVERHEAD);
        assert!(!is_compressed(&blob));
        assert_eq!(codec.decode(&id, &blob).unwrap(), b"");
    }

    #[test]
    fn every_flipped_bit_of_a_small_blob_is_rejected() {
        let codec = codec();
        for data in [b"hello, world".to_vec(), text(1, 200)] {
            let (id, blob) = encoded(&codec, &data);
            assert_flips_rejected(&codec, &id, &blob, 0..blob.len() * 8);
        }
    }

    #[test]
    fn sampled_flipped_bits_of_a_large_blob_are_rejected() {
        let codec = codec();
        let mut rng = StdRng::seed_from_u64(7);
        for data in [text(2, 100 * 1024), random_bytes(3, 100 * 1024)] {
            let (id, blob) = encoded(&codec, &data);
            let bits = blob.len() * 8;
            // All header bits, the tag's bits, then random payload bits.
            let positions = (0..BLOB_HEADER_LEN * 8)
                .chain((blob.len() - TAG_LEN) * 8..bits)
                .chain((0..300).map(|_| rng.gen_range(0..bits)));
            assert_flips_rejected(&codec, &id, &blob, positions);
        }
    }

    #[test]
    fn truncated_and_extended_blobs_are_rejected() {
        let codec = codec();
        let (id, blob) = encoded(&codec, &text(4, 1000));
        for len in 0..blob.len() {
            let truncated = codec.decode(&id, &blob[..len]);
            assert!(truncated.is_err(), "truncated to {len}");
        }
        let mut longer = blob.clone();
        longer.push(0);
        let err = codec.decode(&id, &longer).unwrap_err();
        assert!(matches!(err, CodecError::Decrypt));
    }

    #[test]
    fn wrong_key_fails() {
        let keys = NamespaceKey::generate().derive();
        let codec = BlobCodec::new(&keys);
        let (id, blob) = encoded(&codec, &text(5, 5000));
        let other = codec_with_id_key_of(&keys);
        assert!(matches!(other.decode(&id, &blob), Err(CodecError::Decrypt)));
        let err = self::codec().decode(&id, &blob).unwrap_err();
        assert!(matches!(err, CodecError::Decrypt));
    }

    /// Same `id_key`, different `enc_key`: isolates the encryption key.
    fn codec_with_id_key_of(keys: &NamespaceKeys) -> BlobCodec {
        let mut other = NamespaceKey::generate().derive();
        other.id_key = keys.id_key.clone();
        BlobCodec::new(&other)
    }

    #[test]
    fn blob_under_another_id_fails() {
        let codec = codec();
        let a = text(6, 3000);
        let b = text(7, 3000);
        let (id_a, id_b) = (codec.chunk_id(&a), codec.chunk_id(&b));
        let blob_a = codec.encode(&id_a, &a).unwrap();
        let err = codec.decode(&id_b, &blob_a).unwrap_err();
        assert!(matches!(err, CodecError::Decrypt));
    }

    #[test]
    fn plaintext_not_matching_its_id_is_rejected() {
        let codec = codec();
        let a = text(8, 3000);
        let wrong_id = codec.chunk_id(b"something else");
        let blob = codec.encode(&wrong_id, &a).unwrap();
        let err = codec.decode(&wrong_id, &blob).unwrap_err();
        assert!(matches!(err, CodecError::IdMismatch));
    }

    fn assert_bomb_rejected(frame: &[u8]) {
        let codec = codec();
        let id = codec.chunk_id(b"whatever");
        let blob = codec.seal(&id, FLAG_ZSTD, frame);
        assert!(blob.len() < 64 * 1024, "bomb blob is {} bytes", blob.len());
        let started = Instant::now();
        let err = codec.decode(&id, &blob).unwrap_err();
        assert!(
            matches!(err, CodecError::TooLarge { limit } if limit == MAX_CHUNK_PLAINTEXT),
            "{err:?}"
        );
        assert!(started.elapsed() < Duration::from_secs(10));
    }

    #[test]
    fn decompression_bomb_with_declared_size_fails_fast() {
        let zeros = vec![0u8; 64 * 1024 * 1024];
        let frame = zstd::bulk::compress(&zeros, 19).unwrap();
        assert_bomb_rejected(&frame);
    }

    #[test]
    fn decompression_bomb_without_declared_size_is_bounded() {
        // A streamed frame does not declare its content size: decoding must stop after
        // max + 1 bytes instead of inflating 64 MiB.
        let mut encoder = zstd::stream::write::Encoder::new(Vec::new(), 19).unwrap();
        let block = vec![0u8; 1024 * 1024];
        for _ in 0..64 {
            std::io::Write::write_all(&mut encoder, &block).unwrap();
        }
        let frame = encoder.finish().unwrap();
        assert!(matches!(
            zstd::zstd_safe::get_frame_content_size(&frame),
            Ok(None)
        ));
        assert_bomb_rejected(&frame);
    }

    /// Decoding a decompression bomb keeps memory bounded, not only time: blobs of a
    /// few KiB that inflate to 1 GiB of zeros, with and without a declared content
    /// size, fail with `TooLarge` while the peak RSS grows by less than 32 MiB (the
    /// decoder may hold its window, at most 8 MiB, and the output, at most
    /// `MAX_CHUNK_PLAINTEXT` + 1 bytes in a `Vec` of twice that capacity).
    ///
    /// Measured in a child process, this test binary re-run on this test alone, so
    /// that other tests' allocations do not move the peak. It is a unit test rather
    /// than a file of its own in `tests/` because it needs `BlobCodec::seal` to build
    /// the bomb blobs, which only this crate's own tests (and fuzzing builds) have.
    #[cfg(target_os = "linux")]
    #[test]
    fn decompression_bombs_keep_peak_memory_bounded() {
        const CHILD_ENV: &str = "FSYNC_STORE_BOMB_MEMORY_CHILD";
        if std::env::var_os(CHILD_ENV).is_some() {
            bomb_memory::run();
            return;
        }
        let (_, module) = module_path!().split_once("::").unwrap();
        let name = format!("{module}::decompression_bombs_keep_peak_memory_bounded");
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args([&name, "--exact", "--nocapture", "--test-threads=1"])
            .env(CHILD_ENV, "1")
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success() && stdout.contains("1 passed"),
            "child process ({}):\n{stdout}\n{stderr}",
            out.status
        );
        eprint!("{stderr}");
    }

    /// The child side of [`decompression_bombs_keep_peak_memory_bounded`].
    #[cfg(target_os = "linux")]
    mod bomb_memory {
        use std::io::Write as _;

        use fsync_testkit::memory;

        use super::*;

        const MIB: u64 = 1024 * 1024;
        /// What a bomb inflates to.
        const BOMB: u64 = 1024 * MIB;
        /// Most the peak RSS may grow while one bomb is decoded.
        const BOUND: u64 = 32 * MIB;

        /// [`memory::peak_growth`], failing the test where `/proc/self` cannot tell.
        fn peak_growth<T>(f: impl FnOnce() -> T) -> (u64, T) {
            memory::peak_growth(f).expect("measure the peak RSS in /proc/self")
        }

        /// A zstd frame of `BOMB` zeros, with the largest window the decoder accepts
        /// (2^23), declaring its content size or not.
        fn bomb_frame(declare_size: bool) -> Vec<u8> {
            let mut encoder = zstd::stream::write::Encoder::new(Vec::new(), 1).unwrap();
            encoder.window_log(23).unwrap();
            encoder.include_contentsize(declare_size).unwrap();
            if declare_size {
                encoder.set_pledged_src_size(Some(BOMB)).unwrap();
            }
            let zeros = vec![0u8; MIB as usize];
            for _ in 0..BOMB / MIB {
                encoder.write_all(&zeros).unwrap();
            }
            encoder.finish().unwrap()
        }

        pub(super) fn run() {
            // The probe works here: 128 MiB touched shows, and a reset forgets it.
            let (grew, ()) = peak_growth(|| {
                std::hint::black_box(vec![0xA5u8; 128 * MIB as usize]);
            });
            assert!(grew >= 120 * MIB, "128 MiB touched, VmHWM +{grew} bytes");
            let peak = memory::status_bytes("VmHWM").unwrap();
            assert!(
                memory::reset_peak().unwrap() + 100 * MIB <= peak,
                "VmHWM did not reset"
            );

            let codec = codec();
            let id = codec.chunk_id(b"whatever");
            for declare_size in [true, false] {
                let frame = bomb_frame(declare_size);
                assert_eq!(
                    zstd::zstd_safe::get_frame_content_size(&frame).ok(),
                    Some(declare_size.then_some(BOMB))
                );
                let blob = codec.seal(&id, FLAG_ZSTD, &frame);
                drop(frame);
                assert!(blob.len() < 64 * 1024, "bomb blob is {} bytes", blob.len());
                let (grew, result) = peak_growth(|| codec.decode(&id, &blob));
                assert!(
                    grew < BOUND,
                    "declared size {declare_size}: decoding a {}-byte blob raised the peak \
                     RSS by {} MiB; the bound is {} MiB",
                    blob.len(),
                    grew / MIB,
                    BOUND / MIB
                );
                let err = result.unwrap_err();
                assert!(
                    matches!(err, CodecError::TooLarge { limit } if limit == MAX_CHUNK_PLAINTEXT),
                    "declared size {declare_size}: {err:?}"
                );
                eprintln!(
                    "bomb of {} bytes, declared size {declare_size}: peak RSS +{:.1} MiB",
                    blob.len(),
                    grew as f64 / MIB as f64
                );
            }
        }
    }

    #[test]
    fn smaller_max_plaintext_is_enforced_both_ways() {
        let codec = codec().with_max_plaintext(1000);
        let data = text(9, 1001);
        let id = codec.chunk_id(&data);
        let err = codec.encode(&id, &data).unwrap_err();
        assert!(matches!(err, CodecError::TooLarge { limit: 1000 }));
        let lenient = codec.clone().with_max_plaintext(10_000);
        let blob = lenient.encode(&id, &data).unwrap();
        assert_eq!(lenient.decode(&id, &blob).unwrap(), data);
        let err = codec.decode(&id, &blob).unwrap_err();
        assert!(matches!(err, CodecError::TooLarge { .. }));
        let ok = text(9, 1000);
        let (ok_id, ok_blob) = encoded(&codec, &ok);
        assert_eq!(codec.decode(&ok_id, &ok_blob).unwrap(), ok);
    }

    #[test]
    fn incompressible_data_is_stored_raw_and_text_is_compressed() {
        let codec = codec();
        let random = random_bytes(10, 64 * 1024);
        let (_, blob) = encoded(&codec, &random);
        assert!(!is_compressed(&blob));
        assert_eq!(blob.len(), random.len() + 30 + 16);

        let txt = text(11, 64 * 1024);
        let (id, blob) = encoded(&codec, &txt);
        assert!(is_compressed(&blob));
        assert!(blob.len() < txt.len() / 2);
        assert_eq!(codec.decode(&id, &blob).unwrap(), txt);
    }

    #[test]
    fn saving_under_three_percent_is_stored_raw() {
        let codec = codec();
        // Random bytes with a compressible tail: zstd saves only about 1–2 %.
        let mut data = random_bytes(12, 100 * 1024);
        data.extend(std::iter::repeat_n(0u8, 2 * 1024));
        let compressed = zstd::bulk::compress(&data, DEFAULT_ZSTD_LEVEL).unwrap();
        assert!(compressed.len() < data.len(), "zstd saves something");
        assert!(
            compressed.len() * 100 > data.len() * 97,
            "zstd saves under 3 %"
        );
        let (_, blob) = encoded(&codec, &data);
        assert!(!is_compressed(&blob));
        assert_eq!(blob.len(), data.len() + BLOB_OVERHEAD);

        // Saving comfortably more than 3 % is compressed.
        let mut data = random_bytes(13, 100 * 1024);
        data.extend(std::iter::repeat_n(0u8, 10 * 1024));
        assert!(is_compressed(&encoded(&codec, &data).1));
    }

    /// `random` with every `period`-th block of `block` bytes taken from `text`
    /// instead (same length as `random`).
    fn interleave(random: &[u8], text: &[u8], block: usize, period: usize) -> Vec<u8> {
        let mut out = random.to_vec();
        for at in (0..out.len()).step_by(block * period) {
            let end = (at + block).min(out.len());
            out[at..end].copy_from_slice(&text[at..end]);
        }
        out
    }

    /// Whether compressing `data` in full at the default level keeps it within the
    /// codec's 3 % budget: what `encode` did before it had a probe.
    fn full_zstd_saves_enough(data: &[u8]) -> bool {
        let compressed = zstd::bulk::compress(data, DEFAULT_ZSTD_LEVEL).unwrap();
        compressed.len() <= data.len() * (100 - MIN_SAVING_PERCENT) / 100
    }

    #[test]
    fn skew_threshold_matches_its_saving() {
        let bits = (PROBE_SKEWED_INV_SUM_SQ as f64).log2();
        let saving = 100.0 * (1.0 - bits / 8.0);
        assert!((6.0..6.5).contains(&saving), "{saving}");
        assert!(!bytes_are_skewed(&random_bytes(32, PROBE_LEN)));
        assert!(bytes_are_skewed(&text(33, PROBE_LEN)));
        // Three quarters uniform, one quarter zeros: skewed.
        let mut quarter_zeros = random_bytes(34, PROBE_LEN);
        quarter_zeros[..PROBE_LEN / 4].fill(0);
        assert!(bytes_are_skewed(&quarter_zeros));
    }

    #[test]
    fn probe_rejects_random_data_of_every_chunk_size() {
        let mut scratch = ZstdScratch::new();
        for len in [PROBE_MIN_PLAINTEXT, 64 * 1024, 100 * 1024 + 7, 256 * 1024] {
            assert!(!scratch.worth_compressing(&random_bytes(20, len)), "{len}");
        }
    }

    #[test]
    fn probe_accepts_text_and_skewed_bytes() {
        let mut scratch = ZstdScratch::new();
        assert!(scratch.worth_compressing(&text(21, 64 * 1024)));
        // Random bytes over a 64-symbol alphabet (like base64): no repeats for zstd
        // to find, but Huffman coding saves about a quarter.
        let base64ish: Vec<u8> = random_bytes(22, 64 * 1024)
            .iter()
            .map(|b| b'0' + (b & 63))
            .collect();
        assert!(scratch.worth_compressing(&base64ish));
        assert!(full_zstd_saves_enough(&base64ish));
        // A random 1 KiB block over and over: uniform bytes, but each sample holds a
        // repeat for zstd to find.
        let repeated = random_bytes(23, 1024).repeat(64);
        assert!(scratch.worth_compressing(&repeated));
    }

    /// The probe must not turn "compressed" into "raw" for data that compresses by
    /// 3 % or more when its compressible part is at the chunk's head or tail or
    /// spread through it; here it changes no outcome at all.
    #[test]
    fn probe_keeps_compressing_mixed_and_borderline_data() {
        let codec = codec();
        let mut compressed_cases = 0;
        for len in [16 * 1024, 64 * 1024, 200 * 1024] {
            let random = random_bytes(24, len);
            let txt = text(25, len);
            let half = len / 2;
            let mut cases = vec![
                ("text", txt.clone()),
                ("text then random", [&txt[..half], &random[half..]].concat()),
                ("random then text", [&random[..half], &txt[half..]].concat()),
            ];
            for percent in [3, 5, 10, 50] {
                let n = len * percent / 100;
                cases.push(("text head", [&txt[..n], &random[n..]].concat()));
                cases.push(("text tail", [&random[..len - n], &txt[len - n..]].concat()));
            }
            for block in [64, 1024, 4096] {
                for period in [2, 10, 20, 33] {
                    cases.push(("interleaved", interleave(&random, &txt, block, period)));
                }
            }
            for (name, data) in cases {
                let (id, blob) = encoded(&codec, &data);
                let expected = full_zstd_saves_enough(&data);
                assert_eq!(
                    is_compressed(&blob),
                    expected,
                    "{name}, {len} bytes: compressed unless zstd saves < 3 %"
                );
                compressed_cases += usize::from(expected);
                assert_eq!(codec.decode(&id, &blob).unwrap(), data);
            }
        }
        assert!(compressed_cases > 50, "only {compressed_cases} compressed");
    }

    /// The documented trade: "probe says no → stored raw", even when the chunk's only
    /// compressible stretch lies between the samples, or its only redundancy is
    /// repeats of random data farther apart than a sample, and compressing it in full
    /// would have saved more than 3 %.
    #[test]
    fn probe_misses_what_its_samples_do_not_show() {
        let codec = codec();
        let mut between = random_bytes(26, 100 * 1024);
        between[10 * 1024..20 * 1024].copy_from_slice(&text(27, 10 * 1024));
        let far_repeats = random_bytes(31, 16 * 1024).repeat(4);
        for data in [between, far_repeats] {
            assert!(full_zstd_saves_enough(&data));
            assert!(!ZstdScratch::new().worth_compressing(&data));
            let (id, blob) = encoded(&codec, &data);
            assert!(!is_compressed(&blob));
            assert_eq!(codec.decode(&id, &blob).unwrap(), data);
        }
    }

    #[test]
    fn chunks_below_the_probe_threshold_are_always_tried() {
        let codec = codec();
        // The same layout as above, too short to probe: compressed.
        let len = PROBE_MIN_PLAINTEXT - 1;
        let mut data = random_bytes(28, len);
        data[len / 3..len / 3 + len / 5].copy_from_slice(&text(29, len / 5));
        assert!(full_zstd_saves_enough(&data));
        assert!(ZstdScratch::new().worth_compressing(&data));
        assert!(is_compressed(&encoded(&codec, &data).1));
    }

    #[test]
    fn compressed_blobs_are_not_over_allocated() {
        let codec = codec();
        let (_, blob) = encoded(&codec, &text(30, 64 * 1024));
        assert!(is_compressed(&blob));
        assert_eq!(blob.capacity(), blob.len());
    }

    #[test]
    fn zstd_level_is_applied() {
        let data = text(14, 200 * 1024);
        let fast = codec().with_zstd_level(1);
        let strong = codec().with_zstd_level(19);
        let (_, a) = encoded(&fast, &data);
        let (id_strong, b) = encoded(&strong, &data);
        assert!(
            b.len() < a.len(),
            "level 19 ({}) vs level 1 ({})",
            b.len(),
            a.len()
        );
        assert_eq!(strong.decode(&id_strong, &b).unwrap(), data);
    }

    #[test]
    fn nonces_are_fresh() {
        let codec = codec();
        let id = codec.chunk_id(b"same");
        assert_ne!(
            codec.encode(&id, b"same").unwrap(),
            codec.encode(&id, b"same").unwrap()
        );
    }

    #[test]
    fn chunk_id_matches_keyed_blake3() {
        let keys = NamespaceKey::generate().derive();
        let codec = BlobCodec::new(&keys);
        let expected = blake3::keyed_hash(keys.id_key.as_bytes(), b"data");
        assert_eq!(codec.chunk_id(b"data").as_bytes(), expected.as_bytes());
    }

    #[test]
    fn header_check_is_keyless_and_strict() {
        let (_, blob) = encoded(&codec(), b"x");
        assert!(check_blob_header(&blob).is_ok());
        let refused = |blob: &[u8]| check_blob_header(blob).unwrap_err();
        assert!(matches!(refused(b"FSB1"), CodecError::BadHeader));
        assert!(matches!(refused(&[0u8; 100]), CodecError::BadHeader));
        let mut v2 = blob.clone();
        v2[4] = 2;
        assert!(matches!(refused(&v2), CodecError::UnsupportedVersion(2)));
        let mut flags = blob.clone();
        flags[5] = 0x80;
        assert!(matches!(refused(&flags), CodecError::UnknownFlags(0x80)));
        let mut huge = blob.clone();
        huge.resize(MAX_BLOB_SIZE + 1, 0);
        assert!(matches!(refused(&huge), CodecError::TooLarge { .. }));
    }

    #[test]
    fn debug_does_not_leak_keys() {
        let s = format!("{:?}", codec());
        assert!(s.contains("<redacted>"), "{s}");
    }
}
