//! NAT gateways: one shared, or one per zone, each in a public subnet with
//! its own Elastic IP.
//!
//! Guarantees: [`create`] finds by tags first (ignoring gateways that are
//! `deleting`, `deleted` or `failed`, which AWS keeps listing for a while)
//! and tags in the create call. [`wait_available`] polls until `available`
//! and fails fast on `failed` with AWS's failure message. [`delete`] waits
//! until the gateway is gone, because its Elastic IP and subnet cannot be
//! released before.

use crate::Aws;
use crate::diff::{self, FieldDiff};
use crate::error::{AwsError, ErrorKind, Result};
use crate::tags::{self, Tags};
use crate::wait::{self, Poll, Progress, WaitOptions};
use aws_sdk_ec2::types::{NatGateway, NatGatewayState as AwsNatState, ResourceType};
use std::collections::BTreeMap;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NatGatewaySpec {
    /// Zone it serves (the zone of its public subnet).
    pub zone: String,
    /// The public subnet; filled in once it exists.
    pub subnet_id: String,
    /// The Elastic IP; filled in once allocated.
    pub allocation_id: String,
    pub tags: Tags,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NatGatewayState {
    pub nat_gateway_id: String,
    pub vpc_id: String,
    pub subnet_id: String,
    pub allocation_ids: Vec<String>,
    /// `pending`, `available`, `deleting`, `deleted`, `failed`.
    pub state: String,
    pub failure_message: Option<String>,
    pub tags: BTreeMap<String, String>,
}

fn state_of(n: &NatGateway) -> NatGatewayState {
    NatGatewayState {
        nat_gateway_id: n.nat_gateway_id().unwrap_or_default().to_owned(),
        vpc_id: n.vpc_id().unwrap_or_default().to_owned(),
        subnet_id: n.subnet_id().unwrap_or_default().to_owned(),
        allocation_ids: n
            .nat_gateway_addresses()
            .iter()
            .filter_map(|a| a.allocation_id().map(str::to_owned))
            .collect(),
        state: n.state().map(|s| s.as_str().to_owned()).unwrap_or_default(),
        failure_message: n.failure_message().map(str::to_owned),
        tags: tags::from_ec2(n.tags()),
    }
}

fn is_live(state: &str) -> bool {
    matches!(state, "pending" | "available")
}

pub async fn find(aws: &Aws, spec: &NatGatewaySpec) -> Result<Option<NatGatewayState>> {
    // The tags are checked here as well as in the filter: some emulators
    // (moto) ignore tag filters on DescribeNatGateways.
    let out = aws
        .ec2
        .describe_nat_gateways()
        .set_filter(Some(spec.tags.identity_filters()))
        .send()
        .await
        .map_err(|e| AwsError::from_sdk("DescribeNatGateways", e))?;
    Ok(out
        .nat_gateways()
        .iter()
        .map(state_of)
        .find(|s| is_live(&s.state) && spec.tags.identifies(&s.tags)))
}

/// Creates the gateway unless a live one exists. Does not wait: call
/// [`wait_available`] (routes may point at a pending gateway already).
pub async fn create(aws: &Aws, spec: &NatGatewaySpec) -> Result<NatGatewayState> {
    if let Some(state) = find(aws, spec).await? {
        return update(aws, spec, &state).await;
    }
    tracing::info!(provider = "aws", resource = %spec.tags.resource, subnet_id = %spec.subnet_id, "creating nat gateway");
    let out = aws
        .ec2
        .create_nat_gateway()
        .subnet_id(&spec.subnet_id)
        .allocation_id(&spec.allocation_id)
        .tag_specifications(spec.tags.ec2_spec(ResourceType::Natgateway))
        .send()
        .await
        .map_err(|e| AwsError::from_sdk("CreateNatGateway", e))?;
    out.nat_gateway().map(state_of).ok_or_else(|| {
        AwsError::new(
            ErrorKind::Other,
            "CreateNatGateway",
            "AWS returned no gateway",
        )
    })
}

pub async fn update(
    aws: &Aws,
    spec: &NatGatewaySpec,
    state: &NatGatewayState,
) -> Result<NatGatewayState> {
    let mut state = state.clone();
    crate::ec2_tags::reconcile(aws, &state.nat_gateway_id, &spec.tags, &mut state.tags).await?;
    Ok(state)
}

async fn describe(aws: &Aws, nat_gateway_id: &str) -> Result<Option<NatGatewayState>> {
    let out = aws
        .ec2
        .describe_nat_gateways()
        .nat_gateway_ids(nat_gateway_id)
        .send()
        .await;
    match out {
        Ok(out) => Ok(out.nat_gateways().first().map(state_of)),
        Err(e) => {
            let e = AwsError::from_sdk("DescribeNatGateways", e);
            if e.is_not_found() { Ok(None) } else { Err(e) }
        }
    }
}

/// Waits until the gateway is `available`.
pub async fn wait_available(
    aws: &Aws,
    nat_gateway_id: &str,
    options: WaitOptions,
    on_progress: &mut (dyn FnMut(&Progress) + Send),
) -> Result<NatGatewayState> {
    let resource = format!("nat gateway {nat_gateway_id}");
    wait::until(&resource, options, on_progress, || async {
        Ok(match describe(aws, nat_gateway_id).await? {
            // Right after CreateNatGateway, Describe may not see it yet.
            None => Poll::Pending("not visible yet".into()),
            Some(s) if s.state == AwsNatState::Available.as_str() => Poll::Ready(s),
            Some(s) if s.state == AwsNatState::Failed.as_str() || !is_live(&s.state) => {
                Poll::Failed(
                    s.failure_message
                        .clone()
                        .unwrap_or_else(|| format!("state {}", s.state)),
                )
            }
            Some(s) => Poll::Pending(s.state),
        })
    })
    .await
}

/// Deletes the gateway and waits until it is `deleted`.
pub async fn delete(
    aws: &Aws,
    nat_gateway_id: &str,
    options: WaitOptions,
    on_progress: &mut (dyn FnMut(&Progress) + Send),
) -> Result<()> {
    match describe(aws, nat_gateway_id).await? {
        None => return Ok(()),
        Some(s) if s.state == "deleted" => return Ok(()),
        Some(s) if s.state != "deleting" => {
            tracing::info!(provider = "aws", nat_gateway_id, "deleting nat gateway");
            let result = aws
                .ec2
                .delete_nat_gateway()
                .nat_gateway_id(nat_gateway_id)
                .send()
                .await;
            if let Err(e) = result {
                let e = AwsError::from_sdk("DeleteNatGateway", e);
                if !e.is_not_found() {
                    return Err(e);
                }
            }
        }
        Some(_) => {}
    }
    let resource = format!("nat gateway {nat_gateway_id} deletion");
    wait::until(&resource, options, on_progress, || async {
        Ok(match describe(aws, nat_gateway_id).await? {
            None => Poll::Ready(()),
            Some(s) if s.state == "deleted" => Poll::Ready(()),
            Some(s) => Poll::Pending(s.state),
        })
    })
    .await
}

pub fn diff(spec: &NatGatewaySpec, state: &NatGatewayState) -> Vec<FieldDiff> {
    let mut out = Vec::new();
    if !spec.subnet_id.is_empty() {
        diff::immutable(&mut out, "subnet_id", &state.subnet_id, &spec.subnet_id);
    }
    if !spec.allocation_id.is_empty() && !state.allocation_ids.contains(&spec.allocation_id) {
        out.push(FieldDiff::replace(
            "allocation_id",
            diff::set(&state.allocation_ids),
            &spec.allocation_id,
        ));
    }
    diff::tags(&mut out, &spec.tags.desired_for_diff(), &state.tags);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_pending_and_available_are_live() {
        assert!(is_live("pending"));
        assert!(is_live("available"));
        assert!(!is_live("deleting"));
        assert!(!is_live("deleted"));
        assert!(!is_live("failed"));
    }
}
