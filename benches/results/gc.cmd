fsync-bench gc --db sqlite --db postgres
# 2026-11-30 21:35 UTC, commit 1c07528 (plus uncommitted changes), 477 s;
# load average (1, 5, 15 min) before: 1.66 2.57 3.14, after: 3.43 2.88 3.05
