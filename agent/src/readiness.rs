//! Readiness as a set of latches: the agent is ready only when every latch has
//! been released (the linkerd2-proxy model).
//!
//! Each component holds its own latch and releases it when its part is up
//! (broker connected, consumers running) and takes it again when it goes down
//! (broker lost, draining). `/ready` reports the latches still held, so an
//! operator sees why a pod is not ready.

use std::sync::{
    Arc,
    atomic::{AtomicBool, Ordering},
};

type Latches = Vec<(&'static str, Arc<AtomicBool>)>;

/// The set of latches; cheap to clone.
#[derive(Clone, Default)]
pub struct Readiness {
    latches: Arc<std::sync::Mutex<Latches>>,
}

/// One component's latch; starts held.
#[derive(Clone)]
pub struct Latch {
    held: Arc<AtomicBool>,
}

impl Latch {
    /// The component is up.
    pub fn release(&self) {
        self.held.store(false, Ordering::Release);
    }

    /// The component is down.
    pub fn hold(&self) {
        self.held.store(true, Ordering::Release);
    }
}

impl Readiness {
    /// A new latch named `name`, held until released.
    pub fn latch(&self, name: &'static str) -> Latch {
        let held = Arc::new(AtomicBool::new(true));
        self.lock().push((name, held.clone()));
        Latch { held }
    }

    /// Names of the latches still held; empty means ready.
    pub fn waiting_on(&self) -> Vec<&'static str> {
        self.lock()
            .iter()
            .filter(|(_, held)| held.load(Ordering::Acquire))
            .map(|(name, _)| *name)
            .collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Latches> {
        // A poisoned lock only means a thread panicked while pushing a latch;
        // the list itself is still consistent.
        self.latches
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_only_when_all_latches_are_released() {
        let r = Readiness::default();
        let broker = r.latch("broker");
        let consumers = r.latch("consumers");
        assert_eq!(r.waiting_on(), ["broker", "consumers"]);
        broker.release();
        assert_eq!(r.waiting_on(), ["consumers"]);
        consumers.release();
        assert!(r.waiting_on().is_empty());
        broker.hold();
        assert_eq!(r.waiting_on(), ["broker"]);
    }
}
