//! The objects: create, replace, server-side apply and delete, with the
//! checks a real API server makes first (namespace exists, identity).

use super::*;

/// Checks that the body names the object the path does, and that its
/// namespace exists. The error is the answer to send (an error path, where
/// the size of a `Response` does not matter).
#[allow(clippy::result_large_err)]
pub(crate) fn check_target(
    state: &State,
    key: &Key,
    body: &Map<String, Value>,
) -> Result<(), Reply> {
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

pub(crate) fn create(
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

pub(crate) fn replace(
    shared: &Arc<Shared>,
    key: &Key,
    mut body: Map<String, Value>,
    manager: &str,
) -> Reply {
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

pub(crate) fn apply(
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

pub(crate) fn delete(shared: &Shared, key: &Key) -> Reply {
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
