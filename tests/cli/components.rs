//! The profile's `components`: a user's own services (seed 001's task
//! router and manual task handler) deployed beside the agents on the
//! `docker` target, with the same rolling update, gates and rollback.
//!
//! The component image is the user's: built from a Dockerfile of the test's
//! own (`FROM scratch`, Debian's static busybox serving `/srv` over HTTP), so
//! it has no HTTP client of its own: its health check runs the static probe
//! taskctl copies in. Everything is checked with the docker CLI (containers,
//! their configuration, the engine's event log) and from inside the
//! containers, never from taskctl's own events.

use crate::docker::{Env, docker, history, quick, text};
use std::path::{Path, PathBuf};
use std::process::Stdio;

/// Debian's `busybox-static` (scripts/test-env.sh installs it).
const BUSYBOX: &str = "/bin/busybox";

/// A build context: busybox and `/srv/ready` holding `version` (none when
/// `version` is `None`: a version whose readiness probe gets 404).
fn context(root: &Path, name: &str, version: Option<&str>) -> PathBuf {
    assert!(
        Path::new(BUSYBOX).is_file(),
        "{BUSYBOX} is missing: install Debian's busybox-static (scripts/test-env.sh does)"
    );
    let dir = root.join(name);
    std::fs::create_dir_all(dir.join("srv")).unwrap();
    std::fs::copy(BUSYBOX, dir.join("busybox")).unwrap();
    std::fs::write(dir.join("srv/index.html"), "component\n").unwrap();
    if let Some(v) = version {
        std::fs::write(dir.join("srv/ready"), v).unwrap();
    }
    std::fs::write(
        dir.join("Dockerfile"),
        "FROM scratch\nCOPY busybox /bin/busybox\nCOPY srv /srv\n",
    )
    .unwrap();
    dir.join("Dockerfile")
}

/// A component serving `/srv` on `port` with busybox's httpd.
fn component(name: &str, dockerfile: &Path, replicas: u32, port: u16, extra: &str) -> String {
    format!(
        "  - name: {name}
    image: taskctl-test/{name}:local
    build: {{ dockerfile: {dockerfile} }}
    replicas: {replicas}
    command: [\"/bin/busybox\", \"httpd\", \"-f\", \"-p\", \"{port}\", \"-h\", \"/srv\"]
    resources:
      requests: {{ cpu: 50m, memory: 16Mi }}
      limits: {{ cpu: 250m, memory: 64Mi }}
    ports: [{{ name: http, port: {port} }}]
    probes:
      readiness: {{ path: /ready, port: {port}, period_seconds: 1 }}
{extra}",
        dockerfile = dockerfile.display()
    )
}

/// The containers of component `name`, running or not: (name, status).
fn containers(env: &Env, name: &str) -> Vec<(String, String)> {
    let out = docker(&[
        "ps",
        "-a",
        "--filter",
        &format!("label={}", env.label()),
        "--filter",
        "label=taskctl.dev/role=component",
        "--filter",
        &format!("label=taskctl.dev/agent={name}"),
        "--format",
        "{{.Names}}\t{{.Status}}",
    ]);
    let mut v: Vec<(String, String)> = out
        .lines()
        .filter_map(|l| l.split_once('\t'))
        .map(|(n, s)| (n.to_owned(), s.to_owned()))
        .collect();
    v.sort();
    v
}

fn replica(env: &Env, name: &str, i: u32) -> String {
    format!("{name}-{i}.{}.development", env.name)
}

/// What `url` answers, asked from inside the handler's container (by a
/// name on the environment's network).
fn fetch_from_handler(env: &Env, url: &str) -> String {
    docker(&[
        "exec",
        &replica(env, "handler", 1),
        BUSYBOX,
        "wget",
        "-qO-",
        url,
    ])
}

/// What the router answers on `/ready`, asked by its name.
fn router_version(env: &Env) -> String {
    fetch_from_handler(env, "http://router:8080/ready")
}

/// The same, asked of each router replica by its own name.
fn replica_versions(env: &Env) -> Vec<String> {
    (1..=2)
        .map(|i| fetch_from_handler(env, &format!("http://router-{i}:8080/ready")))
        .collect()
}

fn assert_healthy(env: &Env, name: &str, replicas: u32) {
    let found = containers(env, name);
    let names: Vec<String> = found.iter().map(|(n, _)| n.clone()).collect();
    let wanted: Vec<String> = (1..=replicas).map(|i| replica(env, name, i)).collect();
    assert_eq!(names, wanted, "{found:?}");
    for (n, status) in &found {
        assert!(status.contains("(healthy)"), "{n}: {status}");
    }
}

fn now() -> String {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        .to_string()
}

#[test]
fn components_ride_along_with_secrets_as_files_depends_on_rolling_update_gates_and_rollback() {
    let mut env = Env::new("dk-cmp");
    let root = env.dir.path().to_path_buf();
    let v1 = context(&root, "v1", Some("v1"));
    let handler = context(&root, "handler", Some("handler"));
    let secret_path = env.secrets_path();
    env.layer(
        "components.yaml",
        &format!(
            "components:\n{}{}",
            component(
                "router",
                &v1,
                2,
                8080,
                &format!(
                    "    env:
      - {{ name: ROUTING, value: fifo }}
      - {{ name: BROKER_PASSWORD, secret: \"vault:{secret_path}/messaging#password\" }}
"
                )
            ),
            component("handler", &handler, 1, 8081, "    depends_on: [router]\n")
        ),
    );

    // A first deploy: the agents, the two router replicas, then the handler.
    let since = now();
    let out = quick(&env, &["deploy", "--yes"]);
    let said = text(&out);
    assert_eq!(out.status.code(), Some(0), "{said}");
    let until = now();
    assert_healthy(&env, "router", 2);
    assert_healthy(&env, "handler", 1);
    // The gates asked each replica itself, as the other containers do.
    for gate in [
        format!("check_service_health/{}", replica(&env, "router", 1)),
        format!("check_service_health/{}", replica(&env, "router", 2)),
        format!("check_service_health/{}", replica(&env, "handler", 1)),
        format!("verify_connectivity/{}/http", replica(&env, "router", 2)),
    ] {
        assert!(said.contains(&gate), "no gate {gate}:\n{said}");
    }
    // The handler reaches the router by its name on the network, and each
    // replica by its own.
    assert_eq!(router_version(&env), "v1");
    assert_eq!(replica_versions(&env), ["v1", "v1"]);

    // depends_on, from the engine's own event log: the handler's container
    // was created only after both router replicas were healthy.
    let events = docker(&[
        "events",
        "--since",
        &since,
        "--until",
        &until,
        "--filter",
        &format!("label={}", env.label()),
        "--format",
        "{{.TimeNano}} {{.Action}} {{index .Actor.Attributes \"name\"}}",
    ]);
    let at = |action: &str, prefix: &str| -> Vec<u128> {
        events
            .lines()
            .filter_map(|l| {
                let mut parts = l.splitn(2, ' ');
                let t: u128 = parts.next()?.parse().ok()?;
                let rest = parts.next()?;
                (rest.starts_with(action) && rest.rsplit(' ').next()?.starts_with(prefix))
                    .then_some(t)
            })
            .collect()
    };
    let routers_healthy: Vec<u128> = (1..=2)
        .map(|i| {
            at("health_status: healthy", &format!("router-{i}."))
                .into_iter()
                .min()
                .unwrap_or_else(|| panic!("router-{i} never reported healthy:\n{events}"))
        })
        .collect();
    let handler_created = at("create", "handler-1.")
        .into_iter()
        .min()
        .unwrap_or_else(|| panic!("no create of handler-1:\n{events}"));
    assert!(
        routers_healthy.iter().all(|t| *t < handler_created),
        "handler-1 was created before the routers were healthy:\n{events}"
    );

    // Hardened like every container taskctl starts; the secret is a file
    // only the component's user reads, never a variable.
    let password = env.managed_secret("messaging")["password"]
        .as_str()
        .expect("the messaging secret")
        .to_owned();
    for name in [replica(&env, "router", 1), replica(&env, "handler", 1)] {
        let seen = env.inspect(
            &name,
            "{{.Config.User}}|{{json .HostConfig.CapDrop}}|{{json .HostConfig.CapAdd}}|{{.HostConfig.ReadonlyRootfs}}|{{json .HostConfig.SecurityOpt}}|{{json .HostConfig.PortBindings}}|{{.HostConfig.PidsLimit}}|{{.HostConfig.Memory}}",
        );
        assert_eq!(
            seen, "65534:65534|[\"ALL\"]|null|true|[\"no-new-privileges:true\"]|null|512|67108864",
            "{name}"
        );
        let vars = env.inspect(&name, "{{json .Config.Env}}");
        assert!(!vars.contains(&password), "{name}: a secret in {vars}");
    }
    let vars = env.inspect(&replica(&env, "router", 1), "{{json .Config.Env}}");
    assert!(
        vars.contains("BROKER_PASSWORD_FILE=/run/secrets/broker_password"),
        "{vars}"
    );
    assert!(vars.contains("ROUTING=fifo"), "{vars}");
    let file = docker(&[
        "exec",
        &replica(&env, "router", 1),
        BUSYBOX,
        "cat",
        "/run/secrets/broker_password",
    ]);
    assert_eq!(file, password);
    let mode = docker(&[
        "exec",
        &replica(&env, "router", 1),
        BUSYBOX,
        "stat",
        "-c",
        "%a %u",
        "/run/secrets/broker_password",
    ]);
    assert_eq!(mode.trim(), "400 65534");

    // A second deploy changes nothing.
    let plan = quick(&env, &["plan", "--detailed-exitcode"]);
    assert_eq!(plan.status.code(), Some(0), "{}", text(&plan));

    // A rolling update of the router to v2, sampled from the engine: both
    // replicas healthy at every poll (a replacement is healthy before the
    // container it replaces stops).
    let v2 = context(&root, "v2", Some("v2"));
    env.layer(
        "v2.yaml",
        &format!(
            "components:\n  - name: router\n    build: {{ dockerfile: {} }}\n",
            v2.display()
        ),
    );
    let mut child = env
        .command(&["deploy", "--yes"])
        .env("TASKCTL_GATE_TIMEOUT", "10s")
        .env("TASKCTL_WATCH_WINDOW", "2s")
        .env("CI", "true")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (mut fewest, mut samples) = (usize::MAX, 0);
    while child.try_wait().unwrap().is_none() {
        let healthy = containers(&env, "router")
            .iter()
            .filter(|(_, s)| s.contains("(healthy)"))
            .count();
        fewest = fewest.min(healthy);
        samples += 1;
    }
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(samples > 0);
    assert!(
        fewest >= 2,
        "only {fewest} healthy routers at one of {samples} polls"
    );
    assert_healthy(&env, "router", 2);
    assert_eq!(replica_versions(&env), ["v2", "v2"]);

    // A broken v3 (its readiness gets 404): the first replacement never
    // becomes healthy, the deploy fails, and v2 keeps serving.
    let v3 = context(&root, "v3", None);
    env.layer(
        "v3.yaml",
        &format!(
            "components:\n  - name: router\n    build: {{ dockerfile: {} }}\n    probes:\n      readiness: {{ path: /ready, port: 8080, period_seconds: 1, failure_threshold: 2 }}\n",
            v3.display()
        ),
    );
    let out = quick(&env, &["deploy", "--yes"]);
    let said = text(&out);
    assert_eq!(out.status.code(), Some(1), "{said}");
    assert!(said.contains("the running one was kept"), "{said}");
    assert_healthy(&env, "router", 2);
    assert_eq!(replica_versions(&env), ["v2", "v2"]);

    // Back to release 1 on command: the router runs v1's image again.
    let releases = history(&env);
    assert_eq!(releases[0].0, 1, "{releases:?}");
    let out = quick(&env, &["rollback", "--to", "1", "--approve", "lead"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_healthy(&env, "router", 2);
    assert_eq!(replica_versions(&env), ["v1", "v1"]);
    assert_eq!(router_version(&env), "v1");

    // destroy takes every component container away.
    let out = env.run(&["destroy", "--yes"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}\nthe network: {}",
        text(&out),
        std::process::Command::new("docker")
            .args(["network", "inspect", &format!("{}-net", env.name)])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default()
    );
    assert!(containers(&env, "router").is_empty());
    assert!(containers(&env, "handler").is_empty());
}
