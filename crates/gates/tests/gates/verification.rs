use std::time::Duration;

use taskctl_core::profile::{PluginStep, StepRef};
use taskctl_gates::{
    Comparison, Endpoints, GateKind, NoData, Skipped, check_all, verification_gates,
};
use tokio_util::sync::CancellationToken;

use crate::support::{
    Agent, ScrapeTarget, agent_endpoint, amqp_url, env, local_profile, prometheus_url,
};

const SECRET: &str = "s3cr3t-broker-pw";

fn hand_made() -> Endpoints {
    Endpoints {
        amqp_url: Some(format!("amqp://admin:{SECRET}@127.0.0.1:5672/%2f")),
        prometheus_url: Some("http://127.0.0.1:19090".into()),
        vault_url: Some("http://127.0.0.1:8200".into()),
        agents: vec![
            agent_endpoint(
                "automated-task-executor-1",
                "127.0.0.1:18080",
                "127.0.0.1:19091",
            ),
            agent_endpoint(
                "automated-task-executor-2",
                "127.0.0.1:18081",
                "127.0.0.1:19092",
            ),
        ],
        components: Vec::new(),
        task_signing_key: None,
        broker_ca: None,
        broker_via: None,
        environment_label: None,
    }
}

#[test]
fn the_local_profile_yields_one_gate_per_service_and_agent() {
    let timeout = Duration::from_secs(45);
    let (gates, skipped) = verification_gates(&local_profile(), &hand_made(), timeout);
    assert_eq!(skipped, []);
    let names: Vec<(&str, &str)> = gates
        .iter()
        .map(|g| (g.name.as_str(), g.kind.name()))
        .collect();
    assert_eq!(
        names,
        [
            ("verify_connectivity/rabbitmq", "tcp"),
            ("verify_connectivity/prometheus", "tcp"),
            ("verify_connectivity/vault", "tcp"),
            ("verify_connectivity/automated-task-executor-1/http", "tcp"),
            (
                "verify_connectivity/automated-task-executor-1/metrics",
                "tcp"
            ),
            ("verify_connectivity/automated-task-executor-2/http", "tcp"),
            (
                "verify_connectivity/automated-task-executor-2/metrics",
                "tcp"
            ),
            ("check_service_health/automated-task-executor-1", "http"),
            ("check_service_health/automated-task-executor-2", "http"),
            ("validate_metrics/automated-task-executor-1", "metric"),
            ("validate_metrics/automated-task-executor-2", "metric"),
            ("test_functionality", "functional"),
        ]
    );
    assert!(gates.iter().all(|g| g.timeout == timeout));
    assert_eq!(
        gates[0].kind,
        GateKind::Tcp {
            addr: "127.0.0.1:5672".into()
        }
    );
    assert_eq!(
        gates[7].kind,
        GateKind::Http {
            url: "http://127.0.0.1:18080/ready".into(),
            expect_status: 200,
            body_contains: None
        }
    );
    assert_eq!(
        gates[9].kind,
        GateKind::Metric {
            prometheus_url: "http://127.0.0.1:19090".into(),
            query: r#"up{instance="127.0.0.1:19091"}"#.into(),
            cmp: Comparison::Eq,
            threshold: 1.0,
            no_data: NoData::Wait,
            hold_for: Duration::ZERO,
        }
    );
    assert_eq!(
        gates[11].kind,
        GateKind::Functional {
            amqp_url: format!("amqp://admin:{SECRET}@127.0.0.1:5672/%2f"),
            queue: "taskctl.tasks".into(),
            signing_key: None,
            broker_ca: None,
            via: None,
        }
    );
}

#[test]
fn steps_without_a_gate_are_skipped_with_the_reason() {
    let mut profile = local_profile();
    profile.deployment.verification.extend([
        StepRef::Builtin("check_gpu_allocatable".into()),
        StepRef::Plugin(PluginStep {
            plugin: "smoke".into(),
            args: None,
            timeout: None,
        }),
    ]);
    let endpoints = Endpoints {
        prometheus_url: None,
        ..hand_made()
    };
    let (gates, skipped) = verification_gates(&profile, &endpoints, Duration::from_secs(5));
    assert!(
        gates
            .iter()
            .all(|g| !g.name.starts_with("validate_metrics"))
    );
    let skipped: Vec<&str> = skipped.iter().map(|s: &Skipped| s.name.as_str()).collect();
    assert_eq!(
        skipped,
        ["validate_metrics", "check_gpu_allocatable", "smoke"]
    );
}

#[test]
fn broker_credentials_never_appear_in_debug_output() {
    let endpoints = hand_made();
    let (gates, _) = verification_gates(&local_profile(), &endpoints, Duration::from_secs(5));
    for text in [
        format!("{endpoints:?}"),
        format!("{gates:?}"),
        format!("{gates:#?}"),
    ] {
        assert!(!text.contains(SECRET) && !text.contains("admin"), "{text}");
        assert!(text.contains("amqp://***@127.0.0.1:5672/%2f"), "{text}");
    }
}

/// Every gate of the local profile against a real agent, broker, Prometheus
/// and Vault: a freshly deployed environment passes verification.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_agent_passes_every_gate_of_the_local_profile() {
    let agent = Agent::start().await;
    let _target = ScrapeTarget::register(&agent.name, &agent.metrics);
    let mut profile = local_profile();
    // The agent of this test consumes its own queue.
    for a in &mut profile.agents {
        a.env.retain(|e| e.name != "TASK_QUEUE");
        a.env.push(taskctl_core::profile::EnvVar {
            name: "TASK_QUEUE".into(),
            value: Some(agent.task_queue.clone()),
            config_map: None,
            secret: None,
        });
    }
    let endpoints = Endpoints {
        amqp_url: Some(amqp_url()),
        prometheus_url: Some(prometheus_url()),
        vault_url: Some(env("TASKCTL_TEST_VAULT_ADDR")),
        agents: vec![agent.endpoint()],
        components: Vec::new(),
        task_signing_key: Some(agent.signing_key.clone()),
        broker_ca: None,
        broker_via: None,
        environment_label: None,
    };
    let (gates, skipped) = verification_gates(&profile, &endpoints, Duration::from_secs(60));
    assert_eq!(skipped, []);
    let reports = check_all(&gates, &CancellationToken::new()).await;
    let log = agent.log_text();
    agent.stop().await;
    let summaries: Vec<String> = reports.iter().map(|r| r.summary()).collect();
    assert!(
        reports.iter().all(|r| r.passed),
        "{summaries:#?}\nagent log:\n{log}"
    );
    assert_eq!(reports.len(), 8, "{summaries:#?}");
    // The test broker's URL carries guest:guest.
    let password = url::Url::parse(&amqp_url())
        .unwrap()
        .password()
        .map(str::to_owned);
    if let Some(password) = password {
        for s in &summaries {
            assert!(!s.contains(&format!(":{password}@")), "{s}");
        }
    }
}
