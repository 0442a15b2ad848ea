//! One node's `sys` endpoints over plain HTTP: health, seal status,
//! init and unseal requests.

use super::*;
use crate::VaultError;
use serde::Deserialize;

/// What one node says about itself (`sys/health`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeStatus {
    /// The address asked, without a trailing slash.
    pub addr: String,
    /// False when the node did not answer as a Vault server (connection
    /// refused, timeout, some other HTTP server); the other flags are then
    /// false and `version` is `None`.
    pub reachable: bool,
    /// A raft node that has not joined its cluster yet says false.
    pub initialized: bool,
    pub sealed: bool,
    /// Unsealed and not the active node.
    pub standby: bool,
    pub version: Option<String>,
}

impl NodeStatus {
    /// Unsealed and the active node (the raft leader).
    pub fn active(&self) -> bool {
        self.reachable && self.initialized && !self.sealed && !self.standby
    }
}

/// `sys/health` of `addr`, answered for sealed, uninitialized and standby
/// nodes too; never fails (an unreachable node is `reachable: false`).
pub async fn node_status(http: &reqwest::Client, addr: &str) -> NodeStatus {
    let addr = addr.trim_end_matches('/');
    probe(http, addr).await.unwrap_or_else(|_| NodeStatus {
        addr: addr.to_string(),
        reachable: false,
        initialized: false,
        sealed: false,
        standby: false,
        version: None,
    })
}

/// Every node's status; the first unreachable node is an error naming it.
pub(super) async fn probe_all(
    http: &reqwest::Client,
    nodes: &[String],
) -> Result<Vec<NodeStatus>, VaultError> {
    let mut out = Vec::with_capacity(nodes.len());
    for n in nodes {
        out.push(probe(http, n).await?);
    }
    Ok(out)
}

#[derive(Deserialize)]
pub(super) struct HealthBody {
    pub(super) initialized: bool,
    pub(super) sealed: bool,
    #[serde(default)]
    pub(super) standby: bool,
    #[serde(default)]
    pub(super) version: Option<String>,
}

pub(super) async fn probe(http: &reqwest::Client, addr: &str) -> Result<NodeStatus, VaultError> {
    let resp = http
        .get(format!(
            "{addr}/v1/sys/health?standbyok=true&perfstandbyok=true&sealedcode=503&uninitcode=501"
        ))
        .timeout(REQUEST_TIMEOUT)
        .send()
        .await
        .map_err(|e| unreachable(addr, &e))?;
    let status = resp.status().as_u16();
    let not_vault = |why: String| VaultError::Other {
        what: format!("health check of raft node {addr}"),
        cause: format!("{why} (is this a Vault server?)"),
    };
    if !matches!(status, 200 | 429 | 472 | 473 | 501 | 503) {
        return Err(not_vault(format!("unexpected HTTP status {status}")));
    }
    let body: HealthBody = resp.json().await.map_err(|e| {
        if e.is_decode() {
            not_vault(format!("HTTP {status} with an unexpected body"))
        } else {
            unreachable(addr, &e)
        }
    })?;
    let initialized = body.initialized && status != 501;
    let sealed = body.sealed || status == 503 || status == 501;
    Ok(NodeStatus {
        addr: addr.to_string(),
        reachable: true,
        initialized,
        sealed,
        standby: initialized && !sealed && (body.standby || status == 429),
        version: body.version.filter(|v| !v.is_empty()),
    })
}

pub(super) fn unreachable(addr: &str, e: &reqwest::Error) -> VaultError {
    VaultError::NodeUnreachable {
        addr: addr.to_string(),
        cause: transport_cause(e),
    }
}

#[derive(Deserialize)]
pub(super) struct InitAnswer {
    #[serde(default)]
    keys_base64: Vec<String>,
    #[serde(default)]
    recovery_keys_base64: Vec<String>,
    pub(super) root_token: String,
}

/// The keys (unseal keys, or recovery keys for an auto-unseal seal) and the
/// root token.
pub(super) async fn init_request(
    http: &reqwest::Client,
    spec: &ClusterSpec,
    addr: &str,
    seal: &Seal,
) -> Result<(Vec<String>, String), VaultError> {
    let body = match seal {
        Seal::Shamir => serde_json::json!({
            "secret_shares": spec.key_shares,
            "secret_threshold": spec.key_threshold,
        }),
        Seal::Auto(_) if !spec.recovery_pgp_keys.is_empty() => serde_json::json!({
            "recovery_shares": spec.key_shares,
            "recovery_threshold": spec.key_threshold,
            "recovery_pgp_keys": spec
                .recovery_pgp_keys
                .iter()
                .map(|k| k.base64.as_str())
                .collect::<Vec<_>>(),
        }),
        Seal::Auto(_) => serde_json::json!({
            "recovery_shares": spec.key_shares,
            "recovery_threshold": spec.key_threshold,
        }),
    };
    let resp = http
        .put(format!("{addr}/v1/sys/init"))
        .timeout(INIT_TIMEOUT)
        .json(&body)
        .send()
        .await
        .map_err(|e| unreachable(addr, &e))?;
    let status = resp.status();
    if !status.is_success() {
        return Err(VaultError::Other {
            what: format!("initializing the raft cluster at {addr}"),
            cause: format!("HTTP {}: {}", status.as_u16(), api_errors(resp).await),
        });
    }
    let answer: InitAnswer = resp.json().await.map_err(|e| VaultError::Other {
        what: format!("initializing the raft cluster at {addr}"),
        cause: if e.is_decode() {
            "the answer has no keys and root_token".into()
        } else {
            transport_cause(&e)
        },
    })?;
    let (keys, kind) = match seal {
        Seal::Shamir => (answer.keys_base64, "unseal key"),
        Seal::Auto(_) => (answer.recovery_keys_base64, "recovery key"),
    };
    if keys.len() != usize::from(spec.key_shares) {
        return Err(VaultError::Other {
            what: format!("initializing the raft cluster at {addr}"),
            cause: format!(
                "asked for {} {kind} shares, got {}",
                spec.key_shares,
                keys.len()
            ),
        });
    }
    Ok((keys, answer.root_token))
}

#[derive(Deserialize)]
pub(super) struct SealStatus {
    #[serde(default)]
    pub(super) initialized: bool,
    pub(super) sealed: bool,
    #[serde(default)]
    pub(super) progress: u32,
    /// `shamir`, or the auto-unseal seal (`transit`, `awskms`, …).
    #[serde(default, rename = "type")]
    pub(super) seal_type: Option<String>,
    /// True with an auto-unseal seal (its shares are recovery keys).
    #[serde(default)]
    pub(super) recovery_seal: bool,
    #[serde(default)]
    pub(super) migration: bool,
}

pub(super) async fn seal_status(
    http: &reqwest::Client,
    addr: &str,
) -> Result<SealStatus, VaultError> {
    let resp = http
        .get(format!("{addr}/v1/sys/seal-status"))
        .timeout(REQUEST_TIMEOUT)
        .send()
        .await
        .map_err(|e| unreachable(addr, &e))?;
    sys_answer(resp, addr, "reading the seal status of").await
}

pub(super) async fn unseal_request(
    http: &reqwest::Client,
    addr: &str,
    body: serde_json::Value,
) -> Result<SealStatus, VaultError> {
    let resp = http
        .put(format!("{addr}/v1/sys/unseal"))
        .timeout(REQUEST_TIMEOUT)
        .json(&body)
        .send()
        .await
        .map_err(|e| unreachable(addr, &e))?;
    sys_answer(resp, addr, "unsealing").await
}

pub(super) async fn sys_answer(
    resp: reqwest::Response,
    addr: &str,
    doing: &str,
) -> Result<SealStatus, VaultError> {
    let status = resp.status();
    if !status.is_success() {
        return Err(VaultError::Other {
            what: format!("{doing} {addr}"),
            cause: format!("HTTP {}: {}", status.as_u16(), api_errors(resp).await),
        });
    }
    resp.json().await.map_err(|e| VaultError::Other {
        what: format!("{doing} {addr}"),
        cause: if e.is_decode() {
            "unexpected answer (is this a Vault server?)".into()
        } else {
            transport_cause(&e)
        },
    })
}

/// Vault's `errors` list from a response body, joined.
pub(super) async fn api_errors(resp: reqwest::Response) -> String {
    #[derive(Deserialize)]
    struct Body {
        #[serde(default)]
        errors: Vec<String>,
    }
    match resp.json::<Body>().await {
        Ok(b) if !b.errors.is_empty() => clean_errors(&b.errors),
        _ => "no error message".to_string(),
    }
}
