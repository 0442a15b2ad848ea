//! Verification of a rollout in the cluster: the same four gates and three
//! automatic-rollback conditions as on the docker target, run by
//! `taskctl-gates`, reached through the API server.
//!
//! From outside the cluster taskctl reaches the API server only, not the
//! pod network, so every address the gates need is a port-forward
//! ([`crate::forward`]) opened for the verification and closed after it:
//! - each current pod of each agent Deployment: its readiness port (the
//!   HTTP gate and `health_check_failure`) and its metrics port (TCP gate);
//!   Prometheus knows it as `POD_IP:METRICS_PORT` (the agents' pod scrape
//!   job), which is what `validate_metrics` asks `up` about;
//! - the in-cluster Prometheus's pod (`validate_metrics` and
//!   `high_error_rate`), unless the profile names an external one;
//! - a ready pod of the in-cluster RabbitMQ, on the port of the agents'
//!   broker URL (`test_functionality`: a real task, signed, through the
//!   broker the agents use). With `amqps://` the broker's certificate is
//!   checked against the URL's in-cluster host name and the CA the agents
//!   trust, not against the forward's address.
//!
//! Restart counts and OOM kills (`resource_exhaustion`) come from the pods'
//! status. The watch lasts the profile's `rollback.automatic.watch`
//! (default: the longest `for` plus a margin, at least 10 s), unless
//! `TASKCTL_WATCH_WINDOW` (`0s` skips it) or [`crate::KubeOptions`] says;
//! each gate may take `TASKCTL_GATE_TIMEOUT` (default 60 s).

use crate::cluster;
use crate::forward::Forward;
use crate::manifest::Manifest;
use async_trait::async_trait;
use k8s_openapi::api::core::v1::Pod;
use kube::Client;
use std::time::Duration;
use taskctl_core::ops::{Check, OpsError};
use taskctl_core::profile::Profile;
use taskctl_core::secrets::Secrets;
use taskctl_gates::{AgentEndpoint, Endpoints, RestartSource};
use tokio_util::sync::CancellationToken;

/// The watch window: the option, else `TASKCTL_WATCH_WINDOW`, else the
/// profile's (`rollback.automatic.watch`, or derived from the longest `for`).
pub fn window(option: Option<Duration>, profile: &Profile) -> Result<Duration, OpsError> {
    match option {
        Some(w) => Ok(w),
        None => taskctl_gates::duration_from_env(
            "TASKCTL_WATCH_WINDOW",
            profile.rollback.automatic.watch_window(),
        ),
    }
}

/// Restart counts of the current revision's pods of the agent workloads.
struct PodRestarts<'a> {
    client: &'a Client,
    workloads: Vec<&'a Manifest>,
}

#[async_trait]
impl RestartSource for PodRestarts<'_> {
    async fn restarts(&self) -> Result<Vec<(String, u32, bool)>, String> {
        let mut out = Vec::new();
        for m in &self.workloads {
            for pod in current_pods(self.client, m)
                .await
                .map_err(|e| e.to_string())?
            {
                let statuses = pod
                    .status
                    .iter()
                    .flat_map(|s| s.container_statuses.iter().flatten());
                let (mut restarts, mut oom) = (0u32, false);
                for c in statuses {
                    restarts += c.restart_count.max(0) as u32;
                    oom |= c
                        .last_state
                        .as_ref()
                        .and_then(|s| s.terminated.as_ref())
                        .is_some_and(|t| t.reason.as_deref() == Some("OOMKilled"));
                }
                out.push((pod_name(m, &pod), restarts, oom));
            }
        }
        Ok(out)
    }
}

fn pod_name(m: &Manifest, pod: &Pod) -> String {
    format!(
        "pod {}/{}",
        m.namespace.as_deref().unwrap_or_default(),
        pod.metadata.name.as_deref().unwrap_or_default()
    )
}

/// The pods of the workload's current revision (none when it is gone).
async fn current_pods(client: &Client, m: &Manifest) -> Result<Vec<Pod>, OpsError> {
    let provider = |e: taskctl_core::engine::StepError| OpsError::Provider(e.message);
    let Some(live) = cluster::get(client, m).await.map_err(provider)? else {
        return Ok(Vec::new());
    };
    cluster::current_pods(client, m, &live)
        .await
        .map_err(provider)
}

fn ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .is_some_and(|cs| !cs.is_empty() && cs.iter().all(|c| c.ready))
}

/// Where the gates reach the environment, and the forwards that make those
/// addresses work (closed when this is dropped).
struct Reach {
    endpoints: Endpoints,
    /// Each forward with the checks it serves (by name prefix): a check
    /// that fails on a closed connection is told what the API server or
    /// the kubelet said.
    forwards: Vec<(Forward, Vec<String>)>,
}

impl Reach {
    /// A forward to `namespace/pod:port`, whose errors explain the checks
    /// whose names start with one of `serves`.
    async fn forward(
        &mut self,
        client: &Client,
        namespace: &str,
        pod: &str,
        port: u16,
        serves: &[&str],
    ) -> Result<String, OpsError> {
        let f = Forward::open(client, namespace, pod, port).await.map_err(|e| {
            OpsError::Provider(format!(
                "cannot listen on loopback for a port-forward to pod {namespace}/{pod}:{port}: {e}"
            ))
        })?;
        let addr = f.addr().to_string();
        self.forwards
            .push((f, serves.iter().map(|s| s.to_string()).collect()));
        Ok(addr)
    }

    /// Adds what a forward last reported to each check that did not pass
    /// and that it serves: "connection closed" says little at 3 a.m.,
    /// "error forwarding port 8080 to pod …: connection refused" says it.
    fn explain(&self, checks: &mut [Check]) {
        for check in checks.iter_mut().filter(|c| !c.passed) {
            let said = self
                .forwards
                .iter()
                .filter(|(_, serves)| serves.iter().any(|s| check.name.starts_with(s.as_str())))
                .find_map(|(f, _)| f.last_error());
            if let Some(said) = said {
                check.observed = format!("{}; the port-forward says: {said}", check.observed);
            }
        }
    }
}

/// A ready pod of the StatefulSet `name` among `manifests`, with its
/// namespace.
async fn stateful_pod(
    client: &Client,
    manifests: &[Manifest],
    name: &str,
) -> Result<Option<(String, String)>, OpsError> {
    let Some(m) = manifests
        .iter()
        .find(|m| m.kind == "StatefulSet" && m.name == name)
    else {
        return Ok(None);
    };
    let pods = current_pods(client, m).await?;
    let namespace = m.namespace.clone().unwrap_or_default();
    Ok(pods
        .iter()
        .find(|p| ready(p))
        .or(pods.first())
        .and_then(|p| p.metadata.name.clone())
        .map(|p| (namespace, p)))
}

/// What the profile's gates and conditions will ask for: nothing else is
/// forwarded or resolved.
struct Needs {
    agents: bool,
    prometheus: bool,
    broker: bool,
}

impl Needs {
    fn of(profile: &Profile) -> Needs {
        let gates: Vec<&str> = profile
            .deployment
            .verification
            .iter()
            .map(|s| s.name())
            .collect();
        let automatic = &profile.rollback.automatic;
        let watched =
            |name: &str| automatic.enabled && automatic.conditions.iter().any(|c| c.name() == name);
        let gate = |names: &[&str]| gates.iter().any(|g| names.contains(g));
        Needs {
            agents: gate(&[
                "verify_connectivity",
                "check_service_health",
                "validate_metrics",
            ]) || watched("health_check_failure"),
            prometheus: gate(&["verify_connectivity", "validate_metrics"])
                || watched("high_error_rate"),
            broker: gate(&["verify_connectivity", "test_functionality"]),
        }
    }
}

async fn reach(
    client: &Client,
    profile: &Profile,
    manifests: &[Manifest],
    agent_workloads: &[&Manifest],
    secrets: &Secrets,
) -> Result<Reach, OpsError> {
    let mut reach = Reach {
        endpoints: Endpoints::default(),
        forwards: Vec::new(),
    };
    let needs = Needs::of(profile);
    for m in agent_workloads.iter().filter(|_| needs.agents) {
        let Some(def) = profile.agents.iter().find(|a| a.name == m.name) else {
            continue;
        };
        let named = |n: &str| def.ports.iter().find(|p| p.name == n).map(|p| p.port);
        let readiness = def.probes.readiness.as_ref();
        let (Some(http_port), Some(metrics_port)) = (
            readiness.map(|p| p.port).or(named("http")),
            named("metrics"),
        ) else {
            continue;
        };
        let namespace = m.namespace.clone().unwrap_or_default();
        for pod in current_pods(client, m).await? {
            let Some(name) = pod.metadata.name.clone() else {
                continue;
            };
            let ip = pod.status.as_ref().and_then(|s| s.pod_ip.clone());
            let pod = format!("{namespace}/{name}");
            let serves_http = [
                format!("verify_connectivity/{pod}/http"),
                format!("check_service_health/{pod}"),
                "health_check_failure".to_string(),
            ];
            let serves_http: Vec<&str> = serves_http.iter().map(String::as_str).collect();
            let http = reach
                .forward(client, &namespace, &name, http_port, &serves_http)
                .await?;
            let serves_metrics = format!("verify_connectivity/{pod}/metrics");
            let metrics = reach
                .forward(client, &namespace, &name, metrics_port, &[&serves_metrics])
                .await?;
            let probe = |p: Option<&taskctl_core::profile::Probe>, default: &str| {
                p.map(|p| p.path.clone())
                    .unwrap_or_else(|| default.to_owned())
            };
            reach.endpoints.agents.push(AgentEndpoint {
                name: format!("{namespace}/{name}"),
                http,
                instance: match ip {
                    Some(ip) => format!("{ip}:{metrics_port}"),
                    None => metrics.clone(),
                },
                metrics,
                readiness_path: probe(readiness, "/ready"),
                liveness_path: probe(def.probes.liveness.as_ref(), "/health"),
            });
        }
    }

    let services = &profile.services;
    let external_prometheus = services
        .prometheus
        .as_ref()
        .and_then(|p| p.external.as_ref())
        .map(|e| e.url.clone());
    reach.endpoints.prometheus_url = match external_prometheus {
        _ if !needs.prometheus => None,
        Some(url) => Some(url),
        None => match stateful_pod(client, manifests, "prometheus").await? {
            Some((ns, pod)) => Some(format!(
                "http://{}",
                reach
                    .forward(
                        client,
                        &ns,
                        &pod,
                        9090,
                        &[
                            "verify_connectivity/prometheus",
                            "validate_metrics",
                            "high_error_rate"
                        ],
                    )
                    .await?
            )),
            None => None,
        },
    };

    if let Some(agent) = profile.agents.first().filter(|_| needs.broker) {
        reach.endpoints.task_signing_key =
            taskctl_gates::agent::signing_key(agent, secrets).await?;
        reach.endpoints.broker_ca = taskctl_gates::agent::env(agent, secrets, "BROKER_CA").await?;
        let url = taskctl_gates::agent::broker_url(agent, secrets).await?;
        let external = services
            .rabbitmq
            .as_ref()
            .is_some_and(|r| r.external.is_some());
        if let Some(url) = &url
            && !external
            && let Ok(parsed) = url::Url::parse(url)
            && let Some((ns, pod)) = stateful_pod(client, manifests, "rabbitmq").await?
        {
            let port = parsed.port().unwrap_or(if parsed.scheme() == "amqps" {
                5671
            } else {
                5672
            });
            let serves = ["verify_connectivity/rabbitmq", "test_functionality"];
            reach.endpoints.broker_via =
                Some(reach.forward(client, &ns, &pod, port, &serves).await?);
        }
        reach.endpoints.amqp_url = url.or_else(|| {
            services
                .rabbitmq
                .as_ref()
                .and_then(|r| r.external.as_ref())
                .map(|e| e.url.clone())
        });
    }
    Ok(reach)
}

/// The profile's verification gates, then its automatic-rollback
/// conditions on the agent workloads (`workloads`: the rendered agent
/// Deployments; `manifests`: everything rendered), through the API server.
pub async fn verify(
    client: &Client,
    profile: &Profile,
    manifests: &[Manifest],
    workloads: Vec<&Manifest>,
    secrets: &Secrets,
    window: Duration,
    cancel: &CancellationToken,
) -> Result<Vec<Check>, OpsError> {
    let timeout =
        taskctl_gates::duration_from_env("TASKCTL_GATE_TIMEOUT", taskctl_gates::GATE_TIMEOUT)?;
    let reach = reach(client, profile, manifests, &workloads, secrets).await?;
    let restarts = PodRestarts { client, workloads };
    let mut checks = taskctl_gates::verify(
        profile,
        &reach.endpoints,
        &restarts,
        timeout,
        window,
        cancel,
    )
    .await?;
    reach.explain(&mut checks);
    Ok(checks)
}
