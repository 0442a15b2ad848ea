//! `taskctl schema`: the profile's JSON Schema, generated from the types.

use crate::exit;
use crate::ui::Shell;

pub fn exec(shell: &mut Shell) -> anyhow::Result<u8> {
    let schema = taskctl_core::profile::json_schema();
    shell.text(&format!("{}\n", serde_json::to_string_pretty(&schema)?))?;
    Ok(exit::SUCCESS)
}
