use crate::profile::value::{Checked, Quantity};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::VolumeType;

/// Storage: the cluster's default storage class and local space for logs.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct Storage {
    pub class: StorageClass,
    /// Space kept for logs and temporary files (the second seed asks 10GB).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logs: Option<Checked<Quantity>>,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct StorageClass {
    pub name: String,
    #[serde(default = "default_provisioner")]
    pub provisioner: String,
    #[serde(default)]
    pub volume_type: VolumeType,
    /// Make it the cluster's default storage class.
    #[serde(default)]
    pub default: bool,
    #[serde(default = "yes")]
    pub encrypted: bool,
    #[serde(default)]
    pub reclaim_policy: ReclaimPolicy,
    #[serde(default)]
    pub volume_binding_mode: VolumeBindingMode,
}

fn default_provisioner() -> String {
    "ebs.csi.aws.com".into()
}

fn yes() -> bool {
    true
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum ReclaimPolicy {
    #[default]
    Delete,
    Retain,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum VolumeBindingMode {
    #[default]
    WaitForFirstConsumer,
    Immediate,
}
