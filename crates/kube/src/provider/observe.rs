//! What a deployed environment runs, for the release record.

use super::*;

pub(super) fn sha256_hex(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// What the environment runs: each workload's first image, pinned by the
/// digest its pods report; a hash of each ConfigMap; the secret references
/// the pod templates name. The lists, then the pods of every workload, are
/// read at once.
pub async fn observe(client: &Client, environment: &str) -> Result<ReleaseFacts, StepError> {
    let selector = format!("{ENVIRONMENT_LABEL}={environment},{MANAGED_BY}");
    let known =
        |api_version: &str, kind: &str| resources::lookup(api_version, kind).expect("a known kind");
    let kinds = [
        known("apps/v1", "Deployment"),
        known("apps/v1", "StatefulSet"),
        known("apps/v1", "DaemonSet"),
        known("v1", "ConfigMap"),
    ];
    let (deployments, stateful_sets, daemon_sets, config_maps) = tokio::try_join!(
        cluster::list(client, &kinds[0], &selector),
        cluster::list(client, &kinds[1], &selector),
        cluster::list(client, &kinds[2], &selector),
        cluster::list(client, &kinds[3], &selector),
    )?;
    let mut facts = ReleaseFacts::default();
    let mut refs = BTreeSet::new();
    let mut workloads = Vec::new();
    let all = [
        ("Deployment", deployments),
        ("StatefulSet", stateful_sets),
        ("DaemonSet", daemon_sets),
    ];
    for (kind, w) in all
        .into_iter()
        .flat_map(|(kind, items)| items.into_iter().map(move |w| (kind, w)))
    {
        let template = w
            .data
            .pointer("/spec/template")
            .cloned()
            .unwrap_or(Value::Null);
        if let Some(sources) = template
            .pointer("/metadata/annotations")
            .and_then(|a| a.get("taskctl.dev/secret-sources"))
            .and_then(Value::as_str)
        {
            for pair in sources.split(',').filter(|p| !p.is_empty()) {
                if let Some((_, reference)) = pair.split_once('=') {
                    refs.insert(reference.to_string());
                }
            }
        }
        let container = template.pointer("/spec/containers/0");
        let field = |key: &str| {
            container
                .and_then(|c| c.get(key))
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string()
        };
        let selector: Option<Vec<String>> = w
            .data
            .pointer("/spec/selector/matchLabels")
            .and_then(Value::as_object)
            .map(|labels| {
                labels
                    .iter()
                    .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
                    .collect()
            });
        workloads.push(ObservedWorkload {
            kind,
            name: w.metadata.name.clone().unwrap_or_default(),
            namespace: w.metadata.namespace.clone().unwrap_or_default(),
            image: field("image"),
            container: field("name"),
            selector,
        });
    }
    let client = client.clone();
    let pinned = bounded(32, workloads, move |w| {
        let client = client.clone();
        async move {
            let image = w.pinned_image(&client).await?;
            Ok::<_, StepError>((w.name, image))
        }
    })
    .await;
    for result in pinned {
        let (name, image) = result?;
        facts.images.insert(name, image);
    }
    for c in config_maps {
        let content = serde_json::json!({
            "data": c.data.get("data"),
            "binaryData": c.data.get("binaryData"),
        });
        facts.config_hashes.insert(
            format!(
                "configmap/{}/{}",
                c.metadata.namespace.unwrap_or_default(),
                c.metadata.name.unwrap_or_default()
            ),
            sha256_hex(content.to_string().as_bytes()),
        );
    }
    facts.secret_refs = refs.into_iter().collect();
    Ok(facts)
}

/// A workload as [`observe`] needs it.
pub(super) struct ObservedWorkload {
    pub(super) kind: &'static str,
    pub(super) name: String,
    pub(super) namespace: String,
    /// The first container's image as the spec names it.
    pub(super) image: String,
    pub(super) container: String,
    /// `key=value` of the pod selector.
    pub(super) selector: Option<Vec<String>>,
}

impl ObservedWorkload {
    /// The image by the digest its pods report, else as the spec names it.
    async fn pinned_image(&self, client: &Client) -> Result<String, StepError> {
        let Some(selector) = &self.selector else {
            return Ok(self.image.clone());
        };
        let pods: Api<Pod> = Api::namespaced(client.clone(), &self.namespace);
        let pods = pods
            .list(&ListParams::default().labels(&selector.join(",")))
            .await
            .map_err(|e| {
                step_error(
                    &format!("pods of {} {}/{}", self.kind, self.namespace, self.name),
                    e,
                )
            })?;
        let id = pods.items.iter().find_map(|p| {
            p.status
                .as_ref()?
                .container_statuses
                .as_ref()?
                .iter()
                .find(|c| c.name == self.container)
                .map(|c| c.image_id.clone())
                .filter(|id| id.contains("@sha256:"))
        });
        Ok(match id {
            Some(id) => id.trim_start_matches("docker-pullable://").to_string(),
            None => self.image.clone(),
        })
    }
}

/// The pods of the environment as `status` shows them, agents first.
pub(super) async fn pods(
    client: &Client,
    environment: &str,
    agents: &BTreeSet<&str>,
) -> Result<Vec<taskctl_core::ops::Workload>, StepError> {
    let selector = format!("{ENVIRONMENT_LABEL}={environment},{MANAGED_BY}");
    let pods: Api<Pod> = Api::all(client.clone());
    let list = pods
        .list(&ListParams::default().labels(&selector))
        .await
        .map_err(|e| step_error("listing pods", e))?;
    let mut out: Vec<taskctl_core::ops::Workload> = list
        .items
        .iter()
        .map(|pod| {
            let name = pod
                .metadata
                .labels
                .as_ref()
                .and_then(|l| l.get("app.kubernetes.io/name"))
                .map(String::as_str)
                .unwrap_or_default();
            let statuses: Vec<_> = pod
                .status
                .iter()
                .flat_map(|s| s.container_statuses.iter().flatten())
                .collect();
            let ready = pod
                .status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
                || (!statuses.is_empty() && statuses.iter().all(|c| c.ready));
            let waiting = statuses.iter().find_map(|c| {
                c.state
                    .as_ref()
                    .and_then(|s| s.waiting.as_ref())
                    .and_then(|w| w.reason.clone())
            });
            let phase = pod
                .status
                .as_ref()
                .and_then(|s| s.phase.clone())
                .unwrap_or_else(|| "Unknown".into())
                .to_lowercase();
            taskctl_core::ops::Workload {
                name: format!(
                    "{}/{}",
                    pod.metadata.namespace.as_deref().unwrap_or_default(),
                    pod.metadata.name.as_deref().unwrap_or_default()
                ),
                role: if agents.contains(name) {
                    "agent"
                } else {
                    "service"
                }
                .into(),
                // A container waiting (CrashLoopBackOff, ImagePullBackOff)
                // says more than the pod's phase.
                state: waiting.unwrap_or(phase),
                health: if ready { "healthy" } else { "unhealthy" }.into(),
                image: statuses
                    .first()
                    .and_then(|c| c.image_id.split("sha256:").nth(1))
                    .map(|d| d.chars().take(12).collect())
                    .unwrap_or_default(),
                release: String::new(),
                restarts: statuses.iter().map(|c| c.restart_count.max(0) as u32).sum(),
                last_termination: statuses
                    .iter()
                    .find_map(|c| {
                        c.last_state
                            .as_ref()
                            .and_then(|s| s.terminated.as_ref())
                            .and_then(|t| t.reason.clone())
                    })
                    .unwrap_or_default(),
                node: pod
                    .spec
                    .as_ref()
                    .and_then(|s| s.node_name.clone())
                    .unwrap_or_default(),
            }
        })
        .collect();
    out.sort_by(|a, b| (a.role != "agent", &a.name).cmp(&(b.role != "agent", &b.name)));
    Ok(out)
}
