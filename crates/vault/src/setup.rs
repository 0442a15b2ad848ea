//! After initialization: make the cluster usable by taskctl without its
//! root token, then revoke the root token.
//!
//! With the initial root token (from the keys file [`crate::sys`] wrote),
//! [`bootstrap`] enables KV v2 at the profile's mount, writes the policy
//! `taskctl` (read and write that mount's data, read its metadata), enables
//! AppRole with the role `taskctl` bound to that policy, writes the role's
//! id and a secret id to a file of the operator's (mode 0600, never
//! overwritten) and revokes the root token: from then on taskctl logs in
//! with AppRole ([`AppRoleFile`]), and a new root token needs the unseal
//! keys (`bao operator generate-root`).

use crate::{Secret, VaultError};
use serde::Deserialize;
use std::io::Write as _;
use std::path::{Path, PathBuf};

/// What [`bootstrap`] sets up.
#[derive(Clone, Debug)]
pub struct Bootstrap {
    /// KV v2 mount the secrets live under (`secret`).
    pub mount: String,
    /// Where the AppRole credentials are written.
    pub approle_file: PathBuf,
    /// The Kubernetes auth method for the agents, when they run in a
    /// cluster: one role per agent.
    pub agents: Option<AgentsAuth>,
}

/// How the agents log in from their pods: Kubernetes auth at
/// `auth/kubernetes`, one role per agent bound to its service account,
/// each with a policy that reads only the paths that agent references.
#[derive(Clone, Debug)]
pub struct AgentsAuth {
    /// The API server Vault checks service-account tokens with.
    pub kubernetes_host: String,
    /// Its CA (PEM), when Vault runs outside the cluster.
    pub kubernetes_ca_cert: Option<String>,
    pub roles: Vec<AgentRole>,
}

#[derive(Clone, Debug)]
pub struct AgentRole {
    /// Role and policy name (`task-executor`).
    pub name: String,
    pub namespace: String,
    pub service_account: String,
    /// KV paths under the mount the agent reads (`messaging`).
    pub paths: Vec<String>,
}

/// The read-only policy of one agent: its own paths' data, nothing else.
pub fn agent_policy(mount: &str, paths: &[String]) -> String {
    paths
        .iter()
        .map(|p| {
            format!(
                "path \"{mount}/data/{}\" {{ capabilities = [\"read\"] }}\n",
                p.trim_matches('/')
            )
        })
        .collect()
}

/// The role id and a secret id of taskctl's AppRole.
#[derive(Clone, Debug)]
pub struct AppRoleFile {
    pub role_id: String,
    pub secret_id: Secret,
}

#[derive(serde::Serialize, Deserialize)]
struct OnDisk {
    role_id: String,
    secret_id: String,
}

impl AppRoleFile {
    pub fn read(path: &Path) -> Result<AppRoleFile, VaultError> {
        let bytes =
            std::fs::read(path).map_err(|e| file_error(path, format!("cannot read: {e}")))?;
        let d: OnDisk = serde_json::from_slice(&bytes).map_err(|e| {
            file_error(
                path,
                format!(
                    "not an AppRole file (JSON with role_id and secret_id) at line {} column {}",
                    e.line(),
                    e.column()
                ),
            )
        })?;
        Ok(AppRoleFile {
            role_id: d.role_id,
            secret_id: Secret::new(d.secret_id),
        })
    }

    fn create_new(&self, path: &Path) -> Result<(), VaultError> {
        let mut file = crate::sys::open_new(path)?;
        let mut text = serde_json::to_vec_pretty(&OnDisk {
            role_id: self.role_id.clone(),
            secret_id: self.secret_id.expose().to_string(),
        })
        .map_err(|e| file_error(path, format!("cannot encode: {e}")))?;
        text.push(b'\n');
        let written = file.write_all(&text).and_then(|()| file.sync_all());
        text.fill(0);
        written.map_err(|e| file_error(path, format!("cannot write: {e}")))
    }
}

fn file_error(path: &Path, cause: String) -> VaultError {
    VaultError::KeysFile {
        path: path.display().to_string(),
        cause,
    }
}

/// The policy taskctl's AppRole gets: the mount's data and metadata, no
/// more (no `sys/`, no other mount, no auth methods).
pub fn policy(mount: &str) -> String {
    format!(
        "path \"{mount}/data/*\" {{ capabilities = [\"create\", \"read\", \"update\", \"patch\"] }}\n\
         path \"{mount}/metadata/*\" {{ capabilities = [\"read\", \"list\", \"update\"] }}\n"
    )
}

struct Root<'a> {
    http: &'a reqwest::Client,
    addr: &'a str,
    token: &'a Secret,
}

impl Root<'_> {
    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> Result<(u16, serde_json::Value), VaultError> {
        let url = format!("{}/v1/{path}", self.addr.trim_end_matches('/'));
        let mut req = self
            .http
            .request(method, &url)
            .header("X-Vault-Token", self.token.expose());
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.map_err(|e| VaultError::NodeUnreachable {
            addr: self.addr.to_string(),
            cause: e.without_url().to_string(),
        })?;
        let status = resp.status().as_u16();
        let value = resp.json().await.unwrap_or(serde_json::Value::Null);
        if status >= 400 {
            let errors = value["errors"]
                .as_array()
                .map(|e| {
                    e.iter()
                        .filter_map(|v| v.as_str())
                        .collect::<Vec<_>>()
                        .join("; ")
                })
                .unwrap_or_default();
            return Err(VaultError::Other {
                what: format!("setting up Vault at {} ({path})", self.addr),
                cause: format!("HTTP {status}: {errors}"),
            });
        }
        Ok((status, value))
    }
}

/// Sets up taskctl's policy and AppRole with the root token of a cluster
/// just initialized, writes the AppRole file, then revokes the root token.
pub async fn bootstrap(
    http: &reqwest::Client,
    addr: &str,
    root_token: &Secret,
    b: &Bootstrap,
) -> Result<AppRoleFile, VaultError> {
    use reqwest::Method;
    // Checked first: a file left over must not be found after the root
    // token is gone.
    if b.approle_file.exists() {
        return Err(file_error(
            &b.approle_file,
            "already exists; it is never overwritten (move it away)".into(),
        ));
    }
    let root = Root {
        http,
        addr,
        token: root_token,
    };
    let mount = b.mount.trim_matches('/');
    let (_, mounts) = root.call(Method::GET, "sys/mounts", None).await?;
    let mounts = if mounts["data"].is_object() {
        &mounts["data"]
    } else {
        &mounts
    };
    if mounts.get(format!("{mount}/")).is_none() {
        root.call(
            Method::POST,
            &format!("sys/mounts/{mount}"),
            Some(serde_json::json!({"type": "kv", "options": {"version": "2"}})),
        )
        .await?;
    }
    root.call(
        Method::PUT,
        "sys/policies/acl/taskctl",
        Some(serde_json::json!({ "policy": policy(mount) })),
    )
    .await?;
    let (_, auths) = root.call(Method::GET, "sys/auth", None).await?;
    let auths = if auths["data"].is_object() {
        &auths["data"]
    } else {
        &auths
    };
    if auths.get("approle/").is_none() {
        root.call(
            Method::POST,
            "sys/auth/approle",
            Some(serde_json::json!({"type": "approle"})),
        )
        .await?;
    }
    root.call(
        Method::POST,
        "auth/approle/role/taskctl",
        Some(serde_json::json!({
            "token_policies": ["taskctl"],
            "token_ttl": "1h",
            "token_max_ttl": "4h",
        })),
    )
    .await?;
    let (_, role) = root
        .call(Method::GET, "auth/approle/role/taskctl/role-id", None)
        .await?;
    let (_, secret) = root
        .call(Method::POST, "auth/approle/role/taskctl/secret-id", None)
        .await?;
    let file = AppRoleFile {
        role_id: role["data"]["role_id"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
        secret_id: Secret::new(secret["data"]["secret_id"].as_str().unwrap_or_default()),
    };
    if file.role_id.is_empty() || file.secret_id.is_empty() {
        return Err(VaultError::Other {
            what: format!("setting up AppRole on {addr}"),
            cause: "the role id or secret id was missing from Vault's answer".into(),
        });
    }
    if let Some(agents) = &b.agents {
        if auths.get("kubernetes/").is_none() {
            root.call(
                Method::POST,
                "sys/auth/kubernetes",
                Some(serde_json::json!({"type": "kubernetes"})),
            )
            .await?;
        }
        root.call(
            Method::POST,
            "auth/kubernetes/config",
            Some(match &agents.kubernetes_ca_cert {
                // Vault outside the cluster: the API server's CA is given,
                // and each agent's token is reviewed with that token itself.
                Some(ca) => serde_json::json!({
                    "kubernetes_host": agents.kubernetes_host,
                    "kubernetes_ca_cert": ca,
                    "disable_local_ca_jwt": true,
                }),
                // Vault in the cluster: its pod's service account and CA.
                None => serde_json::json!({ "kubernetes_host": agents.kubernetes_host }),
            }),
        )
        .await?;
        for role in &agents.roles {
            let policy = format!("taskctl-agent-{}", role.name);
            root.call(
                Method::PUT,
                &format!("sys/policies/acl/{policy}"),
                Some(serde_json::json!({ "policy": agent_policy(mount, &role.paths) })),
            )
            .await?;
            root.call(
                Method::POST,
                &format!("auth/kubernetes/role/{}", role.name),
                Some(serde_json::json!({
                    "bound_service_account_names": [role.service_account],
                    "bound_service_account_namespaces": [role.namespace],
                    "token_policies": [policy],
                    "token_ttl": "1h",
                })),
            )
            .await?;
        }
    }
    file.create_new(&b.approle_file)?;
    root.call(Method::POST, "auth/token/revoke-self", None)
        .await?;
    Ok(file)
}
