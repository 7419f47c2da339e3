//! Pack files (`fsync_store::pack`) on arbitrary bytes: `verify` and `parse_tail` never
//! panic, never name a blob outside the bytes, and agree: what `verify` accepts,
//! `parse_tail` reads from the tail alone, and rebuilding it gives the same bytes.
#![no_main]

use fsync_store::pack::{self, PackBuilder, PACK_FOOTER_LEN};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let len = data.len() as u64;
    if let Ok(entries) = pack::parse_tail(data, len) {
        for e in &entries {
            assert!(e.offset + u64::from(e.len) <= len);
        }
    }
    if let Ok(footer) = pack::parse_footer(&data[data.len().saturating_sub(PACK_FOOTER_LEN)..]) {
        let _ = footer.tail_len();
    }
    let Ok(entries) = pack::verify(data) else {
        return;
    };
    let footer = pack::parse_footer(data).expect("a verified pack has a footer");
    let tail = &data[data.len() - footer.tail_len() as usize..];
    assert_eq!(pack::parse_tail(tail, len).expect("its tail parses"), entries);
    // Only blobs back to back from the header are written by the builder; a verified
    // pack with gaps between blobs is valid but not rebuilt byte for byte.
    let mut next = pack::PACK_HEADER_LEN as u64;
    let contiguous = entries.iter().all(|e| {
        let ok = e.offset == next;
        next = e.offset + u64::from(e.len);
        ok
    });
    if contiguous {
        let mut b = PackBuilder::default();
        for e in &entries {
            b.push(e.id, &data[e.offset as usize..(e.offset + u64::from(e.len)) as usize]);
        }
        assert_eq!(b.finish().0, data, "rebuilding the pack differs");
    }
});
