//! The `kubernetes` target end to end through the CLI, against kube-double
//! (the test double of the Kubernetes API server, started in-process on a
//! random loopback port; no real cluster can run here), reached through a
//! kubeconfig file in `KUBECONFIG` as a user's would be.

use crate::harness::{
    NO_PROCESSES_BEHIND_PODS, ProductionSecrets, RaftNodes, repo_root, stderr, stdout, vault,
    vault_write,
};
use kube_double::{Config, KubeDouble};
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

struct Env {
    dir: tempfile::TempDir,
    double: KubeDouble,
    profile: PathBuf,
    /// This test's Vault paths: the deploy makes the Secrets the
    /// workloads reference from them.
    secrets: ProductionSecrets,
}

impl Env {
    async fn new() -> Env {
        Env::with_vault(true).await
    }

    /// `written`: the secrets the profile references are in Vault already;
    /// else the deploy generates them. No process stands behind the pods
    /// (see [`NO_PROCESSES_BEHIND_PODS`]).
    async fn with_vault(written: bool) -> Env {
        Env::build(written, NO_PROCESSES_BEHIND_PODS).await
    }

    /// The production profile for this test's Vault paths, with `layer`
    /// (profile YAML without a header) over it.
    async fn build(written: bool, layer: &str) -> Env {
        Env::build_with(
            written,
            layer,
            Config {
                ready_delay: Duration::from_millis(20),
                ..Config::default()
            },
        )
        .await
    }

    /// [`Env::build`] on a double configured as `config` says.
    async fn build_with(written: bool, layer: &str, config: Config) -> Env {
        let double = KubeDouble::start(config)
            .await
            .expect("kube-double listens");
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("kubeconfig"), double.kubeconfig()).unwrap();
        let unique = dir
            .path()
            .file_name()
            .unwrap()
            .to_string_lossy()
            .to_ascii_lowercase()
            .replace(|c: char| !c.is_ascii_alphanumeric(), "");
        let prefix = format!("taskctl/test/k8s-{unique}");
        let secrets = if written {
            ProductionSecrets::write(prefix)
        } else {
            ProductionSecrets::empty(prefix)
        };
        // The test's layer in a file of its own, included after the
        // production profile: it may set the same sections as the secrets.
        let base = dir.path().join("base.yaml");
        std::fs::write(
            &base,
            format!("apiVersion: taskctl.dev/v1\nkind: Profile\n{layer}"),
        )
        .unwrap();
        let profile = dir.path().join("cluster.yaml");
        std::fs::write(
            &profile,
            format!(
                "apiVersion: taskctl.dev/v1\nkind: Profile\ninclude: [{}, {}]\ntarget:\n  kind: kubernetes\n  kubernetes:\n    context: double\n{}",
                repo_root().join("profiles/production.yaml").display(),
                base.display(),
                secrets.layer()
            ),
        )
        .unwrap();
        Env {
            dir,
            double,
            profile,
            secrets,
        }
    }

    /// Runs taskctl off the runtime's threads, so the in-process double
    /// keeps serving meanwhile.
    async fn run(&self, args: &[&str], extra: Option<&str>) -> Output {
        self.run_with(args, extra, &[]).await
    }

    /// [`Env::run`] with more environment variables (set last, so they win).
    async fn run_with(&self, args: &[&str], extra: Option<&str>, vars: &[(&str, &str)]) -> Output {
        let mut cmd = Command::new(assert_cmd::cargo::cargo_bin("taskctl"));
        cmd.args(args).arg("-p").arg(&self.profile);
        if let Some(extra) = extra {
            let layer = self.dir.path().join("layer.yaml");
            std::fs::write(&layer, extra).unwrap();
            cmd.arg("-p").arg(layer);
        }
        cmd.current_dir(self.dir.path())
            .env("NO_COLOR", "1")
            .env("KUBECONFIG", self.dir.path().join("kubeconfig"))
            // The templates built into taskctl, from a directory that has
            // none (an installed taskctl's situation).
            .env_remove("TASKCTL_TEMPLATES")
            // The rollback conditions are watched, briefly.
            .env("TASKCTL_WATCH_WINDOW", "1s")
            .env("VAULT_ADDR", vault().0)
            .env("VAULT_TOKEN", vault().1)
            .env_remove("TASKCTL_PROFILE")
            .env_remove("TASKCTL_ENV")
            .envs(vars.iter().copied())
            .stdin(Stdio::null());
        tokio::task::spawn_blocking(move || cmd.output().expect("taskctl runs"))
            .await
            .unwrap()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deploy_applies_to_the_cluster_and_a_held_lease_refuses_the_next() {
    let env = Env::new().await;
    let out = env.run(&["deploy", "-y", "-o", "json"], None).await;
    assert!(out.status.success(), "{}\n{}", stdout(&out), stderr(&out));
    let text = stdout(&out);
    assert!(text.contains("\"step\":\"kubernetes/workloads\""), "{text}");
    assert!(
        env.double
            .object("/apis/apps/v1/namespaces/agent-system/deployments/task-executor")
            .is_some()
    );
    // `status` lists every pod of the environment: phase, readiness,
    // restarts, image digest and node, agents first.
    let status = env.run(&["status"], None).await;
    assert!(status.status.success(), "{}", stderr(&status));
    let shown = stdout(&status);
    let agent_line = shown
        .lines()
        .find(|l| l.trim_start().starts_with("agent-system/task-executor-"))
        .unwrap_or_else(|| panic!("no agent pod in {shown}"));
    for want in ["running", "healthy", "node-"] {
        assert!(agent_line.contains(want), "{want}: {agent_line}");
    }
    assert!(shown.contains("messaging/rabbitmq-0"), "{shown}");
    let json = env.run(&["status", "-o", "json"], None).await;
    let parsed: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    let pods = parsed["workloads"].as_array().expect("workloads");
    assert_eq!(pods[0]["role"], "agent", "{pods:?}");
    assert!(
        pods.iter()
            .all(|p| p["restarts"] == 0 && p["health"] == "healthy"),
        "{pods:?}"
    );

    // The run released its lease when it ended.
    assert!(
        !env.double
            .paths()
            .iter()
            .any(|p| p.contains("/leases/taskctl-lock-")),
        "{:?}",
        env.double.paths()
    );

    // Someone else deploys the same environment from another machine.
    let client = taskctl_kube::cluster::client_from_kubeconfig(
        Some(&env.dir.path().join("kubeconfig")),
        None,
    )
    .await
    .unwrap();
    let holder = taskctl_kube::lock::ClusterLock::with_holder(
        client,
        "task-system.production",
        Duration::from_secs(300),
        "alice@ops-1/4242".into(),
    );
    let _held = holder.acquire().await.expect("alice holds the lease");
    let layer = "agents:\n  - name: task-executor\n    replicas: 5\n";
    let plan = env.run(&["plan", "--detailed-exitcode"], Some(layer)).await;
    assert_eq!(
        plan.status.code(),
        Some(2),
        "{}\n{}",
        stdout(&plan),
        stderr(&plan)
    );
    let shown = format!("{}{}", stdout(&plan), stderr(&plan));
    assert!(shown.contains("spec.replicas"), "{shown}");
    let out = env.run(&["deploy", "-y"], Some(layer)).await;
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}\n{}",
        stdout(&out),
        stderr(&out)
    );
    let all = format!("{}{}", stdout(&out), stderr(&out));
    assert!(all.contains("alice@ops-1/4242"), "{all}");
}

/// `(revision, status)` of every kept release, from `taskctl history -o json`.
async fn history(env: &Env) -> Vec<(u64, String)> {
    let out = env.run(&["history", "-o", "json"], None).await;
    assert!(out.status.success(), "{}", stderr(&out));
    let entries: Vec<serde_json::Value> = serde_json::from_str(&stdout(&out)).unwrap();
    entries
        .iter()
        .map(|e| {
            (
                e["revision"].as_u64().unwrap(),
                e["status"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

fn agent(env: &Env) -> serde_json::Value {
    env.double
        .object("/apis/apps/v1/namespaces/agent-system/deployments/task-executor")
        .expect("the agent Deployment")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_looping_upgrade_rolls_back_and_rollback_to_1_restores_the_first_release() {
    let env = Env::new().await;
    let out = env.run(&["deploy", "-y"], None).await;
    assert!(out.status.success(), "{}", stderr(&out));
    let scaled = "agents:\n  - name: task-executor\n    replicas: 5\n";
    let out = env.run(&["deploy", "-y"], Some(scaled)).await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(agent(&env)["spec"]["replicas"], 5);

    // A new image whose pods crash-loop: the rollout fails fast and the
    // profile's automatic rollback restores release 2 as release 4.
    let broken = "agents:\n  - name: task-executor\n    replicas: 5\n    image: task-executor:1.0.1-crashloop\n";
    let out = env.run(&["deploy", "-y"], Some(broken)).await;
    let all = format!("{}{}", stdout(&out), stderr(&out));
    assert_eq!(out.status.code(), Some(1), "{all}");
    assert!(all.contains("CrashLoopBackOff"), "{all}");
    assert!(
        all.contains("rolled back automatically to release 2 (now release 4)"),
        "{all}"
    );
    let d = agent(&env);
    let image = d["spec"]["template"]["spec"]["containers"][0]["image"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(!image.contains("crashloop"), "{image}");
    assert_eq!(d["spec"]["replicas"], 5);
    assert_eq!(
        history(&env).await,
        [
            (1, "superseded".to_string()),
            (2, "superseded".to_string()),
            (3, "failed".to_string()),
            (4, "deployed".to_string()),
        ]
    );

    // The profile asks for a lead's approval: without one, in CI, refused.
    let out = env.run(&["rollback", "--to", "1"], None).await;
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert_eq!(
        agent(&env)["spec"]["replicas"],
        5,
        "changed without approval"
    );

    let out = env
        .run(&["rollback", "--to", "1", "--approve", "dana", "-y"], None)
        .await;
    let all = format!("{}{}", stdout(&out), stderr(&out));
    assert!(out.status.success(), "{all}");
    assert_eq!(agent(&env)["spec"]["replicas"], 3, "{all}");
    let releases = history(&env).await;
    assert_eq!(releases.last(), Some(&(5, "deployed".to_string())));
    let out = env.run(&["audit", "-o", "json"], None).await;
    let audit = stdout(&out);
    assert!(audit.contains("automatic_rollback"), "{audit}");
    assert!(audit.contains("dana"), "{audit}");
}

/// With nothing in Vault, a production deploy generates every managed
/// secret (KV version 1) and the cluster gets them as Secrets; `secrets
/// rotate` is refused on this target.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deploy_with_an_empty_vault_generates_every_credential_the_cluster_needs() {
    let env = Env::with_vault(false).await;
    let deploy = env.run(&["deploy", "--yes"], None).await;
    assert_eq!(deploy.status.code(), Some(0), "{}", stderr(&deploy));
    let (addr, token) = vault();
    let read = |name: &str| -> serde_json::Value {
        let out = Command::new("curl")
            .args(["-s", "-H"])
            .arg(format!("X-Vault-Token: {token}"))
            .arg(format!(
                "{addr}/v1/secret/data/{}/{name}",
                env.secrets.prefix
            ))
            .output()
            .unwrap();
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let decode = |v: &serde_json::Value| -> String {
        use base64::Engine;
        String::from_utf8(
            base64::engine::general_purpose::STANDARD
                .decode(v.as_str().unwrap())
                .unwrap(),
        )
        .unwrap()
    };
    let messaging = read("messaging");
    assert_eq!(messaging["data"]["metadata"]["version"], 1);
    let password = messaging["data"]["data"]["password"].as_str().unwrap();
    assert!(password.len() >= 32);
    // The Secret a reference to PATH becomes: `taskctl-<PATH under the
    // mount, dashed>`.
    let secret_of = |name: &str| -> serde_json::Value {
        let path = env
            .double
            .paths()
            .into_iter()
            .find(|p| p.contains("/secrets/taskctl-") && p.ends_with(&format!("-{name}")))
            .unwrap_or_else(|| panic!("no Secret for {name}: {:?}", env.double.paths()));
        env.double.object(&path).unwrap()
    };
    let secret = secret_of("messaging");
    assert_eq!(decode(&secret["data"]["password"]), password);
    let database = read("database");
    let keyfile = database["data"]["data"]["keyfile"].as_str().unwrap();
    let secret = secret_of("database");
    assert_eq!(decode(&secret["data"]["keyfile"]), keyfile);
    assert!(
        !stdout(&deploy).contains(password) && !stderr(&deploy).contains(password),
        "a generated value was printed"
    );
    // MongoDB takes its password at first boot only: no rotation of it.
    let refused = env
        .run(&["secrets", "rotate", "database", "--yes"], None)
        .await;
    assert_eq!(refused.status.code(), Some(1), "{}", stderr(&refused));
    assert!(
        stderr(&refused).contains("the in-cluster mongodb takes it at first boot only"),
        "{}",
        stderr(&refused)
    );
    assert_eq!(read("database")["data"]["metadata"]["version"], 1);
}

/// The in-cluster RabbitMQ's own user (the agents') changes password with
/// a rotation: through its management API, reached by a port-forward to a
/// broker pod, before the Secret and the agents move to the new version;
/// the Erlang cookie stays; a rollback gives the broker the old password
/// back. The test environment's real RabbitMQ stands behind the pods, its
/// user made with the first version's password as the pod's first boot
/// would make it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotating_the_broker_credential_changes_the_in_cluster_brokers_password_and_rollback_restores_it()
 {
    let env = Env::with_vault(false).await;
    let management = crate::docker::required("TASKCTL_TEST_RABBITMQ_MGMT_URL");
    env.double.serve(kube_double::Backend {
        namespace: "messaging".into(),
        pod_prefix: "rabbitmq-".into(),
        image: None,
        port: 15672,
        addrs: vec![management.trim_start_matches("http://").parse().unwrap()],
    });
    let text = |o: &Output| format!("{}\n{}", stdout(o), stderr(o));
    let deploy = env.run(&["deploy", "--yes"], None).await;
    assert_eq!(deploy.status.code(), Some(0), "{}", text(&deploy));

    let (addr, token) = vault();
    let read = |version: u64| -> serde_json::Value {
        let out = Command::new("curl")
            .args(["-s", "-H"])
            .arg(format!("X-Vault-Token: {token}"))
            .arg(format!(
                "{addr}/v1/secret/data/{}/messaging?version={version}",
                env.secrets.prefix
            ))
            .output()
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        v["data"]["data"].clone()
    };
    let first = read(1);
    let user = env
        .double
        .object("/apis/apps/v1/namespaces/messaging/statefulsets/rabbitmq")
        .unwrap()["spec"]["template"]["spec"]["containers"][0]["env"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == "RABBITMQ_DEFAULT_USER")
        .unwrap()["value"]
        .as_str()
        .unwrap()
        .to_string();
    // The broker's first boot: its own user, an administrator, with the
    // Secret's password.
    struct BrokerUser<'a>(&'a str, &'a str);
    impl Drop for BrokerUser<'_> {
        fn drop(&mut self) {
            let _ = Command::new("curl")
                .args(["-s", "-u", "guest:guest", "-X", "DELETE"])
                .arg(format!("{}/api/users/{}", self.0, self.1))
                .output();
        }
    }
    let _user = BrokerUser(&management, &user);
    let made = Command::new("curl")
        .args([
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "-u",
            "guest:guest",
            "-X",
            "PUT",
        ])
        .args(["-H", "content-type: application/json", "-d"])
        .arg(
            serde_json::json!({"password": first["password"], "tags": "administrator"}).to_string(),
        )
        .arg(format!("{management}/api/users/{user}"))
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&made.stdout).starts_with('2'),
        "{made:?}"
    );
    let login = |password: &serde_json::Value| -> String {
        let out = Command::new("curl")
            .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "-u"])
            .arg(format!("{user}:{}", password.as_str().unwrap()))
            .arg(format!("{management}/api/whoami"))
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    assert_eq!(login(&first["password"]), "200");
    let plan = env.run(&["plan", "--detailed-exitcode"], None).await;
    assert_eq!(plan.status.code(), Some(0), "{}", text(&plan));

    let checksum_of = |path: &str| {
        env.double.object(path).unwrap()["spec"]["template"]["metadata"]["annotations"]
            ["taskctl.dev/secret-checksum"]
            .clone()
    };
    let checksum =
        || checksum_of("/apis/apps/v1/namespaces/agent-system/deployments/task-executor");
    let broker_checksum =
        || checksum_of("/apis/apps/v1/namespaces/messaging/statefulsets/rabbitmq");
    let before = checksum();
    let broker_before = broker_checksum();
    assert!(
        broker_before.is_string(),
        "the broker rolls on its TLS certificate"
    );
    let rotate = env
        .run(&["secrets", "rotate", "messaging", "--yes"], None)
        .await;
    let out = text(&rotate);
    assert_eq!(rotate.status.code(), Some(0), "{out}");
    for line in out.lines().filter(|l| l.contains(": done in")) {
        eprintln!("rotation {line}");
    }
    assert!(
        out.contains(&format!("broker user {user} set to vault:secret/{}/messaging#password (version 2) on pod rabbitmq-0", env.secrets.prefix)),
        "{out}"
    );
    let second = read(2);
    assert_ne!(second["password"], first["password"]);
    assert_eq!(
        second["erlang_cookie"], first["erlang_cookie"],
        "a rotation keeps the cluster's Erlang cookie"
    );
    assert_eq!(login(&second["password"]), "200");
    assert_eq!(login(&first["password"]), "401");
    assert_ne!(checksum(), before, "the agents roll onto the new version");
    assert_eq!(
        broker_checksum(),
        broker_before,
        "the broker's password changed live: its pods do not restart"
    );
    assert!(!out.contains(second["password"].as_str().unwrap()));

    // A rollback to release 1 gives the broker its first password back.
    let back = env
        .run(&["rollback", "--to", "1", "--approve", "dana", "-y"], None)
        .await;
    assert_eq!(back.status.code(), Some(0), "{}", text(&back));
    assert_eq!(login(&first["password"]), "200");
    assert_eq!(login(&second["password"]), "401");
    assert_eq!(checksum(), before);
}

/// The production profile's own Vault (the StatefulSet's three raft pods)
/// initialized, unsealed and set up by the deploy through port-forwards of
/// the API server, then the only Vault the deploy uses: every credential is
/// generated in it and reaches the cluster as Secrets. Three real OpenBao
/// raft nodes stand behind the pods, and the double runs the pods'
/// readiness probe against them, so a Vault pod is ready only once it is
/// unsealed (a deploy that waited for it before unsealing would hang, as
/// it would on a real cluster).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deploy_initializes_and_unseals_the_vault_statefulset_through_the_api_server() {
    let mut nodes = RaftNodes::start();
    let layer = format!(
        "{NO_PROCESSES_BEHIND_PODS}services:\n  vault:\n    cluster:\n      key_shares: 3\n      key_threshold: 2\n      keys_file: vault-keys.json\n"
    );
    let env = Env::build_with(
        false,
        &layer,
        Config {
            ready_delay: Duration::from_millis(20),
            probe_readiness: true,
            ..Config::default()
        },
    )
    .await;
    env.double.serve(nodes.behind_vault_pods());
    // No other Vault: not the test environment's, not a token of it.
    let own = [("VAULT_ADDR", ""), ("VAULT_TOKEN", "")];
    let text = |o: &Output| format!("{}\n{}", stdout(o), stderr(o));

    let plan = env.run_with(&["plan"], None, &own).await;
    assert_eq!(plan.status.code(), Some(0), "{}", text(&plan));
    assert!(
        text(&plan).contains("started in this run, then initialized: 3 shares, 2 needed"),
        "{}",
        text(&plan)
    );

    let deploy = env.run_with(&["deploy", "--yes"], None, &own).await;
    let out = text(&deploy);
    assert_eq!(deploy.status.code(), Some(0), "{out}");
    // Step times, for `--no-capture` runs (a figure, not an assertion).
    for line in out.lines().filter(|l| l.contains(": done in")) {
        eprintln!("first deploy {line}");
    }
    assert!(out.contains("vault-0 initialized and unsealed"), "{out}");
    assert!(out.contains("vault-1 unsealed"), "{out}");
    assert!(out.contains("vault-2 unsealed"), "{out}");
    assert!(out.contains("the root token is revoked"), "{out}");
    use std::os::unix::fs::PermissionsExt;
    let keys = env.dir.path().join("vault-keys.json");
    assert_eq!(
        std::fs::metadata(&keys).unwrap().permissions().mode() & 0o777,
        0o600
    );
    // The pods' port-forwards were the only way in.
    let forwarded = crate::harness::forwarded_vault_pods(&env.double);
    assert_eq!(forwarded.len(), 3, "{forwarded:?}");
    for addr in &nodes.addrs {
        let health = Command::new("curl")
            .args(["-s", "-o", "/dev/null", "-w", "%{http_code}"])
            .arg(format!("{addr}/v1/sys/health"))
            .output()
            .unwrap();
        let code = String::from_utf8_lossy(&health.stdout).to_string();
        assert!(code == "200" || code == "429", "{addr}: HTTP {code}");
    }
    // Unsealed, the pods pass their readiness probe.
    let ready = || {
        env.double
            .object("/apis/apps/v1/namespaces/vault/statefulsets/vault")
            .and_then(|s| s.pointer("/status/readyReplicas").and_then(|r| r.as_i64()))
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while ready() != Some(3) {
        assert!(std::time::Instant::now() < deadline, "ready: {:?}", ready());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Every managed secret is in this Vault, read through the pods.
    let status = env
        .run_with(&["secrets", "status", "-o", "json"], None, &own)
        .await;
    assert_eq!(status.status.code(), Some(0), "{}", text(&status));
    let rows: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    let rows = rows.as_array().unwrap();
    assert_eq!(rows.len(), 6, "{rows:?}");
    for row in rows {
        assert_eq!(row["version"], 1, "{row}");
    }
    let secret = env
        .double
        .paths()
        .into_iter()
        .find(|p| p.contains("/secrets/taskctl-") && p.ends_with("-messaging"))
        .and_then(|p| env.double.object(&p))
        .expect("the broker's Secret");
    let password = {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD
            .decode(secret["data"]["password"].as_str().unwrap())
            .unwrap()
    };
    let password = String::from_utf8(password).unwrap();
    assert!(password.len() >= 32, "a generated password");
    assert!(!out.contains(&password), "a generated value was printed");

    // A second run changes nothing.
    let again = env
        .run_with(&["plan", "--detailed-exitcode"], None, &own)
        .await;
    assert_eq!(again.status.code(), Some(0), "{}", text(&again));

    // A restarted pod's server comes back sealed: unready, named by the
    // plan, unsealed by the next deploy from the keys file.
    nodes.kill(2);
    nodes.launch(2);
    let plan = env
        .run_with(&["plan", "--detailed-exitcode"], None, &own)
        .await;
    assert_eq!(plan.status.code(), Some(2), "{}", text(&plan));
    assert!(
        text(&plan).contains("node vault-2: sealed → unsealed"),
        "{}",
        text(&plan)
    );
    let heal = env.run_with(&["deploy", "--yes"], None, &own).await;
    assert_eq!(heal.status.code(), Some(0), "{}", text(&heal));
    for line in text(&heal).lines().filter(|l| l.contains(": done in")) {
        eprintln!("healing deploy {line}");
    }
    assert!(text(&heal).contains("vault-2 unsealed"), "{}", text(&heal));
}

// ------------------------------------------------------------------------
// Verification through the API server: real processes behind the pods.
// ------------------------------------------------------------------------

/// A real agent standing for one pod: it consumes the test's own queue on
/// the test environment's RabbitMQ over TLS (trusting only its CA), as the
/// pod would through the in-cluster broker.
struct PodAgent {
    child: std::process::Child,
    http: std::net::SocketAddr,
    metrics: std::net::SocketAddr,
    _dir: tempfile::TempDir,
}

impl Drop for PodAgent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A free loopback port for a process of this test to listen on, from
/// 61000–65535: above the kernel's ephemeral range (32768–60999 by
/// default), so no outgoing connection of a parallel test is given it
/// between this check and the agent's bind (a port asked of the kernel with
/// `:0` is an ephemeral one, and was seen taken in that gap). Each call in a
/// process moves on, so two calls never give the same port.
fn free_addr() -> std::net::SocketAddr {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    static BASE: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
    let base = *BASE.get_or_init(|| {
        std::process::id().wrapping_mul(2_654_435_761)
            ^ std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .subsec_nanos()
    });
    for _ in 0..4536 {
        let offset = base.wrapping_add(NEXT.fetch_add(1, Ordering::Relaxed)) % 4536;
        if let Ok(l) = std::net::TcpListener::bind(("127.0.0.1", 61000 + offset as u16)) {
            return l.local_addr().unwrap();
        }
    }
    panic!("no free port in 61000-65535");
}

impl PodAgent {
    /// `extra` adds to (or overrides) the agent's environment; an empty
    /// value removes the variable.
    fn start(queue: &str, public_key: &str, extra: &[(&str, &str)]) -> PodAgent {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("no-gpu")).unwrap();
        let (http, metrics) = (free_addr(), free_addr());
        let ca = std::fs::read_to_string(crate::docker::required("TASKCTL_TEST_BROKER_CA"))
            .expect("the test broker's CA");
        let log = std::fs::File::create(dir.path().join("agent.log")).unwrap();
        let mut cmd = Command::new(crate::docker::agent_binary());
        cmd.env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env(
                "BROKER_URL",
                crate::docker::required("TASKCTL_TEST_AMQPS_URL"),
            )
            .env("BROKER_CA", ca)
            .env("AGENT_ID", format!("pod-{}", http.port()))
            .env("TASK_QUEUE", queue)
            .env("GPU_TASK_QUEUE", format!("{queue}.gpu"))
            .env("RESULT_QUEUE", format!("{queue}.results"))
            .env("DEAD_LETTER_QUEUE", format!("{queue}.dead"))
            .env("BIND_ADDRESS", "127.0.0.1")
            .env("HEALTH_PORT", http.port().to_string())
            .env("METRICS_PORT", metrics.port().to_string())
            .env("GPU_DEVICE_DIR", dir.path().join("no-gpu"))
            .env("TASK_SIGNING_PUBLIC_KEYS", public_key);
        for (k, v) in extra {
            if v.is_empty() {
                cmd.env_remove(k);
            } else {
                cmd.env(k, v);
            }
        }
        let child = cmd
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .stdin(Stdio::null())
            .spawn()
            .expect("the agent starts");
        PodAgent {
            child,
            http,
            metrics,
            _dir: dir,
        }
    }
}

/// A fresh Ed25519 task-signing pair: (base64 PKCS#8 private key, base64
/// raw public key), as the `ed25519` managed secret holds them.
fn signing_pair() -> (String, String) {
    use base64::Engine as _;
    use ring::signature::KeyPair as _;
    let doc =
        ring::signature::Ed25519KeyPair::generate_pkcs8(&ring::rand::SystemRandom::new()).unwrap();
    let pair = ring::signature::Ed25519KeyPair::from_pkcs8(doc.as_ref()).unwrap();
    let b64 = base64::engine::general_purpose::STANDARD;
    (
        b64.encode(doc.as_ref()),
        b64.encode(pair.public_key().as_ref()),
    )
}

/// The production profile on the double with real processes behind its
/// pods: two agents per version (registered with [`Verified::version`]),
/// the test environment's RabbitMQ behind the `rabbitmq` pods (AMQPS, whose
/// certificate names `localhost`, the broker host the agents are given
/// here) and its Prometheus behind the `prometheus` pod. Prometheus scrapes
/// each agent pod under `POD_IP:9090`, the address the in-cluster pod
/// discovery would give it (a file_sd target per pod, kept current while a
/// deploy runs).
struct Verified {
    env: Env,
    unique: String,
    queue: String,
    signing_key: String,
    public_key: String,
    /// (image substring, the agents standing for that version's pods).
    versions: Vec<(String, Vec<PodAgent>)>,
    scrape_file: std::path::PathBuf,
}

impl Drop for Verified {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.scrape_file);
    }
}

impl Verified {
    async fn start() -> Verified {
        let unique = format!(
            "k8sg{:x}{:x}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .subsec_nanos()
        );
        let queue = format!("taskctl.tasks.{unique}");
        let layer = format!(
            "agents:\n  - name: task-executor\n    replicas: 2\n    config_map:\n      name: agent-config\n      data:\n        broker_url: amqps://guest@localhost:5671/%2f\n    env:\n      - name: TASK_QUEUE\n        value: \"{queue}\"\n"
        );
        let env = Env::build(true, &layer).await;
        let (signing_key, public_key) = signing_pair();
        let prefix = env.secrets.prefix.clone();
        // The test broker's own user; the CA the agents (and taskctl)
        // trust it with.
        vault_write(
            &format!("{prefix}/messaging"),
            r#"{"username":"guest","password":"guest","erlang_cookie":"k8s-erlang-cookie-1"}"#,
        );
        vault_write(
            &format!("{prefix}/signing"),
            &serde_json::json!({"private_key": signing_key, "public_key": public_key, "public_keys": public_key})
                .to_string(),
        );
        let ca =
            std::fs::read_to_string(crate::docker::required("TASKCTL_TEST_BROKER_CA")).unwrap();
        vault_write(
            &format!("{prefix}/broker-tls"),
            &serde_json::json!({"cert": "in-cluster-cert", "key": "in-cluster-key", "ca_cert": ca, "ca_certs": ca, "hosts": "localhost"})
                .to_string(),
        );
        let amqps: std::net::SocketAddr = "127.0.0.1:5671".parse().unwrap();
        let prometheus = crate::docker::required("TASKCTL_TEST_PROMETHEUS_URL");
        let prometheus: std::net::SocketAddr = prometheus
            .trim_start_matches("http://")
            .trim_end_matches('/')
            .parse()
            .expect("the test Prometheus listens on an IP:port");
        for (namespace, prefix, port, addr) in [
            ("messaging", "rabbitmq-", 5671, amqps),
            ("monitoring", "prometheus-", 9090, prometheus),
        ] {
            env.double.serve(kube_double::Backend {
                namespace: namespace.into(),
                pod_prefix: prefix.into(),
                image: None,
                port,
                addrs: vec![addr],
            });
        }
        let scrape_file =
            std::path::Path::new(&crate::docker::required("TASKCTL_TEST_PROMETHEUS_SD_DIR"))
                .join(format!("{unique}.json"));
        Verified {
            env,
            unique,
            queue,
            signing_key,
            public_key,
            versions: Vec::new(),
            scrape_file,
        }
    }

    /// Two agents stand for the pods whose image contains `image`; later
    /// versions win over earlier ones for the pods they match.
    fn version(&mut self, image: &str, queue: &str, extra: &[(&str, &str)]) {
        let agents: Vec<PodAgent> = (0..2)
            .map(|_| PodAgent::start(queue, &self.public_key, extra))
            .collect();
        for (port, pick) in [(8080, 0), (9090, 1)] {
            self.env.double.serve(kube_double::Backend {
                namespace: "agent-system".into(),
                pod_prefix: "task-executor-".into(),
                image: Some(image.into()),
                port,
                addrs: agents
                    .iter()
                    .map(|a| if pick == 0 { a.http } else { a.metrics })
                    .collect(),
            });
        }
        self.versions.push((image.to_string(), agents));
    }

    /// The agent process standing for `pod` (by its image and ordinal).
    fn agent_of(&self, pod: &serde_json::Value) -> Option<&PodAgent> {
        let image = pod["spec"]["containers"][0]["image"].as_str()?;
        let name = pod["metadata"]["name"].as_str()?;
        let ordinal: usize = name.rsplit('-').next()?.parse().ok()?;
        let (_, agents) = self
            .versions
            .iter()
            .rev()
            .find(|(v, _)| image.contains(v.as_str()))?;
        agents.get(ordinal % agents.len())
    }

    /// Writes the scrape targets of the current agent pods.
    fn publish_scrapes(&self) {
        let targets: Vec<serde_json::Value> = self
            .env
            .double
            .paths()
            .into_iter()
            .filter(|p| p.starts_with("/api/v1/namespaces/agent-system/pods/task-executor-"))
            .filter_map(|p| self.env.double.object(&p))
            .filter_map(|pod| {
                let agent = self.agent_of(&pod)?;
                let ip = pod["status"]["podIP"].as_str()?;
                Some(serde_json::json!({
                    "targets": [agent.metrics.to_string()],
                    "labels": {"instance": format!("{ip}:9090"), "test": self.unique},
                }))
            })
            .collect();
        let tmp = self.scrape_file.with_extension("tmp");
        std::fs::write(&tmp, serde_json::Value::Array(targets).to_string()).unwrap();
        std::fs::rename(&tmp, &self.scrape_file).unwrap();
    }

    /// Runs taskctl while keeping Prometheus's targets on the current pods.
    async fn run(&self, args: &[&str], extra: Option<&str>, vars: &[(&str, &str)]) -> Output {
        let done = std::sync::atomic::AtomicBool::new(false);
        let follow = async {
            while !done.load(std::sync::atomic::Ordering::SeqCst) {
                self.publish_scrapes();
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        };
        let run = async {
            let out = self.env.run_with(args, extra, vars).await;
            done.store(true, std::sync::atomic::Ordering::SeqCst);
            out
        };
        let (out, ()) = tokio::join!(run, follow);
        out
    }
}

/// Every check the run reported (`check_finished` events of `-o json`).
fn checks(out: &Output) -> Vec<serde_json::Value> {
    stdout(out)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["event"] == "check_finished")
        .collect()
}

/// The issue's must-show: a deploy of the production profile runs all four
/// gates through the API server (port-forwards to the pods, nothing else)
/// and reports each one's value; no check that did not run says passed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_production_deploy_runs_every_gate_through_the_api_server() {
    let mut v = Verified::start().await;
    let queue = v.queue.clone();
    v.version("task-executor:1.0.0", &queue, &[]);
    let out = v.run(&["deploy", "-y", "-o", "json"], None, &[]).await;
    let shown = format!("{}\n{}", stdout(&out), stderr(&out));
    assert_eq!(out.status.code(), Some(0), "{shown}");
    let checks = checks(&out);
    let named = |prefix: &str| -> Vec<&serde_json::Value> {
        checks
            .iter()
            .filter(|c| c["name"].as_str().unwrap_or_default().starts_with(prefix))
            .collect()
    };
    // Two agent pods, each on two ports, plus the broker and Prometheus.
    assert_eq!(named("verify_connectivity/").len(), 6, "{checks:#?}");
    let health = named("check_service_health/agent-system/task-executor-");
    assert_eq!(health.len(), 2, "{checks:#?}");
    let metrics = named("validate_metrics/agent-system/task-executor-");
    assert_eq!(metrics.len(), 2, "{checks:#?}");
    let functional = named("test_functionality");
    assert_eq!(functional.len(), 1, "{checks:#?}");
    for c in health.iter().chain(&metrics).chain(&functional) {
        assert_eq!(c["passed"], true, "{c}");
    }
    for c in &health {
        assert!(
            c["observed"].as_str().unwrap().starts_with("HTTP 200"),
            "{c}"
        );
    }
    for c in &metrics {
        let seen = c["observed"].as_str().unwrap();
        assert!(
            seen.contains("up{instance=\"10.244.") && seen.contains("= 1"),
            "{c}"
        );
    }
    assert!(
        functional[0]["observed"]
            .as_str()
            .unwrap()
            .contains("succeeded"),
        "{}",
        functional[0]
    );
    // Every check either passed or said it was not evaluated: nothing
    // unevaluated is recorded as passed.
    for c in &checks {
        if c["evaluated"] == false {
            assert_eq!(c["passed"], false, "{c}");
        }
    }
    // The only way in was the API server: the pods' portforward subresource.
    let forwards: Vec<_> = v
        .env
        .double
        .requests()
        .into_iter()
        .filter(|r| r.path.ends_with("/portforward"))
        .map(|r| r.path)
        .collect();
    for pod in [
        "/pods/rabbitmq-0/",
        "/pods/prometheus-0/",
        "/pods/task-executor-",
    ] {
        assert!(
            forwards.iter().any(|p| p.contains(pod)),
            "{pod}: {forwards:?}"
        );
    }
    // The release keeps what each gate saw, and `status` shows it.
    let status = v.env.run(&["status"], None).await;
    let text = stdout(&status);
    assert!(status.status.success(), "{}", stderr(&status));
    assert!(text.contains("release      1 deployed (deploy)"), "{text}");
    let functional_line = text
        .lines()
        .find(|l| l.contains("test_functionality (functional)"))
        .unwrap_or_else(|| panic!("no functional gate in {text}"));
    assert!(
        functional_line.trim_start().starts_with("passed") && functional_line.contains("succeeded"),
        "{functional_line}"
    );
    let json = v.env.run(&["status", "-o", "json"], None).await;
    let parsed: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    let recorded = parsed["release"]["checks"].as_array().expect("checks");
    assert_eq!(recorded.len(), checks.len(), "{parsed}");
}

/// The issue's must-show: a version whose readiness never answers 200 is
/// rolled back automatically by `health_check_failure`, evaluated through
/// the API server (here the profile verifies connectivity only, so the
/// condition, not a gate, is what catches it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_that_never_gets_ready_is_rolled_back_by_health_check_failure() {
    let mut v = Verified::start().await;
    let queue = v.queue.clone();
    v.version("task-executor:1.0.0", &queue, &[]);
    let first = v.run(&["deploy", "-y"], None, &[]).await;
    assert_eq!(first.status.code(), Some(0), "{}", stderr(&first));
    // Version 2's agents listen, but their broker never answers: `/ready`
    // says 503 forever.
    let closed = format!("amqp://guest:guest@{}/%2f", free_addr());
    v.version(
        "task-executor:2.0.0",
        &queue,
        &[("BROKER_URL", closed.as_str()), ("BROKER_CA", "")],
    );
    let layer = "agents:\n  - name: task-executor\n    image: task-executor:2.0.0\ndeployment:\n  verification: [verify_connectivity]\n";
    let out = v
        .run(
            &["deploy", "-y"],
            Some(layer),
            &[("TASKCTL_WATCH_WINDOW", "8s")],
        )
        .await;
    let all = format!("{}{}", stdout(&out), stderr(&out));
    assert_eq!(out.status.code(), Some(1), "{all}");
    assert!(all.contains("health_check_failure"), "{all}");
    assert!(all.contains("HTTP 503"), "what it saw: {all}");
    assert!(
        all.contains("rolled back automatically to release 1"),
        "{all}"
    );
    assert_eq!(
        history(&v.env).await,
        [
            (1, "superseded".to_string()),
            (2, "failed".to_string()),
            (3, "deployed".to_string()),
        ]
    );
    let image = agent(&v.env)["spec"]["template"]["spec"]["containers"][0]["image"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(image.starts_with("task-executor:1.0.0"), "{image}");
}

/// The issue's must-show: a version whose tasks fail is rolled back by
/// `high_error_rate`, read from Prometheus through the API server while
/// tasks keep coming. Version 2 times every task out after 20 ms; the probe
/// sends tasks that take 200 ms.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_whose_tasks_fail_is_rolled_back_by_high_error_rate() {
    let mut v = Verified::start().await;
    let queue = v.queue.clone();
    v.version("task-executor:1.0.0", &queue, &[]);
    let first = v.run(&["deploy", "-y"], None, &[]).await;
    assert_eq!(first.status.code(), Some(0), "{}", stderr(&first));

    let slow_queue = format!("{queue}.v2");
    v.version(
        "task-executor:2.0.0",
        &slow_queue,
        &[("EXECUTION_TIMEOUT", "20")],
    );
    let amqp = crate::docker::required("TASKCTL_TEST_AMQP_URL");
    let probe = crate::probe::Probe::start(
        &amqp,
        &v.signing_key,
        &slow_queue,
        "slow task",
        Duration::from_millis(100),
        200,
    );
    let query = format!(
        "sum(rate(task_executor_tasks_total{{status=~\"failed|timed_out\",test=\"{u}\"}}[15s])) / clamp_min(sum(rate(task_executor_tasks_total{{test=\"{u}\"}}[15s])), 1e-9)",
        u = v.unique
    );
    let layer = format!(
        "agents:\n  - name: task-executor\n    image: task-executor:2.0.0\n    env:\n      - name: TASK_QUEUE\n        value: \"{slow_queue}\"\ndeployment:\n  verification: [check_service_health]\nrollback:\n  automatic:\n    conditions:\n      - {{ name: high_error_rate, query: '{query}', threshold: 0.01, for: 2s }}\n"
    );
    let out = v
        .run(
            &["deploy", "-y"],
            Some(&layer),
            &[("TASKCTL_WATCH_WINDOW", "15s")],
        )
        .await;
    let _ = probe.finish();
    let all = format!("{}{}", stdout(&out), stderr(&out));
    assert_eq!(out.status.code(), Some(1), "{all}");
    assert!(
        all.contains("verification of release 2 failed: high_error_rate (condition)")
            && all.contains("> 0.01 for 2.0s"),
        "{all}"
    );
    assert!(
        all.contains("rolled back automatically to release 1"),
        "{all}"
    );
    let image = agent(&v.env)["spec"]["template"]["spec"]["containers"][0]["image"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(image.starts_with("task-executor:1.0.0"), "{image}");
}
