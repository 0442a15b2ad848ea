//! Field ownership for server-side apply: the leaves of an object, who owns
//! which, and `metadata.managedFields` in the `FieldsV1` format.

use super::*;

/// Fields the server owns: identity, bookkeeping and status.
pub(crate) fn server_owned(path: &[String]) -> bool {
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
pub(crate) fn leaves(value: &Value) -> BTreeMap<Path, Value> {
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

pub(crate) fn get_path<'a>(v: &'a Value, path: &[String]) -> Option<&'a Value> {
    path.iter().try_fold(v, |v, k| v.get(k))
}

pub(crate) fn set_path(v: &mut Value, path: &[String], value: Value) {
    let mut cur = v;
    for k in &path[..path.len() - 1] {
        if !cur.get(k).is_some_and(Value::is_object) {
            cur[k.as_str()] = Value::Object(Map::new());
        }
        cur = &mut cur[k.as_str()];
    }
    cur[path[path.len() - 1].as_str()] = value;
}

pub(crate) fn remove_path(v: &mut Value, path: &[String]) {
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

pub(crate) fn related(a: &[String], b: &[String]) -> bool {
    a.starts_with(b) || b.starts_with(a)
}

pub(crate) fn display(path: &[String]) -> String {
    path.iter().map(|p| format!(".{p}")).collect()
}

/// `metadata.managedFields` in the `FieldsV1` format.
pub(crate) fn managed_fields(
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
pub(crate) fn stamp(
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
pub(crate) fn spec_of(value: &Value) -> Value {
    let mut v = value.clone();
    if let Some(m) = v.as_object_mut() {
        m.remove("metadata");
        m.remove("status");
    }
    v
}

pub(crate) fn fill_identity(key: &Key, body: &mut Map<String, Value>) {
    let meta = body.entry("metadata").or_insert_with(|| json!({}));
    meta["name"] = json!(key.name);
    if let Some(ns) = &key.namespace {
        meta["namespace"] = json!(ns);
    }
}
