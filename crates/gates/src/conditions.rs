//! The profile's automatic-rollback conditions, watched for a window after a
//! deploy.
//!
//! Each condition polls what it watches once a second for the window and
//! *trips* when the bad state is seen (continuously for the condition's `for`
//! when it has one):
//!
//! | condition | bad state | defaults |
//! |---|---|---|
//! | `health_check_failure` | an agent's readiness endpoint answers anything but 200, or nothing | trips on the first bad poll |
//! | `high_error_rate` | a series of the error-rate query is above `threshold` | query `task_error_rate` when the profile records it, else the agent's raw expression; threshold 0.01 (the seed's alert) |
//! | `resource_exhaustion` | an instance restarted more than `max_restarts` times, or was OOM-killed | `max_restarts` 3 |
//!
//! The first condition to trip stops the others (the rollback should start
//! now, not at the end of the window); they report what they saw until then.
//! A condition that cannot be evaluated (no Prometheus address, no agents,
//! unknown name) does not trip and says so in `evaluated` and `observed`:
//! absence of evidence is shown, not taken as health.
//!
//! Restart counts come from the target provider through [`RestartSource`],
//! the one part of a workload's state only it can see (Docker's
//! `RestartCount` and `OOMKilled`, a pod's `restartCount` and last
//! termination reason).

use std::future::Future;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use futures_util::future::join_all;
use taskctl_core::profile::{Condition, ConditionSpec, Profile};
use tokio_util::sync::CancellationToken;

use crate::metric::{self, QueryError, Sample};
use crate::{Attempt, Endpoints, http, redact, seconds};

/// How often each condition is polled.
const POLL: Duration = Duration::from_secs(1);
/// Longest a single poll may take.
const POLL_BUDGET: Duration = Duration::from_secs(5);
/// `high_error_rate` without a threshold: the seed's `task_error_rate > 0.01` alert.
const DEFAULT_ERROR_RATE: f64 = 0.01;
/// `resource_exhaustion` without `max_restarts`.
const DEFAULT_MAX_RESTARTS: u32 = 3;
/// The agent's error rate when the profile records no `task_error_rate`
/// (as in the agent's README and the shipped recording rule).
const RAW_ERROR_RATE: &str = "sum(rate(task_executor_tasks_total{status=~\"failed|timed_out\"}[5m])) / clamp_min(sum(rate(task_executor_tasks_total[5m])), 1e-9)";

/// [`RAW_ERROR_RATE`] over one environment's agents only.
fn raw_error_rate_of(environment: &str) -> String {
    let env = crate::verification::label_value(environment);
    format!(
        "sum(rate(task_executor_tasks_total{{status=~\"failed|timed_out\",taskctl_environment=\"{env}\"}}[5m])) / clamp_min(sum(rate(task_executor_tasks_total{{taskctl_environment=\"{env}\"}}[5m])), 1e-9)"
    )
}

/// Restart counts of the deployed workload's instances, as the target
/// provider sees them.
#[async_trait]
pub trait RestartSource: Send + Sync {
    /// `(workload instance, restart count, last termination was an OOM
    /// kill)` for every instance; an error is shown as the observation and
    /// the next poll tries again.
    async fn restarts(&self) -> Result<Vec<(String, u32, bool)>, String>;
}

/// The outcome of watching one condition.
#[derive(Debug, Clone, PartialEq)]
pub struct ConditionReport {
    pub name: String,
    /// The bad state was seen (for the condition's `for`): roll back.
    pub tripped: bool,
    /// At least one poll could read what the condition watches. False means
    /// the condition said nothing about the deploy; `observed` says why.
    pub evaluated: bool,
    /// What the last poll saw (or what tripped it), credentials removed.
    pub observed: String,
    /// From the start of the watch to the trip or the end.
    pub elapsed: Duration,
}

impl ConditionReport {
    /// One line for people.
    pub fn summary(&self) -> String {
        let took = seconds(self.elapsed);
        if self.tripped {
            format!("tripped {} after {took}: {}", self.name, self.observed)
        } else if !self.evaluated {
            format!("not evaluated {}: {}", self.name, self.observed)
        } else {
            format!("held {} for {took}: {}", self.name, self.observed)
        }
    }

    /// As the core's provider-neutral check: passed means not tripped.
    pub fn to_check(&self) -> taskctl_core::ops::Check {
        taskctl_core::ops::Check {
            name: self.name.clone(),
            kind: "condition".to_owned(),
            passed: self.evaluated && !self.tripped,
            evaluated: self.evaluated || self.tripped,
            observed: self.observed.clone(),
            elapsed: self.elapsed,
        }
    }
}

/// One poll's verdict.
enum Poll {
    Good(String),
    Bad(String),
    /// Could not read the state (Prometheus down, provider error).
    Unknown(String),
}

/// Watches the profile's `rollback.automatic.conditions` for `window` (or
/// until `cancel`, or until one trips); reports in the profile's order. An
/// empty list when automatic rollback is disabled.
pub async fn watch_conditions(
    profile: &Profile,
    endpoints: &Endpoints,
    restarts: &dyn RestartSource,
    window: Duration,
    cancel: &CancellationToken,
) -> Vec<ConditionReport> {
    let automatic = &profile.rollback.automatic;
    if !automatic.enabled {
        return Vec::new();
    }
    let stop = cancel.child_token();
    let client = http::client();
    let recorded = profile.services.prometheus.as_ref().is_some_and(|p| {
        p.recording_rules
            .iter()
            .any(|r| r.record == "task_error_rate")
    });
    let watchers = automatic.conditions.iter().map(|condition| {
        let spec = match condition {
            Condition::Named(name) => ConditionSpec {
                name: name.clone(),
                query: None,
                threshold: None,
                for_: None,
                max_restarts: None,
            },
            Condition::Detailed(spec) => spec.clone(),
        };
        let hold = spec
            .for_
            .as_ref()
            .and_then(|f| f.get())
            .map(|d| d.0)
            .unwrap_or_default();
        let stop = &stop;
        let client = &client;
        async move {
            let name = spec.name.clone();
            if !hold.is_zero() && hold >= window {
                // It could only trip after the watch is over: saying
                // "passed" would claim something nobody looked at.
                return not_evaluated(
                    &name,
                    &format!(
                        "its `for` ({}) is not shorter than the {} watch, so it could not trip; set rollback.automatic.watch (or TASKCTL_WATCH_WINDOW) above it",
                        seconds(hold),
                        seconds(window)
                    ),
                );
            }
            match name.as_str() {
                "health_check_failure"
                    if endpoints.agents.is_empty() && endpoints.components.is_empty() =>
                {
                    not_evaluated(&name, "the target reported no agent to watch")
                }
                "health_check_failure" => {
                    watch(&name, window, hold, stop, cancel, |budget| {
                        health(client, endpoints, budget)
                    })
                    .await
                }
                "high_error_rate" => match &endpoints.prometheus_url {
                    None => not_evaluated(&name, "the target reported no Prometheus address"),
                    Some(prometheus_url) => {
                        let queries = error_rate_queries(
                            &spec,
                            recorded,
                            endpoints.environment_label.as_deref(),
                        );
                        let threshold = spec.threshold.unwrap_or(DEFAULT_ERROR_RATE);
                        let secrets = redact::Secrets::of(prometheus_url);
                        let mut report = watch(&name, window, hold, stop, cancel, |budget| {
                            error_rate(client, prometheus_url, &queries, threshold, budget)
                        })
                        .await;
                        report.observed = secrets.scrub(&report.observed);
                        report
                    }
                },
                "resource_exhaustion" => {
                    let max = spec.max_restarts.unwrap_or(DEFAULT_MAX_RESTARTS);
                    watch(&name, window, Duration::ZERO, stop, cancel, |_| {
                        exhaustion(restarts, max)
                    })
                    .await
                }
                _ => not_evaluated(&name, "not a built-in rollback condition"),
            }
        }
    });
    join_all(watchers).await
}

/// What `high_error_rate` asks Prometheus, in order: the condition's own
/// query; else the recorded `task_error_rate` when the profile records it,
/// then the raw expression, because the recorded series exists only where
/// the rule is loaded (not in an external Prometheus taskctl does not
/// configure) and its absence must not read as "no errors". When the
/// target names the environment's scrape label, only the raw expression
/// over that environment's agents: a Prometheus shared with other
/// environments must not roll this one back for their failures (the
/// recorded rule sums every agent it scrapes).
fn error_rate_queries(
    spec: &ConditionSpec,
    recorded: bool,
    environment: Option<&str>,
) -> Vec<String> {
    match (&spec.query, environment, recorded) {
        (Some(query), _, _) => vec![query.clone()],
        (None, Some(env), _) => vec![raw_error_rate_of(env)],
        (None, None, true) => vec!["task_error_rate".to_owned(), RAW_ERROR_RATE.to_owned()],
        (None, None, false) => vec![RAW_ERROR_RATE.to_owned()],
    }
}

fn not_evaluated(name: &str, why: &str) -> ConditionReport {
    ConditionReport {
        name: name.to_owned(),
        tripped: false,
        evaluated: false,
        observed: why.to_owned(),
        elapsed: Duration::ZERO,
    }
}

/// Polls until the window ends, the condition trips (then stops the others
/// through `stop`), or `stop` fires.
async fn watch<F, Fut>(
    name: &str,
    window: Duration,
    hold: Duration,
    stop: &CancellationToken,
    cancel: &CancellationToken,
    mut poll: F,
) -> ConditionReport
where
    F: FnMut(Duration) -> Fut,
    Fut: Future<Output = Poll>,
{
    let start = Instant::now();
    let end = start + window;
    let mut evaluated = false;
    let mut bad_since: Option<Instant> = None;
    let mut last = "not polled: stopped before the first poll".to_owned();
    let report = |tripped: bool, evaluated: bool, observed: String| ConditionReport {
        name: name.to_owned(),
        tripped,
        evaluated,
        observed,
        elapsed: start.elapsed(),
    };
    loop {
        let budget = end
            .saturating_duration_since(Instant::now())
            .clamp(Duration::from_millis(500), POLL_BUDGET);
        let outcome = tokio::select! {
            _ = stop.cancelled() => return report(false, evaluated, stopped(cancel, &last)),
            outcome = poll(budget) => outcome,
        };
        let now = Instant::now();
        match outcome {
            Poll::Good(seen) => {
                evaluated = true;
                bad_since = None;
                last = seen;
            }
            Poll::Bad(seen) => {
                evaluated = true;
                let since = *bad_since.get_or_insert(now);
                if now - since >= hold {
                    let seen = match hold.is_zero() {
                        true => seen,
                        false => format!("{seen} for {}", seconds(now - since)),
                    };
                    stop.cancel();
                    return report(true, true, seen);
                }
                last = format!("{seen} (for {} of {})", seconds(now - since), seconds(hold));
            }
            Poll::Unknown(seen) => {
                // Not knowing is not evidence either way: it neither trips
                // nor extends a bad streak.
                bad_since = None;
                last = seen;
            }
        }
        let remaining = end.saturating_duration_since(now);
        if remaining.is_zero() {
            return report(false, evaluated, last);
        }
        tokio::select! {
            _ = stop.cancelled() => return report(false, evaluated, stopped(cancel, &last)),
            _ = tokio::time::sleep(POLL.min(remaining)) => {}
        }
    }
}

fn stopped(cancel: &CancellationToken, last: &str) -> String {
    match cancel.is_cancelled() {
        true => format!("cancelled; last seen: {last}"),
        false => format!("stopped when another condition tripped; last seen: {last}"),
    }
}

async fn health(client: &reqwest::Client, endpoints: &Endpoints, budget: Duration) -> Poll {
    let agents = endpoints
        .agents
        .iter()
        .map(|a| (&a.name, format!("http://{}{}", a.http, a.readiness_path)));
    let components = endpoints.components.iter().map(|c| {
        (
            &c.name,
            format!("http://{}{}", c.readiness, c.readiness_path),
        )
    });
    let polls = agents.chain(components).map(|(name, url)| async move {
        let secrets = redact::Secrets::of(&url);
        match http::attempt(client, &url, 200, None, budget).await {
            Attempt::Pass(_) => None,
            Attempt::Retry(seen) | Attempt::Fatal(seen) => {
                Some(format!("{name}: {}", secrets.scrub(&seen)))
            }
        }
    });
    let failing: Vec<String> = join_all(polls).await.into_iter().flatten().collect();
    match failing.is_empty() {
        true if endpoints.components.is_empty() => Poll::Good(format!(
            "all {} agents answered HTTP 200 on readiness",
            endpoints.agents.len()
        )),
        true => Poll::Good(format!(
            "all {} agents and {} component replicas answered HTTP 200 on readiness",
            endpoints.agents.len(),
            endpoints.components.len()
        )),
        false => Poll::Bad(failing.join("; ")),
    }
}

/// The first of `queries` that returns series decides.
async fn error_rate(
    client: &reqwest::Client,
    prometheus_url: &str,
    queries: &[String],
    threshold: f64,
    budget: Duration,
) -> Poll {
    let mut samples = Vec::new();
    for query in queries {
        match metric::query(client, prometheus_url, query, budget).await {
            Err(QueryError::Fatal(why) | QueryError::Retry(why)) => return Poll::Unknown(why),
            Ok(found) if found.is_empty() => continue,
            Ok(found) => {
                samples = found;
                break;
            }
        }
    }
    match samples {
        // No series: no task results to rate yet, which is not an error rate.
        samples if samples.is_empty() => {
            let asked: Vec<String> = queries.iter().map(|q| format!("`{q}`")).collect();
            Poll::Good(format!(
                "no series for {} (no task results to rate)",
                asked.join(" nor ")
            ))
        }
        samples => {
            let above: Vec<&Sample> = samples.iter().filter(|s| s.value > threshold).collect();
            match above.is_empty() {
                true => {
                    let all: Vec<&Sample> = samples.iter().collect();
                    Poll::Good(format!("{} (threshold {threshold})", metric::list(&all)))
                }
                false => Poll::Bad(format!("{} > {threshold}", metric::list(&above))),
            }
        }
    }
}

async fn exhaustion(source: &dyn RestartSource, max: u32) -> Poll {
    let instances = match source.restarts().await {
        Ok(instances) => instances,
        Err(why) => return Poll::Unknown(format!("cannot read restart counts: {why}")),
    };
    let mut bad = Vec::new();
    for (instance, count, oom) in &instances {
        if *oom {
            bad.push(format!("{instance} was OOM-killed ({count} restarts)"));
        } else if *count > max {
            bad.push(format!("{instance} restarted {count} times (max {max})"));
        }
    }
    if !bad.is_empty() {
        return Poll::Bad(bad.join("; "));
    }
    let most = instances.iter().map(|(_, c, _)| *c).max().unwrap_or(0);
    Poll::Good(format!(
        "{} instances, at most {most} restarts each (max {max})",
        instances.len()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(query: Option<&str>) -> ConditionSpec {
        ConditionSpec {
            name: "high_error_rate".into(),
            query: query.map(str::to_owned),
            threshold: None,
            for_: None,
            max_restarts: None,
        }
    }

    #[test]
    fn error_rate_prefers_the_profile_query_then_the_recorded_rule() {
        assert_eq!(error_rate_queries(&spec(Some("q")), true, None), ["q"]);
        assert_eq!(
            error_rate_queries(&spec(None), true, None),
            ["task_error_rate", RAW_ERROR_RATE]
        );
        assert_eq!(
            error_rate_queries(&spec(None), false, None),
            [RAW_ERROR_RATE]
        );
    }

    #[test]
    fn a_shared_prometheus_is_asked_about_this_environment_only() {
        let q = error_rate_queries(&spec(None), true, Some("task-local.development"));
        assert_eq!(q.len(), 1, "{q:?}");
        assert_eq!(
            q[0],
            "sum(rate(task_executor_tasks_total{status=~\"failed|timed_out\",taskctl_environment=\"task-local.development\"}[5m])) / clamp_min(sum(rate(task_executor_tasks_total{taskctl_environment=\"task-local.development\"}[5m])), 1e-9)"
        );
        // The profile's own query is the user's choice, kept as written.
        assert_eq!(
            error_rate_queries(&spec(Some("q")), false, Some("x")),
            ["q"]
        );
    }
}
