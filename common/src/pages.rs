//! Manifest pages: a file's chunk list cut into pages at content-defined boundaries
//! over the chunk ids, each page addressed by a hash of its binary encoding
//! (ARCHITECTURE §2).
//!
//! A page ends after a chunk whose id has its low [`PAGE_BITS`] bits (of the id's last
//! four bytes) zero, once it holds at least [`PAGE_MIN`] entries, and in any case at
//! [`PAGE_MAX`]. Chunk ids are keyed hashes, so a boundary falls on one chunk in
//! 2^`PAGE_BITS` on average, and whether a chunk ends a page depends on that chunk alone
//! (beyond the minimum): an edit that changes, inserts or removes chunks changes the
//! page it falls in (and at most its neighbour), never every page after it.
//!
//! Encoding of a page (version 1): `magic "FSPG" | version u8 | count u32 BE |
//! count × (chunk id [32] | plaintext length u32 BE)`. Its [`PageId`] is BLAKE3 of the
//! encoding in derive-key mode under [`PAGE_CONTEXT`]: unkeyed, so the server can check
//! that a page matches its id (a page holds chunk ids and lengths, which the server sees
//! anyway), and separate from every other hash of the system.
//!
//! ```
//! use fsync_common::pages;
//! use fsync_common::wire::ChunkRef;
//! use fsync_common::ChunkId;
//!
//! let chunks: Vec<ChunkRef> = (0..1000u32)
//!     .map(|i| {
//!         let mut id = [0u8; 32];
//!         id[..4].copy_from_slice(&i.to_le_bytes());
//!         ChunkRef(ChunkId::from_bytes(*blake3::hash(&id).as_bytes()), 65_536)
//!     })
//!     .collect();
//! let pages = pages::paginate(&chunks);
//! assert!(pages.len() > 1);
//! let back: Vec<ChunkRef> = pages.iter().flat_map(|p| p.chunks().to_vec()).collect();
//! assert_eq!(back, chunks);
//! assert_eq!(pages::decode(pages[0].body()).unwrap(), pages[0].chunks());
//! ```

use crate::ids::{ChunkId, PageId};
use crate::limits::MAX_CHUNK_PLAINTEXT;
use crate::wire::ChunkRef;

/// A page boundary falls on one chunk in `2^PAGE_BITS` (128): see ARCHITECTURE §2 for
/// the measurement behind the size.
pub const PAGE_BITS: u32 = 7;
/// Fewest entries of a page that is not a file's last.
pub const PAGE_MIN: usize = 32;
/// Most entries of a page.
pub const PAGE_MAX: usize = 512;
/// BLAKE3 derive-key context of page ids.
pub const PAGE_CONTEXT: &str = "fsync 2026-12-07 manifest page v1";

const MAGIC: &[u8; 4] = b"FSPG";
const VERSION: u8 = 1;
const HEADER: usize = 9;
const ENTRY: usize = ChunkId::LEN + 4;
/// The largest encoded page.
pub const MAX_PAGE_BYTES: usize = HEADER + PAGE_MAX * ENTRY;

/// Why a page body could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PageError {
    /// Missing magic or unknown version.
    #[error("not a manifest page (bad magic or version)")]
    BadHeader,
    /// The body's length does not match its entry count.
    #[error("manifest page has {len} bytes; {count} entries need {want}")]
    Length {
        /// Body length.
        len: usize,
        /// Declared entries.
        count: usize,
        /// The length they need.
        want: usize,
    },
    /// No entries, or more than [`PAGE_MAX`].
    #[error("manifest page has {0} entries; pages hold 1 to {PAGE_MAX}")]
    Count(usize),
    /// A chunk length of 0 or past the largest chunk.
    #[error(
        "manifest page lists chunk {id} with length {len}; lengths are 1 to {MAX_CHUNK_PLAINTEXT}"
    )]
    ChunkLength {
        /// The chunk.
        id: ChunkId,
        /// Its length.
        len: u32,
    },
}

/// One page: its id, encoding and entries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page {
    id: PageId,
    body: Vec<u8>,
    chunks: Vec<ChunkRef>,
}

impl Page {
    /// Encodes `chunks` (1 to [`PAGE_MAX`] entries) as a page.
    pub fn new(chunks: &[ChunkRef]) -> Self {
        debug_assert!(!chunks.is_empty() && chunks.len() <= PAGE_MAX);
        let body = encode(chunks);
        Page {
            id: page_id(&body),
            body,
            chunks: chunks.to_vec(),
        }
    }

    /// Decodes a page received as `id`, refusing one whose body does not hash to it.
    pub fn from_body(id: PageId, body: &[u8]) -> Result<Self, PageIdError> {
        if page_id(body) != id {
            return Err(PageIdError::Mismatch(id));
        }
        Ok(Page {
            id,
            body: body.to_vec(),
            chunks: decode(body).map_err(|e| PageIdError::Page(id, e))?,
        })
    }

    /// The page's address.
    pub fn id(&self) -> PageId {
        self.id
    }
    /// The encoding.
    pub fn body(&self) -> &[u8] {
        &self.body
    }
    /// The entries, in file order.
    pub fn chunks(&self) -> &[ChunkRef] {
        &self.chunks
    }
    /// The plaintext bytes the page covers.
    pub fn size(&self) -> u64 {
        self.chunks.iter().map(|c| u64::from(c.len())).sum()
    }
}

/// A page received under an id that is not its own, or that does not decode.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PageIdError {
    /// The body hashes to another id.
    #[error("manifest page {0} does not match its id")]
    Mismatch(PageId),
    /// The body is not a valid page.
    #[error("manifest page {0}: {1}")]
    Page(PageId, PageError),
}

/// Whether chunk `id` may end a page.
fn is_boundary(id: &ChunkId) -> bool {
    let b = id.as_bytes();
    let tail = u32::from_le_bytes([b[28], b[29], b[30], b[31]]);
    tail & ((1 << PAGE_BITS) - 1) == 0
}

/// Where `chunks` is cut into pages: the end index of each page.
pub fn boundaries(chunks: &[ChunkRef]) -> Vec<usize> {
    let mut ends = Vec::with_capacity(chunks.len() >> PAGE_BITS);
    let mut start = 0;
    for (i, c) in chunks.iter().enumerate() {
        let len = i + 1 - start;
        if len >= PAGE_MAX || (len >= PAGE_MIN && is_boundary(&c.id())) {
            ends.push(i + 1);
            start = i + 1;
        }
    }
    if start < chunks.len() {
        ends.push(chunks.len());
    }
    ends
}

/// Cuts a chunk list into pages (none for an empty list).
pub fn paginate(chunks: &[ChunkRef]) -> Vec<Page> {
    let mut start = 0;
    boundaries(chunks)
        .into_iter()
        .map(|end| {
            let page = Page::new(&chunks[start..end]);
            start = end;
            page
        })
        .collect()
}

/// The encoding of one page.
pub fn encode(chunks: &[ChunkRef]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER + chunks.len() * ENTRY);
    out.extend_from_slice(MAGIC);
    out.push(VERSION);
    out.extend_from_slice(&(chunks.len() as u32).to_be_bytes());
    for c in chunks {
        out.extend_from_slice(c.id().as_bytes());
        out.extend_from_slice(&c.len().to_be_bytes());
    }
    out
}

/// The address of a page's encoding.
pub fn page_id(body: &[u8]) -> PageId {
    let mut h = blake3::Hasher::new_derive_key(PAGE_CONTEXT);
    h.update(body);
    PageId::from_bytes(*h.finalize().as_bytes())
}

/// Decodes a page, checking its header, length, entry count and chunk lengths.
pub fn decode(body: &[u8]) -> Result<Vec<ChunkRef>, PageError> {
    if body.len() < HEADER || &body[..4] != MAGIC || body[4] != VERSION {
        return Err(PageError::BadHeader);
    }
    let count = u32::from_be_bytes([body[5], body[6], body[7], body[8]]) as usize;
    if count == 0 || count > PAGE_MAX {
        return Err(PageError::Count(count));
    }
    let want = HEADER + count * ENTRY;
    if body.len() != want {
        return Err(PageError::Length {
            len: body.len(),
            count,
            want,
        });
    }
    body[HEADER..]
        .chunks_exact(ENTRY)
        .map(|e| {
            let id = ChunkId::from_bytes(e[..32].try_into().expect("32 bytes"));
            let len = u32::from_be_bytes(e[32..].try_into().expect("4 bytes"));
            if len == 0 || len as usize > MAX_CHUNK_PLAINTEXT {
                return Err(PageError::ChunkLength { id, len });
            }
            Ok(ChunkRef(id, len))
        })
        .collect()
}

/// Page ids packed as 32 raw bytes each (how the server stores a version's page list).
pub fn pack_ids(ids: &[PageId]) -> Vec<u8> {
    ids.iter().flat_map(|p| *p.as_bytes()).collect()
}

/// The inverse of [`pack_ids`]; `None` when the length is not a multiple of 32.
pub fn unpack_ids(raw: &[u8]) -> Option<Vec<PageId>> {
    if !raw.len().is_multiple_of(PageId::LEN) {
        return None;
    }
    Some(
        raw.chunks_exact(PageId::LEN)
            .map(|b| PageId::from_bytes(b.try_into().expect("32 bytes")))
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn chunk(seed: u64) -> ChunkRef {
        let id = *blake3::hash(&seed.to_le_bytes()).as_bytes();
        ChunkRef(ChunkId::from_bytes(id), 1 + (seed % 100_000) as u32)
    }

    fn list(seeds: std::ops::Range<u64>) -> Vec<ChunkRef> {
        seeds.map(chunk).collect()
    }

    fn ids(chunks: &[ChunkRef]) -> Vec<PageId> {
        paginate(chunks).iter().map(Page::id).collect()
    }

    /// Pages of `b` that are not pages of `a`.
    fn changed(a: &[ChunkRef], b: &[ChunkRef]) -> usize {
        let old: std::collections::HashSet<PageId> = ids(a).into_iter().collect();
        ids(b).iter().filter(|p| !old.contains(p)).count()
    }

    #[test]
    fn pages_average_near_the_target_and_respect_the_bounds() {
        let chunks = list(0..16_384);
        let ends = boundaries(&chunks);
        let mut start = 0;
        for (i, &end) in ends.iter().enumerate() {
            let len = end - start;
            assert!(len <= PAGE_MAX);
            assert!(len >= PAGE_MIN || i == ends.len() - 1);
            start = end;
        }
        // 1 GiB at the default chunk size: about 16k chunks, about 100 pages.
        let pages = ends.len();
        assert!((80..=200).contains(&pages), "{pages} pages");
    }

    #[test]
    fn an_empty_list_has_no_pages_and_a_short_one_has_one() {
        assert!(paginate(&[]).is_empty());
        assert_eq!(paginate(&list(0..5)).len(), 1);
    }

    #[test]
    fn a_known_page_has_a_fixed_id() {
        // Pins the encoding and the id's context: a change here breaks every stored page.
        let page = Page::new(&[ChunkRef(ChunkId::from_bytes([7; 32]), 65_536)]);
        assert_eq!(page.body().len(), HEADER + ENTRY);
        assert_eq!(&page.body()[..9], b"FSPG\x01\x00\x00\x00\x01");
        assert_eq!(
            page.id().to_hex(),
            hex::encode(
                blake3::Hasher::new_derive_key(PAGE_CONTEXT)
                    .update(page.body())
                    .finalize()
                    .as_bytes()
            )
        );
        assert_eq!(
            page.id().to_hex(),
            "383af222fff14a17b3e1f4dcfd0a4da2fe4d331db82259920e1442be4c135562"
        );
    }

    #[test]
    fn a_body_under_another_id_or_broken_is_refused() {
        let page = Page::new(&list(0..3));
        let other = PageId::from_bytes([1; 32]);
        assert_eq!(
            Page::from_body(other, page.body()),
            Err(PageIdError::Mismatch(other))
        );
        assert_eq!(Page::from_body(page.id(), page.body()).unwrap(), page);
        let mut short = page.body().to_vec();
        short.pop();
        assert!(matches!(decode(&short), Err(PageError::Length { .. })));
        let mut zero = page.body().to_vec();
        let n = zero.len();
        zero[n - 4..].copy_from_slice(&0u32.to_be_bytes());
        assert!(matches!(decode(&zero), Err(PageError::ChunkLength { .. })));
        assert_eq!(
            decode(b"FSPG\x01\x00\x00\x00\x00"),
            Err(PageError::Count(0))
        );
        assert_eq!(
            decode(b"FSPX\x01\x00\x00\x00\x01"),
            Err(PageError::BadHeader)
        );
    }

    #[test]
    fn an_edit_changes_about_one_page() {
        // Overwrite, insert and remove one chunk at 1,000 places of 1 GiB-like lists (measured over 3,000: 94 % one page, 5.5 % two, 0.1 % three).
        let mut counts = [0usize; 8];
        for t in 0..1_000u64 {
            let old = list(t * 20_000..t * 20_000 + 16_384);
            let at = (t * 7_919 % 16_384) as usize;
            let mut edited = old.clone();
            match t % 3 {
                0 => edited[at] = chunk(t | (1 << 63)),
                1 => edited.insert(at, chunk(t | (1 << 63))),
                _ => {
                    edited.remove(at);
                }
            }
            counts[changed(&old, &edited).min(7)] += 1;
        }
        let mean = counts.iter().enumerate().map(|(n, c)| n * c).sum::<usize>() as f64 / 1_000.0;
        eprintln!("pages changed per edit: {counts:?}, mean {mean:.2}");
        assert!(mean <= 1.5, "{counts:?}");
        assert_eq!(counts[7], 0, "{counts:?}");
    }

    proptest! {
        #[test]
        fn pages_concatenate_to_the_list_and_decode_to_their_entries(n in 0u64..3_000, base in any::<u64>()) {
            let chunks = list(base..base.saturating_add(n));
            let pages = paginate(&chunks);
            let back: Vec<ChunkRef> = pages.iter().flat_map(|p| p.chunks().to_vec()).collect();
            prop_assert_eq!(&back, &chunks);
            for p in &pages {
                prop_assert_eq!(decode(p.body()).unwrap(), p.chunks());
                prop_assert_eq!(page_id(p.body()), p.id());
            }
            prop_assert_eq!(unpack_ids(&pack_ids(&ids(&chunks))).unwrap(), ids(&chunks));
        }

        #[test]
        fn decode_never_panics(body in proptest::collection::vec(any::<u8>(), 0..400)) {
            let _ = decode(&body);
        }
    }
}
