//! `amqps://` with a private CA (`BROKER_CA_FILE`) and mutual TLS
//! (`BROKER_CLIENT_CERT_FILE`, `BROKER_CLIENT_KEY_FILE`), against the TLS
//! listener of the test environment's RabbitMQ (127.0.0.1:5671, certificate
//! signed by the test-env CA, client certificates verified when presented).
//!
//! Tasks are published and results read over the plain port (the harness's
//! connection); only the agent talks TLS. The management API shows how the
//! broker sees the agent's connection.

use std::{
    process::Command,
    time::{Duration, Instant},
};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use taskctl_protocol::{TaskKind, TaskStatus};

use crate::support::*;

const WAIT: Duration = Duration::from_secs(60);
/// How long an agent that must not connect is watched.
const REFUSED_FOR: Duration = Duration::from_secs(5);

fn amqps_url() -> String {
    env("TASKCTL_TEST_AMQPS_URL")
}

/// The test-env CA, which signed the broker's certificate.
fn broker_ca() -> String {
    env("TASKCTL_TEST_BROKER_CA")
}

/// A fresh CA that has signed nothing the broker knows: its certificate (PEM)
/// and its issuer.
fn other_ca() -> (String, Issuer<'static, KeyPair>) {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(DnType::CommonName, "not the broker's CA");
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let pem = params.self_signed(&key).unwrap().pem();
    (pem, Issuer::new(params, key))
}

/// Writes `content` to a file of the test's work dir and returns its path.
fn write(h: &Harness, name: &str, content: &str) -> String {
    let path = h.workdir.join(name);
    std::fs::write(&path, content).unwrap();
    path.display().to_string()
}

/// The broker's view of the connection named `name` (the agent id), from the
/// management API, once it is listed.
async fn broker_connection(name: &str) -> serde_json::Value {
    let mgmt = env("TASKCTL_TEST_RABBITMQ_MGMT_URL");
    let uri: lapin::uri::AMQPUri = amqp_url().parse().unwrap();
    let user = uri.authority.userinfo;
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let connections: serde_json::Value = client
            .get(format!("{mgmt}/api/connections"))
            .basic_auth(&user.username, Some(&user.password))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if let Some(found) = connections.as_array().unwrap().iter().find(|c| {
            c["client_properties"]["connection_name"].as_str() == Some(name)
                && c["ssl"].is_boolean()
        }) {
            return found.clone();
        }
        assert!(
            Instant::now() < deadline,
            "the broker lists no connection named {name}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Watches an agent that must not get a usable broker session: `/ready`
/// never turns 200 (and says it waits on the broker), its log names the
/// failure `expected`, and the reconnect loop keeps trying.
async fn assert_refused(agent: &Agent, expected: &[&str]) {
    let deadline = Instant::now() + REFUSED_FOR;
    let mut last = None;
    while Instant::now() < deadline {
        if let Some((status, body)) = agent.ready().await {
            assert_ne!(
                status,
                200,
                "agent {} became ready; log:\n{}",
                agent.id,
                agent.log_text()
            );
            last = Some((status, body));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (status, body) = last.expect("/ready never answered");
    assert_eq!(status, 503, "{body}");
    assert!(
        body["waiting_on"]
            .as_array()
            .unwrap()
            .iter()
            .any(|w| w == "broker"),
        "{body}"
    );
    let log = agent.log_text();
    assert!(
        log.lines()
            .any(|l| l.contains("broker connection failed")
                && expected.iter().any(|e| l.contains(e))),
        "the log should say one of {expected:?}:\n{log}"
    );
    assert!(
        log.matches("broker connection failed").count() >= 2,
        "the agent should keep retrying:\n{log}"
    );
}

/// (a) An agent trusting only the test CA runs a task over amqps://.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_agent_trusting_the_private_ca_runs_a_task_over_amqps() {
    let h = Harness::new().await;
    let url = amqps_url();
    let ca = broker_ca();
    let agent = h
        .agent("tls", &[("BROKER_URL", &url), ("BROKER_CA_FILE", &ca)])
        .await;
    h.publish(&task("over-tls", TaskKind::Noop)).await;
    let results = h.results(1, WAIT).await;
    assert_eq!(results[0].task_id, "over-tls");
    assert_eq!(results[0].status, TaskStatus::Succeeded);

    // The broker saw a TLS connection, without a client certificate.
    let conn = broker_connection(&agent.id).await;
    assert_eq!(conn["ssl"], true, "{conn:#}");
    assert_eq!(conn["port"], 5671, "{conn:#}");
    assert!(
        ["tlsv1.3", "tlsv1.2"].contains(&conn["ssl_protocol"].as_str().unwrap_or("")),
        "{conn:#}"
    );
    assert!(conn["peer_cert_subject"].is_null(), "{conn:#}");
    // The start-up log names the CA file (a path, not a secret).
    assert!(agent.log_text().contains(&ca), "{}", agent.log_text());
    h.cleanup().await;
}

/// (b) An agent trusting a CA of its own refuses the broker's certificate:
/// never ready, and a log that says why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_broker_certificate_from_another_ca_is_refused_with_a_clear_error() {
    let h = Harness::new().await;
    let (ca_pem, _) = other_ca();
    let ca = write(&h, "other-ca.pem", &ca_pem);
    let mut env = h.agent_env();
    env.retain(|(k, _)| k != "BROKER_URL");
    env.push(("BROKER_URL".to_owned(), amqps_url()));
    env.push(("BROKER_CA_FILE".to_owned(), ca));
    let agent = Agent::spawn(&format!("{}-other-ca", h.prefix), &env, &h.workdir);
    assert_refused(
        &agent,
        &["TLS handshake with the broker at 127.0.0.1:5671 failed: \
         invalid peer certificate: UnknownIssuer"],
    )
    .await;
    drop(agent);
    h.cleanup().await;
}

/// Mutual TLS: the client certificate the test CA signed is presented and
/// accepted; the broker lists its subject.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_client_certificate_is_presented_to_the_broker() {
    let h = Harness::new().await;
    let url = amqps_url();
    let ca = broker_ca();
    let cert = env("TASKCTL_TEST_BROKER_CLIENT_CERT");
    let key = env("TASKCTL_TEST_BROKER_CLIENT_KEY");
    let agent = h
        .agent(
            "mtls",
            &[
                ("BROKER_URL", &url),
                ("BROKER_CA_FILE", &ca),
                ("BROKER_CLIENT_CERT_FILE", &cert),
                ("BROKER_CLIENT_KEY_FILE", &key),
            ],
        )
        .await;
    h.publish(&task("over-mtls", TaskKind::Noop)).await;
    let results = h.results(1, WAIT).await;
    assert_eq!(results[0].status, TaskStatus::Succeeded);

    let conn = broker_connection(&agent.id).await;
    assert_eq!(conn["ssl"], true, "{conn:#}");
    assert!(
        conn["peer_cert_subject"]
            .as_str()
            .is_some_and(|s| s.contains("taskctl-test-client")),
        "{conn:#}"
    );
    // The key's content never reaches the log.
    let key_pem = std::fs::read_to_string(&key).unwrap();
    let key_line = key_pem.lines().nth(1).unwrap();
    assert!(!agent.log_text().contains(key_line));
    h.cleanup().await;
}

/// Mutual TLS the other way round: the broker verifies a presented client
/// certificate against its CA and refuses one from another CA.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_client_certificate_from_another_ca_is_refused_by_the_broker() {
    let h = Harness::new().await;
    let (_, issuer) = other_ca();
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params
        .distinguished_name
        .push(DnType::CommonName, "rogue client");
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let cert_pem = params.signed_by(&key, &issuer).unwrap().pem();
    let cert = write(&h, "rogue.pem", &cert_pem);
    let key_file = write(&h, "rogue.key", &key.serialize_pem());

    let mut env = h.agent_env();
    env.retain(|(k, _)| k != "BROKER_URL");
    env.extend(
        [
            ("BROKER_URL", amqps_url()),
            ("BROKER_CA_FILE", broker_ca()),
            ("BROKER_CLIENT_CERT_FILE", cert),
            ("BROKER_CLIENT_KEY_FILE", key_file),
        ]
        .map(|(k, v)| (k.to_owned(), v)),
    );
    let agent = Agent::spawn(&format!("{}-rogue", h.prefix), &env, &h.workdir);
    // The broker's alert, seen by the client during (TLS 1.2) or right after
    // (TLS 1.3) the handshake; with TLS 1.3 the client may instead see only
    // the connection reset that follows the alert, and then says what it
    // likely means.
    assert_refused(
        &agent,
        &[
            "received fatal alert: UnknownCA",
            "it may not trust the client certificate in BROKER_CLIENT_CERT_FILE",
        ],
    )
    .await;
    drop(agent);
    h.cleanup().await;
}

/// Bad TLS settings stop the agent at start-up (exit 64), naming the variable
/// and the path, before it binds a port.
#[test]
fn tls_settings_are_checked_at_startup() {
    let port = free_port();
    let missing = std::env::temp_dir().join(format!("agent-test-no-ca-{}", random_id()));
    let run = |vars: &[(&str, &str)]| {
        let out = Command::new(env!("CARGO_BIN_EXE_task-executor"))
            .env_clear()
            .envs(vars.iter().copied())
            .env("HEALTH_PORT", port.to_string())
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(64));
        String::from_utf8_lossy(&out.stderr).into_owned()
    };

    let stderr = run(&[
        ("BROKER_URL", "amqps://127.0.0.1:5671/%2f"),
        ("BROKER_CA_FILE", missing.to_str().unwrap()),
    ]);
    assert!(
        stderr.contains(&format!(
            "BROKER_CA_FILE: expected a readable PEM file of CA certificates, cannot read `{}`",
            missing.display()
        )),
        "{stderr}"
    );

    let not_pem = std::env::temp_dir().join(format!("agent-test-not-pem-{}", random_id()));
    std::fs::write(&not_pem, "not a certificate\n").unwrap();
    let not_pem_path = not_pem.to_str().unwrap();
    let stderr = run(&[
        ("BROKER_URL", "amqp://127.0.0.1:5672/%2f"),
        ("BROKER_CA_FILE", not_pem_path),
        ("BROKER_CLIENT_CERT_FILE", not_pem_path),
    ]);
    std::fs::remove_file(&not_pem).unwrap();
    for expected in [
        "BROKER_CA_FILE: expected an amqps:// BROKER_URL when BROKER_CA_FILE is set".to_owned(),
        "BROKER_CLIENT_KEY_FILE: expected the client certificate's private key too".to_owned(),
        format!(
            "BROKER_CA_FILE: expected a PEM file of CA certificates, but `{not_pem_path}` is not one"
        ),
    ] {
        assert!(stderr.contains(&expected), "{expected}\n{stderr}");
    }
}
