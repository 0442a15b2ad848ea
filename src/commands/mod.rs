//! One module per command; `run` is the dispatch table.

mod completions;
mod deploy;
mod kubeconfig;
mod plan;
mod plugins;
mod releases;
mod render;
mod schema;
mod secrets;
mod state;
mod task;
mod validate;
mod version;

use crate::cli::{Command, LayerArg, RenderCommand, ScopeArgs};
use crate::context::Context;
use crate::ui::Shell;

/// Runs a command; returns the process exit code.
pub fn run(ctx: &Context, shell: &mut Shell, command: Command) -> anyhow::Result<u8> {
    match command {
        Command::Validate(args) => validate::exec(ctx, shell, args),
        Command::Render(RenderCommand::Profile) => render::profile(ctx, shell),
        Command::Render(RenderCommand::Manifests(args)) => render::manifests(ctx, shell, args),
        Command::Plan(args) => plan::exec(ctx, shell, args),
        Command::Deploy(args) => deploy::deploy(ctx, shell, args),
        Command::Destroy(args) => deploy::destroy(ctx, shell, args),
        Command::Status(args) => state::status(ctx, shell, &args),
        Command::Checklist => state::checklist(ctx, shell),
        Command::History => releases::history(ctx, shell),
        Command::Rollback(args) => releases::rollback(ctx, shell, args),
        Command::Lock(command) => state::lock(ctx, shell, command),
        Command::Secrets(command) => secrets::exec(ctx, shell, command),
        Command::Task(crate::cli::TaskCommand::Send(args)) => task::send(ctx, shell, args),
        Command::Audit => state::audit(ctx, shell),
        Command::Plugins(crate::cli::PluginsCommand::List) => plugins::list(ctx, shell),
        Command::Kubeconfig(args) => kubeconfig::kubeconfig(ctx, shell, args),
        Command::EksToken(args) => kubeconfig::eks_token(ctx, shell, args),
        Command::Schema => schema::exec(shell),
        Command::Completions(args) => completions::exec(args),
        Command::Version => version::exec(shell),
    }
}

/// `--push REGISTRY`: `target.docker.push` for this run.
pub fn with_push(
    mut profile: taskctl_core::profile::Profile,
    push: Option<&str>,
) -> anyhow::Result<taskctl_core::profile::Profile> {
    use taskctl_core::profile::TargetKind;
    let Some(registry) = push else {
        return Ok(profile);
    };
    if profile.target.kind != TargetKind::Docker {
        anyhow::bail!(
            "--push applies to the docker target; this profile's target is `{}`",
            profile.target.kind.as_str()
        );
    }
    taskctl_core::profile::check_registry(registry).map_err(|e| anyhow::anyhow!("--push {e}"))?;
    profile
        .target
        .docker
        .get_or_insert_with(Default::default)
        .push = Some(registry.to_string());
    Ok(profile)
}

/// The layers `--only` names; all when none is named.
pub fn scope(args: &ScopeArgs) -> taskctl_core::ops::Scope {
    use taskctl_core::ops::{Layer, Scope};
    if args.only.is_empty() {
        return Scope::all();
    }
    Scope(
        args.only
            .iter()
            .map(|l| match l {
                LayerArg::Infrastructure => Layer::Infrastructure,
                LayerArg::Services => Layer::Services,
                LayerArg::Agents => Layer::Agents,
            })
            .collect(),
    )
}
