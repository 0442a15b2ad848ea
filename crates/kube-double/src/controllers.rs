//! The simulated controllers: workload status, pods, jobs and claims, after
//! `ready_delay`.

use super::*;

/// Schedules the simulated controller of `key`'s kind, if it has one.
pub(crate) fn after_change(shared: &Arc<Shared>, key: &Key) {
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

/// A pod's address on the pod network: stable for a name, as tests and
/// the `instance` labels Prometheus would give it need.
pub(crate) fn pod_ip(namespace: &str, name: &str) -> String {
    let h = Sha256::digest(format!("{namespace}/{name}").as_bytes());
    format!("10.244.{}.{}", h[0], 1 + h[1] % 254)
}

pub(crate) fn short_hash(s: &str) -> String {
    hex::encode(Sha256::digest(s.as_bytes()))[..10].to_string()
}

/// What a controller would write after seeing the object's current spec.
pub(crate) fn reconcile(shared: &Shared, key: &Key) {
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
    let claim_templates = v
        .pointer("/spec/volumeClaimTemplates")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
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

    // Claims from `volumeClaimTemplates`, as the StatefulSet controller
    // makes them: `<template>-<set>-<ordinal>`, the template's labels, no
    // owner (they outlive the StatefulSet, as on a real cluster), made
    // once and then left alone, bound at once.
    if key.plural == "statefulsets" {
        let namespace = key.namespace.clone().unwrap_or_default();
        for t in &claim_templates {
            let Some(template_name) = t.pointer("/metadata/name").and_then(Value::as_str) else {
                continue;
            };
            for i in 0..replicas {
                let name = format!("{template_name}-{}-{i}", key.name);
                let claim_key = Key {
                    prefix: "api/v1".into(),
                    plural: "persistentvolumeclaims".into(),
                    namespace: Some(namespace.clone()),
                    name: name.clone(),
                };
                if state.objects.contains_key(&claim_key) {
                    continue;
                }
                let mut claim = json!({
                    "apiVersion": "v1", "kind": "PersistentVolumeClaim",
                    "metadata": {
                        "name": name, "namespace": namespace,
                        "labels": t.pointer("/metadata/labels").cloned().unwrap_or(json!({})),
                    },
                    "spec": t.get("spec").cloned().unwrap_or(json!({})),
                    "status": {"phase": "Bound"},
                });
                let managed = BTreeMap::new();
                stamp(&mut state, &mut claim, &managed, false);
                state.objects.insert(
                    claim_key,
                    Stored {
                        value: claim,
                        managed,
                        owner: None,
                    },
                );
            }
        }
    }

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
            // Scheduled round-robin on the double's nodes.
            let mut pod_spec = template.get("spec").cloned().unwrap_or(json!({}));
            pod_spec["nodeName"] = json!(format!("node-{}", i % shared.config.nodes.max(1)));
            let mut pod = json!({
                "apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": name, "namespace": namespace, "labels": labels},
                "spec": pod_spec,
                "status": {
                    "phase": "Running", "containerStatuses": containers,
                    "podIP": pod_ip(&namespace, &name),
                    "hostIP": format!("192.168.0.{}", 10 + i % shared.config.nodes.max(1)),
                },
            });
            // A probed container is not ready until its first probe passes.
            if shared.config.probe_readiness {
                for (c, _, _) in kubelet::probes(&state.backends, &namespace, &pod) {
                    if let Some(ready) =
                        pod.pointer_mut(&format!("/status/containerStatuses/{c}/ready"))
                    {
                        *ready = json!(false);
                    }
                }
            }
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
        if shared.config.probe_readiness {
            kubelet::recount(&mut state, key);
        }
    }
}
