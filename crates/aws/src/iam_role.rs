//! IAM roles for the EKS cluster and its nodes, with trust policies and the
//! AWS-managed policies EKS needs.
//!
//! IAM has no tag filter, so a role is found by its deterministic name
//! (`<name>-<environment>-<cluster|node>`, under the path `/taskctl/` so
//! [`crate::destroy::sweep`] can list them) and then checked by its tags: a
//! role of that name that taskctl does not own is reported as a conflict,
//! never adopted.
//!
//! Guarantees: [`create`] finds first and tags in `CreateRole`; [`update`]
//! attaches missing policies, detaches extra ones and rewrites the trust
//! policy only when its principals differ.

use crate::Aws;
use crate::diff::{self, FieldDiff};
use crate::error::{AwsError, ErrorKind, Result, ignore_not_found};
use crate::tags::Tags;
use crate::wait::settle;
use std::collections::{BTreeMap, BTreeSet};

/// The path of every role taskctl creates.
pub const ROLE_PATH: &str = "/taskctl/";

pub const EKS_CLUSTER_POLICY: &str = "arn:aws:iam::aws:policy/AmazonEKSClusterPolicy";
pub const EKS_WORKER_NODE_POLICY: &str = "arn:aws:iam::aws:policy/AmazonEKSWorkerNodePolicy";
pub const EKS_CNI_POLICY: &str = "arn:aws:iam::aws:policy/AmazonEKS_CNI_Policy";
pub const ECR_READ_ONLY_POLICY: &str = "arn:aws:iam::aws:policy/AmazonEC2ContainerRegistryReadOnly";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoleSpec {
    pub role_name: String,
    /// The service allowed to assume the role (`eks.amazonaws.com`).
    pub trusted_service: String,
    /// Managed policy ARNs to attach.
    pub policies: BTreeSet<String>,
    pub tags: Tags,
}

impl RoleSpec {
    /// The EKS control plane's role.
    pub fn cluster(tags: Tags) -> RoleSpec {
        RoleSpec {
            role_name: format!("{}-cluster", tags.environment.prefix()),
            trusted_service: "eks.amazonaws.com".into(),
            policies: [EKS_CLUSTER_POLICY.to_owned()].into(),
            tags,
        }
    }

    /// The worker nodes' role (all node groups share it).
    pub fn node(tags: Tags) -> RoleSpec {
        RoleSpec {
            role_name: format!("{}-node", tags.environment.prefix()),
            trusted_service: "ec2.amazonaws.com".into(),
            policies: [EKS_WORKER_NODE_POLICY, EKS_CNI_POLICY, ECR_READ_ONLY_POLICY]
                .map(str::to_owned)
                .into(),
            tags,
        }
    }

    /// The trust policy document.
    pub fn trust_policy(&self) -> String {
        serde_json::json!({
            "Version": "2012-10-17",
            "Statement": [{
                "Effect": "Allow",
                "Principal": { "Service": self.trusted_service },
                "Action": "sts:AssumeRole"
            }]
        })
        .to_string()
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoleState {
    pub role_name: String,
    pub arn: String,
    /// Services the trust policy lets assume the role.
    pub trusted_services: BTreeSet<String>,
    pub policies: BTreeSet<String>,
    pub tags: BTreeMap<String, String>,
}

/// Services allowed `sts:AssumeRole` by a trust policy, which IAM returns
/// URL-encoded.
pub fn trusted_services(document: &str) -> BTreeSet<String> {
    let decoded = percent_decode(document);
    let Ok(json) = serde_json::from_str::<serde_json::Value>(&decoded) else {
        return BTreeSet::new();
    };
    let as_list = |v: &serde_json::Value| -> Vec<String> {
        match v {
            serde_json::Value::String(s) => vec![s.clone()],
            serde_json::Value::Array(items) => items
                .iter()
                .filter_map(|i| i.as_str().map(str::to_owned))
                .collect(),
            _ => Vec::new(),
        }
    };
    let statements = match &json["Statement"] {
        serde_json::Value::Array(items) => items.clone(),
        other => vec![other.clone()],
    };
    statements
        .iter()
        .filter(|s| {
            s["Effect"] == "Allow" && as_list(&s["Action"]).iter().any(|a| a == "sts:AssumeRole")
        })
        .flat_map(|s| as_list(&s["Principal"]["Service"]))
        .collect()
}

fn percent_decode(s: &str) -> String {
    if !s.contains('%') {
        return s.to_owned();
    }
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let (Some(h), Some(l)) = (hex(bytes[i + 1]), hex(bytes[i + 2]))
        {
            out.push((h * 16 + l) as u8);
            i += 3;
            continue;
        }
        out.push(if bytes[i] == b'+' { b' ' } else { bytes[i] });
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

pub async fn find(aws: &Aws, spec: &RoleSpec) -> Result<Option<RoleState>> {
    let out = match aws.iam.get_role().role_name(&spec.role_name).send().await {
        Ok(out) => out,
        Err(e) => {
            let e = AwsError::from_sdk("GetRole", e);
            return if e.is_not_found() { Ok(None) } else { Err(e) };
        }
    };
    let Some(role) = out.role() else {
        return Ok(None);
    };
    let mut tags: BTreeMap<String, String> = role
        .tags()
        .iter()
        .map(|t| (t.key().to_owned(), t.value().to_owned()))
        .collect();
    if tags.is_empty() {
        // Some IAM implementations leave tags out of GetRole.
        tags = role_tags(aws, &spec.role_name).await?;
    }
    if !spec.tags.environment.owns(&tags) {
        return Err(AwsError::new(
            ErrorKind::Conflict,
            "GetRole",
            format!(
                "IAM role `{}` exists but is not tagged as taskctl's for `{}`; rename or delete it",
                spec.role_name,
                spec.tags.environment.tag_value()
            ),
        ));
    }
    Ok(Some(RoleState {
        role_name: spec.role_name.clone(),
        arn: role.arn().to_owned(),
        trusted_services: trusted_services(role.assume_role_policy_document().unwrap_or_default()),
        policies: attached_policies(aws, &spec.role_name).await?,
        tags,
    }))
}

pub(crate) async fn role_tags(aws: &Aws, role_name: &str) -> Result<BTreeMap<String, String>> {
    let out = aws
        .iam
        .list_role_tags()
        .role_name(role_name)
        .send()
        .await
        .map_err(|e| AwsError::from_sdk("ListRoleTags", e))?;
    Ok(out
        .tags()
        .iter()
        .map(|t| (t.key().to_owned(), t.value().to_owned()))
        .collect())
}

async fn attached_policies(aws: &Aws, role_name: &str) -> Result<BTreeSet<String>> {
    let mut policies = BTreeSet::new();
    let mut marker = None;
    loop {
        let out = aws
            .iam
            .list_attached_role_policies()
            .role_name(role_name)
            .set_marker(marker)
            .send()
            .await
            .map_err(|e| AwsError::from_sdk("ListAttachedRolePolicies", e))?;
        policies.extend(
            out.attached_policies()
                .iter()
                .filter_map(|p| p.policy_arn().map(str::to_owned)),
        );
        marker = out.marker().map(str::to_owned);
        if !out.is_truncated() || marker.is_none() {
            return Ok(policies);
        }
    }
}

pub async fn create(aws: &Aws, spec: &RoleSpec) -> Result<RoleState> {
    if let Some(state) = find(aws, spec).await? {
        return update(aws, spec, &state).await;
    }
    tracing::info!(provider = "aws", role = %spec.role_name, "creating iam role");
    let tags: Vec<aws_sdk_iam::types::Tag> = spec
        .tags
        .to_map()
        .into_iter()
        .filter_map(|(k, v)| {
            aws_sdk_iam::types::Tag::builder()
                .key(k)
                .value(v)
                .build()
                .ok()
        })
        .collect();
    let out = aws
        .iam
        .create_role()
        .role_name(&spec.role_name)
        .path(ROLE_PATH)
        .assume_role_policy_document(spec.trust_policy())
        .description(format!("taskctl {}", spec.tags.resource))
        .set_tags(Some(tags))
        .send()
        .await
        .map_err(|e| AwsError::from_sdk("CreateRole", e))?;
    let state = RoleState {
        role_name: spec.role_name.clone(),
        arn: out.role().map(|r| r.arn().to_owned()).unwrap_or_default(),
        trusted_services: [spec.trusted_service.clone()].into(),
        policies: BTreeSet::new(),
        tags: spec.tags.to_map(),
    };
    settle(|| update(aws, spec, &state)).await
}

/// Attaches missing policies, detaches extra ones, fixes the trust policy.
pub async fn update(aws: &Aws, spec: &RoleSpec, state: &RoleState) -> Result<RoleState> {
    let mut state = state.clone();
    let want_trust: BTreeSet<String> = [spec.trusted_service.clone()].into();
    if state.trusted_services != want_trust {
        tracing::info!(provider = "aws", role = %spec.role_name, "updating trust policy");
        aws.iam
            .update_assume_role_policy()
            .role_name(&spec.role_name)
            .policy_document(spec.trust_policy())
            .send()
            .await
            .map_err(|e| AwsError::from_sdk("UpdateAssumeRolePolicy", e))?;
        state.trusted_services = want_trust;
    }
    for arn in spec.policies.difference(&state.policies) {
        tracing::info!(provider = "aws", role = %spec.role_name, policy = %arn, "attaching policy");
        aws.iam
            .attach_role_policy()
            .role_name(&spec.role_name)
            .policy_arn(arn)
            .send()
            .await
            .map_err(|e| AwsError::from_sdk("AttachRolePolicy", e))?;
    }
    for arn in state.policies.difference(&spec.policies) {
        detach(aws, &spec.role_name, arn).await?;
    }
    state.policies = spec.policies.clone();
    let missing = crate::tags::missing(&spec.tags.desired_for_diff(), &state.tags);
    if !missing.is_empty() {
        let tags: Vec<aws_sdk_iam::types::Tag> = missing
            .iter()
            .filter_map(|(k, v)| {
                aws_sdk_iam::types::Tag::builder()
                    .key(k)
                    .value(v)
                    .build()
                    .ok()
            })
            .collect();
        aws.iam
            .tag_role()
            .role_name(&spec.role_name)
            .set_tags(Some(tags))
            .send()
            .await
            .map_err(|e| AwsError::from_sdk("TagRole", e))?;
        state.tags.extend(missing);
    }
    Ok(state)
}

async fn detach(aws: &Aws, role_name: &str, arn: &str) -> Result<()> {
    tracing::info!(
        provider = "aws",
        role = role_name,
        policy = arn,
        "detaching policy"
    );
    ignore_not_found(
        aws.iam
            .detach_role_policy()
            .role_name(role_name)
            .policy_arn(arn)
            .send()
            .await
            .map(|_| ())
            .map_err(|e| AwsError::from_sdk("DetachRolePolicy", e)),
    )
}

/// Detaches every managed policy, deletes inline policies, takes the role
/// out of its instance profiles, then deletes it.
pub async fn delete(aws: &Aws, role_name: &str) -> Result<()> {
    let policies = match attached_policies(aws, role_name).await {
        Ok(p) => p,
        Err(e) if e.is_not_found() => return Ok(()),
        Err(e) => return Err(e),
    };
    for arn in &policies {
        detach(aws, role_name, arn).await?;
    }
    let inline = aws
        .iam
        .list_role_policies()
        .role_name(role_name)
        .send()
        .await
        .map_err(|e| AwsError::from_sdk("ListRolePolicies", e))?;
    for name in inline.policy_names() {
        ignore_not_found(
            aws.iam
                .delete_role_policy()
                .role_name(role_name)
                .policy_name(name)
                .send()
                .await
                .map(|_| ())
                .map_err(|e| AwsError::from_sdk("DeleteRolePolicy", e)),
        )?;
    }
    // EKS puts node roles in instance profiles; a role in one cannot go.
    let profiles = aws
        .iam
        .list_instance_profiles_for_role()
        .role_name(role_name)
        .send()
        .await
        .map_err(|e| AwsError::from_sdk("ListInstanceProfilesForRole", e))?;
    for profile in profiles.instance_profiles() {
        tracing::info!(
            provider = "aws",
            role = role_name,
            instance_profile = profile.instance_profile_name(),
            "removing role from instance profile"
        );
        ignore_not_found(
            aws.iam
                .remove_role_from_instance_profile()
                .instance_profile_name(profile.instance_profile_name())
                .role_name(role_name)
                .send()
                .await
                .map(|_| ())
                .map_err(|e| AwsError::from_sdk("RemoveRoleFromInstanceProfile", e)),
        )?;
    }
    tracing::info!(provider = "aws", role = role_name, "deleting iam role");
    ignore_not_found(
        aws.iam
            .delete_role()
            .role_name(role_name)
            .send()
            .await
            .map(|_| ())
            .map_err(|e| AwsError::from_sdk("DeleteRole", e)),
    )
}

pub fn diff(spec: &RoleSpec, state: &RoleState) -> Vec<FieldDiff> {
    let mut out = Vec::new();
    let want_trust: BTreeSet<String> = [spec.trusted_service.clone()].into();
    if state.trusted_services != want_trust {
        out.push(FieldDiff::update(
            "trust.service",
            diff::set(&state.trusted_services),
            diff::set(&want_trust),
        ));
    }
    if state.policies != spec.policies {
        out.push(FieldDiff::update(
            "policies",
            diff::set(&state.policies),
            diff::set(&spec.policies),
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
    fn reads_url_encoded_trust_policy() {
        let spec = RoleSpec::cluster(Tags::new(
            &Environment::new("ts", "prod"),
            "iam-role/cluster",
            "r",
        ));
        let encoded = spec
            .trust_policy()
            .replace('{', "%7B")
            .replace('}', "%7D")
            .replace('"', "%22")
            .replace(':', "%3A");
        assert_eq!(
            trusted_services(&encoded),
            ["eks.amazonaws.com".to_string()].into()
        );
        assert_eq!(
            trusted_services(&spec.trust_policy()),
            ["eks.amazonaws.com".to_string()].into()
        );
    }

    #[test]
    fn node_role_policies_and_missing_one() {
        let spec = RoleSpec::node(Tags::new(
            &Environment::new("ts", "prod"),
            "iam-role/node",
            "r",
        ));
        assert_eq!(spec.role_name, "ts-prod-node");
        assert_eq!(spec.policies.len(), 3);
        let mut state = RoleState {
            role_name: spec.role_name.clone(),
            arn: "arn".into(),
            trusted_services: ["ec2.amazonaws.com".to_string()].into(),
            policies: spec.policies.clone(),
            tags: spec.tags.to_map(),
        };
        assert_eq!(diff(&spec, &state), []);
        state.policies.remove(EKS_CNI_POLICY);
        assert_eq!(diff(&spec, &state)[0].field, "policies");
    }
}
