//! Bounded memory of the tasks this agent completed, to recognise a
//! redelivery of a task whose result was published (or is being published).
//!
//! Guarantee: while an id is in the cache, a redelivered copy is acknowledged
//! without running again. Caveats: the memory is per process (another agent or
//! a restarted one does not know the id), and bounded (the oldest ids are
//! forgotten first).

use std::{num::NonZeroUsize, sync::Mutex};

use lru::LruCache;
use taskctl_protocol::TaskStatus;

pub struct Completed {
    cache: Mutex<LruCache<String, TaskStatus>>,
}

impl Completed {
    pub fn new(capacity: NonZeroUsize) -> Self {
        Completed {
            cache: Mutex::new(LruCache::new(capacity)),
        }
    }

    /// Remembers that `task_id` completed with `status`; called before its
    /// result is published, so a copy delivered while the broker confirms
    /// the result is not run again ([`Self::forget`] if the publish fails).
    pub fn insert(&self, task_id: &str, status: TaskStatus) {
        self.lock().put(task_id.to_owned(), status);
    }

    /// Forgets `task_id`: its result could not be published, so the task
    /// goes back to the queue and must run when it comes again.
    pub fn forget(&self, task_id: &str) {
        self.lock().pop(task_id);
    }

    /// The status a completed task ended with, if this agent remembers it.
    pub fn get(&self, task_id: &str) -> Option<TaskStatus> {
        self.lock().get(task_id).copied()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, LruCache<String, TaskStatus>> {
        // The cache stays consistent even if a holder panicked: each call is
        // a single put or get.
        self.cache
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forgets_the_oldest_beyond_capacity() {
        let c = Completed::new(NonZeroUsize::new(2).unwrap());
        c.insert("a", TaskStatus::Succeeded);
        c.insert("b", TaskStatus::Failed);
        c.insert("c", TaskStatus::Succeeded);
        assert_eq!(c.get("a"), None);
        assert_eq!(c.get("b"), Some(TaskStatus::Failed));
        c.forget("b");
        assert_eq!(c.get("b"), None);
    }
}
