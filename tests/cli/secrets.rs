//! Secrets end to end on target `docker`, against the real OpenBao dev
//! server and RabbitMQ of scripts/test-env.sh: every credential of the
//! local profile comes from Vault, reaches the agents as files, never
//! shows in anything taskctl wrote or in `docker inspect`; a rotation under
//! load loses no task and a rollback restores the previous version; Vault
//! failures are clear errors.

use crate::docker::{AGENT, Env, docker, history, quick, required, text};
use crate::harness::{RaftNodes, urlencode};
use crate::probe::Probe;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

fn vault() -> (String, String) {
    (
        required("TASKCTL_TEST_VAULT_ADDR"),
        required("TASKCTL_TEST_VAULT_TOKEN"),
    )
}

/// `curl` against OpenBao with `token`; the JSON answer.
fn bao(method: &str, path: &str, token: &str, body: Option<&str>) -> serde_json::Value {
    let (addr, _) = vault();
    let mut cmd = Command::new("curl");
    cmd.args(["-s", "-X", method, "-H"])
        .arg(format!("X-Vault-Token: {token}"))
        .arg(format!("{addr}/v1/{path}"));
    if let Some(b) = body {
        cmd.args(["-d", b]);
    }
    let out = cmd.output().expect("curl runs");
    serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null)
}

/// The managed `messaging` secret of `env` at `version` (latest: None).
fn messaging(env: &Env, version: Option<u64>) -> (u64, serde_json::Value) {
    let (_, token) = vault();
    let rest = env.secrets_path().trim_start_matches("secret/").to_string();
    let query = version.map(|v| format!("?version={v}")).unwrap_or_default();
    let v = bao(
        "GET",
        &format!("secret/data/{rest}/messaging{query}"),
        &token,
        None,
    );
    (
        v["data"]["metadata"]["version"].as_u64().unwrap_or(0),
        v["data"]["data"].clone(),
    )
}

/// Logs in to the test broker over AMQP as `user`, in the virtual host
/// of `env`.
fn amqp_login(env: &Env, user: &str, password: &str) -> Result<(), String> {
    let url = format!(
        "amqp://{}:{}@127.0.0.1:5672/{}",
        urlencode(user),
        urlencode(password),
        env.name
    );
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(async {
            let c = lapin::Connection::connect(&url, lapin::ConnectionProperties::default())
                .await
                .map_err(|e| e.to_string())?;
            let _ = c.close(200, "bye".into()).await;
            Ok(())
        })
}

/// Every value of the secret long enough to be recognised (not the
/// username, which is not secret).
fn values(data: &serde_json::Value) -> Vec<String> {
    data.as_object()
        .unwrap()
        .iter()
        .filter(|(k, _)| k.as_str() != "username")
        .map(|(_, v)| v.as_str().unwrap().to_string())
        .collect()
}

/// Fails if any of `secrets` is in `bytes`; `what` says where.
fn assert_no_leak(what: &str, bytes: &[u8], secrets: &[String]) {
    for s in secrets {
        assert!(
            !bytes.windows(s.len()).any(|w| w == s.as_bytes()),
            "a secret value leaked into {what}"
        );
    }
}

fn scan_dir(dir: &Path, secrets: &[String]) -> usize {
    let mut files = 0;
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            files += scan_dir(&path, secrets);
        } else if let Ok(bytes) = std::fs::read(&path) {
            assert_no_leak(&path.display().to_string(), &bytes, secrets);
            files += 1;
        }
    }
    files
}

/// The file `path` of a container, through `docker cp` (a tar): mode, uid
/// and content.
fn container_file(container: &str, path: &str) -> (u32, u64, String) {
    let out = Command::new("docker")
        .args(["cp", &format!("{container}:{path}"), "-"])
        .output()
        .unwrap();
    assert!(out.status.success(), "docker cp {container}:{path}");
    let mut archive = tar::Archive::new(out.stdout.as_slice());
    let mut entry = archive.entries().unwrap().next().unwrap().unwrap();
    let (mode, uid) = (
        entry.header().mode().unwrap(),
        entry.header().uid().unwrap(),
    );
    let mut content = String::new();
    std::io::Read::read_to_string(&mut entry, &mut content).unwrap();
    (mode, uid, content)
}

#[test]
fn every_credential_comes_from_vault_as_files_and_nothing_taskctl_wrote_holds_one() {
    let env = Env::new("sec-full");
    let mut outputs: Vec<Output> = Vec::new();
    let plan = quick(&env, &["plan"]);
    assert_eq!(plan.status.code(), Some(0), "{}", text(&plan));
    assert!(
        text(&plan).contains("secrets/messaging") && text(&plan).contains("taskctl generates it"),
        "{}",
        text(&plan)
    );
    outputs.push(plan);
    let deploy = quick(&env, &["deploy", "--yes"]);
    assert_eq!(deploy.status.code(), Some(0), "{}", text(&deploy));
    // The functional gate sent a real task through RabbitMQ to an agent:
    // the agents consume with the generated credential.
    assert!(
        text(&deploy).contains("test_functionality (functional): passed"),
        "{}",
        text(&deploy)
    );
    outputs.push(deploy);

    let (version, data) = messaging(&env, None);
    assert_eq!(version, 1);
    assert_eq!(data["username"], env.broker_user().as_str());
    let password = data["password"].as_str().unwrap().to_string();
    assert!(password.len() >= 32, "a strong generated password");
    amqp_login(&env, &env.broker_user(), &password).expect("the generated credential logs in");
    let refused = amqp_login(&env, &env.broker_user(), "not-the-password").unwrap_err();
    assert!(
        refused.to_uppercase().contains("ACCESS") || refused.contains("auth"),
        "{refused}"
    );
    // The environment's virtual host is its agents' alone: the broker
    // refuses guest there (guest keeps only the default vhost it had).
    let guest = amqp_login(&env, "guest", "guest").unwrap_err();
    assert!(guest.contains("access to vhost"), "{guest}");

    // Files, never variables: 0400, owned by the agent's user.
    let secrets = values(&data);
    for agent in env.assert_three_healthy() {
        let vars = env.inspect(&agent.name, "{{json .Config.Env}}");
        assert!(
            vars.contains("BROKER_PASSWORD_FILE=/run/secrets/broker_password"),
            "{vars}"
        );
        assert!(!vars.contains("BROKER_PASSWORD="), "{vars}");
        let (mode, uid, content) = container_file(&agent.name, "/run/secrets/broker_password");
        assert_eq!((mode & 0o777, uid), (0o400, 65532), "{}", agent.name);
        assert_eq!(content, password);
    }

    outputs.push(quick(&env, &["secrets", "status"]));
    let status = quick(&env, &["secrets", "status", "-o", "json"]);
    assert_eq!(status.status.code(), Some(0), "{}", text(&status));
    let rows: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(rows[0]["name"], "messaging");
    assert_eq!(rows[0]["version"], 1);
    assert_eq!(rows[0]["in_use"], 1, "the running release reads version 1");
    assert_eq!(rows[0]["state"], "ok");
    assert!(
        rows[0]["consumers"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c.as_str().unwrap().contains("BROKER_PASSWORD")),
        "{rows}"
    );
    outputs.push(status);
    outputs.push(quick(&env, &["history", "-o", "json"]));
    outputs.push(quick(&env, &["status"]));
    outputs.push(quick(&env, &["audit"]));
    let noop = quick(&env, &["deploy", "--yes", "-o", "json"]);
    assert_eq!(noop.status.code(), Some(0), "{}", text(&noop));
    outputs.push(noop);

    // The scan: every byte taskctl printed or wrote, and the engine's view
    // of every container of the environment (release records included).
    for (i, out) in outputs.iter().enumerate() {
        assert_no_leak(&format!("the output of command {i}"), &out.stdout, &secrets);
        assert_no_leak(&format!("the output of command {i}"), &out.stderr, &secrets);
    }
    let files = scan_dir(env.dir.path(), &secrets);
    assert!(
        files >= 3,
        "the state directory holds the journal and audit"
    );
    let containers = docker(&["ps", "-aq", "--filter", &format!("label={}", env.label())]);
    let ids: Vec<&str> = containers.split_whitespace().collect();
    assert!(ids.len() >= 4, "three agents and a release record: {ids:?}");
    for id in ids {
        let inspect = docker(&["inspect", id]);
        assert_no_leak(
            &format!("docker inspect {id}"),
            inspect.as_bytes(),
            &secrets,
        );
    }

    // The same scan as a user runs it: scripts/leak-scan.sh finds nothing
    // in the outputs, the state directory and the containers, and does find
    // a value planted in a file.
    let log = env.dir.path().join("outputs.log");
    let mut all = Vec::new();
    for out in &outputs {
        all.extend_from_slice(&out.stdout);
        all.extend_from_slice(&out.stderr);
    }
    std::fs::write(&log, &all).unwrap();
    let scan = leak_scan(&env, &[&log]);
    assert_eq!(scan.status.code(), Some(0), "{}", text(&scan));
    assert!(text(&scan).contains("0 leak(s)"), "{}", text(&scan));
    let planted = env.dir.path().join("planted.txt");
    std::fs::write(&planted, format!("oops {password}\n")).unwrap();
    let scan = leak_scan(&env, &[&planted]);
    assert_eq!(scan.status.code(), Some(1), "{}", text(&scan));
    assert!(
        text(&scan).contains("planted.txt: holds the value of vault:secret/taskctl/test/"),
        "{}",
        text(&scan)
    );
    assert!(!text(&scan).contains(&password));
}

/// scripts/leak-scan.sh over `env` and `files`.
fn leak_scan(env: &Env, files: &[&Path]) -> Output {
    let mut cmd = Command::new(crate::harness::repo_root().join("scripts/leak-scan.sh"));
    for p in &env.profiles {
        cmd.arg("-p").arg(p);
    }
    cmd.args(files)
        .current_dir(env.dir.path())
        .env("TASKCTL", assert_cmd::cargo::cargo_bin("taskctl"))
        .env("TASKCTL_SECRETS_PATH", env.secrets_path())
        .env("VAULT_ADDR", vault().0)
        .env("VAULT_TOKEN", vault().1)
        .env("NO_COLOR", "1")
        .output()
        .unwrap()
}

#[test]
fn rotating_the_broker_credential_under_load_loses_no_task_and_rollback_restores_it() {
    let mut env = Env::new("sec-rot");
    let queue = format!("taskctl.tasks.{}", env.name);
    env.layer(
        "queue.yaml",
        &format!(
            "agents:\n  - name: {AGENT}\n    env:\n      - name: TASK_QUEUE\n        value: \"{queue}\"\n"
        ),
    );
    let first = quick(&env, &["deploy", "--yes"]);
    assert_eq!(first.status.code(), Some(0), "{}", text(&first));
    let (_, v1) = messaging(&env, None);
    let v1_password = v1["password"].as_str().unwrap().to_string();

    let probe = Probe::start(
        &env.agents_amqp_url(),
        &env.signing_key(),
        &queue,
        "rotation probe",
        Duration::from_millis(2),
        0,
    );
    std::thread::sleep(Duration::from_millis(500));
    let rotate = quick(&env, &["secrets", "rotate", "messaging", "--yes"]);
    // At least 1,000 tasks in all, the rotation in the middle of them.
    let deadline = Instant::now() + Duration::from_secs(60);
    while probe.published() < 1000 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    let report = probe.finish();
    assert_eq!(rotate.status.code(), Some(0), "{}", text(&rotate));

    let (version, v2) = messaging(&env, None);
    assert_eq!(version, 2);
    let v2_password = v2["password"].as_str().unwrap().to_string();
    assert_ne!(v1_password, v2_password);
    assert_eq!(v2["username"], v1["username"], "a rotation keeps the user");
    amqp_login(&env, &env.broker_user(), &v2_password).expect("the broker has the new password");
    assert!(amqp_login(&env, &env.broker_user(), &v1_password).is_err());
    for agent in env.assert_three_healthy() {
        let spec = env.inspect(&agent.name, "{{index .Config.Labels \"taskctl.dev/spec\"}}");
        assert!(spec.contains("messaging#password (version 2)"), "{spec}");
        let (_, _, content) = container_file(&agent.name, "/run/secrets/broker_password");
        assert_eq!(
            content, v2_password,
            "{} runs on the new version",
            agent.name
        );
    }

    report.assert_none_lost(1000, "during the rotation");
    eprintln!(
        "rotation: {} tasks, none lost ({} duplicate results)",
        report.published.len(),
        report.duplicates
    );

    // The rollback restores the credential the release ran with.
    let back = quick(&env, &["rollback", "--approve", "dana", "--yes"]);
    assert_eq!(back.status.code(), Some(0), "{}", text(&back));
    let statuses: Vec<String> = history(&env).into_iter().map(|(_, s, _)| s).collect();
    assert_eq!(statuses, ["superseded", "superseded", "deployed"]);
    amqp_login(&env, &env.broker_user(), &v1_password).expect("the broker has version 1 again");
    assert!(amqp_login(&env, &env.broker_user(), &v2_password).is_err());
    for agent in env.assert_three_healthy() {
        let spec = env.inspect(&agent.name, "{{index .Config.Labels \"taskctl.dev/spec\"}}");
        assert!(spec.contains("messaging#password (version 1)"), "{spec}");
        let (_, _, content) = container_file(&agent.name, "/run/secrets/broker_password");
        assert_eq!(content, v1_password);
    }
    // Vault keeps both versions; its latest is still 2, and `secrets
    // status` says the running release reads 1.
    assert_eq!(messaging(&env, None).0, 2);
    let status = quick(&env, &["secrets", "status", "-o", "json"]);
    let rows: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(
        (rows[0]["version"].as_u64(), rows[0]["in_use"].as_u64()),
        (Some(2), Some(1)),
        "{rows}"
    );
    let out = text(&back);
    assert!(!out.contains(&v1_password) && !out.contains(&v2_password));
}

/// A `bao server -dev` of the test's own on a free port, killed on drop.
struct OwnBao {
    child: std::process::Child,
    addr: String,
    _home: tempfile::TempDir,
}

impl OwnBao {
    fn start() -> OwnBao {
        let bin = required("TASKCTL_TEST_BAO_BIN");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let home = tempfile::tempdir().unwrap();
        let child = Command::new(bin)
            .args([
                "server",
                "-dev",
                "-dev-root-token-id=own-root",
                &format!("-dev-listen-address=127.0.0.1:{port}"),
            ])
            .env("HOME", home.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let addr = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let ok = Command::new("curl")
                .args(["-s", "-o", "/dev/null", "-w", "%{http_code}"])
                .arg(format!("{addr}/v1/sys/health"))
                .output()
                .map(|o| o.stdout == b"200")
                .unwrap_or(false);
            if ok {
                break;
            }
            assert!(Instant::now() < deadline, "own OpenBao did not start");
            std::thread::sleep(Duration::from_millis(100));
        }
        OwnBao {
            child,
            addr,
            _home: home,
        }
    }
}

impl Drop for OwnBao {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn rotating_the_signing_key_under_load_rejects_no_task_signed_with_the_old_one() {
    let mut env = Env::new("sec-sign");
    let queue = format!("taskctl.tasks.{}", env.name);
    env.layer(
        "queue.yaml",
        &format!(
            "agents:\n  - name: {AGENT}\n    env:\n      - name: TASK_QUEUE\n        value: \"{queue}\"\n"
        ),
    );
    let first = quick(&env, &["deploy", "--yes"]);
    assert_eq!(first.status.code(), Some(0), "{}", text(&first));
    let old_key = env.signing_key();

    // A producer that keeps signing with the key it read before the
    // rotation, as a real one does until it reloads.
    let probe = Probe::start(
        &env.agents_amqp_url(),
        &old_key,
        &queue,
        "signing probe",
        Duration::from_millis(2),
        0,
    );
    std::thread::sleep(Duration::from_millis(500));
    let rotate = quick(&env, &["secrets", "rotate", "signing", "--yes"]);
    let deadline = Instant::now() + Duration::from_secs(60);
    while probe.published() < 1000 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    let report = probe.finish();
    assert_eq!(rotate.status.code(), Some(0), "{}", text(&rotate));
    let new_key = env.signing_key();
    assert_ne!(old_key, new_key, "the rotation made a new key");
    report.assert_none_lost(1000, "during the signing key's rotation");
    let rejected: Vec<_> = report
        .results
        .values()
        .filter(|r| r.status != taskctl_protocol::TaskStatus::Succeeded)
        .collect();
    assert!(rejected.is_empty(), "tasks refused: {rejected:#?}");
    // Every agent now trusts both keys; taskctl signs with the new one.
    for agent in env.assert_three_healthy() {
        let (_, _, keys) = container_file(&agent.name, "/run/secrets/task_signing_public_keys");
        assert_eq!(keys.lines().count(), 2, "{}: {keys}", agent.name);
    }
    let sent = quick(&env, &["task", "send", "echo", "new", "key"]);
    assert_eq!(sent.status.code(), Some(0), "{}", text(&sent));
    assert_eq!(String::from_utf8_lossy(&sent.stdout), "new key");
    eprintln!(
        "signing key rotation: {} tasks signed with the old key, none refused",
        report.published.len()
    );
}

fn failing(env: &Env, vars: &[(&str, &str)]) -> String {
    let mut cmd = env.command(&["deploy", "--yes"]);
    cmd.env("TASKCTL_GATE_TIMEOUT", "5s").env("CI", "true");
    for (k, v) in vars {
        cmd.env(k, v);
    }
    let out = cmd.stdin(Stdio::null()).output().unwrap();
    let text = text(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        env.agents().is_empty(),
        "nothing starts when a secret cannot be read: {text}"
    );
    text
}

#[test]
fn vault_failures_are_clear_errors_that_name_the_path_or_address() {
    let (addr, root) = vault();
    let mut env = Env::new("sec-err");

    // Unreachable.
    let out = failing(&env, &[("VAULT_ADDR", "http://127.0.0.1:1")]);
    assert!(
        out.contains("cannot reach Vault at http://127.0.0.1:1"),
        "{out}"
    );

    // Sealed: a server of the test's own, sealed.
    let own = OwnBao::start();
    bao_at(&own.addr, "PUT", "sys/seal", "own-root");
    let out = failing(
        &env,
        &[("VAULT_ADDR", &own.addr), ("VAULT_TOKEN", "own-root")],
    );
    assert!(
        out.contains(&format!("Vault at {} is sealed", own.addr)),
        "{out}"
    );
    drop(own);

    // A token whose policy reads another path only.
    let policy = format!("taskctl-test-{}", env.name);
    bao(
        "PUT",
        &format!("sys/policies/acl/{policy}"),
        &root,
        Some(
            r#"{"policy":"path \"secret/data/elsewhere/*\" { capabilities = [\"read\"] }\npath \"secret/metadata/elsewhere/*\" { capabilities = [\"read\"] }"}"#,
        ),
    );
    let token = bao(
        "POST",
        "auth/token/create",
        &root,
        Some(&format!(r#"{{"policies":["{policy}"],"ttl":"10m"}}"#)),
    )["auth"]["client_token"]
        .as_str()
        .expect("a token")
        .to_string();
    let out = failing(&env, &[("VAULT_TOKEN", &token)]);
    assert!(out.contains("permission denied on"), "{out}");
    assert!(
        out.contains(&format!("taskctl/test/{}/messaging", env.name)),
        "names the path: {out}"
    );
    assert!(!out.contains(&token), "the token is never shown");
    bao("DELETE", &format!("sys/policies/acl/{policy}"), &root, None);

    // A reference to a secret nobody wrote.
    let missing = format!("secret/taskctl/test/{}/absent", env.name);
    env.layer(
        "missing.yaml",
        &format!(
            "agents:\n  - name: {AGENT}\n    env:\n      - name: API_TOKEN\n        secret: vault:{missing}#token\n"
        ),
    );
    let out = failing(&env, &[("VAULT_ADDR", &addr), ("VAULT_TOKEN", &root)]);
    assert!(out.contains(&format!("vault:{missing}#token")), "{out}");
    assert!(out.contains("no secret at"), "{out}");
}

fn bao_at(addr: &str, method: &str, path: &str, token: &str) {
    let out = Command::new("curl")
        .args(["-s", "-X", method, "-H"])
        .arg(format!("X-Vault-Token: {token}"))
        .arg(format!("{addr}/v1/{path}"))
        .output()
        .unwrap();
    assert!(out.status.success());
}

#[test]
fn deploy_initializes_and_unseals_a_three_node_raft_cluster_and_names_a_sealed_node() {
    let mut nodes = RaftNodes::start();
    let dir = tempfile::tempdir().unwrap();
    let name = format!("vault-raft-{:x}", std::process::id());
    let keys = dir.path().join("vault-keys.json");
    let profile = dir.path().join("vault.yaml");
    std::fs::write(
        &profile,
        format!(
            "apiVersion: taskctl.dev/v1\nkind: Profile\nmetadata:\n  name: {name}\n  environment: development\n\
             target:\n  kind: docker\n  docker:\n    network: {name}-net\n\
             secrets:\n  entries:\n    demo: {{ path: secret/taskctl/demo, type: generic, rotation: 30d }}\n\
             services:\n  vault:\n    external:\n      url: {}\n    cluster:\n      nodes: [{}]\n      key_shares: 3\n      key_threshold: 2\n      keys_file: {}\n\
             environments:\n  development:\n    log_level: INFO\n    resource_limits: {{ cpu: \"1\", memory: 1Gi }}\n",
            nodes.addrs[0],
            nodes.addrs.join(", "),
            keys.display()
        ),
    )
    .unwrap();
    let run = |args: &[&str]| -> Output {
        Command::new(assert_cmd::cargo::cargo_bin("taskctl"))
            .args(args)
            .arg("-p")
            .arg(&profile)
            .current_dir(dir.path())
            .env("NO_COLOR", "1")
            .env("TASKCTL_WATCH_WINDOW", "0s")
            .env_remove("TASKCTL_PROFILE")
            // This cluster's own credentials only: the AppRole taskctl sets up.
            .env_remove("VAULT_ADDR")
            .env_remove("VAULT_TOKEN")
            .env_remove("VAULT_ROLE_ID")
            .env_remove("VAULT_SECRET_ID")
            .stdin(Stdio::null())
            .output()
            .unwrap()
    };
    struct Cleanup<'a>(&'a dyn Fn(&[&str]) -> Output);
    impl Drop for Cleanup<'_> {
        fn drop(&mut self) {
            let _ = (self.0)(&["destroy", "--yes"]);
        }
    }
    let _cleanup = Cleanup(&run);

    let plan = run(&["plan"]);
    assert_eq!(plan.status.code(), Some(0), "{}", text(&plan));
    assert!(
        text(&plan).contains("create vault/cluster"),
        "{}",
        text(&plan)
    );
    let first = run(&["deploy", "--yes"]);
    assert_eq!(first.status.code(), Some(0), "{}", text(&first));
    let out = text(&first);
    assert!(
        out.contains(&format!("{} initialized and unsealed", nodes.addrs[0])),
        "{out}"
    );
    for addr in &nodes.addrs[1..] {
        assert!(out.contains(&format!("{addr} unsealed")), "{out}");
    }
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&keys).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "the keys file is the operator's alone");
    let held: serde_json::Value = serde_json::from_slice(&std::fs::read(&keys).unwrap()).unwrap();
    let shares: Vec<String> = held["keys_base64"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k.as_str().unwrap().to_string())
        .collect();
    assert_eq!(shares.len(), 3);
    for share in &shares {
        assert!(!out.contains(share.as_str()), "an unseal key was printed");
    }
    // taskctl's own access: an AppRole in a 0600 file; the root token is
    // revoked; the managed secret was written through the AppRole.
    let approle = dir.path().join("vault-approle.json");
    let mode = std::fs::metadata(&approle).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    assert!(out.contains("the root token is revoked"), "{out}");
    let root = held["root_token"].as_str().unwrap();
    let lookup = Command::new("curl")
        .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "-H"])
        .arg(format!("X-Vault-Token: {root}"))
        .arg(format!("{}/v1/auth/token/lookup-self", nodes.addrs[0]))
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&lookup.stdout),
        "403",
        "the root token still works"
    );
    let status = run(&["secrets", "status", "-o", "json"]);
    assert_eq!(status.status.code(), Some(0), "{}", text(&status));
    let rows: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(rows[0]["name"], "demo");
    assert_eq!(rows[0]["version"], 1);
    for addr in &nodes.addrs {
        let health = Command::new("curl")
            .args(["-s", "-o", "/dev/null", "-w", "%{http_code}"])
            .arg(format!("{addr}/v1/sys/health"))
            .output()
            .unwrap();
        let code = String::from_utf8_lossy(&health.stdout).to_string();
        assert!(code == "200" || code == "429", "{addr}: HTTP {code}");
    }

    // A second run changes nothing.
    let again = run(&["plan", "--detailed-exitcode"]);
    assert_eq!(again.status.code(), Some(0), "{}", text(&again));
    let before = std::fs::read(&keys).unwrap();
    let second = run(&["deploy", "--yes"]);
    assert_eq!(second.status.code(), Some(0), "{}", text(&second));
    assert!(text(&second).contains("nothing to do"), "{}", text(&second));
    assert_eq!(
        std::fs::read(&keys).unwrap(),
        before,
        "the keys file is never rewritten"
    );

    // A restarted node comes back sealed: the plan names it, a deploy
    // unseals it from the keys file.
    nodes.kill(2);
    nodes.launch(2);
    let plan = run(&["plan", "--detailed-exitcode"]);
    assert_eq!(plan.status.code(), Some(2), "{}", text(&plan));
    assert!(
        text(&plan).contains(&format!("node {}: sealed → unsealed", nodes.addrs[2])),
        "{}",
        text(&plan)
    );
    let heal = run(&["deploy", "--yes"]);
    assert_eq!(heal.status.code(), Some(0), "{}", text(&heal));
    assert!(
        text(&heal).contains(&format!("{} unsealed", nodes.addrs[2])),
        "{}",
        text(&heal)
    );

    // A node that does not answer is named too, and nothing is changed.
    nodes.kill(1);
    let down = run(&["deploy", "--yes"]);
    assert_eq!(down.status.code(), Some(1), "{}", text(&down));
    assert!(
        text(&down).contains(&format!("raft node {}", nodes.addrs[1])),
        "{}",
        text(&down)
    );
}
