//! The environment lock: taken for the whole of a deploy or destroy,
//! renewed while it runs, released on every exit path, breakable with an
//! audited command.

use super::OpsError;
use crate::state::{Acquired, AuditEntry, Lease, StateError, StateStore};
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinHandle;

/// How long a lease lasts without renewal; renewed every third of it.
pub const LEASE_TTL: Duration = Duration::from_secs(15 * 60);

/// A held lock. Call [`LockGuard::release`]; if the process dies instead,
/// the lease expires, or is taken over at once on the same machine since its
/// process is gone.
pub struct LockGuard {
    store: Arc<dyn StateStore>,
    lease: Lease,
    renewer: JoinHandle<()>,
    /// An expired or orphaned lease this one replaced.
    pub replaced: Option<Lease>,
}

impl LockGuard {
    pub async fn acquire(
        store: Arc<dyn StateStore>,
        environment: &str,
        run_id: &str,
        operation: &str,
    ) -> Result<LockGuard, OpsError> {
        let lease = Lease::new(run_id, operation, LEASE_TTL);
        let replaced = match store.acquire(&lease).await? {
            Acquired::Yes { replaced } => replaced,
            Acquired::HeldBy(holder) => {
                return Err(OpsError::Locked {
                    environment: environment.to_string(),
                    lease: Box::new(holder),
                });
            }
        };
        if let Some(old) = &replaced {
            store
                .append_audit(&AuditEntry::now(
                    "lock_takeover",
                    environment,
                    Some(run_id),
                    format!(
                        "took over the lease of {} (run {}), expired or its process gone",
                        old.holder, old.run_id
                    ),
                ))
                .await?;
        }
        let renewer = {
            let store = store.clone();
            let mut lease = lease.clone();
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(LEASE_TTL / 3).await;
                    lease.expires_at = crate::state::unix_now() + LEASE_TTL.as_secs();
                    if let Err(e) = store.renew(&lease).await {
                        tracing::warn!(error = %e, "lock renewal failed");
                    }
                }
            })
        };
        Ok(LockGuard {
            store,
            lease,
            renewer,
            replaced,
        })
    }

    pub async fn release(self) -> Result<(), OpsError> {
        self.renewer.abort();
        self.store.release(&self.lease).await?;
        Ok(())
    }
}

/// Who holds the lock, if anyone.
pub async fn lock_status(store: &dyn StateStore) -> Result<Option<Lease>, OpsError> {
    Ok(store.current_lock().await?)
}

/// What `lock break` removed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Broken {
    /// A lease, now gone.
    Lease(Lease),
    /// A lock file that held no readable lease (why), now gone.
    Unreadable(String),
    /// There was no lock.
    Free,
}

/// Removes the lock whoever holds it, and audits who broke whose lock and
/// why. A lock file that cannot be read is removed too (and said so).
pub async fn break_lock(
    store: &dyn StateStore,
    environment: &str,
    reason: &str,
) -> Result<Broken, OpsError> {
    let unreadable = match store.current_lock().await {
        Err(StateError::UnreadableLock { message, .. }) => Some(message),
        _ => None,
    };
    let removed = match (store.break_lock().await?, unreadable) {
        (Some(l), _) => Broken::Lease(l),
        (None, Some(why)) => Broken::Unreadable(why),
        (None, None) => Broken::Free,
    };
    let detail = match &removed {
        Broken::Lease(l) => format!(
            "broke the lock of {} (run {}, {} since {}): {reason}",
            l.holder,
            l.run_id,
            l.operation,
            l.started()
        ),
        Broken::Unreadable(why) => format!("removed an unreadable lock file ({why}): {reason}"),
        Broken::Free => format!("no lock to break: {reason}"),
    };
    store
        .append_audit(&AuditEntry::now(
            "lock_break",
            environment,
            match &removed {
                Broken::Lease(l) => Some(l.run_id.as_str()),
                _ => None,
            },
            detail,
        ))
        .await?;
    Ok(removed)
}
