fsync-bench server --db sqlite --db postgres
