//! The behaviour every [`StateStore`] must have, as test functions shared by
//! the backends: the local store runs them in this crate's tests, the S3
//! store (crates/aws) against moto. Each function takes `open`, which opens
//! one more handle on one fresh, empty state location (as a second process
//! or a second machine would), and panics with a message on a difference.
//!
//! Compiled for this crate's tests and with the `conformance` feature.

use super::{Acquired, AuditEntry, Lease, StateStore, unix_now};
use crate::journal::{JournalEntry, Record};
use std::time::Duration;

const HOUR: Duration = Duration::from_secs(3600);

fn journal_entry(run: &str, n: usize) -> JournalEntry {
    JournalEntry::now(
        run,
        Record::RunFinished {
            outcome: format!("entry {n}"),
        },
    )
}

fn audit_entry(n: usize) -> AuditEntry {
    AuditEntry::now(
        "lock_break",
        "conformance/test",
        Some("r"),
        format!("entry {n}"),
    )
}

fn held_by(acquired: Acquired) -> Lease {
    match acquired {
        Acquired::HeldBy(lease) => lease,
        Acquired::Yes { .. } => panic!("the lock was taken while another run held it"),
    }
}

fn replaced(acquired: Acquired) -> Option<Lease> {
    match acquired {
        Acquired::Yes { replaced } => replaced,
        Acquired::HeldBy(l) => panic!("refused, held by {} (run {})", l.holder, l.run_id),
    }
}

/// A second run is refused and told the holder, its run, operation, start
/// and expiry; once released, the lock can be taken again.
pub async fn second_holder_is_refused_and_named<S: StateStore>(open: impl Fn() -> S) {
    let (a, b) = (open(), open());
    assert!(
        a.current_lock().await.unwrap().is_none(),
        "a fresh lock is free"
    );
    let first = Lease::new("run-1", "deploy", HOUR);
    assert_eq!(replaced(a.acquire(&first).await.unwrap()), None);
    let second = Lease::new("run-2", "destroy", HOUR);
    let holder = held_by(b.acquire(&second).await.unwrap());
    assert_eq!(holder, first, "the refusal names the whole lease");
    assert_eq!(b.current_lock().await.unwrap(), Some(first.clone()));
    // Asking again changes nothing.
    assert_eq!(held_by(b.acquire(&second).await.unwrap()), first);
    a.release(&first).await.unwrap();
    assert!(b.current_lock().await.unwrap().is_none(), "released");
    assert_eq!(replaced(b.acquire(&second).await.unwrap()), None);
    assert_eq!(a.current_lock().await.unwrap(), Some(second));
}

/// An expired lease is taken over, and the taker is told whose it was.
pub async fn expired_lease_is_taken_over<S: StateStore>(open: impl Fn() -> S) {
    let (a, b) = (open(), open());
    let mut old = Lease::new("run-old", "deploy", HOUR);
    old.holder = "alice@elsewhere".into();
    old.started_at = unix_now() - 7200;
    old.expires_at = unix_now() - 1;
    assert_eq!(replaced(a.acquire(&old).await.unwrap()), None);
    let next = Lease::new("run-next", "deploy", HOUR);
    assert_eq!(replaced(b.acquire(&next).await.unwrap()), Some(old));
    assert_eq!(a.current_lock().await.unwrap(), Some(next));
}

/// A lease of this machine whose process is gone is taken over at once.
pub async fn orphaned_lease_is_taken_over<S: StateStore>(open: impl Fn() -> S) {
    let (a, b) = (open(), open());
    let mut dead = Lease::new("run-dead", "deploy", HOUR);
    dead.pid = u32::MAX; // no such process on this machine
    a.acquire(&dead).await.unwrap();
    let next = Lease::new("run-next", "deploy", HOUR);
    assert_eq!(replaced(b.acquire(&next).await.unwrap()), Some(dead));
}

/// Renew and release act on the caller's own lease only.
pub async fn renew_and_release_touch_only_the_own_lease<S: StateStore>(open: impl Fn() -> S) {
    let (a, b) = (open(), open());
    // Nothing to renew or release: nothing is created.
    let mut mine = Lease::new("run-mine", "deploy", HOUR);
    assert!(!a.renew(&mine).await.unwrap(), "nothing to renew");
    a.release(&mine).await.unwrap();
    assert!(a.current_lock().await.unwrap().is_none());

    a.acquire(&mine).await.unwrap();
    let mut other = Lease::new("run-other", "deploy", 2 * HOUR);
    assert!(!b.renew(&other).await.unwrap(), "not ours");
    b.release(&other).await.unwrap();
    assert_eq!(b.current_lock().await.unwrap(), Some(mine.clone()));
    // Same holder and pid, another run: still not ours.
    other.holder = mine.holder.clone();
    other.pid = mine.pid;
    b.release(&other).await.unwrap();
    assert_eq!(b.current_lock().await.unwrap(), Some(mine.clone()));

    mine.expires_at += 600;
    assert!(a.renew(&mine).await.unwrap(), "ours, renewed");
    assert_eq!(b.current_lock().await.unwrap(), Some(mine.clone()));
    a.release(&mine).await.unwrap();
    assert!(b.current_lock().await.unwrap().is_none());
    a.release(&mine).await.unwrap();
}

/// Breaking removes whoever holds the lock and returns that lease.
pub async fn break_returns_the_removed_lease<S: StateStore>(open: impl Fn() -> S) {
    let (a, b) = (open(), open());
    assert_eq!(b.break_lock().await.unwrap(), None, "nothing to break");
    let lease = Lease::new("run-stuck", "deploy", HOUR);
    a.acquire(&lease).await.unwrap();
    assert_eq!(b.break_lock().await.unwrap(), Some(lease.clone()));
    assert!(a.current_lock().await.unwrap().is_none());
    // The broken run's release and renew do not bring it back.
    a.renew(&lease).await.unwrap();
    a.release(&lease).await.unwrap();
    assert!(a.current_lock().await.unwrap().is_none());
    let next = Lease::new("run-next", "deploy", HOUR);
    assert_eq!(replaced(b.acquire(&next).await.unwrap()), None);
}

/// Journal and audit log read back every entry in the order appended, each
/// log apart from the other; empty logs read as empty.
pub async fn logs_keep_append_order<S: StateStore>(open: impl Fn() -> S) {
    let a = open();
    assert!(a.journal().await.unwrap().is_empty());
    assert!(a.audit().await.unwrap().is_empty());
    let mut journal = Vec::new();
    let mut audit = Vec::new();
    for n in 0..12 {
        let j = journal_entry("run-1", n);
        a.append_journal(&j).await.unwrap();
        journal.push(j);
        if n % 3 == 0 {
            let e = audit_entry(n);
            a.append_audit(&e).await.unwrap();
            audit.push(e);
        }
    }
    let b = open();
    assert_eq!(b.journal().await.unwrap(), journal);
    assert_eq!(b.audit().await.unwrap(), audit);
    assert_eq!(a.journal().await.unwrap(), journal);
}

/// Two writers of one log (two processes, or one with a stale view) never
/// overwrite each other's entries; each entry lands after the ones before.
pub async fn writers_never_overwrite_each_other<S: StateStore>(open: impl Fn() -> S) {
    let (a, b) = (open(), open());
    let e: Vec<JournalEntry> = (0..5).map(|n| journal_entry("run-w", n)).collect();
    a.append_journal(&e[0]).await.unwrap();
    b.append_journal(&e[1]).await.unwrap();
    a.append_journal(&e[2]).await.unwrap();
    b.append_journal(&e[3]).await.unwrap();
    a.append_journal(&e[4]).await.unwrap();
    assert_eq!(open().journal().await.unwrap(), e);
    let (x, y) = (audit_entry(1), audit_entry(2));
    b.append_audit(&x).await.unwrap();
    a.append_audit(&y).await.unwrap();
    assert_eq!(open().audit().await.unwrap(), vec![x, y]);
}

/// Runs started at once for one environment: exactly one gets the lock.
pub async fn concurrent_takers_one_wins<S: StateStore>(open: impl Fn() -> S, takers: usize) {
    let stores: Vec<S> = (0..takers).map(|_| open()).collect();
    let leases: Vec<Lease> = (0..takers)
        .map(|i| Lease::new(&format!("run-{i}"), "deploy", HOUR))
        .collect();
    let results =
        futures_util::future::join_all(stores.iter().zip(&leases).map(|(s, l)| s.acquire(l))).await;
    let mut winners = Vec::new();
    for (result, lease) in results.into_iter().zip(&leases) {
        match result.unwrap() {
            Acquired::Yes { .. } => winners.push(lease.clone()),
            Acquired::HeldBy(_) => {}
        }
    }
    assert_eq!(winners.len(), 1, "winners: {winners:?}");
    assert_eq!(
        stores[0].current_lock().await.unwrap(),
        Some(winners.remove(0))
    );
}
