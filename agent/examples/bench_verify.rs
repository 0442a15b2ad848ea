//! Cost of admitting one signed task, without a broker: `bench_verify [N]`
//! times [`task_executor::admission::decode`] over N signed noop tasks
//! (Ed25519 verification included) and the same over N unsigned ones, and
//! prints both rates. Used by `bench/agent/run.sh` to explain the signed
//! vs unsigned throughput, and the same signed tasks checked in batches as
//! the agent does under load (`Worker::check_signatures`).

use std::time::{Duration, Instant};

use base64::Engine as _;
use task_executor::admission::{Envelope, Screened, admit, decode, screen};
use task_executor::config::Config;
use taskctl_protocol::{
    TaskKind, TaskMessage,
    signing::{Signer, check_all},
};

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
        // The batch size the agent would use, from this process's env.
        "TASK_SIGNATURE_BATCH" => std::env::var(name).ok(),
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
    // The agent's path under load: screen, the signatures checked in
    // batches of up to TASK_SIGNATURE_BATCH (`Worker::check_signatures`), then admit.
    let batched = {
        let started = Instant::now();
        for chunk in tasks.chunks(config.signature_batch) {
            let mut claims = Vec::with_capacity(chunk.len());
            for (body, envelope) in chunk {
                match screen(body, envelope, &config.admission) {
                    Ok(Screened::Signed(claim)) => claims.push(claim),
                    _ => anyhow::bail!("a signed task did not screen as signed"),
                }
            }
            for (((body, envelope), claim), ok) in chunk.iter().zip(&claims).zip(check_all(&claims))
            {
                ok.map_err(|e| anyhow::anyhow!(e.to_string()))?;
                admit(
                    body,
                    envelope,
                    Some(claim.key_id().to_owned()),
                    now,
                    &config.admission,
                )
                .map_err(|r| anyhow::anyhow!(r.reason))?;
            }
        }
        started.elapsed()
    };
    let rate = |d: Duration| n as f64 / d.as_secs_f64();
    let cost = |d: Duration| (d.as_secs_f64() - plain.as_secs_f64()) * 1e6 / n as f64;
    println!(
        "{{\"tasks\":{n},\"unsigned_per_s\":{:.0},\"signed_per_s\":{:.0},\"verify_us\":{:.1},\"batch\":{},\"batched_per_s\":{:.0},\"batched_verify_us\":{:.1}}}",
        rate(plain),
        rate(signed),
        cost(signed),
        config.signature_batch,
        rate(batched),
        cost(batched)
    );
    Ok(())
}
