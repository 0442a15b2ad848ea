//! The VPC: CIDR, DNS support and DNS hostnames (both on, as EKS needs).
//!
//! Guarantees: [`create`] finds first, so calling it again (after a crash
//! between AWS's create and our return, too) adopts the tagged VPC instead of
//! making a second one; tags are applied by `CreateVpc` itself. DNS
//! attributes are applied by [`update`], which [`create`] also runs, so a
//! crash between the two is repaired by the next run's diff.

use crate::Aws;
use crate::diff::{self, FieldDiff};
use crate::error::{AwsError, Result, ignore_not_found};
use crate::tags::{self, Tags};
use crate::wait::settle;
use aws_sdk_ec2::types::{AttributeBooleanValue, ResourceType, VpcAttributeName};
use std::collections::BTreeMap;

/// The VPC taskctl wants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VpcSpec {
    pub cidr: String,
    pub tags: Tags,
}

/// The VPC AWS has.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VpcState {
    pub vpc_id: String,
    pub cidr: String,
    pub dns_support: bool,
    pub dns_hostnames: bool,
    pub tags: BTreeMap<String, String>,
}

/// Finds the VPC by its taskctl tags.
pub async fn find(aws: &Aws, spec: &VpcSpec) -> Result<Option<VpcState>> {
    let out = aws
        .ec2
        .describe_vpcs()
        .set_filters(Some(spec.tags.identity_filters()))
        .send()
        .await
        .map_err(|e| AwsError::from_sdk("DescribeVpcs", e))?;
    let Some(vpc) = out
        .vpcs()
        .iter()
        .find(|v| spec.tags.identifies(&tags::from_ec2(v.tags())))
    else {
        return Ok(None);
    };
    let vpc_id = vpc.vpc_id().unwrap_or_default().to_owned();
    let (dns_support, dns_hostnames) = dns_attributes(aws, &vpc_id).await?;
    Ok(Some(VpcState {
        vpc_id,
        cidr: vpc.cidr_block().unwrap_or_default().to_owned(),
        dns_support,
        dns_hostnames,
        tags: tags::from_ec2(vpc.tags()),
    }))
}

async fn dns_attributes(aws: &Aws, vpc_id: &str) -> Result<(bool, bool)> {
    let mut values = [false, false];
    for (slot, attribute) in [
        VpcAttributeName::EnableDnsSupport,
        VpcAttributeName::EnableDnsHostnames,
    ]
    .into_iter()
    .enumerate()
    {
        let out = aws
            .ec2
            .describe_vpc_attribute()
            .vpc_id(vpc_id)
            .attribute(attribute.clone())
            .send()
            .await
            .map_err(|e| AwsError::from_sdk("DescribeVpcAttribute", e))?;
        let value = match attribute {
            VpcAttributeName::EnableDnsSupport => out.enable_dns_support(),
            _ => out.enable_dns_hostnames(),
        };
        values[slot] = value.and_then(|v| v.value()).unwrap_or(false);
    }
    Ok((values[0], values[1]))
}

/// Creates the VPC unless it exists, then makes its attributes match.
pub async fn create(aws: &Aws, spec: &VpcSpec) -> Result<VpcState> {
    if let Some(state) = find(aws, spec).await? {
        return update(aws, spec, &state).await;
    }
    tracing::info!(provider = "aws", resource = %spec.tags.resource, cidr = %spec.cidr, "creating vpc");
    let out = aws
        .ec2
        .create_vpc()
        .cidr_block(&spec.cidr)
        .tag_specifications(spec.tags.ec2_spec(ResourceType::Vpc))
        .send()
        .await
        .map_err(|e| AwsError::from_sdk("CreateVpc", e))?;
    let vpc = out.vpc();
    let state = VpcState {
        vpc_id: vpc.and_then(|v| v.vpc_id()).unwrap_or_default().to_owned(),
        cidr: spec.cidr.clone(),
        dns_support: false,
        dns_hostnames: false,
        tags: spec.tags.to_map(),
    };
    // A new VPC has DNS support on and hostnames off; ask rather than assume.
    let (dns_support, dns_hostnames) = settle(|| dns_attributes(aws, &state.vpc_id)).await?;
    let state = VpcState {
        dns_support,
        dns_hostnames,
        ..state
    };
    settle(|| update(aws, spec, &state)).await
}

/// Applies in-place differences: DNS attributes and tags. A CIDR change
/// needs a new VPC and is only reported by [`diff()`].
pub async fn update(aws: &Aws, spec: &VpcSpec, state: &VpcState) -> Result<VpcState> {
    let mut state = state.clone();
    if !state.dns_support {
        set_attribute(aws, &state.vpc_id, VpcAttributeName::EnableDnsSupport).await?;
        state.dns_support = true;
    }
    if !state.dns_hostnames {
        set_attribute(aws, &state.vpc_id, VpcAttributeName::EnableDnsHostnames).await?;
        state.dns_hostnames = true;
    }
    crate::ec2_tags::reconcile(aws, &state.vpc_id, &spec.tags, &mut state.tags).await?;
    Ok(state)
}

async fn set_attribute(aws: &Aws, vpc_id: &str, attribute: VpcAttributeName) -> Result<()> {
    tracing::info!(
        provider = "aws",
        vpc_id,
        attribute = attribute.as_str(),
        "enabling vpc attribute"
    );
    let on = AttributeBooleanValue::builder().value(true).build();
    let request = aws.ec2.modify_vpc_attribute().vpc_id(vpc_id);
    let request = match attribute {
        VpcAttributeName::EnableDnsSupport => request.enable_dns_support(on),
        _ => request.enable_dns_hostnames(on),
    };
    request
        .send()
        .await
        .map_err(|e| AwsError::from_sdk("ModifyVpcAttribute", e))?;
    Ok(())
}

/// Deletes the VPC; a VPC already gone is success. Everything in it must be
/// gone first (see [`crate::destroy`](mod@crate::destroy)).
pub async fn delete(aws: &Aws, vpc_id: &str) -> Result<()> {
    tracing::info!(provider = "aws", vpc_id, "deleting vpc");
    ignore_not_found(
        aws.ec2
            .delete_vpc()
            .vpc_id(vpc_id)
            .send()
            .await
            .map(|_| ())
            .map_err(|e| AwsError::from_sdk("DeleteVpc", e)),
    )
}

/// What differs between the spec and the VPC.
pub fn diff(spec: &VpcSpec, state: &VpcState) -> Vec<FieldDiff> {
    let mut out = Vec::new();
    diff::immutable(&mut out, "cidr", &state.cidr, &spec.cidr);
    diff::field(&mut out, "dns_support", &state.dns_support, &true);
    diff::field(&mut out, "dns_hostnames", &state.dns_hostnames, &true);
    diff::tags(&mut out, &spec.tags.desired_for_diff(), &state.tags);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tags::Environment;

    fn spec() -> VpcSpec {
        VpcSpec {
            cidr: "10.0.0.0/16".into(),
            tags: Tags::new(&Environment::new("ts", "prod"), "vpc", "run-1"),
        }
    }

    fn state() -> VpcState {
        let mut tags = spec().tags;
        tags.run = "run-0".into();
        VpcState {
            vpc_id: "vpc-1".into(),
            cidr: "10.0.0.0/16".into(),
            dns_support: true,
            dns_hostnames: true,
            tags: tags.to_map(),
        }
    }

    #[test]
    fn in_sync_despite_other_run() {
        assert_eq!(diff(&spec(), &state()), []);
    }

    #[test]
    fn dns_hostnames_off_is_an_update() {
        let s = VpcState {
            dns_hostnames: false,
            ..state()
        };
        assert_eq!(
            diff(&spec(), &s),
            [FieldDiff::update("dns_hostnames", false, true)]
        );
    }

    #[test]
    fn cidr_change_forces_replacement() {
        let s = VpcState {
            cidr: "10.1.0.0/16".into(),
            ..state()
        };
        let d = diff(&spec(), &s);
        assert!(crate::diff::needs_replacement(&d));
        assert_eq!(d[0].field, "cidr");
    }
}
