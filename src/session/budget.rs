//! The process-wide budget for bytes buffered on behalf of sessions: reader buffers and the
//! queues they feed (`max_buffered_bytes`).
//!
//! Each direction of a session (a reader and the queue it feeds) holds its first [`FLOOR`]
//! bytes on its own, so small messages always get through, no session can be starved of all
//! progress by others, and the common case never touches shared state. Beyond that it draws on
//! the budget; when the budget is spent it stops reading from its peer until what it holds has
//! been written out (back-pressure, never an allocation past the budget).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use crate::protocol::frame::READ_CHUNK;

/// Bytes each direction of a session may hold without drawing on the shared budget.
pub const FLOOR: usize = 64 * 1024;

/// Smallest read worth making before asking the budget for more room.
const MIN_READ: usize = 8 * 1024;

pub struct Budget {
    limit: usize,
    used: AtomicUsize,
}

impl Budget {
    pub fn new(limit: usize) -> Arc<Self> {
        Arc::new(Self { limit, used: AtomicUsize::new(0) })
    }

    /// Bytes currently drawn from the budget.
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    /// Takes up to `want` bytes; returns how many it got.
    fn take(&self, want: usize) -> usize {
        let mut used = self.used.load(Ordering::Relaxed);
        loop {
            let got = want.min(self.limit.saturating_sub(used));
            if got == 0 {
                return 0;
            }
            match self.used.compare_exchange_weak(used, used + got, Ordering::AcqRel, Ordering::Relaxed) {
                Ok(_) => return got,
                Err(now) => used = now,
            }
        }
    }

    fn give_back(&self, n: usize) {
        self.used.fetch_sub(n, Ordering::AcqRel);
    }
}

/// What one direction of one session has drawn from the budget; given back when dropped.
pub struct Allowance {
    budget: Arc<Budget>,
    charged: usize,
}

impl Allowance {
    pub fn new(budget: Arc<Budget>) -> Self {
        Self { budget, charged: 0 }
    }

    /// How many bytes may be read now, with `held` bytes already held in this direction (the
    /// reader's buffer plus the queue it feeds). 0: stop reading until what is held drains.
    #[inline]
    pub fn grant(&mut self, held: usize) -> usize {
        // What a full read would need from the budget.
        let target = (held + READ_CHUNK).saturating_sub(FLOOR);
        if target < self.charged {
            self.budget.give_back(self.charged - target);
            self.charged = target;
        } else if target > self.charged && FLOOR + self.charged < held + MIN_READ {
            self.charged += self.budget.take(target - self.charged);
        }
        (FLOOR + self.charged).saturating_sub(held).min(READ_CHUNK)
    }
}

impl Drop for Allowance {
    fn drop(&mut self) {
        if self.charged > 0 {
            self.budget.give_back(self.charged);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_holdings_do_not_touch_the_budget() {
        let budget = Budget::new(0);
        let mut a = Allowance::new(budget.clone());
        assert_eq!(a.grant(0), READ_CHUNK.min(FLOOR));
        assert_eq!(a.grant(FLOOR - MIN_READ), MIN_READ);
        assert_eq!(budget.used(), 0);
        // Over the floor with nothing left in the budget: stop reading.
        assert_eq!(a.grant(FLOOR), 0);
        assert_eq!(a.grant(FLOOR + 1), 0);
    }

    #[test]
    fn larger_holdings_draw_on_the_budget_and_give_it_back() {
        let budget = Budget::new(100 * 1024);
        let mut a = Allowance::new(budget.clone());
        let mut b = Allowance::new(budget.clone());
        assert_eq!(a.grant(FLOOR), READ_CHUNK);
        assert_eq!(budget.used(), READ_CHUNK);
        // b gets what is left, then nothing.
        assert_eq!(b.grant(FLOOR), 100 * 1024 - READ_CHUNK);
        assert_eq!(b.grant(FLOOR + 100 * 1024 - READ_CHUNK), 0);
        assert_eq!(budget.used(), 100 * 1024);
        // a's queue drained: its share goes back, and b can read again.
        assert_eq!(a.grant(0), READ_CHUNK);
        assert_eq!(budget.used(), 100 * 1024 - READ_CHUNK);
        assert!(b.grant(FLOOR + 100 * 1024 - READ_CHUNK) > 0);
        drop(b);
        drop(a);
        assert_eq!(budget.used(), 0);
    }
}
