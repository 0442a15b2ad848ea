//! **kube-double**: a test double of the Kubernetes API server, small and
//! named as such. No real API server can run on the machines taskctl is
//! built and tested on, so the Kubernetes provider's apply, wait, prune,
//! release and lock flows run against this instead.
//!
//! What it serves (JSON over HTTP/1.1 on loopback; plain HTTP, or HTTPS with
//! a certificate the test made, `Config::tls`; no authorization, but bearer
//! tokens can expire, `Config::token_ttl`):
//! - the resource paths of core (`/api/v1/...`) and named groups
//!   (`/apis/<group>/<version>/...`), namespaced and cluster-scoped, for any
//!   plural: GET of an object, LIST with an equality `labelSelector`
//!   (`k=v,k2=v2`, `k`, `!k`), POST (create; 409 `AlreadyExists`), PUT
//!   (replace; 409 `Conflict` on a stale `metadata.resourceVersion`), DELETE
//!   (a namespace takes what is in it along; a workload takes its pods);
//! - **server-side apply**: PATCH with `application/apply-patch+yaml`,
//!   `fieldManager` required, `force=true` honoured. It creates or merges;
//!   field ownership is tracked per manager at leaf granularity (objects
//!   recurse, lists are atomic, as for lists without merge keys); applying a
//!   field another manager owns with a different value is a 409 naming the
//!   manager and the fields, as the real server words it; fields a manager
//!   stops applying are removed when nobody else owns them. `resourceVersion`
//!   bumps on every change, `generation` on changes outside metadata and
//!   status. `metadata.managedFields` is served in the `FieldsV1` format;
//! - a namespaced object can only be created in an existing Namespace, so
//!   apply order is really checked; it starts with the namespaces every
//!   cluster has (`default`, `kube-system`, `kube-public`, `kube-node-lease`);
//! - **simulated controllers**, `ready_delay` after a change: Deployments,
//!   StatefulSets and DaemonSets get the status a real controller writes
//!   (observedGeneration, replicas, ready/updated/available counts,
//!   revisions) and one Pod per replica labelled from the pod template, with
//!   an `imageID` pinned by a digest (sha256 of the image reference); unless
//!   the template's image contains `crashloop`: then the pods are in
//!   `CrashLoopBackOff` and the workload never becomes available; or
//!   contains `oomkilled`: then the pods are ready but each container has
//!   restarted 5 times, last `OOMKilled` (what `resource_exhaustion`
//!   watches). Jobs
//!   complete (or fail with `BackoffLimitExceeded` for a `crashloop` image).
//!   PersistentVolumeClaims are `Bound` at once. With
//!   [`Config::probe_readiness`], a container whose `httpGet` readiness
//!   probe targets a port a test serves is ready only while that process
//!   answers it (`kubelet.rs`);
//! - the `portforward` subresource of pods over WebSocket
//!   (`v4.channel.k8s.io`), relaying to the real process a test registered
//!   for that pod and port with [`KubeDouble::serve`] (see `forward.rs`);
//!   simulated pods carry a `status.podIP` (10.244.x.y, stable per name);
//! - a log of every request (method, path, query, content type), so tests
//!   can count the PATCHes a deploy made.
//!
//! `/version` answers `v1.37.0-kube-double`.
//!
//! What it does NOT model: discovery (`/api`, `/apis`: clients must know
//! their resources), admission and validation (any object is stored as
//! sent; schema checking is `taskctl_kube::check`'s job), defaulting, real
//! scheduling, nodes and kubelets, watches, strategic-merge and JSON
//! patches, list merge keys in apply, subresources other than pods'
//! `portforward`, authentication and
//! RBAC, finalizers and garbage collection beyond the two cases above,
//! pagination, and field selectors.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

mod controllers;
mod fields;
mod forward;
mod kubelet;
mod routes;
pub use forward::Backend;
mod store;
use controllers::*;
use fields::*;
use routes::*;
use store::*;

/// How the double behaves.
#[derive(Debug, Clone)]
pub struct Config {
    /// How long after a change the simulated controllers act.
    pub ready_delay: Duration,
    /// Nodes a DaemonSet schedules a pod on.
    pub nodes: i64,
    /// Added before every answer, to stand for the round trip to a remote
    /// API server (benchmarks); zero in tests.
    pub latency: Duration,
    /// Run the pods' `httpGet` readiness probes against the processes
    /// registered with [`KubeDouble::serve`] (see `kubelet.rs`); off: every
    /// pod that does not crash is ready.
    pub probe_readiness: bool,
    /// Serve HTTPS with this identity instead of plain HTTP, so a client's
    /// CA and server-name checks run (a tunnel to an EKS endpoint).
    pub tls: Option<TlsIdentity>,
    /// Refuse (401 `Unauthorized`, as the real server does) a bearer token
    /// first seen longer ago than this: EKS tokens stop working after 15
    /// minutes, so a client must renew them (`None`: tokens never expire).
    pub token_ttl: Option<Duration>,
}

/// A certificate chain and its key, PEM, for [`Config::tls`].
#[derive(Debug, Clone)]
pub struct TlsIdentity {
    pub cert_pem: String,
    pub key_pem: String,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            ready_delay: Duration::from_millis(50),
            nodes: 3,
            latency: Duration::ZERO,
            probe_readiness: false,
            tls: None,
            token_ttl: None,
        }
    }
}

fn tls_acceptor(tls: &TlsIdentity) -> std::io::Result<tokio_rustls::TlsAcceptor> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let bad = |e: &dyn std::fmt::Display| std::io::Error::other(format!("TLS identity: {e}"));
    let certs = CertificateDer::pem_slice_iter(tls.cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(&e))?;
    let key = PrivateKeyDer::from_pem_slice(tls.key_pem.as_bytes()).map_err(|e| bad(&e))?;
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| bad(&e))?
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .map_err(|e| bad(&e))?;
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

/// Serves one connection (plain or TLS).
async fn serve_connection<S>(stream: S, shared: Arc<Shared>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service = service_fn(move |req| {
        let shared = shared.clone();
        async move { Ok::<_, std::convert::Infallible>(handle(shared, req).await) }
    });
    // A client hanging up mid-request is not the double's problem.
    let _ = http1::Builder::new()
        .serve_connection(TokioIo::new(stream), service)
        .with_upgrades()
        .await;
}

/// One request the double served.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestRecord {
    pub method: String,
    pub path: String,
    pub query: String,
    pub content_type: Option<String>,
    /// The `Authorization` header as sent (a test double may keep it: tests
    /// check what kind of credential reached the API server).
    pub authorization: Option<String>,
}

/// Where an object lives: `api/v1` or `apis/<group>/<version>`, the plural,
/// the namespace and the name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Key {
    prefix: String,
    plural: String,
    namespace: Option<String>,
    name: String,
}

impl Key {
    fn path(&self) -> String {
        match &self.namespace {
            Some(ns) => format!(
                "/{}/namespaces/{ns}/{}/{}",
                self.prefix, self.plural, self.name
            ),
            None => format!("/{}/{}/{}", self.prefix, self.plural, self.name),
        }
    }
}

type Path = Vec<String>;

struct Stored {
    value: Value,
    /// Manager → the leaf paths it owns.
    managed: BTreeMap<String, BTreeSet<Path>>,
    /// The workload that made it (simulated pods), for cascading deletes.
    owner: Option<Key>,
}

#[derive(Default)]
struct State {
    objects: BTreeMap<Key, Stored>,
    resource_version: u64,
    requests: Vec<RequestRecord>,
    /// Where pods' ports really listen (`portforward`).
    backends: Vec<Backend>,
    /// When each bearer token was first seen ([`Config::token_ttl`]).
    tokens: BTreeMap<String, std::time::Instant>,
}

struct Shared {
    config: Config,
    state: Mutex<State>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock is a bug of the double; the state
        // is still the last consistent one, so keep serving.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A running double, serving until dropped.
pub struct KubeDouble {
    addr: SocketAddr,
    shared: Arc<Shared>,
    server: JoinHandle<()>,
    kubelet: Option<JoinHandle<()>>,
}

impl Drop for KubeDouble {
    fn drop(&mut self) {
        self.server.abort();
        if let Some(k) = &self.kubelet {
            k.abort();
        }
    }
}

impl KubeDouble {
    /// Starts on a random loopback port.
    pub async fn start(config: Config) -> std::io::Result<KubeDouble> {
        Self::bind("127.0.0.1:0".parse().expect("a socket address"), config).await
    }

    /// Starts on `addr`.
    pub async fn bind(addr: SocketAddr, config: Config) -> std::io::Result<KubeDouble> {
        let acceptor = config.tls.as_ref().map(tls_acceptor).transpose()?;
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let mut state = State::default();
        // What every fresh cluster has.
        for name in ["default", "kube-system", "kube-public", "kube-node-lease"] {
            let key = Key {
                prefix: "api/v1".into(),
                plural: "namespaces".into(),
                namespace: None,
                name: name.into(),
            };
            let mut value = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}, "status": {"phase": "Active"}});
            let managed = BTreeMap::new();
            stamp(&mut state, &mut value, &managed, false);
            state.objects.insert(
                key,
                Stored {
                    value,
                    managed,
                    owner: None,
                },
            );
        }
        let shared = Arc::new(Shared {
            config,
            state: Mutex::new(state),
        });
        let for_server = shared.clone();
        let kubelet = shared
            .config
            .probe_readiness
            .then(|| tokio::spawn(kubelet::run(shared.clone())));
        let server = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                // Small frames (port-forward relays) must not wait for
                // Nagle's algorithm against the client's delayed ACK.
                let _ = stream.set_nodelay(true);
                let shared = for_server.clone();
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    match acceptor {
                        // A client that refuses the certificate hangs up
                        // in the handshake: nothing to serve.
                        Some(acceptor) => {
                            if let Ok(tls) = acceptor.accept(stream).await {
                                serve_connection(tls, shared).await;
                            }
                        }
                        None => serve_connection(stream, shared).await,
                    }
                });
            }
        });
        Ok(KubeDouble {
            addr,
            shared,
            server,
            kubelet,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT` (`https://` with [`Config::tls`]).
    pub fn url(&self) -> String {
        let scheme = if self.shared.config.tls.is_some() {
            "https"
        } else {
            "http"
        };
        format!("{scheme}://{}", self.addr)
    }

    /// A kubeconfig with one context, `double`, pointing at this server.
    pub fn kubeconfig(&self) -> String {
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: double\n  cluster:\n    server: {}\ncontexts:\n- name: double\n  context:\n    cluster: double\n    user: double\n    namespace: default\ncurrent-context: double\nusers:\n- name: double\n  user: {{}}\n",
            self.url()
        )
    }

    /// Every request served so far, oldest first.
    pub fn requests(&self) -> Vec<RequestRecord> {
        self.shared.lock().requests.clone()
    }

    /// Makes a port of some pods reachable through `portforward`: the
    /// double runs no containers, so a test says which real process on
    /// loopback stands for the pod. Later registrations win over earlier
    /// ones for the same pod and port (a new version's pods, say).
    pub fn serve(&self, backend: Backend) {
        self.shared.lock().backends.push(backend);
    }

    pub fn clear_requests(&self) {
        self.shared.lock().requests.clear();
    }

    /// The object at an API path (`/apis/apps/v1/namespaces/x/deployments/y`).
    pub fn object(&self, path: &str) -> Option<Value> {
        let key = match parse_path(path)? {
            Target::Object(k) => k,
            _ => return None,
        };
        self.shared
            .lock()
            .objects
            .get(&key)
            .map(|o| o.value.clone())
    }

    /// The API paths of every stored object, sorted.
    pub fn paths(&self) -> Vec<String> {
        self.shared.lock().objects.keys().map(Key::path).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selectors_match_as_the_api_server_does() {
        let labels = json!({"a": "1", "b": "2"});
        assert!(matches_selector(Some(&labels), "a=1,b==2"));
        assert!(!matches_selector(Some(&labels), "a=2"));
        assert!(matches_selector(Some(&labels), "a!=2,!c,b"));
        assert!(!matches_selector(None, "a"));
    }

    #[test]
    fn query_values_are_decoded() {
        assert_eq!(
            decode("taskctl.dev%2Fenvironment%3Dx.y"),
            "taskctl.dev/environment=x.y"
        );
        assert_eq!(decode("100%"), "100%");
    }

    #[test]
    fn paths_name_core_and_group_objects() {
        let Some(Target::Object(k)) = parse_path("/apis/apps/v1/namespaces/a/deployments/b") else {
            panic!("an object path");
        };
        assert_eq!(
            (k.prefix.as_str(), k.namespace.as_deref(), k.name.as_str()),
            ("apis/apps/v1", Some("a"), "b")
        );
        assert!(
            matches!(parse_path("/api/v1/namespaces/x"), Some(Target::Object(k)) if k.plural == "namespaces")
        );
        assert!(matches!(
            parse_path("/api/v1/namespaces"),
            Some(Target::Collection { .. })
        ));
        assert!(parse_path("/healthz").is_none());
    }
}
