//! Sync-path validation: arbitrary strings into `SyncPath`. An accepted path is
//! relative, NFC, free of `.`/`..`/empty components and control characters, stays
//! inside a root when joined, and round-trips through every form it takes.
#![no_main]

use std::path::{Component, Path};

use fsync_common::{SyncPath, MAX_COMPONENT_BYTES, MAX_PATH_BYTES};
use libfuzzer_sys::fuzz_target;
use unicode_normalization::{is_nfc, UnicodeNormalization};

fn check_accepted(raw: &str, p: &SyncPath) {
    let s = p.as_str();
    assert!(!s.is_empty() && s.len() <= MAX_PATH_BYTES);
    assert!(is_nfc(s), "not NFC: {s:?}");
    assert_eq!(
        s,
        raw.nfc().collect::<String>(),
        "not the NFC form of the input"
    );
    assert!(!s.starts_with('/'), "absolute: {s:?}");
    assert!(
        !s.contains('\\') && !s.chars().any(char::is_control),
        "{s:?}"
    );
    let b = s.as_bytes();
    assert!(
        !(b.len() >= 2 && b[0].is_ascii_alphabetic() && b[1] == b':'),
        "{s:?}"
    );
    for c in p.components() {
        assert!(!matches!(c, "" | "." | ".."), "component {c:?} in {s:?}");
        assert!(c.len() <= MAX_COMPONENT_BYTES);
    }
    // Idempotent, and the same through every constructor.
    assert_eq!(SyncPath::new(s).as_ref(), Ok(p));
    assert_eq!(s.parse::<SyncPath>().as_ref(), Ok(p));
    let json = serde_json::to_string(p).expect("serializes");
    assert_eq!(
        &serde_json::from_str::<SyncPath>(&json).expect("re-parses"),
        p
    );
    // Joined to a root, it stays inside and comes back unchanged.
    let root = Path::new("/sync/root");
    let joined = p.to_local(root);
    let rel = joined.strip_prefix(root).expect("escaped the root");
    assert!(
        rel.components().all(|c| matches!(c, Component::Normal(_))),
        "{joined:?}"
    );
    assert_eq!(rel.components().count(), p.components().count());
    assert_eq!(SyncPath::from_relative(rel).as_ref(), Ok(p));
    // Helpers only ever produce valid paths.
    assert!(!p.file_name().is_empty());
    if let Some(parent) = p.parent() {
        assert_eq!(SyncPath::new(parent.as_str()).as_ref(), Ok(&parent));
        assert!(p.starts_with(&parent) && p != &parent);
        let moved = p.rebase(&parent, p);
        if let Some(m) = moved {
            assert!(m.starts_with(p));
        }
    }
    let _ = p.case_fold_key();
    let _ = p.portability_issues();
}

fuzz_target!(|data: &[u8]| {
    let raw = String::from_utf8_lossy(data);
    match SyncPath::new(&raw) {
        Ok(p) => check_accepted(&raw, &p),
        Err(e) => {
            let _ = e.to_string();
            assert!(serde_json::from_value::<SyncPath>(raw.as_ref().into()).is_err());
        }
    }
    // The same text as a local relative path.
    if let Ok(p) = SyncPath::from_relative(Path::new(raw.as_ref())) {
        let s = p.as_str();
        assert!(!s.split('/').any(|c| matches!(c, "" | "." | "..")), "{s:?}");
        assert!(!s.starts_with('/'));
    }
});
