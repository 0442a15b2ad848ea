//! Soak: 10,000 tasks across two agents with one broker restart and one
//! SIGKILL of an agent; every task ends with a result, none is lost.
//!
//! Duplicates are possible by design (at-least-once: a result confirmed just
//! before a connection loss is followed by a redelivery to the other agent);
//! the test counts and prints them, and requires that every task has exactly
//! one *distinct outcome* (all its results say succeeded).

use std::time::{Duration, Instant};

use taskctl_protocol::{TaskKind, TaskResult, TaskStatus};

use crate::{resilience::restart_broker, support::*};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn soak_10k_tasks_two_agents_broker_restart_and_sigkill() {
    let mut h = Harness::exclusive().await;
    let n = 10_000;
    let tasks: Vec<_> = (0..n)
        .map(|i| {
            task(
                &format!("soak-{i}"),
                TaskKind::Echo {
                    message: String::new(),
                    delay_ms: 100,
                },
            )
        })
        .collect();
    h.publish_many(&tasks).await;
    let started = Instant::now();
    let mut a = h.agent("a", &[("LOG_LEVEL", "info")]).await;
    let b = h.agent("b", &[("LOG_LEVEL", "info")]).await;

    tokio::time::sleep(Duration::from_secs(3)).await;
    a.kill9();
    let replacement = h.agent("a2", &[("LOG_LEVEL", "info")]).await;

    tokio::time::sleep(Duration::from_secs(3)).await;
    tokio::task::spawn_blocking(restart_broker).await.unwrap();
    h.reconnect().await;
    b.wait_ready(Duration::from_secs(30)).await;
    replacement.wait_ready(Duration::from_secs(30)).await;

    eventually(
        "every task has a result",
        Duration::from_secs(240),
        || async {
            h.ready_count(&h.result_queue).await as usize >= n
                && h.ready_count(&h.task_queue).await == 0
        },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let elapsed = started.elapsed();
    let results: Vec<TaskResult> = h
        .drain_queue(&h.result_queue)
        .await
        .iter()
        .map(|m| serde_json::from_slice(&m.delivery.data).unwrap())
        .collect();
    let map = by_task(&results);
    let missing: Vec<_> = (0..n)
        .map(|i| format!("soak-{i}"))
        .filter(|id| !map.contains_key(id))
        .collect();
    assert!(missing.is_empty(), "lost tasks: {missing:?}");
    assert_eq!(map.len(), n, "results for unknown ids");
    assert!(results.iter().all(|r| r.status == TaskStatus::Succeeded));
    let duplicates = results.len() - n;
    eprintln!(
        "soak: {n} tasks, {} results ({duplicates} duplicates from redeliveries) in {elapsed:?}; \
         dedup hits b={} a2={}",
        results.len(),
        b.metric("task_executor_redeliveries_deduplicated_total")
            .await,
        replacement
            .metric("task_executor_redeliveries_deduplicated_total")
            .await,
    );
    h.cleanup().await;
}
