//! The production profile end to end through the step graph `taskctl
//! deploy` runs: everything created, checked with boto3, a second pass and
//! a plan make zero mutating calls, then destroy and sweep leave nothing
//! tagged.

use crate::common::*;
use taskctl_aws::{StackSpec, sweep};
use taskctl_core::engine::Action;

#[tokio::test]
async fn production_stack_is_built_once_and_torn_down_completely() {
    let aws = aws().await;
    let profile = production_profile();
    let env = StackSpec::from_profile(&profile, "run-1")
        .expect("specs")
        .environment;

    let changes = converge(&aws, &profile, true).await;
    let mut created: Vec<&str> = changes
        .iter()
        .filter(|c| c.action == Action::Create)
        .map(|c| c.resource.as_str())
        .collect();
    assert_eq!(
        created.len(),
        changes.len(),
        "everything is new: {changes:#?}"
    );
    created.sort_unstable();
    assert_eq!(
        created,
        [
            "cluster",
            "elastic-ip/nat/us-west-2a",
            "elastic-ip/nat/us-west-2b",
            "iam-role/cluster",
            "iam-role/node",
            "internet-gateway",
            "nat-gateway/us-west-2a",
            "nat-gateway/us-west-2b",
            "node-group/gpu",
            "node-group/worker",
            "route-table/private/us-west-2a",
            "route-table/private/us-west-2b",
            "route-table/public",
            "security-group/cluster",
            "subnet/private/us-west-2a",
            "subnet/private/us-west-2b",
            "subnet/public/us-west-2a",
            "subnet/public/us-west-2b",
            "vpc",
        ]
    );

    // Independent check with boto3.
    let listing = list_with_boto3(&env);
    for (kind, n) in [
        ("vpcs", 1),
        ("subnets", 4),
        ("internet_gateways", 1),
        ("elastic_ips", 2),
        ("nat_gateways", 2),
        ("route_tables", 3),
        ("security_groups", 1),
        ("clusters", 1),
        ("roles", 2),
    ] {
        assert_eq!(count(&listing, kind), n, "{kind}: {listing:#}");
    }
    let cluster = &listing["clusters"][0];
    assert_eq!(cluster["name"], env.prefix().as_str());
    assert_eq!(cluster["version"], "1.34");
    assert_eq!(cluster["subnets"].as_array().map(Vec::len), Some(4));
    let groups = cluster["node_groups"].as_array().expect("node groups");
    assert_eq!(groups.len(), 2);
    let gpu = &groups[0];
    assert_eq!(gpu["name"], "gpu");
    assert_eq!(gpu["ami_type"], "AL2023_x86_64_NVIDIA");
    assert_eq!(gpu["taints"][0]["key"], "nvidia.com/gpu");
    assert_eq!(gpu["taints"][0]["effect"], "NO_SCHEDULE");
    assert_eq!(gpu["scaling"]["desiredSize"], 2);
    let worker = &groups[1];
    assert_eq!(worker["instance_types"][0], "c6i.4xlarge");
    assert_eq!(worker["disk_size"], 200);
    assert_eq!(worker["scaling"]["minSize"], 5);
    let sg = &listing["security_groups"][0];
    assert_eq!(
        sg["ingress"],
        serde_json::json!(["tcp:443-443:0.0.0.0/0", "tcp:80-80:0.0.0.0/0"])
    );
    assert_eq!(sg["egress"], serde_json::json!(["-1:0.0.0.0/0"]));
    let nat_targets: Vec<&str> = listing["route_tables"]
        .as_array()
        .expect("tables")
        .iter()
        .filter(|t| {
            t["resource"]
                .as_str()
                .is_some_and(|r| r.starts_with("route-table/private/"))
        })
        .filter_map(|t| t["default_target"].as_str())
        .collect();
    assert_eq!(nat_targets.len(), 2);
    assert_ne!(nat_targets[0], nat_targets[1], "one NAT per zone");
    for s in listing["subnets"].as_array().expect("subnets") {
        let public = s["tags"]["taskctl:resource"]
            .as_str()
            .is_some_and(|r| r.contains("/public/"));
        assert_eq!(s["map_public_ip"], public, "{s}");
    }

    // A second run (new run id) adopts everything and changes nothing.
    aws.call_log().clear();
    let changes = converge(&aws, &profile, true).await;
    assert!(
        changes.iter().all(|c| c.action == Action::NoOp),
        "{changes:#?}"
    );
    assert_eq!(changes.len(), 19);
    assert_eq!(
        aws.call_log().mutating_calls(),
        [],
        "second pass mutates nothing"
    );
    assert!(!aws.call_log().calls().is_empty());

    // A plan of a changed profile reports the change and mutates nothing.
    let mut scaled = profile.clone();
    for g in &mut scaled.compute.as_mut().expect("compute").node_groups {
        if g.name == "worker" {
            g.scaling.desired = 7;
        }
    }
    let plan = StackSpec::from_profile(&scaled, "run-3").expect("specs");
    aws.call_log().clear();
    let changes = converge(&aws, &scaled, false).await;
    assert_eq!(aws.call_log().mutating_calls(), [], "plan mutates nothing");
    let updates: Vec<_> = changes
        .iter()
        .filter(|c| c.action != Action::NoOp)
        .collect();
    assert_eq!(updates.len(), 1, "{updates:#?}");
    assert_eq!(updates[0].resource, "node-group/worker");
    assert_eq!(updates[0].action, Action::Update);
    let diff = &updates[0].diffs[0];
    assert_eq!(
        (diff.field.as_str(), diff.from.as_str(), diff.to.as_str()),
        ("scaling.desired", "5", "7")
    );

    // Applying it scales the worker group in place; then all is in sync.
    let before = taskctl_aws::node_group::find(&aws, &plan.node_groups[0])
        .await
        .expect("find")
        .expect("worker");
    aws.call_log().clear();
    let changes = converge(&aws, &scaled, true).await;
    let ops: Vec<String> = aws
        .call_log()
        .mutating_calls()
        .into_iter()
        .map(|c| c.operation)
        .collect();
    assert_eq!(ops, ["UpdateNodegroupConfig"]);
    assert_eq!(
        changes
            .iter()
            .filter(|c| c.action == Action::Update)
            .count(),
        1
    );
    let after = taskctl_aws::node_group::find(&aws, &plan.node_groups[0])
        .await
        .expect("find")
        .expect("worker");
    assert_eq!(after.arn, before.arn, "same node group");
    assert_eq!(after.scaling.desired, 7);

    // Teardown through the graph, dependents first, then a sweep finds
    // nothing left.
    let removed = destroy(&aws, &scaled).await;
    assert_eq!(removed.len(), 19, "{removed:#?}");
    let at = |r: &str| {
        removed
            .iter()
            .position(|x| x == r)
            .unwrap_or_else(|| panic!("{r}: {removed:?}"))
    };
    assert!(at("node-group/worker") < at("cluster"), "{removed:?}");
    assert!(at("node-group/gpu") < at("cluster"), "{removed:?}");
    assert!(at("cluster") < at("iam-role/cluster"), "{removed:?}");
    assert!(at("cluster") < at("security-group/cluster"), "{removed:?}");
    assert!(
        at("nat-gateway/us-west-2a") < at("elastic-ip/nat/us-west-2a"),
        "{removed:?}"
    );
    assert!(at("subnet/public/us-west-2a") < at("vpc"), "{removed:?}");
    let swept = sweep(&aws, &env, destroy_options(), &mut ignore_progress())
        .await
        .expect("sweep");
    assert!(
        swept.iter().all(|r| r.kind == "network-interface"),
        "only stray interfaces may remain: {swept:#?}"
    );
    let listing = list_with_boto3(&env);
    for kind in [
        "vpcs",
        "subnets",
        "internet_gateways",
        "elastic_ips",
        "nat_gateways",
        "route_tables",
        "security_groups",
        "clusters",
        "roles",
    ] {
        assert_eq!(count(&listing, kind), 0, "{kind} left: {listing:#}");
    }
}

#[tokio::test]
async fn a_single_nat_gateway_serves_every_private_zone() {
    let aws = aws().await;
    let mut profile = production_profile();
    profile.network.as_mut().expect("network").nat_gateways =
        taskctl_core::profile::NatGateways::Single;
    profile
        .compute
        .as_mut()
        .expect("compute")
        .node_groups
        .clear();
    let env = StackSpec::from_profile(&profile, "r")
        .expect("specs")
        .environment;
    converge(&aws, &profile, true).await;

    let listing = list_with_boto3(&env);
    assert_eq!(count(&listing, "nat_gateways"), 1, "{listing:#}");
    assert_eq!(count(&listing, "elastic_ips"), 1);
    let nat = listing["nat_gateways"][0]["id"].as_str().expect("nat id");
    let private: Vec<&serde_json::Value> = listing["route_tables"]
        .as_array()
        .expect("tables")
        .iter()
        .filter(|t| {
            t["resource"]
                .as_str()
                .is_some_and(|r| r.starts_with("route-table/private/"))
        })
        .collect();
    assert_eq!(private.len(), 2);
    assert!(
        private.iter().all(|t| t["default_target"] == nat),
        "{private:#?}"
    );

    sweep(&aws, &env, destroy_options(), &mut ignore_progress())
        .await
        .expect("sweep");
    assert_eq!(count(&list_with_boto3(&env), "nat_gateways"), 0);
}
