fsync-bench sync --compare --db sqlite --db postgres
# one run for initial-sync, noop-rescan, small-edit and latency (before bench.sh split it into three runs); 2026-11-30 19:01-19:25 UTC, load average 8-11 (other test runs on the VM)
