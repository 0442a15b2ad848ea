//! The readiness functions on objects shaped as a real API server returns
//! them (`tests/fixtures/readiness/*.yaml`); each fixture names the outcome
//! it expects in its `test.taskctl.dev/expect` annotation.

use crate::common::fixtures;
use serde::de::DeserializeOwned;
use taskctl_kube::readiness::{self, Readiness};

fn docs(file: &str) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(fixtures().join("readiness").join(file)).expect("fixture");
    serde_norway::Deserializer::from_str(&text)
        .map(|d| serde::Deserialize::deserialize(d).expect("yaml"))
        .collect()
}

fn expect(v: &serde_json::Value) -> String {
    v["metadata"]["annotations"]["test.taskctl.dev/expect"]
        .as_str()
        .expect("expect annotation")
        .to_string()
}

fn shown(r: &Readiness) -> String {
    match r {
        Readiness::Ready => "ready".into(),
        Readiness::NotReady(why) => format!("not_ready: {why}"),
        Readiness::Failed(why) => format!("failed: {why}"),
    }
}

fn run<T: DeserializeOwned>(file: &str, f: fn(&T) -> Readiness) {
    let all = docs(file);
    assert!(all.len() >= 3, "{file}: too few cases");
    for v in all {
        let obj: T = serde_json::from_value(v.clone()).unwrap_or_else(|e| panic!("{file}: {e}"));
        assert_eq!(
            shown(&f(&obj)),
            expect(&v),
            "{file}: {}",
            v["metadata"]["name"]
        );
    }
}

/// Proves: Deployment readiness follows `kubectl rollout status`, including
/// an unobserved generation and a progress deadline.
#[test]
fn deployments() {
    run("deployments.yaml", readiness::deployment);
}

/// Proves: StatefulSets wait for ready replicas and the update revision;
/// OnDelete sets are ready once their replicas are.
#[test]
fn stateful_sets() {
    run("statefulsets.yaml", readiness::stateful_set);
}

#[test]
fn daemon_sets() {
    run("daemonsets.yaml", readiness::daemon_set);
}

/// Proves: a Job with a Failed condition fails fast; one that is retrying
/// is not ready, with its counts.
#[test]
fn jobs() {
    run("jobs.yaml", readiness::job);
}

#[test]
fn pvcs() {
    run("pvcs.yaml", readiness::pvc);
}

/// Proves: CrashLoopBackOff, ImagePullBackOff and ErrImagePull (also in an
/// init container) are failures; a container still being created is not.
#[test]
fn pod_failures() {
    for v in docs("pods.yaml") {
        let pod: k8s_openapi::api::core::v1::Pod = serde_json::from_value(v.clone()).expect("pod");
        let got = readiness::pod_failure(&pod)
            .map(|f| format!("{} {}", f.reason, f.container))
            .unwrap_or_else(|| "none".into());
        assert_eq!(got, expect(&v), "{}", v["metadata"]["name"]);
    }
}

/// Proves: during a rollout only the pods of the current revision can fail
/// it. The previous revision's pods (another image, or another
/// StatefulSet revision) and every pod before the controller has observed
/// the new generation are not the rollout's.
#[test]
fn only_pods_of_the_current_revision_count() {
    let pod = |image: &str, revision: Option<&str>| -> k8s_openapi::api::core::v1::Pod {
        let mut labels = serde_json::json!({"app.kubernetes.io/name": "task-executor"});
        if let Some(r) = revision {
            labels["controller-revision-hash"] = r.into();
        }
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "p", "labels": labels},
            "spec": {"containers": [{"name": "executor", "image": image}]},
        }))
        .unwrap()
    };
    let deployment = |generation: i64, observed: i64| {
        serde_json::json!({
            "metadata": {"generation": generation},
            "spec": {"template": {"spec": {"containers": [{"name": "executor", "image": "task-executor:1.0.0"}]}}},
            "status": {"observedGeneration": observed},
        })
    };
    let current = deployment(3, 3);
    assert!(readiness::pod_is_current(
        &current,
        &pod("task-executor:1.0.0", None)
    ));
    assert!(!readiness::pod_is_current(
        &current,
        &pod("task-executor:1.0.1-crashloop", None)
    ));
    assert!(!readiness::pod_is_current(
        &deployment(3, 2),
        &pod("task-executor:1.0.0", None)
    ));
    let stateful = serde_json::json!({
        "metadata": {"generation": 2},
        "spec": {"template": {"spec": {"containers": [{"name": "executor", "image": "rabbitmq:3.13"}]}}},
        "status": {"observedGeneration": 2, "updateRevision": "rabbitmq-7d9f"},
    });
    assert!(readiness::pod_is_current(
        &stateful,
        &pod("rabbitmq:3.13", Some("rabbitmq-7d9f"))
    ));
    assert!(!readiness::pod_is_current(
        &stateful,
        &pod("rabbitmq:3.13", Some("rabbitmq-5c4a"))
    ));
}
