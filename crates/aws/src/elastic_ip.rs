//! Elastic IPs, one per NAT gateway.
//!
//! Guarantees: [`create`] finds by tags first and tags in `AllocateAddress`
//! itself, so a re-run never allocates (and pays for) a second address.

use crate::Aws;
use crate::diff::{self, FieldDiff};
use crate::error::{AwsError, Result, ignore_not_found};
use crate::tags::{self, Tags};
use aws_sdk_ec2::types::{Address, DomainType, ResourceType};
use std::collections::BTreeMap;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ElasticIpSpec {
    pub tags: Tags,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ElasticIpState {
    pub allocation_id: String,
    pub public_ip: String,
    pub association_id: Option<String>,
    pub tags: BTreeMap<String, String>,
}

fn state_of(a: &Address) -> ElasticIpState {
    ElasticIpState {
        allocation_id: a.allocation_id().unwrap_or_default().to_owned(),
        public_ip: a.public_ip().unwrap_or_default().to_owned(),
        association_id: a.association_id().map(str::to_owned),
        tags: tags::from_ec2(a.tags()),
    }
}

pub async fn find(aws: &Aws, spec: &ElasticIpSpec) -> Result<Option<ElasticIpState>> {
    let out = aws
        .ec2
        .describe_addresses()
        .set_filters(Some(spec.tags.identity_filters()))
        .send()
        .await
        .map_err(|e| AwsError::from_sdk("DescribeAddresses", e))?;
    Ok(out
        .addresses()
        .iter()
        .map(state_of)
        .find(|s| spec.tags.identifies(&s.tags)))
}

pub async fn create(aws: &Aws, spec: &ElasticIpSpec) -> Result<ElasticIpState> {
    if let Some(state) = find(aws, spec).await? {
        return update(aws, spec, &state).await;
    }
    tracing::info!(provider = "aws", resource = %spec.tags.resource, "allocating elastic ip");
    let out = aws
        .ec2
        .allocate_address()
        .domain(DomainType::Vpc)
        .tag_specifications(spec.tags.ec2_spec(ResourceType::ElasticIp))
        .send()
        .await
        .map_err(|e| AwsError::from_sdk("AllocateAddress", e))?;
    Ok(ElasticIpState {
        allocation_id: out.allocation_id().unwrap_or_default().to_owned(),
        public_ip: out.public_ip().unwrap_or_default().to_owned(),
        association_id: None,
        tags: spec.tags.to_map(),
    })
}

pub async fn update(
    aws: &Aws,
    spec: &ElasticIpSpec,
    state: &ElasticIpState,
) -> Result<ElasticIpState> {
    let mut state = state.clone();
    crate::ec2_tags::reconcile(aws, &state.allocation_id, &spec.tags, &mut state.tags).await?;
    Ok(state)
}

/// Releases the address; its NAT gateway must be deleted first.
pub async fn delete(aws: &Aws, allocation_id: &str) -> Result<()> {
    tracing::info!(provider = "aws", allocation_id, "releasing elastic ip");
    ignore_not_found(
        aws.ec2
            .release_address()
            .allocation_id(allocation_id)
            .send()
            .await
            .map(|_| ())
            .map_err(|e| AwsError::from_sdk("ReleaseAddress", e)),
    )
}

pub fn diff(spec: &ElasticIpSpec, state: &ElasticIpState) -> Vec<FieldDiff> {
    let mut out = Vec::new();
    diff::tags(&mut out, &spec.tags.desired_for_diff(), &state.tags);
    out
}
