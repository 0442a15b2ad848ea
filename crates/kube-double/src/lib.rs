//! **kube-double**: a test double of the Kubernetes API server, small and
//! named as such. No real API server can run on the machines taskctl is
//! built and tested on, so the Kubernetes provider's apply, wait, prune,
//! release and lock flows run against this instead.
//!
//! What it serves (JSON over HTTP/1.1 on loopback, no TLS, no auth):
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
//!   PersistentVolumeClaims are `Bound` at once;
//! - a log of every request (method, path, query, content type), so tests
//!   can count the PATCHes a deploy made.
//!
//! `/version` answers `v1.37.0-kube-double`.
//!
//! What it does NOT model: discovery (`/api`, `/apis`: clients must know
//! their resources), admission and validation (any object is stored as
//! sent; schema checking is `taskctl_kube::check`'s job), defaulting, real
//! scheduling, nodes and kubelets, watches, strategic-merge and JSON
//! patches, list merge keys in apply, subresources, authentication and
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
}

impl Default for Config {
    fn default() -> Self {
        Config {
            ready_delay: Duration::from_millis(50),
            nodes: 3,
            latency: Duration::ZERO,
        }
    }
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
}

impl Drop for KubeDouble {
    fn drop(&mut self) {
        self.server.abort();
    }
}

impl KubeDouble {
    /// Starts on a random loopback port.
    pub async fn start(config: Config) -> std::io::Result<KubeDouble> {
        Self::bind("127.0.0.1:0".parse().expect("a socket address"), config).await
    }

    /// Starts on `addr`.
    pub async fn bind(addr: SocketAddr, config: Config) -> std::io::Result<KubeDouble> {
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
        let server = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let shared = for_server.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req| {
                        let shared = shared.clone();
                        async move { Ok::<_, std::convert::Infallible>(handle(shared, req).await) }
                    });
                    // A client hanging up mid-request is not the double's problem.
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Ok(KubeDouble {
            addr,
            shared,
            server,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
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

enum Target {
    Object(Key),
    Collection {
        prefix: String,
        plural: String,
        namespace: Option<String>,
    },
}

fn parse_path(path: &str) -> Option<Target> {
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (prefix, rest) = match segments.as_slice() {
        ["api", v, rest @ ..] => (format!("api/{v}"), rest),
        ["apis", g, v, rest @ ..] => (format!("apis/{g}/{v}"), rest),
        _ => return None,
    };
    let s = |x: &&str| x.to_string();
    Some(match rest {
        ["namespaces"] => Target::Collection {
            prefix,
            plural: "namespaces".into(),
            namespace: None,
        },
        ["namespaces", name] => Target::Object(Key {
            prefix,
            plural: "namespaces".into(),
            namespace: None,
            name: s(name),
        }),
        ["namespaces", ns, plural] => Target::Collection {
            prefix,
            plural: s(plural),
            namespace: Some(s(ns)),
        },
        ["namespaces", ns, plural, name] => Target::Object(Key {
            prefix,
            plural: s(plural),
            namespace: Some(s(ns)),
            name: s(name),
        }),
        [plural] => Target::Collection {
            prefix,
            plural: s(plural),
            namespace: None,
        },
        [plural, name] => Target::Object(Key {
            prefix,
            plural: s(plural),
            namespace: None,
            name: s(name),
        }),
        _ => return None,
    })
}

type Reply = Response<Full<Bytes>>;

fn reply(code: StatusCode, body: &Value) -> Reply {
    Response::builder()
        .status(code)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .expect("a valid response")
}

/// A `Status` answer, as the real server writes it.
fn status(code: StatusCode, reason: &str, message: impl Into<String>) -> Reply {
    reply(
        code,
        &json!({
            "kind": "Status", "apiVersion": "v1", "metadata": {},
            "status": "Failure", "message": message.into(), "reason": reason,
            "code": code.as_u16(),
        }),
    )
}

fn query_param<'a>(query: &'a str, name: &str) -> Option<&'a str> {
    query
        .split('&')
        .filter_map(|kv| kv.split_once('=').or(Some((kv, ""))))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// Percent-decoding of a query value (label selectors arrive encoded).
fn decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok();
                match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(b) => {
                        out.push(b);
                        i += 3;
                    }
                    None => {
                        out.push(b'%');
                        i += 1;
                    }
                }
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

async fn handle(shared: Arc<Shared>, req: Request<Incoming>) -> Reply {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let query = req.uri().query().unwrap_or_default().to_string();
    let content_type = req
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let authorization = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    shared.lock().requests.push(RequestRecord {
        method: method.to_string(),
        path: path.clone(),
        query: query.clone(),
        content_type: content_type.clone(),
        authorization,
    });
    if !shared.config.latency.is_zero() {
        tokio::time::sleep(shared.config.latency).await;
    }
    let body = match req.into_body().collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => return status(StatusCode::BAD_REQUEST, "BadRequest", e.to_string()),
    };
    if path == "/version" {
        return reply(
            StatusCode::OK,
            &json!({"major": "1", "minor": "37", "gitVersion": "v1.37.0-kube-double", "platform": "linux/amd64"}),
        );
    }
    let Some(target) = parse_path(&path) else {
        return status(
            StatusCode::NOT_FOUND,
            "NotFound",
            format!("the double serves no {path} (no discovery; see kube-double's docs)"),
        );
    };
    match (method, target) {
        (Method::GET, Target::Object(key)) => get(&shared, &key),
        (
            Method::GET,
            Target::Collection {
                prefix,
                plural,
                namespace,
            },
        ) => {
            let selector = query_param(&query, "labelSelector").map(decode);
            list(
                &shared,
                &prefix,
                &plural,
                namespace.as_deref(),
                selector.as_deref(),
            )
        }
        (
            Method::POST,
            Target::Collection {
                prefix,
                plural,
                namespace,
            },
        ) => {
            let Some(body) = parse_body(&body, content_type.as_deref()) else {
                return status(
                    StatusCode::BAD_REQUEST,
                    "BadRequest",
                    "the body is not a JSON object",
                );
            };
            let manager = query_param(&query, "fieldManager")
                .map(decode)
                .unwrap_or_else(|| "unknown".into());
            create(&shared, prefix, plural, namespace, body, &manager)
        }
        (Method::PUT, Target::Object(key)) => {
            let Some(body) = parse_body(&body, content_type.as_deref()) else {
                return status(
                    StatusCode::BAD_REQUEST,
                    "BadRequest",
                    "the body is not a JSON object",
                );
            };
            let manager = query_param(&query, "fieldManager")
                .map(decode)
                .unwrap_or_else(|| "unknown".into());
            replace(&shared, &key, body, &manager)
        }
        (Method::PATCH, Target::Object(key)) => {
            if content_type.as_deref() != Some("application/apply-patch+yaml") {
                return status(
                    StatusCode::UNSUPPORTED_MEDIA_TYPE,
                    "UnsupportedMediaType",
                    format!(
                        "the double only serves server-side apply patches, not {}",
                        content_type.unwrap_or_default()
                    ),
                );
            }
            let Some(manager) = query_param(&query, "fieldManager").map(decode) else {
                return status(
                    StatusCode::BAD_REQUEST,
                    "BadRequest",
                    "PATCH with apply requires fieldManager",
                );
            };
            let force = query_param(&query, "force") == Some("true");
            let Some(body) = parse_body(&body, content_type.as_deref()) else {
                return status(
                    StatusCode::BAD_REQUEST,
                    "BadRequest",
                    "the apply patch is not a YAML object",
                );
            };
            apply(&shared, key, body, &manager, force)
        }
        (Method::DELETE, Target::Object(key)) => delete(&shared, &key),
        (m, _) => status(
            StatusCode::METHOD_NOT_ALLOWED,
            "MethodNotAllowed",
            format!("{m} is not served on {path}"),
        ),
    }
}

fn parse_body(body: &[u8], content_type: Option<&str>) -> Option<Map<String, Value>> {
    let value: Value = if content_type.is_some_and(|c| c.contains("yaml")) {
        serde_norway::from_slice(body).ok()?
    } else {
        serde_json::from_slice(body).ok()?
    };
    match value {
        Value::Object(m) => Some(m),
        _ => None,
    }
}

fn get(shared: &Shared, key: &Key) -> Reply {
    match shared.lock().objects.get(key) {
        Some(o) => reply(StatusCode::OK, &o.value),
        None => not_found(key),
    }
}

fn not_found(key: &Key) -> Reply {
    status(
        StatusCode::NOT_FOUND,
        "NotFound",
        format!("{} \"{}\" not found", key.plural, key.name),
    )
}

/// Equality-based selectors: `k=v`, `k==v`, `k!=v`, `k`, `!k`.
fn matches_selector(labels: Option<&Value>, selector: &str) -> bool {
    let get = |k: &str| labels.and_then(|l| l.get(k)).and_then(Value::as_str);
    selector
        .split(',')
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .all(|term| {
            if let Some((k, v)) = term.split_once("!=") {
                get(k.trim()) != Some(v.trim())
            } else if let Some((k, v)) = term.split_once("==").or_else(|| term.split_once('=')) {
                get(k.trim()) == Some(v.trim())
            } else if let Some(k) = term.strip_prefix('!') {
                get(k.trim()).is_none()
            } else {
                get(term).is_some()
            }
        })
}

fn list(
    shared: &Shared,
    prefix: &str,
    plural: &str,
    namespace: Option<&str>,
    selector: Option<&str>,
) -> Reply {
    let state = shared.lock();
    let items: Vec<Value> = state
        .objects
        .iter()
        .filter(|(k, _)| k.prefix == prefix && k.plural == plural)
        .filter(|(k, _)| namespace.is_none() || k.namespace.as_deref() == namespace)
        .filter(|(_, o)| {
            selector.is_none_or(|s| matches_selector(o.value.pointer("/metadata/labels"), s))
        })
        .map(|(_, o)| o.value.clone())
        .collect();
    let api_version = prefix
        .trim_start_matches("api/")
        .trim_start_matches("apis/");
    reply(
        StatusCode::OK,
        &json!({
            "apiVersion": api_version, "kind": "List",
            "metadata": {"resourceVersion": state.resource_version.to_string()},
            "items": items,
        }),
    )
}

fn now() -> String {
    humantime::format_rfc3339_seconds(SystemTime::now()).to_string()
}

/// Checks that the body names the object the path does, and that its
/// namespace exists. The error is the answer to send (an error path, where
/// the size of a `Response` does not matter).
#[allow(clippy::result_large_err)]
fn check_target(state: &State, key: &Key, body: &Map<String, Value>) -> Result<(), Reply> {
    let meta = body.get("metadata").and_then(Value::as_object);
    let name = meta.and_then(|m| m.get("name")).and_then(Value::as_str);
    if name.is_some_and(|n| n != key.name) {
        return Err(status(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            format!(
                "the name of the object ({}) does not match the name on the URL ({})",
                name.unwrap_or_default(),
                key.name
            ),
        ));
    }
    if let Some(ns) = &key.namespace {
        let body_ns = meta
            .and_then(|m| m.get("namespace"))
            .and_then(Value::as_str);
        if body_ns.is_some_and(|b| b != ns) {
            return Err(status(
                StatusCode::BAD_REQUEST,
                "BadRequest",
                "the namespace of the object does not match the namespace on the URL",
            ));
        }
        let ns_key = Key {
            prefix: "api/v1".into(),
            plural: "namespaces".into(),
            namespace: None,
            name: ns.clone(),
        };
        if !state.objects.contains_key(&ns_key) {
            return Err(status(
                StatusCode::NOT_FOUND,
                "NotFound",
                format!("namespaces \"{ns}\" not found"),
            ));
        }
    }
    Ok(())
}

/// Fields the server owns: identity, bookkeeping and status.
fn server_owned(path: &[String]) -> bool {
    match path.first().map(String::as_str) {
        Some("apiVersion" | "kind" | "status") => true,
        Some("metadata") => matches!(
            path.get(1).map(String::as_str),
            Some(
                "name"
                    | "namespace"
                    | "uid"
                    | "resourceVersion"
                    | "generation"
                    | "creationTimestamp"
                    | "managedFields"
                    | "selfLink"
                    | "deletionTimestamp"
            )
        ),
        _ => false,
    }
}

/// Leaf paths of a value: objects recurse, lists and scalars are leaves.
fn leaves(value: &Value) -> BTreeMap<Path, Value> {
    fn walk(v: &Value, path: &mut Path, out: &mut BTreeMap<Path, Value>) {
        match v {
            Value::Object(m) if !m.is_empty() => {
                for (k, child) in m {
                    path.push(k.clone());
                    walk(child, path, out);
                    path.pop();
                }
            }
            _ => {
                if !path.is_empty() {
                    out.insert(path.clone(), v.clone());
                }
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(value, &mut Vec::new(), &mut out);
    out.retain(|p, _| !server_owned(p));
    out
}

fn get_path<'a>(v: &'a Value, path: &[String]) -> Option<&'a Value> {
    path.iter().try_fold(v, |v, k| v.get(k))
}

fn set_path(v: &mut Value, path: &[String], value: Value) {
    let mut cur = v;
    for k in &path[..path.len() - 1] {
        if !cur.get(k).is_some_and(Value::is_object) {
            cur[k.as_str()] = Value::Object(Map::new());
        }
        cur = &mut cur[k.as_str()];
    }
    cur[path[path.len() - 1].as_str()] = value;
}

fn remove_path(v: &mut Value, path: &[String]) {
    let Some((last, parents)) = path.split_last() else {
        return;
    };
    let Some(parent) = parents
        .iter()
        .try_fold(&mut *v, |v, k| v.get_mut(k.as_str()))
        .and_then(Value::as_object_mut)
    else {
        return;
    };
    parent.remove(last);
    // Drop parents left empty, as apply does.
    if parent.is_empty() && !parents.is_empty() {
        remove_path(v, parents);
    }
}

fn related(a: &[String], b: &[String]) -> bool {
    a.starts_with(b) || b.starts_with(a)
}

fn display(path: &[String]) -> String {
    path.iter().map(|p| format!(".{p}")).collect()
}

/// `metadata.managedFields` in the `FieldsV1` format.
fn managed_fields(
    api_version: &str,
    managed: &BTreeMap<String, BTreeSet<Path>>,
    time: &str,
) -> Value {
    let entries: Vec<Value> = managed
        .iter()
        .filter(|(_, paths)| !paths.is_empty())
        .map(|(manager, paths)| {
            let mut fields = json!({});
            for p in paths {
                let mut cur = &mut fields;
                for k in p {
                    cur = cur
                        .as_object_mut()
                        .expect("fields are objects")
                        .entry(format!("f:{k}"))
                        .or_insert_with(|| json!({}));
                }
            }
            json!({
                "manager": manager, "operation": "Apply", "apiVersion": api_version,
                "time": time, "fieldsType": "FieldsV1", "fieldsV1": fields,
            })
        })
        .collect();
    Value::Array(entries)
}

/// Stamps bookkeeping on a changed object; bumps generation when `spec`-like
/// content changed.
fn stamp(
    state: &mut State,
    value: &mut Value,
    managed: &BTreeMap<String, BTreeSet<Path>>,
    generation_changed: bool,
) {
    state.resource_version += 1;
    let api_version = value
        .get("apiVersion")
        .and_then(Value::as_str)
        .unwrap_or("v1")
        .to_string();
    let time = now();
    let meta = &mut value["metadata"];
    meta["resourceVersion"] = json!(state.resource_version.to_string());
    if meta.get("uid").is_none() {
        meta["uid"] = json!(format!("double-{:08}", state.resource_version));
        meta["creationTimestamp"] = json!(time);
    }
    let generation = meta.get("generation").and_then(Value::as_i64).unwrap_or(0);
    if generation == 0 || generation_changed {
        meta["generation"] = json!(generation + 1);
    }
    meta["managedFields"] = managed_fields(&api_version, managed, &time);
}

/// Content outside metadata and status: what `generation` counts.
fn spec_of(value: &Value) -> Value {
    let mut v = value.clone();
    if let Some(m) = v.as_object_mut() {
        m.remove("metadata");
        m.remove("status");
    }
    v
}

fn fill_identity(key: &Key, body: &mut Map<String, Value>) {
    let meta = body.entry("metadata").or_insert_with(|| json!({}));
    meta["name"] = json!(key.name);
    if let Some(ns) = &key.namespace {
        meta["namespace"] = json!(ns);
    }
}

fn create(
    shared: &Arc<Shared>,
    prefix: String,
    plural: String,
    namespace: Option<String>,
    mut body: Map<String, Value>,
    manager: &str,
) -> Reply {
    let Some(name) = body
        .get("metadata")
        .and_then(|m| m.get("name"))
        .and_then(Value::as_str)
        .map(str::to_string)
    else {
        return status(
            StatusCode::UNPROCESSABLE_ENTITY,
            "Invalid",
            "metadata.name is required (generateName is not served)",
        );
    };
    let key = Key {
        prefix,
        plural,
        namespace,
        name,
    };
    let mut state = shared.lock();
    if let Err(r) = check_target(&state, &key, &body) {
        return r;
    }
    if state.objects.contains_key(&key) {
        return status(
            StatusCode::CONFLICT,
            "AlreadyExists",
            format!("{} \"{}\" already exists", key.plural, key.name),
        );
    }
    fill_identity(&key, &mut body);
    let mut value = Value::Object(body);
    let managed = BTreeMap::from([(manager.to_string(), leaves(&value).into_keys().collect())]);
    stamp(&mut state, &mut value, &managed, false);
    state.objects.insert(
        key.clone(),
        Stored {
            value: value.clone(),
            managed,
            owner: None,
        },
    );
    drop(state);
    after_change(shared, &key);
    reply(StatusCode::CREATED, &value)
}

fn replace(shared: &Arc<Shared>, key: &Key, mut body: Map<String, Value>, manager: &str) -> Reply {
    let mut state = shared.lock();
    if let Err(r) = check_target(&state, key, &body) {
        return r;
    }
    let Some(old) = state.objects.get(key) else {
        return not_found(key);
    };
    let sent_rv = body
        .get("metadata")
        .and_then(|m| m.get("resourceVersion"))
        .and_then(Value::as_str);
    let live_rv = old
        .value
        .pointer("/metadata/resourceVersion")
        .and_then(Value::as_str);
    if sent_rv.is_some() && sent_rv != live_rv {
        return status(
            StatusCode::CONFLICT,
            "Conflict",
            format!(
                "Operation cannot be fulfilled on {} \"{}\": the object has been modified; please apply your changes to the latest version and try again",
                key.plural, key.name
            ),
        );
    }
    fill_identity(key, &mut body);
    let mut value = Value::Object(body);
    for field in ["uid", "creationTimestamp", "generation"] {
        if let Some(v) = old.value.pointer(&format!("/metadata/{field}")) {
            value["metadata"][field] = v.clone();
        }
    }
    if let Some(s) = old.value.get("status") {
        value["status"] = s.clone();
    }
    let changed = spec_of(&value) != spec_of(&old.value);
    let mut managed = old.managed.clone();
    managed.insert(manager.to_string(), leaves(&value).into_keys().collect());
    let owner = old.owner.clone();
    stamp(&mut state, &mut value, &managed, changed);
    state.objects.insert(
        key.clone(),
        Stored {
            value: value.clone(),
            managed,
            owner,
        },
    );
    drop(state);
    if changed {
        after_change(shared, key);
    }
    reply(StatusCode::OK, &value)
}

fn apply(
    shared: &Arc<Shared>,
    key: Key,
    mut body: Map<String, Value>,
    manager: &str,
    force: bool,
) -> Reply {
    let mut state = shared.lock();
    if let Err(r) = check_target(&state, &key, &body) {
        return r;
    }
    fill_identity(&key, &mut body);
    let applied = Value::Object(body);
    let applied_leaves = leaves(&applied);
    let Some(old) = state.objects.get(&key) else {
        let mut value = applied;
        if let Some(m) = value.as_object_mut() {
            m.remove("status");
        }
        let managed = BTreeMap::from([(manager.to_string(), applied_leaves.into_keys().collect())]);
        stamp(&mut state, &mut value, &managed, false);
        state.objects.insert(
            key.clone(),
            Stored {
                value: value.clone(),
                managed,
                owner: None,
            },
        );
        drop(state);
        after_change(shared, &key);
        return reply(StatusCode::CREATED, &value);
    };

    // Conflicts: a field another manager owns, applied with another value.
    let mut managed = old.managed.clone();
    let mut conflicts: BTreeMap<String, Vec<Path>> = BTreeMap::new();
    for (other, owned) in managed.iter().filter(|(m, _)| *m != manager) {
        for (path, value) in &applied_leaves {
            for o in owned.iter().filter(|o| related(o, path)) {
                if get_path(&old.value, path) != Some(value) {
                    conflicts.entry(other.clone()).or_default().push(o.clone());
                }
            }
        }
    }
    if !conflicts.is_empty() {
        if !force {
            let count: usize = conflicts.values().map(Vec::len).sum();
            let detail: Vec<String> = conflicts
                .iter()
                .flat_map(|(m, paths)| {
                    paths
                        .iter()
                        .map(move |p| format!("conflict with \"{m}\": {}", display(p)))
                })
                .collect();
            let message = if count == 1 {
                format!("Apply failed with 1 conflict: {}", detail[0])
            } else {
                format!("Apply failed with {count} conflicts: {}", detail.join("\n"))
            };
            return status(StatusCode::CONFLICT, "Conflict", message);
        }
        for (other, paths) in &conflicts {
            if let Some(owned) = managed.get_mut(other) {
                for p in paths {
                    owned.remove(p);
                }
            }
        }
    }

    let mut value = old.value.clone();
    // Fields this manager applied before and no longer does, owned by nobody else.
    let previous = managed.remove(manager).unwrap_or_default();
    for path in previous.iter().filter(|p| !applied_leaves.contains_key(*p)) {
        let kept = managed
            .values()
            .any(|owned| owned.iter().any(|o| related(o, path)));
        if !kept {
            remove_path(&mut value, path);
        }
    }
    for (path, v) in &applied_leaves {
        // A scalar where an object was (or the reverse) replaces it.
        if get_path(&value, &path[..path.len() - 1]).is_some_and(|p| !p.is_object()) {
            remove_path(&mut value, &path[..path.len() - 1]);
        }
        set_path(&mut value, path, v.clone());
    }
    managed.insert(manager.to_string(), applied_leaves.into_keys().collect());
    let changed_spec = spec_of(&value) != spec_of(&old.value);
    let changed_meta = value.get("metadata") != old.value.get("metadata");
    let owner = old.owner.clone();
    if !changed_spec && !changed_meta && managed == old.managed {
        // A no-op apply changes nothing, not even the resourceVersion.
        return reply(StatusCode::OK, &old.value);
    }
    stamp(&mut state, &mut value, &managed, changed_spec);
    state.objects.insert(
        key.clone(),
        Stored {
            value: value.clone(),
            managed,
            owner,
        },
    );
    drop(state);
    if changed_spec {
        after_change(shared, &key);
    }
    reply(StatusCode::OK, &value)
}

fn delete(shared: &Shared, key: &Key) -> Reply {
    let mut state = shared.lock();
    let Some(removed) = state.objects.remove(key) else {
        return not_found(key);
    };
    let namespace_deleted = key.plural == "namespaces" && key.namespace.is_none();
    state.objects.retain(|k, o| {
        let in_namespace = namespace_deleted && k.namespace.as_deref() == Some(key.name.as_str());
        !in_namespace && o.owner.as_ref() != Some(key)
    });
    state.resource_version += 1;
    reply(StatusCode::OK, &removed.value)
}

/// Schedules the simulated controller of `key`'s kind, if it has one.
fn after_change(shared: &Arc<Shared>, key: &Key) {
    let controlled = matches!(
        (key.prefix.as_str(), key.plural.as_str()),
        (
            "apis/apps/v1",
            "deployments" | "statefulsets" | "daemonsets"
        ) | ("apis/batch/v1", "jobs")
            | ("api/v1", "persistentvolumeclaims")
    );
    if !controlled {
        return;
    }
    let shared = shared.clone();
    let key = key.clone();
    let delay = if key.plural == "persistentvolumeclaims" {
        Duration::ZERO
    } else {
        shared.config.ready_delay
    };
    tokio::spawn(async move {
        tokio::time::sleep(delay).await;
        reconcile(&shared, &key);
    });
}

fn short_hash(s: &str) -> String {
    hex::encode(Sha256::digest(s.as_bytes()))[..10].to_string()
}

/// What a controller would write after seeing the object's current spec.
fn reconcile(shared: &Shared, key: &Key) {
    let mut state = shared.lock();
    let Some(obj) = state.objects.get(key) else {
        return;
    };
    let v = obj.value.clone();
    let generation = v
        .pointer("/metadata/generation")
        .and_then(Value::as_i64)
        .unwrap_or(1);
    let template = v.pointer("/spec/template").cloned().unwrap_or(Value::Null);
    let images: Vec<String> = template
        .pointer("/spec/containers")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|c| c.get("image").and_then(Value::as_str).map(str::to_string))
        .collect();
    let crashing = images.iter().any(|i| i.contains("crashloop"));
    let revision = format!("{}-{}", key.name, short_hash(&template.to_string()));
    let replicas = match key.plural.as_str() {
        "daemonsets" => shared.config.nodes,
        _ => v
            .pointer("/spec/replicas")
            .and_then(Value::as_i64)
            .unwrap_or(1),
    };
    let ready = if crashing { 0 } else { replicas };
    let status = match key.plural.as_str() {
        "deployments" => json!({
            "observedGeneration": generation, "replicas": replicas, "updatedReplicas": replicas,
            "readyReplicas": ready, "availableReplicas": ready, "unavailableReplicas": replicas - ready,
            "conditions": [
                {"type": "Available", "status": if crashing { "False" } else { "True" }, "reason": if crashing { "MinimumReplicasUnavailable" } else { "MinimumReplicasAvailable" }},
                {"type": "Progressing", "status": "True", "reason": if crashing { "ReplicaSetUpdated" } else { "NewReplicaSetAvailable" }},
            ],
        }),
        "statefulsets" => json!({
            "observedGeneration": generation, "replicas": replicas, "readyReplicas": ready,
            "currentReplicas": replicas, "updatedReplicas": replicas, "availableReplicas": ready,
            "currentRevision": revision, "updateRevision": revision, "collisionCount": 0,
        }),
        "daemonsets" => json!({
            "observedGeneration": generation, "desiredNumberScheduled": replicas,
            "currentNumberScheduled": replicas, "updatedNumberScheduled": replicas,
            "numberReady": ready, "numberAvailable": ready, "numberMisscheduled": 0,
            "numberUnavailable": replicas - ready,
        }),
        "jobs" if crashing => json!({
            "failed": 1, "startTime": now(),
            "conditions": [{"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded", "message": "Job has reached the specified backoff limit"}],
        }),
        "jobs" => {
            let completions = v
                .pointer("/spec/completions")
                .and_then(Value::as_i64)
                .unwrap_or(1);
            json!({
                "succeeded": completions, "startTime": now(), "completionTime": now(),
                "conditions": [
                    {"type": "SuccessCriteriaMet", "status": "True"},
                    {"type": "Complete", "status": "True"},
                ],
            })
        }
        "persistentvolumeclaims" => json!({"phase": "Bound"}),
        _ => return,
    };
    let mut value = v;
    value["status"] = status;
    let managed = obj.managed.clone();
    let owner = obj.owner.clone();
    stamp(&mut state, &mut value, &managed, false);
    state.objects.insert(
        key.clone(),
        Stored {
            value,
            managed,
            owner,
        },
    );

    // Pods: the previous ones go, one per replica comes.
    if matches!(
        key.plural.as_str(),
        "deployments" | "statefulsets" | "daemonsets"
    ) {
        state.objects.retain(|_, o| o.owner.as_ref() != Some(key));
        let namespace = key.namespace.clone().unwrap_or_default();
        let labels = template
            .pointer("/metadata/labels")
            .cloned()
            .unwrap_or(json!({}));
        for i in 0..replicas {
            let name = match key.plural.as_str() {
                "statefulsets" => format!("{}-{i}", key.name),
                _ => format!("{}-{}-{i}", key.name, &short_hash(&revision)[..5]),
            };
            let containers: Vec<Value> = template
                .pointer("/spec/containers")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .map(|c| {
                    let cname = c.get("name").cloned().unwrap_or(json!(""));
                    let image = c.get("image").and_then(Value::as_str).unwrap_or_default();
                    // A pinned image runs the digest it names, as on a
                    // real node; a tag resolves to a digest of its own.
                    let (base, digest) = match image.split_once("@sha256:") {
                        Some((base, digest)) => (base, digest.to_string()),
                        None => (image, hex::encode(Sha256::digest(image.as_bytes()))),
                    };
                    let state = if crashing {
                        json!({"waiting": {"reason": "CrashLoopBackOff", "message": format!("back-off 5m0s restarting failed container={} pod={name}", cname.as_str().unwrap_or_default())}})
                    } else {
                        json!({"running": {"startedAt": now()}})
                    };
                    let oom = image.contains("oomkilled");
                    let mut status = json!({
                        "name": cname, "image": image, "imageID": format!("{base}@sha256:{digest}"),
                        "ready": !crashing, "restartCount": if crashing || oom { 5 } else { 0 }, "state": state,
                    });
                    if oom {
                        status["lastState"] = json!({"terminated": {"reason": "OOMKilled", "exitCode": 137}});
                    }
                    status
                })
                .collect();
            let pod_key = Key {
                prefix: "api/v1".into(),
                plural: "pods".into(),
                namespace: Some(namespace.clone()),
                name: name.clone(),
            };
            let mut pod = json!({
                "apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": name, "namespace": namespace, "labels": labels},
                "spec": template.get("spec").cloned().unwrap_or(json!({})),
                "status": {"phase": "Running", "containerStatuses": containers},
            });
            let managed = BTreeMap::new();
            stamp(&mut state, &mut pod, &managed, false);
            state.objects.insert(
                pod_key,
                Stored {
                    value: pod,
                    managed,
                    owner: Some(key.clone()),
                },
            );
        }
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
