//! The whole local stack of `profiles/local.yaml` on this machine's Docker
//! engine: OpenBao, RabbitMQ, PostgreSQL, Prometheus, Alertmanager and three
//! agents, each a container taskctl starts from the images
//! `scripts/images.sh` builds offline (scripts/test.sh builds them first).
//! Nothing of scripts/test-env.sh is used: the test removes its variables
//! (VAULT_ADDR, VAULT_TOKEN, the broker's admin) from taskctl's
//! environment, and checks the engine with the docker CLI, the broker with
//! an AMQP client of its own, Vault and Alertmanager over their HTTP APIs.

use crate::docker::{agent_binary, docker, free_bases, text};
use crate::harness::repo_root;
use crate::probe;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::process::{Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Images the stack runs (scripts/images.sh).
const IMAGES: &[&str] = &[
    "taskctl/openbao:bookworm",
    "taskctl/rabbitmq:bookworm",
    "taskctl/postgres:bookworm",
    "taskctl/prometheus:bookworm",
    "taskctl/alertmanager:bookworm",
];

/// A free loopback port (bound then released: good enough for a test).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Stack {
    dir: tempfile::TempDir,
    name: String,
    profile: std::path::PathBuf,
    vault: u16,
    amqp: u16,
    management: u16,
    alertmanager: u16,
    postgres: u16,
}

impl Stack {
    fn new(webhook: u16) -> Stack {
        for image in IMAGES {
            let out = Command::new("docker")
                .args(["image", "inspect", image])
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "image {image} is missing: build the stack's images with scripts/images.sh (scripts/test.sh does)"
            );
        }
        let dir = tempfile::tempdir().unwrap();
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        let name = format!("stk-{:x}{:x}", std::process::id(), nanos);
        let (http, metrics) = free_bases();
        let (vault, amqp, management, prometheus, alertmanager, postgres) = (
            free_port(),
            free_port(),
            free_port(),
            free_port(),
            free_port(),
            free_port(),
        );
        let profile = dir.path().join("stack.yaml");
        std::fs::write(
            &profile,
            format!(
                "apiVersion: taskctl.dev/v1
kind: Profile
include: [{local}]
metadata:
  name: {name}
target:
  kind: docker
  docker:
    network: {name}-net
    publish:
      vault: {vault}
      rabbitmq: {amqp}
      rabbitmq_management: {management}
      prometheus: {prometheus}
      alertmanager: {alertmanager}
      postgres: {postgres}
services:
  vault:
    cluster:
      nodes: [\"http://127.0.0.1:{vault}\"]
      key_shares: 1
      key_threshold: 1
      keys_file: .taskctl/vault-keys.json
  prometheus:
    retention: 1d
    alertmanager:
      enabled: true
      webhook_url: http://host.docker.internal:{webhook}/alerts
agents:
  - name: automated-task-executor
    ports:
      - {{ name: http, port: {http} }}
      - {{ name: metrics, port: {metrics} }}
    probes:
      liveness: {{ path: /health, port: {http}, period_seconds: 10 }}
      readiness: {{ path: /ready, port: {http}, period_seconds: 1 }}
",
                local = repo_root().join("profiles/local.yaml").display()
            ),
        )
        .unwrap();
        Stack {
            dir,
            name,
            profile,
            vault,
            amqp,
            management,
            alertmanager,
            postgres,
        }
    }

    fn run(&self, args: &[&str]) -> Output {
        self.run_with(&self.profile, args)
    }

    /// Runs taskctl with `profile` (the stack's, or a layer over it).
    fn run_with(&self, profile: &std::path::Path, args: &[&str]) -> Output {
        Command::new(assert_cmd::cargo::cargo_bin("taskctl"))
            .args(args)
            .arg("-p")
            .arg(profile)
            .current_dir(self.dir.path())
            .env("NO_COLOR", "1")
            .env("TASKCTL_AGENT_BINARY", agent_binary())
            .env("TASKCTL_WATCH_WINDOW", "5s")
            // Nothing of the test servers: the stack brings its own.
            .env_remove("VAULT_ADDR")
            .env_remove("VAULT_TOKEN")
            .env_remove("TASKCTL_AMQP_ADMIN")
            .env_remove("TASKCTL_AMQP_URL")
            .env_remove("TASKCTL_PROFILE")
            .env_remove("TASKCTL_ENV")
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }

    fn label(&self) -> String {
        format!("taskctl.dev/environment={}.development", self.name)
    }

    /// Every container of the environment, by name.
    fn containers(&self) -> Vec<String> {
        let mut names: Vec<String> = docker(&[
            "ps",
            "-a",
            "--filter",
            &format!("label={}", self.label()),
            "--filter",
            "label=taskctl.dev/role=service",
            "--format",
            "{{.Names}}",
        ])
        .lines()
        .chain(
            docker(&[
                "ps",
                "-a",
                "--filter",
                &format!("label={}", self.label()),
                "--filter",
                "label=taskctl.dev/role=agent",
                "--format",
                "{{.Names}}",
            ])
            .lines(),
        )
        .map(str::to_owned)
        .collect();
        names.sort();
        names
    }

    fn volumes(&self) -> Vec<String> {
        docker(&[
            "volume",
            "ls",
            "-q",
            "--filter",
            &format!("label={}", self.label()),
        ])
        .lines()
        .map(str::to_owned)
        .collect()
    }

    /// A secret's data, read with the AppRole taskctl left (the root token
    /// is revoked).
    fn secret(&self, path: &str) -> serde_json::Value {
        let approle: serde_json::Value = serde_json::from_slice(
            &std::fs::read(self.dir.path().join(".taskctl/vault-approle.json")).unwrap(),
        )
        .unwrap();
        let login = curl(&[
            "-s",
            "-X",
            "POST",
            "-d",
            &serde_json::json!({"role_id": approle["role_id"], "secret_id": approle["secret_id"]})
                .to_string(),
            &format!("http://127.0.0.1:{}/v1/auth/approle/login", self.vault),
        ]);
        let token = login["auth"]["client_token"].as_str().unwrap().to_owned();
        let read = curl(&[
            "-s",
            "-H",
            &format!("X-Vault-Token: {token}"),
            &format!("http://127.0.0.1:{}/v1/secret/data/{path}", self.vault),
        ]);
        read["data"]["data"].clone()
    }

    /// The agents' task-signing private key.
    fn signing_key(&self) -> String {
        self.secret("taskctl/local/signing")["private_key"]
            .as_str()
            .unwrap()
            .to_owned()
    }

    /// The CA bundle the agents trust the broker with.
    fn broker_ca(&self) -> String {
        self.secret("taskctl/local/broker-tls")["ca_certs"]
            .as_str()
            .unwrap()
            .to_owned()
    }

    /// The agents' broker URL, as published on loopback (TLS only).
    fn agents_amqp_url(&self) -> String {
        let m = self.secret("taskctl/local/messaging");
        format!(
            "amqps://{}:{}@127.0.0.1:{}/taskctl-local",
            crate::harness::urlencode(m["username"].as_str().unwrap()),
            crate::harness::urlencode(m["password"].as_str().unwrap()),
            self.amqp
        )
    }
}

impl Drop for Stack {
    /// Never panics (it may run while a failed assertion unwinds).
    fn drop(&mut self) {
        let _ = self.run(&["destroy", "--yes", "--purge"]);
        let quiet = |args: &[&str]| {
            Command::new("docker")
                .args(args)
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                .unwrap_or_default()
        };
        let filter = format!("label={}", self.label());
        for id in quiet(&["ps", "-aq", "--filter", &filter]).split_whitespace() {
            quiet(&["rm", "-f", "-v", id]);
        }
        for v in quiet(&["volume", "ls", "-q", "--filter", &filter]).split_whitespace() {
            quiet(&["volume", "rm", "-f", v]);
        }
        quiet(&["network", "rm", &format!("{}-net", self.name)]);
    }
}

fn curl(args: &[&str]) -> serde_json::Value {
    let out = Command::new("curl").args(args).output().unwrap();
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "curl {args:?}: {e}: {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

/// An HTTP server on every address of this machine (Alertmanager reaches
/// it as host.docker.internal): keeps every request body it gets.
fn webhook_receiver() -> (u16, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("0.0.0.0:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let bodies: Arc<Mutex<Vec<String>>> = Arc::default();
    let kept = bodies.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let mut reader = BufReader::new(stream);
            let mut length = 0usize;
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 {
                    break;
                }
                if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                    length = v.trim().parse().unwrap_or(0);
                }
                if line == "\r\n" {
                    break;
                }
            }
            let mut body = vec![0; length];
            let _ = reader.read_exact(&mut body);
            kept.lock()
                .unwrap()
                .push(String::from_utf8_lossy(&body).into_owned());
            let _ = reader
                .get_mut()
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
        }
    });
    (port, bodies)
}

/// Polls the engine for the environment's healthy agent containers (a
/// replacement beside the container it replaces counts too) until
/// stopped; keeps the fewest seen.
struct HealthWatch {
    stop: Arc<std::sync::atomic::AtomicBool>,
    thread: std::thread::JoinHandle<(usize, usize)>,
}

impl HealthWatch {
    fn start(label: &str) -> HealthWatch {
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (flag, label) = (stop.clone(), label.to_owned());
        let thread = std::thread::spawn(move || {
            let (mut polls, mut fewest) = (0usize, usize::MAX);
            while !flag.load(std::sync::atomic::Ordering::SeqCst) {
                let out = Command::new("docker")
                    .args(["ps", "--filter", &format!("label={label}")])
                    .args(["--filter", "label=taskctl.dev/role=agent"])
                    .args(["--format", "{{.Status}}"])
                    .output()
                    .unwrap();
                if out.status.success() {
                    let healthy = String::from_utf8_lossy(&out.stdout)
                        .lines()
                        .filter(|l| l.contains("(healthy)"))
                        .count();
                    polls += 1;
                    fewest = fewest.min(healthy);
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            (polls, fewest)
        });
        HealthWatch { stop, thread }
    }

    /// (polls, the fewest healthy agents at one poll).
    fn finish(self) -> (usize, usize) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        self.thread.join().unwrap()
    }
}

fn wait_for(what: &str, limit: Duration, mut done: impl FnMut() -> bool) {
    let started = Instant::now();
    while !done() {
        assert!(started.elapsed() < limit, "{what}: not within {limit:?}");
        std::thread::sleep(Duration::from_millis(250));
    }
}

#[test]
fn the_local_stack_comes_up_hardened_survives_a_broker_kill_rolls_without_downtime_and_goes_away() {
    let (webhook, alerts) = webhook_receiver();
    let stack = Stack::new(webhook);

    // 1. One command brings everything up; every gate passes.
    let out = stack.run(&["deploy", "--yes"]);
    let shown = text(&out);
    assert_eq!(out.status.code(), Some(0), "{shown}");
    for gate in [
        "test_functionality (functional): passed",
        "validate_metrics/automated-task-executor-1",
        "vault/cluster: done",
        "secrets/broker-user: done",
    ] {
        assert!(shown.contains(gate), "{gate}: {shown}");
    }
    assert!(
        shown.contains("verification passed"),
        "every gate passed: {shown}"
    );

    // 2. `status` lists every container, healthy.
    let names = stack.containers();
    assert_eq!(names.len(), 9, "{names:?}");
    let status = text(&stack.run(&["status"]));
    for name in &names {
        let line = status
            .lines()
            .find(|l| l.contains(name.as_str()))
            .unwrap_or_else(|| panic!("{name} in status: {status}"));
        assert!(
            line.contains("running") && line.contains("healthy"),
            "{line}"
        );
    }

    // 3. Every container hardened, no secret in any configuration, every
    //    port on loopback only.
    let secrets: Vec<String> = [
        "taskctl/local/messaging",
        "taskctl/local/broker-admin",
        "taskctl/local/postgres",
    ]
    .iter()
    .flat_map(|p| {
        let data = stack.secret(p);
        ["password", "erlang_cookie"]
            .iter()
            .filter_map(|k| data[*k].as_str().map(str::to_owned))
            .collect::<Vec<_>>()
    })
    .collect();
    assert!(secrets.len() >= 3, "{secrets:?}");
    for name in &names {
        let inspect = docker(&["inspect", name]);
        let c: serde_json::Value =
            serde_json::from_str::<serde_json::Value>(&inspect).unwrap()[0].clone();
        let user = c["Config"]["User"].as_str().unwrap_or_default();
        let uid = user.split(':').next().unwrap_or_default();
        assert!(
            !uid.is_empty() && uid != "0" && uid != "root",
            "{name} runs as `{user}`"
        );
        let host = &c["HostConfig"];
        assert_eq!(host["CapDrop"], serde_json::json!(["ALL"]), "{name}");
        assert!(
            host["CapAdd"].is_null() || host["CapAdd"] == serde_json::json!([]),
            "{name}: {}",
            host["CapAdd"]
        );
        assert_eq!(host["ReadonlyRootfs"], true, "{name}");
        assert!(
            host["SecurityOpt"]
                .to_string()
                .contains("no-new-privileges"),
            "{name}: {}",
            host["SecurityOpt"]
        );
        assert!(host["PidsLimit"].as_i64().unwrap_or(0) > 0, "{name}");
        assert!(host["Memory"].as_i64().unwrap_or(0) > 0, "{name}");
        assert!(host["NanoCpus"].as_i64().unwrap_or(0) > 0, "{name}");
        assert_ne!(host["NetworkMode"], "host", "{name}");
        for (port, bindings) in host["PortBindings"].as_object().into_iter().flatten() {
            for b in bindings.as_array().into_iter().flatten() {
                assert_eq!(b["HostIp"], "127.0.0.1", "{name} {port}");
            }
        }
        for secret in &secrets {
            assert!(
                !inspect.contains(secret.as_str()),
                "{name}: a secret in its configuration"
            );
        }
    }
    // The broker speaks AMQP over TLS only, published as 5671, with a
    // certificate of the stack's own CA: its private key is in no
    // container's configuration, and a client that trusts another CA, or
    // speaks plain AMQP, gets nothing.
    let rabbit_ports = docker(&[
        "inspect",
        "-f",
        "{{json .HostConfig.PortBindings}}",
        &format!("rabbitmq.{}.development", stack.name),
    ]);
    assert!(
        rabbit_ports.contains("\"5671/tcp\"") && !rabbit_ports.contains("\"5672/tcp\""),
        "{rabbit_ports}"
    );
    let tls = stack.secret("taskctl/local/broker-tls");
    let key = tls["key"].as_str().unwrap();
    let key_body = key.lines().nth(1).unwrap();
    for name in &names {
        assert!(
            !docker(&["inspect", name]).contains(key_body),
            "{name}: the broker's TLS key in its configuration"
        );
    }
    probe::connects(&stack.agents_amqp_url(), Some(&stack.broker_ca()))
        .expect("amqps:// trusting the stack's CA");
    let foreign = std::fs::read_to_string(
        std::env::var("TASKCTL_TEST_BROKER_CA").expect("scripts/test-env.sh's CA"),
    )
    .unwrap();
    let refused = probe::connects(&stack.agents_amqp_url(), Some(&foreign)).unwrap_err();
    assert!(refused.contains("UnknownIssuer"), "{refused}");
    let plain = stack.agents_amqp_url().replacen("amqps://", "amqp://", 1);
    assert!(
        probe::connects(&plain, None).is_err(),
        "plain AMQP on the TLS port"
    );

    // The broker has no guest, and its administrator is the generated one.
    let guest = Command::new("curl")
        .args([
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "-u",
            "guest:guest",
        ])
        .arg(format!("http://127.0.0.1:{}/api/whoami", stack.management))
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&guest.stdout), "401");
    // PostgreSQL answers with the password from Vault, on the published port.
    let db = stack.secret("taskctl/local/postgres");
    let psql = Command::new("psql")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &stack.postgres.to_string(),
            "-U",
            "taskrouter",
            "-d",
            "tasks",
            "-tAc",
            "select 1",
        ])
        .env("PGPASSWORD", db["password"].as_str().unwrap())
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&psql.stdout).trim(),
        "1",
        "{}",
        String::from_utf8_lossy(&psql.stderr)
    );

    // 4. Alertmanager delivers to the profile's webhook.
    let post = Command::new("curl")
        .args([
            "-s",
            "-X",
            "POST",
            "-H",
            "content-type: application/json",
            "-d",
        ])
        .arg(r#"[{"labels":{"alertname":"TaskctlStackTest","severity":"warning"}}]"#)
        .arg(format!(
            "http://127.0.0.1:{}/api/v2/alerts",
            stack.alertmanager
        ))
        .output()
        .unwrap();
    assert!(post.status.success());
    wait_for("the alert at the webhook", Duration::from_secs(60), || {
        alerts
            .lock()
            .unwrap()
            .iter()
            .any(|b| b.contains("TaskctlStackTest"))
    });

    // 5. A second deploy changes nothing.
    let again = stack.run(&["deploy", "--yes"]);
    let again_text = text(&again);
    assert_eq!(again.status.code(), Some(0), "{again_text}");
    assert!(again_text.contains("0 changed"), "{again_text}");

    // 6. The broker killed under a steady stream of tasks: the restart
    //    policy brings it back, the agents reconnect, no confirmed task is
    //    lost (checked from the broker's side by the probe's own client).
    let rabbit = format!("rabbitmq.{}.development", stack.name);
    let probe = probe::start_surviving_restarts(
        &stack.agents_amqp_url(),
        Some(&stack.broker_ca()),
        &stack.signing_key(),
        "taskctl.tasks",
        Duration::from_millis(5),
    );
    wait_for("500 tasks before the kill", Duration::from_secs(60), || {
        probe.published() >= 500
    });
    // A crash, as the engine sees one (`docker kill` would count as a
    // stop by hand, which the restart policy leaves alone).
    let pid = docker(&["inspect", "-f", "{{.State.Pid}}", &rabbit]);
    let killed = Command::new("kill")
        .args(["-9", pid.trim()])
        .status()
        .unwrap();
    assert!(killed.success());
    wait_for("the broker restarted", Duration::from_secs(120), || {
        docker(&[
            "inspect",
            "-f",
            "{{.State.Health.Status}} {{.RestartCount}}",
            &rabbit,
        ])
        .trim()
            == "healthy 1"
    });
    let after_kill = probe.published();
    wait_for(
        "500 more tasks after the restart",
        Duration::from_secs(120),
        || probe.published() >= after_kill + 500,
    );
    let report = probe.finish();
    report.assert_none_lost(1000, "while the broker was killed and restarted");
    eprintln!(
        "broker kill: {} tasks confirmed, all answered ({} duplicate results)",
        report.published.len(),
        report.duplicates
    );

    // 7. A rolling update of the agents, then a rollback to release 1,
    //    under a steady stream of tasks: all three replicas healthy at every
    //    poll of the engine (the profile promises maxUnavailable 0), every
    //    confirmed task answered (from the broker's side).
    let rolled = stack.dir.path().join("rolled.yaml");
    std::fs::write(
        &rolled,
        "apiVersion: taskctl.dev/v1\nkind: Profile\ninclude: [stack.yaml]\nagents:\n  - name: automated-task-executor\n    env:\n      - name: ROLLOUT_MARK\n        value: \"2\"\n",
    )
    .unwrap();
    let watch = HealthWatch::start(&stack.label());
    let probe = probe::start_surviving_restarts(
        &stack.agents_amqp_url(),
        Some(&stack.broker_ca()),
        &stack.signing_key(),
        "taskctl.tasks",
        Duration::from_millis(10),
    );
    let update = stack.run_with(&rolled, &["deploy", "--yes"]);
    assert_eq!(update.status.code(), Some(0), "{}", text(&update));
    let rollback = stack.run(&["rollback", "--to", "1", "--approve", "lead", "--yes"]);
    let rolled_back = text(&rollback);
    assert_eq!(rollback.status.code(), Some(0), "{rolled_back}");
    // backup_verification: the latest pg_dump restored into a scratch
    // database before anything changed.
    assert!(
        rolled_back.contains("restored /var/lib/postgresql/tasks-")
            && rolled_back.contains("into a scratch database"),
        "{rolled_back}"
    );
    wait_for(
        "1,000 tasks through the rollout",
        Duration::from_secs(120),
        || probe.published() >= 1000,
    );
    let report = probe.finish();
    let (polls, fewest) = watch.finish();
    report.assert_none_lost(1000, "during a rolling update and a rollback");
    assert!(polls >= 20, "the engine was polled {polls} times");
    assert!(
        fewest >= 3,
        "at one of {polls} polls only {fewest} agent containers were healthy"
    );
    for name in stack
        .containers()
        .iter()
        .filter(|n| n.starts_with("automated"))
    {
        let env = docker(&["inspect", "-f", "{{json .Config.Env}}", name]);
        assert!(
            !env.contains("ROLLOUT_MARK"),
            "{name} after the rollback: {env}"
        );
    }
    eprintln!(
        "rollout and rollback: {} tasks, all answered; {polls} polls, at least {fewest} healthy agents at each",
        report.published.len()
    );

    // 8. The deployment checklist, judged from the running stack too: the
    //    broker's TLS login, PostgreSQL's answer to an SSLRequest, the APIs
    //    asked without credentials, the alerting rules loaded, the newest
    //    dump restored. Deleting the dumps, then stopping the broker, fails
    //    the matching item.
    let checklist = |stack: &Stack| {
        let out = stack.run(&["checklist", "-o", "json"]);
        let items: Vec<serde_json::Value> =
            serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(&out)));
        (out.status.code(), items)
    };
    let find = |items: &[serde_json::Value], id: &str| -> serde_json::Value {
        items
            .iter()
            .find(|i| i["id"] == id)
            .unwrap_or_else(|| panic!("no {id}: {items:#?}"))
            .clone()
    };
    let evidence = |item: &serde_json::Value| -> String {
        item["evidence"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e.as_str().unwrap().to_owned())
            .collect::<Vec<_>>()
            .join("\n")
    };
    let (code, items) = checklist(&stack);
    // PostgreSQL without TLS and Prometheus without authentication fail
    // two items on this stack, by design of local.yaml.
    assert_eq!(code, Some(1));
    let backups = find(&items, "backup_and_restore");
    assert_eq!(backups["verdict"], "pass", "{backups:#}");
    assert!(
        evidence(&backups)
            .contains("now: the newest PostgreSQL dump: restored /var/lib/postgresql/tasks-"),
        "{backups:#}"
    );
    let tls = find(&items, "database_tls");
    let seen = evidence(&tls);
    assert!(
        seen.contains(&format!(
            "now: RabbitMQ 127.0.0.1:{}: AMQP over TLS with a certificate from the agents' CA",
            stack.amqp
        )),
        "{tls:#}"
    );
    assert!(
        seen.contains(&format!(
            "now: PostgreSQL 127.0.0.1:{}: refuses TLS",
            stack.postgres
        )),
        "{tls:#}"
    );
    let endpoints = evidence(&find(&items, "authenticated_endpoints"));
    assert!(
        endpoints.contains("now: Prometheus HTTP API: answered HTTP 200 without credentials"),
        "{endpoints}"
    );
    assert!(
        endpoints.contains("now: RabbitMQ management API: HTTP 401 without credentials"),
        "{endpoints}"
    );
    assert!(
        endpoints.contains("now: Vault API: HTTP 403 without credentials"),
        "{endpoints}"
    );
    let monitoring = find(&items, "monitoring_and_alerting");
    assert_eq!(monitoring["verdict"], "pass", "{monitoring:#}");
    assert!(
        evidence(&monitoring).contains("now: Prometheus alerting rules: "),
        "{monitoring:#}"
    );

    let backup_container = format!("postgres-backup.{}.development", stack.name);
    docker(&[
        "exec",
        &backup_container,
        "sh",
        "-c",
        "rm -f /var/lib/postgresql/*.dump",
    ]);
    let (code, items) = checklist(&stack);
    assert_eq!(code, Some(1));
    let backups = find(&items, "backup_and_restore");
    assert_eq!(backups["verdict"], "fail", "{backups:#}");
    assert!(
        backups["reason"]
            .as_str()
            .unwrap()
            .contains("no backup in /var/lib/postgresql"),
        "{backups:#}"
    );

    docker(&["stop", &format!("rabbitmq.{}.development", stack.name)]);
    let (code, items) = checklist(&stack);
    assert_eq!(code, Some(1));
    let tls = find(&items, "database_tls");
    assert_eq!(tls["verdict"], "fail", "{tls:#}");
    assert!(
        tls["reason"].as_str().unwrap().contains(&format!(
            "RabbitMQ 127.0.0.1:{}: no login over TLS",
            stack.amqp
        )),
        "{tls:#}"
    );

    // 9. destroy: no container, no network; the volumes are kept until
    //    --purge.
    let volumes = stack.volumes();
    assert_eq!(volumes.len(), 6, "{volumes:?}");
    let destroyed = stack.run(&["destroy", "--yes"]);
    assert_eq!(
        destroyed.status.code(),
        Some(0),
        "{}\n{}",
        text(&destroyed),
        docker(&[
            "ps",
            "-a",
            "--filter",
            &format!("label={}", stack.label()),
            "--format",
            "{{.Names}} {{.Status}} {{.RunningFor}}"
        ])
    );
    assert!(stack.containers().is_empty(), "{:?}", stack.containers());
    let networks = docker(&[
        "network",
        "ls",
        "-q",
        "--filter",
        &format!("name={}-net", stack.name),
    ]);
    assert!(networks.trim().is_empty(), "{networks}");
    assert_eq!(stack.volumes().len(), 6);
    let purged = stack.run(&["destroy", "--yes", "--purge"]);
    assert_eq!(purged.status.code(), Some(0), "{}", text(&purged));
    assert!(stack.volumes().is_empty(), "{:?}", stack.volumes());
}
