//! The tests' S3 server: `FSYNC_TEST_S3_ENDPOINT` (`scripts/s3.sh` starts SeaweedFS on
//! loopback and prints it), and scratch buckets on it, one per test.

/// The environment variable with the endpoint of the tests' S3 server.
pub const TEST_S3_ENDPOINT: &str = "FSYNC_TEST_S3_ENDPOINT";

/// The S3 endpoint of the tests; `None` when unset or empty, which fails when `CI` is
/// set (CI must never skip the S3 tests silently).
pub fn test_s3_endpoint() -> Option<String> {
    match std::env::var(TEST_S3_ENDPOINT) {
        Ok(url) if !url.is_empty() => Some(url),
        _ => {
            assert!(
                std::env::var_os("CI").is_none(),
                "CI is set but {TEST_S3_ENDPOINT} is not: the S3 tests must run in CI \
                 (scripts/s3.sh starts SeaweedFS)"
            );
            None
        }
    }
}

/// The bucket every test shares (`scripts/s3.sh` creates it: on SeaweedFS each bucket
/// is a collection with volumes of its own, so a bucket per test soon exhausts them).
pub const TEST_BUCKET: &str = "fsync-test";

/// A key prefix no other test uses, for `s3://fsync-test/<prefix>`.
pub fn scratch_prefix() -> String {
    format!("t-{}", hex::encode(rand::random::<[u8; 8]>()))
}

/// A bucket URL with a prefix no other test uses: `s3://fsync-test/<label>-<random>`.
pub fn scratch_url(label: &str) -> String {
    format!("s3://{TEST_BUCKET}/{label}-{}", scratch_prefix())
}

/// The `fsync-server` (and `fsync-gc`) flags that keep the packs at `url` on the S3
/// server at `endpoint` (SeaweedFS takes any credentials).
pub fn server_flags(endpoint: &str, url: &str) -> Vec<String> {
    [
        "--blob-store",
        url,
        "--s3-endpoint",
        endpoint,
        "--aws-access-key-id",
        "test",
        "--aws-secret-access-key",
        "test",
    ]
    .map(str::to_owned)
    .to_vec()
}

/// [`server_flags`] for a prefix of the test bucket no other test uses.
pub fn scratch_flags(endpoint: &str, label: &str) -> Vec<String> {
    server_flags(endpoint, &scratch_url(label))
}
