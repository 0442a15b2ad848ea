//! The HTTP gate: does `GET url` answer the expected status (and body)?
//!
//! Used for the agents' readiness endpoint, which answers 503 with a JSON
//! reason until the agent consumes its queues. The report quotes the start of
//! the body, because the reason for a 503 is usually in it.

use std::error::Error as _;
use std::time::Duration;

use crate::{Attempt, quoted, seconds};

/// Bytes of a body read at most: enough for any health document, bounded so
/// a misbehaving endpoint cannot make taskctl buffer gigabytes.
const BODY_LIMIT: usize = 64 * 1024;
/// Characters of the body quoted in a report.
const BODY_SHOWN: usize = 120;

/// One client per gate check, so attempts reuse the connection. Without a
/// proxy from the environment: gates talk to loopback and in-cluster
/// addresses, which a corporate `HTTP_PROXY` would misroute.
pub(crate) fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .connect_timeout(Duration::from_secs(5))
        .build()
        // Building fails only when the TLS backend cannot initialise, which
        // leaves a plain default client the only useful choice.
        .unwrap_or_default()
}

pub(crate) async fn attempt(
    client: &reqwest::Client,
    url: &str,
    expect_status: u16,
    body_contains: Option<&str>,
    budget: Duration,
) -> Attempt {
    let response = match client.get(url).timeout(budget).send().await {
        Ok(r) => r,
        Err(e) => return request_error(&e, budget),
    };
    let status = response.status().as_u16();
    let body = match read_bounded(response, budget).await {
        Ok(b) => b,
        Err(e) => {
            return Attempt::Retry(format!(
                "HTTP {status}, body unreadable: {}",
                describe(&e, budget)
            ));
        }
    };
    let seen = format!("HTTP {status} body {}", quoted(&body, BODY_SHOWN));
    if status != expect_status {
        return Attempt::Retry(format!("{seen} (expected HTTP {expect_status})"));
    }
    match body_contains {
        Some(needle) if !body.contains(needle) => {
            Attempt::Retry(format!("{seen} does not contain {needle:?}"))
        }
        _ => Attempt::Pass(seen),
    }
}

async fn read_bounded(
    mut response: reqwest::Response,
    budget: Duration,
) -> Result<String, reqwest::Error> {
    let mut body = Vec::new();
    let read = async {
        while let Some(chunk) = response.chunk().await? {
            body.extend_from_slice(&chunk);
            if body.len() >= BODY_LIMIT {
                body.truncate(BODY_LIMIT);
                break;
            }
        }
        Ok::<_, reqwest::Error>(())
    };
    // The request's own timeout covers the body too; this one guards the
    // case where it was not set. A body still streaming at the end of the
    // budget is judged on what arrived.
    if let Ok(result) = tokio::time::timeout(budget, read).await {
        result?;
    }
    Ok(String::from_utf8_lossy(&body).into_owned())
}

/// A failed request as an attempt: a URL reqwest cannot use is fatal,
/// everything else (refused, reset, timed out) may heal.
pub(crate) fn request_error(e: &reqwest::Error, budget: Duration) -> Attempt {
    if e.is_builder() {
        return Attempt::Fatal(format!("invalid request: {}", describe(e, budget)));
    }
    Attempt::Retry(describe(e, budget))
}

/// The cause people need: "connection refused", "no answer within 2.0s",
/// else the innermost error's text.
pub(crate) fn describe(e: &reqwest::Error, budget: Duration) -> String {
    if e.is_timeout() {
        return format!("no answer within {}", seconds(budget));
    }
    let mut source = e.source();
    let mut innermost = None;
    while let Some(s) = source {
        if let Some(io) = s.downcast_ref::<std::io::Error>()
            && io.kind() == std::io::ErrorKind::ConnectionRefused
        {
            return "connection refused".to_owned();
        }
        innermost = Some(s.to_string());
        source = s.source();
    }
    match innermost {
        Some(cause) => format!("{e}: {cause}"),
        None => e.to_string(),
    }
}
