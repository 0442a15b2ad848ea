//! Verification of a rollout in the cluster: the profile's
//! automatic-rollback conditions, watched by `taskctl-gates` as the docker
//! target watches them.
//!
//! From outside the cluster taskctl reaches the API server only, not the
//! pods: `resource_exhaustion` is evaluated from the agents' pods (restart
//! counts, OOM kills of the current revision); `health_check_failure` and
//! `high_error_rate` need the agents' and Prometheus's addresses, which a
//! port-forward would give, and are reported as not evaluated. Readiness
//! itself was awaited by the apply. The watch lasts the profile's
//! `rollback.automatic.watch` (default: the longest `for` plus a margin, at
//! least 10 s), unless `TASKCTL_WATCH_WINDOW` (`0s` skips it) or
//! [`crate::KubeOptions`] says.

use crate::cluster;
use crate::manifest::Manifest;
use async_trait::async_trait;
use kube::Client;
use std::time::Duration;
use taskctl_core::ops::{Check, OpsError};
use taskctl_core::profile::Profile;
use taskctl_gates::{Endpoints, RestartSource};
use tokio_util::sync::CancellationToken;

/// The watch window: the option, else `TASKCTL_WATCH_WINDOW`, else the
/// profile's (`rollback.automatic.watch`, or derived from the longest `for`).
pub fn window(option: Option<Duration>, profile: &Profile) -> Result<Duration, OpsError> {
    if let Some(w) = option {
        return Ok(w);
    }
    match std::env::var("TASKCTL_WATCH_WINDOW") {
        Ok(text) => humantime::parse_duration(&text).map_err(|e| {
            OpsError::Provider(format!(
                "TASKCTL_WATCH_WINDOW=`{text}` is not a duration like `10s` or `2m`: {e}"
            ))
        }),
        Err(_) => Ok(profile.rollback.automatic.watch_window()),
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
            let Some(live) = cluster::get(self.client, m).await.map_err(|e| e.message)? else {
                continue;
            };
            for pod in cluster::current_pods(self.client, m, &live)
                .await
                .map_err(|e| e.message)?
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
                let name = format!(
                    "pod {}/{}",
                    m.namespace.as_deref().unwrap_or_default(),
                    pod.metadata.name.as_deref().unwrap_or_default()
                );
                out.push((name, restarts, oom));
            }
        }
        Ok(out)
    }
}

/// Watches the profile's automatic-rollback conditions on the agent
/// workloads (`workloads`: the rendered agent Deployments) for `window`.
pub async fn verify(
    client: &Client,
    profile: &Profile,
    workloads: Vec<&Manifest>,
    window: Duration,
    cancel: &CancellationToken,
) -> Vec<Check> {
    if window.is_zero() {
        return Vec::new();
    }
    let restarts = PodRestarts { client, workloads };
    taskctl_gates::watch_conditions(profile, &Endpoints::default(), &restarts, window, cancel)
        .await
        .iter()
        .map(|c| c.to_check())
        .collect()
}
