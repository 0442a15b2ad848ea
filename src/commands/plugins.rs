//! `taskctl plugins list`: what plugins there are, and whether each works.

use crate::cli::OutputFormat;
use crate::context::Context;
use crate::exit;
use crate::ui::Shell;
use serde::Serialize;
use std::time::Duration;
use taskctl_plugin::{Description, Search, discover};

/// How long `describe` may take per plugin.
const DESCRIBE_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Serialize)]
struct Row {
    #[serde(flatten)]
    description: Description,
    /// Declared in the profile, and for what.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    declared: Vec<String>,
}

pub fn list(ctx: &Context, shell: &mut Shell) -> anyhow::Result<u8> {
    // With a profile: its declared plugins first, then the others found
    // beside its files and on PATH; without: ./plugins and PATH.
    let profile = match ctx.profiles.is_empty() {
        true => None,
        false => Some(ctx.valid_profile(shell)?),
    };
    let mut dirs: Vec<std::path::PathBuf> = ctx
        .profiles
        .iter()
        .map(|p| match p.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => ".".into(),
        })
        .collect();
    if dirs.is_empty() {
        dirs.push(".".into());
    }
    let search = Search::from_env(dirs);
    let rt = ctx.runtime()?;
    let mut rows: Vec<Row> = Vec::new();
    let mut broken = 0;
    for plugin in profile.iter().flat_map(|p| p.plugins.iter()) {
        let declared = plugin
            .provides
            .iter()
            .map(|r| r.as_str().to_owned())
            .collect();
        let description = match discover::locate(plugin, &search) {
            Ok(found) => {
                let mut d = rt.block_on(taskctl_plugin::describe(&found, DESCRIBE_TIMEOUT));
                let missing: Vec<&str> = plugin
                    .provides
                    .iter()
                    .map(|r| r.as_str())
                    .filter(|r| d.problem.is_none() && !d.capabilities.iter().any(|c| c == r))
                    .collect();
                if !missing.is_empty() {
                    d.problem = Some(format!(
                        "the profile uses it as {}, which it does not provide",
                        missing.join(", ")
                    ));
                }
                d
            }
            Err(why) => Description {
                name: plugin.name.clone(),
                version: None,
                capabilities: Vec::new(),
                path: plugin.path.clone().unwrap_or_default(),
                source: "-".into(),
                problem: Some(why.message),
            },
        };
        broken += usize::from(description.problem.is_some());
        rows.push(Row {
            description,
            declared,
        });
    }
    for (found, problem) in discover::all(&search) {
        if rows.iter().any(|r| r.description.name == found.name) {
            continue;
        }
        let description = match problem {
            None => rt.block_on(taskctl_plugin::describe(&found, DESCRIBE_TIMEOUT)),
            Some(why) => Description {
                name: found.name.clone(),
                version: None,
                capabilities: Vec::new(),
                path: found.path.display().to_string(),
                source: found.source.into(),
                problem: Some(why.message),
            },
        };
        rows.push(Row {
            description,
            declared: Vec::new(),
        });
    }
    if ctx.output != OutputFormat::Table {
        shell.data(&rows)?;
    } else if rows.is_empty() {
        shell.text("no plugins: none declared, none in plugins/, no taskctl-* on PATH\n")?;
    } else {
        let mut table = vec![[
            "NAME".to_string(),
            "VERSION".into(),
            "CAPABILITIES".into(),
            "USED AS".into(),
            "FOUND".into(),
            "PATH".into(),
        ]];
        for r in &rows {
            let d = &r.description;
            table.push([
                d.name.clone(),
                d.version.clone().unwrap_or_else(|| "-".into()),
                match d.capabilities.is_empty() {
                    true => "-".into(),
                    false => d.capabilities.join(","),
                },
                match r.declared.is_empty() {
                    true => "-".into(),
                    false => r.declared.join(","),
                },
                d.source.clone(),
                d.path.clone(),
            ]);
        }
        let widths: Vec<usize> = (0..6)
            .map(|c| {
                table
                    .iter()
                    .map(|r| r[c].chars().count())
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        let mut text = String::new();
        for row in &table {
            let line: Vec<String> = row
                .iter()
                .zip(&widths)
                .map(|(cell, w)| format!("{cell:w$}"))
                .collect();
            text += line.join("  ").trim_end();
            text.push('\n');
        }
        for r in rows.iter().filter(|r| r.description.problem.is_some()) {
            text += &format!(
                "{}: {}\n",
                r.description.name,
                r.description.problem.as_deref().unwrap_or_default()
            );
        }
        shell.text(&text)?;
    }
    Ok(if broken > 0 {
        exit::FAILURE
    } else {
        exit::SUCCESS
    })
}
