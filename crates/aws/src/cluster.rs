//! The EKS cluster: version, subnets, security group, endpoint access.
//!
//! The cluster's name is deterministic (`<name>-<environment>`), so it is
//! found by `DescribeCluster` and then checked by its tags: a cluster of that
//! name that taskctl does not own is a conflict, never adopted.
//!
//! Guarantees: [`create`] finds first; [`wait_active`] polls with backoff,
//! reports each status through a callback and fails at once on `FAILED` with
//! AWS's health issues; the caller passes the timeout (EKS takes up to about
//! 25 minutes). [`update`] changes endpoint access and upgrades the version in
//! place; subnets, security groups and role need a new cluster.

use crate::Aws;
use crate::diff::{self, FieldDiff};
use crate::error::{AwsError, ErrorKind, Result};
use crate::tags::Tags;
use crate::wait::{self, Poll, Progress, WaitOptions, failed_status};
use aws_sdk_eks::types::{Cluster, VpcConfigRequest};
use std::collections::{BTreeMap, BTreeSet};
use taskctl_core::profile::EndpointAccess;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterSpec {
    pub name: String,
    /// Kubernetes `major.minor`, e.g. `1.34`.
    pub version: String,
    /// Filled in once the role exists.
    pub role_arn: String,
    /// Filled in once the subnets exist (private and public).
    pub subnet_ids: BTreeSet<String>,
    /// Filled in once the security group exists.
    pub security_group_ids: BTreeSet<String>,
    pub endpoint_public_access: bool,
    pub endpoint_private_access: bool,
    pub tags: Tags,
}

impl ClusterSpec {
    pub fn endpoint_access(mut self, access: EndpointAccess) -> Self {
        (self.endpoint_public_access, self.endpoint_private_access) = match access {
            EndpointAccess::Public => (true, false),
            EndpointAccess::Private => (false, true),
            EndpointAccess::PublicAndPrivate => (true, true),
        };
        self
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterState {
    pub name: String,
    pub arn: String,
    /// `CREATING`, `ACTIVE`, `UPDATING`, `DELETING`, `FAILED`.
    pub status: String,
    pub version: String,
    pub endpoint: Option<String>,
    /// The API server's CA bundle, base64 (public: clients verify with it).
    pub certificate_authority: Option<String>,
    /// The service-account token issuer (`https://oidc.eks.…/id/…`), for
    /// the IAM OIDC provider that IRSA roles trust.
    pub oidc_issuer: Option<String>,
    pub role_arn: String,
    pub subnet_ids: BTreeSet<String>,
    pub security_group_ids: BTreeSet<String>,
    pub endpoint_public_access: bool,
    pub endpoint_private_access: bool,
    /// AWS's health issues, the reason of a `FAILED` status.
    pub issues: Vec<String>,
    pub tags: BTreeMap<String, String>,
}

fn state_of(c: &Cluster) -> ClusterState {
    let vpc = c.resources_vpc_config();
    ClusterState {
        name: c.name().unwrap_or_default().to_owned(),
        arn: c.arn().unwrap_or_default().to_owned(),
        status: c
            .status()
            .map(|s| s.as_str().to_owned())
            .unwrap_or_default(),
        version: c.version().unwrap_or_default().to_owned(),
        endpoint: c.endpoint().map(str::to_owned),
        certificate_authority: c
            .certificate_authority()
            .and_then(|a| a.data())
            .filter(|d| !d.is_empty())
            .map(str::to_owned),
        oidc_issuer: c
            .identity()
            .and_then(|i| i.oidc())
            .and_then(|o| o.issuer())
            .filter(|i| !i.is_empty())
            .map(str::to_owned),
        role_arn: c.role_arn().unwrap_or_default().to_owned(),
        subnet_ids: vpc
            .map(|v| v.subnet_ids().iter().cloned().collect())
            .unwrap_or_default(),
        security_group_ids: vpc
            .map(|v| v.security_group_ids().iter().cloned().collect())
            .unwrap_or_default(),
        endpoint_public_access: vpc.is_some_and(|v| v.endpoint_public_access()),
        endpoint_private_access: vpc.is_some_and(|v| v.endpoint_private_access()),
        issues: c
            .health()
            .map(|h| {
                h.issues()
                    .iter()
                    .map(|i| {
                        format!(
                            "{}: {}",
                            i.code().map(|c| c.as_str()).unwrap_or("issue"),
                            i.message().unwrap_or_default()
                        )
                    })
                    .collect()
            })
            .unwrap_or_default(),
        tags: c
            .tags()
            .map(|t| t.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
            .unwrap_or_default(),
    }
}

/// The cluster by name, whoever owns it.
pub(crate) async fn describe(aws: &Aws, name: &str) -> Result<Option<ClusterState>> {
    match aws.eks.describe_cluster().name(name).send().await {
        Ok(out) => Ok(out.cluster().map(state_of)),
        Err(e) => {
            let e = AwsError::from_sdk("DescribeCluster", e);
            if e.is_not_found() { Ok(None) } else { Err(e) }
        }
    }
}

pub async fn find(aws: &Aws, spec: &ClusterSpec) -> Result<Option<ClusterState>> {
    let Some(state) = describe(aws, &spec.name).await? else {
        return Ok(None);
    };
    if !spec.tags.environment.owns(&state.tags) {
        return Err(AwsError::new(
            ErrorKind::Conflict,
            "DescribeCluster",
            format!(
                "EKS cluster `{}` exists but is not tagged as taskctl's for `{}`",
                spec.name,
                spec.tags.environment.tag_value()
            ),
        ));
    }
    Ok(Some(state))
}

/// Creates the cluster unless it exists. Does not wait: see [`wait_active`].
pub async fn create(aws: &Aws, spec: &ClusterSpec) -> Result<ClusterState> {
    if let Some(state) = find(aws, spec).await? {
        return Ok(state);
    }
    tracing::info!(provider = "aws", cluster = %spec.name, version = %spec.version, "creating eks cluster");
    let out = aws
        .eks
        .create_cluster()
        .name(&spec.name)
        .version(&spec.version)
        .role_arn(&spec.role_arn)
        .resources_vpc_config(
            VpcConfigRequest::builder()
                .set_subnet_ids(Some(spec.subnet_ids.iter().cloned().collect()))
                .set_security_group_ids(Some(spec.security_group_ids.iter().cloned().collect()))
                .endpoint_public_access(spec.endpoint_public_access)
                .endpoint_private_access(spec.endpoint_private_access)
                .build(),
        )
        .set_tags(Some(spec.tags.to_map().into_iter().collect()))
        .send()
        .await
        .map_err(|e| AwsError::from_sdk("CreateCluster", e))?;
    out.cluster()
        .map(state_of)
        .ok_or_else(|| AwsError::new(ErrorKind::Other, "CreateCluster", "AWS returned no cluster"))
}

/// Applies in-place changes: endpoint access, a version upgrade, tags.
/// EKS runs one update at a time: wait for `ACTIVE` before calling again.
pub async fn update(aws: &Aws, spec: &ClusterSpec, state: &ClusterState) -> Result<ClusterState> {
    let mut state = state.clone();
    if (state.endpoint_public_access, state.endpoint_private_access)
        != (spec.endpoint_public_access, spec.endpoint_private_access)
    {
        tracing::info!(provider = "aws", cluster = %spec.name, public = spec.endpoint_public_access, private = spec.endpoint_private_access, "updating endpoint access");
        aws.eks
            .update_cluster_config()
            .name(&spec.name)
            .resources_vpc_config(
                VpcConfigRequest::builder()
                    .endpoint_public_access(spec.endpoint_public_access)
                    .endpoint_private_access(spec.endpoint_private_access)
                    .build(),
            )
            .send()
            .await
            .map_err(|e| AwsError::from_sdk("UpdateClusterConfig", e))?;
        state.endpoint_public_access = spec.endpoint_public_access;
        state.endpoint_private_access = spec.endpoint_private_access;
    } else if version_key(&state.version) < version_key(&spec.version) {
        tracing::info!(provider = "aws", cluster = %spec.name, from = %state.version, to = %spec.version, "upgrading eks cluster");
        aws.eks
            .update_cluster_version()
            .name(&spec.name)
            .version(&spec.version)
            .send()
            .await
            .map_err(|e| AwsError::from_sdk("UpdateClusterVersion", e))?;
        state.version = spec.version.clone();
    }
    let missing = crate::tags::missing(&spec.tags.desired_for_diff(), &state.tags);
    if !missing.is_empty() && !state.arn.is_empty() {
        aws.eks
            .tag_resource()
            .resource_arn(&state.arn)
            .set_tags(Some(missing.clone().into_iter().collect()))
            .send()
            .await
            .map_err(|e| AwsError::from_sdk("TagResource", e))?;
        state.tags.extend(missing);
    }
    Ok(state)
}

fn version_key(v: &str) -> (u64, u64) {
    let mut parts = v.split('.').map(|p| p.parse::<u64>().unwrap_or(0));
    (parts.next().unwrap_or(0), parts.next().unwrap_or(0))
}

/// Waits until the cluster is `ACTIVE`; fails fast on `FAILED`.
pub async fn wait_active(
    aws: &Aws,
    name: &str,
    options: WaitOptions,
    on_progress: &mut (dyn FnMut(&Progress) + Send),
) -> Result<ClusterState> {
    let resource = format!("cluster {name}");
    wait::until(&resource, options, on_progress, || async {
        Ok(match describe(aws, name).await? {
            None => Poll::Failed("the cluster does not exist".into()),
            Some(s) if s.status == "ACTIVE" => Poll::Ready(s),
            Some(s) if s.status == "FAILED" || s.status == "DELETING" => {
                Poll::Failed(failed_status(&s.status, &s.issues))
            }
            Some(s) => Poll::Pending(s.status),
        })
    })
    .await
}

/// Deletes the cluster (its node groups must be gone) and waits until it is.
pub async fn delete(
    aws: &Aws,
    name: &str,
    options: WaitOptions,
    on_progress: &mut (dyn FnMut(&Progress) + Send),
) -> Result<()> {
    match describe(aws, name).await? {
        None => return Ok(()),
        Some(s) if s.status != "DELETING" => {
            tracing::info!(provider = "aws", cluster = name, "deleting eks cluster");
            if let Err(e) = aws.eks.delete_cluster().name(name).send().await {
                let e = AwsError::from_sdk("DeleteCluster", e);
                if !e.is_not_found() {
                    return Err(e);
                }
            }
        }
        Some(_) => {}
    }
    let resource = format!("cluster {name} deletion");
    wait::until(&resource, options, on_progress, || async {
        Ok(match describe(aws, name).await? {
            None => Poll::Ready(()),
            Some(s) => Poll::Pending(s.status),
        })
    })
    .await
}

pub fn diff(spec: &ClusterSpec, state: &ClusterState) -> Vec<FieldDiff> {
    let mut out = Vec::new();
    if version_key(&state.version) > version_key(&spec.version) {
        out.push(FieldDiff::replace("version", &state.version, &spec.version));
    } else {
        diff::field(&mut out, "version", &state.version, &spec.version);
    }
    if !spec.role_arn.is_empty() {
        diff::immutable(&mut out, "role_arn", &state.role_arn, &spec.role_arn);
    }
    if !spec.subnet_ids.is_empty() && state.subnet_ids != spec.subnet_ids {
        out.push(FieldDiff::replace(
            "subnet_ids",
            diff::set(&state.subnet_ids),
            diff::set(&spec.subnet_ids),
        ));
    }
    if !spec.security_group_ids.is_empty() && state.security_group_ids != spec.security_group_ids {
        out.push(FieldDiff::replace(
            "security_group_ids",
            diff::set(&state.security_group_ids),
            diff::set(&spec.security_group_ids),
        ));
    }
    diff::field(
        &mut out,
        "endpoint.public",
        &state.endpoint_public_access,
        &spec.endpoint_public_access,
    );
    diff::field(
        &mut out,
        "endpoint.private",
        &state.endpoint_private_access,
        &spec.endpoint_private_access,
    );
    diff::tags(&mut out, &spec.tags.desired_for_diff(), &state.tags);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tags::Environment;

    fn spec() -> ClusterSpec {
        ClusterSpec {
            name: "ts-prod".into(),
            version: "1.34".into(),
            role_arn: "arn:role".into(),
            subnet_ids: ["s1".to_string(), "s2".to_string()].into(),
            security_group_ids: ["sg-1".to_string()].into(),
            endpoint_public_access: false,
            endpoint_private_access: false,
            tags: Tags::new(&Environment::new("ts", "prod"), "cluster", "r"),
        }
        .endpoint_access(EndpointAccess::PublicAndPrivate)
    }

    fn state() -> ClusterState {
        let s = spec();
        ClusterState {
            name: s.name,
            arn: "arn:cluster".into(),
            status: "ACTIVE".into(),
            version: "1.34".into(),
            endpoint: None,
            certificate_authority: None,
            oidc_issuer: None,
            role_arn: s.role_arn,
            subnet_ids: s.subnet_ids,
            security_group_ids: s.security_group_ids,
            endpoint_public_access: true,
            endpoint_private_access: true,
            issues: vec![],
            tags: s.tags.to_map(),
        }
    }

    #[test]
    fn in_sync() {
        assert_eq!(diff(&spec(), &state()), []);
    }

    #[test]
    fn upgrade_in_place_downgrade_replaces() {
        let older = ClusterState {
            version: "1.33".into(),
            ..state()
        };
        assert_eq!(
            diff(&spec(), &older),
            [FieldDiff::update("version", "1.33", "1.34")]
        );
        let newer = ClusterState {
            version: "1.35".into(),
            ..state()
        };
        assert!(diff(&spec(), &newer)[0].replace);
    }

    #[test]
    fn endpoint_access_is_in_place() {
        let private_only = ClusterState {
            endpoint_public_access: false,
            ..state()
        };
        assert_eq!(
            diff(&spec(), &private_only),
            [FieldDiff::update("endpoint.public", false, true)]
        );
    }
}
