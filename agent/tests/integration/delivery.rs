//! Delivery guarantees: retries with backoff then dead-letter, results routed
//! to `reply_to` with the `correlation_id`, and a completed id not run twice.

use std::time::{Duration, Instant};

use lapin::{BasicProperties, types::AMQPValue};
use taskctl_protocol::{HEADER_DEAD_REASON, TaskKind, TaskStatus};

use crate::support::*;

const WAIT: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_task_is_retried_with_backoff_then_dead_lettered() {
    let h = Harness::new().await;
    let agent = h.agent("a", &[("MAX_ATTEMPTS", "3")]).await;
    let started = Instant::now();
    h.publish(&task(
        "flaky",
        sh("echo attempt $TASKCTL_ATTEMPT >&2; exit 7"),
    ))
    .await;
    let results = h.results(1, WAIT).await;
    let r = &results[0];
    // One final result only, from the last attempt, after 100 + 200 ms of
    // broker-side delay.
    assert_eq!(
        (r.status, r.attempt, r.code),
        (TaskStatus::Failed, 3, Some(7)),
        "{r:?}"
    );
    assert_eq!(r.stderr, "attempt 3\n");
    assert!(started.elapsed() >= Duration::from_millis(300));
    let dead = h.drain_queue(&h.dead_queue).await;
    assert_eq!(dead.len(), 1);
    let headers = dead[0].properties.headers().as_ref().unwrap();
    let reason = match headers.inner().get(HEADER_DEAD_REASON) {
        Some(AMQPValue::LongString(s)) => s.to_string(),
        other => panic!("no reason header: {other:?}"),
    };
    assert!(reason.contains("failed after 3 attempt(s)"), "{reason}");
    // The producer's signed body travels unchanged; the attempt is a header.
    let framed = taskctl_protocol::signing::unframe(&dead[0].delivery.data).unwrap();
    assert_eq!(
        framed.key_id,
        Some(h.signer.key_id()),
        "the signature line is kept"
    );
    let body: serde_json::Value = serde_json::from_slice(framed.body).unwrap();
    assert_eq!(body["attempt"], 1);
    assert_eq!(
        headers.inner().get(taskctl_protocol::HEADER_ATTEMPT),
        Some(&AMQPValue::LongLongInt(3))
    );
    assert_eq!(
        agent
            .metric("task_executor_retries_total{kind=\"command\"}")
            .await,
        2.0
    );
    assert_eq!(
        agent
            .metric("task_executor_dead_letters_total{reason=\"max_attempts\"}")
            .await,
        1.0
    );
    // Nothing left anywhere: the retry queues are empty too.
    assert_eq!(h.ready_count(&h.result_queue).await, 0);
    assert_eq!(
        h.ready_count(&format!("{}.retry.100", h.task_queue)).await,
        0
    );
    h.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn task_that_succeeds_on_retry_has_one_succeeded_result() {
    let h = Harness::new().await;
    let _agent = h.agent("a", &[("MAX_ATTEMPTS", "3")]).await;
    h.publish(&task("second-time", sh("test $TASKCTL_ATTEMPT -ge 2")))
        .await;
    let r = &h.results(1, WAIT).await[0];
    assert_eq!((r.status, r.attempt), (TaskStatus::Succeeded, 2), "{r:?}");
    assert!(h.drain_queue(&h.dead_queue).await.is_empty());
    h.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn result_goes_to_reply_to_with_correlation_id() {
    let h = Harness::new().await;
    let _agent = h.agent("a", &[]).await;
    let reply = format!("{}.reply", h.result_queue);
    h.channel
        .queue_declare(
            reply.as_str().into(),
            // Exclusive, as a producer's reply queue usually is: gone with
            // the harness's connection.
            lapin::options::QueueDeclareOptions {
                exclusive: true,
                ..Default::default()
            },
            Default::default(),
        )
        .await
        .unwrap();
    let props = BasicProperties::default()
        .with_reply_to(reply.as_str().into())
        .with_correlation_id("corr-42".into());
    h.publish_to(&h.task_queue, &task("rpc", TaskKind::Noop), props)
        .await;
    let channel = h.connection.create_channel().await.unwrap();
    let msg = loop {
        if let Some(m) = channel
            .basic_get(reply.as_str().into(), Default::default())
            .await
            .unwrap()
        {
            break m;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(
        msg.properties.correlation_id().as_ref().map(|c| c.as_str()),
        Some("corr-42")
    );
    let r: taskctl_protocol::TaskResult = serde_json::from_slice(&msg.delivery.data).unwrap();
    assert_eq!(
        (r.task_id.as_str(), r.status),
        ("rpc", TaskStatus::Succeeded)
    );
    assert_eq!(h.ready_count(&h.result_queue).await, 0);
    h.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_id_completed_here_is_not_run_twice() {
    // Unsigned, so the copy is not refused as a replay (security.rs shows
    // that) but recognised as a redelivery of a completed task.
    let h = Harness::new().await;
    let agent = h.agent("a", &[("ALLOW_UNSIGNED_TASKS", "true")]).await;
    let marker = h.workdir.join("runs");
    let t = task("once", sh(&format!("echo run >> {}", marker.display())));
    let body = serde_json::to_vec(&t).unwrap();
    h.publish_unsigned(&h.task_queue, &body, BasicProperties::default())
        .await;
    h.results(1, WAIT).await;
    // The same message again, as a redelivery after a lost ack would be.
    h.publish_unsigned(&h.task_queue, &body, BasicProperties::default())
        .await;
    eventually("the copy was acknowledged", WAIT, || async {
        agent
            .metric("task_executor_redeliveries_deduplicated_total")
            .await
            == 1.0
    })
    .await;
    assert_eq!(std::fs::read_to_string(&marker).unwrap(), "run\n");
    assert_eq!(h.ready_count(&h.result_queue).await, 0, "no second result");
    assert_eq!(h.ready_count(&h.task_queue).await, 0);
    h.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn result_for_a_vanished_reply_queue_goes_to_the_result_queue() {
    let h = Harness::new().await;
    let _agent = h.agent("a", &[]).await;
    let props = BasicProperties::default()
        .with_reply_to(format!("{}.gone", h.result_queue).as_str().into());
    h.publish_to(&h.task_queue, &task("orphan", TaskKind::Noop), props)
        .await;
    let r = &h.results(1, WAIT).await[0];
    assert_eq!(
        (r.task_id.as_str(), r.status),
        ("orphan", TaskStatus::Succeeded)
    );
    h.cleanup().await;
}
