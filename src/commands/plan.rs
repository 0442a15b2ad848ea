//! `taskctl plan`: what a deploy would change.

use crate::cli::{OutputFormat, PlanArgs};
use crate::commands::scope;
use crate::context::Context;
use crate::exit;
use crate::providers;
use crate::ui::{Shell, plan as plan_view};
use anyhow::Context as _;
use taskctl_core::engine::SavedPlan;
use taskctl_core::events::RunOutcome;
use taskctl_core::ops::{self, PlanOptions};

pub fn exec(ctx: &Context, shell: &mut Shell, args: PlanArgs) -> anyhow::Result<u8> {
    let profile = super::with_push(ctx.valid_profile(shell)?, args.push.as_deref())?;
    let rt = ctx.runtime()?;
    let store = rt.block_on(ctx.store(&profile))?;
    let report = rt.block_on(async {
        let provider = providers::for_profile(&profile).await?;
        let options = PlanOptions {
            scope: scope(&args.scope),
            parallelism: args.scope.parallelism.into(),
        };
        anyhow::Ok(ops::plan(&profile, provider.as_ref(), store, ctx.sink(), &options).await?)
    })?;
    if ctx.output != OutputFormat::Json {
        plan_view::render(&report, false, ctx.verbose);
    }
    if report.outcome != RunOutcome::Succeeded {
        let first = report
            .first_error()
            .and_then(|s| s.error.as_ref().map(|e| format!("{}: {e}", s.id)));
        anyhow::bail!(
            "could not observe every resource: {}",
            first.unwrap_or_default()
        );
    }
    if let Some(path) = &args.out {
        let saved = SavedPlan::from_report(&ops::environment_key(&profile), &report);
        let body = serde_json::to_vec_pretty(&saved)?;
        std::fs::write(path, body)
            .with_context(|| format!("cannot write plan `{}`", path.display()))?;
        if ctx.output != OutputFormat::Json {
            eprintln!(
                "saved to {}; apply it with `taskctl deploy --plan {}`",
                path.display(),
                path.display()
            );
        }
    }
    Ok(if args.detailed_exitcode && report.has_changes() {
        exit::CHANGES_PENDING
    } else {
        exit::SUCCESS
    })
}
