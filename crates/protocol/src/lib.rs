//! Task and result messages shared by taskctl and the task-executor agent.
//!
//! This crate is the wire contract and nothing else: serde types and the names
//! (queues, exchanges, headers) both sides must agree on. It must not depend on
//! an AMQP client or do any IO, so a producer (taskctl's functional gate, the
//! benchmark) can publish a task and await its result with this crate and any
//! AMQP 0-9-1 client.
//!
//! Start reading at [`TaskMessage`] and [`TaskResult`].
//!
//! # Wire format (version 1)
//!
//! A task is one AMQP message whose body is a UTF-8 JSON [`TaskMessage`]
//! (`content_type = application/json`), published persistent
//! (`delivery_mode = 2`) to the default exchange with the routing key
//! [`TASK_QUEUE`] (or [`GPU_TASK_QUEUE`] for tasks that need a GPU):
//!
//! ```json
//! {"version":1,"id":"t-1","kind":{"type":"command","argv":["echo","hi"]},
//!  "timeout_ms":5000,"attempt":1,"created_at_ms":1700000000000}
//! ```
//!
//! The result is one JSON [`TaskResult`] message, published persistent to the
//! default exchange with routing key = the task message's AMQP `reply_to`
//! property when set (and `correlation_id` copied from the task message), else
//! [`RESULT_QUEUE`]. A task has one final result: `succeeded`, `failed` or
//! `timed_out` after its last attempt, or `rejected` when the message could not
//! be understood. Failed attempts before the last are retried, not reported.
//!
//! # Publishing a task and awaiting its result
//!
//! 1. Declare a reply queue (e.g. exclusive, server-named) and consume it.
//! 2. Publish `serde_json::to_vec(&TaskMessage::new(id, kind, now_ms))` to
//!    exchange `""` with routing key [`TASK_QUEUE`], properties
//!    `delivery_mode = 2`, `content_type = application/json`,
//!    `reply_to = <reply queue>`, `correlation_id = <anything>`; with
//!    publisher confirms on, wait for the confirm.
//! 3. The first message on the reply queue whose `correlation_id` matches is
//!    the [`TaskResult`]; deduplicate by `task_id` (delivery is
//!    at-least-once, see the agent's README).
//!
//! Compatibility: the agent rejects a message whose `version` it does not know
//! (currently only [`PROTOCOL_VERSION`]). Unknown JSON fields are ignored, so
//! adding an optional field is not a version change; removing or changing the
//! meaning of one is.
//!
//! # Signed tasks
//!
//! Agents run only tasks signed by a key they trust (see [`signing`]): the
//! producer signs the body bytes and sends the key id and signature on a
//! line before them ([`signing::Signer::frame`]; the headers
//! [`signing::HEADER_KEY_ID`] and [`signing::HEADER_SIGNATURE`] are the
//! older form, still accepted); the body must carry `expires_at_ms`. An
//! agent rejects (dead-letters, with the reason) unsigned tasks, tasks signed
//! by an unknown key or with a bad signature, expired tasks and replays of a
//! task id it has already accepted. A retry keeps the producer's body and
//! signature and carries the next attempt in [`HEADER_ATTEMPT`].
//!
//! # Limits
//!
//! A task id is at most [`MAX_TASK_ID_BYTES`] bytes of printable characters;
//! an agent rejects a longer one (AMQP short strings, which carry the id in
//! headers and correlation ids, hold 255 bytes).

use std::collections::BTreeMap;

pub mod signing;

use serde::{Deserialize, Serialize};

/// The only wire version this crate reads and writes.
pub const PROTOCOL_VERSION: u32 = 1;

/// Default queue the agent consumes tasks from.
pub const TASK_QUEUE: &str = "taskctl.tasks";
/// Default queue for tasks that need an NVIDIA GPU; consumed only by agents
/// that detected one.
pub const GPU_TASK_QUEUE: &str = "taskctl.tasks.gpu";
/// Default queue results go to when the task message has no `reply_to`.
pub const RESULT_QUEUE: &str = "taskctl.results";
/// Default dead-letter queue: tasks that were rejected or failed their last
/// attempt, with the reason in [`HEADER_DEAD_REASON`].
pub const DEAD_LETTER_QUEUE: &str = "taskctl.dead-letter";
/// Infix of the delay queues: `<task queue>.retry.<delay ms>`. Each holds a
/// retried task for its backoff (queue TTL), then dead-letters it back to the
/// task queue.
pub const RETRY_QUEUE_INFIX: &str = ".retry.";

/// AMQP header on dead-lettered messages: why the task was dead-lettered.
pub const HEADER_DEAD_REASON: &str = "x-taskctl-dead-reason";
/// AMQP header on dead-lettered and retried messages: the task id when known.
pub const HEADER_TASK_ID: &str = "x-taskctl-task-id";
/// AMQP header on retried messages: the attempt the retry will be.
pub const HEADER_ATTEMPT: &str = "x-taskctl-attempt";
/// AMQP header on dead-lettered messages: the queue the task came from.
pub const HEADER_SOURCE_QUEUE: &str = "x-taskctl-source-queue";

/// Longest task id an agent accepts, in bytes.
pub const MAX_TASK_ID_BYTES: usize = 200;

/// Maximum bytes of stdout (and, separately, stderr) kept in a result.
pub const DEFAULT_OUTPUT_LIMIT: usize = 64 * 1024;

/// A task to run, as published by a producer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskMessage {
    /// Wire version, [`PROTOCOL_VERSION`].
    pub version: u32,
    /// Unique task id, chosen by the producer. Results carry it back, and the
    /// agent deduplicates redeliveries by it.
    pub id: String,
    /// What to run.
    pub kind: TaskKind,
    /// Per-task timeout; the agent's `EXECUTION_TIMEOUT` applies when absent,
    /// and is also the upper bound.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    /// 1 for the first run; the agent increments it on each retry.
    #[serde(default = "first_attempt")]
    pub attempt: u32,
    /// Overrides the agent's `MAX_ATTEMPTS` for this task.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_attempts: Option<u32>,
    /// Passed through to the task (`TASKCTL_IDEMPOTENCY_KEY` for commands,
    /// `Idempotency-Key` header for http) so the side effect can be made
    /// idempotent downstream; the agent itself deduplicates by `id` only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
    /// When the producer created the task, Unix epoch milliseconds.
    pub created_at_ms: u64,
    /// Trace id propagated into the agent's log lines and the result.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace_id: Option<String>,
    /// After this instant (Unix epoch milliseconds) the task must not start;
    /// required on signed tasks, covered by the signature.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at_ms: Option<u64>,
}

impl TaskMessage {
    /// A first attempt of `kind` with the agent's defaults for everything
    /// optional.
    pub fn new(id: impl Into<String>, kind: TaskKind, created_at_ms: u64) -> Self {
        TaskMessage {
            version: PROTOCOL_VERSION,
            id: id.into(),
            kind,
            timeout_ms: None,
            attempt: 1,
            max_attempts: None,
            idempotency_key: None,
            created_at_ms,
            trace_id: None,
            expires_at_ms: None,
        }
    }
}

fn first_attempt() -> u32 {
    1
}

/// The kinds of task the agent can run, tagged by `type`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum TaskKind {
    /// A program run in a sandbox: own process group, resource limits, no new
    /// privileges; the whole group is killed at the timeout.
    Command {
        /// Program and arguments; no shell is involved.
        argv: Vec<String>,
        /// Extra environment variables; the child does not inherit the agent's.
        #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
        env: BTreeMap<String, String>,
        /// Working directory; the agent's when absent.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        cwd: Option<String>,
    },
    /// An HTTP request to a host the agent's `HTTP_ALLOWED_HOSTS` allows.
    Http {
        /// Method, `GET` when absent.
        #[serde(default = "default_method")]
        method: String,
        url: String,
        #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
        headers: BTreeMap<String, String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        body: Option<String>,
    },
    /// Does nothing and succeeds: for benchmarks.
    Noop,
    /// Succeeds with `message` as its output after `delay_ms`: for tests.
    Echo {
        #[serde(default)]
        message: String,
        #[serde(default)]
        delay_ms: u64,
    },
}

fn default_method() -> String {
    "GET".to_owned()
}

impl TaskKind {
    /// The kind's name as used in metrics labels and logs.
    pub fn name(&self) -> &'static str {
        match self {
            TaskKind::Command { .. } => "command",
            TaskKind::Http { .. } => "http",
            TaskKind::Noop => "noop",
            TaskKind::Echo { .. } => "echo",
        }
    }
}

/// Final outcome of a task.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskStatus {
    /// Ran and succeeded (exit code 0, HTTP 2xx).
    Succeeded,
    /// Ran and failed on its last attempt.
    Failed,
    /// Was killed at its timeout on its last attempt.
    TimedOut,
    /// Was not run: malformed message, unknown kind or version, disallowed host.
    Rejected,
}

impl TaskStatus {
    /// The status's name as used in metrics labels and logs.
    pub fn name(self) -> &'static str {
        match self {
            TaskStatus::Succeeded => "succeeded",
            TaskStatus::Failed => "failed",
            TaskStatus::TimedOut => "timed_out",
            TaskStatus::Rejected => "rejected",
        }
    }
}

/// The result the agent publishes for a task.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskResult {
    /// Wire version, [`PROTOCOL_VERSION`].
    pub version: u32,
    /// The task's id; empty when a rejected message had none readable.
    pub task_id: String,
    pub status: TaskStatus,
    /// Kind name (`command`, `http`, `noop`, `echo`), or `unknown` when the
    /// message was rejected before its kind could be read.
    pub kind: String,
    /// Exit code of a command, HTTP status of an http task.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<i32>,
    /// Captured stdout (command), response body (http) or message (echo), at
    /// most [`DEFAULT_OUTPUT_LIMIT`] bytes, lossily decoded as UTF-8.
    #[serde(default)]
    pub output: String,
    /// Captured stderr of a command, bounded like `output`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub stderr: String,
    /// True when `output` or `stderr` was cut at the bound.
    #[serde(default)]
    pub truncated: bool,
    /// Why the task failed, timed out or was rejected.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// From the task's `created_at_ms` to the start of this attempt.
    pub queued_ms: u64,
    /// Run time of this attempt.
    pub run_ms: u64,
    /// The attempt that produced this result.
    pub attempt: u32,
    /// The agent that produced it (pod name or hostname, and pid).
    pub agent_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
    /// When the result was produced, Unix epoch milliseconds.
    pub finished_at_ms: u64,
}

/// Truncates `bytes` to at most `limit` bytes and decodes them lossily.
/// Returns the text and whether anything was cut.
pub fn bounded_text(bytes: &[u8], limit: usize) -> (String, bool) {
    let cut = bytes.len() > limit;
    let kept = &bytes[..bytes.len().min(limit)];
    (String::from_utf8_lossy(kept).into_owned(), cut)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn task_round_trips_and_fills_defaults() {
        let json = r#"{"version":1,"id":"t-1","kind":{"type":"command","argv":["echo","hi"]},
            "timeout_ms":5000,"created_at_ms":1700000000000}"#;
        let task: TaskMessage = serde_json::from_str(json).unwrap();
        assert_eq!(task.attempt, 1);
        assert_eq!(task.kind.name(), "command");
        let back: TaskMessage =
            serde_json::from_str(&serde_json::to_string(&task).unwrap()).unwrap();
        assert_eq!(back, task);
    }

    #[test]
    fn new_serializes_to_the_minimal_wire_form() {
        let task = TaskMessage::new("t-1", TaskKind::Noop, 5);
        assert_eq!(
            serde_json::to_string(&task).unwrap(),
            r#"{"version":1,"id":"t-1","kind":{"type":"noop"},"attempt":1,"created_at_ms":5}"#
        );
    }

    #[test]
    fn unknown_kind_is_a_parse_error() {
        let json = r#"{"version":1,"id":"t","kind":{"type":"rm-rf"},"created_at_ms":0}"#;
        assert!(serde_json::from_str::<TaskMessage>(json).is_err());
    }

    #[test]
    fn noop_and_http_defaults() {
        let noop: TaskKind = serde_json::from_str(r#"{"type":"noop"}"#).unwrap();
        assert_eq!(noop, TaskKind::Noop);
        let http: TaskKind = serde_json::from_str(r#"{"type":"http","url":"http://a/"}"#).unwrap();
        assert!(matches!(http, TaskKind::Http { ref method, .. } if method == "GET"));
    }

    #[test]
    fn status_names_match_serde() {
        for s in [
            TaskStatus::Succeeded,
            TaskStatus::Failed,
            TaskStatus::TimedOut,
            TaskStatus::Rejected,
        ] {
            assert_eq!(
                serde_json::to_string(&s).unwrap(),
                format!("\"{}\"", s.name())
            );
        }
    }

    #[test]
    fn bounded_text_cuts_at_limit() {
        assert_eq!(bounded_text(b"hello", 3), ("hel".to_owned(), true));
        assert_eq!(bounded_text(b"hi", 3), ("hi".to_owned(), false));
    }
}
