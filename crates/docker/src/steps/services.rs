//! Managed services (one container each, with its volume) and their volumes.

use super::*;

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
