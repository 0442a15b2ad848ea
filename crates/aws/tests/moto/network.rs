//! VPC, subnets, gateways, route tables and security groups, one by one:
//! right attributes and tags, adopted by `find`, created once when `create`
//! runs twice, security group rules changed in place.

use crate::common::*;
use std::collections::{BTreeMap, BTreeSet};
use taskctl_aws::elastic_ip::{self, ElasticIpSpec};
use taskctl_aws::internet_gateway::{self, InternetGatewaySpec};
use taskctl_aws::nat_gateway::{self, NatGatewaySpec};
use taskctl_aws::route_table::{self, RouteTableSpec, RouteTarget};
use taskctl_aws::security_group::{self, Rule, SecurityGroupSpec};
use taskctl_aws::subnet::{self, SubnetSpec, Tier};
use taskctl_aws::vpc::{self, VpcSpec};
use taskctl_aws::{Environment, Tags};
use taskctl_core::profile::Protocol;
use taskctl_core::profile::value::PortRange;

fn vpc_spec(env: &Environment, run: &str) -> VpcSpec {
    VpcSpec {
        cidr: "10.0.0.0/16".into(),
        tags: Tags::new(env, "vpc", run),
    }
}

#[tokio::test]
async fn vpc_is_created_once_with_dns_on_and_adopted_by_a_later_run() {
    let aws = aws().await;
    let env = environment();
    let spec = vpc_spec(&env, "run-1");
    let first = vpc::create(&aws, &spec).await.expect("create");
    assert!(first.dns_support && first.dns_hostnames);
    assert_eq!(first.cidr, "10.0.0.0/16");
    assert_eq!(first.tags["managed-by"], "taskctl");
    assert_eq!(first.tags["taskctl:environment"], env.tag_value());
    assert_eq!(first.tags["taskctl:resource"], "vpc");
    assert_eq!(first.tags["taskctl:run"], "run-1");
    assert_eq!(first.tags["Name"], format!("{}-vpc", env.prefix()));

    // A later run (other run id) adopts: same VPC, nothing to change.
    let later = vpc_spec(&env, "run-2");
    let found = vpc::find(&aws, &later).await.expect("find").expect("found");
    assert_eq!(found.vpc_id, first.vpc_id);
    assert_eq!(vpc::diff(&later, &found), []);
    aws.call_log().clear();
    let again = vpc::create(&aws, &later).await.expect("create again");
    assert_eq!(again.vpc_id, first.vpc_id);
    assert_eq!(
        aws.call_log().mutating_calls(),
        [],
        "adopting makes no change"
    );
    // The run tag records the run that created it.
    assert_eq!(again.tags["taskctl:run"], "run-1");

    let listing = list_with_boto3(&env);
    assert_eq!(count(&listing, "vpcs"), 1, "{listing}");
    assert_eq!(listing["vpcs"][0]["dns_hostnames"], true);

    vpc::delete(&aws, &first.vpc_id).await.expect("delete");
    vpc::delete(&aws, &first.vpc_id)
        .await
        .expect("delete again is a no-op");
    assert_eq!(vpc::find(&aws, &later).await.expect("find"), None);
}

#[tokio::test]
async fn network_resources_have_their_attributes_and_are_made_once() {
    let aws = aws().await;
    let env = environment();
    let cluster = env.prefix();
    let v = vpc::create(&aws, &vpc_spec(&env, "r")).await.expect("vpc");

    let mut public = SubnetSpec::new(
        &env,
        "r",
        Tier::Public,
        "10.0.1.0/24",
        "us-west-2a",
        &cluster,
    );
    public.vpc_id.clone_from(&v.vpc_id);
    let mut private = SubnetSpec::new(
        &env,
        "r",
        Tier::Private,
        "10.0.10.0/24",
        "us-west-2a",
        &cluster,
    );
    private.vpc_id.clone_from(&v.vpc_id);
    let pub_state = subnet::create(&aws, &public).await.expect("public subnet");
    let pub_again = subnet::create(&aws, &public)
        .await
        .expect("public subnet again");
    assert_eq!(pub_state.subnet_id, pub_again.subnet_id);
    assert!(pub_state.map_public_ip_on_launch);
    assert_eq!(pub_state.zone, "us-west-2a");
    assert_eq!(pub_state.tags["kubernetes.io/role/elb"], "1");
    assert_eq!(
        pub_state.tags[&format!("kubernetes.io/cluster/{cluster}")],
        "shared"
    );
    let priv_state = subnet::create(&aws, &private)
        .await
        .expect("private subnet");
    assert!(!priv_state.map_public_ip_on_launch);
    assert_eq!(priv_state.tags["kubernetes.io/role/internal-elb"], "1");

    let igw_spec = InternetGatewaySpec {
        vpc_id: v.vpc_id.clone(),
        tags: Tags::new(&env, "internet-gateway", "r"),
    };
    let igw = internet_gateway::create(&aws, &igw_spec)
        .await
        .expect("igw");
    assert_eq!(igw.attached_vpcs, std::slice::from_ref(&v.vpc_id));
    let igw_again = internet_gateway::create(&aws, &igw_spec)
        .await
        .expect("igw again");
    assert_eq!(igw.internet_gateway_id, igw_again.internet_gateway_id);

    let eip_spec = ElasticIpSpec {
        tags: Tags::new(&env, "elastic-ip/nat/us-west-2a", "r"),
    };
    let eip = elastic_ip::create(&aws, &eip_spec).await.expect("eip");
    assert_eq!(
        elastic_ip::create(&aws, &eip_spec)
            .await
            .expect("eip again")
            .allocation_id,
        eip.allocation_id
    );

    let nat_spec = NatGatewaySpec {
        zone: "us-west-2a".into(),
        subnet_id: pub_state.subnet_id.clone(),
        allocation_id: eip.allocation_id.clone(),
        tags: Tags::new(&env, "nat-gateway/us-west-2a", "r"),
    };
    let nat = nat_gateway::create(&aws, &nat_spec).await.expect("nat");
    let mut seen = Vec::new();
    let nat = nat_gateway::wait_available(
        &aws,
        &nat.nat_gateway_id,
        fast_wait(),
        &mut |p: &taskctl_aws::Progress| seen.push(p.status.clone()),
    )
    .await
    .expect("nat available");
    assert_eq!(nat.state, "available");
    assert_eq!(nat.subnet_id, pub_state.subnet_id);
    assert!(nat.allocation_ids.contains(&eip.allocation_id));
    assert_eq!(
        nat_gateway::create(&aws, &nat_spec)
            .await
            .expect("nat again")
            .nat_gateway_id,
        nat.nat_gateway_id
    );
    assert_eq!(nat_gateway::diff(&nat_spec, &nat), []);

    let public_rt = RouteTableSpec {
        vpc_id: v.vpc_id.clone(),
        default_route: RouteTarget::InternetGateway(igw.internet_gateway_id.clone()),
        subnet_ids: [pub_state.subnet_id.clone()].into(),
        tags: Tags::new(&env, "route-table/public", "r"),
    };
    let rt = route_table::create(&aws, &public_rt)
        .await
        .expect("public route table");
    assert_eq!(
        rt.default_route,
        Some(RouteTarget::InternetGateway(
            igw.internet_gateway_id.clone()
        ))
    );
    assert_eq!(
        rt.subnet_ids(),
        BTreeSet::from([pub_state.subnet_id.clone()])
    );
    let private_rt = RouteTableSpec {
        vpc_id: v.vpc_id.clone(),
        default_route: RouteTarget::NatGateway(nat.nat_gateway_id.clone()),
        subnet_ids: [priv_state.subnet_id.clone()].into(),
        tags: Tags::new(&env, "route-table/private/us-west-2a", "r"),
    };
    let prt = route_table::create(&aws, &private_rt)
        .await
        .expect("private route table");
    let observed = route_table::find(&aws, &private_rt)
        .await
        .expect("find")
        .expect("found");
    assert_eq!(observed.route_table_id, prt.route_table_id);
    assert_eq!(
        observed.default_route,
        Some(RouteTarget::NatGateway(nat.nat_gateway_id.clone()))
    );
    assert_eq!(route_table::diff(&private_rt, &observed), []);
    aws.call_log().clear();
    route_table::create(&aws, &private_rt)
        .await
        .expect("private route table again");
    assert_eq!(aws.call_log().mutating_calls(), []);

    let listing = list_with_boto3(&env);
    for (kind, n) in [
        ("vpcs", 1),
        ("subnets", 2),
        ("internet_gateways", 1),
        ("elastic_ips", 1),
        ("nat_gateways", 1),
        ("route_tables", 2),
    ] {
        assert_eq!(count(&listing, kind), n, "{kind}: {listing}");
    }
    let private_listed = listing["route_tables"]
        .as_array()
        .and_then(|t| {
            t.iter()
                .find(|t| t["resource"] == "route-table/private/us-west-2a")
        })
        .cloned()
        .expect("private table listed");
    assert_eq!(
        private_listed["default_target"],
        nat.nat_gateway_id.as_str()
    );
    assert_eq!(private_listed["subnets"][0], priv_state.subnet_id.as_str());

    let removed = taskctl_aws::sweep(&aws, &env, destroy_options(), &mut ignore_progress())
        .await
        .expect("sweep");
    assert!(
        removed.iter().any(|r| r.kind == "nat-gateway"),
        "{removed:?}"
    );
    let listing = list_with_boto3(&env);
    for kind in [
        "vpcs",
        "subnets",
        "internet_gateways",
        "elastic_ips",
        "nat_gateways",
        "route_tables",
    ] {
        assert_eq!(count(&listing, kind), 0, "{kind} left: {listing}");
    }
}

fn rule(protocol: Protocol, from: u16, to: u16, cidr: &str) -> Rule {
    Rule::from_profile(protocol, PortRange::Range(from, to), cidr)
}

#[tokio::test]
async fn security_group_rules_change_in_place() {
    let aws = aws().await;
    let env = environment();
    let v = vpc::create(&aws, &vpc_spec(&env, "r")).await.expect("vpc");
    let tags = Tags::new(&env, "security-group/cluster", "r");
    let all_out = Rule::from_profile(Protocol::All, PortRange::All, "0.0.0.0/0");
    let mut spec = SecurityGroupSpec {
        vpc_id: v.vpc_id.clone(),
        group_name: tags.name(),
        description: "test".into(),
        ingress: [
            rule(Protocol::Tcp, 80, 80, "0.0.0.0/0"),
            rule(Protocol::Tcp, 443, 443, "0.0.0.0/0"),
        ]
        .into(),
        egress: [all_out.clone()].into(),
        descriptions: BTreeMap::new(),
        tags,
    };
    let created = security_group::create(&aws, &spec).await.expect("create");
    let observed = security_group::find(&aws, &spec)
        .await
        .expect("find")
        .expect("found");
    assert_eq!(observed.group_id, created.group_id);
    assert_eq!(observed.ingress, spec.ingress);
    assert_eq!(observed.egress, spec.egress);
    assert_eq!(security_group::diff(&spec, &observed), []);

    // New rules: drop 80, add 8443 from the VPC, egress only HTTPS.
    spec.ingress = [
        rule(Protocol::Tcp, 443, 443, "0.0.0.0/0"),
        rule(Protocol::Tcp, 8443, 8443, "10.0.0.0/16"),
    ]
    .into();
    spec.egress = [rule(Protocol::Tcp, 443, 443, "0.0.0.0/0")].into();
    let diffs = security_group::diff(&spec, &observed);
    assert_eq!(diffs.len(), 4, "{diffs:?}");
    aws.call_log().clear();
    let updated = security_group::create(&aws, &spec)
        .await
        .expect("update through create");
    assert_eq!(updated.group_id, created.group_id, "same group");
    let ops: Vec<String> = aws
        .call_log()
        .mutating_calls()
        .into_iter()
        .map(|c| c.operation)
        .collect();
    assert!(
        !ops.iter()
            .any(|o| o == "CreateSecurityGroup" || o == "DeleteSecurityGroup"),
        "{ops:?}"
    );
    assert!(
        ops.iter().any(|o| o == "RevokeSecurityGroupIngress"),
        "{ops:?}"
    );
    assert!(
        ops.iter().any(|o| o == "AuthorizeSecurityGroupEgress"),
        "{ops:?}"
    );
    let observed = security_group::find(&aws, &spec)
        .await
        .expect("find")
        .expect("found");
    assert_eq!(observed.ingress, spec.ingress);
    assert_eq!(observed.egress, spec.egress);
    assert_eq!(security_group::diff(&spec, &observed), []);

    taskctl_aws::sweep(&aws, &env, destroy_options(), &mut ignore_progress())
        .await
        .expect("sweep");
}

#[tokio::test]
async fn a_subnet_moves_between_route_tables_without_a_gap() {
    let aws = aws().await;
    let env = environment();
    let v = vpc::create(&aws, &vpc_spec(&env, "r")).await.expect("vpc");
    let mut s = SubnetSpec::new(
        &env,
        "r",
        Tier::Private,
        "10.0.20.0/24",
        "us-west-2b",
        &env.prefix(),
    );
    s.vpc_id.clone_from(&v.vpc_id);
    let subnet_state = subnet::create(&aws, &s).await.expect("subnet");
    let igw = internet_gateway::create(
        &aws,
        &InternetGatewaySpec {
            vpc_id: v.vpc_id.clone(),
            tags: Tags::new(&env, "internet-gateway", "r"),
        },
    )
    .await
    .expect("igw");
    let table = |name: &str, subnets: BTreeSet<String>| RouteTableSpec {
        vpc_id: v.vpc_id.clone(),
        default_route: RouteTarget::InternetGateway(igw.internet_gateway_id.clone()),
        subnet_ids: subnets,
        tags: Tags::new(&env, name, "r"),
    };
    let first = table("route-table/old", [subnet_state.subnet_id.clone()].into());
    route_table::create(&aws, &first).await.expect("old table");
    let second = table("route-table/new", [subnet_state.subnet_id.clone()].into());
    aws.call_log().clear();
    let moved = route_table::create(&aws, &second).await.expect("new table");
    let ops: Vec<String> = aws
        .call_log()
        .mutating_calls()
        .into_iter()
        .map(|c| c.operation)
        .collect();
    assert!(
        ops.contains(&"ReplaceRouteTableAssociation".to_string()),
        "{ops:?}"
    );
    assert_eq!(
        moved.subnet_ids(),
        BTreeSet::from([subnet_state.subnet_id.clone()])
    );
    let old = route_table::find(&aws, &first)
        .await
        .expect("find")
        .expect("old");
    assert!(old.associations.is_empty(), "{old:?}");

    taskctl_aws::sweep(&aws, &env, destroy_options(), &mut ignore_progress())
        .await
        .expect("sweep");
}
