//! `rows_per_second`: VERIFY waits before a read so that the rows read so far never run ahead
//! of the allowed rate.

use std::time::{Duration, Instant};

pub struct Throttle {
    rows_per_second: u64,
    started: Instant,
    rows: u64,
}

impl Throttle {
    /// 0: no limit.
    pub fn new(rows_per_second: u64) -> Self {
        Self { rows_per_second, started: Instant::now(), rows: 0 }
    }

    /// Counts `rows` read, then waits until the rate allows the next read.
    pub async fn took(&mut self, rows: u64) {
        self.rows += rows;
        if let Some(wait) = self.wait(Instant::now()) {
            tokio::time::sleep(wait).await;
        }
    }

    fn wait(&self, now: Instant) -> Option<Duration> {
        if self.rows_per_second == 0 {
            return None;
        }
        let due = self.started + Duration::from_secs_f64(self.rows as f64 / self.rows_per_second as f64);
        due.checked_duration_since(now).filter(|d| !d.is_zero())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_for_the_rate() {
        let mut t = Throttle::new(1000);
        t.rows = 500;
        let wait = t.wait(t.started).expect("must wait");
        assert_eq!(wait, Duration::from_millis(500));
        assert_eq!(t.wait(t.started + Duration::from_secs(1)), None);
        assert_eq!(Throttle::new(0).wait(Instant::now()), None);
    }
}
