//! The cluster's security group and its ingress and egress rules.
//!
//! Rules are compared as a set of normalized [`Rule`]s (protocol, ports,
//! CIDR); [`update`] authorizes the missing and revokes the extra ones, so a
//! changed profile never recreates the group (which would detach it from the
//! cluster). A new group comes with AWS's allow-all egress rule; it is kept
//! when the profile asks for it and revoked otherwise. Rule descriptions are
//! written on authorize but are not part of the diff.
//!
//! Guarantees: [`create`] finds by tags first and tags in the create call.

use crate::Aws;
use crate::diff::{self, FieldDiff};
use crate::error::{AwsError, ErrorKind, Result, ignore_not_found};
use crate::tags::{self, Tags};
use crate::wait::settle;
use aws_sdk_ec2::types::{IpPermission, IpRange, Ipv6Range, ResourceType, SecurityGroup};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use taskctl_core::profile::Protocol;
use taskctl_core::profile::value::PortRange;

/// One normalized rule: `-1` protocol means all protocols and all ports
/// (ports are then -1); ICMP uses -1/-1 for any type and code.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Rule {
    /// `tcp`, `udp`, `icmp` or `-1`.
    pub protocol: String,
    pub from_port: i32,
    pub to_port: i32,
    /// Source (ingress) or destination (egress), IPv4 or IPv6.
    pub cidr: String,
}

impl Rule {
    /// A rule from the profile's protocol, port range and CIDR.
    pub fn from_profile(protocol: Protocol, ports: PortRange, cidr: &str) -> Rule {
        let (protocol, from_port, to_port) = match (protocol, ports) {
            (Protocol::All, _) => ("-1", -1, -1),
            (Protocol::Icmp, _) => ("icmp", -1, -1),
            (Protocol::Tcp, PortRange::All) => ("tcp", 0, 65535),
            (Protocol::Udp, PortRange::All) => ("udp", 0, 65535),
            (Protocol::Tcp, PortRange::Range(a, b)) => ("tcp", i32::from(a), i32::from(b)),
            (Protocol::Udp, PortRange::Range(a, b)) => ("udp", i32::from(a), i32::from(b)),
        };
        Rule {
            protocol: protocol.to_owned(),
            from_port,
            to_port,
            cidr: cidr.to_owned(),
        }
    }

    fn normalized(protocol: &str, from: Option<i32>, to: Option<i32>, cidr: &str) -> Rule {
        let protocol = match protocol {
            "6" => "tcp",
            "17" => "udp",
            "1" => "icmp",
            "all" => "-1",
            other => other,
        };
        let (from_port, to_port) = if protocol == "-1" || protocol == "icmp" {
            (-1, -1)
        } else {
            (from.unwrap_or(0), to.unwrap_or(65535))
        };
        Rule {
            protocol: protocol.to_owned(),
            from_port,
            to_port,
            cidr: cidr.to_owned(),
        }
    }

    fn to_permission(&self, description: Option<&str>) -> IpPermission {
        let mut permission = IpPermission::builder().ip_protocol(&self.protocol);
        if self.protocol != "-1" {
            permission = permission.from_port(self.from_port).to_port(self.to_port);
        }
        if self.cidr.contains(':') {
            permission.ipv6_ranges(
                Ipv6Range::builder()
                    .cidr_ipv6(&self.cidr)
                    .set_description(description.map(str::to_owned))
                    .build(),
            )
        } else {
            permission.ip_ranges(
                IpRange::builder()
                    .cidr_ip(&self.cidr)
                    .set_description(description.map(str::to_owned))
                    .build(),
            )
        }
        .build()
    }
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.protocol.as_str() {
            "-1" => write!(f, "all {}", self.cidr),
            "icmp" => write!(f, "icmp {}", self.cidr),
            p if self.from_port == self.to_port => {
                write!(f, "{p}/{} {}", self.from_port, self.cidr)
            }
            p => write!(f, "{p}/{}-{} {}", self.from_port, self.to_port, self.cidr),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecurityGroupSpec {
    /// Filled in once the VPC exists.
    pub vpc_id: String,
    pub group_name: String,
    pub description: String,
    pub ingress: BTreeSet<Rule>,
    pub egress: BTreeSet<Rule>,
    /// Descriptions to write with rules, by rule.
    pub descriptions: BTreeMap<Rule, String>,
    pub tags: Tags,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecurityGroupState {
    pub group_id: String,
    pub vpc_id: String,
    pub group_name: String,
    pub ingress: BTreeSet<Rule>,
    pub egress: BTreeSet<Rule>,
    pub tags: BTreeMap<String, String>,
}

fn rules(permissions: &[IpPermission]) -> BTreeSet<Rule> {
    let mut out = BTreeSet::new();
    for p in permissions {
        let protocol = p.ip_protocol().unwrap_or("-1");
        for r in p.ip_ranges() {
            if let Some(cidr) = r.cidr_ip() {
                out.insert(Rule::normalized(protocol, p.from_port(), p.to_port(), cidr));
            }
        }
        for r in p.ipv6_ranges() {
            if let Some(cidr) = r.cidr_ipv6() {
                out.insert(Rule::normalized(protocol, p.from_port(), p.to_port(), cidr));
            }
        }
    }
    out
}

pub(crate) fn state_of(g: &SecurityGroup) -> SecurityGroupState {
    SecurityGroupState {
        group_id: g.group_id().unwrap_or_default().to_owned(),
        vpc_id: g.vpc_id().unwrap_or_default().to_owned(),
        group_name: g.group_name().unwrap_or_default().to_owned(),
        ingress: rules(g.ip_permissions()),
        egress: rules(g.ip_permissions_egress()),
        tags: tags::from_ec2(g.tags()),
    }
}

pub async fn find(aws: &Aws, spec: &SecurityGroupSpec) -> Result<Option<SecurityGroupState>> {
    let out = aws
        .ec2
        .describe_security_groups()
        .set_filters(Some(spec.tags.identity_filters()))
        .send()
        .await
        .map_err(|e| AwsError::from_sdk("DescribeSecurityGroups", e))?;
    Ok(out
        .security_groups()
        .iter()
        .map(state_of)
        .find(|s| spec.tags.identifies(&s.tags)))
}

async fn describe(aws: &Aws, group_id: &str) -> Result<SecurityGroupState> {
    let out = aws
        .ec2
        .describe_security_groups()
        .group_ids(group_id)
        .send()
        .await
        .map_err(|e| AwsError::from_sdk("DescribeSecurityGroups", e))?;
    out.security_groups().first().map(state_of).ok_or_else(|| {
        AwsError::new(
            ErrorKind::NotFound,
            "DescribeSecurityGroups",
            format!("no security group {group_id}"),
        )
    })
}

pub async fn create(aws: &Aws, spec: &SecurityGroupSpec) -> Result<SecurityGroupState> {
    if let Some(state) = find(aws, spec).await? {
        return update(aws, spec, &state).await;
    }
    tracing::info!(provider = "aws", resource = %spec.tags.resource, group_name = %spec.group_name, "creating security group");
    let out = aws
        .ec2
        .create_security_group()
        .group_name(&spec.group_name)
        .description(&spec.description)
        .vpc_id(&spec.vpc_id)
        .tag_specifications(spec.tags.ec2_spec(ResourceType::SecurityGroup))
        .send()
        .await
        .map_err(|e| AwsError::from_sdk("CreateSecurityGroup", e))?;
    let group_id = out.group_id().unwrap_or_default().to_owned();
    // Read back the rules AWS added by itself (allow-all egress).
    let state = settle(|| describe(aws, &group_id)).await?;
    settle(|| update(aws, spec, &state)).await
}

/// Authorizes missing rules, revokes extra ones, adds missing tags.
pub async fn update(
    aws: &Aws,
    spec: &SecurityGroupSpec,
    state: &SecurityGroupState,
) -> Result<SecurityGroupState> {
    let mut state = state.clone();
    let gid = state.group_id.clone();
    let permissions = |rules: Vec<&Rule>| -> Vec<IpPermission> {
        rules
            .into_iter()
            .map(|r| r.to_permission(spec.descriptions.get(r).map(String::as_str)))
            .collect()
    };
    let add_in: Vec<&Rule> = spec.ingress.difference(&state.ingress).collect();
    if !add_in.is_empty() {
        tracing::info!(provider = "aws", group_id = %gid, count = add_in.len(), "authorizing ingress");
        aws.ec2
            .authorize_security_group_ingress()
            .group_id(&gid)
            .set_ip_permissions(Some(permissions(add_in)))
            .send()
            .await
            .map_err(|e| AwsError::from_sdk("AuthorizeSecurityGroupIngress", e))?;
    }
    let drop_in: Vec<&Rule> = state.ingress.difference(&spec.ingress).collect();
    if !drop_in.is_empty() {
        tracing::info!(provider = "aws", group_id = %gid, count = drop_in.len(), "revoking ingress");
        aws.ec2
            .revoke_security_group_ingress()
            .group_id(&gid)
            .set_ip_permissions(Some(permissions(drop_in)))
            .send()
            .await
            .map_err(|e| AwsError::from_sdk("RevokeSecurityGroupIngress", e))?;
    }
    let add_out: Vec<&Rule> = spec.egress.difference(&state.egress).collect();
    if !add_out.is_empty() {
        tracing::info!(provider = "aws", group_id = %gid, count = add_out.len(), "authorizing egress");
        aws.ec2
            .authorize_security_group_egress()
            .group_id(&gid)
            .set_ip_permissions(Some(permissions(add_out)))
            .send()
            .await
            .map_err(|e| AwsError::from_sdk("AuthorizeSecurityGroupEgress", e))?;
    }
    let drop_out: Vec<&Rule> = state.egress.difference(&spec.egress).collect();
    if !drop_out.is_empty() {
        tracing::info!(provider = "aws", group_id = %gid, count = drop_out.len(), "revoking egress");
        aws.ec2
            .revoke_security_group_egress()
            .group_id(&gid)
            .set_ip_permissions(Some(permissions(drop_out)))
            .send()
            .await
            .map_err(|e| AwsError::from_sdk("RevokeSecurityGroupEgress", e))?;
    }
    state.ingress = spec.ingress.clone();
    state.egress = spec.egress.clone();
    crate::ec2_tags::reconcile(aws, &gid, &spec.tags, &mut state.tags).await?;
    Ok(state)
}

pub async fn delete(aws: &Aws, group_id: &str) -> Result<()> {
    tracing::info!(provider = "aws", group_id, "deleting security group");
    ignore_not_found(
        aws.ec2
            .delete_security_group()
            .group_id(group_id)
            .send()
            .await
            .map(|_| ())
            .map_err(|e| AwsError::from_sdk("DeleteSecurityGroup", e)),
    )
}

pub fn diff(spec: &SecurityGroupSpec, state: &SecurityGroupState) -> Vec<FieldDiff> {
    let mut out = Vec::new();
    if !spec.vpc_id.is_empty() {
        diff::immutable(&mut out, "vpc_id", &state.vpc_id, &spec.vpc_id);
    }
    diff::immutable(&mut out, "group_name", &state.group_name, &spec.group_name);
    for (field, want, have) in [
        ("ingress", &spec.ingress, &state.ingress),
        ("egress", &spec.egress, &state.egress),
    ] {
        for rule in want.difference(have) {
            out.push(FieldDiff::update(field, "-", rule));
        }
        for rule in have.difference(want) {
            out.push(FieldDiff::update(field, rule, "-"));
        }
    }
    diff::tags(&mut out, &spec.tags.desired_for_diff(), &state.tags);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tags::Environment;

    #[test]
    fn normalizes_profile_and_aws_shapes_alike() {
        assert_eq!(
            Rule::from_profile(Protocol::All, PortRange::All, "0.0.0.0/0"),
            Rule::normalized("-1", None, None, "0.0.0.0/0")
        );
        assert_eq!(
            Rule::from_profile(Protocol::All, PortRange::Range(1, 2), "0.0.0.0/0"),
            Rule::normalized("-1", Some(-1), Some(-1), "0.0.0.0/0")
        );
        assert_eq!(
            Rule::from_profile(Protocol::Tcp, PortRange::Range(443, 443), "0.0.0.0/0"),
            Rule::normalized("6", Some(443), Some(443), "0.0.0.0/0")
        );
        assert_eq!(
            Rule::from_profile(Protocol::Tcp, PortRange::All, "10.0.0.0/8").to_string(),
            "tcp/0-65535 10.0.0.0/8"
        );
    }

    #[test]
    fn diff_lists_added_and_removed_rules() {
        let http = Rule::from_profile(Protocol::Tcp, PortRange::Range(80, 80), "0.0.0.0/0");
        let https = Rule::from_profile(Protocol::Tcp, PortRange::Range(443, 443), "0.0.0.0/0");
        let spec = SecurityGroupSpec {
            vpc_id: String::new(),
            group_name: "g".into(),
            description: "d".into(),
            ingress: [http.clone(), https.clone()].into(),
            egress: BTreeSet::new(),
            descriptions: BTreeMap::new(),
            tags: Tags::new(
                &Environment::new("ts", "prod"),
                "security-group/cluster",
                "r",
            ),
        };
        let ssh = Rule::from_profile(Protocol::Tcp, PortRange::Range(22, 22), "0.0.0.0/0");
        let state = SecurityGroupState {
            group_id: "sg-1".into(),
            vpc_id: "vpc-1".into(),
            group_name: "g".into(),
            ingress: [http, ssh].into(),
            egress: BTreeSet::new(),
            tags: spec.tags.to_map(),
        };
        assert_eq!(
            diff(&spec, &state),
            [
                FieldDiff::update("ingress", "-", "tcp/443 0.0.0.0/0"),
                FieldDiff::update("ingress", "tcp/22 0.0.0.0/0", "-"),
            ]
        );
    }
}
