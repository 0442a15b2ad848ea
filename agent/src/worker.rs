//! Handles one delivery from receipt to acknowledgement.
//!
//! Order of effects, which is the delivery guarantee: run the task, publish
//! the result (or the retry, or the dead-letter) persistent and wait for the
//! broker's publisher confirm, and only then ack the delivery. A crash or a
//! lost connection anywhere before the ack leaves the task unacknowledged, so
//! the broker redelivers it (at-least-once). A task id whose result this agent
//! already had confirmed is acknowledged without running again.
//!
//! Cancellation points: while waiting for a concurrency permit, the drain
//! requeues the delivery; while running, the hard stop at the end of the grace
//! period kills the task and requeues it. Publishing and acking are never
//! interrupted half-way.

use std::{
    panic::AssertUnwindSafe,
    sync::Arc,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use futures_lite::FutureExt as _;
use lapin::{
    BasicProperties, Channel, Confirmation,
    message::Delivery,
    options::{BasicAckOptions, BasicNackOptions, BasicPublishOptions},
    types::{AMQPValue, ShortString},
};
use taskctl_protocol::signing::check_all;
use taskctl_protocol::{
    HEADER_ATTEMPT, HEADER_DEAD_REASON, HEADER_SOURCE_QUEUE, HEADER_TASK_ID, PROTOCOL_VERSION,
    TaskMessage, TaskResult, TaskStatus,
    signing::{HEADER_KEY_ID, HEADER_SIGNATURE},
};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::{
    admission::{self, Envelope, Rejection, Replays, Screened, printable},
    config::Config,
    dedup::Completed,
    executor::{Executor, Outcome},
    metrics::{Kind, Metrics},
    topology,
};

/// What the signature check said of a delivery before it is handled: the
/// key id that signed it (`None`: unsigned, where that is allowed), or why
/// it is refused.
pub type Signature = Result<Option<String>, Rejection>;

/// Pause before requeueing a task whose result could not be published.
const PUBLISH_FAILURE_BACKOFF: Duration = Duration::from_secs(1);

/// Why publishing failed; the delivery is then left for the broker to redeliver.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// The channel or connection failed (typically: the broker went away).
    #[error("the broker refused the publish")]
    Amqp(#[source] lapin::Error),
    /// The broker could not store the message.
    #[error("the broker nacked the publish")]
    Nacked,
    /// No queue is bound to the routing key (mandatory publish returned).
    #[error("no queue `{0}` to route the message to")]
    Unroutable(String),
}

/// Shared by every delivery of every connection.
pub struct Worker {
    pub config: Arc<Config>,
    pub executor: Executor,
    pub completed: Completed,
    pub replays: Replays,
    pub metrics: Metrics,
    pub permits: Semaphore,
}

/// Signals a delivery reacts to.
#[derive(Clone)]
pub struct Stops {
    /// SIGTERM: do not start anything new.
    pub drain: CancellationToken,
    /// Grace period over: kill what is running and requeue it.
    pub hard: CancellationToken,
}

/// Decrements the in-flight gauge however the handler ends.
struct InFlight(Metrics);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.dec();
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl Worker {
    /// Screens `deliveries` (size, signature line or headers, key) and checks all
    /// their signatures as one batch ([`check_all`]): about half the cost per
    /// signature of checking them one by one once several arrive together
    /// (`bench_verify`), with no thread hand-off. Never panics on any input
    /// (`screen` is fuzzed with the decoder).
    pub fn check_signatures(&self, deliveries: &[&Delivery]) -> Vec<Signature> {
        let rules = &self.config.admission;
        let mut out = Vec::with_capacity(deliveries.len());
        let mut claims = Vec::new();
        let mut at = Vec::new();
        for (i, delivery) in deliveries.iter().enumerate() {
            let screened =
                admission::unframe(&delivery.data, &envelope(&delivery.properties), rules)
                    .and_then(|(envelope, body)| admission::screen(body, &envelope, rules));
            match screened {
                Ok(Screened::Unsigned) => out.push(Ok(None)),
                Ok(Screened::Signed(claim)) => {
                    out.push(Ok(None));
                    at.push(i);
                    claims.push(claim);
                }
                Err(rejection) => out.push(Err(rejection)),
            }
        }
        if !claims.is_empty() {
            self.metrics.signature_batches.observe(claims.len() as f64);
            for ((i, claim), result) in at.into_iter().zip(&claims).zip(check_all(&claims)) {
                out[i] = result
                    .map(|()| Some(claim.key_id().to_owned()))
                    .map_err(admission::unverified);
            }
        }
        out
    }

    /// Handles `delivery`, received from `queue`, whose signature was
    /// checked ([`Self::check_signatures`]); results go out on `publish` (a
    /// channel in confirm mode).
    pub async fn handle(
        self: Arc<Self>,
        delivery: Delivery,
        queue: Arc<str>,
        publish: Channel,
        stops: Stops,
        signature: Signature,
    ) {
        self.metrics.in_flight.inc();
        let _in_flight = InFlight(self.metrics.clone());
        // Nothing in a message may take the consumer down: a panic here
        // (a bug, never an input the decoder lets through) dead-letters the
        // delivery with the reason and acks it, so it neither holds a
        // prefetch slot nor comes back after every reconnect.
        let outcome =
            AssertUnwindSafe(self.handle_delivery(&delivery, &queue, &publish, &stops, signature))
                .catch_unwind()
                .await;
        if let Err(panic) = outcome {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_default();
            self.metrics.handler_panics.inc();
            tracing::error!(panic = %what, "the task handler panicked; dead-lettering the delivery");
            let rejection = Rejection {
                label: "agent_error",
                reason: format!(
                    "the agent failed on this message: {}",
                    printable(&what, 200)
                ),
                authenticated: false,
            };
            self.reject(&delivery, &queue, &publish, rejection).await;
        }
    }

    async fn handle_delivery(
        &self,
        delivery: &Delivery,
        queue: &Arc<str>,
        publish: &Channel,
        stops: &Stops,
        signature: Signature,
    ) {
        let _permit = tokio::select! {
            biased;
            permit = self.permits.acquire() => match permit {
                Ok(p) => p,
                Err(_) => return requeue(delivery).await,
            },
            _ = stops.drain.cancelled() => return requeue(delivery).await,
        };

        let rules = &self.config.admission;
        let signed_by = match signature {
            Ok(signed_by) => signed_by,
            Err(rejection) => return self.reject(delivery, queue, publish, rejection).await,
        };
        // Taken apart again (a prefix and one short line): check_signatures
        // did it for the signature, and nothing else was kept.
        let (envelope, body) =
            match admission::unframe(&delivery.data, &envelope(&delivery.properties), rules) {
                Ok(unframed) => unframed,
                Err(rejection) => return self.reject(delivery, queue, publish, rejection).await,
            };
        let now = now_ms();
        let admitted = match admission::admit(body, &envelope, signed_by, now, rules) {
            Ok(admitted) => admitted,
            Err(rejection) => return self.reject(delivery, queue, publish, rejection).await,
        };
        if admitted.signed_by.is_some()
            && let Err(replay) = self
                .replays
                .admit(&admitted.task, delivery.redelivered, now)
        {
            return self.reject(delivery, queue, publish, replay).await;
        }
        let task = admitted.task;

        if self.completed.get(&task.id).is_some() {
            // The result was confirmed before; only the ack was lost. Running
            // again or republishing would give the producer a second result.
            self.metrics.deduplicated.inc();
            info!(task_id = %task.id, "redelivered task already completed here; acknowledging");
            ack(delivery).await;
            return;
        }

        let timeout = task
            .timeout_ms
            .map(Duration::from_millis)
            .unwrap_or(self.config.execution_timeout)
            .min(self.config.execution_timeout);
        let queued_ms = now_ms().saturating_sub(task.created_at_ms);
        let started = Instant::now();
        let outcome = tokio::select! {
            outcome = self.executor.run(&task, timeout) => outcome,
            _ = stops.hard.cancelled() => {
                warn!(task_id = %task.id, "grace period over; killing the task and requeueing it");
                return requeue(delivery).await;
            }
        };
        let run = started.elapsed();
        let kind = task.kind.name();
        self.metrics
            .duration
            .get_or_create(&Kind {
                kind: kind.to_owned(),
            })
            .observe(run.as_secs_f64());

        let max_attempts = task.max_attempts.unwrap_or(self.config.max_attempts);
        let dead_reason = match decide(&outcome, task.attempt, max_attempts) {
            Decision::Retry => {
                return self.retry(delivery, queue, publish, task, &outcome).await;
            }
            Decision::Final { dead_letter } => dead_letter,
        };

        let result = TaskResult {
            version: PROTOCOL_VERSION,
            task_id: task.id.clone(),
            status: outcome.status,
            kind: kind.to_owned(),
            code: outcome.code,
            output: outcome.output,
            stderr: outcome.stderr,
            truncated: outcome.truncated,
            error: outcome.error,
            queued_ms,
            run_ms: run.as_millis() as u64,
            attempt: task.attempt,
            agent_id: self.config.agent_id.clone(),
            trace_id: task.trace_id.clone(),
            idempotency_key: task.idempotency_key.clone(),
            finished_at_ms: now_ms(),
        };
        // Remembered before the result is published: a copy of the task
        // delivered while the broker confirms the result (a producer's
        // duplicate, say) must not run a second time. Forgotten again if
        // the result cannot be published and the task goes back.
        self.completed.insert(&task.id, result.status);
        match self
            .finish(
                delivery,
                queue,
                publish,
                &result,
                dead_reason.as_ref(),
                true,
            )
            .await
        {
            Ok(()) => {
                self.metrics.record_result(kind, result.status);
                if result.status == TaskStatus::Succeeded {
                    debug!(task_id = %task.id, kind, attempt = task.attempt, run_ms = result.run_ms,
                        trace_id = task.trace_id.as_deref().unwrap_or(""), "task succeeded");
                } else {
                    warn!(task_id = %task.id, kind, attempt = task.attempt, status = result.status.name(),
                        error = result.error.as_deref().unwrap_or(""),
                        trace_id = task.trace_id.as_deref().unwrap_or(""), "task ended without success");
                }
                ack(delivery).await;
            }
            Err(error) => {
                self.completed.forget(&task.id);
                warn!(task_id = %task.id, error = chain(&error), "failed to publish the result; leaving the task to be redelivered");
                requeue_after_failure(delivery).await;
            }
        }
    }

    /// Publishes the result (and the dead-letter copy), waits for both confirms.
    async fn finish(
        &self,
        delivery: &Delivery,
        queue: &str,
        publish: &Channel,
        result: &TaskResult,
        dead_reason: Option<&(&'static str, String)>,
        authenticated: bool,
    ) -> Result<(), PublishError> {
        // TaskResult has only string keys and plain values: serializing it
        // cannot fail, so there is no error path to design here.
        let body = serde_json::to_vec(result).unwrap_or_default();
        let props = &delivery.properties;
        let routing_key = match props.reply_to().as_ref().map(|r| r.as_str()) {
            Some(reply) if authenticated && reply_allowed(reply, &self.config.result_queue) => {
                reply.to_owned()
            }
            Some(reply) => {
                if authenticated {
                    warn!(task_id = %result.task_id, reply_to = %printable(reply, 80),
                        "reply_to is neither a server-named queue nor under the result queue; sending the result to the result queue");
                }
                self.config.result_queue.clone()
            }
            None => self.config.result_queue.clone(),
        };
        // Task ids are at most MAX_TASK_ID_BYTES, well inside a short string.
        let correlation = props
            .correlation_id()
            .clone()
            .unwrap_or_else(|| ShortString::from(printable(&result.task_id, 255)));
        let result_props = BasicProperties::default()
            .with_content_type("application/json".into())
            .with_delivery_mode(2)
            .with_correlation_id(correlation);
        let result_confirm = async {
            match publish_message(publish, &routing_key, &body, result_props.clone()).await {
                // The producer's reply queue is gone (it gave up, or its
                // auto-delete queue went with its connection): keep the result
                // findable in the result queue rather than let the broker drop it.
                Err(PublishError::Unroutable(gone)) if gone != self.config.result_queue => {
                    warn!(task_id = %result.task_id, reply_to = %gone,
                        "reply_to queue does not exist; sending the result to the result queue");
                    publish_message(publish, &self.config.result_queue, &body, result_props).await
                }
                other => other,
            }
        };
        match dead_reason {
            None => result_confirm.await,
            Some((label, reason)) => {
                // The dead letter is confirmed before the result goes out,
                // so whoever sees the result finds the dead letter already
                // there (a rare path: the extra round trip costs nothing).
                self.dead_letter(delivery, queue, publish, &result.task_id, reason)
                    .await?;
                result_confirm.await?;
                self.metrics.record_dead_letter(label);
                Ok(())
            }
        }
    }

    async fn dead_letter(
        &self,
        delivery: &Delivery,
        queue: &str,
        publish: &Channel,
        task_id: &str,
        reason: &str,
    ) -> Result<(), PublishError> {
        let mut headers = delivery.properties.headers().clone().unwrap_or_default();
        headers.insert(HEADER_DEAD_REASON.into(), long_string(reason));
        headers.insert(HEADER_TASK_ID.into(), long_string(task_id));
        headers.insert(HEADER_SOURCE_QUEUE.into(), long_string(queue));
        let props = delivery
            .properties
            .clone()
            .with_delivery_mode(2)
            .with_headers(headers);
        publish_message(
            publish,
            &self.config.dead_letter_queue,
            &delivery.data,
            props,
        )
        .await
    }

    async fn retry(
        &self,
        delivery: &Delivery,
        queue: &str,
        publish: &Channel,
        mut task: TaskMessage,
        outcome: &Outcome,
    ) {
        let delay = self.config.retry_delay(task.attempt);
        let retry_queue = topology::retry_queue(queue, delay);
        task.attempt += 1;
        // The producer's body goes back unchanged (its signature covers
        // those bytes); the attempt travels in a header.
        let body = &delivery.data;
        let mut headers = delivery.properties.headers().clone().unwrap_or_default();
        headers.insert(HEADER_TASK_ID.into(), long_string(&task.id));
        headers.insert(
            HEADER_ATTEMPT.into(),
            AMQPValue::LongLongInt(i64::from(task.attempt)),
        );
        // reply_to and correlation_id travel with the retry so the final
        // result still reaches the producer.
        let props = delivery
            .properties
            .clone()
            .with_delivery_mode(2)
            .with_headers(headers);
        match publish_message(publish, &retry_queue, body, props).await {
            Ok(()) => {
                self.metrics
                    .retries
                    .get_or_create(&Kind {
                        kind: task.kind.name().to_owned(),
                    })
                    .inc();
                info!(task_id = %task.id, kind = task.kind.name(), next_attempt = task.attempt,
                    delay_ms = delay.as_millis() as u64, status = outcome.status.name(),
                    error = outcome.error.as_deref().unwrap_or(""), "task attempt failed; retrying");
                ack(delivery).await;
            }
            Err(error) => {
                warn!(task_id = %task.id, error = chain(&error), "failed to schedule the retry; leaving the task to be redelivered");
                requeue_after_failure(delivery).await;
            }
        }
    }

    /// A message that cannot be run: `rejected` result, dead-letter, ack.
    /// The result goes to the sender's `reply_to` only when the sender was
    /// authenticated; otherwise to the result queue.
    async fn reject(
        &self,
        delivery: &Delivery,
        queue: &str,
        publish: &Channel,
        rejection: Rejection,
    ) {
        let task_id = admission::id_for_log(&delivery.data);
        warn!(task_id = %task_id, queue, reason = %rejection.reason, label = rejection.label, "rejecting a message");
        let result = TaskResult {
            version: PROTOCOL_VERSION,
            task_id: task_id.clone(),
            status: TaskStatus::Rejected,
            kind: "unknown".to_owned(),
            code: None,
            output: String::new(),
            stderr: String::new(),
            truncated: false,
            error: Some(rejection.reason.clone()),
            queued_ms: 0,
            run_ms: 0,
            attempt: 0,
            agent_id: self.config.agent_id.clone(),
            trace_id: None,
            idempotency_key: None,
            finished_at_ms: now_ms(),
        };
        let dead = (rejection.label, rejection.reason);
        match self
            .finish(
                delivery,
                queue,
                publish,
                &result,
                Some(&dead),
                rejection.authenticated,
            )
            .await
        {
            Ok(()) => {
                self.metrics.record_result("unknown", TaskStatus::Rejected);
                ack(delivery).await;
            }
            Err(error) => {
                warn!(task_id = %task_id, error = chain(&error), "failed to publish the rejection; leaving the message to be redelivered");
                requeue_after_failure(delivery).await;
            }
        }
    }
}

/// Where results may go: a server-named queue (`amq.gen-…`, exclusive to
/// the connection that declared it), the result queue, or a queue under it
/// (`<result queue>.<name>`). Never a task queue or any other application's.
pub fn reply_allowed(reply_to: &str, result_queue: &str) -> bool {
    reply_to.starts_with("amq.gen-")
        || reply_to == result_queue
        || reply_to
            .strip_prefix(result_queue)
            .is_some_and(|rest| rest.starts_with('.') && rest.len() > 1)
}

/// The headers the admission reads.
fn envelope(props: &BasicProperties) -> Envelope {
    let Some(headers) = props.headers() else {
        return Envelope::default();
    };
    let text = |name: &str| match headers.inner().get(name) {
        None => None,
        Some(AMQPValue::LongString(s)) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        Some(AMQPValue::ShortString(s)) => Some(s.as_str().to_owned()),
        // Present but not text: the verifier reports it as malformed.
        Some(_) => Some(String::new()),
    };
    let attempt = match headers.inner().get(HEADER_ATTEMPT) {
        Some(AMQPValue::LongLongInt(n)) => u32::try_from(*n).ok(),
        Some(AMQPValue::LongInt(n)) => u32::try_from(*n).ok(),
        Some(AMQPValue::ShortInt(n)) => u32::try_from(*n).ok(),
        _ => None,
    };
    Envelope {
        key_id: text(HEADER_KEY_ID),
        signature: text(HEADER_SIGNATURE),
        attempt,
    }
}

/// What to do with an attempt's outcome.
#[derive(Debug, PartialEq, Eq)]
pub enum Decision {
    /// Failed or timed out with attempts left: send to the delay queue.
    Retry,
    /// Publish the result; dead-letter too when `dead_letter` is set
    /// (metric label, reason header).
    Final {
        dead_letter: Option<(&'static str, String)>,
    },
}

/// Retry failures while attempts remain; dead-letter rejections and the last
/// failure. A rejection is never retried: the same message would be rejected
/// again.
pub fn decide(outcome: &Outcome, attempt: u32, max_attempts: u32) -> Decision {
    let error = outcome.error.as_deref().unwrap_or("");
    match outcome.status {
        TaskStatus::Succeeded => Decision::Final { dead_letter: None },
        TaskStatus::Rejected => Decision::Final {
            dead_letter: Some(("rejected", error.to_owned())),
        },
        TaskStatus::Failed | TaskStatus::TimedOut if attempt < max_attempts.max(1) => {
            Decision::Retry
        }
        TaskStatus::Failed | TaskStatus::TimedOut => Decision::Final {
            dead_letter: Some((
                "max_attempts",
                format!(
                    "{} after {attempt} attempt(s): {error}",
                    outcome.status.name()
                ),
            )),
        },
    }
}

/// An error and its causes on one line, for log fields.
fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

fn long_string(s: &str) -> AMQPValue {
    AMQPValue::LongString(s.to_owned().into())
}

async fn publish_message(
    channel: &Channel,
    routing_key: &str,
    body: &[u8],
    props: BasicProperties,
) -> Result<(), PublishError> {
    let confirm = channel
        .basic_publish(
            ShortString::from(""),
            ShortString::from(routing_key),
            // mandatory: an unroutable message comes back instead of being
            // dropped while the confirm still says ack.
            BasicPublishOptions {
                mandatory: true,
                ..BasicPublishOptions::default()
            },
            body,
            props,
        )
        .await
        .map_err(PublishError::Amqp)?
        .await
        .map_err(PublishError::Amqp)?;
    match confirm {
        Confirmation::Ack(Some(_)) => Err(PublishError::Unroutable(routing_key.to_owned())),
        Confirmation::Ack(None) | Confirmation::NotRequested => Ok(()),
        Confirmation::Nack(_) => Err(PublishError::Nacked),
    }
}

async fn ack(delivery: &Delivery) {
    if let Err(error) = delivery.acker.ack(BasicAckOptions::default()).await {
        // The channel is gone: the broker requeues the message, and the dedup
        // cache recognises it if it comes back here.
        warn!(error = %error, "failed to ack a delivery");
    }
}

/// Requeues after a failed publish, but not at once: when the failure is not
/// a lost connection (e.g. someone deleted a queue the agent declared), an
/// immediate requeue would run the task again in a tight loop.
async fn requeue_after_failure(delivery: &Delivery) {
    tokio::time::sleep(PUBLISH_FAILURE_BACKOFF).await;
    requeue(delivery).await;
}

async fn requeue(delivery: &Delivery) {
    let options = BasicNackOptions {
        requeue: true,
        ..BasicNackOptions::default()
    };
    if let Err(error) = delivery.acker.nack(options).await {
        debug!(error = %error, "failed to nack a delivery; the broker requeues it when the channel closes");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_retry_until_the_last_attempt_then_dead_letter() {
        let failed = Outcome::with_error(TaskStatus::Failed, "exited with code 1");
        assert_eq!(decide(&failed, 1, 3), Decision::Retry);
        assert_eq!(decide(&failed, 2, 3), Decision::Retry);
        assert_eq!(
            decide(&failed, 3, 3),
            Decision::Final {
                dead_letter: Some((
                    "max_attempts",
                    "failed after 3 attempt(s): exited with code 1".to_owned()
                ))
            }
        );
        let timed_out = Outcome::with_error(TaskStatus::TimedOut, "timed out after 5 ms");
        assert_eq!(decide(&timed_out, 1, 2), Decision::Retry);
        // max_attempts 0 from a producer means one attempt, not a loop.
        assert!(matches!(decide(&failed, 1, 0), Decision::Final { .. }));
    }

    #[test]
    fn success_is_final_and_rejection_is_never_retried() {
        let ok = Outcome::succeeded(String::new());
        assert_eq!(decide(&ok, 1, 3), Decision::Final { dead_letter: None });
        let rejected = Outcome::with_error(TaskStatus::Rejected, "host not allowed");
        assert_eq!(
            decide(&rejected, 1, 3),
            Decision::Final {
                dead_letter: Some(("rejected", "host not allowed".to_owned()))
            }
        );
    }

    #[test]
    fn results_go_only_to_server_named_or_result_queues() {
        assert!(reply_allowed(
            "amq.gen-JzTY20BRgKO-HjmUJj0wLg",
            "taskctl.results"
        ));
        assert!(reply_allowed("taskctl.results", "taskctl.results"));
        assert!(reply_allowed("taskctl.results.probe-1", "taskctl.results"));
        assert!(!reply_allowed("taskctl.results.", "taskctl.results"));
        assert!(!reply_allowed("taskctl.resultsX", "taskctl.results"));
        assert!(!reply_allowed("taskctl.tasks", "taskctl.results"));
        assert!(!reply_allowed("billing.invoices", "taskctl.results"));
    }
}
