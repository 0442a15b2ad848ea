//! The `kubernetes` target end to end through the CLI, against kube-double
//! (the test double of the Kubernetes API server, started in-process on a
//! random loopback port; no real cluster can run here), reached through a
//! kubeconfig file in `KUBECONFIG` as a user's would be.

use crate::harness::{ProductionSecrets, repo_root, stderr, stdout, vault};
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
    /// else the deploy generates them.
    async fn with_vault(written: bool) -> Env {
        let double = KubeDouble::start(Config {
            ready_delay: Duration::from_millis(20),
            ..Config::default()
        })
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
        let profile = dir.path().join("cluster.yaml");
        std::fs::write(
            &profile,
            format!(
                "apiVersion: taskctl.dev/v1\nkind: Profile\ninclude: [{}]\ntarget:\n  kind: kubernetes\n  kubernetes:\n    context: double\n{}",
                repo_root().join("profiles/production.yaml").display(),
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
    let refused = env
        .run(&["secrets", "rotate", "messaging", "--yes"], None)
        .await;
    assert_eq!(refused.status.code(), Some(1), "{}", stderr(&refused));
    assert!(
        stderr(&refused).contains("not built for target kubernetes"),
        "{}",
        stderr(&refused)
    );
    assert_eq!(read("messaging")["data"]["metadata"]["version"], 1);
}
