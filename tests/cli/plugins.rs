//! Plugins through the CLI: the shipped ones (`plugins/`, Python) as the
//! check, step and gate of a local deploy on this machine's Docker engine,
//! a deploy killed during the plugin step and resumed, `plugins list`, and
//! a plugin that prints garbage stopping a deploy before any change.

use crate::docker::{AGENT, Env, docker, quick, required, text};
use crate::harness::{repo_root, taskctl_in};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A webhook on loopback that records each POST body. It never answers
/// the first one (a webhook that hangs), and answers 200 to the others.
struct Hook {
    addr: String,
    bodies: Arc<Mutex<Vec<String>>>,
}

impl Hook {
    fn start() -> Hook {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let bodies: Arc<Mutex<Vec<String>>> = Arc::default();
        let seen = bodies.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let seen = seen.clone();
                std::thread::spawn(move || serve(stream, seen));
            }
        });
        Hook { addr, bodies }
    }

    fn bodies(&self) -> Vec<String> {
        self.bodies.lock().unwrap().clone()
    }

    fn wait_for(&self, count: usize, within: Duration) {
        let start = Instant::now();
        while self.bodies().len() < count {
            assert!(
                start.elapsed() < within,
                "the webhook got {} request(s), not {count}, within {within:?}",
                self.bodies().len()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

fn serve(stream: TcpStream, seen: Arc<Mutex<Vec<String>>>) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut length = 0usize;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
            length = v.trim().parse().unwrap_or(0);
        }
        if line == "\r\n" {
            break;
        }
    }
    let mut body = vec![0u8; length];
    reader.read_exact(&mut body).unwrap();
    let first = {
        let mut s = seen.lock().unwrap();
        s.push(String::from_utf8_lossy(&body).into_owned());
        s.len() == 1
    };
    if first {
        // Hold the connection: the deploy is killed meanwhile.
        std::thread::sleep(Duration::from_secs(600));
        return;
    }
    let mut stream = stream;
    let _ =
        stream.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok");
}

/// Python processes running the shipped notify-webhook for `env`.
fn notify_processes(env_name: &str) -> Vec<u32> {
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        let cwd = std::fs::read_link(entry.path().join("cwd")).unwrap_or_default();
        let _ = env_name;
        if String::from_utf8_lossy(&cmdline).contains("plugins/notify-webhook")
            && cwd == repo_root().join("plugins")
        {
            pids.push(pid);
        }
    }
    pids
}

fn plugins_layer(env: &mut Env, hook: &Hook) {
    let plugins = repo_root().join("plugins");
    let amqps_port = required("TASKCTL_TEST_AMQPS_URL")
        .rsplit(':')
        .next()
        .and_then(|p| p.split('/').next())
        .unwrap()
        .to_string();
    env.layer(
        "plugins.yaml",
        &format!(
            "plugins:
  - name: tls-expiry
    path: {plugins}/tls-expiry
    provides: [check, gate]
    args: {{ address: '127.0.0.1:{amqps_port}', ca_file: '{ca}', min_days: 1 }}
  - name: notify-webhook
    path: {plugins}/notify-webhook
    provides: [step]
    profile: [agents]
    args: {{ url: 'http://{hook}/hook', message: 'Deployed {{name}} ({{environment}}) with plugins', timeout: 600 }}
    timeout: 10m
deployment:
  preparation: [validate_environment, check_dependencies, tls-expiry]
  deployment: [deploy_core_services, deploy_agents, notify-webhook]
  verification: [verify_connectivity, check_service_health, test_functionality, tls-expiry]
",
            plugins = plugins.display(),
            ca = required("TASKCTL_TEST_BROKER_CA"),
            hook = hook.addr,
        ),
    );
}

#[test]
fn check_step_gate_and_prerequisite_plugins_on_the_local_target_and_a_killed_plugin_step_resumes() {
    let mut env = Env::new("plug");
    let hook = Hook::start();
    plugins_layer(&mut env, &hook);

    // The first deploy reaches the plugin step (after the agents) and
    // hangs on the webhook: kill -9 taskctl there.
    let mut child = env
        .command(&["deploy", "--yes"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    hook.wait_for(1, Duration::from_secs(240));
    assert!(
        !notify_processes(&env.name).is_empty(),
        "the plugin is posting"
    );
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    // The plugin died with taskctl (PR_SET_PDEATHSIG): nothing left running.
    let start = Instant::now();
    while !notify_processes(&env.name).is_empty() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "the plugin outlived taskctl: {:?}",
            notify_processes(&env.name)
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    // The re-run resumes: the plugin step, interrupted before it recorded
    // its announcement, is planned again and finishes.
    let out = env.run(&["deploy", "--yes"]);
    let shown = text(&out);
    assert_eq!(out.status.code(), Some(0), "{shown}");
    assert!(
        shown.contains("had not finished; its work was adopted"),
        "{shown}"
    );
    assert!(shown.contains("plugin/notify-webhook"), "{shown}");
    // The check ran in the preflight, the gate in the verification, both
    // with what they saw of the broker's TLS listener.
    let preflight = shown
        .lines()
        .find(|l| l.contains("preflight") && l.contains("plugin/tls-expiry"))
        .unwrap_or_else(|| panic!("no plugin check in the preflight: {shown}"));
    assert!(preflight.contains("days left"), "{preflight}");
    let gate = shown
        .lines()
        .find(|l| l.contains("plugin/tls-expiry") && !l.contains("preflight"))
        .unwrap_or_else(|| panic!("no plugin gate: {shown}"));
    assert!(gate.contains("days left"), "{gate}");
    assert_eq!(hook.bodies().len(), 2);
    let posted: serde_json::Value = serde_json::from_str(&hook.bodies()[1]).unwrap();
    assert_eq!(
        posted["text"],
        format!("Deployed {} (development) with plugins", env.name)
    );
    assert_eq!(posted["environment"]["target"], "docker");
    // It got the part of the profile it declared, and nothing else.
    let parts: Vec<&String> = posted["profile"].as_object().unwrap().keys().collect();
    assert_eq!(parts, ["agents"]);
    for a in env.agents() {
        assert!(a.health.contains("(healthy)"), "{a:?}");
    }

    // Announced once: the next deploy plans the step as a no-op and posts
    // nothing.
    let out = env.run(&["plan", "--detailed-exitcode"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let out = env.run(&["deploy", "--yes"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(hook.bodies().len(), 2, "{:?}", hook.bodies());
    // A second release: what the plugin announces changed, so it posts.
    env.layer(
        "change.yaml",
        &format!(
            "agents:\n  - name: {AGENT}\n    env:\n      - name: MAX_CONCURRENT_TASKS\n        value: \"30\"\n"
        ),
    );
    let out = env.run(&["deploy", "--yes"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(hook.bodies().len(), 3, "{:?}", hook.bodies());

    // The manual rollback's prerequisite is the backup-verify plugin: no
    // backup, no rollback; a recent one that reads back whole lets it run.
    let backups = env.dir.path().join("backups");
    std::fs::create_dir(&backups).unwrap();
    env.layer(
        "rollback.yaml",
        &format!(
            "plugins:
  - name: backup-verify
    path: {}
    provides: [prerequisite]
    args: {{ dir: '{}', pattern: '*.dump', max_age_hours: 26 }}
rollback:
  manual:
    prerequisites: [backup-verify]
",
            repo_root().join("plugins/backup-verify").display(),
            backups.display()
        ),
    );
    let out = env.run(&["rollback", "--yes"]);
    let shown = text(&out);
    assert_eq!(out.status.code(), Some(1), "{shown}");
    assert!(
        shown.contains(
            "rollback prerequisite `backup-verify` does not hold: no backup matching `*.dump`"
        ),
        "{shown}"
    );
    assert!(shown.contains("nothing was changed"), "{shown}");
    // A pg_dump custom-format archive starts with PGDMP.
    std::fs::write(backups.join("tasks-1.dump"), b"PGDMP\x01\x0e\x00 a dump").unwrap();
    let out = env.run(&["rollback", "--yes"]);
    let shown = text(&out);
    assert_eq!(out.status.code(), Some(0), "{shown}");
    let held = shown
        .lines()
        .find(|l| l.contains("prerequisite") && l.contains("backup-verify"))
        .unwrap_or_else(|| panic!("no prerequisite line: {shown}"));
    assert!(
        held.contains("tasks-1.dump") && held.contains("reads back whole"),
        "{held}"
    );
    let audit = text(&env.run(&["audit"]));
    assert!(audit.contains("backup-verify: tasks-1.dump"), "{audit}");

    // The plugin's state sits beside the environment's.
    let state = env
        .dir
        .path()
        .join(".taskctl")
        .join(&env.name)
        .join("development/plugins/notify-webhook/last-notified");
    assert!(state.is_file(), "{}", state.display());
}

#[test]
fn a_check_plugin_that_prints_garbage_stops_the_deploy_before_any_change() {
    let mut env = Env::new("plugbad");
    let dir = env.dir.path().join("plugins");
    std::fs::create_dir(&dir).unwrap();
    let script = dir.join("chatty");
    std::fs::write(&script, "#!/bin/sh\necho 'Checking things...'\n").unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    // Found as plugins/chatty beside the layer that declares it.
    env.layer(
        "plugins.yaml",
        "plugins:\n  - { name: chatty, provides: [check] }\ndeployment:\n  preparation: [chatty]\n",
    );
    let out = env.run(&["deploy", "--yes"]);
    let shown = text(&out);
    assert_eq!(out.status.code(), Some(1), "{shown}");
    assert!(
        shown.contains("plugin `chatty` check: line 1 of its output is not a protocol message"),
        "{shown}"
    );
    assert!(shown.contains("`Checking things...`"), "{shown}");
    assert!(!shown.contains("panicked"), "{shown}");
    let containers = docker(&["ps", "-aq", "--filter", &format!("label={}", env.label())]);
    assert!(containers.trim().is_empty(), "{containers}");
    // `validate` runs the same check.
    let out = env.run(&["validate"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("not a protocol message"),
        "{}",
        text(&out)
    );
}

#[test]
fn a_hanging_step_plugin_times_out_fails_its_step_with_its_output_and_the_run_stops() {
    let mut env = Env::new("plughang");
    let dir = env.dir.path().join("plugins");
    std::fs::create_dir(&dir).unwrap();
    let script = dir.join("migrate");
    // Plans a change, then hangs in apply after saying what it waits for.
    std::fs::write(
        &script,
        r#"#!/bin/sh
read request
case "$request" in
  *'"action":"plan"'*)
    echo '{"type":"result","protocol":1,"ok":true,"change":{"action":"create","reason":"schema v2 not applied"}}' ;;
  *)
    echo '{"type":"progress","protocol":1,"message":"waiting for the schema lock"}'
    echo 'lock held by pid 4242' >&2
    sleep 600 ;;
esac
"#,
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    // First in the list: it runs before any container is made.
    env.layer(
        "plugins.yaml",
        "plugins:\n  - { name: migrate, provides: [step], timeout: 2s }\ndeployment:\n  deployment: [migrate, deploy_core_services, deploy_agents]\n",
    );
    let started = Instant::now();
    let out = env.run(&["deploy", "--yes"]);
    let shown = text(&out);
    assert_eq!(out.status.code(), Some(1), "{shown}");
    assert!(started.elapsed() < Duration::from_secs(60), "{shown}");
    assert!(
        shown.contains("plugin `migrate` apply: it did not finish within 2s and was killed"),
        "{shown}"
    );
    assert!(
        shown.contains("its last progress: waiting for the schema lock"),
        "{shown}"
    );
    assert!(
        shown.contains("its stderr: lock held by pid 4242"),
        "{shown}"
    );
    assert!(!shown.contains("panicked"), "{shown}");
    let containers = docker(&["ps", "-aq", "--filter", &format!("label={}", env.label())]);
    assert!(containers.trim().is_empty(), "{containers}");
}

#[test]
fn a_gate_plugin_that_does_not_pass_fails_the_release_and_it_is_rolled_back() {
    let mut env = Env::new("pluggate");
    let first = quick(&env, &["deploy", "--yes"]);
    assert_eq!(first.status.code(), Some(0), "{}", text(&first));
    let dir = env.dir.path().join("plugins");
    std::fs::create_dir(&dir).unwrap();
    let script = dir.join("cert-days");
    std::fs::write(
        &script,
        "#!/bin/sh\necho '{\"type\":\"result\",\"protocol\":1,\"ok\":true,\"passed\":false,\"observed\":\"api.example.com expires in 2 days (at least 14 required)\"}'\n",
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    // A new version, verified by the plugin gate too.
    env.layer(
        "gate.yaml",
        &format!(
            "plugins:\n  - {{ name: cert-days, provides: [gate] }}\ndeployment:\n  verification: [check_service_health, cert-days]\nagents:\n  - name: {AGENT}\n    env:\n      - name: MAX_CONCURRENT_TASKS\n        value: \"40\"\n"
        ),
    );
    let second = quick(&env, &["deploy", "--yes"]);
    let out = text(&second);
    assert_eq!(second.status.code(), Some(1), "{out}");
    assert!(
        out.contains("check plugin/cert-days (plugin): FAILED")
            && out.contains("api.example.com expires in 2 days"),
        "the plugin gate is named with what it saw: {out}"
    );
    assert!(
        out.contains("rolled back automatically to release 1"),
        "{out}"
    );
    for agent in env.agents() {
        let vars = docker(&["inspect", "--format", "{{json .Config.Env}}", &agent.name]);
        assert!(
            vars.contains("MAX_CONCURRENT_TASKS=50"),
            "{}: {vars}",
            agent.name
        );
    }
}

#[test]
fn plugins_list_shows_versions_capabilities_and_what_cannot_be_used() {
    let dir = tempfile::tempdir().unwrap();
    let plugins = repo_root().join("plugins");
    let shared = dir.path().join("shared");
    std::fs::create_dir(&shared).unwrap();
    let open = shared.join("open-gate");
    std::fs::copy(plugins.join("tls-expiry"), &open).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o777)).unwrap();
    std::fs::write(
        dir.path().join("p.yaml"),
        format!(
            "apiVersion: taskctl.dev/v1
kind: Profile
include: [{local}]
plugins:
  - {{ name: notify-webhook, path: {plugins}/notify-webhook, provides: [step] }}
  - {{ name: tls-expiry, path: {plugins}/tls-expiry, provides: [gate, prerequisite] }}
  - {{ name: open-gate, path: shared/open-gate, provides: [gate] }}
",
            local = repo_root().join("profiles/local.yaml").display(),
            plugins = plugins.display()
        ),
    )
    .unwrap();
    let out = taskctl_in(dir.path(), &["-p", "p.yaml", "plugins", "list"]);
    let shown = text(&out);
    assert_eq!(out.status.code(), Some(1), "{shown}");
    let row = |name: &str| {
        shown
            .lines()
            .find(|l| l.starts_with(&format!("{name} ")))
            .unwrap_or_else(|| panic!("no {name} row: {shown}"))
            .split_whitespace()
            .map(str::to_owned)
            .collect::<Vec<_>>()
    };
    assert_eq!(
        row("notify-webhook")[..5],
        ["notify-webhook", "1.0.0", "step", "step", "path"]
    );
    assert_eq!(
        row("tls-expiry")[..4],
        ["tls-expiry", "1.0.0", "gate,check", "gate,prerequisite"]
    );
    assert!(
        shown
            .contains("tls-expiry: the profile uses it as prerequisite, which it does not provide"),
        "{shown}"
    );
    assert!(
        shown.contains("a directory every user can write to"),
        "{shown}"
    );
    // Without a profile: ./plugins and taskctl-* on PATH.
    let out = taskctl_in(&repo_root(), &["plugins", "list", "-o", "json"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let rows: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    let mut names: Vec<&str> = rows.iter().map(|r| r["name"].as_str().unwrap()).collect();
    names.sort();
    assert_eq!(names, ["backup-verify", "notify-webhook", "tls-expiry"]);
    assert!(
        rows.iter()
            .all(|r| r["version"] == "1.0.0" && r["source"] == "plugins/")
    );
}
