//! The functional gate: one real task through the broker to an agent and
//! back.
//!
//! It follows the producer side of the wire contract in `taskctl-protocol`:
//! an exclusive reply queue, a persistent task published with `reply_to` and
//! `correlation_id` under publisher confirms, then the first result whose
//! correlation id matches. The task is an `echo` task: it exercises
//! everything the agent does for a task (consume, run, publish the result
//! with a confirm, ack) without needing any program in the agent's image,
//! which on the Docker target is a static binary on `scratch` with no
//! `/bin/echo`.
//!
//! The task is published `mandatory` (an unroutable task, because no agent
//! has declared the queue yet, comes back instead of vanishing), with one
//! attempt (a gate wants the first answer, not the agent's retries), and with
//! an AMQP `expiration` equal to the gate's remaining time, so a task nobody
//! consumed does not run long after the gate gave up.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures_util::StreamExt;
use lapin::Confirmation;
use lapin::options::{
    BasicConsumeOptions, BasicPublishOptions, ConfirmSelectOptions, QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection, ConnectionProperties};
use taskctl_broker_tls::BrokerTls;
use taskctl_protocol::signing::{self, Signer};
use taskctl_protocol::{TaskKind, TaskMessage, TaskResult, TaskStatus};

use crate::{Attempt, quoted, redact, seconds};

pub(crate) async fn attempt(
    broker: Broker<'_>,
    queue: &str,
    signing_key: Option<&str>,
    budget: Duration,
) -> Attempt {
    let id = task_id("gate");
    let message = format!("taskctl functional gate {id}");
    let kind = TaskKind::Echo {
        message: message.clone(),
        delay_ms: 0,
    };
    match send(
        broker,
        queue,
        &id,
        kind,
        signing_key,
        budget,
        "taskctl-gate",
    )
    .await
    {
        Sent::Answered(result, round_trip) => judge(&result, &message, round_trip),
        Sent::Unanswered(why) => Attempt::Retry(why),
        Sent::Refused(why) => Attempt::Fatal(why),
    }
}

/// What became of a task sent by [`send`].
#[derive(Debug)]
pub enum Sent {
    /// Its result, and the time from publish to result.
    Answered(Box<TaskResult>, Duration),
    /// No result (yet): no broker, no queue, no agent within the time.
    Unanswered(String),
    /// It could not be sent as asked (a bad signing key).
    Refused(String),
}

/// Where the broker is and which CAs to trust for it.
#[derive(Clone, Copy)]
pub struct Broker<'a> {
    /// `amqp://` or `amqps://`; may carry credentials, never shown.
    pub url: &'a str,
    /// PEM CA bundle: with `amqps://`, only these are trusted (the bundle
    /// the agents are given); without it, the public web roots.
    pub ca: Option<&'a str>,
    /// Where to open the TCP connection instead of the URL's host and port
    /// (`127.0.0.1:PORT`, a port-forward to the broker's pod); TLS still
    /// checks the certificate against the URL's host name.
    pub via: Option<&'a str>,
}

/// `url` with its host and port replaced by `via`'s (plain AMQP has no
/// name to check, so the URL can simply point at the forward).
fn redirected(url: &str, via: &str) -> Option<String> {
    let (host, port) = via.rsplit_once(':')?;
    let mut parsed = url::Url::parse(url).ok()?;
    parsed.set_host(Some(host)).ok()?;
    parsed.set_port(Some(port.parse().ok()?)).ok()?;
    Some(parsed.to_string())
}

/// Publishes one task of `kind` with id `id` to `queue` through the broker
/// at `broker` (signed with `signing_key`, base64 PKCS#8, when given) and
/// waits up to `budget` for its result, through an exclusive reply queue.
/// The task runs at most once (`max_attempts` 1) and expires with the
/// budget, so a task nobody consumed does not run after the caller gave up.
pub async fn send(
    broker: Broker<'_>,
    queue: &str,
    id: &str,
    kind: TaskKind,
    signing_key: Option<&str>,
    budget: Duration,
    connection_name: &str,
) -> Sent {
    let deadline = Instant::now() + budget;
    let signer = match signing_key.map(Signer::from_pkcs8_base64).transpose() {
        Ok(signer) => signer,
        Err(e) => return Sent::Refused(format!("cannot sign the task: {e}")),
    };
    let tls = match broker.ca.map(BrokerTls::with_ca_pem).transpose() {
        Ok(tls) => tls,
        Err(e) => return Sent::Refused(format!("the broker's CA bundle is not usable: {e}")),
    };
    let amqp_url = broker.url;
    let shown = redact::url(amqp_url);
    let properties = ConnectionProperties::default().with_connection_name(connection_name.into());
    let connect = async {
        match (&tls, broker.via) {
            (Some(tls), via) => tls.connect_via(amqp_url, via, properties).await,
            (None, None) => Connection::connect(amqp_url, properties).await,
            (None, Some(via)) => match redirected(amqp_url, via) {
                Some(url) => Connection::connect(&url, properties).await,
                None => Err(lapin::Error::from(std::io::Error::other(format!(
                    "cannot reach the broker through `{via}`: not a host:port address, or the broker URL is not a URL"
                )))),
            },
        }
    };
    let connection = match tokio::time::timeout(budget, connect).await {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => {
            return Sent::Unanswered(format!("cannot connect to the broker at {shown}: {e}"));
        }
        Err(_) => {
            return Sent::Unanswered(format!(
                "the broker at {shown} did not answer within {}",
                seconds(budget)
            ));
        }
    };
    let outcome = match round_trip(
        &connection,
        queue,
        id,
        kind,
        signer.as_ref(),
        deadline,
        budget,
    )
    .await
    {
        Ok(outcome) => outcome,
        Err(e) => Sent::Unanswered(format!("broker error: {e}")),
    };
    // Closing also deletes the exclusive reply queue; bounded so a broker
    // that vanished mid-call cannot hold the answer.
    let _ = tokio::time::timeout(
        Duration::from_secs(2),
        connection.close(200, "task sent".into()),
    )
    .await;
    outcome
}

async fn round_trip(
    connection: &Connection,
    queue: &str,
    id: &str,
    kind: TaskKind,
    signer: Option<&Signer>,
    deadline: Instant,
    budget: Duration,
) -> Result<Sent, lapin::Error> {
    let channel = connection.create_channel().await?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
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
        .await?;
    let reply_queue = reply.name().as_str().to_owned();
    let mut results = channel
        .basic_consume(
            reply_queue.as_str().into(),
            "".into(),
            BasicConsumeOptions {
                no_ack: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await?;

    let remaining = deadline.saturating_duration_since(Instant::now());
    let now = epoch_ms();
    let task = TaskMessage {
        max_attempts: Some(1),
        timeout_ms: Some(remaining.as_millis().max(1) as u64),
        // Signed tasks must expire; a gate's task is worthless after the gate.
        expires_at_ms: Some(now + remaining.as_millis().max(1) as u64),
        ..TaskMessage::new(id, kind, now)
    };
    // A TaskMessage is strings and numbers only: serializing cannot fail.
    let body = serde_json::to_vec(&task).unwrap_or_default();
    // Signed: the signature line before the body (taskctl_protocol::signing).
    let (body, content_type) = match signer {
        Some(s) => (s.frame(&body), signing::FRAMED_CONTENT_TYPE),
        None => (body, "application/json"),
    };
    let properties = BasicProperties::default()
        .with_content_type(content_type.into())
        .with_delivery_mode(2)
        .with_reply_to(reply_queue.as_str().into())
        .with_correlation_id(id.into())
        .with_expiration(remaining.as_millis().max(1).to_string().as_str().into());
    let sent = Instant::now();
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
        .await?
        .await?;
    match confirm {
        Confirmation::Ack(None) => {}
        Confirmation::Ack(Some(_)) => {
            return Ok(Sent::Unanswered(format!(
                "queue `{queue}` does not exist on the broker: no agent has declared it yet"
            )));
        }
        Confirmation::Nack(_) | Confirmation::NotRequested => {
            return Ok(Sent::Unanswered(format!(
                "the broker did not accept task {id} into `{queue}`"
            )));
        }
    }

    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let next = match tokio::time::timeout(left, results.next()).await {
            Ok(next) => next,
            Err(_) => {
                return Ok(Sent::Unanswered(format!(
                    "no result for task {id} within {}: no agent consumed it from `{queue}` \
                     (is an agent running and connected to this broker?)",
                    seconds(budget)
                )));
            }
        };
        let delivery = match next {
            Some(Ok(d)) => d,
            Some(Err(e)) => return Err(e),
            None => {
                return Ok(Sent::Unanswered(format!(
                    "the broker closed the reply queue before task {id}'s result came"
                )));
            }
        };
        let correlated = delivery
            .properties
            .correlation_id()
            .as_ref()
            .is_some_and(|c| c.as_str() == id);
        let Ok(result) = serde_json::from_slice::<TaskResult>(&delivery.data) else {
            continue;
        };
        // Delivery is at-least-once: a stray or duplicate message is skipped,
        // the first result of our task decides.
        if !correlated || result.task_id != id {
            continue;
        }
        return Ok(Sent::Answered(Box::new(result), sent.elapsed()));
    }
}

fn judge(result: &TaskResult, expected: &str, round_trip: Duration) -> Attempt {
    let id = &result.task_id;
    let agent = &result.agent_id;
    match result.status {
        TaskStatus::Succeeded if result.output == expected => Attempt::Pass(format!(
            "task {id} succeeded in {} ms on agent {agent}",
            round_trip.as_millis()
        )),
        TaskStatus::Succeeded => Attempt::Fatal(format!(
            "task {id} succeeded on agent {agent} but returned {} instead of {}",
            quoted(&result.output, 80),
            quoted(expected, 80)
        )),
        // The agent ran (or refused) the task and said why: a real answer
        // that asking again would only repeat.
        status => Attempt::Fatal(format!(
            "task {id} {} on agent {agent}: {}",
            status.name(),
            result.error.as_deref().unwrap_or("no reason given")
        )),
    }
}

/// Unique enough across processes and calls: `prefix`, wall-clock
/// nanoseconds, the pid and a counter.
pub fn task_id(prefix: &str) -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or_default();
    format!(
        "{prefix}-{nanos:x}-{:x}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

fn epoch_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result(status: TaskStatus, output: &str) -> TaskResult {
        TaskResult {
            version: 1,
            task_id: "gate-1".into(),
            status,
            kind: "echo".into(),
            code: None,
            output: output.into(),
            stderr: String::new(),
            truncated: false,
            error: Some("boom".into()),
            queued_ms: 0,
            run_ms: 0,
            attempt: 1,
            agent_id: "a-1".into(),
            trace_id: None,
            idempotency_key: None,
            finished_at_ms: 0,
        }
    }

    #[test]
    fn only_the_echoed_message_passes() {
        let ms = Duration::from_millis(42);
        assert_eq!(
            judge(&result(TaskStatus::Succeeded, "hi"), "hi", ms),
            Attempt::Pass("task gate-1 succeeded in 42 ms on agent a-1".into())
        );
        assert!(matches!(
            judge(&result(TaskStatus::Succeeded, "other"), "hi", ms),
            Attempt::Fatal(_)
        ));
        assert_eq!(
            judge(&result(TaskStatus::Rejected, ""), "hi", ms),
            Attempt::Fatal("task gate-1 rejected on agent a-1: boom".into())
        );
    }

    #[test]
    fn task_ids_differ() {
        assert_ne!(task_id("gate"), task_id("gate"));
    }
}
