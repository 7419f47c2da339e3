fsync-bench pipeline
# 2026-11-30 21:54 UTC, commit bd884fc (plus uncommitted changes), 110 s;
# load average (1, 5, 15 min) before: 0.86 1.47 2.17, after: 1.54 1.52 2.10
