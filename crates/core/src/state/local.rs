//! The local state backend: a directory per environment.
//!
//! Layout: `<dir>/lock.json`, `<dir>/journal.jsonl` and `<dir>/audit.jsonl`.
//!
//! A crash at any instant leaves state the next command can use:
//! - The lock is written whole to a temporary file and synced, then put in
//!   place with `link` (which fails if a lock exists, so two processes
//!   cannot both take it) or, to replace an expired lease, `rename`; the
//!   directory is synced after. `lock.json` is therefore never seen empty or
//!   half written; a leftover temporary file blocks nothing. A lock file
//!   that is unreadable anyway (written by an older taskctl that crashed,
//!   or damaged) is reported as such and removed by `lock break`.
//! - Logs are appended a line at a time with O_APPEND and synced, so a crash
//!   loses at most the line being written. A reader drops a torn last line
//!   (with a warning); the next append first cuts it off, so it never ends
//!   up in the middle of the log.

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
            .read(true)
            .append(true)
            .open(&path)
            .map_err(self.io("cannot open", &path))?;
        self.repair_tail(&mut f, &path)?;
        f.write_all(&line)
            .map_err(self.io("cannot append to", &path))?;
        f.sync_data().map_err(self.io("cannot sync", &path))
    }

    /// A log that does not end with a newline was cut by a crash in the
    /// middle of its last line: cut that line off (or, when it is whole but
    /// for its newline, end it), so the next line starts on its own.
    fn repair_tail(&self, f: &mut std::fs::File, path: &Path) -> Result<(), StateError> {
        use std::io::{Read, Seek, SeekFrom};
        let len = f.metadata().map_err(self.io("cannot read", path))?.len();
        if len == 0 {
            return Ok(());
        }
        // The last line is at most a few KiB; read the tail only.
        let start = len.saturating_sub(64 * 1024);
        f.seek(SeekFrom::Start(start))
            .map_err(self.io("cannot read", path))?;
        let mut tail = Vec::new();
        f.read_to_end(&mut tail)
            .map_err(self.io("cannot read", path))?;
        if tail.last() == Some(&b'\n') {
            return Ok(());
        }
        let cut = tail.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
        let last = &tail[cut..];
        if serde_json::from_slice::<serde_json::Value>(last).is_ok() {
            // Whole but for its newline.
            return f
                .write_all(b"\n")
                .map_err(self.io("cannot append to", path));
        }
        if cut == 0 && start > 0 {
            return Err(StateError::Corrupt {
                location: path.display().to_string(),
                message: "its last line is longer than 64 KiB and cut off".into(),
            });
        }
        tracing::warn!(
            file = %path.display(),
            bytes = last.len(),
            "dropping the torn last line of a state log (a crash while it was written)"
        );
        f.set_len(start + cut as u64)
            .map_err(self.io("cannot repair", path))
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
                Err(_) if i + 1 == lines.len() && !text.ends_with('\n') => {
                    tracing::warn!(
                        file = %path.display(),
                        line = i + 1,
                        "ignoring the torn last line of a state log (a crash while it was written)"
                    );
                }
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
        match std::fs::read(&path) {
            Ok(bytes) if bytes.iter().all(u8::is_ascii_whitespace) => {
                Err(StateError::UnreadableLock {
                    location: path.display().to_string(),
                    message: "it is empty".into(),
                })
            }
            Ok(bytes) => {
                serde_json::from_slice(&bytes)
                    .map(Some)
                    .map_err(|e| StateError::UnreadableLock {
                        location: path.display().to_string(),
                        message: format!("not a lease: {e}"),
                    })
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(self.io("cannot read", &path)(e)),
        }
    }

    /// `lease` written whole and synced to a new temporary file beside the
    /// lock; the caller puts it in place (link or rename) or removes it.
    fn staged_lock(&self, lease: &Lease) -> Result<PathBuf, StateError> {
        let path = self.file("lock.json");
        let body = serde_json::to_vec_pretty(lease).map_err(|e| StateError::Corrupt {
            location: path.display().to_string(),
            message: e.to_string(),
        })?;
        // Unique per process (pid) and per call within it (a counter: two
        // threads of one process may stage in the same nanosecond, which
        // `create_new` would refuse).
        static STAGED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = STAGED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or_default();
        let tmp = self.file(&format!("lock.json.{}.{nanos}.{n}.tmp", std::process::id()));
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)
            .map_err(self.io("cannot create", &tmp))?;
        let written = f.write_all(&body).and_then(|()| f.sync_all());
        if let Err(e) = written {
            let _ = std::fs::remove_file(&tmp);
            return Err(self.io("cannot write", &tmp)(e));
        }
        Ok(tmp)
    }

    /// Makes the directory's entries (a new or renamed lock) durable.
    fn sync_dir(&self) -> Result<(), StateError> {
        std::fs::File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(self.io("cannot sync", &self.dir))
    }

    /// Puts `lease` in place only if there is no lock: true when it did.
    fn create_lock(&self, lease: &Lease) -> Result<bool, StateError> {
        let path = self.file("lock.json");
        let tmp = self.staged_lock(lease)?;
        let linked = std::fs::hard_link(&tmp, &path);
        let _ = std::fs::remove_file(&tmp);
        match linked {
            Ok(()) => {
                self.sync_dir()?;
                Ok(true)
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(false),
            Err(e) => Err(self.io("cannot create", &path)(e)),
        }
    }

    /// Replaces the lock file atomically (a synced file renamed over it).
    fn write_lock(&self, lease: &Lease) -> Result<(), StateError> {
        let path = self.file("lock.json");
        let tmp = self.staged_lock(lease)?;
        if let Err(e) = std::fs::rename(&tmp, &path) {
            let _ = std::fs::remove_file(&tmp);
            return Err(self.io("cannot replace", &path)(e));
        }
        self.sync_dir()
    }
}

#[async_trait]
impl StateStore for LocalStore {
    fn location(&self) -> String {
        self.dir.display().to_string()
    }

    async fn acquire(&self, lease: &Lease) -> Result<Acquired, StateError> {
        self.ensure_dir()?;
        // Twice at most: a lock released between our attempt to create it
        // and our read of it is created on the second pass.
        for _ in 0..2 {
            if self.create_lock(lease)? {
                return Ok(Acquired::Yes { replaced: None });
            }
            match self.read_lock()? {
                Some(old) if old.is_expired() || old.is_orphaned() => {
                    self.write_lock(lease)?;
                    return Ok(Acquired::Yes {
                        replaced: Some(old),
                    });
                }
                Some(old) => return Ok(Acquired::HeldBy(old)),
                None => continue,
            }
        }
        let path = self.file("lock.json");
        Err(self.io("cannot create", &path)(std::io::Error::other(
            "the lock appeared and vanished twice while taking it; try again",
        )))
    }

    async fn renew(&self, lease: &Lease) -> Result<bool, StateError> {
        match self.read_lock()? {
            Some(current) if current.run_id == lease.run_id => {
                self.write_lock(lease)?;
                Ok(true)
            }
            _ => Ok(false),
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
        // An unreadable lock is removed too: it is what `lock break` is for.
        let old = match self.read_lock() {
            Err(StateError::UnreadableLock { .. }) => None,
            other => other?,
        };
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

    fn entry(n: u32) -> JournalEntry {
        JournalEntry::now(
            &format!("run-{n}"),
            crate::journal::Record::RunFinished {
                outcome: format!("outcome {n}"),
            },
        )
    }

    /// A crash in the middle of writing the last line, simulated by cutting
    /// the file at every byte of that line: the entries before it are read,
    /// and the next append lands on a line of its own, so the log stays
    /// readable (the cut line is dropped, or kept when only its newline was
    /// missing).
    #[tokio::test]
    async fn a_log_cut_at_any_byte_of_its_last_line_reads_and_appends_cleanly() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::new(dir.path(), "env");
        let entries: Vec<JournalEntry> = (0..4).map(entry).collect();
        for e in &entries[..3] {
            store.append_journal(e).await.unwrap();
        }
        let path = store.dir().join("journal.jsonl");
        let full = std::fs::read(&path).unwrap();
        let last_start = full[..full.len() - 1]
            .iter()
            .rposition(|&b| b == b'\n')
            .unwrap()
            + 1;
        let before = entries[..2].to_vec();
        let all = entries[..3].to_vec();
        let next = &entries[3];
        for cut in last_start..full.len() {
            std::fs::write(&path, &full[..cut]).unwrap();
            // Only the newline missing: the last entry is whole.
            let whole = cut == full.len() - 1;
            let expect = if whole { &all } else { &before };
            assert_eq!(&store.journal().await.unwrap(), expect, "cut at {cut}");
            store.append_journal(next).await.unwrap();
            let mut then = expect.clone();
            then.push(next.clone());
            assert_eq!(
                store.journal().await.unwrap(),
                then,
                "append after a cut at {cut}"
            );
            let text = std::fs::read_to_string(&path).unwrap();
            assert!(text.ends_with('\n') && text.lines().count() == then.len());
        }
        // Damage in the middle is not a crash: reported with its line.
        std::fs::write(&path, [&full[..10], &full[last_start..]].concat()).unwrap();
        let e = store.journal().await.unwrap_err();
        assert!(e.to_string().contains("journal.jsonl:1"), "{e}");
    }

    /// An empty lock (what a crash of an older taskctl between creating and
    /// writing it left) or one cut anywhere is reported as unreadable, with
    /// the way out; `lock break` removes it and the lock can be taken again.
    #[tokio::test]
    async fn an_empty_or_cut_lock_is_reported_and_broken() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::new(dir.path(), "env");
        let lease = Lease::new("r1", "deploy", std::time::Duration::from_secs(60));
        assert!(matches!(
            store.acquire(&lease).await.unwrap(),
            Acquired::Yes { replaced: None }
        ));
        let path = store.dir().join("lock.json");
        let full = std::fs::read(&path).unwrap();
        for cut in 0..full.len() {
            std::fs::write(&path, &full[..cut]).unwrap();
            let e = store.current_lock().await.unwrap_err();
            assert!(
                matches!(e, StateError::UnreadableLock { .. })
                    && e.to_string().contains("taskctl lock break"),
                "cut at {cut}: {e}"
            );
            let other = Lease::new("r2", "deploy", std::time::Duration::from_secs(60));
            assert!(matches!(
                store.acquire(&other).await,
                Err(StateError::UnreadableLock { .. })
            ));
            assert_eq!(store.break_lock().await.unwrap(), None);
            assert!(!path.exists());
            assert!(matches!(
                store.acquire(&other).await.unwrap(),
                Acquired::Yes { replaced: None }
            ));
            store.release(&other).await.unwrap();
        }
        assert!(
            StateError::UnreadableLock {
                location: "l".into(),
                message: "it is empty".into()
            }
            .to_string()
            .contains("it is empty")
        );
    }

    /// Takers on threads released together by a barrier (the conformance
    /// test's takers, futures without an await point, run one after
    /// another): in every round exactly one wins, and the lock holds its
    /// lease, whole.
    #[test]
    fn takers_on_threads_at_once_one_wins() {
        const TAKERS: usize = 8;
        for round in 0..20 {
            let dir = tempfile::tempdir().unwrap();
            let root = dir.path().to_path_buf();
            let barrier = std::sync::Arc::new(std::sync::Barrier::new(TAKERS));
            let threads: Vec<_> = (0..TAKERS)
                .map(|i| {
                    let root = root.clone();
                    let barrier = barrier.clone();
                    std::thread::spawn(move || {
                        let store = LocalStore::new(&root, "env");
                        let lease = Lease::new(
                            &format!("run-{round}-{i}"),
                            "deploy",
                            std::time::Duration::from_secs(60),
                        );
                        let rt = tokio::runtime::Builder::new_current_thread()
                            .build()
                            .unwrap();
                        barrier.wait();
                        let won = matches!(
                            rt.block_on(store.acquire(&lease)).unwrap(),
                            Acquired::Yes { .. }
                        );
                        (won, lease)
                    })
                })
                .collect();
            let results: Vec<(bool, Lease)> =
                threads.into_iter().map(|t| t.join().unwrap()).collect();
            let winners: Vec<&Lease> = results.iter().filter(|(w, _)| *w).map(|(_, l)| l).collect();
            assert_eq!(winners.len(), 1, "round {round}: {winners:?}");
            let rt = tokio::runtime::Builder::new_current_thread()
                .build()
                .unwrap();
            let held = rt
                .block_on(LocalStore::new(&root, "env").current_lock())
                .unwrap();
            assert_eq!(held.as_ref(), Some(winners[0]), "round {round}");
        }
    }

    /// A process killed after writing its staged lock but before linking it
    /// leaves a temporary file; it blocks nothing and is never read.
    #[tokio::test]
    async fn a_leftover_staged_lock_blocks_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::new(dir.path(), "env");
        std::fs::create_dir_all(store.dir()).unwrap();
        std::fs::write(store.dir().join("lock.json.4242.17.tmp"), b"").unwrap();
        let lease = Lease::new("r1", "deploy", std::time::Duration::from_secs(60));
        assert!(matches!(
            store.acquire(&lease).await.unwrap(),
            Acquired::Yes { replaced: None }
        ));
        assert_eq!(store.current_lock().await.unwrap(), Some(lease));
        let staged: Vec<_> = std::fs::read_dir(store.dir())
            .unwrap()
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".tmp"))
            .collect();
        assert_eq!(staged, vec!["lock.json.4242.17.tmp"], "ours are cleaned up");
    }

    /// A lease of this machine whose pid now belongs to a process that
    /// started at another time is orphaned (the pid was reused); with the
    /// right start time it is alive.
    #[test]
    fn a_reused_pid_does_not_keep_a_lease_alive() {
        let mut lease = Lease::new("r", "deploy", std::time::Duration::from_secs(60));
        assert!(lease.pid_start.is_some());
        assert!(!lease.is_orphaned(), "this very process holds it");
        lease.pid_start = lease.pid_start.map(|t| t + 1);
        assert!(lease.is_orphaned(), "same pid, another process");
        lease.pid_start = None;
        assert!(
            !lease.is_orphaned(),
            "an older lease: the pid alone decides"
        );
        lease.holder = "alice@another-host".into();
        lease.pid_start = Some(0);
        assert!(
            !lease.is_orphaned(),
            "another machine's process is never judged"
        );
    }
}
