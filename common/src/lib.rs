//! Types shared by the fsync server and client: identifiers, version vectors,
//! sync-path validation, the wire format of the API, error codes and limits.
//!
//! ```
//! use fsync_common::{SyncPath, VersionVector, VvOrdering, DeviceId};
//!
//! let path = SyncPath::new("docs/report.txt").unwrap();
//! assert!(SyncPath::new("../../etc/passwd").is_err());
//!
//! let phone = DeviceId::from_bytes([1; 8]);
//! let laptop = DeviceId::from_bytes([2; 8]);
//! let base = VersionVector::new().incremented(phone);
//! let a = base.incremented(phone);
//! let b = base.incremented(laptop);
//! assert_eq!(a.compare(&b), VvOrdering::Concurrent);
//! assert_eq!(path.file_name(), "report.txt");
//! ```

mod error;
mod ids;
mod keys;
#[cfg(feature = "openapi")]
mod openapi;
mod path;
mod vv;

pub mod batch;
pub mod durable;
pub mod failpoint;
pub mod limits;
pub mod pages;
pub mod size;
pub mod wire;

pub use error::{one_line, ErrorBody, ErrorCode, ErrorDetail};
pub use ids::{
    ChunkId, ContentHash, DeviceId, FileId, IdParseError, NamespaceId, PackId, PageId, Seq, UserId,
    VersionNo,
};
pub use keys::IdKey;
pub use path::{PathError, PortabilityIssue, SyncPath, MAX_COMPONENT_BYTES, MAX_PATH_BYTES};
pub use vv::{VersionVector, VvOrdering};
