//! The journal: an append-only record of intent before, and outcome after,
//! every external change.
//!
//! Guarantees: an `intent` entry is written (and the write completed) before
//! the change is attempted, and an `outcome` after it returns. A run that
//! died in between leaves an intent without an outcome; the next run reports
//! it and, since every step adopts what exists, finishes the job. Entries
//! never hold secret values.

use crate::engine::{Action, FieldDiff, Outputs, StepError, StepId};
use crate::events::{Operation, RunOutcome};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct JournalEntry {
    pub run: String,
    /// RFC 3339 time of the entry.
    pub at: String,
    #[serde(flatten)]
    pub record: Record,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "record", rename_all = "snake_case")]
pub enum Record {
    RunStarted {
        operation: String,
        environment: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        resumes: Option<String>,
    },
    Intent {
        step: StepId,
        action: Action,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        diffs: Vec<FieldDiff>,
    },
    Outcome {
        step: StepId,
        result: StepResult,
        #[serde(default, skip_serializing_if = "Outputs::is_empty")]
        outputs: Outputs,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error: Option<StepError>,
        duration_ms: u64,
    },
    RunFinished {
        outcome: String,
    },
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum StepResult {
    Ok,
    Failed,
    Interrupted,
}

impl JournalEntry {
    pub fn now(run: &str, record: Record) -> Self {
        JournalEntry {
            run: run.to_string(),
            at: humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string(),
            record,
        }
    }
}

pub fn operation_name(op: Operation) -> &'static str {
    match op {
        Operation::Plan => "plan",
        Operation::Deploy => "deploy",
        Operation::Destroy => "destroy",
    }
}

pub fn outcome_name(outcome: RunOutcome) -> &'static str {
    match outcome {
        RunOutcome::Succeeded => "succeeded",
        RunOutcome::Failed => "failed",
        RunOutcome::Interrupted => "interrupted",
    }
}

/// What the journal says about the last run: whether it finished, and the
/// steps it left in flight (intent without outcome).
#[derive(Debug, Clone, PartialEq)]
pub struct LastRun {
    pub run: String,
    pub operation: String,
    pub finished: Option<String>,
    pub in_flight: Vec<(StepId, Action)>,
    pub completed: usize,
}

/// Reads the last run out of a journal.
pub fn last_run(entries: &[JournalEntry]) -> Option<LastRun> {
    let start = entries
        .iter()
        .rposition(|e| matches!(e.record, Record::RunStarted { .. }))?;
    let run = &entries[start];
    let Record::RunStarted { operation, .. } = &run.record else {
        return None;
    };
    let mut last = LastRun {
        run: run.run.clone(),
        operation: operation.clone(),
        finished: None,
        in_flight: Vec::new(),
        completed: 0,
    };
    for e in entries[start..].iter().filter(|e| e.run == run.run) {
        match &e.record {
            Record::Intent { step, action, .. } => last.in_flight.push((step.clone(), *action)),
            Record::Outcome { step, result, .. } => {
                last.in_flight.retain(|(s, _)| s != step);
                if *result == StepResult::Ok {
                    last.completed += 1;
                }
            }
            Record::RunFinished { outcome } => last.finished = Some(outcome.clone()),
            Record::RunStarted { .. } => {}
        }
    }
    Some(last)
}
