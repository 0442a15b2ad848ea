//! Requests: the path and query parsed into a target, each method's answer,
//! and LIST with its label selector.

use super::*;

pub(crate) enum Target {
    Object(Key),
    Collection {
        prefix: String,
        plural: String,
        namespace: Option<String>,
    },
}

pub(crate) fn parse_path(path: &str) -> Option<Target> {
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

pub(crate) type Reply = Response<Full<Bytes>>;

pub(crate) fn reply(code: StatusCode, body: &Value) -> Reply {
    Response::builder()
        .status(code)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .expect("a valid response")
}

/// A `Status` answer, as the real server writes it.
pub(crate) fn status(code: StatusCode, reason: &str, message: impl Into<String>) -> Reply {
    reply(
        code,
        &json!({
            "kind": "Status", "apiVersion": "v1", "metadata": {},
            "status": "Failure", "message": message.into(), "reason": reason,
            "code": code.as_u16(),
        }),
    )
}

pub(crate) fn query_param<'a>(query: &'a str, name: &str) -> Option<&'a str> {
    query
        .split('&')
        .filter_map(|kv| kv.split_once('=').or(Some((kv, ""))))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// Percent-decoding of a query value (label selectors arrive encoded).
pub(crate) fn decode(s: &str) -> String {
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

pub(crate) async fn handle(shared: Arc<Shared>, req: Request<Incoming>) -> Reply {
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
    let expired = {
        let mut state = shared.lock();
        let expired = match (shared.config.token_ttl, &authorization) {
            (Some(ttl), Some(auth)) => {
                let first = *state
                    .tokens
                    .entry(auth.clone())
                    .or_insert_with(std::time::Instant::now);
                first.elapsed() > ttl
            }
            _ => false,
        };
        state.requests.push(RequestRecord {
            method: method.to_string(),
            path: path.clone(),
            query: query.clone(),
            content_type: content_type.clone(),
            authorization,
        });
        expired
    };
    if expired {
        return status(
            StatusCode::UNAUTHORIZED,
            "Unauthorized",
            "Unauthorized: the bearer token has expired".to_string(),
        );
    }
    if !shared.config.latency.is_zero() {
        tokio::time::sleep(shared.config.latency).await;
    }
    if let Some(pod) = path
        .strip_suffix("/portforward")
        .and_then(|p| match parse_path(p) {
            Some(Target::Object(k)) if k.prefix == "api/v1" && k.plural == "pods" => Some(k),
            _ => None,
        })
    {
        return match method {
            Method::GET | Method::POST => forward::portforward(&shared, req, &pod, &query),
            m => status(
                StatusCode::METHOD_NOT_ALLOWED,
                "MethodNotAllowed",
                format!("{m} is not served on {path}"),
            ),
        };
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

pub(crate) fn parse_body(body: &[u8], content_type: Option<&str>) -> Option<Map<String, Value>> {
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

pub(crate) fn get(shared: &Shared, key: &Key) -> Reply {
    match shared.lock().objects.get(key) {
        Some(o) => reply(StatusCode::OK, &o.value),
        None => not_found(key),
    }
}

pub(crate) fn not_found(key: &Key) -> Reply {
    status(
        StatusCode::NOT_FOUND,
        "NotFound",
        format!("{} \"{}\" not found", key.plural, key.name),
    )
}

/// Equality-based selectors: `k=v`, `k==v`, `k!=v`, `k`, `!k`.
pub(crate) fn matches_selector(labels: Option<&Value>, selector: &str) -> bool {
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

pub(crate) fn list(
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

pub(crate) fn now() -> String {
    humantime::format_rfc3339_seconds(SystemTime::now()).to_string()
}
