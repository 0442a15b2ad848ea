//! One engine step per engine object: the network, service volumes,
//! managed services, each agent's image, each agent replica, and a final
//! step that removes what the profile no longer has (and, on destroy,
//! everything labelled with the environment).

use async_trait::async_trait;
use bollard::Docker;
use bollard::models::{
    ContainerCreateBody, EndpointSettings, HealthConfig, HostConfig, Mount, MountTypeEnum,
    NetworkCreateRequest, NetworkingConfig, PortBinding, RestartPolicy as DockerRestart,
    RestartPolicyNameEnum, VolumeCreateOptions,
};
use bollard::query_parameters::{CreateContainerOptions, RenameContainerOptions};
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use taskctl_core::engine::{
    Change, ErrorKind, FieldDiff, Outputs, Step, StepContext, StepError, StepId, StepPlan,
};
use taskctl_core::profile::Profile;
use taskctl_core::profile::model::Agent;

use crate::engine::{self, force_remove, inspect, is_not_found, step_error};
use crate::image;
use crate::rollout::Rollout;
use crate::secret_files;
use crate::spec::{
    self, EnvSource, ReplicaSpec, SpecSummary, base_labels, label, next_name, replica_name,
};

/// What every step shares.
pub struct Shared {
    pub docker: Docker,
    pub profile: Profile,
    /// `--purge`: destroy removes volumes too.
    pub purge: bool,
    /// Resolves the profile's secret references (Vault, environment).
    pub secrets: Arc<taskctl_core::secrets::Secrets>,
}

fn invalid(message: impl Into<String>) -> StepError {
    StepError::new(ErrorKind::Invalid, message)
}

fn hash_map(m: BTreeMap<String, String>) -> HashMap<String, String> {
    m.into_iter().collect()
}

fn registry(profile: &Profile) -> Option<String> {
    profile
        .target
        .docker
        .as_ref()
        .and_then(|d| d.registry.clone())
}

/// The image's id on the engine, pulling it only when a registry is
/// configured; missing otherwise is a clear error naming the image.
async fn ensure_image(shared: &Shared, image: &str, what: &str) -> Result<String, StepError> {
    if let Some(id) = image::local_id(&shared.docker, image).await? {
        return Ok(id);
    }
    match registry(&shared.profile) {
        Some(registry) => {
            let reference = image::pull(&shared.docker, &registry, image).await?;
            image::local_id(&shared.docker, &reference)
                .await?
                .ok_or_else(|| image::missing_image(image, what))
        }
        None => Err(image::missing_image(image, what)),
    }
}

// ---------------------------------------------------------------- network

pub struct Network {
    pub id: StepId,
    pub shared: Arc<Shared>,
}

impl Network {
    fn name(&self) -> String {
        self.shared
            .profile
            .target
            .docker
            .as_ref()
            .map(|d| d.network.clone())
            .unwrap_or_else(|| "taskctl".into())
    }
}

#[async_trait]
impl Step for Network {
    fn id(&self) -> &StepId {
        &self.id
    }
    fn kind(&self) -> &str {
        "docker-network"
    }
    fn depends_on(&self) -> Vec<StepId> {
        Vec::new()
    }

    async fn plan(&self, _ctx: &StepContext) -> Result<StepPlan, StepError> {
        let name = self.name();
        let outputs: Outputs = [("network".to_string(), name.clone())].into();
        match self
            .shared
            .docker
            .inspect_network(
                &name,
                None::<bollard::query_parameters::InspectNetworkOptions>,
            )
            .await
        {
            Ok(n) => {
                let env = spec::environment_label(&self.shared.profile);
                let labels = n.labels.unwrap_or_default();
                if labels.get(label::ENVIRONMENT) != Some(&env) {
                    return Err(invalid(format!(
                        "network {name} exists but is not this environment's ({env}); pick another target.docker.network or remove it"
                    )));
                }
                Ok(StepPlan {
                    change: Change::none(),
                    outputs,
                })
            }
            Err(e) if is_not_found(&e) => Ok(StepPlan {
                change: Change::create("not found"),
                outputs,
            }),
            Err(e) => Err(step_error(&format!("inspecting network {name}"), e)),
        }
    }

    async fn apply(&self, ctx: &StepContext, plan: &StepPlan) -> Result<Outputs, StepError> {
        if plan.change.action.is_change() {
            let again = self.plan(ctx).await?;
            if again.change.action.is_change() {
                let name = self.name();
                self.shared
                    .docker
                    .create_network(NetworkCreateRequest {
                        name: name.clone(),
                        driver: Some("bridge".into()),
                        labels: Some(hash_map(base_labels(&self.shared.profile, "network"))),
                        ..Default::default()
                    })
                    .await
                    .map_err(|e| step_error(&format!("creating network {name}"), e))?;
            }
        }
        Ok(plan.outputs.clone())
    }

    async fn destroy(&self, _ctx: &StepContext, _plan: &StepPlan) -> Result<(), StepError> {
        let name = self.name();
        match self.shared.docker.remove_network(&name).await {
            Ok(()) => Ok(()),
            Err(e) if is_not_found(&e) => Ok(()),
            Err(e) => Err(step_error(&format!("removing network {name}"), e)),
        }
    }
}

// ------------------------------------------------------- managed services

/// A service the profile marks managed (enabled, not `external`), run as
/// one container on the stack's network with its port on loopback.
#[derive(Debug, Clone)]
pub struct ServiceDef {
    pub name: &'static str,
    pub image: String,
    pub port: u16,
    pub data_path: &'static str,
    pub persistent: bool,
    pub env: Vec<(String, EnvSource)>,
    /// The uid the service's secret files belong to (the user its image
    /// runs the server as: 999 for the official postgres and mongo images).
    pub file_owner: u64,
}

/// The managed services of the profile.
pub fn managed_services(profile: &Profile) -> Result<Vec<ServiceDef>, String> {
    let s = &profile.services;
    let mut out = Vec::new();
    let secret =
        |c: &taskctl_core::profile::value::Checked<taskctl_core::profile::value::SecretRef>,
         what: &str| {
            c.get()
                .cloned()
                .map(EnvSource::Secret)
                .ok_or_else(|| format!("{what} is not a valid secret reference"))
        };
    if let Some(r) = &s.rabbitmq
        && r.enabled
        && r.external.is_none()
    {
        out.push(ServiceDef {
            name: "rabbitmq",
            image: r
                .image
                .clone()
                .unwrap_or_else(|| "rabbitmq:3-management".into()),
            port: 5672,
            data_path: "/var/lib/rabbitmq",
            persistent: r.persistence.as_ref().is_some_and(|p| p.enabled),
            env: Vec::new(),
            file_owner: 999,
        });
    }
    if let Some(m) = &s.mongodb
        && m.enabled
        && m.external.is_none()
    {
        let mut env = Vec::new();
        if let Some(p) = &m.root_password {
            env.push((
                "MONGO_INITDB_ROOT_USERNAME".into(),
                EnvSource::Literal("root".into()),
            ));
            env.push((
                "MONGO_INITDB_ROOT_PASSWORD".into(),
                secret(p, "services.mongodb.root_password")?,
            ));
        }
        out.push(ServiceDef {
            name: "mongodb",
            image: m.image.clone().unwrap_or_else(|| "mongo:7".into()),
            port: 27017,
            data_path: "/data/db",
            persistent: m.persistence.as_ref().is_some_and(|p| p.enabled),
            env,
            file_owner: 999,
        });
    }
    if let Some(p) = &s.postgres
        && p.enabled
        && p.external.is_none()
    {
        out.push(ServiceDef {
            name: "postgres",
            image: p
                .image
                .clone()
                .unwrap_or_else(|| format!("postgres:{}", p.version)),
            port: 5432,
            data_path: "/var/lib/postgresql/data",
            persistent: p.persistence.as_ref().is_some_and(|p| p.enabled),
            env: vec![
                ("POSTGRES_DB".into(), EnvSource::Literal(p.database.clone())),
                ("POSTGRES_USER".into(), EnvSource::Literal(p.user.clone())),
                (
                    "POSTGRES_PASSWORD".into(),
                    secret(&p.password, "services.postgres.password")?,
                ),
            ],
            file_owner: 999,
        });
    }
    for (name, managed) in [
        (
            "prometheus",
            s.prometheus
                .as_ref()
                .is_some_and(|p| p.enabled && p.external.is_none()),
        ),
        (
            "vault",
            s.vault
                .as_ref()
                .is_some_and(|v| v.enabled && v.external.is_none()),
        ),
    ] {
        if managed {
            return Err(format!(
                "services.{name}: the docker target runs rabbitmq, mongodb and postgres; give {name} an `external` address"
            ));
        }
    }
    Ok(out)
}

pub fn volume_name(profile: &Profile, service: &str) -> String {
    format!("{service}-data.{}", spec::environment_label(profile))
}

pub struct Volume {
    pub id: StepId,
    pub shared: Arc<Shared>,
    pub service: &'static str,
}

#[async_trait]
impl Step for Volume {
    fn id(&self) -> &StepId {
        &self.id
    }
    fn kind(&self) -> &str {
        "docker-volume"
    }
    fn depends_on(&self) -> Vec<StepId> {
        Vec::new()
    }

    async fn plan(&self, _ctx: &StepContext) -> Result<StepPlan, StepError> {
        let name = volume_name(&self.shared.profile, self.service);
        let outputs: Outputs = [("volume".to_string(), name.clone())].into();
        match self.shared.docker.inspect_volume(&name).await {
            Ok(_) => Ok(StepPlan {
                change: Change::none(),
                outputs,
            }),
            Err(e) if is_not_found(&e) => Ok(StepPlan {
                change: Change::create("not found"),
                outputs,
            }),
            Err(e) => Err(step_error(&format!("inspecting volume {name}"), e)),
        }
    }

    async fn apply(&self, _ctx: &StepContext, plan: &StepPlan) -> Result<Outputs, StepError> {
        let name = volume_name(&self.shared.profile, self.service);
        let mut labels = base_labels(&self.shared.profile, "volume");
        labels.insert(label::SERVICE.into(), self.service.into());
        // Creating an existing volume with the same name is a no-op.
        self.shared
            .docker
            .create_volume(VolumeCreateOptions {
                name: Some(name.clone()),
                labels: Some(hash_map(labels)),
                ..Default::default()
            })
            .await
            .map_err(|e| step_error(&format!("creating volume {name}"), e))?;
        Ok(plan.outputs.clone())
    }

    /// Volumes hold data: only `destroy --purge` removes them.
    async fn destroy(&self, ctx: &StepContext, _plan: &StepPlan) -> Result<(), StepError> {
        let name = volume_name(&self.shared.profile, self.service);
        if !self.shared.purge {
            ctx.progress(&format!(
                "keeping volume {name} (destroy --purge removes it)"
            ));
            return Ok(());
        }
        remove_volume(&self.shared.docker, &name).await
    }
}

async fn remove_volume(docker: &Docker, name: &str) -> Result<(), StepError> {
    match docker
        .remove_volume(name, None::<bollard::query_parameters::RemoveVolumeOptions>)
        .await
    {
        Ok(()) => Ok(()),
        Err(e) if is_not_found(&e) => Ok(()),
        Err(e) => Err(step_error(&format!("removing volume {name}"), e)),
    }
}

pub fn service_container(profile: &Profile, service: &str) -> String {
    format!("{service}.{}", spec::environment_label(profile))
}

pub struct Service {
    pub id: StepId,
    pub shared: Arc<Shared>,
    pub def: ServiceDef,
    pub deps: Vec<StepId>,
}

impl Service {
    async fn summary(&self) -> Result<SpecSummary, StepError> {
        let versions = secret_files::versions(&self.shared.secrets, &self.def.env).await?;
        let env = self
            .def
            .env
            .iter()
            .map(|(n, s)| (n.clone(), spec::shown(s, versions.get(n).copied())))
            .collect();
        Ok(SpecSummary {
            image: self.def.image.clone(),
            env,
            ports: format!("127.0.0.1:{}", self.def.port),
            cpu: String::new(),
            memory: String::new(),
            restart: "unless-stopped".into(),
            health: if self.def.persistent {
                format!("volume at {}", self.def.data_path)
            } else {
                String::new()
            },
        })
    }
}

#[async_trait]
impl Step for Service {
    fn id(&self) -> &StepId {
        &self.id
    }
    fn kind(&self) -> &str {
        "docker-service"
    }
    fn depends_on(&self) -> Vec<StepId> {
        self.deps.clone()
    }

    async fn plan(&self, _ctx: &StepContext) -> Result<StepPlan, StepError> {
        let name = service_container(&self.shared.profile, self.def.name);
        // Checked at plan time: a missing image stops the deploy before any
        // change.
        if image::local_id(&self.shared.docker, &self.def.image)
            .await?
            .is_none()
            && registry(&self.shared.profile).is_none()
        {
            return Err(image::missing_image(
                &self.def.image,
                &format!("services.{}", self.def.name),
            ));
        }
        let outputs: Outputs = [("container".to_string(), name.clone())].into();
        let desired = self.summary().await?;
        let change = match inspect(&self.shared.docker, &name).await? {
            None => Change::create("not found"),
            Some(c) => {
                let labels = c.config.and_then(|c| c.labels).unwrap_or_default();
                let running = c.state.and_then(|s| s.running).unwrap_or(false);
                match labels.get(label::SPEC_HASH) {
                    Some(h) if *h == desired.hash() && running => Change::none(),
                    Some(h) if *h == desired.hash() => {
                        Change::update(vec![FieldDiff::new("state", "stopped", "running")])
                    }
                    _ => {
                        let observed: Option<SpecSummary> = labels
                            .get(label::SPEC)
                            .and_then(|s| serde_json::from_str(s).ok());
                        Change::update(match observed {
                            Some(o) => desired.diff(&o),
                            None => vec![FieldDiff::new("spec", "unknown", "as the profile says")],
                        })
                    }
                }
            }
        };
        Ok(StepPlan { change, outputs })
    }

    async fn apply(&self, ctx: &StepContext, plan: &StepPlan) -> Result<Outputs, StepError> {
        let docker = &self.shared.docker;
        let name = service_container(&self.shared.profile, self.def.name);
        let desired = self.summary().await?;
        if let Some(c) = inspect(docker, &name).await? {
            let labels = c.config.and_then(|c| c.labels).unwrap_or_default();
            let running = c.state.and_then(|s| s.running).unwrap_or(false);
            if labels.get(label::SPEC_HASH) == Some(&desired.hash()) && running {
                return Ok(plan.outputs.clone());
            }
            ctx.progress(&format!("replacing {name}"));
            engine::remove(docker, &name, 30).await?;
        }
        let image = ensure_image(
            &self.shared,
            &self.def.image,
            &format!("services.{}", self.def.name),
        )
        .await?;
        let delivery = secret_files::resolve(&self.shared.secrets, &self.def.env).await?;
        let mut labels = base_labels(&self.shared.profile, "service");
        labels.insert(label::SERVICE.into(), self.def.name.into());
        labels.insert(label::SPEC_HASH.into(), desired.hash());
        labels.insert(
            label::SPEC.into(),
            serde_json::to_string(&desired).expect("plain data"),
        );
        labels.insert(label::RELEASE.into(), ctx.run_id.clone());
        let network = self
            .shared
            .profile
            .target
            .docker
            .as_ref()
            .map(|d| d.network.clone())
            .unwrap_or_else(|| "taskctl".into());
        let port = format!("{}/tcp", self.def.port);
        let mut mounts: Vec<Mount> = secret_files::mount(&delivery).into_iter().collect();
        if self.def.persistent {
            mounts.push(Mount {
                target: Some(self.def.data_path.into()),
                source: Some(volume_name(&self.shared.profile, self.def.name)),
                typ: Some(MountTypeEnum::VOLUME),
                ..Default::default()
            });
        }
        let body = ContainerCreateBody {
            image: Some(image),
            env: Some(delivery.env.clone()),
            labels: Some(hash_map(labels)),
            exposed_ports: Some([(port.clone(), HashMap::new())].into()),
            host_config: Some(HostConfig {
                restart_policy: Some(DockerRestart {
                    name: Some(RestartPolicyNameEnum::UNLESS_STOPPED),
                    maximum_retry_count: None,
                }),
                port_bindings: Some(
                    [(
                        port,
                        Some(vec![PortBinding {
                            host_ip: Some("127.0.0.1".into()),
                            host_port: Some(self.def.port.to_string()),
                        }]),
                    )]
                    .into(),
                ),
                mounts: (!mounts.is_empty()).then_some(mounts),
                ..Default::default()
            }),
            networking_config: Some(NetworkingConfig {
                endpoints_config: Some(
                    [(
                        network,
                        EndpointSettings {
                            aliases: Some(vec![self.def.name.to_string()]),
                            ..Default::default()
                        },
                    )]
                    .into(),
                ),
            }),
            ..Default::default()
        };
        docker
            .create_container(
                Some(CreateContainerOptions {
                    name: Some(name.clone()),
                    ..Default::default()
                }),
                body,
            )
            .await
            .map_err(|e| step_error(&format!("creating {name}"), e))?;
        secret_files::upload(docker, &name, &delivery, self.def.file_owner).await?;
        docker
            .start_container(
                &name,
                None::<bollard::query_parameters::StartContainerOptions>,
            )
            .await
            .map_err(|e| step_error(&format!("starting {name}"), e))?;
        Ok(plan.outputs.clone())
    }

    async fn destroy(&self, _ctx: &StepContext, _plan: &StepPlan) -> Result<(), StepError> {
        let name = service_container(&self.shared.profile, self.def.name);
        engine::remove(&self.shared.docker, &name, 30).await
    }
}

// ------------------------------------------------------------- agent image

pub struct AgentImage {
    pub id: StepId,
    pub shared: Arc<Shared>,
    pub agent: Agent,
}

impl AgentImage {
    fn prepared(&self) -> Result<Option<image::Prepared>, StepError> {
        let source = image::source(&self.agent).map_err(invalid)?;
        image::prepare(&self.agent, &source).map_err(invalid)
    }
}

#[async_trait]
impl Step for AgentImage {
    fn id(&self) -> &StepId {
        &self.id
    }
    fn kind(&self) -> &str {
        "docker-image"
    }
    fn depends_on(&self) -> Vec<StepId> {
        Vec::new()
    }

    async fn plan(&self, _ctx: &StepContext) -> Result<StepPlan, StepError> {
        let docker = &self.shared.docker;
        let prepared = match self.prepared() {
            Ok(p) => p,
            // No binary to build from. A deploy's preflight has already
            // refused; a destroy or a plan must still see what runs, so
            // the step plans a build that its apply will refuse.
            Err(e) => {
                return Ok(StepPlan {
                    change: Change::create(format!("cannot build: {}", e.message)),
                    outputs: [("image".to_string(), self.agent.image.clone())].into(),
                });
            }
        };
        match prepared {
            Some(prepared) => {
                let outputs: Outputs = [("image".to_string(), prepared.tag.clone())].into();
                let built = image::local_id(docker, &prepared.tag).await?;
                let tagged = image::local_id(docker, &self.agent.image).await?;
                let change = if built.is_none() {
                    Change::create(format!("build {} from {}", prepared.tag, prepared.from))
                } else if tagged != built {
                    Change::update(vec![FieldDiff::new(
                        "tag",
                        format!("{} elsewhere", self.agent.image),
                        &prepared.tag,
                    )])
                } else {
                    Change::none()
                };
                Ok(StepPlan { change, outputs })
            }
            None => {
                let id = image::local_id(docker, &self.agent.image).await?;
                match (id, registry(&self.shared.profile)) {
                    (Some(id), _) => Ok(StepPlan {
                        change: Change::none(),
                        outputs: [(
                            "image".to_string(),
                            pinned_name(docker, &self.agent.image, id).await?,
                        )]
                        .into(),
                    }),
                    (None, Some(reg)) => Ok(StepPlan {
                        change: Change::create(format!("pull {} from {reg}", self.agent.image)),
                        outputs: [("image".to_string(), self.agent.image.clone())].into(),
                    }),
                    (None, None) => Err(image::missing_image(
                        &self.agent.image,
                        &format!("agent `{}`", self.agent.name),
                    )),
                }
            }
        }
    }

    async fn apply(&self, ctx: &StepContext, _plan: &StepPlan) -> Result<Outputs, StepError> {
        let docker = &self.shared.docker;
        match self.prepared()? {
            Some(prepared) => {
                match image::local_id(docker, &prepared.tag).await? {
                    Some(id) => {
                        // Built before: only the profile's tag may be missing.
                        image::tag(docker, &id, &self.agent.image).await?;
                    }
                    None => {
                        ctx.progress(&format!("building {} (no pull)", prepared.tag));
                        let mut labels = base_labels(&self.shared.profile, "image");
                        labels.insert(label::AGENT.into(), self.agent.name.clone());
                        image::build(docker, &prepared, &self.agent.image, hash_map(labels))
                            .await?;
                    }
                }
                Ok([("image".to_string(), prepared.tag)].into())
            }
            None => {
                let id = ensure_image(
                    &self.shared,
                    &self.agent.image,
                    &format!("agent `{}`", self.agent.name),
                )
                .await?;
                Ok([(
                    "image".to_string(),
                    pinned_name(docker, &self.agent.image, id).await?,
                )]
                .into())
            }
        }
    }

    /// Images stay: they are a content-addressed cache (and a release
    /// record's container keeps the image it ran); `docker image prune`
    /// removes unused ones.
    async fn destroy(&self, _ctx: &StepContext, _plan: &StepPlan) -> Result<(), StepError> {
        Ok(())
    }
}

/// What replicas run for an image given by reference: for a pinned
/// `tag@sha256:…` (a release's image) whose tag still names that very
/// content, the tag, so that a rollback to the release that runs already
/// matches its containers and replaces none; otherwise the image id.
async fn pinned_name(docker: &Docker, reference: &str, id: String) -> Result<String, StepError> {
    if let Some((tag, _)) = reference.split_once('@')
        && image::local_id(docker, tag).await?.as_deref() == Some(id.as_str())
    {
        return Ok(tag.to_string());
    }
    Ok(id)
}

// ---------------------------------------------------------- agent replicas

/// Replica `index` of an agent: created at once when nothing runs in its
/// place, replaced on its [`Rollout`] turn when a running container must
/// be protected (see its `converge`).
pub struct Replica {
    pub id: StepId,
    pub shared: Arc<Shared>,
    pub agent: Agent,
    pub index: u32,
    pub image_step: StepId,
    pub deps: Vec<StepId>,
    /// Turns for replacing running replicas, shared by the agent's replicas.
    pub rollout: Arc<Rollout>,
}

/// The engine's name of a restart policy.
fn restart_policy(policy: taskctl_core::profile::model::RestartPolicy) -> RestartPolicyNameEnum {
    use taskctl_core::profile::model::RestartPolicy as P;
    match policy {
        P::UnlessStopped => RestartPolicyNameEnum::UNLESS_STOPPED,
        P::Always => RestartPolicyNameEnum::ALWAYS,
        P::OnFailure => RestartPolicyNameEnum::ON_FAILURE,
        P::No => RestartPolicyNameEnum::NO,
    }
}

/// The restart policy a container runs with (`no` when unset).
fn restart_policy_of(c: &bollard::models::ContainerInspectResponse) -> RestartPolicyNameEnum {
    c.host_config
        .as_ref()
        .and_then(|h| h.restart_policy.as_ref())
        .and_then(|p| p.name)
        .filter(|n| *n != RestartPolicyNameEnum::EMPTY)
        .unwrap_or(RestartPolicyNameEnum::NO)
}

/// Seconds the old container gets to drain on SIGTERM before SIGKILL: the
/// agent's default `SHUTDOWN_GRACE_PERIOD` (30 s) and a margin.
const STOP_SECONDS: i32 = 35;

impl Replica {
    /// The replica's spec, with the KV versions of its secrets resolved.
    async fn spec(&self, ctx: &StepContext) -> Result<ReplicaSpec, StepError> {
        let image = ctx.dep_output(&self.image_step, "image").ok_or_else(|| {
            StepError::new(
                ErrorKind::Other,
                format!("the image of agent `{}` is not known", self.agent.name),
            )
        })?;
        let mut spec = ReplicaSpec::new(&self.shared.profile, &self.agent, self.index, image)
            .map_err(invalid)?;
        spec.secret_versions = secret_files::versions(&self.shared.secrets, &spec.env).await?;
        Ok(spec)
    }

    fn primary(&self) -> String {
        replica_name(&self.shared.profile, &self.agent.name, self.index)
    }

    fn file_sd_dir(&self) -> Option<PathBuf> {
        self.shared
            .profile
            .target
            .docker
            .as_ref()
            .and_then(|d| d.prometheus_file_sd.as_ref())
            .filter(|dir| !dir.is_empty())
            .map(PathBuf::from)
    }

    fn outputs(&self, metrics: Option<u16>) -> Outputs {
        let mut o: Outputs = [("container".to_string(), self.primary())].into();
        if let Some(port) = metrics {
            o.insert("metrics".into(), format!("127.0.0.1:{port}"));
        }
        o
    }

    /// Creates and starts `name` with the spec in `slot`, with restart
    /// policy `no`: until it is healthy, an exit must stay an exit (with its
    /// exit code) rather than a restart that hides it. [`Self::set_restart`]
    /// gives it the profile's policy once it is healthy.
    async fn start(
        &self,
        ctx: &StepContext,
        spec: &ReplicaSpec,
        name: &str,
        slot: u8,
    ) -> Result<(), StepError> {
        let docker = &self.shared.docker;
        let (http, _) = spec.ports(slot);
        let agent_id = self.primary();
        let delivery =
            secret_files::resolve(&self.shared.secrets, &spec.env_for(slot, &agent_id)).await?;
        let summary = spec.summary();
        let mut labels = base_labels(&self.shared.profile, "agent");
        labels.insert(label::AGENT.into(), self.agent.name.clone());
        labels.insert(label::REPLICA.into(), self.index.to_string());
        labels.insert(label::SLOT.into(), slot.to_string());
        labels.insert(label::SPEC_HASH.into(), summary.hash());
        labels.insert(
            label::SPEC.into(),
            serde_json::to_string(&summary).expect("plain data"),
        );
        labels.insert(label::RELEASE.into(), ctx.run_id.clone());
        let secs = |s: u32| i64::from(s) * 1_000_000_000;
        let body = ContainerCreateBody {
            image: Some(spec.image.clone()),
            env: Some(delivery.env.clone()),
            labels: Some(hash_map(labels)),
            healthcheck: Some(HealthConfig {
                test: Some(vec![
                    "CMD".into(),
                    "/task-executor".into(),
                    "probe".into(),
                    format!("http://127.0.0.1:{http}{}", spec.health.path),
                ]),
                interval: Some(secs(spec.health.interval_s)),
                timeout: Some(secs(spec.health.timeout_s)),
                retries: Some(i64::from(spec.health.retries)),
                start_period: Some(secs(spec.health.start_period_s)),
                start_interval: None,
            }),
            host_config: Some(HostConfig {
                network_mode: Some("host".into()),
                restart_policy: Some(DockerRestart {
                    name: Some(RestartPolicyNameEnum::NO),
                    maximum_retry_count: None,
                }),
                nano_cpus: (spec.nano_cpus > 0).then_some(spec.nano_cpus),
                memory: (spec.memory > 0).then_some(spec.memory),
                memory_reservation: (spec.memory_reservation > 0
                    && spec.memory_reservation <= spec.memory)
                    .then_some(spec.memory_reservation),
                mounts: secret_files::mount(&delivery).map(|m| vec![m]),
                ..Default::default()
            }),
            ..Default::default()
        };
        docker
            .create_container(
                Some(CreateContainerOptions {
                    name: Some(name.to_string()),
                    ..Default::default()
                }),
                body,
            )
            .await
            .map_err(|e| step_error(&format!("creating {name}"), e))?;
        if let Err(e) = secret_files::upload(docker, name, &delivery, image::AGENT_UID).await {
            let _ = force_remove(docker, name).await;
            return Err(e);
        }
        docker
            .start_container(
                name,
                None::<bollard::query_parameters::StartContainerOptions>,
            )
            .await
            .map_err(|e| step_error(&format!("starting {name}"), e))?;
        ctx.progress(&format!(
            "started {name} on ports {http}/{}",
            spec.ports(slot).1
        ));
        Ok(())
    }

    /// Gives `name` the profile's restart policy.
    async fn set_restart(&self, name: &str, spec: &ReplicaSpec) -> Result<(), StepError> {
        self.shared
            .docker
            .update_container(
                name,
                bollard::models::ContainerUpdateBody {
                    restart_policy: Some(DockerRestart {
                        name: Some(restart_policy(spec.restart)),
                        maximum_retry_count: None,
                    }),
                    ..Default::default()
                },
            )
            .await
            .map_err(|e| step_error(&format!("setting the restart policy of {name}"), e))
    }

    /// Removes this replica's Prometheus target file.
    fn remove_file_sd(&self) {
        if let Some((path, _)) = self.file_sd(&[]) {
            let _ = std::fs::remove_file(path);
        }
    }

    /// The Prometheus target file of this replica and its content: the
    /// metrics addresses of its containers (two while a replacement runs
    /// beside the container it replaces).
    fn file_sd(&self, metrics_ports: &[u16]) -> Option<(PathBuf, String)> {
        let dir = self.file_sd_dir()?;
        let targets: Vec<String> = metrics_ports
            .iter()
            .map(|p| format!("127.0.0.1:{p}"))
            .collect();
        let doc = serde_json::json!([{
            "targets": targets,
            "labels": {
                "taskctl_environment": spec::environment_label(&self.shared.profile),
                "agent": self.agent.name,
                "replica": self.index.to_string(),
            }
        }]);
        Some((
            dir.join(format!("{}.json", self.primary())),
            doc.to_string(),
        ))
    }

    /// Whether Prometheus is pointed at this replica as it should be (a run
    /// killed between starting the container and writing the file leaves
    /// it unregistered).
    fn file_sd_is_current(&self, metrics_port: u16) -> bool {
        self.file_sd(&[metrics_port])
            .is_none_or(|(path, doc)| std::fs::read_to_string(path).is_ok_and(|d| d == doc))
    }

    /// Points Prometheus at the replica's metrics ports (atomically: a
    /// half-written file would drop the target for a scrape).
    fn write_file_sd(&self, metrics_ports: &[u16]) -> Result<(), StepError> {
        let Some((path, doc)) = self.file_sd(metrics_ports) else {
            return Ok(());
        };
        let tmp = path.with_file_name(format!(".{}.json.tmp", self.primary()));
        std::fs::write(&tmp, doc)
            .and_then(|()| std::fs::rename(&tmp, &path))
            .map_err(|e| {
                StepError::new(
                    ErrorKind::Other,
                    format!("writing the Prometheus target file {}: {e}", path.display()),
                )
            })
    }
    /// Makes replica `index` run the desired spec: starts a new container
    /// at once when there is no running one to protect; otherwise, on its
    /// turn, starts the replacement beside the running container, and stops
    /// that one only once the replacement is healthy.
    async fn converge(&self, ctx: &StepContext) -> Result<Outputs, StepError> {
        let docker = &self.shared.docker;
        let spec = self.spec(ctx).await?;
        let desired = spec.summary().hash();
        let primary = self.primary();
        let next = next_name(&primary);
        // A replacement an interrupted run left behind is never adopted: it
        // may be half-made. Starting over is cheap and always correct.
        force_remove(docker, &next).await?;
        let current = inspect(docker, &primary).await?;
        let mut new_slot = 0;
        let mut protect = false;
        if let Some(c) = &current {
            let labels = c.config.clone().and_then(|c| c.labels).unwrap_or_default();
            let running = c.state.as_ref().and_then(|s| s.running).unwrap_or(false);
            let (slot, hash) = slot_and_hash(&labels);
            if hash == Some(&desired) && running {
                self.rollout.announce(self.index, false);
                if restart_policy_of(c) != restart_policy(spec.restart) {
                    self.set_restart(&primary, &spec).await?;
                }
                self.write_file_sd(&[spec.ports(slot).1])?;
                return Ok(self.outputs(Some(spec.ports(slot).1)));
            }
            new_slot = 1 - slot;
            protect = running;
        }
        self.rollout.announce(self.index, protect);
        let turn = if protect {
            Some(
                self.rollout
                    .turn(self.index, ctx.cancelled(), |m| ctx.progress(m))
                    .await?,
            )
        } else {
            None
        };
        self.start(ctx, &spec, &next, new_slot).await?;
        // Prometheus starts looking at the new container while it becomes
        // healthy (beside the one it replaces), so its first scrape is not
        // what verification waits for.
        let metrics = spec.ports(new_slot).1;
        let old_metrics = protect.then(|| spec.ports(1 - new_slot).1);
        self.write_file_sd(
            &[old_metrics, Some(metrics)]
                .into_iter()
                .flatten()
                .collect::<Vec<_>>(),
        )?;
        if let Err(e) = engine::wait_healthy(docker, ctx, &next, spec.health.deadline()).await {
            // The old container, if any, keeps serving.
            let _ = force_remove(docker, &next).await;
            match old_metrics {
                Some(old) => {
                    let _ = self.write_file_sd(&[old]);
                }
                None => self.remove_file_sd(),
            }
            return Err(StepError::new(
                e.kind,
                if current.is_some() {
                    format!(
                        "the new {primary} did not become healthy, so the running one was kept: {}",
                        e.message
                    )
                } else {
                    format!("the new {primary} did not become healthy: {}", e.message)
                },
            ));
        }
        self.set_restart(&next, &spec).await?;
        if current.is_some() {
            ctx.progress(&format!("stopping the old {primary}"));
            engine::remove(docker, &primary, STOP_SECONDS).await?;
            ctx.progress(&format!("removed the old {primary}"));
        }
        docker
            .rename_container(
                &next,
                RenameContainerOptions {
                    name: primary.clone(),
                },
            )
            .await
            .map_err(|e| step_error(&format!("renaming {next} to {primary}"), e))?;
        ctx.progress(&format!(
            "{primary} {} and healthy",
            if current.is_some() {
                "replaced"
            } else {
                "created"
            }
        ));
        self.write_file_sd(&[metrics])?;
        if let Some(turn) = turn {
            turn.done();
        }
        Ok(self.outputs(Some(metrics)))
    }
}

/// The slot and spec hash of an existing replica container.
fn slot_and_hash(labels: &HashMap<String, String>) -> (u8, Option<&String>) {
    let slot = labels
        .get(label::SLOT)
        .and_then(|s| s.parse::<u8>().ok())
        .unwrap_or(0)
        .min(1);
    (slot, labels.get(label::SPEC_HASH))
}

#[async_trait]
impl Step for Replica {
    fn id(&self) -> &StepId {
        &self.id
    }
    fn kind(&self) -> &str {
        "docker-agent"
    }
    fn depends_on(&self) -> Vec<StepId> {
        self.deps.clone()
    }
    fn timeout(&self) -> Duration {
        let probe = self
            .agent
            .probes
            .readiness
            .as_ref()
            .map(|p| {
                u64::from(
                    p.initial_delay_seconds
                        + (p.period_seconds + p.timeout_seconds) * (p.failure_threshold + 2),
                )
            })
            .unwrap_or(60);
        // Replica i may wait for the i−1 replacements before it (each
        // bounded by its own step's share of this) before its own.
        Duration::from_secs(probe + 2 * STOP_SECONDS as u64 + 60) * self.index.max(1)
    }

    async fn plan(&self, ctx: &StepContext) -> Result<StepPlan, StepError> {
        let docker = &self.shared.docker;
        let spec = self.spec(ctx).await?;
        let desired = spec.summary();
        let primary = self.primary();
        let leftover = inspect(docker, &next_name(&primary)).await?.is_some();
        let Some(c) = inspect(docker, &primary).await? else {
            self.rollout.announce(self.index, false);
            return Ok(StepPlan {
                change: Change::create("not found"),
                outputs: self.outputs(None),
            });
        };
        let policy = restart_policy_of(&c);
        let labels = c.config.and_then(|c| c.labels).unwrap_or_default();
        let running = c.state.and_then(|s| s.running).unwrap_or(false);
        let (slot, hash) = slot_and_hash(&labels);
        // Replacing a running container takes a turn: say so now, so no
        // later replica overtakes this one.
        self.rollout
            .announce(self.index, running && hash != Some(&desired.hash()));
        let mut diffs = Vec::new();
        if hash != Some(&desired.hash()) {
            match labels
                .get(label::SPEC)
                .and_then(|s| serde_json::from_str::<SpecSummary>(s).ok())
            {
                Some(observed) => diffs.extend(desired.diff(&observed)),
                None => diffs.push(FieldDiff::new("spec", "unknown", "as the profile says")),
            }
        }
        if !running {
            diffs.push(FieldDiff::new("state", "stopped", "running"));
        }
        let wanted = restart_policy(spec.restart);
        if diffs.is_empty() && policy != wanted {
            // A run killed between a replacement becoming healthy and its
            // restart policy being set.
            diffs.push(FieldDiff::new("restart policy", policy, wanted));
        }
        let metrics = spec.ports(slot).1;
        if diffs.is_empty() && !self.file_sd_is_current(metrics) {
            diffs.push(FieldDiff::new(
                "prometheus target",
                "missing",
                format!("127.0.0.1:{metrics}"),
            ));
        }
        if leftover {
            diffs.push(FieldDiff::new(
                "leftover",
                format!("{} from an interrupted run", next_name(&primary)),
                "removed",
            ));
        }
        let change = if diffs.is_empty() {
            Change::none()
        } else {
            Change::update(diffs)
        };
        Ok(StepPlan {
            change,
            outputs: self.outputs(Some(spec.ports(slot).1)),
        })
    }

    async fn apply(&self, ctx: &StepContext, _plan: &StepPlan) -> Result<Outputs, StepError> {
        let result = self.converge(ctx).await;
        if let Err(e) = &result {
            // No running replica of this agent is replaced after a failure.
            self.rollout.fail(self.index, &e.message);
        }
        result
    }

    async fn destroy(&self, _ctx: &StepContext, _plan: &StepPlan) -> Result<(), StepError> {
        let docker = &self.shared.docker;
        let primary = self.primary();
        force_remove(docker, &next_name(&primary)).await?;
        engine::remove(docker, &primary, STOP_SECONDS).await?;
        if let Some(dir) = self.file_sd_dir() {
            let _ = std::fs::remove_file(dir.join(format!("{primary}.json")));
        }
        Ok(())
    }
}

// ------------------------------------------------------------------ sweep

/// Runs after every replica: removes agent containers the profile no
/// longer has (scaled down, renamed agents). On destroy it runs first and
/// removes everything labelled with the environment, in scope.
pub struct Sweep {
    pub id: StepId,
    pub shared: Arc<Shared>,
    pub deps: Vec<StepId>,
    /// Every layer is in scope: destroy also removes services, release
    /// records and the network.
    pub everything: bool,
}

impl Sweep {
    fn wanted(&self) -> Vec<String> {
        let p = &self.shared.profile;
        let mut names = Vec::new();
        for a in &p.agents {
            for i in 1..=a.replicas {
                let n = replica_name(p, &a.name, i);
                names.push(next_name(&n));
                names.push(n);
            }
        }
        names
    }

    async fn orphans(&self) -> Result<Vec<String>, StepError> {
        let env = spec::environment_label(&self.shared.profile);
        let agents = engine::containers_with(
            &self.shared.docker,
            &[(label::ENVIRONMENT, &env), (label::ROLE, "agent")],
        )
        .await?;
        let wanted = self.wanted();
        Ok(agents
            .into_iter()
            .flat_map(|c| c.names.unwrap_or_default())
            .map(|n| n.trim_start_matches('/').to_string())
            .filter(|n| !wanted.contains(n))
            .collect())
    }

    fn remove_file_sd(&self, container: &str) {
        if let Some(dir) = self
            .shared
            .profile
            .target
            .docker
            .as_ref()
            .and_then(|d| d.prometheus_file_sd.as_ref())
            .filter(|dir| !dir.is_empty())
        {
            let _ = std::fs::remove_file(PathBuf::from(dir).join(format!("{container}.json")));
        }
    }
}

#[async_trait]
impl Step for Sweep {
    fn id(&self) -> &StepId {
        &self.id
    }
    fn kind(&self) -> &str {
        "docker-sweep"
    }
    fn depends_on(&self) -> Vec<StepId> {
        self.deps.clone()
    }

    async fn plan(&self, _ctx: &StepContext) -> Result<StepPlan, StepError> {
        let orphans = self.orphans().await?;
        let change = if orphans.is_empty() {
            Change::none()
        } else {
            Change::update(
                orphans
                    .iter()
                    .map(|n| {
                        FieldDiff::new(format!("container {n}"), "not in the profile", "removed")
                    })
                    .collect(),
            )
        };
        Ok(StepPlan {
            change,
            outputs: Outputs::new(),
        })
    }

    async fn apply(&self, ctx: &StepContext, _plan: &StepPlan) -> Result<Outputs, StepError> {
        for name in self.orphans().await? {
            ctx.progress(&format!("removing {name}"));
            engine::remove(&self.shared.docker, &name, STOP_SECONDS).await?;
            self.remove_file_sd(&name);
        }
        Ok(Outputs::new())
    }

    async fn destroy(&self, ctx: &StepContext, _plan: &StepPlan) -> Result<(), StepError> {
        let docker = &self.shared.docker;
        let env = spec::environment_label(&self.shared.profile);
        let mut filter = vec![(label::ENVIRONMENT, env.as_str())];
        if !self.everything {
            filter.push((label::ROLE, "agent"));
        }
        for c in engine::containers_with(docker, &filter).await? {
            for name in c.names.unwrap_or_default() {
                let name = name.trim_start_matches('/');
                ctx.progress(&format!("removing {name}"));
                engine::remove(docker, name, STOP_SECONDS).await?;
                self.remove_file_sd(name);
            }
        }
        if !self.everything {
            return Ok(());
        }
        let filters: HashMap<String, Vec<String>> = [(
            "label".to_string(),
            vec![format!("{}={env}", label::ENVIRONMENT)],
        )]
        .into();
        let networks = docker
            .list_networks(Some(bollard::query_parameters::ListNetworksOptions {
                filters: Some(filters.clone()),
            }))
            .await
            .map_err(|e| step_error("listing networks", e))?;
        for n in networks {
            if let Some(name) = n.name {
                ctx.progress(&format!("removing network {name}"));
                match docker.remove_network(&name).await {
                    Ok(()) => {}
                    Err(e) if is_not_found(&e) => {}
                    Err(e) => return Err(step_error(&format!("removing network {name}"), e)),
                }
            }
        }
        if self.shared.purge {
            let volumes = docker
                .list_volumes(Some(bollard::query_parameters::ListVolumesOptions {
                    filters: Some(filters),
                }))
                .await
                .map_err(|e| step_error("listing volumes", e))?;
            for v in volumes.volumes.unwrap_or_default() {
                ctx.progress(&format!("removing volume {}", v.name));
                remove_volume(docker, &v.name).await?;
            }
        }
        Ok(())
    }
}
