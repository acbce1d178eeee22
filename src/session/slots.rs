//! Connection counts against a limit that a reload can change while connections hold slots:
//! one for authenticated sessions (`max_clients`), one for connections still in startup
//! (`max_startup_connections`).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

pub struct Slots {
    used: AtomicUsize,
    limit: AtomicUsize,
}

/// One slot, given back when dropped.
pub struct Slot(Arc<Slots>);

impl Slots {
    pub fn new(limit: usize) -> Arc<Slots> {
        Arc::new(Slots { used: AtomicUsize::new(0), limit: AtomicUsize::new(limit) })
    }

    /// A slot, or `None` at the limit.
    pub fn try_take(self: &Arc<Self>) -> Option<Slot> {
        let limit = self.limit.load(Ordering::Relaxed);
        self.used.fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| (used < limit).then_some(used + 1)).ok().map(|_| Slot(self.clone()))
    }

    pub fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    pub fn limit(&self) -> usize {
        self.limit.load(Ordering::Relaxed)
    }

    /// A lower limit refuses newcomers until enough holders leave; nobody is closed.
    pub fn set_limit(&self, limit: usize) {
        self.limit.store(limit, Ordering::Relaxed);
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.used.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_count_up_to_the_limit_and_follow_a_new_one() {
        let slots = Slots::new(2);
        let a = slots.try_take();
        let b = slots.try_take();
        assert!(a.is_some() && b.is_some() && slots.try_take().is_none());
        assert_eq!(slots.used(), 2);
        drop(a);
        assert_eq!(slots.used(), 1);
        slots.set_limit(1);
        assert!(slots.try_take().is_none());
        slots.set_limit(3);
        let c = slots.try_take();
        assert!(c.is_some());
        assert_eq!((slots.used(), slots.limit()), (2, 3));
        drop((b, c));
        assert_eq!(slots.used(), 0);
    }
}
