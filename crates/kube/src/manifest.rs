//! A rendered Kubernetes object and the level it is applied at.

use serde::Serialize;
use std::fmt;

/// Objects are applied level by level, lowest first, so that what an object
/// needs exists before it: a namespace before what lives in it, a service
/// account before the pod that runs as it, a ConfigMap before the pod that
/// mounts it, an autoscaler after what it scales.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ApplyLevel {
    /// Namespaces and CustomResourceDefinitions.
    Namespaces,
    /// ServiceAccounts, Roles, ClusterRoles and their bindings.
    Rbac,
    /// ConfigMaps, Secrets, quotas, limit ranges and network policies.
    Config,
    /// StorageClasses and PersistentVolumeClaims.
    Storage,
    /// Services, workloads, Jobs and disruption budgets.
    Workloads,
    /// HorizontalPodAutoscalers.
    Autoscalers,
}

impl ApplyLevel {
    /// The level of a kind; unknown kinds go with the workloads.
    pub fn of(kind: &str) -> ApplyLevel {
        match kind {
            "Namespace" | "CustomResourceDefinition" => ApplyLevel::Namespaces,
            "ServiceAccount" | "Role" | "RoleBinding" | "ClusterRole" | "ClusterRoleBinding" => {
                ApplyLevel::Rbac
            }
            "ConfigMap" | "Secret" | "ResourceQuota" | "LimitRange" | "NetworkPolicy"
            | "PriorityClass" => ApplyLevel::Config,
            "StorageClass" | "PersistentVolume" | "PersistentVolumeClaim" => ApplyLevel::Storage,
            "HorizontalPodAutoscaler" => ApplyLevel::Autoscalers,
            _ => ApplyLevel::Workloads,
        }
    }
}

/// Order of kinds within a level: Services before the workloads they front,
/// workloads before the Jobs that wait for them.
pub fn rank_in_level(kind: &str) -> u8 {
    match kind {
        "Service" => 0,
        "PodDisruptionBudget" => 1,
        "StatefulSet" | "Deployment" | "DaemonSet" => 2,
        "Job" | "CronJob" => 3,
        _ => 2,
    }
}

impl fmt::Display for ApplyLevel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ApplyLevel::Namespaces => "namespaces",
            ApplyLevel::Rbac => "rbac",
            ApplyLevel::Config => "config",
            ApplyLevel::Storage => "storage",
            ApplyLevel::Workloads => "workloads",
            ApplyLevel::Autoscalers => "autoscalers",
        })
    }
}

/// One rendered object.
#[derive(Debug, Clone)]
pub struct Manifest {
    pub api_version: String,
    pub kind: String,
    pub name: String,
    /// `None` for cluster-scoped objects.
    pub namespace: Option<String>,
    pub level: ApplyLevel,
    /// The template it came from, relative to the templates directory.
    pub template: String,
    /// The object as YAML (one document, without `---`).
    pub yaml: String,
    /// The object as parsed from the rendered YAML.
    pub value: serde_json::Value,
}

impl Manifest {
    /// `Kind namespace/name` or `Kind name`, as messages name objects.
    pub fn id(&self) -> String {
        match &self.namespace {
            Some(ns) => format!("{} {ns}/{}", self.kind, self.name),
            None => format!("{} {}", self.kind, self.name),
        }
    }
}

impl Manifest {
    /// A file name for the object, unique within a render and sorting in
    /// apply order: `4-workloads/deployment.agent-system.task-executor.yaml`.
    pub fn file_name(&self) -> String {
        let level = self.level as u8;
        let kind = self.kind.to_ascii_lowercase();
        match &self.namespace {
            Some(ns) => format!("{level}-{}/{kind}.{ns}.{}.yaml", self.level, self.name),
            None => format!("{level}-{}/{kind}.{}.yaml", self.level, self.name),
        }
    }
}

/// All manifests as one multi-document YAML stream, like `helm template`.
pub fn to_yaml_stream(manifests: &[Manifest]) -> String {
    let mut out = String::new();
    for m in manifests {
        out.push_str("---\n");
        out.push_str(&format!("# Source: {} (level: {})\n", m.template, m.level));
        out.push_str(&m.yaml);
        if !m.yaml.ends_with('\n') {
            out.push('\n');
        }
    }
    out
}
