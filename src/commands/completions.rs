//! `taskctl completions SHELL`.

use crate::cli::{Cli, CompletionsArgs};
use crate::exit;
use clap::CommandFactory;

pub fn exec(args: CompletionsArgs) -> anyhow::Result<u8> {
    let mut cmd = Cli::command();
    clap_complete::generate(args.shell, &mut cmd, "taskctl", &mut std::io::stdout());
    Ok(exit::SUCCESS)
}
