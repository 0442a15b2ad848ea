//! Readiness probes, as the kubelet runs them, when
//! [`Config::probe_readiness`] is on: a container whose `readinessProbe`
//! is an `httpGet` on a port a test registered a [`Backend`] for is ready
//! only while that real process answers the probe's path with a 2xx or 3xx,
//! and its workload's ready counts follow. A Vault pod, say, becomes ready
//! once unsealed, not when it starts. Containers without such a backend
//! keep the simulated readiness.

use super::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// How often every probed container is probed.
const PERIOD: Duration = Duration::from_millis(100);
/// One probe's limit, as the kubelet's `timeoutSeconds` default (1 s).
const TIMEOUT: Duration = Duration::from_secs(1);

/// The port and path of a container's `httpGet` readiness probe; a named
/// port is looked up among the container's ports.
fn http_probe(container: &Value) -> Option<(u16, String)> {
    let get = container.pointer("/readinessProbe/httpGet")?;
    let path = get
        .get("path")
        .and_then(Value::as_str)
        .unwrap_or("/")
        .to_string();
    let port = match get.get("port")? {
        Value::Number(n) => n.as_u64()?,
        Value::String(name) => container
            .get("ports")
            .and_then(Value::as_array)?
            .iter()
            .find(|p| p.get("name").and_then(Value::as_str) == Some(name))?
            .get("containerPort")?
            .as_u64()?,
        _ => return None,
    };
    Some((u16::try_from(port).ok()?, path))
}

/// Where each probed container of `pod` is probed: (container index, the
/// backend's address, the path).
pub(crate) fn probes(
    backends: &[Backend],
    namespace: &str,
    pod: &Value,
) -> Vec<(usize, SocketAddr, String)> {
    pod.pointer("/spec/containers")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .enumerate()
        .filter_map(|(i, c)| {
            let (port, path) = http_probe(c)?;
            // The last registration for the pod and port wins.
            let addr = backends
                .iter()
                .rev()
                .find_map(|b| b.address_for(namespace, pod, port))?;
            Some((i, addr, path))
        })
        .collect()
}

/// One HTTP/1.1 GET: whether it answered 200–399 within [`TIMEOUT`].
async fn probe(addr: SocketAddr, path: &str) -> bool {
    let attempt = async {
        let mut stream = tokio::net::TcpStream::connect(addr).await.ok()?;
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: kube-probe/1.37\r\nConnection: close\r\n\r\n"
        );
        stream.write_all(request.as_bytes()).await.ok()?;
        let mut head = [0u8; 64];
        let mut read = 0;
        while read < 12 {
            let n = stream.read(&mut head[read..]).await.ok()?;
            if n == 0 {
                break;
            }
            read += n;
        }
        let line = std::str::from_utf8(&head[..read]).ok()?;
        let code: u16 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some((200..400).contains(&code))
    };
    matches!(tokio::time::timeout(TIMEOUT, attempt).await, Ok(Some(true)))
}

/// Probes every probed container every [`PERIOD`], until the double stops.
pub(crate) async fn run(shared: Arc<Shared>) {
    loop {
        tokio::time::sleep(PERIOD).await;
        let targets: Vec<(Key, usize, SocketAddr, String)> = {
            let state = shared.lock();
            state
                .objects
                .iter()
                .filter(|(k, o)| k.plural == "pods" && o.owner.is_some())
                .flat_map(|(k, o)| {
                    let ns = k.namespace.clone().unwrap_or_default();
                    probes(&state.backends, &ns, &o.value)
                        .into_iter()
                        .map(move |(i, addr, path)| (k.clone(), i, addr, path))
                })
                .collect()
        };
        let mut results = Vec::new();
        for (key, i, addr, path) in targets {
            let ready = probe(addr, &path).await;
            results.push((key, i, ready));
        }
        let mut state = shared.lock();
        let mut owners = BTreeSet::new();
        for (key, i, ready) in results {
            let Some(pod) = state.objects.get(&key) else {
                continue;
            };
            let pointer = format!("/status/containerStatuses/{i}/ready");
            if pod.value.pointer(&pointer).and_then(Value::as_bool) == Some(ready) {
                continue;
            }
            let mut value = pod.value.clone();
            let (managed, owner) = (pod.managed.clone(), pod.owner.clone());
            if let Some(slot) = value.pointer_mut(&pointer) {
                *slot = json!(ready);
            }
            stamp(&mut state, &mut value, &managed, false);
            owners.extend(owner.clone());
            state.objects.insert(
                key,
                Stored {
                    value,
                    managed,
                    owner,
                },
            );
        }
        for owner in owners {
            recount(&mut state, &owner);
        }
    }
}

/// Sets a workload's ready counts from its pods' containers.
pub(crate) fn recount(state: &mut State, owner: &Key) {
    let pods: Vec<&Stored> = state
        .objects
        .values()
        .filter(|o| o.owner.as_ref() == Some(owner))
        .collect();
    let total = pods.len() as i64;
    let ready = pods
        .iter()
        .filter(|p| {
            p.value
                .pointer("/status/containerStatuses")
                .and_then(Value::as_array)
                .is_some_and(|cs| {
                    cs.iter()
                        .all(|c| c.get("ready").and_then(Value::as_bool) == Some(true))
                })
        })
        .count() as i64;
    let Some(workload) = state.objects.get(owner) else {
        return;
    };
    let mut value = workload.value.clone();
    let (managed, owning) = (workload.managed.clone(), workload.owner.clone());
    let Some(status) = value.get_mut("status").and_then(Value::as_object_mut) else {
        return;
    };
    let fields: &[&str] = match owner.plural.as_str() {
        "daemonsets" => &["numberReady", "numberAvailable"],
        _ => &["readyReplicas", "availableReplicas"],
    };
    if fields
        .iter()
        .all(|f| status.get(*f).and_then(Value::as_i64) == Some(ready))
    {
        return;
    }
    for f in fields {
        status.insert((*f).into(), json!(ready));
    }
    match owner.plural.as_str() {
        "daemonsets" => {
            status.insert("numberUnavailable".into(), json!(total - ready));
        }
        "deployments" => {
            status.insert("unavailableReplicas".into(), json!(total - ready));
        }
        _ => {}
    }
    stamp(state, &mut value, &managed, false);
    state.objects.insert(
        owner.clone(),
        Stored {
            value,
            managed,
            owner: owning,
        },
    );
}
