use crate::profile::value::{Checked, Percent, VersionConstraint};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Compute: the Kubernetes cluster, its node groups and resource quotas.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct Compute {
    pub kubernetes: KubernetesCluster,
    /// Managed node groups: workers, GPU nodes.
    #[serde(default)]
    pub node_groups: Vec<NodeGroup>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource_quotas: Option<ResourceQuotas>,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct KubernetesCluster {
    /// Version constraint; the newest supported version it admits is used.
    pub version: Checked<VersionConstraint>,
    #[serde(default)]
    pub control_plane: ControlPlane,
}

/// The control plane. On EKS, AWS runs it: the sizing is recorded for
/// reference and not provisioned.
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct ControlPlane {
    #[serde(default)]
    pub managed_by: ControlPlaneManager,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub count: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk: Option<Disk>,
    /// Kubernetes API endpoint access.
    #[serde(default)]
    pub endpoint_access: EndpointAccess,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ControlPlaneManager {
    /// Amazon EKS manages the control plane.
    #[default]
    Eks,
    /// An existing cluster's own control plane (target `kubernetes`).
    External,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum EndpointAccess {
    Public,
    Private,
    #[default]
    PublicAndPrivate,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct NodeGroup {
    /// Unique name; part of the EKS node group's name.
    pub name: String,
    #[serde(default)]
    pub role: NodeRole,
    /// EC2 instance type, e.g. `c6i.4xlarge` or `g5.xlarge`.
    pub instance_type: String,
    pub scaling: NodeScaling,
    pub disk: Disk,
    #[serde(default)]
    pub capacity_type: CapacityType,
    /// EKS AMI type; defaults to AL2023 (x86_64 standard, or NVIDIA for GPU groups).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ami_type: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub taints: Vec<Taint>,
    /// GPU groups get the `nvidia.com/gpu=true:NoSchedule` taint unless this is false.
    #[serde(default = "yes")]
    pub gpu_taint: bool,
}

fn yes() -> bool {
    true
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum NodeRole {
    #[default]
    Worker,
    Gpu,
    System,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum CapacityType {
    #[default]
    OnDemand,
    Spot,
}

/// Node group size: min ≤ desired ≤ max.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct NodeScaling {
    pub min: u32,
    pub desired: u32,
    pub max: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct Disk {
    /// Size in GiB.
    pub size_gib: u32,
    #[serde(default, rename = "type")]
    pub volume_type: VolumeType,
}

/// EBS volume types (all SSD-backed).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum VolumeType {
    #[default]
    Gp3,
    Gp2,
    Io1,
    Io2,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct Taint {
    pub key: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    pub effect: TaintEffect,
}

#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, JsonSchema,
)]
pub enum TaintEffect {
    NoSchedule,
    PreferNoSchedule,
    NoExecute,
}

/// Share of the cluster's capacity that workloads may request and use.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct ResourceQuotas {
    pub cpu: QuotaShare,
    pub memory: QuotaShare,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage: Option<QuotaShare>,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct QuotaShare {
    pub request: Checked<Percent>,
    pub limit: Checked<Percent>,
}
