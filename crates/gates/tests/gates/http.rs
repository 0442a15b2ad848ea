use std::time::Duration;

use taskctl_gates::{GateKind, check};
use tokio_util::sync::CancellationToken;

use crate::support::{HttpServer, free_port, gate};

const SHORT: Duration = Duration::from_millis(100);

fn http(url: String, expect_status: u16, body_contains: Option<&str>) -> GateKind {
    GateKind::Http {
        url,
        expect_status,
        body_contains: body_contains.map(str::to_owned),
    }
}

#[tokio::test]
async fn a_ready_endpoint_passes_and_quotes_its_body() {
    let server = HttpServer::fixed(200, r#"{"ready":true}"#);
    let kind = http(server.url("/ready"), 200, Some("\"ready\":true"));
    let report = check(
        &gate("h", kind, Duration::from_secs(5), SHORT),
        &CancellationToken::new(),
    )
    .await;
    assert!(report.passed, "{}", report.summary());
    assert_eq!(report.kind, "http");
    assert_eq!(report.observed, r#"HTTP 200 body "{\"ready\":true}""#);
}

#[tokio::test]
async fn a_503_fails_with_status_and_body() {
    let server = HttpServer::fixed(503, "not ready");
    let kind = http(server.url("/ready"), 200, None);
    let report = check(
        &gate("h", kind, Duration::from_millis(500), SHORT),
        &CancellationToken::new(),
    )
    .await;
    assert!(!report.passed);
    assert_eq!(
        report.observed,
        "HTTP 503 body \"not ready\" (expected HTTP 200)"
    );
    assert!(report.attempts > 1);
    assert_eq!(
        server.requests.load(std::sync::atomic::Ordering::SeqCst),
        report.attempts
    );
}

#[tokio::test]
async fn a_body_mismatch_fails_and_shows_the_body_truncated() {
    let body = format!("status: degraded {}", "x".repeat(500));
    let server = HttpServer::fixed(200, &body);
    let kind = http(server.url("/health"), 200, Some("status: ok"));
    let report = check(
        &gate("h", kind, Duration::from_millis(300), SHORT),
        &CancellationToken::new(),
    )
    .await;
    assert!(!report.passed);
    assert!(
        report
            .observed
            .starts_with("HTTP 200 body \"status: degraded xxx"),
        "{}",
        report.observed
    );
    assert!(
        report
            .observed
            .contains("…\" does not contain \"status: ok\""),
        "{}",
        report.observed
    );
    assert!(
        report.observed.len() < 250,
        "body not truncated: {}",
        report.observed
    );
}

#[tokio::test]
async fn an_endpoint_that_becomes_ready_passes_on_a_later_attempt() {
    let server = HttpServer::start(|n| match n {
        0 | 1 => (503, "starting".to_owned()),
        _ => (200, "ok".to_owned()),
    });
    let kind = http(server.url("/ready"), 200, None);
    let report = check(
        &gate("h", kind, Duration::from_secs(30), SHORT),
        &CancellationToken::new(),
    )
    .await;
    assert!(report.passed, "{}", report.summary());
    assert_eq!(report.attempts, 3);
    assert_eq!(report.observed, "HTTP 200 body \"ok\"");
}

#[tokio::test]
async fn nothing_listening_is_connection_refused_and_credentials_never_show() {
    let url = format!("http://probe:hunter2-pw@127.0.0.1:{}/ready", free_port());
    let kind = http(url, 200, None);
    let g = gate("h", kind, Duration::from_millis(300), SHORT);
    let report = check(&g, &CancellationToken::new()).await;
    assert!(!report.passed);
    assert_eq!(report.observed, "connection refused");
    for text in [report.summary(), format!("{report:?}"), format!("{g:?}")] {
        assert!(
            !text.contains("hunter2") && !text.contains("probe:"),
            "{text}"
        );
    }
}

#[tokio::test]
async fn an_unusable_url_fails_without_retrying() {
    let kind = http("not a url".to_owned(), 200, None);
    let report = check(
        &gate("h", kind, Duration::from_secs(30), SHORT),
        &CancellationToken::new(),
    )
    .await;
    assert!(!report.passed);
    assert_eq!(report.attempts, 1, "{}", report.summary());
}
