#!/usr/bin/env python3
"""Reads the JSON records of `scripts/bench.sh` (one file per scenario run) and prints
a Markdown table of targets: target, figure, met or missed.

Usage: python3 scripts/bench_summary.py RESULTS_DIR             (issue #6's targets)
       python3 scripts/bench_summary.py RESULTS_DIR --pipeline  (issue #2's: the
       pipeline against the reference figures, target >= 85 % of each)
"""
import json
import pathlib
import statistics
import sys


def load(results):
    records = []
    for path in sorted(pathlib.Path(results).glob("*.json")):
        records.extend(json.loads(path.read_text()))
    return records


def pick(records, scenario, metric, case_has=None, db=None):
    out = []
    for r in records:
        labels = r["labels"]
        if r["scenario"] != scenario or r["metric"] != metric:
            continue
        if db is not None and labels.get("db") != db:
            continue
        case = str(labels.get("case", ""))
        if case_has is not None and case_has not in case:
            continue
        out.append(r["value"])
    return out


def fmt(v):
    if v is None:
        return "—"
    if abs(v) >= 100:
        return f"{v:,.0f}"
    if abs(v) >= 10:
        return f"{v:.1f}"
    return f"{v:.2f}"


# Issue #2's reference figures (MB/s, same crates, this 2-core machine, in memory):
# (row, stage, data kinds, threads, per core?, reference).
REFERENCES = [
    ("FastCDC, 1 thread", "fastcdc", ("random", "text"), 1, False, 2900),
    ("keyed BLAKE3 of the chunks, per core (1 thread)", "blake3", ("random", "text"), 1, False, 4600),
    ("keyed BLAKE3 of the chunks, per core (2 threads)", "blake3", ("random", "text"), 2, True, 4600),
    ("keyed BLAKE3 of fixed 64 KiB pieces, per core (1 thread)", "blake3-64k", ("random", "text"), 1, False, 4600),
    ("XChaCha20-Poly1305, per core (1 thread)", "encrypt", ("random", "text"), 1, False, 1300),
    ("XChaCha20-Poly1305, per core (2 threads)", "encrypt", ("random", "text"), 2, True, 1300),
    ("zstd-3 on source code, per core (1 thread)", "zstd-3", ("text",), 1, False, 360),
    ("zstd-3 on source code, per core (2 threads)", "zstd-3", ("text",), 2, True, 360),
    ("whole pipeline, 2 cores, random", "pipeline", ("random",), 2, False, 1600),
    ("whole pipeline, 2 cores, source code (zstd-3)", "pipeline", ("text",), 2, False, 560),
]


def pipeline_table(records):
    print("| figure | reference | measured (MB/s) | % of reference | ≥ 85 % |")
    print("|---|---:|---|---|---|")
    for name, stage, kinds, threads, per_core, ref in REFERENCES:
        measured = []
        for kind in kinds:
            values = [r["value"] for r in records
                      if r["scenario"] == "pipeline" and r["labels"].get("stage") == stage
                      and r["labels"].get("data") == kind
                      and r["labels"].get("threads") == threads]
            if values:
                measured.append((kind, statistics.median(values) / (threads if per_core else 1)))
        if not measured:
            print(f"| {name} | {ref:,} | not run | | |")
            continue
        figures = ", ".join(f"{v:,.0f} ({k})" for k, v in measured)
        percents = ", ".join(f"{100 * v / ref:.0f} %" for _, v in measured)
        ok = [v >= 0.85 * ref for _, v in measured]
        verdict = "met" if all(ok) else ("**missed**" if not any(ok) else "**missed** on one")
        print(f"| {name} | {ref:,} | {figures} | {percents} | {verdict} |")


def main():
    records = load(sys.argv[1])
    if "--pipeline" in sys.argv[2:]:
        pipeline_table(records)
        return
    dbs = sorted({r["labels"].get("db") for r in records if r["labels"].get("db")})
    rows = []

    def target(name, values_for, ok, unit=""):
        figures, verdicts = [], []
        for db in dbs:
            v = values_for(db)
            figures.append(f"{db}: {fmt(v)}{unit}" if v is not None else f"{db}: not run")
            if v is not None:
                verdicts.append((db, ok(v)))
        if not verdicts:
            verdict = "—"
        elif all(good for _, good in verdicts):
            verdict = "met"
        elif not any(good for _, good in verdicts):
            verdict = "**missed**"
        else:
            verdict = "; ".join(
                f"met on {db}" if good else f"**missed** on {db}" for db, good in verdicts)
        rows.append((name, "; ".join(figures), verdict))

    def one(values, how=max):
        return how(values) if values else None

    target(
        "Initial sync of the large random file ≥ 3× `restic backup` throughput",
        lambda db: one(pick(records, "initial-sync", "fsync / restic",
                            "throughput, A upload round vs restic", db)),
        lambda v: v >= 3.0, "×")
    target(
        "Small edit: A's bytes on the wire ≤ rsync's (worst of the 6 edits)",
        lambda db: one(pick(records, "small-edit", "A bytes up / rsync bytes", None, db)),
        lambda v: v <= 1.0, "× rsync")
    target(
        "Small edit: edit → committed < 1 s (worst of the 6 edits, median of repeats)",
        lambda db: one(pick(records, "small-edit", "edit → committed (A round)", None, db)),
        lambda v: v < 1000, " ms")
    target(
        "Edit → visible on B, p50 ≤ 100 ms",
        lambda db: one(pick(records, "latency", "edit → visible on B", "p50", db)),
        lambda v: v <= 100, " ms")
    target(
        "Edit → visible on B, p99 ≤ 300 ms",
        lambda db: one(pick(records, "latency", "edit → visible on B", "p99", db)),
        lambda v: v <= 300, " ms")
    target(
        "No-op rescan of the tree ≤ 0.3 s (slower of A and B)",
        lambda db: one(pick(records, "noop-rescan", "round time", "unchanged", db)),
        lambda v: v <= 300, " ms")
    target(
        "Small files ≥ 2,000 files/s (upload round on A)",
        lambda db: one(pick(records, "small-files", "rate", "A upload round", db)),
        lambda v: v >= 2000, " files/s")
    target(
        "Small files ≥ 2,000 files/s (download round on B)",
        lambda db: one(pick(records, "small-files", "rate", "B download round", db)),
        lambda v: v >= 2000, " files/s")
    target(
        "Peak RSS of the client process ≤ restic's (large file upload)",
        lambda db: one(pick(records, "initial-sync", "fsync / restic",
                            "peak RSS, fsync-client process vs restic", db)),
        lambda v: v <= 1.0, "× restic")

    def server_vs_restic(db):
        server = pick(records, "initial-sync", "peak RSS", "upload: server", db)
        restic = pick(records, "initial-sync", "peak RSS", "restic backup", db)
        if not server or not restic:
            return None
        return max(server) / restic[0]

    target(
        "Server's peak RSS growth during that upload ≤ restic's peak",
        server_vs_restic, lambda v: v <= 1.0, "× restic")

    print("| target | measured | |")
    print("|---|---|---|")
    for name, figures, verdict in rows:
        print(f"| {name} | {figures} | {verdict} |")


if __name__ == "__main__":
    main()
