//! `taskctl version`.

use crate::cli::OutputFormat;
use crate::exit;
use crate::ui::Shell;
use serde::Serialize;

#[derive(Serialize)]
struct Version {
    taskctl: &'static str,
    profile_api_version: &'static str,
    target: String,
}

pub fn exec(shell: &mut Shell) -> anyhow::Result<u8> {
    let v = Version {
        taskctl: env!("CARGO_PKG_VERSION"),
        profile_api_version: taskctl_core::profile::API_VERSION,
        target: format!("{}-{}", std::env::consts::ARCH, std::env::consts::OS),
    };
    match shell.format() {
        OutputFormat::Table => shell.text(&format!(
            "taskctl {} (profiles {}, {})\n",
            v.taskctl, v.profile_api_version, v.target
        ))?,
        _ => shell.data(&v)?,
    }
    Ok(exit::SUCCESS)
}
