//! One error type; every message names the Vault address or the `mount/path`
//! it is about and says what to do. No message ever holds a secret value or a
//! token: the causes kept are Vault's own error strings, which never echo
//! request bodies, and transport errors.

/// What went wrong talking to Vault.
#[derive(Debug, thiserror::Error)]
pub enum VaultError {
    #[error(
        "cannot reach Vault at {addr}: {cause}; check VAULT_ADDR (or the profile's secrets.vault_address) and that the server is running"
    )]
    Unreachable { addr: String, cause: String },

    #[error(
        "Vault at {addr} is sealed; unseal it (`bao operator unseal` / `vault operator unseal`) and retry"
    )]
    Sealed { addr: String },

    #[error(
        "Vault at {addr} is not initialized; initialize it (`bao operator init` / `vault operator init`) first"
    )]
    Uninitialized { addr: String },

    #[error(
        "no secret at {path} in Vault (KV v2); write it first, or check the mount and the path"
    )]
    NotFound { path: String },

    #[error("the secret at {path} has no key `{key}` (its keys: {})", keys_list(.keys))]
    KeyMissing {
        path: String,
        key: String,
        keys: Vec<String>,
    },

    #[error(
        "permission denied on {path}: the Vault token's policies do not allow this operation on it"
    )]
    PermissionDenied { path: String },

    #[error(
        "Vault at {addr} refused the token (expired, revoked or mistyped); set VAULT_TOKEN to a valid token or log in again"
    )]
    BadToken { addr: String },

    #[error(
        "no Vault credentials for {addr}: set VAULT_TOKEN (or log in so that ~/.vault-token exists), or VAULT_ROLE_ID and VAULT_SECRET_ID for AppRole, or VAULT_K8S_ROLE inside a Kubernetes pod"
    )]
    NoToken { addr: String },

    #[error(
        "the secret at {path} changed while it was being written (check-and-set version mismatch); read it again and retry"
    )]
    CasConflict { path: String },

    #[error(
        "cannot reach raft node {addr}: {cause}; check that its server is running and listening there"
    )]
    NodeUnreachable { addr: String, cause: String },

    #[error("Vault node {addr} is still sealed: {detail}")]
    NodeSealed { addr: String, detail: String },

    #[error("unseal keys file {path}: {cause}")]
    KeysFile { path: String, cause: String },

    #[error("Vault configuration: {0}")]
    Config(String),

    #[error("{what}: {cause}")]
    Other { what: String, cause: String },
}

fn keys_list(keys: &[String]) -> String {
    if keys.is_empty() {
        "none".to_string()
    } else {
        keys.join(", ")
    }
}

/// The innermost cause of a transport error, which is the informative one
/// ("Connection refused (os error 111)"), plus "timed out" when it is that.
pub(crate) fn transport_cause(e: &reqwest::Error) -> String {
    if e.is_timeout() {
        return "timed out".to_string();
    }
    let mut last: &dyn std::error::Error = e;
    while let Some(next) = last.source() {
        last = next;
    }
    last.to_string()
}

/// Whether a reqwest error means the server could not be reached at all.
pub(crate) fn is_unreachable(e: &reqwest::Error) -> bool {
    e.is_connect() || e.is_timeout() || e.is_request()
}
