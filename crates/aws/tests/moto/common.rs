//! Shared set-up: clients pointed at moto through the standard environment
//! variables, unique environments, the production profile.

use std::hash::{BuildHasher, Hasher, RandomState};
use std::path::PathBuf;
use std::sync::Once;
use std::time::Duration;
use taskctl_aws::{Aws, DestroyOptions, EnsureOptions, Environment, Mode, Progress, WaitOptions};
use taskctl_core::profile::{LoadOptions, Profile, load};

pub const REGION: &str = "us-west-2";

static ENV: Once = Once::new();

/// moto's endpoint, or a failure that says how to start it.
pub fn endpoint() -> String {
    match std::env::var("TASKCTL_TEST_AWS_ENDPOINT") {
        Ok(url) if !url.is_empty() => url,
        _ => panic!(
            "TASKCTL_TEST_AWS_ENDPOINT is not set: run `scripts/test-env.sh up` and \
             `eval \"$(scripts/test-env.sh env)\"` (from the repository root) before these tests"
        ),
    }
}

/// Clients built by the production path, `Aws::from_env`, pointed at moto
/// through `AWS_ENDPOINT_URL` with static test credentials.
pub async fn aws() -> Aws {
    let url = endpoint();
    ENV.call_once(|| {
        // SAFETY: done once, before any test of this process builds a client
        // (every test comes through here first and waits on the Once), and
        // always with the same values.
        unsafe {
            std::env::set_var("AWS_ENDPOINT_URL", &url);
            std::env::set_var("AWS_ACCESS_KEY_ID", "testing");
            std::env::set_var("AWS_SECRET_ACCESS_KEY", "testing");
            std::env::remove_var("AWS_SESSION_TOKEN");
            std::env::remove_var("AWS_PROFILE");
            std::env::set_var("AWS_EC2_METADATA_DISABLED", "true");
        }
    });
    Aws::from_env(REGION).await.expect("clients")
}

/// A random lowercase suffix, unique per test.
pub fn suffix() -> String {
    let n = RandomState::new().build_hasher().finish();
    format!("{:010x}", n & 0xff_ffff_ffff)
}

/// A fresh environment no other test shares.
pub fn environment() -> Environment {
    Environment::new(format!("t{}", suffix()), "test")
}

/// The shipped production profile, renamed to a fresh environment.
pub fn production_profile() -> Profile {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../profiles/production.yaml");
    let vars = |name: &str| std::env::var(name).ok();
    let loaded = load(&LoadOptions {
        files: vec![path],
        environment: None,
        vars: &vars,
    });
    let mut profile = loaded
        .valid_profile()
        .cloned()
        .expect("production profile is valid");
    profile.metadata.name = format!("t{}", suffix());
    profile
}

pub fn fast_wait() -> WaitOptions {
    WaitOptions::fast(Duration::from_secs(30))
}

pub fn ensure_options(mode: Mode) -> EnsureOptions {
    EnsureOptions {
        mode,
        nat_wait: fast_wait(),
        cluster_wait: fast_wait(),
        node_group_wait: fast_wait(),
    }
}

pub fn destroy_options() -> DestroyOptions {
    DestroyOptions::fast(Duration::from_secs(30))
}

pub fn ignore_progress() -> impl FnMut(&Progress) + Send {
    |_: &Progress| {}
}

/// Runs the boto3 lister (an independent client) for one environment.
pub fn list_with_boto3(environment: &Environment) -> serde_json::Value {
    let dir = std::env::var("TASKCTL_TEST_ENV_DIR").unwrap_or_else(|_| {
        format!(
            "{}/.cache/taskctl-test-env",
            std::env::var("HOME").unwrap_or_default()
        )
    });
    let python = PathBuf::from(dir).join("venv/bin/python");
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/list_by_tag.py");
    let out = std::process::Command::new(&python)
        .arg(&script)
        .arg(endpoint())
        .arg(REGION)
        .arg(environment.tag_value())
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run {} (run scripts/test-env.sh up): {e}",
                python.display()
            )
        });
    assert!(
        out.status.success(),
        "list_by_tag.py failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("json from list_by_tag.py")
}

/// Number of items of `kind` in a boto3 listing.
pub fn count(listing: &serde_json::Value, kind: &str) -> usize {
    listing[kind].as_array().map_or(0, Vec::len)
}
