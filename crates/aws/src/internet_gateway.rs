//! The internet gateway and its attachment to the VPC.
//!
//! Guarantees: [`create`] finds by tags first and tags in the create call;
//! attaching is part of [`update`], so a crash between create and attach is
//! repaired by the next run. [`delete`] detaches first; both steps tolerate
//! "already done".

use crate::Aws;
use crate::diff::{self, FieldDiff};
use crate::error::{AwsError, ErrorKind, Result, ignore_not_found};
use crate::tags::{self, Tags};
use crate::wait::settle;
use aws_sdk_ec2::types::{InternetGateway, ResourceType};
use std::collections::BTreeMap;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InternetGatewaySpec {
    /// The VPC to attach to; filled in once the VPC exists.
    pub vpc_id: String,
    pub tags: Tags,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InternetGatewayState {
    pub internet_gateway_id: String,
    /// VPCs it is attached to (at most one in practice).
    pub attached_vpcs: Vec<String>,
    pub tags: BTreeMap<String, String>,
}

fn state_of(igw: &InternetGateway) -> InternetGatewayState {
    InternetGatewayState {
        internet_gateway_id: igw.internet_gateway_id().unwrap_or_default().to_owned(),
        attached_vpcs: igw
            .attachments()
            .iter()
            .filter_map(|a| a.vpc_id().map(str::to_owned))
            .collect(),
        tags: tags::from_ec2(igw.tags()),
    }
}

pub async fn find(aws: &Aws, spec: &InternetGatewaySpec) -> Result<Option<InternetGatewayState>> {
    let out = aws
        .ec2
        .describe_internet_gateways()
        .set_filters(Some(spec.tags.identity_filters()))
        .send()
        .await
        .map_err(|e| AwsError::from_sdk("DescribeInternetGateways", e))?;
    Ok(out
        .internet_gateways()
        .iter()
        .map(state_of)
        .find(|s| spec.tags.identifies(&s.tags)))
}

pub async fn create(aws: &Aws, spec: &InternetGatewaySpec) -> Result<InternetGatewayState> {
    if let Some(state) = find(aws, spec).await? {
        return update(aws, spec, &state).await;
    }
    tracing::info!(provider = "aws", resource = %spec.tags.resource, "creating internet gateway");
    let out = aws
        .ec2
        .create_internet_gateway()
        .tag_specifications(spec.tags.ec2_spec(ResourceType::InternetGateway))
        .send()
        .await
        .map_err(|e| AwsError::from_sdk("CreateInternetGateway", e))?;
    let state = out.internet_gateway().map(state_of).ok_or_else(|| {
        AwsError::new(
            ErrorKind::Other,
            "CreateInternetGateway",
            "AWS returned no gateway",
        )
    })?;
    settle(|| update(aws, spec, &state)).await
}

/// Attaches the gateway to `spec.vpc_id` if it is not, and adds missing tags.
pub async fn update(
    aws: &Aws,
    spec: &InternetGatewaySpec,
    state: &InternetGatewayState,
) -> Result<InternetGatewayState> {
    let mut state = state.clone();
    if !spec.vpc_id.is_empty() && !state.attached_vpcs.contains(&spec.vpc_id) {
        for other in std::mem::take(&mut state.attached_vpcs) {
            detach(aws, &state.internet_gateway_id, &other).await?;
        }
        tracing::info!(provider = "aws", internet_gateway_id = %state.internet_gateway_id, vpc_id = %spec.vpc_id, "attaching internet gateway");
        aws.ec2
            .attach_internet_gateway()
            .internet_gateway_id(&state.internet_gateway_id)
            .vpc_id(&spec.vpc_id)
            .send()
            .await
            .map_err(|e| AwsError::from_sdk("AttachInternetGateway", e))?;
        state.attached_vpcs = vec![spec.vpc_id.clone()];
    }
    crate::ec2_tags::reconcile(aws, &state.internet_gateway_id, &spec.tags, &mut state.tags)
        .await?;
    Ok(state)
}

async fn detach(aws: &Aws, igw_id: &str, vpc_id: &str) -> Result<()> {
    tracing::info!(
        provider = "aws",
        internet_gateway_id = igw_id,
        vpc_id,
        "detaching internet gateway"
    );
    let result = aws
        .ec2
        .detach_internet_gateway()
        .internet_gateway_id(igw_id)
        .vpc_id(vpc_id)
        .send()
        .await
        .map(|_| ())
        .map_err(|e| AwsError::from_sdk("DetachInternetGateway", e));
    match result {
        // Already detached.
        Err(e) if e.code.as_deref() == Some("Gateway.NotAttached") => Ok(()),
        other => ignore_not_found(other),
    }
}

/// Detaches from every VPC, then deletes.
pub async fn delete(aws: &Aws, state: &InternetGatewayState) -> Result<()> {
    for vpc_id in &state.attached_vpcs {
        detach(aws, &state.internet_gateway_id, vpc_id).await?;
    }
    tracing::info!(provider = "aws", internet_gateway_id = %state.internet_gateway_id, "deleting internet gateway");
    ignore_not_found(
        aws.ec2
            .delete_internet_gateway()
            .internet_gateway_id(&state.internet_gateway_id)
            .send()
            .await
            .map(|_| ())
            .map_err(|e| AwsError::from_sdk("DeleteInternetGateway", e)),
    )
}

pub fn diff(spec: &InternetGatewaySpec, state: &InternetGatewayState) -> Vec<FieldDiff> {
    let mut out = Vec::new();
    if !spec.vpc_id.is_empty() && !state.attached_vpcs.contains(&spec.vpc_id) {
        out.push(FieldDiff::update(
            "attachment",
            diff::set(&state.attached_vpcs),
            &spec.vpc_id,
        ));
    }
    diff::tags(&mut out, &spec.tags.desired_for_diff(), &state.tags);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tags::Environment;

    #[test]
    fn detached_gateway_needs_attachment() {
        let spec = InternetGatewaySpec {
            vpc_id: "vpc-1".into(),
            tags: Tags::new(&Environment::new("ts", "prod"), "igw", "r"),
        };
        let mut state = InternetGatewayState {
            internet_gateway_id: "igw-1".into(),
            attached_vpcs: vec![],
            tags: spec.tags.to_map(),
        };
        assert_eq!(
            diff(&spec, &state),
            [FieldDiff::update("attachment", "{}", "vpc-1")]
        );
        state.attached_vpcs.push("vpc-1".into());
        assert_eq!(diff(&spec, &state), []);
    }
}
