//! Phase timings and figures of one cutover, returned as its result and kept for SHOW CUTOVER.

use std::time::{Duration, Instant};

use super::ReportRow;
use crate::proxy::Shared;

pub struct Timeline {
    started: Instant,
    phase_started: Instant,
    phase: &'static str,
    pub rows: Vec<ReportRow>,
}

impl Timeline {
    pub fn new() -> Self {
        let now = Instant::now();
        Self { started: now, phase_started: now, phase: "preflight", rows: Vec::new() }
    }

    pub fn phase(&self) -> &'static str {
        self.phase
    }

    /// Closes the current phase (recording its duration) and starts `next`.
    pub fn next(&mut self, shared: &Shared, next: &'static str, detail: impl Into<String>) {
        let took = self.phase_started.elapsed();
        shared.metrics.cutover_phase_seconds.with_label_values(&[self.phase]).observe(took.as_secs_f64());
        tracing::info!(phase = self.phase, ms = ms(took), "cutover phase done");
        self.rows.push(ReportRow { item: format!("phase {}", self.phase), value: format!("{} ms", ms(took)), detail: detail.into() });
        self.phase = next;
        self.phase_started = Instant::now();
        if let Ok(mut p) = shared.cutover.phase.lock() {
            *p = next.to_string();
        }
    }

    pub fn fact(&mut self, item: &str, value: impl ToString, detail: impl Into<String>) {
        self.rows.push(ReportRow { item: item.to_string(), value: value.to_string(), detail: detail.into() });
    }

    pub fn total(&self) -> Duration {
        self.started.elapsed()
    }
}

impl Default for Timeline {
    fn default() -> Self {
        Self::new()
    }
}

pub fn ms(d: Duration) -> String {
    format!("{:.1}", d.as_secs_f64() * 1000.0)
}
