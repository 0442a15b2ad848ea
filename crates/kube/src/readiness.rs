//! Readiness: pure functions over an object as the API server returns it,
//! saying whether it is ready and, if not, why, in words for the progress
//! line ("2 of 3 replicas updated").
//!
//! Start at [`Readiness`]. One function per kind ([`deployment`],
//! [`stateful_set`], [`daemon_set`], [`job`], [`pvc`]) follows the rules of
//! `kubectl rollout status`; [`pod_failure`] spots the pod states that will
//! not heal by waiting (CrashLoopBackOff, image pull errors), so a step can
//! fail fast instead of running into its timeout.
//!
//! Guarantees: no I/O and no clock; the caller polls, and sets the timeout
//! where it calls (per step). An object whose controller has not yet seen
//! its latest spec (`observedGeneration` behind `generation`) is never
//! reported ready.

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, StatefulSet};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{ContainerStatus, PersistentVolumeClaim, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use std::fmt;

/// Where an object stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Readiness {
    Ready,
    /// Not yet; the reason says what is awaited.
    NotReady(String),
    /// Will not become ready by waiting; the reason says why.
    Failed(String),
}

impl Readiness {
    pub fn is_ready(&self) -> bool {
        matches!(self, Readiness::Ready)
    }
}

impl fmt::Display for Readiness {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Readiness::Ready => f.write_str("ready"),
            Readiness::NotReady(why) => write!(f, "not ready: {why}"),
            Readiness::Failed(why) => write!(f, "failed: {why}"),
        }
    }
}

/// A pod that will not start without a change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub pod: String,
    pub container: String,
    /// `CrashLoopBackOff`, `ImagePullBackOff`, `ErrImagePull`, …
    pub reason: String,
    pub message: Option<String>,
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "pod {} container {}: {}",
            self.pod, self.container, self.reason
        )?;
        if let Some(m) = &self.message {
            write!(f, " ({m})")?;
        }
        Ok(())
    }
}

/// Waiting reasons that do not resolve by themselves.
pub const FATAL_WAITING_REASONS: &[&str] = &[
    "CrashLoopBackOff",
    "ImagePullBackOff",
    "ErrImagePull",
    "InvalidImageName",
    "CreateContainerConfigError",
];

/// `Some(reason)` while the controller has not observed the latest spec.
fn generation_pending(meta: &ObjectMeta, observed: Option<i64>) -> Option<String> {
    let generation = meta.generation?;
    match observed {
        Some(o) if o >= generation => None,
        Some(o) => Some(format!(
            "waiting for rollout of generation {generation} (observed {o})"
        )),
        None => Some(format!(
            "waiting for rollout of generation {generation} (not yet observed)"
        )),
    }
}

/// A Deployment is ready when its latest spec is rolled out: every replica
/// updated and available, no old replica left.
pub fn deployment(d: &Deployment) -> Readiness {
    let Some(status) = d.status.as_ref() else {
        return Readiness::NotReady("no status yet".into());
    };
    if let Some(why) = generation_pending(&d.metadata, status.observed_generation) {
        return Readiness::NotReady(why);
    }
    if let Some(c) = status.conditions.iter().flatten().find(|c| {
        c.type_.as_deref() == Some("Progressing")
            && c.reason.as_deref() == Some("ProgressDeadlineExceeded")
    }) {
        return Readiness::Failed(format!(
            "progress deadline exceeded{}",
            c.message
                .as_deref()
                .map(|m| format!(": {m}"))
                .unwrap_or_default()
        ));
    }
    let desired = d.spec.replicas.unwrap_or(1);
    let updated = status.updated_replicas.unwrap_or(0);
    let total = status.replicas.unwrap_or(0);
    let available = status.available_replicas.unwrap_or(0);
    if updated < desired {
        return Readiness::NotReady(format!("{updated} of {desired} replicas updated"));
    }
    if total > updated {
        return Readiness::NotReady(format!(
            "{} old replicas pending termination",
            total - updated
        ));
    }
    if available < updated {
        return Readiness::NotReady(format!(
            "{available} of {updated} updated replicas available"
        ));
    }
    Readiness::Ready
}

/// A StatefulSet is ready when every replica is ready and, for rolling
/// updates, on the update revision (above the partition).
pub fn stateful_set(s: &StatefulSet) -> Readiness {
    let Some(status) = s.status.as_ref() else {
        return Readiness::NotReady("no status yet".into());
    };
    if let Some(why) = generation_pending(&s.metadata, status.observed_generation) {
        return Readiness::NotReady(why);
    }
    let spec = &s.spec;
    let desired = spec.replicas.unwrap_or(1);
    let ready = status.ready_replicas.unwrap_or(0);
    if ready < desired {
        return Readiness::NotReady(format!("{ready} of {desired} replicas ready"));
    }
    let strategy = spec.update_strategy.as_ref();
    let on_delete = strategy.and_then(|u| u.type_.as_deref()) == Some("OnDelete");
    if on_delete {
        // Pods are replaced only when deleted: there is no rollout to await.
        return Readiness::Ready;
    }
    let partition = strategy
        .and_then(|u| u.rolling_update.as_ref())
        .and_then(|r| r.partition)
        .unwrap_or(0);
    let updated = status.updated_replicas.unwrap_or(0);
    if partition > 0 {
        let want = (desired - partition).max(0);
        if updated < want {
            return Readiness::NotReady(format!(
                "{updated} of {want} replicas above partition {partition} updated"
            ));
        }
        return Readiness::Ready;
    }
    if updated < desired {
        return Readiness::NotReady(format!("{updated} of {desired} replicas updated"));
    }
    if let (Some(current), Some(update)) = (&status.current_revision, &status.update_revision)
        && current != update
    {
        return Readiness::NotReady(format!(
            "waiting for update to revision {update} (current {current})"
        ));
    }
    Readiness::Ready
}

/// A DaemonSet is ready when every scheduled pod is updated and available.
pub fn daemon_set(d: &DaemonSet) -> Readiness {
    let Some(status) = d.status.as_ref() else {
        return Readiness::NotReady("no status yet".into());
    };
    if let Some(why) = generation_pending(&d.metadata, status.observed_generation) {
        return Readiness::NotReady(why);
    }
    let desired = status.desired_number_scheduled;
    let updated = status.updated_number_scheduled.unwrap_or(0);
    let available = status.number_available.unwrap_or(0);
    if updated < desired {
        return Readiness::NotReady(format!("{updated} of {desired} pods updated"));
    }
    if available < desired {
        return Readiness::NotReady(format!("{available} of {desired} pods available"));
    }
    Readiness::Ready
}

/// A Job is ready when complete; failed when its `Failed` condition is set.
pub fn job(j: &Job) -> Readiness {
    let Some(status) = j.status.as_ref() else {
        return Readiness::NotReady("not started".into());
    };
    let conditions = status.conditions.iter().flatten();
    for c in conditions.filter(|c| c.status == "True") {
        match c.type_.as_str() {
            "Failed" | "FailureTarget" => {
                let reason = c.reason.as_deref().unwrap_or("failed");
                return Readiness::Failed(match c.message.as_deref() {
                    Some(m) => format!("{reason}: {m}"),
                    None => reason.to_string(),
                });
            }
            "Complete" | "SuccessCriteriaMet" => return Readiness::Ready,
            _ => {}
        }
    }
    let completions = j.spec.as_ref().and_then(|s| s.completions).unwrap_or(1);
    let succeeded = status.succeeded.unwrap_or(0);
    let active = status.active.unwrap_or(0);
    let failed = status.failed.unwrap_or(0);
    let mut why = format!("{succeeded} of {completions} completions, {active} active");
    if failed > 0 {
        why.push_str(&format!(", {failed} failed attempts"));
    }
    Readiness::NotReady(why)
}

/// A PersistentVolumeClaim is ready when bound to a volume.
pub fn pvc(p: &PersistentVolumeClaim) -> Readiness {
    let phase = p.status.as_ref().and_then(|s| s.phase.as_deref());
    match phase {
        Some("Bound") => Readiness::Ready,
        Some("Lost") => Readiness::Failed("its volume is lost".into()),
        _ => {
            let class = p
                .spec
                .as_ref()
                .and_then(|s| s.storage_class_name.as_deref())
                .map(|c| format!(" of storage class {c}"))
                .unwrap_or_default();
            Readiness::NotReady(format!("pending: waiting for a volume{class}"))
        }
    }
}

/// The first container of `pod` stuck in a state waiting will not fix.
pub fn pod_failure(pod: &Pod) -> Option<Failure> {
    let status = pod.status.as_ref()?;
    let pod_name = pod.metadata.name.clone().unwrap_or_default();
    let statuses: Vec<&ContainerStatus> = status
        .init_container_statuses
        .iter()
        .flatten()
        .chain(status.container_statuses.iter().flatten())
        .collect();
    statuses.into_iter().find_map(|c| {
        let waiting = c.state.as_ref()?.waiting.as_ref()?;
        let reason = waiting.reason.as_deref()?;
        FATAL_WAITING_REASONS.contains(&reason).then(|| Failure {
            pod: pod_name.clone(),
            container: c.name.clone(),
            reason: reason.to_string(),
            message: waiting.message.clone(),
        })
    })
}

/// Whether `pod` runs the workload's current template, so that its failure
/// is the rollout's. During a rollout, and a rollback above all, the pods
/// of the previous revision keep crash-looping until the controller scales
/// them down; they say nothing about the new revision. A pod counts when
/// the controller has observed the workload's current generation and the
/// pod is of the current revision: for a StatefulSet its
/// `controller-revision-hash` is the `updateRevision`; otherwise (a
/// Deployment's ReplicaSets are not read) its containers run the
/// template's images, name for name.
pub fn pod_is_current(workload: &serde_json::Value, pod: &Pod) -> bool {
    use serde_json::Value;
    let generation = workload
        .pointer("/metadata/generation")
        .and_then(Value::as_i64);
    let observed = workload
        .pointer("/status/observedGeneration")
        .and_then(Value::as_i64);
    if let (Some(generation), Some(observed)) = (generation, observed)
        && observed < generation
    {
        return false;
    }
    let labels = pod.metadata.labels.as_ref();
    if let (Some(update), Some(hash)) = (
        workload
            .pointer("/status/updateRevision")
            .and_then(Value::as_str),
        labels.and_then(|l| l.get("controller-revision-hash")),
    ) {
        return update == hash;
    }
    let template: std::collections::BTreeMap<&str, &str> = workload
        .pointer("/spec/template/spec/containers")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|c| Some((c.get("name")?.as_str()?, c.get("image")?.as_str()?)))
        .collect();
    let running: std::collections::BTreeMap<&str, &str> = pod
        .spec
        .iter()
        .flat_map(|s| &s.containers)
        .filter_map(|c| Some((c.name.as_str(), c.image.as_deref()?)))
        .collect();
    template == running
}
