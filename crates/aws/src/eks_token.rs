//! Bearer tokens for an EKS cluster's Kubernetes API, as `aws eks get-token`
//! makes them, without the AWS CLI.
//!
//! A token is `k8s-aws-v1.` followed by the unpadded base64url of a
//! presigned STS `GetCallerIdentity` URL (SigV4 in the query string, valid
//! 60 seconds) whose signed headers include `x-k8s-aws-id: <cluster>`. The
//! API server's authenticator calls that URL to learn who we are.
//!
//! Guarantees: the token holds credentials' signature, never the secret key;
//! it is a plain `String` only because kube's config wants one.

use crate::Aws;
use crate::error::{AwsError, ErrorKind, Result};
use aws_credential_types::Credentials;
use aws_credential_types::provider::ProvideCredentials;
use aws_sigv4::http_request::{
    SignableBody, SignableRequest, SignatureLocation, SigningSettings, sign,
};
use aws_sigv4::sign::v4;
use base64::Engine;
use std::time::{Duration, SystemTime};

pub const TOKEN_PREFIX: &str = "k8s-aws-v1.";
pub const CLUSTER_ID_HEADER: &str = "x-k8s-aws-id";
const EXPIRES: Duration = Duration::from_secs(60);

/// A token for `cluster_name`, signed with the clients' current credentials.
pub async fn eks_token(aws: &Aws, cluster_name: &str) -> Result<String> {
    let provider = aws.config.credentials_provider().ok_or_else(|| {
        AwsError::new(
            ErrorKind::Denied,
            "eks token",
            "no AWS credentials are configured",
        )
    })?;
    let credentials = provider.provide_credentials().await.map_err(|e| {
        AwsError::new(
            ErrorKind::Denied,
            "eks token",
            aws_smithy_types::error::display::DisplayErrorContext(&e).to_string(),
        )
    })?;
    presigned_token(&credentials, aws.region(), cluster_name, SystemTime::now())
}

/// The token for given credentials, region and time: pure, so tested.
pub fn presigned_token(
    credentials: &Credentials,
    region: &str,
    cluster_name: &str,
    time: SystemTime,
) -> Result<String> {
    let fail =
        |e: &dyn std::fmt::Display| AwsError::new(ErrorKind::Invalid, "eks token", e.to_string());
    let base =
        format!("https://sts.{region}.amazonaws.com/?Action=GetCallerIdentity&Version=2011-06-15");
    let identity = credentials.clone().into();
    let mut settings = SigningSettings::default();
    settings.signature_location = SignatureLocation::QueryParams;
    settings.expires_in = Some(EXPIRES);
    let params = v4::SigningParams::builder()
        .identity(&identity)
        .region(region)
        .name("sts")
        .time(time)
        .settings(settings)
        .build()
        .map_err(|e| fail(&e))?
        .into();
    let request = SignableRequest::new(
        "GET",
        base.as_str(),
        [(CLUSTER_ID_HEADER, cluster_name)].into_iter(),
        SignableBody::Bytes(&[]),
    )
    .map_err(|e| fail(&e))?;
    let (instructions, _signature) = sign(request, &params).map_err(|e| fail(&e))?.into_parts();
    let mut url = base;
    for (name, value) in instructions.params() {
        url.push('&');
        url.push_str(&encode(name));
        url.push('=');
        url.push_str(&encode(value));
    }
    Ok(format!(
        "{TOKEN_PREFIX}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(url)
    ))
}

/// RFC 3986 percent-encoding of everything but unreserved characters.
fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode(token: &str) -> String {
        let payload = token.strip_prefix(TOKEN_PREFIX).expect("prefix");
        assert!(!payload.contains('='), "no padding");
        assert!(
            !payload.contains('+') && !payload.contains('/'),
            "url-safe alphabet"
        );
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload)
            .expect("base64url");
        String::from_utf8(bytes).expect("utf-8")
    }

    #[test]
    fn token_is_a_presigned_get_caller_identity_url() {
        let credentials = Credentials::new("AKIDEXAMPLE", "secret", None, None, "test");
        let time = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let token = presigned_token(&credentials, "us-west-2", "task-system-production", time)
            .expect("token");
        let url = decode(&token);
        assert!(
            url.starts_with(
                "https://sts.us-west-2.amazonaws.com/?Action=GetCallerIdentity&Version=2011-06-15&"
            ),
            "{url}"
        );
        let query: std::collections::BTreeMap<&str, &str> = url
            .split_once('?')
            .expect("query")
            .1
            .split('&')
            .filter_map(|kv| kv.split_once('='))
            .collect();
        assert_eq!(query["X-Amz-Algorithm"], "AWS4-HMAC-SHA256");
        assert_eq!(query["X-Amz-Expires"], "60");
        assert_eq!(query["X-Amz-Date"], "20231114T221320Z");
        assert_eq!(
            query["X-Amz-Credential"],
            "AKIDEXAMPLE%2F20231114%2Fus-west-2%2Fsts%2Faws4_request"
        );
        assert_eq!(query["X-Amz-SignedHeaders"], "host%3Bx-k8s-aws-id");
        assert_eq!(query["X-Amz-Signature"].len(), 64);
        assert!(
            query["X-Amz-Signature"]
                .bytes()
                .all(|b| b.is_ascii_hexdigit())
        );
        assert!(!url.contains("secret"));
    }

    #[test]
    fn session_token_is_carried_and_signature_depends_on_cluster() {
        let credentials =
            Credentials::new("AKID", "secret", Some("session/token".into()), None, "test");
        let time = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let a = decode(&presigned_token(&credentials, "us-west-2", "a", time).expect("token"));
        let b = decode(&presigned_token(&credentials, "us-west-2", "b", time).expect("token"));
        assert!(a.contains("X-Amz-Security-Token=session%2Ftoken"), "{a}");
        assert_ne!(a, b);
    }
}
