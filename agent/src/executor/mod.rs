//! Runs one task of any kind and reports its outcome; knows nothing of AMQP.
//!
//! The caller sets the timeout (the task's own, bounded by the agent's
//! `EXECUTION_TIMEOUT`). Dropping a running future is a cancellation point: a
//! command's whole process group is killed (see [`command`]).

pub mod command;
pub mod http;
pub mod landlock;
pub mod uids;

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
    time::Duration,
};

use taskctl_protocol::{TaskKind, TaskMessage, TaskStatus};

use crate::config::CommandLimits;

/// What an attempt produced.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    pub status: TaskStatus,
    pub code: Option<i32>,
    pub output: String,
    pub stderr: String,
    pub truncated: bool,
    pub error: Option<String>,
}

impl Outcome {
    pub fn succeeded(output: String) -> Self {
        Outcome {
            status: TaskStatus::Succeeded,
            code: None,
            output,
            stderr: String::new(),
            truncated: false,
            error: None,
        }
    }

    pub fn with_error(status: TaskStatus, error: impl Into<String>) -> Self {
        Outcome {
            status,
            code: None,
            output: String::new(),
            stderr: String::new(),
            truncated: false,
            error: Some(error.into()),
        }
    }
}

/// Everything the kinds need, built once per agent.
pub struct Executor {
    pub limits: CommandLimits,
    /// Programs pinned to a SHA-256 in `COMMAND_ALLOWED`.
    pub pins: BTreeMap<PathBuf, Option<[u8; 32]>>,
    /// The command sandbox's seccomp filter, when the kernel takes one.
    pub seccomp: Option<std::sync::Arc<seccompiler::BpfProgram>>,
    /// The kernel's Landlock ABI, when it has Landlock.
    pub landlock: Option<i64>,
    pub output_limit: usize,
    pub http: http::HttpRunner,
    /// A uid per running command task (`SANDBOX_UID_COUNT` > 1).
    pub uids: Option<uids::UidPool>,
}

impl Executor {
    pub fn new(
        limits: CommandLimits,
        output_limit: usize,
        allowed_hosts: BTreeSet<String>,
    ) -> Result<Self, http::HttpError> {
        let uids = match limits.user {
            Some((first, gid)) if limits.user_count > 1 => {
                Some(uids::UidPool::new(first, limits.user_count, gid))
            }
            _ => None,
        };
        Ok(Executor {
            limits,
            uids,
            pins: BTreeMap::new(),
            seccomp: None,
            landlock: None,
            output_limit,
            http: http::HttpRunner::new(allowed_hosts, output_limit)?,
        })
    }

    /// Runs `task` for at most `timeout`.
    pub async fn run(&self, task: &TaskMessage, timeout: Duration) -> Outcome {
        match &task.kind {
            TaskKind::Noop => Outcome::succeeded(String::new()),
            TaskKind::Echo { message, delay_ms } => {
                let delay = Duration::from_millis(*delay_ms);
                if delay > timeout {
                    tokio::time::sleep(timeout).await;
                    return Outcome::with_error(TaskStatus::TimedOut, timeout_message(timeout));
                }
                tokio::time::sleep(delay).await;
                let (output, truncated) =
                    taskctl_protocol::bounded_text(message.as_bytes(), self.output_limit);
                Outcome {
                    truncated,
                    ..Outcome::succeeded(output)
                }
            }
            TaskKind::Command { argv, env, cwd } => {
                let pin = argv
                    .first()
                    .and_then(|p| self.pins.get(Path::new(p)).copied().flatten());
                if let (Some(program), Some(_)) = (argv.first(), pin)
                    && let Err(reason) = command::check_pin(program, pin).await
                {
                    return Outcome::with_error(TaskStatus::Rejected, reason);
                }
                let spec = command::CommandSpec {
                    argv,
                    env,
                    cwd: cwd.as_deref(),
                    task_id: &task.id,
                    attempt: task.attempt,
                    idempotency_key: task.idempotency_key.as_deref(),
                };
                let Some(pool) = &self.uids else {
                    let user = command::sandbox_user(&self.limits);
                    return command::run(&spec, user, &self.limits, self.sandbox(), timeout).await;
                };
                let Some(taken) = pool.take().await else {
                    return Outcome::with_error(
                        TaskStatus::Failed,
                        "the sandbox uid pool is closed",
                    );
                };
                let user = Some((taken.uid, pool.gid));
                let outcome =
                    command::run(&spec, user, &self.limits, self.sandbox(), timeout).await;
                // Whatever the task left running under its uid goes with it.
                pool.release(taken).await;
                outcome
            }
            TaskKind::Http {
                method,
                url,
                headers,
                body,
            } => {
                let request = http::HttpRequest {
                    method,
                    url,
                    headers,
                    body: body.as_deref(),
                    idempotency_key: task.idempotency_key.as_deref(),
                };
                self.http.run(&request, timeout).await
            }
        }
    }
}

impl Executor {
    fn sandbox(&self) -> command::Sandbox {
        command::Sandbox {
            seccomp: self.seccomp.clone(),
            landlock: self.landlock,
            output_limit: self.output_limit,
        }
    }
}

pub fn timeout_message(timeout: Duration) -> String {
    format!("timed out after {} ms", timeout.as_millis())
}
