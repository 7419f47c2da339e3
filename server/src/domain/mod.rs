//! The server's domain layer: the rules of accounts, files, uploads and roles, between
//! the HTTP handlers (which extract, authorize, call here and map errors) and the
//! repository. Nothing here knows HTTP; errors are typed and mapped to status codes in
//! `http/error.rs` only.

pub(crate) mod manifest;
pub(crate) mod resolve;
pub(crate) mod roles;
