//! The schema check: a rendered object against the official Kubernetes
//! types of `k8s-openapi` (API version 1.37).
//!
//! Start at [`check`]. The `k8s-openapi` types skip fields they do not know
//! (as old clients must); here every skipped field is an error, because the
//! API server would drop it, or reject it under strict field validation, and
//! a misspelled field in a template would otherwise pass unnoticed.
//!
//! Guarantees: an object that passes deserializes into its typed struct with
//! no field left over, its names are valid DNS names, and its labels are
//! valid label keys and values.
//! Caveats: semantic validation the API server does beyond the schema
//! (immutable fields, cross-field rules, admission) is not checked here.

use crate::manifest::Manifest;
use k8s_openapi::Resource;
use k8s_openapi::api::{apps, autoscaling, batch, core, networking, policy, rbac, storage};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use serde::de::DeserializeOwned;

/// Why a rendered object does not match the Kubernetes schema.
#[derive(Debug, thiserror::Error)]
pub enum SchemaError {
    /// The apiVersion and kind are not a type of the Kubernetes API this
    /// build checks against.
    #[error(
        "{object}: `{api_version}` `{kind}` is not a kind of the Kubernetes API (k8s-openapi {version})"
    )]
    UnknownKind {
        object: String,
        api_version: String,
        kind: String,
        version: &'static str,
    },
    /// A field has the wrong type or a required field is missing.
    #[error("{object}: at `{path}`: {message}")]
    Invalid {
        object: String,
        path: String,
        message: String,
    },
    /// A field the Kubernetes type does not have: the API server would drop
    /// it (or reject it with strict field validation).
    #[error("{object}: unknown field `{path}`")]
    UnknownField { object: String, path: String },
    /// A namespaced kind without a namespace (it would land in whatever
    /// namespace the client defaults to), or a cluster-scoped one with one.
    #[error("{object}: {why}")]
    Scope { object: String, why: String },
    /// A name or label the API server would reject.
    #[error("{object}: {what} `{value}` is invalid: {why}")]
    InvalidValue {
        object: String,
        what: String,
        value: String,
        why: String,
    },
}

/// The Kubernetes API version the types describe.
pub const KUBERNETES_VERSION: &str = "1.37";

type Checker = fn(&Manifest) -> Result<(), SchemaError>;

/// Whether objects of a scope live in a namespace.
trait Scope {
    const NAMESPACED: bool;
}

impl Scope for k8s_openapi::NamespaceResourceScope {
    const NAMESPACED: bool = true;
}

impl Scope for k8s_openapi::ClusterResourceScope {
    const NAMESPACED: bool = false;
}

struct Kind {
    api_version: &'static str,
    kind: &'static str,
    namespaced: bool,
    checker: Checker,
}

macro_rules! kinds {
    ($($t:ty),* $(,)?) => {
        &[$(Kind {
            api_version: <$t as Resource>::API_VERSION,
            kind: <$t as Resource>::KIND,
            namespaced: <<$t as Resource>::Scope as Scope>::NAMESPACED,
            checker: typed::<$t>,
        }),*]
    };
}

/// The kinds `check` knows.
static KINDS: &[Kind] = kinds![
    core::v1::Namespace,
    core::v1::ServiceAccount,
    core::v1::ConfigMap,
    core::v1::Secret,
    core::v1::Service,
    core::v1::PersistentVolumeClaim,
    core::v1::ResourceQuota,
    core::v1::LimitRange,
    core::v1::Pod,
    rbac::v1::Role,
    rbac::v1::RoleBinding,
    rbac::v1::ClusterRole,
    rbac::v1::ClusterRoleBinding,
    networking::v1::NetworkPolicy,
    networking::v1::Ingress,
    storage::v1::StorageClass,
    apps::v1::Deployment,
    apps::v1::StatefulSet,
    apps::v1::DaemonSet,
    batch::v1::Job,
    batch::v1::CronJob,
    policy::v1::PodDisruptionBudget,
    autoscaling::v2::HorizontalPodAutoscaler,
    CustomResourceDefinition,
];

/// Checks `manifest` against the Kubernetes type of its apiVersion and kind.
pub fn check(manifest: &Manifest) -> Result<(), SchemaError> {
    let kind = KINDS
        .iter()
        .find(|k| k.api_version == manifest.api_version && k.kind == manifest.kind)
        .ok_or_else(|| SchemaError::UnknownKind {
            object: manifest.id(),
            api_version: manifest.api_version.clone(),
            kind: manifest.kind.clone(),
            version: KUBERNETES_VERSION,
        })?;
    (kind.checker)(manifest)?;
    match (kind.namespaced, manifest.namespace.is_some()) {
        (true, false) => {
            return Err(SchemaError::Scope {
                object: manifest.id(),
                why: "a namespaced kind without `metadata.namespace`".into(),
            });
        }
        (false, true) => {
            return Err(SchemaError::Scope {
                object: manifest.id(),
                why: "a cluster-scoped kind with `metadata.namespace`".into(),
            });
        }
        _ => {}
    }
    check_names(manifest)
}

fn typed<T: DeserializeOwned>(manifest: &Manifest) -> Result<(), SchemaError> {
    let mut unknown = Vec::new();
    let mut record = |path: serde_ignored::Path<'_>| {
        unknown.push(clean_path(&path.to_string()));
    };
    let de = serde_ignored::Deserializer::new(&manifest.value, &mut record);
    let result: Result<T, _> = serde_path_to_error::deserialize(de);
    if let Err(e) = result {
        return Err(SchemaError::Invalid {
            object: manifest.id(),
            path: clean_path(&e.path().to_string()),
            message: e.inner().to_string(),
        });
    }
    match unknown.into_iter().next() {
        Some(path) => Err(SchemaError::UnknownField {
            object: manifest.id(),
            path,
        }),
        None => Ok(()),
    }
}

/// `spec.?.template` → `spec.template`: `?` marks an `Option`, not a field.
fn clean_path(p: &str) -> String {
    p.split('.')
        .filter(|s| *s != "?")
        .collect::<Vec<_>>()
        .join(".")
}

fn check_names(m: &Manifest) -> Result<(), SchemaError> {
    let invalid = |what: &str, value: &str, why: String| SchemaError::InvalidValue {
        object: m.id(),
        what: what.into(),
        value: value.into(),
        why,
    };
    // Services and namespaces become DNS labels; other names are subdomains.
    let label_named = matches!(m.kind.as_str(), "Namespace" | "Service");
    let why = if label_named {
        dns_label(&m.name)
    } else {
        dns_subdomain(&m.name)
    };
    if let Some(why) = why {
        return Err(invalid("name", &m.name, why));
    }
    if let Some(ns) = &m.namespace
        && let Some(why) = dns_label(ns)
    {
        return Err(invalid("namespace", ns, why));
    }
    for pointer in ["/metadata/labels", "/spec/template/metadata/labels"] {
        let Some(labels) = m.value.pointer(pointer).and_then(|v| v.as_object()) else {
            continue;
        };
        for (k, v) in labels {
            if let Some(why) = label_key(k) {
                return Err(invalid("label key", k, why));
            }
            let v = v.as_str().unwrap_or_default();
            if let Some(why) = label_value(v) {
                return Err(invalid(&format!("value of label `{k}`"), v, why));
            }
        }
    }
    Ok(())
}

/// RFC 1123 label: at most 63 lowercase alphanumerics or `-`, alphanumeric at both ends.
pub fn dns_label(s: &str) -> Option<String> {
    if s.is_empty() || s.len() > 63 {
        return Some("must be 1 to 63 characters".into());
    }
    let ok = s
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !s.starts_with('-')
        && !s.ends_with('-');
    (!ok).then(|| "must be lowercase alphanumerics or `-`, starting and ending alphanumeric".into())
}

/// RFC 1123 subdomain: dot-separated labels, at most 253 characters.
pub fn dns_subdomain(s: &str) -> Option<String> {
    if s.is_empty() || s.len() > 253 {
        return Some("must be 1 to 253 characters".into());
    }
    s.split('.').find_map(|part| {
        dns_label(part).map(|_| {
            "must be dot-separated lowercase alphanumerics or `-`, each part starting and ending alphanumeric".to_string()
        })
    })
}

fn label_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && s.starts_with(|c: char| c.is_ascii_alphanumeric())
        && s.ends_with(|c: char| c.is_ascii_alphanumeric())
}

/// A label key: `[prefix/]name`, the prefix a DNS subdomain.
pub fn label_key(k: &str) -> Option<String> {
    let (prefix, name) = match k.rsplit_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, k),
    };
    if let Some(p) = prefix
        && dns_subdomain(p).is_some()
    {
        return Some("the prefix must be a DNS subdomain".into());
    }
    (!label_name(name)).then(|| {
        "the name must be at most 63 alphanumerics, `-`, `_` or `.`, starting and ending alphanumeric".into()
    })
}

/// A label value: empty, or at most 63 alphanumerics, `-`, `_` or `.`,
/// starting and ending alphanumeric (no `/`).
pub fn label_value(v: &str) -> Option<String> {
    (!v.is_empty() && !label_name(v)).then(|| {
        "must be at most 63 alphanumerics, `-`, `_` or `.`, starting and ending alphanumeric".into()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_labels() {
        assert!(dns_label("agent-system").is_none());
        assert!(dns_label("Agent").is_some());
        assert!(dns_subdomain("task-executor.v1").is_none());
        assert!(label_key("app.kubernetes.io/name").is_none());
        assert!(label_value("task-system/production").is_some());
        assert!(label_value("task-system.production").is_none());
    }
}
