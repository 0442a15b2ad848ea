//! `taskctl deploy` and `taskctl destroy`.

use crate::cli::{DeployArgs, DestroyArgs, OutputFormat};
use crate::commands::scope;
use crate::context::{Context, interrupt_token};
use crate::exit;
use crate::providers;
use crate::ui::{Shell, StatusStyle, plan as plan_view};
use anyhow::Context as _;
use std::time::Duration;
use taskctl_core::engine::{RetryPolicy, RunReport, SavedPlan};
use taskctl_core::events::RunOutcome;
use taskctl_core::ops::{self, DeployOptions, DeployOutcome, Layer};
use taskctl_core::profile::{StateBackend, TargetKind};

pub fn deploy(ctx: &Context, shell: &mut Shell, args: DeployArgs) -> anyhow::Result<u8> {
    deploy_with(ctx, shell, args, Vec::new())
}

/// A deploy that also rotates the managed secrets named in `rotate`.
pub fn deploy_with(
    ctx: &Context,
    shell: &mut Shell,
    args: DeployArgs,
    rotate: Vec<String>,
) -> anyhow::Result<u8> {
    let saved_plan = match &args.plan {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read plan `{}`", path.display()))?;
            let plan: SavedPlan = serde_json::from_str(&text).with_context(|| {
                format!(
                    "`{}` is not a plan saved by `taskctl plan --out`",
                    path.display()
                )
            })?;
            Some(plan)
        }
        None => None,
    };
    let profile = super::with_push(ctx.valid_profile(shell)?, args.push.as_deref())?;
    let rt = ctx.runtime()?;
    let store = rt.block_on(ctx.store(&profile))?;
    let outcome = rt.block_on(async {
        let provider = providers::for_profile_with(
            &profile,
            providers::ProviderOptions {
                force_conflicts: args.force_conflicts,
                prune_all: args.prune_all,
                rotate,
                ..Default::default()
            },
        )
        .await?;
        let options = DeployOptions {
            scope: scope(&args.scope),
            parallelism: args.scope.parallelism.into(),
            dry_run: args.dry_run,
            saved_plan,
            grace: Duration::from_secs(args.grace),
            retry: RetryPolicy::default(),
            cancel: interrupt_token(),
            skip_preflight: args.skip_preflight,
        };
        let confirm = |plan: &RunReport| {
            if ctx.output != OutputFormat::Json {
                plan_view::render(plan, false, ctx.verbose);
            }
            ctx.confirm("Apply these changes?")
        };
        anyhow::Ok(
            ops::deploy(
                &profile,
                provider.as_ref(),
                store,
                ctx.sink(),
                options,
                &confirm,
            )
            .await?,
        )
    })?;
    // An `aws` deploy that built the cluster leaves its kubeconfig beside
    // the state, for kubectl and the in-cluster layers.
    // With the s3 backend nothing is kept on this machine: it says how to
    // get the kubeconfig instead.
    if profile.target.kind == TargetKind::Aws
        && !args.dry_run
        && outcome.outcome() == RunOutcome::Succeeded
        && scope(&args.scope).includes(Layer::Infrastructure)
    {
        if profile.state.backend != StateBackend::Local {
            shell.status(
                StatusStyle::Ok,
                "kubeconfig",
                "`taskctl kubeconfig --out FILE` writes the cluster's kubeconfig",
            );
        } else {
            match rt.block_on(super::kubeconfig::write_after_deploy(
                &profile,
                outcome.applied.as_ref().unwrap_or(&outcome.plan),
            )) {
                Ok((path, access)) => shell.status(
                    StatusStyle::Ok,
                    "kubeconfig",
                    &format!(
                        "{} for cluster {} at {}",
                        path.display(),
                        access.name,
                        access.endpoint
                    ),
                ),
                Err(e) => shell.status(
                    StatusStyle::Warning,
                    "kubeconfig",
                    &format!("not written: {e:#}"),
                ),
            }
        }
    }
    finish(
        ctx,
        shell,
        &outcome,
        if args.dry_run { "dry run" } else { "deploy" },
    )
}

pub fn destroy(ctx: &Context, shell: &mut Shell, args: DestroyArgs) -> anyhow::Result<u8> {
    let profile = ctx.valid_profile(shell)?;
    let rt = ctx.runtime()?;
    let store = rt.block_on(ctx.store(&profile))?;
    let name = ops::environment_key(&profile);
    let outcome = rt.block_on(async {
        let provider = providers::for_profile_with(
            &profile,
            providers::ProviderOptions {
                purge: args.purge,
                destroying: true,
                ..Default::default()
            },
        )
        .await?;
        let options = DeployOptions {
            scope: scope(&args.scope),
            parallelism: args.scope.parallelism.into(),
            dry_run: false,
            saved_plan: None,
            grace: Duration::from_secs(args.grace),
            retry: RetryPolicy::default(),
            cancel: interrupt_token(),
            skip_preflight: true,
        };
        let confirm = |plan: &RunReport| {
            if ctx.output != OutputFormat::Json {
                plan_view::render(plan, true, ctx.verbose);
            }
            ctx.confirm(&format!("Destroy everything above in {name}?"))
        };
        anyhow::Ok(
            ops::destroy(
                &profile,
                provider.as_ref(),
                store,
                ctx.sink(),
                options,
                &confirm,
            )
            .await?,
        )
    })?;
    finish(ctx, shell, &outcome, "destroy")
}

fn finish(
    ctx: &Context,
    shell: &mut Shell,
    outcome: &DeployOutcome,
    what: &str,
) -> anyhow::Result<u8> {
    for f in &outcome.preflight {
        shell.status(
            StatusStyle::Warning,
            "preflight",
            &format!("{}: {}", f.check, f.message),
        );
    }
    if let Some(resumed) = &outcome.resumed {
        shell.status(
            StatusStyle::Ok,
            "resumed",
            &format!("run {resumed} had not finished; its work was adopted"),
        );
    }
    let report = outcome.applied.as_ref().unwrap_or(&outcome.plan);
    if outcome.applied.is_none()
        && ctx.output != OutputFormat::Json
        && outcome.plan.outcome == RunOutcome::Succeeded
    {
        if what == "dry run" {
            plan_view::render(&outcome.plan, false, ctx.verbose);
        } else {
            shell.status(
                StatusStyle::Ok,
                "nothing to do",
                "everything already matches the profile",
            );
        }
    }
    if let Some(release) = &outcome.release
        && report.outcome == RunOutcome::Succeeded
    {
        if let Some(why) = release.failure_message() {
            shell.status(
                StatusStyle::Error,
                "failed",
                &format!("{what} failed: {why}"),
            );
            return Ok(exit::FAILURE);
        }
        shell.status(
            StatusStyle::Ok,
            "verified",
            &format!(
                "release {} recorded; verification passed ({})",
                release.revision,
                taskctl_core::ops::checks_summary(&release.checks)
            ),
        );
    }
    match report.outcome {
        RunOutcome::Succeeded => {
            shell.status(
                StatusStyle::Ok,
                "done",
                &format!("{what} finished in {:.1}s", report.duration.as_secs_f64()),
            );
            Ok(exit::SUCCESS)
        }
        RunOutcome::Interrupted => {
            shell.status(
                StatusStyle::Error,
                "interrupted",
                "the journal records where it stopped; run the same command again to resume",
            );
            Ok(exit::INTERRUPTED)
        }
        RunOutcome::Failed => {
            let first = report.first_error();
            let why = first
                .map(|s| {
                    format!(
                        "{}: {}",
                        s.id,
                        s.error
                            .as_ref()
                            .map(ToString::to_string)
                            .unwrap_or_default()
                    )
                })
                .unwrap_or_else(|| "a step failed".into());
            // A failed rollout that was rolled back says so in one line.
            let message = match outcome.release.as_ref().and_then(|r| r.failure_message()) {
                Some(then) => format!("{what} failed: {then}"),
                None => format!("{what} failed at {why}"),
            };
            shell.status(StatusStyle::Error, "failed", &message);
            Ok(exit::FAILURE)
        }
    }
}
