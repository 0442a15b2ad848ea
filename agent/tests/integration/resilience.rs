//! Broker loss and agent loss: a broker restart mid-run loses nothing and the
//! agent reconnects (not ready meanwhile); a task whose agent is killed with
//! SIGKILL mid-run is redelivered and completed by another agent.

use std::time::Duration;

use taskctl_protocol::{TaskKind, TaskStatus};

use crate::support::*;

const WAIT: Duration = Duration::from_secs(90);

pub fn restart_broker() {
    let script = env("TASKCTL_TEST_ENV_SCRIPT");
    let status = std::process::Command::new(&script)
        .args(["restart", "rabbitmq"])
        .status()
        .unwrap();
    assert!(status.success(), "`{script} restart rabbitmq` failed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_restart_mid_run_loses_nothing() {
    let mut h = Harness::exclusive().await;
    let agent = h.agent("a", &[("MAX_CONCURRENT_TASKS", "20")]).await;
    let n = 300;
    let tasks: Vec<_> = (0..n)
        .map(|i| {
            task(
                &format!("br-{i}"),
                TaskKind::Echo {
                    message: String::new(),
                    delay_ms: 50,
                },
            )
        })
        .collect();
    h.publish_many(&tasks).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let restart = tokio::task::spawn_blocking(restart_broker);
    agent.wait_not_ready(Duration::from_secs(30)).await;
    restart.await.unwrap();
    agent.wait_ready(Duration::from_secs(30)).await;
    assert!(agent.metric("task_executor_broker_reconnects_total").await >= 1.0);
    h.reconnect().await;
    eventually("every task has a result", WAIT, || async {
        h.ready_count(&h.result_queue).await as usize >= n
            && h.ready_count(&h.task_queue).await == 0
    })
    .await;
    // Give redeliveries in flight a moment to land, then take everything.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let results = h.drain_queue(&h.result_queue).await;
    let results: Vec<taskctl_protocol::TaskResult> = results
        .iter()
        .map(|m| serde_json::from_slice(&m.delivery.data).unwrap())
        .collect();
    let map = by_task(&results);
    assert_eq!(map.len(), n, "every task has a result");
    assert!(results.iter().all(|r| r.status == TaskStatus::Succeeded));
    let duplicates = results.len() - map.len();
    eprintln!(
        "broker restart: {} results for {n} tasks ({duplicates} duplicates)",
        results.len()
    );
    h.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn task_of_an_agent_killed_with_sigkill_is_completed_by_another() {
    let h = Harness::new().await;
    let mut first = h.agent("first", &[]).await;
    let marker = h.workdir.join("started");
    let script = format!("echo started >> {}; sleep 2; echo done", marker.display());
    h.publish(&task("survivor", sh(&script))).await;
    eventually(
        "the first agent started the task",
        Duration::from_secs(10),
        || async { marker.exists() },
    )
    .await;
    first.kill9();
    let _second = h.agent("second", &[]).await;
    let r = &h.results(1, WAIT).await[0];
    assert_eq!(
        (r.task_id.as_str(), r.status),
        ("survivor", TaskStatus::Succeeded),
        "{r:?}"
    );
    assert!(r.agent_id.ends_with("-second"), "{r:?}");
    assert_eq!(r.output, "done\n");
    assert_eq!(
        std::fs::read_to_string(&marker).unwrap(),
        "started\nstarted\n"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        h.ready_count(&h.result_queue).await,
        0,
        "exactly one result"
    );
    h.cleanup().await;
}
