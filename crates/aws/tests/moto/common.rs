//! Shared set-up: clients pointed at moto through the standard environment
//! variables, unique environments, the production profile.

use std::hash::{BuildHasher, Hasher, RandomState};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::Once;
use std::time::Duration;
use taskctl_aws::{Aws, DestroyOptions, Environment, Progress, StackSpec, WaitOptions};
use taskctl_core::engine::{self, Action, FieldDiff, Graph, RetryPolicy, Run};
use taskctl_core::events::{Event, Operation, Recorder, RunOutcome, StepOutcome};
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

/// What a run did to one resource: its id in the step graph without the
/// `aws/` prefix (`vpc`, `subnet/public/us-west-2a`), and the change.
#[derive(Debug, Clone)]
pub struct Done {
    pub resource: String,
    pub action: Action,
    pub diffs: Vec<FieldDiff>,
}

/// A run of the infrastructure's step graph (the one `taskctl deploy`
/// runs), journaled in a scratch directory.
fn run(operation: Operation) -> (Run, tempfile::TempDir, Arc<Recorder>) {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Arc::new(taskctl_core::state::LocalStore::new(dir.path(), "test/env"));
    let sink = Arc::new(Recorder::default());
    let run = Run {
        run_id: Run::new_id(),
        environment: "test/env".into(),
        operation,
        parallelism: 10,
        grace: Duration::from_secs(5),
        retry: RetryPolicy {
            min_delay: Duration::from_millis(50),
            max_delay: Duration::from_millis(500),
            max_retries: 4,
        },
        store,
        sink: sink.clone(),
        cancel: tokio_util::sync::CancellationToken::new(),
        saved_plan: None,
        resumes: None,
    };
    (run, dir, sink)
}

fn graph(aws: &Aws, profile: &Profile) -> Graph {
    let spec = StackSpec::from_profile(profile, "").expect("specs");
    Graph::new(taskctl_aws::provider::steps(&Arc::new(aws.clone()), spec)).expect("graph")
}

/// Plans `profile`'s infrastructure and, with `apply`, applies the plan,
/// as `taskctl deploy --only infrastructure` does: one entry per resource,
/// sorted by id.
pub async fn converge(aws: &Aws, profile: &Profile, apply: bool) -> Vec<Done> {
    let graph = graph(aws, profile);
    let (run, _dir, _) = run(Operation::Deploy);
    let planned = engine::plan(&graph, &run).await;
    assert_eq!(planned.outcome, RunOutcome::Succeeded, "plan: {planned:#?}");
    let mut done: Vec<Done> = planned
        .steps
        .iter()
        .filter(|s| s.id.as_str() != "aws/environment")
        .filter_map(|s| {
            s.change.as_ref().map(|c| Done {
                resource: s.id.as_str().trim_start_matches("aws/").to_string(),
                action: c.action,
                diffs: c.diffs.clone(),
            })
        })
        .collect();
    if apply && planned.has_changes() {
        let applied = engine::apply(&graph, &run, &planned)
            .await
            .expect("journal");
        assert_eq!(
            applied.outcome,
            RunOutcome::Succeeded,
            "apply: {applied:#?}"
        );
    }
    done.sort_by(|a, b| a.resource.cmp(&b.resource));
    done
}

/// Destroys `profile`'s infrastructure through the step graph; the
/// resources removed, in the order their steps finished.
pub async fn destroy(aws: &Aws, profile: &Profile) -> Vec<String> {
    let graph = graph(aws, profile);
    let (run, _dir, sink) = run(Operation::Destroy);
    let planned = engine::plan(&graph, &run).await;
    assert_eq!(planned.outcome, RunOutcome::Succeeded, "plan: {planned:#?}");
    let report = engine::destroy(&graph, &run, &planned)
        .await
        .expect("journal");
    assert_eq!(
        report.outcome,
        RunOutcome::Succeeded,
        "destroy: {report:#?}"
    );
    let changed: Vec<String> = report
        .steps
        .iter()
        .filter(|s| s.outcome == StepOutcome::Changed)
        .map(|s| s.id.to_string())
        .collect();
    sink.events()
        .into_iter()
        .filter_map(|e| match e {
            Event::StepFinished { step, .. } if changed.contains(&step.to_string()) => {
                Some(step.to_string().trim_start_matches("aws/").to_string())
            }
            _ => None,
        })
        .filter(|s| s != "environment")
        .collect()
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
