//! `install.sh` into a temporary prefix, then the installed `taskctl` used
//! from a directory with no checkout in it: the templates are inside the
//! binary and the shipped plugins are on the prefix's `bin`, so nothing
//! points back into the repository but the profiles the test names.
//!
//! `--no-build` installs what this test run's cargo built (the dev-profile
//! `taskctl` and the static release agent `scripts/test.sh` builds); a
//! release build of the AWS SDK would double CI's time, and the install
//! layout, not the optimizer, is what is under test here.

use crate::harness::{
    NO_PROCESSES_BEHIND_PODS, ProductionSecrets, repo_root, stderr, stdout, vault,
};
use kube_double::{Config, KubeDouble};
use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Stdio};
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn install_sh_gives_a_taskctl_that_renders_and_deploys_from_any_directory() {
    let tmp = tempfile::tempdir().unwrap();
    let prefix = tmp.path().join("prefix");
    let install = Command::new(repo_root().join("install.sh"))
        .arg("--prefix")
        .arg(&prefix)
        .args(["--debug", "--no-build", "--no-images"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(install.status.success(), "{}", stderr(&install));
    for bin in [
        "taskctl",
        "task-executor",
        "taskctl-notify-webhook",
        "taskctl-tls-expiry",
        "taskctl-backup-verify",
    ] {
        let path = prefix.join("bin").join(bin);
        let mode = std::fs::metadata(&path)
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
            .permissions()
            .mode();
        assert_eq!(mode & 0o755, 0o755, "{}", path.display());
    }
    let taskctl = prefix.join("bin/taskctl");

    // From elsewhere, with no template directory named: the production
    // render is valid Kubernetes 1.28, strictly (no unknown field).
    let elsewhere = tmp.path().join("elsewhere");
    std::fs::create_dir(&elsewhere).unwrap();
    let run = |args: &[&str]| {
        let mut cmd = Command::new(&taskctl);
        cmd.args(args)
            .current_dir(&elsewhere)
            .env("NO_COLOR", "1")
            .env_remove("TASKCTL_TEMPLATES")
            .env_remove("TASKCTL_PROFILE")
            .env_remove("TASKCTL_ENV")
            .stdin(Stdio::null());
        cmd
    };
    let production = repo_root().join("profiles/production.yaml");
    let render = run(&["render", "manifests", "-p", production.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(render.status.success(), "{}", stderr(&render));
    let manifests = elsewhere.join("production.yaml");
    std::fs::write(&manifests, &render.stdout).unwrap();
    assert!(stdout(&render).matches("\nkind: ").count() > 50);
    let python = crate::docker::required("TASKCTL_TEST_PYTHON");
    let validate = Command::new(python)
        .args([
            "-m",
            "kubernetes_validate",
            "-k",
            "1.28.0",
            "--strict",
            "--quiet",
        ])
        .arg(&manifests)
        .output()
        .unwrap();
    assert!(
        validate.status.success(),
        "kubernetes-validate: {}{}",
        stdout(&validate),
        stderr(&validate)
    );

    // And it deploys the staging profile (on the API server double).
    let double = KubeDouble::start(Config {
        ready_delay: Duration::from_millis(20),
        ..Config::default()
    })
    .await
    .unwrap();
    std::fs::write(elsewhere.join("kubeconfig"), double.kubeconfig()).unwrap();
    let secrets = ProductionSecrets::write(format!(
        "taskctl/test/install-{:x}{:x}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos()
    ));
    std::fs::write(
        elsewhere.join("base.yaml"),
        format!("apiVersion: taskctl.dev/v1\nkind: Profile\n{NO_PROCESSES_BEHIND_PODS}"),
    )
    .unwrap();
    std::fs::write(
        elsewhere.join("staging-here.yaml"),
        format!(
            "apiVersion: taskctl.dev/v1\nkind: Profile\ninclude: [{}, base.yaml]\ntarget:\n  kind: kubernetes\n  kubernetes:\n    context: double\n{}",
            repo_root().join("profiles/staging.yaml").display(),
            secrets.layer()
        ),
    )
    .unwrap();
    let (addr, token) = vault();
    let mut deploy = run(&["deploy", "-y", "-p", "staging-here.yaml"]);
    deploy
        .env("KUBECONFIG", elsewhere.join("kubeconfig"))
        .env("TASKCTL_WATCH_WINDOW", "1s")
        .env("VAULT_ADDR", addr)
        .env("VAULT_TOKEN", token);
    let out = tokio::task::spawn_blocking(move || deploy.output().unwrap())
        .await
        .unwrap();
    assert!(out.status.success(), "{}\n{}", stdout(&out), stderr(&out));
    assert!(
        double
            .object("/apis/apps/v1/namespaces/agent-system/deployments/task-executor")
            .is_some()
    );
    // The state is where it was run from, not in the repository.
    assert!(elsewhere.join(".taskctl").is_dir());

    let uninstall = Command::new(repo_root().join("install.sh"))
        .arg("--prefix")
        .arg(&prefix)
        .arg("--uninstall")
        .output()
        .unwrap();
    assert!(uninstall.status.success(), "{}", stderr(&uninstall));
    assert!(!prefix.join("bin/taskctl").exists());
}
