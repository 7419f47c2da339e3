fsync-bench pipeline --stage blake3 --stage blake3-64k --repeat 9
# 2026-11-30 21:56 UTC, commit bd884fc (plus uncommitted changes), 15 s;
# load average (1, 5, 15 min) before: 1.54 1.52 2.10, after: 1.56 1.52 2.09
