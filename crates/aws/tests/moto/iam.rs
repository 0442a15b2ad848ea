//! IAM roles: trust policy, managed policies, tags, found by name and owned
//! by tags.

use crate::common::*;
use taskctl_aws::iam_role::{self, EKS_CLUSTER_POLICY, EKS_CNI_POLICY, RoleSpec};
use taskctl_aws::{ErrorKind, Tags};

#[tokio::test]
async fn roles_are_made_once_with_trust_and_policies() {
    let aws = aws().await;
    let env = environment();
    let cluster = RoleSpec::cluster(Tags::new(&env, "iam-role/cluster", "r"));
    let node = RoleSpec::node(Tags::new(&env, "iam-role/node", "r"));
    let c = iam_role::create(&aws, &cluster)
        .await
        .expect("cluster role");
    assert!(
        c.arn
            .ends_with(&format!("role/taskctl/{}", cluster.role_name)),
        "{}",
        c.arn
    );
    let n = iam_role::create(&aws, &node).await.expect("node role");

    let found = iam_role::find(&aws, &cluster)
        .await
        .expect("find")
        .expect("found");
    assert_eq!(found.principals, ["eks.amazonaws.com".to_string()].into());
    assert_eq!(found.policies, [EKS_CLUSTER_POLICY.to_string()].into());
    assert_eq!(found.tags["taskctl:environment"], env.tag_value());
    assert_eq!(iam_role::diff(&cluster, &found), []);
    let found_node = iam_role::find(&aws, &node)
        .await
        .expect("find")
        .expect("found");
    assert_eq!(
        found_node.principals,
        ["ec2.amazonaws.com".to_string()].into()
    );
    assert_eq!(found_node.policies, node.policies);
    assert_eq!(found_node.arn, n.arn);

    aws.call_log().clear();
    iam_role::create(&aws, &cluster).await.expect("again");
    assert_eq!(aws.call_log().mutating_calls(), []);

    // A policy detached behind our back is put back by update, in place.
    aws.iam()
        .detach_role_policy()
        .role_name(&node.role_name)
        .policy_arn(EKS_CNI_POLICY)
        .send()
        .await
        .expect("detach");
    let drifted = iam_role::find(&aws, &node)
        .await
        .expect("find")
        .expect("found");
    assert_eq!(iam_role::diff(&node, &drifted)[0].field, "policies");
    iam_role::update(&aws, &node, &drifted)
        .await
        .expect("update");
    let fixed = iam_role::find(&aws, &node)
        .await
        .expect("find")
        .expect("found");
    assert_eq!(fixed.policies, node.policies);

    let boto = list_with_boto3(&env);
    assert_eq!(count(&boto, "roles"), 2, "{boto}");

    iam_role::delete(&aws, &cluster.role_name)
        .await
        .expect("delete");
    iam_role::delete(&aws, &node.role_name)
        .await
        .expect("delete");
    iam_role::delete(&aws, &node.role_name)
        .await
        .expect("delete again");
    assert_eq!(iam_role::find(&aws, &cluster).await.expect("find"), None);
}

#[tokio::test]
async fn a_role_taskctl_does_not_own_is_a_conflict() {
    let aws = aws().await;
    let env = environment();
    let spec = RoleSpec::cluster(Tags::new(&env, "iam-role/cluster", "r"));
    aws.iam()
        .create_role()
        .role_name(&spec.role_name)
        .assume_role_policy_document(spec.trust_policy())
        .send()
        .await
        .expect("foreign role");
    let err = iam_role::create(&aws, &spec)
        .await
        .expect_err("not adopted");
    assert_eq!(err.kind, ErrorKind::Conflict, "{err}");
    aws.iam()
        .delete_role()
        .role_name(&spec.role_name)
        .send()
        .await
        .expect("cleanup");
}
