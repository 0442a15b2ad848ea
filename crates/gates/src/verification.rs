//! From the profile's `deployment.verification` steps to gates.
//!
//! Each built-in step becomes gates over the [`Endpoints`] the target
//! provider found; a step this crate cannot turn into a gate is returned as
//! [`Skipped`] with the reason, so the caller can show it rather than let it
//! pass silently.

use std::time::Duration;

use taskctl_core::profile::{Profile, StepRef};

use crate::{Comparison, Endpoints, Gate, GateKind, NoData, redact};

/// Pause between attempts of the gates built here: short enough that a gate
/// passes within a second of the condition becoming true, long enough not to
/// hammer a service that is starting.
pub const GATE_INTERVAL: Duration = Duration::from_secs(1);

/// A verification step that produced no gate, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skipped {
    /// The step (or plugin) name.
    pub name: String,
    pub reason: String,
}

/// The gates for the profile's `deployment.verification` built-ins:
///
/// - `verify_connectivity`: a TCP gate per service address (broker,
///   Prometheus, Vault) and per agent port (health and metrics);
/// - `check_service_health`: an HTTP gate per agent on its readiness path,
///   expecting 200;
/// - `validate_metrics`: a metric gate `up{instance="<agent metrics addr>"} == 1`
///   per agent (Prometheus must have scraped it; [`NoData::Wait`], since a
///   new target is scraped only after the next service-discovery refresh);
/// - `test_functionality`: a functional gate per task queue the agents
///   consume (one, normally).
///
/// Other names (plugins, `check_gpu_allocatable`, `check_autoscaler`) and
/// built-ins that lack the endpoint they need come back in the skipped list
/// with the reason. Every gate gets `timeout`.
pub fn verification_gates(
    profile: &Profile,
    endpoints: &Endpoints,
    timeout: Duration,
) -> (Vec<Gate>, Vec<Skipped>) {
    let mut gates = Vec::new();
    let mut skipped = Vec::new();
    let gate = |name: String, kind: GateKind| Gate {
        name,
        kind,
        timeout,
        interval: GATE_INTERVAL,
    };
    let mut skip = |name: &str, reason: &str| {
        skipped.push(Skipped {
            name: name.to_owned(),
            reason: reason.to_owned(),
        })
    };
    for step in &profile.deployment.verification {
        let name = step.name();
        let before = gates.len();
        match step {
            StepRef::Plugin(_) => {
                skip(
                    name,
                    "a plugin step: run by the plugin runner, not a built-in gate",
                );
                continue;
            }
            StepRef::Builtin(_) => {}
        }
        match name {
            "verify_connectivity" => {
                let services = [
                    ("rabbitmq", &endpoints.amqp_url),
                    ("prometheus", &endpoints.prometheus_url),
                    ("vault", &endpoints.vault_url),
                ];
                for (service, url) in services {
                    if let Some(url) = url {
                        // The broker's forward, when it is reached through one.
                        let addr = match (service, &endpoints.broker_via) {
                            ("rabbitmq", Some(via)) => via.clone(),
                            _ => host_port(url),
                        };
                        let kind = GateKind::Tcp { addr };
                        gates.push(gate(format!("{name}/{service}"), kind));
                    }
                }
                for agent in &endpoints.agents {
                    for (port, addr) in [("http", &agent.http), ("metrics", &agent.metrics)] {
                        let kind = GateKind::Tcp { addr: addr.clone() };
                        gates.push(gate(format!("{name}/{}/{port}", agent.name), kind));
                    }
                }
                for component in &endpoints.components {
                    for (port, addr) in &component.ports {
                        let kind = GateKind::Tcp { addr: addr.clone() };
                        gates.push(gate(format!("{name}/{}/{port}", component.name), kind));
                    }
                }
                if gates.len() == before {
                    skip(
                        name,
                        "the target reported no service or agent address to connect to",
                    );
                }
            }
            "check_service_health" => {
                for agent in &endpoints.agents {
                    let kind = GateKind::Http {
                        url: format!("http://{}{}", agent.http, agent.readiness_path),
                        expect_status: 200,
                        body_contains: None,
                    };
                    gates.push(gate(format!("{name}/{}", agent.name), kind));
                }
                for component in &endpoints.components {
                    let kind = GateKind::Http {
                        url: format!("http://{}{}", component.readiness, component.readiness_path),
                        expect_status: 200,
                        body_contains: None,
                    };
                    gates.push(gate(format!("{name}/{}", component.name), kind));
                }
                if gates.len() == before {
                    skip(name, "the target reported no agent to check");
                }
            }
            "validate_metrics" => match &endpoints.prometheus_url {
                None => skip(name, "the target reported no Prometheus address"),
                Some(prometheus_url) => {
                    for agent in &endpoints.agents {
                        let kind = GateKind::Metric {
                            prometheus_url: prometheus_url.clone(),
                            query: format!("up{{instance=\"{}\"}}", label_value(&agent.instance)),
                            cmp: Comparison::Eq,
                            threshold: 1.0,
                            no_data: NoData::Wait,
                            hold_for: Duration::ZERO,
                        };
                        gates.push(gate(format!("{name}/{}", agent.name), kind));
                    }
                    if gates.len() == before {
                        skip(name, "the target reported no agent whose scrape to check");
                    }
                }
            },
            "test_functionality" => match &endpoints.amqp_url {
                None => skip(name, "the target reported no broker address"),
                Some(amqp_url) => {
                    let queues = task_queues(profile);
                    for queue in &queues {
                        let gate_name = match queues.len() {
                            1 => name.to_owned(),
                            _ => format!("{name}/{queue}"),
                        };
                        let kind = GateKind::Functional {
                            amqp_url: amqp_url.clone(),
                            queue: queue.clone(),
                            signing_key: endpoints.task_signing_key.clone(),
                            broker_ca: endpoints.broker_ca.clone(),
                            via: endpoints.broker_via.clone(),
                        };
                        gates.push(gate(gate_name, kind));
                    }
                }
            },
            "check_gpu_allocatable" | "check_autoscaler" => skip(
                name,
                "checked by the target provider (GPU nodes and the autoscaler exist on Kubernetes only)",
            ),
            _ => skip(name, "not a built-in verification step"),
        }
    }
    (gates, skipped)
}

/// `host:port` of a service URL, with the scheme's default port when none
/// is written. Text that is not a URL is passed on (credentials removed) so
/// its TCP gate fails and says why, rather than the check vanishing.
fn host_port(raw: &str) -> String {
    let Ok(url) = url::Url::parse(raw) else {
        return redact::url(raw);
    };
    let default_port = match url.scheme() {
        "amqp" => Some(5672),
        "amqps" => Some(5671),
        _ => None,
    };
    match (
        url.host_str(),
        url.port().or(default_port).or(url.port_or_known_default()),
    ) {
        (Some(host), Some(port)) => {
            // IPv6 hosts come back bracketed from host_str only via Url's
            // Display; add the brackets for a socket address.
            if host.contains(':') && !host.starts_with('[') {
                format!("[{host}]:{port}")
            } else {
                format!("{host}:{port}")
            }
        }
        _ => redact::url(raw),
    }
}

/// A PromQL label value: backslashes and quotes escaped.
pub(crate) fn label_value(raw: &str) -> String {
    raw.replace('\\', "\\\\").replace('"', "\\\"")
}

/// The task queues the profile's agents consume: each agent's literal
/// `TASK_QUEUE`, else the protocol's default.
fn task_queues(profile: &Profile) -> Vec<String> {
    let mut queues: Vec<String> = Vec::new();
    for agent in &profile.agents {
        let queue = agent
            .env
            .iter()
            .find(|e| e.name == "TASK_QUEUE")
            .and_then(|e| e.value.clone())
            .unwrap_or_else(|| taskctl_protocol::TASK_QUEUE.to_owned());
        if !queues.contains(&queue) {
            queues.push(queue);
        }
    }
    if queues.is_empty() {
        queues.push(taskctl_protocol::TASK_QUEUE.to_owned());
    }
    queues
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_port_fills_default_ports_and_drops_credentials() {
        assert_eq!(host_port("amqp://u:p@broker/%2f"), "broker:5672");
        assert_eq!(host_port("amqps://broker"), "broker:5671");
        assert_eq!(host_port("http://127.0.0.1:19090"), "127.0.0.1:19090");
        assert_eq!(host_port("https://vault.internal"), "vault.internal:443");
        assert_eq!(host_port("amqp://[::1]:5672"), "[::1]:5672");
        assert_eq!(host_port("amqp://u:secret@[bad"), "amqp://***@[bad");
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(label_value(r#"a"b\c"#), r#"a\"b\\c"#);
    }
}
