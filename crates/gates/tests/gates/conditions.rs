use std::time::Duration;

use async_trait::async_trait;
use taskctl_core::profile::{Condition, ConditionSpec, Profile};
use taskctl_gates::{ConditionReport, Endpoints, RestartSource, watch_conditions};
use tokio_util::sync::CancellationToken;

use crate::support::{HttpServer, agent_endpoint, local_profile, prometheus_url};

/// Test double of a provider's restart counts: fixed answers.
struct FixedRestarts(Result<Vec<(String, u32, bool)>, String>);

#[async_trait]
impl RestartSource for FixedRestarts {
    async fn restarts(&self) -> Result<Vec<(String, u32, bool)>, String> {
        self.0.clone()
    }
}

fn restarts(counts: &[(&str, u32, bool)]) -> FixedRestarts {
    FixedRestarts(Ok(counts
        .iter()
        .map(|(n, c, o)| (n.to_string(), *c, *o))
        .collect()))
}

fn by_name<'a>(reports: &'a [ConditionReport], name: &str) -> &'a ConditionReport {
    reports
        .iter()
        .find(|r| r.name == name)
        .unwrap_or_else(|| panic!("no report for {name}: {reports:#?}"))
}

fn endpoints(agents: &[&HttpServer]) -> Endpoints {
    Endpoints {
        amqp_url: None,
        prometheus_url: Some(prometheus_url()),
        vault_url: None,
        agents: agents
            .iter()
            .enumerate()
            .map(|(i, s)| agent_endpoint(&format!("agent-{i}"), &s.addr, "127.0.0.1:1"))
            .collect(),
        components: Vec::new(),
        task_signing_key: None,
        broker_ca: None,
        broker_via: None,
        environment_label: None,
    }
}

const LONG: Duration = Duration::from_secs(60);

#[tokio::test]
async fn flapping_health_trips_health_check_failure_and_stops_the_others() {
    let steady = HttpServer::fixed(200, "ok");
    let flapping = HttpServer::start(|n| match n % 2 {
        0 => (200, "ok".to_owned()),
        _ => (503, "draining".to_owned()),
    });
    let reports = watch_conditions(
        &local_profile(),
        &endpoints(&[&steady, &flapping]),
        &restarts(&[("agent-0", 0, false)]),
        LONG,
        &CancellationToken::new(),
    )
    .await;
    let names: Vec<&str> = reports.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "health_check_failure",
            "high_error_rate",
            "resource_exhaustion"
        ]
    );
    let health = by_name(&reports, "health_check_failure");
    assert!(health.tripped, "{}", health.summary());
    assert_eq!(
        health.observed,
        "agent-1: HTTP 503 body \"draining\" (expected HTTP 200)"
    );
    assert!(
        health
            .summary()
            .starts_with("tripped health_check_failure after ")
    );
    for other in ["high_error_rate", "resource_exhaustion"] {
        let r = by_name(&reports, other);
        assert!(!r.tripped, "{}", r.summary());
        assert!(
            r.observed
                .starts_with("stopped when another condition tripped"),
            "{}",
            r.observed
        );
    }
    assert!(!health.to_check().passed);
}

#[tokio::test]
async fn more_restarts_than_allowed_trip_resource_exhaustion() {
    // local-external.yaml: { name: resource_exhaustion, max_restarts: 3 }
    let reports = watch_conditions(
        &local_profile(),
        &Endpoints::default(),
        &restarts(&[("agent-0", 1, false), ("agent-1", 4, false)]),
        LONG,
        &CancellationToken::new(),
    )
    .await;
    let r = by_name(&reports, "resource_exhaustion");
    assert!(r.tripped, "{}", r.summary());
    assert_eq!(r.observed, "agent-1 restarted 4 times (max 3)");
    // Nothing to evaluate the others with: said so, not taken as health.
    for other in ["health_check_failure", "high_error_rate"] {
        let r = by_name(&reports, other);
        assert!(!r.tripped && !r.evaluated, "{}", r.summary());
    }
}

#[tokio::test]
async fn an_oom_kill_trips_resource_exhaustion() {
    let reports = watch_conditions(
        &local_profile(),
        &Endpoints::default(),
        &restarts(&[("agent-0", 1, true)]),
        LONG,
        &CancellationToken::new(),
    )
    .await;
    let r = by_name(&reports, "resource_exhaustion");
    assert!(r.tripped);
    assert_eq!(r.observed, "agent-0 was OOM-killed (1 restarts)");
}

#[tokio::test]
async fn a_healthy_window_trips_nothing() {
    let ready = HttpServer::fixed(200, "ok");
    // The shared test Prometheus may hold other tests' agent metrics, so the
    // error rate is pinned here; the default queries are unit-tested.
    let mut profile = local_profile();
    for c in &mut profile.rollback.automatic.conditions {
        if let Condition::Detailed(spec) = c
            && spec.name == "high_error_rate"
        {
            spec.query = Some("vector(0)".into());
            // Shorter than the watch below, or it could not be evaluated.
            spec.for_ = Some("1s".parse().unwrap());
        }
    }
    let reports = watch_conditions(
        &profile,
        &endpoints(&[&ready]),
        &restarts(&[("agent-0", 3, false)]),
        Duration::from_millis(1500),
        &CancellationToken::new(),
    )
    .await;
    for r in &reports {
        assert!(!r.tripped, "{}", r.summary());
        assert!(r.evaluated, "{}", r.summary());
    }
    assert_eq!(
        by_name(&reports, "health_check_failure").observed,
        "all 1 agents answered HTTP 200 on readiness"
    );
    assert_eq!(
        by_name(&reports, "resource_exhaustion").observed,
        "1 instances, at most 3 restarts each (max 3)"
    );
    assert_eq!(
        by_name(&reports, "high_error_rate").observed,
        "vector(0) = 0 (threshold 0.01)"
    );
    assert!(ready.requests.load(std::sync::atomic::Ordering::SeqCst) >= 2);
}

fn only(profile: &mut Profile, condition: Condition) {
    profile.rollback.automatic.conditions = vec![condition];
}

#[tokio::test]
async fn an_error_rate_above_the_threshold_trips_high_error_rate() {
    let mut profile = local_profile();
    only(
        &mut profile,
        Condition::Detailed(ConditionSpec {
            name: "high_error_rate".into(),
            query: Some("vector(0.25)".into()),
            threshold: Some(0.01),
            for_: Some("1s".parse().unwrap()),
            max_restarts: None,
        }),
    );
    let reports = watch_conditions(
        &profile,
        &endpoints(&[]),
        &restarts(&[]),
        LONG,
        &CancellationToken::new(),
    )
    .await;
    let r = by_name(&reports, "high_error_rate");
    assert!(r.tripped, "{}", r.summary());
    // Held above the threshold for its `for` before tripping.
    assert!(
        r.observed.starts_with("vector(0.25) = 0.25 > 0.01 for "),
        "{}",
        r.observed
    );
    assert!(r.elapsed >= Duration::from_secs(1));
}

#[tokio::test]
async fn an_unreadable_restart_source_is_not_evaluated() {
    let mut profile = local_profile();
    only(&mut profile, Condition::Named("resource_exhaustion".into()));
    let source = FixedRestarts(Err("docker: engine not reachable".into()));
    let reports = watch_conditions(
        &profile,
        &Endpoints::default(),
        &source,
        Duration::from_millis(500),
        &CancellationToken::new(),
    )
    .await;
    let r = by_name(&reports, "resource_exhaustion");
    assert!(!r.tripped && !r.evaluated);
    assert_eq!(
        r.observed,
        "cannot read restart counts: docker: engine not reachable"
    );
    assert!(r.summary().starts_with("not evaluated resource_exhaustion"));
}

#[tokio::test]
async fn disabled_automatic_rollback_watches_nothing() {
    let mut profile = local_profile();
    profile.rollback.automatic.enabled = false;
    let reports = watch_conditions(
        &profile,
        &Endpoints::default(),
        &restarts(&[]),
        LONG,
        &CancellationToken::new(),
    )
    .await;
    assert_eq!(reports, []);
}

/// A condition whose `for` does not fit in the watch could only trip after
/// it: reported "not evaluated" with the reason, never "passed".
#[tokio::test]
async fn a_for_longer_than_the_watch_is_not_evaluated_not_passed() {
    let mut profile = local_profile();
    only(
        &mut profile,
        Condition::Detailed(ConditionSpec {
            name: "high_error_rate".into(),
            query: Some("vector(0)".into()),
            threshold: Some(0.01),
            for_: Some("5m".parse().unwrap()),
            max_restarts: None,
        }),
    );
    let reports = watch_conditions(
        &profile,
        &endpoints(&[]),
        &restarts(&[]),
        Duration::from_secs(1),
        &CancellationToken::new(),
    )
    .await;
    let r = by_name(&reports, "high_error_rate");
    assert!(!r.tripped && !r.evaluated, "{}", r.summary());
    assert!(
        r.observed.contains("not shorter than the")
            && r.observed.contains("rollback.automatic.watch"),
        "{}",
        r.observed
    );
    // The profile's own window would fit it: 5m plus the margin.
    assert_eq!(
        profile.rollback.automatic.watch_window(),
        Duration::from_secs(305)
    );
}
