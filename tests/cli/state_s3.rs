//! The S3 state backend through the CLI, against the moto server of
//! `scripts/test-env.sh` (set `TASKCTL_TEST_AWS_ENDPOINT`): two concurrent
//! deploys of one environment with `state: {backend: s3}`, `lock status`,
//! `lock break` and `audit`, and the errors a user meets first. Buckets and
//! lock objects are made and read with boto3, an independent client.
//!
//! Every test uses a bucket of its own.

use crate::harness::{repo_root, stderr, stdout};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

fn moto() -> String {
    std::env::var("TASKCTL_TEST_AWS_ENDPOINT").expect(
        "TASKCTL_TEST_AWS_ENDPOINT is not set: these tests need the moto server; run them with scripts/test.sh, or `eval \"$(scripts/test-env.sh up)\"` first",
    )
}

fn python() -> PathBuf {
    std::env::var("TASKCTL_TEST_ENV_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| {
            PathBuf::from(std::env::var("HOME").unwrap()).join(".cache/taskctl-test-env")
        })
        .join("venv/bin/python")
}

/// Runs a boto3 snippet with `s3` (a client on moto) and `bucket` defined;
/// returns what it prints.
fn boto3(bucket: &str, code: &str) -> String {
    let program = format!(
        "import boto3, json, sys\n\
         s3 = boto3.client('s3', endpoint_url=sys.argv[1], region_name='us-west-2', \
         aws_access_key_id='testing', aws_secret_access_key='testing')\n\
         bucket = sys.argv[2]\n{code}"
    );
    let out = Command::new(python())
        .arg("-c")
        .arg(program)
        .arg(moto())
        .arg(bucket)
        .output()
        .expect("the test-env venv's python runs (scripts/test-env.sh up)");
    assert!(
        out.status.success(),
        "boto3: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

struct Env {
    dir: tempfile::TempDir,
    name: String,
    bucket: String,
    profile: PathBuf,
}

impl Env {
    /// The production profile under a fresh name, its state in a fresh
    /// bucket (created unless `create_bucket` is false).
    fn new(prefix: &str, create_bucket: bool) -> Env {
        let dir = tempfile::tempdir().unwrap();
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        let name = format!("{prefix}-{:x}{:x}", std::process::id(), nanos);
        let bucket = format!("taskctl-{name}");
        let production = repo_root().join("profiles/production.yaml");
        let profile = dir.path().join("env.yaml");
        std::fs::write(
            &profile,
            format!(
                "apiVersion: taskctl.dev/v1\nkind: Profile\ninclude: [{}]\nmetadata:\n  name: {name}\n\
                 state:\n  backend: s3\n  s3: {{bucket: {bucket}, prefix: teams/ops}}\n",
                production.display()
            ),
        )
        .unwrap();
        if create_bucket {
            boto3(
                &bucket,
                "s3.create_bucket(Bucket=bucket, CreateBucketConfiguration={'LocationConstraint': 'us-west-2'})",
            );
        }
        Env {
            dir,
            name,
            bucket,
            profile,
        }
    }

    fn lock_key(&self) -> String {
        format!("teams/ops/{}/production/lock.json", self.name)
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(assert_cmd::cargo::cargo_bin("taskctl"));
        cmd.args(args)
            .arg("-p")
            .arg(&self.profile)
            .current_dir(self.dir.path())
            .env("NO_COLOR", "1")
            .env("AWS_ENDPOINT_URL", moto())
            .env("AWS_ACCESS_KEY_ID", "testing")
            .env("AWS_SECRET_ACCESS_KEY", "testing")
            .env("AWS_REGION", "us-west-2")
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .env_remove("AWS_PROFILE")
            .env_remove("TASKCTL_PROFILE")
            .env_remove("TASKCTL_ENV")
            .stdin(Stdio::null());
        cmd
    }

    fn run(&self, args: &[&str]) -> Output {
        self.command(args).output().unwrap()
    }

    fn json(&self, args: &[&str]) -> Value {
        let out = self.run(&[args, &["-o", "json"]].concat());
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
        serde_json::from_slice(&out.stdout).unwrap()
    }

    fn local_state(&self) -> PathBuf {
        self.dir.path().join(".taskctl")
    }
}

fn no_local_state(dir: &Path) {
    assert!(
        !dir.exists(),
        "the s3 backend wrote local state in {}",
        dir.display()
    );
}

#[test]
fn a_second_concurrent_deploy_with_s3_state_is_refused_and_told_who_holds_it_since_when() {
    let env = Env::new("s3lock", true);
    let first = env
        .command(&["deploy", "--yes", "--only", "infrastructure"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The first deploy's lease, as another machine would find it in S3.
    let started = Instant::now();
    let lease = loop {
        let found = boto3(
            &env.bucket,
            &format!(
                "try:\n    print(s3.get_object(Bucket=bucket, Key='{}')['Body'].read().decode())\n\
                 except s3.exceptions.NoSuchKey:\n    pass",
                env.lock_key()
            ),
        );
        if !found.trim().is_empty() {
            break serde_json::from_str::<Value>(&found).unwrap();
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the first deploy never took the lock"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let second = env.run(&["deploy", "--yes", "--only", "infrastructure"]);
    let first_out = first.wait_with_output().unwrap();
    assert!(
        first_out.status.success(),
        "{}",
        String::from_utf8_lossy(&first_out.stderr)
    );
    assert_eq!(second.status.code(), Some(1), "{}", stderr(&second));
    let err = stderr(&second);
    let holder = lease["holder"].as_str().unwrap();
    let run = lease["run_id"].as_str().unwrap();
    assert!(
        err.contains(&format!(
            "{}/production is locked by {holder} (run {run}, deploy since ",
            env.name
        )),
        "{err}"
    );
    // Released on exit; the journal and audit log are in the bucket.
    assert!(env.json(&["status"])["lock"].is_null());
    let journal = boto3(
        &env.bucket,
        &format!(
            "r = s3.list_objects_v2(Bucket=bucket, Prefix='teams/ops/{}/production/journal/')\n\
             print(r['KeyCount'])",
            env.name
        ),
    );
    assert!(
        journal.trim().parse::<u32>().unwrap() > 10,
        "journal objects: {journal}"
    );
    let status = env.json(&["status"]);
    assert_eq!(status["last_run"]["outcome"], "succeeded", "{status:#}");
    no_local_state(&env.local_state());
    let out = env.run(&["destroy", "--yes", "--only", "infrastructure"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
}

#[test]
fn lock_status_and_an_audited_break_against_s3() {
    let env = Env::new("s3break", true);
    let out = env.run(&["lock", "status"]);
    assert_eq!(
        stdout(&out),
        format!("{}/production is not locked\n", env.name)
    );

    // A lease held elsewhere (another machine, so never "orphaned" here).
    boto3(
        &env.bucket,
        &format!(
            "import time\nnow = int(time.time())\n\
             s3.put_object(Bucket=bucket, Key='{}', Body=json.dumps({{'holder': 'alice@build-7', 'pid': 4242, \
             'run_id': 'r-other', 'operation': 'deploy', 'started_at': now - 60, 'expires_at': now + 3600}}))",
            env.lock_key()
        ),
    );
    let out = env.run(&["lock", "status"]);
    let text = stdout(&out);
    assert!(
        text.contains("is locked by alice@build-7 (pid 4242, deploy run r-other) since "),
        "{text}"
    );
    assert_eq!(env.json(&["status"])["lock"]["run_id"], "r-other");

    // Not confirmed (no terminal, no --yes): refused, the lock stays.
    let out = env.run(&["lock", "break", "--reason", "stuck"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert_eq!(env.json(&["lock", "status"])["run_id"], "r-other");

    let out = env.run(&["lock", "break", "--reason", "build-7 crashed", "--yes"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("removed the lock of alice@build-7 (run r-other)"),
        "{}",
        stderr(&out)
    );
    assert!(env.json(&["lock", "status"]).is_null());

    let audit = env.json(&["audit"]);
    let entries = audit.as_array().unwrap();
    assert_eq!(entries.len(), 1, "{audit:#}");
    assert_eq!(entries[0]["action"], "lock_break");
    assert_eq!(entries[0]["run_id"], "r-other");
    let detail = entries[0]["detail"].as_str().unwrap();
    assert!(
        detail.contains("broke the lock of alice@build-7") && detail.contains("build-7 crashed"),
        "{detail}"
    );
    let out = env.run(&["audit"]);
    assert!(stdout(&out).contains("lock_break"), "{}", stdout(&out));
    no_local_state(&env.local_state());
}

#[test]
fn a_missing_bucket_and_missing_credentials_are_one_clear_line() {
    let env = Env::new("s3err", false);
    let out = env.run(&["lock", "status"]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains(&format!("the state bucket `{}` does not exist", env.bucket))
            && err.contains("state.s3.bucket"),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");

    let empty = env.dir.path().join("empty");
    std::fs::write(&empty, "").unwrap();
    let out = env
        .command(&["status"])
        .env_remove("AWS_ACCESS_KEY_ID")
        .env_remove("AWS_SECRET_ACCESS_KEY")
        .env("AWS_SHARED_CREDENTIALS_FILE", &empty)
        .env("AWS_CONFIG_FILE", &empty)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains("no AWS credentials for the state bucket")
            && err.contains("AWS_ACCESS_KEY_ID"),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");
}
