//! The agent's Prometheus metrics, all prefixed `task_executor_`.
//!
//! The registry is created in `main` and passed down; each component gets a
//! `Metrics` handle that was registered under the prefix here, so the full
//! list of names lives in one place (and in the README).

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};

use taskctl_protocol::TaskStatus;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindStatus {
    pub kind: String,
    pub status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Kind {
    pub kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Reason {
    pub reason: String,
}

fn duration_histogram() -> Histogram {
    // 1 ms to ~65 s; command tasks longer than that land in +Inf.
    Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
        0.001, 2.0, 17,
    ))
}

/// Handles to every metric; clones share the same series.
#[derive(Clone)]
pub struct Metrics {
    /// Final results published, by kind and status.
    pub tasks: Family<KindStatus, Counter>,
    /// Run time of each attempt, by kind.
    pub duration: Family<Kind, Histogram, fn() -> Histogram>,
    pub in_flight: Gauge,
    /// Attempts sent to a retry delay queue.
    pub retries: Family<Kind, Counter>,
    /// Messages sent to the dead-letter queue, by reason: `max_attempts`,
    /// `rejected` (the task ran and was refused, e.g. a host not allowed), and
    /// before running: `unsigned`, `unknown_key`, `bad_signature`, `expired`,
    /// `replayed`, `unauthorized`, `malformed`, `too_large`, `agent_error`.
    pub dead_letters: Family<Reason, Counter>,
    /// Redeliveries acknowledged without running again (already completed here).
    pub deduplicated: Counter,
    /// Deliveries whose handler panicked (a bug; each was dead-lettered).
    pub handler_panics: Counter,
    pub broker_reconnects: Counter,
    pub broker_connected: Gauge,
    pub gpus: Gauge,
    /// Signatures checked together, one observation per batch.
    pub signature_batches: Histogram,
}

impl Metrics {
    /// Registers every metric under `task_executor_` in `registry`.
    pub fn register(registry: &mut Registry) -> Self {
        let m = Metrics {
            tasks: Family::default(),
            duration: Family::new_with_constructor(duration_histogram),
            in_flight: Gauge::default(),
            retries: Family::default(),
            dead_letters: Family::default(),
            deduplicated: Counter::default(),
            handler_panics: Counter::default(),
            broker_reconnects: Counter::default(),
            broker_connected: Gauge::default(),
            gpus: Gauge::default(),
            signature_batches: Histogram::new(
                prometheus_client::metrics::histogram::exponential_buckets(1.0, 2.0, 7),
            ),
        };
        let r = registry.sub_registry_with_prefix("task_executor");
        r.register(
            "tasks",
            "Final task results published, by kind and status",
            m.tasks.clone(),
        );
        r.register(
            "task_duration_seconds",
            "Run time of each task attempt, by kind",
            m.duration.clone(),
        );
        r.register(
            "tasks_in_flight",
            "Tasks received and not yet acknowledged",
            m.in_flight.clone(),
        );
        r.register(
            "retries",
            "Failed attempts scheduled for a retry, by kind",
            m.retries.clone(),
        );
        r.register(
            "dead_letters",
            "Messages sent to the dead-letter queue, by reason",
            m.dead_letters.clone(),
        );
        r.register(
            "redeliveries_deduplicated",
            "Redelivered tasks already completed by this agent, acknowledged without running",
            m.deduplicated.clone(),
        );
        r.register(
            "handler_panics",
            "Deliveries whose handler panicked, dead-lettered with reason agent_error",
            m.handler_panics.clone(),
        );
        r.register(
            "broker_reconnects",
            "Successful broker connections after the first one",
            m.broker_reconnects.clone(),
        );
        r.register(
            "broker_connected",
            "1 while the broker connection and consumers are up",
            m.broker_connected.clone(),
        );
        r.register("gpus", "NVIDIA GPUs detected at start-up", m.gpus.clone());
        r.register(
            "signature_batch_size",
            "Task signatures checked together, one observation per batch",
            m.signature_batches.clone(),
        );
        m
    }

    pub fn record_result(&self, kind: &str, status: TaskStatus) {
        self.tasks
            .get_or_create(&KindStatus {
                kind: kind.to_owned(),
                status: status.name().to_owned(),
            })
            .inc();
    }

    pub fn record_dead_letter(&self, reason: &str) {
        self.dead_letters
            .get_or_create(&Reason {
                reason: reason.to_owned(),
            })
            .inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_carry_the_prefix() {
        let mut registry = Registry::default();
        let m = Metrics::register(&mut registry);
        m.record_result("noop", TaskStatus::Succeeded);
        m.duration
            .get_or_create(&Kind {
                kind: "noop".into(),
            })
            .observe(0.002);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        assert!(text.contains(r#"task_executor_tasks_total{kind="noop",status="succeeded"} 1"#));
        assert!(text.contains("task_executor_task_duration_seconds_bucket"));
        assert!(text.contains("task_executor_broker_reconnects_total 0"));
    }
}
