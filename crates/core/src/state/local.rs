//! The local state backend: a directory per environment.
//!
//! Layout: `<dir>/lock.json` (created with O_EXCL, so two processes cannot
//! both create it), `<dir>/journal.jsonl` and `<dir>/audit.jsonl` (appended a
//! line at a time with O_APPEND, so a crash loses at most the line being
//! written, and a reader skips a torn last line).

use super::{Acquired, AuditEntry, Lease, StateError, StateStore};
use crate::journal::JournalEntry;
use async_trait::async_trait;
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::io::Write;
use std::path::{Path, PathBuf};

pub struct LocalStore {
    dir: PathBuf,
}

impl LocalStore {
    /// State of one environment under `root` (the profile's `state.path`).
    pub fn new(root: &Path, environment_key: &str) -> Self {
        LocalStore {
            dir: root.join(environment_key),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn file(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    fn io(&self, what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> StateError {
        let location = path.display().to_string();
        move |source| StateError::Io {
            what,
            location,
            source,
        }
    }

    fn ensure_dir(&self) -> Result<(), StateError> {
        std::fs::create_dir_all(&self.dir).map_err(self.io("cannot create directory", &self.dir))
    }

    fn append_line<T: Serialize>(&self, name: &str, value: &T) -> Result<(), StateError> {
        self.ensure_dir()?;
        let path = self.file(name);
        let mut line = serde_json::to_vec(value).map_err(|e| StateError::Corrupt {
            location: path.display().to_string(),
            message: e.to_string(),
        })?;
        line.push(b'\n');
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(self.io("cannot open", &path))?;
        f.write_all(&line)
            .map_err(self.io("cannot append to", &path))
    }

    fn read_lines<T: DeserializeOwned>(&self, name: &str) -> Result<Vec<T>, StateError> {
        let path = self.file(name);
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(self.io("cannot read", &path)(e)),
        };
        let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
        let mut out = Vec::with_capacity(lines.len());
        for (i, line) in lines.iter().enumerate() {
            match serde_json::from_str(line) {
                Ok(v) => out.push(v),
                // A torn last line is what a crash mid-write leaves.
                Err(_) if i + 1 == lines.len() && !text.ends_with('\n') => {}
                Err(e) => {
                    return Err(StateError::Corrupt {
                        location: format!("{}:{}", path.display(), i + 1),
                        message: e.to_string(),
                    });
                }
            }
        }
        Ok(out)
    }

    fn read_lock(&self) -> Result<Option<Lease>, StateError> {
        let path = self.file("lock.json");
        match std::fs::read_to_string(&path) {
            Ok(text) => serde_json::from_str(&text)
                .map(Some)
                .map_err(|e| StateError::Corrupt {
                    location: path.display().to_string(),
                    message: e.to_string(),
                }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(self.io("cannot read", &path)(e)),
        }
    }

    /// Replaces the lock file atomically (write then rename).
    fn write_lock(&self, lease: &Lease) -> Result<(), StateError> {
        let path = self.file("lock.json");
        let tmp = self.file(&format!("lock.json.{}", std::process::id()));
        let body = serde_json::to_vec_pretty(lease).map_err(|e| StateError::Corrupt {
            location: path.display().to_string(),
            message: e.to_string(),
        })?;
        std::fs::write(&tmp, body).map_err(self.io("cannot write", &tmp))?;
        std::fs::rename(&tmp, &path).map_err(self.io("cannot replace", &path))
    }
}

#[async_trait]
impl StateStore for LocalStore {
    fn location(&self) -> String {
        self.dir.display().to_string()
    }

    async fn acquire(&self, lease: &Lease) -> Result<Acquired, StateError> {
        self.ensure_dir()?;
        let path = self.file("lock.json");
        let body = serde_json::to_vec_pretty(lease).map_err(|e| StateError::Corrupt {
            location: path.display().to_string(),
            message: e.to_string(),
        })?;
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
        {
            Ok(mut f) => {
                f.write_all(&body).map_err(self.io("cannot write", &path))?;
                Ok(Acquired::Yes { replaced: None })
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => match self.read_lock()? {
                Some(old) if old.is_expired() || old.is_orphaned() => {
                    self.write_lock(lease)?;
                    Ok(Acquired::Yes {
                        replaced: Some(old),
                    })
                }
                Some(old) => Ok(Acquired::HeldBy(old)),
                // Released between our create and our read: try once more.
                None => match std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .open(&path)
                {
                    Ok(mut f) => {
                        f.write_all(&body).map_err(self.io("cannot write", &path))?;
                        Ok(Acquired::Yes { replaced: None })
                    }
                    Err(e) => Err(self.io("cannot create", &path)(e)),
                },
            },
            Err(e) => Err(self.io("cannot create", &path)(e)),
        }
    }

    async fn renew(&self, lease: &Lease) -> Result<(), StateError> {
        match self.read_lock()? {
            Some(current) if current.run_id == lease.run_id => self.write_lock(lease),
            _ => Ok(()),
        }
    }

    async fn release(&self, lease: &Lease) -> Result<(), StateError> {
        let path = self.file("lock.json");
        match self.read_lock()? {
            Some(current) if current.run_id == lease.run_id => {
                std::fs::remove_file(&path).map_err(self.io("cannot remove", &path))
            }
            _ => Ok(()),
        }
    }

    async fn current_lock(&self) -> Result<Option<Lease>, StateError> {
        self.read_lock()
    }

    async fn break_lock(&self) -> Result<Option<Lease>, StateError> {
        let old = self.read_lock()?;
        let path = self.file("lock.json");
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(old),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(self.io("cannot remove", &path)(e)),
        }
    }

    async fn append_journal(&self, entry: &JournalEntry) -> Result<(), StateError> {
        self.append_line("journal.jsonl", entry)
    }

    async fn journal(&self) -> Result<Vec<JournalEntry>, StateError> {
        self.read_lines("journal.jsonl")
    }

    async fn append_audit(&self, entry: &AuditEntry) -> Result<(), StateError> {
        self.append_line("audit.jsonl", entry)
    }

    async fn audit(&self) -> Result<Vec<AuditEntry>, StateError> {
        self.read_lines("audit.jsonl")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fresh state directory and a function opening handles on it.
    fn fresh() -> (tempfile::TempDir, impl Fn() -> LocalStore) {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_path_buf();
        (dir, move || LocalStore::new(&root, "name/env"))
    }

    mod conformance {
        use super::fresh;
        use crate::state::conformance as c;

        #[tokio::test]
        async fn second_holder_is_refused_and_named() {
            let (_dir, open) = fresh();
            c::second_holder_is_refused_and_named(open).await;
        }

        #[tokio::test]
        async fn expired_lease_is_taken_over() {
            let (_dir, open) = fresh();
            c::expired_lease_is_taken_over(open).await;
        }

        #[tokio::test]
        async fn orphaned_lease_is_taken_over() {
            let (_dir, open) = fresh();
            c::orphaned_lease_is_taken_over(open).await;
        }

        #[tokio::test]
        async fn renew_and_release_touch_only_the_own_lease() {
            let (_dir, open) = fresh();
            c::renew_and_release_touch_only_the_own_lease(open).await;
        }

        #[tokio::test]
        async fn break_returns_the_removed_lease() {
            let (_dir, open) = fresh();
            c::break_returns_the_removed_lease(open).await;
        }

        #[tokio::test]
        async fn logs_keep_append_order() {
            let (_dir, open) = fresh();
            c::logs_keep_append_order(open).await;
        }

        #[tokio::test]
        async fn writers_never_overwrite_each_other() {
            let (_dir, open) = fresh();
            c::writers_never_overwrite_each_other(open).await;
        }

        #[tokio::test]
        async fn concurrent_takers_one_wins() {
            let (_dir, open) = fresh();
            c::concurrent_takers_one_wins(open, 8).await;
        }
    }

    #[tokio::test]
    async fn journal_survives_a_torn_last_line() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::new(dir.path(), "env");
        let entry = JournalEntry::now(
            "r",
            crate::journal::Record::RunFinished {
                outcome: "succeeded".into(),
            },
        );
        store.append_journal(&entry).await.unwrap();
        let path = store.dir().join("journal.jsonl");
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap();
        f.write_all(b"{\"run\":\"r\",\"at\":").unwrap();
        assert_eq!(store.journal().await.unwrap(), vec![entry]);
    }
}
