//! The server's domain layer: the rules of accounts, file writes, uploads and roles,
//! between the HTTP handlers (which extract, authorize, call here and map errors) and
//! the repository. Nothing here knows HTTP; errors are typed and become status codes in
//! `http/error.rs` only.

pub(crate) mod accounts;
pub(crate) mod downloads;
pub(crate) mod files;
pub(crate) mod group_commit;
pub(crate) mod manifest;
pub(crate) mod resolve;
pub(crate) mod roles;
pub(crate) mod uploads;

pub use files::WriteError;
