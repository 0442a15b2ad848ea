//! KV version 2: read (latest or pinned), metadata, check-and-set writes.

use crate::VaultError;
use crate::client::{Failure, Vault, classify};
use std::collections::BTreeMap;
use std::time::SystemTime;
use taskctl_secret::Secret;
use vaultrs::api::kv2::requests::{ReadSecretRequest, SetSecretRequest, SetSecretRequestOptions};
use vaultrs::error::ClientError;

/// One version of a KV v2 secret.
#[derive(Clone, Debug)]
pub struct KvSecret {
    /// `mount/path`, for messages.
    pub path: String,
    pub data: BTreeMap<String, Secret>,
    pub version: u64,
    pub created: SystemTime,
}

impl KvSecret {
    /// The value under `key`, or [`VaultError::KeyMissing`] naming the path
    /// and the keys the secret has.
    pub fn get(&self, key: &str) -> Result<&Secret, VaultError> {
        self.data.get(key).ok_or_else(|| VaultError::KeyMissing {
            path: self.path.clone(),
            key: key.to_string(),
            keys: self.data.keys().cloned().collect(),
        })
    }
}

/// A KV v2 secret's metadata.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KvMetadata {
    pub current_version: u64,
    /// (version, created, destroyed or deleted), oldest first.
    pub versions: Vec<(u64, SystemTime, bool)>,
    pub custom: BTreeMap<String, String>,
}

impl KvMetadata {
    /// When `version` was written.
    pub fn created(&self, version: u64) -> Option<SystemTime> {
        self.versions.iter().find(|v| v.0 == version).map(|v| v.1)
    }

    /// Whether `version` was deleted or destroyed.
    pub fn gone(&self, version: u64) -> bool {
        self.versions
            .iter()
            .find(|v| v.0 == version)
            .is_some_and(|v| v.2)
    }
}

pub(crate) fn full_path(mount: &str, path: &str) -> String {
    format!("{}/{}", mount.trim_matches('/'), path.trim_matches('/'))
}

fn check_names(mount: &str, path: &str) -> Result<(), VaultError> {
    let bad = |s: &str| s.trim_matches('/').is_empty() || s.split('/').any(|seg| seg == "..");
    if bad(mount) || bad(path) {
        return Err(VaultError::Config(format!(
            "`{}` is not a KV v2 mount and path (both must be non-empty, without `..`)",
            full_path(mount, path)
        )));
    }
    Ok(())
}

/// Vault's RFC 3339 timestamps ("2024-05-01T10:00:00.123456789Z").
pub(crate) fn parse_time(s: &str, what: &str) -> Result<SystemTime, VaultError> {
    humantime::parse_rfc3339_weak(s).map_err(|e| VaultError::Other {
        what: what.to_string(),
        cause: format!("unexpected timestamp `{s}` ({e})"),
    })
}

fn kv_error(v: &Vault, path: &str, op: &str, e: ClientError) -> VaultError {
    let path = path.to_string();
    match classify(e) {
        Failure::Transport(cause) => VaultError::Unreachable {
            addr: v.addr().to_string(),
            cause,
        },
        Failure::Status(404, _) => VaultError::NotFound { path },
        Failure::Status(403, _) => VaultError::PermissionDenied { path },
        Failure::Status(503, _) => VaultError::Sealed {
            addr: v.addr().to_string(),
        },
        Failure::Status(400, msg) if msg.contains("check-and-set") => {
            VaultError::CasConflict { path }
        }
        Failure::Status(code, msg) => VaultError::Other {
            what: format!("{op} {path} at {}", v.addr()),
            cause: format!("HTTP {code}: {msg}"),
        },
        Failure::Other(msg) => VaultError::Other {
            what: format!("{op} {path} at {}", v.addr()),
            cause: msg,
        },
    }
}

impl Vault {
    /// Reads version `version` (None: the latest) of `mount/path`.
    pub async fn read(
        &self,
        mount: &str,
        path: &str,
        version: Option<u64>,
    ) -> Result<KvSecret, VaultError> {
        check_names(mount, path)?;
        let full = full_path(mount, path);
        let endpoint = ReadSecretRequest::builder()
            .mount(mount.trim_matches('/'))
            .path(path.trim_matches('/'))
            .version(version)
            .build()
            .map_err(|e| VaultError::Other {
                what: format!("reading {full}"),
                cause: e.to_string(),
            })?;
        let res = vaultrs::api::exec_with_result(&self.inner.client, endpoint)
            .await
            .map_err(|e| kv_error(self, &full, "reading", e))?;
        let serde_json::Value::Object(map) = res.data else {
            // A deleted or destroyed version answers with no data.
            return Err(VaultError::NotFound { path: full });
        };
        let data = map
            .into_iter()
            .map(|(k, v)| {
                let s = match v {
                    serde_json::Value::String(s) => s,
                    other => other.to_string(),
                };
                (k, Secret::new(s))
            })
            .collect();
        Ok(KvSecret {
            created: parse_time(&res.metadata.created_time, &format!("reading {full}"))?,
            version: res.metadata.version,
            data,
            path: full,
        })
    }

    /// The metadata of `mount/path`; None when nothing was ever written there.
    pub async fn metadata(
        &self,
        mount: &str,
        path: &str,
    ) -> Result<Option<KvMetadata>, VaultError> {
        check_names(mount, path)?;
        let full = full_path(mount, path);
        let res = match vaultrs::kv2::read_metadata(
            &self.inner.client,
            mount.trim_matches('/'),
            path.trim_matches('/'),
        )
        .await
        {
            Ok(r) => r,
            Err(e) => {
                return match kv_error(self, &full, "reading the metadata of", e) {
                    VaultError::NotFound { .. } => Ok(None),
                    other => Err(other),
                };
            }
        };
        let what = format!("reading the metadata of {full}");
        let now = SystemTime::now();
        let mut versions = Vec::with_capacity(res.versions.len());
        for (n, m) in &res.versions {
            let n: u64 = n.parse().map_err(|_| VaultError::Other {
                what: what.clone(),
                cause: format!("unexpected version number `{n}`"),
            })?;
            let created = parse_time(&m.created_time, &what)?;
            let deleted =
                !m.deletion_time.is_empty() && parse_time(&m.deletion_time, &what)? <= now;
            versions.push((n, created, m.destroyed || deleted));
        }
        versions.sort_by_key(|v| v.0);
        Ok(Some(KvMetadata {
            current_version: res.current_version,
            versions,
            custom: res
                .custom_metadata
                .unwrap_or_default()
                .into_iter()
                .collect(),
        }))
    }

    /// Writes a new version of `mount/path` and returns its number. With
    /// `cas`, only if the current version is that one (`Some(0)`: only if
    /// nothing is there); otherwise [`VaultError::CasConflict`].
    pub async fn write(
        &self,
        mount: &str,
        path: &str,
        data: &BTreeMap<String, Secret>,
        cas: Option<u64>,
    ) -> Result<u64, VaultError> {
        self.write_meta(mount, path, data, cas)
            .await
            .map(|(v, _)| v)
    }

    /// As [`write`](Self::write), also returning the new version's creation time.
    pub async fn write_meta(
        &self,
        mount: &str,
        path: &str,
        data: &BTreeMap<String, Secret>,
        cas: Option<u64>,
    ) -> Result<(u64, SystemTime), VaultError> {
        check_names(mount, path)?;
        let full = full_path(mount, path);
        let body: serde_json::Map<String, serde_json::Value> = data
            .iter()
            .map(|(k, v)| (k.clone(), serde_json::Value::String(v.expose().to_string())))
            .collect();
        let mut b = SetSecretRequest::builder();
        b.mount(mount.trim_matches('/'))
            .path(path.trim_matches('/'))
            .data(serde_json::Value::Object(body));
        if let Some(cas) = cas {
            let cas = u32::try_from(cas).map_err(|_| {
                VaultError::Config(format!("check-and-set version {cas} is out of range"))
            })?;
            b.options(SetSecretRequestOptions { cas });
        }
        let endpoint = b.build().map_err(|e| VaultError::Other {
            what: format!("writing {full}"),
            cause: e.to_string(),
        })?;
        let res = vaultrs::api::exec_with_result(&self.inner.client, endpoint)
            .await
            .map_err(|e| kv_error(self, &full, "writing", e))?;
        Ok((
            res.version,
            parse_time(&res.created_time, &format!("writing {full}"))?,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    #[test]
    fn timestamps() {
        let t = parse_time("2024-05-01T10:00:00.123456789Z", "t").unwrap();
        assert_eq!(
            t.duration_since(UNIX_EPOCH).unwrap(),
            Duration::new(1_714_557_600, 123_456_789)
        );
        let t = parse_time("2024-05-01T10:00:00Z", "t").unwrap();
        assert_eq!(
            t.duration_since(UNIX_EPOCH).unwrap(),
            Duration::from_secs(1_714_557_600)
        );
        assert!(parse_time("yesterday", "t").is_err());
    }

    #[test]
    fn key_missing_names_path_and_keys_not_values() {
        let s = KvSecret {
            path: "secret/app".into(),
            data: [("password".to_string(), Secret::new("hunter2-very-secret"))].into(),
            version: 3,
            created: UNIX_EPOCH,
        };
        assert_eq!(s.get("password").unwrap().expose(), "hunter2-very-secret");
        let msg = s.get("username").unwrap_err().to_string();
        assert!(
            msg.contains("secret/app") && msg.contains("username") && msg.contains("password"),
            "{msg}"
        );
        assert!(!msg.contains("hunter2"), "{msg}");
        assert!(!format!("{s:?}").contains("hunter2"));
    }

    #[test]
    fn bad_names() {
        assert!(check_names("secret", "a/b").is_ok());
        assert!(check_names("", "a").is_err());
        assert!(check_names("secret", "/").is_err());
        assert!(check_names("secret", "a/../b").is_err());
    }
}
