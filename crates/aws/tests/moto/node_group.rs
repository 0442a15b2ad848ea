//! EKS cluster and node groups: GPU node group attributes, waiting with
//! progress, scaling changed in place.

use crate::common::*;
use std::collections::BTreeSet;
use taskctl_aws::cluster::{self, ClusterSpec};
use taskctl_aws::iam_role::{self, RoleSpec};
use taskctl_aws::node_group::{self, NodeGroupSpec};
use taskctl_aws::{Progress, Tags};
use taskctl_core::profile::{EndpointAccess, NodeRole};

#[tokio::test]
async fn gpu_node_group_scaling_is_updated_in_place() {
    let aws = aws().await;
    let profile = production_profile();
    let env = taskctl_aws::stack::environment_of(&profile);
    let cluster_role = iam_role::create(
        &aws,
        &RoleSpec::cluster(Tags::new(&env, "iam-role/cluster", "r")),
    )
    .await
    .expect("role");
    let node_role = iam_role::create(&aws, &RoleSpec::node(Tags::new(&env, "iam-role/node", "r")))
        .await
        .expect("role");
    // moto does not check that subnets exist; the stack test uses real ones.
    let subnets: BTreeSet<String> = ["subnet-0a".to_string(), "subnet-0b".to_string()].into();
    let cluster_spec = ClusterSpec {
        name: env.prefix(),
        version: taskctl_aws::stack::kubernetes_version(&profile).expect("version"),
        role_arn: cluster_role.arn.clone(),
        subnet_ids: subnets.clone(),
        security_group_ids: BTreeSet::new(),
        endpoint_public_access: false,
        endpoint_private_access: false,
        tags: Tags::new(&env, "cluster", "r"),
    }
    .endpoint_access(EndpointAccess::PublicAndPrivate);
    let created = cluster::create(&aws, &cluster_spec).await.expect("cluster");
    let mut seen: Vec<Progress> = Vec::new();
    let active = cluster::wait_active(
        &aws,
        &cluster_spec.name,
        fast_wait(),
        &mut |p: &Progress| seen.push(p.clone()),
    )
    .await
    .expect("active");
    assert_eq!(active.arn, created.arn);
    assert_eq!(active.version, "1.34");
    assert!(active.endpoint_public_access && active.endpoint_private_access);
    assert_eq!(cluster::diff(&cluster_spec, &active), []);
    assert_eq!(
        cluster::create(&aws, &cluster_spec)
            .await
            .expect("again")
            .arn,
        created.arn
    );

    let compute = profile.compute.as_ref().expect("compute");
    let gpu = compute
        .node_groups
        .iter()
        .find(|g| g.role == NodeRole::Gpu)
        .expect("gpu group");
    let mut spec = NodeGroupSpec::from_profile(
        gpu,
        &cluster_spec.name,
        Tags::new(&env, "node-group/gpu", "r"),
    );
    spec.node_role_arn.clone_from(&node_role.arn);
    spec.subnet_ids = subnets;
    node_group::create(&aws, &spec).await.expect("node group");
    let group = node_group::wait_active(
        &aws,
        &spec.cluster_name,
        &spec.name,
        fast_wait(),
        &mut ignore_progress(),
    )
    .await
    .expect("active");
    assert_eq!(group.ami_type, "AL2023_x86_64_NVIDIA");
    assert_eq!(group.instance_types, ["g5.xlarge"]);
    assert_eq!(group.disk_size_gib, Some(500));
    assert_eq!(group.capacity_type, "ON_DEMAND");
    assert_eq!(
        (group.scaling.min, group.scaling.desired, group.scaling.max),
        (2, 2, 4)
    );
    assert_eq!(
        group
            .taints
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>(),
        ["nvidia.com/gpu=true:NO_SCHEDULE"]
    );
    assert_eq!(group.labels["taskctl.dev/node-group"], "gpu");
    assert_eq!(group.tags["taskctl:resource"], "node-group/gpu");
    assert_eq!(node_group::diff(&spec, &group), []);

    // Scale 2 → 3 (max 4 → 6): one UpdateNodegroupConfig, same node group.
    spec.scaling.desired = 3;
    spec.scaling.max = 6;
    let diffs = node_group::diff(&spec, &group);
    let shown: Vec<String> = diffs.iter().map(ToString::to_string).collect();
    assert_eq!(shown, ["scaling.desired 2 → 3", "scaling.max 4 → 6"]);
    aws.call_log().clear();
    node_group::create(&aws, &spec)
        .await
        .expect("update through create");
    let ops: Vec<String> = aws
        .call_log()
        .mutating_calls()
        .into_iter()
        .map(|c| c.operation)
        .collect();
    assert_eq!(ops, ["UpdateNodegroupConfig"]);
    let after = node_group::find(&aws, &spec)
        .await
        .expect("find")
        .expect("found");
    assert_eq!(after.arn, group.arn, "not recreated");
    assert_eq!(
        (after.scaling.min, after.scaling.desired, after.scaling.max),
        (2, 3, 6)
    );
    assert_eq!(node_group::diff(&spec, &after), []);

    let removed = taskctl_aws::sweep(&aws, &env, destroy_options(), &mut ignore_progress())
        .await
        .expect("sweep");
    let kinds: Vec<&str> = removed.iter().map(|r| r.kind).collect();
    assert_eq!(
        kinds,
        ["node-group", "cluster", "iam-role", "iam-role"],
        "{removed:?}"
    );
    assert_eq!(
        cluster::find(&aws, &cluster_spec).await.expect("find"),
        None
    );
}
