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
//!
//! This module: the Vault client as core's backend ([`LazyVault`]), the
//! profile's managed entries, `secrets status`; the steps are in
//! [`managed_step`], [`broker`] and [`cluster`], the provider that adds them in
//! [`provider`].

mod broker;
mod cluster;
mod cluster_broker;
mod managed_step;
mod provider;

pub use provider::{Rotation, WithSecrets, wrap};

use async_trait::async_trait;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use taskctl_core::Severity;
use taskctl_core::engine::{
    Change, ErrorKind, FieldDiff, Outputs, Step, StepContext, StepError, StepId, StepPlan,
};
use taskctl_core::events::EventSink;
use taskctl_core::ops::{
    Check, Finding, Layer, OpsError, PodPorts, Provider, ReleaseFacts, Scope, SecretsOrder,
    Workload,
};
use taskctl_core::profile::Profile;
use taskctl_core::profile::model::SecretKind;
use taskctl_core::profile::value::SecretRef;
use taskctl_core::release::{Release, ReleaseStore};
use taskctl_core::secrets::{KvRead, RedactingReleases, Secret, Secrets, VaultBackend};
use taskctl_vault::managed::{self, Managed};
use taskctl_vault::{Vault, VaultConfig};
use tokio_util::sync::CancellationToken;

/// The Vault address for a profile: `secrets.vault_address`, else the
/// first node of a cluster taskctl initializes (`services.vault.cluster`:
/// its AppRole file belongs to that cluster, so `VAULT_ADDR` pointing
/// elsewhere must not win), else `VAULT_ADDR`, else the address of an
/// external `services.vault`.
pub fn vault_address(profile: &Profile) -> Option<String> {
    let vault = profile.services.vault.as_ref();
    let explicit = profile
        .secrets
        .vault_address
        .clone()
        .filter(|a| !a.is_empty());
    // The target finds the nodes of a Vault it runs (port-forwards).
    if in_cluster(profile) {
        return explicit;
    }
    explicit
        .or_else(|| {
            vault
                .and_then(|v| v.cluster.as_ref())
                .and_then(|c| c.nodes.first().cloned())
        })
        .or_else(|| std::env::var("VAULT_ADDR").ok().filter(|a| !a.is_empty()))
        .or_else(|| {
            vault
                .and_then(|v| v.external.as_ref())
                .map(|e| e.url.clone())
        })
}

/// Whether the profile's Vault is the StatefulSet target `kubernetes` or
/// `aws` deploys, initialized and unsealed by taskctl: its nodes are the
/// pods, which only the target can reach (`services.vault.cluster` without
/// `nodes`).
pub fn in_cluster(profile: &Profile) -> bool {
    profile.vault_in_cluster()
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
    /// For a Vault in the cluster ([`in_cluster`]): the profile, to reach
    /// its pods when no provider has handed over [`Self::nodes`].
    in_cluster: Option<Box<Profile>>,
    /// How the target reaches the Vault it runs; the active node's
    /// address is the client's.
    nodes: tokio::sync::OnceCell<Arc<dyn PodPorts>>,
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
            in_cluster: (in_cluster(profile) && vault_address(profile).is_none())
                .then(|| Box::new(profile.clone())),
            nodes: tokio::sync::OnceCell::new(),
        }
    }

    /// Hands over the target's way to the Vault it runs (the provider's
    /// port-forwards, shared with the `vault/cluster` step). Ignored once
    /// set.
    pub fn set_nodes(&self, nodes: Arc<dyn PodPorts>) {
        let _ = self.nodes.set(nodes);
    }

    pub async fn get(&self) -> Result<&Vault, String> {
        let result = self
            .vault
            .get_or_init(|| async {
                let addr = match &self.in_cluster {
                    Some(profile) => Some(self.active_node(profile).await?),
                    None => self.addr.clone(),
                };
                let config = self.config(addr.as_deref()).map_err(|e| e.to_string())?;
                Vault::connect(config).await.map_err(|e| e.to_string())
            })
            .await;
        result.as_ref().map_err(Clone::clone)
    }

    /// The address of the in-cluster Vault's active node (the one whose
    /// `sys/health` says 200), else of its first pod.
    async fn active_node(&self, profile: &Profile) -> Result<String, String> {
        let nodes = self
            .nodes
            .get_or_try_init(|| async {
                let options = taskctl_kube::KubeOptions::default();
                let target: Box<dyn Provider> =
                    if profile.target.kind == taskctl_core::profile::TargetKind::Aws {
                        Box::new(
                            crate::eks::EksStack::connect(profile, options)
                                .await
                                .map_err(|e| format!("{e:#}"))?,
                        )
                    } else {
                        Box::new(
                            taskctl_kube::KubernetesProvider::connect(profile, options)
                                .await
                                .map_err(|e| e.to_string())?,
                        )
                    };
                target
                    .vault_nodes(profile)
                    .ok_or_else(|| format!("the {} target does not run this Vault", target.name()))
            })
            .await?;
        let list = nodes.nodes().await.map_err(|e| e.to_string())?;
        let Some((_, first)) = list.first() else {
            return Err(format!(
                "Vault runs in the cluster (services.vault.cluster has no nodes), and none of its pods ({}/vault-0 …) runs yet: deploy first",
                taskctl_kube::view::VAULT
            ));
        };
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .build()
            .map_err(|e| format!("HTTP client: {e}"))?;
        for (_, addr) in &list {
            let health = http.get(format!("{addr}/v1/sys/health")).send().await;
            if health.is_ok_and(|r| r.status() == reqwest::StatusCode::OK) {
                return Ok(addr.clone());
            }
        }
        Ok(first.clone())
    }

    /// The environment's Vault settings; for a cluster taskctl initialized,
    /// the AppRole file it left (over a `VAULT_TOKEN` in the environment,
    /// which is a token of some other Vault; `VAULT_ROLE_ID` still wins).
    fn config(&self, addr: Option<&str>) -> Result<VaultConfig, taskctl_vault::VaultError> {
        let env_has = |k: &str| std::env::var(k).is_ok_and(|v| !v.is_empty());
        let from_file = self
            .approle_file
            .as_ref()
            .filter(|p| p.exists())
            .filter(|_| !env_has("VAULT_ROLE_ID"));
        let Some(path) = from_file else {
            return VaultConfig::from_env(addr);
        };
        let file = taskctl_vault::setup::AppRoleFile::read(path)?;
        VaultConfig::from_lookup(
            addr,
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
                        SecretKind::Tls => managed::Kind::Tls,
                    },
                    hosts: e.hosts.clone(),
                    rotation: e.rotation.as_ref().and_then(|r| r.get()).map(|d| d.0),
                    // One broker or database user per environment, so two
                    // environments sharing a server never fight over one.
                    username: Some(e.username.clone().unwrap_or_else(|| {
                        format!(
                            "taskctl-{}-{}",
                            profile.metadata.name, profile.metadata.environment
                        )
                    })),
                },
            }
        })
        .collect()
}

/// Where the profile reads a managed secret: every `vault:` reference to
/// its path, by where it appears (`agents[automated-task-executor].env.BROKER_PASSWORD`).
pub fn consumers(profile: &Profile, path: &str) -> Vec<String> {
    let mut out = Vec::new();
    for (kind, agent) in profile.workloads() {
        for var in &agent.env {
            if let Some(SecretRef::Vault { path: p, .. }) =
                var.secret.as_ref().and_then(|s| s.get())
                && p == path
            {
                out.push(format!("{} {} ({})", kind.role(), agent.name, var.name));
            }
        }
    }
    out.extend(
        services_using(profile, path)
            .into_iter()
            .map(|name| format!("service {name}")),
    );
    out
}

/// The platform services (`rabbitmq`, `mongodb`, …) whose settings read a
/// `vault:` reference to `path`.
pub fn services_using(profile: &Profile, path: &str) -> Vec<String> {
    match serde_json::to_value(&profile.services) {
        Ok(serde_json::Value::Object(services)) => services
            .into_iter()
            .filter(|(_, value)| mentions(value, path))
            .map(|(name, _)| name)
            .collect(),
        _ => Vec::new(),
    }
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
}
