//! fsync's key hierarchy, blob codec and blob storage.
//!
//! - Keys ([`MasterKey`] from the password, [`AccountKey`], [`NamespaceKey`] and the
//!   [`NamespaceKeys`] derived from it), wrapped with XChaCha20-Poly1305.
//! - [`BlobCodec`]: chunk plaintext ⇄ blob (zstd if it saves ≥ 3 %, then
//!   XChaCha20-Poly1305 with the chunk id as associated data; bounded decompression).
//! - [`BlobStore`]: where blobs live ([`LocalStore`]), and [`EncryptedStore`], the
//!   codec as a decorator over any store.
//!
//! ```
//! use fsync_store::{test_kdf_params, AccountKey, BlobCodec, MasterKey, NamespaceKey};
//!
//! // Registration, on the client.
//! let params = test_kdf_params(); // default_kdf_params() for real accounts
//! let master = MasterKey::derive("correct horse battery staple", &params).unwrap();
//! let account_key = AccountKey::generate();
//! let wrapped_account_key = master.kek().wrap(&account_key);
//! let namespace_key = NamespaceKey::generate();
//! let wrapped_namespace_key = account_key.wrap_namespace_key(&namespace_key);
//!
//! // A new device: password + wrapped keys from the server give the same keys back.
//! let master = MasterKey::derive("correct horse battery staple", &params).unwrap();
//! let account_key = master.kek().unwrap(&wrapped_account_key).unwrap();
//! let keys = account_key.unwrap_namespace_key(&wrapped_namespace_key).unwrap().derive();
//!
//! let codec = BlobCodec::new(&keys);
//! let chunk = b"hello hello hello hello hello hello".to_vec();
//! let id = codec.chunk_id(&chunk);
//! let blob = codec.encode(&id, &chunk).unwrap();
//! assert_eq!(codec.decode(&id, &blob).unwrap(), chunk);
//! ```

mod backend;
mod codec;
mod keys;
pub mod pack;

#[cfg(any(test, feature = "testsuite"))]
pub mod testsuite;

pub use backend::encrypted::EncryptedStore;
pub use backend::local::LocalStore;
pub use backend::local_packs::LocalPacks;
pub use backend::packs::{PackInfo, PackStore};
pub use backend::s3::{S3Config, S3Packs};
pub use backend::{BlobInfo, BlobStore, PutOutcome, StoreError};
pub use codec::{
    check_blob_header, BlobCodec, CodecError, BLOB_HEADER_LEN, BLOB_OVERHEAD, DEFAULT_ZSTD_LEVEL,
};
pub use keys::{
    default_kdf_params, fake_kdf_params, hash_auth_key, test_kdf_params, validate_kdf_params,
    verify_auth_key, AccountKey, AuthKey, EncKey, Kek, KeyError, MasterKey, NamespaceKey,
    NamespaceKeys, KDF_ARGON2ID, KDF_M_KIB_RANGE, KDF_P_RANGE, KDF_SALT_LEN, KDF_T_RANGE,
};

/// Re-exported so that implementors of [`BlobStore`] use the same macro version.
pub use async_trait::async_trait;
