//! Rendering a plan for people: one line per change, then a summary.

use anstyle::{AnsiColor, Style};
use std::io::Write;
use taskctl_core::engine::{Action, RunReport};
use taskctl_core::events::StepOutcome;

const CREATE: Style = AnsiColor::Green.on_default().bold();
const UPDATE: Style = AnsiColor::Yellow.on_default().bold();
const DELETE: Style = AnsiColor::Red.on_default().bold();
const DIM: Style = Style::new().dimmed();

/// Writes the plan to stderr; unchanged resources only with `verbose`.
pub fn render(report: &RunReport, destroy: bool, verbose: bool) {
    let mut out = crate::redact::stderr();
    let width = report.steps.iter().map(|s| s.id.0.len()).max().unwrap_or(0);
    let (mut create, mut update, mut delete, mut same) = (0, 0, 0, 0);
    for step in &report.steps {
        if let Some(err) = &step.error {
            let _ = writeln!(
                out,
                "{DELETE}  ! error  {:<width$}{DELETE:#}  {err}",
                step.id.0
            );
            continue;
        }
        let Some(change) = &step.change else { continue };
        let action = match (destroy, change.action) {
            (true, Action::Create) => Action::NoOp,
            (true, _) => Action::Delete,
            (false, a) => a,
        };
        let (sign, style) = match action {
            Action::Create => {
                create += 1;
                ("+", CREATE)
            }
            Action::Update => {
                update += 1;
                ("~", UPDATE)
            }
            Action::Delete => {
                delete += 1;
                ("-", DELETE)
            }
            Action::NoOp => {
                same += 1;
                if !verbose {
                    continue;
                }
                ("=", DIM)
            }
        };
        let reason = if destroy && action == Action::Delete {
            "exists"
        } else {
            change.reason.as_str()
        };
        let _ = writeln!(
            out,
            "{style}  {sign} {:<6} {:<width$}{style:#}  {DIM}{:<14}{DIM:#} {reason}",
            action.to_string(),
            step.id.0,
            step.kind
        );
        for d in &change.diffs {
            let _ = writeln!(
                out,
                "        {DIM}{}:{DIM:#} {} → {}",
                d.field, d.from, d.to
            );
        }
    }
    let failed = report
        .steps
        .iter()
        .filter(|s| s.outcome == StepOutcome::Failed)
        .count();
    let _ = writeln!(
        out,
        "\nPlan: {create} to create, {update} to update, {delete} to delete, {same} unchanged{}.",
        if failed > 0 {
            format!(", {failed} could not be observed")
        } else {
            String::new()
        }
    );
}
