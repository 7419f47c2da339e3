fsync-bench small-files --db sqlite --db postgres
