//! Row decoding and the text of repeated SQL fragments.

use fsync_common::wire::FileMeta;
use fsync_common::{ContentHash, Seq, VersionNo};
use sqlx::any::AnyRow;
use sqlx::Row;

use crate::db::DbError;
use crate::domain::resolve::HeadState;

/// The columns of `files` that [`file_meta`] decodes.
pub(super) const FILE_COLS: &str =
    "id, namespace_id, path, head_version, vv, size, mtime, mode, checksum, is_deleted, device_id, seq";

pub(in crate::db) fn parse<T: std::str::FromStr>(s: &str, what: &str) -> Result<T, DbError>
where
    T::Err: std::fmt::Display,
{
    s.parse()
        .map_err(|e| DbError::Corrupt(format!("{what}: {e}")))
}

/// The first column of each row, a text id, parsed (`what` names it in the error).
pub(in crate::db) fn ids<T: std::str::FromStr>(
    rows: &[AnyRow],
    what: &str,
) -> Result<Vec<T>, DbError>
where
    T::Err: std::fmt::Display,
{
    rows.iter()
        .map(|r| parse(&r.try_get::<String, _>(0)?, what))
        .collect()
}

pub(super) fn json<T: serde::de::DeserializeOwned>(s: &str, what: &str) -> Result<T, DbError> {
    serde_json::from_str(s).map_err(|e| DbError::Corrupt(format!("{what}: {e}")))
}

pub(super) fn to_json<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_string(v).expect("wire types serialize")
}

pub(in crate::db) fn i64_of(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// Decodes a row of [`FILE_COLS`].
pub(super) fn file_meta(row: &AnyRow) -> Result<FileMeta, DbError> {
    let checksum: Option<String> = row.try_get("checksum")?;
    Ok(FileMeta {
        file_id: parse(&row.try_get::<String, _>("id")?, "file id")?,
        namespace: parse(&row.try_get::<String, _>("namespace_id")?, "namespace id")?,
        path: parse(&row.try_get::<String, _>("path")?, "path")?,
        version: VersionNo(row.try_get::<i64, _>("head_version")? as u64),
        vv: json(&row.try_get::<String, _>("vv")?, "version vector")?,
        size: row.try_get::<i64, _>("size")? as u64,
        mtime: row.try_get("mtime")?,
        mode: row.try_get::<i64, _>("mode")? as u32,
        content_hash: checksum
            .map(|c| parse::<ContentHash>(&c, "checksum"))
            .transpose()?,
        deleted: row.try_get::<i64, _>("is_deleted")? != 0,
        device: parse(&row.try_get::<String, _>("device_id")?, "device id")?,
        seq: Seq(row.try_get::<i64, _>("seq")? as u64),
    })
}

/// What the conflict rules need of a head.
pub(super) fn head_state(m: &FileMeta) -> HeadState {
    HeadState {
        vv: m.vv.clone(),
        mtime: m.mtime,
        device: m.device,
        content_hash: m.content_hash,
        size: m.size,
        mode: m.mode,
        deleted: m.deleted,
    }
}

/// `$start,…,$(start+n-1)`: the placeholders of an `IN (…)` list.
pub(in crate::db) fn placeholders(start: usize, n: usize) -> String {
    (start..start + n)
        .map(|i| format!("${i}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// Upper bound of the half-open range of paths below `dir/`: `'/' + 1 == '0'`.
pub(super) fn prefix_range(dir: &str) -> (String, String) {
    (format!("{dir}/"), format!("{dir}0"))
}

/// The `VALUES` list of a multi-row `INSERT` of `rows` rows, each shaped like `row`:
/// `$N` in `row` is a value shared by every row (bound once, first), and each `?` takes
/// the next per-row placeholder, numbered from `shared + 1`. For example
/// `multi_row_values("($1, ?, ?)", 1, 2)` is `($1, $2, $3),($1, $4, $5)`.
pub(super) fn multi_row_values(row: &str, shared: usize, rows: usize) -> String {
    let mut next = shared + 1;
    let mut out = String::with_capacity(rows * (row.len() + 8));
    for i in 0..rows {
        if i > 0 {
            out.push(',');
        }
        for c in row.chars() {
            if c == '?' {
                out.push('$');
                out.push_str(&next.to_string());
                next += 1;
            } else {
                out.push(c);
            }
        }
    }
    out
}

/// Inserts the row of `pack` (state `live`, `live` bytes in use, made at `created`);
/// with `if_absent`, a row already there is kept as it is.
pub(in crate::db) async fn insert_pack_row(
    conn: &mut sqlx::AnyConnection,
    ns: fsync_common::NamespaceId,
    pack: &crate::db::NewPack,
    live: u64,
    created: i64,
    if_absent: bool,
) -> Result<(), DbError> {
    let conflict = if if_absent {
        " ON CONFLICT (namespace_id, id) DO NOTHING"
    } else {
        ""
    };
    let sql = format!(
        "INSERT INTO packs (namespace_id, id, size, blobs, live_bytes, state, created_at) \
         VALUES ($1, $2, $3, $4, $5, 'live', $6){conflict}"
    );
    sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(ns.to_hex())
        .bind(pack.id.to_hex())
        .bind(i64_of(pack.size))
        .bind(pack.entries.len() as i64)
        .bind(i64_of(live))
        .bind(created)
        .execute(conn)
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn multi_row_values_numbers_per_row_slots_after_the_shared_ones() {
        assert_eq!(
            multi_row_values("($1, ?, ?)", 1, 2),
            "($1, $2, $3),($1, $4, $5)"
        );
        assert_eq!(
            multi_row_values("(?, $1, ?)", 1, 2),
            "($2, $1, $3),($4, $1, $5)"
        );
        assert_eq!(
            multi_row_values("($1, $2, ?, ?, $3)", 3, 2),
            "($1, $2, $4, $5, $3),($1, $2, $6, $7, $3)"
        );
        assert_eq!(multi_row_values("($1, ?)", 1, 0), "");
    }
}
