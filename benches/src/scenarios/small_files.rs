//! `fsync-bench small-files`: a burst of small files, end to end (issue item 6).
//!
//! `--files` files of `--file-bytes` bytes each (default 10,000 × 1 KiB; the tree of
//! `sync`'s `initial-sync` with every size equal: `d{i/100}/f{i}.txt` source-like text
//! for even `i`, `.bin` random for odd, from a fixed seed) are written on device A,
//! then one `sync_once` on A uploads them and one on B downloads them; B's copy is
//! compared byte for byte (untimed). Per side: files/s, HTTP requests and request /
//! response body bytes per file.

use std::path::PathBuf;

use anyhow::ensure;
use rayon::prelude::*;
use serde_json::{json, Value};

use super::sync::{self, DATA_SEED};
use crate::harness::{self, Db, Round, Server};
use crate::report::{Record, Report};

/// Seed of the files.
const SEED: u64 = DATA_SEED + 6;

/// Arguments of `fsync-bench small-files`.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct Args {
    /// Metadata backend of the server (repeatable: each is measured).
    #[arg(long = "db", value_enum)]
    db: Vec<Db>,
    /// Files written on A.
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    files: u32,
    /// Size of each file, bytes.
    #[arg(long, default_value_t = 1024, value_parser = clap::value_parser!(u32).range(1..=(4 << 20)))]
    file_bytes: u32,
    /// Where the folders and server data go [default: the temp dir].
    #[arg(long)]
    work_dir: Option<PathBuf>,
}

impl Args {
    /// Runs the burst on every chosen backend.
    pub(crate) fn run(&self, progress: bool) -> anyhow::Result<Report> {
        let rt = harness::runtime()?;
        let work = harness::work_dir(self.work_dir.as_deref(), "fsync-bench-small-")?;
        let mut records = Vec::new();
        for db in harness::dbs(&self.db) {
            let dir = tempfile::Builder::new()
                .prefix(db.label())
                .tempdir_in(work.path())?;
            let say = |msg: &str| {
                if progress {
                    eprintln!("small-files {}: {msg}", db.label());
                }
            };
            let (up, down) = rt.block_on(async {
                let server = Server::start(db, dir.path()).await?;
                let result = self.burst(&server, dir.path(), &say).await;
                server.stop().await;
                result
            })?;
            let n = f64::from(self.files);
            for (case, r) in [("A upload round", &up), ("B download round", &down)] {
                let Value::Object(labels) = json!({"case": case, "db": db.label()}) else {
                    unreachable!()
                };
                let mut push = |metric: &str, unit: &str, value: f64| {
                    records.push(Record {
                        scenario: "small-files".into(),
                        metric: metric.into(),
                        unit: unit.into(),
                        value,
                        labels: labels.clone(),
                    });
                };
                push("rate", "files/s", n / r.secs);
                push("round", "s", r.secs);
                push("HTTP requests", "count", r.traffic.requests as f64);
                push("HTTP requests", "per file", r.traffic.requests as f64 / n);
                push("body bytes up", "per file", r.traffic.bytes_up as f64 / n);
                push(
                    "body bytes down",
                    "per file",
                    r.traffic.bytes_down as f64 / n,
                );
                push(
                    "body bytes",
                    "per file",
                    (r.traffic.bytes_up + r.traffic.bytes_down) as f64 / n,
                );
            }
        }
        let notes = vec![
            format!(
                "{} files of {} bytes in {} directories (even: source-like text, odd: random; seed {SEED}), \
                 written on A, then one sync_once on A and one on B; B's copy compared byte for byte (untimed).",
                self.files,
                self.file_bytes,
                self.files.div_ceil(100)
            ),
            "rate = files / wall time of the round. body bytes = HTTP request (up) and response (down) bodies \
             of the round, headers not counted. Server and engines in this process on 127.0.0.1; per-user \
             rate limits lifted."
                .to_owned(),
        ];
        Ok(Report {
            row_label: "case",
            notes,
            records,
        })
    }

    /// Writes the files on A, syncs A then B, checks B's copy: (A's round, B's round).
    async fn burst(
        &self,
        server: &Server,
        dir: &std::path::Path,
        say: &(dyn Fn(&str) + Sync),
    ) -> anyhow::Result<(Round, Round)> {
        let (mut a, mut b) = sync::pair(server, dir, "small").await?;
        let n = self.files as usize;
        let sizes = vec![u64::from(self.file_bytes); n];
        let root = a.root.clone();
        let paths = tokio::task::spawn_blocking(move || sync::write_tree(&root, &sizes, SEED))
            .await
            .expect("tree task")?;
        say(&format!("{n} files written"));
        let up = a.round().await?;
        ensure!(
            up.report.uploaded == n,
            "A uploaded {} of {n} files",
            up.report.uploaded
        );
        say(&format!(
            "A round {:.2} s, {} requests",
            up.secs, up.traffic.requests
        ));
        let down = b.round().await?;
        ensure!(
            down.report.downloaded == n,
            "B downloaded {} of {n} files",
            down.report.downloaded
        );
        say(&format!(
            "B round {:.2} s, {} requests",
            down.secs, down.traffic.requests
        ));
        let (ra, rb) = (a.root.clone(), b.root.clone());
        tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
            paths
                .par_iter()
                .try_for_each(|(p, _)| sync::same_file(&ra.join(p), &rb.join(p)))
        })
        .await
        .expect("compare task")?;
        Ok((up, down))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scenarios::parse_args;

    #[test]
    fn a_small_burst_syncs() {
        let args: Args = parse_args(["small-files", "--files", "30"]).unwrap();
        let report = args.run(false).unwrap();
        assert_eq!(report.records.len(), 2 * 7);
        for r in &report.records {
            assert!(r.value.is_finite() && r.value > 0.0, "{r:?}");
        }
        let up_bytes = report
            .records
            .iter()
            .find(|r| r.metric == "body bytes up" && r.labels["case"] == "A upload round")
            .unwrap();
        assert!(up_bytes.value > 512.0, "{up_bytes:?}");
    }
}
