fsync-bench versions --db sqlite --db postgres
