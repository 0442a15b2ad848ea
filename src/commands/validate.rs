//! `taskctl validate`: every problem of the profile at once.

use crate::cli::{OutputFormat, ValidateArgs};
use crate::context::Context;
use crate::exit;
use crate::ui::{Shell, StatusStyle};
use serde::Serialize;
use taskctl_core::ops::{Finding, Scope};
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
    /// What the profile's `check` plugins said, and with `--online` the
    /// target too (preflight).
    #[serde(skip_serializing_if = "Option::is_none")]
    preflight: Option<Vec<Finding>>,
}

pub fn exec(ctx: &Context, shell: &mut Shell, args: ValidateArgs) -> anyhow::Result<u8> {
    let loaded = ctx.load_profile();
    let d = &loaded.diagnostics;
    let (errors, warnings, notes) = (
        d.count(Severity::Error),
        d.count(Severity::Warning),
        d.count(Severity::Note),
    );
    let mut valid = errors == 0 && !(args.strict && warnings > 0);
    // `--online`: the target's own checks (credentials, zones, instance
    // types, GPUs, overlapping networks), the ones every deploy runs first.
    // The profile's `check` plugins run at every validation (they are
    // the user's own checks); `--online` adds the target's.
    let preflight = match loaded.valid_profile() {
        Some(profile) if args.online => Some(ctx.runtime()?.block_on(async {
            let provider = crate::providers::for_profile(profile).await?;
            anyhow::Ok(provider.preflight(profile, &Scope::all()).await?)
        })?),
        Some(profile) if !profile.plugins.is_empty() => Some(ctx.runtime()?.block_on(async {
            let (secrets, _) = crate::secrets::resolver(profile);
            let search = taskctl_plugin::Search::from_env(Vec::new());
            let plugins = taskctl_plugin::Plugins::new(profile, &search, secrets);
            taskctl_plugin::checks(&plugins, profile).await
        })),
        _ => None,
    };
    let failed = preflight
        .iter()
        .flatten()
        .any(|f| f.severity == Severity::Error || (args.strict && f.severity == Severity::Warning));
    valid &= !failed;
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
            preflight,
        })?,
        OutputFormat::Table => {
            shell.diagnostics(d);
            for f in preflight.iter().flatten() {
                let style = match f.severity {
                    Severity::Error => StatusStyle::Error,
                    Severity::Warning => StatusStyle::Warning,
                    _ => StatusStyle::Ok,
                };
                shell.status(style, "preflight", &format!("{}: {}", f.check, f.message));
            }
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
