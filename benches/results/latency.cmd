fsync-bench sync --only latency --db sqlite --db postgres
# 2026-11-30 19:32 UTC, commit c1d3c87 (plus uncommitted changes), 196 s;
# load average (1, 5, 15 min) before: 5.88 8.22 9.42, after: 5.73 7.00 8.69
