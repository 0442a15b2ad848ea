//! The real Prometheus scrapes an agent through file service discovery; `up`
//! and the task metrics are queryable, and the shipped recording rule is valid.

use std::time::Duration;

use taskctl_protocol::TaskKind;

use crate::support::*;

async fn query(prom: &str, q: &str) -> Vec<serde_json::Value> {
    let resp: serde_json::Value = reqwest::Client::new()
        .get(format!("{prom}/api/v1/query"))
        .query(&[("query", q)])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    resp["data"]["result"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_scrapes_up_and_task_metrics() {
    let prom = env("TASKCTL_TEST_PROMETHEUS_URL");
    let sd_dir = env("TASKCTL_TEST_PROMETHEUS_SD_DIR");
    let h = Harness::new().await;
    let agent = h.agent("prom", &[]).await;
    for i in 0..5 {
        h.publish(&task(&format!("p-{i}"), TaskKind::Noop)).await;
    }
    h.results(5, Duration::from_secs(30)).await;

    let target = std::path::Path::new(&sd_dir).join(format!("{}.json", h.prefix));
    let sd = serde_json::json!([{
        "targets": [format!("127.0.0.1:{}", agent.metrics_port)],
        "labels": {"agent": h.prefix},
    }]);
    std::fs::write(&target, sd.to_string()).unwrap();

    let up = format!("up{{agent=\"{}\"}}", h.prefix);
    let tasks = format!(
        "task_executor_tasks_total{{agent=\"{}\",kind=\"noop\",status=\"succeeded\"}}",
        h.prefix
    );
    let mut seen = (None, None);
    for _ in 0..60 {
        let u = query(&prom, &up).await;
        let t = query(&prom, &tasks).await;
        seen = (u.first().cloned(), t.first().cloned());
        if let (Some(u), Some(t)) = &seen
            && u["value"][1] == "1"
            && t["value"][1] == "5"
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let _ = std::fs::remove_file(&target);
    let (u, t) = seen;
    assert_eq!(
        u.as_ref().map(|u| u["value"][1].clone()),
        Some("1".into()),
        "{u:?}"
    );
    assert_eq!(
        t.as_ref().map(|t| t["value"][1].clone()),
        Some("5".into()),
        "{t:?}"
    );
    // The recording rule's expression evaluates against the scraped series.
    let rate = query(
        &prom,
        &format!(
            "sum(rate(task_executor_tasks_total{{agent=\"{0}\",status=~\"failed|timed_out\"}}[5m])) \
             / clamp_min(sum(rate(task_executor_tasks_total{{agent=\"{0}\"}}[5m])), 1e-9)",
            h.prefix
        ),
    )
    .await;
    assert!(rate.len() <= 1, "{rate:?}");
    h.cleanup().await;
}

#[test]
fn recording_rule_file_is_valid() {
    let rules = concat!(env!("CARGO_MANIFEST_DIR"), "/prometheus/rules.yml");
    let out = std::process::Command::new("promtool")
        .args(["check", "rules", rules])
        .output()
        .expect("promtool is installed with prometheus by `scripts/test-env.sh up`");
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
