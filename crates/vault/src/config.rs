//! Where Vault is and how taskctl authenticates to it, read from the
//! environment (or a lookup function, for tests).

use crate::VaultError;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use taskctl_secret::Secret;
use url::{Host, Url};

/// The service account token Kubernetes mounts into every pod.
pub const K8S_TOKEN_PATH: &str = "/var/run/secrets/kubernetes.io/serviceaccount/token";

/// How the client authenticates.
#[derive(Clone, Debug)]
pub enum Auth {
    /// A token (VAULT_TOKEN or ~/.vault-token), checked with `auth/token/lookup-self`.
    Token(Secret),
    /// AppRole login at `auth/<mount>/login`.
    AppRole {
        mount: String,
        role_id: String,
        secret_id: Secret,
    },
    /// Kubernetes login at `auth/<mount>/login` with the pod's service
    /// account token, read from `jwt_path` when connecting (it rotates).
    Kubernetes {
        mount: String,
        role: String,
        jwt_path: PathBuf,
    },
}

impl Auth {
    /// A short description for messages ("token", "AppRole at auth/approle").
    pub fn describe(&self) -> String {
        match self {
            Auth::Token(_) => "token".to_string(),
            Auth::AppRole { mount, .. } => format!("AppRole at auth/{mount}"),
            Auth::Kubernetes { mount, role, .. } => {
                format!("Kubernetes role {role} at auth/{mount}")
            }
        }
    }
}

/// Everything needed to connect. `Debug` shows no credential (they are
/// [`Secret`]s).
#[derive(Clone, Debug)]
pub struct VaultConfig {
    pub addr: Url,
    pub auth: Auth,
    /// PEM file with the CA that signed the server's certificate (VAULT_CACERT).
    pub cacert: Option<PathBuf>,
    /// Enterprise/OpenBao namespace, sent as X-Vault-Namespace (VAULT_NAMESPACE).
    pub namespace: Option<String>,
    /// Accept any server certificate. Only ever true for loopback addresses.
    pub skip_verify: bool,
}

impl VaultConfig {
    /// From the process environment and the user's home directory. `addr`
    /// (the profile's `secrets.vault_address`) wins over VAULT_ADDR.
    pub fn from_env(addr: Option<&str>) -> Result<Self, VaultError> {
        let home = std::env::var_os("HOME").map(PathBuf::from);
        Self::from_lookup(addr, &|k| std::env::var(k).ok(), home.as_deref())
    }

    /// As [`from_env`](Self::from_env), with variables from `lookup` and the
    /// token file under `home`.
    ///
    /// Credentials, first match wins: VAULT_TOKEN; AppRole (VAULT_ROLE_ID and
    /// VAULT_SECRET_ID, mount VAULT_APPROLE_MOUNT or `approle`); Kubernetes
    /// (VAULT_K8S_ROLE, mount VAULT_K8S_MOUNT or `kubernetes`, token file
    /// VAULT_K8S_TOKEN_PATH or the service account's); `~/.vault-token`.
    /// Explicitly configured login methods come before the token file, which
    /// may be a stale leftover of an interactive login.
    pub fn from_lookup(
        addr: Option<&str>,
        lookup: &dyn Fn(&str) -> Option<String>,
        home: Option<&Path>,
    ) -> Result<Self, VaultError> {
        let get = |k: &str| {
            lookup(k)
                .map(|v| v.trim().to_string())
                .filter(|v| !v.is_empty())
        };

        let raw = match addr.map(str::trim).filter(|a| !a.is_empty()) {
            Some(a) => a.to_string(),
            None => get("VAULT_ADDR").ok_or_else(|| {
                VaultError::Config(
                    "no Vault address: set VAULT_ADDR or the profile's secrets.vault_address"
                        .into(),
                )
            })?,
        };
        let url = Url::parse(&raw).map_err(|e| {
            VaultError::Config(format!("the Vault address `{raw}` is not a URL ({e})"))
        })?;
        let loopback = is_loopback(&url);
        match url.scheme() {
            "https" => {}
            "http" if loopback => {}
            "http" => {
                return Err(VaultError::Config(format!(
                    "refusing plain http for {}: the token and secrets would cross the network unencrypted; use https:// (only loopback addresses may use http)",
                    display_addr(&url)
                )));
            }
            other => {
                return Err(VaultError::Config(format!(
                    "the Vault address {} has scheme `{other}`; use https:// (or http:// on loopback)",
                    display_addr(&url)
                )));
            }
        }
        if url.host().is_none() {
            return Err(VaultError::Config(format!(
                "the Vault address `{raw}` has no host"
            )));
        }

        let skip_verify = loopback
            && get("VAULT_SKIP_VERIFY")
                .map(|v| !matches!(v.to_ascii_lowercase().as_str(), "0" | "f" | "false" | "no"))
                .unwrap_or(false);
        let cacert = get("VAULT_CACERT").map(PathBuf::from);
        let namespace = get("VAULT_NAMESPACE");

        let auth = if let Some(t) = get("VAULT_TOKEN") {
            Auth::Token(Secret::new(t))
        } else if let (Some(role_id), Some(secret_id)) =
            (get("VAULT_ROLE_ID"), get("VAULT_SECRET_ID"))
        {
            Auth::AppRole {
                mount: get("VAULT_APPROLE_MOUNT").unwrap_or_else(|| "approle".into()),
                role_id,
                secret_id: Secret::new(secret_id),
            }
        } else if let Some(role) = get("VAULT_K8S_ROLE") {
            Auth::Kubernetes {
                mount: get("VAULT_K8S_MOUNT").unwrap_or_else(|| "kubernetes".into()),
                role,
                jwt_path: get("VAULT_K8S_TOKEN_PATH")
                    .map(PathBuf::from)
                    .unwrap_or_else(|| PathBuf::from(K8S_TOKEN_PATH)),
            }
        } else if let Some(t) = home.and_then(read_token_file) {
            Auth::Token(t)
        } else {
            return Err(VaultError::NoToken {
                addr: display_addr(&url),
            });
        };

        Ok(VaultConfig {
            addr: url,
            auth,
            cacert,
            namespace,
            skip_verify,
        })
    }

    /// The address as messages show it (no trailing slash).
    pub fn addr_str(&self) -> String {
        display_addr(&self.addr)
    }
}

fn read_token_file(home: &Path) -> Option<Secret> {
    let text = std::fs::read_to_string(home.join(".vault-token")).ok()?;
    let t = text.trim();
    (!t.is_empty()).then(|| Secret::new(t))
}

pub(crate) fn display_addr(url: &Url) -> String {
    url.as_str().trim_end_matches('/').to_string()
}

/// `localhost`, 127.0.0.0/8 or ::1.
pub fn is_loopback(url: &Url) -> bool {
    match url.host() {
        Some(Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        Some(Host::Ipv4(ip)) => IpAddr::V4(ip).is_loopback(),
        Some(Host::Ipv6(ip)) => IpAddr::V6(ip).is_loopback(),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn cfg(
        addr: Option<&str>,
        vars: &[(&str, &str)],
        home: Option<&Path>,
    ) -> Result<VaultConfig, VaultError> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        VaultConfig::from_lookup(addr, &move |k| map.get(k).cloned(), home)
    }

    fn token(c: &VaultConfig) -> &str {
        match &c.auth {
            Auth::Token(t) => t.expose(),
            other => panic!("expected a token, got {other:?}"),
        }
    }

    #[test]
    fn env_token_and_address() {
        let c = cfg(
            None,
            &[
                ("VAULT_ADDR", "https://vault.example:8200"),
                ("VAULT_TOKEN", "s.abc"),
            ],
            None,
        )
        .unwrap();
        assert_eq!(c.addr_str(), "https://vault.example:8200");
        assert_eq!(token(&c), "s.abc");
        assert!(!c.skip_verify);
        assert!(c.cacert.is_none() && c.namespace.is_none());
    }

    #[test]
    fn profile_address_wins_over_env() {
        let c = cfg(
            Some("https://profile.example"),
            &[("VAULT_ADDR", "https://env.example"), ("VAULT_TOKEN", "t")],
            None,
        )
        .unwrap();
        assert_eq!(c.addr.host_str(), Some("profile.example"));
    }

    #[test]
    fn token_file_in_home() {
        let home = tempfile::tempdir().unwrap();
        std::fs::write(home.path().join(".vault-token"), "s.fromfile\n").unwrap();
        let c = cfg(
            None,
            &[("VAULT_ADDR", "http://127.0.0.1:8200")],
            Some(home.path()),
        )
        .unwrap();
        assert_eq!(token(&c), "s.fromfile");
        // VAULT_TOKEN wins over the file.
        let c = cfg(
            None,
            &[
                ("VAULT_ADDR", "http://127.0.0.1:8200"),
                ("VAULT_TOKEN", "s.env"),
            ],
            Some(home.path()),
        )
        .unwrap();
        assert_eq!(token(&c), "s.env");
        // An empty file is no token.
        std::fs::write(home.path().join(".vault-token"), "  \n").unwrap();
        let e = cfg(
            None,
            &[("VAULT_ADDR", "http://127.0.0.1:8200")],
            Some(home.path()),
        )
        .unwrap_err();
        assert!(matches!(e, VaultError::NoToken { .. }), "{e}");
    }

    #[test]
    fn approle_and_kubernetes() {
        let c = cfg(
            None,
            &[
                ("VAULT_ADDR", "https://v.example"),
                ("VAULT_ROLE_ID", "rid"),
                ("VAULT_SECRET_ID", "sid"),
            ],
            None,
        )
        .unwrap();
        match &c.auth {
            Auth::AppRole {
                mount,
                role_id,
                secret_id,
            } => {
                assert_eq!(
                    (mount.as_str(), role_id.as_str(), secret_id.expose()),
                    ("approle", "rid", "sid")
                );
            }
            other => panic!("{other:?}"),
        }
        assert!(
            !format!("{c:?}").contains("sid\""),
            "Debug shows no secret id: {c:?}"
        );
        let c = cfg(
            None,
            &[
                ("VAULT_ADDR", "https://v.example"),
                ("VAULT_K8S_ROLE", "taskctl"),
            ],
            None,
        )
        .unwrap();
        match &c.auth {
            Auth::Kubernetes {
                mount,
                role,
                jwt_path,
            } => {
                assert_eq!(mount, "kubernetes");
                assert_eq!(role, "taskctl");
                assert_eq!(jwt_path, Path::new(K8S_TOKEN_PATH));
            }
            other => panic!("{other:?}"),
        }
        // Half an AppRole (no secret id) is not AppRole.
        let e = cfg(
            None,
            &[
                ("VAULT_ADDR", "https://v.example"),
                ("VAULT_ROLE_ID", "rid"),
            ],
            None,
        )
        .unwrap_err();
        assert!(matches!(e, VaultError::NoToken { .. }));
    }

    #[test]
    fn no_credentials_names_address_and_variables() {
        let e = cfg(Some("https://v.example:8200"), &[], None).unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains("https://v.example:8200"), "{msg}");
        assert!(
            msg.contains("VAULT_TOKEN") && msg.contains("VAULT_ROLE_ID"),
            "{msg}"
        );
    }

    #[test]
    fn no_address() {
        let e = cfg(None, &[("VAULT_TOKEN", "t")], None).unwrap_err();
        assert!(e.to_string().contains("VAULT_ADDR"), "{e}");
    }

    #[test]
    fn plain_http_refused_off_loopback() {
        let e = cfg(
            Some("http://vault.example:8200"),
            &[("VAULT_TOKEN", "t")],
            None,
        )
        .unwrap_err();
        let msg = e.to_string();
        assert!(matches!(e, VaultError::Config(_)));
        assert!(
            msg.contains("http://vault.example:8200") && msg.contains("https"),
            "{msg}"
        );
        for ok in [
            "http://127.0.0.1:8200",
            "http://localhost:8200",
            "http://[::1]:8200",
            "http://127.1.2.3",
        ] {
            cfg(Some(ok), &[("VAULT_TOKEN", "t")], None).unwrap_or_else(|e| panic!("{ok}: {e}"));
        }
        let e = cfg(Some("ftp://127.0.0.1"), &[("VAULT_TOKEN", "t")], None).unwrap_err();
        assert!(matches!(e, VaultError::Config(_)));
    }

    #[test]
    fn skip_verify_only_on_loopback() {
        let vars = [("VAULT_TOKEN", "t"), ("VAULT_SKIP_VERIFY", "true")];
        assert!(
            cfg(Some("https://127.0.0.1:8200"), &vars, None)
                .unwrap()
                .skip_verify
        );
        assert!(
            !cfg(Some("https://vault.example"), &vars, None)
                .unwrap()
                .skip_verify
        );
        let vars = [("VAULT_TOKEN", "t"), ("VAULT_SKIP_VERIFY", "false")];
        assert!(
            !cfg(Some("https://127.0.0.1:8200"), &vars, None)
                .unwrap()
                .skip_verify
        );
    }

    #[test]
    fn cacert_and_namespace() {
        let c = cfg(
            Some("https://v.example"),
            &[
                ("VAULT_TOKEN", "t"),
                ("VAULT_CACERT", "/etc/ca.pem"),
                ("VAULT_NAMESPACE", "team-a"),
            ],
            None,
        )
        .unwrap();
        assert_eq!(c.cacert.as_deref(), Some(Path::new("/etc/ca.pem")));
        assert_eq!(c.namespace.as_deref(), Some("team-a"));
    }
}
