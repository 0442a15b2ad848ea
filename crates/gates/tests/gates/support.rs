//! Fixtures: the test environment's addresses, a scripted HTTP server, the
//! shipped local profile, and the real agent as a child process.

#![allow(dead_code)]

use std::fs::File;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use lapin::options::QueueDeleteOptions;
use lapin::{Connection, ConnectionProperties};
use taskctl_core::profile::{LoadOptions, Profile, load};
use taskctl_gates::{AgentEndpoint, Gate, GateKind};

/// A test-environment variable, or a failure that says how to get it.
pub fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!(
            "{name} is not set: start the test servers with `scripts/test-env.sh up` and \
             `eval \"$(scripts/test-env.sh env)\"` before running these tests"
        )
    })
}

pub fn prometheus_url() -> String {
    env("TASKCTL_TEST_PROMETHEUS_URL")
}

pub fn amqp_url() -> String {
    env("TASKCTL_TEST_AMQP_URL")
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A short id unique across the test processes nextest runs in parallel.
pub fn unique() -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!(
        "g{:x}{:x}{}",
        nanos & 0xffff_ffff,
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

pub fn gate(name: &str, kind: GateKind, timeout: Duration, interval: Duration) -> Gate {
    Gate {
        name: name.to_owned(),
        kind,
        timeout,
        interval,
    }
}

/// An HTTP/1.1 server on loopback answering every request from a script:
/// the n-th request (0-based) gets `respond(n)`.
pub struct HttpServer {
    pub addr: String,
    pub requests: Arc<AtomicU32>,
}

impl HttpServer {
    pub fn start(respond: impl Fn(u32) -> (u16, String) + Send + Sync + 'static) -> HttpServer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let requests = Arc::new(AtomicU32::new(0));
        let counter = requests.clone();
        let respond = Arc::new(respond);
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { return };
                let counter = counter.clone();
                let respond = respond.clone();
                std::thread::spawn(move || serve(stream, &counter, &*respond));
            }
        });
        HttpServer { addr, requests }
    }

    /// Always the same answer.
    pub fn fixed(status: u16, body: &str) -> HttpServer {
        let body = body.to_owned();
        HttpServer::start(move |_| (status, body.clone()))
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }
}

/// Serves requests on one keep-alive connection until the client closes it.
fn serve(mut stream: TcpStream, counter: &AtomicU32, respond: &dyn Fn(u32) -> (u16, String)) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
            match stream.read(&mut chunk) {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        let end = buf.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
        buf.drain(..end);
        let n = counter.fetch_add(1, Ordering::SeqCst);
        let (status, body) = respond(n);
        let response = format!(
            "HTTP/1.1 {status} X\r\ncontent-type: text/plain\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        );
        if stream.write_all(response.as_bytes()).is_err() {
            return;
        }
    }
}

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// `profiles/local-external.yaml` as shipped, with no variables set (so its
/// `${VAR:-default}` defaults apply).
pub fn local_profile() -> Profile {
    let loaded = load(&LoadOptions {
        files: vec![repo_root().join("profiles/local-external.yaml")],
        environment: None,
        vars: &|_| None,
    });
    loaded.valid_profile().cloned().unwrap_or_else(|| {
        panic!(
            "profiles/local-external.yaml does not load: {:?}",
            loaded.diagnostics
        )
    })
}

pub fn agent_endpoint(name: &str, http: &str, metrics: &str) -> AgentEndpoint {
    AgentEndpoint {
        name: name.to_owned(),
        http: http.to_owned(),
        metrics: metrics.to_owned(),
        instance: metrics.to_owned(),
        readiness_path: "/ready".to_owned(),
        liveness_path: "/health".to_owned(),
    }
}

/// Holds the agent tests' broker lock shared: their broker-restart tests
/// take it exclusively, so they never restart RabbitMQ under this test.
pub struct BrokerLock(File);

pub fn broker_lock() -> BrokerLock {
    let path = std::env::temp_dir().join("taskctl-agent-tests-broker.lock");
    let file = File::options()
        .create(true)
        .append(true)
        .open(&path)
        .unwrap();
    file.lock_shared().unwrap();
    BrokerLock(file)
}

/// The `task-executor` binary of this workspace, built once per test
/// process with `cargo build -p task-executor` (a no-op when it is up to
/// date) so `cargo nextest run -p taskctl-gates` needs no prior step; the
/// build also makes sure the binary in a target directory shared between
/// checkouts is this checkout's. `TASKCTL_TEST_AGENT_BIN` names a prebuilt
/// one instead.
pub fn agent_binary() -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            if let Ok(prebuilt) = std::env::var("TASKCTL_TEST_AGENT_BIN") {
                let bin = PathBuf::from(prebuilt);
                assert!(
                    bin.exists(),
                    "TASKCTL_TEST_AGENT_BIN={} does not exist",
                    bin.display()
                );
                return bin;
            }
            let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
            let status = Command::new(cargo)
                .args(["build", "-p", "task-executor", "--bin", "task-executor"])
                .current_dir(repo_root())
                .stdout(Stdio::null())
                .status()
                .expect("cannot run cargo to build task-executor");
            assert!(status.success(), "`cargo build -p task-executor` failed");
            // The test binary is target/<profile>/deps/gates-<hash>.
            let exe = std::env::current_exe().unwrap();
            let dir = exe.parent().and_then(Path::parent).unwrap();
            let bin = dir.join("task-executor");
            assert!(
                bin.exists(),
                "{} is missing after `cargo build -p task-executor`",
                bin.display()
            );
            bin
        })
        .clone()
}

/// A real agent consuming its own queues on the test broker.
/// A new Ed25519 pair: (private key, base64 PKCS#8; public key, base64).
pub fn signing_pair() -> (String, String) {
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

pub struct Agent {
    pub name: String,
    pub task_queue: String,
    /// The private key (base64 PKCS#8) whose public key this agent trusts.
    pub signing_key: String,
    pub http: String,
    pub metrics: String,
    child: Child,
    log: PathBuf,
    workdir: PathBuf,
    queues: Vec<String>,
    _lock: BrokerLock,
}

impl Agent {
    pub async fn start() -> Agent {
        let lock = tokio::task::spawn_blocking(broker_lock).await.unwrap();
        let name = unique();
        let workdir = std::env::temp_dir().join(format!("gates-test-{name}"));
        std::fs::create_dir_all(workdir.join("no-gpu")).unwrap();
        let (health_port, metrics_port) = (free_port(), free_port());
        let task_queue = format!("{name}.tasks");
        let gpu_queue = format!("{name}.gpu");
        let mut queues = vec![
            task_queue.clone(),
            gpu_queue.clone(),
            format!("{name}.results"),
            format!("{name}.dead"),
        ];
        for q in [&task_queue, &gpu_queue] {
            for ms in [100, 200, 400] {
                queues.push(format!("{q}.retry.{ms}"));
            }
        }
        let log = workdir.join("agent.log");
        let out = File::create(&log).unwrap();
        let (signing_key, public_key) = signing_pair();
        let child = Command::new(agent_binary())
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("BROKER_URL", amqp_url())
            .env("AGENT_ID", &name)
            .env("LOG_LEVEL", "debug")
            .env("TASK_QUEUE", &task_queue)
            .env("GPU_TASK_QUEUE", &gpu_queue)
            .env("RESULT_QUEUE", &queues[2])
            .env("DEAD_LETTER_QUEUE", &queues[3])
            .env("RETRY_BASE_DELAY", "100")
            .env("RETRY_MAX_DELAY", "400")
            .env("BIND_ADDRESS", "127.0.0.1")
            .env("HEALTH_PORT", health_port.to_string())
            .env("METRICS_PORT", metrics_port.to_string())
            .env("GPU_DEVICE_DIR", workdir.join("no-gpu"))
            .env("TASK_SIGNING_PUBLIC_KEYS", public_key)
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        Agent {
            name,
            task_queue,
            signing_key,
            http: format!("127.0.0.1:{health_port}"),
            metrics: format!("127.0.0.1:{metrics_port}"),
            child,
            log,
            workdir,
            queues,
            _lock: lock,
        }
    }

    pub fn endpoint(&self) -> AgentEndpoint {
        agent_endpoint(&self.name, &self.http, &self.metrics)
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Stops the agent, then deletes its queues (a running agent would
    /// redeclare them).
    pub async fn stop(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let connection = Connection::connect(&amqp_url(), ConnectionProperties::default())
            .await
            .unwrap();
        let channel = connection.create_channel().await.unwrap();
        for q in &self.queues {
            let _ = channel
                .queue_delete(q.as_str().into(), QueueDeleteOptions::default())
                .await;
        }
        let _ = connection.close(200, "done".into()).await;
        let _ = std::fs::remove_dir_all(&self.workdir);
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A Prometheus file_sd target for one test; removed on drop.
pub struct ScrapeTarget(PathBuf);

impl ScrapeTarget {
    pub fn register(name: &str, addr: &str) -> ScrapeTarget {
        let dir = env("TASKCTL_TEST_PROMETHEUS_SD_DIR");
        let path = Path::new(&dir).join(format!("{name}.json"));
        let sd = serde_json::json!([{ "targets": [addr], "labels": { "agent": name } }]);
        std::fs::write(&path, sd.to_string()).unwrap();
        ScrapeTarget(path)
    }
}

impl Drop for ScrapeTarget {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// A shared handle tests can flip while a server reads it.
pub type Shared<T> = Arc<Mutex<T>>;
