//! The queues the agent declares, as plain values so the layout is tested
//! without a broker.
//!
//! Layout (all durable, on the default exchange):
//! - the task queue and the GPU task queue, consumed by the agent;
//! - per task queue, one delay queue per distinct retry delay,
//!   `<queue>.retry.<ms>`, with `x-message-ttl = <ms>` and a dead-letter route
//!   back to the task queue: a retried task waits there, then returns. One
//!   queue per delay (not a per-message TTL) because RabbitMQ only expires
//!   messages at the head of a queue, so mixed delays would block each other;
//! - the result queue (for tasks without `reply_to`) and the dead-letter queue.
//!
//! Naming the delay queues by their delay means agents with different retry
//! settings never redeclare a queue with different arguments (which the broker
//! refuses with PRECONDITION_FAILED).

use std::time::Duration;

use taskctl_protocol::RETRY_QUEUE_INFIX;

use crate::config::Config;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueDecl {
    pub name: String,
    /// For delay queues: the TTL and the queue messages return to.
    pub delay: Option<(Duration, String)>,
}

/// Name of the delay queue for `queue` and `delay`.
pub fn retry_queue(queue: &str, delay: Duration) -> String {
    format!("{queue}{RETRY_QUEUE_INFIX}{}", delay.as_millis())
}

/// Every queue the agent declares on connect.
pub fn declarations(config: &Config) -> Vec<QueueDecl> {
    let plain = |name: &str| QueueDecl {
        name: name.to_owned(),
        delay: None,
    };
    let mut decls = Vec::new();
    for queue in [&config.task_queue, &config.gpu_task_queue] {
        decls.push(plain(queue));
        for delay in config.retry_delays() {
            decls.push(QueueDecl {
                name: retry_queue(queue, delay),
                delay: Some((delay, queue.clone())),
            });
        }
    }
    decls.push(plain(&config.result_queue));
    decls.push(plain(&config.dead_letter_queue));
    decls
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delay_queues_route_back_to_their_task_queue() {
        let config = Config::from_lookup(&|name| match name {
            "BROKER_URL" => Some("amqp://h".into()),
            "RETRY_BASE_DELAY" => Some("100".into()),
            "RETRY_MAX_DELAY" => Some("200".into()),
            "ALLOW_UNSIGNED_TASKS" => Some("true".into()),
            _ => None,
        })
        .unwrap();
        let names: Vec<_> = declarations(&config).into_iter().map(|d| d.name).collect();
        assert_eq!(
            names,
            [
                "taskctl.tasks",
                "taskctl.tasks.retry.100",
                "taskctl.tasks.retry.200",
                "taskctl.tasks.gpu",
                "taskctl.tasks.gpu.retry.100",
                "taskctl.tasks.gpu.retry.200",
                "taskctl.results",
                "taskctl.dead-letter",
            ]
        );
        let decl = &declarations(&config)[1];
        assert_eq!(
            decl.delay,
            Some((Duration::from_millis(100), "taskctl.tasks".to_owned()))
        );
    }
}
