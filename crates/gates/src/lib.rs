//! Verification gates and automatic-rollback conditions: how taskctl decides,
//! after a deploy, whether the environment works or must be rolled back.
//!
//! The gates are generic over targets: the Docker and Kubernetes providers
//! say where the environment answers ([`Endpoints`]) and how many times its
//! workloads restarted ([`RestartSource`]); this crate turns the profile's
//! `deployment.verification` built-ins into [`Gate`]s
//! ([`verification_gates`]), checks them ([`check`], [`check_all`]) and
//! watches `rollback.automatic.conditions` for a window after the deploy
//! ([`watch_conditions`]). It depends on no provider SDK.
//!
//! # Gates
//!
//! | kind | passes when |
//! |---|---|
//! | [`GateKind::Tcp`] | a TCP connection to the address opens |
//! | [`GateKind::Http`] | `GET url` answers the expected status and, if asked, a body containing a string |
//! | [`GateKind::Metric`] | every series of a Prometheus instant query satisfies `value cmp threshold`, continuously for `hold_for` |
//! | [`GateKind::Functional`] | a real `echo` task published to the agents' queue comes back `succeeded` with its message |
//!
//! A gate is retried every `interval` until it passes or its `timeout`
//! elapses; its [`GateReport`] holds the last value it saw ("HTTP 503 body
//! \"not ready\"", `up{instance="…"} = 0`, "connection refused"), never a bare
//! yes/no. Two outcomes end a gate early: an answer that retrying cannot
//! change (a PromQL syntax error, a task the agent ran and failed, a query
//! without data under [`NoData::Fail`]), and cancellation.
//!
//! # No data
//!
//! A Prometheus query that returns no series is neither true nor false:
//! the target may not be scraped yet, or the metric may not exist. Each metric
//! gate says what it means ([`NoData`]): `Fail` (the series must exist now),
//! `Pass` (absence is fine, e.g. an error counter that was never
//! incremented), or `Wait` (keep asking until data comes or the gate times
//! out; for targets Prometheus has yet to scrape).
//!
//! # Secrets
//!
//! Broker URLs carry credentials. Nothing this crate returns or formats
//! (observed values, summaries, `Debug` of gates and endpoints) contains the
//! user or password of any URL it was given: see [`redact`].
//!
//! Reading order: this file (types and the retry loop), then
//! `verification.rs` (profile → gates), `conditions.rs` (rollback
//! watchers), then one module per gate kind: `tcp`, `http`, `metric`,
//! `functional`; `live`: what the deployment checklist probes in a running
//! environment.

pub mod agent;
mod conditions;
mod functional;
pub use functional::{Broker, Sent, send as send_task, task_id};
mod http;
pub mod live;
mod metric;
pub mod redact;
mod tcp;
mod verification;

pub use conditions::{ConditionReport, RestartSource, watch_conditions};
pub use verification::{Skipped, verification_gates};

use std::fmt;
use std::time::{Duration, Instant};

use futures_util::future::join_all;
use tokio_util::sync::CancellationToken;

/// How a metric's value must compare with the gate's threshold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Comparison {
    Lt,
    Le,
    Gt,
    Ge,
    Eq,
    Ne,
}

impl Comparison {
    /// Whether `value cmp threshold` holds; NaN never satisfies a comparison
    /// but `Ne`, as in PromQL.
    pub fn holds(self, value: f64, threshold: f64) -> bool {
        match self {
            Comparison::Lt => value < threshold,
            Comparison::Le => value <= threshold,
            Comparison::Gt => value > threshold,
            Comparison::Ge => value >= threshold,
            Comparison::Eq => value == threshold,
            Comparison::Ne => value != threshold,
        }
    }
}

impl fmt::Display for Comparison {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Comparison::Lt => "<",
            Comparison::Le => "<=",
            Comparison::Gt => ">",
            Comparison::Ge => ">=",
            Comparison::Eq => "==",
            Comparison::Ne => "!=",
        })
    }
}

/// What a metric gate concludes when its query returns no series.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoData {
    /// The gate fails at once: the series must exist now.
    Fail,
    /// The gate passes: absence is acceptable (a counter never incremented).
    Pass,
    /// The gate keeps asking until data comes or it times out: for a target
    /// Prometheus has not scraped yet.
    Wait,
}

/// What a gate checks.
#[derive(Clone, PartialEq)]
pub enum GateKind {
    /// A TCP connection to `addr` (`host:port`) opens.
    Tcp { addr: String },
    /// `GET url` answers `expect_status`, with `body_contains` in the body
    /// when set.
    Http {
        url: String,
        expect_status: u16,
        body_contains: Option<String>,
    },
    /// Every series of the instant `query` satisfies `value cmp threshold`;
    /// with `hold_for` > 0, it must keep holding for that long (the
    /// condition's `for` window).
    Metric {
        prometheus_url: String,
        query: String,
        cmp: Comparison,
        threshold: f64,
        no_data: NoData,
        hold_for: Duration,
    },
    /// A real task, published to `queue` through the broker at `amqp_url`,
    /// comes back `succeeded`; signed with `signing_key` (base64 PKCS#8
    /// Ed25519, never shown) when the agents require signed tasks.
    Functional {
        amqp_url: String,
        queue: String,
        signing_key: Option<String>,
        /// With `amqps://`: the PEM CA bundle to trust, and only it.
        broker_ca: Option<String>,
        /// Where the broker is really reached (a port-forward), when not
        /// at the URL's host and port.
        via: Option<String>,
    },
}

impl GateKind {
    /// `tcp`, `http`, `metric` or `functional`.
    pub fn name(&self) -> &'static str {
        match self {
            GateKind::Tcp { .. } => "tcp",
            GateKind::Http { .. } => "http",
            GateKind::Metric { .. } => "metric",
            GateKind::Functional { .. } => "functional",
        }
    }

    /// Every URL the gate talks to, for removing their credentials from what
    /// it reports.
    fn secrets(&self) -> redact::Secrets {
        match self {
            GateKind::Tcp { .. } => redact::Secrets::default(),
            GateKind::Http { url, .. } => redact::Secrets::of(url),
            GateKind::Metric { prometheus_url, .. } => redact::Secrets::of(prometheus_url),
            GateKind::Functional { amqp_url, .. } => redact::Secrets::of(amqp_url),
        }
    }
}

/// Written by hand so the credentials of the URLs never reach a log line.
impl fmt::Debug for GateKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GateKind::Tcp { addr } => f.debug_struct("Tcp").field("addr", addr).finish(),
            GateKind::Http {
                url,
                expect_status,
                body_contains,
            } => f
                .debug_struct("Http")
                .field("url", &redact::url(url))
                .field("expect_status", expect_status)
                .field("body_contains", body_contains)
                .finish(),
            GateKind::Metric {
                prometheus_url,
                query,
                cmp,
                threshold,
                no_data,
                hold_for,
            } => f
                .debug_struct("Metric")
                .field("prometheus_url", &redact::url(prometheus_url))
                .field("query", query)
                .field("cmp", cmp)
                .field("threshold", threshold)
                .field("no_data", no_data)
                .field("hold_for", hold_for)
                .finish(),
            GateKind::Functional {
                amqp_url,
                queue,
                signing_key,
                broker_ca,
                via,
            } => f
                .debug_struct("Functional")
                .field("amqp_url", &redact::url(amqp_url))
                .field("queue", queue)
                .field("signed", &signing_key.is_some())
                .field("private_ca", &broker_ca.is_some())
                .field("via", via)
                .finish(),
        }
    }
}

/// One named check with its time budget.
#[derive(Debug, Clone, PartialEq)]
pub struct Gate {
    /// `check_service_health/automated-task-executor-1`.
    pub name: String,
    pub kind: GateKind,
    /// How long the gate may take in all, retries included.
    pub timeout: Duration,
    /// Pause between attempts.
    pub interval: Duration,
}

/// The outcome of one gate.
#[derive(Debug, Clone, PartialEq)]
pub struct GateReport {
    pub name: String,
    /// `tcp`, `http`, `metric` or `functional`.
    pub kind: &'static str,
    pub passed: bool,
    /// The value the last attempt saw, credentials removed:
    /// `HTTP 503 body "not ready"`, `up{instance="127.0.0.1:9091"} = 0`,
    /// `task gate-… succeeded in 42 ms`, `connection refused`.
    pub observed: String,
    pub elapsed: Duration,
    pub attempts: u32,
    /// The gate was stopped by cancellation before it could pass; the caller
    /// was interrupted, so this is not evidence against the deploy.
    pub cancelled: bool,
}

impl GateReport {
    /// One line for people: verdict, name, kind, what was seen and how long
    /// it took.
    pub fn summary(&self) -> String {
        let tries = match self.attempts {
            1 => "1 attempt".to_owned(),
            n => format!("{n} attempts"),
        };
        let took = seconds(self.elapsed);
        if self.passed {
            format!(
                "passed {} ({}): {} [{took}, {tries}]",
                self.name, self.kind, self.observed
            )
        } else if self.cancelled {
            format!(
                "cancelled {} ({}) after {took}, {tries}; last seen: {}",
                self.name, self.kind, self.observed
            )
        } else {
            format!(
                "failed {} ({}) after {took}, {tries}: {}",
                self.name, self.kind, self.observed
            )
        }
    }

    /// The report as the core's provider-neutral check result, for
    /// `Provider::verify`.
    pub fn to_check(&self) -> taskctl_core::ops::Check {
        taskctl_core::ops::Check {
            name: self.name.clone(),
            kind: self.kind.to_owned(),
            passed: self.passed,
            evaluated: true,
            observed: self.observed.clone(),
            elapsed: self.elapsed,
        }
    }
}

/// Where a deployed environment answers; filled by the target provider.
#[derive(Clone, Default, PartialEq)]
pub struct Endpoints {
    /// Broker URL; may carry credentials, which are never shown.
    pub amqp_url: Option<String>,
    pub prometheus_url: Option<String>,
    pub vault_url: Option<String>,
    pub agents: Vec<AgentEndpoint>,
    /// The profile's components (docker target): their ports and readiness.
    pub components: Vec<ComponentEndpoint>,
    /// The private key tasks are signed with (base64 PKCS#8 Ed25519), when
    /// the agents require signed tasks; never shown.
    pub task_signing_key: Option<String>,
    /// The CA bundle (PEM) the agents trust for an `amqps://` broker, when
    /// they are given one: taskctl trusts the broker the same way.
    pub broker_ca: Option<String>,
    /// Where taskctl reaches the broker when the URL's host is only known
    /// inside the cluster: `127.0.0.1:PORT`, a port-forward to its pod.
    pub broker_via: Option<String>,
    /// The `taskctl_environment` label this environment's agents are
    /// scraped under, when their Prometheus may also scrape other
    /// environments' agents (docker's `file_sd` registrations, an external
    /// Prometheus): `high_error_rate`'s default query counts only them.
    pub environment_label: Option<String>,
}

/// Written by hand: the broker URL carries credentials.
impl fmt::Debug for Endpoints {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let shown = |u: &Option<String>| u.as_deref().map(redact::url);
        f.debug_struct("Endpoints")
            .field("amqp_url", &shown(&self.amqp_url))
            .field("prometheus_url", &shown(&self.prometheus_url))
            .field("vault_url", &shown(&self.vault_url))
            .field("agents", &self.agents)
            .field("components", &self.components)
            .field(
                "task_signing_key",
                &self.task_signing_key.as_ref().map(|_| "<redacted>"),
            )
            .field("broker_ca", &self.broker_ca.is_some())
            .field("broker_via", &self.broker_via)
            .field("environment_label", &self.environment_label)
            .finish()
    }
}

/// One running agent instance (container or pod) as taskctl reaches it.
#[derive(Debug, Clone, PartialEq)]
pub struct AgentEndpoint {
    /// Container or pod name.
    pub name: String,
    /// `host:port` of `/health` and `/ready`, e.g. `127.0.0.1:18080`.
    pub http: String,
    /// `host:port` of `/metrics`, as taskctl reaches it.
    pub metrics: String,
    /// The `instance` label Prometheus scrapes it under, which
    /// `validate_metrics` asks about: `metrics` when Prometheus reaches the
    /// same address, else its name on the network Prometheus shares with it.
    pub instance: String,
    /// `/ready`.
    pub readiness_path: String,
    /// `/health`.
    pub liveness_path: String,
}

/// One running replica of a component, as taskctl reaches it.
#[derive(Debug, Clone, PartialEq)]
pub struct ComponentEndpoint {
    /// Container name.
    pub name: String,
    /// Each port it listens on: its name and `host:port`.
    pub ports: Vec<(String, String)>,
    /// `host:port` of its readiness probe.
    pub readiness: String,
    /// The probe's path, e.g. `/ready`.
    pub readiness_path: String,
}

/// What one attempt of a gate concluded.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Attempt {
    /// Holds now.
    Pass(String),
    /// Does not hold now; may later.
    Retry(String),
    /// Does not hold, and retrying cannot change that (bad query, a task
    /// that ran and failed, no data under `NoData::Fail`).
    Fatal(String),
}

/// Each attempt gets at least this long, so a gate whose budget is nearly
/// spent still makes a real last attempt instead of timing out at once.
const MIN_ATTEMPT: Duration = Duration::from_millis(500);

/// Retries the gate every `interval` until it passes or `timeout` elapses (or
/// cancel fires); the report holds the last observation.
pub async fn check(gate: &Gate, cancel: &CancellationToken) -> GateReport {
    let start = Instant::now();
    let deadline = start + gate.timeout;
    let secrets = gate.kind.secrets();
    let hold_for = match &gate.kind {
        GateKind::Metric { hold_for, .. } => *hold_for,
        _ => Duration::ZERO,
    };
    let client = match &gate.kind {
        GateKind::Http { .. } | GateKind::Metric { .. } => Some(http::client()),
        _ => None,
    };
    let mut attempts = 0;
    let mut held_since: Option<Instant> = None;
    let report = |passed: bool, observed: String, attempts: u32, cancelled: bool| GateReport {
        name: gate.name.clone(),
        kind: gate.kind.name(),
        passed,
        observed: secrets.scrub(&observed),
        elapsed: start.elapsed(),
        attempts,
        cancelled,
    };
    let mut last = String::from("not checked: cancelled before the first attempt");
    loop {
        if cancel.is_cancelled() {
            return report(false, last, attempts, true);
        }
        attempts += 1;
        let budget = deadline
            .saturating_duration_since(Instant::now())
            .max(MIN_ATTEMPT);
        let attempt = tokio::select! {
            _ = cancel.cancelled() => return report(false, last, attempts, true),
            outcome = run_attempt(&gate.kind, client.as_ref(), budget) => outcome,
        };
        let now = Instant::now();
        match attempt {
            Attempt::Pass(seen) if hold_for.is_zero() => {
                return report(true, seen, attempts, false);
            }
            Attempt::Pass(seen) => {
                let since = *held_since.get_or_insert(now);
                let held = now - since;
                if held >= hold_for {
                    let seen = format!("{seen} (held for {})", seconds(held));
                    return report(true, seen, attempts, false);
                }
                if since + hold_for > deadline {
                    let seen = format!(
                        "{seen}, but holding it for {} would end after the {} timeout",
                        seconds(hold_for),
                        seconds(gate.timeout)
                    );
                    return report(false, seen, attempts, false);
                }
                last = format!(
                    "{seen} (held for {} of {})",
                    seconds(held),
                    seconds(hold_for)
                );
            }
            Attempt::Retry(seen) => {
                held_since = None;
                last = seen;
            }
            Attempt::Fatal(seen) => return report(false, seen, attempts, false),
        }
        let remaining = deadline.saturating_duration_since(now);
        if remaining.is_zero() {
            return report(false, last, attempts, false);
        }
        tokio::select! {
            _ = cancel.cancelled() => return report(false, last, attempts, true),
            _ = tokio::time::sleep(gate.interval.min(remaining)) => {}
        }
    }
}

async fn run_attempt(
    kind: &GateKind,
    client: Option<&reqwest::Client>,
    budget: Duration,
) -> Attempt {
    // Each kind bounds its own network calls by `budget`; this outer bound
    // catches anything that does not (DNS resolution, a stuck TLS handshake).
    let attempt = async {
        match kind {
            GateKind::Tcp { addr } => tcp::attempt(addr, budget).await,
            GateKind::Http {
                url,
                expect_status,
                body_contains,
            } => {
                let client = client.cloned().unwrap_or_else(http::client);
                http::attempt(
                    &client,
                    url,
                    *expect_status,
                    body_contains.as_deref(),
                    budget,
                )
                .await
            }
            GateKind::Metric {
                prometheus_url,
                query,
                cmp,
                threshold,
                no_data,
                ..
            } => {
                let client = client.cloned().unwrap_or_else(http::client);
                metric::attempt(
                    &client,
                    prometheus_url,
                    query,
                    *cmp,
                    *threshold,
                    *no_data,
                    budget,
                )
                .await
            }
            GateKind::Functional {
                amqp_url,
                queue,
                signing_key,
                broker_ca,
                via,
            } => {
                let broker = Broker {
                    url: amqp_url,
                    ca: broker_ca.as_deref(),
                    via: via.as_deref(),
                };
                functional::attempt(broker, queue, signing_key.as_deref(), budget).await
            }
        }
    };
    match tokio::time::timeout(budget + Duration::from_secs(1), attempt).await {
        Ok(outcome) => outcome,
        Err(_) => Attempt::Retry(format!("no answer within {}", seconds(budget))),
    }
}

/// How long each gate may take unless `TASKCTL_GATE_TIMEOUT` says.
pub const GATE_TIMEOUT: Duration = Duration::from_secs(60);

/// A duration from the environment variable `var` (`15s`, `2m`), else
/// `default`.
pub fn duration_from_env(
    var: &str,
    default: Duration,
) -> Result<Duration, taskctl_core::ops::OpsError> {
    match std::env::var(var) {
        Ok(text) => humantime::parse_duration(&text).map_err(|e| {
            taskctl_core::ops::OpsError::Provider(format!(
                "{var}=`{text}` is not a duration like `10s` or `2m`: {e}"
            ))
        }),
        Err(_) => Ok(default),
    }
}

/// A deployed environment verified the same way on every target: the
/// profile's verification gates against `endpoints` (each retried for up
/// to `timeout`), then, when none failed, its automatic-rollback
/// conditions watched for `window` (none when zero), as the core's checks.
/// An interruption is an error: it is no evidence against the deploy.
pub async fn verify(
    profile: &taskctl_core::profile::Profile,
    endpoints: &Endpoints,
    restarts: &dyn RestartSource,
    timeout: Duration,
    window: Duration,
    cancel: &CancellationToken,
) -> Result<Vec<taskctl_core::ops::Check>, taskctl_core::ops::OpsError> {
    let (gates, skipped) = verification_gates(profile, endpoints, timeout);
    for s in &skipped {
        tracing::info!(gate = %s.name, reason = %s.reason, "verification step skipped");
    }
    let reports = check_all(&gates, cancel).await;
    if reports.iter().any(|r| r.cancelled) {
        return Err(taskctl_core::ops::OpsError::Provider(
            "verification interrupted; nothing was rolled back".into(),
        ));
    }
    let mut checks: Vec<taskctl_core::ops::Check> = reports.iter().map(|r| r.to_check()).collect();
    if !checks.iter().any(|c| c.failed()) && !window.is_zero() {
        let conditions = watch_conditions(profile, endpoints, restarts, window, cancel).await;
        checks.extend(conditions.iter().map(|c| c.to_check()));
    }
    Ok(checks)
}

/// Runs gates concurrently; reports in input order.
pub async fn check_all(gates: &[Gate], cancel: &CancellationToken) -> Vec<GateReport> {
    join_all(gates.iter().map(|gate| check(gate, cancel))).await
}

/// `1.2s`: the precision people read in a report.
pub(crate) fn seconds(d: Duration) -> String {
    let s = d.as_secs_f64();
    if s < 10.0 {
        format!("{s:.1}s")
    } else {
        format!("{s:.0}s")
    }
}

/// At most `max` characters of `text`, with `…` when cut, quoted for a
/// report.
pub(crate) fn quoted(text: &str, max: usize) -> String {
    let trimmed = text.trim();
    let mut out: String = trimmed.chars().take(max).collect();
    if trimmed.chars().count() > max {
        out.push('…');
    }
    format!("{out:?}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn comparisons_read_like_promql() {
        assert_eq!(Comparison::Le.to_string(), "<=");
        assert!(Comparison::Eq.holds(1.0, 1.0));
        assert!(!Comparison::Gt.holds(f64::NAN, 0.0));
        assert!(Comparison::Ne.holds(f64::NAN, 0.0));
    }

    #[test]
    fn quoted_cuts_long_bodies() {
        assert_eq!(quoted("  ok\n", 10), "\"ok\"");
        assert_eq!(quoted("abcdef", 3), "\"abc…\"");
    }

    #[test]
    fn summary_states_verdict_value_and_time() {
        let r = GateReport {
            name: "check_service_health/a-1".into(),
            kind: "http",
            passed: false,
            observed: "HTTP 503 body \"not ready\"".into(),
            elapsed: Duration::from_millis(2500),
            attempts: 3,
            cancelled: false,
        };
        assert_eq!(
            r.summary(),
            "failed check_service_health/a-1 (http) after 2.5s, 3 attempts: HTTP 503 body \"not ready\""
        );
    }
}
