//! The conflict rules of ARCHITECTURE §5 as pure functions: given the head of a path
//! and an incoming change, decide what the server does. The repository applies the
//! decision inside one transaction; nothing here touches storage.

use fsync_common::{ContentHash, DeviceId, SyncPath, VersionVector, VvOrdering};

/// The current head of a path, as far as the rules care.
#[derive(Debug, Clone)]
pub(crate) struct HeadState {
    pub(crate) vv: VersionVector,
    pub(crate) mtime: i64,
    pub(crate) device: DeviceId,
    pub(crate) content_hash: Option<ContentHash>,
    pub(crate) size: u64,
    pub(crate) mode: u32,
    pub(crate) deleted: bool,
}

/// An incoming modification.
#[derive(Debug, Clone)]
pub(crate) struct Incoming<'a> {
    pub(crate) base: &'a VersionVector,
    pub(crate) device: DeviceId,
    pub(crate) mtime: i64,
    pub(crate) content_hash: ContentHash,
    pub(crate) size: u64,
    pub(crate) mode: u32,
}

/// What to do with a commit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum CommitPlan {
    /// The incoming version becomes the head with this vector.
    FastForward { vv: VersionVector },
    /// Same content as the head, already known to the client: nothing to record.
    Unchanged,
    /// Same content reached concurrently: record the merged vector as a new version.
    Merge { vv: VersionVector },
    /// Concurrent, incoming wins: it becomes the head; the old head moves to a copy.
    ConflictWon {
        vv: VersionVector,
        copy_mtime: i64,
        copy_device: DeviceId,
    },
    /// Concurrent, incoming loses: it is kept as a conflict copy; the head stays.
    ConflictLost,
}

/// Decides a commit (ARCHITECTURE §5).
pub(crate) fn plan_commit(head: Option<&HeadState>, inc: &Incoming<'_>) -> CommitPlan {
    let Some(head) = head else {
        return CommitPlan::FastForward {
            vv: inc.base.incremented(inc.device),
        };
    };
    let merged = head.vv.merged(inc.base);
    let same_content = !head.deleted
        && head.content_hash == Some(inc.content_hash)
        && head.size == inc.size
        && head.mode == inc.mode;
    if same_content {
        return if head.vv.le(inc.base) {
            CommitPlan::Unchanged
        } else {
            CommitPlan::Merge { vv: merged }
        };
    }
    // Fast-forward when the client saw the head; a modification also beats a delete
    // it did not see (a delete never destroys data someone else changed).
    if head.vv.le(inc.base) || head.deleted {
        return CommitPlan::FastForward {
            vv: merged.incremented(inc.device),
        };
    }
    debug_assert!(matches!(
        head.vv.compare(inc.base),
        VvOrdering::Greater | VvOrdering::Concurrent
    ));
    // Concurrent: last writer wins on (mtime, device); ties cannot happen across devices.
    if (inc.mtime, inc.device) > (head.mtime, head.device) {
        CommitPlan::ConflictWon {
            vv: merged.incremented(inc.device),
            copy_mtime: head.mtime,
            copy_device: head.device,
        }
    } else {
        CommitPlan::ConflictLost
    }
}

/// What to do with a delete.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum DeletePlan {
    /// Tombstone the head with this vector.
    Delete { vv: VersionVector },
    /// The file changed after the version the client saw: the modification wins.
    KeptModified,
    /// Already a tombstone.
    AlreadyDeleted,
}

/// Decides a delete: it applies only to the version its sender saw (invariant I3).
pub(crate) fn plan_delete(head: &HeadState, base: &VersionVector, device: DeviceId) -> DeletePlan {
    if head.deleted {
        DeletePlan::AlreadyDeleted
    } else if head.vv.le(base) {
        DeletePlan::Delete {
            vv: head.vv.merged(base).incremented(device),
        }
    } else {
        DeletePlan::KeptModified
    }
}

/// The name of a conflict copy: `name.sync-conflict-YYYYMMDD-HHMMSS-<device>.ext`,
/// from the losing version's mtime (UTC) and device, so every replica derives the same
/// name (invariant I7). `attempt` > 0 appends `-N` when that name is taken.
pub(crate) fn conflict_path(
    path: &SyncPath,
    mtime_ns: i64,
    device: DeviceId,
    attempt: u32,
) -> SyncPath {
    let name = path.file_name();
    // The extension is what follows the last dot, unless the only dot starts the name.
    let (stem, ext) = match name.rfind('.') {
        Some(i) if i > 0 => (&name[..i], &name[i..]),
        _ => (name, ""),
    };
    let (year, month, day, hour, minute, second) = utc_parts(mtime_ns.div_euclid(1_000_000_000));
    let suffix = if attempt == 0 {
        String::new()
    } else {
        format!("-{attempt}")
    };
    let tag = format!(
        ".sync-conflict-{year:04}{month:02}{day:02}-{hour:02}{minute:02}{second:02}-{}{suffix}",
        device.short()
    );
    // Keep the component within the 255-byte limit by shortening the stem.
    let budget = fsync_common::MAX_COMPONENT_BYTES.saturating_sub(tag.len() + ext.len());
    let mut cut = stem.len().min(budget);
    while !stem.is_char_boundary(cut) {
        cut -= 1;
    }
    let file = format!("{}{tag}{ext}", &stem[..cut]);
    let full = match path.parent() {
        Some(parent) => format!("{parent}/{file}"),
        None => file,
    };
    SyncPath::new(&full).expect("a conflict name built from a valid path is valid")
}

/// Civil UTC date and time of a Unix time in seconds (proleptic Gregorian).
fn utc_parts(secs: i64) -> (i64, u32, u32, u32, u32, u32) {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Howard Hinnant's days_from_civil inverse.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (
        y,
        m,
        d,
        (rem / 3600) as u32,
        (rem % 3600 / 60) as u32,
        (rem % 60) as u32,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dev(n: u8) -> DeviceId {
        DeviceId::from_bytes([n; 8])
    }

    fn head(vv: VersionVector, mtime: i64, device: DeviceId, hash: u8) -> HeadState {
        HeadState {
            vv,
            mtime,
            device,
            content_hash: Some(ContentHash::from_bytes([hash; 32])),
            size: 10,
            mode: 0o644,
            deleted: false,
        }
    }

    fn inc(base: &VersionVector, device: DeviceId, mtime: i64, hash: u8) -> Incoming<'_> {
        Incoming {
            base,
            device,
            mtime,
            content_hash: ContentHash::from_bytes([hash; 32]),
            size: 10,
            mode: 0o644,
        }
    }

    #[test]
    fn new_file_fast_forwards() {
        let base = VersionVector::new();
        let plan = plan_commit(None, &inc(&base, dev(1), 5, 1));
        assert_eq!(
            plan,
            CommitPlan::FastForward {
                vv: base.incremented(dev(1))
            }
        );
    }

    #[test]
    fn edit_on_top_of_head_fast_forwards() {
        let v1 = VersionVector::new().incremented(dev(1));
        let h = head(v1.clone(), 5, dev(1), 1);
        let plan = plan_commit(Some(&h), &inc(&v1, dev(2), 6, 2));
        assert_eq!(
            plan,
            CommitPlan::FastForward {
                vv: v1.incremented(dev(2))
            }
        );
    }

    #[test]
    fn concurrent_edits_resolve_by_mtime_then_device() {
        let v1 = VersionVector::new().incremented(dev(1));
        let h = head(v1.incremented(dev(1)), 100, dev(1), 2);
        let stale = v1.clone();
        // Newer mtime wins.
        let won = plan_commit(Some(&h), &inc(&stale, dev(2), 200, 3));
        assert!(matches!(
            won,
            CommitPlan::ConflictWon {
                copy_mtime: 100,
                ..
            }
        ));
        // Older mtime loses.
        assert_eq!(
            plan_commit(Some(&h), &inc(&stale, dev(2), 50, 3)),
            CommitPlan::ConflictLost
        );
        // Same mtime: the larger device id wins, deterministically.
        assert!(matches!(
            plan_commit(Some(&h), &inc(&stale, dev(2), 100, 3)),
            CommitPlan::ConflictWon { .. }
        ));
        assert_eq!(
            plan_commit(Some(&h), &inc(&stale, dev(0), 100, 3)),
            CommitPlan::ConflictLost
        );
    }

    #[test]
    fn winner_vector_dominates_both_sides() {
        let v1 = VersionVector::new().incremented(dev(1));
        let h = head(v1.incremented(dev(1)), 100, dev(1), 2);
        let base = v1.incremented(dev(2));
        let CommitPlan::ConflictWon { vv, .. } = plan_commit(Some(&h), &inc(&base, dev(2), 200, 3))
        else {
            panic!("expected a win");
        };
        assert!(h.vv.le(&vv) && base.le(&vv));
    }

    #[test]
    fn modification_beats_unseen_delete() {
        let v1 = VersionVector::new().incremented(dev(1));
        let mut h = head(v1.incremented(dev(1)), 100, dev(1), 2);
        h.deleted = true;
        h.content_hash = None;
        let plan = plan_commit(Some(&h), &inc(&v1, dev(2), 1, 3));
        assert!(matches!(plan, CommitPlan::FastForward { .. }));
    }

    #[test]
    fn same_content_is_unchanged_or_merged() {
        let v1 = VersionVector::new().incremented(dev(1));
        let h = head(v1.clone(), 100, dev(1), 7);
        assert_eq!(
            plan_commit(Some(&h), &inc(&v1, dev(2), 1, 7)),
            CommitPlan::Unchanged
        );
        let other = VersionVector::new().incremented(dev(2));
        assert_eq!(
            plan_commit(Some(&h), &inc(&other, dev(2), 1, 7)),
            CommitPlan::Merge {
                vv: v1.merged(&other)
            }
        );
    }

    #[test]
    fn delete_applies_only_to_the_version_seen() {
        let v1 = VersionVector::new().incremented(dev(1));
        let h = head(v1.incremented(dev(3)), 100, dev(3), 2);
        assert_eq!(plan_delete(&h, &v1, dev(2)), DeletePlan::KeptModified);
        assert!(matches!(
            plan_delete(&h, &h.vv, dev(2)),
            DeletePlan::Delete { .. }
        ));
        let mut gone = h.clone();
        gone.deleted = true;
        assert_eq!(
            plan_delete(&gone, &h.vv, dev(2)),
            DeletePlan::AlreadyDeleted
        );
    }

    #[test]
    fn conflict_names() {
        let d = DeviceId::from_hex("abcdef0123456789").unwrap();
        // 2026-11-25 15:34:47 UTC
        let t = 1_795_620_887 * 1_000_000_000;
        let p = |s: &str| SyncPath::new(s).unwrap();
        assert_eq!(
            conflict_path(&p("docs/report.txt"), t, d, 0).as_str(),
            "docs/report.sync-conflict-20261125-153447-abcdef0.txt"
        );
        assert_eq!(
            conflict_path(&p("Makefile"), t, d, 0).as_str(),
            "Makefile.sync-conflict-20261125-153447-abcdef0"
        );
        assert_eq!(
            conflict_path(&p(".bashrc"), t, d, 2).as_str(),
            ".bashrc.sync-conflict-20261125-153447-abcdef0-2"
        );
        let long = "x".repeat(250) + ".txt";
        let c = conflict_path(&p(&long), t, d, 0);
        assert!(c.as_str().len() <= 255 && c.as_str().ends_with("-abcdef0.txt"));
        assert_eq!(utc_parts(0), (1970, 1, 1, 0, 0, 0));
        assert_eq!(utc_parts(951_782_400), (2000, 2, 29, 0, 0, 0));
    }
}
