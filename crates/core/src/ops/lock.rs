//! The environment lock: taken for the whole of a deploy or destroy,
//! renewed while it runs, released on every exit path, breakable with an
//! audited command.

use super::OpsError;
use crate::state::{Acquired, AuditEntry, Lease, StateStore};
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
                    lease: holder,
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

/// Removes the lock whoever holds it, and audits who broke whose lock and
/// why.
pub async fn break_lock(
    store: &dyn StateStore,
    environment: &str,
    reason: &str,
) -> Result<Option<Lease>, OpsError> {
    let removed = store.break_lock().await?;
    let detail = match &removed {
        Some(l) => format!(
            "broke the lock of {} (run {}, {} since {}): {reason}",
            l.holder,
            l.run_id,
            l.operation,
            l.started()
        ),
        None => format!("no lock to break: {reason}"),
    };
    store
        .append_audit(&AuditEntry::now(
            "lock_break",
            environment,
            removed.as_ref().map(|l| l.run_id.as_str()),
            detail,
        ))
        .await?;
    Ok(removed)
}
