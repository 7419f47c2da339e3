//! `BlobCodec::encode` then `decode` gives the data back, for chunks stretched past
//! the compressibility probe's threshold.
//! Input: `shape u8 | level u8 | data`; `shape` picks how many times `data` is
//! repeated (1, 8, 32, 96) and which parts are masked with noise.
#![no_main]

use fsync_common::ChunkId;
use fsync_store::{check_blob_header, BLOB_OVERHEAD};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&[shape, level], data)) = data.split_first_chunk::<2>() else {
        return;
    };
    let repeat = [1, 8, 32, 96][usize::from(shape & 3)];
    let mut plain = data.repeat(repeat);
    let noise = fsync_fuzz::noise(u64::from(shape), plain.len());
    match (shape >> 2) & 3 {
        0 => {}
        // Everything random: the probe should send the chunk raw.
        1 => plain.iter_mut().zip(&noise).for_each(|(p, n)| *p ^= n),
        // Random head, structured tail.
        2 => {
            let half = plain.len() / 2;
            plain[..half]
                .iter_mut()
                .zip(&noise)
                .for_each(|(p, n)| *p ^= n);
        }
        // Alternating 2 KiB runs of noise and structure.
        _ => {
            for (i, (p, n)) in plain.iter_mut().zip(&noise).enumerate() {
                if (i / 2048) % 2 == 0 {
                    *p ^= n;
                }
            }
        }
    }
    let codec = fsync_fuzz::codec().with_zstd_level(i32::from(level % 12) - 3);
    let id = codec.chunk_id(&plain);
    let blob = codec.encode(&id, &plain).expect("encode");
    assert!(check_blob_header(&blob).is_ok());
    assert!(blob.len() <= plain.len() + BLOB_OVERHEAD);
    assert_eq!(codec.decode(&id, &blob).expect("decode"), plain);
    let mut other = *id.as_bytes();
    other[0] ^= 1;
    assert!(codec.decode(&ChunkId::from_bytes(other), &blob).is_err());
});
