fsync-bench small-files --db sqlite --db postgres
# 2026-11-30 19:51 UTC, commit c52fd86 (plus uncommitted changes), 47 s;
# load average (1, 5, 15 min) before: 0.66 3.09 5.84, after: 1.83 3.03 5.68
