//! The IAM OIDC identity provider of the EKS cluster's service-account
//! issuer: what lets a pod's service account assume an IAM role (IRSA), as
//! `eksctl utils associate-iam-oidc-provider` makes it.
//!
//! IAM names a provider by its URL (its ARN ends in `oidc-provider/<host and
//! path>`), so it is found by listing providers and matching that suffix,
//! then checked by its tags: a provider for this issuer that taskctl does
//! not own is reported as a conflict, never adopted (destroy would delete
//! it). No thumbprint is given: IAM fetches and trusts the issuer's
//! certificate chain itself for EKS issuers.

use crate::Aws;
use crate::diff::{self, FieldDiff};
use crate::error::{AwsError, ErrorKind, Result, ignore_not_found};
use crate::tags::Tags;
use std::collections::{BTreeMap, BTreeSet};

/// The audience of the tokens EKS projects for IRSA.
pub const STS_AUDIENCE: &str = "sts.amazonaws.com";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OidcProviderSpec {
    /// The cluster's issuer, `https://oidc.eks.<region>.amazonaws.com/id/<id>`
    /// (filled from the cluster step's outputs).
    pub url: String,
    pub client_ids: BTreeSet<String>,
    pub tags: Tags,
}

impl OidcProviderSpec {
    pub fn for_cluster(tags: Tags) -> OidcProviderSpec {
        OidcProviderSpec {
            url: String::new(),
            client_ids: [STS_AUDIENCE.to_owned()].into(),
            tags,
        }
    }
}

/// The issuer without its scheme: the suffix of the provider's ARN and the
/// prefix of the condition keys of trust policies (`<issuer>:sub`).
pub fn issuer_host_path(url: &str) -> &str {
    url.trim_start_matches("https://").trim_end_matches('/')
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OidcProviderState {
    pub arn: String,
    pub url: String,
    pub client_ids: BTreeSet<String>,
    pub tags: BTreeMap<String, String>,
}

pub async fn find(aws: &Aws, spec: &OidcProviderSpec) -> Result<Option<OidcProviderState>> {
    if spec.url.is_empty() {
        return Ok(None);
    }
    let suffix = format!("oidc-provider/{}", issuer_host_path(&spec.url));
    let listed = aws
        .iam
        .list_open_id_connect_providers()
        .send()
        .await
        .map_err(|e| AwsError::from_sdk("ListOpenIDConnectProviders", e))?;
    let Some(arn) = listed
        .open_id_connect_provider_list()
        .iter()
        .filter_map(|p| p.arn())
        .find(|arn| arn.ends_with(&suffix))
        .map(str::to_owned)
    else {
        return Ok(None);
    };
    let out = match aws
        .iam
        .get_open_id_connect_provider()
        .open_id_connect_provider_arn(&arn)
        .send()
        .await
    {
        Ok(out) => out,
        Err(e) => {
            let e = AwsError::from_sdk("GetOpenIDConnectProvider", e);
            return if e.is_not_found() { Ok(None) } else { Err(e) };
        }
    };
    let mut tags: BTreeMap<String, String> = out
        .tags()
        .iter()
        .map(|t| (t.key().to_owned(), t.value().to_owned()))
        .collect();
    if tags.is_empty() {
        // Some IAM implementations leave tags out of the Get call.
        tags = aws
            .iam
            .list_open_id_connect_provider_tags()
            .open_id_connect_provider_arn(&arn)
            .send()
            .await
            .map_err(|e| AwsError::from_sdk("ListOpenIDConnectProviderTags", e))?
            .tags()
            .iter()
            .map(|t| (t.key().to_owned(), t.value().to_owned()))
            .collect();
    }
    if !spec.tags.environment.owns(&tags) {
        return Err(AwsError::new(
            ErrorKind::Conflict,
            "GetOpenIDConnectProvider",
            format!(
                "the IAM OIDC provider {arn} of the cluster's issuer exists but is not tagged as taskctl's for `{}` (made by eksctl or by hand?); delete it and deploy again",
                spec.tags.environment.tag_value()
            ),
        ));
    }
    Ok(Some(OidcProviderState {
        arn,
        url: spec.url.clone(),
        client_ids: out.client_id_list().iter().cloned().collect(),
        tags,
    }))
}

pub async fn create(aws: &Aws, spec: &OidcProviderSpec) -> Result<OidcProviderState> {
    if let Some(state) = find(aws, spec).await? {
        return update(aws, spec, &state).await;
    }
    if spec.url.is_empty() {
        return Err(AwsError::new(
            ErrorKind::Invalid,
            "CreateOpenIDConnectProvider",
            "the cluster reports no OIDC issuer yet",
        ));
    }
    tracing::info!(provider = "aws", url = %spec.url, "creating iam oidc provider");
    let out = aws
        .iam
        .create_open_id_connect_provider()
        .url(&spec.url)
        .set_client_id_list(Some(spec.client_ids.iter().cloned().collect()))
        .set_tags(Some(crate::tags::to_iam(&spec.tags.to_map())))
        .send()
        .await
        .map_err(|e| AwsError::from_sdk("CreateOpenIDConnectProvider", e))?;
    Ok(OidcProviderState {
        arn: out
            .open_id_connect_provider_arn()
            .unwrap_or_default()
            .to_owned(),
        url: spec.url.clone(),
        client_ids: spec.client_ids.clone(),
        tags: spec.tags.to_map(),
    })
}

/// Adds and removes audiences, adds missing tags.
pub async fn update(
    aws: &Aws,
    spec: &OidcProviderSpec,
    state: &OidcProviderState,
) -> Result<OidcProviderState> {
    let mut state = state.clone();
    for id in spec.client_ids.difference(&state.client_ids) {
        aws.iam
            .add_client_id_to_open_id_connect_provider()
            .open_id_connect_provider_arn(&state.arn)
            .client_id(id)
            .send()
            .await
            .map_err(|e| AwsError::from_sdk("AddClientIDToOpenIDConnectProvider", e))?;
    }
    for id in state.client_ids.difference(&spec.client_ids) {
        aws.iam
            .remove_client_id_from_open_id_connect_provider()
            .open_id_connect_provider_arn(&state.arn)
            .client_id(id)
            .send()
            .await
            .map_err(|e| AwsError::from_sdk("RemoveClientIDFromOpenIDConnectProvider", e))?;
    }
    state.client_ids = spec.client_ids.clone();
    let missing = crate::tags::missing(&spec.tags.desired_for_diff(), &state.tags);
    if !missing.is_empty() {
        aws.iam
            .tag_open_id_connect_provider()
            .open_id_connect_provider_arn(&state.arn)
            .set_tags(Some(crate::tags::to_iam(&missing)))
            .send()
            .await
            .map_err(|e| AwsError::from_sdk("TagOpenIDConnectProvider", e))?;
        state.tags.extend(missing);
    }
    Ok(state)
}

pub fn diff(spec: &OidcProviderSpec, state: &OidcProviderState) -> Vec<FieldDiff> {
    let mut out = Vec::new();
    if spec.client_ids != state.client_ids {
        out.push(FieldDiff::update(
            "client_ids",
            diff::set(&state.client_ids),
            diff::set(&spec.client_ids),
        ));
    }
    diff::tags(&mut out, &spec.tags.desired_for_diff(), &state.tags);
    out
}

pub async fn delete(aws: &Aws, arn: &str) -> Result<()> {
    tracing::info!(provider = "aws", arn, "deleting iam oidc provider");
    ignore_not_found(
        aws.iam
            .delete_open_id_connect_provider()
            .open_id_connect_provider_arn(arn)
            .send()
            .await
            .map(|_| ())
            .map_err(|e| AwsError::from_sdk("DeleteOpenIDConnectProvider", e)),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_issuer_without_scheme_is_the_arn_suffix() {
        assert_eq!(
            issuer_host_path("https://oidc.eks.eu-west-1.amazonaws.com/id/ABC/"),
            "oidc.eks.eu-west-1.amazonaws.com/id/ABC"
        );
    }
}
