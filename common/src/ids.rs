//! Identifier newtypes. Every identifier that crosses a module boundary is one of these,
//! never a bare byte array, string or integer.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Error returned when an identifier cannot be parsed from its textual form.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {kind}: expected {expected} lowercase hex characters, got {got:?}")]
pub struct IdParseError {
    /// Which identifier kind was being parsed.
    pub kind: &'static str,
    /// Number of hex characters the kind requires.
    pub expected: usize,
    /// The offending input (truncated to 80 characters).
    pub got: String,
}

fn parse_hex<const N: usize>(kind: &'static str, s: &str) -> Result<[u8; N], IdParseError> {
    let err = || IdParseError {
        kind,
        expected: N * 2,
        got: s.chars().take(80).collect(),
    };
    // Only lowercase hex is canonical: accepting both would give one id two spellings.
    if s.len() != N * 2 || !s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return Err(err());
    }
    let mut out = [0u8; N];
    hex::decode_to_slice(s, &mut out).map_err(|_| err())?;
    Ok(out)
}

macro_rules! hex_id {
    ($(#[$doc:meta])* $name:ident, $len:expr, $kind:literal) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name([u8; $len]);

        impl $name {
            /// Length of the identifier in bytes.
            pub const LEN: usize = $len;

            /// Wraps raw bytes.
            pub const fn from_bytes(bytes: [u8; $len]) -> Self {
                Self(bytes)
            }

            /// The raw bytes.
            pub const fn as_bytes(&self) -> &[u8; $len] {
                &self.0
            }

            /// Lowercase hex, the wire form.
            pub fn to_hex(&self) -> String {
                hex::encode(self.0)
            }

            /// Parses the lowercase hex wire form.
            pub fn from_hex(s: &str) -> Result<Self, IdParseError> {
                parse_hex::<$len>($kind, s).map(Self)
            }
        }

        impl From<[u8; $len]> for $name {
            fn from(bytes: [u8; $len]) -> Self {
                Self(bytes)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                for b in &self.0 {
                    write!(f, "{b:02x}")?;
                }
                Ok(())
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({self})", stringify!($name))
            }
        }

        impl FromStr for $name {
            type Err = IdParseError;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Self::from_hex(s)
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&self.to_hex())
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
                Self::from_hex(&s).map_err(serde::de::Error::custom)
            }
        }

        #[cfg(feature = "openapi")]
        impl utoipa::PartialSchema for $name {
            fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
                crate::openapi::hex_string($kind, $len)
            }
        }

        #[cfg(feature = "openapi")]
        impl utoipa::ToSchema for $name {}
    };
}

hex_id!(
    /// Content address of a chunk: keyed BLAKE3 of its plaintext under the namespace's
    /// `id_key` (32 bytes, lowercase hex on the wire).
    ChunkId,
    32,
    "chunk id"
);
hex_id!(
    /// Keyed BLAKE3 of a whole file's plaintext under the namespace's `id_key`.
    ContentHash,
    32,
    "content hash"
);
hex_id!(
    /// A device (one client installation) of a user; assigned by the server at login.
    DeviceId,
    8,
    "device id"
);
hex_id!(
    /// Stable identity of a file across renames and versions; assigned by the server.
    FileId,
    16,
    "file id"
);
hex_id!(
    /// A namespace: one synced folder with its own keys.
    NamespaceId,
    16,
    "namespace id"
);
hex_id!(
    /// A pack file of the server's blob store: random, so that a pack name is never
    /// reused after a collection removed it.
    PackId,
    16,
    "pack id"
);
hex_id!(
    /// Address of a manifest page: BLAKE3 (derive-key mode) of its encoding; see
    /// [`crate::pages`].
    PageId,
    32,
    "page id"
);
hex_id!(
    /// A user account.
    UserId,
    16,
    "user id"
);

impl DeviceId {
    /// The short form used in conflict-copy names: the first 7 hex characters.
    pub fn short(&self) -> String {
        let mut s = self.to_hex();
        s.truncate(7);
        s
    }
}

/// Position in a namespace's change journal: strictly increasing per namespace.
/// The sync cursor is a `Seq`, never a timestamp.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(transparent)]
pub struct Seq(pub u64);

impl fmt::Display for Seq {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl fmt::Debug for Seq {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Seq({})", self.0)
    }
}

/// Number of a file's version, increasing per file (1 is the first version).
#[derive(
    Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default, Debug, Serialize, Deserialize,
)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(transparent)]
pub struct VersionNo(pub u64);

impl fmt::Display for VersionNo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunk_id_hex_round_trip_is_lowercase() {
        let id = ChunkId::from_bytes([0xab; 32]);
        let s = id.to_hex();
        assert_eq!(s, "ab".repeat(32));
        assert_eq!(ChunkId::from_hex(&s).unwrap(), id);
        assert_eq!(serde_json::to_string(&id).unwrap(), format!("\"{s}\""));
        let back: ChunkId = serde_json::from_str(&format!("\"{s}\"")).unwrap();
        assert_eq!(back, id);
    }

    #[test]
    fn ids_reject_uppercase_wrong_length_and_non_hex() {
        assert!(ChunkId::from_hex(&"AB".repeat(32)).is_err());
        assert!(ChunkId::from_hex(&"ab".repeat(31)).is_err());
        assert!(ChunkId::from_hex(&"zz".repeat(32)).is_err());
        assert!(DeviceId::from_hex("0123456789abcdef").is_ok());
        let err = FileId::from_hex("nope").unwrap_err();
        assert!(err.to_string().contains("file id"), "{err}");
        assert!(serde_json::from_str::<ChunkId>("\"00\"").is_err());
    }

    #[test]
    fn device_short_form_is_seven_chars() {
        let d = DeviceId::from_hex("0123456789abcdef").unwrap();
        assert_eq!(d.short(), "0123456");
    }
}
