//! The two small HTTP servers: `/health` and `/ready` on the health port,
//! `/metrics` on the metrics port.
//!
//! Listeners are bound by the caller (after the configuration is validated) so
//! a port conflict is a start-up error, not a background log line. Routing is a
//! pure function from path to response so it is tested without a socket.

use std::{convert::Infallible, sync::Arc};

use http_body_util::Full;
use hyper::{Request, Response, StatusCode, body::Bytes, server::conn::http1, service::service_fn};
use hyper_util::rt::TokioIo;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;

use crate::readiness::Readiness;

/// What the health port needs to answer.
pub struct HealthState {
    pub readiness: Readiness,
    pub gpus: usize,
    pub agent_id: String,
}

/// A response as plain values.
#[derive(Debug, PartialEq)]
pub struct Reply {
    pub status: u16,
    pub content_type: &'static str,
    pub body: String,
}

/// Routes of the health port.
pub fn health_route(path: &str, state: &HealthState) -> Reply {
    match path {
        // Liveness only says the process answers: restarting a pod because the
        // broker is down would not bring the broker back.
        "/health" => Reply {
            status: 200,
            content_type: "application/json",
            body: r#"{"status":"ok"}"#.to_owned(),
        },
        "/ready" => {
            let waiting = state.readiness.waiting_on();
            let body = serde_json::json!({
                "ready": waiting.is_empty(),
                "waiting_on": waiting,
                "gpus": state.gpus,
                "agent_id": state.agent_id,
            });
            Reply {
                status: if waiting.is_empty() { 200 } else { 503 },
                content_type: "application/json",
                body: body.to_string(),
            }
        }
        _ => not_found(),
    }
}

/// Routes of the metrics port.
pub fn metrics_route(path: &str, registry: &Registry) -> Reply {
    if path != "/metrics" {
        return not_found();
    }
    let mut body = String::new();
    match prometheus_client::encoding::text::encode(&mut body, registry) {
        Ok(()) => Reply {
            status: 200,
            content_type: "application/openmetrics-text; version=1.0.0; charset=utf-8",
            body,
        },
        Err(_) => Reply {
            status: 500,
            content_type: "text/plain",
            body: "failed to encode metrics".to_owned(),
        },
    }
}

fn not_found() -> Reply {
    Reply {
        status: 404,
        content_type: "text/plain",
        body: "not found".to_owned(),
    }
}

/// Serves `route` on `listener` until the runtime shuts down.
pub async fn serve<F>(listener: TcpListener, route: F)
where
    F: Fn(&str) -> Reply + Send + Sync + 'static,
{
    let route = Arc::new(route);
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(conn) => conn,
            Err(error) => {
                // Accept errors (EMFILE, aborted handshakes) are transient.
                tracing::warn!(%error, "failed to accept an HTTP connection");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let route = route.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req: Request<hyper::body::Incoming>| {
                let reply = route(req.uri().path());
                async move { Ok::<_, Infallible>(into_response(reply)) }
            });
            if let Err(error) = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                tracing::debug!(%error, "HTTP connection ended with an error");
            }
        });
    }
}

fn into_response(reply: Reply) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(reply.body)));
    *response.status_mut() =
        StatusCode::from_u16(reply.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    if let Ok(value) = hyper::header::HeaderValue::from_str(reply.content_type) {
        response
            .headers_mut()
            .insert(hyper::header::CONTENT_TYPE, value);
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_reports_held_latches_and_gpus() {
        let readiness = Readiness::default();
        let broker = readiness.latch("broker");
        let state = HealthState {
            readiness,
            gpus: 2,
            agent_id: "a".into(),
        };
        let reply = health_route("/ready", &state);
        assert_eq!(reply.status, 503);
        assert!(reply.body.contains(r#""waiting_on":["broker"]"#));
        assert!(reply.body.contains(r#""gpus":2"#));
        broker.release();
        assert_eq!(health_route("/ready", &state).status, 200);
        assert_eq!(health_route("/health", &state).status, 200);
        assert_eq!(health_route("/nope", &state).status, 404);
    }
}
