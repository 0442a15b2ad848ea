//! A task probe: publishes `echo` tasks through RabbitMQ at a steady pace
//! while a test changes the deployment, then waits for every result.
//!
//! It is a producer as `crates/protocol` describes (and as the functional
//! gate in `crates/gates/src/functional.rs` is): an exclusive reply queue,
//! persistent tasks published with `reply_to` and `correlation_id` under
//! publisher confirms. Unlike the gate it leaves the agent's retries and
//! the task's lifetime alone (no `max_attempts`, no expiration): a task the
//! broker confirmed must come back, whatever restarts in between.

use futures_util::StreamExt;
use lapin::options::{
    BasicConsumeOptions, BasicPublishOptions, ConfirmSelectOptions, QueueDeclareOptions,
    QueueDeleteOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Confirmation, Connection, ConnectionProperties};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use taskctl_protocol::signing::Signer;
use taskctl_protocol::{RESULT_QUEUE, TaskKind, TaskMessage, TaskResult};

/// What the probe sent and got back.
#[derive(Debug)]
pub struct ProbeReport {
    /// Task ids the broker confirmed, in order.
    pub published: Vec<String>,
    /// The first result of each task, by id.
    pub results: BTreeMap<String, TaskResult>,
    /// Results beyond the first for a task (delivery is at-least-once).
    pub duplicates: usize,
}

impl ProbeReport {
    /// At least `min` tasks were confirmed, and every one got its result.
    pub fn assert_none_lost(&self, min: usize, during: &str) {
        assert!(
            self.published.len() >= min,
            "the probe sent only {} tasks {during}",
            self.published.len()
        );
        let lost = self.lost();
        assert!(
            lost.is_empty(),
            "{} of {} tasks lost {during}: {lost:?}",
            lost.len(),
            self.published.len()
        );
    }

    /// Confirmed tasks that never got a result.
    pub fn lost(&self) -> Vec<&String> {
        self.published
            .iter()
            .filter(|id| !self.results.contains_key(*id))
            .collect()
    }
}

pub struct Probe {
    count: Arc<std::sync::atomic::AtomicUsize>,
    stop: Arc<AtomicBool>,
    started: Arc<AtomicBool>,
    thread: JoinHandle<Result<ProbeReport, String>>,
}

impl Probe {
    /// Starts publishing a task to `queue` every `every`, each `message`
    /// followed by its number and echoed after `delay_ms`; returns once the
    /// first task was confirmed. `queue` must be the test's own: the probe
    /// deletes it when it finishes.
    pub fn start(
        amqp_url: &str,
        signing_key: &str,
        queue: &str,
        message: &str,
        every: Duration,
        delay_ms: u64,
    ) -> Probe {
        let signer = Arc::new(signer(signing_key));
        let stop = Arc::new(AtomicBool::new(false));
        let started = Arc::new(AtomicBool::new(false));
        let count = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let thread = {
            let (url, queue, message) = (amqp_url.to_owned(), queue.to_owned(), message.to_owned());
            let (stop, started, count) = (stop.clone(), started.clone(), count.clone());
            std::thread::spawn(move || {
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(|e| e.to_string())?
                    .block_on(run(
                        &url, &signer, &queue, &message, every, delay_ms, &stop, &started, &count,
                    ))
            })
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while !started.load(Ordering::SeqCst) {
            if thread.is_finished() || Instant::now() > deadline {
                stop.store(true, Ordering::SeqCst);
                let outcome = thread.join().expect("the probe thread does not panic");
                panic!("the probe did not get its first task confirmed: {outcome:?}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Probe {
            count,
            stop,
            started,
            thread,
        }
    }

    /// Tasks the broker confirmed so far.
    pub fn published(&self) -> usize {
        self.count.load(Ordering::SeqCst)
    }

    /// Stops publishing and waits (up to 90 s) for the result of every
    /// task it published.
    pub fn finish(self) -> ProbeReport {
        assert!(self.started.load(Ordering::SeqCst));
        self.stop.store(true, Ordering::SeqCst);
        self.thread
            .join()
            .expect("the probe thread does not panic")
            .unwrap_or_else(|e| panic!("the probe failed: {e}"))
    }
}

fn epoch_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or_default()
}

/// The agents' signing key (base64 PKCS#8, from the environment's Vault).
fn signer(key: &str) -> Signer {
    Signer::from_pkcs8_base64(key).unwrap_or_else(|e| panic!("the task-signing key: {e}"))
}

/// The message to send for `body`, signed as producers sign (the signature
/// line before the body), and its properties; tasks stay valid for 30
/// minutes, longer than any test waits for them.
fn signed(signer: &Signer, body: &[u8], props: BasicProperties) -> (Vec<u8>, BasicProperties) {
    (
        signer.frame(body),
        props.with_content_type(taskctl_protocol::signing::FRAMED_CONTENT_TYPE.into()),
    )
}

const TASK_TTL_MS: u64 = 30 * 60 * 1000;

#[allow(clippy::too_many_arguments)]
async fn run(
    url: &str,
    signer: &Signer,
    queue: &str,
    message: &str,
    every: Duration,
    delay_ms: u64,
    stop: &AtomicBool,
    started: &AtomicBool,
    count: &std::sync::atomic::AtomicUsize,
) -> Result<ProbeReport, String> {
    let connection = open(url, None).await?;
    let channel = connection
        .create_channel()
        .await
        .map_err(|e| e.to_string())?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .map_err(|e| e.to_string())?;
    let reply = channel
        .queue_declare(
            "".into(),
            QueueDeclareOptions {
                exclusive: true,
                auto_delete: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .map_err(|e| e.to_string())?;
    let reply_queue = reply.name().as_str().to_owned();
    let mut consumer = channel
        .basic_consume(
            reply_queue.as_str().into(),
            "".into(),
            BasicConsumeOptions {
                no_ack: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .map_err(|e| e.to_string())?;
    let collected: Arc<Mutex<(BTreeMap<String, TaskResult>, usize)>> = Arc::default();
    let collector = {
        let collected = collected.clone();
        tokio::spawn(async move {
            while let Some(Ok(delivery)) = consumer.next().await {
                if let Ok(result) = serde_json::from_slice::<TaskResult>(&delivery.data) {
                    let mut c = collected.lock().unwrap();
                    if c.0.contains_key(&result.task_id) {
                        c.1 += 1;
                    } else {
                        c.0.insert(result.task_id.clone(), result);
                    }
                }
            }
        })
    };

    let run = format!("probe-{:x}-{}", epoch_ms(), std::process::id());
    let mut published = Vec::new();
    let mut n = 0u64;
    while !stop.load(Ordering::SeqCst) {
        n += 1;
        let id = format!("{run}-{n}");
        let task = TaskMessage {
            expires_at_ms: Some(epoch_ms() + TASK_TTL_MS),
            ..TaskMessage::new(
                id.clone(),
                TaskKind::Echo {
                    message: format!("{message} {n}"),
                    delay_ms,
                },
                epoch_ms(),
            )
        };
        let body = serde_json::to_vec(&task).map_err(|e| e.to_string())?;
        let (body, properties) = signed(
            signer,
            &body,
            BasicProperties::default()
                .with_delivery_mode(2)
                .with_reply_to(reply_queue.as_str().into())
                .with_correlation_id(id.as_str().into()),
        );
        let confirm = channel
            .basic_publish(
                "".into(),
                queue.into(),
                BasicPublishOptions {
                    mandatory: true,
                    ..Default::default()
                },
                &body,
                properties,
            )
            .await
            .map_err(|e| format!("publishing {id}: {e}"))?
            .await
            .map_err(|e| format!("confirming {id}: {e}"))?;
        match confirm {
            Confirmation::Ack(None) => {
                published.push(id);
                count.fetch_add(1, Ordering::SeqCst);
            }
            other => {
                return Err(format!(
                    "task {id} was not accepted into `{queue}`: {other:?}"
                ));
            }
        }
        started.store(true, Ordering::SeqCst);
        tokio::time::sleep(every).await;
    }

    // Every confirmed task must come back; the agents' retries and a drain
    // may take a while.
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let done = {
            let c = collected.lock().unwrap();
            published.iter().all(|id| c.0.contains_key(id))
        };
        if done || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The queue is the test's own: leave nothing on the shared broker.
    let _ = tokio::time::timeout(
        Duration::from_secs(2),
        channel.queue_delete(queue.into(), QueueDeleteOptions::default()),
    )
    .await;
    let _ = tokio::time::timeout(
        Duration::from_secs(2),
        connection.close(200, "probe done".into()),
    )
    .await;
    collector.abort();
    let (results, duplicates) = std::mem::take(&mut *collected.lock().unwrap());
    Ok(ProbeReport {
        published,
        results,
        duplicates,
    })
}

/// A connection to the broker at `url`; with `ca` (PEM), over TLS trusting
/// only those CAs, as the agents and taskctl do.
async fn open(url: &str, ca: Option<&str>) -> Result<Connection, String> {
    let properties =
        ConnectionProperties::default().with_connection_name("taskctl-test-probe".into());
    match ca {
        Some(pem) => {
            taskctl_broker_tls::BrokerTls::with_ca_pem(pem)?
                .connect(url, properties)
                .await
        }
        None => Connection::connect(url, properties).await,
    }
    .map_err(|e| format!("connecting to the broker: {e}"))
}

/// Opens and closes one connection: whether the broker at `url` can be
/// reached trusting only `ca` (PEM), and why not.
pub fn connects(url: &str, ca: Option<&str>) -> Result<(), String> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?
        .block_on(async {
            let c = tokio::time::timeout(Duration::from_secs(15), open(url, ca))
                .await
                .map_err(|_| "no connection within 15 s".to_string())??;
            let _ = c.close(200, "checked".into()).await;
            Ok(())
        })
}

/// Results collected so far, and how many came twice.
type Collected = Arc<Mutex<(BTreeMap<String, TaskResult>, usize)>>;

/// Connects, declares the durable reply queue `reply` and starts a
/// collector on it; the connection's channel publishes under confirms.
async fn connect_collecting(
    url: &str,
    ca: Option<&str>,
    reply: &str,
    collected: &Collected,
) -> Result<(Connection, lapin::Channel, tokio::task::JoinHandle<()>), String> {
    let connection = open(url, ca).await?;
    let channel = connection
        .create_channel()
        .await
        .map_err(|e| e.to_string())?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .map_err(|e| e.to_string())?;
    channel
        .queue_declare(
            reply.into(),
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .map_err(|e| e.to_string())?;
    let mut consumer = channel
        .basic_consume(
            reply.into(),
            "".into(),
            BasicConsumeOptions {
                no_ack: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .map_err(|e| e.to_string())?;
    let collected = collected.clone();
    let collector = tokio::spawn(async move {
        while let Some(Ok(delivery)) = consumer.next().await {
            if let Ok(result) = serde_json::from_slice::<TaskResult>(&delivery.data) {
                let mut c = collected.lock().unwrap();
                if c.0.contains_key(&result.task_id) {
                    c.1 += 1;
                } else {
                    c.0.insert(result.task_id.clone(), result);
                }
            }
        }
    });
    Ok((connection, channel, collector))
}

/// Like [`Probe::start`], but it outlives the broker: when the connection
/// drops it reconnects (for up to two minutes) and goes on, and its reply
/// queue is durable, so the results of tasks confirmed before a broker
/// restart still reach it. Tasks whose publish was not confirmed are not
/// counted (the broker never promised them).
pub fn start_surviving_restarts(
    amqp_url: &str,
    ca: Option<&str>,
    signing_key: &str,
    queue: &str,
    every: Duration,
) -> Probe {
    let signer = Arc::new(signer(signing_key));
    let stop = Arc::new(AtomicBool::new(false));
    let started = Arc::new(AtomicBool::new(false));
    let count = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let thread = {
        let (url, queue) = (amqp_url.to_owned(), queue.to_owned());
        let ca = ca.map(str::to_owned);
        let (stop, started, count) = (stop.clone(), started.clone(), count.clone());
        std::thread::spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| e.to_string())?
                .block_on(run_surviving(
                    &url,
                    ca.as_deref(),
                    &signer,
                    &queue,
                    every,
                    &stop,
                    &started,
                    &count,
                ))
        })
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while !started.load(Ordering::SeqCst) {
        if thread.is_finished() || Instant::now() > deadline {
            stop.store(true, Ordering::SeqCst);
            let outcome = thread.join().expect("the probe thread does not panic");
            panic!("the probe did not get its first task confirmed: {outcome:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Probe {
        count,
        stop,
        started,
        thread,
    }
}

#[allow(clippy::too_many_arguments)]
async fn run_surviving(
    url: &str,
    ca: Option<&str>,
    signer: &Signer,
    queue: &str,
    every: Duration,
    stop: &AtomicBool,
    started: &AtomicBool,
    count: &std::sync::atomic::AtomicUsize,
) -> Result<ProbeReport, String> {
    // Agents send results only to server-named queues or queues under the
    // result queue; this one must outlive connections, so it is named.
    let reply = format!("{RESULT_QUEUE}.probe-{:x}", epoch_ms());
    let collected: Collected = Arc::default();
    let run = format!("probe-{:x}-{}", epoch_ms(), std::process::id());
    let mut published = Vec::new();
    let mut n = 0u64;
    let mut down_since: Option<Instant> = None;
    let mut link = None;
    // Publishing, through broker restarts.
    while !stop.load(Ordering::SeqCst) {
        if link.is_none() {
            match connect_collecting(url, ca, &reply, &collected).await {
                Ok(l) => {
                    link = Some(l);
                    down_since = None;
                }
                Err(e) => {
                    let since = *down_since.get_or_insert_with(Instant::now);
                    if since.elapsed() > Duration::from_secs(120) {
                        return Err(format!("the broker stayed unreachable for 2 minutes: {e}"));
                    }
                    tokio::time::sleep(Duration::from_millis(250)).await;
                    continue;
                }
            }
        }
        let (_, channel, _) = link.as_ref().expect("connected above");
        n += 1;
        let id = format!("{run}-{n}");
        let task = TaskMessage {
            expires_at_ms: Some(epoch_ms() + TASK_TTL_MS),
            ..TaskMessage::new(
                id.clone(),
                TaskKind::Echo {
                    message: format!("probe {n}"),
                    delay_ms: 0,
                },
                epoch_ms(),
            )
        };
        let body = serde_json::to_vec(&task).map_err(|e| e.to_string())?;
        let (body, properties) = signed(
            signer,
            &body,
            BasicProperties::default()
                .with_delivery_mode(2)
                .with_reply_to(reply.as_str().into())
                .with_correlation_id(id.as_str().into()),
        );
        let outcome = async {
            channel
                .basic_publish(
                    "".into(),
                    queue.into(),
                    BasicPublishOptions {
                        mandatory: true,
                        ..Default::default()
                    },
                    &body,
                    properties,
                )
                .await?
                .await
        }
        .await;
        match outcome {
            Ok(Confirmation::Ack(None)) => {
                published.push(id);
                count.fetch_add(1, Ordering::SeqCst);
                started.store(true, Ordering::SeqCst);
            }
            // Not confirmed: the broker went away; not counted.
            Ok(_) | Err(_) => {
                if let Some((_, _, collector)) = link.take() {
                    collector.abort();
                }
                continue;
            }
        }
        tokio::time::sleep(every).await;
    }
    // Every confirmed task must come back.
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let done = {
            let c = collected.lock().unwrap();
            published.iter().all(|id| c.0.contains_key(id))
        };
        if done || Instant::now() > deadline {
            break;
        }
        let dropped = link
            .as_ref()
            .is_none_or(|(c, _, _)| !c.status().connected());
        if dropped {
            if let Some((_, _, collector)) = link.take() {
                collector.abort();
            }
            link = connect_collecting(url, ca, &reply, &collected).await.ok();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    if let Some((connection, channel, collector)) = link {
        for q in [queue, reply.as_str()] {
            let _ = tokio::time::timeout(
                Duration::from_secs(2),
                channel.queue_delete(q.into(), QueueDeleteOptions::default()),
            )
            .await;
        }
        let _ = tokio::time::timeout(
            Duration::from_secs(2),
            connection.close(200, "probe done".into()),
        )
        .await;
        collector.abort();
    }
    let (results, duplicates) = std::mem::take(&mut *collected.lock().unwrap());
    Ok(ProbeReport {
        published,
        results,
        duplicates,
    })
}
