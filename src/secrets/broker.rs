//! `secrets/broker-user`: the agents' RabbitMQ user and virtual host.

use super::*;

/// The agents' broker user, as the profile's references say it.
#[derive(Clone, Debug)]
pub struct BrokerUser {
    pub management_url: url::Url,
    pub vhost: String,
    /// The administrator taskctl manages users as (`user:password`).
    pub admin: SecretRef,
    /// Set when `admin` is only the password (a managed broker's
    /// administrator, `vault:PATH#password`): the username's reference.
    pub admin_username: Option<SecretRef>,
    /// The agents' user: its password, and the username beside it.
    pub password: SecretRef,
    pub username: SecretRef,
}

impl BrokerUser {
    /// The broker user the profile asks for: `services.rabbitmq.credentials`
    /// (a `vault:PATH#KEY` whose PATH also holds `username`), provisioned
    /// through the management API of the external broker with its
    /// `external.credentials` (`user:password` of an administrator).
    pub fn from_profile(profile: &Profile) -> Result<Option<Self>, String> {
        let Some(r) = &profile.services.rabbitmq else {
            return Ok(None);
        };
        // A broker taskctl runs on docker is reached where the target
        // publishes it; an in-cluster one (kubernetes, aws) is not reached.
        if r.enabled
            && r.external.is_none()
            && profile.target.kind == taskctl_core::profile::model::TargetKind::Docker
            && let Some(password) = r.credentials.as_ref().and_then(|c| c.get())
        {
            return Self::managed(profile, r, password).map(Some);
        }
        let (Some(external), Some(password)) = (
            r.external.as_ref(),
            r.credentials.as_ref().and_then(|c| c.get()),
        ) else {
            return Ok(None);
        };
        let SecretRef::Vault { path, version, .. } = password else {
            return Ok(None);
        };
        let Some(admin) = external.credentials.as_ref().and_then(|c| c.get()) else {
            return Err("services.rabbitmq.credentials names the agents' broker user, but services.rabbitmq.external.credentials (an administrator's `user:password`) is missing, so taskctl cannot create it".into());
        };
        let amqp = url::Url::parse(&external.url)
            .map_err(|e| format!("services.rabbitmq.external.url: {e}"))?;
        let management_url = match &external.management_url {
            Some(u) => url::Url::parse(u)
                .map_err(|e| format!("services.rabbitmq.external.management_url: {e}"))?,
            None => url::Url::parse(&format!(
                "http://{}:15672/",
                amqp.host_str().unwrap_or("127.0.0.1")
            ))
            .map_err(|e| format!("services.rabbitmq.external.url: {e}"))?,
        };
        let vhost = match amqp.path().trim_start_matches('/') {
            "" => "/".to_string(),
            v => percent_decode(v),
        };
        Ok(Some(BrokerUser {
            management_url,
            vhost,
            admin: admin.clone(),
            admin_username: None,
            password: password.clone(),
            username: SecretRef::Vault {
                path: path.clone(),
                key: "username".into(),
                version: *version,
            },
        }))
    }
}

impl BrokerUser {
    /// A broker taskctl runs (docker target): its management API where the
    /// target publishes it on loopback, its administrator from
    /// `services.rabbitmq.admin` (`vault:PATH#password`, username beside).
    fn managed(
        profile: &Profile,
        r: &taskctl_core::profile::model::RabbitMq,
        password: &SecretRef,
    ) -> Result<Self, String> {
        let SecretRef::Vault { path, version, .. } = password else {
            return Err("services.rabbitmq.credentials: expected vault:PATH#password".into());
        };
        let admin = r
            .admin
            .as_ref()
            .and_then(|c| c.get())
            .ok_or("services.rabbitmq.admin: a broker taskctl runs needs its administrator (vault:PATH#password)")?;
        let SecretRef::Vault {
            path: admin_path,
            version: admin_version,
            ..
        } = admin
        else {
            return Err("services.rabbitmq.admin: expected vault:PATH#password".into());
        };
        let port = profile
            .target
            .docker
            .as_ref()
            .and_then(|d| d.publish.get("rabbitmq_management").copied())
            .unwrap_or(15672);
        if port == 0 {
            return Err("target.docker.publish.rabbitmq_management: taskctl reaches the broker's management API to make the agents' user; it cannot be 0".into());
        }
        Ok(BrokerUser {
            management_url: url::Url::parse(&format!("http://127.0.0.1:{port}/"))
                .map_err(|e| e.to_string())?,
            vhost: r.vhost.clone(),
            admin: admin.clone(),
            admin_username: Some(SecretRef::Vault {
                path: admin_path.clone(),
                key: "username".into(),
                version: *admin_version,
            }),
            password: password.clone(),
            username: SecretRef::Vault {
                path: path.clone(),
                key: "username".into(),
                version: *version,
            },
        })
    }
}

/// `%2f` → `/` (a vhost in an AMQP URL's path).
pub(crate) fn percent_decode(s: &str) -> String {
    percent_encoding::percent_decode_str(s)
        .decode_utf8_lossy()
        .into_owned()
}

/// One path segment of a management API URL (`/` → `%2F`).
pub(crate) fn percent_encode(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
}

/// True when RabbitMQ's `password_hash` (base64 of a 4-byte salt and
/// SHA-256(salt ‖ password)) is the hash of `password`.
pub fn rabbit_hash_matches(hash_b64: &str, password: &Secret) -> bool {
    use base64::Engine;
    let Ok(raw) = base64::engine::general_purpose::STANDARD.decode(hash_b64) else {
        return false;
    };
    if raw.len() != 4 + 32 {
        return false;
    }
    let mut input = raw[..4].to_vec();
    input.extend_from_slice(password.expose().as_bytes());
    let digest = ring::digest::digest(&ring::digest::SHA256, &input);
    digest.as_ref() == &raw[4..]
}

/// `secrets/broker-user`: the agents' RabbitMQ user has the password the
/// profile resolves to, and every permission on its virtual host.
pub(crate) struct BrokerUserStep {
    pub(crate) id: StepId,
    pub(crate) deps: Vec<StepId>,
    pub(crate) user: BrokerUser,
    pub(crate) secrets: Arc<Secrets>,
    pub(crate) http: reqwest::Client,
}

pub(crate) struct BrokerLogin {
    pub(crate) admin_user: String,
    pub(crate) admin_password: Secret,
    pub(crate) username: String,
    pub(crate) password: Secret,
}

impl BrokerUserStep {
    async fn login(&self) -> Result<BrokerLogin, StepError> {
        let invalid = |e: taskctl_core::secrets::SecretError| {
            StepError::new(ErrorKind::Invalid, format!("broker user: {e}"))
        };
        let admin = self
            .secrets
            .resolve(&self.user.admin)
            .await
            .map_err(invalid)?;
        let admin_named = match &self.user.admin_username {
            Some(r) => Some(self.secrets.resolve(r).await.map_err(invalid)?),
            None => None,
        };
        let (admin_user, admin_password) = match &admin_named {
            Some(user) => (user.value.expose(), admin.value.expose()),
            None => admin.value.expose().split_once(':').ok_or_else(|| {
                StepError::new(
                    ErrorKind::Invalid,
                    format!(
                        "{}: expected `user:password` of a RabbitMQ administrator",
                        self.user.admin
                    ),
                )
            })?,
        };
        let username = self
            .secrets
            .resolve(&self.user.username)
            .await
            .map_err(invalid)?;
        let password = self
            .secrets
            .resolve(&self.user.password)
            .await
            .map_err(invalid)?;
        if self.user.admin_username.is_some() && admin_user == username.value.expose() {
            return Err(StepError::new(
                ErrorKind::Invalid,
                format!(
                    "services.rabbitmq.admin ({}) and services.rabbitmq.credentials ({}) name the same broker user `{admin_user}`; give the administrator's secrets.entries entry its own `username`",
                    self.user.admin, self.user.password
                ),
            ));
        }
        Ok(BrokerLogin {
            admin_user: admin_user.to_string(),
            admin_password: Secret::new(admin_password),
            username: username.value.expose().to_string(),
            password: password.value,
        })
    }

    /// Waits (up to a minute) for the management API to answer at all: a
    /// broker that just started answers AMQP seconds before its HTTP API.
    async fn wait_management(&self, ctx: &StepContext) -> Result<(), StepError> {
        let started = std::time::Instant::now();
        loop {
            match self.http.get(self.url("api/overview")).send().await {
                Ok(_) => return Ok(()),
                Err(e) if started.elapsed() > Duration::from_secs(60) => {
                    return Err(StepError::new(
                        ErrorKind::Other,
                        format!(
                            "the broker's management API at {} did not answer within 60s: {e}",
                            self.user.management_url
                        ),
                    ));
                }
                Err(_) => {
                    ctx.progress(&format!(
                        "waiting for the management API at {} ({}s)",
                        self.user.management_url,
                        started.elapsed().as_secs()
                    ));
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                        _ = ctx.cancelled().cancelled() => {
                            return Err(StepError::new(ErrorKind::Cancelled, "interrupted while waiting for the broker"));
                        }
                    }
                }
            }
        }
    }

    fn url(&self, path: &str) -> String {
        format!(
            "{}/{}",
            self.user.management_url.as_str().trim_end_matches('/'),
            path
        )
    }

    fn http_error(&self, what: &str, e: reqwest::Error) -> StepError {
        StepError::new(
            ErrorKind::Transient,
            format!(
                "{what} at {}: {}",
                self.user.management_url,
                e.without_url()
            ),
        )
    }

    /// `None`: no such user; `Some(true)`: the password matches.
    async fn current(&self, l: &BrokerLogin) -> Result<Option<bool>, StepError> {
        let resp = self
            .http
            .get(self.url(&format!("api/users/{}", percent_encode(&l.username))))
            .basic_auth(&l.admin_user, Some(l.admin_password.expose()))
            .send()
            .await
            .map_err(|e| self.http_error("reading the broker user", e))?;
        match resp.status().as_u16() {
            404 => Ok(None),
            401 | 403 => Err(StepError::new(
                ErrorKind::Invalid,
                format!(
                    "the broker's management API at {} refused the administrator credentials of {}",
                    self.user.management_url, self.user.admin
                ),
            )),
            200 => {
                let body: serde_json::Value = resp
                    .json()
                    .await
                    .map_err(|e| self.http_error("reading the broker user", e))?;
                let hash = body["password_hash"].as_str().unwrap_or_default();
                Ok(Some(rabbit_hash_matches(hash, &l.password)))
            }
            s => Err(StepError::new(
                ErrorKind::Transient,
                format!(
                    "the broker's management API at {} answered HTTP {s} for the user",
                    self.user.management_url
                ),
            )),
        }
    }

    async fn vhost_exists(&self, l: &BrokerLogin) -> Result<bool, StepError> {
        let resp = self
            .http
            .get(self.url(&format!("api/vhosts/{}", percent_encode(&self.user.vhost))))
            .basic_auth(&l.admin_user, Some(l.admin_password.expose()))
            .send()
            .await
            .map_err(|e| self.http_error("reading the virtual host", e))?;
        Ok(resp.status().is_success())
    }

    async fn delete(&self, l: &BrokerLogin, path: &str) -> Result<(), StepError> {
        let resp = self
            .http
            .delete(self.url(path))
            .basic_auth(&l.admin_user, Some(l.admin_password.expose()))
            .send()
            .await
            .map_err(|e| self.http_error("updating the broker", e))?;
        if !resp.status().is_success() && resp.status().as_u16() != 404 {
            return Err(StepError::new(
                ErrorKind::Other,
                format!(
                    "the broker's management API at {} answered HTTP {} to DELETE {}",
                    self.user.management_url,
                    resp.status().as_u16(),
                    path.split('/').take(2).collect::<Vec<_>>().join("/")
                ),
            ));
        }
        Ok(())
    }

    /// Whether the user has permissions on the virtual host.
    async fn has_permissions(&self, l: &BrokerLogin) -> Result<bool, StepError> {
        let resp = self
            .http
            .get(self.url(&format!(
                "api/permissions/{}/{}",
                percent_encode(&self.user.vhost),
                percent_encode(&l.username)
            )))
            .basic_auth(&l.admin_user, Some(l.admin_password.expose()))
            .send()
            .await
            .map_err(|e| self.http_error("reading the broker user's permissions", e))?;
        Ok(resp.status().is_success())
    }

    async fn put(
        &self,
        l: &BrokerLogin,
        path: &str,
        body: serde_json::Value,
    ) -> Result<(), StepError> {
        let resp = self
            .http
            .put(self.url(path))
            .basic_auth(&l.admin_user, Some(l.admin_password.expose()))
            .json(&body)
            .send()
            .await
            .map_err(|e| self.http_error("updating the broker", e))?;
        if !resp.status().is_success() {
            return Err(StepError::new(
                ErrorKind::Other,
                format!(
                    "the broker's management API at {} answered HTTP {} to PUT {}",
                    self.user.management_url,
                    resp.status().as_u16(),
                    path.split('/').take(2).collect::<Vec<_>>().join("/")
                ),
            ));
        }
        Ok(())
    }
}

#[async_trait]
impl Step for BrokerUserStep {
    fn id(&self) -> &StepId {
        &self.id
    }
    fn kind(&self) -> &str {
        "broker-user"
    }
    fn depends_on(&self) -> Vec<StepId> {
        self.deps.clone()
    }

    async fn plan(&self, ctx: &StepContext) -> Result<StepPlan, StepError> {
        let pending = self.secrets.is_pending(&self.user.password);
        let outputs: Outputs = [("vhost".to_string(), self.user.vhost.clone())].into();
        // A broker this run starts (the docker target's) cannot be asked.
        if ctx
            .dep_outputs()
            .any(|(_, o)| o.get(super::cluster::STARTS).map(String::as_str) == Some("true"))
        {
            return Ok(StepPlan {
                change: Change::create(format!(
                    "once the broker runs: the agents' user and virtual host {}",
                    self.user.vhost
                )),
                outputs,
            });
        }
        if pending {
            return Ok(StepPlan {
                change: Change::update(vec![FieldDiff::new("password", "current", "new version")]),
                outputs,
            });
        }
        // A broker taskctl runs and just started (planned again at apply).
        if ctx
            .dep_outputs()
            .any(|(_, o)| o.contains_key(super::cluster::STARTS))
        {
            self.wait_management(ctx).await?;
        }
        let login = self.login().await?;
        let change = match self.current(&login).await? {
            None => Change::create(format!(
                "no user {} on the broker (virtual host {})",
                login.username, self.user.vhost
            )),
            Some(matches) => {
                let mut diffs = Vec::new();
                if !matches {
                    diffs.push(FieldDiff::new(
                        "password",
                        "another version",
                        self.user.password.to_string(),
                    ));
                }
                if !self.has_permissions(&login).await? {
                    diffs.push(FieldDiff::new(
                        format!("permissions on {}", self.user.vhost),
                        "none",
                        "configure, write, read",
                    ));
                }
                if diffs.is_empty() {
                    Change::none()
                } else {
                    Change::update(diffs)
                }
            }
        };
        Ok(StepPlan { change, outputs })
    }

    async fn apply(&self, ctx: &StepContext, plan: &StepPlan) -> Result<Outputs, StepError> {
        self.wait_management(ctx).await?;
        let login = self.login().await?;
        if self.user.vhost != "/" && !self.vhost_exists(&login).await? {
            // The environment's own virtual host: only its agents' user may
            // use it. RabbitMQ grants a new vhost to the user who creates it,
            // so the administrator's grant is taken back at once.
            let vhost = percent_encode(&self.user.vhost);
            self.put(
                &login,
                &format!("api/vhosts/{vhost}"),
                serde_json::json!({ "description": "taskctl: one environment's agents" }),
            )
            .await?;
            if login.admin_user != login.username {
                self.delete(
                    &login,
                    &format!(
                        "api/permissions/{vhost}/{}",
                        percent_encode(&login.admin_user)
                    ),
                )
                .await?;
            }
        }
        self.put(
            &login,
            &format!("api/users/{}", percent_encode(&login.username)),
            serde_json::json!({ "password": login.password.expose(), "tags": "" }),
        )
        .await?;
        self.put(
            &login,
            &format!(
                "api/permissions/{}/{}",
                percent_encode(&self.user.vhost),
                percent_encode(&login.username)
            ),
            serde_json::json!({ "configure": ".*", "write": ".*", "read": ".*" }),
        )
        .await?;
        ctx.progress(&format!(
            "broker user {} set to {}",
            login.username, self.user.password
        ));
        Ok(plan.outputs.clone())
    }

    /// The user stays: agents of other environments may share the broker.
    async fn destroy(&self, _ctx: &StepContext, _plan: &StepPlan) -> Result<(), StepError> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rabbitmq_password_hashes_are_checked() {
        use base64::Engine;
        let salt = [1u8, 2, 3, 4];
        let mut input = salt.to_vec();
        input.extend_from_slice(b"right-password");
        let mut raw = salt.to_vec();
        raw.extend_from_slice(ring::digest::digest(&ring::digest::SHA256, &input).as_ref());
        let hash = base64::engine::general_purpose::STANDARD.encode(raw);
        assert!(rabbit_hash_matches(&hash, &Secret::new("right-password")));
        assert!(!rabbit_hash_matches(&hash, &Secret::new("wrong-password")));
        assert!(!rabbit_hash_matches(
            "not base64!",
            &Secret::new("right-password")
        ));
    }

    #[test]
    fn vhosts_are_decoded() {
        assert_eq!(percent_decode("%2f"), "/");
        assert_eq!(percent_decode("tasks"), "tasks");
        assert_eq!(percent_encode("/"), "%2F");
    }
}
