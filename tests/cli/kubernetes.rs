//! The `kubernetes` target end to end through the CLI, against kube-double
//! (the test double of the Kubernetes API server, started in-process on a
//! random loopback port; no real cluster can run here), reached through a
//! kubeconfig file in `KUBECONFIG` as a user's would be.

use crate::harness::{repo_root, stderr, stdout};
use kube_double::{Config, KubeDouble};
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

struct Env {
    dir: tempfile::TempDir,
    double: KubeDouble,
    profile: PathBuf,
}

impl Env {
    async fn new() -> Env {
        let double = KubeDouble::start(Config {
            ready_delay: Duration::from_millis(20),
            ..Config::default()
        })
        .await
        .expect("kube-double listens");
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("kubeconfig"), double.kubeconfig()).unwrap();
        let profile = dir.path().join("cluster.yaml");
        std::fs::write(
            &profile,
            format!(
                "apiVersion: taskctl.dev/v1\nkind: Profile\ninclude: [{}]\ntarget:\n  kind: kubernetes\n  kubernetes:\n    context: double\n",
                repo_root().join("profiles/production.yaml").display()
            ),
        )
        .unwrap();
        Env {
            dir,
            double,
            profile,
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
            .env("TASKCTL_TEMPLATES", repo_root().join("templates"))
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
