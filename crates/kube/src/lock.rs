//! One deploy per environment per cluster: a `coordination.k8s.io/v1`
//! Lease, `taskctl-lock-<environment>` in the `taskctl-system` namespace.
//!
//! Why a Lease of its own rather than a `taskctl_core::state::StateStore`:
//! a StateStore also keeps the journal and the audit log, which belong on the
//! machine that runs taskctl (the core's local store keeps them, and the
//! core's deploy already takes its local lock through it). What the cluster
//! adds is mutual exclusion between machines that share the cluster and not
//! a state directory: a lease, nothing more. The provider's level steps take
//! it before their first change ([`crate::provider`]), so a plan never
//! takes it and a deploy with nothing to change never waits for it.
//!
//! Taken by create (the API server's create is atomic: a 409 means someone
//! holds it, and the answer names the holder and since when); renewed in the
//! background while held; an expired lease (its holder died without
//! releasing) is taken over with an optimistic replace on its
//! `resourceVersion`, so two takers cannot both win. So is a lease held by
//! a process of this machine that is gone (`user@host/pid`, no such pid).

use crate::cluster::{FIELD_MANAGER, is_not_found, step_error};
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::Client;
use kube::api::{Api, Patch, PatchParams, PostParams};
use std::collections::BTreeMap;
use std::time::Duration;
use taskctl_core::engine::StepError;

/// Where taskctl keeps its own objects in a cluster: leases and releases.
pub const SYSTEM_NAMESPACE: &str = "taskctl-system";

/// Why the lock was not taken.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// Someone else holds it.
    #[error(
        "{environment} is being deployed by {holder} since {since} (Lease {namespace}/{name}, expires {expires} unless renewed)"
    )]
    Held {
        environment: String,
        holder: String,
        since: String,
        expires: String,
        namespace: String,
        name: String,
    },
    #[error(transparent)]
    Api(#[from] StepError),
}

/// The lease of one environment in one cluster.
#[derive(Clone)]
pub struct ClusterLock {
    client: Client,
    environment: String,
    name: String,
    holder: String,
    ttl: Duration,
}

/// `user@host/pid`: who holds a lease.
pub fn holder_identity() -> String {
    format!("{}/{}", taskctl_core::state::holder(), std::process::id())
}

/// Makes sure `taskctl-system` exists (server-side apply: idempotent).
pub async fn ensure_system_namespace(client: &Client) -> Result<(), StepError> {
    let api: Api<Namespace> = Api::all(client.clone());
    let ns = Namespace {
        metadata: ObjectMeta {
            name: Some(SYSTEM_NAMESPACE.into()),
            labels: Some(BTreeMap::from([(
                "app.kubernetes.io/managed-by".to_string(),
                "taskctl".to_string(),
            )])),
            ..ObjectMeta::default()
        },
        ..Namespace::default()
    };
    let mut value = serde_json::to_value(&ns).unwrap_or_default();
    value["apiVersion"] = "v1".into();
    value["kind"] = "Namespace".into();
    api.patch(
        SYSTEM_NAMESPACE,
        &PatchParams::apply(FIELD_MANAGER),
        &Patch::Apply(&value),
    )
    .await
    .map(|_| ())
    .map_err(|e| step_error(&format!("Namespace {SYSTEM_NAMESPACE}"), e))
}

fn now() -> jiff::Timestamp {
    jiff::Timestamp::now()
}

fn expiry(lease: &Lease) -> Option<jiff::Timestamp> {
    let spec = lease.spec.as_ref()?;
    let renewed = spec.renew_time.as_ref().or(spec.acquire_time.as_ref())?.0;
    let secs = i64::from(spec.lease_duration_seconds.unwrap_or(0));
    renewed
        .checked_add(jiff::SignedDuration::from_secs(secs))
        .ok()
}

/// Held by a process of this machine that no longer exists (killed before
/// it could release), as the core's local lock judges it: waiting for the
/// expiry would only delay the next run on the same machine.
fn is_orphaned(holder: &str) -> bool {
    let Some((user_host, pid)) = holder.rsplit_once('/') else {
        return false;
    };
    let Ok(pid) = pid.parse::<u32>() else {
        return false;
    };
    let ours = taskctl_core::state::holder();
    user_host == ours
        && pid != std::process::id()
        && !std::path::Path::new(&format!("/proc/{pid}")).exists()
}

impl ClusterLock {
    /// `environment` is the label form `<name>.<env>`; `ttl` is how long
    /// the lease outlives its holder's last renewal.
    pub fn new(client: Client, environment: &str, ttl: Duration) -> ClusterLock {
        Self::with_holder(client, environment, ttl, holder_identity())
    }

    /// The same with a given holder identity (two holders in one process:
    /// tests, and tools acting for someone).
    pub fn with_holder(
        client: Client,
        environment: &str,
        ttl: Duration,
        holder: String,
    ) -> ClusterLock {
        ClusterLock {
            client,
            environment: environment.to_string(),
            name: format!("taskctl-lock-{environment}"),
            holder,
            ttl: ttl.max(Duration::from_secs(3)),
        }
    }

    pub fn holder(&self) -> &str {
        &self.holder
    }

    fn api(&self) -> Api<Lease> {
        Api::namespaced(self.client.clone(), SYSTEM_NAMESPACE)
    }

    fn lease(&self, acquired: jiff::Timestamp, resource_version: Option<String>) -> Lease {
        Lease {
            metadata: ObjectMeta {
                name: Some(self.name.clone()),
                namespace: Some(SYSTEM_NAMESPACE.into()),
                resource_version,
                labels: Some(BTreeMap::from([
                    (
                        "app.kubernetes.io/managed-by".to_string(),
                        "taskctl".to_string(),
                    ),
                    ("taskctl.dev/lock-of".to_string(), self.environment.clone()),
                ])),
                ..ObjectMeta::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: Some(self.holder.clone()),
                acquire_time: Some(MicroTime(acquired)),
                renew_time: Some(MicroTime(now())),
                lease_duration_seconds: Some(self.ttl.as_secs() as i32),
                ..LeaseSpec::default()
            }),
        }
    }

    fn held(&self, lease: &Lease) -> LockError {
        let spec = lease.spec.clone().unwrap_or_default();
        LockError::Held {
            environment: self.environment.clone(),
            holder: spec
                .holder_identity
                .unwrap_or_else(|| "(nobody named)".into()),
            since: spec
                .acquire_time
                .map(|t| t.0.to_string())
                .unwrap_or_else(|| "(unknown)".into()),
            expires: expiry(lease)
                .map(|t| t.to_string())
                .unwrap_or_else(|| "(unknown)".into()),
            namespace: SYSTEM_NAMESPACE.into(),
            name: self.name.clone(),
        }
    }

    /// Takes the lease, or says who holds it.
    pub async fn acquire(&self) -> Result<LeaseGuard, LockError> {
        ensure_system_namespace(&self.client).await?;
        let api = self.api();
        let what = format!("Lease {SYSTEM_NAMESPACE}/{}", self.name);
        match api
            .create(&PostParams::default(), &self.lease(now(), None))
            .await
        {
            Ok(_) => return Ok(self.guard()),
            Err(kube::Error::Api(s)) if s.code == 409 => {}
            Err(e) => return Err(step_error(&what, e).into()),
        }
        let current = match api.get_opt(&self.name).await {
            Ok(Some(l)) => l,
            // Released between our create and our read: try once more.
            Ok(None) => {
                return match api
                    .create(&PostParams::default(), &self.lease(now(), None))
                    .await
                {
                    Ok(_) => Ok(self.guard()),
                    Err(e) => Err(step_error(&what, e).into()),
                };
            }
            Err(e) => return Err(step_error(&what, e).into()),
        };
        let ours = current
            .spec
            .as_ref()
            .and_then(|s| s.holder_identity.as_deref())
            == Some(self.holder.as_str());
        let holder = current
            .spec
            .as_ref()
            .and_then(|s| s.holder_identity.as_deref())
            .unwrap_or_default();
        let expired = expiry(&current).is_none_or(|t| t <= now()) || is_orphaned(holder);
        if !ours && !expired {
            return Err(self.held(&current));
        }
        // Expired (or our own from an earlier call): take it over, unless
        // someone else does first.
        let rv = current.metadata.resource_version.clone();
        let acquired = if ours {
            current
                .spec
                .as_ref()
                .and_then(|s| s.acquire_time.as_ref())
                .map(|t| t.0)
                .unwrap_or_else(now)
        } else {
            now()
        };
        match api
            .replace(
                &self.name,
                &PostParams::default(),
                &self.lease(acquired, rv),
            )
            .await
        {
            Ok(_) => Ok(self.guard()),
            Err(kube::Error::Api(s)) if s.code == 409 => match api.get_opt(&self.name).await {
                Ok(Some(l)) => Err(self.held(&l)),
                Ok(None) => Err(LockError::Api(StepError::new(
                    taskctl_core::engine::ErrorKind::Conflict,
                    format!("{what}: taken over and released meanwhile; try again"),
                ))),
                Err(e) => Err(step_error(&what, e).into()),
            },
            Err(e) => Err(step_error(&what, e).into()),
        }
    }

    fn guard(&self) -> LeaseGuard {
        let lock = self.clone();
        let renew = tokio::spawn(async move {
            let every = lock.ttl / 3;
            loop {
                tokio::time::sleep(every).await;
                if let Err(e) = lock.renew().await {
                    tracing::warn!("cannot renew the cluster lease {}: {e}", lock.name);
                }
            }
        });
        LeaseGuard {
            lock: self.clone(),
            renew,
        }
    }

    /// Moves the lease's renew time to now, if we still hold it.
    async fn renew(&self) -> Result<(), StepError> {
        let api = self.api();
        let what = format!("Lease {SYSTEM_NAMESPACE}/{}", self.name);
        let Some(current) = api
            .get_opt(&self.name)
            .await
            .map_err(|e| step_error(&what, e))?
        else {
            return Ok(());
        };
        let spec = current.spec.clone().unwrap_or_default();
        if spec.holder_identity.as_deref() != Some(self.holder.as_str()) {
            return Ok(());
        }
        let acquired = spec.acquire_time.map(|t| t.0).unwrap_or_else(now);
        api.replace(
            &self.name,
            &PostParams::default(),
            &self.lease(acquired, current.metadata.resource_version.clone()),
        )
        .await
        .map(|_| ())
        .map_err(|e| step_error(&what, e))
    }
}

/// A held lease, renewed until released or dropped. Dropping stops the
/// renewals and the lease expires after its TTL; [`LeaseGuard::release`]
/// frees it at once.
pub struct LeaseGuard {
    lock: ClusterLock,
    renew: tokio::task::JoinHandle<()>,
}

impl LeaseGuard {
    pub fn holder(&self) -> &str {
        &self.lock.holder
    }

    /// Deletes the lease if we still hold it.
    pub async fn release(self) -> Result<(), StepError> {
        self.renew.abort();
        let api = self.lock.api();
        let what = format!("Lease {SYSTEM_NAMESPACE}/{}", self.lock.name);
        let current = match api.get_opt(&self.lock.name).await {
            Ok(Some(l)) => l,
            Ok(None) => return Ok(()),
            Err(e) => return Err(step_error(&what, e)),
        };
        let ours = current
            .spec
            .as_ref()
            .and_then(|s| s.holder_identity.as_deref())
            == Some(self.lock.holder.as_str());
        if !ours {
            return Ok(());
        }
        match api.delete(&self.lock.name, &Default::default()).await {
            Ok(_) => Ok(()),
            Err(e) if is_not_found(&e) => Ok(()),
            Err(e) => Err(step_error(&what, e)),
        }
    }
}

impl Drop for LeaseGuard {
    fn drop(&mut self) {
        self.renew.abort();
    }
}
