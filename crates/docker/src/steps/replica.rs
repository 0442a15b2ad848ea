//! Agent replicas: created side by side, replaced one at a time behind health checks.

use super::*;

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
pub(super) fn restart_policy(
    policy: taskctl_core::profile::model::RestartPolicy,
) -> RestartPolicyNameEnum {
    use taskctl_core::profile::model::RestartPolicy as P;
    match policy {
        P::UnlessStopped => RestartPolicyNameEnum::UNLESS_STOPPED,
        P::Always => RestartPolicyNameEnum::ALWAYS,
        P::OnFailure => RestartPolicyNameEnum::ON_FAILURE,
        P::No => RestartPolicyNameEnum::NO,
    }
}

/// The restart policy a container runs with (`no` when unset).
pub(super) fn restart_policy_of(
    c: &bollard::models::ContainerInspectResponse,
) -> RestartPolicyNameEnum {
    c.host_config
        .as_ref()
        .and_then(|h| h.restart_policy.as_ref())
        .and_then(|p| p.name)
        .filter(|n| *n != RestartPolicyNameEnum::EMPTY)
        .unwrap_or(RestartPolicyNameEnum::NO)
}

/// Seconds the old container gets to drain on SIGTERM before SIGKILL: the
/// agent's default `SHUTDOWN_GRACE_PERIOD` (30 s) and a margin.
pub(super) const STOP_SECONDS: i32 = 35;

/// Most processes (threads included) an agent container may run: its
/// runtime's workers and the tasks' own, with room to spare.
const AGENT_PIDS: i64 = 512;

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
            .map_err(StepError::from)?;
        spec.secret_versions = secret_files::versions(&self.shared.secrets, &spec.env).await?;
        Ok(spec)
    }

    fn primary(&self) -> String {
        replica_name(&self.shared.profile, &self.agent.name, self.index)
    }

    fn file_sd_dir(&self) -> Option<PathBuf> {
        file_sd_dir(&self.shared.profile)
    }

    /// On the environment's network, the name the container in `slot` is
    /// reached by (the two containers of a replica during a replacement
    /// are in different slots).
    fn slot_alias(&self, slot: u8) -> String {
        format!("{}-{}-s{slot}", self.agent.name, self.index)
    }

    /// The slot a metrics port of this replica belongs to (ports are
    /// `base + 2·(index−1) + slot`, see [`spec::replica_ports`]).
    fn slot_of(&self, metrics_port: u16) -> u8 {
        let base = self
            .agent
            .ports
            .iter()
            .find(|p| p.name == "metrics")
            .map(|p| p.port)
            .unwrap_or(9090);
        u8::from(metrics_port.wrapping_sub(base) % 2 == 1)
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
        let (http, metrics) = spec.ports(slot);
        let bridged = crate::stack::agents_bridged(&self.shared.profile);
        let network = spec::network_name(&self.shared.profile);
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
            exposed_ports: bridged.then(|| {
                [http, metrics]
                    .iter()
                    .map(|p| (format!("{p}/tcp"), HashMap::new()))
                    .collect()
            }),
            networking_config: bridged.then(|| NetworkingConfig {
                endpoints_config: Some(
                    [(
                        network.clone(),
                        EndpointSettings {
                            aliases: Some(vec![self.slot_alias(slot)]),
                            ..Default::default()
                        },
                    )]
                    .into(),
                ),
            }),
            host_config: Some(HostConfig {
                // On the environment's network when taskctl runs the
                // services too; on the host's when they are on its loopback
                // (a bridged container cannot reach that).
                network_mode: Some(if bridged {
                    network.clone()
                } else {
                    "host".into()
                }),
                port_bindings: bridged.then(|| {
                    [http, metrics]
                        .iter()
                        .map(|p| {
                            (
                                format!("{p}/tcp"),
                                Some(vec![PortBinding {
                                    host_ip: Some("127.0.0.1".into()),
                                    host_port: Some(p.to_string()),
                                }]),
                            )
                        })
                        .collect()
                }),
                readonly_rootfs: Some(true),
                cap_drop: Some(vec!["ALL".into()]),
                security_opt: Some(vec!["no-new-privileges:true".into()]),
                pids_limit: Some(AGENT_PIDS),
                tmpfs: Some([("/tmp".to_string(), "rw,noexec,nosuid,size=64m".to_string())].into()),
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
        let bridged = crate::stack::agents_bridged(&self.shared.profile);
        let targets: Vec<String> = metrics_ports
            .iter()
            .map(|p| {
                if bridged {
                    format!("{}:{p}", self.slot_alias(self.slot_of(*p)))
                } else {
                    format!("127.0.0.1:{p}")
                }
            })
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
pub(super) fn slot_and_hash(labels: &HashMap<String, String>) -> (u8, Option<&String>) {
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
        let primary = self.primary();
        let leftover = inspect(docker, &next_name(&primary)).await?.is_some();
        // Nothing to compare with: the secrets are not read (on a destroy,
        // the Vault container may be gone already).
        let Some(c) = inspect(docker, &primary).await? else {
            self.rollout.announce(self.index, false);
            return Ok(StepPlan {
                change: Change::create("not found"),
                outputs: self.outputs(None),
            });
        };
        let spec = self.spec(ctx).await?;
        let desired = spec.summary();
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
