//! Schemas of the wire types whose JSON form is not their Rust shape (hex ids, paths,
//! version vectors), for the server's OpenAPI document (feature `openapi`).

use utoipa::openapi::schema::{ArrayBuilder, ObjectBuilder, OneOfBuilder, Schema, Type};
use utoipa::openapi::RefOr;
use utoipa::{PartialSchema, ToSchema};

/// A lowercase hex string of `len` bytes.
pub(crate) fn hex_string(what: &str, len: usize) -> RefOr<Schema> {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .description(Some(format!("{what}: {len} bytes as lowercase hex")))
        .pattern(Some(format!("^[0-9a-f]{{{}}}$", len * 2)))
        .into()
}

impl PartialSchema for crate::SyncPath {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new()
            .schema_type(Type::String)
            .description(Some(
                "a path relative to the synced folder: '/'-separated, NFC, no '.', '..', \
                 empty or absolute components",
            ))
            .max_length(Some(crate::MAX_PATH_BYTES))
            .into()
    }
}

impl ToSchema for crate::SyncPath {}

impl PartialSchema for crate::VersionVector {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new()
            .schema_type(Type::Object)
            .description(Some(
                "version vector: device id (hex) to that device's counter; absent is 0",
            ))
            .additional_properties(Some(
                ObjectBuilder::new()
                    .schema_type(Type::Integer)
                    .minimum(Some(1)),
            ))
            .into()
    }
}

impl ToSchema for crate::VersionVector {}

impl PartialSchema for crate::wire::ChunkRef {
    fn schema() -> RefOr<Schema> {
        ArrayBuilder::new()
            .description(Some("[chunk id, plaintext length]"))
            .items(
                OneOfBuilder::new().item(crate::ChunkId::schema()).item(
                    ObjectBuilder::new()
                        .schema_type(Type::Integer)
                        .minimum(Some(1)),
                ),
            )
            .min_items(Some(2))
            .max_items(Some(2))
            .into()
    }
}

impl ToSchema for crate::wire::ChunkRef {}
