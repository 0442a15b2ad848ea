//! Ports of pods reached through the API server, as `kubectl port-forward`
//! reaches them: a listener on loopback whose every connection opens its own
//! `portforward` stream to the pod (a WebSocket to the API server, which the
//! kubelet relays). No network path from the operator's machine to the pod
//! network is needed, only the API server that every other call uses.
//!
//! The gates and the automatic-rollback conditions then talk to the
//! in-cluster agents, broker and Prometheus through these local addresses
//! with the same code the docker target uses.

use k8s_openapi::api::core::v1::Pod;
use kube::{Api, Client};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// A local address forwarding to `port` of one pod; closed when dropped.
pub struct Forward {
    addr: SocketAddr,
    target: String,
    last_error: Arc<Mutex<Option<String>>>,
    task: JoinHandle<()>,
}

impl Drop for Forward {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl std::fmt::Debug for Forward {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} -> {}", self.addr, self.target)
    }
}

impl Forward {
    /// Listens on a free loopback port; each connection to it reaches
    /// `namespace/pod:port` through the API server.
    pub async fn open(
        client: &Client,
        namespace: &str,
        pod: &str,
        port: u16,
    ) -> std::io::Result<Forward> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let target = format!("pod {namespace}/{pod}:{port}");
        let last_error = Arc::new(Mutex::new(None));
        let api: Api<Pod> = Api::namespaced(client.clone(), namespace);
        let (pod, errors, shown) = (pod.to_string(), last_error.clone(), target.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut local, _)) = listener.accept().await else {
                    // Out of file descriptors, say: do not spin on it.
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                };
                // Requests and answers are small: no Nagle delay on them.
                let _ = local.set_nodelay(true);
                let (api, pod, errors, shown) =
                    (api.clone(), pod.clone(), errors.clone(), shown.clone());
                tokio::spawn(async move {
                    let record = |e: String| {
                        tracing::debug!(target = %shown, error = %e, "port-forward");
                        *errors.lock().unwrap_or_else(|p| p.into_inner()) = Some(e);
                    };
                    let mut forwarder = match api.portforward(&pod, &[port]).await {
                        Ok(f) => f,
                        Err(e) => return record(format!("{shown}: {e}")),
                    };
                    let (Some(mut remote), Some(error)) =
                        (forwarder.take_stream(port), forwarder.take_error(port))
                    else {
                        return;
                    };
                    let pump = tokio::io::copy_bidirectional(&mut local, &mut remote);
                    tokio::select! {
                        _ = pump => {}
                        Some(e) = error => record(e),
                    }
                    drop(remote);
                    forwarder.abort();
                });
            }
        });
        Ok(Forward {
            addr,
            target,
            last_error,
            task,
        })
    }

    /// `127.0.0.1:PORT`.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// What the API server or the kubelet last refused, if anything:
    /// "error forwarding port 8080 to pod …: connection refused".
    pub fn last_error(&self) -> Option<String> {
        self.last_error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}
