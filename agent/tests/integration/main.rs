//! Integration tests of the real `task-executor` binary against the real
//! RabbitMQ (and Prometheus) of `scripts/test-env.sh`.
//!
//! One test binary (as in cargo's testsuite) so the agent's dependencies link
//! once. Tests name their queues with a random prefix and pick free ports, so
//! they run in parallel; the ones that restart the broker take the broker lock
//! exclusively (see `support`).

mod delivery;
mod kinds;
mod lifecycle;
mod observability;
mod resilience;
mod security;
mod soak;
mod support;
mod tls;
