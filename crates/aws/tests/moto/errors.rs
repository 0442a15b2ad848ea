//! SDK errors are mapped once, with their kind, code and request id.

use crate::common::*;
use taskctl_aws::{AwsError, ErrorKind};

#[tokio::test]
async fn missing_vpc_is_not_found_with_code_and_request_id() {
    let aws = aws().await;
    let err = aws
        .ec2()
        .describe_vpcs()
        .vpc_ids("vpc-0000000000deadbee")
        .send()
        .await
        .map_err(|e| AwsError::from_sdk("DescribeVpcs", e))
        .expect_err("no such vpc");
    assert_eq!(err.kind, ErrorKind::NotFound, "{err}");
    assert_eq!(err.code.as_deref(), Some("InvalidVpcID.NotFound"));
    assert!(err.request_id.is_some(), "request id kept: {err:?}");
    assert!(!err.is_retryable());
    assert!(
        err.to_string()
            .starts_with("DescribeVpcs failed (not found): "),
        "{err}"
    );
}

#[tokio::test]
async fn missing_cluster_is_not_found() {
    let aws = aws().await;
    let err = aws
        .eks()
        .describe_cluster()
        .name(format!("none-{}", suffix()))
        .send()
        .await
        .map_err(|e| AwsError::from_sdk("DescribeCluster", e))
        .expect_err("no such cluster");
    assert_eq!(err.kind, ErrorKind::NotFound, "{err}");
}

#[tokio::test]
async fn a_taken_name_is_already_exists() {
    let aws = aws().await;
    let name = format!("t{}-dup", suffix());
    let create = || {
        aws.iam()
            .create_role()
            .role_name(&name)
            .assume_role_policy_document(r#"{"Version":"2012-10-17","Statement":[]}"#)
            .send()
    };
    create().await.expect("first");
    let err = create()
        .await
        .map_err(|e| AwsError::from_sdk("CreateRole", e))
        .expect_err("second");
    assert_eq!(err.kind, ErrorKind::AlreadyExists, "{err}");
    assert_eq!(err.code.as_deref(), Some("EntityAlreadyExists"));
    aws.iam()
        .delete_role()
        .role_name(&name)
        .send()
        .await
        .expect("cleanup");
}

#[tokio::test]
async fn deleting_a_vpc_in_use_is_a_conflict() {
    let aws = aws().await;
    let vpc_id = aws
        .ec2()
        .create_vpc()
        .cidr_block("10.42.0.0/16")
        .send()
        .await
        .expect("vpc")
        .vpc()
        .and_then(|v| v.vpc_id())
        .map(str::to_owned)
        .expect("id");
    let subnet_id = aws
        .ec2()
        .create_subnet()
        .vpc_id(&vpc_id)
        .cidr_block("10.42.1.0/24")
        .send()
        .await
        .expect("subnet")
        .subnet()
        .and_then(|s| s.subnet_id())
        .map(str::to_owned)
        .expect("id");
    let err = taskctl_aws::vpc::delete(&aws, &vpc_id)
        .await
        .expect_err("in use");
    assert_eq!(err.kind, ErrorKind::Conflict, "{err}");
    assert_eq!(err.code.as_deref(), Some("DependencyViolation"));
    taskctl_aws::subnet::delete(&aws, &subnet_id)
        .await
        .expect("cleanup");
    taskctl_aws::vpc::delete(&aws, &vpc_id)
        .await
        .expect("cleanup");
}
