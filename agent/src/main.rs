//! `task-executor`: wires configuration, logging, signals and the agent.
//!
//! Exit codes: 0 after a clean drain, 64 (EX_USAGE) when the configuration is
//! invalid (nothing was started), 1 for any other failure.
//!
//! `task-executor probe URL` exits 0 when URL answers 2xx, 1 otherwise: the
//! health check of the `scratch` image, which has no curl or shell.

use std::process::ExitCode;

use anyhow::Context;
use task_executor::config::Config;
use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;

const EXIT_CONFIG: u8 = 64;

fn main() -> ExitCode {
    // `task-executor probe URL`: the container health check of a `scratch`
    // image, which has no other program to run (see `probe`).
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("probe") {
        return probe(&args[1..]);
    }
    // Validated before any runtime, port or connection exists.
    let config = match Config::from_env() {
        Ok(config) => config,
        Err(error) => {
            eprintln!("task-executor: {error}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    task_executor::logging::init(&config.log_level);
    match run(config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(error = format!("{error:#}"), "task-executor failed");
            eprintln!("task-executor: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn probe(args: &[String]) -> ExitCode {
    let [url] = args else {
        eprintln!("usage: task-executor probe http://HOST:PORT/PATH");
        return ExitCode::from(EXIT_CONFIG);
    };
    match task_executor::probe::probe(url, std::time::Duration::from_secs(3)) {
        Ok(code) => {
            println!("HTTP {code}");
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("task-executor probe: {error}");
            ExitCode::FAILURE
        }
    }
}

fn run(config: Config) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("failed to start the async runtime")?;
    runtime.block_on(async {
        let shutdown = CancellationToken::new();
        let mut term = signal(SignalKind::terminate()).context("failed to listen for SIGTERM")?;
        let mut int = signal(SignalKind::interrupt()).context("failed to listen for SIGINT")?;
        let trigger = shutdown.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = term.recv() => tracing::info!("SIGTERM received; draining"),
                _ = int.recv() => tracing::info!("SIGINT received; draining"),
            }
            trigger.cancel();
        });
        task_executor::run(config, shutdown)
            .await
            .context("the agent stopped")
    })
}
