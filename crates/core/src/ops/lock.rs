//! The environment lock: taken for the whole of a deploy or destroy,
//! renewed while it runs, released on every exit path, breakable with an
//! audited command.

use super::OpsError;
use crate::state::{Acquired, AuditEntry, Lease, StateError, StateStore};
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

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
    lost: Arc<std::sync::Mutex<Option<String>>>,
}

impl LockGuard {
    pub async fn acquire(
        store: Arc<dyn StateStore>,
        environment: &str,
        run_id: &str,
        operation: &str,
    ) -> Result<LockGuard, OpsError> {
        Self::acquire_for(
            store,
            environment,
            run_id,
            operation,
            LEASE_TTL,
            CancellationToken::new(),
        )
        .await
    }

    /// Takes the lock for `ttl`, renewed every third of it. When the lease
    /// is lost, `on_lost` is cancelled (the run stops before its next
    /// change, as on Ctrl-C) and [`Self::lost`] says why: the lock is no
    /// longer this run's (broken or taken over), or it could not be renewed
    /// before it would expire.
    pub async fn acquire_for(
        store: Arc<dyn StateStore>,
        environment: &str,
        run_id: &str,
        operation: &str,
        ttl: Duration,
        on_lost: CancellationToken,
    ) -> Result<LockGuard, OpsError> {
        let lease = Lease::new(run_id, operation, ttl);
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
        let lost = Arc::new(std::sync::Mutex::new(None));
        let renewer = tokio::spawn(renew_until_lost(
            store.clone(),
            lease.clone(),
            ttl,
            lost.clone(),
            on_lost,
        ));
        Ok(LockGuard {
            store,
            lease,
            renewer,
            replaced,
            lost,
        })
    }

    /// Why the lease was lost, if it was.
    pub fn lost(&self) -> Option<String> {
        self.lost.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub async fn release(self) -> Result<(), OpsError> {
        self.renewer.abort();
        // Releases only a lease that is still this run's.
        self.store.release(&self.lease).await?;
        Ok(())
    }

    /// Ends a run held under this lock: releases it and hands `result` on,
    /// unless the lease was lost and the run stopped short (an error, or
    /// `stopped` says so), which is then a [`OpsError::LockLost`], or the
    /// run's own error when it failed for a reason of its own first.
    pub async fn finish<T>(
        self,
        environment: String,
        result: Result<T, OpsError>,
        stopped: impl FnOnce(&T) -> bool,
    ) -> Result<T, OpsError> {
        if let Some(why) = self.lost() {
            self.renewer.abort();
            return match result {
                Ok(done) if !stopped(&done) => Ok(done),
                Err(e) if !matches!(e, OpsError::Engine(_)) => Err(e),
                _ => Err(OpsError::LockLost { environment, why }),
            };
        }
        self.release().await?;
        result
    }
}

/// Whether a run stopped short (Ctrl-C, or its lease lost).
pub(super) fn interrupted(
    plan: &crate::engine::RunReport,
    applied: Option<&crate::engine::RunReport>,
) -> bool {
    use crate::events::RunOutcome::Interrupted;
    plan.outcome == Interrupted || applied.is_some_and(|a| a.outcome == Interrupted)
}

/// Renews `lease` every third of `ttl` until it is lost.
async fn renew_until_lost(
    store: Arc<dyn StateStore>,
    mut lease: Lease,
    ttl: Duration,
    lost: Arc<std::sync::Mutex<Option<String>>>,
    on_lost: CancellationToken,
) {
    let every = ttl / 3;
    let why = loop {
        tokio::time::sleep(every).await;
        let mut next = lease.clone();
        next.expires_at = crate::state::unix_now() + ttl.as_secs().max(1);
        match store.renew(&next).await {
            Ok(true) => lease = next,
            Ok(false) => {
                break "the lock is no longer this run's: it was broken or taken over (`taskctl audit` says by whom)".to_string();
            }
            Err(e) => {
                tracing::warn!(error = %e, "lock renewal failed");
                // The next try would come after the lease expired: from
                // then on another run may take it.
                if crate::state::unix_now() + every.as_secs() >= lease.expires_at {
                    break format!("the lock could not be renewed before it expired ({e})");
                }
            }
        }
    };
    tracing::error!(reason = %why, "lock lost: stopping before the next change");
    *lost.lock().unwrap_or_else(|e| e.into_inner()) = Some(why);
    on_lost.cancel();
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::LocalStore;

    /// A lease broken while its run holds it is noticed at the next renewal:
    /// the run's token is cancelled (no new step starts) and the guard says
    /// why; releasing it then leaves the new holder's lease alone.
    #[tokio::test]
    async fn a_broken_lease_is_noticed_and_stops_the_run() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn StateStore> = Arc::new(LocalStore::new(dir.path(), "env"));
        let stop = CancellationToken::new();
        let ttl = Duration::from_millis(300);
        let guard =
            LockGuard::acquire_for(store.clone(), "env", "run-1", "deploy", ttl, stop.clone())
                .await
                .unwrap();
        tokio::time::sleep(ttl).await;
        assert!(
            guard.lost().is_none() && !stop.is_cancelled(),
            "renewed while ours"
        );
        assert_eq!(store.current_lock().await.unwrap().unwrap().run_id, "run-1");

        break_lock(store.as_ref(), "env", "test").await.unwrap();
        tokio::time::timeout(Duration::from_secs(5), stop.cancelled())
            .await
            .expect("the loss is noticed at the next renewal");
        let why = guard.lost().unwrap();
        assert!(why.contains("broken or taken over"), "{why}");

        let other = LockGuard::acquire(store.clone(), "env", "run-2", "deploy")
            .await
            .unwrap();
        guard.release().await.unwrap();
        assert_eq!(store.current_lock().await.unwrap().unwrap().run_id, "run-2");
        other.release().await.unwrap();
        assert!(store.current_lock().await.unwrap().is_none());
    }

    /// A guard whose lease was broken and noticed.
    async fn lost_guard(store: &Arc<dyn StateStore>, run: &str) -> LockGuard {
        let stop = CancellationToken::new();
        let guard = LockGuard::acquire_for(
            store.clone(),
            "env",
            run,
            "deploy",
            Duration::from_millis(300),
            stop.clone(),
        )
        .await
        .unwrap();
        break_lock(store.as_ref(), "env", "test").await.unwrap();
        tokio::time::timeout(Duration::from_secs(5), stop.cancelled())
            .await
            .expect("the loss is noticed");
        guard
    }

    #[tokio::test]
    async fn a_lost_lease_is_the_error_unless_the_run_failed_for_its_own_reason() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn StateStore> = Arc::new(LocalStore::new(dir.path(), "env"));
        let stopped = lost_guard(&store, "r1")
            .await
            .finish("env".into(), Ok(()), |_| true)
            .await
            .unwrap_err();
        assert!(matches!(stopped, OpsError::LockLost { .. }), "{stopped}");
        assert!(stopped.to_string().contains("resume"), "{stopped}");
        let own = lost_guard(&store, "r2")
            .await
            .finish::<()>("env".into(), Err(OpsError::Preflight("no".into())), |_| {
                true
            })
            .await
            .unwrap_err();
        assert!(matches!(own, OpsError::Preflight(_)), "{own}");
        // Lost after the run had finished: its result stands.
        let done = lost_guard(&store, "r3")
            .await
            .finish("env".into(), Ok(7), |_| false)
            .await;
        assert_eq!(done.unwrap(), 7);
    }
}
