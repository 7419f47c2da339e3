//! `BlobCodec::decode` with a fixed key on arbitrary bytes.
//! Input: `chunk id [32] | blob`.
#![no_main]

use fsync_common::limits::MAX_CHUNK_PLAINTEXT;
use fsync_common::ChunkId;
use fsync_store::{check_blob_header, CodecError};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((id, blob)) = data.split_first_chunk::<{ ChunkId::LEN }>() else {
        return;
    };
    let id = ChunkId::from_bytes(*id);
    let codec = fsync_fuzz::codec();
    let header = check_blob_header(blob);
    match codec.decode(&id, blob) {
        Ok(plain) => {
            assert!(header.is_ok(), "decoded a blob whose header is refused");
            assert!(plain.len() <= MAX_CHUNK_PLAINTEXT);
            assert_eq!(
                codec.chunk_id(&plain),
                id,
                "decoded data under the wrong id"
            );
        }
        Err(
            CodecError::BadHeader | CodecError::UnsupportedVersion(_) | CodecError::UnknownFlags(_),
        ) => {
            assert!(
                header.is_err(),
                "decode refused a header check_blob_header accepts"
            );
        }
        Err(_) => {}
    }
});
