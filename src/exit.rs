//! Exit codes, documented in the README. Scripts and CI depend on them.

use std::process::ExitCode;

/// Everything asked was done (or, for checks, everything passed).
pub const SUCCESS: u8 = 0;
/// The operation failed, or a check found errors.
pub const FAILURE: u8 = 1;
/// The command line was wrong (EX_USAGE of sysexits.h): distinct from
/// [`CHANGES_PENDING`], so a CI step can tell a typo from a pending change.
pub const USAGE: u8 = 64;
/// `plan --detailed-exitcode`: the plan has changes.
pub const CHANGES_PENDING: u8 = 2;
/// Stopped by Ctrl-C or SIGTERM (128 + SIGINT).
pub const INTERRUPTED: u8 = 130;

pub fn code(n: u8) -> ExitCode {
    ExitCode::from(n)
}
