//! Verification of a deployed Docker environment with `taskctl-gates`.
//!
//! The endpoints come from what runs: every agent container of the
//! environment, its ports from its replica number and port slot (the same
//! arithmetic the replica step used), its metrics address exactly as the
//! provider registered it with Prometheus (`127.0.0.1:<port>`, which is the
//! `instance` label the metric gate queries). The broker is the agents' own
//! `BROKER_URL` when the profile sets it literally, else the external
//! RabbitMQ of the profile. Restart counts and OOM kills for
//! `resource_exhaustion` come from inspecting each container.
//!
//! The gates run first, each retried for up to `TASKCTL_GATE_TIMEOUT`
//! (default 60 s); the automatic-rollback conditions are then watched for the
//! profile's `rollback.automatic.watch` (default: the longest `for` plus a
//! margin, at least 10 s) or `TASKCTL_WATCH_WINDOW` (`15s`, `2m`; `0s` skips
//! the watch), and not at all when the profile disables `rollback.automatic`.

use crate::engine;
use crate::spec::{self, ReplicaSpec, label};
use async_trait::async_trait;
use bollard::Docker;
use taskctl_core::ops::{Check, OpsError};
use taskctl_core::profile::Profile;
use taskctl_core::secrets::Secrets;
use taskctl_gates::{AgentEndpoint, ComponentEndpoint, Endpoints, RestartSource};
use tokio_util::sync::CancellationToken;

/// The environment's agent containers, with their names.
async fn agent_containers(
    docker: &Docker,
    profile: &Profile,
) -> Result<Vec<(String, std::collections::HashMap<String, String>)>, OpsError> {
    containers(docker, profile, "agent").await
}

/// The environment's serving containers of `role` (`agent`, `component`),
/// with their labels, by name.
async fn containers(
    docker: &Docker,
    profile: &Profile,
    role: &str,
) -> Result<Vec<(String, std::collections::HashMap<String, String>)>, OpsError> {
    let env = spec::environment_label(profile);
    let found = engine::containers_with(docker, &[(label::ENVIRONMENT, &env), (label::ROLE, role)])
        .await
        .map_err(|e| OpsError::Provider(e.message))?;
    let mut out: Vec<_> = found
        .into_iter()
        .filter_map(|c| {
            let name = c.names?.first()?.trim_start_matches('/').to_owned();
            Some((name, c.labels.unwrap_or_default()))
        })
        // A `.next` replacement left by a broken rollout is not serving.
        .filter(|(name, _)| !name.ends_with(".next"))
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}

/// Where the environment answers.
pub async fn endpoints(
    docker: &Docker,
    profile: &Profile,
    secrets: &Secrets,
) -> Result<Endpoints, OpsError> {
    let external = |e: Option<&taskctl_core::profile::External>| e.map(|e| e.url.clone());
    let services = &profile.services;
    let broker_env = match profile.agents.first() {
        Some(agent) => taskctl_gates::agent::broker_url(agent, secrets).await?,
        None => None,
    };
    let task_signing_key = match profile.agents.first() {
        Some(agent) => taskctl_gates::agent::signing_key(agent, secrets).await?,
        None => None,
    };
    // The CA bundle the agents trust the broker with (`BROKER_CA`, a value
    // or a secret): taskctl trusts it the same way, and nothing else.
    let broker_ca = match profile.agents.first() {
        Some(agent) => taskctl_gates::agent::env(agent, secrets, "BROKER_CA").await?,
        None => None,
    };
    let mut agents = Vec::new();
    for (name, labels) in agent_containers(docker, profile).await? {
        let (Some(agent), Some(index), Some(slot)) = (
            labels.get(label::AGENT),
            labels
                .get(label::REPLICA)
                .and_then(|i| i.parse::<u32>().ok()),
            labels.get(label::SLOT).and_then(|s| s.parse::<u8>().ok()),
        ) else {
            continue;
        };
        let Some(def) = profile.agents.iter().find(|a| &a.name == agent) else {
            continue;
        };
        let replica = ReplicaSpec::new(profile, def, index, &def.image)
            .map_err(|e| OpsError::Provider(format!("agent `{agent}`: {e}")))?;
        let (http, metrics) = replica.ports(slot);
        let probe = |p: &Option<taskctl_core::profile::Probe>, default: &str| {
            p.as_ref()
                .map(|p| p.path.clone())
                .unwrap_or_else(|| default.to_owned())
        };
        // On the environment's network, the managed Prometheus scrapes
        // each replica under its slot's alias (see `steps::Replica`).
        let instance = if crate::stack::agents_bridged(profile) {
            format!("{}-{index}-s{slot}:{metrics}", def.name)
        } else {
            format!("127.0.0.1:{metrics}")
        };
        agents.push(AgentEndpoint {
            name,
            http: format!("127.0.0.1:{http}"),
            metrics: format!("127.0.0.1:{metrics}"),
            instance,
            readiness_path: probe(&def.probes.readiness, "/ready"),
            liveness_path: probe(&def.probes.liveness, "/health"),
        });
    }
    let components = component_endpoints(docker, profile).await?;
    // Managed services: where they are published on loopback.
    let managed = crate::stack::managed_services(profile).unwrap_or_default();
    let published = |service: &str, port: &str, scheme: &str| {
        managed
            .iter()
            .find(|s| s.name == service)
            .and_then(|s| s.host_port(port))
            .map(|p| format!("{scheme}://127.0.0.1:{p}"))
    };
    let amqp_url = match broker_env {
        // An agent on the environment's network names the broker by its
        // alias there; taskctl reaches it where it is published.
        Some(url) if crate::stack::agents_bridged(profile) => {
            match (
                url::Url::parse(&url),
                managed.iter().find(|s| s.name == "rabbitmq"),
            ) {
                (Ok(mut u), Some(r)) if u.host_str() == Some("rabbitmq") => {
                    match r.host_port("rabbitmq") {
                        Some(p) => {
                            let _ = u.set_host(Some("127.0.0.1"));
                            let _ = u.set_port(Some(p));
                            Some(u.to_string())
                        }
                        None => None,
                    }
                }
                _ => Some(url),
            }
        }
        other => other,
    };
    Ok(Endpoints {
        amqp_url: amqp_url
            .or_else(|| external(services.rabbitmq.as_ref().and_then(|r| r.external.as_ref()))),
        prometheus_url: external(
            services
                .prometheus
                .as_ref()
                .and_then(|p| p.external.as_ref()),
        )
        .or_else(|| published("prometheus", "prometheus", "http")),
        vault_url: external(services.vault.as_ref().and_then(|v| v.external.as_ref()))
            .or_else(|| published("vault", "vault", "http")),
        agents,
        components,
        task_signing_key,
        broker_ca,
        broker_via: None,
        // The agents are registered with Prometheus under this label
        // (`steps::replica`'s file_sd), and an external Prometheus may
        // scrape other environments' agents too.
        environment_label: Some(spec::environment_label(profile)),
    })
}

/// Each component replica at its address on the environment's network,
/// which this host reaches (components publish no port): the gates ask
/// what the other containers ask.
async fn component_endpoints(
    docker: &Docker,
    profile: &Profile,
) -> Result<Vec<ComponentEndpoint>, OpsError> {
    let network = spec::network_name(profile);
    let mut out = Vec::new();
    for (name, labels) in containers(docker, profile, "component").await? {
        let Some(def) = labels
            .get(label::AGENT)
            .and_then(|c| profile.components.iter().find(|d| &d.name == c))
        else {
            continue;
        };
        let ip = engine::inspect(docker, &name)
            .await
            .map_err(|e| OpsError::Provider(e.message))?
            .and_then(|c| c.network_settings)
            .and_then(|n| n.networks)
            .and_then(|mut n| n.remove(&network))
            .and_then(|e| e.ip_address)
            .filter(|ip| !ip.is_empty());
        let Some(ip) = ip else {
            continue;
        };
        let Some(probe) = def.probes.readiness.as_ref() else {
            continue;
        };
        out.push(ComponentEndpoint {
            name,
            ports: def
                .ports
                .iter()
                .map(|p| (p.name.clone(), format!("{ip}:{}", p.port)))
                .collect(),
            readiness: format!("{ip}:{}", probe.port),
            readiness_path: probe.path.clone(),
        });
    }
    Ok(out)
}

/// Restart counts and OOM kills of the environment's agent and component
/// containers.
struct Restarts<'a> {
    docker: &'a Docker,
    profile: &'a Profile,
}

#[async_trait]
impl RestartSource for Restarts<'_> {
    async fn restarts(&self) -> Result<Vec<(String, u32, bool)>, String> {
        let mut out = Vec::new();
        let mut serving = agent_containers(self.docker, self.profile)
            .await
            .map_err(|e| e.to_string())?;
        serving.extend(
            containers(self.docker, self.profile, "component")
                .await
                .map_err(|e| e.to_string())?,
        );
        for (name, _) in serving {
            let Some(c) = engine::inspect(self.docker, &name)
                .await
                .map_err(|e| e.message)?
            else {
                continue;
            };
            let restarts = c.restart_count.unwrap_or(0).max(0) as u32;
            let oom = c.state.and_then(|s| s.oom_killed).unwrap_or(false);
            out.push((name, restarts, oom));
        }
        Ok(out)
    }
}

/// The profile's verification gates, then its automatic-rollback
/// conditions, as the core's checks.
pub async fn verify(
    docker: &Docker,
    profile: &Profile,
    secrets: &Secrets,
    cancel: &CancellationToken,
) -> Result<Vec<Check>, OpsError> {
    let window = taskctl_gates::duration_from_env(
        "TASKCTL_WATCH_WINDOW",
        profile.rollback.automatic.watch_window(),
    )?;
    let timeout =
        taskctl_gates::duration_from_env("TASKCTL_GATE_TIMEOUT", taskctl_gates::GATE_TIMEOUT)?;
    let endpoints = endpoints(docker, profile, secrets).await?;
    let restarts = Restarts { docker, profile };
    taskctl_gates::verify(profile, &endpoints, &restarts, timeout, window, cancel).await
}
