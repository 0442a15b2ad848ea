//! Plugins as real processes: the shipped ones in `plugins/`, and small
//! misbehaving ones written here (hanging, crashing, printing garbage).
//! Every request taskctl sent and every message the shipped plugins printed
//! is validated against `plugins/protocol.schema.json` with Python's
//! `jsonschema` (the test environment's venv has it).

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};
use taskctl_core::ops::Provider;
use taskctl_core::profile::Profile;
use taskctl_core::secrets::Secrets;
use taskctl_plugin::protocol::Action;
use taskctl_plugin::{CallContext, PluginErrorKind, Plugins, Search, WithPlugins};
use tokio_util::sync::CancellationToken;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// A profile in `dir` (its `plugins/` is beside it) with `plugins_yaml`
/// as its `plugins:` list and `extra` top-level YAML.
fn profile(dir: &Path, plugins_yaml: &str, extra: &str) -> Profile {
    let file = dir.join("profile.yaml");
    std::fs::write(
        &file,
        format!(
            "apiVersion: taskctl.dev/v1
kind: Profile
metadata: {{ name: plug, environment: development }}
target: {{ kind: docker }}
environments: {{ development: {{ log_level: INFO, resource_limits: {{ cpu: '2', memory: 1Gi }} }} }}
state: {{ backend: local, path: {state} }}
plugins:
{plugins_yaml}
{extra}",
            state = dir.join("state").display()
        ),
    )
    .unwrap();
    let loaded = taskctl_core::profile::load(&taskctl_core::profile::LoadOptions {
        files: vec![file],
        environment: None,
        vars: &|_| None,
    });
    assert!(
        loaded.diagnostics.count(taskctl_core::Severity::Error) == 0,
        "{:?}",
        loaded.diagnostics
    );
    loaded.profile.expect("a valid profile")
}

fn script(dir: &Path, name: &str, body: &str) {
    let path = dir.join("plugins").join(name);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(&path, body).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

fn plugins(profile: &Profile, secrets: Secrets) -> Plugins {
    Plugins::new(profile, &Search::from_env(Vec::new()), Arc::new(secrets))
}

async fn call(
    plugins: &Plugins,
    profile: &Profile,
    name: &str,
    action: Action,
    seen: &Mutex<Vec<String>>,
) -> Result<taskctl_plugin::Answer, taskctl_plugin::PluginError> {
    let cancel = CancellationToken::new();
    let progress = |m: &str| seen.lock().unwrap().push(m.to_owned());
    plugins
        .call(
            profile,
            name,
            action,
            None,
            CallContext {
                step: Some("plugin/x"),
                run_id: Some("run-1"),
                change: None,
                cancel: &cancel,
                progress: &progress,
            },
        )
        .await
}

const RECORDER: &str = r#"#!/usr/bin/env python3
import json, os, sys
request = json.loads(sys.stdin.read())
out = request["args"]["out"]
with open(out, "a") as f:
    f.write(json.dumps({"request": request, "env": sorted(os.environ)}) + "\n")
secret = (request["secrets"].get("token") or {}).get("value", "")
for line in [
    {"type": "progress", "protocol": 1, "message": "using " + secret},
    {"type": "result", "protocol": 1, "ok": True, "passed": True, "observed": "token " + secret,
     "change": {"action": "create", "reason": "new"}, "outputs": {"echo": secret}},
]:
    print(json.dumps(line), flush=True)
"#;

#[tokio::test]
async fn a_plugin_gets_only_what_it_declares_and_its_output_is_redacted() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("requests.jsonl");
    script(dir.path(), "recorder", RECORDER);
    let p = profile(
        dir.path(),
        &format!(
            "  - name: recorder
    provides: [gate]
    profile: [metadata.name]
    secrets: {{ token: env:PLUGIN_TOKEN, other: 'vault:secret/x#y' }}
    resolve_secrets: true
    args: {{ out: {} }}",
            out.display()
        ),
        "",
    );
    let secrets =
        Secrets::default().with_env(|n| (n == "PLUGIN_TOKEN").then(|| "s3cr3t-value-42".into()));
    // `other` is a vault reference and no Vault is configured: a plugin
    // that asks for values gets them all or the call fails, naming it.
    let failing = plugins(&p, secrets);
    let seen = Mutex::new(Vec::new());
    let err = call(&failing, &p, "recorder", Action::Gate, &seen)
        .await
        .unwrap_err();
    assert_eq!(err.kind, PluginErrorKind::Unavailable);
    assert!(err.message.contains("secret `other`"), "{}", err.message);

    let p = profile(
        dir.path(),
        &format!(
            "  - name: recorder
    provides: [gate]
    profile: [metadata.name, agents]
    secrets: {{ token: env:PLUGIN_TOKEN }}
    resolve_secrets: true
    args: {{ out: {} }}",
            out.display()
        ),
        "",
    );
    let secrets =
        Secrets::default().with_env(|n| (n == "PLUGIN_TOKEN").then(|| "s3cr3t-value-42".into()));
    let plugins = plugins(&p, secrets);
    let answer = call(&plugins, &p, "recorder", Action::Gate, &seen)
        .await
        .unwrap();
    // The plugin echoed the secret in its progress and its result: both
    // come back masked.
    assert_eq!(*seen.lock().unwrap(), ["using [redacted]"]);
    assert_eq!(answer.reply.passed, Some(true));
    let recorded: serde_json::Value =
        serde_json::from_str(std::fs::read_to_string(&out).unwrap().trim()).unwrap();
    let request = &recorded["request"];
    assert_eq!(request["profile"]["metadata.name"], "plug");
    assert_eq!(request["profile"]["agents"], serde_json::json!([]));
    assert_eq!(
        request["profile"].as_object().unwrap().len(),
        2,
        "only the declared parts: {request}"
    );
    assert_eq!(request["secrets"]["token"]["reference"], "env:PLUGIN_TOKEN");
    assert_eq!(request["secrets"]["token"]["value"], "s3cr3t-value-42");
    assert_eq!(request["environment"]["target"], "docker");
    let state_dir = PathBuf::from(request["state_dir"].as_str().unwrap());
    assert!(state_dir.ends_with("plug/development/plugins/recorder"));
    assert_eq!(
        std::fs::metadata(&state_dir).unwrap().permissions().mode() & 0o777,
        0o700
    );
    // Nothing of taskctl's environment but the allowed variables (the
    // interpreter's launcher may add its own, such as PWD): cargo's
    // variables, which this process has, and credentials do not pass.
    assert!(std::env::var("CARGO_MANIFEST_DIR").is_ok());
    let env: Vec<String> = serde_json::from_value(recorded["env"].clone()).unwrap();
    for var in &env {
        let leaked = ["CARGO", "VAULT_", "AWS_", "RUST"]
            .iter()
            .any(|p| var.starts_with(p))
            || (var.starts_with("TASKCTL_") && var != "TASKCTL_PLUGIN_PROTOCOL");
        assert!(!leaked, "{var} reached the plugin: {env:?}");
    }
    assert!(env.contains(&"TASKCTL_PLUGIN_PROTOCOL".to_string()));
    validate_against_schema(std::slice::from_ref(request));
}

#[tokio::test]
async fn a_hanging_plugin_is_killed_at_its_timeout_with_what_it_said() {
    let dir = tempfile::tempdir().unwrap();
    let pids = dir.path().join("pids");
    script(
        dir.path(),
        "hang",
        &format!(
            "#!/bin/sh
echo '{{\"type\":\"progress\",\"protocol\":1,\"message\":\"waiting for the lock\"}}'
echo 'still waiting on db-1' >&2
sleep 300 &
echo $! > {pids}
sleep 300
",
            pids = pids.display()
        ),
    );
    let p = profile(
        dir.path(),
        "  - name: hang\n    provides: [gate]\n    timeout: 1s",
        "",
    );
    let plugins = plugins(&p, Secrets::default());
    let seen = Mutex::new(Vec::new());
    let started = std::time::Instant::now();
    let err = call(&plugins, &p, "hang", Action::Gate, &seen)
        .await
        .unwrap_err();
    assert_eq!(err.kind, PluginErrorKind::Timeout, "{}", err.message);
    assert!(
        err.message
            .contains("did not finish within 1s and was killed"),
        "{}",
        err.message
    );
    assert!(
        err.message.contains("waiting for the lock"),
        "{}",
        err.message
    );
    assert!(
        err.message.contains("still waiting on db-1"),
        "{}",
        err.message
    );
    assert!(started.elapsed() < Duration::from_secs(60));
    // Its whole process group went with it, the background sleep too.
    let pid: u32 = std::fs::read_to_string(&pids)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let mut gone = false;
    for _ in 0..50 {
        let state = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|s| s.rsplit(')').next().map(|r| r.trim().chars().next()));
        if matches!(state, None | Some(Some('Z'))) {
            gone = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(gone, "the plugin's child {pid} survived the timeout");
}

#[tokio::test]
async fn garbage_a_crash_a_failure_or_another_protocol_fail_the_call_clearly() {
    let dir = tempfile::tempdir().unwrap();
    script(
        dir.path(),
        "garbage",
        "#!/bin/sh\necho 'hello from a shell script'\n",
    );
    script(
        dir.path(),
        "segv",
        "#!/bin/sh\necho 'about to crash' >&2\nkill -SEGV $$\n",
    );
    script(
        dir.path(),
        "exit3",
        "#!/bin/sh\necho 'cannot open /etc/app.conf' >&2\nexit 3\n",
    );
    script(
        dir.path(),
        "v2",
        "#!/bin/sh\necho '{\"type\":\"result\",\"protocol\":2,\"ok\":true}'\n",
    );
    script(
        dir.path(),
        "nopassed",
        "#!/bin/sh\necho '{\"type\":\"result\",\"protocol\":1,\"ok\":true}'\n",
    );
    script(
        dir.path(),
        "refuses",
        "#!/bin/sh\necho '{\"type\":\"result\",\"protocol\":1,\"ok\":false,\"error\":\"the endpoint is down\"}'\n",
    );
    script(dir.path(), "silent", "#!/bin/sh\nexit 0\n");
    let names = [
        "garbage", "segv", "exit3", "v2", "nopassed", "refuses", "silent",
    ];
    let list: String = names
        .iter()
        .map(|n| format!("  - name: {n}\n    provides: [gate]\n"))
        .collect();
    let p = profile(dir.path(), &list, "");
    let plugins = plugins(&p, Secrets::default());
    let seen = Mutex::new(Vec::new());
    let mut got = BTreeMap::new();
    for name in names {
        let err = call(&plugins, &p, name, Action::Gate, &seen)
            .await
            .unwrap_err();
        got.insert(name, (err.kind, err.message));
    }
    let expect = [
        (
            "garbage",
            PluginErrorKind::Malformed,
            "line 1 of its output is not a protocol message",
        ),
        (
            "garbage",
            PluginErrorKind::Malformed,
            "`hello from a shell script`",
        ),
        ("segv", PluginErrorKind::Crashed, "was killed by signal 11"),
        (
            "segv",
            PluginErrorKind::Crashed,
            "its stderr: about to crash",
        ),
        ("exit3", PluginErrorKind::Crashed, "exited with status 3"),
        (
            "exit3",
            PluginErrorKind::Crashed,
            "cannot open /etc/app.conf",
        ),
        (
            "v2",
            PluginErrorKind::Malformed,
            "it speaks protocol 2; this taskctl speaks 1",
        ),
        (
            "nopassed",
            PluginErrorKind::Malformed,
            "a successful `gate` result needs `passed`",
        ),
        (
            "refuses",
            PluginErrorKind::Failed,
            "gate failed: the endpoint is down",
        ),
        (
            "silent",
            PluginErrorKind::Malformed,
            "exited without a result message",
        ),
    ];
    for (name, kind, text) in expect {
        let (k, m) = &got[name];
        assert_eq!(*k, kind, "{name}: {m}");
        assert!(m.contains(text), "{name}: `{m}` lacks `{text}`");
        assert!(m.starts_with(&format!("plugin `{name}` gate")), "{m}");
    }
}

/// A provider with one step per layer and nothing else, to place plugin
/// steps among and to call prerequisites through.
struct Layers;

struct Noop(taskctl_core::engine::StepId);

#[async_trait::async_trait]
impl taskctl_core::engine::Step for Noop {
    fn id(&self) -> &taskctl_core::engine::StepId {
        &self.0
    }
    fn kind(&self) -> &str {
        "noop"
    }
    fn depends_on(&self) -> Vec<taskctl_core::engine::StepId> {
        match self.0.as_str() {
            "agents" => vec![taskctl_core::engine::StepId::new("services")],
            _ => vec![],
        }
    }
    async fn plan(
        &self,
        _: &taskctl_core::engine::StepContext,
    ) -> Result<taskctl_core::engine::StepPlan, taskctl_core::engine::StepError> {
        unreachable!()
    }
    async fn apply(
        &self,
        _: &taskctl_core::engine::StepContext,
        _: &taskctl_core::engine::StepPlan,
    ) -> Result<taskctl_core::engine::Outputs, taskctl_core::engine::StepError> {
        unreachable!()
    }
    async fn destroy(
        &self,
        _: &taskctl_core::engine::StepContext,
        _: &taskctl_core::engine::StepPlan,
    ) -> Result<(), taskctl_core::engine::StepError> {
        unreachable!()
    }
}

#[async_trait::async_trait]
impl Provider for Layers {
    fn name(&self) -> &str {
        "layers"
    }
    fn layers(&self) -> Vec<taskctl_core::ops::Layer> {
        vec![
            taskctl_core::ops::Layer::Services,
            taskctl_core::ops::Layer::Agents,
        ]
    }
    async fn preflight(
        &self,
        _: &Profile,
        _: &taskctl_core::ops::Scope,
    ) -> Result<Vec<taskctl_core::ops::Finding>, taskctl_core::ops::OpsError> {
        Ok(Vec::new())
    }
    fn steps(
        &self,
        _: &Profile,
        scope: &taskctl_core::ops::Scope,
    ) -> Result<Vec<Arc<dyn taskctl_core::engine::Step>>, taskctl_core::ops::OpsError> {
        use taskctl_core::ops::Layer;
        let mut steps: Vec<Arc<dyn taskctl_core::engine::Step>> = Vec::new();
        for (layer, id) in [(Layer::Services, "services"), (Layer::Agents, "agents")] {
            if scope.includes(layer) {
                steps.push(Arc::new(Noop(taskctl_core::engine::StepId::new(id))));
            }
        }
        Ok(steps)
    }
}

#[test]
fn plugin_steps_sit_where_the_deployment_list_puts_them() {
    let dir = tempfile::tempdir().unwrap();
    script(dir.path(), "migrate", "#!/bin/sh\n");
    script(dir.path(), "notify", "#!/bin/sh\n");
    let p = profile(
        dir.path(),
        "  - { name: migrate, provides: [step] }\n  - { name: notify, provides: [step] }",
        "deployment:
  deployment: [deploy_core_services, migrate, deploy_agents, notify, {plugin: notify, args: {again: true}}]",
    );
    let provider = WithPlugins {
        inner: Box::new(Layers),
        plugins: Arc::new(plugins(&p, Secrets::default())),
    };
    let steps = provider
        .steps(&p, &taskctl_core::ops::Scope::all())
        .unwrap();
    let deps: BTreeMap<String, Vec<String>> = steps
        .iter()
        .map(|s| {
            let mut d: Vec<String> = s.depends_on().iter().map(|d| d.to_string()).collect();
            d.sort();
            (s.id().to_string(), d)
        })
        .collect();
    let expect: BTreeMap<String, Vec<String>> = [
        ("services", vec![]),
        ("agents", vec!["plugin/migrate", "services"]),
        ("plugin/migrate", vec!["services"]),
        (
            "plugin/notify",
            vec!["agents", "plugin/migrate", "services"],
        ),
        (
            "plugin/notify/2",
            vec!["agents", "plugin/notify", "services"],
        ),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.into_iter().map(String::from).collect()))
    .collect();
    assert_eq!(deps, expect);
    taskctl_core::engine::Graph::new(steps).expect("no cycle");
    // `--only agents` runs the target's steps alone.
    let only = provider
        .steps(
            &p,
            &taskctl_core::ops::Scope(vec![taskctl_core::ops::Layer::Agents]),
        )
        .unwrap();
    assert_eq!(only.len(), 1);
}

#[tokio::test]
async fn backup_verify_allows_a_rollback_only_over_a_recent_readable_backup() {
    let dir = tempfile::tempdir().unwrap();
    let backups = dir.path().join("backups");
    std::fs::create_dir(&backups).unwrap();
    let p = profile(
        dir.path(),
        &format!(
            "  - name: backup-verify
    path: {}
    provides: [prerequisite]
    args: {{ dir: {}, pattern: '*.sql.gz', max_age_hours: 1 }}",
            repo().join("plugins/backup-verify").display(),
            backups.display()
        ),
        "rollback: { manual: { prerequisites: [backup-verify] } }",
    );
    let provider = WithPlugins {
        inner: Box::new(Layers),
        plugins: Arc::new(plugins(&p, Secrets::default())),
    };
    let release = taskctl_core::release::Release {
        revision: 1,
        environment: "plug/development".into(),
        run_id: "r".into(),
        created_at: 0,
        status: taskctl_core::release::ReleaseStatus::Superseded,
        description: "deploy".into(),
        images: Default::default(),
        config_hashes: Default::default(),
        secret_refs: Default::default(),
        secret_versions: Default::default(),
        profile: serde_json::Value::Null,
        checks: Vec::new(),
    };
    let refused = |e: taskctl_core::ops::OpsError| e.to_string();
    let err = refused(
        provider
            .prerequisite(&p, "backup-verify", &release)
            .await
            .unwrap_err(),
    );
    assert!(
        err.contains("does not hold: no backup matching `*.sql.gz`"),
        "{err}"
    );

    // A torn gzip file: present, recent, but it does not read back.
    let mut gz = Command::new("gzip")
        .arg("-c")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        let mut stdin = gz.stdin.take().unwrap();
        stdin
            .write_all(&b"INSERT INTO tasks VALUES (1);\n".repeat(2000))
            .unwrap();
    }
    let whole = gz.wait_with_output().unwrap().stdout;
    std::fs::write(backups.join("db-1.sql.gz"), &whole[..whole.len() / 2]).unwrap();
    let err = refused(
        provider
            .prerequisite(&p, "backup-verify", &release)
            .await
            .unwrap_err(),
    );
    assert!(
        err.contains("db-1.sql.gz") && err.contains("does not read back"),
        "{err}"
    );

    std::fs::write(backups.join("db-2.sql.gz"), &whole).unwrap();
    let held = provider
        .prerequisite(&p, "backup-verify", &release)
        .await
        .unwrap();
    assert!(
        held.contains("db-2.sql.gz") && held.contains("reads back whole"),
        "{held}"
    );

    // Too old: two hours against one allowed.
    let old = SystemTime::now() - Duration::from_secs(7200);
    for f in ["db-1.sql.gz", "db-2.sql.gz"] {
        std::fs::File::options()
            .write(true)
            .open(backups.join(f))
            .unwrap()
            .set_modified(old)
            .unwrap();
    }
    let err = refused(
        provider
            .prerequisite(&p, "backup-verify", &release)
            .await
            .unwrap_err(),
    );
    assert!(err.contains("older than 1 h"), "{err}");
}

/// Runs a shipped plugin with `request` on stdin; its stdout lines.
fn run_shipped(name: &str, request: &serde_json::Value) -> Vec<serde_json::Value> {
    let mut child = Command::new(repo().join("plugins").join(name))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(request.to_string().as_bytes()).unwrap();
    }
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{name}");
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{name}: `{l}`: {e}")))
        .collect()
}

#[test]
fn the_shipped_plugins_speak_the_schema() {
    let dir = tempfile::tempdir().unwrap();
    let base = |action: &str, args: serde_json::Value| {
        serde_json::json!({
            "protocol": 1, "action": action, "plugin": "x",
            "environment": {"name": "plug", "environment": "development", "target": "docker"},
            "args": args, "profile": {}, "secrets": {},
            "state_dir": dir.path().display().to_string(),
        })
    };
    let mut messages = Vec::new();
    let mut requests = Vec::new();
    for name in ["notify-webhook", "tls-expiry", "backup-verify"] {
        let req = base("describe", serde_json::json!({}));
        let lines = run_shipped(name, &req);
        assert_eq!(lines.len(), 1, "{name}: {lines:?}");
        assert_eq!(lines[0]["name"], name);
        messages.extend(lines);
        requests.push(req);
    }
    for (name, action, args) in [
        (
            "notify-webhook",
            "plan",
            serde_json::json!({"url": "http://127.0.0.1:9/hook"}),
        ),
        (
            "notify-webhook",
            "apply",
            serde_json::json!({"url": "http://127.0.0.1:9/hook", "timeout": 2}),
        ),
        (
            "notify-webhook",
            "plan",
            serde_json::json!({"url": "ftp://nope"}),
        ),
        (
            "tls-expiry",
            "gate",
            serde_json::json!({"address": "127.0.0.1:9"}),
        ),
        (
            "tls-expiry",
            "check",
            serde_json::json!({"address": "127.0.0.1:9"}),
        ),
        (
            "backup-verify",
            "prerequisite",
            serde_json::json!({"dir": dir.path().display().to_string()}),
        ),
        (
            "backup-verify",
            "check",
            serde_json::json!({"dir": "/nonexistent"}),
        ),
    ] {
        let req = base(action, args);
        messages.extend(run_shipped(name, &req));
        requests.push(req);
    }
    // Port 9 (discard) refuses: the apply fails with a reason, the gate
    // fails with what it saw.
    assert!(
        messages.iter().any(|m| m["ok"] == false
            && m["error"]
                .as_str()
                .unwrap_or("")
                .contains("cannot be reached")),
        "{messages:?}"
    );
    assert!(
        messages.iter().any(|m| m["passed"] == false
            && m["observed"]
                .as_str()
                .unwrap_or("")
                .contains("no TLS handshake")),
        "{messages:?}"
    );
    requests.extend(messages);
    validate_against_schema(&requests);
}

/// Validates each document against plugins/protocol.schema.json.
fn validate_against_schema(docs: &[serde_json::Value]) {
    let python = std::env::var("TASKCTL_TEST_PYTHON").unwrap_or_else(|_| "python3".into());
    let code = r#"
import json, sys, jsonschema
schema = json.load(open(sys.argv[1]))
jsonschema.Draft202012Validator.check_schema(schema)
v = jsonschema.Draft202012Validator(schema)
bad = 0
for line in sys.stdin:
    doc = json.loads(line)
    for e in v.iter_errors(doc):
        bad += 1
        print(f"{e.message} in {json.dumps(doc)[:300]}")
sys.exit(1 if bad else 0)
"#;
    let mut child = Command::new(&python)
        .args(["-c", code])
        .arg(repo().join("plugins/protocol.schema.json"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{python}: {e} (set TASKCTL_TEST_PYTHON to a python with jsonschema; scripts/test-env.sh exports it)"));
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().unwrap();
        for d in docs {
            writeln!(stdin, "{d}").unwrap();
        }
    }
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "schema validation failed ({python}):\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
