//! The schema check on objects with mistakes a template could make.

use crate::common::*;
use taskctl_kube::{Manifest, SchemaError, check};

fn with(m: &Manifest, pointer: &str, value: serde_json::Value) -> Manifest {
    let mut m = m.clone();
    let (parent, key) = pointer.rsplit_once('/').expect("pointer");
    m.value
        .pointer_mut(parent)
        .and_then(|p| p.as_object_mut())
        .expect("parent object")
        .insert(key.replace("~1", "/"), value);
    m
}

/// Proves: a field the Kubernetes type does not have is an error naming the
/// object and the field's path, though `k8s-openapi` alone would skip it.
#[test]
fn unknown_field_is_named_with_its_path() {
    let ms = production();
    let d = find(&ms, "Deployment", Some("agent-system"), "task-executor");
    let bad = with(
        d,
        "/spec/template/spec/containers/0/livenessProbe/httpGet/pth",
        "/health".into(),
    );
    match check(&bad) {
        Err(SchemaError::UnknownField { object, path }) => {
            assert_eq!(object, "Deployment agent-system/task-executor");
            assert_eq!(
                path,
                "spec.template.spec.containers.0.livenessProbe.httpGet.pth"
            );
        }
        other => panic!("expected an unknown field, got {other:?}"),
    }
    let bad = with(d, "/spec/replica", 3.into());
    let e = check(&bad).expect_err("spec.replica");
    assert_eq!(
        e.to_string(),
        "Deployment agent-system/task-executor: unknown field `spec.replica`"
    );
}

/// Proves: a value of the wrong type is an error at its path.
#[test]
fn wrong_type_is_named_with_its_path() {
    let ms = production();
    let s = find(&ms, "StatefulSet", Some("messaging"), "rabbitmq");
    let bad = with(s, "/spec/replicas", "three".into());
    match check(&bad) {
        Err(SchemaError::Invalid { object, path, .. }) => {
            assert_eq!(object, "StatefulSet messaging/rabbitmq");
            assert_eq!(path, "spec.replicas");
        }
        other => panic!("expected a type error, got {other:?}"),
    }
}

/// Proves: kinds outside the Kubernetes API, namespaced objects without a
/// namespace, and names or labels the API server would reject, fail.
#[test]
fn unknown_kinds_and_invalid_names_fail() {
    let ms = production();
    let d = find(&ms, "Deployment", Some("agent-system"), "task-executor");
    let mut crd = d.clone();
    crd.api_version = "autoscaling.k8s.io/v1".into();
    crd.kind = "VerticalPodAutoscaler".into();
    assert!(matches!(check(&crd), Err(SchemaError::UnknownKind { .. })));

    let bad = with(
        d,
        "/metadata/labels/taskctl.dev~1environment",
        "task-system/production".into(),
    );
    let e = check(&bad).expect_err("a `/` in a label value");
    assert!(e.to_string().contains("taskctl.dev/environment"), "{e}");

    let mut unscoped = d.clone();
    unscoped.namespace = None;
    unscoped.value["metadata"]
        .as_object_mut()
        .expect("metadata")
        .remove("namespace");
    assert!(matches!(check(&unscoped), Err(SchemaError::Scope { .. })));

    let mut upper = d.clone();
    upper.name = "Task_Executor".into();
    assert!(matches!(
        check(&upper),
        Err(SchemaError::InvalidValue { .. })
    ));
}
