//! Shared pieces of the fuzz targets: the fixed keys the seeds were made with.

use fsync_store::{BlobCodec, NamespaceKey};

/// The namespace key every blob target uses, so that the seed blobs in `seeds/`
/// (made by `cargo run --example seeds`) decode.
pub const NAMESPACE_KEY: [u8; 32] = *b"fsync fuzz namespace key 0123456";

/// The server secret of the token target.
pub const TOKEN_SECRET: &[u8] = b"fsync fuzz token secret 0123456789abcdef";

/// A codec over [`NAMESPACE_KEY`] with the default settings.
#[must_use]
pub fn codec() -> BlobCodec {
    BlobCodec::new(&NamespaceKey::from_bytes(NAMESPACE_KEY).derive())
}

/// A deterministic stream of bytes from `seed` (xorshift64*), for targets that
/// stretch a short input into a chunk-sized one.
#[must_use]
pub fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        out.extend_from_slice(&x.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes());
    }
    out.truncate(len);
    out
}
