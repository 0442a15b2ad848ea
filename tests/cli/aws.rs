//! The `aws` target end to end through the CLI, against the moto server of
//! `scripts/test-env.sh` (set `TASKCTL_TEST_AWS_ENDPOINT`). Results are
//! checked with an independent client: boto3, through
//! `crates/aws/tests/list_by_tag.py`.
//!
//! moto's state is shared by every test, so each test deploys its own
//! environment (a unique `metadata.name`) and only looks at what carries
//! that environment's tag.

use crate::harness::{ProductionSecrets, repo_root, stderr, stdout, vault};
use kube_double::KubeDouble;
use serde_json::Value;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

fn moto() -> String {
    std::env::var("TASKCTL_TEST_AWS_ENDPOINT").expect(
        "TASKCTL_TEST_AWS_ENDPOINT is not set: these tests need the moto server; run them with scripts/test.sh, or `eval \"$(scripts/test-env.sh up)\"` first",
    )
}

struct Env {
    dir: tempfile::TempDir,
    name: String,
    profiles: Vec<PathBuf>,
    /// The cluster's API server, when the test goes beyond the
    /// infrastructure: kube-double, served by its own runtime (dropped
    /// after it) while the test thread waits for taskctl.
    cluster: Option<KubeDouble>,
    _runtime: Option<tokio::runtime::Runtime>,
    /// The values of the profile's secret references, at this test's own
    /// Vault paths.
    _secrets: ProductionSecrets,
}

impl Env {
    /// A fresh environment from the production profile with its own name,
    /// for tests of the infrastructure alone (`--only infrastructure`):
    /// moto's clusters have no API server.
    fn new(prefix: &str) -> Env {
        Env::new_with(prefix, true)
    }

    /// [`Env::new`]; with `written` false, no value is written for the
    /// profile's references (a Vault taskctl runs makes its own).
    fn new_with(prefix: &str, written: bool) -> Env {
        let dir = tempfile::tempdir().unwrap();
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        let name = format!("{prefix}-{:x}{:x}", std::process::id(), nanos);
        let production = repo_root().join("profiles/production.yaml");
        let secrets = if written {
            ProductionSecrets::write(format!("taskctl/test/{name}"))
        } else {
            ProductionSecrets::empty(format!("taskctl/test/{name}"))
        };
        let overlay = dir.path().join("env.yaml");
        std::fs::write(
            &overlay,
            format!(
                "apiVersion: taskctl.dev/v1\nkind: Profile\ninclude: [{}]\nmetadata:\n  name: {name}\n{}{}",
                production.display(),
                secrets.layer(),
                crate::harness::NO_PROCESSES_BEHIND_PODS,
            ),
        )
        .unwrap();
        Env {
            dir,
            name,
            profiles: vec![overlay],
            cluster: None,
            _runtime: None,
            _secrets: secrets,
        }
    }

    /// [`Env::new`] whose cluster's API server is kube-double, reached
    /// through `target.aws.api_server` (as a tunnel to a private endpoint
    /// would be), so the in-cluster layers deploy too.
    fn with_cluster(prefix: &str) -> Env {
        Env::with_cluster_from(Env::new(prefix), kube_double::Config::default())
    }

    fn with_cluster_from(mut env: Env, config: kube_double::Config) -> Env {
        let runtime = tokio::runtime::Runtime::new().unwrap();
        let double = runtime
            .block_on(KubeDouble::start(kube_double::Config {
                ready_delay: Duration::from_millis(20),
                ..config
            }))
            .expect("kube-double listens");
        env.layer(
            "tunnel.yaml",
            &format!(
                "apiVersion: taskctl.dev/v1\nkind: Profile\ntarget:\n  aws:\n    region: us-west-2\n    api_server: {}\n",
                double.url()
            ),
        );
        env.cluster = Some(double);
        env._runtime = Some(runtime);
        env
    }

    fn cluster(&self) -> &KubeDouble {
        self.cluster.as_ref().expect("an Env::with_cluster")
    }

    /// Adds a profile layer with `yaml` over the environment.
    fn layer(&mut self, file: &str, yaml: &str) {
        let path = self.dir.path().join(file);
        std::fs::write(&path, yaml).unwrap();
        self.profiles.push(path);
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(assert_cmd::cargo::cargo_bin("taskctl"));
        cmd.args(args);
        for p in &self.profiles {
            cmd.arg("-p").arg(p);
        }
        cmd.current_dir(self.dir.path())
            .env("NO_COLOR", "1")
            .env("AWS_ENDPOINT_URL", moto())
            .env("AWS_ACCESS_KEY_ID", "testing")
            .env("AWS_SECRET_ACCESS_KEY", "testing")
            .env("AWS_REGION", "us-west-2")
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .env("TASKCTL_TEMPLATES", repo_root().join("templates"))
            // The rollback conditions are watched, briefly.
            .env("TASKCTL_WATCH_WINDOW", "1s")
            .env("VAULT_ADDR", vault().0)
            .env("VAULT_TOKEN", vault().1)
            .env_remove("AWS_PROFILE")
            .env_remove("TASKCTL_PROFILE")
            .env_remove("TASKCTL_ENV");
        cmd
    }

    fn run(&self, args: &[&str]) -> Output {
        self.command(args).stdin(Stdio::null()).output().unwrap()
    }

    fn tag(&self) -> String {
        format!("{}/production", self.name)
    }

    fn journal(&self) -> PathBuf {
        self.dir
            .path()
            .join(format!(".taskctl/{}/production/journal.jsonl", self.name))
    }

    /// Everything carrying this environment's tag, as boto3 sees it.
    fn listing(&self) -> Value {
        let python = std::env::var("TASKCTL_TEST_ENV_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|_| {
                PathBuf::from(std::env::var("HOME").unwrap()).join(".cache/taskctl-test-env")
            })
            .join("venv/bin/python");
        let script = repo_root().join("crates/aws/tests/list_by_tag.py");
        let out = Command::new(python)
            .arg(script)
            .arg(moto())
            .arg("us-west-2")
            .arg(self.tag())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "list_by_tag.py: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    }
}

fn count(listing: &Value, kind: &str) -> usize {
    listing[kind].as_array().map(Vec::len).unwrap_or(0)
}

fn live_nat_gateways(listing: &Value) -> usize {
    listing["nat_gateways"]
        .as_array()
        .map(|n| {
            n.iter()
                .filter(|g| g["state"] != "deleted" && g["state"] != "deleting")
                .count()
        })
        .unwrap_or(0)
}

/// Exactly one of everything the production profile describes.
fn assert_one_of_each(l: &Value) {
    assert_eq!(count(l, "vpcs"), 1, "{l:#}");
    assert_eq!(count(l, "subnets"), 4, "{l:#}");
    assert_eq!(count(l, "internet_gateways"), 1, "{l:#}");
    assert_eq!(live_nat_gateways(l), 2, "one NAT gateway per zone: {l:#}");
    assert_eq!(count(l, "clusters"), 1, "{l:#}");
    assert_eq!(
        l["clusters"][0]["node_groups"].as_array().unwrap().len(),
        2,
        "{l:#}"
    );
}

/// Checks one NDJSON line against the schema documented in the README.
fn check_event(line: &str) -> Value {
    let v: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
    assert!(
        v["ts"].as_str().is_some_and(|t| t.contains('T')),
        "ts: {line}"
    );
    let required: &[&str] = match v["event"].as_str().unwrap_or_default() {
        "run_started" => &["run_id", "operation", "environment", "steps"],
        "step_planned" => &["step", "kind", "action", "reason"],
        "step_started" => &["step", "kind", "action"],
        "step_progress" => &["step", "message"],
        "step_retry" => &["step", "attempt", "delay_ms", "error"],
        "step_finished" => &["step", "outcome", "duration_ms"],
        "run_finished" => &[
            "run_id",
            "outcome",
            "duration_ms",
            "changed",
            "unchanged",
            "failed",
            "skipped",
        ],
        "release_recorded" => &["revision", "status", "description"],
        "verification_started" => &["revision"],
        "check_finished" => &["name", "kind", "passed", "observed", "elapsed_s"],
        "verification_finished" => &["revision", "passed", "checks", "failed"],
        "rollback_started" => &["automatic", "to", "reason"],
        "rollback_finished" => &["automatic", "to", "outcome"],
        other => panic!("unknown event `{other}`: {line}"),
    };
    for key in required {
        assert!(!v[key].is_null(), "`{key}` missing: {line}");
    }
    v
}

/// The AWS operations a run logged (with `RUST_LOG=taskctl_aws::call_log=trace`),
/// split into read-only and mutating ones.
fn aws_calls(log: &str) -> (Vec<String>, Vec<String>) {
    let mut reads = Vec::new();
    let mut writes = Vec::new();
    for line in log.lines().filter(|l| l.contains("aws call")) {
        let field = |name: &str| {
            let start = line.find(&format!("{name}=\""))? + name.len() + 2;
            let end = start + line[start..].find('"')?;
            Some(line[start..end].to_owned())
        };
        let (Some(op), Some(mutating)) = (
            field("operation"),
            line.find("mutating=true")
                .map(|_| true)
                .or(line.find("mutating=false").map(|_| false)),
        ) else {
            panic!("unreadable call log line: {line}");
        };
        if mutating {
            writes.push(op)
        } else {
            reads.push(op)
        }
    }
    (reads, writes)
}

fn events(out: &Output) -> Vec<Value> {
    stdout(out).lines().map(check_event).collect()
}

/// The whole `aws` target: infrastructure on moto, then the in-cluster
/// layers on kube-double, authenticated with EKS tokens from `taskctl
/// eks-token` as the kubeconfig's credential plugin; a re-plan finds
/// nothing to do; destroy empties the cluster before removing it.
#[test]
fn plan_deploy_replan_and_destroy() {
    let env = Env::with_cluster("e2e");
    let plan = env.run(&["plan", "--detailed-exitcode", "-o", "json"]);
    assert_eq!(
        plan.status.code(),
        Some(2),
        "changes pending on an empty account: {}",
        stderr(&plan)
    );
    let planned: Vec<Value> = events(&plan)
        .into_iter()
        .filter(|e| e["event"] == "step_planned")
        .collect();
    let creates: Vec<&str> = planned
        .iter()
        .filter(|e| e["action"] == "create")
        .map(|e| e["step"].as_str().unwrap())
        .collect();
    // One step per resource: 2 roles, VPC, 4 subnets, IGW, 2 EIPs, 2 NATs,
    // 3 route tables, SG, cluster, 2 node groups, the agent's ECR
    // repository and image; then one per apply level in the cluster, which
    // does not exist yet.
    let aws: Vec<&&str> = creates.iter().filter(|s| s.starts_with("aws/")).collect();
    assert_eq!(aws.len(), 21, "every resource is listed: {planned:#?}");
    let levels: Vec<&&str> = creates
        .iter()
        .filter(|s| s.starts_with("kubernetes/"))
        .collect();
    assert_eq!(
        levels,
        [
            &"kubernetes/namespaces",
            &"kubernetes/rbac",
            &"kubernetes/config",
            &"kubernetes/storage",
            &"kubernetes/secrets",
            &"kubernetes/workloads",
            &"kubernetes/autoscalers"
        ],
        "{planned:#?}"
    );
    for id in [
        "aws/vpc",
        "aws/subnet/private/us-west-2b",
        "aws/nat-gateway/us-west-2a",
        "aws/cluster",
        "aws/node-group/gpu",
    ] {
        assert!(creates.contains(&id), "{id} in {creates:?}");
    }
    let step = |id: &str| planned.iter().find(|e| e["step"] == id).unwrap().clone();
    let deps = step("aws/cluster")["depends_on"].to_string();
    assert!(
        deps.contains("aws/security-group/cluster") && deps.contains("aws/iam-role/cluster"),
        "{deps}"
    );
    let deps = step("kubernetes/namespaces")["depends_on"].to_string();
    assert!(
        deps.contains("aws/cluster") && deps.contains("aws/node-group/gpu"),
        "the cluster and its nodes come first: {deps}"
    );
    assert_eq!(count(&env.listing(), "vpcs"), 0, "plan makes nothing");
    assert!(
        !env.cluster()
            .paths()
            .iter()
            .any(|p| p.contains("task-executor")),
        "nor anything in the cluster"
    );

    let deploy = env.run(&["deploy", "--yes", "-o", "json"]);
    assert_eq!(deploy.status.code(), Some(0), "{}", stderr(&deploy));
    let stream = events(&deploy);
    let finished = stream
        .iter()
        .find(|e| e["event"] == "run_finished")
        .unwrap();
    assert_eq!(finished["outcome"], "succeeded");
    assert_eq!(finished["changed"], 28);

    let l = env.listing();
    assert_one_of_each(&l);
    assert_eq!(l["vpcs"][0]["cidr"], "10.0.0.0/16");
    assert_eq!(l["vpcs"][0]["dns_hostnames"], true);
    let gpu = l["clusters"][0]["node_groups"]
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["name"].as_str().unwrap().contains("gpu"))
        .unwrap()
        .clone();
    assert!(
        gpu["taints"].to_string().contains("nvidia.com/gpu"),
        "{gpu:#}"
    );
    assert_eq!(gpu["instance_types"][0], "g5.xlarge");

    // The platform and the agents are in the cluster, released as
    // revision 1, and every request carried an EKS token.
    let cluster = env.cluster();
    for path in [
        "/apis/apps/v1/namespaces/agent-system/deployments/task-executor",
        "/apis/apps/v1/namespaces/messaging/statefulsets/rabbitmq",
        "/apis/autoscaling/v2/namespaces/agent-system/horizontalpodautoscalers/task-executor",
    ] {
        assert!(cluster.object(path).is_some(), "{path} was applied");
    }
    check_eks_tokens(cluster);
    // `status` on the aws target lists the cluster's pods, as on kubernetes.
    let status = env.run(&["status", "-o", "json"]);
    assert_eq!(status.status.code(), Some(0), "{}", stderr(&status));
    let status: Value = serde_json::from_slice(&status.stdout).unwrap();
    assert!(status["workloads_error"].is_null(), "{status:#}");
    let pods = status["workloads"].as_array().expect("pods listed");
    assert!(
        pods.iter().any(|p| p["name"]
            .as_str()
            .unwrap_or_default()
            .contains("/task-executor")),
        "{status:#}"
    );
    let history = env.run(&["history", "-o", "json"]);
    assert_eq!(history.status.code(), Some(0), "{}", stderr(&history));
    let history: Value = serde_json::from_slice(&history.stdout).unwrap();
    assert_eq!(history[0]["revision"], 1, "{history:#}");
    assert_eq!(history[0]["status"], "deployed", "{history:#}");

    // The kubeconfig goes where taskctl went: through the tunnel.
    let kubeconfig = env
        .dir
        .path()
        .join(format!(".taskctl/{}/production/kubeconfig", env.name));
    let config: Value =
        serde_norway::from_str(&std::fs::read_to_string(&kubeconfig).unwrap()).unwrap();
    assert_eq!(config["clusters"][0]["cluster"]["server"], cluster.url());
    assert_eq!(
        config["users"][0]["user"]["exec"]["args"][0], "eks-token",
        "{config:#}"
    );

    let replan = env.run(&["plan", "--detailed-exitcode"]);
    assert_eq!(
        replan.status.code(),
        Some(0),
        "no changes after deploy: {}",
        stderr(&replan)
    );
    cluster.clear_requests();
    let again = env
        .command(&["deploy", "--yes"])
        .env("RUST_LOG", "taskctl_aws::call_log=trace")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(again.status.code(), Some(0), "{}", stderr(&again));
    assert!(
        stderr(&again).contains("nothing to do"),
        "{}",
        stderr(&again)
    );
    let (reads, writes) = aws_calls(&stderr(&again));
    assert!(reads.len() >= 19, "every resource is looked at: {reads:?}");
    assert_eq!(writes, Vec::<String>::new(), "a re-deploy changes nothing");
    let patches: Vec<String> = cluster
        .requests()
        .into_iter()
        .filter(|r| r.method == "PATCH" && !r.path.contains("/leases/"))
        .map(|r| r.path)
        .collect();
    assert_eq!(patches, Vec::<String>::new(), "nor in the cluster");
    let dry = env
        .command(&["plan"])
        .env("RUST_LOG", "taskctl_aws::call_log=trace")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(aws_calls(&stderr(&dry)).1, Vec::<String>::new());

    let destroy = env.run(&["destroy", "--yes"]);
    assert_eq!(destroy.status.code(), Some(0), "{}", stderr(&destroy));
    let left: Vec<String> = cluster
        .paths()
        .into_iter()
        .filter(|p| p.contains("/deployments/") || p.contains("/statefulsets/"))
        .collect();
    assert_eq!(
        left,
        Vec::<String>::new(),
        "the workloads were deleted first"
    );
    let l = env.listing();
    for kind in [
        "vpcs",
        "subnets",
        "internet_gateways",
        "clusters",
        "security_groups",
        "route_tables",
    ] {
        assert_eq!(count(&l, kind), 0, "{kind} left after destroy: {l:#}");
    }
    assert_eq!(live_nat_gateways(&l), 0, "{l:#}");
}

/// Every request taskctl made to the cluster carried a bearer token as
/// EKS takes it: `k8s-aws-v1.` and the base64url of an STS
/// GetCallerIdentity URL presigned for the cluster's name.
fn check_eks_tokens(cluster: &KubeDouble) {
    use base64::Engine as _;
    let requests = cluster.requests();
    assert!(!requests.is_empty());
    for r in &requests {
        let token = r
            .authorization
            .as_deref()
            .and_then(|a| a.strip_prefix("Bearer k8s-aws-v1."))
            .unwrap_or_else(|| panic!("{} {} has no EKS bearer token", r.method, r.path));
        let url = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(token)
            .expect("base64url");
        let url = String::from_utf8(url).unwrap();
        assert!(
            url.contains("Action=GetCallerIdentity")
                && url.contains("X-Amz-Signature=")
                && url.contains("x-k8s-aws-id"),
            "a presigned GetCallerIdentity: {url}"
        );
    }
}

/// The `aws` target's releases are the cluster's contents: an upgrade of
/// the agents changes one object, and rolling back restores it without
/// touching the infrastructure. Before the cluster exists, there is no
/// release to show or roll back to.
#[test]
fn releases_live_in_the_cluster_and_a_rollback_leaves_the_infrastructure_alone() {
    let mut env = Env::with_cluster("rel");
    let history = env.run(&["history"]);
    assert_eq!(history.status.code(), Some(0), "{}", stderr(&history));
    assert!(
        stdout(&history).contains("no releases of"),
        "{}",
        stdout(&history)
    );
    let refused = env.run(&["rollback", "--yes", "--approve", "dana"]);
    assert_eq!(refused.status.code(), Some(1), "{}", stderr(&refused));

    let first = env.run(&["deploy", "--yes"]);
    assert_eq!(first.status.code(), Some(0), "{}", stderr(&first));
    env.layer(
        "upgrade.yaml",
        // An image of the user's own (no build: run as named).
        "apiVersion: taskctl.dev/v1\nkind: Profile\nagents:\n  - name: task-executor\n    image: task-executor:1.0.1\n    build: null\n",
    );
    let plan = env.run(&["plan", "-o", "json"]);
    let changes: Vec<Value> = events(&plan)
        .into_iter()
        .filter(|e| e["event"] == "step_planned" && e["action"] != "no_op")
        .collect();
    assert_eq!(changes.len(), 1, "{changes:#?}");
    assert_eq!(changes[0]["step"], "kubernetes/workloads");
    assert_eq!(
        changes[0]["diffs"][0]["field"],
        "Deployment agent-system/task-executor: spec.template.spec.containers[0].image"
    );
    let upgrade = env.run(&["deploy", "--yes"]);
    assert_eq!(upgrade.status.code(), Some(0), "{}", stderr(&upgrade));
    let image = |env: &Env| {
        env.cluster()
            .object("/apis/apps/v1/namespaces/agent-system/deployments/task-executor")
            .unwrap()
            .pointer("/spec/template/spec/containers/0/image")
            .cloned()
            .unwrap()
    };
    assert_eq!(image(&env), "task-executor:1.0.1");

    let rollback = env.run(&[
        "rollback",
        "--to",
        "1",
        "--yes",
        "--approve",
        "dana",
        "-o",
        "json",
    ]);
    assert_eq!(rollback.status.code(), Some(0), "{}", stderr(&rollback));
    let steps: Vec<String> = events(&rollback)
        .into_iter()
        .filter(|e| e["event"] == "step_planned")
        .map(|e| e["step"].as_str().unwrap().to_string())
        .collect();
    assert!(!steps.is_empty());
    // The cluster's contents, and the secrets they read (pinned: a
    // rollback never rotates); no AWS resource.
    assert!(
        steps
            .iter()
            .all(|s| s.starts_with("kubernetes/") || s.starts_with("secrets/")),
        "only the cluster's contents are restored: {steps:?}"
    );
    // Restored as release 1 ran it: the image taskctl pushed to ECR, by
    // the digest its pods reported.
    let restored = image(&env);
    assert!(
        restored.as_str().is_some_and(|i| i.starts_with(&format!(
            "123456789012.dkr.ecr.us-west-2.amazonaws.com/taskctl/{}-production/task-executor@sha256:",
            env.name
        ))),
        "{restored}"
    );
    let history = env.run(&["history", "-o", "json"]);
    let history: Value = serde_json::from_slice(&history.stdout).unwrap();
    let statuses: Vec<&str> = history
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["status"].as_str().unwrap())
        .collect();
    assert_eq!(
        statuses,
        ["superseded", "superseded", "deployed"],
        "{history:#}"
    );
    env.run(&["destroy", "--yes"]);
}

#[test]
fn a_scaling_change_is_one_in_place_update() {
    let mut env = Env::new("scale");
    let first = env.run(&["deploy", "--yes", "--only", "infrastructure"]);
    assert_eq!(first.status.code(), Some(0), "{}", stderr(&first));
    let before = env.listing();
    check_kubeconfig(&env, &before);
    env.layer("bigger.yaml", "apiVersion: taskctl.dev/v1\nkind: Profile\ncompute:\n  node_groups:\n    - name: worker\n      scaling: { min: 5, desired: 7, max: 10 }\n");
    let plan = env.run(&["plan", "-o", "json", "--only", "infrastructure"]);
    let changes: Vec<Value> = events(&plan)
        .into_iter()
        .filter(|e| e["event"] == "step_planned" && e["action"] != "no_op")
        .collect();
    assert_eq!(changes.len(), 1, "only the worker node group: {changes:#?}");
    assert_eq!(changes[0]["step"], "aws/node-group/worker");
    assert_eq!(changes[0]["action"], "update");
    let diffs = changes[0]["diffs"].as_array().unwrap();
    assert_eq!(diffs.len(), 1, "{diffs:#?}");
    assert_eq!(diffs[0]["field"], "scaling.desired");
    assert_eq!(
        (diffs[0]["from"].as_str(), diffs[0]["to"].as_str()),
        (Some("5"), Some("7"))
    );
    let deploy = env.run(&["deploy", "--yes", "--only", "infrastructure"]);
    assert_eq!(deploy.status.code(), Some(0), "{}", stderr(&deploy));
    let after = env.listing();
    let worker = |l: &Value| {
        l["clusters"][0]["node_groups"]
            .as_array()
            .unwrap()
            .iter()
            .find(|g| g["name"].as_str().unwrap().contains("worker"))
            .unwrap()
            .clone()
    };
    assert_eq!(worker(&after)["scaling"]["desiredSize"], 7);
    assert_eq!(
        worker(&after)["name"],
        worker(&before)["name"],
        "updated in place, not recreated"
    );
    assert_one_of_each(&after);
    env.run(&["destroy", "--yes", "--only", "infrastructure"]);
}

/// kill -9 at twelve different points of a deploy: right after the run
/// journals its 1st, 2nd … 6th intent (two rounds), so the kill lands
/// between "about to create X" and "X created" for a different resource
/// each time. Every re-run adopts what the killed one made, and the end
/// result has no duplicate.
#[test]
fn kill_9_at_many_points_converges_without_duplicates() {
    let env = Env::with_cluster("kill");
    let mut kills = Vec::new();
    for k in 0..12usize {
        let target = k % 6 + 1;
        let before = std::fs::read_to_string(env.journal())
            .map(|j| j.lines().count())
            .unwrap_or(0);
        let log = env.dir.path().join(format!("deploy-{k}.log"));
        let mut child = env
            .command(&["deploy", "--yes"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let started = Instant::now();
        let killed_at = loop {
            if child.try_wait().unwrap().is_some() {
                break None;
            }
            let intents: Vec<String> = std::fs::read_to_string(env.journal())
                .map(|j| {
                    j.lines()
                        .skip(before)
                        .filter(|l| l.contains("\"record\":\"intent\""))
                        .map(str::to_owned)
                        .collect()
                })
                .unwrap_or_default();
            if intents.len() >= target {
                child.kill().unwrap(); // SIGKILL
                child.wait().unwrap();
                break intents.last().cloned();
            }
            assert!(
                started.elapsed() < Duration::from_secs(180),
                "deploy {k} hangs: {}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(1));
        };
        if let Some(intent) = killed_at {
            let step: Value = serde_json::from_str(&intent).unwrap();
            kills.push(step["step"].as_str().unwrap_or_default().to_owned());
        }
    }
    let distinct: std::collections::BTreeSet<&String> = kills.iter().collect();
    assert!(
        kills.len() >= 10 && distinct.len() >= 6,
        "killed {} times at {} distinct steps: {kills:?}",
        kills.len(),
        distinct.len()
    );
    let last = env.run(&["deploy", "--yes"]);
    assert_eq!(last.status.code(), Some(0), "{}", stderr(&last));
    assert_one_of_each(&env.listing());
    let replan = env.run(&["plan", "--detailed-exitcode"]);
    assert_eq!(replan.status.code(), Some(0), "{}", stderr(&replan));
    let status = env.run(&["status", "-o", "json"]);
    let status: Value = serde_json::from_slice(&status.stdout).unwrap();
    assert!(status["lock"].is_null(), "the lock is released: {status:#}");
    env.run(&["destroy", "--yes"]);
}

#[test]
fn a_second_concurrent_deploy_is_refused_and_told_who_holds_the_lock() {
    let env = Env::new("lock");
    let mut first = env
        .command(&["deploy", "--yes", "--only", "infrastructure"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let lock = env
        .dir
        .path()
        .join(format!(".taskctl/{}/production/lock.json", env.name));
    let started = Instant::now();
    while !lock.exists() {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the first deploy never took the lock"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    let second = env.run(&["deploy", "--yes", "--only", "infrastructure"]);
    let first_status = first.wait().unwrap();
    assert!(first_status.success());
    assert_eq!(second.status.code(), Some(1), "{}", stderr(&second));
    let err = stderr(&second);
    assert!(
        err.contains("is locked by") && err.contains("since"),
        "{err}"
    );
    env.run(&["destroy", "--yes", "--only", "infrastructure"]);
}

#[test]
fn validate_online_runs_preflight_against_the_account() {
    let mut env = Env::new("online");
    let out = env.run(&["validate", "--online", "-o", "json"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    let checks: Vec<&str> = report["preflight"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["check"].as_str().unwrap())
        .collect();
    for check in ["credentials", "kubernetes-version", "gpu"] {
        assert!(checks.contains(&check), "{check} in {report:#}");
    }
    // A zone the region does not have is an error found only online.
    env.layer(
        "zone.yaml",
        "apiVersion: taskctl.dev/v1\nkind: Profile\nnetwork:\n  subnets:\n    public:\n      - { zone: us-west-2z, cidr: 10.0.1.0/24 }\n      - { zone: us-west-2b, cidr: 10.0.2.0/24 }\n    private:\n      - { zone: us-west-2z, cidr: 10.0.10.0/24 }\n      - { zone: us-west-2b, cidr: 10.0.20.0/24 }\n",
    );
    let offline = env.run(&["validate"]);
    assert_eq!(offline.status.code(), Some(0), "{}", stderr(&offline));
    let online = env.run(&["validate", "--online"]);
    assert_eq!(online.status.code(), Some(1), "{}", stderr(&online));
    assert!(
        stderr(&online).contains("us-west-2z"),
        "{}",
        stderr(&online)
    );
}

/// The deploy left a kubeconfig for the cluster moto made: its server and
/// CA are what boto3 sees, its credential plugin is this taskctl, and
/// running that plugin gives an EKS token. `taskctl kubeconfig` writes the
/// same file on demand.
fn check_kubeconfig(env: &Env, listing: &Value) {
    let cluster = &listing["clusters"][0];
    let path = env
        .dir
        .path()
        .join(format!(".taskctl/{}/production/kubeconfig", env.name));
    let text = std::fs::read_to_string(&path).expect("the deploy wrote a kubeconfig");
    use std::os::unix::fs::PermissionsExt as _;
    assert_eq!(
        std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let config: Value = serde_norway::from_str(&text).unwrap();
    let endpoint = cluster["endpoint"].as_str().expect("moto's endpoint");
    assert!(endpoint.starts_with("https://"), "{endpoint}");
    assert_eq!(
        config["clusters"][0]["cluster"]["server"], endpoint,
        "{text}"
    );
    assert_eq!(
        config["clusters"][0]["cluster"]["certificate-authority-data"],
        cluster["certificate_authority"],
        "{text}"
    );
    assert_eq!(config["current-context"], config["contexts"][0]["name"]);
    let exec = &config["users"][0]["user"]["exec"];
    assert_eq!(
        exec["args"],
        serde_json::json!([
            "eks-token",
            "--cluster",
            cluster["name"],
            "--region",
            "us-west-2"
        ])
    );

    // kubectl would run the plugin with the user's AWS settings.
    let mut plugin = Command::new(exec["command"].as_str().unwrap());
    for a in exec["args"].as_array().unwrap() {
        plugin.arg(a.as_str().unwrap());
    }
    let out = plugin
        .env("AWS_ENDPOINT_URL", moto())
        .env("AWS_ACCESS_KEY_ID", "testing")
        .env("AWS_SECRET_ACCESS_KEY", "testing")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let credential: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(credential["kind"], "ExecCredential");
    let token = credential["status"]["token"].as_str().unwrap();
    assert!(token.starts_with("k8s-aws-v1."), "{token}");
    assert!(credential["status"]["expirationTimestamp"].is_string());

    let out = env.run(&["kubeconfig", "--out", "again.yaml"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let again = std::fs::read_to_string(env.dir.path().join("again.yaml")).unwrap();
    assert_eq!(again, text);
}

/// What boto3 says of the in-cluster Vault's auto-unseal: the key by its
/// alias (state, rotation), the role (trust policy, inline policy) and the
/// cluster's OIDC providers.
/// Runs a boto3 `script` (the test-env venv's python) against moto with
/// `args` after the endpoint, and parses the JSON it prints.
fn boto3(script: &str, args: &[&str]) -> Value {
    let python = std::env::var("TASKCTL_TEST_ENV_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| {
            PathBuf::from(std::env::var("HOME").unwrap()).join(".cache/taskctl-test-env")
        })
        .join("venv/bin/python");
    let out = Command::new(python)
        .arg("-c")
        .arg(script)
        .arg(moto())
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "boto3: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn vault_seal_listing(alias: &str, role: &str) -> Value {
    let script = r#"
import json, sys, urllib.parse, boto3
endpoint, alias, role = sys.argv[1:4]
kw = dict(endpoint_url=endpoint, region_name="us-west-2",
          aws_access_key_id="testing", aws_secret_access_key="testing")
kms, iam = boto3.client("kms", **kw), boto3.client("iam", **kw)
out = {}
try:
    meta = kms.describe_key(KeyId=alias)["KeyMetadata"]
    out["key"] = {"arn": meta["Arn"], "state": meta["KeyState"]}
    if meta["KeyState"] != "PendingDeletion":
        out["key"]["rotation"] = kms.get_key_rotation_status(KeyId=meta["KeyId"])["KeyRotationEnabled"]
except kms.exceptions.NotFoundException:
    out["key"] = None
try:
    r = iam.get_role(RoleName=role)["Role"]
    doc = r["AssumeRolePolicyDocument"]
    if isinstance(doc, str):
        doc = json.loads(urllib.parse.unquote(doc))
    names = iam.list_role_policies(RoleName=role)["PolicyNames"]
    inline = {}
    for n in names:
        d = iam.get_role_policy(RoleName=role, PolicyName=n)["PolicyDocument"]
        inline[n] = json.loads(urllib.parse.unquote(d)) if isinstance(d, str) else d
    out["role"] = {"arn": r["Arn"], "trust": doc, "inline": inline}
except iam.exceptions.NoSuchEntityException:
    out["role"] = None
out["oidc"] = [p["Arn"] for p in iam.list_open_id_connect_providers()["OpenIDConnectProviderList"]]
print(json.dumps(out))
"#;
    boto3(script, &[alias, role])
}

/// The in-cluster Vault on target `aws`: the infrastructure makes its
/// auto-unseal key (KMS, rotation on), the cluster's IAM OIDC provider and
/// a role only the Vault service account may assume, allowed to use that
/// key only; the Vault configuration names the key (`seal "awskms"`) and
/// the service account the role (IRSA); taskctl initializes the pods
/// through the API server (the raft nodes behind them are Shamir-sealed
/// OpenBao: no awskms seal runs here); destroy keeps the key unless told
/// `--delete-data`, and then only schedules its deletion. Checked with
/// boto3 and the double's objects.
#[test]
fn an_in_cluster_vault_on_aws_gets_its_unseal_key_and_role_and_is_initialized_through_the_api_server()
 {
    let nodes = crate::harness::RaftNodes::start();
    let mut env = Env::with_cluster_from(
        Env::new_with("vlt", false),
        kube_double::Config {
            probe_readiness: true,
            ..kube_double::Config::default()
        },
    );
    env.layer(
        "vault.yaml",
        "apiVersion: taskctl.dev/v1\nkind: Profile\nservices:\n  vault:\n    cluster:\n      key_shares: 3\n      key_threshold: 2\n      keys_file: vault-keys.json\n",
    );
    env.cluster().serve(nodes.behind_vault_pods());
    // No other Vault: not the test environment's, not a token of it.
    let run = |args: &[&str]| {
        env.command(args)
            .env("VAULT_ADDR", "")
            .env("VAULT_TOKEN", "")
            .stdin(Stdio::null())
            .output()
            .unwrap()
    };
    let text = |o: &Output| format!("{}\n{}", stdout(o), stderr(o));
    let alias = format!("alias/taskctl/{}-production/vault-unseal", env.name);
    let role = format!("{}-production-vault", env.name);

    let plan = run(&["plan", "-o", "json"]);
    assert_eq!(plan.status.code(), Some(0), "{}", text(&plan));
    let planned: Vec<String> = events(&plan)
        .into_iter()
        .filter(|e| e["event"] == "step_planned" && e["action"] == "create")
        .map(|e| e["step"].as_str().unwrap().to_string())
        .collect();
    for id in [
        "aws/kms-key/vault-unseal",
        "aws/oidc-provider/cluster",
        "aws/iam-role/vault",
        "kubernetes/vault",
    ] {
        assert!(planned.iter().any(|s| s == id), "{id} in {planned:?}");
    }

    let started = Instant::now();
    let deploy = run(&["deploy", "--yes"]);
    let out = text(&deploy);
    assert_eq!(deploy.status.code(), Some(0), "{out}");
    eprintln!("deploy with in-cluster Vault: {:?}", started.elapsed());
    for line in out.lines().filter(|l| l.contains(": done in")) {
        eprintln!("  {line}");
    }
    assert!(out.contains("vault-0 initialized and unsealed"), "{out}");
    assert!(out.contains("vault-2 unsealed"), "{out}");
    assert!(out.contains("the root token is revoked"), "{out}");

    // AWS, as boto3 sees it.
    let seen = vault_seal_listing(&alias, &role);
    let key = &seen["key"];
    assert_eq!(key["state"], "Enabled", "{seen:#}");
    assert_eq!(key["rotation"], true, "{seen:#}");
    let key_arn = key["arn"].as_str().unwrap();
    let role_seen = &seen["role"];
    let statement = &role_seen["inline"]["vault-unseal"]["Statement"][0];
    assert_eq!(statement["Resource"], key_arn, "{seen:#}");
    assert_eq!(
        statement["Action"],
        serde_json::json!(["kms:Encrypt", "kms:Decrypt", "kms:DescribeKey"])
    );
    let trust = &role_seen["trust"]["Statement"][0];
    assert_eq!(trust["Action"], "sts:AssumeRoleWithWebIdentity", "{seen:#}");
    let provider = trust["Principal"]["Federated"].as_str().unwrap();
    assert!(
        seen["oidc"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p == provider),
        "the role trusts the cluster's OIDC provider: {seen:#}"
    );
    let conditions = trust["Condition"]["StringEquals"].as_object().unwrap();
    assert!(
        conditions
            .iter()
            .any(|(k, v)| k.ends_with(":sub") && v == "system:serviceaccount:vault:vault"),
        "{seen:#}"
    );
    assert!(
        conditions
            .iter()
            .any(|(k, v)| k.ends_with(":aud") && v == "sts.amazonaws.com"),
        "{seen:#}"
    );

    // The cluster, as the double holds it.
    let cluster = env.cluster();
    let config = cluster
        .object("/api/v1/namespaces/vault/configmaps/vault-config")
        .expect("Vault's configuration");
    let hcl = config["data"]["vault.hcl"].as_str().unwrap();
    assert!(hcl.contains("seal \"awskms\""), "{hcl}");
    assert!(hcl.contains(&format!("kms_key_id = \"{alias}\"")), "{hcl}");
    assert!(hcl.contains("region     = \"us-west-2\""), "{hcl}");
    let account = cluster
        .object("/api/v1/namespaces/vault/serviceaccounts/vault")
        .expect("Vault's service account");
    assert_eq!(
        account["metadata"]["annotations"]["eks.amazonaws.com/role-arn"], role_seen["arn"],
        "the service account names the role: {account:#}"
    );
    // The pods were reached through the API server only.
    let forwarded = crate::harness::forwarded_vault_pods(cluster);
    assert_eq!(forwarded.len(), 3, "{forwarded:?}");

    // Every managed secret is in this Vault, read through the pods.
    let status = run(&["secrets", "status", "-o", "json"]);
    assert_eq!(status.status.code(), Some(0), "{}", text(&status));
    let rows: Value = serde_json::from_slice(&status.stdout).unwrap();
    assert!(!rows.as_array().unwrap().is_empty(), "{rows}");

    // A second run changes nothing, in AWS or the cluster.
    let again = run(&["plan", "--detailed-exitcode", "-o", "json"]);
    assert_eq!(again.status.code(), Some(0), "{}", text(&again));
    // The in-cluster broker's user is looked after on aws too: the EKS
    // stack hands over the broker pods' management port (no process stands
    // behind it here, so the plan says it could not check the password).
    let broker = events(&again)
        .into_iter()
        .find(|e| e["event"] == "step_planned" && e["step"] == "secrets/broker-user")
        .expect("the broker user's step");
    assert!(
        broker["reason"]
            .as_str()
            .unwrap_or_default()
            .contains("rabbitmq-0"),
        "{broker}"
    );

    // Destroy keeps the key (the data cannot be unsealed without it) and
    // removes the role and the OIDC provider.
    let destroy = run(&["destroy", "--yes"]);
    let out = text(&destroy);
    assert_eq!(destroy.status.code(), Some(0), "{out}");
    assert!(out.contains("kept KMS key"), "{out}");
    let seen = vault_seal_listing(&alias, &role);
    assert_eq!(seen["key"]["state"], "Enabled", "{seen:#}");
    assert_eq!(seen["role"], Value::Null, "{seen:#}");
    assert!(
        !seen["oidc"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p == provider),
        "{seen:#}"
    );
    // Named, the data goes: the key's deletion is scheduled (30 days).
    let purge = run(&["destroy", "--yes", "--delete-data"]);
    let out = text(&purge);
    assert_eq!(purge.status.code(), Some(0), "{out}");
    assert!(out.contains("scheduled for deletion"), "{out}");
    let seen = vault_seal_listing(&alias, &role);
    assert_eq!(seen["key"]["state"], "PendingDeletion", "{seen:#}");
}

/// The agent's ECR repository and image, as boto3 reads them back.
fn ecr_listing(repository: &str, tag: &str) -> Value {
    let script = r#"
import json, sys, boto3
endpoint, repository, tag = sys.argv[1:4]
ecr = boto3.client("ecr", endpoint_url=endpoint, region_name="us-west-2",
                   aws_access_key_id="testing", aws_secret_access_key="testing")
repo = ecr.describe_repositories(repositoryNames=[repository])["repositories"][0]
tags = ecr.list_tags_for_resource(resourceArn=repo["repositoryArn"])["tags"]
policy = json.loads(ecr.get_lifecycle_policy(repositoryName=repository)["lifecyclePolicyText"])
images = ecr.batch_get_image(repositoryName=repository, imageIds=[{"imageTag": tag}])["images"]
out = {"uri": repo["repositoryUri"], "mutability": repo["imageTagMutability"],
       "scan_on_push": repo["imageScanningConfiguration"]["scanOnPush"],
       "tags": {t["Key"]: t["Value"] for t in tags}, "policy": policy, "images": []}
for i in images:
    manifest = json.loads(i["imageManifest"])
    digests = [manifest["config"]["digest"]] + [l["digest"] for l in manifest["layers"]]
    layers = ecr.batch_check_layer_availability(repositoryName=repository, layerDigests=digests)
    out["images"].append({"digest": i["imageId"]["imageDigest"], "manifest": manifest,
        "blobs": {l["layerDigest"]: [l["layerAvailability"], l["layerSize"]] for l in layers["layers"]},
        "missing": layers["failures"]})
print(json.dumps(out))
"#;
    boto3(script, &[repository, tag])
}

/// Issue 16's image: an agent with `build: {}` on target aws is packed by
/// taskctl into an OCI image, pushed through ECR's layer API into a
/// repository taskctl makes (scan on push, immutable tags, a lifecycle
/// policy), and the cluster's Deployment runs it by that digest; a second
/// deploy pushes nothing.
#[test]
fn the_agent_image_is_pushed_to_ecr_and_the_cluster_runs_it_by_digest() {
    let mut env = Env::with_cluster("ecr");
    env.layer(
        "ecr.yaml",
        "apiVersion: taskctl.dev/v1\nkind: Profile\nagents:\n  - name: task-executor\n    build: {}\n",
    );
    let plan = env.run(&["plan", "-o", "json"]);
    assert_eq!(plan.status.code(), Some(0), "{}", stderr(&plan));
    let planned: Vec<Value> = events(&plan)
        .into_iter()
        .filter(|e| e["event"] == "step_planned" && e["action"] == "create")
        .collect();
    for step in [
        "aws/ecr-repository/task-executor",
        "aws/ecr-image/task-executor",
    ] {
        assert!(
            planned.iter().any(|e| e["step"] == step),
            "{step} not planned: {planned:#?}"
        );
    }

    let deploy = env
        .command(&["deploy", "--yes"])
        .env("RUST_LOG", "taskctl_aws::call_log=trace")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(deploy.status.code(), Some(0), "{}", stderr(&deploy));
    let (_, writes) = aws_calls(&stderr(&deploy));
    for op in [
        "CreateRepository",
        "PutLifecyclePolicy",
        "InitiateLayerUpload",
        "UploadLayerPart",
        "CompleteLayerUpload",
        "PutImage",
    ] {
        assert!(writes.iter().any(|w| w == op), "no {op} in {writes:?}");
    }

    // What the cluster runs, and what ECR holds under the image's tag.
    let image = env
        .cluster()
        .object("/apis/apps/v1/namespaces/agent-system/deployments/task-executor")
        .unwrap()
        .pointer("/spec/template/spec/containers/0/image")
        .and_then(Value::as_str)
        .unwrap()
        .to_owned();
    let repository = format!("taskctl/{}-production/task-executor", env.name);
    let (uri, digest) = image.split_once('@').expect("pulled by digest");
    let tag = format!("1.0.0-{}", &digest.trim_start_matches("sha256:")[..12]);
    let ecr = ecr_listing(&repository, &tag);
    assert_eq!(ecr["uri"], uri, "{ecr:#}");
    assert!(
        uri.ends_with(&format!(".dkr.ecr.us-west-2.amazonaws.com/{repository}")),
        "{uri}"
    );
    assert_eq!(ecr["mutability"], "IMMUTABLE");
    assert_eq!(ecr["scan_on_push"], true);
    assert_eq!(ecr["tags"]["taskctl:environment"], env.tag().as_str());
    let rule = &ecr["policy"]["rules"][0];
    assert_eq!(rule["selection"]["countType"], "imageCountMoreThan");
    assert_eq!(rule["selection"]["countNumber"], 10);
    assert_eq!(rule["action"]["type"], "expire");
    let images = ecr["images"].as_array().unwrap();
    assert_eq!(images.len(), 1, "{ecr:#}");
    assert_eq!(images[0]["digest"], digest);
    assert_eq!(images[0]["missing"], serde_json::json!([]));
    // Every blob the manifest names is there, at its size: the layer is
    // the static agent binary's tar.
    let manifest = &images[0]["manifest"];
    let layer = &manifest["layers"][0];
    let binary = std::fs::metadata(crate::docker::agent_binary())
        .unwrap()
        .len();
    assert!(
        layer["size"].as_u64().unwrap() > binary,
        "the layer holds the binary: {manifest:#}"
    );
    for blob in [&manifest["config"], layer] {
        let d = blob["digest"].as_str().unwrap();
        assert_eq!(
            images[0]["blobs"][d],
            serde_json::json!(["AVAILABLE", blob["size"]]),
            "{ecr:#}"
        );
    }

    // Nothing to push the second time: no ECR write at all.
    let again = env
        .command(&["deploy", "--yes"])
        .env("RUST_LOG", "taskctl_aws::call_log=trace")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(again.status.code(), Some(0), "{}", stderr(&again));
    let (reads, writes) = aws_calls(&stderr(&again));
    assert!(writes.is_empty(), "{writes:?}");
    assert!(reads.iter().any(|r| r == "BatchGetImage"), "{reads:?}");

    // The scan gate: production's `fail_on: critical` let moto's finding (one
    // HIGH, CVE-9999-9999, its fixed answer to a scan) pass; `high` stops
    // the image before anything in the cluster changes, naming it.
    assert!(
        reads.iter().any(|r| r == "DescribeImageScanFindings"),
        "{reads:?}"
    );
    env.layer(
        "strict-scan.yaml",
        "apiVersion: taskctl.dev/v1\nkind: Profile\ntarget:\n  aws:\n    region: us-west-2\n    image_scan: { fail_on: high }\n",
    );
    let plan = env.run(&["plan", "-o", "json"]);
    let changed: Vec<Value> = events(&plan)
        .into_iter()
        .filter(|e| e["event"] == "step_planned" && e["action"] != "no_op")
        .collect();
    assert_eq!(changed.len(), 1, "{changed:#?}");
    assert_eq!(changed[0]["step"], "aws/ecr-image/task-executor");
    assert_eq!(changed[0]["diffs"][0]["field"], "scan findings");
    assert_eq!(
        changed[0]["diffs"][0]["from"], "1 HIGH (CVE-9999-9999)",
        "{changed:#?}"
    );
    let refused = env.run(&["deploy", "--yes", "-o", "json"]);
    assert_eq!(refused.status.code(), Some(1), "{}", stderr(&refused));
    let said = format!("{}{}", stdout(&refused), stderr(&refused));
    assert!(
        said.contains(
            "found 1 HIGH (CVE-9999-9999), at or above `target.aws.image_scan.fail_on: high`"
        ),
        "{said}"
    );
    let applied: Vec<Value> = events(&refused)
        .into_iter()
        .filter(|e| {
            e["event"] == "step_finished"
                && e["step"]
                    .as_str()
                    .is_some_and(|s| s.starts_with("kubernetes/"))
                && e["outcome"] != "skipped"
        })
        .collect();
    assert!(applied.is_empty(), "the cluster was touched: {applied:#?}");
}
