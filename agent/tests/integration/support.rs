//! Shared fixtures: the test environment's servers, one uniquely named set of
//! queues per test, and the real `task-executor` binary as a child process.
//!
//! Every test that needs RabbitMQ holds the broker lock shared; tests that
//! restart the broker hold it exclusively, so they never pull the broker from
//! under a parallel test (nextest runs each test in its own process; the lock
//! is an flock on a file in the temp dir).

#![allow(dead_code)]

use std::{
    collections::HashMap,
    fs::File,
    io::Read,
    net::TcpListener,
    path::PathBuf,
    process::{Child, Command, ExitStatus, Stdio},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use futures_lite::StreamExt;
use lapin::types::{AMQPValue, ShortString};
use lapin::{
    BasicProperties, Channel, Connection, ConnectionProperties,
    options::{
        BasicAckOptions, BasicConsumeOptions, BasicGetOptions, BasicPublishOptions,
        ConfirmSelectOptions, QueueDeclareOptions, QueueDeleteOptions,
    },
    types::FieldTable,
};
use nix::fcntl::{Flock, FlockArg};
use taskctl_protocol::{TaskKind, TaskMessage, TaskResult, signing::Signer};

/// Programs the test agents may run (`COMMAND_ALLOWED`).
pub const TEST_PROGRAMS: &str = "/bin/sh,/usr/bin/python3,/bin/true,/bin/sleep";

/// A new Ed25519 signing key.
pub fn new_signer() -> Signer {
    use base64::Engine as _;
    let doc =
        ring::signature::Ed25519KeyPair::generate_pkcs8(&ring::rand::SystemRandom::new()).unwrap();
    Signer::from_pkcs8_base64(&base64::engine::general_purpose::STANDARD.encode(doc.as_ref()))
        .unwrap()
}

/// `props` with the signature headers of `body` under `signer` added: the
/// format of earlier producers, which agents still accept.
pub fn signed_props(signer: &Signer, body: &[u8], props: BasicProperties) -> BasicProperties {
    let mut headers = props.headers().clone().unwrap_or_default();
    for (name, value) in signer.headers(body) {
        headers.insert(ShortString::from(name), AMQPValue::LongString(value.into()));
    }
    props.with_headers(headers)
}

/// Reads a test-environment variable or fails with what to do.
pub fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!(
            "{name} is not set: start the test servers with `scripts/test-env.sh up` and \
             `eval \"$(scripts/test-env.sh env)\"` before running these tests"
        )
    })
}

pub fn amqp_url() -> String {
    env("TASKCTL_TEST_AMQP_URL")
}

/// A short random hex id (no extra dependency: the std hasher is seeded
/// randomly per process).
pub fn random_id() -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_nanos(),
    );
    h.write_u32(std::process::id());
    format!("{:012x}", h.finish() & 0xffff_ffff_ffff)
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// Holds the broker lock for the test's duration.
pub struct BrokerLock(#[allow(dead_code)] Flock<File>);

fn lock(arg: FlockArg) -> BrokerLock {
    let path = std::env::temp_dir().join("taskctl-agent-tests-broker.lock");
    let file = File::options()
        .create(true)
        .append(true)
        .open(&path)
        .unwrap();
    BrokerLock(Flock::lock(file, arg).map_err(|(_, e)| e).unwrap())
}

/// Queue names and a broker connection for one test.
pub struct Harness {
    pub prefix: String,
    pub task_queue: String,
    pub gpu_queue: String,
    pub result_queue: String,
    pub dead_queue: String,
    pub connection: Connection,
    pub channel: Channel,
    pub workdir: PathBuf,
    /// The key every task this harness publishes is signed with; its
    /// public key is the test agents' only one.
    pub signer: Signer,
    /// Agents started through [`Harness::agent`], stopped before the queues
    /// are deleted (a running agent would redeclare them on reconnect).
    agents: std::sync::Mutex<Vec<u32>>,
    _lock: BrokerLock,
}

/// Retry delays the agents in tests use (100, 200, 400 ms).
pub const RETRY_BASE_MS: u64 = 100;
pub const RETRY_MAX_MS: u64 = 400;

impl Harness {
    pub async fn new() -> Harness {
        Self::with_lock(FlockArg::LockShared).await
    }

    /// For tests that restart the broker.
    pub async fn exclusive() -> Harness {
        Self::with_lock(FlockArg::LockExclusive).await
    }

    async fn with_lock(arg: FlockArg) -> Harness {
        let url = amqp_url();
        let lock = tokio::task::spawn_blocking(move || lock(arg))
            .await
            .unwrap();
        let prefix = format!("t{}", random_id());
        let (connection, channel) = connect(&url).await;
        let workdir = std::env::temp_dir().join(format!("agent-test-{prefix}"));
        std::fs::create_dir_all(&workdir).unwrap();
        // Tasks run as the sandbox user (nobody, when the tests run as
        // root) and leave marker files here.
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&workdir, std::fs::Permissions::from_mode(0o777)).unwrap();
        let h = Harness {
            signer: new_signer(),
            task_queue: format!("{prefix}.tasks"),
            gpu_queue: format!("{prefix}.gpu"),
            result_queue: format!("{prefix}.results"),
            dead_queue: format!("{prefix}.dead"),
            prefix,
            connection,
            channel,
            workdir,
            agents: Default::default(),
            _lock: lock,
        };
        // Declared here too so a test can publish before any agent runs.
        for q in [&h.task_queue, &h.gpu_queue, &h.result_queue, &h.dead_queue] {
            h.channel
                .queue_declare(
                    q.as_str().into(),
                    QueueDeclareOptions {
                        durable: true,
                        ..Default::default()
                    },
                    FieldTable::default(),
                )
                .await
                .unwrap();
        }
        h
    }

    /// Reconnects the harness's own connection (after a broker restart).
    pub async fn reconnect(&mut self) {
        let (connection, channel) = connect(&amqp_url()).await;
        self.connection = connection;
        self.channel = channel;
    }

    /// Environment for an agent of this test.
    pub fn agent_env(&self) -> Vec<(String, String)> {
        let gpu_dir = self.workdir.join("no-gpu");
        std::fs::create_dir_all(&gpu_dir).unwrap();
        [
            ("BROKER_URL", amqp_url()),
            ("LOG_LEVEL", "debug".to_owned()),
            ("TASK_QUEUE", self.task_queue.clone()),
            ("GPU_TASK_QUEUE", self.gpu_queue.clone()),
            ("RESULT_QUEUE", self.result_queue.clone()),
            ("DEAD_LETTER_QUEUE", self.dead_queue.clone()),
            ("BIND_ADDRESS", "127.0.0.1".to_owned()),
            ("RETRY_BASE_DELAY", RETRY_BASE_MS.to_string()),
            ("RETRY_MAX_DELAY", RETRY_MAX_MS.to_string()),
            ("GPU_DEVICE_DIR", gpu_dir.display().to_string()),
            ("SHUTDOWN_GRACE_PERIOD", "10000".to_owned()),
            ("TASK_SIGNING_PUBLIC_KEYS", self.signer.public_key_base64()),
            ("COMMAND_ALLOWED", TEST_PROGRAMS.to_owned()),
            // Tasks leave marker files here (Landlock allows no other writes).
            ("COMMAND_WRITABLE_PATHS", self.workdir.display().to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect()
    }

    /// Starts an agent with the test's queues and `extra` variables.
    pub async fn agent(&self, name: &str, extra: &[(&str, &str)]) -> Agent {
        let mut env = self.agent_env();
        for (k, v) in extra {
            env.retain(|(name, _)| name != k);
            env.push((k.to_string(), v.to_string()));
        }
        let agent = Agent::spawn(&format!("{}-{name}", self.prefix), &env, &self.workdir);
        self.agents.lock().unwrap().push(agent.child.id());
        agent.wait_ready(Duration::from_secs(30)).await;
        agent
    }

    pub async fn publish(&self, task: &TaskMessage) {
        self.publish_to(&self.task_queue, task, BasicProperties::default())
            .await;
    }

    pub async fn publish_to(&self, queue: &str, task: &TaskMessage, props: BasicProperties) {
        let body = serde_json::to_vec(task).unwrap();
        self.publish_raw(queue, &body, props).await;
    }

    /// Publishes `body` signed by the harness's key, as producers do: the
    /// signature line before the body (`Signer::frame`).
    pub async fn publish_raw(&self, queue: &str, body: &[u8], props: BasicProperties) {
        self.publish_unsigned(queue, &self.signer.frame(body), props)
            .await;
    }

    /// Publishes `body` with `props` as they are: no signature added.
    pub async fn publish_unsigned(&self, queue: &str, body: &[u8], props: BasicProperties) {
        let confirm = self
            .channel
            .basic_publish(
                "".into(),
                queue.into(),
                BasicPublishOptions::default(),
                body,
                props.with_delivery_mode(2),
            )
            .await
            .unwrap()
            .await
            .unwrap();
        assert!(confirm.is_ack());
    }

    /// Publishes many tasks with pipelined confirms.
    pub async fn publish_many(&self, tasks: &[TaskMessage]) {
        for chunk in tasks.chunks(500) {
            let mut confirms = Vec::new();
            for task in chunk {
                let body = self.signer.frame(&serde_json::to_vec(task).unwrap());
                confirms.push(
                    self.channel
                        .basic_publish(
                            "".into(),
                            self.task_queue.as_str().into(),
                            BasicPublishOptions::default(),
                            &body,
                            BasicProperties::default().with_delivery_mode(2),
                        )
                        .await
                        .unwrap(),
                );
            }
            for c in confirms {
                assert!(c.await.unwrap().is_ack());
            }
        }
    }

    /// Waits for `n` results on `queue`, acking them.
    pub async fn results_from(&self, queue: &str, n: usize, timeout: Duration) -> Vec<TaskResult> {
        let channel = self.connection.create_channel().await.unwrap();
        let mut consumer = channel
            .basic_consume(
                queue.into(),
                format!("reader-{}", random_id()).as_str().into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .unwrap();
        let mut out = Vec::new();
        let deadline = Instant::now() + timeout;
        while out.len() < n {
            let left = deadline.saturating_duration_since(Instant::now());
            let next = tokio::time::timeout(left, consumer.next()).await;
            let Ok(Some(Ok(delivery))) = next else {
                panic!(
                    "got {} of {n} results from {queue} within {timeout:?}: {out:#?}",
                    out.len()
                );
            };
            out.push(serde_json::from_slice::<TaskResult>(&delivery.data).unwrap());
            delivery.ack(BasicAckOptions::default()).await.unwrap();
        }
        let _ = channel.close(200, "done".into()).await;
        out
    }

    pub async fn results(&self, n: usize, timeout: Duration) -> Vec<TaskResult> {
        self.results_from(&self.result_queue, n, timeout).await
    }

    /// Takes every message currently in `queue` (bodies and headers).
    pub async fn drain_queue(&self, queue: &str) -> Vec<lapin::message::BasicGetMessage> {
        let mut out = Vec::new();
        while let Some(msg) = self
            .channel
            .basic_get(queue.into(), BasicGetOptions { no_ack: true })
            .await
            .unwrap()
        {
            out.push(msg);
        }
        out
    }

    /// Ready messages in `queue` (not counting unacknowledged ones).
    pub async fn ready_count(&self, queue: &str) -> u32 {
        self.passive(queue).await.message_count()
    }

    /// Consumers of `queue`, as the broker counts them now.
    pub async fn consumer_count(&self, queue: &str) -> u32 {
        self.passive(queue).await.consumer_count()
    }

    async fn passive(&self, queue: &str) -> lapin::Queue {
        self.channel
            .queue_declare(
                queue.into(),
                QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .unwrap()
    }

    /// Stops the test's agents, then deletes its queues, including the delay
    /// queues.
    pub async fn cleanup(self) {
        for pid in self.agents.lock().unwrap().drain(..) {
            // Only if it is still our child: a test may have reaped it already
            // (kill9), and then the pid could belong to anyone.
            let parent = std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|stat| {
                    stat.rsplit(')')
                        .next()?
                        .split_whitespace()
                        .nth(1)?
                        .parse::<u32>()
                        .ok()
                });
            if parent != Some(std::process::id()) {
                continue;
            }
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        let mut names = vec![
            self.task_queue.clone(),
            self.gpu_queue.clone(),
            self.result_queue.clone(),
            self.dead_queue.clone(),
        ];
        for q in [&self.task_queue, &self.gpu_queue] {
            for ms in [100, 200, 400] {
                names.push(format!("{q}.retry.{ms}"));
            }
        }
        for q in names {
            let _ = self
                .channel
                .queue_delete(q.as_str().into(), QueueDeleteOptions::default())
                .await;
        }
        let _ = std::fs::remove_dir_all(&self.workdir);
    }
}

pub async fn connect(url: &str) -> (Connection, Channel) {
    let connection = Connection::connect(url, ConnectionProperties::default())
        .await
        .unwrap_or_else(|e| {
            panic!("cannot connect to {url} ({e}): is `scripts/test-env.sh up` running?")
        });
    let channel = connection.create_channel().await.unwrap();
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    (connection, channel)
}

/// A task valid for ten minutes.
pub fn task(id: &str, kind: TaskKind) -> TaskMessage {
    TaskMessage {
        trace_id: Some(format!("trace-{id}")),
        expires_at_ms: Some(now_ms() + 600_000),
        ..TaskMessage::new(id, kind, now_ms())
    }
}

pub fn command(argv: &[&str]) -> TaskKind {
    TaskKind::Command {
        argv: argv.iter().map(|s| s.to_string()).collect(),
        env: Default::default(),
        cwd: None,
    }
}

pub fn sh(script: &str) -> TaskKind {
    command(&["/bin/sh", "-c", script])
}

/// A running `task-executor` child.
pub struct Agent {
    pub id: String,
    pub child: Child,
    pub health_port: u16,
    pub metrics_port: u16,
    pub log: PathBuf,
}

impl Agent {
    pub fn spawn(id: &str, env: &[(String, String)], workdir: &std::path::Path) -> Agent {
        let health_port = free_port();
        let metrics_port = free_port();
        let log = workdir.join(format!("{id}.log"));
        let out = File::create(&log).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_task-executor"))
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .envs(env.iter().map(|(k, v)| (k, v)))
            .env("AGENT_ID", id)
            .env("HEALTH_PORT", health_port.to_string())
            .env("METRICS_PORT", metrics_port.to_string())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        Agent {
            id: id.to_owned(),
            child,
            health_port,
            metrics_port,
            log,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.health_port)
    }

    /// Status and body of `/ready`, or None when the port does not answer.
    pub async fn ready(&self) -> Option<(u16, serde_json::Value)> {
        let resp = reqwest::get(self.url("/ready")).await.ok()?;
        let status = resp.status().as_u16();
        Some((status, resp.json().await.ok()?))
    }

    pub async fn wait_ready(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some((200, _)) = self.ready().await {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!(
            "agent {} not ready within {timeout:?}; log:\n{}",
            self.id,
            self.log_text()
        );
    }

    pub async fn wait_not_ready(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some((503, _)) = self.ready().await {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("agent {} still ready after {timeout:?}", self.id);
    }

    pub async fn metrics(&self) -> String {
        reqwest::get(format!("http://127.0.0.1:{}/metrics", self.metrics_port))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// Value of one sample line (name with labels, exactly as exposed).
    pub async fn metric(&self, series: &str) -> f64 {
        let text = self.metrics().await;
        text.lines()
            .find_map(|l| l.strip_prefix(series).and_then(|v| v.trim().parse().ok()))
            .unwrap_or(0.0)
    }

    pub fn sigterm(&self) {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        )
        .unwrap();
    }

    pub fn kill9(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    pub async fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "agent {} did not exit within {timeout:?}",
                self.id
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn log_text(&self) -> String {
        let mut s = String::new();
        let _ = File::open(&self.log).and_then(|mut f| f.read_to_string(&mut s));
        s
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Counts results per task id.
pub fn by_task(results: &[TaskResult]) -> HashMap<String, Vec<&TaskResult>> {
    let mut map: HashMap<String, Vec<&TaskResult>> = HashMap::new();
    for r in results {
        map.entry(r.task_id.clone()).or_default().push(r);
    }
    map
}

/// Waits for a condition, polling.
pub async fn eventually<F, Fut>(what: &str, timeout: Duration, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if f().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{what}: not true within {timeout:?}");
}
