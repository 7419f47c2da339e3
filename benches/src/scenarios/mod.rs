//! One module per scenario (one `fsync-bench` subcommand each). A scenario takes its
//! validated options and returns a [`Report`](crate::report::Report).
//!
//! Also here, what several end-to-end scenarios share: the server's table counts
//! ([`DbCounts`]) and a wide table (one row per case, one column per metric).

use std::fmt::Write as _;
use std::io::{self, Write};

use anyhow::Context as _;
use serde_json::Value;

use crate::report::{Record, Report};

pub(crate) mod gc;
pub(crate) mod pipeline;
pub(crate) mod repack;
pub(crate) mod server;
pub(crate) mod small_files;
pub(crate) mod sweep;
pub(crate) mod sync;
pub(crate) mod versions;

/// A scenario's arguments parsed from `argv` (`argv[0]` is the command name), as the
/// `fsync-bench` subcommand would parse them.
pub(crate) fn parse_args<A: clap::Args>(
    argv: impl IntoIterator<Item = impl Into<std::ffi::OsString> + Clone>,
) -> Result<A, clap::Error> {
    let matches = A::augment_args(clap::Command::new("fsync-bench")).try_get_matches_from(argv)?;
    A::from_arg_matches(&matches)
}

/// Row counts and sizes read from the bench server's metadata database (the tables of
/// `server/migrations`), over all namespaces: scenarios take differences between two
/// reads around a workload, which runs alone on its server.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct DbCounts {
    /// Rows of `chunks` (one per stored blob and namespace).
    pub chunk_rows: i64,
    /// Sum of `chunks.stored_size`: the encoded (compressed, encrypted) blob bytes the
    /// server stored.
    pub stored_bytes: i64,
    /// Rows of `file_versions`.
    pub version_rows: i64,
    /// Rows of `version_chunks` (one per distinct chunk of each version).
    pub version_chunk_rows: i64,
}

impl DbCounts {
    /// Reads the counts from the database at `url` (the server's `--database-url`).
    pub(crate) async fn read(url: &str) -> anyhow::Result<Self> {
        use sqlx::{Connection as _, Row as _};
        sqlx::any::install_default_drivers();
        let mut conn = sqlx::AnyConnection::connect(url)
            .await
            .context("connecting to the bench server's database")?;
        let chunks = sqlx::query(
            "SELECT COUNT(*), CAST(COALESCE(SUM(stored_size), 0) AS BIGINT) FROM chunks",
        )
        .fetch_one(&mut conn)
        .await?;
        let versions = sqlx::query("SELECT COUNT(*) FROM file_versions")
            .fetch_one(&mut conn)
            .await?;
        let version_chunks = sqlx::query("SELECT COUNT(*) FROM version_chunks")
            .fetch_one(&mut conn)
            .await?;
        let counts = Self {
            chunk_rows: chunks.try_get(0)?,
            stored_bytes: chunks.try_get(1)?,
            version_rows: versions.try_get(0)?,
            version_chunk_rows: version_chunks.try_get(0)?,
        };
        let _ = conn.close().await;
        Ok(counts)
    }

    /// `self - before`, field by field.
    pub(crate) fn since(self, before: Self) -> Self {
        Self {
            chunk_rows: self.chunk_rows - before.chunk_rows,
            stored_bytes: self.stored_bytes - before.stored_bytes,
            version_rows: self.version_rows - before.version_rows,
            version_chunk_rows: self.version_chunk_rows - before.version_chunk_rows,
        }
    }
}

/// The manifest of the newest version of the file at `path` (any namespace), as the
/// server stores it: (its JSON bytes, the number of chunk entries it lists).
pub(crate) async fn newest_manifest(url: &str, path: &str) -> anyhow::Result<(u64, u64)> {
    use sqlx::{Connection as _, Row as _};
    sqlx::any::install_default_drivers();
    let mut conn = sqlx::AnyConnection::connect(url)
        .await
        .context("connecting to the bench server's database")?;
    let row = sqlx::query(
        "SELECT v.manifest, v.pages, f.namespace_id FROM file_versions v \
         JOIN files f ON f.id = v.file_id WHERE v.path = $1 ORDER BY v.id DESC LIMIT 1",
    )
    .bind(path.to_owned())
    .fetch_one(&mut conn)
    .await
    .with_context(|| format!("reading the manifest of {path}"))?;
    let manifest: String = row.try_get(0)?;
    // A manifest of several pages: the version keeps their ids, the pages their entries.
    if let Some(ids) = row.try_get::<Option<Vec<u8>>, _>(1)? {
        let ns: String = row.try_get(2)?;
        let mut entries = 0u64;
        for id in ids.chunks(32) {
            let n: i64 = sqlx::query_scalar(
                "SELECT entries FROM manifest_pages WHERE namespace_id = $1 AND id = $2",
            )
            .bind(ns.clone())
            .bind(id.to_vec())
            .fetch_one(&mut conn)
            .await
            .context("reading a manifest page")?;
            entries += n as u64;
        }
        let _ = conn.close().await;
        return Ok((ids.len() as u64, entries));
    }
    let _ = conn.close().await;
    let entries = match serde_json::from_str::<Value>(&manifest)? {
        Value::Array(a) => a.len() as u64,
        Value::Object(o) => o
            .values()
            .find_map(Value::as_array)
            .map_or(0, |a| a.len() as u64),
        _ => 0,
    };
    Ok((manifest.len() as u64, entries))
}

/// The bytes the bench server's metadata database holds (tables and indexes): SQLite's
/// pages from `dbstat`, PostgreSQL's relation sizes. Read before and after an edit, the
/// difference is what the edit stored (in pages of 4 KiB or 8 KiB, so a median over
/// several edits says more than one).
pub(crate) async fn metadata_bytes(url: &str) -> anyhow::Result<u64> {
    use sqlx::Connection as _;
    sqlx::any::install_default_drivers();
    let mut conn = sqlx::AnyConnection::connect(url)
        .await
        .context("connecting to the bench server's database")?;
    let sql = if url.starts_with("sqlite:") {
        "SELECT CAST(SUM(pgsize) AS BIGINT) FROM dbstat"
    } else {
        "SELECT CAST(SUM(pg_total_relation_size(c.oid)) AS BIGINT) FROM pg_class c \
         JOIN pg_namespace n ON n.oid = c.relnamespace \
         WHERE n.nspname = current_schema() AND c.relkind = 'r'"
    };
    let n: i64 = sqlx::query_scalar(sql)
        .fetch_one(&mut conn)
        .await
        .context("measuring the metadata database")?;
    let _ = conn.close().await;
    Ok(n.max(0) as u64)
}

/// Writes `report` as one table: a row per (`db`, `report.row_label`) pair, a column
/// per `metric (unit)` in the order the records first use them, then the notes. The
/// JSON output is the same records; only the layout differs from
/// [`report::write_table`](crate::report::write_table), which prints a table per
/// metric.
pub(crate) fn write_wide_table(
    title: &str,
    report: &Report,
    out: &mut impl Write,
) -> io::Result<()> {
    let label = |r: &Record, key: &str| match r.labels.get(key) {
        Some(Value::String(s)) => s.clone(),
        Some(v) => v.to_string(),
        None => String::new(),
    };
    let mut rows: Vec<(String, String)> = Vec::new();
    let mut columns: Vec<String> = Vec::new();
    for r in &report.records {
        let row = (label(r, "db"), label(r, report.row_label));
        if !rows.contains(&row) {
            rows.push(row);
        }
        let column = format!("{} ({})", r.metric, r.unit);
        if !columns.contains(&column) {
            columns.push(column);
        }
    }
    let mut cells = vec![vec![String::new(); columns.len()]; rows.len()];
    for r in &report.records {
        let row = (label(r, "db"), label(r, report.row_label));
        let column = format!("{} ({})", r.metric, r.unit);
        let i = rows.iter().position(|x| *x == row).expect("row collected");
        let j = columns
            .iter()
            .position(|x| *x == column)
            .expect("column collected");
        cells[i][j] = format_value(r.value);
    }
    let w_db = rows.iter().map(|r| r.0.len()).chain([2]).max().unwrap_or(2);
    let w_row = rows
        .iter()
        .map(|r| r.1.len())
        .chain([report.row_label.len()])
        .max()
        .unwrap_or(0);
    // Long headers wrap onto several lines (at spaces) so that a column is about as
    // wide as its figures.
    let headers: Vec<Vec<String>> = columns
        .iter()
        .enumerate()
        .map(|(j, c)| {
            let cell_width = cells.iter().map(|row| row[j].len()).max().unwrap_or(0);
            wrap(c, cell_width.max(MIN_HEADER_WIDTH))
        })
        .collect();
    let widths: Vec<usize> = headers
        .iter()
        .enumerate()
        .map(|(j, h)| {
            cells
                .iter()
                .map(|row| row[j].len())
                .chain(h.iter().map(String::len))
                .max()
                .unwrap_or(0)
        })
        .collect();
    let header_lines = headers.iter().map(Vec::len).max().unwrap_or(1);
    let mut text = String::new();
    let _ = writeln!(text, "{title}");
    for k in 0..header_lines {
        let last = k + 1 == header_lines;
        let (db, row) = if last {
            ("db", report.row_label)
        } else {
            ("", "")
        };
        let mut line = format!("{db:<w_db$}  {row:<w_row$}");
        for (h, w) in headers.iter().zip(&widths) {
            // Bottom-aligned: a header of fewer lines starts lower.
            let part = (k + h.len())
                .checked_sub(header_lines)
                .map_or("", |i| h[i].as_str());
            let _ = write!(line, "  {part:>w$}");
        }
        text.push_str(line.trim_end());
        text.push('\n');
    }
    let rule = w_db + 2 + w_row + widths.iter().map(|w| w + 2).sum::<usize>();
    text.push_str(&"-".repeat(rule));
    text.push('\n');
    for ((db, row), row_cells) in rows.iter().zip(&cells) {
        let mut line = format!("{db:<w_db$}  {row:<w_row$}");
        for (cell, w) in row_cells.iter().zip(&widths) {
            let _ = write!(line, "  {cell:>w$}");
        }
        text.push_str(line.trim_end());
        text.push('\n');
    }
    out.write_all(text.as_bytes())?;
    for note in &report.notes {
        writeln!(out, "{note}")?;
    }
    Ok(())
}

/// Headers wrap to at least this width.
const MIN_HEADER_WIDTH: usize = 10;

/// `text` broken at spaces into lines of at most `width` characters (a longer word
/// keeps its own line).
fn wrap(text: &str, width: usize) -> Vec<String> {
    let mut lines: Vec<String> = Vec::new();
    for word in text.split(' ') {
        match lines.last_mut() {
            Some(line) if line.len() + 1 + word.len() <= width => {
                line.push(' ');
                line.push_str(word);
            }
            _ => lines.push(word.to_owned()),
        }
    }
    lines
}

/// Whole numbers as they are; others as the per-metric tables print them (no
/// decimals from 100 up, one from 10), except that figures below 1 keep three
/// significant digits (0.00612 HTTP requests per file).
fn format_value(value: f64) -> String {
    if value.fract() == 0.0 || value.abs() >= 100.0 {
        format!("{value:.0}")
    } else if value.abs() >= 10.0 {
        format!("{value:.1}")
    } else if value.abs() >= 1.0 {
        format!("{value:.2}")
    } else {
        let decimals = 2 - value.abs().log10().floor() as i32;
        format!("{value:.*}", decimals.clamp(2, 9) as usize)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn small_figures_keep_three_significant_digits() {
        assert_eq!(format_value(0.006_123), "0.00612");
        assert_eq!(format_value(0.25), "0.250");
        assert_eq!(format_value(6.0), "6");
        assert_eq!(format_value(2.5), "2.50");
        assert_eq!(format_value(1234.4), "1234");
    }

    #[test]
    fn long_headers_wrap() {
        assert_eq!(wrap("edits: A up (bytes)", 10), ["edits: A", "up (bytes)"]);
        assert_eq!(
            wrap("version_chunks_rows x", 4),
            ["version_chunks_rows", "x"]
        );
    }

    #[test]
    fn wide_table_has_a_row_per_case_and_a_column_per_metric() {
        let rec = |case: &str, metric: &str, value: f64| {
            let Value::Object(labels) = json!({"case": case, "db": "sqlite"}) else {
                unreachable!()
            };
            Record {
                scenario: "s".into(),
                metric: metric.into(),
                unit: "B".into(),
                value,
                labels,
            }
        };
        let report = Report {
            row_label: "case",
            notes: vec!["n".into()],
            records: vec![
                rec("a", "x", 1.0),
                rec("a", "y", 1234.0),
                rec("bb", "x", 12.5),
            ],
        };
        let mut out = Vec::new();
        write_wide_table("t", &report, &mut out).unwrap();
        let expected = "\
t
db      case  x (B)  y (B)
--------------------------
sqlite  a         1   1234
sqlite  bb     12.5
n
";
        assert_eq!(String::from_utf8(out).unwrap(), expected);
    }
}
