//! Event sinks: how a run looks while it happens.
//!
//! - [`Progress`]: a terminal: one live line per running step (spinner,
//!   elapsed time, what it waits for), a line per finished step.
//! - [`Lines`]: not a terminal: plain timestamped lines, no spinners.
//! - [`JsonLines`]: `--output json`: one JSON object per event on stdout,
//!   each with `ts` and `event` (the schema is in the README).

use anstyle::{AnsiColor, Style};
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::collections::HashMap;
use std::io::Write;
use std::sync::Mutex;
use std::time::{Duration, SystemTime};
use taskctl_core::engine::{Action, StepId};
use taskctl_core::events::{Event, EventSink, RunOutcome, StepOutcome};

const OK: Style = AnsiColor::Green.on_default().bold();
const FAIL: Style = AnsiColor::Red.on_default().bold();
const DIM: Style = Style::new().dimmed();

fn now() -> String {
    humantime::format_rfc3339_millis(SystemTime::now()).to_string()
}

pub struct JsonLines;

impl EventSink for JsonLines {
    fn emit(&self, event: &Event) {
        let Ok(serde_json::Value::Object(fields)) = serde_json::to_value(event) else {
            return;
        };
        let mut line = serde_json::Map::with_capacity(fields.len() + 1);
        line.insert("ts".into(), now().into());
        line.extend(fields);
        let Ok(text) = serde_json::to_string(&line) else {
            return;
        };
        let mut out = std::io::stdout().lock();
        let _ = out.write_all(crate::redact::text(&text).as_bytes());
        let _ = out.write_all(b"\n");
        let _ = out.flush();
    }
}

/// Plain lines on stderr, for logs and CI.
pub struct Lines {
    pub verbose: bool,
}

impl EventSink for Lines {
    fn emit(&self, event: &Event) {
        let line = match event {
            Event::RunStarted {
                run_id,
                operation,
                environment,
                steps,
                resumes,
            } => {
                let resumes = resumes
                    .as_ref()
                    .map(|r| format!(", resuming {r}"))
                    .unwrap_or_default();
                format!(
                    "{operation:?} of {environment} started: run {run_id}, {steps} steps{resumes}"
                )
                .to_lowercase()
            }
            Event::StepPlanned { .. } => return,
            Event::StepStarted { step, action, .. } => format!("{step}: {action} started"),
            Event::StepProgress { step, message } => format!("{step}: {message}"),
            Event::StepRetry {
                step,
                attempt,
                delay_ms,
                error,
            } => {
                format!("{step}: retry {attempt} in {delay_ms} ms after: {error}")
            }
            Event::StepFinished {
                step,
                outcome,
                duration_ms,
                error,
            } => {
                if *outcome == StepOutcome::Unchanged && !self.verbose {
                    return;
                }
                let error = error.as_ref().map(|e| format!(": {e}")).unwrap_or_default();
                format!(
                    "{step}: {} in {}{error}",
                    outcome_word(*outcome),
                    seconds(*duration_ms)
                )
            }
            Event::RunFinished {
                outcome,
                duration_ms,
                changed,
                unchanged,
                failed,
                skipped,
                ..
            } => format!(
                "run {}: {changed} changed, {unchanged} unchanged, {failed} failed, {skipped} skipped in {}",
                format!("{outcome:?}").to_lowercase(),
                seconds(*duration_ms)
            ),
            Event::CheckFinished {
                name,
                kind,
                passed,
                evaluated,
                observed,
                elapsed_s,
            } => format!(
                "check {name} ({kind}): {} in {}: {observed}",
                if !*evaluated {
                    "not evaluated"
                } else if *passed {
                    "passed"
                } else {
                    "FAILED"
                },
                seconds((elapsed_s * 1000.0) as u64)
            ),
            other => match release_line(other) {
                Some(line) => line,
                None => return,
            },
        };
        let line = crate::redact::text(&line);
        let mut err = std::io::stderr().lock();
        let _ = writeln!(
            err,
            "{} {line}",
            humantime::format_rfc3339_seconds(SystemTime::now())
        );
    }
}

/// Live progress on a terminal.
pub struct Progress {
    multi: MultiProgress,
    bars: Mutex<HashMap<StepId, (ProgressBar, Action)>>,
    style: ProgressStyle,
}

impl Progress {
    pub fn new() -> Self {
        let style = ProgressStyle::with_template(
            "{spinner:.cyan} {prefix:.bold} {elapsed:>4.dim} {wide_msg}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_spinner())
        .tick_chars("⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏ ");
        Progress {
            multi: MultiProgress::with_draw_target(ProgressDrawTarget::stderr_with_hz(10)),
            bars: Mutex::new(HashMap::new()),
            style,
        }
    }

    fn println(&self, line: String) {
        let _ = self.multi.println(crate::redact::text(&line));
    }
}

impl EventSink for Progress {
    fn emit(&self, event: &Event) {
        let Ok(mut bars) = self.bars.lock() else {
            return;
        };
        match event {
            Event::StepStarted { step, action, kind } => {
                let bar = self.multi.add(ProgressBar::new_spinner());
                bar.set_style(self.style.clone());
                bar.set_prefix(format!("{action} {step}"));
                bar.set_message(kind.clone());
                bar.enable_steady_tick(Duration::from_millis(100));
                bars.insert(step.clone(), (bar, *action));
            }
            Event::StepProgress { step, message } => {
                if let Some((bar, _)) = bars.get(step) {
                    bar.set_message(crate::redact::text(message).into_owned());
                }
            }
            Event::StepRetry {
                step,
                attempt,
                delay_ms,
                error,
            } => {
                if let Some((bar, _)) = bars.get(step) {
                    bar.set_message(
                        crate::redact::text(&format!("retry {attempt} in {delay_ms} ms: {error}"))
                            .into_owned(),
                    );
                }
            }
            Event::StepFinished {
                step,
                outcome,
                duration_ms,
                error,
            } => {
                let action = bars.remove(step).map(|(bar, action)| {
                    bar.finish_and_clear();
                    self.multi.remove(&bar);
                    action
                });
                let Some(action) = action else {
                    if *outcome == StepOutcome::Failed || *outcome == StepOutcome::Interrupted {
                        let msg = error.as_ref().map(|e| e.to_string()).unwrap_or_default();
                        self.println(format!(
                            "{FAIL}✗{FAIL:#} {step} {}: {msg}",
                            outcome_word(*outcome)
                        ));
                    }
                    return;
                };
                let line = match (outcome, error) {
                    (StepOutcome::Changed, _) => {
                        format!(
                            "{OK}✓{OK:#} {action} {step} {DIM}{}{DIM:#}",
                            seconds(*duration_ms)
                        )
                    }
                    (_, Some(e)) => format!(
                        "{FAIL}✗{FAIL:#} {action} {step} {}: {e}",
                        outcome_word(*outcome)
                    ),
                    (o, None) => format!("  {action} {step} {}", outcome_word(*o)),
                };
                self.println(line);
            }
            Event::CheckFinished {
                name,
                kind,
                passed,
                evaluated,
                observed,
                elapsed_s,
            } => {
                let mark = if !*evaluated {
                    format!("{DIM}– not evaluated{DIM:#}")
                } else if *passed {
                    format!("{OK}✓{OK:#}")
                } else {
                    format!("{FAIL}✗{FAIL:#}")
                };
                self.println(format!(
                    "{mark} check {name} {DIM}{kind} {}{DIM:#} {observed}",
                    seconds((elapsed_s * 1000.0) as u64)
                ));
            }
            Event::RollbackStarted { .. } => {
                if let Some(line) = release_line(event) {
                    self.println(format!("{FAIL}↺{FAIL:#} {line}"));
                }
            }
            Event::VerificationFinished { passed: false, .. }
            | Event::RollbackFinished {
                outcome: RunOutcome::Failed | RunOutcome::Interrupted,
                ..
            } => {
                if let Some(line) = release_line(event) {
                    self.println(format!("{FAIL}✗{FAIL:#} {line}"));
                }
            }
            Event::ReleaseRecorded { .. }
            | Event::VerificationStarted { .. }
            | Event::VerificationFinished { .. }
            | Event::RollbackFinished { .. } => {
                if let Some(line) = release_line(event) {
                    self.println(format!("{DIM}•{DIM:#} {line}"));
                }
            }
            Event::RunStarted { .. } | Event::StepPlanned { .. } | Event::RunFinished { .. } => {}
        }
    }
}

/// The line for a release, verification or rollback event, shared by the
/// plain and the live sinks (which add their own marks).
fn release_line(event: &Event) -> Option<String> {
    Some(match event {
        Event::ReleaseRecorded {
            revision,
            status,
            description,
        } => format!("release {revision} {status}: {description}"),
        Event::VerificationStarted { revision } => format!("verifying release {revision}"),
        Event::VerificationFinished {
            revision,
            passed,
            checks,
            failed,
            not_evaluated,
        } => {
            if *passed && *not_evaluated > 0 {
                format!(
                    "release {revision} verified: {} check(s) passed, {not_evaluated} not evaluated",
                    checks - not_evaluated
                )
            } else if *passed {
                format!("release {revision} verified: {checks} check(s) passed")
            } else {
                format!(
                    "release {revision} failed verification: {failed} of {checks} check(s) failed"
                )
            }
        }
        Event::RollbackStarted {
            automatic,
            from,
            to,
            reason,
        } => {
            let from = from
                .map(|f| format!(" from release {f}"))
                .unwrap_or_default();
            let how = if *automatic {
                "automatic rollback"
            } else {
                "rollback"
            };
            format!("{how}{from} to release {to} started: {reason}")
        }
        Event::RollbackFinished {
            automatic,
            to,
            revision,
            outcome,
        } => {
            let how = if *automatic {
                "automatic rollback"
            } else {
                "rollback"
            };
            match (outcome, revision) {
                (RunOutcome::Succeeded, Some(r)) => {
                    format!("{how} to release {to} done: now release {r}")
                }
                (RunOutcome::Succeeded, None) => format!("{how} to release {to} done"),
                (RunOutcome::Failed, Some(r)) => {
                    format!(
                        "{how} to release {to} done as release {r}, but its verification failed"
                    )
                }
                (RunOutcome::Failed, None) => format!("{how} to release {to} failed"),
                (RunOutcome::Interrupted, _) => format!("{how} to release {to} interrupted"),
            }
        }
        _ => return None,
    })
}

fn outcome_word(o: StepOutcome) -> &'static str {
    match o {
        StepOutcome::Changed => "done",
        StepOutcome::Unchanged => "unchanged",
        StepOutcome::Planned => "planned",
        StepOutcome::Failed => "failed",
        StepOutcome::Skipped => "skipped",
        StepOutcome::Interrupted => "interrupted",
    }
}

fn seconds(ms: u64) -> String {
    if ms < 1000 {
        format!("{ms}ms")
    } else {
        format!("{:.1}s", ms as f64 / 1000.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn release_events_read_as_sentences() {
        let line = |e: Event| release_line(&e).unwrap();
        assert_eq!(
            line(Event::RollbackStarted {
                automatic: true,
                from: Some(2),
                to: 1,
                reason: "check_service_health/a: HTTP 503".into(),
            }),
            "automatic rollback from release 2 to release 1 started: check_service_health/a: HTTP 503"
        );
        assert_eq!(
            line(Event::RollbackFinished {
                automatic: false,
                to: 1,
                revision: Some(4),
                outcome: RunOutcome::Succeeded,
            }),
            "rollback to release 1 done: now release 4"
        );
        assert_eq!(
            line(Event::VerificationFinished {
                revision: 2,
                passed: false,
                checks: 3,
                failed: 1,
                not_evaluated: 0,
            }),
            "release 2 failed verification: 1 of 3 check(s) failed"
        );
        assert_eq!(
            line(Event::VerificationFinished {
                revision: 2,
                passed: true,
                checks: 3,
                failed: 0,
                not_evaluated: 2,
            }),
            "release 2 verified: 1 check(s) passed, 2 not evaluated"
        );
        assert!(
            release_line(&Event::StepProgress {
                step: StepId::new("x"),
                message: "m".into(),
            })
            .is_none()
        );
    }
}
