//! The keys of a new account, made the way a client makes them (its own fresh
//! parameters, here the cheap [`fsync_store::test_kdf_params`]), for tests that speak
//! the API themselves.

use fsync_common::wire::{KdfParams, RegisterRequest};
use fsync_store::{AccountKey, BlobCodec, MasterKey, NamespaceKey};

/// A new account's registration and the keys behind it.
pub struct NewAccount {
    /// What `POST /api/v1/auth/register` takes (`password` is the auth key, hex;
    /// `email` is `<username>@example.org`).
    pub request: RegisterRequest,
    /// The master key derived from the password.
    pub master: MasterKey,
    /// The key of the account's first namespace.
    pub namespace_key: NamespaceKey,
}

impl NewAccount {
    /// Fresh keys for `username`, whose password is `password`.
    pub async fn new(username: &str, password: &str) -> Self {
        let kdf = fsync_store::test_kdf_params();
        let master = derive(password, &kdf).await;
        let account_key = AccountKey::generate();
        let namespace_key = NamespaceKey::generate();
        let request = RegisterRequest {
            username: username.to_owned(),
            email: Some(format!("{username}@example.org")),
            password: master.auth_key().to_hex(),
            kdf,
            wrapped_account_key: hex::encode(master.kek().wrap(&account_key)),
            wrapped_namespace_key: hex::encode(account_key.wrap_namespace_key(&namespace_key)),
        };
        Self {
            request,
            master,
            namespace_key,
        }
    }

    /// The codec of the first namespace.
    pub fn codec(&self) -> BlobCodec {
        BlobCodec::new(&self.namespace_key.derive())
    }
}

/// Derives the master key of `password` off the async reactor.
pub async fn derive(password: &str, kdf: &KdfParams) -> MasterKey {
    let (password, kdf) = (password.to_owned(), kdf.clone());
    tokio::task::spawn_blocking(move || {
        MasterKey::derive(&password, &kdf).expect("derive the master key")
    })
    .await
    .expect("derive task")
}
