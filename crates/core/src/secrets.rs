//! Secret references resolved at deploy time.
//!
//! A profile names secrets by reference (`vault:PATH#KEY`, `env:NAME`);
//! [`Secrets`] turns a reference into its value when a step needs it, and
//! remembers which KV version of each Vault path it read, so the release
//! record can pin them ([`pin_versions`]) and a rollback restores the
//! credentials that release ran with. Every value read is registered with
//! the run's [`Redactor`], which masks it in any output.
//!
//! Core knows no Vault client: the binary plugs one in as a
//! [`VaultBackend`] (crates/vault), connected on first use, so a profile
//! without `vault:` references never needs a Vault.

use crate::profile::Profile;
use crate::profile::value::SecretRef;
use async_trait::async_trait;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
pub use taskctl_secret::{Redactor, Secret};

/// Why a reference could not be resolved. Messages name the reference,
/// the path or the address, never a value.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SecretError {
    #[error("secret reference env:{name}: the variable {name} is not set in taskctl's environment")]
    EnvMissing { name: String },
    #[error(
        "secret reference {reference}: no Vault is configured (set VAULT_ADDR and VAULT_TOKEN, or `secrets.vault_address` in the profile)"
    )]
    NoVault { reference: String },
    #[error("secret reference {reference}: {message}")]
    Vault { reference: String, message: String },
    #[error(
        "secret reference {reference}: the secret at {path} has no key `{key}` (it has: {keys})"
    )]
    KeyMissing {
        reference: String,
        path: String,
        key: String,
        keys: String,
    },
}

/// One KV v2 secret as read: every key, and the version read.
#[derive(Clone, Debug)]
pub struct KvRead {
    pub data: BTreeMap<String, Secret>,
    pub version: u64,
}

/// A Vault KV v2 store, as the resolver needs it.
#[async_trait]
pub trait VaultBackend: Send + Sync {
    /// The secret at `path` (its mount first: `secret/messaging`), at
    /// `version` or the latest. Errors are one sentence naming the path or
    /// the address.
    async fn read(&self, path: &str, version: Option<u64>) -> Result<KvRead, String>;
}

/// A resolved reference.
#[derive(Clone, Debug)]
pub struct Resolved {
    pub value: Secret,
    /// The KV version read (`vault:` references only).
    pub version: Option<u64>,
}

/// Reads an environment variable (the process's, or a test's map).
type EnvLookup = Box<dyn Fn(&str) -> Option<String> + Send + Sync>;

/// The run's secret resolver (shared by every step; reads are cached so a
/// path is read once per version per run).
pub struct Secrets {
    vault: Option<Arc<dyn VaultBackend>>,
    redactor: Redactor,
    env: EnvLookup,
    cache: tokio::sync::Mutex<BTreeMap<(String, Option<u64>), KvRead>>,
    used: Mutex<BTreeMap<String, u64>>,
    /// Vault paths a step of this run is about to create or rotate: plans
    /// show their dependents' change as "a new version" instead of failing
    /// on a secret that does not exist yet.
    pending: Mutex<std::collections::BTreeSet<String>>,
}

impl std::fmt::Debug for Secrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Secrets")
            .field("vault", &self.vault.is_some())
            .finish_non_exhaustive()
    }
}

impl Default for Secrets {
    fn default() -> Self {
        Secrets::new(None, Redactor::new())
    }
}

/// Fields of a Vault secret that are not secret: user names, host names,
/// public keys and certificates (the managed `tls` and `ed25519` kinds
/// keep them beside their private halves). Never registered with the
/// redactor.
pub const PUBLIC_FIELDS: &[&str] = &[
    "username",
    "hosts",
    "public_key",
    "public_keys",
    "cert",
    "ca_cert",
    "ca_certs",
];

impl Secrets {
    /// A resolver reading `env:` references from the process environment
    /// and `vault:` ones from `vault` (none: a clear error per reference).
    pub fn new(vault: Option<Arc<dyn VaultBackend>>, redactor: Redactor) -> Self {
        Secrets {
            vault,
            redactor,
            env: Box::new(|name| std::env::var(name).ok()),
            cache: Default::default(),
            used: Default::default(),
            pending: Default::default(),
        }
    }

    /// Reads `env:` references through `lookup` instead (tests).
    pub fn with_env(
        mut self,
        lookup: impl Fn(&str) -> Option<String> + Send + Sync + 'static,
    ) -> Self {
        self.env = Box::new(lookup);
        self
    }

    pub fn redactor(&self) -> &Redactor {
        &self.redactor
    }

    pub fn has_vault(&self) -> bool {
        self.vault.is_some()
    }

    /// The value of `r`, registered with the redactor before it is returned.
    pub async fn resolve(&self, r: &SecretRef) -> Result<Resolved, SecretError> {
        match r {
            SecretRef::Env { name } => {
                let value = (self.env)(name)
                    .map(Secret::new)
                    .ok_or_else(|| SecretError::EnvMissing { name: name.clone() })?;
                self.redactor.register(&value);
                Ok(Resolved {
                    value,
                    version: None,
                })
            }
            SecretRef::Vault { path, key, version } => {
                let read = self.read(r, path, *version).await?;
                let value = read
                    .data
                    .get(key)
                    .cloned()
                    .ok_or_else(|| SecretError::KeyMissing {
                        reference: r.to_string(),
                        path: path.clone(),
                        key: key.clone(),
                        keys: read.data.keys().cloned().collect::<Vec<_>>().join(", "),
                    })?;
                self.used
                    .lock()
                    .expect("not poisoned")
                    .insert(path.clone(), read.version);
                Ok(Resolved {
                    value,
                    version: Some(read.version),
                })
            }
        }
    }

    async fn read(
        &self,
        r: &SecretRef,
        path: &str,
        version: Option<u64>,
    ) -> Result<KvRead, SecretError> {
        let mut cache = self.cache.lock().await;
        if let Some(hit) = cache.get(&(path.to_string(), version)) {
            return Ok(hit.clone());
        }
        let Some(vault) = &self.vault else {
            return Err(SecretError::NoVault {
                reference: r.to_string(),
            });
        };
        let read = vault
            .read(path, version)
            .await
            .map_err(|message| SecretError::Vault {
                reference: r.to_string(),
                message,
            })?;
        for (key, value) in &read.data {
            // Public by design, and masking them garbles output and, worse,
            // the profiles kept in release records, which a rollback
            // renders again: a `tls` secret's `hosts` is also the broker's
            // host name in the agents' URL.
            if !PUBLIC_FIELDS.contains(&key.as_str()) {
                self.redactor.register(value);
            }
        }
        cache.insert((path.to_string(), version), read.clone());
        if version.is_none() {
            cache.insert((path.to_string(), Some(read.version)), read.clone());
        }
        Ok(read)
    }

    /// Vault path → the KV version this run read of it.
    pub fn versions_used(&self) -> BTreeMap<String, u64> {
        self.used.lock().expect("not poisoned").clone()
    }

    /// Says that a step will write a new version of `path` in this run.
    pub fn mark_pending(&self, path: &str) {
        self.pending
            .lock()
            .expect("not poisoned")
            .insert(path.to_string());
    }

    /// True when `r` reads a Vault path a step is about to write (an
    /// unpinned reference: a pinned one names a version that exists).
    pub fn is_pending(&self, r: &SecretRef) -> bool {
        matches!(r, SecretRef::Vault { path, version: None, .. }
            if self.pending.lock().expect("not poisoned").contains(path))
    }

    /// A step wrote `path`: the next resolve reads its new version.
    pub async fn settle(&self, path: &str) {
        self.pending.lock().expect("not poisoned").remove(path);
        self.cache.lock().await.retain(|(p, _), _| p != path);
        self.used.lock().expect("not poisoned").remove(path);
    }
}

/// Every secret reference in the profile, sorted and unique: a walk of its
/// serialized form, which holds references and never values.
pub fn references(profile: &Profile) -> Vec<SecretRef> {
    let mut out = Vec::new();
    if let Ok(v) = serde_json::to_value(profile) {
        walk_strings(&v, &mut |s| {
            if let Some(r) = parse_reference(s) {
                out.push(r);
            }
        });
    }
    let mut shown: Vec<(String, SecretRef)> = out.into_iter().map(|r| (r.to_string(), r)).collect();
    shown.sort_by(|a, b| a.0.cmp(&b.0));
    shown.dedup_by(|a, b| a.0 == b.0);
    shown.into_iter().map(|(_, r)| r).collect()
}

fn parse_reference(s: &str) -> Option<SecretRef> {
    use crate::profile::value::Syntax;
    if !(s.starts_with("vault:") || s.starts_with("env:")) {
        return None;
    }
    SecretRef::parse(s).ok()
}

fn walk_strings(v: &serde_json::Value, f: &mut dyn FnMut(&str)) {
    match v {
        serde_json::Value::String(s) => f(s),
        serde_json::Value::Array(a) => a.iter().for_each(|v| walk_strings(v, f)),
        serde_json::Value::Object(o) => o.values().for_each(|v| walk_strings(v, f)),
        _ => {}
    }
}

/// Pins every unpinned `vault:PATH#KEY` in a serialized profile to the
/// version `versions` holds for PATH: deploying the result reads exactly
/// the credentials a release ran with.
pub fn pin_versions(profile: &mut serde_json::Value, versions: &BTreeMap<String, u64>) {
    match profile {
        serde_json::Value::String(s) => {
            if let Some(SecretRef::Vault {
                path,
                key,
                version: None,
            }) = parse_reference(s)
                && let Some(v) = versions.get(&path)
            {
                *s = SecretRef::Vault {
                    path,
                    key,
                    version: Some(*v),
                }
                .to_string();
            }
        }
        serde_json::Value::Array(a) => a.iter_mut().for_each(|v| pin_versions(v, versions)),
        serde_json::Value::Object(o) => o.values_mut().for_each(|v| pin_versions(v, versions)),
        _ => {}
    }
}

/// `value` with every registered secret masked in every string in it.
pub fn redact_value<T>(redactor: &Redactor, value: &T) -> Option<T>
where
    T: serde::Serialize + serde::de::DeserializeOwned,
{
    fn walk(v: &mut serde_json::Value, r: &Redactor) -> bool {
        match v {
            serde_json::Value::String(s) => {
                let masked = r.redact(s);
                if masked != s.as_str() {
                    *s = masked.into_owned();
                    true
                } else {
                    false
                }
            }
            serde_json::Value::Array(a) => a.iter_mut().fold(false, |c, v| walk(v, r) | c),
            serde_json::Value::Object(o) => o.values_mut().fold(false, |c, v| walk(v, r) | c),
            _ => false,
        }
    }
    if redactor.is_empty() {
        return None;
    }
    let mut v = serde_json::to_value(value).ok()?;
    if !walk(&mut v, redactor) {
        return None;
    }
    serde_json::from_value(v).ok()
}

/// A state store that masks registered secret values in every journal and
/// audit entry before it is written.
pub struct RedactingStore {
    pub inner: Arc<dyn crate::state::StateStore>,
    pub redactor: Redactor,
}

#[async_trait]
impl crate::state::StateStore for RedactingStore {
    fn location(&self) -> String {
        self.inner.location()
    }
    async fn acquire(
        &self,
        lease: &crate::state::Lease,
    ) -> Result<crate::state::Acquired, crate::state::StateError> {
        self.inner.acquire(lease).await
    }
    async fn renew(&self, lease: &crate::state::Lease) -> Result<bool, crate::state::StateError> {
        self.inner.renew(lease).await
    }
    async fn release(&self, lease: &crate::state::Lease) -> Result<(), crate::state::StateError> {
        self.inner.release(lease).await
    }
    async fn current_lock(&self) -> Result<Option<crate::state::Lease>, crate::state::StateError> {
        self.inner.current_lock().await
    }
    async fn break_lock(&self) -> Result<Option<crate::state::Lease>, crate::state::StateError> {
        self.inner.break_lock().await
    }
    async fn append_journal(
        &self,
        entry: &crate::journal::JournalEntry,
    ) -> Result<(), crate::state::StateError> {
        match redact_value(&self.redactor, entry) {
            Some(masked) => self.inner.append_journal(&masked).await,
            None => self.inner.append_journal(entry).await,
        }
    }
    async fn journal(&self) -> Result<Vec<crate::journal::JournalEntry>, crate::state::StateError> {
        self.inner.journal().await
    }
    async fn append_audit(
        &self,
        entry: &crate::state::AuditEntry,
    ) -> Result<(), crate::state::StateError> {
        match redact_value(&self.redactor, entry) {
            Some(masked) => self.inner.append_audit(&masked).await,
            None => self.inner.append_audit(entry).await,
        }
    }
    async fn audit(&self) -> Result<Vec<crate::state::AuditEntry>, crate::state::StateError> {
        self.inner.audit().await
    }
}

/// A release store that masks registered secret values in every record
/// before it is kept.
pub struct RedactingReleases {
    pub inner: Arc<dyn crate::release::ReleaseStore>,
    pub redactor: Redactor,
}

#[async_trait]
impl crate::release::ReleaseStore for RedactingReleases {
    async fn list(&self) -> Result<Vec<crate::release::Release>, crate::state::StateError> {
        self.inner.list().await
    }
    async fn put(&self, release: &crate::release::Release) -> Result<(), crate::state::StateError> {
        match redact_value(&self.redactor, release) {
            Some(masked) => self.inner.put(&masked).await,
            None => self.inner.put(release).await,
        }
    }
    async fn delete(&self, revision: u32) -> Result<(), crate::state::StateError> {
        self.inner.delete(revision).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::profile::value::Syntax;

    struct Kv(BTreeMap<(String, u64), BTreeMap<String, String>>);

    #[async_trait]
    impl VaultBackend for Kv {
        async fn read(&self, path: &str, version: Option<u64>) -> Result<KvRead, String> {
            let latest = self
                .0
                .keys()
                .filter(|(p, _)| p == path)
                .map(|(_, v)| *v)
                .max()
                .ok_or_else(|| format!("no secret at {path}"))?;
            let v = version.unwrap_or(latest);
            let data = self
                .0
                .get(&(path.to_string(), v))
                .ok_or_else(|| format!("{path} has no version {v}"))?;
            Ok(KvRead {
                data: data
                    .iter()
                    .map(|(k, v)| (k.clone(), Secret::new(v.as_str())))
                    .collect(),
                version: v,
            })
        }
    }

    fn kv() -> Arc<dyn VaultBackend> {
        let mut m = BTreeMap::new();
        for (v, pw) in [(1, "first-password"), (2, "second-password")] {
            m.insert(
                ("secret/messaging".to_string(), v),
                BTreeMap::from([
                    ("username".to_string(), "taskctl".to_string()),
                    ("password".to_string(), pw.to_string()),
                ]),
            );
        }
        Arc::new(Kv(m))
    }

    #[tokio::test]
    async fn vault_references_resolve_latest_or_pinned_and_register_values() {
        let s = Secrets::new(Some(kv()), Redactor::new());
        let latest = s
            .resolve(&SecretRef::parse("vault:secret/messaging#password").unwrap())
            .await
            .unwrap();
        assert_eq!(latest.value.expose(), "second-password");
        assert_eq!(latest.version, Some(2));
        let pinned = s
            .resolve(&SecretRef::parse("vault:secret/messaging?version=1#password").unwrap())
            .await
            .unwrap();
        assert_eq!(pinned.value.expose(), "first-password");
        assert_eq!(s.redactor().redact("pw first-password"), "pw [redacted]");
        let err = s
            .resolve(&SecretRef::parse("vault:secret/messaging#token").unwrap())
            .await
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("no key `token`") && err.contains("password, username"),
            "{err}"
        );
        assert!(!err.contains("first-password"));
    }

    #[tokio::test]
    async fn without_vault_a_vault_reference_is_a_clear_error() {
        let s =
            Secrets::default().with_env(|n| (n == "A_PASSWORD").then(|| "from-env-1".to_string()));
        let err = s
            .resolve(&SecretRef::parse("vault:secret/x#y").unwrap())
            .await
            .unwrap_err();
        assert!(err.to_string().contains("VAULT_ADDR"), "{err}");
        let env = s
            .resolve(&SecretRef::parse("env:A_PASSWORD").unwrap())
            .await
            .unwrap();
        assert_eq!(env.value.expose(), "from-env-1");
        let err = s
            .resolve(&SecretRef::parse("env:B").unwrap())
            .await
            .unwrap_err();
        assert!(err.to_string().contains("B is not set"), "{err}");
    }

    #[test]
    fn pinning_rewrites_unpinned_references_only() {
        let mut v = serde_json::json!({
            "a": "vault:secret/messaging#password",
            "b": ["vault:secret/other?version=4#k", "env:X", "vault:secret/unknown#k"],
        });
        pin_versions(
            &mut v,
            &BTreeMap::from([("secret/messaging".into(), 3), ("secret/other".into(), 9)]),
        );
        assert_eq!(v["a"], "vault:secret/messaging?version=3#password");
        assert_eq!(v["b"][0], "vault:secret/other?version=4#k");
        assert_eq!(v["b"][2], "vault:secret/unknown#k");
    }
}
