fsync-bench chunk-sweep --db sqlite
