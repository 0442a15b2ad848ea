//! Running the binary the way a user does, from the repository root.

use std::path::{Path, PathBuf};
use std::process::Output;

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Runs `taskctl ARGS` in the repository root with colors off.
pub fn taskctl(args: &[&str]) -> Output {
    assert_cmd::Command::cargo_bin("taskctl")
        .expect("the taskctl binary is built for integration tests")
        .args(args)
        .current_dir(repo_root())
        .env("NO_COLOR", "1")
        .env_remove("TASKCTL_PROFILE")
        .env_remove("TASKCTL_ENV")
        .output()
        .expect("taskctl runs")
}

pub fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A path relative to the repository root, as a user would type it.
pub fn relative(path: &Path) -> String {
    path.strip_prefix(repo_root())
        .unwrap_or(path)
        .display()
        .to_string()
}

/// Every shipped profile.
pub fn shipped_profiles() -> Vec<String> {
    let mut found: Vec<String> = std::fs::read_dir(repo_root().join("profiles"))
        .expect("profiles/ exists")
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .map(|p| relative(&p))
        .collect();
    found.sort();
    found
}

/// Runs `taskctl ARGS` in `dir` (where `.taskctl/` state is kept).
pub fn taskctl_in(dir: &Path, args: &[&str]) -> Output {
    assert_cmd::Command::cargo_bin("taskctl")
        .expect("the taskctl binary is built for integration tests")
        .args(args)
        .current_dir(dir)
        .env("NO_COLOR", "1")
        .env_remove("TASKCTL_PROFILE")
        .env_remove("TASKCTL_ENV")
        .output()
        .expect("taskctl runs")
}

/// The absolute path of a shipped profile.
pub fn profile(name: &str) -> String {
    repo_root()
        .join("profiles")
        .join(name)
        .display()
        .to_string()
}
