//! What reaching a pod through the API server costs the gates: HTTP
//! requests to a server on loopback made directly and through a
//! [`taskctl_kube::forward::Forward`] (a port-forward over kube-double's
//! `portforward` subresource), in the same run, so the ratio holds on a
//! noisy machine.
//! `cargo run --release -p taskctl-kube --example forward_bench -- [REQUESTS] [LATENCY_MS]`
//! (used by `bench/forward.sh`). LATENCY_MS is added by the double to each
//! answer of the API server (the WebSocket upgrade), standing for the round
//! trip to a remote one; the relayed bytes are not delayed.
//!
//! Two shapes: one connection kept alive for every request (what a gate's
//! retries and a condition's polls do: one forward stream, reused), and a
//! new connection per request (each opens its own stream: an upgrade
//! through the API server first).

use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const RESPONSE: &[u8] =
    b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 15\r\n\r\n{\"ready\":true}\n";

/// Answers every request on every connection with [`RESPONSE`].
async fn backend() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let mut seen = Vec::new();
                loop {
                    let n = match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => n,
                    };
                    seen.extend_from_slice(&buf[..n]);
                    while let Some(end) = seen.windows(4).position(|w| w == b"\r\n\r\n") {
                        seen.drain(..end + 4);
                        if stream.write_all(RESPONSE).await.is_err() {
                            return;
                        }
                    }
                }
            });
        }
    });
    addr
}

/// One request on `stream`, read to the end of the body.
async fn request(stream: &mut TcpStream) {
    stream
        .write_all(b"GET /ready HTTP/1.1\r\nhost: pod\r\n\r\n")
        .await
        .unwrap();
    let mut got = 0;
    let mut buf = [0u8; 512];
    while got < RESPONSE.len() {
        let n = stream.read(&mut buf).await.unwrap();
        assert!(n > 0, "the connection closed mid-answer");
        got += n;
    }
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn p90(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() * 9 / 10]
}

async fn kept_alive(addr: SocketAddr, n: usize) -> Vec<Duration> {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    request(&mut stream).await; // the stream is open before timing
    let mut times = Vec::with_capacity(n);
    for _ in 0..n {
        let start = Instant::now();
        request(&mut stream).await;
        times.push(start.elapsed());
    }
    times
}

async fn fresh(addr: SocketAddr, n: usize) -> Vec<Duration> {
    let mut times = Vec::with_capacity(n);
    for _ in 0..n {
        let start = Instant::now();
        let mut stream = TcpStream::connect(addr).await.unwrap();
        request(&mut stream).await;
        times.push(start.elapsed());
    }
    times
}

fn row(shape: &str, direct: &[Duration], forwarded: &[Duration]) {
    let (d, f) = (median(direct.to_vec()), median(forwarded.to_vec()));
    println!(
        "{shape:<26} direct median {:>8.3} ms p90 {:>8.3} ms | forwarded median {:>8.3} ms p90 {:>8.3} ms | ratio {:.1}x",
        d.as_secs_f64() * 1e3,
        p90(direct.to_vec()).as_secs_f64() * 1e3,
        f.as_secs_f64() * 1e3,
        p90(forwarded.to_vec()).as_secs_f64() * 1e3,
        f.as_secs_f64() / d.as_secs_f64().max(1e-9),
    );
}

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let n: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(500);
    let latency_ms: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(0);
    let _ = rustls::crypto::ring::default_provider().install_default();
    let double = kube_double::KubeDouble::start(kube_double::Config {
        ready_delay: Duration::from_millis(1),
        latency: Duration::from_millis(latency_ms),
        ..Default::default()
    })
    .await
    .unwrap();
    let server = backend().await;
    // One Deployment's pod to forward to.
    let kubeconfig = std::env::temp_dir().join(format!("forward-bench-{}", std::process::id()));
    std::fs::write(&kubeconfig, double.kubeconfig()).unwrap();
    let client = taskctl_kube::cluster::client_from_kubeconfig(Some(&kubeconfig), None)
        .await
        .unwrap();
    let _ = std::fs::remove_file(&kubeconfig);
    let deployments: kube::Api<k8s_openapi::api::apps::v1::Deployment> =
        kube::Api::namespaced(client.clone(), "default");
    let deployment = serde_json::from_value(serde_json::json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "bench"},
        "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "bench"}},
                 "template": {"metadata": {"labels": {"app": "bench"}},
                              "spec": {"containers": [{"name": "c", "image": "bench:1"}]}}},
    }))
    .unwrap();
    deployments
        .create(&Default::default(), &deployment)
        .await
        .unwrap();
    let pod = loop {
        let pods = double.paths();
        if let Some(p) = pods
            .iter()
            .find(|p| p.starts_with("/api/v1/namespaces/default/pods/bench-"))
        {
            break p.rsplit('/').next().unwrap().to_string();
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    double.serve(kube_double::Backend {
        namespace: "default".into(),
        pod_prefix: "bench-".into(),
        image: None,
        port: 8080,
        addrs: vec![server],
    });
    let forward = taskctl_kube::forward::Forward::open(&client, "default", &pod, 8080)
        .await
        .unwrap();

    println!("{n} requests each, API server latency {latency_ms} ms (release build)");
    let direct = kept_alive(server, n).await;
    let forwarded = kept_alive(forward.addr(), n).await;
    row("one connection, kept", &direct, &forwarded);
    let m = n.min(200);
    let direct = fresh(server, m).await;
    let forwarded = fresh(forward.addr(), m).await;
    row("a connection per request", &direct, &forwarded);
}
