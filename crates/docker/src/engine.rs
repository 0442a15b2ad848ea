//! The Docker engine as taskctl uses it: bollard calls with errors mapped
//! once to the engine's [`ErrorKind`]s, and the few queries every step
//! needs (find by labels, wait for health, last log lines).

use bollard::Docker;
use bollard::errors::Error as BollardError;
use bollard::models::{ContainerInspectResponse, ContainerSummary, HealthStatusEnum};
use bollard::query_parameters::{
    ListContainersOptions, LogsOptions, RemoveContainerOptions, StopContainerOptions,
};
use futures_util::StreamExt;
use std::collections::HashMap;
use std::time::{Duration, Instant};
use taskctl_core::engine::{ErrorKind, StepContext, StepError};

/// Maps a bollard error to a step error, prefixed with what was attempted.
pub fn step_error(what: &str, e: BollardError) -> StepError {
    let kind = match &e {
        BollardError::DockerResponseServerError { status_code, .. } => match status_code {
            404 => ErrorKind::NotFound,
            409 => ErrorKind::Conflict,
            400 => ErrorKind::Invalid,
            401 | 403 => ErrorKind::Denied,
            // A 500 is usually a refusal (port in use, bad mount) rather than
            // a hiccup: retrying would repeat it.
            _ => ErrorKind::Other,
        },
        BollardError::RequestTimeoutError => ErrorKind::Timeout,
        BollardError::HyperResponseError { .. } | BollardError::IOError { .. } => {
            ErrorKind::Transient
        }
        _ => ErrorKind::Other,
    };
    let message = match e {
        BollardError::DockerResponseServerError { message, .. } => message,
        other => other.to_string(),
    };
    StepError::new(kind, format!("{what}: {message}"))
}

pub fn is_not_found(e: &BollardError) -> bool {
    matches!(
        e,
        BollardError::DockerResponseServerError {
            status_code: 404,
            ..
        }
    )
}

/// Connects to `DOCKER_HOST` or the local socket, and agrees on an API
/// version the engine speaks (bollard defaults to a newer one than, e.g.,
/// Docker 20.10's 1.41).
pub async fn connect() -> Result<Docker, crate::DockerError> {
    let unreachable = |e: bollard::errors::Error| {
        crate::DockerError::Engine(format!(
            "cannot reach the Docker engine (DOCKER_HOST or /var/run/docker.sock): {e}"
        ))
    };
    let docker = Docker::connect_with_defaults().map_err(unreachable)?;
    docker.negotiate_version().await.map_err(unreachable)
}

/// Containers (running or not) carrying every `key=value` label.
pub async fn containers_with(
    docker: &Docker,
    labels: &[(&str, &str)],
) -> Result<Vec<ContainerSummary>, StepError> {
    let filters: HashMap<String, Vec<String>> = HashMap::from([(
        "label".to_string(),
        labels.iter().map(|(k, v)| format!("{k}={v}")).collect(),
    )]);
    docker
        .list_containers(Some(ListContainersOptions {
            all: true,
            filters: Some(filters),
            ..Default::default()
        }))
        .await
        .map_err(|e| step_error("listing containers", e))
}

/// The container named `name`, or `None`.
pub async fn inspect(
    docker: &Docker,
    name: &str,
) -> Result<Option<ContainerInspectResponse>, StepError> {
    match docker
        .inspect_container(
            name,
            None::<bollard::query_parameters::InspectContainerOptions>,
        )
        .await
    {
        Ok(c) => Ok(Some(c)),
        Err(e) if is_not_found(&e) => Ok(None),
        Err(e) => Err(step_error(&format!("inspecting container {name}"), e)),
    }
}

/// Stops (with the agent's drain time) and removes `name`; absent is fine.
pub async fn remove(docker: &Docker, name: &str, stop_seconds: i32) -> Result<(), StepError> {
    match docker
        .stop_container(
            name,
            Some(StopContainerOptions {
                t: Some(stop_seconds),
                signal: None,
            }),
        )
        .await
    {
        Ok(()) => {}
        Err(e) if is_not_found(&e) => return Ok(()),
        // 304: already stopped.
        Err(BollardError::DockerResponseServerError {
            status_code: 304, ..
        }) => {}
        Err(e) => return Err(step_error(&format!("stopping {name}"), e)),
    }
    force_remove(docker, name).await
}

/// Removes `name` at once (SIGKILL if running); absent is fine.
pub async fn force_remove(docker: &Docker, name: &str) -> Result<(), StepError> {
    match docker
        .remove_container(
            name,
            Some(RemoveContainerOptions {
                force: true,
                // Anonymous volumes only (the secret files); named ones stay.
                v: true,
                link: false,
            }),
        )
        .await
    {
        Ok(()) => Ok(()),
        Err(e) if is_not_found(&e) => Ok(()),
        // 409: removal already in progress.
        Err(BollardError::DockerResponseServerError {
            status_code: 409, ..
        }) => Ok(()),
        Err(e) => Err(step_error(&format!("removing {name}"), e)),
    }
}

/// The last `lines` lines of a container's output, for error messages.
pub async fn last_logs(docker: &Docker, name: &str, lines: usize) -> String {
    let mut stream = docker.logs(
        name,
        Some(LogsOptions {
            stdout: true,
            stderr: true,
            tail: lines.to_string(),
            ..Default::default()
        }),
    );
    let mut out = String::new();
    while let Some(Ok(chunk)) = stream.next().await {
        out.push_str(&String::from_utf8_lossy(&chunk.into_bytes()));
    }
    out.trim_end().to_string()
}

/// Waits until `name`'s health check reports healthy. Fails fast when it
/// exits, restarts or turns unhealthy, naming the exit code and the last
/// log lines; gives up at `deadline` or when the run is cancelled.
///
/// The exit code is only reliable for a container whose restart policy is
/// `no` (replicas start that way, see `steps::Replica`): a restarted
/// container reports the exit code of its current run, 0.
///
/// It asks every 100 ms: an inspect is cheap next to the health check's own
/// interval, and the sooner a healthy replica is seen, the sooner the next
/// one of a rolling update starts.
pub async fn wait_healthy(
    docker: &Docker,
    ctx: &StepContext,
    name: &str,
    deadline: Duration,
) -> Result<(), StepError> {
    let started = Instant::now();
    let mut reported = None;
    loop {
        let Some(c) = inspect(docker, name).await? else {
            return Err(StepError::new(
                ErrorKind::Other,
                format!("{name} disappeared while taskctl waited for it to become healthy"),
            ));
        };
        let state = c.state.unwrap_or_default();
        let health = state
            .health
            .as_ref()
            .and_then(|h| h.status)
            .unwrap_or(HealthStatusEnum::NONE);
        let exited = !state.running.unwrap_or(false)
            || state.restarting.unwrap_or(false)
            || c.restart_count.unwrap_or(0) > 0;
        if exited {
            let code = state.exit_code.unwrap_or_default();
            let logs = last_logs(docker, name, 10).await;
            return Err(StepError::new(
                ErrorKind::Other,
                format!(
                    "{name} exited with code {code} before becoming healthy; its last log lines:\n{logs}"
                ),
            ));
        }
        match health {
            HealthStatusEnum::HEALTHY => return Ok(()),
            HealthStatusEnum::UNHEALTHY => {
                let probe = state
                    .health
                    .and_then(|h| h.log)
                    .and_then(|l| l.last().and_then(|r| r.output.clone()))
                    .unwrap_or_default();
                let logs = last_logs(docker, name, 10).await;
                return Err(StepError::new(
                    ErrorKind::Other,
                    format!(
                        "{name} is unhealthy: its readiness check failed ({}); its last log lines:\n{logs}",
                        probe.trim()
                    ),
                ));
            }
            HealthStatusEnum::NONE | HealthStatusEnum::EMPTY if started.elapsed() > deadline => {
                return Err(StepError::new(
                    ErrorKind::Timeout,
                    format!(
                        "{name} has no health check result after {}s",
                        deadline.as_secs()
                    ),
                ));
            }
            _ if started.elapsed() > deadline => {
                let logs = last_logs(docker, name, 10).await;
                return Err(StepError::new(
                    ErrorKind::Timeout,
                    format!(
                        "{name} did not become healthy within {}s; its last log lines:\n{logs}",
                        deadline.as_secs()
                    ),
                ));
            }
            _ => {}
        }
        let secs = started.elapsed().as_secs();
        if reported != Some(secs) {
            reported = Some(secs);
            ctx.progress(&format!("waiting for {name} to become healthy ({secs}s)"));
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(100)) => {}
            _ = ctx.cancelled().cancelled() => {
                return Err(StepError::new(ErrorKind::Cancelled, format!("interrupted while waiting for {name}")));
            }
        }
    }
}

/// Runs `cmd` in the running container `name` (as its user) and returns
/// its exit code and what it printed (stdout and stderr, in order).
pub async fn exec(docker: &Docker, name: &str, cmd: &[&str]) -> Result<(i64, String), StepError> {
    use bollard::exec::{CreateExecOptions, StartExecResults};
    let created = docker
        .create_exec(
            name,
            CreateExecOptions {
                cmd: Some(cmd.iter().map(|s| s.to_string()).collect()),
                attach_stdout: Some(true),
                attach_stderr: Some(true),
                ..Default::default()
            },
        )
        .await
        .map_err(|e| step_error(&format!("exec in {name}"), e))?;
    let mut text = String::new();
    if let StartExecResults::Attached { mut output, .. } = docker
        .start_exec(&created.id, None)
        .await
        .map_err(|e| step_error(&format!("exec in {name}"), e))?
    {
        while let Some(chunk) = output.next().await {
            match chunk {
                Ok(log) => text.push_str(&log.to_string()),
                Err(e) => return Err(step_error(&format!("exec in {name}"), e)),
            }
        }
    }
    let inspected = docker
        .inspect_exec(&created.id)
        .await
        .map_err(|e| step_error(&format!("exec in {name}"), e))?;
    Ok((inspected.exit_code.unwrap_or(-1), text))
}
