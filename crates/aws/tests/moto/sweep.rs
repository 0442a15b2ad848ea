//! A sweep after an interrupted run: only the environment is known, and
//! whatever carries its tags goes, in an order AWS accepts.

use crate::common::*;
use taskctl_aws::{StackSpec, sweep};

#[tokio::test]
async fn sweep_removes_a_half_built_environment_and_nothing_else() {
    let aws = aws().await;
    let mut profile = production_profile();
    // A run that stopped before the cluster: no compute node groups yet.
    profile
        .compute
        .as_mut()
        .expect("compute")
        .node_groups
        .clear();
    let env = StackSpec::from_profile(&profile, "crashed-run")
        .expect("specs")
        .environment;
    converge(&aws, &profile, true).await;

    // A neighbour environment that must survive the sweep.
    let neighbour_profile = production_profile();
    let neighbour = StackSpec::from_profile(&neighbour_profile, "n").expect("specs");
    let neighbour_vpc = taskctl_aws::vpc::create(&aws, &neighbour.vpc)
        .await
        .expect("neighbour vpc");

    let removed = sweep(&aws, &env, destroy_options(), &mut ignore_progress())
        .await
        .expect("sweep");
    let mut kinds: Vec<&str> = removed
        .iter()
        .map(|r| r.kind)
        .filter(|k| *k != "network-interface")
        .collect();
    kinds.sort_unstable();
    assert_eq!(
        kinds,
        [
            "cluster",
            "elastic-ip",
            "elastic-ip",
            "iam-role",
            "iam-role",
            "internet-gateway",
            "nat-gateway",
            "nat-gateway",
            "route-table",
            "route-table",
            "route-table",
            "security-group",
            "subnet",
            "subnet",
            "subnet",
            "subnet",
            "vpc",
        ],
        "{removed:#?}"
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
    // A second sweep finds nothing.
    assert_eq!(
        sweep(&aws, &env, destroy_options(), &mut ignore_progress())
            .await
            .expect("sweep"),
        []
    );

    let still = taskctl_aws::vpc::find(&aws, &neighbour.vpc)
        .await
        .expect("find");
    assert_eq!(still.map(|v| v.vpc_id), Some(neighbour_vpc.vpc_id.clone()));
    taskctl_aws::vpc::delete(&aws, &neighbour_vpc.vpc_id)
        .await
        .expect("cleanup");
}
