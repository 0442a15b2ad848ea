//! How people and programs reach an environment's EKS cluster: its API
//! endpoint and certificate authority from `DescribeCluster`, and bearer
//! tokens from [`crate::eks_token`]. The kubeconfig itself is written by
//! `taskctl-kube`; this crate only knows what AWS says of the cluster.

use crate::Aws;
use crate::error::{AwsError, ErrorKind, Result};
use crate::stack::environment_of;
use taskctl_core::profile::Profile;

/// What a Kubernetes client needs to know of an EKS cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterAccess {
    pub name: String,
    pub arn: String,
    pub region: String,
    /// `https://…eks.amazonaws.com`.
    pub endpoint: String,
    /// The cluster's CA bundle, base64 as AWS returns it (and as a
    /// kubeconfig's `certificate-authority-data` takes it).
    pub certificate_authority: String,
}

impl ClusterAccess {
    /// From the outputs of the `aws/cluster` step of a run (name, arn,
    /// endpoint, certificate_authority), so a deploy needs no further call;
    /// `None` when one is missing (a cluster still creating).
    pub fn from_outputs(
        outputs: &std::collections::BTreeMap<String, String>,
        region: &str,
    ) -> Option<ClusterAccess> {
        let get = |k: &str| outputs.get(k).filter(|v| !v.is_empty()).cloned();
        Some(ClusterAccess {
            name: get("name")?,
            arn: get("arn").unwrap_or_default(),
            region: region.to_owned(),
            endpoint: get("endpoint")?,
            certificate_authority: get("certificate_authority")?,
        })
    }
}

/// The name of the profile's cluster (`task-system-production`).
pub fn cluster_name(profile: &Profile) -> String {
    environment_of(profile).prefix()
}

/// Describes the profile's cluster. A cluster that does not exist, or has
/// no endpoint yet (still `CREATING`), is an error that says so.
pub async fn cluster_access(aws: &Aws, profile: &Profile) -> Result<ClusterAccess> {
    describe_access(aws, &cluster_name(profile)).await
}

/// [`cluster_access`] of the cluster called `name`.
pub async fn describe_access(aws: &Aws, name: &str) -> Result<ClusterAccess> {
    let what = "describe the cluster";
    let state = crate::cluster::describe(aws, name).await?.ok_or_else(|| {
        AwsError::new(
            ErrorKind::NotFound,
            what,
            format!(
                "cluster {name} does not exist in {}; `taskctl deploy --only infrastructure` creates it",
                aws.region()
            ),
        )
    })?;
    let pending = |field: &str| {
        AwsError::new(
            ErrorKind::NotFound,
            what,
            format!(
                "cluster {name} has no {field} yet (status {}); wait until it is ACTIVE",
                state.status
            ),
        )
    };
    Ok(ClusterAccess {
        endpoint: state
            .endpoint
            .clone()
            .filter(|e| !e.is_empty())
            .ok_or_else(|| pending("endpoint"))?,
        certificate_authority: state
            .certificate_authority
            .clone()
            .ok_or_else(|| pending("certificate authority"))?,
        name: state.name,
        arn: state.arn,
        region: aws.region().to_owned(),
    })
}
