//! What the engine tells the world while it runs.
//!
//! The engine emits [`Event`]s to an [`EventSink`]; the terminal progress
//! display, the plain log lines, the `--output json` stream and the tests
//! are all sinks of the same events. Events carry no secret values.

use crate::engine::{Action, FieldDiff, StepError, StepId};
use serde::Serialize;
use std::sync::{Arc, Mutex};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Operation {
    Plan,
    Deploy,
    Destroy,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StepOutcome {
    /// The change was made.
    Changed,
    /// Nothing to do: the world already matched.
    Unchanged,
    /// Planned only (plan and dry runs).
    Planned,
    Failed,
    /// Not run because a dependency failed or the run stopped first.
    Skipped,
    /// Stopped by Ctrl-C/SIGTERM while in flight.
    Interrupted,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RunOutcome {
    Succeeded,
    Failed,
    Interrupted,
}

#[derive(Debug, Clone, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    RunStarted {
        run_id: String,
        operation: Operation,
        environment: String,
        steps: usize,
        #[serde(skip_serializing_if = "Option::is_none")]
        resumes: Option<String>,
    },
    StepPlanned {
        step: StepId,
        kind: String,
        /// The steps this one waits for: the graph, for tools and benchmarks.
        depends_on: Vec<StepId>,
        action: Action,
        reason: String,
        #[serde(skip_serializing_if = "Vec::is_empty")]
        diffs: Vec<FieldDiff>,
    },
    StepStarted {
        step: StepId,
        kind: String,
        action: Action,
    },
    StepProgress {
        step: StepId,
        message: String,
    },
    StepRetry {
        step: StepId,
        attempt: usize,
        delay_ms: u64,
        error: StepError,
    },
    StepFinished {
        step: StepId,
        outcome: StepOutcome,
        duration_ms: u64,
        #[serde(skip_serializing_if = "Option::is_none")]
        error: Option<StepError>,
    },
    RunFinished {
        run_id: String,
        outcome: RunOutcome,
        duration_ms: u64,
        changed: usize,
        unchanged: usize,
        failed: usize,
        skipped: usize,
    },
    /// A release was written to the target's release store.
    ReleaseRecorded {
        revision: u32,
        status: crate::release::ReleaseStatus,
        description: String,
    },
    /// Verification of a release begins: its gates, then its
    /// automatic-rollback conditions.
    VerificationStarted {
        revision: u32,
    },
    /// One gate or condition was evaluated. Emitted by the operation for
    /// every check the provider returns, so providers need not.
    CheckFinished {
        name: String,
        kind: String,
        passed: bool,
        /// False: the check could not look (reported "not evaluated").
        evaluated: bool,
        /// What the check saw, for people (`HTTP 503`, `0.04 > 0.01`).
        observed: String,
        elapsed_s: f64,
    },
    VerificationFinished {
        revision: u32,
        passed: bool,
        checks: usize,
        failed: usize,
        /// Checks that could not look at what they check.
        not_evaluated: usize,
    },
    /// A rollback begins: `automatic` after a failed verification, or on
    /// command.
    RollbackStarted {
        automatic: bool,
        /// The release being left (`None` when none is recorded as running).
        #[serde(skip_serializing_if = "Option::is_none")]
        from: Option<u32>,
        /// The release being restored.
        to: u32,
        reason: String,
    },
    RollbackFinished {
        automatic: bool,
        to: u32,
        /// The new release that records the rollback; `None` when it failed.
        #[serde(skip_serializing_if = "Option::is_none")]
        revision: Option<u32>,
        outcome: RunOutcome,
    },
}

pub trait EventSink: Send + Sync {
    fn emit(&self, event: &Event);
}

/// Sends every event to several sinks.
pub struct Fanout(pub Vec<Arc<dyn EventSink>>);

impl EventSink for Fanout {
    fn emit(&self, event: &Event) {
        for sink in &self.0 {
            sink.emit(event);
        }
    }
}

/// Keeps every event, for tests and summaries.
#[derive(Default)]
pub struct Recorder(Mutex<Vec<Event>>);

impl Recorder {
    pub fn events(&self) -> Vec<Event> {
        self.0.lock().map(|e| e.clone()).unwrap_or_default()
    }
}

impl EventSink for Recorder {
    fn emit(&self, event: &Event) {
        if let Ok(mut events) = self.0.lock() {
            events.push(event.clone());
        }
    }
}

/// Discards events.
pub struct Discard;

impl EventSink for Discard {
    fn emit(&self, _: &Event) {}
}
