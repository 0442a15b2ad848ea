//! The `docker` target end to end through the CLI, on this machine's Docker
//! engine, with the broker and Prometheus of `scripts/test-env.sh`.
//!
//! Each test deploys its own environment (unique `metadata.name`, network
//! and ports) so tests run in parallel, checks the engine with the `docker`
//! CLI (an independent client), and destroys it at the end. The agent image
//! is built from the static agent (`TASKCTL_AGENT_BINARY`; scripts/test.sh
//! builds it).

use crate::harness::repo_root;
use crate::probe::Probe;
use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub(crate) const AGENT: &str = "automated-task-executor";

pub(crate) fn required(var: &str) -> String {
    std::env::var(var).unwrap_or_else(|_| {
        panic!(
            "{var} is not set: these tests need the servers of scripts/test-env.sh; run them with scripts/test.sh, or `eval \"$(scripts/test-env.sh up)\"` first"
        )
    })
}

/// The static agent binary the image is built from.
pub(crate) fn agent_binary() -> PathBuf {
    if let Ok(path) = std::env::var("TASKCTL_AGENT_BINARY") {
        return PathBuf::from(path);
    }
    let target = std::env::var("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| repo_root().join("target"));
    let path = target.join("x86_64-unknown-linux-gnu/release/task-executor");
    assert!(
        path.is_file(),
        "no static agent at {}: build it with `CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUSTFLAGS='-C target-feature=+crt-static' cargo build -p task-executor --release --target x86_64-unknown-linux-gnu` or set TASKCTL_AGENT_BINARY (scripts/test.sh does it)",
        path.display()
    );
    path
}

pub(crate) fn docker(args: &[&str]) -> String {
    let out = Command::new("docker")
        .args(args)
        .output()
        .expect("the docker CLI runs");
    assert!(
        out.status.success(),
        "docker {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Twelve free ports: http and metrics bases for 3 replicas × 2 slots.
pub(crate) fn free_bases() -> (u16, u16) {
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos()
        ^ std::process::id();
    for attempt in 0..200u32 {
        // Below the kernel's ephemeral range (32768 and up by default), so
        // no client connection of a parallel test takes a port between this
        // check and the moment Docker publishes it.
        let k = ((seed.wrapping_add(attempt * 7919)) % 1500) as u16;
        let (http, metrics) = (8000 + k * 8, 20000 + k * 8);
        let free = (0..6).all(|i| {
            TcpListener::bind(("127.0.0.1", http + i)).is_ok()
                && TcpListener::bind(("127.0.0.1", metrics + i)).is_ok()
        });
        if free {
            return (http, metrics);
        }
    }
    panic!("no free port range found");
}

pub(crate) struct Env {
    pub(crate) dir: tempfile::TempDir,
    pub(crate) name: String,
    pub(crate) profiles: Vec<PathBuf>,
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Agent {
    pub(crate) id: String,
    pub(crate) name: String,
    pub(crate) health: String,
}

impl Env {
    pub(crate) fn new(prefix: &str) -> Env {
        // The broker: local-external.yaml's default, amqp://127.0.0.1:5672/%2f as
        // guest, which RabbitMQ accepts from loopback (the test env's).
        required("TASKCTL_TEST_AMQP_URL");
        let sd = required("TASKCTL_TEST_PROMETHEUS_SD_DIR");
        let dir = tempfile::tempdir().unwrap();
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        let name = format!("{prefix}-{:x}{:x}", std::process::id(), nanos);
        let (http, metrics) = free_bases();
        let local = repo_root().join("profiles/local-external.yaml");
        let overlay = dir.path().join("env.yaml");
        std::fs::write(
            &overlay,
            format!(
                "apiVersion: taskctl.dev/v1
kind: Profile
include: [{}]
metadata:
  name: {name}
target:
  kind: docker
  docker:
    network: {name}-net
    prometheus_file_sd: {sd}
agents:
  - name: {AGENT}
    ports:
      - {{ name: http, port: {http} }}
      - {{ name: metrics, port: {metrics} }}
    probes:
      liveness: {{ path: /health, port: {http}, period_seconds: 10 }}
      readiness: {{ path: /ready, port: {http}, period_seconds: 1 }}
",
                local.display()
            ),
        )
        .unwrap();
        Env {
            dir,
            name,
            profiles: vec![overlay],
        }
    }

    /// Where this environment's managed secrets live in Vault.
    pub(crate) fn secrets_path(&self) -> String {
        format!("secret/taskctl/test/{}", self.name)
    }

    /// The agents' broker user taskctl makes for this environment.
    pub(crate) fn broker_user(&self) -> String {
        format!("taskctl-{}-development", self.name)
    }

    /// The current data of the managed secret `entry` at this test's
    /// Vault path.
    pub(crate) fn managed_secret(&self, entry: &str) -> serde_json::Value {
        let (addr, token) = (
            required("TASKCTL_TEST_VAULT_ADDR"),
            required("TASKCTL_TEST_VAULT_TOKEN"),
        );
        let out = Command::new("curl")
            .args(["-s", "-H"])
            .arg(format!("X-Vault-Token: {token}"))
            .arg(format!(
                "{addr}/v1/secret/data/taskctl/test/{}/{entry}",
                self.name
            ))
            .output()
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        v["data"]["data"].clone()
    }

    /// The agents' broker URL with their credentials from Vault, in the
    /// environment's virtual host (what a probe publishes with).
    pub(crate) fn agents_amqp_url(&self) -> String {
        let d = self.managed_secret("messaging");
        format!(
            "amqp://{}:{}@127.0.0.1:5672/{}",
            crate::harness::urlencode(d["username"].as_str().expect("the messaging secret")),
            crate::harness::urlencode(d["password"].as_str().expect("the messaging secret")),
            self.name
        )
    }

    /// The agents' task-signing private key, from the test's Vault path.
    pub(crate) fn signing_key(&self) -> String {
        self.managed_secret("signing")["private_key"]
            .as_str()
            .expect("the signing secret taskctl generated")
            .to_owned()
    }

    pub(crate) fn label(&self) -> String {
        format!("taskctl.dev/environment={}.development", self.name)
    }

    /// Adds a profile layer over the environment.
    pub(crate) fn layer(&mut self, file: &str, yaml: &str) {
        let path = self.dir.path().join(file);
        std::fs::write(
            &path,
            format!("apiVersion: taskctl.dev/v1\nkind: Profile\n{yaml}"),
        )
        .unwrap();
        self.profiles.push(path);
    }

    pub(crate) fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(assert_cmd::cargo::cargo_bin("taskctl"));
        // Global options first, as the README writes them.
        for p in &self.profiles {
            cmd.arg("-p").arg(p);
        }
        cmd.args(args);
        cmd.current_dir(self.dir.path())
            .env("NO_COLOR", "1")
            .env("TASKCTL_AGENT_BINARY", agent_binary())
            .env_remove("TASKCTL_PROFILE")
            .env_remove("TASKCTL_ENV")
            // Each environment its own virtual host on the shared broker,
            // and its managed secrets at their own Vault path.
            .env(
                "TASKCTL_AMQP_URL",
                format!("amqp://127.0.0.1:5672/{}", self.name),
            )
            .env("TASKCTL_SECRETS_PATH", self.secrets_path());
        cmd
    }

    pub(crate) fn run(&self, args: &[&str]) -> Output {
        self.command(args).stdin(Stdio::null()).output().unwrap()
    }

    fn deploy(&self) -> Output {
        let out = self.run(&["deploy", "--yes"]);
        assert_eq!(
            out.status.code(),
            Some(0),
            "deploy failed:\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    /// The environment's agent containers, running or not, by name.
    pub(crate) fn agents(&self) -> Vec<Agent> {
        let out = docker(&[
            "ps",
            "-a",
            "--no-trunc",
            "--filter",
            &format!("label={}", self.label()),
            "--filter",
            "label=taskctl.dev/role=agent",
            "--format",
            "{{.ID}} {{.Names}} {{.Status}}",
        ]);
        let mut agents: Vec<Agent> = out
            .lines()
            .map(|l| {
                let mut parts = l.splitn(3, ' ');
                Agent {
                    id: parts.next().unwrap().into(),
                    name: parts.next().unwrap().into(),
                    health: parts.next().unwrap_or_default().into(),
                }
            })
            .collect();
        agents.sort_by(|a, b| a.name.cmp(&b.name));
        agents
    }

    fn replica(&self, i: u32) -> String {
        format!("{AGENT}-{i}.{}.development", self.name)
    }

    /// Exactly the three primaries, all healthy, no leftover.
    pub(crate) fn assert_three_healthy(&self) -> Vec<Agent> {
        let agents = self.agents();
        let names: Vec<&str> = agents.iter().map(|a| a.name.as_str()).collect();
        assert_eq!(
            names,
            [self.replica(1), self.replica(2), self.replica(3)],
            "{agents:?}"
        );
        for a in &agents {
            assert!(a.health.contains("(healthy)"), "{a:?}");
        }
        agents
    }

    pub(crate) fn inspect(&self, name: &str, format: &str) -> String {
        docker(&["inspect", "--format", format, name])
            .trim()
            .to_string()
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        let _ = self.run(&["destroy", "--yes", "--purge"]);
        // Whatever a failed test left.
        if let Ok(out) = Command::new("docker")
            .args(["ps", "-aq", "--filter", &format!("label={}", self.label())])
            .output()
        {
            for id in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                let _ = Command::new("docker").args(["rm", "-f", id]).output();
            }
        }
        let _ = Command::new("docker")
            .args(["network", "rm", &format!("{}-net", self.name)])
            .output();
        // The shared servers keep nothing of the test: its broker user and
        // its secrets.
        if let Ok(mgmt) = std::env::var("TASKCTL_TEST_RABBITMQ_MGMT_URL") {
            let _ = Command::new("curl")
                .args(["-s", "-u", "guest:guest", "-X", "DELETE"])
                .arg(format!("{mgmt}/api/users/{}", self.broker_user()))
                .output();
            let _ = Command::new("curl")
                .args(["-s", "-u", "guest:guest", "-X", "DELETE"])
                .arg(format!("{mgmt}/api/vhosts/{}", self.name))
                .output();
        }
        if let (Ok(addr), Ok(token)) = (
            std::env::var("TASKCTL_TEST_VAULT_ADDR"),
            std::env::var("TASKCTL_TEST_VAULT_TOKEN"),
        ) {
            for entry in ["messaging", "signing"] {
                let _ = Command::new("curl")
                    .args(["-s", "-X", "DELETE", "-H"])
                    .arg(format!("X-Vault-Token: {token}"))
                    .arg(format!(
                        "{addr}/v1/secret/metadata/taskctl/test/{}/{entry}",
                        self.name
                    ))
                    .output();
            }
        }
    }
}

/// Container ids by name: what "nothing was restarted" compares.
fn ids(agents: &[Agent]) -> Vec<(String, String)> {
    agents
        .iter()
        .map(|a| (a.name.clone(), a.id.clone()))
        .collect()
}

pub(crate) fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Polls Prometheus until every agent of `env` is scraped with `up == 1`.
fn wait_scraped(env: &Env, count: usize) {
    let prometheus = required("TASKCTL_TEST_PROMETHEUS_URL");
    let query = format!(
        "up{{job=\"task-executor\",taskctl_environment=\"{}.development\"}} == 1",
        env.name
    );
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut last = String::new();
    while Instant::now() < deadline {
        let out = Command::new("curl")
            .args(["-s", "-G", &format!("{prometheus}/api/v1/query")])
            .arg("--data-urlencode")
            .arg(format!("query={query}"))
            .output()
            .unwrap();
        last = String::from_utf8_lossy(&out.stdout).into_owned();
        if let Ok(v) = serde_json::from_str::<serde_json::Value>(&last)
            && v["data"]["result"].as_array().map(Vec::len) == Some(count)
        {
            return;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    panic!(
        "Prometheus does not report up == 1 for {count} agents of {}: {last}",
        env.name
    );
}

#[test]
fn deploy_builds_the_image_runs_healthy_labelled_agents_and_redeploy_is_a_no_op() {
    let mut env = Env::new("dk-deploy");
    let token = format!("tok-{}", env.name);
    env.layer(
        "secret.yaml",
        &format!(
            "agents:\n  - name: {AGENT}\n    env:\n      - name: API_TOKEN\n        secret: env:TASKCTL_TEST_DOCKER_TOKEN\n"
        ),
    );
    let out = env
        .command(&["deploy", "--yes", "-o", "json"])
        .env("TASKCTL_TEST_DOCKER_TOKEN", &token)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        !text(&out).contains(&token),
        "the secret leaked into the output"
    );
    // A first deploy protects no running replica: all three start before
    // any of them is healthy.
    let events = String::from_utf8_lossy(&out.stdout).into_owned();
    let at = |needle: &str| {
        events
            .find(needle)
            .unwrap_or_else(|| panic!("`{needle}` not in the deploy's events:\n{events}"))
    };
    let first_healthy = at("created and healthy");
    for i in 1..=3 {
        assert!(
            at(&format!("started {}.next", env.replica(i))) < first_healthy,
            "replica {i} started after another one was healthy:\n{events}"
        );
    }
    let journal = std::fs::read_to_string(
        env.dir
            .path()
            .join(format!(".taskctl/{}/development/journal.jsonl", env.name)),
    )
    .unwrap();
    assert!(
        !journal.contains(&token),
        "the secret leaked into the journal"
    );

    let agents = env.assert_three_healthy();
    for a in &agents {
        let labels = env.inspect(&a.name, "{{json .Config.Labels}}");
        assert!(!labels.contains(&token), "the secret is in a label");
        let labels: serde_json::Value = serde_json::from_str(&labels).unwrap();
        assert_eq!(labels["taskctl.dev/managed-by"], "taskctl");
        assert!(
            labels["taskctl.dev/release"]
                .as_str()
                .unwrap()
                .starts_with("r-")
        );
        assert_eq!(labels["taskctl.dev/spec-hash"].as_str().unwrap().len(), 64);
        let env_vars = env.inspect(&a.name, "{{json .Config.Env}}");
        // A secret is a file (mode 0400 in /run/secrets), never a variable.
        assert!(
            env_vars.contains("API_TOKEN_FILE=/run/secrets/api_token"),
            "{env_vars}"
        );
        assert!(!env_vars.contains(&token), "the secret is in the env");
        assert_eq!(env.inspect(&a.name, "{{.HostConfig.NetworkMode}}"), "host");
        assert_eq!(
            env.inspect(&a.name, "{{.HostConfig.NanoCpus}}"),
            "1000000000"
        );
        assert_eq!(env.inspect(&a.name, "{{.HostConfig.Memory}}"), "536870912");
    }
    // The image: built from the static agent on scratch, tagged both ways.
    let image = env.inspect(&agents[0].name, "{{.Config.Image}}");
    assert!(image.starts_with("task-executor:0.1.0-"), "{image}");
    let user = docker(&["image", "inspect", "--format", "{{.Config.User}}", &image]);
    assert_eq!(user.trim(), "65532:65532");
    docker(&["image", "inspect", "task-executor:local"]);
    assert!(
        docker(&["network", "ls", "--format", "{{.Name}}"])
            .lines()
            .any(|n| n == format!("{}-net", env.name))
    );
    wait_scraped(&env, 3);

    // `task send`: an operator's task, signed with the key from Vault,
    // through the broker to an agent and back.
    let out = env.run(&["task", "send", "echo", "hello", "from", "ops"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "hello from ops");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("succeeded in"),
        "{}",
        text(&out)
    );
    let out = env.run(&["task", "send", "-o", "json", "noop"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let result: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(result["status"], "succeeded");
    // The agents allow no program (COMMAND_ALLOWED is empty): refused, with
    // the reason, and nothing secret in what taskctl printed.
    let out = env.run(&["task", "send", "command", "/usr/bin/id"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("rejected") && text(&out).contains("COMMAND_ALLOWED is empty"),
        "{}",
        text(&out)
    );
    let signing = env.signing_key();
    assert!(!text(&out).contains(&signing));

    // `status` lists what runs: each container's state, health, image and
    // the release that runs it.
    let out = env.run(&["status", "-o", "json"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let workloads = status["workloads"]
        .as_array()
        .unwrap_or_else(|| panic!("{status:#}"));
    let names: Vec<&str> = workloads
        .iter()
        .map(|w| w["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [env.replica(1), env.replica(2), env.replica(3)],
        "{status:#}"
    );
    for w in workloads {
        let name = w["name"].as_str().unwrap();
        assert_eq!(w["role"], "agent");
        assert_eq!(w["state"], "running", "{w}");
        assert_eq!(w["health"], "healthy", "{w}");
        assert_eq!(w["release"], "1", "{w}");
        let id = env.inspect(name, "{{.Image}}");
        assert_eq!(
            w["image"].as_str().unwrap(),
            &id.trim_start_matches("sha256:")[..12],
            "{w}"
        );
    }
    let out = env.run(&["status"]);
    let table = text(&out);
    assert!(
        table.contains("containers")
            && table.contains(&format!("{}  running    healthy", env.replica(1))),
        "{table}"
    );

    // Again: nothing to do, nothing restarted.
    let out = env
        .command(&["deploy", "--yes"])
        .env("TASKCTL_TEST_DOCKER_TOKEN", &token)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(text(&out).contains("nothing to do"), "{}", text(&out));
    assert_eq!(ids(&env.assert_three_healthy()), ids(&agents), "restarted");
    let out = env.run(&["plan", "--detailed-exitcode"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
}

#[test]
fn deploy_push_runs_the_agents_from_the_digest_the_registry_stored() {
    let registry = required("TASKCTL_TEST_REGISTRY");
    let mut env = Env::new("dk-push");
    // Its own tag: other tests retag the shared `task-executor:local`.
    let own = format!("{}-agent:local", env.name);
    env.layer(
        "image.yaml",
        &format!("agents:\n  - name: {AGENT}\n    image: {own}\n"),
    );
    let out = env.run(&["deploy", "--yes", "--push", &registry]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let agents = env.assert_three_healthy();

    // Every replica was made from one reference by digest in the registry.
    let images: std::collections::BTreeSet<String> = agents
        .iter()
        .map(|a| env.inspect(&a.name, "{{.Config.Image}}"))
        .collect();
    assert_eq!(images.len(), 1, "{images:?}");
    let image = images.into_iter().next().unwrap();
    let (repo, digest) = image
        .split_once('@')
        .unwrap_or_else(|| panic!("`{image}` is not a reference by digest"));
    let path = repo
        .strip_prefix(&format!("{registry}/"))
        .unwrap_or_else(|| panic!("`{repo}` is not in {registry}"));
    assert!(digest.starts_with("sha256:"), "{digest}");

    // The registry itself (its HTTP API, not the engine) serves that
    // manifest under that digest, and lists the content tag.
    let manifest = std::process::Command::new("curl")
        .args(["-sf", "-o", "/dev/null", "-D", "-", "-H"])
        .arg("Accept: application/vnd.oci.image.index.v1+json, application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json, application/vnd.docker.distribution.manifest.list.v2+json")
        .arg(format!("http://{registry}/v2/{path}/manifests/{digest}"))
        .output()
        .unwrap();
    let headers = String::from_utf8_lossy(&manifest.stdout).to_lowercase();
    assert!(manifest.status.success(), "{headers}");
    assert!(
        headers.contains(&format!("docker-content-digest: {digest}")),
        "{headers}"
    );
    let tags = std::process::Command::new("curl")
        .args(["-sf", &format!("http://{registry}/v2/{path}/tags/list")])
        .output()
        .unwrap();
    let tags: serde_json::Value = serde_json::from_slice(&tags.stdout).unwrap();
    // The content tag: `<version>-<12 hex of the binary's sha256>`.
    let content_tag = |t: &serde_json::Value| {
        t.as_str()
            .and_then(|t| t.rsplit_once('-'))
            .is_some_and(|(_, h)| h.len() == 12 && h.chars().all(|c| c.is_ascii_hexdigit()))
    };
    assert!(
        tags["tags"].as_array().unwrap().iter().any(content_tag),
        "{tags}"
    );

    // The release names the image by that digest, which any engine can
    // pull, not by the local tag.
    let out = quick(&env, &["history", "-o", "json"]);
    let releases: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(releases[0]["images"][AGENT], image.as_str(), "{releases:#}");

    // Pushed and running from it: a second run changes nothing.
    let out = env.run(&["plan", "--push", &registry, "--detailed-exitcode"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    // Nothing but a registry name is accepted.
    let out = env.run(&["plan", "--push", "http://127.0.0.1:5005"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("expected HOST[:PORT][/PATH]"),
        "{}",
        text(&out)
    );
}

/// A registry that asks for a login (`scripts/test-env.sh`'s
/// registry_auth): refused without `target.docker.registry_auth`, pushed
/// with it, and the password never shown or kept.
#[test]
fn deploy_push_logs_in_to_a_registry_that_asks_for_a_login() {
    let registry = required("TASKCTL_TEST_REGISTRY_AUTH");
    let user = required("TASKCTL_TEST_REGISTRY_USER");
    let password = required("TASKCTL_TEST_REGISTRY_PASSWORD");
    let mut env = Env::new("dk-login");
    let own = format!("{}-agent:local", env.name);
    env.layer(
        "image.yaml",
        &format!("agents:\n  - name: {AGENT}\n    replicas: 1\n    image: {own}\n"),
    );
    let out = env.run(&["deploy", "--yes", "--push", &registry]);
    let shown = text(&out);
    assert_eq!(out.status.code(), Some(1), "{shown}");
    assert!(
        shown.contains(&format!("pushing {registry}/"))
            && shown.contains("no basic auth credentials"),
        "{shown}"
    );
    assert!(env.agents().is_empty(), "{:?}", env.agents());

    env.layer(
        "login.yaml",
        "target:\n  docker:\n    registry_auth:\n      username: env:TEST_REGISTRY_USER\n      password: env:TEST_REGISTRY_PASSWORD\n",
    );
    let login = |args: &[&str]| {
        env.command(args)
            .env("TEST_REGISTRY_USER", &user)
            .env("TEST_REGISTRY_PASSWORD", &password)
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap()
    };
    let out = login(&["deploy", "--yes", "--push", &registry]);
    let shown = text(&out);
    assert_eq!(out.status.code(), Some(0), "{shown}");
    let agents = env.agents();
    assert_eq!(agents.len(), 1, "{agents:?}");
    let image = env.inspect(&agents[0].name, "{{.Config.Image}}");
    assert!(
        image.starts_with(&format!("{registry}/")) && image.contains("@sha256:"),
        "{image}"
    );
    // The registry has it, asked with the login (its own HTTP API).
    let (repo, digest) = image.split_once('@').unwrap();
    let path = repo.strip_prefix(&format!("{registry}/")).unwrap();
    let head = Command::new("curl")
        .args(["-sf", "-o", "/dev/null", "-w", "%{http_code}", "-u"])
        .arg(format!("{user}:{password}"))
        .args(["-H", "Accept: application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json"])
        .arg(format!("http://{registry}/v2/{path}/manifests/{digest}"))
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&head.stdout), "200");
    // A redeploy asks the registry (with the login) and changes nothing.
    let out = login(&["plan", "--push", &registry, "--detailed-exitcode"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    // The password is in no output, no state file, no container's
    // configuration, and not in Docker's own config.
    assert!(!shown.contains(&password));
    let inspect = docker(&["inspect", &agents[0].name]);
    assert!(!inspect.contains(&password));
    let grep = Command::new("grep")
        .args(["-rlF", &password])
        .arg(env.dir.path().join(".taskctl"))
        .output()
        .unwrap();
    assert!(
        grep.stdout.is_empty(),
        "{}",
        String::from_utf8_lossy(&grep.stdout)
    );
    if let Ok(home) = std::env::var("HOME") {
        let config =
            std::fs::read_to_string(format!("{home}/.docker/config.json")).unwrap_or_default();
        assert!(!config.contains(&registry), "{config}");
    }
}

#[test]
fn a_changed_env_value_rolls_one_replica_at_a_time() {
    let mut env = Env::new("dk-roll");
    env.deploy();
    let before = env.assert_three_healthy();
    env.layer(
        "change.yaml",
        &format!(
            "agents:\n  - name: {AGENT}\n    env:\n      - name: MAX_CONCURRENT_TASKS\n        value: \"40\"\n"
        ),
    );
    let out = env.run(&["plan", "-o", "json"]);
    let plan = text(&out);
    assert!(plan.contains("env MAX_CONCURRENT_TASKS"), "{plan}");
    assert!(
        !plan.contains("\"40\""),
        "a value is shown in the plan: {plan}"
    );

    // Sample the engine while the rollout runs: never fewer than the three
    // replicas healthy (the profile's maxUnavailable: 0; a replacement is
    // healthy before the container it replaces stops).
    let mut child = env
        .command(&["deploy", "--yes", "-o", "json"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut fewest = usize::MAX;
    let mut samples = 0;
    while child.try_wait().unwrap().is_none() {
        let healthy = env
            .agents()
            .iter()
            .filter(|a| a.health.contains("(healthy)"))
            .count();
        fewest = fewest.min(healthy);
        samples += 1;
    }
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(samples > 0);
    assert!(
        fewest >= 3,
        "only {fewest} healthy agents at one of {samples} polls"
    );

    // One at a time: replica i's old container is gone before replica
    // i+1's replacement starts.
    let log = String::from_utf8_lossy(&out.stdout).into_owned();
    let at = |needle: &str| {
        log.find(needle)
            .unwrap_or_else(|| panic!("`{needle}` not in the deploy's events:\n{log}"))
    };
    for i in 1..3 {
        assert!(
            at(&format!("removed the old {}", env.replica(i)))
                < at(&format!("started {}.next", env.replica(i + 1)))
        );
    }
    let after = env.assert_three_healthy();
    for (b, a) in before.iter().zip(&after) {
        assert_ne!(b.id, a.id, "{} was not replaced", a.name);
        let vars = env.inspect(&a.name, "{{json .Config.Env}}");
        assert!(vars.contains("MAX_CONCURRENT_TASKS=40"), "{vars}");
    }
    wait_scraped(&env, 3);
}

#[test]
fn a_broken_version_fails_the_deploy_and_keeps_the_old_agents() {
    let mut env = Env::new("dk-broken");
    env.deploy();
    let before = env.assert_three_healthy();
    // 0 is not a valid MAX_CONCURRENT_TASKS: the new agent exits with 64.
    env.layer(
        "broken.yaml",
        &format!(
            "agents:\n  - name: {AGENT}\n    env:\n      - name: MAX_CONCURRENT_TASKS\n        value: \"0\"\n"
        ),
    );
    let out = env.run(&["deploy", "--yes"]);
    let all = text(&out);
    assert_eq!(out.status.code(), Some(1), "{all}");
    assert!(all.contains("exited with code 64"), "{all}");
    assert!(all.contains("MAX_CONCURRENT_TASKS"), "{all}");
    assert!(all.contains("the running one was kept"), "{all}");
    // Replica 1's replacement fails first; 2 and 3, waiting for their
    // turns, are never touched.
    assert!(all.contains("stopped when replica 1 failed"), "{all}");
    assert_eq!(
        ids(&env.assert_three_healthy()),
        ids(&before),
        "replaced; the deploy said:\n{all}"
    );
}

/// Runs `deploy -o json`, and kills taskctl with SIGKILL as soon as an
/// event line contains every string of `at`. Returns whether it was killed.
fn deploy_killed_at(env: &Env, at: &[&str]) -> bool {
    let mut child: Child = env
        .command(&["deploy", "--yes", "-o", "json"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut killed = false;
    for line in BufReader::new(stdout).lines() {
        let Ok(line) = line else { break };
        if at.iter().all(|s| line.contains(s)) {
            child.kill().unwrap(); // SIGKILL
            killed = true;
            break;
        }
    }
    child.wait().unwrap();
    killed
}

#[test]
fn kill_9_mid_deploy_then_rerun_converges_without_orphans() {
    let mut env = Env::new("dk-kill");
    env.deploy();
    env.layer(
        "change.yaml",
        &format!(
            "agents:\n  - name: {AGENT}\n    env:\n      - name: MAX_CONCURRENT_TASKS\n        value: \"30\"\n"
        ),
    );
    // Just after a replacement started beside replica 1.
    assert!(deploy_killed_at(
        &env,
        &[&format!("started {}.next", env.replica(1))]
    ));
    // Just after replica 2's old container was removed, before the rename.
    assert!(deploy_killed_at(
        &env,
        &[&format!("removed the old {}", env.replica(2))]
    ));
    // As replica 3's step starts.
    assert!(deploy_killed_at(
        &env,
        &["step_started", &format!("agents/{AGENT}/3")]
    ));
    env.deploy();
    let agents = env.assert_three_healthy();
    for a in &agents {
        let vars = env.inspect(&a.name, "{{json .Config.Env}}");
        assert!(vars.contains("MAX_CONCURRENT_TASKS=30"), "{vars}");
    }
    let out = env.run(&["plan", "--detailed-exitcode"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
}

#[test]
fn destroy_removes_containers_and_network_and_keeps_volumes_unless_purged() {
    let mut env = Env::new("dk-destroy");
    // A managed service whose image is not on the engine: a clear error
    // before anything changes.
    env.layer(
        "pg.yaml",
        "services:\n  postgres:\n    enabled: true\n    password: env:TASKCTL_TEST_DOCKER_PG\n",
    );
    let out = env
        .command(&["deploy", "--yes"])
        .env("TASKCTL_TEST_DOCKER_PG", "pw")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let all = text(&out);
    assert_eq!(out.status.code(), Some(1), "{all}");
    assert!(
        all.contains("image postgres:14 is not on the Docker engine")
            && all.contains("docker load"),
        "{all}"
    );
    assert!(env.agents().is_empty());
    env.profiles.pop();
    env.deploy();
    // Now a managed PostgreSQL with its volume, from the image
    // scripts/images.sh builds offline (scripts/test.sh builds it).
    env.layer(
        "pg.yaml",
        "services:\n  postgres:\n    enabled: true\n    image: taskctl/postgres:bookworm\n    password: env:TASKCTL_TEST_DOCKER_PG\n",
    );
    let out = env
        .command(&["deploy", "--yes"])
        .env("TASKCTL_TEST_DOCKER_PG", "pw")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let volume = format!("postgres-data.{}.development", env.name);
    docker(&["volume", "inspect", &volume]);
    let out = env.run(&["destroy", "--yes"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let left = docker(&["ps", "-aq", "--filter", &format!("label={}", env.label())]);
    assert_eq!(left.trim(), "", "containers left after destroy");
    let networks = docker(&["network", "ls", "--format", "{{.Name}}"]);
    assert!(!networks.lines().any(|n| n == format!("{}-net", env.name)));
    docker(&["volume", "inspect", &volume]);
    let out = env.run(&["destroy", "--yes", "--purge"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let volumes = docker(&["volume", "ls", "-q"]);
    assert!(
        !volumes.lines().any(|v| v == volume),
        "{volume} survived --purge"
    );
}

/// Runs taskctl with short gate timeouts and watch window, as CI would
/// (`CI` set: nobody can be asked for an approval).
pub(crate) fn quick(env: &Env, args: &[&str]) -> Output {
    env.command(args)
        .env("TASKCTL_GATE_TIMEOUT", "10s")
        .env("TASKCTL_WATCH_WINDOW", "2s")
        .env("CI", "true")
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

pub(crate) fn history(env: &Env) -> Vec<(u64, String, String)> {
    let out = quick(env, &["history", "-o", "json"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    v.as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["revision"].as_u64().unwrap(),
                r["status"].as_str().unwrap().to_owned(),
                r["description"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

fn assert_env_value(env: &Env, expected: &str) {
    for a in env.assert_three_healthy() {
        let vars = env.inspect(&a.name, "{{json .Config.Env}}");
        assert!(vars.contains(expected), "{}: {vars}", a.name);
    }
}

/// A release whose verification fails (its agents are registered where
/// Prometheus does not look, so `validate_metrics` never sees them) is
/// rolled back to the previous release whole, config included; then
/// `rollback --to 1` needs an approver in CI and restores release 1.
#[test]
fn a_failed_gate_rolls_back_automatically_and_rollback_to_needs_approval() {
    let mut env = Env::new("dk-rb");
    let first = quick(&env, &["deploy", "--yes"]);
    assert_eq!(first.status.code(), Some(0), "{}", text(&first));
    assert_env_value(&env, "MAX_CONCURRENT_TASKS=50");
    let unwatched = env.dir.path().join("unwatched");
    std::fs::create_dir(&unwatched).unwrap();
    env.layer(
        "blind.yaml",
        &format!(
            "target:\n  docker:\n    prometheus_file_sd: {}\nagents:\n  - name: {AGENT}\n    env:\n      - name: MAX_CONCURRENT_TASKS\n        value: \"40\"\n",
            unwatched.display()
        ),
    );
    let second = quick(&env, &["deploy", "--yes"]);
    let out = text(&second);
    assert_eq!(second.status.code(), Some(1), "{out}");
    assert!(
        out.contains("validate_metrics"),
        "the failed gate is named: {out}"
    );
    assert!(
        out.contains("no series for `up{instance="),
        "with what it saw: {out}"
    );
    assert!(
        out.contains("rolled back automatically to release 1"),
        "{out}"
    );
    assert_env_value(&env, "MAX_CONCURRENT_TASKS=50");
    let releases = history(&env);
    let statuses: Vec<(u64, &str)> = releases.iter().map(|(r, s, _)| (*r, s.as_str())).collect();
    assert_eq!(
        statuses,
        [(1, "superseded"), (2, "failed"), (3, "deployed")],
        "{releases:?}"
    );
    assert!(
        releases[2].2.contains("automatic rollback to 1"),
        "{releases:?}"
    );

    let refused = quick(&env, &["rollback", "--to", "2"]);
    assert_eq!(refused.status.code(), Some(1), "{}", text(&refused));
    assert!(text(&refused).contains("--approve"), "{}", text(&refused));
    let approved = quick(&env, &["rollback", "--to", "1", "--approve", "lead"]);
    assert_eq!(approved.status.code(), Some(0), "{}", text(&approved));
    assert_env_value(&env, "MAX_CONCURRENT_TASKS=50");
    let last = history(&env).pop().unwrap();
    assert_eq!(last.1, "deployed");
    assert!(
        last.2.contains("rollback to 1") && last.2.contains("lead"),
        "{last:?}"
    );
    let audit = quick(&env, &["audit", "-o", "json"]);
    let audit: serde_json::Value = serde_json::from_slice(&audit.stdout).unwrap();
    let entries = audit.as_array().unwrap();
    assert!(
        entries.iter().any(|e| e["action"] == "automatic_rollback"),
        "{audit:#}"
    );
    assert!(
        entries
            .iter()
            .any(|e| e["action"] == "rollback" && e["approver"] == "lead"),
        "{audit:#}"
    );
}

/// The must-show: a deploy of a broken agent version is rolled back
/// automatically while a probe keeps sending tasks, and no task is lost.
///
/// The broken version's agents start and answer `/ready`, but cut every
/// result's output to 8 bytes (`OUTPUT_LIMIT_BYTES`), so the functional gate
/// fails and the automatic rollback restores release 1: all three replicas
/// are replaced twice, forward and back, each old one drained by SIGTERM,
/// while a task arrives every 100 ms and runs for 200 ms. The agents consume
/// a queue of this test's own, so no other environment's agents take its
/// tasks.
#[test]
fn a_broken_version_is_rolled_back_automatically_while_tasks_keep_coming_and_none_is_lost() {
    let mut env = Env::new("dk-probe");
    let queue = format!("taskctl.tasks.{}", env.name);
    env.layer(
        "queue.yaml",
        &format!(
            "agents:\n  - name: {AGENT}\n    env:\n      - name: TASK_QUEUE\n        value: \"{queue}\"\n"
        ),
    );
    let first = quick(&env, &["deploy", "--yes"]);
    assert_eq!(first.status.code(), Some(0), "{}", text(&first));
    let before = env.assert_three_healthy();

    let probe = Probe::start(
        &env.agents_amqp_url(),
        &env.signing_key(),
        &queue,
        "probe task",
        Duration::from_millis(100),
        200,
    );
    env.layer(
        "broken.yaml",
        &format!(
            "agents:\n  - name: {AGENT}\n    env:\n      - name: OUTPUT_LIMIT_BYTES\n        value: \"8\"\n"
        ),
    );
    let broken = quick(&env, &["deploy", "--yes"]);
    // A few more tasks to the restored release.
    std::thread::sleep(Duration::from_secs(1));
    let report = probe.finish();

    let out = text(&broken);
    assert_eq!(broken.status.code(), Some(1), "{out}");
    assert!(out.contains("test_functionality"), "the failed gate: {out}");
    assert!(out.contains("instead of"), "what it saw: {out}");
    assert!(
        out.contains("rolled back automatically to release 1"),
        "{out}"
    );
    let statuses: Vec<(u64, String)> = history(&env).into_iter().map(|(r, s, _)| (r, s)).collect();
    assert_eq!(
        statuses,
        [
            (1, "superseded".to_string()),
            (2, "failed".to_string()),
            (3, "deployed".to_string())
        ]
    );
    let after = env.assert_three_healthy();
    for (b, a) in before.iter().zip(&after) {
        assert_ne!(b.id, a.id, "{} was never replaced", a.name);
        let vars = env.inspect(&a.name, "{{json .Config.Env}}");
        assert!(!vars.contains("OUTPUT_LIMIT_BYTES"), "{}: {vars}", a.name);
    }

    // No task lost: every task the broker confirmed has its result.
    report.assert_none_lost(20, "during the deploy");
    for (id, r) in &report.results {
        assert_eq!(
            r.status,
            taskctl_protocol::TaskStatus::Succeeded,
            "{id}: {r:?}"
        );
    }
    let by_broken = report.results.values().filter(|r| r.truncated).count();
    eprintln!(
        "probe: {} tasks, all answered ({by_broken} by the broken release, {} duplicate results)",
        report.published.len(),
        report.duplicates
    );
}
