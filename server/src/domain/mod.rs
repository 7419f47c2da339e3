//! Domain rules that do not depend on storage or HTTP.

pub(crate) mod resolve;
