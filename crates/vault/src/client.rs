//! The connected client: health first, then authentication.

use crate::VaultError;
use crate::config::{Auth, VaultConfig};
use crate::error::{is_unreachable, transport_cause};
use std::sync::Arc;
use std::time::Duration;
use taskctl_secret::Secret;
use vaultrs::client::{Client as _, VaultClient, VaultClientSettingsBuilder};
use vaultrs::error::ClientError;

const TIMEOUT: Duration = Duration::from_secs(30);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// What `sys/health` says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Health {
    pub initialized: bool,
    pub sealed: bool,
    pub standby: bool,
    pub version: String,
}

/// A connected, authenticated client. Cheap to clone (one `Arc`).
#[derive(Clone)]
pub struct Vault {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub(crate) addr: String,
    pub(crate) client: VaultClient,
    raw: Raw,
}

/// Direct HTTP calls, for what vaultrs does not fit.
struct Raw {
    addr: String,
    http: reqwest::Client,
    namespace: Option<String>,
}

impl std::fmt::Debug for Vault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vault")
            .field("addr", &self.inner.addr)
            .finish_non_exhaustive()
    }
}

impl Vault {
    /// Checks health (uninitialized, sealed and unreachable servers are
    /// distinct errors naming the address), then authenticates: a token is
    /// checked with `auth/token/lookup-self`, AppRole and Kubernetes log in.
    pub async fn connect(cfg: VaultConfig) -> Result<Vault, VaultError> {
        let addr = cfg.addr_str();
        let ca_pem = match &cfg.cacert {
            Some(p) => Some(std::fs::read(p).map_err(|e| {
                VaultError::Config(format!("cannot read VAULT_CACERT {}: {e}", p.display()))
            })?),
            None => None,
        };

        let mut builder = reqwest::Client::builder()
            .use_rustls_tls()
            .timeout(TIMEOUT)
            .connect_timeout(CONNECT_TIMEOUT)
            .danger_accept_invalid_certs(cfg.skip_verify);
        if let Some(pem) = &ca_pem {
            let cert = reqwest::Certificate::from_pem(pem).map_err(|e| {
                VaultError::Config(format!("VAULT_CACERT is not a PEM certificate ({e})"))
            })?;
            builder = builder.add_root_certificate(cert);
        }
        let http = builder
            .build()
            .map_err(|e| VaultError::Config(format!("cannot set up the HTTP client: {e}")))?;

        // Every field is set explicitly: vaultrs's defaults read VAULT_* from
        // the process environment, which would bypass from_lookup.
        let settings = VaultClientSettingsBuilder::default()
            .address(cfg.addr.as_str())
            .ca_certs(
                cfg.cacert
                    .iter()
                    .map(|p| p.to_string_lossy().into_owned())
                    .collect::<Vec<_>>(),
            )
            .identity(None)
            .timeout(Some(TIMEOUT))
            .token(String::new())
            .verify(!cfg.skip_verify)
            .version(1)
            .wrapping(false)
            .namespace(cfg.namespace.clone())
            .build()
            .map_err(|e| VaultError::Config(format!("vault client settings for {addr}: {e}")))?;
        let mut client = VaultClient::new(settings)
            .map_err(|e| VaultError::Config(format!("vault client for {addr}: {e}")))?;

        let raw = Raw {
            addr: addr.clone(),
            http,
            namespace: cfg.namespace.clone(),
        };

        let health = raw.health().await?;
        if !health.initialized {
            return Err(VaultError::Uninitialized { addr });
        }
        if health.sealed {
            return Err(VaultError::Sealed { addr });
        }

        let token = match &cfg.auth {
            Auth::Token(t) => {
                raw.lookup_self(t).await?;
                t.clone()
            }
            Auth::AppRole {
                mount,
                role_id,
                secret_id,
            } => {
                let info =
                    vaultrs::auth::approle::login(&client, mount, role_id, secret_id.expose())
                        .await
                        .map_err(|e| login_error(&addr, &cfg.auth, e))?;
                Secret::new(info.client_token)
            }
            Auth::Kubernetes {
                mount,
                role,
                jwt_path,
            } => {
                let jwt = std::fs::read_to_string(jwt_path).map_err(|e| {
                    VaultError::Config(format!(
                        "cannot read the Kubernetes service account token {} for VAULT_K8S_ROLE={role}: {e}",
                        jwt_path.display()
                    ))
                })?;
                let info = vaultrs::auth::kubernetes::login(&client, mount, role, jwt.trim())
                    .await
                    .map_err(|e| login_error(&addr, &cfg.auth, e))?;
                Secret::new(info.client_token)
            }
        };
        client.set_token(token.expose());
        Ok(Vault {
            inner: Arc::new(Inner { addr, client, raw }),
        })
    }

    /// The server's address, as messages show it (no trailing slash).
    pub fn addr(&self) -> &str {
        &self.inner.addr
    }

    /// `sys/health`: answers for sealed, uninitialized and standby servers too.
    pub async fn health(&self) -> Result<Health, VaultError> {
        self.inner.raw.health().await
    }
}

#[derive(serde::Deserialize)]
struct HealthBody {
    initialized: bool,
    sealed: bool,
    #[serde(default)]
    standby: bool,
    #[serde(default)]
    version: String,
}

impl Raw {
    fn request(
        &self,
        method: reqwest::Method,
        path: &str,
        token: Option<&Secret>,
    ) -> reqwest::RequestBuilder {
        let mut rb = self
            .http
            .request(method, format!("{}/v1/{}", self.addr, path));
        if let Some(t) = token {
            rb = rb.header("X-Vault-Token", t.expose());
        }
        if let Some(ns) = &self.namespace {
            rb = rb.header("X-Vault-Namespace", ns);
        }
        rb
    }

    fn unreachable(&self, e: &reqwest::Error) -> VaultError {
        VaultError::Unreachable {
            addr: self.addr.clone(),
            cause: transport_cause(e),
        }
    }

    /// Read directly (vaultrs's own status call does not fit OpenBao).
    async fn health(&self) -> Result<Health, VaultError> {
        let resp = self
            .request(
                reqwest::Method::GET,
                "sys/health?standbyok=true&perfstandbyok=true&sealedcode=503&uninitcode=501",
                None,
            )
            .send()
            .await
            .map_err(|e| self.unreachable(&e))?;
        let status = resp.status().as_u16();
        if !matches!(status, 200 | 429 | 472 | 473 | 501 | 503) {
            return Err(VaultError::Other {
                what: format!("health check of {}", self.addr),
                cause: format!("unexpected HTTP status {status} (is this a Vault server?)"),
            });
        }
        let body: HealthBody = resp.json().await.map_err(|e| {
            if is_unreachable(&e) {
                self.unreachable(&e)
            } else {
                VaultError::Other {
                    what: format!("health check of {}", self.addr),
                    cause: format!(
                        "HTTP {status} with an unexpected body (is this a Vault server?)"
                    ),
                }
            }
        })?;
        Ok(Health {
            initialized: body.initialized && status != 501,
            sealed: body.sealed || status == 503,
            standby: body.standby,
            version: body.version,
        })
    }

    /// Read directly: vaultrs's typed response fails on OpenBao's answer for
    /// root tokens (no expiry fields).
    async fn lookup_self(&self, token: &Secret) -> Result<(), VaultError> {
        let resp = self
            .request(reqwest::Method::GET, "auth/token/lookup-self", Some(token))
            .send()
            .await
            .map_err(|e| self.unreachable(&e))?;
        match resp.status().as_u16() {
            200 => Ok(()),
            400 | 401 | 403 => Err(VaultError::BadToken {
                addr: self.addr.clone(),
            }),
            503 => Err(VaultError::Sealed {
                addr: self.addr.clone(),
            }),
            code => Err(VaultError::Other {
                what: format!("checking the token with {}", self.addr),
                cause: format!("HTTP {code}: {}", api_errors(resp).await),
            }),
        }
    }
}

/// Vault's `errors` list from a response body, joined.
async fn api_errors(resp: reqwest::Response) -> String {
    #[derive(serde::Deserialize)]
    struct Body {
        #[serde(default)]
        errors: Vec<String>,
    }
    match resp.json::<Body>().await {
        Ok(b) if !b.errors.is_empty() => clean_errors(&b.errors),
        _ => "no error message".to_string(),
    }
}

/// "1 error occurred:\n\t* permission denied\n\n" -> "permission denied".
pub(crate) fn clean_errors(errors: &[String]) -> String {
    let mut out = Vec::new();
    for e in errors {
        for line in e.lines() {
            let l = line.trim().trim_start_matches("* ").trim();
            if l.is_empty() || (l.ends_with("error occurred:") || l.ends_with("errors occurred:")) {
                continue;
            }
            out.push(l.to_string());
        }
    }
    if out.is_empty() {
        "no error message".to_string()
    } else {
        out.join("; ")
    }
}

/// The HTTP status and Vault's messages of a vaultrs error, or the
/// transport failure.
pub(crate) enum Failure {
    Status(u16, String),
    Transport(String),
    Other(String),
}

pub(crate) fn classify(e: ClientError) -> Failure {
    use vaultrs::error::ClientError as C;
    match e {
        C::APIError { code, errors } => Failure::Status(code, clean_errors(&errors)),
        C::RestClientError { source } => classify_rest(source),
        other => Failure::Other(other.to_string()),
    }
}

fn classify_rest(e: rustify_error::ClientError) -> Failure {
    use rustify_error::ClientError as R;
    match e {
        R::ServerResponseError { code, content } => {
            let msg = content
                .and_then(|c| serde_json::from_str::<serde_json::Value>(&c).ok())
                .and_then(|v| {
                    v.get("errors").and_then(|e| e.as_array()).map(|a| {
                        a.iter()
                            .filter_map(|x| x.as_str().map(str::to_string))
                            .collect::<Vec<_>>()
                    })
                })
                .map(|errs| clean_errors(&errs))
                .unwrap_or_else(|| "no error message".into());
            Failure::Status(code, msg)
        }
        R::RequestError { source, .. } => {
            let cause = match source.downcast_ref::<reqwest::Error>() {
                Some(re) => transport_cause(re),
                None => {
                    let mut last: &dyn std::error::Error = source.as_ref();
                    while let Some(n) = last.source() {
                        last = n;
                    }
                    last.to_string()
                }
            };
            Failure::Transport(cause)
        }
        other => Failure::Other(other.to_string()),
    }
}

/// rustify's error type (vaultrs's HTTP layer, wrapped in its errors).
mod rustify_error {
    pub use rustify::errors::ClientError;
}

fn login_error(addr: &str, auth: &Auth, e: ClientError) -> VaultError {
    match classify(e) {
        Failure::Transport(cause) => VaultError::Unreachable {
            addr: addr.to_string(),
            cause,
        },
        Failure::Status(503, _) => VaultError::Sealed {
            addr: addr.to_string(),
        },
        Failure::Status(code, msg) => VaultError::Other {
            what: format!("{} login at {addr}", auth.describe()),
            cause: format!("refused (HTTP {code}: {msg}); check the role and its credentials"),
        },
        Failure::Other(msg) => VaultError::Other {
            what: format!("{} login at {addr}", auth.describe()),
            cause: msg,
        },
    }
}
