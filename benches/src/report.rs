//! Benchmark results: the [`Record`] every scenario emits, and the two ways to print
//! them (a human-readable table, or JSON for scripts).
//!
//! Every scenario reports a flat list of records of the same shape:
//!
//! ```json
//! {"scenario": "pipeline", "metric": "throughput", "unit": "MB/s", "value": 2890.5,
//!  "labels": {"stage": "fastcdc", "threads": 1, "data": "random"}}
//! ```

use std::fmt::Write as _;
use std::io::{self, Write};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// One measured figure.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Record {
    /// The scenario (subcommand) that produced it, e.g. `"pipeline"`.
    pub scenario: String,
    /// What was measured, e.g. `"throughput"`.
    pub metric: String,
    /// Unit of `value`, e.g. `"MB/s"`.
    pub unit: String,
    /// The figure (for repeated runs, the median).
    pub value: f64,
    /// What distinguishes this record from the others of the same metric, e.g.
    /// `{"stage": "fastcdc", "threads": 1, "data": "random"}`.
    pub labels: Map<String, Value>,
}

/// The records of one scenario run, with what a reader of the table needs to know.
#[derive(Debug, Clone)]
pub(crate) struct Report {
    /// The label whose values become table rows (e.g. `"stage"`); the other labels
    /// together make the columns.
    pub row_label: &'static str,
    /// Lines printed under the table (definitions, data description, caveats).
    pub notes: Vec<String>,
    /// The figures.
    pub records: Vec<Record>,
}

/// Writes the records as one pretty-printed JSON array.
pub(crate) fn write_json(records: &[Record], out: &mut impl Write) -> io::Result<()> {
    serde_json::to_writer_pretty(&mut *out, records)?;
    writeln!(out)
}

/// Writes one table per `(scenario, metric, unit)`: a row per value of
/// `report.row_label`, a column per combination of the other labels, then the notes.
pub(crate) fn write_table(report: &Report, out: &mut impl Write) -> io::Result<()> {
    let mut groups: Vec<(&str, &str, &str)> = Vec::new();
    for r in &report.records {
        let key = (r.scenario.as_str(), r.metric.as_str(), r.unit.as_str());
        if !groups.contains(&key) {
            groups.push(key);
        }
    }
    for (i, &(scenario, metric, unit)) in groups.iter().enumerate() {
        if i > 0 {
            writeln!(out)?;
        }
        let records: Vec<&Record> = report
            .records
            .iter()
            .filter(|r| {
                (r.scenario.as_str(), r.metric.as_str(), r.unit.as_str())
                    == (scenario, metric, unit)
            })
            .collect();
        writeln!(out, "{scenario}: {metric} ({unit})")?;
        out.write_all(pivot(&records, report.row_label).as_bytes())?;
    }
    for note in &report.notes {
        writeln!(out, "{note}")?;
    }
    Ok(())
}

/// Renders `records` as an aligned text table, rows keyed by `row_label`.
fn pivot(records: &[&Record], row_label: &str) -> String {
    let mut rows: Vec<String> = Vec::new();
    let mut columns: Vec<String> = Vec::new();
    for r in records {
        let (row, column) = row_and_column(r, row_label);
        if !rows.contains(&row) {
            rows.push(row);
        }
        if !columns.contains(&column) {
            columns.push(column);
        }
    }
    let mut cells = vec![vec![String::new(); columns.len()]; rows.len()];
    for r in records {
        let (row, column) = row_and_column(r, row_label);
        let i = rows
            .iter()
            .position(|x| *x == row)
            .expect("row was collected");
        let j = columns
            .iter()
            .position(|x| *x == column)
            .expect("column was collected");
        cells[i][j] = format_value(r.value);
    }

    let first_width = rows
        .iter()
        .map(String::len)
        .chain([row_label.len()])
        .max()
        .unwrap_or(0);
    let widths: Vec<usize> = columns
        .iter()
        .enumerate()
        .map(|(j, c)| {
            cells
                .iter()
                .map(|row| row[j].len())
                .chain([c.len()])
                .max()
                .unwrap_or(0)
        })
        .collect();

    let mut text = String::new();
    let _ = write!(text, "{row_label:<first_width$}");
    for (c, w) in columns.iter().zip(&widths) {
        let _ = write!(text, "  {c:>w$}");
    }
    text.push('\n');
    let rule = first_width + widths.iter().map(|w| w + 2).sum::<usize>();
    text.push_str(&"-".repeat(rule));
    text.push('\n');
    for (row, row_cells) in rows.iter().zip(&cells) {
        let _ = write!(text, "{row:<first_width$}");
        for (cell, w) in row_cells.iter().zip(&widths) {
            let _ = write!(text, "  {cell:>w$}");
        }
        text.push('\n');
    }
    text
}

/// The record's row name (its `row_label` value) and column name (the other labels,
/// `key=value` separated by spaces, in the record's order).
fn row_and_column(record: &Record, row_label: &str) -> (String, String) {
    let row = record
        .labels
        .get(row_label)
        .map_or_else(String::new, label_text);
    let column = record
        .labels
        .iter()
        .filter(|(k, _)| k.as_str() != row_label)
        .map(|(k, v)| format!("{k}={}", label_text(v)))
        .collect::<Vec<_>>()
        .join(" ");
    (row, column)
}

/// A label value as text: strings without their JSON quotes.
fn label_text(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Figures of 100 and more need no decimals; smaller ones keep three significant
/// digits or so.
fn format_value(value: f64) -> String {
    if value.abs() >= 100.0 {
        format!("{value:.0}")
    } else if value.abs() >= 10.0 {
        format!("{value:.1}")
    } else {
        format!("{value:.2}")
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn record(stage: &str, threads: u64, value: f64) -> Record {
        let Value::Object(labels) = json!({"stage": stage, "threads": threads}) else {
            unreachable!()
        };
        Record {
            scenario: "s".into(),
            metric: "throughput".into(),
            unit: "MB/s".into(),
            value,
            labels,
        }
    }

    #[test]
    fn table_pivots_rows_by_the_row_label() {
        let report = Report {
            row_label: "stage",
            notes: vec!["a note".into()],
            records: vec![
                record("a", 1, 1234.4),
                record("a", 2, 2.5),
                record("bb", 1, 10.0),
                record("bb", 2, 99.94),
            ],
        };
        let mut out = Vec::new();
        write_table(&report, &mut out).unwrap();
        let expected = "\
s: throughput (MB/s)
stage  threads=1  threads=2
---------------------------
a           1234       2.50
bb          10.0       99.9
a note
";
        assert_eq!(String::from_utf8(out).unwrap(), expected);
    }

    #[test]
    fn json_round_trips() {
        let records = vec![record("a", 1, 1.5), record("b", 2, 3.0)];
        let mut out = Vec::new();
        write_json(&records, &mut out).unwrap();
        let back: Vec<Record> = serde_json::from_slice(&out).unwrap();
        assert_eq!(back, records);
    }
}
