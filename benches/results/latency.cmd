fsync-bench sync --only latency --db sqlite --db postgres
# 2026-11-30 19:49 UTC, commit c52fd86 (plus uncommitted changes), 154 s;
# load average (1, 5, 15 min) before: 1.94 4.85 6.81, after: 0.66 3.09 5.84
