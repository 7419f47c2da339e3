//! Authentication: tokens and rate limits. Password hashing and key derivation live in
//! `fsync-store` (the client derives; the server only hashes the derived auth key).

pub(crate) mod limit;
pub(crate) mod tokens;
