use crate::harness::{repo_root, stdout, taskctl};

/// `profiles/schema.json` is what `taskctl schema` prints. Regenerate with
/// `cargo run -q -- schema > profiles/schema.json`.
#[test]
fn shipped_schema_is_current() {
    let out = taskctl(&["schema"]);
    assert_eq!(out.status.code(), Some(0));
    let shipped = std::fs::read_to_string(repo_root().join("profiles/schema.json")).unwrap();
    assert!(
        stdout(&out) == shipped,
        "profiles/schema.json is stale: run `cargo run -q -- schema > profiles/schema.json`"
    );
}

#[test]
fn schema_describes_the_profile() {
    let schema: serde_json::Value = serde_json::from_slice(&taskctl(&["schema"]).stdout).unwrap();
    let props = schema["properties"].as_object().unwrap();
    for key in [
        "apiVersion",
        "kind",
        "metadata",
        "target",
        "compute",
        "network",
        "services",
        "agents",
        "environments",
        "secrets",
        "deployment",
        "rollback",
        "plugins",
    ] {
        assert!(props.contains_key(key), "schema lacks {key}");
    }
    assert_eq!(schema["additionalProperties"], false);
}

#[test]
fn completions_and_version_work() {
    let out = taskctl(&["completions", "bash"]);
    assert_eq!(out.status.code(), Some(0));
    assert!(stdout(&out).contains("taskctl"));
    let out = taskctl(&["version", "-o", "json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["profile_api_version"], "taskctl.dev/v1");
}
