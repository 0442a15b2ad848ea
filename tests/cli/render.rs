use crate::harness::{repo_root, stderr, stdout, taskctl};

fn render(args: &[&str]) -> serde_json::Value {
    let mut all = vec!["render", "profile", "-o", "json"];
    all.extend_from_slice(args);
    let out = taskctl(&all);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    serde_json::from_slice(&out.stdout).expect("JSON")
}

#[test]
fn environment_overlay_is_applied() {
    let prod = render(&["-p", "profiles/production.yaml"]);
    let staging = render(&["-p", "profiles/production.yaml", "-e", "staging"]);
    let dev = render(&["-p", "profiles/production.yaml", "-e", "development"]);
    assert_eq!(prod["metadata"]["environment"], "production");
    assert_eq!(staging["metadata"]["environment"], "staging");
    // The development overlay shrinks the agent to fit its 2-CPU ceiling.
    assert_eq!(prod["agents"][0]["resources"]["limits"]["cpu"], "4");
    assert_eq!(dev["agents"][0]["resources"]["limits"]["cpu"], "2");
    assert_eq!(dev["agents"][0]["resources"]["requests"]["memory"], "1Gi");
}

#[test]
fn includes_override_the_included_profile() {
    let staging = render(&["-p", "profiles/staging.yaml"]);
    assert_eq!(staging["metadata"]["name"], "task-system-staging");
    assert_eq!(staging["network"]["vpc"]["cidr"], "10.1.0.0/16");
    // Node groups merge by name: staging changes the worker's size and keeps the rest.
    let worker = &staging["compute"]["node_groups"][0];
    assert_eq!(worker["instance_type"], "c6i.2xlarge");
    assert_eq!(worker["disk"]["size_gib"], 200);
    assert_eq!(
        staging["compute"]["node_groups"][1]["instance_type"],
        "g5.xlarge"
    );
}

#[test]
fn secrets_are_rendered_as_references() {
    let out = taskctl(&["render", "profile", "-p", "profiles/production.yaml"]);
    let text = stdout(&out);
    assert!(
        text.contains("password: vault:secret/postgres#password"),
        "{text}"
    );
}

#[test]
fn variables_expand_from_the_environment() {
    let out = assert_cmd::Command::cargo_bin("taskctl")
        .unwrap()
        .args([
            "render",
            "profile",
            "-p",
            "profiles/local-external.yaml",
            "-o",
            "json",
        ])
        .current_dir(crate::harness::repo_root())
        .env("TASKCTL_AMQP_URL", "amqp://broker.example:5672/%2f")
        .output()
        .unwrap();
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        doc["services"]["rabbitmq"]["external"]["url"],
        "amqp://broker.example:5672/%2f"
    );
}

#[test]
fn manifests_render_every_object_schema_checked() {
    let out = taskctl(&[
        "render",
        "manifests",
        "-p",
        "profiles/production.yaml",
        "-o",
        "json",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let objects: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    let has = |kind: &str, name: &str| {
        objects
            .iter()
            .any(|o| o["kind"] == kind && o["metadata"]["name"] == name)
    };
    assert!(
        has("StatefulSet", "rabbitmq")
            && has("StatefulSet", "mongodb")
            && has("Deployment", "task-executor")
    );
    assert!(
        has("HorizontalPodAutoscaler", "task-executor") && has("DaemonSet", "nvidia-device-plugin")
    );
    assert_eq!(
        objects[0]["kind"], "Namespace",
        "apply order starts with namespaces"
    );
    let yaml = taskctl(&["render", "manifests", "-p", "profiles/production.yaml"]);
    assert!(stdout(&yaml).matches("\n---\n").count() + 1 >= objects.len() - 1);
}

/// The templates are built into taskctl: from a directory with no
/// `templates/`, and without `TASKCTL_TEMPLATES`, the production profile
/// renders exactly as from the repository's directory; `--templates`
/// still overrides them, and a missing directory is a clear error.
#[test]
fn the_built_in_templates_render_from_any_directory() {
    let elsewhere = tempfile::tempdir().unwrap();
    let production = repo_root().join("profiles/production.yaml");
    let run = |extra: &[&str]| {
        assert_cmd::Command::cargo_bin("taskctl")
            .unwrap()
            .args(["render", "manifests", "-p"])
            .arg(&production)
            .args(extra)
            .current_dir(elsewhere.path())
            .env_remove("TASKCTL_TEMPLATES")
            .env_remove("TASKCTL_PROFILE")
            .env_remove("TASKCTL_ENV")
            .output()
            .unwrap()
    };
    let built_in = run(&[]);
    assert_eq!(built_in.status.code(), Some(0), "{}", stderr(&built_in));
    let templates = repo_root().join("templates");
    let from_dir = run(&["--templates", templates.to_str().unwrap()]);
    assert_eq!(from_dir.status.code(), Some(0), "{}", stderr(&from_dir));
    assert!(stdout(&built_in).contains("kind: StatefulSet"));
    assert_eq!(stdout(&built_in), stdout(&from_dir));
    let missing = run(&["--templates", "no-such-dir"]);
    assert_eq!(missing.status.code(), Some(1), "{}", stderr(&missing));
    assert!(
        stderr(&missing).contains("templates directory `no-such-dir` not found"),
        "{}",
        stderr(&missing)
    );
}
