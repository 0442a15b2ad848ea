//! Managed services (one container each, with its volume) and their volumes.

use super::*;

use crate::stack::{self, FileDef};
pub use crate::stack::{ServiceDef, managed_services};

/// The directory of the agents' Prometheus target files: the profile's
/// `target.docker.prometheus_file_sd`, else, when taskctl runs Prometheus
/// itself, `<state path>/file_sd/<environment>` (absolute: it is mounted
/// into the Prometheus container).
pub fn file_sd_dir(profile: &Profile) -> Option<PathBuf> {
    if let Some(dir) = profile
        .target
        .docker
        .as_ref()
        .and_then(|d| d.prometheus_file_sd.as_ref())
        .filter(|dir| !dir.is_empty())
    {
        return Some(absolute(PathBuf::from(dir)));
    }
    profile
        .services
        .prometheus
        .as_ref()
        .filter(|p| p.enabled && p.external.is_none())
        .map(|_| {
            absolute(
                PathBuf::from(&profile.state.path)
                    .join("file_sd")
                    .join(spec::environment_label(profile)),
            )
        })
}

fn absolute(p: PathBuf) -> PathBuf {
    if p.is_absolute() {
        p
    } else {
        std::env::current_dir().map(|d| d.join(&p)).unwrap_or(p)
    }
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

pub(super) async fn remove_volume(docker: &Docker, name: &str) -> Result<(), StepError> {
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

pub use taskctl_core::ops::STARTS_OUTPUT;

/// Seconds between health checks of a managed service.
const HEALTH_INTERVAL_S: i64 = 2;

impl Service {
    /// The env entries whose secrets a file of this service is rendered
    /// with: what the spec shows (reference and KV version) for them.
    fn file_secrets(&self) -> Vec<(String, EnvSource)> {
        let mut out = Vec::new();
        for f in &self.def.files {
            if let FileDef::RabbitConf {
                name,
                admin_user,
                admin_password,
                ..
            } = f
            {
                out.push((
                    format!("{name} user"),
                    EnvSource::Secret(admin_user.clone()),
                ));
                out.push((
                    format!("{name} password"),
                    EnvSource::Secret(admin_password.clone()),
                ));
            }
        }
        out
    }

    async fn summary(&self) -> Result<SpecSummary, StepError> {
        let mut all = self.def.env.clone();
        all.extend(self.file_secrets());
        let versions = secret_files::versions(&self.shared.secrets, &all).await?;
        let env = self
            .def
            .env
            .iter()
            .map(|(n, s)| (n.clone(), spec::shown(s, versions.get(n).copied())))
            .collect();
        let mut files = BTreeMap::new();
        for f in &self.def.files {
            let shown = match f {
                FileDef::Config { content, .. } => {
                    format!("sha256:{}", &spec::sha256_hex(content.as_bytes())[..12])
                }
                FileDef::RabbitConf { rest, .. } => {
                    let mut parts = vec![format!(
                        "sha256:{}",
                        &spec::sha256_hex(rest.as_bytes())[..12]
                    )];
                    for (n, s) in self.file_secrets() {
                        if n.starts_with(f.name()) {
                            parts.push(spec::shown(&s, versions.get(&n).copied()));
                        }
                    }
                    parts.join(" ")
                }
            };
            files.insert(f.name().to_string(), shown);
        }
        let ports = self
            .def
            .ports
            .iter()
            .map(|p| match p.host {
                Some(h) => format!("127.0.0.1:{h}->{}", p.container),
                None => p.container.to_string(),
            })
            .collect::<Vec<_>>()
            .join(", ");
        Ok(SpecSummary {
            image: self.def.image.clone(),
            env,
            ports,
            cpu: format!("{}", self.def.limits.nano_cpus as f64 / 1e9),
            memory: self.def.limits.memory.to_string(),
            restart: "unless-stopped".into(),
            health: format!(
                "{} every {HEALTH_INTERVAL_S}s, start {}s",
                self.def.health[1..].join(" "),
                self.def.start_seconds
            ),
            files,
            runtime: format!(
                "user {}, pids {}, entrypoint {:?}, cmd {:?}, tmpfs {:?}, binds {:?}, read-only, no capabilities",
                self.def.user,
                self.def.limits.pids,
                self.def.entrypoint,
                self.def.cmd,
                self.def.tmpfs,
                self.def.binds
            ),
        })
    }

    fn network(&self) -> String {
        spec::network_name(&self.shared.profile)
    }

    /// The secret files: the env's secrets, and the files rendered with them.
    async fn delivery(&self) -> Result<secret_files::Delivery, StepError> {
        let mut delivery = secret_files::resolve(&self.shared.secrets, &self.def.env).await?;
        for f in &self.def.files {
            if let FileDef::RabbitConf {
                name,
                admin_user,
                admin_password,
                rest,
            } = f
            {
                let resolve = |r: &taskctl_core::profile::value::SecretRef| {
                    let secrets = self.shared.secrets.clone();
                    let r = r.clone();
                    async move {
                        secrets
                            .resolve(&r)
                            .await
                            .map_err(|e| invalid(e.to_string()))
                    }
                };
                let user = resolve(admin_user).await?;
                let password = resolve(admin_password).await?;
                let conf = stack::rabbit_conf(user.value.expose(), password.value.expose(), rest)
                    .map_err(StepError::from)?;
                delivery
                    .files
                    .insert(name.clone(), taskctl_core::secrets::Secret::new(conf));
            }
        }
        Ok(delivery)
    }

    fn body(
        &self,
        image: String,
        env: Vec<String>,
        labels: BTreeMap<String, String>,
        mounts: Vec<Mount>,
    ) -> ContainerCreateBody {
        let d = &self.def;
        let secs = |s: i64| s * 1_000_000_000;
        let exposed: HashMap<String, HashMap<(), ()>> = d
            .ports
            .iter()
            .map(|p| (format!("{}/tcp", p.container), HashMap::new()))
            .collect();
        let bindings: HashMap<String, Option<Vec<PortBinding>>> = d
            .ports
            .iter()
            .filter_map(|p| {
                p.host.map(|h| {
                    (
                        format!("{}/tcp", p.container),
                        Some(vec![PortBinding {
                            host_ip: Some("127.0.0.1".into()),
                            host_port: Some(h.to_string()),
                        }]),
                    )
                })
            })
            .collect();
        let tmpfs: HashMap<String, String> = d
            .tmpfs
            .iter()
            .map(|t| {
                (
                    t.to_string(),
                    "rw,noexec,nosuid,size=64m,mode=1777".to_string(),
                )
            })
            .collect();
        let binds: Vec<String> = d
            .binds
            .iter()
            .map(|(host, container)| format!("{host}:{container}:ro"))
            .collect();
        ContainerCreateBody {
            image: Some(image),
            hostname: Some(d.name.to_string()),
            stop_signal: d.stop_signal.map(String::from),
            user: Some(d.user.clone()),
            entrypoint: d.entrypoint.clone(),
            cmd: d.cmd.clone(),
            env: Some(env),
            labels: Some(hash_map(labels)),
            exposed_ports: Some(exposed),
            healthcheck: Some(HealthConfig {
                test: Some(d.health.clone()),
                interval: Some(secs(HEALTH_INTERVAL_S)),
                timeout: Some(secs(10)),
                retries: Some(3),
                start_period: Some(secs(i64::from(d.start_seconds))),
                start_interval: Some(secs(1)),
            }),
            host_config: Some(HostConfig {
                // `no` until healthy (a crash must stay visible, see
                // `engine::wait_healthy`), then `unless-stopped`.
                restart_policy: Some(DockerRestart {
                    name: Some(RestartPolicyNameEnum::NO),
                    maximum_retry_count: None,
                }),
                port_bindings: Some(bindings),
                mounts: Some(mounts),
                network_mode: Some(self.network()),
                binds: (!binds.is_empty()).then_some(binds),
                extra_hosts: d
                    .host_gateway
                    .then(|| vec!["host.docker.internal:host-gateway".to_string()]),
                tmpfs: Some(tmpfs),
                readonly_rootfs: Some(true),
                cap_drop: Some(vec!["ALL".into()]),
                security_opt: Some(vec!["no-new-privileges:true".into()]),
                pids_limit: Some(d.limits.pids),
                memory: Some(d.limits.memory),
                nano_cpus: Some(d.limits.nano_cpus),
                ..Default::default()
            }),
            networking_config: Some(NetworkingConfig {
                endpoints_config: Some(
                    [(
                        self.network(),
                        EndpointSettings {
                            aliases: Some(vec![d.name.to_string()]),
                            ..Default::default()
                        },
                    )]
                    .into(),
                ),
            }),
            ..Default::default()
        }
    }
}

/// The outputs once the server runs.
fn applied(plan: &StepPlan) -> Outputs {
    let mut o = plan.outputs.clone();
    o.insert(STARTS_OUTPUT.into(), "false".into());
    o
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
    fn timeout(&self) -> Duration {
        Duration::from_secs(u64::from(self.def.start_seconds) + 120)
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
        let mut outputs: Outputs = [("container".to_string(), name.clone())].into();
        for p in &self.def.ports {
            if let Some(h) = p.host {
                outputs.insert(format!("port.{}", p.name), h.to_string());
            }
        }
        // Nothing to compare when there is no container: its secrets are
        // not read (on destroy, Vault's own container may be gone already).
        let change = match inspect(&self.shared.docker, &name).await? {
            None => Change::create("not found"),
            Some(c) => {
                let desired = self.summary().await?;
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
        // Steps after this one that would ask the server (Vault's
        // initialization) know it is not there yet.
        outputs.insert(STARTS_OUTPUT.into(), change.action.is_change().to_string());
        Ok(StepPlan { change, outputs })
    }

    async fn apply(&self, ctx: &StepContext, plan: &StepPlan) -> Result<Outputs, StepError> {
        let docker = &self.shared.docker;
        let name = service_container(&self.shared.profile, self.def.name);
        let desired = self.summary().await?;
        let deadline = Duration::from_secs(u64::from(self.def.start_seconds) + 60);
        if let Some(c) = inspect(docker, &name).await? {
            let labels = c.config.and_then(|c| c.labels).unwrap_or_default();
            let running = c.state.and_then(|s| s.running).unwrap_or(false);
            if labels.get(label::SPEC_HASH) == Some(&desired.hash()) {
                if !running {
                    ctx.progress(&format!("starting {name}"));
                    docker
                        .start_container(
                            &name,
                            None::<bollard::query_parameters::StartContainerOptions>,
                        )
                        .await
                        .map_err(|e| step_error(&format!("starting {name}"), e))?;
                    engine::wait_healthy(docker, ctx, &name, deadline).await?;
                }
                return Ok(applied(plan));
            }
            // The data is on the volume: a new container picks it up.
            ctx.progress(&format!("replacing {name}"));
            engine::remove(docker, &name, 30).await?;
        }
        let image = ensure_image(
            &self.shared,
            &self.def.image,
            &format!("services.{}", self.def.name),
        )
        .await?;
        let delivery = self.delivery().await?;
        let mut labels = base_labels(&self.shared.profile, "service");
        labels.insert(label::SERVICE.into(), self.def.name.into());
        labels.insert(label::SPEC_HASH.into(), desired.hash());
        labels.insert(
            label::SPEC.into(),
            serde_json::to_string(&desired).expect("plain data"),
        );
        labels.insert(label::RELEASE.into(), ctx.run_id.clone());
        let mut mounts: Vec<Mount> = secret_files::mount(&delivery).into_iter().collect();
        mounts.push(Mount {
            target: Some(self.def.data_path.into()),
            source: Some(volume_name(&self.shared.profile, self.def.name)),
            typ: Some(MountTypeEnum::VOLUME),
            ..Default::default()
        });
        let config: BTreeMap<String, String> = self
            .def
            .files
            .iter()
            .filter_map(|f| match f {
                FileDef::Config { name, content } => Some((name.clone(), content.clone())),
                FileDef::RabbitConf { .. } => None,
            })
            .collect();
        if !config.is_empty() {
            mounts.push(secret_files::config_mount(stack::CONFIG_DIR));
        }
        for (host, _) in &self.def.binds {
            std::fs::create_dir_all(host)
                .map_err(|e| StepError::new(ErrorKind::Other, format!("creating {host}: {e}")))?;
        }
        let body = self.body(image, delivery.env.clone(), labels, mounts);
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
        let prepared = async {
            secret_files::upload(docker, &name, &delivery, self.def.file_owner).await?;
            secret_files::upload_config(docker, &name, stack::CONFIG_DIR, &config).await?;
            docker
                .start_container(
                    &name,
                    None::<bollard::query_parameters::StartContainerOptions>,
                )
                .await
                .map_err(|e| step_error(&format!("starting {name}"), e))
        };
        if let Err(e) = prepared.await {
            let _ = force_remove(docker, &name).await;
            return Err(e);
        }
        ctx.progress(&format!("started {name} ({})", self.def.image));
        engine::wait_healthy(docker, ctx, &name, deadline).await?;
        docker
            .update_container(
                &name,
                bollard::models::ContainerUpdateBody {
                    restart_policy: Some(DockerRestart {
                        name: Some(RestartPolicyNameEnum::UNLESS_STOPPED),
                        maximum_retry_count: None,
                    }),
                    ..Default::default()
                },
            )
            .await
            .map_err(|e| step_error(&format!("setting the restart policy of {name}"), e))?;
        Ok(applied(plan))
    }

    async fn destroy(&self, _ctx: &StepContext, _plan: &StepPlan) -> Result<(), StepError> {
        let name = service_container(&self.shared.profile, self.def.name);
        engine::remove(&self.shared.docker, &name, 30).await
    }
}
