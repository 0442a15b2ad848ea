//! `taskctl history` and `taskctl rollback`: an environment's releases.

use crate::cli::{OutputFormat, RollbackArgs};
use crate::context::{Context, interrupt_token};
use crate::exit;
use crate::providers;
use crate::ui::{Shell, StatusStyle, plan as plan_view};
use serde::Serialize;
use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use taskctl_core::engine::{RetryPolicy, RunReport};
use taskctl_core::events::RunOutcome;
use taskctl_core::ops::{self, RollbackOptions};
use taskctl_core::release::{Release, ReleaseStatus};

/// A release as `history -o json|yaml` shows it: everything but the
/// resolved profile, which `taskctl render profile` shows better and which
/// would drown the list.
#[derive(Serialize)]
struct Entry<'a> {
    revision: u32,
    status: ReleaseStatus,
    created: String,
    run_id: &'a str,
    description: &'a str,
    images: &'a BTreeMap<String, String>,
    config_hashes: &'a BTreeMap<String, String>,
    secret_refs: &'a [String],
}

pub fn history(ctx: &Context, shell: &mut Shell) -> anyhow::Result<u8> {
    let profile = ctx.valid_profile(shell)?;
    let releases = ctx.runtime()?.block_on(async {
        let provider = providers::for_profile(&profile).await?;
        anyhow::Ok(ops::history(&profile, provider.as_ref()).await?)
    })?;
    if ctx.output != OutputFormat::Table {
        let entries: Vec<Entry> = releases
            .iter()
            .map(|r| Entry {
                revision: r.revision,
                status: r.status,
                created: humantime::format_rfc3339_seconds(
                    std::time::UNIX_EPOCH + Duration::from_secs(r.created_at),
                )
                .to_string(),
                run_id: &r.run_id,
                description: &r.description,
                images: &r.images,
                config_hashes: &r.config_hashes,
                secret_refs: &r.secret_refs,
            })
            .collect();
        shell.data(&entries)?;
        return Ok(exit::SUCCESS);
    }
    if releases.is_empty() {
        shell.text(&format!(
            "no releases of {} yet: the first deploy records release 1\n",
            ops::environment_key(&profile)
        ))?;
        return Ok(exit::SUCCESS);
    }
    shell.text(&table(&releases))?;
    Ok(exit::SUCCESS)
}

/// The history table, newest last as `helm history` prints it.
fn table(releases: &[Release]) -> String {
    let rows: Vec<[String; 5]> = releases
        .iter()
        .map(|r| {
            [
                r.revision.to_string(),
                r.status.to_string(),
                local_time(r.created_at),
                r.images
                    .values()
                    .map(|i| short_image(i))
                    .collect::<Vec<_>>()
                    .join(", "),
                r.description.clone(),
            ]
        })
        .collect();
    let rows: Vec<Vec<String>> = rows.into_iter().map(Vec::from).collect();
    crate::ui::columns(
        &["REVISION", "STATUS", "CREATED", "IMAGES", "DESCRIPTION"],
        &rows,
    )
}

/// `2026-11-23 21:40:05 CET`, in the machine's time zone: people read the
/// history during an incident, in their own time.
fn local_time(secs: u64) -> String {
    let Ok(ts) = jiff::Timestamp::from_second(secs as i64) else {
        return secs.to_string();
    };
    ts.to_zoned(jiff::tz::TimeZone::system())
        .strftime("%Y-%m-%d %H:%M:%S %Z")
        .to_string()
}

/// `task-executor:v1@sha256:0123…` → `task-executor:v1@012345678901`: the
/// tag for people, twelve digits of the digest to tell builds apart.
fn short_image(image: &str) -> String {
    match image.split_once("@sha256:") {
        Some((name, digest)) => format!("{name}@{}", &digest[..digest.len().min(12)]),
        None => image.to_string(),
    }
}

/// Who can be asked for an approver's name: nobody in CI or without a
/// terminal, so the rollback is refused rather than left waiting.
fn can_ask() -> bool {
    std::env::var_os("CI").is_none_or(|v| v.is_empty())
        && std::io::stdin().is_terminal()
        && std::io::stderr().is_terminal()
}

pub fn rollback(ctx: &Context, shell: &mut Shell, args: RollbackArgs) -> anyhow::Result<u8> {
    let profile = ctx.valid_profile(shell)?;
    let rt = ctx.runtime()?;
    let store = rt.block_on(ctx.store(&profile))?;
    let environment = ops::environment_key(&profile);
    // An approval, on the command line or at the prompt, is the go-ahead:
    // asking "are you sure?" after a lead said yes adds nothing.
    let approved = AtomicBool::new(args.approve.is_some());
    let ask_approver = |target: &Release| {
        if !can_ask() {
            return None;
        }
        eprint!(
            "Rolling back {environment} to release {} ({}) needs a lead's approval.\nApproving lead's name (empty to cancel): ",
            target.revision, target.description
        );
        let mut answer = String::new();
        std::io::stdin().read_line(&mut answer).ok()?;
        let name = answer.trim().to_string();
        if name.is_empty() {
            return None;
        }
        approved.store(true, Ordering::SeqCst);
        Some(name)
    };
    let confirm = |plan: &RunReport| {
        if ctx.output != OutputFormat::Json {
            plan_view::render(plan, false, ctx.verbose);
        }
        approved.load(Ordering::SeqCst) || ctx.confirm("Apply this rollback?")
    };
    let outcome = rt.block_on(async {
        let provider = providers::for_profile(&profile).await?;
        let options = RollbackOptions {
            to: args.to,
            approver: args.approve.clone(),
            parallelism: args.parallelism.into(),
            grace: Duration::from_secs(args.grace),
            retry: RetryPolicy::default(),
            cancel: interrupt_token(),
        };
        anyhow::Ok(
            ops::rollback(
                &profile,
                provider.as_ref(),
                store,
                ctx.sink(),
                options,
                &ask_approver,
                &confirm,
            )
            .await?,
        )
    })?;
    if let Some(backups) = &outcome.backups {
        shell.status(StatusStyle::Ok, "backups", backups);
    }
    for held in &outcome.prerequisites {
        shell.status(StatusStyle::Ok, "prerequisite", held);
    }
    match outcome.outcome() {
        RunOutcome::Succeeded => {
            let revision = outcome
                .revision
                .map(|r| format!(" (now release {r})"))
                .unwrap_or_default();
            let approver = outcome
                .approver
                .as_ref()
                .map(|a| format!(", approved by {a}"))
                .unwrap_or_default();
            shell.status(
                StatusStyle::Ok,
                "rolled back",
                &format!(
                    "{environment} runs release {}{revision}{approver}; system validation passed ({})",
                    outcome.to,
                    taskctl_core::ops::checks_summary(&outcome.checks)
                ),
            );
            Ok(exit::SUCCESS)
        }
        RunOutcome::Interrupted => {
            shell.status(
                StatusStyle::Error,
                "interrupted",
                "the journal records where it stopped; run the same command again to finish the rollback",
            );
            Ok(exit::INTERRUPTED)
        }
        RunOutcome::Failed => {
            let why = match (outcome.run_failure(), outcome.failed_check()) {
                (Some(run), _) => format!("rollback to release {} failed: {run}", outcome.to),
                (None, Some(c)) => format!(
                    "rolled back to release {} (now release {}), but system validation failed: {} ({}): {}",
                    outcome.to,
                    outcome.revision.map(|r| r.to_string()).unwrap_or_default(),
                    c.name,
                    c.kind,
                    c.observed
                ),
                (None, None) => format!("rollback to release {} failed", outcome.to),
            };
            shell.status(StatusStyle::Error, "failed", &why);
            Ok(exit::FAILURE)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn images_show_their_tag_and_twelve_digits_of_digest() {
        assert_eq!(
            short_image(&format!("task-executor:v1@sha256:{}", "ab".repeat(32))),
            "task-executor:v1@abababababab"
        );
        assert_eq!(short_image("task-executor:v1"), "task-executor:v1");
    }

    #[test]
    fn the_history_table_lines_up() {
        let release = |revision, status, description: &str| Release {
            revision,
            environment: "task/production".into(),
            run_id: "r-1".into(),
            created_at: 0,
            status,
            description: description.into(),
            images: [(
                "agent".to_string(),
                format!("task-executor:v{revision}@sha256:{}", "0".repeat(64)),
            )]
            .into(),
            config_hashes: BTreeMap::new(),
            secret_refs: Vec::new(),
            secret_versions: BTreeMap::new(),
            profile: serde_json::Value::Null,
            checks: Vec::new(),
        };
        let text = table(&[
            release(1, ReleaseStatus::Superseded, "deploy"),
            release(
                12,
                ReleaseStatus::Deployed,
                "rollback to 1 (approved by dana)",
            ),
        ]);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3);
        let column = |line: &str, word: &str| line.find(word).unwrap();
        assert_eq!(column(lines[0], "STATUS"), column(lines[1], "superseded"));
        assert_eq!(
            column(lines[0], "IMAGES"),
            column(lines[2], "task-executor:v12@000000000000")
        );
        assert!(lines[2].ends_with("rollback to 1 (approved by dana)"));
    }
}
