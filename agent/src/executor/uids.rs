//! A uid of its own for every running `command` task
//! (`SANDBOX_UID_COUNT` > 1): uids `SANDBOX_UID` … `SANDBOX_UID + N - 1`.
//!
//! With one shared sandbox uid, tasks share its `RLIMIT_NPROC` (one fork
//! bomb stops every other task's forks until it is killed), may signal each
//! other and read each other's files, and a descendant that left its process
//! group (`setsid`) survives the task. With a uid per task none of that
//! holds: the limit is the task's alone, and when the task ends every
//! process of its uid is killed (`kill(-1)` from a process running as that
//! uid reaches exactly those), wherever it went, before the uid is handed
//! out again. A task waits for a free uid when all are in use.

use std::{
    sync::Mutex,
    time::{Duration, Instant},
};

use tokio::sync::{Semaphore, SemaphorePermit};

/// How long to keep killing a uid's processes before handing it out again:
/// a process forking as it is killed shows up on the next pass.
const KILL_FOR: Duration = Duration::from_millis(500);
const KILL_PAUSE: Duration = Duration::from_millis(5);

pub struct UidPool {
    free: Mutex<Vec<u32>>,
    available: Semaphore,
    pub gid: u32,
}

/// A uid taken from the pool; give it back with [`UidPool::release`]. If
/// it is dropped instead (the task's future was abandoned), one kill pass
/// runs and the uid still goes back, so the pool never shrinks.
pub struct Taken<'a> {
    pub uid: u32,
    pool: &'a UidPool,
    returned: bool,
    _permit: SemaphorePermit<'a>,
}

impl Drop for Taken<'_> {
    fn drop(&mut self) {
        if !self.returned {
            kill_all(self.uid);
            self.pool.give_back(self.uid);
        }
    }
}

impl UidPool {
    /// Uids `first` … `first + count - 1` (the caller checked the range).
    pub fn new(first: u32, count: u32, gid: u32) -> Self {
        UidPool {
            // Handed out lowest first.
            free: Mutex::new((first..first.saturating_add(count)).rev().collect()),
            available: Semaphore::new(count as usize),
            gid,
        }
    }

    /// A free uid, waiting for one when all are in use.
    pub async fn take(&self) -> Option<Taken<'_>> {
        let permit = self.available.acquire().await.ok()?;
        let uid = self.free.lock().unwrap_or_else(|e| e.into_inner()).pop()?;
        Some(Taken {
            uid,
            pool: self,
            returned: false,
            _permit: permit,
        })
    }

    fn give_back(&self, uid: u32) {
        self.free
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(uid);
    }

    /// Kills every process left running as the task's uid, then makes the
    /// uid free again. Returns how many kill passes found processes (0: the
    /// task left nothing behind).
    pub async fn release(&self, mut taken: Taken<'_>) -> u32 {
        let uid = taken.uid;
        let passes = tokio::task::spawn_blocking(move || kill_all_until_gone(uid))
            .await
            .unwrap_or(0);
        self.give_back(uid);
        // The uid is back before the permit, so a waiting task finds it.
        taken.returned = true;
        drop(taken);
        passes
    }
}

/// SIGKILL to every process of `uid`, repeated until none is left (or
/// [`KILL_FOR`] has passed).
fn kill_all_until_gone(uid: u32) -> u32 {
    let deadline = Instant::now() + KILL_FOR;
    let mut passes = 0;
    while kill_all(uid) {
        passes += 1;
        if Instant::now() >= deadline {
            tracing::warn!(
                uid,
                "processes of a finished task's uid are still there after {} ms of SIGKILL",
                KILL_FOR.as_millis()
            );
            break;
        }
        std::thread::sleep(KILL_PAUSE);
    }
    passes
}

/// One pass: a forked child switches to `uid` and sends SIGKILL to every
/// process it may signal, which is every process of that uid (and not
/// itself). True when some process got the signal.
fn kill_all(uid: u32) -> bool {
    // SAFETY: the child only makes raw syscalls (setresgid/setresuid, kill,
    // exit_group): async-signal-safe, nothing allocated or locked, as
    // required after fork in a multi-threaded process.
    unsafe {
        match libc::fork() {
            0 => {
                let nobody = 65_534;
                if libc::syscall(libc::SYS_setresgid, nobody, nobody, nobody) != 0
                    || libc::syscall(libc::SYS_setresuid, uid, uid, uid) != 0
                {
                    libc::_exit(2);
                }
                let signalled = libc::kill(-1, libc::SIGKILL) == 0;
                libc::_exit(if signalled { 0 } else { 1 });
            }
            -1 => false,
            child => {
                let mut status = 0;
                while libc::waitpid(child, &mut status, 0) == -1
                    && std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted
                {
                }
                libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn uids_are_handed_out_once_and_come_back() {
        let pool = UidPool::new(70_000, 2, 70_000);
        let a = pool.take().await.unwrap();
        let b = pool.take().await.unwrap();
        assert_eq!((a.uid, b.uid), (70_000, 70_001));
        // All in use: a third waits.
        assert!(
            tokio::time::timeout(Duration::from_millis(50), pool.take())
                .await
                .is_err()
        );
        let a_uid = a.uid;
        // Not root (or nothing running as it): nothing to kill either way.
        pool.release(a).await;
        let c = pool.take().await.unwrap();
        assert_eq!(c.uid, a_uid);
        pool.release(b).await;
        pool.release(c).await;
        // Dropped without release (an abandoned task): the uid comes back.
        let d = pool.take().await.unwrap();
        let e = pool.take().await.unwrap();
        drop(d);
        let f = tokio::time::timeout(Duration::from_millis(500), pool.take())
            .await
            .expect("a dropped uid is free again")
            .unwrap();
        pool.release(e).await;
        pool.release(f).await;
    }
}
