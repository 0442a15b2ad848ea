//! `taskctl render profile|manifests`: what taskctl will use and apply.

use crate::cli::{ManifestsArgs, OutputFormat};
use crate::context::Context;
use crate::exit;
use crate::ui::{Shell, StatusStyle};
use anyhow::Context as _;

pub fn profile(ctx: &Context, shell: &mut Shell) -> anyhow::Result<u8> {
    let loaded = ctx.load_profile();
    shell.diagnostics(&loaded.diagnostics);
    let Some(profile) = loaded.valid_profile() else {
        shell.status(
            StatusStyle::Error,
            "invalid",
            "fix the errors above; `taskctl validate` lists them too",
        );
        return Ok(exit::FAILURE);
    };
    // Secret fields hold references (`vault:…`, `env:…`), never values, so
    // the profile can be printed as it is.
    shell.data(profile)?;
    Ok(exit::SUCCESS)
}

/// Renders every Kubernetes object of the profile and checks each against
/// the Kubernetes schema before printing anything.
pub fn manifests(ctx: &Context, shell: &mut Shell, args: ManifestsArgs) -> anyhow::Result<u8> {
    let profile = ctx.valid_profile(shell)?;
    let templates = match args.templates {
        Some(dir) if !dir.is_dir() => anyhow::bail!(
            "templates directory `{}` not found: pass an existing directory to --templates (or TASKCTL_TEMPLATES), or neither to use the built-in templates",
            dir.display()
        ),
        Some(dir) => taskctl_kube::Templates::Dir(dir),
        None => taskctl_kube::Templates::Embedded,
    };
    let manifests = taskctl_kube::render_from(&profile, &templates)?;
    let problems: Vec<String> = manifests
        .iter()
        .filter_map(|m| taskctl_kube::check(m).err().map(|e| e.to_string()))
        .collect();
    if !problems.is_empty() {
        anyhow::bail!(
            "{} object(s) fail the Kubernetes schema:\n  {}",
            problems.len(),
            problems.join("\n  ")
        );
    }
    match (&args.out, ctx.output) {
        (Some(dir), _) => {
            for m in &manifests {
                let path = dir.join(m.file_name());
                if let Some(parent) = path.parent() {
                    std::fs::create_dir_all(parent)
                        .with_context(|| format!("cannot create `{}`", parent.display()))?;
                }
                std::fs::write(&path, &m.yaml)
                    .with_context(|| format!("cannot write `{}`", path.display()))?;
            }
            shell.status(
                StatusStyle::Ok,
                "rendered",
                &format!("{} objects into {}", manifests.len(), dir.display()),
            );
        }
        (None, OutputFormat::Json) => {
            let values: Vec<&serde_json::Value> = manifests.iter().map(|m| &m.value).collect();
            shell.data(&values)?;
        }
        (None, _) => shell.text(&taskctl_kube::to_yaml_stream(&manifests))?,
    }
    Ok(exit::SUCCESS)
}
