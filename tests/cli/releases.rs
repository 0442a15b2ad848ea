//! `taskctl history` and `taskctl rollback` where there are no releases,
//! and their usage errors. The release flow itself is tested on an
//! in-memory target in `crates/core/tests/releases.rs`.

use crate::harness::{profile, stderr};
use std::process::Output;

/// Runs `taskctl ARGS` in an empty directory with AWS settings that need
/// no server: listing releases must not touch the target at all.
fn taskctl(dir: &std::path::Path, args: &[&str]) -> Output {
    assert_cmd::Command::cargo_bin("taskctl")
        .expect("the taskctl binary is built for integration tests")
        .args(args)
        .current_dir(dir)
        .env("NO_COLOR", "1")
        .env("AWS_ACCESS_KEY_ID", "testing")
        .env("AWS_SECRET_ACCESS_KEY", "testing")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("CI", "1")
        .env_remove("AWS_PROFILE")
        .env_remove("TASKCTL_PROFILE")
        .env_remove("TASKCTL_ENV")
        .output()
        .expect("taskctl runs")
}

#[test]
fn usage_errors_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let production = profile("production.yaml");
    for args in [
        vec!["rollback", "--to", "0", "-p", &production],
        vec!["rollback", "--to", "latest", "-p", &production],
        vec!["rollback", "--approve", "-p", &production],
        vec!["rollback", "extra", "-p", &production],
        vec!["history", "--to", "1", "-p", &production],
    ] {
        let out = taskctl(dir.path(), &args);
        assert_eq!(out.status.code(), Some(64), "{args:?}: {}", stderr(&out));
    }
}
