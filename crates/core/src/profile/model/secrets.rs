use crate::profile::value::{Checked, Duration};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Secrets taskctl manages in Vault: where they live, what they are for and
/// how often they rotate.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct Secrets {
    /// Vault address; `VAULT_ADDR` when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vault_address: Option<String>,
    /// KV v2 mount the paths live under.
    #[serde(default = "default_mount")]
    pub mount: String,
    #[serde(default)]
    pub entries: BTreeMap<String, SecretEntry>,
}

fn default_mount() -> String {
    "secret".into()
}

impl Default for Secrets {
    fn default() -> Self {
        Secrets {
            vault_address: None,
            mount: default_mount(),
            entries: BTreeMap::new(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct SecretEntry {
    /// Path in Vault, e.g. `secret/database`.
    pub path: String,
    #[serde(rename = "type")]
    pub kind: SecretKind,
    /// How often taskctl rotates it, e.g. `30d`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rotation: Option<Checked<Duration>>,
    /// The user name stored beside the password (types `rabbitmq`,
    /// `postgres`, `mongodb`); default `taskctl-<profile>-<environment>`,
    /// one user per environment on a shared server.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    /// The names a `tls` certificate is made for (DNS names or IP
    /// addresses, e.g. `[rabbitmq, localhost, 127.0.0.1]`); only for
    /// type `tls`, which needs at least one. Changing the list makes a new
    /// certificate at the next deploy.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hosts: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum SecretKind {
    Mongodb,
    Rabbitmq,
    Postgres,
    Generic,
    /// An Ed25519 key pair (`private_key`, `public_key`): the agents'
    /// task-signing key.
    Ed25519,
    /// A server certificate for `hosts` and the private CA that signed it
    /// (`cert`, `key`, `ca_cert`, `ca_certs`: the bundle clients trust,
    /// this CA and the previous one); rotated every 90 days unless
    /// `rotation` says otherwise. The CA's private key is never kept.
    Tls,
}
