//! What the agents are given, read from the profile the way the agents
//! read their environment: the broker URL with its credentials, the CA they
//! trust the broker with, and the key taskctl signs its own tasks with. The
//! gates reach the broker as the agents do, on every target.

use taskctl_core::ops::OpsError;
use taskctl_core::profile::model::Agent;
use taskctl_core::secrets::Secrets;

/// The key taskctl signs its own tasks with (the functional gate's): the
/// private key beside the public key the agents are given. When the agents'
/// `TASK_SIGNING_PUBLIC_KEYS` is `vault:PATH#KEY` (a managed `ed25519`
/// secret), that is `vault:PATH#private_key` at the same version; otherwise
/// `TASKCTL_TASK_SIGNING_KEY` from taskctl's environment (base64 PKCS#8).
pub async fn signing_key(agent: &Agent, secrets: &Secrets) -> Result<Option<String>, OpsError> {
    use taskctl_core::profile::value::SecretRef;
    let reference = agent
        .env
        .iter()
        .find(|v| v.name == "TASK_SIGNING_PUBLIC_KEYS")
        .and_then(|v| v.secret.as_ref().and_then(|s| s.get().cloned()));
    if let Some(SecretRef::Vault { path, version, .. }) = reference {
        let private = SecretRef::Vault {
            path,
            key: "private_key".into(),
            version,
        };
        return secrets
            .resolve(&private)
            .await
            .map(|r| Some(r.value.expose().to_string()))
            .map_err(|e| {
                OpsError::Provider(format!(
                    "agent `{}`: the task-signing key {private}: {e}",
                    agent.name
                ))
            });
    }
    Ok(std::env::var("TASKCTL_TASK_SIGNING_KEY")
        .ok()
        .filter(|k| !k.trim().is_empty()))
}

/// The value of an agent's env entry `name`: the literal, the entry of
/// the agent's ConfigMap it names, or the secret resolved (never shown in
/// errors); `None` when the agent has no such entry.
pub async fn env(agent: &Agent, secrets: &Secrets, name: &str) -> Result<Option<String>, OpsError> {
    let Some(var) = agent.env.iter().find(|v| v.name == name) else {
        return Ok(None);
    };
    if let Some(key_ref) = &var.config_map {
        // The agent's own ConfigMap is the only one whose data the profile
        // holds; another is made outside taskctl and read in the cluster.
        return Ok(agent
            .config_map
            .as_ref()
            .filter(|c| c.name == key_ref.name)
            .and_then(|c| c.data.get(&key_ref.key))
            .cloned());
    }
    match (&var.value, var.secret.as_ref().and_then(|s| s.get())) {
        (Some(v), _) => Ok(Some(v.clone())),
        (None, Some(r)) => secrets
            .resolve(r)
            .await
            .map(|r| Some(r.value.expose().to_string()))
            .map_err(|e| OpsError::Provider(format!("agent `{}` env {name}: {e}", agent.name))),
        _ => Ok(None),
    }
}

/// The broker URL an agent connects with, as the agent composes it:
/// `BROKER_URL` (a value or a secret), with `BROKER_USERNAME` and
/// `BROKER_PASSWORD` (values or secrets) put in its user info. The gates
/// publish with the agents' own credentials and never show them.
pub async fn broker_url(agent: &Agent, secrets: &Secrets) -> Result<Option<String>, OpsError> {
    let resolve = async |name: &str| env(agent, secrets, name).await;
    let Some(url) = resolve("BROKER_URL").await? else {
        return Ok(None);
    };
    let user = resolve("BROKER_USERNAME").await?;
    let password = resolve("BROKER_PASSWORD").await?;
    if user.is_none() && password.is_none() {
        return Ok(Some(url));
    }
    let mut parsed = url::Url::parse(&url).map_err(|e| {
        OpsError::Provider(format!(
            "agent `{}` BROKER_URL is not a URL: {e}",
            agent.name
        ))
    })?;
    if let Some(user) = user {
        let _ = parsed.set_username(&user);
    }
    if let Some(password) = password {
        let _ = parsed.set_password(Some(&password));
    }
    Ok(Some(parsed.to_string()))
}
