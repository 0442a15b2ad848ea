//! Gates against real servers: TCP listeners and a tiny HTTP server opened
//! by the tests, the test environment's Prometheus and RabbitMQ, and the real
//! `task-executor` binary (see `support.rs`).

mod conditions;
mod functional;
mod http;
mod metric;
mod support;
mod tcp;
mod verification;
