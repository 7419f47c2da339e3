//! Key material that more than one crate handles.

use std::fmt;

/// The namespace's `id_key`: keys BLAKE3 for chunk ids and file content hashes, so the
/// server never sees an unkeyed hash of plaintext. Derived in `fsync-store`, used by
/// `fsync-chunker`.
#[derive(Clone, PartialEq, Eq)]
pub struct IdKey([u8; 32]);

impl IdKey {
    /// Wraps raw key bytes.
    pub const fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// The raw key bytes.
    pub const fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl fmt::Debug for IdKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("IdKey(<redacted>)")
    }
}
