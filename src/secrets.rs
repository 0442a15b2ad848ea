//! Secrets in a deploy: the Vault client plugged into core's resolver, the
//! managed secrets of the profile as engine steps, and the broker user
//! they provision.
//!
//! [`WithSecrets`] wraps a target's provider. It adds one step per entry of
//! the profile's `secrets` (`secrets/messaging`: create when absent, rotate
//! when older than its `rotation` or when `taskctl secrets rotate` asks),
//! then `secrets/broker-user`, which sets the agents' RabbitMQ user to the
//! password the profile's reference resolves to (the pinned, older one in a
//! rollback), and makes every step of the target wait for them. Plans show
//! the secrets' steps like any other; values never leave the resolver
//! except into the container files and the broker's management API.

use async_trait::async_trait;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use taskctl_core::Severity;
use taskctl_core::engine::{
    Change, ErrorKind, FieldDiff, Outputs, Step, StepContext, StepError, StepId, StepPlan,
};
use taskctl_core::events::EventSink;
use taskctl_core::ops::{Check, Finding, Layer, OpsError, Provider, ReleaseFacts, Scope, Workload};
use taskctl_core::profile::Profile;
use taskctl_core::profile::model::SecretKind;
use taskctl_core::profile::value::SecretRef;
use taskctl_core::release::{Release, ReleaseStore};
use taskctl_core::secrets::{KvRead, RedactingReleases, Secret, Secrets, VaultBackend};
use taskctl_vault::managed::{self, Managed};
use taskctl_vault::{Vault, VaultConfig};
use tokio_util::sync::CancellationToken;

/// The Vault address for a profile: `secrets.vault_address`, else
/// `VAULT_ADDR`, else the address of an external `services.vault`.
pub fn vault_address(profile: &Profile) -> Option<String> {
    profile
        .secrets
        .vault_address
        .clone()
        .filter(|a| !a.is_empty())
        .or_else(|| std::env::var("VAULT_ADDR").ok().filter(|a| !a.is_empty()))
        .or_else(|| {
            profile
                .services
                .vault
                .as_ref()
                .and_then(|v| v.external.as_ref())
                .map(|e| e.url.clone())
        })
}

/// A Vault client connected on first use (a profile without `vault:`
/// references and managed secrets never needs one). A failed connection is
/// remembered: every later use reports the same clear error.
pub struct LazyVault {
    addr: Option<String>,
    /// The AppRole file a cluster taskctl initialized left (used when the
    /// environment names no credential).
    approle_file: Option<std::path::PathBuf>,
    default_mount: String,
    vault: tokio::sync::OnceCell<Result<Vault, String>>,
}

impl LazyVault {
    pub fn for_profile(profile: &Profile) -> Self {
        LazyVault {
            addr: vault_address(profile),
            approle_file: profile
                .services
                .vault
                .as_ref()
                .and_then(|v| v.cluster.as_ref())
                .map(|c| c.approle_path()),
            default_mount: profile.secrets.mount.clone(),
            vault: tokio::sync::OnceCell::new(),
        }
    }

    pub async fn get(&self) -> Result<&Vault, String> {
        let result = self
            .vault
            .get_or_init(|| async {
                let config = self.config().map_err(|e| e.to_string())?;
                Vault::connect(config).await.map_err(|e| e.to_string())
            })
            .await;
        result.as_ref().map_err(Clone::clone)
    }

    /// The environment's Vault settings; without a credential there, the
    /// AppRole file of a cluster taskctl initialized.
    fn config(&self) -> Result<VaultConfig, taskctl_vault::VaultError> {
        let env_has = |k: &str| std::env::var(k).is_ok_and(|v| !v.is_empty());
        let from_file = self
            .approle_file
            .as_ref()
            .filter(|p| p.exists())
            .filter(|_| !env_has("VAULT_TOKEN") && !env_has("VAULT_ROLE_ID"));
        let Some(path) = from_file else {
            return VaultConfig::from_env(self.addr.as_deref());
        };
        let file = taskctl_vault::setup::AppRoleFile::read(path)?;
        VaultConfig::from_lookup(
            self.addr.as_deref(),
            &|k| match k {
                "VAULT_ROLE_ID" => Some(file.role_id.clone()),
                "VAULT_SECRET_ID" => Some(file.secret_id.expose().to_string()),
                "VAULT_TOKEN" => None,
                other => std::env::var(other).ok(),
            },
            // Not the user's ~/.vault-token: the AppRole file is what this
            // cluster's taskctl logs in with.
            None,
        )
    }

    /// `secret/taskctl/messaging` → (`secret`, `taskctl/messaging`): the
    /// profile's `secrets.mount` when the path starts with it, else the
    /// first segment.
    pub fn split<'a>(&self, path: &'a str) -> (&'a str, &'a str) {
        split_mount(path, &self.default_mount)
    }
}

pub fn split_mount<'a>(path: &'a str, default_mount: &str) -> (&'a str, &'a str) {
    let path = path.trim_matches('/');
    if let Some(rest) = path
        .strip_prefix(default_mount)
        .and_then(|r| r.strip_prefix('/'))
    {
        return (&path[..default_mount.len()], rest);
    }
    path.split_once('/').unwrap_or((path, ""))
}

#[async_trait]
impl VaultBackend for LazyVault {
    async fn read(&self, path: &str, version: Option<u64>) -> Result<KvRead, String> {
        let vault = self.get().await?;
        let (mount, rest) = self.split(path);
        let kv = vault
            .read(mount, rest, version)
            .await
            .map_err(|e| e.to_string())?;
        Ok(KvRead {
            data: kv.data,
            version: kv.version,
        })
    }
}

/// The resolver of a profile's references, registering every value with
/// the process's redaction registry.
pub fn resolver(profile: &Profile) -> (Arc<Secrets>, Arc<LazyVault>) {
    let vault = Arc::new(LazyVault::for_profile(profile));
    let secrets = Arc::new(Secrets::new(
        Some(vault.clone() as Arc<dyn VaultBackend>),
        crate::redact::registry().clone(),
    ));
    (secrets, vault)
}

/// A managed entry of the profile.
#[derive(Clone, Debug)]
pub struct Entry {
    pub name: String,
    /// The path as the profile writes it (mount first).
    pub path: String,
    pub managed: Managed,
}

pub fn entries(profile: &Profile) -> Vec<Entry> {
    profile
        .secrets
        .entries
        .iter()
        .map(|(name, e)| {
            let (mount, rest) = split_mount(&e.path, &profile.secrets.mount);
            Entry {
                name: name.clone(),
                path: e.path.trim_matches('/').to_string(),
                managed: Managed {
                    mount: mount.to_string(),
                    path: rest.to_string(),
                    kind: match e.kind {
                        SecretKind::Rabbitmq => managed::Kind::Rabbitmq,
                        SecretKind::Mongodb => managed::Kind::Mongodb,
                        SecretKind::Postgres => managed::Kind::Postgres,
                        SecretKind::Generic => managed::Kind::Generic,
                        SecretKind::Ed25519 => managed::Kind::Ed25519,
                    },
                    rotation: e.rotation.as_ref().and_then(|r| r.get()).map(|d| d.0),
                    // One broker or database user per environment, so two
                    // environments sharing a server never fight over one.
                    username: Some(format!(
                        "taskctl-{}-{}",
                        profile.metadata.name, profile.metadata.environment
                    )),
                },
            }
        })
        .collect()
}

/// Where the profile reads a managed secret: every `vault:` reference to
/// its path, by where it appears (`agents[automated-task-executor].env.BROKER_PASSWORD`).
pub fn consumers(profile: &Profile, path: &str) -> Vec<String> {
    let mut out = Vec::new();
    for agent in &profile.agents {
        for var in &agent.env {
            if let Some(SecretRef::Vault { path: p, .. }) =
                var.secret.as_ref().and_then(|s| s.get())
                && p == path
            {
                out.push(format!("agent {} ({})", agent.name, var.name));
            }
        }
    }
    let services = serde_json::to_value(&profile.services).unwrap_or_default();
    if let serde_json::Value::Object(services) = services {
        for (name, value) in services {
            if mentions(&value, path) {
                out.push(format!("service {name}"));
            }
        }
    }
    out
}

fn mentions(v: &serde_json::Value, path: &str) -> bool {
    match v {
        serde_json::Value::String(s) => s
            .strip_prefix("vault:")
            .and_then(|r| r.split(['#', '?']).next())
            .is_some_and(|p| p.trim_matches('/') == path),
        serde_json::Value::Array(a) => a.iter().any(|v| mentions(v, path)),
        serde_json::Value::Object(o) => o.values().any(|v| mentions(v, path)),
        _ => false,
    }
}

/// One Kubernetes auth role per agent: its service account (named as the
/// agent, in its namespace) and the Vault paths (under the mount) its env
/// references.
fn agent_roles(profile: &Profile) -> Vec<taskctl_vault::setup::AgentRole> {
    profile
        .agents
        .iter()
        .map(|a| {
            let mut paths: Vec<String> = a
                .env
                .iter()
                .filter_map(|v| v.secret.as_ref().and_then(|s| s.get()))
                .filter_map(|r| match r {
                    SecretRef::Vault { path, .. } => {
                        Some(split_mount(path, &profile.secrets.mount).1.to_string())
                    }
                    SecretRef::Env { .. } => None,
                })
                .collect();
            paths.sort();
            paths.dedup();
            taskctl_vault::setup::AgentRole {
                name: a.name.clone(),
                namespace: a.namespace.clone(),
                service_account: a.name.clone(),
                paths,
            }
        })
        .collect()
}

/// True when the profile reads `path` at a pinned version (a release being
/// restored): its secret is then never rotated by that run.
fn pinned(profile: &Profile, path: &str) -> bool {
    taskctl_core::secrets::references(profile)
        .iter()
        .any(|r| matches!(r, SecretRef::Vault { path: p, version: Some(_), .. } if p == path))
}

fn vault_error(message: String) -> StepError {
    StepError::new(ErrorKind::Other, message)
}

fn age(since: SystemTime, now: SystemTime) -> String {
    let secs = now.duration_since(since).unwrap_or_default().as_secs();
    humantime::format_duration(Duration::from_secs(secs - secs % 60)).to_string()
}

/// `secrets/<name>`: one managed secret of the profile.
struct ManagedSecretStep {
    id: StepId,
    /// The cluster step, when taskctl initializes Vault itself.
    deps: Vec<StepId>,
    entry: Entry,
    vault: Arc<LazyVault>,
    secrets: Arc<Secrets>,
    /// `taskctl secrets rotate NAME`.
    force: bool,
    /// The profile pins this path (a rollback): never rotate here.
    pinned: bool,
}

impl ManagedSecretStep {
    fn outputs(&self, version: Option<u64>) -> Outputs {
        let mut o: Outputs = [("path".to_string(), self.entry.path.clone())].into();
        if let Some(v) = version {
            o.insert("version".into(), v.to_string());
        }
        o
    }
}

#[async_trait]
impl Step for ManagedSecretStep {
    fn id(&self) -> &StepId {
        &self.id
    }
    fn kind(&self) -> &str {
        "vault-secret"
    }
    fn depends_on(&self) -> Vec<StepId> {
        self.deps.clone()
    }

    async fn plan(&self, ctx: &StepContext) -> Result<StepPlan, StepError> {
        if self
            .deps
            .iter()
            .any(|d| ctx.dep_output(d, READY) == Some("false"))
        {
            // Vault is initialized or unsealed by this run: the secret is
            // looked at once it is (the engine plans again before applying).
            self.secrets.mark_pending(&self.entry.path);
            return Ok(StepPlan {
                change: Change::create(format!(
                    "{} once the Vault cluster is ready: created if absent",
                    self.entry.path
                )),
                outputs: self.outputs(None),
            });
        }
        let vault = self.vault.get().await.map_err(vault_error)?;
        let now = SystemTime::now();
        let status = managed::status(vault, &self.entry.managed, now)
            .await
            .map_err(|e| vault_error(e.to_string()))?;
        let change = match status.version {
            None => Change::create(format!(
                "no secret at {}: taskctl generates it",
                self.entry.path
            )),
            Some(v) if self.force && !self.pinned => Change::update(vec![FieldDiff::new(
                "version",
                v,
                format!("{} (rotation requested)", v + 1),
            )]),
            Some(v) if status.due && !self.pinned => Change::update(vec![FieldDiff::new(
                "version",
                format!(
                    "{v} ({} old)",
                    status.created.map(|c| age(c, now)).unwrap_or_default()
                ),
                format!("{} (rotation due)", v + 1),
            )]),
            Some(_) => Change::none(),
        };
        if change.action.is_change() {
            self.secrets.mark_pending(&self.entry.path);
        }
        Ok(StepPlan {
            change,
            outputs: self.outputs(status.version),
        })
    }

    async fn apply(&self, ctx: &StepContext, _plan: &StepPlan) -> Result<Outputs, StepError> {
        let vault = self.vault.get().await.map_err(vault_error)?;
        let status = managed::status(vault, &self.entry.managed, SystemTime::now())
            .await
            .map_err(|e| vault_error(e.to_string()))?;
        // A pinned run only creates what is missing.
        let rotate = !self.pinned && (self.force || status.due);
        let outcome = if status.version.is_none() || rotate {
            managed::ensure(
                vault,
                &self.entry.managed,
                SystemTime::now(),
                self.force && !self.pinned,
            )
            .await
            .map_err(|e| {
                let kind = if matches!(e, taskctl_vault::VaultError::CasConflict { .. }) {
                    ErrorKind::Conflict
                } else {
                    ErrorKind::Other
                };
                StepError::new(kind, e.to_string())
            })?
            .version
        } else {
            status.version.unwrap_or_default()
        };
        ctx.progress(&format!("{} at version {outcome}", self.entry.path));
        self.secrets.settle(&self.entry.path).await;
        Ok(self.outputs(Some(outcome)))
    }

    /// Secrets hold data: destroy keeps them (delete them in Vault by name).
    async fn destroy(&self, _ctx: &StepContext, _plan: &StepPlan) -> Result<(), StepError> {
        Ok(())
    }
}

/// The agents' broker user, as the profile's references say it.
#[derive(Clone, Debug)]
pub struct BrokerUser {
    pub management_url: url::Url,
    pub vhost: String,
    /// The administrator taskctl manages users as (`user:password`).
    pub admin: SecretRef,
    /// The agents' user: its password, and the username beside it.
    pub password: SecretRef,
    pub username: SecretRef,
}

impl BrokerUser {
    /// The broker user the profile asks for: `services.rabbitmq.credentials`
    /// (a `vault:PATH#KEY` whose PATH also holds `username`), provisioned
    /// through the management API of the external broker with its
    /// `external.credentials` (`user:password` of an administrator).
    pub fn from_profile(profile: &Profile) -> Result<Option<Self>, String> {
        let Some(r) = &profile.services.rabbitmq else {
            return Ok(None);
        };
        let (Some(external), Some(password)) = (
            r.external.as_ref(),
            r.credentials.as_ref().and_then(|c| c.get()),
        ) else {
            return Ok(None);
        };
        let SecretRef::Vault { path, version, .. } = password else {
            return Ok(None);
        };
        let Some(admin) = external.credentials.as_ref().and_then(|c| c.get()) else {
            return Err("services.rabbitmq.credentials names the agents' broker user, but services.rabbitmq.external.credentials (an administrator's `user:password`) is missing, so taskctl cannot create it".into());
        };
        let amqp = url::Url::parse(&external.url)
            .map_err(|e| format!("services.rabbitmq.external.url: {e}"))?;
        let management_url = match &external.management_url {
            Some(u) => url::Url::parse(u)
                .map_err(|e| format!("services.rabbitmq.external.management_url: {e}"))?,
            None => url::Url::parse(&format!(
                "http://{}:15672/",
                amqp.host_str().unwrap_or("127.0.0.1")
            ))
            .map_err(|e| format!("services.rabbitmq.external.url: {e}"))?,
        };
        let vhost = match amqp.path().trim_start_matches('/') {
            "" => "/".to_string(),
            v => percent_decode(v),
        };
        Ok(Some(BrokerUser {
            management_url,
            vhost,
            admin: admin.clone(),
            password: password.clone(),
            username: SecretRef::Vault {
                path: path.clone(),
                key: "username".into(),
                version: *version,
            },
        }))
    }
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let Ok(b) = u8::from_str_radix(&s[i + 1..i + 3], 16)
        {
            out.push(b);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn percent_encode(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes())
        .collect::<String>()
        .replace('+', "%20")
}

/// True when RabbitMQ's `password_hash` (base64 of a 4-byte salt and
/// SHA-256(salt ‖ password)) is the hash of `password`.
pub fn rabbit_hash_matches(hash_b64: &str, password: &Secret) -> bool {
    use base64::Engine;
    let Ok(raw) = base64::engine::general_purpose::STANDARD.decode(hash_b64) else {
        return false;
    };
    if raw.len() != 4 + 32 {
        return false;
    }
    let mut input = raw[..4].to_vec();
    input.extend_from_slice(password.expose().as_bytes());
    let digest = ring::digest::digest(&ring::digest::SHA256, &input);
    digest.as_ref() == &raw[4..]
}

/// `secrets/broker-user`: the agents' RabbitMQ user has the password the
/// profile resolves to, and every permission on its virtual host.
struct BrokerUserStep {
    id: StepId,
    deps: Vec<StepId>,
    user: BrokerUser,
    secrets: Arc<Secrets>,
    http: reqwest::Client,
}

struct BrokerLogin {
    admin_user: String,
    admin_password: Secret,
    username: String,
    password: Secret,
}

impl BrokerUserStep {
    async fn login(&self) -> Result<BrokerLogin, StepError> {
        let invalid = |e: taskctl_core::secrets::SecretError| {
            StepError::new(ErrorKind::Invalid, format!("broker user: {e}"))
        };
        let admin = self
            .secrets
            .resolve(&self.user.admin)
            .await
            .map_err(invalid)?;
        let (admin_user, admin_password) =
            admin.value.expose().split_once(':').ok_or_else(|| {
                StepError::new(
                    ErrorKind::Invalid,
                    format!(
                        "{}: expected `user:password` of a RabbitMQ administrator",
                        self.user.admin
                    ),
                )
            })?;
        let username = self
            .secrets
            .resolve(&self.user.username)
            .await
            .map_err(invalid)?;
        let password = self
            .secrets
            .resolve(&self.user.password)
            .await
            .map_err(invalid)?;
        Ok(BrokerLogin {
            admin_user: admin_user.to_string(),
            admin_password: Secret::new(admin_password),
            username: username.value.expose().to_string(),
            password: password.value,
        })
    }

    fn url(&self, path: &str) -> String {
        format!(
            "{}/{}",
            self.user.management_url.as_str().trim_end_matches('/'),
            path
        )
    }

    fn http_error(&self, what: &str, e: reqwest::Error) -> StepError {
        StepError::new(
            ErrorKind::Transient,
            format!(
                "{what} at {}: {}",
                self.user.management_url,
                e.without_url()
            ),
        )
    }

    /// `None`: no such user; `Some(true)`: the password matches.
    async fn current(&self, l: &BrokerLogin) -> Result<Option<bool>, StepError> {
        let resp = self
            .http
            .get(self.url(&format!("api/users/{}", percent_encode(&l.username))))
            .basic_auth(&l.admin_user, Some(l.admin_password.expose()))
            .send()
            .await
            .map_err(|e| self.http_error("reading the broker user", e))?;
        match resp.status().as_u16() {
            404 => Ok(None),
            401 | 403 => Err(StepError::new(
                ErrorKind::Invalid,
                format!(
                    "the broker's management API at {} refused the administrator credentials of {}",
                    self.user.management_url, self.user.admin
                ),
            )),
            200 => {
                let body: serde_json::Value = resp
                    .json()
                    .await
                    .map_err(|e| self.http_error("reading the broker user", e))?;
                let hash = body["password_hash"].as_str().unwrap_or_default();
                Ok(Some(rabbit_hash_matches(hash, &l.password)))
            }
            s => Err(StepError::new(
                ErrorKind::Transient,
                format!(
                    "the broker's management API at {} answered HTTP {s} for the user",
                    self.user.management_url
                ),
            )),
        }
    }

    async fn vhost_exists(&self, l: &BrokerLogin) -> Result<bool, StepError> {
        let resp = self
            .http
            .get(self.url(&format!("api/vhosts/{}", percent_encode(&self.user.vhost))))
            .basic_auth(&l.admin_user, Some(l.admin_password.expose()))
            .send()
            .await
            .map_err(|e| self.http_error("reading the virtual host", e))?;
        Ok(resp.status().is_success())
    }

    async fn delete(&self, l: &BrokerLogin, path: &str) -> Result<(), StepError> {
        let resp = self
            .http
            .delete(self.url(path))
            .basic_auth(&l.admin_user, Some(l.admin_password.expose()))
            .send()
            .await
            .map_err(|e| self.http_error("updating the broker", e))?;
        if !resp.status().is_success() && resp.status().as_u16() != 404 {
            return Err(StepError::new(
                ErrorKind::Other,
                format!(
                    "the broker's management API at {} answered HTTP {} to DELETE {}",
                    self.user.management_url,
                    resp.status().as_u16(),
                    path.split('/').take(2).collect::<Vec<_>>().join("/")
                ),
            ));
        }
        Ok(())
    }

    /// Whether the user has permissions on the virtual host.
    async fn has_permissions(&self, l: &BrokerLogin) -> Result<bool, StepError> {
        let resp = self
            .http
            .get(self.url(&format!(
                "api/permissions/{}/{}",
                percent_encode(&self.user.vhost),
                percent_encode(&l.username)
            )))
            .basic_auth(&l.admin_user, Some(l.admin_password.expose()))
            .send()
            .await
            .map_err(|e| self.http_error("reading the broker user's permissions", e))?;
        Ok(resp.status().is_success())
    }

    async fn put(
        &self,
        l: &BrokerLogin,
        path: &str,
        body: serde_json::Value,
    ) -> Result<(), StepError> {
        let resp = self
            .http
            .put(self.url(path))
            .basic_auth(&l.admin_user, Some(l.admin_password.expose()))
            .json(&body)
            .send()
            .await
            .map_err(|e| self.http_error("updating the broker", e))?;
        if !resp.status().is_success() {
            return Err(StepError::new(
                ErrorKind::Other,
                format!(
                    "the broker's management API at {} answered HTTP {} to PUT {}",
                    self.user.management_url,
                    resp.status().as_u16(),
                    path.split('/').take(2).collect::<Vec<_>>().join("/")
                ),
            ));
        }
        Ok(())
    }
}

#[async_trait]
impl Step for BrokerUserStep {
    fn id(&self) -> &StepId {
        &self.id
    }
    fn kind(&self) -> &str {
        "broker-user"
    }
    fn depends_on(&self) -> Vec<StepId> {
        self.deps.clone()
    }

    async fn plan(&self, _ctx: &StepContext) -> Result<StepPlan, StepError> {
        let pending = self.secrets.is_pending(&self.user.password);
        let outputs: Outputs = [("vhost".to_string(), self.user.vhost.clone())].into();
        if pending {
            return Ok(StepPlan {
                change: Change::update(vec![FieldDiff::new("password", "current", "new version")]),
                outputs,
            });
        }
        let login = self.login().await?;
        let change = match self.current(&login).await? {
            None => Change::create(format!(
                "no user {} on the broker (virtual host {})",
                login.username, self.user.vhost
            )),
            Some(matches) => {
                let mut diffs = Vec::new();
                if !matches {
                    diffs.push(FieldDiff::new(
                        "password",
                        "another version",
                        self.user.password.to_string(),
                    ));
                }
                if !self.has_permissions(&login).await? {
                    diffs.push(FieldDiff::new(
                        format!("permissions on {}", self.user.vhost),
                        "none",
                        "configure, write, read",
                    ));
                }
                if diffs.is_empty() {
                    Change::none()
                } else {
                    Change::update(diffs)
                }
            }
        };
        Ok(StepPlan { change, outputs })
    }

    async fn apply(&self, ctx: &StepContext, plan: &StepPlan) -> Result<Outputs, StepError> {
        let login = self.login().await?;
        if self.user.vhost != "/" && !self.vhost_exists(&login).await? {
            // The environment's own virtual host: only its agents' user may
            // use it. RabbitMQ grants a new vhost to the user who creates it,
            // so the administrator's grant is taken back at once.
            let vhost = percent_encode(&self.user.vhost);
            self.put(
                &login,
                &format!("api/vhosts/{vhost}"),
                serde_json::json!({ "description": "taskctl: one environment's agents" }),
            )
            .await?;
            if login.admin_user != login.username {
                self.delete(
                    &login,
                    &format!(
                        "api/permissions/{vhost}/{}",
                        percent_encode(&login.admin_user)
                    ),
                )
                .await?;
            }
        }
        self.put(
            &login,
            &format!("api/users/{}", percent_encode(&login.username)),
            serde_json::json!({ "password": login.password.expose(), "tags": "" }),
        )
        .await?;
        self.put(
            &login,
            &format!(
                "api/permissions/{}/{}",
                percent_encode(&self.user.vhost),
                percent_encode(&login.username)
            ),
            serde_json::json!({ "configure": ".*", "write": ".*", "read": ".*" }),
        )
        .await?;
        ctx.progress(&format!(
            "broker user {} set to {}",
            login.username, self.user.password
        ));
        Ok(plan.outputs.clone())
    }

    /// The user stays: agents of other environments may share the broker.
    async fn destroy(&self, _ctx: &StepContext, _plan: &StepPlan) -> Result<(), StepError> {
        Ok(())
    }
}

/// The cluster step's output saying Vault can be asked (`true`/`false`).
const READY: &str = "ready";

/// `vault/cluster`: the profile's raft cluster is initialized and every
/// node unsealed (crates/vault's `sys`). A second run changes nothing; a
/// sealed node is named in the plan.
struct VaultClusterStep {
    id: StepId,
    spec: taskctl_vault::sys::ClusterSpec,
    /// Set up after initialization: KV mount, policy, AppRole file; then
    /// the root token is revoked.
    bootstrap: taskctl_vault::setup::Bootstrap,
    http: reqwest::Client,
}

impl VaultClusterStep {
    /// Initialized, but taskctl's AppRole not set up yet (a run stopped
    /// between the two, or the first run).
    fn needs_bootstrap(&self) -> bool {
        self.spec.keys_file.exists() && !self.bootstrap.approle_file.exists()
    }
}

fn cluster_error(e: taskctl_vault::VaultError) -> StepError {
    StepError::new(ErrorKind::Other, e.to_string())
}

#[async_trait]
impl Step for VaultClusterStep {
    fn id(&self) -> &StepId {
        &self.id
    }
    fn kind(&self) -> &str {
        "vault-cluster"
    }
    fn depends_on(&self) -> Vec<StepId> {
        Vec::new()
    }
    fn timeout(&self) -> Duration {
        Duration::from_secs(180)
    }

    async fn plan(&self, _ctx: &StepContext) -> Result<StepPlan, StepError> {
        let actions = taskctl_vault::sys::plan_cluster(&self.http, &self.spec)
            .await
            .map_err(cluster_error)?;
        let mut outputs: Outputs =
            [("nodes".to_string(), self.spec.nodes.len().to_string())].into();
        let change = if actions.iter().any(|(_, a)| *a == "initialize") {
            let auto = actions
                .iter()
                .any(|(_, a)| *a == taskctl_vault::sys::PLAN_WAIT_AUTO_UNSEAL);
            Change::create(format!(
                "not initialized: {} {} shares, {} needed, keys to {}",
                self.spec.key_shares,
                if auto { "recovery key" } else { "unseal key" },
                self.spec.key_threshold,
                self.spec.keys_file.display()
            ))
        } else {
            let diffs: Vec<FieldDiff> = actions
                .iter()
                .filter(|(_, a)| *a != "none")
                .map(|(node, _)| FieldDiff::new(format!("node {node}"), "sealed", "unsealed"))
                .collect();
            let mut diffs = diffs;
            if self.needs_bootstrap() {
                diffs.push(FieldDiff::new(
                    "taskctl's access",
                    "root token",
                    format!(
                        "AppRole in {}, root token revoked",
                        self.bootstrap.approle_file.display()
                    ),
                ));
            }
            if diffs.is_empty() {
                Change::none()
            } else {
                Change::update(diffs)
            }
        };
        // Until this step has run, the secrets' steps cannot ask Vault.
        outputs.insert(READY.into(), (!change.action.is_change()).to_string());
        Ok(StepPlan { change, outputs })
    }

    async fn apply(&self, ctx: &StepContext, plan: &StepPlan) -> Result<Outputs, StepError> {
        let outcome = taskctl_vault::sys::ensure_cluster(&self.http, &self.spec)
            .await
            .map_err(cluster_error)?;
        for (node, action) in &outcome.actions {
            let what = match action {
                taskctl_vault::sys::NodeAction::Initialized => "initialized and unsealed",
                taskctl_vault::sys::NodeAction::Unsealed => "unsealed",
                taskctl_vault::sys::NodeAction::AutoUnsealed => "unsealed itself (auto-unseal)",
                taskctl_vault::sys::NodeAction::AlreadyUnsealed => continue,
            };
            ctx.progress(&format!("{node} {what}"));
        }
        if outcome.initialized {
            let recovery = taskctl_vault::sys::KeysFile::read(&self.spec.keys_file)
                .map(|k| k.recovery())
                .unwrap_or(false);
            ctx.progress(&format!(
                "{} keys are in {} (mode 0600): keep them offline",
                if recovery { "recovery" } else { "unseal" },
                self.spec.keys_file.display()
            ));
        }
        if self.needs_bootstrap() {
            let keys =
                taskctl_vault::sys::KeysFile::read(&self.spec.keys_file).map_err(cluster_error)?;
            taskctl_vault::setup::bootstrap(
                &self.http,
                &self.spec.nodes[0],
                &keys.root_token,
                &self.bootstrap,
            )
            .await
            .map_err(cluster_error)?;
            ctx.progress(&format!(
                "policy `taskctl` and its AppRole set up ({}); the root token is revoked",
                self.bootstrap.approle_file.display()
            ));
        }
        let mut outputs = plan.outputs.clone();
        outputs.insert(READY.into(), "true".into());
        Ok(outputs)
    }

    /// The cluster holds data: destroy leaves it as it is.
    async fn destroy(&self, _ctx: &StepContext, _plan: &StepPlan) -> Result<(), StepError> {
        Ok(())
    }
}

/// A step of the target that waits for the secrets' steps.
struct After {
    inner: Arc<dyn Step>,
    extra: Vec<StepId>,
}

#[async_trait]
impl Step for After {
    fn id(&self) -> &StepId {
        self.inner.id()
    }
    fn kind(&self) -> &str {
        self.inner.kind()
    }
    fn depends_on(&self) -> Vec<StepId> {
        let mut deps = self.inner.depends_on();
        deps.extend(self.extra.iter().cloned());
        deps
    }
    fn timeout(&self) -> Duration {
        self.inner.timeout()
    }
    async fn plan(&self, ctx: &StepContext) -> Result<StepPlan, StepError> {
        self.inner.plan(ctx).await
    }
    async fn apply(&self, ctx: &StepContext, plan: &StepPlan) -> Result<Outputs, StepError> {
        self.inner.apply(ctx, plan).await
    }
    async fn destroy(&self, ctx: &StepContext, plan: &StepPlan) -> Result<(), StepError> {
        self.inner.destroy(ctx, plan).await
    }
}

/// A provider with the profile's managed secrets and broker user.
pub struct WithSecrets {
    pub inner: Box<dyn Provider>,
    pub vault: Arc<LazyVault>,
    pub secrets: Arc<Secrets>,
    /// Names of `secrets.entries` to rotate now.
    pub rotate: Vec<String>,
    /// Destroy: no secret step (secrets are kept, and a destroy must not
    /// need Vault).
    pub destroying: bool,
    /// Whether this target can move its consumers to a rotated secret
    /// (docker: the broker user step and rolling replicas); elsewhere,
    /// missing secrets are created but none is rotated.
    pub may_rotate: bool,
}

impl WithSecrets {
    fn secret_steps(&self, profile: &Profile) -> Result<Vec<Arc<dyn Step>>, OpsError> {
        let mut steps: Vec<Arc<dyn Step>> = Vec::new();
        if self.destroying {
            return Ok(steps);
        }
        if !self.rotate.is_empty() && !self.may_rotate {
            return Err(OpsError::Provider(format!(
                "`secrets rotate` is not built for target {}: the in-cluster broker and databases keep the password they first started with, so rotated credentials would lock the agents out",
                self.inner.name()
            )));
        }
        for name in &self.rotate {
            if !profile.secrets.entries.contains_key(name) {
                return Err(OpsError::Provider(format!(
                    "no secret `{name}` in the profile's secrets.entries (it has: {})",
                    profile
                        .secrets
                        .entries
                        .keys()
                        .cloned()
                        .collect::<Vec<_>>()
                        .join(", ")
                )));
            }
        }
        let mut ids = Vec::new();
        let cluster = profile
            .services
            .vault
            .as_ref()
            .and_then(|v| v.cluster.as_ref());
        let mut first = Vec::new();
        if let Some(c) = cluster {
            let id = StepId::new("vault/cluster");
            first.push(id.clone());
            ids.push(id.clone());
            steps.push(Arc::new(VaultClusterStep {
                id,
                spec: taskctl_vault::sys::ClusterSpec {
                    nodes: c.nodes.clone(),
                    key_shares: c.key_shares,
                    key_threshold: c.key_threshold,
                    keys_file: c.keys_file.clone().into(),
                },
                bootstrap: taskctl_vault::setup::Bootstrap {
                    mount: profile.secrets.mount.clone(),
                    approle_file: c.approle_path(),
                    agents: match &c.kubernetes_host {
                        None => None,
                        Some(host) => Some(taskctl_vault::setup::AgentsAuth {
                            kubernetes_host: host.clone(),
                            kubernetes_ca_cert: match &c.kubernetes_ca_file {
                                None => None,
                                Some(f) => Some(std::fs::read_to_string(f).map_err(|e| {
                                    OpsError::Provider(format!(
                                        "services.vault.cluster.kubernetes_ca_file {f}: {e}"
                                    ))
                                })?),
                            },
                            roles: agent_roles(profile),
                        }),
                    },
                },
                http: reqwest::Client::builder()
                    .timeout(Duration::from_secs(15))
                    .build()
                    .map_err(|e| OpsError::Provider(format!("HTTP client: {e}")))?,
            }));
        }
        for entry in entries(profile) {
            let id = StepId::new(format!("secrets/{}", entry.name));
            ids.push(id.clone());
            steps.push(Arc::new(ManagedSecretStep {
                deps: first.clone(),
                id,
                force: self.rotate.contains(&entry.name),
                pinned: pinned(profile, &entry.path) || !self.may_rotate,
                entry,
                vault: self.vault.clone(),
                secrets: self.secrets.clone(),
            }));
        }
        if let Some(user) = BrokerUser::from_profile(profile).map_err(OpsError::Provider)? {
            let id = StepId::new("secrets/broker-user");
            steps.push(Arc::new(BrokerUserStep {
                id,
                deps: ids,
                user,
                secrets: self.secrets.clone(),
                http: reqwest::Client::builder()
                    .timeout(Duration::from_secs(15))
                    .build()
                    .map_err(|e| OpsError::Provider(format!("HTTP client: {e}")))?,
            }));
        }
        Ok(steps)
    }
}

#[async_trait]
impl Provider for WithSecrets {
    fn name(&self) -> &str {
        self.inner.name()
    }
    fn layers(&self) -> Vec<Layer> {
        self.inner.layers()
    }

    /// Vault first, when the profile needs it: an unreachable, sealed or
    /// uninitialized Vault, or a token that cannot read a referenced path,
    /// is reported before anything changes.
    async fn preflight(&self, profile: &Profile, scope: &Scope) -> Result<Vec<Finding>, OpsError> {
        let needs_vault = !profile.secrets.entries.is_empty()
            || taskctl_core::secrets::references(profile)
                .iter()
                .any(|r| matches!(r, SecretRef::Vault { .. }));
        // A cluster taskctl unseals itself cannot be asked before its step.
        let own_cluster = profile
            .services
            .vault
            .as_ref()
            .is_some_and(|v| v.cluster.is_some());
        if needs_vault && !self.destroying && !own_cluster {
            let vault = match self.vault.get().await {
                Ok(v) => v,
                Err(e) => {
                    return Ok(vec![Finding {
                        severity: Severity::Error,
                        check: "vault".into(),
                        message: e,
                    }]);
                }
            };
            let now = SystemTime::now();
            let mut findings = Vec::new();
            for entry in entries(profile) {
                match managed::status(vault, &entry.managed, now).await {
                    Ok(s) => {
                        let rotate = self.may_rotate
                            && !pinned(profile, &entry.path)
                            && (s.due || self.rotate.contains(&entry.name));
                        if s.version.is_none() || rotate {
                            self.secrets.mark_pending(&entry.path);
                        }
                    }
                    Err(e) => findings.push(Finding {
                        severity: Severity::Error,
                        check: "secrets".into(),
                        message: format!("secrets.entries.{}: {e}", entry.name),
                    }),
                }
            }
            if !findings.is_empty() {
                return Ok(findings);
            }
        }
        self.inner.preflight(profile, scope).await
    }

    fn steps(&self, profile: &Profile, scope: &Scope) -> Result<Vec<Arc<dyn Step>>, OpsError> {
        let mut steps = self.secret_steps(profile)?;
        let extra: Vec<StepId> = steps.iter().map(|s| s.id().clone()).collect();
        for step in self.inner.steps(profile, scope)? {
            steps.push(if extra.is_empty() {
                step
            } else {
                Arc::new(After {
                    inner: step,
                    extra: extra.clone(),
                })
            });
        }
        Ok(steps)
    }

    fn release_layers(&self) -> Vec<Layer> {
        self.inner.release_layers()
    }

    fn releases(&self, profile: &Profile) -> Option<Arc<dyn ReleaseStore>> {
        self.inner.releases(profile).map(|inner| {
            Arc::new(RedactingReleases {
                inner,
                redactor: crate::redact::registry().clone(),
            }) as Arc<dyn ReleaseStore>
        })
    }

    async fn observe_release(&self, profile: &Profile) -> Result<ReleaseFacts, OpsError> {
        let mut facts = self.inner.observe_release(profile).await?;
        for (path, version) in self.secrets.versions_used() {
            facts.secret_versions.entry(path).or_insert(version);
        }
        Ok(facts)
    }

    async fn verify(
        &self,
        profile: &Profile,
        sink: Arc<dyn EventSink>,
        cancel: &CancellationToken,
    ) -> Result<Vec<Check>, OpsError> {
        self.inner.verify(profile, sink, cancel).await
    }

    async fn verify_backups(
        &self,
        profile: &Profile,
        target: &Release,
    ) -> Result<Option<String>, OpsError> {
        self.inner.verify_backups(profile, target).await
    }

    async fn workloads(&self, profile: &Profile) -> Result<Option<Vec<Workload>>, OpsError> {
        self.inner.workloads(profile).await
    }
}

/// One row of `taskctl secrets status`.
#[derive(Debug, serde::Serialize)]
pub struct StatusRow {
    pub name: String,
    pub path: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub version: Option<u64>,
    /// The version the running release reads (after a rollback, an older
    /// one); `None` when no release reads it or the target keeps none.
    pub in_use: Option<u64>,
    /// Seconds since the current version was written.
    pub age_seconds: Option<u64>,
    /// RFC 3339, UTC.
    pub created: Option<String>,
    pub next_rotation: Option<String>,
    /// `ok`, `rotation due`, `missing`.
    pub state: String,
    pub consumers: Vec<String>,
}

/// The status of every managed secret (never a value).
pub async fn status(
    profile: &Profile,
    vault: &LazyVault,
    in_use: &BTreeMap<String, u64>,
) -> Result<Vec<StatusRow>, String> {
    let v = vault.get().await?;
    let now = SystemTime::now();
    let mut rows = Vec::new();
    for entry in entries(profile) {
        let s = managed::status(v, &entry.managed, now)
            .await
            .map_err(|e| format!("secrets.entries.{}: {e}", entry.name))?;
        let kind = profile.secrets.entries[&entry.name].kind;
        rows.push(StatusRow {
            consumers: consumers(profile, &entry.path),
            kind: serde_json::to_value(kind)
                .ok()
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_default(),
            version: s.version,
            in_use: in_use.get(&entry.path).copied(),
            age_seconds: s
                .created
                .map(|c| now.duration_since(c).unwrap_or_default().as_secs()),
            created: s
                .created
                .map(|c| humantime::format_rfc3339_seconds(c).to_string()),
            next_rotation: s
                .next_rotation
                .map(|c| humantime::format_rfc3339_seconds(c).to_string()),
            state: match (s.version, s.due) {
                (None, _) => "missing".into(),
                (Some(_), true) => "rotation due".into(),
                (Some(_), false) => "ok".into(),
            },
            name: entry.name,
            path: entry.path,
        });
    }
    Ok(rows)
}

/// `taskctl secrets rotate NAME --vault-only`: new versions in Vault only.
pub async fn rotate_in_vault(
    profile: &Profile,
    vault: &LazyVault,
    names: &[String],
) -> Result<BTreeMap<String, u64>, String> {
    let v = vault.get().await?;
    let all = entries(profile);
    let mut out = BTreeMap::new();
    for name in names {
        let entry = all.iter().find(|e| &e.name == name).ok_or_else(|| {
            format!(
                "no secret `{name}` in the profile's secrets.entries (it has: {})",
                all.iter()
                    .map(|e| e.name.clone())
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        })?;
        let outcome = managed::ensure(v, &entry.managed, SystemTime::now(), true)
            .await
            .map_err(|e| format!("secrets.entries.{name}: {e}"))?;
        out.insert(name.clone(), outcome.version);
    }
    Ok(out)
}

/// `inner` with the profile's managed secrets and broker user.
pub fn wrap(
    inner: Box<dyn Provider>,
    secrets: Arc<Secrets>,
    vault: Arc<LazyVault>,
    rotate: Vec<String>,
    destroying: bool,
) -> Box<dyn Provider> {
    Box::new(WithSecrets {
        inner,
        vault,
        secrets,
        rotate,
        destroying,
        may_rotate: true,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mounts_split_on_the_profile_mount_or_the_first_segment() {
        assert_eq!(
            split_mount("secret/taskctl/messaging", "secret"),
            ("secret", "taskctl/messaging")
        );
        assert_eq!(split_mount("kv/team/x", "secret"), ("kv", "team/x"));
        assert_eq!(split_mount("kv/v2/a", "kv/v2"), ("kv/v2", "a"));
    }

    #[test]
    fn rabbitmq_password_hashes_are_checked() {
        use base64::Engine;
        let salt = [1u8, 2, 3, 4];
        let mut input = salt.to_vec();
        input.extend_from_slice(b"right-password");
        let mut raw = salt.to_vec();
        raw.extend_from_slice(ring::digest::digest(&ring::digest::SHA256, &input).as_ref());
        let hash = base64::engine::general_purpose::STANDARD.encode(raw);
        assert!(rabbit_hash_matches(&hash, &Secret::new("right-password")));
        assert!(!rabbit_hash_matches(&hash, &Secret::new("wrong-password")));
        assert!(!rabbit_hash_matches(
            "not base64!",
            &Secret::new("right-password")
        ));
    }

    #[test]
    fn vhosts_are_decoded() {
        assert_eq!(percent_decode("%2f"), "/");
        assert_eq!(percent_decode("tasks"), "tasks");
        assert_eq!(percent_encode("/"), "%2F");
    }
}
