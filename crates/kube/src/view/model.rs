//! What a template can read: the view's types and the names and pinned
//! images every template shares. Built from the profile by [`super::build`].

use serde::Serialize;
use std::collections::BTreeMap;

/// Namespaces of the platform services.
pub const MESSAGING: &str = "messaging";
pub const DATABASE: &str = "database";
pub const MONITORING: &str = "monitoring";
pub const VAULT: &str = taskctl_core::profile::IN_CLUSTER_VAULT_ACCOUNT.0;
pub const LOGGING: &str = "logging";

/// Pinned images used when the profile names none.
pub(super) const RABBITMQ_IMAGE: &str = "rabbitmq:3.13.7-management";
pub(super) const MONGODB_IMAGE: &str = "mongo:7.0.14";
/// The official image's major version follows the profile's `version`.
pub(super) const POSTGRES_IMAGE_REPOSITORY: &str = "postgres";
pub(super) const PROMETHEUS_IMAGE: &str = "prom/prometheus:v2.54.1";
pub(super) const ALERTMANAGER_IMAGE: &str = "prom/alertmanager:v0.27.0";
pub(super) const GRAFANA_IMAGE: &str = "grafana/grafana:11.2.2";
pub(super) const VAULT_IMAGE: &str = "hashicorp/vault:1.17.6";
pub(super) const FLUENTD_IMAGE: &str =
    "fluent/fluentd-kubernetes-daemonset:v1.17.1-debian-elasticsearch8-1.0";
pub(super) const DEVICE_PLUGIN_IMAGE: &str = "nvcr.io/nvidia/k8s-device-plugin:v0.16.2";

/// Everything a template can read.
#[derive(Debug, Clone, Serialize)]
pub struct View {
    pub release: Release,
    /// Namespaces taskctl creates, in order.
    pub namespaces: Vec<NamespaceView>,
    pub storage_class: Option<StorageClassView>,
    /// Per-container ceiling and defaults, in every namespace taskctl creates.
    pub limit_range: LimitRangeView,
    /// The profile's quota shares resolved against the worker nodes' capacity.
    pub quota: Option<QuotaView>,
    pub rabbitmq: Option<RabbitMqView>,
    pub mongodb: Option<MongoDbView>,
    pub postgres: Option<PostgresView>,
    pub prometheus: Option<PrometheusView>,
    pub grafana: Option<GrafanaView>,
    pub vault: Option<VaultView>,
    pub fluentd: Option<FluentdView>,
    pub agents: Vec<AgentView>,
    /// The NVIDIA device plugin, when the cluster has GPU node groups.
    pub gpu: Option<GpuView>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Release {
    /// `metadata.name` of the profile.
    pub name: String,
    /// The environment in force (development, staging, production).
    pub environment: String,
    /// Value of the `taskctl.dev/environment` label: `<name>.<env>`.
    /// A label value cannot hold `/`, so the annotation of the same name
    /// carries the `<name>/<env>` form.
    pub environment_label: String,
    pub environment_annotation: String,
    pub log_level: String,
    /// Extra labels from `metadata.labels`.
    pub labels: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct NamespaceView {
    pub name: String,
    /// What lives there, for the `app.kubernetes.io/name` label.
    pub component: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct StorageClassView {
    pub name: String,
    pub provisioner: String,
    pub volume_type: String,
    pub default: bool,
    pub encrypted: bool,
    pub reclaim_policy: String,
    pub volume_binding_mode: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct LimitRangeView {
    pub max_cpu: String,
    pub max_memory: String,
    pub default_cpu: String,
    pub default_memory: String,
    pub default_request_cpu: String,
    pub default_request_memory: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct QuotaView {
    /// Namespaces the quota is put in: those of the agents.
    pub namespaces: Vec<String>,
    pub requests_cpu: String,
    pub limits_cpu: String,
    pub requests_memory: String,
    pub limits_memory: String,
    pub requests_ephemeral_storage: Option<String>,
    pub limits_ephemeral_storage: Option<String>,
    /// How the figures were reached, for an annotation.
    pub basis: String,
}

/// A key of a Kubernetes Secret, and the profile reference it is made from.
#[derive(Debug, Clone, Serialize)]
pub struct SecretKey {
    pub secret: String,
    pub key: String,
    /// `vault:PATH#KEY` or `env:NAME`: a reference, never a value.
    pub source: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct HpaView {
    pub min_replicas: u32,
    pub max_replicas: u32,
    pub metrics: Vec<HpaMetric>,
}

#[derive(Debug, Clone, Serialize)]
pub struct HpaMetric {
    pub resource: String,
    pub average_utilization: u32,
}

#[derive(Debug, Clone, Serialize)]
pub struct VolumeView {
    pub size: String,
    pub storage_class: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct RabbitMqView {
    pub namespace: String,
    pub image: String,
    pub replicas: u32,
    pub clustered: bool,
    pub volume: Option<VolumeView>,
    /// The `enabled_plugins` file: `[a,b,c].`
    pub enabled_plugins: String,
    pub plugins: Vec<String>,
    pub default_user: String,
    pub credentials: Option<SecretKey>,
    pub erlang_cookie: Option<SecretKey>,
    pub autoscaling: Option<HpaView>,
    /// Namespaces whose pods may connect to AMQP.
    pub client_namespaces: Vec<String>,
    pub secret_sources: String,
    /// `secret/key` pairs whose new version must not restart the broker
    /// (its own password, its Erlang cookie: `taskctl.dev/secret-no-restart`).
    pub no_restart: String,
    /// AMQP over TLS with these Secret keys (PEM), mounted as files.
    pub tls: Option<TlsView>,
    /// 5671 with TLS (the only AMQP listener then), 5672 without.
    pub amqp_port: u16,
}

/// A server's certificate, key and client CAs, as Secret keys.
#[derive(Debug, Clone, Serialize)]
pub struct TlsView {
    pub cert: SecretKey,
    pub key: SecretKey,
    pub ca: Option<SecretKey>,
}

#[derive(Debug, Clone, Serialize)]
pub struct MongoDbView {
    pub namespace: String,
    pub image: String,
    pub replicas: u32,
    pub replica_set: Option<ReplicaSetView>,
    pub volume: Option<VolumeView>,
    pub keyfile: Option<SecretKey>,
    pub root_password: Option<SecretKey>,
    pub client_namespaces: Vec<String>,
    pub secret_sources: String,
}

/// Seed `001`'s database: one PostgreSQL server with its own volume, its
/// user's password from a Secret taskctl makes from Vault.
#[derive(Debug, Clone, Serialize)]
pub struct PostgresView {
    pub namespace: String,
    pub image: String,
    pub database: String,
    pub user: String,
    pub password: Option<SecretKey>,
    pub volume: Option<VolumeView>,
    pub client_namespaces: Vec<String>,
    pub secret_sources: String,
    /// The password is read at first boot only (`initdb`): a new version
    /// does not restart the server (`taskctl.dev/secret-no-restart`).
    pub no_restart: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct ReplicaSetView {
    pub name: String,
    /// `host:port` of each member, in order.
    pub members: Vec<String>,
    /// The `rs.initiate` document, as JSON.
    pub config: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct PrometheusView {
    pub namespace: String,
    pub image: String,
    pub retention: String,
    pub volume: Option<VolumeView>,
    pub scrape_configs: Vec<ScrapeView>,
    pub recording_rules: Vec<RecordingView>,
    pub alerting_rules: Vec<AlertView>,
    pub alertmanager: Option<AlertmanagerView>,
    /// DNS search domains, so the profile's short targets (`task-executor:9090`)
    /// resolve to the agents' Services in their own namespaces.
    pub dns_searches: Vec<String>,
    /// Agent namespaces and metrics ports Prometheus may reach.
    pub agent_targets: Vec<PortInNamespace>,
    /// Each RabbitMQ node's `rabbitmq_prometheus` endpoint.
    pub rabbitmq_targets: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct PortInNamespace {
    /// The agent (the pods' `app.kubernetes.io/name`).
    pub name: String,
    pub namespace: String,
    pub port: u16,
    /// Prometheus' job for the agent's pods: the profile's job that named
    /// the agent's Service, else `taskctl-agent-pods/NAME`.
    pub job: String,
    /// That profile job's interval and path, if it set them.
    pub scrape_interval: Option<String>,
    pub metrics_path: Option<String>,
    /// The relabel `keep` regex for them: `NAME;PORT` (agent names are
    /// DNS labels, so they hold no regex metacharacter but `-`).
    pub keep: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct ScrapeView {
    pub job_name: String,
    pub scrape_interval: Option<String>,
    pub metrics_path: Option<String>,
    pub targets: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct RecordingView {
    pub record: String,
    pub expr: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct AlertView {
    pub name: String,
    pub expr: String,
    pub for_: Option<String>,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct AlertmanagerView {
    pub image: String,
    pub replicas: u32,
}

#[derive(Debug, Clone, Serialize)]
pub struct GrafanaView {
    pub namespace: String,
    pub image: String,
    pub dashboards: Vec<DashboardView>,
    /// The dashboards' data source: the in-cluster Prometheus or the
    /// profile's external one.
    pub prometheus_url: String,
    pub admin_password: Option<SecretKey>,
    pub secret_sources: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct DashboardView {
    pub name: String,
    pub file: String,
    /// ConfigMap key: the file's base name.
    pub key: String,
    /// The dashboard JSON as shipped in `templates/`.
    pub content: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct VaultView {
    pub namespace: String,
    pub image: String,
    pub replicas: u32,
    pub ha: bool,
    /// Raft peers' API addresses for `retry_join`.
    pub peers: Vec<String>,
    /// Raft's data volume (the profile has no size for it: 10Gi).
    pub volume: VolumeView,
    /// On target `aws`: auto-unseal through the KMS key the infrastructure
    /// makes (its pods assume the IAM role that may use it, through their
    /// service account's `eks.amazonaws.com/role-arn`).
    pub seal: Option<AwsKmsSealView>,
}

#[derive(Debug, Clone, Serialize)]
pub struct AwsKmsSealView {
    pub region: String,
    /// `alias/…`: the key by its alias, which survives a key replacement.
    pub key: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct FluentdView {
    pub namespace: String,
    pub image: String,
    pub inputs: Vec<FluentInputView>,
    pub filters: Vec<FluentFilterView>,
    pub outputs: Vec<FluentOutputView>,
    pub forward_port: Option<u16>,
}

#[derive(Debug, Clone, Serialize)]
pub struct FluentInputView {
    pub kind: String,
    pub port: u16,
}

#[derive(Debug, Clone, Serialize)]
pub struct FluentFilterView {
    pub kind: String,
    pub format: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct FluentOutputView {
    pub kind: String,
    pub host: String,
    pub port: u16,
    pub elasticsearch: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct AgentView {
    pub name: String,
    pub namespace: String,
    pub image: String,
    pub replicas: u32,
    pub requests: ResourcesView,
    pub limits: ResourcesView,
    pub gpus: Option<u32>,
    pub env: Vec<EnvView>,
    pub config_map: Option<ConfigMapView>,
    pub ports: Vec<PortView>,
    pub service: Option<ServiceView>,
    /// The port named `metrics`, scraped by Prometheus.
    pub metrics_port: Option<u16>,
    pub liveness: Option<ProbeView>,
    pub readiness: Option<ProbeView>,
    pub hpa: Option<HpaView>,
    pub secret_sources: String,
    /// Where the agent connects to, for its egress NetworkPolicy.
    pub egress: Vec<EgressView>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ResourcesView {
    pub cpu: String,
    pub memory: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct EnvView {
    pub name: String,
    pub value: Option<String>,
    pub config_map: Option<KeyRefView>,
    pub secret: Option<SecretKey>,
}

#[derive(Debug, Clone, Serialize)]
pub struct KeyRefView {
    pub name: String,
    pub key: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct ConfigMapView {
    pub name: String,
    pub data: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct PortView {
    pub name: String,
    pub port: u16,
}

#[derive(Debug, Clone, Serialize)]
pub struct ServiceView {
    pub name: String,
    pub kind: String,
    pub ports: Vec<ServicePortView>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ServicePortView {
    pub name: String,
    pub port: u16,
    pub target_port: u16,
}

#[derive(Debug, Clone, Serialize)]
pub struct ProbeView {
    pub path: String,
    pub port: u16,
    pub initial_delay_seconds: u32,
    pub period_seconds: u32,
    pub timeout_seconds: u32,
    pub failure_threshold: u32,
}

/// One egress destination: a namespace of the platform, or anywhere (an
/// external service) when `namespace` is null.
#[derive(Debug, Clone, Serialize)]
pub struct EgressView {
    pub namespace: Option<String>,
    pub port: u16,
}

#[derive(Debug, Clone, Serialize)]
pub struct GpuView {
    pub device_plugin_image: String,
    /// Names of the GPU node groups (`taskctl.dev/node-group` label values).
    pub node_groups: Vec<String>,
    /// The one GPU node group, when there is exactly one: pods then use a
    /// plain node selector; with several, node affinity over all of them.
    pub node_group: Option<String>,
}
