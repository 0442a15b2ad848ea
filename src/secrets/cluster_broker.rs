//! `secrets/broker-user` on target `kubernetes`: the in-cluster RabbitMQ's
//! own user (`RABBITMQ_DEFAULT_USER`, which the agents use) gets the
//! password the profile resolves to, through its management API reached by
//! a port-forward to one of its pods.
//!
//! The broker takes `RABBITMQ_DEFAULT_PASS` from the Secret at its first
//! boot only; after that, a new version in Vault (a rotation, or a rollback
//! to an older one) reaches the broker only through this step, before the
//! Secret and the agents move to it. The user logs in as itself: with the
//! password it should have (already set), else with one of the secret's
//! recent versions (the one it has now).

use super::broker::percent_encode;
use super::*;

/// How many versions back the broker's current password is looked for.
const VERSIONS_BACK: u64 = 5;

pub(crate) struct ClusterBrokerStep {
    pub(crate) id: StepId,
    pub(crate) deps: Vec<StepId>,
    /// The broker's own user, as the agents' URL names it.
    pub(crate) username: String,
    /// `services.rabbitmq.credentials` (`vault:PATH#KEY`, pinned in a
    /// rollback).
    pub(crate) password: SecretRef,
    pub(crate) management: Arc<dyn taskctl_core::ops::PodPorts>,
    pub(crate) secrets: Arc<Secrets>,
    pub(crate) http: reqwest::Client,
}

/// What the broker's management API says of a login.
enum Login {
    Accepted { tags: serde_json::Value },
    Refused,
}

impl ClusterBrokerStep {
    fn invalid(&self, e: taskctl_core::secrets::SecretError) -> StepError {
        StepError::new(ErrorKind::Invalid, format!("broker user: {e}"))
    }

    /// The first running pod's management address, named.
    async fn pod(&self) -> Result<Option<(String, String)>, StepError> {
        let nodes = self
            .management
            .nodes()
            .await
            .map_err(|e| StepError::new(ErrorKind::Transient, e.to_string()))?;
        Ok(nodes.into_iter().next())
    }

    async fn whoami(
        &self,
        (pod, addr): &(String, String),
        password: &Secret,
    ) -> Result<Login, StepError> {
        let resp = self
            .http
            .get(format!("{addr}/api/whoami"))
            .basic_auth(&self.username, Some(password.expose()))
            .send()
            .await
            .map_err(|e| {
                StepError::new(
                    ErrorKind::Transient,
                    format!(
                        "the broker's management API on pod {pod} (port-forward {addr}): {}",
                        e.without_url()
                    ),
                )
            })?;
        match resp.status().as_u16() {
            200 => {
                let body: serde_json::Value = resp.json().await.unwrap_or_default();
                Ok(Login::Accepted {
                    tags: body.get("tags").cloned().unwrap_or_default(),
                })
            }
            401 => Ok(Login::Refused),
            s => Err(StepError::new(
                ErrorKind::Transient,
                format!("the broker's management API on pod {pod} answered HTTP {s} to a login"),
            )),
        }
    }

    /// The password the broker has now: the wanted one, else one of the
    /// secret's last [`VERSIONS_BACK`] versions; `None` when it refuses all.
    async fn current(
        &self,
        pod: &(String, String),
        wanted: &Secret,
    ) -> Result<Option<(Secret, serde_json::Value)>, StepError> {
        if let Login::Accepted { tags } = self.whoami(pod, wanted).await? {
            return Ok(Some((wanted.clone(), tags)));
        }
        let SecretRef::Vault { path, key, .. } = &self.password else {
            return Ok(None);
        };
        let latest = SecretRef::Vault {
            path: path.clone(),
            key: key.clone(),
            version: None,
        };
        let newest = self
            .secrets
            .resolve(&latest)
            .await
            .map_err(|e| self.invalid(e))?
            .version
            .unwrap_or(1);
        for version in (1..=newest).rev().take(VERSIONS_BACK as usize) {
            let pinned = SecretRef::Vault {
                path: path.clone(),
                key: key.clone(),
                version: Some(version),
            };
            // A destroyed or deleted version cannot be the one.
            let Ok(old) = self.secrets.resolve(&pinned).await else {
                continue;
            };
            if let Login::Accepted { tags } = self.whoami(pod, &old.value).await? {
                return Ok(Some((old.value, tags)));
            }
        }
        Ok(None)
    }
}

#[async_trait]
impl Step for ClusterBrokerStep {
    fn id(&self) -> &StepId {
        &self.id
    }
    fn kind(&self) -> &str {
        "broker-user"
    }
    fn depends_on(&self) -> Vec<StepId> {
        self.deps.clone()
    }

    async fn plan(&self, _ctx: &StepContext) -> Result<StepPlan, StepError> {
        let outputs: Outputs = [("user".to_string(), self.username.clone())].into();
        let Some(pod) = self.pod().await? else {
            return Ok(StepPlan {
                change: Change {
                    reason: format!(
                        "no broker pod runs yet: RabbitMQ starts with {}'s password from its Secret",
                        self.username
                    ),
                    ..Change::none()
                },
                outputs,
            });
        };
        if self.secrets.is_pending(&self.password) {
            return Ok(StepPlan {
                change: Change::update(vec![FieldDiff::new(
                    format!("password of {} (on pod {})", self.username, pod.0),
                    "current",
                    "new version",
                )]),
                outputs,
            });
        }
        let wanted = self
            .secrets
            .resolve(&self.password)
            .await
            .map_err(|e| self.invalid(e))?;
        let change = match self.whoami(&pod, &wanted.value).await {
            Ok(Login::Accepted { .. }) => Change::none(),
            Ok(Login::Refused) => Change::update(vec![FieldDiff::new(
                format!("password of {} (on pod {})", self.username, pod.0),
                "another version",
                self.password.to_string(),
            )]),
            // Nothing asks for a new password: a broker whose management
            // API does not answer is said so, not made a failed deploy
            // (the gates check the broker itself).
            Err(e) => Change {
                reason: format!("{}; its user's password is not checked", e.message),
                ..Change::none()
            },
        };
        Ok(StepPlan { change, outputs })
    }

    async fn apply(&self, ctx: &StepContext, plan: &StepPlan) -> Result<Outputs, StepError> {
        let Some(pod) = self.pod().await? else {
            return Ok(plan.outputs.clone());
        };
        let wanted = self
            .secrets
            .resolve(&self.password)
            .await
            .map_err(|e| self.invalid(e))?;
        let Some((current, tags)) = self.current(&pod, &wanted.value).await? else {
            return Err(StepError::new(
                ErrorKind::Other,
                format!(
                    "the broker on pod {} refuses user {} with {} and with the last {VERSIONS_BACK} versions of its secret: its password was changed outside taskctl; set it to {} with `rabbitmqctl change_password`, then deploy again",
                    pod.0, self.username, self.password, self.password
                ),
            ));
        };
        if current.same_as(&wanted.value) {
            return Ok(plan.outputs.clone());
        }
        // The user keeps its tags (the broker's own user is its
        // administrator).
        let tags = match tags {
            serde_json::Value::Array(list) => list
                .iter()
                .filter_map(|t| t.as_str())
                .collect::<Vec<_>>()
                .join(","),
            serde_json::Value::String(s) => s,
            _ => String::new(),
        };
        let (name, addr) = &pod;
        let resp = self
            .http
            .put(format!(
                "{addr}/api/users/{}",
                percent_encode(&self.username)
            ))
            .basic_auth(&self.username, Some(current.expose()))
            .json(&serde_json::json!({ "password": wanted.value.expose(), "tags": tags }))
            .send()
            .await
            .map_err(|e| {
                StepError::new(
                    ErrorKind::Transient,
                    format!(
                        "changing the broker user's password on pod {name}: {}",
                        e.without_url()
                    ),
                )
            })?;
        if !resp.status().is_success() {
            return Err(StepError::new(
                ErrorKind::Other,
                format!(
                    "the broker's management API on pod {name} answered HTTP {} to the new password of {}",
                    resp.status().as_u16(),
                    self.username
                ),
            ));
        }
        if !matches!(
            self.whoami(&pod, &wanted.value).await?,
            Login::Accepted { .. }
        ) {
            return Err(StepError::new(
                ErrorKind::Other,
                format!(
                    "the broker on pod {name} still refuses {} with its new password",
                    self.username
                ),
            ));
        }
        let version = wanted
            .version
            .map(|v| format!(" (version {v})"))
            .unwrap_or_default();
        ctx.progress(&format!(
            "broker user {} set to {}{version} on pod {name}",
            self.username, self.password
        ));
        Ok(plan.outputs.clone())
    }

    /// The broker's own user stays with the broker's data.
    async fn destroy(&self, _ctx: &StepContext, _plan: &StepPlan) -> Result<(), StepError> {
        Ok(())
    }
}
