//! IAM roles for the EKS cluster and its nodes, with trust policies and the
//! AWS-managed policies EKS needs, and for the in-cluster Vault's pods (a
//! service account's role, IRSA, with one inline policy on its unseal key).
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

/// Who may assume a role.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Trust {
    /// An AWS service (`eks.amazonaws.com`), by `sts:AssumeRole`.
    Service(String),
    /// One Kubernetes service account, by `sts:AssumeRoleWithWebIdentity`
    /// through the cluster's IAM OIDC provider (IRSA).
    ServiceAccount {
        /// The OIDC provider's ARN (filled from its step's outputs).
        provider_arn: String,
        /// The cluster's issuer URL.
        issuer: String,
        namespace: String,
        name: String,
    },
}

impl Trust {
    /// What [`principals`] reads back from a trust policy allowing this.
    pub fn principal(&self) -> String {
        match self {
            Trust::Service(service) => service.clone(),
            Trust::ServiceAccount {
                provider_arn,
                namespace,
                name,
                ..
            } => format!("{provider_arn} as system:serviceaccount:{namespace}:{name}"),
        }
    }

    fn statement(&self) -> serde_json::Value {
        match self {
            Trust::Service(service) => serde_json::json!({
                "Effect": "Allow",
                "Principal": { "Service": service },
                "Action": "sts:AssumeRole"
            }),
            Trust::ServiceAccount {
                provider_arn,
                issuer,
                namespace,
                name,
            } => {
                let issuer = crate::oidc_provider::issuer_host_path(issuer);
                serde_json::json!({
                    "Effect": "Allow",
                    "Principal": { "Federated": provider_arn },
                    "Action": "sts:AssumeRoleWithWebIdentity",
                    "Condition": { "StringEquals": {
                        format!("{issuer}:sub"): format!("system:serviceaccount:{namespace}:{name}"),
                        format!("{issuer}:aud"): crate::oidc_provider::STS_AUDIENCE,
                    }}
                })
            }
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoleSpec {
    pub role_name: String,
    pub trust: Trust,
    /// Managed policy ARNs to attach.
    pub policies: BTreeSet<String>,
    /// Inline policies: name → document. Read back and compared only for
    /// roles that have some.
    pub inline: BTreeMap<String, serde_json::Value>,
    pub tags: Tags,
}

impl RoleSpec {
    /// The EKS control plane's role.
    pub fn cluster(tags: Tags) -> RoleSpec {
        RoleSpec {
            role_name: format!("{}-cluster", tags.environment.prefix()),
            trust: Trust::Service("eks.amazonaws.com".into()),
            policies: [EKS_CLUSTER_POLICY.to_owned()].into(),
            inline: BTreeMap::new(),
            tags,
        }
    }

    /// The worker nodes' role (all node groups share it).
    pub fn node(tags: Tags) -> RoleSpec {
        RoleSpec {
            role_name: format!("{}-node", tags.environment.prefix()),
            trust: Trust::Service("ec2.amazonaws.com".into()),
            policies: [EKS_WORKER_NODE_POLICY, EKS_CNI_POLICY, ECR_READ_ONLY_POLICY]
                .map(str::to_owned)
                .into(),
            inline: BTreeMap::new(),
            tags,
        }
    }

    /// The in-cluster Vault's role (service account `vault/vault`): it may
    /// encrypt and decrypt with its unseal key and nothing else. The OIDC
    /// provider, issuer and key ARN are filled from their steps' outputs.
    pub fn vault(tags: Tags, namespace: &str, service_account: &str) -> RoleSpec {
        RoleSpec {
            role_name: vault_role_name(&tags.environment),
            trust: Trust::ServiceAccount {
                provider_arn: String::new(),
                issuer: String::new(),
                namespace: namespace.to_owned(),
                name: service_account.to_owned(),
            },
            policies: BTreeSet::new(),
            inline: [(VAULT_UNSEAL_POLICY.to_owned(), vault_unseal_policy(""))].into(),
            tags,
        }
    }

    /// The trust policy document.
    pub fn trust_policy(&self) -> String {
        serde_json::json!({
            "Version": "2012-10-17",
            "Statement": [self.trust.statement()]
        })
        .to_string()
    }
}

fn vault_role_name(environment: &crate::tags::Environment) -> String {
    format!("{}-vault", environment.prefix())
}

/// The ARN the in-cluster Vault's role has (or will have, once deployed) in
/// the caller's account: what its service account's
/// `eks.amazonaws.com/role-arn` names. One `GetCallerIdentity`.
pub async fn vault_role_arn(aws: &Aws, environment: &crate::tags::Environment) -> Result<String> {
    let (account, partition) = aws.caller_account().await?;
    Ok(format!(
        "arn:{partition}:iam::{account}:role{ROLE_PATH}{}",
        vault_role_name(environment)
    ))
}

/// The name of the Vault role's inline policy.
pub const VAULT_UNSEAL_POLICY: &str = "vault-unseal";

/// What Vault's `awskms` seal calls, on one key.
pub fn vault_unseal_policy(key_arn: &str) -> serde_json::Value {
    serde_json::json!({
        "Version": "2012-10-17",
        "Statement": [{
            "Effect": "Allow",
            "Action": ["kms:Encrypt", "kms:Decrypt", "kms:DescribeKey"],
            "Resource": key_arn
        }]
    })
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoleState {
    pub role_name: String,
    pub arn: String,
    /// Who the trust policy lets assume the role ([`Trust::principal`]).
    pub principals: BTreeSet<String>,
    pub policies: BTreeSet<String>,
    pub inline: BTreeMap<String, serde_json::Value>,
    pub tags: BTreeMap<String, String>,
}

/// Who a trust policy (which IAM returns URL-encoded) lets assume the
/// role, as [`Trust::principal`] writes it: services allowed
/// `sts:AssumeRole`, and federated providers allowed
/// `sts:AssumeRoleWithWebIdentity` for the service account their `sub`
/// condition names.
pub fn principals(document: &str) -> BTreeSet<String> {
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
    let mut out = BTreeSet::new();
    for s in statements.iter().filter(|s| s["Effect"] == "Allow") {
        let actions = as_list(&s["Action"]);
        if actions.iter().any(|a| a == "sts:AssumeRole") {
            out.extend(as_list(&s["Principal"]["Service"]));
        }
        if actions.iter().any(|a| a == "sts:AssumeRoleWithWebIdentity") {
            let subjects: Vec<String> = s["Condition"]["StringEquals"]
                .as_object()
                .into_iter()
                .flatten()
                .filter(|(k, _)| k.ends_with(":sub"))
                .flat_map(|(_, v)| as_list(v))
                .collect();
            for provider in as_list(&s["Principal"]["Federated"]) {
                for subject in &subjects {
                    out.insert(format!("{provider} as {subject}"));
                }
            }
        }
    }
    out
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
        principals: principals(role.assume_role_policy_document().unwrap_or_default()),
        policies: attached_policies(aws, &spec.role_name).await?,
        inline: if spec.inline.is_empty() {
            BTreeMap::new()
        } else {
            inline_policies(aws, &spec.role_name).await?
        },
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

/// The role's inline policies, name → document.
async fn inline_policies(
    aws: &Aws,
    role_name: &str,
) -> Result<BTreeMap<String, serde_json::Value>> {
    let names = aws
        .iam
        .list_role_policies()
        .role_name(role_name)
        .send()
        .await
        .map_err(|e| AwsError::from_sdk("ListRolePolicies", e))?;
    let mut out = BTreeMap::new();
    for name in names.policy_names() {
        let got = aws
            .iam
            .get_role_policy()
            .role_name(role_name)
            .policy_name(name)
            .send()
            .await
            .map_err(|e| AwsError::from_sdk("GetRolePolicy", e))?;
        let document = percent_decode(got.policy_document());
        let value = serde_json::from_str(&document).unwrap_or(serde_json::Value::String(document));
        out.insert(name.clone(), value);
    }
    Ok(out)
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
    let tags = crate::tags::to_iam(&spec.tags.to_map());
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
        principals: [spec.trust.principal()].into(),
        policies: BTreeSet::new(),
        inline: BTreeMap::new(),
        tags: spec.tags.to_map(),
    };
    settle(|| update(aws, spec, &state)).await
}

/// Attaches missing policies, detaches extra ones, puts the inline ones,
/// fixes the trust policy.
pub async fn update(aws: &Aws, spec: &RoleSpec, state: &RoleState) -> Result<RoleState> {
    let mut state = state.clone();
    let want_trust: BTreeSet<String> = [spec.trust.principal()].into();
    if state.principals != want_trust {
        tracing::info!(provider = "aws", role = %spec.role_name, "updating trust policy");
        aws.iam
            .update_assume_role_policy()
            .role_name(&spec.role_name)
            .policy_document(spec.trust_policy())
            .send()
            .await
            .map_err(|e| AwsError::from_sdk("UpdateAssumeRolePolicy", e))?;
        state.principals = want_trust;
    }
    for (name, document) in &spec.inline {
        if state.inline.get(name) == Some(document) {
            continue;
        }
        tracing::info!(provider = "aws", role = %spec.role_name, policy = %name, "putting inline policy");
        aws.iam
            .put_role_policy()
            .role_name(&spec.role_name)
            .policy_name(name)
            .policy_document(document.to_string())
            .send()
            .await
            .map_err(|e| AwsError::from_sdk("PutRolePolicy", e))?;
    }
    if !spec.inline.is_empty() {
        for name in state
            .inline
            .keys()
            .filter(|n| !spec.inline.contains_key(*n))
        {
            ignore_not_found(
                aws.iam
                    .delete_role_policy()
                    .role_name(&spec.role_name)
                    .policy_name(name)
                    .send()
                    .await
                    .map(|_| ())
                    .map_err(|e| AwsError::from_sdk("DeleteRolePolicy", e)),
            )?;
        }
        state.inline = spec.inline.clone();
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
        let tags = crate::tags::to_iam(&missing);
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
    let want_trust: BTreeSet<String> = [spec.trust.principal()].into();
    if state.principals != want_trust {
        out.push(FieldDiff::update(
            "trust",
            diff::set(&state.principals),
            diff::set(&want_trust),
        ));
    }
    if !spec.inline.is_empty() {
        let names: BTreeSet<&String> = spec.inline.keys().chain(state.inline.keys()).collect();
        for name in names {
            let (have, want) = (state.inline.get(name), spec.inline.get(name));
            if have != want {
                let show =
                    |v: Option<&serde_json::Value>| v.map_or("-".to_string(), |v| v.to_string());
                out.push(FieldDiff::update(
                    format!("inline.{name}"),
                    show(have),
                    show(want),
                ));
            }
        }
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
            principals(&encoded),
            ["eks.amazonaws.com".to_string()].into()
        );
        assert_eq!(
            principals(&spec.trust_policy()),
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
            principals: ["ec2.amazonaws.com".to_string()].into(),
            policies: spec.policies.clone(),
            inline: BTreeMap::new(),
            tags: spec.tags.to_map(),
        };
        assert_eq!(diff(&spec, &state), []);
        state.policies.remove(EKS_CNI_POLICY);
        assert_eq!(diff(&spec, &state)[0].field, "policies");
    }

    #[test]
    fn a_service_account_trust_reads_back_as_written() {
        let mut spec = RoleSpec::vault(
            Tags::new(&Environment::new("ts", "prod"), "iam-role/vault", "r"),
            "vault",
            "vault",
        );
        let issuer = "https://oidc.eks.eu-west-1.amazonaws.com/id/ABC";
        spec.trust = Trust::ServiceAccount {
            provider_arn: "arn:aws:iam::1:oidc-provider/oidc.eks.eu-west-1.amazonaws.com/id/ABC"
                .into(),
            issuer: issuer.into(),
            namespace: "vault".into(),
            name: "vault".into(),
        };
        let read = principals(&spec.trust_policy());
        assert_eq!(read, [spec.trust.principal()].into());
        assert!(
            spec.trust_policy()
                .contains("oidc.eks.eu-west-1.amazonaws.com/id/ABC:sub")
        );
        // Another service account of the same cluster is another principal.
        let other = spec
            .trust_policy()
            .replace(":vault:vault", ":default:vault");
        assert_ne!(principals(&other), read);
    }

    #[test]
    fn an_inline_policy_on_another_key_is_an_update() {
        let spec = RoleSpec::vault(
            Tags::new(&Environment::new("ts", "prod"), "iam-role/vault", "r"),
            "vault",
            "vault",
        );
        let state = RoleState {
            role_name: spec.role_name.clone(),
            arn: "arn".into(),
            principals: [spec.trust.principal()].into(),
            policies: BTreeSet::new(),
            inline: [(
                VAULT_UNSEAL_POLICY.to_string(),
                vault_unseal_policy("arn:other"),
            )]
            .into(),
            tags: spec.tags.to_map(),
        };
        let d = diff(&spec, &state);
        assert_eq!(d.len(), 1, "{d:?}");
        assert_eq!(d[0].field, "inline.vault-unseal");
    }
}
