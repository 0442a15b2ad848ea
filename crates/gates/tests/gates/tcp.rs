use std::net::TcpListener;
use std::time::Duration;

use taskctl_gates::{GateKind, check, check_all};
use tokio_util::sync::CancellationToken;

use crate::support::{free_port, gate};

const SHORT: Duration = Duration::from_millis(100);

#[tokio::test]
async fn an_open_listener_passes_on_the_first_attempt() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let g = gate(
        "tcp",
        GateKind::Tcp { addr: addr.clone() },
        Duration::from_secs(5),
        SHORT,
    );
    let report = check(&g, &CancellationToken::new()).await;
    assert!(report.passed, "{}", report.summary());
    assert_eq!(report.kind, "tcp");
    assert_eq!(report.attempts, 1);
    assert_eq!(report.observed, format!("connected to {addr}"));
}

#[tokio::test]
async fn a_closed_port_fails_with_connection_refused_after_retrying() {
    let addr = format!("127.0.0.1:{}", free_port());
    let g = gate(
        "tcp",
        GateKind::Tcp { addr },
        Duration::from_millis(600),
        SHORT,
    );
    let report = check(&g, &CancellationToken::new()).await;
    assert!(!report.passed);
    assert!(!report.cancelled);
    assert_eq!(report.observed, "connection refused");
    assert!(report.attempts > 1, "retried: {}", report.summary());
    assert!(
        report.summary().starts_with("failed tcp (tcp) after ")
            && report.summary().ends_with(": connection refused"),
        "{}",
        report.summary()
    );
}

#[tokio::test]
async fn a_malformed_address_fails_without_retrying() {
    let g = gate(
        "tcp",
        GateKind::Tcp {
            addr: "no-port-here".into(),
        },
        Duration::from_secs(30),
        SHORT,
    );
    let report = check(&g, &CancellationToken::new()).await;
    assert!(!report.passed);
    assert_eq!(report.attempts, 1);
    assert!(
        report.observed.contains("not a host:port address"),
        "{}",
        report.observed
    );
}

#[tokio::test]
async fn cancellation_stops_a_gate_and_says_so() {
    let addr = format!("127.0.0.1:{}", free_port());
    let g = gate(
        "tcp",
        GateKind::Tcp { addr },
        Duration::from_secs(600),
        SHORT,
    );
    let cancel = CancellationToken::new();
    let trigger = cancel.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        trigger.cancel();
    });
    let report = check(&g, &cancel).await;
    assert!(!report.passed);
    assert!(report.cancelled);
    assert!(
        report.summary().starts_with("cancelled tcp"),
        "{}",
        report.summary()
    );
    assert!(report.summary().contains("last seen: connection refused"));
}

#[tokio::test]
async fn check_all_reports_in_input_order() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let open = listener.local_addr().unwrap().to_string();
    let closed = format!("127.0.0.1:{}", free_port());
    let t = Duration::from_millis(400);
    let gates = vec![
        gate("closed", GateKind::Tcp { addr: closed }, t, SHORT),
        gate("open", GateKind::Tcp { addr: open }, t, SHORT),
    ];
    let reports = check_all(&gates, &CancellationToken::new()).await;
    let got: Vec<(&str, bool)> = reports
        .iter()
        .map(|r| (r.name.as_str(), r.passed))
        .collect();
    assert_eq!(got, [("closed", false), ("open", true)]);
}
