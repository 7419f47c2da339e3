fsync-bench sync --only small-edit --compare --db sqlite --db postgres
# 2026-11-30 19:41 UTC, commit c52fd86 (plus uncommitted changes), 425 s;
# load average (1, 5, 15 min) before: 5.86 6.70 7.98, after: 1.94 4.85 6.81
