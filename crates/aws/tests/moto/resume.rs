//! A run that crashed between AWS's create call and the calls that finish
//! the resource is completed by the next run, never duplicated.

use crate::common::*;
use aws_sdk_ec2::types::ResourceType;
use taskctl_aws::{StackSpec, sweep};
use taskctl_core::engine::Action;

#[tokio::test]
async fn next_run_adopts_and_finishes_half_made_resources() {
    let aws = aws().await;
    let profile = production_profile();
    let spec = StackSpec::from_profile(&profile, "crashed").expect("specs");
    let env = spec.environment.clone();

    // Crash after CreateVpc, before ModifyVpcAttribute (DNS hostnames off).
    let vpc_id = aws
        .ec2()
        .create_vpc()
        .cidr_block(&spec.vpc.cidr)
        .tag_specifications(spec.vpc.tags.ec2_spec(ResourceType::Vpc))
        .send()
        .await
        .expect("raw vpc")
        .vpc()
        .and_then(|v| v.vpc_id())
        .map(str::to_owned)
        .expect("vpc id");
    // Crash after CreateInternetGateway, before AttachInternetGateway.
    aws.ec2()
        .create_internet_gateway()
        .tag_specifications(
            spec.internet_gateway
                .tags
                .ec2_spec(ResourceType::InternetGateway),
        )
        .send()
        .await
        .expect("raw igw");
    // Crash after CreateRole, before AttachRolePolicy.
    let role = &spec.node_role;
    let tags: Vec<aws_sdk_iam::types::Tag> = role
        .tags
        .to_map()
        .into_iter()
        .map(|(k, v)| {
            aws_sdk_iam::types::Tag::builder()
                .key(k)
                .value(v)
                .build()
                .expect("tag")
        })
        .collect();
    aws.iam()
        .create_role()
        .role_name(&role.role_name)
        .path(taskctl_aws::iam_role::ROLE_PATH)
        .assume_role_policy_document(role.trust_policy())
        .set_tags(Some(tags))
        .send()
        .await
        .expect("raw role");

    // The next run, through the step graph `taskctl deploy` runs.
    let changes = converge(&aws, &profile, true).await;
    let action = |resource: &str| {
        changes.iter().find(|c| c.resource == resource).map(|c| {
            (
                c.action,
                c.diffs.iter().map(|d| d.field.clone()).collect::<Vec<_>>(),
            )
        })
    };
    assert_eq!(
        action("vpc"),
        Some((Action::Update, vec!["dns_hostnames".to_string()]))
    );
    assert_eq!(
        action("internet-gateway"),
        Some((Action::Update, vec!["attachment".to_string()]))
    );
    assert_eq!(
        action("iam-role/node"),
        Some((Action::Update, vec!["policies".to_string()]))
    );
    assert_eq!(
        action("iam-role/cluster").map(|a| a.0),
        Some(Action::Create)
    );

    let listing = list_with_boto3(&env);
    assert_eq!(count(&listing, "vpcs"), 1, "{listing:#}");
    assert_eq!(listing["vpcs"][0]["id"], vpc_id.as_str());
    assert_eq!(listing["vpcs"][0]["dns_hostnames"], true);
    assert_eq!(count(&listing, "internet_gateways"), 1);
    assert_eq!(listing["internet_gateways"][0]["vpcs"][0], vpc_id.as_str());
    let node_role = listing["roles"]
        .as_array()
        .and_then(|r| {
            r.iter()
                .find(|r| r["name"] == spec.node_role.role_name.as_str())
        })
        .cloned()
        .expect("node role");
    assert_eq!(node_role["policies"].as_array().map(Vec::len), Some(3));

    aws.call_log().clear();
    converge(&aws, &profile, true).await;
    assert_eq!(aws.call_log().mutating_calls(), []);

    sweep(&aws, &env, destroy_options(), &mut ignore_progress())
        .await
        .expect("sweep");
    assert_eq!(count(&list_with_boto3(&env), "vpcs"), 0);
}
