fsync-bench pipeline
