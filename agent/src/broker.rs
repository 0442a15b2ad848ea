//! The broker session supervisor: connect, declare, consume, and on loss
//! reconnect with backoff; on shutdown, drain.
//!
//! Readiness: the `broker` latch is released while a connection with its
//! channels and queues is up, the `consumers` latch while its consumers run;
//! both are held during a reconnect, and `consumers` from the start of the
//! drain, so `/ready` is false whenever this agent does not take new tasks.
//!
//! Drain (SIGTERM): cancel the consumers so nothing new arrives, requeue the
//! deliveries not started yet, wait up to the grace period for running tasks
//! to finish (publish, confirm, ack), then kill and requeue what is left and
//! close the connection. Unacknowledged messages go back to the queue when the
//! channel closes in any case, so nothing acknowledged is lost and nothing
//! unacknowledged is dropped.

use std::{pin::Pin, sync::Arc, time::Duration};

use futures_lite::{Stream, StreamExt};
use lapin::{
    Channel, Connection, ConnectionProperties,
    message::Delivery,
    options::{
        BasicCancelOptions, BasicConsumeOptions, BasicQosOptions, ConfirmSelectOptions,
        QueueDeclareOptions,
    },
    types::{AMQPValue, FieldTable, ShortString},
};
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tracing::{info, warn};

use crate::{
    config::Config,
    metrics::Metrics,
    readiness::Latch,
    topology,
    worker::{Stops, Worker},
};

const RECONNECT_MIN_DELAY: Duration = Duration::from_millis(100);
const RECONNECT_MAX_DELAY: Duration = Duration::from_secs(2);
/// A broker that accepts TCP but never finishes the handshake must not stall
/// the reconnect loop.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// After the hard stop, how long killed tasks get to send their nacks.
const HARD_STOP_SETTLE: Duration = Duration::from_secs(5);

type Deliveries = Pin<Box<dyn Stream<Item = (Arc<str>, lapin::Result<Delivery>)> + Send>>;

/// Consume channel, publish channel, consumer tags, merged deliveries.
type Started = (Channel, Channel, Vec<ShortString>, Deliveries);

/// One connection with its two channels.
struct Session {
    connection: Connection,
    consume: Channel,
    publish: Channel,
    consumer_tags: Vec<ShortString>,
    deliveries: Deliveries,
}

pub struct Supervisor {
    pub config: Arc<Config>,
    pub worker: Arc<Worker>,
    pub metrics: Metrics,
    pub broker_latch: Latch,
    pub consumers_latch: Latch,
    /// Whether to consume the GPU queue too.
    pub consume_gpu: bool,
}

/// Why a session could not be opened; the supervisor retries either way.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// Connecting, declaring or consuming failed.
    #[error("broker session setup failed")]
    Amqp(#[from] lapin::Error),
    /// The broker accepted the connection but did not finish the setup.
    #[error("broker session setup took longer than {0:?}")]
    Timeout(Duration),
}

enum SessionEnd {
    Lost(String),
    Shutdown,
}

impl Supervisor {
    /// Runs until `shutdown` is cancelled and the drain is over.
    pub async fn run(self, shutdown: CancellationToken) {
        let tracker = TaskTracker::new();
        let stops = Stops {
            drain: shutdown.clone(),
            hard: CancellationToken::new(),
        };
        let mut delay = RECONNECT_MIN_DELAY;
        let mut connected_before = false;
        let mut last_session = None;
        while !shutdown.is_cancelled() {
            let session = tokio::select! {
                s = tokio::time::timeout(CONNECT_TIMEOUT, self.open()) => {
                    s.unwrap_or(Err(SessionError::Timeout(CONNECT_TIMEOUT)))
                }
                _ = shutdown.cancelled() => break,
            };
            let mut session = match session {
                Ok(s) => s,
                Err(error) => {
                    let cause = std::error::Error::source(&error)
                        .map(|c| format!(": {c}"))
                        .unwrap_or_default();
                    let mut message = format!("{error}{cause}");
                    message.push_str(self.refusal_hint(&message));
                    warn!(
                        error = message,
                        retry_in_ms = delay.as_millis() as u64,
                        "broker connection failed"
                    );
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {},
                        _ = shutdown.cancelled() => break,
                    }
                    delay = (delay * 2).min(RECONNECT_MAX_DELAY);
                    continue;
                }
            };
            if connected_before {
                self.metrics.broker_reconnects.inc();
            }
            connected_before = true;
            delay = RECONNECT_MIN_DELAY;
            self.metrics.broker_connected.set(1);
            info!("connected to the broker; consuming");

            let end = self.pump(&mut session, &tracker, &stops).await;
            self.consumers_latch.hold();
            match end {
                SessionEnd::Lost(reason) => {
                    self.broker_latch.hold();
                    self.metrics.broker_connected.set(0);
                    warn!(reason = %reason, "lost the broker connection; reconnecting");
                    // Close what is left so lapin stops its IO loop; errors are
                    // expected since the connection is already broken.
                    let _ = session.connection.close(320, "reconnecting".into()).await;
                }
                SessionEnd::Shutdown => {
                    last_session = Some(session);
                    break;
                }
            }
        }
        self.drain(tracker, stops, last_session).await;
    }

    async fn drain(&self, tracker: TaskTracker, stops: Stops, session: Option<Session>) {
        self.consumers_latch.hold();
        if let Some(session) = &session {
            for tag in &session.consumer_tags {
                if let Err(error) = session
                    .consume
                    .basic_cancel(tag.clone(), BasicCancelOptions::default())
                    .await
                {
                    warn!(error = %error, "failed to cancel a consumer");
                }
            }
        }
        tracker.close();
        info!(
            in_flight = tracker.len(),
            grace_ms = self.config.grace_period.as_millis() as u64,
            "draining: consumers cancelled, waiting for in-flight tasks"
        );
        if tokio::time::timeout(self.config.grace_period, tracker.wait())
            .await
            .is_err()
        {
            warn!(
                remaining = tracker.len(),
                "grace period over; requeueing the remaining tasks"
            );
            stops.hard.cancel();
            let _ = tokio::time::timeout(HARD_STOP_SETTLE, tracker.wait()).await;
        }
        if let Some(session) = session {
            let _ = session.publish.close(200, "draining done".into()).await;
            let _ = session.consume.close(200, "draining done".into()).await;
            let _ = session.connection.close(200, "draining done".into()).await;
        }
        self.broker_latch.hold();
        self.metrics.broker_connected.set(0);
        info!("drain complete");
    }

    /// Feeds deliveries to the worker until the connection is lost or
    /// shutdown starts.
    async fn pump(
        &self,
        session: &mut Session,
        tracker: &TaskTracker,
        stops: &Stops,
    ) -> SessionEnd {
        loop {
            let mut next = tokio::select! {
                next = session.deliveries.next() => next,
                _ = stops.drain.cancelled() => return SessionEnd::Shutdown,
            };
            // This delivery and whatever else has already arrived, without
            // waiting, so that signatures are checked in batches.
            let mut ready = Vec::new();
            let mut end = None;
            loop {
                match next {
                    Some((queue, Ok(delivery))) => ready.push((queue, delivery)),
                    Some((queue, Err(error))) => {
                        end = Some(SessionEnd::Lost(format!(
                            "consumer of `{queue}` failed: {error}"
                        )));
                        break;
                    }
                    None => {
                        end = Some(SessionEnd::Lost("consumers ended".to_owned()));
                        break;
                    }
                }
                if ready.len() == self.config.signature_batch {
                    break;
                }
                match futures_lite::future::poll_once(session.deliveries.next()).await {
                    Some(more) => next = more,
                    None => break,
                }
            }
            let signatures = {
                let deliveries: Vec<&Delivery> = ready.iter().map(|(_, d)| d).collect();
                self.worker.check_signatures(&deliveries)
            };
            for ((queue, delivery), signature) in ready.into_iter().zip(signatures) {
                tracker.spawn(self.worker.clone().handle(
                    delivery,
                    queue,
                    session.publish.clone(),
                    stops.clone(),
                    signature,
                ));
            }
            if let Some(end) = end {
                return end;
            }
        }
    }

    /// A broker that refuses the client certificate of a TLS 1.3 handshake
    /// sends its alert after the client already thinks it is connected, then
    /// closes: the client often sees only the reset. Say what it likely means.
    fn refusal_hint(&self, error: &str) -> &'static str {
        let client_cert = self
            .config
            .broker_tls
            .as_ref()
            .is_some_and(|t| t.client_cert_file.is_some());
        let closed = [
            "Connection reset by peer",
            "unexpected end of file",
            "UnexpectedEof",
        ]
        .iter()
        .any(|c| error.contains(c));
        if client_cert && closed {
            " (the broker closed the connection right after the TLS handshake: \
             it may not trust the client certificate in BROKER_CLIENT_CERT_FILE)"
        } else {
            ""
        }
    }

    async fn open(&self) -> Result<Session, SessionError> {
        let url = self.config.broker_url.expose();
        let properties = ConnectionProperties::default()
            .with_connection_name(self.config.agent_id.clone().into());
        let connection = match &self.config.broker_tls {
            // A private CA and/or a client certificate (see `tls`).
            Some(tls) => tls.connect(url, properties).await?,
            // amqp://, or amqps:// trusting the public web roots.
            None => Connection::connect(url, properties).await?,
        };
        match self.start(&connection).await {
            Ok((consume, publish, consumer_tags, deliveries)) => Ok(Session {
                connection,
                consume,
                publish,
                consumer_tags,
                deliveries,
            }),
            Err(error) => {
                // A half-set-up connection (e.g. a queue declared elsewhere
                // with other arguments) must not leak on every retry.
                let _ = connection.close(200, "setup failed".into()).await;
                Err(error.into())
            }
        }
    }

    /// Opens the channels, declares the queues and starts the consumers.
    async fn start(&self, connection: &Connection) -> Result<Started, lapin::Error> {
        let config = &self.config;
        let publish = connection.create_channel().await?;
        publish
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        let consume = connection.create_channel().await?;
        for decl in topology::declarations(config) {
            let mut args = FieldTable::default();
            if let Some((ttl, back_to)) = &decl.delay {
                args.insert(
                    "x-message-ttl".into(),
                    AMQPValue::LongLongInt(ttl.as_millis() as i64),
                );
                args.insert(
                    "x-dead-letter-exchange".into(),
                    AMQPValue::LongString(String::new().into()),
                );
                args.insert(
                    "x-dead-letter-routing-key".into(),
                    AMQPValue::LongString(back_to.clone().into()),
                );
            }
            consume
                .queue_declare(
                    decl.name.as_str().into(),
                    QueueDeclareOptions {
                        durable: true,
                        ..QueueDeclareOptions::default()
                    },
                    args,
                )
                .await?;
        }
        // Prefetch bounds unacknowledged deliveries per consumer; the worker's
        // semaphore bounds how many run at once across both queues.
        consume
            .basic_qos(config.max_concurrent_tasks, BasicQosOptions::default())
            .await?;

        self.broker_latch.release();

        let mut queues = vec![config.task_queue.clone()];
        if self.consume_gpu {
            queues.push(config.gpu_task_queue.clone());
        }
        let mut consumer_tags = Vec::new();
        let mut deliveries: Option<Deliveries> = None;
        for queue in queues {
            let tag = format!("{}.{}", config.agent_id, queue);
            let consumer = consume
                .basic_consume(
                    queue.as_str().into(),
                    tag.as_str().into(),
                    BasicConsumeOptions::default(),
                    FieldTable::default(),
                )
                .await?;
            consumer_tags.push(consumer.tag());
            let name: Arc<str> = Arc::from(queue.as_str());
            let stream: Deliveries = Box::pin(consumer.map(move |d| (name.clone(), d)));
            deliveries = Some(match deliveries {
                None => stream,
                // race polls both fairly, so a busy task queue cannot starve
                // the GPU queue.
                Some(previous) => Box::pin(futures_lite::stream::race(previous, stream)),
            });
        }
        self.consumers_latch.release();
        let deliveries = deliveries.unwrap_or_else(|| Box::pin(futures_lite::stream::pending()));
        Ok((consume, publish, consumer_tags, deliveries))
    }
}
