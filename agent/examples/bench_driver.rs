//! Benchmark driver (used by `bench/agent/run.sh`): publishes noop tasks and
//! measures how fast their results come back.
//!
//! `bench_driver publish <amqp-url> <task-queue> <result-queue> <n>`: purges
//! both queues and publishes `n` persistent noop tasks (confirms pipelined)
//! with `reply_to = <result-queue>`.
//!
//! With `BENCH_SIGNING_KEY` (base64 PKCS#8 Ed25519) set, each task is
//! signed and valid for an hour. `bench_driver keygen` prints a new key
//! pair: the private key, a space, the public key.
//!
//! `bench_driver collect <amqp-url> <result-queue> <n>`: consumes `n` results
//! and prints one JSON line: results, seconds from the first result to the
//! last, and tasks/s over that span (so worker start-up is not counted).

use std::time::Instant;

use anyhow::{Context, bail};
use futures_lite::StreamExt;
use lapin::{
    BasicProperties, Connection, ConnectionProperties,
    options::{
        BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
        ConfirmSelectOptions, QueueDeclareOptions, QueuePurgeOptions,
    },
    types::{AMQPValue, FieldTable},
};
use taskctl_protocol::{
    TaskKind, TaskMessage,
    signing::{self, Signer},
};

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("publish") if args.len() == 6 => {
            publish(&args[2], &args[3], &args[4], args[5].parse()?).await
        }
        Some("collect") if args.len() == 5 => collect(&args[2], &args[3], args[4].parse()?).await,
        Some("keygen") => {
            use base64::Engine as _;
            use ring::signature::KeyPair as _;
            let doc =
                ring::signature::Ed25519KeyPair::generate_pkcs8(&ring::rand::SystemRandom::new())
                    .map_err(|_| anyhow::anyhow!("no random source"))?;
            let pair = ring::signature::Ed25519KeyPair::from_pkcs8(doc.as_ref())
                .map_err(|_| anyhow::anyhow!("bad key"))?;
            let b64 = base64::engine::general_purpose::STANDARD;
            println!(
                "{} {}",
                b64.encode(doc.as_ref()),
                b64.encode(pair.public_key().as_ref())
            );
            Ok(())
        }
        _ => bail!(
            "usage: bench_driver publish URL TASK_QUEUE RESULT_QUEUE N | collect URL RESULT_QUEUE N | keygen"
        ),
    }
}

fn durable() -> QueueDeclareOptions {
    QueueDeclareOptions {
        durable: true,
        ..QueueDeclareOptions::default()
    }
}

async fn publish(url: &str, queue: &str, results: &str, n: usize) -> anyhow::Result<()> {
    let conn = Connection::connect(url, ConnectionProperties::default())
        .await
        .context("failed to connect")?;
    let ch = conn.create_channel().await?;
    ch.confirm_select(ConfirmSelectOptions::default()).await?;
    for q in [queue, results] {
        ch.queue_declare(q.into(), durable(), FieldTable::default())
            .await?;
        ch.queue_purge(q.into(), QueuePurgeOptions::default())
            .await?;
    }
    let props = BasicProperties::default()
        .with_delivery_mode(2)
        .with_content_type("application/json".into())
        .with_reply_to(results.into());
    let signer = match std::env::var("BENCH_SIGNING_KEY") {
        Ok(key) => Some(Signer::from_pkcs8_base64(&key).context("BENCH_SIGNING_KEY")?),
        Err(_) => None,
    };
    let headers_format = std::env::var_os("BENCH_SIGNATURE_HEADERS").is_some();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_millis() as u64;
    let started = Instant::now();
    for chunk in (0..n).collect::<Vec<_>>().chunks(1000) {
        let mut confirms = Vec::with_capacity(chunk.len());
        for i in chunk {
            let task = TaskMessage {
                expires_at_ms: signer.as_ref().map(|_| now + 3_600_000),
                ..TaskMessage::new(format!("bench-{now}-{i}"), TaskKind::Noop, now)
            };
            let body = serde_json::to_vec(&task)?;
            // Signed as producers sign; BENCH_SIGNATURE_HEADERS=1 puts the
            // signature in AMQP headers instead, the earlier format.
            let (body, props) = match &signer {
                None => (body, props.clone()),
                Some(signer) if headers_format => {
                    let mut headers = FieldTable::default();
                    for (name, value) in signer.headers(&body) {
                        headers.insert(name.into(), AMQPValue::LongString(value.into()));
                    }
                    (body, props.clone().with_headers(headers))
                }
                Some(signer) => (
                    signer.frame(&body),
                    props
                        .clone()
                        .with_content_type(signing::FRAMED_CONTENT_TYPE.into()),
                ),
            };
            confirms.push(
                ch.basic_publish(
                    "".into(),
                    queue.into(),
                    BasicPublishOptions::default(),
                    &body,
                    props,
                )
                .await?,
            );
        }
        for c in confirms {
            if !c.await?.is_ack() {
                bail!("the broker nacked a task");
            }
        }
    }
    eprintln!(
        "published {n} tasks to {queue} in {:.2}s",
        started.elapsed().as_secs_f64()
    );
    conn.close(200, "done".into()).await?;
    Ok(())
}

async fn collect(url: &str, results: &str, n: usize) -> anyhow::Result<()> {
    let conn = Connection::connect(url, ConnectionProperties::default())
        .await
        .context("failed to connect")?;
    let ch = conn.create_channel().await?;
    ch.queue_declare(results.into(), durable(), FieldTable::default())
        .await?;
    ch.basic_qos(1000, BasicQosOptions::default()).await?;
    let mut consumer = ch
        .basic_consume(
            results.into(),
            "bench-collector".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    const SUCCEEDED: &[u8] = br#""status":"succeeded""#;
    let mut first = None;
    let mut seen = 0usize;
    let mut failed = 0usize;
    while seen < n {
        let Some(delivery) = consumer.next().await else {
            bail!("consumer ended after {seen} results");
        };
        let delivery = delivery?;
        first.get_or_insert_with(Instant::now);
        seen += 1;
        // A rejection is a result too: count only successes as work done.
        if !delivery
            .data
            .windows(SUCCEEDED.len())
            .any(|w| w == SUCCEEDED)
        {
            failed += 1;
        }
        // Ack in batches of 100 (multiple) to keep the collector cheap.
        if seen.is_multiple_of(100) || seen == n {
            delivery.ack(BasicAckOptions { multiple: true }).await?;
        }
    }
    let span = first.map(|f| f.elapsed().as_secs_f64()).unwrap_or(0.0);
    if failed > 0 {
        bail!("{failed} of {n} results did not say succeeded: the figure would count rejections");
    }
    println!(
        "{{\"results\":{n},\"seconds\":{span:.3},\"tasks_per_s\":{:.0}}}",
        (n.saturating_sub(1)) as f64 / span.max(1e-9)
    );
    Ok(())
}
