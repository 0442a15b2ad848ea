//! Agent and component replicas: created side by side, replaced one at a
//! time behind health checks.

use super::*;

/// Replica `index` of an agent: created at once when nothing runs in its
/// place, replaced on its [`Rollout`] turn when a running container must
/// be protected (see its `converge`).
pub struct Replica {
    pub id: StepId,
    pub shared: Arc<Shared>,
    /// An agent, or a component (see [`Self::component_body`]).
    pub kind: WorkloadKind,
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

/// The same for a component: compose's default. Components run with an
/// init process (`init: true`), so SIGTERM reaches a program that is PID 1
/// in its image and ignores it there.
pub(super) const COMPONENT_STOP_SECONDS: i32 = 10;

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
        let mut spec = ReplicaSpec::of(
            &self.shared.profile,
            self.kind,
            &self.agent,
            self.index,
            image,
        )
        .map_err(StepError::from)?;
        spec.secret_versions = secret_files::versions(&self.shared.secrets, &spec.env).await?;
        Ok(spec)
    }

    fn primary(&self) -> String {
        replica_name(&self.shared.profile, &self.agent.name, self.index)
    }

    /// How long a stopping container gets before SIGKILL.
    fn stop_seconds(&self) -> i32 {
        match self.kind {
            WorkloadKind::Agent => STOP_SECONDS,
            WorkloadKind::Component => COMPONENT_STOP_SECONDS,
        }
    }

    /// Agents only: components are not scraped.
    fn file_sd_dir(&self) -> Option<PathBuf> {
        match self.kind {
            WorkloadKind::Agent => file_sd_dir(&self.shared.profile),
            WorkloadKind::Component => None,
        }
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
        if let Some(port) = metrics.filter(|_| self.kind == WorkloadKind::Agent) {
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
        let (http, metrics) = spec.ports(slot);
        let bridged = crate::stack::agents_bridged(&self.shared.profile);
        let network = spec::network_name(&self.shared.profile);
        let agent_id = self.primary();
        let delivery =
            secret_files::resolve(&self.shared.secrets, &spec.env_for(slot, &agent_id)).await?;
        let summary = spec.summary();
        let mut labels = base_labels(&self.shared.profile, self.kind.role());
        labels.insert(label::AGENT.into(), self.agent.name.clone());
        labels.insert(label::REPLICA.into(), self.index.to_string());
        labels.insert(label::SLOT.into(), slot.to_string());
        labels.insert(label::SPEC_HASH.into(), summary.hash());
        labels.insert(
            label::SPEC.into(),
            serde_json::to_string(&summary).expect("plain data"),
        );
        labels.insert(label::RELEASE.into(), ctx.run_id.clone());
        let body = match self.kind {
            WorkloadKind::Agent => self.agent_body(
                spec, slot, &delivery, labels, http, metrics, bridged, &network,
            ),
            WorkloadKind::Component => self.component_body(spec, &delivery, labels, &network),
        };
        self.create_and_start(ctx, spec, name, slot, body, &delivery)
            .await
    }

    /// An agent's container: taskctl's variables, ports per slot, the
    /// agent's own probe as the health check.
    #[allow(clippy::too_many_arguments)]
    fn agent_body(
        &self,
        spec: &ReplicaSpec,
        slot: u8,
        delivery: &secret_files::Delivery,
        labels: BTreeMap<String, String>,
        http: u16,
        metrics: u16,
        bridged: bool,
        network: &str,
    ) -> ContainerCreateBody {
        ContainerCreateBody {
            image: Some(spec.image.clone()),
            env: Some(delivery.env.clone()),
            labels: Some(hash_map(labels)),
            healthcheck: Some(health_check(spec, "/task-executor", http)),
            exposed_ports: bridged.then(|| {
                [http, metrics]
                    .iter()
                    .map(|p| (format!("{p}/tcp"), HashMap::new()))
                    .collect()
            }),
            networking_config: bridged.then(|| NetworkingConfig {
                endpoints_config: Some(
                    [(
                        network.to_string(),
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
                    network.to_string()
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
                mounts: secret_files::mount(delivery).map(|m| vec![m]),
                ..hardened(spec)
            }),
            ..Default::default()
        }
    }

    /// A component's container, hardened like every other: the profile's
    /// user (never root) and command, on the environment's network under
    /// its name (every replica: the network's DNS spreads callers over
    /// them) and `<name>-<i>`, no port published, its readiness probe run
    /// inside by the static probe taskctl copies into `/run/taskctl`.
    fn component_body(
        &self,
        spec: &ReplicaSpec,
        delivery: &secret_files::Delivery,
        labels: BTreeMap<String, String>,
        network: &str,
    ) -> ContainerCreateBody {
        let (uid, gid) = spec.user.unwrap_or((65534, 65534));
        let probe_port = spec.probe_port.unwrap_or(spec.http_base);
        let mut mounts: Vec<Mount> = secret_files::mount(delivery).into_iter().collect();
        mounts.push(secret_files::config_mount(PROBE_DIR));
        ContainerCreateBody {
            image: Some(spec.image.clone()),
            env: Some(delivery.env.clone()),
            cmd: (!spec.command.is_empty()).then(|| spec.command.clone()),
            user: Some(format!("{uid}:{gid}")),
            labels: Some(hash_map(labels)),
            healthcheck: Some(health_check(
                spec,
                &format!("{PROBE_DIR}/probe"),
                probe_port,
            )),
            networking_config: Some(NetworkingConfig {
                endpoints_config: Some(
                    [(
                        network.to_string(),
                        EndpointSettings {
                            aliases: Some(vec![
                                self.agent.name.clone(),
                                format!("{}-{}", self.agent.name, self.index),
                            ]),
                            ..Default::default()
                        },
                    )]
                    .into(),
                ),
            }),
            host_config: Some(HostConfig {
                network_mode: Some(network.to_string()),
                init: Some(true),
                mounts: Some(mounts),
                ..hardened(spec)
            }),
            ..Default::default()
        }
    }

    /// Creates `name` from `body`, gives it its files (secrets; a
    /// component's probe), and starts it.
    async fn create_and_start(
        &self,
        ctx: &StepContext,
        spec: &ReplicaSpec,
        name: &str,
        slot: u8,
        body: ContainerCreateBody,
        delivery: &secret_files::Delivery,
    ) -> Result<(), StepError> {
        let docker = &self.shared.docker;
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
        let uid = match spec.user {
            Some((uid, _)) => u64::from(uid),
            None => image::AGENT_UID,
        };
        let uploaded = match secret_files::upload(docker, name, delivery, uid).await {
            Ok(()) if self.kind == WorkloadKind::Component => upload_probe(docker, name).await,
            other => other,
        };
        if let Err(e) = uploaded {
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
        match self.kind {
            WorkloadKind::Agent => {
                let (http, metrics) = spec.ports(slot);
                ctx.progress(&format!("started {name} on ports {http}/{metrics}"))
            }
            WorkloadKind::Component => ctx.progress(&format!("started {name}")),
        }
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
            engine::remove(docker, &primary, self.stop_seconds()).await?;
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

/// What every replica container runs with, agent or component: no
/// capabilities, no privilege gain, a read-only root with a small `/tmp`,
/// the spec's limits, and restart policy `no` until it is healthy (see
/// [`Replica::start`]).
fn hardened(spec: &ReplicaSpec) -> HostConfig {
    HostConfig {
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
        memory_reservation: (spec.memory_reservation > 0 && spec.memory_reservation <= spec.memory)
            .then_some(spec.memory_reservation),
        ..Default::default()
    }
}

/// The readiness probe as a Docker health check: `probe` (a static
/// binary's `probe` command) GETs the path on `port` inside the container.
fn health_check(spec: &ReplicaSpec, probe: &str, port: u16) -> HealthConfig {
    let secs = |s: u32| i64::from(s) * 1_000_000_000;
    HealthConfig {
        test: Some(vec![
            "CMD".into(),
            probe.into(),
            "probe".into(),
            format!("http://127.0.0.1:{port}{}", spec.health.path),
        ]),
        interval: Some(secs(spec.health.interval_s)),
        timeout: Some(secs(spec.health.timeout_s)),
        retries: Some(i64::from(spec.health.retries)),
        start_period: Some(secs(spec.health.start_period_s)),
        start_interval: None,
    }
}

/// Where a component's container finds the probe its health check runs.
pub const PROBE_DIR: &str = "/run/taskctl";

/// Copies the static probe (the task-executor binary, whose `probe`
/// command GETs a URL and exits 0 on a 2xx) into the created component
/// container `name`: its image may have no HTTP client at all.
async fn upload_probe(docker: &Docker, name: &str) -> Result<(), StepError> {
    let binary = image::find_binary().map_err(StepError::from)?;
    let bytes = std::fs::read(&binary).map_err(|e| {
        StepError::new(
            ErrorKind::Other,
            format!("reading the probe {}: {e}", binary.display()),
        )
    })?;
    if image::is_dynamic_elf(&bytes).map_err(StepError::from)? {
        return Err(StepError::new(
            ErrorKind::Invalid,
            format!(
                "{} is linked dynamically, so it cannot run as the probe inside a component's image; build a static one with `{}`",
                binary.display(),
                image::STATIC_BUILD
            ),
        ));
    }
    secret_files::upload_probe(docker, name, PROBE_DIR, &bytes).await
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
        match self.kind {
            WorkloadKind::Agent => "docker-agent",
            WorkloadKind::Component => "docker-component",
        }
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
        Duration::from_secs(probe + 2 * self.stop_seconds() as u64 + 60) * self.index.max(1)
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
