//! FSBT batch framing (`fsync_common::batch::decode`) on arbitrary bodies.
//! Input: `max entry u16 BE | body`. A decoded batch re-encodes to the same bytes.
#![no_main]

use fsync_common::batch::{self, BatchError};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&[hi, lo], body)) = data.split_first_chunk::<2>() else {
        return;
    };
    let max = usize::from(u16::from_be_bytes([hi, lo]));
    match batch::decode(body, max) {
        Ok(entries) => {
            assert!(entries.iter().all(|(_, blob)| blob.len() <= max));
            let again = batch::encode(entries.iter().map(|(id, blob)| (id, *blob)));
            assert_eq!(again, body, "re-encoding differs");
        }
        Err(BatchError::BadHeader) => assert!(!body.starts_with(b"FSBT\x01")),
        Err(BatchError::Truncated(at)) => assert!((5..=body.len()).contains(&at)),
        Err(BatchError::EntryTooLarge { len, limit }) => assert!(len > limit && limit == max),
        Err(e) => panic!("unexpected error {e:?}"),
    }
});
