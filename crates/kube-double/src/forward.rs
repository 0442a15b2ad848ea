//! The `portforward` subresource of pods, as the API server serves it to
//! WebSocket clients (`kubectl port-forward`, kube-rs `Api::portforward`).
//!
//! Protocol (`v4.channel.k8s.io`, binary frames): each requested port `i`
//! has a data channel `2i` and an error channel `2i+1`; every frame starts
//! with its channel byte. The server opens each channel with a frame
//! carrying the port (little-endian u16), then relays bytes between the data
//! channel and the port inside the pod; an error on the port (nothing
//! listens) is one text on the error channel, as the kubelet writes it.
//!
//! The double runs no containers, so "inside the pod" is an address a test
//! registers with [`crate::KubeDouble::serve`]: the pods of a workload (by
//! name prefix, optionally only those running a given image) forward their
//! port to a real process on loopback (the real agent, a real RabbitMQ).

use super::*;
use futures_util::{SinkExt, StreamExt};
use hyper::header::{
    CONNECTION, SEC_WEBSOCKET_ACCEPT, SEC_WEBSOCKET_KEY, SEC_WEBSOCKET_PROTOCOL, UPGRADE,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;

/// The stream protocol the double speaks (kube-rs offers v5 and v4; the
/// API server answers port-forward over v4, which has no close signal).
const PROTOCOL: &str = "v4.channel.k8s.io";

/// Where a port of some pods really listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backend {
    pub namespace: String,
    /// Pods whose name starts with this: `task-executor-` for a
    /// Deployment's pods, `rabbitmq-` for a StatefulSet's.
    pub pod_prefix: String,
    /// Only pods one of whose containers runs an image containing this
    /// (a version), when set.
    pub image: Option<String>,
    /// The container port.
    pub port: u16,
    /// The addresses behind it: the pod whose name ends in `-N` reaches
    /// `addrs[N % len]`, so each replica can be its own process.
    pub addrs: Vec<SocketAddr>,
}

impl Backend {
    pub(crate) fn address_for(
        &self,
        namespace: &str,
        pod: &Value,
        port: u16,
    ) -> Option<SocketAddr> {
        let name = pod.pointer("/metadata/name").and_then(Value::as_str)?;
        if namespace != self.namespace
            || port != self.port
            || !name.starts_with(&self.pod_prefix)
            || self.addrs.is_empty()
        {
            return None;
        }
        if let Some(image) = &self.image {
            let runs = pod
                .pointer("/spec/containers")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(|c| c.get("image").and_then(Value::as_str))
                .any(|i| i.contains(image.as_str()));
            if !runs {
                return None;
            }
        }
        let ordinal = name
            .rsplit('-')
            .next()
            .and_then(|n| n.parse::<usize>().ok())
            .unwrap_or(0);
        Some(self.addrs[ordinal % self.addrs.len()])
    }
}

/// `ports=80,1234` (kube-rs) or `ports=80&ports=1234` (client-go).
fn requested_ports(query: &str) -> Result<Vec<u16>, String> {
    let mut ports = Vec::new();
    for (k, v) in query.split('&').filter_map(|kv| kv.split_once('=')) {
        if k != "ports" {
            continue;
        }
        for p in decode(v).split(',').filter(|p| !p.is_empty()) {
            let port = p
                .trim()
                .parse::<u16>()
                .ok()
                .filter(|p| *p > 0)
                .ok_or_else(|| format!("invalid port \"{p}\""))?;
            ports.push(port);
        }
    }
    if ports.is_empty() {
        return Err("at least one port must be specified".into());
    }
    Ok(ports)
}

/// Answers `GET .../pods/NAME/portforward` with a WebSocket upgrade and
/// relays each port until either side closes.
pub(crate) fn portforward(
    shared: &Arc<Shared>,
    mut req: Request<Incoming>,
    key: &Key,
    query: &str,
) -> Reply {
    let Some(pod) = shared.lock().objects.get(key).map(|o| o.value.clone()) else {
        return not_found(key);
    };
    let ports = match requested_ports(query) {
        Ok(p) => p,
        Err(e) => return status(StatusCode::BAD_REQUEST, "BadRequest", e),
    };
    let header = |name| req.headers().get(name).and_then(|v| v.to_str().ok());
    let upgrade = header(UPGRADE).is_some_and(|u| u.eq_ignore_ascii_case("websocket"));
    let offers_v4 =
        header(SEC_WEBSOCKET_PROTOCOL).is_some_and(|p| p.split(',').any(|p| p.trim() == PROTOCOL));
    let Some(ws_key) = header(SEC_WEBSOCKET_KEY).map(str::to_string) else {
        return status(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            "Upgrade request required",
        );
    };
    if !upgrade || !offers_v4 {
        return status(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            format!("Upgrade request required (WebSocket, protocol {PROTOCOL})"),
        );
    }
    let namespace = key.namespace.clone().unwrap_or_default();
    let backends = shared.lock().backends.clone();
    let targets: Vec<(u16, Option<SocketAddr>)> = ports
        .iter()
        .map(|&port| {
            let addr = backends
                .iter()
                .rev()
                .find_map(|b| b.address_for(&namespace, &pod, port));
            (port, addr)
        })
        .collect();
    let pod_name = key.name.clone();
    let on_upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        let Ok(upgraded) = on_upgrade.await else {
            return;
        };
        let ws = WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, None).await;
        relay(ws, targets, &namespace, &pod_name).await;
    });
    Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header(UPGRADE, "websocket")
        .header(CONNECTION, "Upgrade")
        .header(SEC_WEBSOCKET_ACCEPT, derive_accept_key(ws_key.as_bytes()))
        .header(SEC_WEBSOCKET_PROTOCOL, PROTOCOL)
        .body(Full::new(Bytes::new()))
        .expect("a valid response")
}

async fn relay<S>(
    ws: WebSocketStream<S>,
    targets: Vec<(u16, Option<SocketAddr>)>,
    namespace: &str,
    pod: &str,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut sink, mut stream) = ws.split();
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Message>(64);
    let writer = tokio::spawn(async move {
        while let Some(message) = rx.recv().await {
            let close = matches!(message, Message::Close(_));
            if sink.send(message).await.is_err() || close {
                break;
            }
        }
        let _ = sink.close().await;
    });
    let frame = |channel: u8, bytes: &[u8]| {
        let mut out = Vec::with_capacity(bytes.len() + 1);
        out.push(channel);
        out.extend_from_slice(bytes);
        Message::binary(out)
    };
    let mut writers = Vec::new();
    let mut open = 0;
    for (i, (port, addr)) in targets.iter().enumerate() {
        let (data, error) = (2 * i as u8, 2 * i as u8 + 1);
        let _ = tx.send(frame(data, &port.to_le_bytes())).await;
        let _ = tx.send(frame(error, &port.to_le_bytes())).await;
        let connected = match addr {
            Some(addr) => TcpStream::connect(addr).await.map_err(|e| e.to_string()),
            None => Err("connection refused (no backend registered for this port)".into()),
        };
        match connected {
            Ok(stream) => {
                let _ = stream.set_nodelay(true);
                let (mut read, write) = stream.into_split();
                writers.push(Some(write));
                open += 1;
                let tx = tx.clone();
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 32 * 1024];
                    loop {
                        match read.read(&mut buf).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => {
                                if tx.send(frame(data, &buf[..n])).await.is_err() {
                                    return;
                                }
                            }
                        }
                    }
                    // v4 cannot close one stream: the pod's side ending
                    // ends the connection, as the kubelet does.
                    let _ = tx.send(Message::Close(None)).await;
                });
            }
            Err(reason) => {
                writers.push(None);
                let text = format!(
                    "error forwarding port {port} to pod {namespace}/{pod}: failed to connect to localhost:{port} inside the pod: {reason}"
                );
                let _ = tx.send(frame(error, text.as_bytes())).await;
            }
        }
    }
    if open == 0 {
        let _ = tx.send(Message::Close(None)).await;
    }
    while let Some(Ok(message)) = stream.next().await {
        match message {
            Message::Binary(bytes) if bytes.len() > 1 => {
                let channel = bytes[0] as usize;
                if channel % 2 == 1 {
                    continue;
                }
                if let Some(Some(w)) = writers.get_mut(channel / 2)
                    && w.write_all(&bytes[1..]).await.is_err()
                {
                    break;
                }
            }
            Message::Close(_) => break,
            _ => {}
        }
    }
    drop(writers);
    drop(tx);
    let _ = writer.await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_come_comma_separated_or_repeated() {
        assert_eq!(requested_ports("ports=80%2C1234"), Ok(vec![80, 1234]));
        assert_eq!(requested_ports("&ports=80&ports=81"), Ok(vec![80, 81]));
        assert!(requested_ports("ports=x").is_err());
        assert!(requested_ports("").is_err());
    }

    #[test]
    fn a_backend_picks_the_address_by_the_pods_ordinal_and_image() {
        let b = Backend {
            namespace: "ns".into(),
            pod_prefix: "agent-".into(),
            image: Some(":2.0".into()),
            port: 8080,
            addrs: vec![
                "127.0.0.1:1".parse().unwrap(),
                "127.0.0.1:2".parse().unwrap(),
            ],
        };
        let pod = |name: &str, image: &str| json!({"metadata": {"name": name}, "spec": {"containers": [{"image": image}]}});
        let at = |p: &Value| b.address_for("ns", p, 8080).map(|a| a.port());
        assert_eq!(at(&pod("agent-abcde-1", "a:2.0")), Some(2));
        assert_eq!(at(&pod("agent-abcde-2", "a:2.0")), Some(1));
        assert_eq!(at(&pod("agent-abcde-1", "a:1.0")), None);
        assert_eq!(at(&pod("other-0", "a:2.0")), None);
        assert_eq!(b.address_for("ns", &pod("agent-x-0", "a:2.0"), 9090), None);
    }
}
