fsync-bench gc --db sqlite --db postgres
# 2026-11-30 22:17 UTC, commit 2f7a058 (plus uncommitted changes), 454 s;
# load average (1, 5, 15 min) before: 1.96 2.38 2.41, after: 8.10 3.97 3.00
