//! Pack files: the blobs of one namespace, many to one object, so that a batch of
//! uploads costs one write and one fsync (or one PUT) instead of one per blob.
//!
//! Layout, version 1 (integers little-endian):
//!
//! | part    | bytes                                                      |
//! |---------|------------------------------------------------------------|
//! | header  | `FSPK`, version (1), three zero bytes: 8                   |
//! | blobs   | FSB1 blobs back to back, exactly as uploaded               |
//! | trailer | count `u32`, then per blob: id (32), offset `u64`, len `u32` |
//! | footer  | trailer length `u32`, BLAKE3 of all before the footer (32), `FSPE` |
//!
//! The trailer makes a pack self-describing: the index in the database can be rebuilt
//! from the packs alone, reading only their tails ([`parse_tail`]). The checksum covers
//! every byte before the footer, so [`verify`] finds a torn or corrupted pack; the blobs
//! inside stay opaque (their contents are checked by the client's decryption).

use fsync_common::limits::MAX_BLOB_SIZE;
use fsync_common::ChunkId;

use crate::codec::check_blob_header;

/// The first bytes of every pack.
pub const PACK_MAGIC: &[u8; 4] = b"FSPK";
/// The last bytes of every pack.
pub const PACK_END: &[u8; 4] = b"FSPE";
/// The pack format this build writes (and the only one it reads).
pub const PACK_VERSION: u8 = 1;
/// Bytes of the header.
pub const PACK_HEADER_LEN: usize = 8;
/// Bytes of the footer.
pub const PACK_FOOTER_LEN: usize = 4 + 32 + 4;
/// Bytes of one trailer entry.
pub const PACK_ENTRY_LEN: usize = 32 + 8 + 4;
const ENTRY_LEN: usize = PACK_ENTRY_LEN;

/// Where one blob lies in a pack.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PackEntry {
    /// The chunk the blob was uploaded as.
    pub id: ChunkId,
    /// Byte offset of the blob in the pack.
    pub offset: u64,
    /// Length of the blob in bytes.
    pub len: u32,
}

/// Why bytes are not a readable pack. Every variant names what is wrong, so that
/// `fsync-gc verify` can report it next to the pack's name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PackError {
    /// Shorter than a header and a footer: a torn write.
    #[error("truncated: {0} bytes, shorter than an empty pack")]
    Truncated(u64),
    /// The first or last four bytes are not a pack's.
    #[error("not a pack (bad magic at the start or the end)")]
    BadMagic,
    /// A format version this build does not read.
    #[error("unsupported pack version {0}")]
    UnsupportedVersion(u8),
    /// The trailer's length does not fit the pack or its own entry count.
    #[error("bad trailer: {0}")]
    BadTrailer(String),
    /// The checksum does not match the bytes: corrupted or torn.
    #[error("checksum mismatch: the pack is corrupt")]
    Checksum,
    /// A blob inside is not an fsync blob.
    #[error("blob {id} at offset {offset}: {reason}")]
    BadBlob {
        /// The blob's chunk id.
        id: ChunkId,
        /// Where it lies.
        offset: u64,
        /// What is wrong with it.
        reason: String,
    },
}

/// Builds one pack in memory.
#[derive(Debug)]
pub struct PackBuilder {
    buf: Vec<u8>,
    entries: Vec<PackEntry>,
}

impl Default for PackBuilder {
    fn default() -> Self {
        Self::with_capacity(0)
    }
}

impl PackBuilder {
    /// An empty pack with room for `blob_bytes` bytes of blobs.
    pub fn with_capacity(blob_bytes: usize) -> Self {
        let mut buf = Vec::with_capacity(PACK_HEADER_LEN + blob_bytes + PACK_FOOTER_LEN);
        buf.extend_from_slice(PACK_MAGIC);
        buf.extend_from_slice(&[PACK_VERSION, 0, 0, 0]);
        Self {
            buf,
            entries: Vec::new(),
        }
    }

    /// Appends a blob (already checked by the caller); returns where it lies.
    pub fn push(&mut self, id: ChunkId, blob: &[u8]) -> PackEntry {
        let len = u32::try_from(blob.len()).expect("a blob is far smaller than 4 GiB");
        let entry = PackEntry {
            id,
            offset: self.buf.len() as u64,
            len,
        };
        self.buf.extend_from_slice(blob);
        self.entries.push(entry);
        entry
    }

    /// Blobs so far.
    pub fn entries(&self) -> &[PackEntry] {
        &self.entries
    }

    /// Bytes so far (header and blobs).
    pub fn len(&self) -> usize {
        self.buf.len()
    }

    /// True when no blob was pushed.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The finished pack's bytes and its entries.
    pub fn finish(self) -> (Vec<u8>, Vec<PackEntry>) {
        let Self { mut buf, entries } = self;
        let trailer_start = buf.len();
        buf.extend_from_slice(&(entries.len() as u32).to_le_bytes());
        for e in &entries {
            buf.extend_from_slice(e.id.as_bytes());
            buf.extend_from_slice(&e.offset.to_le_bytes());
            buf.extend_from_slice(&e.len.to_le_bytes());
        }
        let trailer_len = (buf.len() - trailer_start) as u32;
        let checksum = blake3::hash(&buf);
        buf.extend_from_slice(&trailer_len.to_le_bytes());
        buf.extend_from_slice(checksum.as_bytes());
        buf.extend_from_slice(PACK_END);
        (buf, entries)
    }
}

/// The footer of a pack: what [`parse_tail`] needs to find the trailer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Footer {
    /// Bytes of the trailer, which ends where the footer starts.
    pub trailer_len: u32,
    /// BLAKE3 of every byte before the footer.
    pub checksum: [u8; 32],
}

impl Footer {
    /// Bytes at the end of a pack of `pack_len` bytes that hold the trailer and footer.
    pub fn tail_len(&self) -> u64 {
        u64::from(self.trailer_len) + PACK_FOOTER_LEN as u64
    }
}

/// Reads the footer from the last [`PACK_FOOTER_LEN`] bytes of a pack.
pub fn parse_footer(footer: &[u8]) -> Result<Footer, PackError> {
    let Some(footer) = footer.get(footer.len().saturating_sub(PACK_FOOTER_LEN)..) else {
        return Err(PackError::Truncated(footer.len() as u64));
    };
    if footer.len() < PACK_FOOTER_LEN {
        return Err(PackError::Truncated(footer.len() as u64));
    }
    if &footer[36..40] != PACK_END {
        return Err(PackError::BadMagic);
    }
    let trailer_len = u32::from_le_bytes(footer[0..4].try_into().expect("4 bytes"));
    let checksum = footer[4..36].try_into().expect("32 bytes");
    Ok(Footer {
        trailer_len,
        checksum,
    })
}

/// The entries of a pack of `pack_len` bytes from its `tail` (at least the last
/// [`Footer::tail_len`] bytes; more is fine). Checks that every entry lies inside the
/// blob area, in order and without overlap; not the checksum (see [`verify`]).
pub fn parse_tail(tail: &[u8], pack_len: u64) -> Result<Vec<PackEntry>, PackError> {
    let min = (PACK_HEADER_LEN + 4 + PACK_FOOTER_LEN) as u64;
    if pack_len < min || (tail.len() as u64) < PACK_FOOTER_LEN as u64 {
        return Err(PackError::Truncated(pack_len));
    }
    let footer = parse_footer(tail)?;
    let bad = |why: String| PackError::BadTrailer(why);
    let tail_len = footer.tail_len();
    if tail_len > pack_len - PACK_HEADER_LEN as u64 {
        return Err(bad(format!(
            "{} bytes of trailer in a pack of {pack_len} bytes",
            footer.trailer_len
        )));
    }
    if tail_len > tail.len() as u64 {
        return Err(bad(format!(
            "{tail_len} bytes of tail needed, {} given",
            tail.len()
        )));
    }
    let start = tail.len() - tail_len as usize;
    let trailer = &tail[start..start + footer.trailer_len as usize];
    let (count, rest) = trailer
        .split_first_chunk::<4>()
        .ok_or_else(|| bad("shorter than its count".into()))?;
    let count = u32::from_le_bytes(*count) as usize;
    if rest.len() != count.saturating_mul(ENTRY_LEN) {
        return Err(bad(format!(
            "{count} entries need {} bytes, the trailer has {}",
            count.saturating_mul(ENTRY_LEN),
            rest.len()
        )));
    }
    let blobs_end = pack_len - tail_len;
    let mut next = PACK_HEADER_LEN as u64;
    let mut entries = Vec::with_capacity(count);
    for raw in rest.chunks_exact(ENTRY_LEN) {
        let id = ChunkId::from_bytes(raw[..32].try_into().expect("32 bytes"));
        let offset = u64::from_le_bytes(raw[32..40].try_into().expect("8 bytes"));
        let len = u32::from_le_bytes(raw[40..44].try_into().expect("4 bytes"));
        let end = offset.checked_add(u64::from(len));
        if offset < next || end.is_none_or(|end| end > blobs_end) || len as usize > MAX_BLOB_SIZE {
            return Err(bad(format!(
                "blob {id} at {offset}+{len} is out of order, overlaps or lies outside the blobs"
            )));
        }
        next = offset + u64::from(len);
        entries.push(PackEntry { id, offset, len });
    }
    Ok(entries)
}

/// Checks a whole pack: magic, version, checksum, trailer, and every blob's header.
/// Returns its entries.
pub fn verify(pack: &[u8]) -> Result<Vec<PackEntry>, PackError> {
    let len = pack.len() as u64;
    if pack.len() < PACK_HEADER_LEN + 4 + PACK_FOOTER_LEN {
        return Err(PackError::Truncated(len));
    }
    if &pack[..4] != PACK_MAGIC {
        return Err(PackError::BadMagic);
    }
    let footer = parse_footer(pack)?;
    if blake3::hash(&pack[..pack.len() - PACK_FOOTER_LEN]).as_bytes() != &footer.checksum {
        return Err(PackError::Checksum);
    }
    if pack[4] != PACK_VERSION {
        return Err(PackError::UnsupportedVersion(pack[4]));
    }
    let entries = parse_tail(pack, len)?;
    for e in &entries {
        let blob = &pack[e.offset as usize..(e.offset + u64::from(e.len)) as usize];
        check_blob_header(blob).map_err(|err| PackError::BadBlob {
            id: e.id,
            offset: e.offset,
            reason: err.to_string(),
        })?;
    }
    Ok(entries)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A blob as the server sees it: a valid header, opaque bytes after it.
    fn blob(seed: u8, len: usize) -> Vec<u8> {
        let keys = crate::NamespaceKey::generate().derive();
        let codec = crate::BlobCodec::new(&keys);
        let data: Vec<u8> = (0..len).map(|i| (i as u8).wrapping_mul(seed | 1)).collect();
        codec.encode(&codec.chunk_id(&data), &data).unwrap()
    }

    fn pack_of(blobs: &[Vec<u8>]) -> (Vec<u8>, Vec<PackEntry>) {
        let mut b = PackBuilder::default();
        for (i, blob) in blobs.iter().enumerate() {
            b.push(ChunkId::from_bytes([i as u8; 32]), blob);
        }
        b.finish()
    }

    #[test]
    fn the_layout_is_the_documented_one() {
        let (pack, entries) = pack_of(&[blob(1, 10), blob(2, 300)]);
        assert_eq!(&pack[..8], b"FSPK\x01\0\0\0");
        assert_eq!(&pack[pack.len() - 4..], b"FSPE");
        assert_eq!(entries[0].offset, 8);
        assert_eq!(entries[1].offset, 8 + u64::from(entries[0].len));
        let trailer_len = 4 + 2 * 44;
        let footer_at = pack.len() - PACK_FOOTER_LEN;
        assert_eq!(
            &pack[footer_at..footer_at + 4],
            &(trailer_len as u32).to_le_bytes()
        );
        assert_eq!(
            &pack[footer_at + 4..footer_at + 36],
            blake3::hash(&pack[..footer_at]).as_bytes()
        );
        // A known answer: an empty pack is header, a zero count, footer.
        let (empty, _) = PackBuilder::default().finish();
        assert_eq!(empty.len(), 8 + 4 + 40);
        assert_eq!(
            hex::encode(&empty[16..48]),
            blake3::hash(b"FSPK\x01\0\0\0\0\0\0\0").to_hex().as_str()
        );
    }

    #[test]
    fn the_tail_alone_gives_the_entries() {
        let (pack, entries) = pack_of(&[blob(3, 5000), blob(4, 1), blob(5, 70_000)]);
        let footer = parse_footer(&pack[pack.len() - PACK_FOOTER_LEN..]).unwrap();
        let tail = &pack[pack.len() - footer.tail_len() as usize..];
        assert_eq!(parse_tail(tail, pack.len() as u64).unwrap(), entries);
        // Too little tail is an error that says so, not a wrong answer.
        let short = &tail[10..];
        assert!(matches!(
            parse_tail(short, pack.len() as u64),
            Err(PackError::BadTrailer(_))
        ));
    }

    #[test]
    fn a_blob_that_is_not_one_is_named() {
        let mut b = PackBuilder::default();
        b.push(
            ChunkId::from_bytes([9; 32]),
            b"not a blob at all, no header",
        );
        let (pack, _) = b.finish();
        let err = verify(&pack).unwrap_err();
        assert!(
            matches!(err, PackError::BadBlob { id, offset: 8, .. } if id == ChunkId::from_bytes([9; 32])),
            "{err}"
        );
    }

    #[test]
    fn a_newer_version_is_refused_by_name() {
        let (mut pack, _) = pack_of(&[blob(1, 10)]);
        pack[4] = 2;
        // Re-seal so that the version, not the checksum, is what is refused.
        let footer_at = pack.len() - PACK_FOOTER_LEN;
        let sum = blake3::hash(&pack[..footer_at]);
        pack[footer_at + 4..footer_at + 36].copy_from_slice(sum.as_bytes());
        assert_eq!(verify(&pack), Err(PackError::UnsupportedVersion(2)));
    }

    proptest! {
        #[test]
        fn packs_round_trip(lens in proptest::collection::vec(0usize..3000, 0..12)) {
            let blobs: Vec<Vec<u8>> =
                lens.iter().enumerate().map(|(i, l)| blob(i as u8, *l)).collect();
            let (pack, entries) = pack_of(&blobs);
            prop_assert_eq!(verify(&pack).unwrap(), entries.clone());
            for (e, b) in entries.iter().zip(&blobs) {
                prop_assert_eq!(&pack[e.offset as usize..][..e.len as usize], &b[..]);
            }
        }

        #[test]
        fn any_flipped_byte_or_truncation_is_detected(
            lens in proptest::collection::vec(0usize..500, 1..5),
            at in any::<prop::sample::Index>(),
            bit in 0u8..8,
            cut in any::<prop::sample::Index>(),
        ) {
            let blobs: Vec<Vec<u8>> =
                lens.iter().enumerate().map(|(i, l)| blob(i as u8, *l)).collect();
            let (pack, _) = pack_of(&blobs);
            let mut flipped = pack.clone();
            flipped[at.index(pack.len())] ^= 1 << bit;
            prop_assert!(verify(&flipped).is_err());
            let torn = &pack[..cut.index(pack.len())];
            prop_assert!(verify(torn).is_err());
            // The tail parser never panics and never reads outside the blob area.
            if let Ok(entries) = parse_tail(torn, torn.len() as u64) {
                for e in entries {
                    prop_assert!(e.offset + u64::from(e.len) <= torn.len() as u64);
                }
            }
        }
    }
}
