//! What the deployment checklist looks at in a running environment: a
//! broker login over the transport the agents use, whether PostgreSQL
//! offers TLS, which HTTP APIs answer without credentials, which alerting
//! rules Prometheus has loaded. Each is a [`Probe`] for one checklist item;
//! none changes anything.

use std::time::Duration;

use lapin::{Connection, ConnectionProperties};
use taskctl_broker_tls::BrokerTls;
use taskctl_core::ops::checklist::Probe;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::functional::Broker;
use crate::redact;

fn probe(
    item: &str,
    what: impl Into<String>,
    seen: impl Into<String>,
    holds: Option<bool>,
) -> Probe {
    Probe {
        item: item.into(),
        what: what.into(),
        seen: seen.into(),
        holds,
    }
}

/// Logs in to the broker as the agents do (`amqps://` trusting only the
/// agents' CA) and leaves: holds when that works over TLS.
pub async fn broker(broker: Broker<'_>, budget: Duration) -> Probe {
    let what = format!("RabbitMQ {}", address(broker.url));
    let tls_url = broker.url.starts_with("amqps://");
    let tls = match broker.ca.map(BrokerTls::with_ca_pem).transpose() {
        Ok(tls) => tls,
        Err(e) => {
            return probe(
                "database_tls",
                what,
                format!("the agents' CA bundle is not usable: {e}"),
                Some(false),
            );
        }
    };
    let properties =
        ConnectionProperties::default().with_connection_name("taskctl checklist".into());
    let connect = async {
        match &tls {
            Some(tls) if tls_url => tls.connect(broker.url, properties).await,
            _ => Connection::connect(broker.url, properties).await,
        }
    };
    match tokio::time::timeout(budget, connect).await {
        Ok(Ok(connection)) => {
            let _ = tokio::time::timeout(
                Duration::from_secs(2),
                connection.close(200, "checklist".into()),
            )
            .await;
            if tls_url {
                let trust = if broker.ca.is_some() {
                    "a certificate from the agents' CA"
                } else {
                    "a publicly trusted certificate"
                };
                probe(
                    "database_tls",
                    what,
                    format!("AMQP over TLS with {trust}; the agents' login accepted"),
                    Some(true),
                )
            } else {
                probe(
                    "database_tls",
                    what,
                    "plain AMQP (no TLS); the agents' login accepted",
                    Some(false),
                )
            }
        }
        Ok(Err(e)) => probe(
            "database_tls",
            what,
            redact::scrub(
                broker.url,
                &format!(
                    "no login over {}: {e}",
                    if tls_url { "TLS" } else { "AMQP" }
                ),
            ),
            Some(false),
        ),
        Err(_) => probe(
            "database_tls",
            what,
            "did not answer within the time",
            Some(false),
        ),
    }
}

/// `host:port` of a broker URL, the port by its scheme when not written;
/// never its credentials.
fn address(raw: &str) -> String {
    match url::Url::parse(raw) {
        Ok(u) => {
            let port = u.port().unwrap_or(match u.scheme() {
                "amqps" => 5671,
                _ => 5672,
            });
            format!("{}:{port}", u.host_str().unwrap_or_default())
        }
        Err(_) => "(an address that does not parse)".into(),
    }
}

/// Asks PostgreSQL at `addr` for TLS the way a client starts (an
/// `SSLRequest`): holds when it answers `S`.
pub async fn postgres_tls(addr: &str, budget: Duration) -> Probe {
    let what = format!("PostgreSQL {addr}");
    let ask = async {
        let mut stream = tokio::net::TcpStream::connect(addr).await?;
        // Length 8, then the SSLRequest code 80877103.
        stream
            .write_all(&[0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f])
            .await?;
        let mut answer = [0u8; 1];
        stream.read_exact(&mut answer).await?;
        Ok::<u8, std::io::Error>(answer[0])
    };
    match tokio::time::timeout(budget, ask).await {
        Ok(Ok(b'S')) => probe("database_tls", what, "offers TLS", Some(true)),
        Ok(Ok(b'N')) => probe(
            "database_tls",
            what,
            "refuses TLS: connections are in the clear",
            Some(false),
        ),
        Ok(Ok(other)) => probe(
            "database_tls",
            what,
            format!("answered {other:#04x} to an SSLRequest"),
            Some(false),
        ),
        Ok(Err(e)) => probe("database_tls", what, format!("did not answer: {e}"), None),
        Err(_) => probe("database_tls", what, "did not answer within the time", None),
    }
}

/// `GET url` with no credentials: holds when the API refuses (401, 403).
pub async fn unauthenticated(what: &str, url: &str, budget: Duration) -> Probe {
    let client = crate::http::client();
    match client.get(url).timeout(budget).send().await {
        Ok(r) => {
            let status = r.status().as_u16();
            match status {
                401 | 403 => probe(
                    "authenticated_endpoints",
                    what,
                    format!("HTTP {status} without credentials"),
                    Some(true),
                ),
                200..=299 => probe(
                    "authenticated_endpoints",
                    what,
                    format!("answered HTTP {status} without credentials"),
                    Some(false),
                ),
                _ => probe(
                    "authenticated_endpoints",
                    what,
                    format!("HTTP {status} without credentials"),
                    None,
                ),
            }
        }
        Err(e) => probe(
            "authenticated_endpoints",
            what,
            format!("did not answer: {}", crate::http::describe(&e, budget)),
            None,
        ),
    }
}

/// The alerting rules Prometheus has loaded now: holds when there is one
/// or more.
pub async fn alerting_rules(prometheus_url: &str, budget: Duration) -> Probe {
    let what = "Prometheus alerting rules";
    let url = format!(
        "{}/api/v1/rules?type=alert",
        prometheus_url.trim_end_matches('/')
    );
    let got = async {
        let r = crate::http::client()
            .get(&url)
            .timeout(budget)
            .send()
            .await
            .map_err(|e| crate::http::describe(&e, budget))?;
        let v: serde_json::Value = r.json().await.map_err(|e| e.to_string())?;
        let mut names: Vec<String> = v["data"]["groups"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|g| g["rules"].as_array().into_iter().flatten())
            .filter_map(|r| r["name"].as_str().map(str::to_owned))
            .collect();
        names.sort();
        names.dedup();
        Ok::<_, String>(names)
    };
    match got.await {
        Ok(names) if names.is_empty() => {
            probe("monitoring_and_alerting", what, "none loaded", Some(false))
        }
        Ok(names) => probe(
            "monitoring_and_alerting",
            what,
            format!("{} loaded: {}", names.len(), names.join(", ")),
            Some(true),
        ),
        Err(e) => probe(
            "monitoring_and_alerting",
            what,
            format!("not readable: {e}"),
            None,
        ),
    }
}
