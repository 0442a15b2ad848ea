//! Integration tests of taskctl-kube, in one binary: rendering every shipped
//! profile, the schema check, promtool on the Prometheus files, and the
//! readiness functions on object shapes a real API server returns.

mod common;
mod promtool;
mod readiness;
mod render;
mod schema;
mod strict;
mod tls;
