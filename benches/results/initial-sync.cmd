fsync-bench sync --only initial-sync --only noop-rescan --compare --db sqlite --db postgres
# 2026-11-30 19:36 UTC, commit b8d1864 (plus uncommitted changes), 313 s;
# load average (1, 5, 15 min) before: 4.52 6.37 8.35, after: 5.86 6.70 7.98
