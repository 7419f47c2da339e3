//! Sync paths: the only form in which a file name crosses the wire or reaches the disk.
//!
//! A [`SyncPath`] is relative, `/`-separated and NFC-normalized, and cannot name anything
//! outside the sync root once joined to it.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use unicode_normalization::UnicodeNormalization;

/// Longest accepted path, in bytes of its NFC UTF-8 form.
pub const MAX_PATH_BYTES: usize = 4096;
/// Longest accepted path component, in bytes.
pub const MAX_COMPONENT_BYTES: usize = 255;

/// Why a path was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PathError {
    /// The path is the empty string.
    #[error("path is empty")]
    Empty,
    /// The path starts with `/`.
    #[error("path is absolute (starts with '/'); sync paths are relative to the sync root")]
    Absolute,
    /// The path starts with a drive letter such as `C:`.
    #[error("path starts with a drive letter ({0:?}); sync paths are relative")]
    DriveLetter(String),
    /// The path contains `\`.
    #[error("path contains a backslash; the separator is '/'")]
    Backslash,
    /// Two separators in a row, or a leading or trailing separator.
    #[error("path has an empty component (a doubled, leading or trailing '/')")]
    EmptyComponent,
    /// A `.` component.
    #[error("path has a '.' component")]
    Dot,
    /// A `..` component.
    #[error("path has a '..' component, which would leave the sync root")]
    DotDot,
    /// A NUL character.
    #[error("path contains a NUL character")]
    Nul,
    /// Another control character.
    #[error("path contains the control character U+{0:04X}")]
    Control(u32),
    /// A component longer than [`MAX_COMPONENT_BYTES`].
    #[error("path component is {0} bytes long; the limit is {MAX_COMPONENT_BYTES}")]
    ComponentTooLong(usize),
    /// The whole path is longer than [`MAX_PATH_BYTES`].
    #[error("path is {0} bytes long; the limit is {MAX_PATH_BYTES}")]
    TooLong(usize),
}

/// A name that is legal here but would be refused or altered on another system.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PortabilityIssue {
    /// A Windows reserved device name (`CON`, `NUL`, `CONIN$`, `COM1`, `LPT¹`, …), in
    /// any case, with or without extension.
    #[error("{0:?} is a reserved device name on Windows")]
    WindowsReserved(String),
    /// A component ending in `.` or a space (Windows strips them).
    #[error("{0:?} ends in a dot or a space, which Windows strips")]
    TrailingDotOrSpace(String),
    /// A character Windows forbids in names (`<>:"|?*`).
    #[error("{component:?} contains {ch:?}, which Windows forbids in names")]
    WindowsChar {
        /// The component.
        component: String,
        /// The forbidden character.
        ch: char,
    },
}

/// A validated sync path.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SyncPath(String);

impl SyncPath {
    /// Validates `raw` and normalizes it to NFC.
    pub fn new(raw: &str) -> Result<Self, PathError> {
        if raw.is_empty() {
            return Err(PathError::Empty);
        }
        let s: String = if unicode_normalization::is_nfc(raw) {
            raw.to_owned()
        } else {
            raw.nfc().collect()
        };
        if s.len() > MAX_PATH_BYTES {
            return Err(PathError::TooLong(s.len()));
        }
        if s.starts_with('/') {
            return Err(PathError::Absolute);
        }
        let b = s.as_bytes();
        if b.len() >= 2 && b[0].is_ascii_alphabetic() && b[1] == b':' {
            return Err(PathError::DriveLetter(s[..2].to_owned()));
        }
        for ch in s.chars() {
            match ch {
                '\0' => return Err(PathError::Nul),
                '\\' => return Err(PathError::Backslash),
                c if c.is_control() => return Err(PathError::Control(c as u32)),
                _ => {}
            }
        }
        for comp in s.split('/') {
            match comp {
                "" => return Err(PathError::EmptyComponent),
                "." => return Err(PathError::Dot),
                ".." => return Err(PathError::DotDot),
                c if c.len() > MAX_COMPONENT_BYTES => {
                    return Err(PathError::ComponentTooLong(c.len()))
                }
                _ => {}
            }
        }
        Ok(Self(s))
    }

    /// Builds a sync path from a path relative to the sync root on this machine.
    pub fn from_relative(rel: &Path) -> Result<Self, PathError> {
        let mut parts = Vec::new();
        for c in rel.components() {
            match c {
                std::path::Component::Normal(os) => {
                    let Some(s) = os.to_str() else {
                        return Err(PathError::Control(0xFFFD));
                    };
                    parts.push(s);
                }
                std::path::Component::CurDir => return Err(PathError::Dot),
                std::path::Component::ParentDir => return Err(PathError::DotDot),
                std::path::Component::RootDir | std::path::Component::Prefix(_) => {
                    return Err(PathError::Absolute)
                }
            }
        }
        Self::new(&parts.join("/"))
    }

    /// The path as a `/`-separated string.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The components, in order.
    pub fn components(&self) -> impl Iterator<Item = &str> {
        self.0.split('/')
    }

    /// The last component.
    pub fn file_name(&self) -> &str {
        self.0.rsplit('/').next().unwrap_or(&self.0)
    }

    /// The parent path, or `None` for a top-level entry.
    pub fn parent(&self) -> Option<SyncPath> {
        self.0.rfind('/').map(|i| SyncPath(self.0[..i].to_owned()))
    }

    /// True when `self` is `dir` or lies below it.
    pub fn starts_with(&self, dir: &SyncPath) -> bool {
        self.0 == dir.0
            || (self.0.len() > dir.0.len()
                && self.0.starts_with(&dir.0)
                && self.0.as_bytes()[dir.0.len()] == b'/')
    }

    /// Replaces the leading `from` directory with `to` (for folder moves).
    pub fn rebase(&self, from: &SyncPath, to: &SyncPath) -> Option<SyncPath> {
        if !self.starts_with(from) {
            return None;
        }
        let rest = &self.0[from.0.len()..];
        SyncPath::new(&format!("{}{rest}", to.0)).ok()
    }

    /// Joins the path to a local sync root. The result always lies inside `root`.
    pub fn to_local(&self, root: &Path) -> PathBuf {
        let mut p = root.to_path_buf();
        for c in self.components() {
            p.push(c);
        }
        p
    }

    /// The key under which two names collide on a case-insensitive file system.
    ///
    /// An approximation of Unicode full case folding, from the standard library's
    /// case mappings: lowercase, uppercase, lowercase again, then NFC. Going through
    /// the uppercase form is what makes `ß`, `ẞ`, `SS` and `ss` one key, likewise
    /// `ς`, `σ` and `Σ`, or `ﬁ` and `fi`; the first lowercasing takes `ẞ` (whose
    /// uppercase is itself) to `ß`. NFC comes last because a case mapping may
    /// decompose a character (`ΐ` uppercases to three code points).
    ///
    /// It errs towards reporting a collision: it also joins a few names that full
    /// case folding keeps apart (`ı` and `i`), which are not worth having side by
    /// side anyway.
    pub fn case_fold_key(&self) -> String {
        self.0
            .to_lowercase()
            .to_uppercase()
            .to_lowercase()
            .nfc()
            .collect()
    }

    /// Reasons this path would be refused or altered on Windows or macOS.
    pub fn portability_issues(&self) -> Vec<PortabilityIssue> {
        const RESERVED: &[&str] = &["CON", "PRN", "AUX", "NUL", "CONIN$", "CONOUT$"];
        /// `COM` and `LPT` followed by one of these are reserved too: Windows counts
        /// the superscript digits of Latin-1 (`¹²³`) as digits here.
        const PORT_DIGITS: &[&str] = &["1", "2", "3", "4", "5", "6", "7", "8", "9", "¹", "²", "³"];
        let mut out = Vec::new();
        for comp in self.components() {
            let stem = comp.split('.').next().unwrap_or(comp).trim_end();
            let upper = stem.to_ascii_uppercase();
            let numbered = ["COM", "LPT"].iter().any(|port| {
                upper
                    .strip_prefix(port)
                    .is_some_and(|digit| PORT_DIGITS.contains(&digit))
            });
            if RESERVED.contains(&upper.as_str()) || numbered {
                out.push(PortabilityIssue::WindowsReserved(comp.to_owned()));
            }
            if comp.ends_with('.') || comp.ends_with(' ') {
                out.push(PortabilityIssue::TrailingDotOrSpace(comp.to_owned()));
            }
            if let Some(ch) = comp.chars().find(|c| "<>:\"|?*".contains(*c)) {
                out.push(PortabilityIssue::WindowsChar {
                    component: comp.to_owned(),
                    ch,
                });
            }
        }
        out
    }
}

impl fmt::Display for SyncPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for SyncPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SyncPath({:?})", self.0)
    }
}

impl std::str::FromStr for SyncPath {
    type Err = PathError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

impl AsRef<str> for SyncPath {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl Serialize for SyncPath {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for SyncPath {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        Self::new(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn err(s: &str) -> PathError {
        SyncPath::new(s).unwrap_err()
    }

    #[test]
    fn accepts_ordinary_paths() {
        for p in [
            "a",
            "a/b.txt",
            "dir/sub/file name.tar.gz",
            "Ünïcödé/ファイル",
            ".hidden",
        ] {
            assert_eq!(SyncPath::new(p).unwrap().as_str(), p);
        }
    }

    #[test]
    fn rejects_each_bad_form_with_its_reason() {
        assert_eq!(err(""), PathError::Empty);
        assert_eq!(err("/etc/passwd"), PathError::Absolute);
        assert_eq!(err("C:/Windows"), PathError::DriveLetter("C:".into()));
        assert_eq!(err("a\\b"), PathError::Backslash);
        assert_eq!(err("a//b"), PathError::EmptyComponent);
        assert_eq!(err("a/"), PathError::EmptyComponent);
        assert_eq!(err("./a"), PathError::Dot);
        assert_eq!(err("../../etc/passwd"), PathError::DotDot);
        assert_eq!(err("a/../b"), PathError::DotDot);
        assert_eq!(err("a\0b"), PathError::Nul);
        assert_eq!(err("a\nb"), PathError::Control(0x0A));
        assert_eq!(err("a\u{7f}"), PathError::Control(0x7F));
        assert_eq!(err(&"x".repeat(256)), PathError::ComponentTooLong(256));
        let long = vec!["y".repeat(200); 21].join("/");
        assert_eq!(err(&long), PathError::TooLong(long.len()));
        assert!(err("../x").to_string().contains(".."));
    }

    #[test]
    fn normalizes_to_nfc() {
        let decomposed = "cafe\u{301}.txt";
        let p = SyncPath::new(decomposed).unwrap();
        assert_eq!(p.as_str(), "caf\u{e9}.txt");
        assert_eq!(p, SyncPath::new("caf\u{e9}.txt").unwrap());
    }

    #[test]
    fn flags_names_invalid_elsewhere() {
        let issues = |s: &str| SyncPath::new(s).unwrap().portability_issues();
        assert!(matches!(
            issues("CON")[..],
            [PortabilityIssue::WindowsReserved(_)]
        ));
        assert!(matches!(
            issues("dir/nul.txt")[..],
            [PortabilityIssue::WindowsReserved(_)]
        ));
        assert!(matches!(
            issues("com7")[..],
            [PortabilityIssue::WindowsReserved(_)]
        ));
        assert!(issues("com0").is_empty());
        assert!(issues("console").is_empty());
        assert!(matches!(
            issues("a./b")[..],
            [PortabilityIssue::TrailingDotOrSpace(_)]
        ));
        assert!(matches!(
            issues("b ")[..],
            [PortabilityIssue::TrailingDotOrSpace(_)]
        ));
        assert!(matches!(
            issues("ab:c")[..],
            [PortabilityIssue::WindowsChar { ch: ':', .. }]
        ));
        assert!(issues("fine/name.txt").is_empty());
    }

    #[test]
    fn case_fold_key_detects_collisions() {
        let a = SyncPath::new("Docs/README.md").unwrap();
        let b = SyncPath::new("docs/readme.md").unwrap();
        assert_ne!(a, b);
        assert_eq!(a.case_fold_key(), b.case_fold_key());
    }

    #[test]
    fn flags_console_names_and_superscript_ports() {
        let reserved = |s: &str| {
            SyncPath::new(s)
                .unwrap()
                .portability_issues()
                .contains(&PortabilityIssue::WindowsReserved(s.to_owned()))
        };
        for name in [
            "CONIN$", "conin$", "CoNoUt$", "CONOUT$", "COM¹", "com²", "Com³", "LPT¹", "lpt²",
            "LPT³",
        ] {
            assert!(reserved(name), "{name}");
            assert!(reserved(&format!("{name}.txt")), "{name}.txt");
            assert!(reserved(&format!("{name} .tar.gz")), "{name} .tar.gz");
        }
        // Only the superscripts ¹²³ count, and only alone after COM or LPT.
        for name in [
            "COM⁴", "LPT⁰", "COM₁", "COM¹¹", "COM1²", "CONIN", "CONOUT", "CONIN$x", "xCONIN$",
        ] {
            assert!(!reserved(name), "{name}");
        }
        assert_eq!(
            SyncPath::new("dir/conout$.log")
                .unwrap()
                .portability_issues(),
            [PortabilityIssue::WindowsReserved("conout$.log".into())]
        );
    }

    /// `case_fold_key` was plain `to_lowercase`, under which `ß` and `ss`, `ς` and
    /// `σ`, or `ﬁ` and `fi` were different names, though they collide where the file
    /// system folds case fully (APFS).
    #[test]
    fn case_fold_key_folds_fully() {
        let key = |s: &str| SyncPath::new(s).unwrap().case_fold_key();
        let same = [
            &["straße", "STRASSE", "strasse", "Straße", "STRAẞE"][..],
            &["ΟΔΟΣ", "οδος", "οδοσ", "Οδος"],
            &["ςσ", "σς", "ΣΣ", "σσ"],
            &["ﬁle", "FILE", "file", "File"],
            &["ǆ", "ǅ", "Ǆ"],
            &["K", "k", "\u{212a}"], // Kelvin sign
            &["ſ", "s", "S"],
            // NFC after folding: ΐ uppercases to three code points.
            &["\u{390}", "\u{3aa}\u{301}", "\u{399}\u{308}\u{301}"],
            &["Café/Ñ", "CAFE\u{301}/n\u{303}"],
        ];
        for group in same {
            for name in group {
                assert_eq!(key(name), key(group[0]), "{name:?} vs {:?}", group[0]);
            }
        }
        assert_ne!(key("straße"), key("strase"));
        assert_ne!(key("a"), key("á"));
        let k = key("ΐ/STRAẞE");
        assert_eq!(k, k.nfc().collect::<String>());
    }

    /// Exhaustive over every character that has a case mapping: a name, its uppercase
    /// and its lowercase share one key.
    #[test]
    fn case_fold_key_is_shared_by_upper_and_lower_case() {
        let key = |s: &str| SyncPath::new(s).ok().map(|p| p.case_fold_key());
        let has_case = |c: char| !c.to_lowercase().eq([c]) || !c.to_uppercase().eq([c]);
        for c in (0..=0x10_FFFF)
            .filter_map(char::from_u32)
            .filter(|&c| has_case(c))
        {
            // Alone, word-final and inside a word (final sigma depends on it).
            for name in [format!("{c}"), format!("a{c}"), format!("a{c}b")] {
                let Some(k) = key(&name) else { continue };
                for other in [name.to_uppercase(), name.to_lowercase()] {
                    if let Some(other_key) = key(&other) {
                        assert_eq!(k, other_key, "{name:?} vs {other:?}");
                    }
                }
            }
        }
    }

    #[test]
    fn prefix_helpers() {
        let d = SyncPath::new("a/b").unwrap();
        assert!(SyncPath::new("a/b/c").unwrap().starts_with(&d));
        assert!(SyncPath::new("a/b").unwrap().starts_with(&d));
        assert!(!SyncPath::new("a/bc").unwrap().starts_with(&d));
        let moved = SyncPath::new("a/b/c")
            .unwrap()
            .rebase(&d, &SyncPath::new("z").unwrap());
        assert_eq!(moved.unwrap().as_str(), "z/c");
        assert_eq!(SyncPath::new("a/b/c").unwrap().parent(), Some(d));
        assert_eq!(SyncPath::new("top").unwrap().parent(), None);
    }

    #[test]
    fn serde_validates() {
        assert!(serde_json::from_str::<SyncPath>("\"../x\"").is_err());
        let p: SyncPath = serde_json::from_str("\"a/b\"").unwrap();
        assert_eq!(p.as_str(), "a/b");
    }

    proptest! {
        /// Every accepted path, joined to a root, stays inside it.
        #[test]
        fn accepted_paths_stay_inside_root(raw in "[a-zA-Z0-9./\\\\:\\x00-\\x1f é~ -]{0,40}") {
            let root = Path::new("/sync/root");
            if let Ok(p) = SyncPath::new(&raw) {
                let joined = p.to_local(root);
                prop_assert!(joined.starts_with(root));
                let rel = joined.strip_prefix(root).unwrap();
                prop_assert!(rel.components().all(|c| matches!(c, std::path::Component::Normal(_))));
                prop_assert_eq!(rel.components().count(), p.components().count());
                prop_assert_eq!(SyncPath::from_relative(rel).unwrap(), p);
            }
        }

        #[test]
        fn segments_of_dots_are_never_accepted(parts in proptest::collection::vec(prop_oneof![Just(".."), Just("."), Just("ok")], 1..6)) {
            let raw = parts.join("/");
            let accepted = SyncPath::new(&raw).is_ok();
            prop_assert_eq!(accepted, parts.iter().all(|p| *p == "ok"));
        }
    }
}
