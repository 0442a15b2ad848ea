//! Checks before provisioning: can this profile be built in this account?
//!
//! [`preflight()`] never mutates and never stops at the first problem: every
//! check runs and reports [`Finding`]s, errors (the apply would fail),
//! warnings (it would work, but look) and notes. An AWS call that fails
//! becomes a finding of its check too.

use crate::Aws;
use crate::error::AwsError;
use crate::stack::{environment_of, kubernetes_version};
use crate::tags::{self, ENVIRONMENT};
use aws_sdk_ec2::types::{InstanceType, LocationType};
use ipnet::IpNet;
use std::collections::{BTreeMap, BTreeSet};
use taskctl_core::Severity;
use taskctl_core::profile::{NodeRole, Profile};

/// One result of a check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub severity: Severity,
    /// `credentials`, `zones`, `instance-types`, `gpu`, `vpc-cidr`, `kubernetes-version`.
    pub check: &'static str,
    pub message: String,
}

impl Finding {
    fn new(severity: Severity, check: &'static str, message: impl Into<String>) -> Self {
        Finding {
            severity,
            check,
            message: message.into(),
        }
    }
}

fn failed(check: &'static str, e: &AwsError) -> Finding {
    Finding::new(Severity::Error, check, format!("could not check: {e}"))
}

/// Runs every check against the account and region of `aws`.
pub async fn preflight(aws: &Aws, profile: &Profile) -> Vec<Finding> {
    let mut findings = Vec::new();
    if let Some(target) = &profile.target.aws
        && target.region != aws.region()
    {
        findings.push(Finding::new(
            Severity::Warning,
            "region",
            format!(
                "the profile names region {} but the clients use {}",
                target.region,
                aws.region()
            ),
        ));
    }
    match kubernetes_version(profile) {
        Ok(v) => findings.push(Finding::new(
            Severity::Note,
            "kubernetes-version",
            format!("EKS {v} will be used"),
        )),
        Err(e) => findings.push(Finding::new(
            Severity::Error,
            "kubernetes-version",
            e.message,
        )),
    }
    // The checks are independent reads: run them together so preflight
    // costs the slowest chain (zones, then offerings), not the sum.
    let (mut identity, mut network, mut gpu, mut overlap) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    tokio::join!(
        credentials(aws, &mut identity),
        async {
            let zones = zones(aws, profile, &mut network).await;
            instance_types(aws, profile, &zones, &mut network).await;
        },
        gpus(aws, profile, &mut gpu),
        vpc_overlap(aws, profile, &mut overlap),
    );
    // Without credentials every other check failed for the same reason:
    // report the cause once.
    let authenticated = !identity.iter().any(|f| f.severity == Severity::Error);
    findings.splice(0..0, identity);
    if authenticated {
        findings.extend(network);
        findings.extend(gpu);
        findings.extend(overlap);
    }
    findings
}

async fn credentials(aws: &Aws, findings: &mut Vec<Finding>) {
    match aws.sts.get_caller_identity().send().await {
        Ok(out) => findings.push(Finding::new(
            Severity::Note,
            "credentials",
            format!(
                "authenticated as {} (account {})",
                out.arn().unwrap_or("?"),
                out.account().unwrap_or("?")
            ),
        )),
        Err(e) => {
            let e = AwsError::from_sdk("GetCallerIdentity", e);
            findings.push(Finding::new(
                Severity::Error,
                "credentials",
                format!(
                    "AWS credentials are not valid: {e}; check AWS_PROFILE or AWS_ACCESS_KEY_ID"
                ),
            ));
        }
    }
}

/// The profile's zones that exist in the region.
async fn zones(aws: &Aws, profile: &Profile, findings: &mut Vec<Finding>) -> BTreeSet<String> {
    let wanted: BTreeSet<String> = profile
        .network
        .iter()
        .flat_map(|n| n.subnets.public.iter().chain(&n.subnets.private))
        .map(|s| s.zone.clone())
        .collect();
    let existing: BTreeSet<String> = match aws.ec2.describe_availability_zones().send().await {
        Ok(out) => out
            .availability_zones()
            .iter()
            .filter_map(|z| z.zone_name().map(str::to_owned))
            .collect(),
        Err(e) => {
            findings.push(failed(
                "zones",
                &AwsError::from_sdk("DescribeAvailabilityZones", e),
            ));
            return BTreeSet::new();
        }
    };
    for zone in wanted.difference(&existing) {
        findings.push(Finding::new(
            Severity::Error,
            "zones",
            format!("zone {zone} does not exist in region {}", aws.region()),
        ));
    }
    wanted.intersection(&existing).cloned().collect()
}

/// Every node group's type must be offered in every zone its nodes run in
/// (the private subnets' zones).
async fn instance_types(
    aws: &Aws,
    profile: &Profile,
    zones: &BTreeSet<String>,
    findings: &mut Vec<Finding>,
) {
    let Some(compute) = &profile.compute else {
        return;
    };
    let node_zones: BTreeSet<String> = profile
        .network
        .iter()
        .flat_map(|n| &n.subnets.private)
        .map(|s| s.zone.clone())
        .filter(|z| zones.contains(z))
        .collect();
    let types: BTreeSet<String> = compute
        .node_groups
        .iter()
        .map(|g| g.instance_type.clone())
        .collect();
    if types.is_empty() || node_zones.is_empty() {
        return;
    }
    let mut offered: BTreeSet<(String, String)> = BTreeSet::new();
    let mut token = None;
    loop {
        let out = aws
            .ec2
            .describe_instance_type_offerings()
            .location_type(LocationType::AvailabilityZone)
            .filters(tags::filter(
                "instance-type",
                &types.iter().map(String::as_str).collect::<Vec<_>>(),
            ))
            .filters(tags::filter(
                "location",
                &node_zones.iter().map(String::as_str).collect::<Vec<_>>(),
            ))
            .set_next_token(token)
            .send()
            .await;
        match out {
            Ok(out) => {
                offered.extend(out.instance_type_offerings().iter().filter_map(|o| {
                    Some((
                        o.instance_type()?.as_str().to_owned(),
                        o.location()?.to_owned(),
                    ))
                }));
                token = out.next_token().map(str::to_owned);
                if token.is_none() {
                    break;
                }
            }
            Err(e) => {
                findings.push(failed(
                    "instance-types",
                    &AwsError::from_sdk("DescribeInstanceTypeOfferings", e),
                ));
                return;
            }
        }
    }
    for group in &compute.node_groups {
        for zone in &node_zones {
            if !offered.contains(&(group.instance_type.clone(), zone.clone())) {
                findings.push(Finding::new(
                    Severity::Error,
                    "instance-types",
                    format!(
                        "node group `{}`: {} is not offered in {zone}",
                        group.name, group.instance_type
                    ),
                ));
            }
        }
    }
}

/// GPU node groups must use instance types that have GPUs.
async fn gpus(aws: &Aws, profile: &Profile, findings: &mut Vec<Finding>) {
    let Some(compute) = &profile.compute else {
        return;
    };
    let gpu_groups: Vec<_> = compute
        .node_groups
        .iter()
        .filter(|g| g.role == NodeRole::Gpu)
        .collect();
    if gpu_groups.is_empty() {
        return;
    }
    let types: BTreeSet<&str> = gpu_groups
        .iter()
        .map(|g| g.instance_type.as_str())
        .collect();
    let out = aws
        .ec2
        .describe_instance_types()
        .set_instance_types(Some(types.iter().map(|t| InstanceType::from(*t)).collect()))
        .send()
        .await;
    let gpu_counts: BTreeMap<String, i32> = match out {
        Ok(out) => out
            .instance_types()
            .iter()
            .filter_map(|t| {
                let name = t.instance_type()?.as_str().to_owned();
                let count = t
                    .gpu_info()
                    .map(|g| g.gpus().iter().map(|d| d.count().unwrap_or(0)).sum())
                    .unwrap_or(0);
                Some((name, count))
            })
            .collect(),
        Err(e) => {
            let e = AwsError::from_sdk("DescribeInstanceTypes", e);
            findings.push(Finding::new(
                Severity::Error,
                "gpu",
                format!("could not check GPU instance types: {e}"),
            ));
            return;
        }
    };
    for group in gpu_groups {
        match gpu_counts.get(&group.instance_type) {
            None => findings.push(Finding::new(
                Severity::Error,
                "gpu",
                format!(
                    "node group `{}`: unknown instance type {}",
                    group.name, group.instance_type
                ),
            )),
            Some(0) => findings.push(Finding::new(
                Severity::Error,
                "gpu",
                format!(
                    "node group `{}` has role gpu but {} has no GPU",
                    group.name, group.instance_type
                ),
            )),
            Some(n) => findings.push(Finding::new(
                Severity::Note,
                "gpu",
                format!(
                    "node group `{}`: {} has {n} GPU(s)",
                    group.name, group.instance_type
                ),
            )),
        }
    }
}

/// Existing VPCs (not this environment's) whose CIDR overlaps the profile's:
/// peering or a transit gateway between them would not work.
async fn vpc_overlap(aws: &Aws, profile: &Profile, findings: &mut Vec<Finding>) {
    let Some(cidr) = profile
        .network
        .as_ref()
        .and_then(|n| n.vpc.cidr.get())
        .map(|c| c.0)
    else {
        return;
    };
    let env = environment_of(profile).tag_value();
    let mut token = None;
    loop {
        let out = match aws.ec2.describe_vpcs().set_next_token(token).send().await {
            Ok(out) => out,
            Err(e) => {
                findings.push(failed("vpc-cidr", &AwsError::from_sdk("DescribeVpcs", e)));
                return;
            }
        };
        for vpc in out.vpcs() {
            let tags = tags::from_ec2(vpc.tags());
            if tags.get(ENVIRONMENT) == Some(&env) {
                continue;
            }
            let Some(Ok(other)) = vpc.cidr_block().map(str::parse::<IpNet>) else {
                continue;
            };
            if overlaps(&cidr, &other) {
                findings.push(Finding::new(
                    Severity::Warning,
                    "vpc-cidr",
                    format!(
                        "VPC {} ({other}) overlaps the profile's {cidr}",
                        vpc.vpc_id().unwrap_or("?")
                    ),
                ));
            }
        }
        token = out.next_token().map(str::to_owned);
        if token.is_none() {
            return;
        }
    }
}

/// Whether two networks share an address.
pub fn overlaps(a: &IpNet, b: &IpNet) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overlap() {
        let n = |s: &str| s.parse::<IpNet>().unwrap();
        assert!(overlaps(&n("10.0.0.0/16"), &n("10.0.1.0/24")));
        assert!(overlaps(&n("10.0.1.0/24"), &n("10.0.0.0/8")));
        assert!(!overlaps(&n("10.0.0.0/16"), &n("10.1.0.0/16")));
        assert!(!overlaps(&n("10.0.0.0/16"), &n("172.31.0.0/16")));
    }
}
