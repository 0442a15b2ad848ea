use crate::profile::value::{Checked, Quantity, SecretRef};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// A workload of the Task Execution Layer: a task-executor agent (under
/// `agents`) or one of the user's own services (under `components`, such as
/// seed 001's task router), deployed with the same rolling update, gates
/// and rollback.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct Agent {
    /// Name of the Deployment (Kubernetes) or container prefix (Docker).
    pub name: String,
    /// Image reference, e.g. `task-executor:1.0.0`.
    pub image: String,
    /// How taskctl builds the image when the target cannot pull it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub build: Option<ImageBuild>,
    #[serde(default = "default_namespace")]
    pub namespace: String,
    pub replicas: u32,
    pub resources: Resources,
    #[serde(default)]
    pub env: Vec<EnvVar>,
    /// ConfigMap created for the agent, referenced by `env[].config_map`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_map: Option<ConfigMapSpec>,
    #[serde(default)]
    pub ports: Vec<ContainerPort>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<ServiceSpec>,
    #[serde(default)]
    pub probes: Probes,
    /// GPUs each replica requests (`nvidia.com/gpu`); runs on GPU nodes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpus: Option<u32>,
    #[serde(default)]
    pub restart: RestartPolicy,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scaling: Option<AgentScaling>,
    /// What starts, running and healthy, before this workload: names of
    /// `components`, `agents` or `services` (`postgres`, `rabbitmq`,
    /// `vault`, ...), as compose's `depends_on` with `service_healthy`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub depends_on: Vec<String>,
    /// Components only: the container's command, in place of the image's.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub command: Vec<String>,
    /// Components only: `UID[:GID]` the container runs as, numeric and never
    /// 0 (secret files are given to this user). Default `65534:65534`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
}

/// The user a component runs as when it names none: `nobody`.
pub const COMPONENT_USER: &str = "65534:65534";

impl ImageBuild {
    /// `build: {}`: taskctl packs the static agent binary itself (on
    /// `scratch` for docker, into the OCI image it pushes to ECR for aws),
    /// rather than building a Dockerfile.
    pub fn is_static_agent(&self) -> bool {
        self.dockerfile.is_none() && self.base_image.is_none()
    }
}

impl Agent {
    /// Whether taskctl packs this workload's image from the static agent
    /// binary (`build: {}`).
    pub fn packs_static_agent(&self) -> bool {
        self.build.as_ref().is_some_and(ImageBuild::is_static_agent)
    }

    /// `(uid, gid)` of [`Agent::user`] (or [`COMPONENT_USER`]); `None` when
    /// it is not `UID[:GID]` with numbers, or names root.
    pub fn numeric_user(&self) -> Option<(u32, u32)> {
        let raw = self.user.as_deref().unwrap_or(COMPONENT_USER);
        let (uid, gid) = match raw.split_once(':') {
            Some((u, g)) => (u, g),
            None => (raw, raw),
        };
        let uid: u32 = uid.parse().ok()?;
        let gid: u32 = gid.parse().ok()?;
        (uid != 0 && gid != 0).then_some((uid, gid))
    }
}

fn default_namespace() -> String {
    "agent-system".into()
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct ImageBuild {
    /// Base image for a Dockerfile build; without it the static agent binary
    /// is packed on `scratch`, which needs no pull.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_image: Option<String>,
    /// Dockerfile to build from, relative to the profile.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dockerfile: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct Resources {
    pub requests: ResourceList,
    pub limits: ResourceList,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct ResourceList {
    /// CPU cores, e.g. `2` or `500m`.
    pub cpu: Checked<Quantity>,
    /// Memory, e.g. `4Gi`.
    pub memory: Checked<Quantity>,
}

/// An environment variable: exactly one of `value`, `config_map`, `secret`.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct EnvVar {
    pub name: String,
    /// A literal value; never a secret (use `secret`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_map: Option<KeyRef>,
    /// A secret reference: `vault:PATH#KEY` or `env:NAME`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<Checked<SecretRef>>,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct KeyRef {
    pub name: String,
    pub key: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct ConfigMapSpec {
    pub name: String,
    #[serde(default)]
    pub data: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct ContainerPort {
    pub name: String,
    pub port: u16,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct ServiceSpec {
    pub name: String,
    #[serde(default, rename = "type")]
    pub kind: ServiceType,
    pub ports: Vec<ServicePort>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum ServiceType {
    #[default]
    ClusterIP,
    NodePort,
    LoadBalancer,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct ServicePort {
    pub port: u16,
    pub target_port: u16,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct Probes {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub liveness: Option<Probe>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub readiness: Option<Probe>,
}

/// An HTTP GET probe.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct Probe {
    pub path: String,
    pub port: u16,
    #[serde(default)]
    pub initial_delay_seconds: u32,
    #[serde(default = "ten")]
    pub period_seconds: u32,
    #[serde(default = "one")]
    pub timeout_seconds: u32,
    #[serde(default = "three")]
    pub failure_threshold: u32,
}

fn ten() -> u32 {
    10
}
fn one() -> u32 {
    1
}
fn three() -> u32 {
    3
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum RestartPolicy {
    #[default]
    UnlessStopped,
    Always,
    OnFailure,
    No,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct AgentScaling {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub horizontal: Option<HorizontalScaling>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vertical: Option<VerticalScaling>,
}

/// A HorizontalPodAutoscaler.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct HorizontalScaling {
    pub min_replicas: u32,
    pub max_replicas: u32,
    pub metrics: Vec<ScalingMetric>,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct ScalingMetric {
    pub resource: ScaledResource,
    /// Target average utilization, 1 to 100 (%).
    pub average_utilization: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ScaledResource {
    Cpu,
    Memory,
}

/// How far the vertical autoscaler may raise requests and limits.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct VerticalScaling {
    pub cpu: VerticalStep,
    pub memory: VerticalStep,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct VerticalStep {
    pub increment: Checked<Quantity>,
    pub max: Checked<Quantity>,
}
