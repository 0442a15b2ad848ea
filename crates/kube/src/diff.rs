//! What differs between a rendered object and the live one, on the fields
//! taskctl sets.
//!
//! The comparison is "is the rendered object contained in the live one":
//! fields the API server or other managers add (defaults, status,
//! annotations of controllers) are not differences, so a plan against a
//! real cluster does not report what taskctl never asked for. Lists are
//! compared element by element when their lengths agree, so a defaulted
//! field inside a container is not a difference either; a list of another
//! length is one change of the whole list.
//!
//! Secret values never leave this module: for a `Secret`, `data` and
//! `stringData` values are shown as `(hidden)`.

use serde_json::Value;
use taskctl_core::engine::FieldDiff;

/// Fields under which values are never printed.
fn is_secret_path(kind: &str, path: &str) -> bool {
    kind == "Secret" && (path.starts_with("data") || path.starts_with("stringData"))
}

/// Paths that are the server's or identity, never compared.
fn ignored(path: &str) -> bool {
    matches!(
        path,
        "apiVersion" | "kind" | "status" | "metadata.name" | "metadata.namespace"
    ) || path.starts_with("status.")
}

fn show(v: Option<&Value>) -> String {
    match v {
        None | Some(Value::Null) => "(absent)".into(),
        Some(Value::String(s)) => s.clone(),
        Some(other) => {
            let text = other.to_string();
            if text.chars().count() > 120 {
                format!("{}…", text.chars().take(117).collect::<String>())
            } else {
                text
            }
        }
    }
}

/// The fields of `rendered` that `live` lacks or holds with another value,
/// as `spec.template.spec.containers[0].image` paths.
pub fn diff(kind: &str, rendered: &Value, live: &Value) -> Vec<FieldDiff> {
    let mut out = Vec::new();
    walk(kind, "", rendered, Some(live), &mut out);
    out
}

fn join(prefix: &str, key: &str) -> String {
    // Label and annotation keys hold dots and slashes; bracket them so the
    // path stays readable and unambiguous.
    let plain = key
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    match (prefix.is_empty(), plain) {
        (true, true) => key.to_string(),
        (true, false) => format!("[{key}]"),
        (false, true) => format!("{prefix}.{key}"),
        (false, false) => format!("{prefix}[{key}]"),
    }
}

fn walk(kind: &str, path: &str, rendered: &Value, live: Option<&Value>, out: &mut Vec<FieldDiff>) {
    if ignored(path) {
        return;
    }
    match (rendered, live) {
        (Value::Object(r), Some(Value::Object(l))) => {
            for (k, v) in r {
                walk(kind, &join(path, k), v, l.get(k), out);
            }
        }
        (Value::Array(r), Some(Value::Array(l))) if r.len() == l.len() => {
            for (i, (rv, lv)) in r.iter().zip(l).enumerate() {
                walk(kind, &format!("{path}[{i}]"), rv, Some(lv), out);
            }
        }
        (r, l) if !same(r, l) => {
            let (from, to) = if is_secret_path(kind, path) {
                let from = if l.is_some() { "(hidden)" } else { "(absent)" };
                (from.to_string(), "(hidden)".to_string())
            } else {
                (show(l), show(Some(r)))
            };
            out.push(FieldDiff::new(path, from, to));
        }
        _ => {}
    }
}

/// Equal, counting an absent field and an empty or null one as the same
/// (the server drops empty values), and a number and its string as the same
/// (`intOrString` fields come back as written, but be lenient).
fn same(rendered: &Value, live: Option<&Value>) -> bool {
    match (rendered, live) {
        (r, Some(l)) if r == l => true,
        (Value::Null, None) => true,
        (Value::Object(m), None) if m.is_empty() => true,
        (Value::Array(a), None) if a.is_empty() => true,
        (Value::Number(n), Some(Value::String(s))) | (Value::String(s), Some(Value::Number(n))) => {
            n.to_string() == *s
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn fields_added_by_the_server_are_not_differences() {
        let rendered = json!({"kind": "Deployment", "spec": {"replicas": 3, "template": {"spec": {"containers": [{"name": "a", "image": "x:1"}]}}}});
        let live = json!({"kind": "Deployment", "spec": {"replicas": 3, "progressDeadlineSeconds": 600, "template": {"spec": {"containers": [{"name": "a", "image": "x:1", "terminationMessagePath": "/dev/termination-log"}]}}}, "status": {"replicas": 3}});
        assert!(diff("Deployment", &rendered, &live).is_empty());
    }

    #[test]
    fn changed_fields_are_named_by_path() {
        let rendered = json!({"metadata": {"labels": {"app.kubernetes.io/name": "b"}}, "spec": {"replicas": 5, "template": {"spec": {"containers": [{"image": "x:2"}]}}}});
        let live = json!({"metadata": {"labels": {"app.kubernetes.io/name": "a"}}, "spec": {"replicas": 3, "template": {"spec": {"containers": [{"image": "x:1"}]}}}});
        let d = diff("Deployment", &rendered, &live);
        let fields: Vec<&str> = d.iter().map(|d| d.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "metadata.labels[app.kubernetes.io/name]",
                "spec.replicas",
                "spec.template.spec.containers[0].image"
            ]
        );
        assert_eq!((d[1].from.as_str(), d[1].to.as_str()), ("3", "5"));
    }

    #[test]
    fn secret_values_are_masked() {
        let rendered = json!({"kind": "Secret", "data": {"password": "c2VjcmV0"}});
        let live = json!({"kind": "Secret", "data": {"password": "b2xk"}});
        let d = diff("Secret", &rendered, &live);
        assert_eq!(d.len(), 1);
        assert_eq!(
            (d[0].from.as_str(), d[0].to.as_str()),
            ("(hidden)", "(hidden)")
        );
        let text = format!("{d:?}");
        assert!(
            !text.contains("c2VjcmV0") && !text.contains("b2xk"),
            "{text}"
        );
    }
}
