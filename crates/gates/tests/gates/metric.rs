//! Against the test environment's real Prometheus.

use std::time::Duration;

use taskctl_gates::{Comparison, GateKind, NoData, check};
use tokio_util::sync::CancellationToken;

use crate::support::{free_port, gate, prometheus_url};

const SHORT: Duration = Duration::from_millis(200);
/// A selector no series matches.
const ABSENT: &str = r#"taskctl_gates_test_absent_metric{job="none"}"#;

fn metric(
    query: &str,
    cmp: Comparison,
    threshold: f64,
    no_data: NoData,
    hold_for: Duration,
) -> GateKind {
    GateKind::Metric {
        prometheus_url: prometheus_url(),
        query: query.to_owned(),
        cmp,
        threshold,
        no_data,
        hold_for,
    }
}

async fn run(kind: GateKind, timeout: Duration) -> taskctl_gates::GateReport {
    check(&gate("m", kind, timeout, SHORT), &CancellationToken::new()).await
}

#[tokio::test]
async fn a_true_comparison_passes_with_the_value_seen() {
    let report = run(
        metric(
            "vector(1)",
            Comparison::Eq,
            1.0,
            NoData::Fail,
            Duration::ZERO,
        ),
        Duration::from_secs(10),
    )
    .await;
    assert!(report.passed, "{}", report.summary());
    assert_eq!(report.kind, "metric");
    assert_eq!(report.observed, "vector(1) = 1");
}

#[tokio::test]
async fn a_scraped_target_is_up() {
    // The test environment's Prometheus scrapes RabbitMQ's metrics endpoint.
    let report = run(
        metric(
            r#"up{job="rabbitmq"}"#,
            Comparison::Eq,
            1.0,
            NoData::Wait,
            Duration::ZERO,
        ),
        Duration::from_secs(30),
    )
    .await;
    assert!(report.passed, "{}", report.summary());
    assert!(
        report.observed.starts_with("up{instance="),
        "{}",
        report.observed
    );
    assert!(
        report.observed.ends_with("job=\"rabbitmq\"} = 1"),
        "{}",
        report.observed
    );
}

#[tokio::test]
async fn a_false_comparison_fails_with_the_value_observed() {
    let report = run(
        metric(
            "vector(0.5)",
            Comparison::Ge,
            1.0,
            NoData::Fail,
            Duration::ZERO,
        ),
        Duration::from_millis(700),
    )
    .await;
    assert!(!report.passed);
    assert!(report.attempts > 1);
    assert_eq!(report.observed, "vector(0.5) = 0.5 (expected >= 1)");
}

#[tokio::test]
async fn no_data_fail_fails_on_the_first_attempt() {
    let report = run(
        metric(ABSENT, Comparison::Eq, 1.0, NoData::Fail, Duration::ZERO),
        Duration::from_secs(60),
    )
    .await;
    assert!(!report.passed);
    assert_eq!(report.attempts, 1);
    assert_eq!(
        report.observed,
        format!("no series for `{ABSENT}` (no data fails this gate)")
    );
}

#[tokio::test]
async fn no_data_pass_passes() {
    let report = run(
        metric(ABSENT, Comparison::Eq, 1.0, NoData::Pass, Duration::ZERO),
        Duration::from_secs(60),
    )
    .await;
    assert!(report.passed, "{}", report.summary());
    assert_eq!(report.attempts, 1);
    assert!(report.observed.contains("no data passes this gate"));
}

#[tokio::test]
async fn no_data_wait_keeps_asking_until_the_timeout() {
    let report = run(
        metric(ABSENT, Comparison::Eq, 1.0, NoData::Wait, Duration::ZERO),
        Duration::from_millis(800),
    )
    .await;
    assert!(!report.passed);
    assert!(!report.cancelled);
    assert!(report.attempts > 1, "{}", report.summary());
    assert_eq!(report.observed, format!("no series for `{ABSENT}` yet"));
}

#[tokio::test]
async fn hold_for_needs_the_comparison_to_keep_holding() {
    let hold = Duration::from_millis(600);
    let report = run(
        metric("vector(1)", Comparison::Eq, 1.0, NoData::Fail, hold),
        Duration::from_secs(30),
    )
    .await;
    assert!(report.passed, "{}", report.summary());
    assert!(
        report.attempts >= 2,
        "held over several observations: {}",
        report.summary()
    );
    assert!(report.elapsed >= hold);
    assert!(
        report.observed.starts_with("vector(1) = 1 (held for "),
        "{}",
        report.observed
    );
}

#[tokio::test]
async fn a_hold_longer_than_the_timeout_fails_and_says_why() {
    let report = run(
        metric(
            "vector(1)",
            Comparison::Eq,
            1.0,
            NoData::Fail,
            Duration::from_secs(60),
        ),
        Duration::from_secs(5),
    )
    .await;
    assert!(!report.passed);
    assert_eq!(report.attempts, 1);
    assert!(
        report.observed.contains("would end after the 5.0s timeout"),
        "{}",
        report.observed
    );
}

#[tokio::test]
async fn every_series_must_satisfy_the_comparison() {
    let query = r#"label_replace(vector(1), "s", "a", "", "") or label_replace(vector(3), "s", "b", "", "")"#;
    let report = run(
        metric(query, Comparison::Lt, 2.0, NoData::Fail, Duration::ZERO),
        Duration::from_millis(300),
    )
    .await;
    assert!(!report.passed);
    assert_eq!(report.observed, "{s=\"b\"} = 3 (expected < 2)");
}

#[tokio::test]
async fn a_malformed_query_fails_without_retrying() {
    let report = run(
        metric("vector(", Comparison::Eq, 1.0, NoData::Wait, Duration::ZERO),
        Duration::from_secs(60),
    )
    .await;
    assert!(!report.passed);
    assert_eq!(report.attempts, 1);
    assert!(report.observed.contains("bad_data"), "{}", report.observed);
}

#[tokio::test]
async fn an_unreachable_prometheus_is_connection_refused() {
    let kind = GateKind::Metric {
        prometheus_url: format!("http://127.0.0.1:{}", free_port()),
        query: "vector(1)".into(),
        cmp: Comparison::Eq,
        threshold: 1.0,
        no_data: NoData::Fail,
        hold_for: Duration::ZERO,
    };
    let report = run(kind, Duration::from_millis(300)).await;
    assert!(!report.passed);
    assert_eq!(report.observed, "Prometheus: connection refused");
}
