//! Running the binary the way a user does, from the repository root.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

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

/// The OpenBao dev server of `scripts/test-env.sh`: address and token.
pub fn vault() -> (String, String) {
    let var = |n: &str| {
        std::env::var(n).unwrap_or_else(|_| panic!("{n} is not set (scripts/test-env.sh up)"))
    };
    (
        var("TASKCTL_TEST_VAULT_ADDR"),
        var("TASKCTL_TEST_VAULT_TOKEN"),
    )
}

/// Writes `data` (JSON) as a new KV v2 version of `secret/<path>`.
pub fn vault_write(path: &str, data: &str) {
    let (addr, token) = vault();
    let out = std::process::Command::new("curl")
        .args(["-sf", "-X", "POST", "-H"])
        .arg(format!("X-Vault-Token: {token}"))
        .arg("-d")
        .arg(format!("{{\"data\":{data}}}"))
        .arg(format!("{addr}/v1/secret/data/{path}"))
        .output()
        .expect("curl runs");
    assert!(
        out.status.success(),
        "writing secret/{path} to Vault failed"
    );
}

/// The secrets the production profile references, written to Vault under
/// `secret/<prefix>/…` (tests run in parallel, so each has its own), and
/// the profile layer that points the profile's references there. Remove
/// them with [`ProductionSecrets::drop`].
/// A profile layer for Kubernetes tests that register no process behind
/// the double's pods (the double runs no containers): no verification gate,
/// and of the automatic-rollback conditions only the one read from the
/// pods' status. Through port-forwards, the gates and the other two
/// conditions would rightly find nothing listening and roll back; the tests
/// that run them register real agents, RabbitMQ and Prometheus instead.
pub const NO_PROCESSES_BEHIND_PODS: &str = "deployment:\n  verification: []\nrollback:\n  automatic:\n    conditions: [resource_exhaustion]\n";

pub struct ProductionSecrets {
    pub prefix: String,
}

impl ProductionSecrets {
    /// Paths under `prefix` with nothing written: taskctl generates them.
    pub fn empty(prefix: String) -> ProductionSecrets {
        ProductionSecrets { prefix }
    }

    pub fn write(prefix: String) -> ProductionSecrets {
        vault_write(
            &format!("{prefix}/messaging"),
            r#"{"username":"taskctl","password":"k8s-amqp-password-1","erlang_cookie":"k8s-erlang-cookie-1"}"#,
        );
        vault_write(
            &format!("{prefix}/database"),
            r#"{"keyfile":"k8s-mongo-keyfile-1","password":"k8s-mongo-root-1"}"#,
        );
        vault_write(
            &format!("{prefix}/postgres"),
            r#"{"password":"k8s-postgres-password-1"}"#,
        );
        vault_write(
            &format!("{prefix}/grafana"),
            r#"{"password":"k8s-grafana-password-1"}"#,
        );
        vault_write(
            &format!("{prefix}/signing"),
            r#"{"private_key":"k8s-signing-private-key-1","public_key":"11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo=","public_keys":"11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo="}"#,
        );
        vault_write(
            &format!("{prefix}/broker-tls"),
            r#"{"cert":"k8s-tls-cert-1","key":"k8s-tls-key-1","ca_cert":"k8s-tls-ca-1","ca_certs":"k8s-tls-ca-1","hosts":"rabbitmq.messaging.svc"}"#,
        );
        ProductionSecrets { prefix }
    }

    /// The profile layer (YAML, without the header) with every reference
    /// of the production profile pointed at this test's paths.
    pub fn layer(&self) -> String {
        let v = format!("vault:secret/{}", self.prefix);
        let p = format!("secret/{}", self.prefix);
        format!(
            "secrets:\n  entries:\n    database: {{ path: {p}/database, type: mongodb }}\n    messaging: {{ path: {p}/messaging, type: rabbitmq }}\n    postgres: {{ path: {p}/postgres, type: postgres }}\n    grafana: {{ path: {p}/grafana, type: generic }}\n    signing: {{ path: {p}/signing, type: ed25519 }}\n    broker_tls: {{ path: {p}/broker-tls, type: tls, hosts: [rabbitmq.messaging.svc] }}\n\
             services:\n  rabbitmq:\n    credentials: {v}/messaging#password\n    erlang_cookie: {v}/messaging#erlang_cookie\n    tls: {{ cert: {v}/broker-tls#cert, key: {v}/broker-tls#key }}\n\
             \x20 mongodb:\n    keyfile: {v}/database#keyfile\n    root_password: {v}/database#password\n\
             \x20 postgres:\n    password: {v}/postgres#password\n\
             \x20 grafana:\n    admin_password: {v}/grafana#password\n\
             agents:\n  - name: task-executor\n    env:\n      - name: BROKER_PASSWORD\n        secret: {v}/messaging#password\n      - name: TASK_SIGNING_PUBLIC_KEYS\n        secret: {v}/signing#public_keys\n      - name: BROKER_CA\n        secret: {v}/broker-tls#ca_certs\n"
        )
    }
}

impl Drop for ProductionSecrets {
    fn drop(&mut self) {
        let (addr, token) = vault();
        for name in [
            "messaging",
            "database",
            "postgres",
            "grafana",
            "signing",
            "broker-tls",
        ] {
            let _ = std::process::Command::new("curl")
                .args(["-s", "-X", "DELETE", "-H"])
                .arg(format!("X-Vault-Token: {token}"))
                .arg(format!("{addr}/v1/secret/metadata/{}/{name}", self.prefix))
                .output();
        }
    }
}

/// Percent-encodes everything but RFC 3986's unreserved characters (for
/// credentials in URLs).
pub fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// Three `bao server` raft nodes of the test's own on free loopback ports,
/// joined to each other (`retry_join`), killed on drop.
pub struct RaftNodes {
    bin: String,
    dir: tempfile::TempDir,
    pub addrs: Vec<String>,
    children: Vec<Option<std::process::Child>>,
}

/// The Vault pods a double was asked to port-forward to.
pub fn forwarded_vault_pods(
    double: &kube_double::KubeDouble,
) -> std::collections::BTreeSet<String> {
    double
        .requests()
        .iter()
        .filter(|r| {
            r.path.starts_with("/api/v1/namespaces/vault/pods/") && r.path.ends_with("/portforward")
        })
        .map(|r| r.path.clone())
        .collect()
}

impl RaftNodes {
    /// The nodes as the processes behind the Vault StatefulSet's pods
    /// (`vault/vault-N`, port 8200) of a kube-double.
    pub fn behind_vault_pods(&self) -> kube_double::Backend {
        kube_double::Backend {
            namespace: "vault".into(),
            pod_prefix: "vault-".into(),
            image: None,
            port: 8200,
            addrs: self
                .addrs
                .iter()
                .map(|a| a.trim_start_matches("http://").parse().unwrap())
                .collect(),
        }
    }

    pub fn start() -> RaftNodes {
        let bin = crate::docker::required("TASKCTL_TEST_BAO_BIN");
        let dir = tempfile::tempdir().unwrap();
        // Six distinct free ports: every listener is held until all are
        // chosen, then released for the servers.
        let listeners: Vec<std::net::TcpListener> = (0..6)
            .map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap())
            .collect();
        let port = |i: usize| listeners[i].local_addr().unwrap().port();
        let ports: Vec<(u16, u16)> = (0..3).map(|i| (port(2 * i), port(2 * i + 1))).collect();
        drop(listeners);
        for (i, (api, cluster)) in ports.iter().enumerate() {
            let data = dir.path().join(format!("n{i}"));
            std::fs::create_dir_all(&data).unwrap();
            let joins: String = ports
                .iter()
                .enumerate()
                .filter(|(j, _)| *j != i)
                .map(|(_, (p, _))| {
                    format!(
                        "  retry_join {{\n    leader_api_addr = \"http://127.0.0.1:{p}\"\n  }}\n"
                    )
                })
                .collect();
            std::fs::write(
                dir.path().join(format!("n{i}.hcl")),
                format!(
                    "storage \"raft\" {{\n  path = \"{}\"\n  node_id = \"n{i}\"\n  performance_multiplier = 1\n{joins}}}\n\
                     listener \"tcp\" {{\n  address = \"127.0.0.1:{api}\"\n  cluster_address = \"127.0.0.1:{cluster}\"\n  tls_disable = true\n}}\n\
                     api_addr = \"http://127.0.0.1:{api}\"\ncluster_addr = \"https://127.0.0.1:{cluster}\"\ndisable_mlock = true\n",
                    data.display()
                ),
            )
            .unwrap();
        }
        let mut nodes = RaftNodes {
            bin,
            addrs: ports
                .iter()
                .map(|(p, _)| format!("http://127.0.0.1:{p}"))
                .collect(),
            dir,
            children: vec![None, None, None],
        };
        for i in 0..3 {
            nodes.launch(i);
        }
        nodes
    }

    pub fn launch(&mut self, i: usize) {
        let child = Command::new(&self.bin)
            .args(["server", "-config"])
            .arg(self.dir.path().join(format!("n{i}.hcl")))
            .env("HOME", self.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        self.children[i] = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(self.addrs[i].trim_start_matches("http://")).is_err() {
            assert!(Instant::now() < deadline, "raft node {i} did not listen");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.children[i].take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for RaftNodes {
    fn drop(&mut self) {
        for i in 0..3 {
            self.kill(i);
        }
    }
}
