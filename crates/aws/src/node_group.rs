//! EKS managed node groups: workers and GPU nodes.
//!
//! GPU groups default to the `AL2023_x86_64_NVIDIA` AMI and the
//! `nvidia.com/gpu=true:NoSchedule` taint (unless the profile sets
//! `gpu_taint: false`), see [`NodeGroupSpec::from_profile`].
//!
//! Guarantees: [`create`] finds first (by cluster and name, then checks the
//! tags); a changed scaling config, labels or taints are applied in place by
//! [`update`] through one `UpdateNodegroupConfig`, never by recreating the
//! group. Instance type, AMI type, disk, capacity type, subnets and role need
//! a new group and are reported as replacements by [`diff()`].

use crate::Aws;
use crate::diff::{self, FieldDiff};
use crate::error::{AwsError, ErrorKind, Result};
use crate::tags::Tags;
use crate::wait::{self, Poll, Progress, WaitOptions, failed_status};
use aws_sdk_eks::types::{
    AmiTypes, CapacityTypes, Nodegroup, NodegroupScalingConfig, Taint as EksTaint, TaintEffect,
    UpdateLabelsPayload, UpdateTaintsPayload,
};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use taskctl_core::profile::{self as model, CapacityType, NodeRole};

pub const GPU_AMI_TYPE: &str = "AL2023_x86_64_NVIDIA";
pub const STANDARD_AMI_TYPE: &str = "AL2023_x86_64_STANDARD";
pub const GPU_TAINT_KEY: &str = "nvidia.com/gpu";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Scaling {
    pub min: i32,
    pub desired: i32,
    pub max: i32,
}

/// A Kubernetes taint in EKS's terms (`NO_SCHEDULE` …).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeTaint {
    pub key: String,
    pub value: Option<String>,
    /// `NO_SCHEDULE`, `PREFER_NO_SCHEDULE`, `NO_EXECUTE`.
    pub effect: String,
}

impl fmt::Display for NodeTaint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}={}:{}",
            self.key,
            self.value.as_deref().unwrap_or(""),
            self.effect
        )
    }
}

impl NodeTaint {
    fn to_eks(&self) -> EksTaint {
        EksTaint::builder()
            .key(&self.key)
            .set_value(self.value.clone())
            .effect(TaintEffect::from(self.effect.as_str()))
            .build()
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeGroupSpec {
    pub cluster_name: String,
    pub name: String,
    /// Filled in once the node role exists.
    pub node_role_arn: String,
    /// Filled in once the private subnets exist.
    pub subnet_ids: BTreeSet<String>,
    pub instance_type: String,
    pub ami_type: String,
    pub disk_size_gib: i32,
    /// `ON_DEMAND` or `SPOT`.
    pub capacity_type: String,
    pub scaling: Scaling,
    pub labels: BTreeMap<String, String>,
    pub taints: BTreeSet<NodeTaint>,
    pub tags: Tags,
}

impl NodeGroupSpec {
    /// The spec of a profile node group in `cluster_name`.
    pub fn from_profile(group: &model::NodeGroup, cluster_name: &str, tags: Tags) -> NodeGroupSpec {
        let gpu = group.role == NodeRole::Gpu;
        let mut taints: BTreeSet<NodeTaint> = group
            .taints
            .iter()
            .map(|t| NodeTaint {
                key: t.key.clone(),
                value: t.value.clone(),
                effect: match t.effect {
                    model::TaintEffect::NoSchedule => "NO_SCHEDULE",
                    model::TaintEffect::PreferNoSchedule => "PREFER_NO_SCHEDULE",
                    model::TaintEffect::NoExecute => "NO_EXECUTE",
                }
                .to_owned(),
            })
            .collect();
        if gpu && group.gpu_taint && !taints.iter().any(|t| t.key == GPU_TAINT_KEY) {
            taints.insert(NodeTaint {
                key: GPU_TAINT_KEY.into(),
                value: Some("true".into()),
                effect: "NO_SCHEDULE".into(),
            });
        }
        let mut labels = group.labels.clone();
        labels
            .entry("taskctl.dev/node-group".into())
            .or_insert_with(|| group.name.clone());
        let clamp = |n: u32| i32::try_from(n).unwrap_or(i32::MAX);
        NodeGroupSpec {
            cluster_name: cluster_name.to_owned(),
            name: group.name.clone(),
            node_role_arn: String::new(),
            subnet_ids: BTreeSet::new(),
            instance_type: group.instance_type.clone(),
            ami_type: group
                .ami_type
                .clone()
                .unwrap_or_else(|| if gpu { GPU_AMI_TYPE } else { STANDARD_AMI_TYPE }.to_owned()),
            disk_size_gib: clamp(group.disk.size_gib),
            capacity_type: match group.capacity_type {
                CapacityType::OnDemand => "ON_DEMAND",
                CapacityType::Spot => "SPOT",
            }
            .to_owned(),
            scaling: Scaling {
                min: clamp(group.scaling.min),
                desired: clamp(group.scaling.desired),
                max: clamp(group.scaling.max),
            },
            labels,
            taints,
            tags,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeGroupState {
    pub cluster_name: String,
    pub name: String,
    pub arn: String,
    /// `CREATING`, `ACTIVE`, `UPDATING`, `DELETING`, `CREATE_FAILED`, `DEGRADED` …
    pub status: String,
    pub node_role_arn: String,
    pub subnet_ids: BTreeSet<String>,
    pub instance_types: Vec<String>,
    pub ami_type: String,
    pub disk_size_gib: Option<i32>,
    pub capacity_type: String,
    pub scaling: Scaling,
    pub labels: BTreeMap<String, String>,
    pub taints: BTreeSet<NodeTaint>,
    pub issues: Vec<String>,
    pub tags: BTreeMap<String, String>,
}

fn state_of(n: &Nodegroup) -> NodeGroupState {
    let scaling = n.scaling_config();
    NodeGroupState {
        cluster_name: n.cluster_name().unwrap_or_default().to_owned(),
        name: n.nodegroup_name().unwrap_or_default().to_owned(),
        arn: n.nodegroup_arn().unwrap_or_default().to_owned(),
        status: n
            .status()
            .map(|s| s.as_str().to_owned())
            .unwrap_or_default(),
        node_role_arn: n.node_role().unwrap_or_default().to_owned(),
        subnet_ids: n.subnets().iter().cloned().collect(),
        instance_types: n.instance_types().to_vec(),
        ami_type: n
            .ami_type()
            .map(|a| a.as_str().to_owned())
            .unwrap_or_default(),
        disk_size_gib: n.disk_size(),
        capacity_type: n
            .capacity_type()
            .map(|c| c.as_str().to_owned())
            .unwrap_or_default(),
        scaling: Scaling {
            min: scaling.and_then(|s| s.min_size()).unwrap_or(0),
            desired: scaling.and_then(|s| s.desired_size()).unwrap_or(0),
            max: scaling.and_then(|s| s.max_size()).unwrap_or(0),
        },
        labels: n
            .labels()
            .map(|l| l.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
            .unwrap_or_default(),
        taints: n
            .taints()
            .iter()
            .map(|t| NodeTaint {
                key: t.key().unwrap_or_default().to_owned(),
                value: t.value().map(str::to_owned),
                effect: t
                    .effect()
                    .map(|e| e.as_str().to_owned())
                    .unwrap_or_default(),
            })
            .collect(),
        issues: n
            .health()
            .map(|h| {
                h.issues()
                    .iter()
                    .map(|i| {
                        format!(
                            "{}: {}",
                            i.code().map(|c| c.as_str()).unwrap_or("issue"),
                            i.message().unwrap_or_default()
                        )
                    })
                    .collect()
            })
            .unwrap_or_default(),
        tags: n
            .tags()
            .map(|t| t.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
            .unwrap_or_default(),
    }
}

/// The node group by cluster and name, whoever owns it.
pub(crate) async fn describe(
    aws: &Aws,
    cluster: &str,
    name: &str,
) -> Result<Option<NodeGroupState>> {
    match aws
        .eks
        .describe_nodegroup()
        .cluster_name(cluster)
        .nodegroup_name(name)
        .send()
        .await
    {
        Ok(out) => Ok(out.nodegroup().map(state_of)),
        Err(e) => {
            let e = AwsError::from_sdk("DescribeNodegroup", e);
            if e.is_not_found() { Ok(None) } else { Err(e) }
        }
    }
}

pub async fn find(aws: &Aws, spec: &NodeGroupSpec) -> Result<Option<NodeGroupState>> {
    let Some(state) = describe(aws, &spec.cluster_name, &spec.name).await? else {
        return Ok(None);
    };
    if !spec.tags.environment.owns(&state.tags) {
        return Err(AwsError::new(
            ErrorKind::Conflict,
            "DescribeNodegroup",
            format!(
                "node group `{}` of cluster `{}` exists but is not tagged as taskctl's",
                spec.name, spec.cluster_name
            ),
        ));
    }
    Ok(Some(state))
}

fn scaling_config(s: Scaling) -> NodegroupScalingConfig {
    NodegroupScalingConfig::builder()
        .min_size(s.min)
        .desired_size(s.desired)
        .max_size(s.max)
        .build()
}

/// Creates the node group unless it exists. Does not wait: see [`wait_active`].
pub async fn create(aws: &Aws, spec: &NodeGroupSpec) -> Result<NodeGroupState> {
    if let Some(state) = find(aws, spec).await? {
        return update(aws, spec, &state).await;
    }
    tracing::info!(provider = "aws", cluster = %spec.cluster_name, node_group = %spec.name, instance_type = %spec.instance_type, "creating node group");
    let out = aws
        .eks
        .create_nodegroup()
        .cluster_name(&spec.cluster_name)
        .nodegroup_name(&spec.name)
        .node_role(&spec.node_role_arn)
        .set_subnets(Some(spec.subnet_ids.iter().cloned().collect()))
        .instance_types(&spec.instance_type)
        .ami_type(AmiTypes::from(spec.ami_type.as_str()))
        .disk_size(spec.disk_size_gib)
        .capacity_type(CapacityTypes::from(spec.capacity_type.as_str()))
        .scaling_config(scaling_config(spec.scaling))
        .set_labels(Some(spec.labels.clone().into_iter().collect()))
        .set_taints(Some(spec.taints.iter().map(NodeTaint::to_eks).collect()))
        .set_tags(Some(spec.tags.to_map().into_iter().collect()))
        .send()
        .await
        .map_err(|e| AwsError::from_sdk("CreateNodegroup", e))?;
    out.nodegroup().map(state_of).ok_or_else(|| {
        AwsError::new(
            ErrorKind::Other,
            "CreateNodegroup",
            "AWS returned no node group",
        )
    })
}

/// Applies scaling, label and taint changes in place, in one call.
pub async fn update(
    aws: &Aws,
    spec: &NodeGroupSpec,
    state: &NodeGroupState,
) -> Result<NodeGroupState> {
    let mut state = state.clone();
    let scaling = (state.scaling != spec.scaling).then(|| scaling_config(spec.scaling));
    let labels = {
        let add: BTreeMap<_, _> = crate::tags::missing(&spec.labels, &state.labels);
        let remove: Vec<String> = state
            .labels
            .keys()
            .filter(|k| !spec.labels.contains_key(*k))
            .cloned()
            .collect();
        (!add.is_empty() || !remove.is_empty()).then(|| {
            UpdateLabelsPayload::builder()
                .set_add_or_update_labels((!add.is_empty()).then(|| add.into_iter().collect()))
                .set_remove_labels((!remove.is_empty()).then_some(remove))
                .build()
        })
    };
    let taints = {
        let add: Vec<EksTaint> = spec
            .taints
            .difference(&state.taints)
            .map(NodeTaint::to_eks)
            .collect();
        let remove: Vec<EksTaint> = state
            .taints
            .difference(&spec.taints)
            // A taint whose value changed is updated by the add, not removed.
            .filter(|t| {
                !spec
                    .taints
                    .iter()
                    .any(|s| s.key == t.key && s.effect == t.effect)
            })
            .map(NodeTaint::to_eks)
            .collect();
        (!add.is_empty() || !remove.is_empty()).then(|| {
            UpdateTaintsPayload::builder()
                .set_add_or_update_taints((!add.is_empty()).then_some(add))
                .set_remove_taints((!remove.is_empty()).then_some(remove))
                .build()
        })
    };
    if scaling.is_some() || labels.is_some() || taints.is_some() {
        tracing::info!(provider = "aws", cluster = %spec.cluster_name, node_group = %spec.name, min = spec.scaling.min, desired = spec.scaling.desired, max = spec.scaling.max, "updating node group config");
        aws.eks
            .update_nodegroup_config()
            .cluster_name(&spec.cluster_name)
            .nodegroup_name(&spec.name)
            .set_scaling_config(scaling)
            .set_labels(labels)
            .set_taints(taints)
            .send()
            .await
            .map_err(|e| AwsError::from_sdk("UpdateNodegroupConfig", e))?;
        state.scaling = spec.scaling;
        state.labels = spec.labels.clone();
        state.taints = spec.taints.clone();
    }
    Ok(state)
}

/// Waits until the node group is `ACTIVE`; fails fast on `CREATE_FAILED`,
/// `DELETE_FAILED` or `DEGRADED` with AWS's health issues.
pub async fn wait_active(
    aws: &Aws,
    cluster: &str,
    name: &str,
    options: WaitOptions,
    on_progress: &mut (dyn FnMut(&Progress) + Send),
) -> Result<NodeGroupState> {
    let resource = format!("node group {cluster}/{name}");
    wait::until(&resource, options, on_progress, || async {
        Ok(match describe(aws, cluster, name).await? {
            None => Poll::Failed("the node group does not exist".into()),
            Some(s) if s.status == "ACTIVE" => Poll::Ready(s),
            Some(s)
                if s.status.ends_with("FAILED")
                    || s.status == "DEGRADED"
                    || s.status == "DELETING" =>
            {
                Poll::Failed(failed_status(&s.status, &s.issues))
            }
            Some(s) => Poll::Pending(s.status),
        })
    })
    .await
}

/// Deletes the node group and waits until it is gone.
pub async fn delete(
    aws: &Aws,
    cluster: &str,
    name: &str,
    options: WaitOptions,
    on_progress: &mut (dyn FnMut(&Progress) + Send),
) -> Result<()> {
    match describe(aws, cluster, name).await? {
        None => return Ok(()),
        Some(s) if s.status != "DELETING" => {
            tracing::info!(
                provider = "aws",
                cluster,
                node_group = name,
                "deleting node group"
            );
            if let Err(e) = aws
                .eks
                .delete_nodegroup()
                .cluster_name(cluster)
                .nodegroup_name(name)
                .send()
                .await
            {
                let e = AwsError::from_sdk("DeleteNodegroup", e);
                if !e.is_not_found() {
                    return Err(e);
                }
            }
        }
        Some(_) => {}
    }
    let resource = format!("node group {cluster}/{name} deletion");
    wait::until(&resource, options, on_progress, || async {
        Ok(match describe(aws, cluster, name).await? {
            None => Poll::Ready(()),
            Some(s) => Poll::Pending(s.status),
        })
    })
    .await
}

pub fn diff(spec: &NodeGroupSpec, state: &NodeGroupState) -> Vec<FieldDiff> {
    let mut out = Vec::new();
    diff::field(
        &mut out,
        "scaling.min",
        &state.scaling.min,
        &spec.scaling.min,
    );
    diff::field(
        &mut out,
        "scaling.desired",
        &state.scaling.desired,
        &spec.scaling.desired,
    );
    diff::field(
        &mut out,
        "scaling.max",
        &state.scaling.max,
        &spec.scaling.max,
    );
    for (key, value) in &spec.labels {
        if state.labels.get(key) != Some(value) {
            out.push(FieldDiff::update(
                format!("labels.{key}"),
                state.labels.get(key).map_or("-", String::as_str),
                value,
            ));
        }
    }
    for key in state
        .labels
        .keys()
        .filter(|k| !spec.labels.contains_key(*k))
    {
        out.push(FieldDiff::update(
            format!("labels.{key}"),
            &state.labels[key],
            "-",
        ));
    }
    if state.taints != spec.taints {
        out.push(FieldDiff::update(
            "taints",
            diff::set(&state.taints),
            diff::set(&spec.taints),
        ));
    }
    let have_types = state.instance_types.join(",");
    diff::immutable(&mut out, "instance_type", &have_types, &spec.instance_type);
    diff::immutable(&mut out, "ami_type", &state.ami_type, &spec.ami_type);
    diff::immutable(
        &mut out,
        "disk_size_gib",
        &state
            .disk_size_gib
            .map_or_else(|| "-".to_owned(), |d| d.to_string()),
        &spec.disk_size_gib.to_string(),
    );
    diff::immutable(
        &mut out,
        "capacity_type",
        &state.capacity_type,
        &spec.capacity_type,
    );
    if !spec.node_role_arn.is_empty() {
        diff::immutable(
            &mut out,
            "node_role_arn",
            &state.node_role_arn,
            &spec.node_role_arn,
        );
    }
    if !spec.subnet_ids.is_empty() && state.subnet_ids != spec.subnet_ids {
        out.push(FieldDiff::replace(
            "subnet_ids",
            diff::set(&state.subnet_ids),
            diff::set(&spec.subnet_ids),
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tags::Environment;
    use taskctl_core::profile::{Disk, NodeScaling, VolumeType};

    fn group(role: NodeRole) -> model::NodeGroup {
        model::NodeGroup {
            name: "gpu".into(),
            role,
            instance_type: "g5.xlarge".into(),
            scaling: NodeScaling {
                min: 2,
                desired: 2,
                max: 4,
            },
            disk: Disk {
                size_gib: 500,
                volume_type: VolumeType::Gp3,
            },
            capacity_type: CapacityType::OnDemand,
            ami_type: None,
            labels: BTreeMap::new(),
            taints: vec![],
            gpu_taint: true,
        }
    }

    fn spec(role: NodeRole) -> NodeGroupSpec {
        NodeGroupSpec::from_profile(
            &group(role),
            "ts-prod",
            Tags::new(&Environment::new("ts", "prod"), "node-group/gpu", "r"),
        )
    }

    fn state_of_spec(s: &NodeGroupSpec) -> NodeGroupState {
        NodeGroupState {
            cluster_name: s.cluster_name.clone(),
            name: s.name.clone(),
            arn: "arn".into(),
            status: "ACTIVE".into(),
            node_role_arn: "role".into(),
            subnet_ids: BTreeSet::new(),
            instance_types: vec![s.instance_type.clone()],
            ami_type: s.ami_type.clone(),
            disk_size_gib: Some(s.disk_size_gib),
            capacity_type: s.capacity_type.clone(),
            scaling: s.scaling,
            labels: s.labels.clone(),
            taints: s.taints.clone(),
            issues: vec![],
            tags: s.tags.to_map(),
        }
    }

    #[test]
    fn gpu_group_gets_nvidia_ami_and_taint() {
        let s = spec(NodeRole::Gpu);
        assert_eq!(s.ami_type, GPU_AMI_TYPE);
        assert_eq!(s.taints.len(), 1);
        let taint = s.taints.iter().next().cloned();
        assert_eq!(
            taint.map(|t| t.to_string()).as_deref(),
            Some("nvidia.com/gpu=true:NO_SCHEDULE")
        );
        let mut no_taint = group(NodeRole::Gpu);
        no_taint.gpu_taint = false;
        let s = NodeGroupSpec::from_profile(&no_taint, "c", spec(NodeRole::Gpu).tags);
        assert!(s.taints.is_empty());
        let worker = spec(NodeRole::Worker);
        assert_eq!(worker.ami_type, STANDARD_AMI_TYPE);
        assert!(worker.taints.is_empty());
    }

    #[test]
    fn scaling_change_is_in_place() {
        let s = spec(NodeRole::Worker);
        let mut state = state_of_spec(&s);
        assert_eq!(diff(&s, &state), []);
        state.scaling.desired = 5;
        let mut want = s.clone();
        want.scaling.desired = 7;
        want.scaling.max = 10;
        state.scaling.max = 10;
        let d = diff(&want, &state);
        assert_eq!(d, [FieldDiff::update("scaling.desired", 5, 7)]);
        assert_eq!(d[0].to_string(), "scaling.desired 5 → 7");
        assert!(!crate::diff::needs_replacement(&d));
    }

    #[test]
    fn instance_type_change_replaces() {
        let s = spec(NodeRole::Gpu);
        let mut state = state_of_spec(&s);
        state.instance_types = vec!["g5.2xlarge".into()];
        assert!(crate::diff::needs_replacement(&diff(&s, &state)));
    }
}
