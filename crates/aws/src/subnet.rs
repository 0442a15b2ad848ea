//! Subnets: one public and one private per zone, tagged for EKS.
//!
//! Public subnets carry `kubernetes.io/role/elb=1` and map public IPs on
//! launch; private ones carry `kubernetes.io/role/internal-elb=1`; both carry
//! `kubernetes.io/cluster/<cluster>=shared` (see [`SubnetSpec::new`]).
//!
//! Guarantees: as for every resource, [`create`] finds by tags first and tags
//! in the create call; [`update`] only flips the public-IP attribute and adds
//! missing tags. CIDR and zone cannot change in place.

use crate::Aws;
use crate::diff::{self, FieldDiff};
use crate::error::{AwsError, Result, ignore_not_found};
use crate::tags::{self, Environment, Tags};
use crate::wait::settle;
use aws_sdk_ec2::types::{AttributeBooleanValue, ResourceType};
use std::collections::BTreeMap;

/// Public (internet-facing, behind the IGW) or private (behind NAT).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Tier {
    Public,
    Private,
}

impl Tier {
    pub fn as_str(self) -> &'static str {
        match self {
            Tier::Public => "public",
            Tier::Private => "private",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubnetSpec {
    /// The VPC to create it in; filled in once the VPC exists.
    pub vpc_id: String,
    pub tier: Tier,
    pub cidr: String,
    pub zone: String,
    pub tags: Tags,
}

impl SubnetSpec {
    /// A subnet of `tier` in `zone`, with the logical id
    /// `subnet/<tier>/<zone>` and the EKS discovery tags for `cluster`.
    pub fn new(
        environment: &Environment,
        run: &str,
        tier: Tier,
        cidr: &str,
        zone: &str,
        cluster: &str,
    ) -> SubnetSpec {
        let role = match tier {
            Tier::Public => "kubernetes.io/role/elb",
            Tier::Private => "kubernetes.io/role/internal-elb",
        };
        let tags = Tags::new(environment, format!("subnet/{}/{zone}", tier.as_str()), run)
            .with(role, "1")
            .with(format!("kubernetes.io/cluster/{cluster}"), "shared");
        SubnetSpec {
            vpc_id: String::new(),
            tier,
            cidr: cidr.to_owned(),
            zone: zone.to_owned(),
            tags,
        }
    }

    pub fn map_public_ip(&self) -> bool {
        self.tier == Tier::Public
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubnetState {
    pub subnet_id: String,
    pub vpc_id: String,
    pub cidr: String,
    pub zone: String,
    pub map_public_ip_on_launch: bool,
    pub tags: BTreeMap<String, String>,
}

fn state_of(s: &aws_sdk_ec2::types::Subnet) -> SubnetState {
    SubnetState {
        subnet_id: s.subnet_id().unwrap_or_default().to_owned(),
        vpc_id: s.vpc_id().unwrap_or_default().to_owned(),
        cidr: s.cidr_block().unwrap_or_default().to_owned(),
        zone: s.availability_zone().unwrap_or_default().to_owned(),
        map_public_ip_on_launch: s.map_public_ip_on_launch().unwrap_or(false),
        tags: tags::from_ec2(s.tags()),
    }
}

pub async fn find(aws: &Aws, spec: &SubnetSpec) -> Result<Option<SubnetState>> {
    let out = aws
        .ec2
        .describe_subnets()
        .set_filters(Some(spec.tags.identity_filters()))
        .send()
        .await
        .map_err(|e| AwsError::from_sdk("DescribeSubnets", e))?;
    Ok(out
        .subnets()
        .iter()
        .map(state_of)
        .find(|s| spec.tags.identifies(&s.tags)))
}

/// Creates the subnet in `spec.vpc_id` unless it exists, then applies attributes.
pub async fn create(aws: &Aws, spec: &SubnetSpec) -> Result<SubnetState> {
    if let Some(state) = find(aws, spec).await? {
        return update(aws, spec, &state).await;
    }
    tracing::info!(provider = "aws", resource = %spec.tags.resource, cidr = %spec.cidr, zone = %spec.zone, "creating subnet");
    let out = aws
        .ec2
        .create_subnet()
        .vpc_id(&spec.vpc_id)
        .cidr_block(&spec.cidr)
        .availability_zone(&spec.zone)
        .tag_specifications(spec.tags.ec2_spec(ResourceType::Subnet))
        .send()
        .await
        .map_err(|e| AwsError::from_sdk("CreateSubnet", e))?;
    let state = out.subnet().map(state_of).ok_or_else(|| {
        AwsError::new(
            crate::ErrorKind::Other,
            "CreateSubnet",
            "AWS returned no subnet",
        )
    })?;
    settle(|| update(aws, spec, &state)).await
}

pub async fn update(aws: &Aws, spec: &SubnetSpec, state: &SubnetState) -> Result<SubnetState> {
    let mut state = state.clone();
    if state.map_public_ip_on_launch != spec.map_public_ip() {
        tracing::info!(provider = "aws", subnet_id = %state.subnet_id, map_public_ip = spec.map_public_ip(), "setting subnet attribute");
        aws.ec2
            .modify_subnet_attribute()
            .subnet_id(&state.subnet_id)
            .map_public_ip_on_launch(
                AttributeBooleanValue::builder()
                    .value(spec.map_public_ip())
                    .build(),
            )
            .send()
            .await
            .map_err(|e| AwsError::from_sdk("ModifySubnetAttribute", e))?;
        state.map_public_ip_on_launch = spec.map_public_ip();
    }
    crate::ec2_tags::reconcile(aws, &state.subnet_id, &spec.tags, &mut state.tags).await?;
    Ok(state)
}

pub async fn delete(aws: &Aws, subnet_id: &str) -> Result<()> {
    tracing::info!(provider = "aws", subnet_id, "deleting subnet");
    ignore_not_found(
        aws.ec2
            .delete_subnet()
            .subnet_id(subnet_id)
            .send()
            .await
            .map(|_| ())
            .map_err(|e| AwsError::from_sdk("DeleteSubnet", e)),
    )
}

pub fn diff(spec: &SubnetSpec, state: &SubnetState) -> Vec<FieldDiff> {
    let mut out = Vec::new();
    if !spec.vpc_id.is_empty() {
        diff::immutable(&mut out, "vpc_id", &state.vpc_id, &spec.vpc_id);
    }
    diff::immutable(&mut out, "cidr", &state.cidr, &spec.cidr);
    diff::immutable(&mut out, "zone", &state.zone, &spec.zone);
    diff::field(
        &mut out,
        "map_public_ip_on_launch",
        &state.map_public_ip_on_launch,
        &spec.map_public_ip(),
    );
    diff::tags(&mut out, &spec.tags.desired_for_diff(), &state.tags);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(tier: Tier) -> SubnetSpec {
        SubnetSpec::new(
            &Environment::new("ts", "prod"),
            "r1",
            tier,
            "10.0.1.0/24",
            "us-west-2a",
            "ts-prod",
        )
    }

    #[test]
    fn eks_tags_by_tier() {
        let public = spec(Tier::Public).tags.to_map();
        assert_eq!(public["kubernetes.io/role/elb"], "1");
        assert_eq!(public["kubernetes.io/cluster/ts-prod"], "shared");
        assert!(!public.contains_key("kubernetes.io/role/internal-elb"));
        let private = spec(Tier::Private).tags.to_map();
        assert_eq!(private["kubernetes.io/role/internal-elb"], "1");
        assert_eq!(private["taskctl:resource"], "subnet/private/us-west-2a");
    }

    #[test]
    fn public_ip_mapping_and_zone_change() {
        let s = spec(Tier::Public);
        let state = SubnetState {
            subnet_id: "subnet-1".into(),
            vpc_id: "vpc-1".into(),
            cidr: s.cidr.clone(),
            zone: "us-west-2b".into(),
            map_public_ip_on_launch: false,
            tags: s.tags.to_map(),
        };
        let d = diff(&s, &state);
        assert_eq!(
            d,
            [
                FieldDiff::replace("zone", "us-west-2b", "us-west-2a"),
                FieldDiff::update("map_public_ip_on_launch", false, true),
            ]
        );
    }
}
