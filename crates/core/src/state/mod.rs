//! Where taskctl keeps an environment's journal, lock and audit log.
//!
//! The [`StateStore`] trait has a local implementation here ([`LocalStore`],
//! a directory; works with nothing installed); provider crates add shared
//! ones (S3). One deploy or destroy runs per environment at a time: the lock
//! is a lease with its holder, start and expiry.

#[cfg(any(test, feature = "conformance"))]
pub mod conformance;
mod local;

pub use local::LocalStore;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::journal::JournalEntry;

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// Reading or writing the state failed.
    #[error("state {what} at {location}")]
    Io {
        what: &'static str,
        location: String,
        #[source]
        source: std::io::Error,
    },
    /// A state file is not what taskctl writes.
    #[error("state file {location} is corrupt: {message}")]
    Corrupt { location: String, message: String },
    /// The lock file is there but holds no lease taskctl can read (an empty
    /// file left by a crash of an older taskctl, or damage): nobody can take
    /// the lock until it is removed.
    #[error(
        "the lock file {location} is unreadable ({message}): no run can take the lock; if no taskctl run is in progress, `taskctl lock break` removes it"
    )]
    UnreadableLock { location: String, message: String },
    /// A shared backend failed.
    #[error("state backend: {0}")]
    Backend(String),
}

/// Who holds an environment's lock, since when and until when.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    /// `user@host`.
    pub holder: String,
    pub pid: u32,
    pub run_id: String,
    pub operation: String,
    /// Seconds since the Unix epoch.
    pub started_at: u64,
    pub expires_at: u64,
    /// When the holding process started (clock ticks since boot, field 22
    /// of `/proc/PID/stat`), so that a pid reused by another process after
    /// the holder died is not taken for the holder. Absent in leases
    /// written by older versions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid_start: Option<u64>,
}

impl Lease {
    pub fn new(run_id: &str, operation: &str, ttl: Duration) -> Self {
        let now = unix_now();
        Lease {
            holder: holder(),
            pid: std::process::id(),
            run_id: run_id.to_string(),
            operation: operation.to_string(),
            started_at: now,
            expires_at: now + ttl.as_secs(),
            pid_start: process_start(std::process::id()),
        }
    }

    pub fn is_expired(&self) -> bool {
        unix_now() >= self.expires_at
    }

    /// Held by a process of this machine that no longer exists (killed
    /// without a chance to release it): no process has its pid, or the one
    /// that has it started at another time (the pid was reused).
    pub fn is_orphaned(&self) -> bool {
        let host = self.holder.rsplit('@').next().unwrap_or_default();
        if host != hostname() {
            return false;
        }
        match (process_start(self.pid), self.pid_start) {
            (None, _) => !std::path::Path::new(&format!("/proc/{}", self.pid)).exists(),
            (Some(now), Some(then)) => now != then,
            (Some(_), None) => false,
        }
    }

    pub fn started(&self) -> String {
        format_unix(self.started_at)
    }

    pub fn expires(&self) -> String {
        format_unix(self.expires_at)
    }
}

pub enum Acquired {
    /// The lock is ours. `replaced` is an expired or orphaned lease we took over.
    Yes { replaced: Option<Lease> },
    /// Someone else holds it.
    HeldBy(Lease),
}

/// An entry of the audit log: who did what to an environment, when.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEntry {
    pub at: String,
    pub actor: String,
    pub action: String,
    pub environment: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_id: Option<String>,
    pub detail: String,
    /// Who approved the action when the profile requires an approval
    /// (`rollback.manual.prerequisites: approval_from_lead`); kept apart
    /// from `actor` because the person running the command is often not
    /// the one who may allow it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approver: Option<String>,
}

impl AuditEntry {
    pub fn now(
        action: &str,
        environment: &str,
        run_id: Option<&str>,
        detail: impl Into<String>,
    ) -> Self {
        AuditEntry {
            at: humantime::format_rfc3339_seconds(SystemTime::now()).to_string(),
            actor: holder(),
            action: action.to_string(),
            environment: environment.to_string(),
            run_id: run_id.map(str::to_string),
            detail: detail.into(),
            approver: None,
        }
    }

    /// The same entry, recording who approved it.
    pub fn approved_by(mut self, approver: Option<&str>) -> Self {
        self.approver = approver.map(str::to_string);
        self
    }
}

#[async_trait]
pub trait StateStore: Send + Sync {
    /// Where the state is, for messages.
    fn location(&self) -> String;

    async fn acquire(&self, lease: &Lease) -> Result<Acquired, StateError>;
    /// Extends our lease's expiry; `false` when the lock is not ours any
    /// more (broken, taken over, or gone), and nothing was written.
    async fn renew(&self, lease: &Lease) -> Result<bool, StateError>;
    /// Releases the lock if `lease` still holds it.
    async fn release(&self, lease: &Lease) -> Result<(), StateError>;
    async fn current_lock(&self) -> Result<Option<Lease>, StateError>;
    /// Removes the lock whoever holds it; returns the lease it removed.
    async fn break_lock(&self) -> Result<Option<Lease>, StateError>;

    async fn append_journal(&self, entry: &JournalEntry) -> Result<(), StateError>;
    async fn journal(&self) -> Result<Vec<JournalEntry>, StateError>;

    async fn append_audit(&self, entry: &AuditEntry) -> Result<(), StateError>;
    async fn audit(&self) -> Result<Vec<AuditEntry>, StateError>;
}

/// Seconds since the Unix epoch, by this machine's clock.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default()
}

fn format_unix(secs: u64) -> String {
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(secs)).to_string()
}

/// Start time of process `pid` (field 22 of `/proc/PID/stat`, clock ticks
/// since boot), or None when there is no such process (or no `/proc`).
fn process_start(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may hold spaces or
    // parentheses itself: count fields after the last `)`.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .or_else(|_| std::env::var("HOSTNAME"))
        .unwrap_or_else(|_| "localhost".into())
}

/// `user@host` of this process.
pub fn holder() -> String {
    let user = std::env::var("USER")
        .or_else(|_| std::env::var("LOGNAME"))
        .unwrap_or_else(|_| "unknown".into());
    format!("{user}@{}", hostname())
}
