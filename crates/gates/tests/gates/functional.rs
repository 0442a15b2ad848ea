//! A real task through the test environment's RabbitMQ to the real agent.

use std::time::Duration;

use taskctl_gates::{GateKind, check};
use tokio_util::sync::CancellationToken;

use crate::support::{Agent, amqp_url, broker_lock, free_port, gate, unique};

const INTERVAL: Duration = Duration::from_millis(500);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_goes_through_the_agent_and_back() {
    let agent = Agent::start().await;
    let kind = GateKind::Functional {
        amqp_url: amqp_url(),
        queue: agent.task_queue.clone(),
        signing_key: Some(agent.signing_key.clone()),
        broker_ca: None,
        via: None,
    };
    // Retried until the agent has declared its queue and consumes it.
    let report = check(
        &gate("f", kind, Duration::from_secs(60), INTERVAL),
        &CancellationToken::new(),
    )
    .await;
    // The agent logs the task after its result is confirmed, so the line
    // may still be on its way when the gate already has the result.
    let ran = |log: &str| {
        report
            .observed
            .split(' ')
            .nth(1)
            .is_some_and(|id| log.contains(id))
    };
    let mut log = agent.log_text();
    for _ in 0..50 {
        if !report.passed || ran(&log) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        log = agent.log_text();
    }
    let name = agent.name.clone();
    agent.stop().await;
    assert!(report.passed, "{}\nagent log:\n{log}", report.summary());
    assert_eq!(report.kind, "functional");
    // "task gate-… succeeded in N ms on agent <name>"
    let words: Vec<&str> = report.observed.split(' ').collect();
    assert_eq!(words[0], "task");
    assert!(words[1].starts_with("gate-"), "{}", report.observed);
    assert_eq!(&words[2..4], ["succeeded", "in"]);
    assert!(words[4].parse::<u64>().is_ok(), "{}", report.observed);
    assert_eq!(words[5], "ms");
    assert_eq!(&words[6..], ["on", "agent", name.as_str()]);
    assert!(
        log.contains(words[1]),
        "the agent ran the gate's task: {log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_an_agent_the_gate_times_out_and_says_so() {
    let _lock = tokio::task::spawn_blocking(broker_lock).await.unwrap();
    // A queue that exists but that nobody consumes, as after an agent died.
    let queue = format!("{}.tasks", unique());
    let (connection, channel) = connect().await;
    channel
        .queue_declare(
            queue.as_str().into(),
            lapin::options::QueueDeclareOptions {
                auto_delete: false,
                ..Default::default()
            },
            lapin::types::FieldTable::default(),
        )
        .await
        .unwrap();
    let kind = GateKind::Functional {
        amqp_url: amqp_url(),
        queue: queue.clone(),
        signing_key: None,
        broker_ca: None,
        via: None,
    };
    let report = check(
        &gate("f", kind, Duration::from_secs(2), INTERVAL),
        &CancellationToken::new(),
    )
    .await;
    let _ = channel
        .queue_delete(queue.as_str().into(), Default::default())
        .await;
    let _ = connection.close(200, "done".into()).await;
    assert!(!report.passed);
    assert!(
        report.observed.starts_with("no result for task gate-"),
        "{}",
        report.observed
    );
    assert!(
        report
            .observed
            .contains(&format!("no agent consumed it from `{queue}`")),
        "{}",
        report.observed
    );
}

/// Over `amqps://` the gate trusts exactly the CA bundle it is given (the
/// agents' `BROKER_CA`): the broker's private CA passes, any other
/// certificate fails the handshake with the reason in the report.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_amqps_the_gate_trusts_only_the_given_ca() {
    let agent = Agent::start().await;
    let read = |var: &str| std::fs::read_to_string(crate::support::env(var)).unwrap();
    let ca = read("TASKCTL_TEST_BROKER_CA");
    // A certificate that signed nothing the broker presents.
    let other = read("TASKCTL_TEST_BROKER_CLIENT_CERT");
    let kind = |ca: &str| GateKind::Functional {
        amqp_url: crate::support::env("TASKCTL_TEST_AMQPS_URL"),
        queue: agent.task_queue.clone(),
        signing_key: Some(agent.signing_key.clone()),
        broker_ca: Some(ca.to_owned()),
        via: None,
    };
    let trusted = check(
        &gate("f", kind(&ca), Duration::from_secs(60), INTERVAL),
        &CancellationToken::new(),
    )
    .await;
    let refused = check(
        &gate("f", kind(&other), Duration::from_secs(2), INTERVAL),
        &CancellationToken::new(),
    )
    .await;
    let log = agent.log_text();
    agent.stop().await;
    assert!(trusted.passed, "{}\nagent log:\n{log}", trusted.summary());
    assert!(!refused.passed);
    assert!(
        refused.observed.contains("TLS handshake") && refused.observed.contains("UnknownIssuer"),
        "{}",
        refused.observed
    );
    assert!(
        !refused.observed.contains("guest:guest"),
        "{}",
        refused.observed
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queue_no_agent_declared_is_named_in_the_report() {
    let _lock = tokio::task::spawn_blocking(broker_lock).await.unwrap();
    let queue = format!("{}.never-declared", unique());
    let kind = GateKind::Functional {
        amqp_url: amqp_url(),
        queue: queue.clone(),
        signing_key: None,
        broker_ca: None,
        via: None,
    };
    let report = check(
        &gate("f", kind, Duration::from_millis(800), INTERVAL),
        &CancellationToken::new(),
    )
    .await;
    assert!(!report.passed);
    assert_eq!(
        report.observed,
        format!("queue `{queue}` does not exist on the broker: no agent has declared it yet")
    );
}

#[tokio::test]
async fn broker_credentials_never_appear_in_reports() {
    // Wrong credentials against the real broker, then a closed port.
    let wrong = "amqp://gate-user:n0t-the-pw@127.0.0.1:5672/%2f".to_owned();
    let closed = format!("amqp://gate-user:n0t-the-pw@127.0.0.1:{}/%2f", free_port());
    for url in [wrong, closed] {
        let kind = GateKind::Functional {
            amqp_url: url,
            queue: "taskctl.tasks".into(),
            signing_key: None,
            broker_ca: None,
            via: None,
        };
        let g = gate("f", kind, Duration::from_millis(600), INTERVAL);
        let report = check(&g, &CancellationToken::new()).await;
        assert!(!report.passed);
        assert!(
            report.observed.contains("amqp://***@127.0.0.1:"),
            "{}",
            report.observed
        );
        for text in [report.summary(), format!("{report:?}"), format!("{g:?}")] {
            assert!(
                !text.contains("n0t-the-pw") && !text.contains("gate-user"),
                "{text}"
            );
        }
    }
}

async fn connect() -> (lapin::Connection, lapin::Channel) {
    let connection = lapin::Connection::connect(&amqp_url(), Default::default())
        .await
        .unwrap_or_else(|e| {
            panic!("cannot connect to the test broker ({e}): is `scripts/test-env.sh up` running?")
        });
    let channel = connection.create_channel().await.unwrap();
    (connection, channel)
}
