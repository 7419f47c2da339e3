//! One module per scenario (one `fsync-bench` subcommand each). A scenario takes its
//! validated options and returns a [`Report`](crate::report::Report).

pub(crate) mod pipeline;
pub(crate) mod server;
pub(crate) mod sync;
