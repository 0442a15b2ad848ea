//! `taskctl secrets status` and `taskctl secrets rotate`.

use crate::cli::{DeployArgs, OutputFormat, RotateArgs, ScopeArgs, SecretsCommand};
use crate::context::Context;
use crate::exit;
use crate::secrets;
use crate::ui::{Shell, StatusStyle};

pub fn exec(ctx: &Context, shell: &mut Shell, command: SecretsCommand) -> anyhow::Result<u8> {
    match command {
        SecretsCommand::Status => status(ctx, shell),
        SecretsCommand::Rotate(args) => rotate(ctx, shell, args),
    }
}

fn status(ctx: &Context, shell: &mut Shell) -> anyhow::Result<u8> {
    let profile = ctx.valid_profile(shell)?;
    if profile.secrets.entries.is_empty() {
        shell.status(
            StatusStyle::Warning,
            "secrets",
            "the profile manages no secret (`secrets.entries` is empty)",
        );
        if ctx.output == OutputFormat::Json {
            shell.data(&Vec::<secrets::StatusRow>::new())?;
        }
        return Ok(exit::SUCCESS);
    }
    let rt = ctx.runtime()?;
    let (_, vault) = secrets::resolver(&profile);
    let rows = rt.block_on(async {
        // The versions the running release reads, where the target keeps
        // releases (a target that cannot be reached just shows none).
        let in_use = match crate::providers::for_profile(&profile).await {
            Ok(provider) => match provider.releases(&profile) {
                Some(store) => store
                    .current()
                    .await
                    .ok()
                    .flatten()
                    .map(|r| r.secret_versions)
                    .unwrap_or_default(),
                None => Default::default(),
            },
            Err(_) => Default::default(),
        };
        secrets::status(&profile, &vault, &in_use).await
    });
    let rows = rows.map_err(anyhow::Error::msg)?;
    match ctx.output {
        OutputFormat::Table => shell.text(&table(&rows))?,
        _ => shell.data(&rows)?,
    }
    Ok(exit::SUCCESS)
}

fn table(rows: &[secrets::StatusRow]) -> String {
    let dash = || "-".to_string();
    let rows: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            vec![
                r.name.clone(),
                r.path.clone(),
                r.kind.clone(),
                r.version.map(|v| v.to_string()).unwrap_or_else(dash),
                r.in_use.map(|v| v.to_string()).unwrap_or_else(dash),
                r.age_seconds
                    .map(|s| {
                        humantime::format_duration(std::time::Duration::from_secs(s - s % 60))
                            .to_string()
                    })
                    .map(|s| if s == "0s" { "<1m".into() } else { s })
                    .unwrap_or_else(dash),
                r.next_rotation.clone().unwrap_or_else(dash),
                r.state.clone(),
                if r.consumers.is_empty() {
                    dash()
                } else {
                    r.consumers.join(", ")
                },
            ]
        })
        .collect();
    crate::ui::columns(
        &[
            "NAME",
            "PATH",
            "TYPE",
            "VERSION",
            "IN USE",
            "AGE",
            "NEXT ROTATION",
            "STATE",
            "CONSUMERS",
        ],
        &rows,
    )
}

fn rotate(ctx: &Context, shell: &mut Shell, args: RotateArgs) -> anyhow::Result<u8> {
    if args.vault_only {
        let profile = ctx.valid_profile(shell)?;
        let rt = ctx.runtime()?;
        let (_, vault) = secrets::resolver(&profile);
        let versions = rt
            .block_on(secrets::rotate_in_vault(&profile, &vault, &args.names))
            .map_err(anyhow::Error::msg)?;
        for (name, version) in &versions {
            shell.status(
                StatusStyle::Ok,
                "rotated",
                &format!(
                    "{name}: version {version} in Vault; consumers move to it at the next deploy"
                ),
            );
        }
        if ctx.output == OutputFormat::Json {
            shell.data(&versions)?;
        }
        return Ok(exit::SUCCESS);
    }
    super::deploy::deploy_with(
        ctx,
        shell,
        DeployArgs {
            scope: ScopeArgs {
                only: Vec::new(),
                parallelism: 10,
            },
            plan: None,
            dry_run: false,
            grace: args.grace,
            skip_preflight: false,
            force_conflicts: false,
            prune_all: false,
            push: None,
        },
        args.names,
    )
}
