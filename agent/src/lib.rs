//! The task-executor agent that taskctl deploys.
//!
//! It consumes tasks from RabbitMQ, runs them (sandboxed commands, HTTP
//! requests, noop/echo) with a per-task timeout and bounded concurrency,
//! publishes results with publisher confirms before acking, retries through
//! broker-side delay queues, dead-letters what cannot succeed, serves
//! `/health` and `/ready`, and exposes Prometheus metrics.
//!
//! Map of the crate, in reading order:
//! - [`config`]: the environment, validated before anything starts;
//! - [`run`] (here): wiring of the components;
//! - [`broker`]: connection supervisor, reconnect and drain;
//! - [`tls`]: `amqps://` with a private CA and a client certificate;
//! - [`worker`]: one delivery from receipt to ack (the delivery guarantee);
//! - [`executor`]: the task kinds, knowing nothing of AMQP;
//! - [`topology`], [`dedup`], [`readiness`], [`metrics`], [`server`], [`gpu`],
//!   [`logging`]: one concept each.
//!
//! The wire format lives in the `taskctl-protocol` crate.

pub mod admission;
pub mod broker;
pub mod config;
pub mod dedup;
pub mod executor;
pub mod gpu;
pub mod logging;
pub mod metrics;
pub mod probe;
pub mod readiness;
pub mod server;
// The TLS set-up is shared with taskctl (its gates and `task send`).
pub use taskctl_broker_tls as tls;
pub mod topology;
pub mod worker;

use std::{net::SocketAddr, num::NonZeroUsize, sync::Arc};

use prometheus_client::registry::Registry;
use tokio::{net::TcpListener, sync::Semaphore};
use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::{config::Config, metrics::Metrics, readiness::Readiness};

/// Errors that stop the agent after a valid configuration (exit code 1).
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("failed to bind the {what} port {addr}")]
    Bind {
        what: &'static str,
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("failed to set up http tasks")]
    Http(#[from] executor::http::HttpError),
    #[error("command sandbox: {0}")]
    Sandbox(String),
}

/// Runs the agent until `shutdown` is cancelled and the drain has finished.
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<(), RunError> {
    let config = Arc::new(config);
    let mut registry = Registry::default();
    let metrics = Metrics::register(&mut registry);
    let registry = Arc::new(registry);

    let gpus = gpu::detect(&config.gpu_device_dir);
    metrics.gpus.set(gpus as i64);

    let health_addr = SocketAddr::new(config.bind_address, config.health_port);
    let metrics_addr = SocketAddr::new(config.bind_address, config.metrics_port);
    let health_listener = bind("health", health_addr).await?;
    let metrics_listener = bind("metrics", metrics_addr).await?;

    let readiness = Readiness::default();
    let broker_latch = readiness.latch("broker");
    let consumers_latch = readiness.latch("consumers");
    let health_state = server::HealthState {
        readiness,
        gpus,
        agent_id: config.agent_id.clone(),
    };
    tokio::spawn(server::serve(health_listener, move |path| {
        server::health_route(path, &health_state)
    }));
    tokio::spawn(server::serve(metrics_listener, move |path| {
        server::metrics_route(path, &registry)
    }));

    info!(agent_id = %config.agent_id, broker = %config.broker_url,
        broker_tls = ?config.broker_tls, gpus,
        max_concurrent_tasks = config.max_concurrent_tasks,
        signing_keys = ?config.admission.keys.key_ids().collect::<Vec<_>>(),
        enabled_kinds = ?config.admission.enabled_kinds,
        health = %health_addr, metrics = %metrics_addr, "task-executor starting");
    if config.admission.allow_unsigned {
        tracing::warn!(
            "ALLOW_UNSIGNED_TASKS=true: anyone who can publish to the task queue runs tasks here"
        );
    }
    // Tasks that run as the agent's own user must not read its memory or
    // /proc/<pid>/environ (the broker credentials): a non-dumpable process's
    // /proc files belong to root and ptrace is refused.
    if let Err(error) = nix::sys::prctl::set_dumpable(false) {
        tracing::warn!(error = %error, "cannot make the agent non-dumpable; tasks running as its user could read its environment");
    }

    let mut executor = executor::Executor::new(
        config.limits.clone(),
        config.output_limit,
        config.http_allowed_hosts.clone(),
    )?;
    executor.pins = config.admission.commands.clone();
    if config.admission.enabled_kinds.contains("command") {
        match executor::command::seccomp_filter() {
            Ok(filter) => executor.seccomp = Some(Arc::new(filter)),
            Err(why) => tracing::warn!(reason = %why,
                "command tasks run WITHOUT the seccomp filter (ptrace, namespaces, mounts, keys, BPF stay allowed)"),
        }
        match executor::landlock::abi() {
            Ok(abi) => executor.landlock = Some(abi),
            Err(why) => tracing::warn!(reason = %why,
                "command tasks run WITHOUT Landlock: they may write wherever the sandbox user may"),
        }
        if executor.uids.is_some() && !nix::unistd::geteuid().is_root() {
            return Err(RunError::Sandbox(
                "SANDBOX_UID_COUNT > 1 needs the agent to run as root: it switches each command task to a uid of its own".into(),
            ));
        }
        info!(
            sandbox_user = ?executor::command::sandbox_user(&config.limits),
            sandbox_uids = config.limits.user_count,
            seccomp = executor.seccomp.is_some(),
            landlock_abi = ?executor.landlock,
            "command sandbox"
        );
    }
    let worker = Arc::new(worker::Worker {
        config: config.clone(),
        executor,
        completed: dedup::Completed::new(
            NonZeroUsize::new(config.dedup_capacity).unwrap_or(NonZeroUsize::MIN),
        ),
        replays: admission::Replays::new(
            NonZeroUsize::new(config.dedup_capacity).unwrap_or(NonZeroUsize::MIN),
        ),
        metrics: metrics.clone(),
        permits: Semaphore::new(usize::from(config.max_concurrent_tasks)),
    });
    broker::Supervisor {
        config,
        worker,
        metrics,
        broker_latch,
        consumers_latch,
        consume_gpu: gpus > 0,
    }
    .run(shutdown)
    .await;
    Ok(())
}

async fn bind(what: &'static str, addr: SocketAddr) -> Result<TcpListener, RunError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| RunError::Bind { what, addr, source })
}
