//! JSON decoding of the API's request and response bodies (`fsync_common::wire`).
//! Input: `type selector u8 | JSON`. Whatever parses must re-serialize, and the
//! re-serialized form must parse to an equal value that serializes identically.
#![no_main]

use fsync_common::wire::{
    Change, ChangesQuery, ChangesResponse, ChunkIdsRequest, ClientMessage, CommitRequest,
    CommitResponse, DeleteRequest, DeviceInfo, FileMeta, HealthResponse, KdfParams, ListQuery,
    ListResponse, LoginRequest, LoginResponse, Manifest, ManifestsRequest, MissingResponse,
    NamespaceGrant, OpResponse, PushMessage, RefreshRequest, RegisterRequest, RegisterResponse,
    RenameRequest, RestoreRequest, StoredResponse, SyncEvent, SyncEventBatch, SyncEventResponse,
    TokenResponse, VersionInfo,
};
use fsync_common::{ErrorBody, VersionVector};
use libfuzzer_sys::fuzz_target;
use serde::de::DeserializeOwned;
use serde::Serialize;

/// Parses `bytes` as `T`; if that works, checks serialize → parse → serialize is
/// stable and returns the first and second values.
fn round_trip<T: Serialize + DeserializeOwned>(bytes: &[u8]) -> Option<(T, T)> {
    let first: T = serde_json::from_slice(bytes).ok()?;
    let json = serde_json::to_vec(&first).expect("a parsed value serializes");
    let second: T = serde_json::from_slice(&json).unwrap_or_else(|e| {
        panic!(
            "{} does not re-parse: {e}\n{}",
            std::any::type_name::<T>(),
            String::from_utf8_lossy(&json)
        )
    });
    let again = serde_json::to_vec(&second).expect("serializes");
    assert_eq!(
        String::from_utf8_lossy(&json),
        String::from_utf8_lossy(&again),
        "{} does not serialize stably",
        std::any::type_name::<T>()
    );
    Some((first, second))
}

/// [`round_trip`] for types with `PartialEq`: the two values must also be equal.
fn round_trip_eq<T: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug>(bytes: &[u8]) {
    if let Some((first, second)) = round_trip::<T>(bytes) {
        assert_eq!(first, second);
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&selector, json)) = data.split_first() else {
        return;
    };
    match selector % 34 {
        0 => round_trip_eq::<KdfParams>(json),
        1 => drop(round_trip::<RegisterRequest>(json)),
        2 => drop(round_trip::<LoginRequest>(json)),
        3 => drop(round_trip::<RefreshRequest>(json)),
        4 => drop(round_trip::<ChunkIdsRequest>(json)),
        5 => round_trip_eq::<CommitRequest>(json),
        6 => round_trip_eq::<FileMeta>(json),
        7 => round_trip_eq::<Manifest>(json),
        8 => drop(round_trip::<ManifestsRequest>(json)),
        9 => drop(round_trip::<RestoreRequest>(json)),
        10 => round_trip_eq::<DeleteRequest>(json),
        11 => round_trip_eq::<RenameRequest>(json),
        12 => round_trip_eq::<SyncEvent>(json),
        13 => drop(round_trip::<SyncEventBatch>(json)),
        14 => drop(round_trip::<ListQuery>(json)),
        15 => drop(round_trip::<ChangesQuery>(json)),
        16 => round_trip_eq::<Change>(json),
        17 => round_trip_eq::<CommitResponse>(json),
        18 => drop(round_trip::<SyncEventResponse>(json)),
        19 => drop(round_trip::<ChangesResponse>(json)),
        20 => drop(round_trip::<ListResponse>(json)),
        21 => drop(round_trip::<LoginResponse>(json)),
        22 => round_trip_eq::<OpResponse>(json),
        23 => round_trip_eq::<VersionInfo>(json),
        24 => round_trip_eq::<PushMessage>(json),
        25 => drop(round_trip::<ClientMessage>(json)),
        26 => round_trip_eq::<ErrorBody>(json),
        27 => drop(round_trip::<MissingResponse>(json)),
        28 => drop(round_trip::<TokenResponse>(json)),
        29 => round_trip_eq::<DeviceInfo>(json),
        30 => round_trip_eq::<NamespaceGrant>(json),
        31 => drop(round_trip::<HealthResponse>(json)),
        32 => drop(round_trip::<StoredResponse>(json)),
        _ => drop(round_trip::<RegisterResponse>(json)),
    }
    // Version vectors inside any body: canonical after decoding.
    if let Ok(vv) = serde_json::from_slice::<VersionVector>(json) {
        assert!(vv.iter().all(|(_, c)| c > 0), "zero counter kept: {vv:?}");
    }
});
