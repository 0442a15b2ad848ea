use crate::profile::value::{Checked, Duration, Quantity, SecretRef};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

use super::HorizontalScaling;

/// The platform services the agents need. Each is `managed` (taskctl runs
/// it) unless `external` names an existing one.
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct Services {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rabbitmq: Option<RabbitMq>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mongodb: Option<MongoDb>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub postgres: Option<Postgres>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prometheus: Option<Prometheus>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grafana: Option<Grafana>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vault: Option<Vault>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logging: Option<Logging>,
}

/// An existing service taskctl uses but does not run.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct External {
    /// Address, e.g. `amqp://rabbitmq.internal:5672/%2f`; no credentials in it.
    pub url: String,
    /// Credentials, as a secret reference. For RabbitMQ: an
    /// administrator's `user:password`, with which taskctl creates the
    /// agents' broker user (`services.rabbitmq.credentials`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials: Option<Checked<SecretRef>>,
    /// RabbitMQ only: the management API (default: port 15672 of the
    /// broker's host, over http).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub management_url: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct Persistence {
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Volume size, e.g. `10Gi`.
    pub size: Checked<Quantity>,
}

fn yes() -> bool {
    true
}

/// The message broker.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct RabbitMq {
    #[serde(default = "yes")]
    pub enabled: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external: Option<External>,
    /// Image of the managed broker.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// The chart the seed deployment used, kept for reference.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chart: Option<String>,
    #[serde(default)]
    pub clustering: Clustering,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub persistence: Option<Persistence>,
    /// Broker plugins to enable.
    #[serde(default = "default_rabbitmq_plugins")]
    pub plugins: Vec<String>,
    /// Credentials of the broker user the agents connect as.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials: Option<Checked<SecretRef>>,
    /// The administrator of a managed broker, `vault:PATH#password` with
    /// `username` beside it (a `secrets.entries` one of type `rabbitmq`, so
    /// taskctl generates it): the broker starts with it as its only user
    /// (no `guest`), and taskctl creates the agents' user with it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admin: Option<Checked<SecretRef>>,
    /// The virtual host the agents use on a managed broker (an external
    /// broker's is the path of its `url`).
    #[serde(default = "default_vhost")]
    pub vhost: String,
    /// Erlang cookie shared by the cluster's nodes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub erlang_cookie: Option<Checked<SecretRef>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autoscaling: Option<HorizontalScaling>,
    /// AMQP over TLS (port 5671) with a certificate from Vault; the plain
    /// listener (5672) is then turned off. A `secrets.entries` one of type
    /// `tls` has all three (`#cert`, `#key`, `#ca_certs`); agents trust it
    /// through `BROKER_CA` (the `#ca_certs` reference) and `amqps://`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<ServerTls>,
}

/// A server's certificate, private key and (optionally) the CAs it trusts
/// for client certificates, each a secret reference to PEM.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct ServerTls {
    /// The server's certificate chain, e.g. `vault:secret/broker-tls#cert`.
    pub cert: Checked<SecretRef>,
    /// Its private key, e.g. `vault:secret/broker-tls#key`.
    pub key: Checked<SecretRef>,
    /// CA certificates a client certificate may chain to; clients without
    /// one are still accepted (they authenticate with a password).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca: Option<Checked<SecretRef>>,
}

fn default_vhost() -> String {
    "/".into()
}

fn default_rabbitmq_plugins() -> Vec<String> {
    vec![
        "rabbitmq_management".into(),
        "rabbitmq_prometheus".into(),
        "rabbitmq_peer_discovery_k8s".into(),
    ]
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct Clustering {
    #[serde(default)]
    pub enabled: bool,
    #[serde(default = "one")]
    pub replicas: u32,
}

impl Default for Clustering {
    fn default() -> Self {
        Clustering {
            enabled: false,
            replicas: 1,
        }
    }
}

fn one() -> u32 {
    1
}

/// The document database.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct MongoDb {
    #[serde(default = "yes")]
    pub enabled: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external: Option<External>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chart: Option<String>,
    #[serde(default)]
    pub architecture: MongoArchitecture,
    #[serde(default = "one")]
    pub replicas: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub persistence: Option<Persistence>,
    /// Key file the replica set members authenticate each other with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keyfile: Option<Checked<SecretRef>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub root_password: Option<Checked<SecretRef>>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum MongoArchitecture {
    #[default]
    Standalone,
    Replicaset,
}

/// The relational database of the task router (second seed).
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct Postgres {
    #[serde(default = "yes")]
    pub enabled: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external: Option<External>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// Major version; 12 or newer.
    pub version: u32,
    pub database: String,
    pub user: String,
    pub password: Checked<SecretRef>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub persistence: Option<Persistence>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backup: Option<Backup>,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct Backup {
    /// Cron schedule, e.g. `0 3 * * *` for daily.
    pub schedule: String,
    pub retention: Checked<Duration>,
}

/// Metrics, alerting rules and Alertmanager.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct Prometheus {
    #[serde(default = "yes")]
    pub enabled: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external: Option<External>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chart: Option<String>,
    /// How long samples are kept, e.g. `15d`.
    pub retention: Checked<Duration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage: Option<Persistence>,
    #[serde(default)]
    pub alertmanager: Alertmanager,
    #[serde(default)]
    pub scrape_configs: Vec<ScrapeConfig>,
    #[serde(default)]
    pub alerting_rules: Vec<AlertRule>,
    #[serde(default)]
    pub recording_rules: Vec<RecordingRule>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct Alertmanager {
    #[serde(default)]
    pub enabled: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replicas: Option<u32>,
    /// Where alerts go: a webhook receiver's URL (Alertmanager's
    /// `webhook_configs`). Without it, a managed Alertmanager has no
    /// receiver and the docker target refuses to start one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook_url: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct ScrapeConfig {
    pub job_name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scrape_interval: Option<Checked<Duration>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics_path: Option<String>,
    #[serde(default)]
    pub static_configs: Vec<StaticConfig>,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct StaticConfig {
    /// `host:port` addresses.
    pub targets: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct AlertRule {
    pub name: String,
    /// PromQL expression; the alert fires while it returns samples.
    pub expr: String,
    /// How long the expression must hold before the alert fires.
    #[serde(rename = "for", default, skip_serializing_if = "Option::is_none")]
    pub for_: Option<Checked<Duration>>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct RecordingRule {
    /// Name of the recorded series, e.g. `task_error_rate`.
    pub record: String,
    pub expr: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct Grafana {
    #[serde(default = "yes")]
    pub enabled: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    #[serde(default)]
    pub dashboards: Vec<Dashboard>,
    /// The `admin` user's password, as a secret reference.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admin_password: Option<Checked<SecretRef>>,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct Dashboard {
    pub name: String,
    /// Dashboard JSON, relative to the templates directory.
    pub file: String,
}

/// The secret store.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct Vault {
    #[serde(default = "yes")]
    pub enabled: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external: Option<External>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chart: Option<String>,
    #[serde(default)]
    pub ha: VaultHa,
    /// A raft cluster taskctl initializes (Shamir keys) and unseals on
    /// every deploy: the nodes' API addresses, the first initialized.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<VaultCluster>,
}

/// The Vault (OpenBao) raft cluster taskctl initializes and unseals.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct VaultCluster {
    /// API address of every node (`https://…`; `http://` on loopback only).
    /// Empty on target `kubernetes`: the nodes are the pods of the Vault
    /// StatefulSet taskctl deploys (`vault-0` … `vault-N`), reached through
    /// port-forwards of the API server.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nodes: Vec<String>,
    /// Unseal key shares made at initialization.
    #[serde(default = "default_key_shares")]
    pub key_shares: u8,
    /// Shares needed to unseal.
    #[serde(default = "default_key_threshold")]
    pub key_threshold: u8,
    /// Where the unseal keys and the initial root token are written at
    /// initialization (mode 0600, never overwritten), and read from to
    /// unseal a node that restarted. Keep it offline once the cluster runs.
    pub keys_file: String,
    /// OpenPGP public key files (`gpg --export KEY`, armored or binary),
    /// one per share, for a cluster with an auto-unseal seal: its recovery
    /// keys are encrypted to them at initialization, so `keys_file` holds
    /// only ciphertext and share N is readable only by the holder of key N
    /// (`base64 -d | gpg -d`). Refused for a Shamir seal, whose unseal keys
    /// taskctl needs in clear.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub recovery_pgp_keys: Vec<String>,
    /// Where taskctl writes its AppRole credentials after initialization
    /// (mode 0600), before it revokes the root token; default:
    /// `vault-approle.json` beside `keys_file`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approle_file: Option<String>,
    /// The Kubernetes API server Vault checks the agents' service-account
    /// tokens with: when set, the setup also enables Kubernetes auth with a
    /// role per agent (its service account, a policy reading only the
    /// paths it references).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kubernetes_host: Option<String>,
    /// A PEM file with the API server's CA, when Vault runs outside the
    /// cluster (inside it, its pod's own CA and service account are used).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kubernetes_ca_file: Option<String>,
}

impl VaultCluster {
    /// [`Self::approle_file`], or its default beside the keys file.
    pub fn approle_path(&self) -> std::path::PathBuf {
        match &self.approle_file {
            Some(p) => p.into(),
            None => std::path::Path::new(&self.keys_file).with_file_name("vault-approle.json"),
        }
    }
}

fn default_key_shares() -> u8 {
    5
}

fn default_key_threshold() -> u8 {
    3
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct VaultHa {
    #[serde(default)]
    pub enabled: bool,
    #[serde(default = "one")]
    pub replicas: u32,
}

impl Default for VaultHa {
    fn default() -> Self {
        VaultHa {
            enabled: false,
            replicas: 1,
        }
    }
}

/// Log shipping.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct Logging {
    pub fluentd: Fluentd,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct Fluentd {
    #[serde(default = "yes")]
    pub enabled: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chart: Option<String>,
    #[serde(default)]
    pub inputs: Vec<FluentInput>,
    #[serde(default)]
    pub filters: Vec<FluentFilter>,
    #[serde(default)]
    pub outputs: Vec<FluentOutput>,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct FluentInput {
    #[serde(rename = "type")]
    pub kind: FluentInputKind,
    pub port: u16,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum FluentInputKind {
    Forward,
    Http,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct FluentFilter {
    #[serde(rename = "type")]
    pub kind: FluentFilterKind,
    pub format: FluentFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum FluentFilterKind {
    Parser,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum FluentFormat {
    Json,
    Regexp,
    None,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct FluentOutput {
    #[serde(rename = "type")]
    pub kind: FluentOutputKind,
    pub host: String,
    pub port: u16,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum FluentOutputKind {
    Elasticsearch,
    Stdout,
}
