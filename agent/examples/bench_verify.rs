//! Cost of admitting one signed task, without a broker: `bench_verify [N]`
//! times [`task_executor::admission::decode`] over N signed noop tasks
//! (Ed25519 verification included) and the same over N unsigned ones, and
//! prints both rates. Used by `bench/agent/run.sh` to explain the signed
//! vs unsigned throughput.

use std::time::{Duration, Instant};

use base64::Engine as _;
use task_executor::admission::{Envelope, decode};
use task_executor::config::Config;
use taskctl_protocol::{TaskKind, TaskMessage, signing::Signer};

fn main() -> anyhow::Result<()> {
    let n: usize = std::env::args()
        .nth(1)
        .map(|a| a.parse())
        .transpose()?
        .unwrap_or(20_000);
    let doc = ring::signature::Ed25519KeyPair::generate_pkcs8(&ring::rand::SystemRandom::new())
        .map_err(|_| anyhow::anyhow!("no random source"))?;
    let signer =
        Signer::from_pkcs8_base64(&base64::engine::general_purpose::STANDARD.encode(doc.as_ref()))?;
    let public = signer.public_key_base64();
    let config = Config::from_lookup(&|name| match name {
        "BROKER_URL" => Some("amqp://h".into()),
        "TASK_SIGNING_PUBLIC_KEYS" => Some(public.clone()),
        "ALLOW_UNSIGNED_TASKS" => Some("true".into()),
        _ => None,
    })?;
    let now = 1_800_000_000_000u64;
    let tasks: Vec<(Vec<u8>, Envelope)> = (0..n)
        .map(|i| {
            let task = TaskMessage {
                expires_at_ms: Some(now + 60_000),
                ..TaskMessage::new(format!("bench-{i}"), TaskKind::Noop, now)
            };
            let body = serde_json::to_vec(&task).unwrap_or_default();
            let envelope = Envelope {
                key_id: Some(signer.key_id().to_owned()),
                signature: Some(signer.sign(&body)),
                attempt: None,
            };
            (body, envelope)
        })
        .collect();
    let time = |signed: bool| -> anyhow::Result<Duration> {
        let started = Instant::now();
        for (body, envelope) in &tasks {
            let unsigned = Envelope::default();
            let e = if signed { envelope } else { &unsigned };
            decode(body, e, now, &config.admission).map_err(|r| anyhow::anyhow!(r.reason))?;
        }
        Ok(started.elapsed())
    };
    let plain = time(false)?;
    let signed = time(true)?;
    let rate = |d: Duration| n as f64 / d.as_secs_f64();
    println!(
        "{{\"tasks\":{n},\"unsigned_per_s\":{:.0},\"signed_per_s\":{:.0},\"verify_us\":{:.1}}}",
        rate(plain),
        rate(signed),
        (signed.as_secs_f64() - plain.as_secs_f64()) * 1e6 / n as f64
    );
    Ok(())
}
