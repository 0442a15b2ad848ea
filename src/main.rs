//! taskctl: the command-line front of the Task Execution Layer's
//! provisioner.
//!
//! This binary only parses arguments, builds the context, calls the core and
//! renders what comes back: `cli` holds the arguments, `commands` one module
//! per command, `ui` all output. The work itself is in `crates/core`.

mod cli;
mod commands;
mod context;
mod eks;
mod exit;
mod providers;
mod redact;
mod secrets;
mod ui;

use clap::Parser;
use std::process::ExitCode;

fn main() -> ExitCode {
    let cli = match cli::Cli::try_parse() {
        Ok(cli) => cli,
        // `--help` and `--version` print to stdout and succeed; a wrong
        // command line is 64 (EX_USAGE), never 2, which `plan
        // --detailed-exitcode` uses for "changes pending".
        Err(e) => {
            let _ = e.print();
            return exit::code(if e.use_stderr() {
                exit::USAGE
            } else {
                exit::SUCCESS
            });
        }
    };
    let mut shell = ui::Shell::new(&cli.global);
    let ctx = context::Context::new(cli.global);
    match commands::run(&ctx, &mut shell, cli.command) {
        Ok(code) => exit::code(code),
        // `taskctl render manifests | head`: the reader left; not an error.
        Err(err)
            if err.chain().any(|c| {
                c.downcast_ref::<std::io::Error>()
                    .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe)
            }) =>
        {
            exit::code(exit::SUCCESS)
        }
        Err(err) => {
            shell.error_chain(&err);
            exit::code(exit::FAILURE)
        }
    }
}
