//! taskctl's `docker` target: the stack on one Docker engine, through
//! bollard (`DOCKER_HOST` or the local socket).
//!
//! Steps, one per engine object, each found by its labels
//! (`taskctl.dev/environment=<name>.<env>`, `taskctl.dev/managed-by`,
//! `taskctl.dev/release`, `taskctl.dev/spec-hash`):
//!
//! - `network`: the profile's bridge network (`target.docker.network`),
//!   which managed services (and, beside them, the agents) join;
//! - `volumes/<service>`, `services/<service>`: the services taskctl runs
//!   (OpenBao, RabbitMQ, PostgreSQL, MongoDB, Prometheus, Alertmanager; see
//!   [`stack`]), each one hardened container with its named volume, waited
//!   on until its health check passes (`external` services get none; their
//!   addresses are what the agents use). A missing image is an error at
//!   plan time naming the image and how to provide it (`scripts/images.sh`
//!   for the offline `taskctl/*` images); it is pulled only when
//!   `target.docker.registry` is set, so nothing hangs on a registry the
//!   machine cannot reach. A managed Vault starts before anything asks it:
//!   see [`DockerProvider::secrets_order`](Provider::secrets_order);
//! - `images/<agent>`: the agent image, built without any pull (see
//!   [`image`]);
//! - `agents/<agent>/<i>`: replica i, replaced by a rolling update when its
//!   spec hash differs. The replicas of an agent do not depend on one
//!   another: those with no running container (a first deploy, a scale-up)
//!   start side by side, while replacing running ones takes turns from the
//!   agent's [`rollout::Rollout`], one at a time in replica order, each
//!   replacement healthy before the container it replaces is stopped (see
//!   [`steps::Replica`]);
//! - `agents/sweep`: removes agent containers the profile no longer has;
//!   on `destroy`, everything labelled with the environment (volumes only
//!   with `--purge`).
//!
//! **Networking.** When taskctl runs the broker or Prometheus
//! ([`stack::agents_bridged`]), the agents join the environment's network:
//! they reach the broker by its name there, Prometheus scrapes each replica
//! by a per-slot alias, and only ports published on 127.0.0.1 reach them
//! from the host. Otherwise the agents run with the host's network: the
//! broker, Prometheus and Vault are then on the host's loopback
//! (scripts/test-env.sh, a developer's own servers), which a bridged
//! container cannot reach. Either way replica i uses
//! `port + 2·(i−1) + slot` for the profile's `http` and `metrics` ports,
//! and a replacement starts in the other slot, so old and new run side by
//! side until the new one is healthy. Each replica's metrics address is
//! written to the Prometheus `file_sd` directory ([`steps::file_sd_dir`])
//! as soon as its container starts (beside the address of the container it
//! replaces, until that one is gone). Every container runs non-root with
//! no capabilities, `no-new-privileges`, a read-only root file system and
//! limits.
//!
//! Releases live on the engine too ([`release::DockerReleaseStore`]).

pub mod engine;
pub mod error;
pub mod image;
pub mod release;
pub mod rollout;
pub mod secret_files;
pub mod spec;
pub mod stack;
pub mod steps;
pub mod verify;

use async_trait::async_trait;
use bollard::Docker;
use std::collections::BTreeMap;
use std::sync::Arc;
use taskctl_core::Severity;
use taskctl_core::engine::{Step, StepId};
use taskctl_core::ops::{
    Finding, Layer, OpsError, Provider, ReleaseFacts, Scope, SecretsOrder, Workload,
};
use taskctl_core::profile::Profile;
use taskctl_core::release::ReleaseStore;

pub use crate::error::DockerError;
use crate::spec::label;
use crate::steps::{AgentImage, Network, Replica, Service, Shared, Sweep, Volume};

/// Options of the docker target that are not in the profile.
#[derive(Debug, Clone, Default)]
pub struct DockerOptions {
    /// `destroy --purge`: remove the environment's volumes too.
    pub purge: bool,
    /// Resolves secret references; the default reads `env:` ones only.
    pub secrets: Arc<taskctl_core::secrets::Secrets>,
}

pub struct DockerProvider {
    docker: Docker,
    options: DockerOptions,
}

impl DockerProvider {
    /// Connects to `DOCKER_HOST` or the local socket and negotiates the API
    /// version.
    pub async fn connect(options: DockerOptions) -> Result<Self, OpsError> {
        Ok(DockerProvider {
            docker: engine::connect().await.map_err(OpsError::from)?,
            options,
        })
    }

    /// The latest PostgreSQL dump restored into a scratch database beside
    /// the real one, its tables counted, the scratch database dropped: what
    /// the rollback's `backup_verification` and the checklist rely on.
    /// `None` without a managed database with backups.
    async fn restore_latest_backup(&self, profile: &Profile) -> Result<Option<String>, OpsError> {
        let has_backups = stack::managed_services(profile)
            .map_err(OpsError::from)?
            .iter()
            .any(|s| s.name == "postgres-backup");
        if !has_backups {
            return Ok(None);
        }
        let container = steps::service_container(profile, "postgres-backup");
        let script = format!(
            r#"set -u
export PGPASSWORD="$(cat "$PGPASSWORD_FILE")"
f=$(ls -1t {dir}/*.dump 2>/dev/null | head -n 1)
[ -n "$f" ] || {{ echo "no backup in {dir}"; exit 3; }}
db="taskctl_verify_$(date -u +%s)"
createdb "$db" || exit 4
if pg_restore --exit-on-error -d "$db" "$f" >/dev/null; then
  n=$(psql -d "$db" -Atc "select count(*) from pg_catalog.pg_tables where schemaname not in ('pg_catalog','information_schema')")
  rc=0
else
  rc=5
fi
dropdb "$db"
[ $rc -eq 0 ] && echo "restored $f into a scratch database ($n table(s)), then dropped it" || echo "$f does not restore"
exit $rc
"#,
            dir = stack::BACKUP_DIR
        );
        let (code, output) = engine::exec(&self.docker, &container, &["/bin/sh", "-c", &script])
            .await
            .map_err(|e| OpsError::Provider(format!("backup_verification: {}", e.message)))?;
        let said = output.trim().to_string();
        if code == 0 {
            Ok(Some(said))
        } else {
            Err(OpsError::Provider(format!(
                "backup_verification failed in {container} (exit {code}): {said}"
            )))
        }
    }

    pub fn docker(&self) -> &Docker {
        &self.docker
    }

    fn shared(&self, profile: &Profile) -> Arc<Shared> {
        Arc::new(Shared {
            docker: self.docker.clone(),
            profile: profile.clone(),
            purge: self.options.purge,
            secrets: self.options.secrets.clone(),
        })
    }
}

#[async_trait]
impl Provider for DockerProvider {
    fn name(&self) -> &str {
        "docker"
    }

    fn layers(&self) -> Vec<Layer> {
        vec![Layer::Infrastructure, Layer::Services, Layer::Agents]
    }

    async fn preflight(&self, profile: &Profile, _scope: &Scope) -> Result<Vec<Finding>, OpsError> {
        let mut findings = Vec::new();
        let mut error = |check: &str, message: String| {
            findings.push(Finding {
                severity: Severity::Error,
                check: check.to_string(),
                message,
            })
        };
        if let Err(e) = self.docker.ping().await {
            error(
                "docker_engine",
                format!("the Docker engine does not answer: {e}"),
            );
            return Ok(findings);
        }
        let registry = profile
            .target
            .docker
            .as_ref()
            .and_then(|d| d.registry.clone());
        // A Vault taskctl initializes itself cannot be asked before its step.
        let own_vault = profile
            .services
            .vault
            .as_ref()
            .is_some_and(|v| v.cluster.is_some());
        match steps::managed_services(profile) {
            Err(e) => error("services", e.to_string()),
            Ok(services) => {
                for s in services {
                    // A port another program holds fails the start halfway
                    // through a deploy; say so before anything changes.
                    let name = steps::service_container(profile, s.name);
                    let exists = matches!(engine::inspect(&self.docker, &name).await, Ok(Some(_)));
                    for p in s.ports.iter().filter(|_| !exists) {
                        if let Some(host) = p.host
                            && std::net::TcpListener::bind(("127.0.0.1", host)).is_err()
                        {
                            error(
                                "ports",
                                format!(
                                    "services.{}: 127.0.0.1:{host} (its {} port) is taken by another program; free it or publish elsewhere with target.docker.publish.{}",
                                    s.name, p.name, p.name
                                ),
                            );
                        }
                    }
                    for (name, source) in &s.env {
                        if let spec::EnvSource::Secret(r) = source
                            && !own_vault
                            && !self.options.secrets.is_pending(r)
                            && let Err(e) = self.options.secrets.resolve(r).await
                        {
                            error("secrets", format!("services.{} env {name}: {e}", s.name));
                        }
                    }
                    match image::local_id(&self.docker, &s.image).await {
                        Ok(Some(_)) => {}
                        Ok(None) if registry.is_some() => {}
                        Ok(None) => error(
                            "images",
                            image::missing_image(&s.image, &format!("services.{}", s.name)).message,
                        ),
                        Err(e) => error("images", e.message),
                    }
                }
            }
        }
        for (kind, agent) in profile.workloads() {
            match image::source(agent).and_then(|s| image::prepare(agent, &s).map(|_| ())) {
                Ok(()) => {}
                Err(e) => error("agent_image", e.to_string()),
            }
            // A component's health check runs the static probe taskctl
            // copies in (see `steps::Replica`).
            if kind == taskctl_core::profile::model::WorkloadKind::Component
                && let Err(e) = image::find_binary()
            {
                error(
                    "component_probe",
                    format!("component `{}` needs the static probe: {e}", agent.name),
                );
            }
            for (name, source) in agent.env.iter().filter_map(|v| {
                v.secret
                    .as_ref()
                    .and_then(|s| s.get().cloned())
                    .map(|s| (&v.name, s))
            }) {
                if own_vault || self.options.secrets.is_pending(&source) {
                    continue;
                }
                if let Err(e) = self.options.secrets.resolve(&source).await {
                    error(
                        "secrets",
                        format!("{} `{}` env {name}: {e}", kind.role(), agent.name),
                    );
                }
            }
        }
        if let Some(dir) = profile
            .target
            .docker
            .as_ref()
            .and_then(|d| d.prometheus_file_sd.as_ref())
            .filter(|dir| !dir.is_empty())
            && !std::path::Path::new(dir).is_dir()
        {
            error(
                "prometheus_file_sd",
                format!("target.docker.prometheus_file_sd: {dir} is not a directory"),
            );
        }
        Ok(findings)
    }

    /// The network, the volumes and Vault's own container come before Vault
    /// is asked; the other services take secrets from it; the agents
    /// need the broker user too.
    fn secrets_order(&self, step: &StepId) -> SecretsOrder {
        let id = step.as_str();
        if id == "network" || id.starts_with("volumes/") || id == "services/vault" {
            SecretsOrder::Before
        } else if id.starts_with("services/") {
            SecretsOrder::AfterSecrets
        } else {
            SecretsOrder::AfterAll
        }
    }

    fn steps(&self, profile: &Profile, scope: &Scope) -> Result<Vec<Arc<dyn Step>>, OpsError> {
        let shared = self.shared(profile);
        let mut out: Vec<Arc<dyn Step>> = Vec::new();
        let network = StepId::new("network");
        let services = steps::managed_services(profile).map_err(OpsError::from)?;
        let mut service_ids = Vec::new();
        if scope.includes(Layer::Infrastructure) {
            out.push(Arc::new(Network {
                id: network.clone(),
                shared: shared.clone(),
            }));
            for s in &services {
                out.push(Arc::new(Volume {
                    id: StepId::new(format!("volumes/{}", s.name)),
                    shared: shared.clone(),
                    service: s.name,
                }));
            }
        }
        if scope.includes(Layer::Services) {
            for s in &services {
                let mut deps: Vec<StepId> = s
                    .after
                    .iter()
                    .map(|a| StepId::new(format!("services/{a}")))
                    .collect();
                if scope.includes(Layer::Infrastructure) {
                    deps.push(network.clone());
                    deps.push(StepId::new(format!("volumes/{}", s.name)));
                }
                // Services take their secrets from a Vault taskctl runs: it
                // starts first and, on destroy, goes last.
                if s.name != "vault" && services.iter().any(|v| v.name == "vault") {
                    deps.push(StepId::new("services/vault"));
                }
                let id = StepId::new(format!("services/{}", s.name));
                service_ids.push(id.clone());
                out.push(Arc::new(Service {
                    id,
                    shared: shared.clone(),
                    def: s.clone(),
                    deps,
                }));
            }
        }
        if scope.includes(Layer::Agents) {
            let mut replicas = Vec::new();
            // Each workload's replica steps, for `depends_on`.
            let replica_ids = |name: &str| -> Vec<StepId> {
                profile
                    .workloads()
                    .filter(|(_, w)| w.name == name)
                    .flat_map(|(kind, w)| {
                        (1..=w.replicas)
                            .map(move |i| StepId::new(format!("{}/{}/{i}", kind.list(), w.name)))
                    })
                    .collect()
            };
            for (kind, agent) in profile.workloads() {
                let image_step = StepId::new(format!("images/{}", agent.name));
                out.push(Arc::new(AgentImage {
                    id: image_step.clone(),
                    shared: shared.clone(),
                    agent: agent.clone(),
                }));
                // What it names in `depends_on` is running and healthy
                // first: other workloads' replicas, services taskctl runs.
                let mut after = Vec::new();
                for dep in &agent.depends_on {
                    let service = StepId::new(format!("services/{dep}"));
                    if service_ids.contains(&service) {
                        after.push(service);
                    } else {
                        after.extend(replica_ids(dep));
                    }
                }
                // Replacing running replicas takes turns (never fewer than
                // N−1 serving); starting new ones does not wait.
                let rollout = Arc::new(rollout::Rollout::new(&agent.name));
                for index in 1..=agent.replicas {
                    let id = StepId::new(format!("{}/{}/{index}", kind.list(), agent.name));
                    let mut deps = vec![image_step.clone()];
                    // Containers on the environment's network: made after
                    // it, and on destroy removed before it.
                    if scope.includes(Layer::Infrastructure) {
                        deps.push(network.clone());
                    }
                    deps.extend(service_ids.iter().cloned());
                    deps.extend(after.iter().cloned());
                    replicas.push(id.clone());
                    out.push(Arc::new(Replica {
                        id,
                        shared: shared.clone(),
                        kind,
                        agent: agent.clone(),
                        index,
                        image_step: image_step.clone(),
                        deps,
                        rollout: rollout.clone(),
                    }));
                }
            }
            out.push(Arc::new(Sweep {
                id: StepId::new("agents/sweep"),
                shared: shared.clone(),
                deps: replicas,
                everything: scope.includes(Layer::Infrastructure)
                    && scope.includes(Layer::Services),
            }));
        }
        Ok(out)
    }

    async fn verify(
        &self,
        profile: &Profile,
        _sink: Arc<dyn taskctl_core::events::EventSink>,
        cancel: &tokio_util::sync::CancellationToken,
    ) -> Result<Vec<taskctl_core::ops::Check>, OpsError> {
        verify::verify(&self.docker, profile, &self.options.secrets, cancel).await
    }

    fn releases(&self, profile: &Profile) -> Option<Arc<dyn ReleaseStore>> {
        Some(Arc::new(release::DockerReleaseStore {
            docker: self.docker.clone(),
            environment: spec::environment_label(profile),
        }))
    }

    /// The latest PostgreSQL dump restored into a scratch database beside
    /// the real one, its tables counted, the scratch database dropped:
    /// a backup that cannot be restored fails the rollback before anything
    /// changes. `None` without a managed database with backups.
    async fn verify_backups(
        &self,
        profile: &Profile,
        _target: &taskctl_core::release::Release,
    ) -> Result<Option<String>, OpsError> {
        self.restore_latest_backup(profile).await
    }

    /// The checklist's view of the running stack: the broker login over
    /// TLS, PostgreSQL's answer to an SSLRequest, the HTTP APIs asked
    /// without credentials, the alerting rules Prometheus loaded, and
    /// whether the newest dump restores (into a scratch database, dropped).
    async fn checklist_probes(
        &self,
        profile: &Profile,
    ) -> Result<Option<Vec<taskctl_core::ops::checklist::Probe>>, OpsError> {
        use taskctl_gates::live;
        let env = spec::environment_label(profile);
        let found = engine::containers_with(&self.docker, &[(label::ENVIRONMENT, &env)])
            .await
            .map_err(|e| OpsError::Provider(e.message))?;
        if found.is_empty() {
            return Ok(None);
        }
        let budget = std::time::Duration::from_secs(10);
        let ep = verify::endpoints(&self.docker, profile, &self.options.secrets).await?;
        let managed = stack::managed_services(profile).unwrap_or_default();
        let published = |service: &str, port: &str| {
            managed
                .iter()
                .find(|s| s.name == service)
                .and_then(|s| s.host_port(port))
        };
        let mut probes = Vec::new();
        if let Some(url) = &ep.amqp_url {
            let broker = taskctl_gates::Broker {
                url,
                ca: ep.broker_ca.as_deref(),
                via: None,
            };
            probes.push(live::broker(broker, budget).await);
        }
        if let Some(port) = published("postgres", "postgres") {
            probes.push(live::postgres_tls(&format!("127.0.0.1:{port}"), budget).await);
        }
        if let Some(url) = &ep.prometheus_url {
            let url = url.trim_end_matches('/');
            probes.push(
                live::unauthenticated(
                    "Prometheus HTTP API",
                    &format!("{url}/api/v1/status/buildinfo"),
                    budget,
                )
                .await,
            );
            probes.push(live::alerting_rules(url, budget).await);
        }
        if let Some(port) = published("alertmanager", "alertmanager") {
            probes.push(
                live::unauthenticated(
                    "Alertmanager HTTP API",
                    &format!("http://127.0.0.1:{port}/api/v2/status"),
                    budget,
                )
                .await,
            );
        }
        if let Some(port) = published("rabbitmq", "rabbitmq_management") {
            probes.push(
                live::unauthenticated(
                    "RabbitMQ management API",
                    &format!("http://127.0.0.1:{port}/api/overview"),
                    budget,
                )
                .await,
            );
        }
        if let Some(url) = &ep.vault_url {
            probes.push(
                live::unauthenticated(
                    "Vault API",
                    &format!("{}/v1/sys/mounts", url.trim_end_matches('/')),
                    budget,
                )
                .await,
            );
        }
        let backup = |seen: String, holds| taskctl_core::ops::checklist::Probe {
            item: "backup_and_restore".into(),
            what: "the newest PostgreSQL dump".into(),
            seen,
            holds: Some(holds),
        };
        match self.restore_latest_backup(profile).await {
            Ok(Some(said)) => probes.push(backup(said, true)),
            Ok(None) => {}
            Err(e) => probes.push(backup(e.to_string(), false)),
        }
        Ok(Some(probes))
    }

    /// Every container of the environment but release records: agents
    /// first, then components, then services, by name.
    async fn workloads(&self, profile: &Profile) -> Result<Option<Vec<Workload>>, OpsError> {
        let env = spec::environment_label(profile);
        let provider = |e: taskctl_core::engine::StepError| OpsError::Provider(e.message);
        let found = engine::containers_with(&self.docker, &[(label::ENVIRONMENT, &env)])
            .await
            .map_err(provider)?;
        // Containers carry the run that made them; releases name their run.
        let runs: BTreeMap<String, u32> = match self.releases(profile) {
            Some(store) => store
                .list()
                .await
                .map(|releases| {
                    releases
                        .into_iter()
                        .map(|r| (r.run_id, r.revision))
                        .collect()
                })
                .unwrap_or_default(),
            None => BTreeMap::new(),
        };
        let mut out = Vec::new();
        for c in found {
            let labels = c.labels.clone().unwrap_or_default();
            let role = labels.get(label::ROLE).cloned().unwrap_or_default();
            if role == "release" {
                continue;
            }
            let Some(name) = c
                .names
                .as_ref()
                .and_then(|n| n.first())
                .map(|n| n.trim_start_matches('/').to_string())
            else {
                continue;
            };
            let inspected = engine::inspect(&self.docker, &name)
                .await
                .map_err(provider)?;
            let restarts = inspected
                .as_ref()
                .and_then(|i| i.restart_count)
                .unwrap_or(0)
                .max(0) as u32;
            let state = inspected.as_ref().and_then(|i| i.state.clone());
            let last_termination = match state.as_ref() {
                Some(s) if s.oom_killed == Some(true) => "OOMKilled".to_string(),
                Some(s) if s.exit_code.is_some_and(|c| c != 0) => {
                    format!("exit {}", s.exit_code.unwrap_or_default())
                }
                _ => String::new(),
            };
            let health = state
                .as_ref()
                .and_then(|s| s.health.as_ref())
                .and_then(|h| h.status)
                .map(|h| h.to_string())
                .filter(|h| !h.is_empty())
                .unwrap_or_else(|| "none".into());
            let image = c
                .image_id
                .as_deref()
                .map(|id| id.trim_start_matches("sha256:").chars().take(12).collect())
                .unwrap_or_default();
            let release = labels
                .get(label::RELEASE)
                .map(|run| {
                    runs.get(run)
                        .map(u32::to_string)
                        .unwrap_or_else(|| run.clone())
                })
                .unwrap_or_default();
            out.push(Workload {
                name,
                role,
                state: state
                    .and_then(|s| s.status)
                    .map(|s| s.to_string())
                    .or(c.state.map(|s| s.to_string()))
                    .unwrap_or_default(),
                health,
                image,
                release,
                restarts,
                last_termination,
                node: String::new(),
            });
        }
        // Agents, then components, then the services and the rest.
        let rank = |role: &str| match role {
            "agent" => 0,
            "component" => 1,
            _ => 2,
        };
        out.sort_by(|a, b| (rank(&a.role), &a.name).cmp(&(rank(&b.role), &b.name)));
        Ok(Some(out))
    }

    /// Images by id (`<profile image>@sha256:<image id>`: local images have
    /// no registry digest, and the image id is what `docker` resolves), the
    /// spec hash of each agent (env + config), and every secret reference.
    async fn observe_release(&self, profile: &Profile) -> Result<ReleaseFacts, OpsError> {
        let env = spec::environment_label(profile);
        let mut facts = ReleaseFacts {
            secret_refs: spec::secret_refs(profile),
            secret_versions: self.options.secrets.versions_used(),
            ..Default::default()
        };
        for (kind, agent) in profile.workloads() {
            let found = engine::containers_with(
                &self.docker,
                &[
                    (label::ENVIRONMENT, &env),
                    (label::ROLE, kind.role()),
                    (label::AGENT, &agent.name),
                ],
            )
            .await
            .map_err(|e| OpsError::Provider(e.message))?;
            // id → (spec hash, the name the containers were made from)
            let mut ids: BTreeMap<String, (String, Option<String>)> = BTreeMap::new();
            for c in found {
                let labels = c.labels.unwrap_or_default();
                if let (Some(id), Some(hash)) = (c.image_id, labels.get(label::SPEC_HASH)) {
                    ids.insert(id, (hash.clone(), c.image));
                }
            }
            if ids.len() > 1 {
                return Err(OpsError::Provider(format!(
                    "{} `{}` runs {} different images: a rollout is unfinished; deploy again",
                    kind.role(),
                    agent.name,
                    ids.len()
                )));
            }
            if let Some((id, (hash, used))) = ids.into_iter().next() {
                let repo = image::repository(&agent.image);
                let tag = agent.image.split('@').next().unwrap_or(&agent.image);
                // The content tag the containers run (`repo:1.0.0-<digest>`)
                // when they were made from one: restoring the release then
                // finds that tag and replaces nothing that already runs it.
                let name = match used.as_deref() {
                    Some(u) if image::repository(u) == repo && !u.contains('@') => u,
                    _ if tag.len() > repo.len() => tag,
                    _ => repo,
                };
                // Containers made from a pushed image run it by the digest
                // the registry stored (`--push`): the release names that,
                // which any engine can pull, not the local tag.
                let pinned = match used.as_deref() {
                    Some(u) if u.contains("@sha256:") && !u.starts_with("sha256:") => u.to_owned(),
                    _ => format!("{name}@{id}"),
                };
                facts.images.insert(agent.name.clone(), pinned);
                facts
                    .config_hashes
                    .insert(format!("{}/{}/env", kind.role(), agent.name), hash);
            }
        }
        Ok(facts)
    }
}
