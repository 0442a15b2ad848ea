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
//! - [`worker`]: one delivery from receipt to ack (the delivery guarantee);
//! - [`executor`]: the task kinds, knowing nothing of AMQP;
//! - [`topology`], [`dedup`], [`readiness`], [`metrics`], [`server`], [`gpu`],
//!   [`logging`]: one concept each.
//!
//! The wire format lives in the `taskctl-protocol` crate.

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

    info!(agent_id = %config.agent_id, broker = %config.broker_url, gpus,
        max_concurrent_tasks = config.max_concurrent_tasks,
        health = %health_addr, metrics = %metrics_addr, "task-executor starting");

    let executor = executor::Executor::new(
        config.limits,
        config.output_limit,
        config.http_allowed_hosts.clone(),
    )?;
    let worker = Arc::new(worker::Worker {
        config: config.clone(),
        executor,
        completed: dedup::Completed::new(
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
