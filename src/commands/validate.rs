//! `taskctl validate`: every problem of the profile at once.

use crate::cli::{OutputFormat, ValidateArgs};
use crate::context::Context;
use crate::exit;
use crate::ui::{Shell, StatusStyle};
use serde::Serialize;
use taskctl_core::{Diagnostics, Severity};

#[derive(Serialize)]
struct Report<'a> {
    valid: bool,
    profiles: Vec<String>,
    environment: Option<&'a str>,
    errors: usize,
    warnings: usize,
    notes: usize,
    diagnostics: &'a Diagnostics,
}

pub fn exec(ctx: &Context, shell: &mut Shell, args: ValidateArgs) -> anyhow::Result<u8> {
    let loaded = ctx.load_profile();
    let d = &loaded.diagnostics;
    let (errors, warnings, notes) = (
        d.count(Severity::Error),
        d.count(Severity::Warning),
        d.count(Severity::Note),
    );
    let valid = errors == 0 && !(args.strict && warnings > 0);
    let environment = loaded
        .profile
        .as_ref()
        .map(|p| p.metadata.environment.as_str());
    let names: Vec<String> = ctx
        .profiles
        .iter()
        .map(|p| p.display().to_string())
        .collect();
    match shell.format() {
        OutputFormat::Json | OutputFormat::Yaml => shell.data(&Report {
            valid,
            profiles: names,
            environment,
            errors,
            warnings,
            notes,
            diagnostics: d,
        })?,
        OutputFormat::Table => {
            shell.diagnostics(d);
            let summary = counts(errors, warnings, notes);
            let env = environment
                .map(|e| format!(" (environment {e})"))
                .unwrap_or_default();
            if valid {
                shell.status(
                    StatusStyle::Ok,
                    "valid",
                    &format!("{}{env}{summary}", names.join(" + ")),
                );
            } else {
                let why = if errors == 0 {
                    " (warnings fail under --strict)"
                } else {
                    ""
                };
                shell.status(
                    StatusStyle::Error,
                    "invalid",
                    &format!("{}{env}{summary}{why}", names.join(" + ")),
                );
            }
        }
    }
    Ok(if valid { exit::SUCCESS } else { exit::FAILURE })
}

fn counts(errors: usize, warnings: usize, notes: usize) -> String {
    let mut parts = Vec::new();
    for (n, word) in [(errors, "error"), (warnings, "warning"), (notes, "note")] {
        if n > 0 {
            parts.push(format!("{n} {word}{}", if n == 1 { "" } else { "s" }));
        }
    }
    if parts.is_empty() {
        String::new()
    } else {
        format!(": {}", parts.join(", "))
    }
}
