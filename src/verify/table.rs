//! One table: chunk by primary key on old, compare each chunk with the same key range on new;
//! a chunk that differs is compared again after new caught up until it agrees, stays
//! different while old is quiet (then its rows are named), or runs out of attempts.

use std::collections::HashMap;
use std::time::Duration;

use super::cut::{Read, Reading, Sides};
use super::throttle::Throttle;
use crate::control::verify::{self, Digest, Key, Range, TableSpec};
use crate::control::ControlError;
use crate::metrics::Metrics;

/// How a range compared.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    Equal,
    /// Different while old was quiet: how many rows differ, and the first few named.
    Differs(usize, Vec<String>),
    Changing,
}

/// A table's comparison.
#[derive(Debug, Default)]
pub struct Compared {
    pub rows: i64,
    pub chunks: i64,
    /// Chunks equal only when compared again after new caught up.
    pub rechecked: i64,
    pub differing_rows: usize,
    pub differing_chunks: i64,
    pub named: Vec<String>,
    pub changing: Vec<Range>,
}

/// Names at most this many differing rows per table.
const NAMED_ROWS: usize = 10;

pub struct Limits {
    pub chunk_rows: i64,
    pub attempts: u32,
}

pub struct Table<'a> {
    pub sides: &'a Sides,
    pub spec: &'a TableSpec,
    pub limits: &'a Limits,
    pub metrics: &'a Metrics,
}

impl Table<'_> {
    /// Compares the whole table; `progress(rows, chunks)` after each chunk; stops early (with
    /// what it has) when `stop()` says so.
    pub async fn compare(&self, throttle: &mut Throttle, progress: &(dyn Fn(i64, i64) + Sync), stop: &(dyn Fn() -> bool + Sync)) -> Result<Compared, ControlError> {
        let mut compared = Compared::default();
        if self.spec.key.is_empty() {
            let whole = Range::default();
            let (old, new) = tokio::try_join!(verify::digest(&self.sides.old, self.spec, &whole), verify::digest(&self.sides.new, self.spec, &whole))?;
            self.count(&old, &new);
            throttle.took(old.rows.max(new.rows) as u64).await;
            compared.rows = old.rows;
            compared.chunks = 1;
            let outcome = if old.same_rows(&new) { Outcome::Equal } else { self.settle(&whole).await? };
            self.record(&mut compared, outcome, whole, !old.same_rows(&new));
            progress(compared.rows, compared.chunks);
            return Ok(compared);
        }
        let mut after: Option<Key> = None;
        loop {
            let (old, last) = verify::next_chunk(&self.sides.old, self.spec, after.as_ref(), self.limits.chunk_rows).await?;
            let final_chunk = old.rows < self.limits.chunk_rows || last.is_none();
            let range = Range { after: after.clone(), upto: if final_chunk { None } else { last.clone() } };
            let new = verify::digest(&self.sides.new, self.spec, &range).await?;
            self.count(&old, &new);
            let first_equal = old.same_rows(&new);
            let outcome = if first_equal { Outcome::Equal } else { self.settle(&range).await? };
            self.record(&mut compared, outcome, range, !first_equal);
            compared.rows += old.rows;
            compared.chunks += 1;
            progress(compared.rows, compared.chunks);
            if final_chunk || stop() {
                return Ok(compared);
            }
            after = last;
            throttle.took(old.rows.max(new.rows) as u64).await;
        }
    }

    fn count(&self, old: &Digest, new: &Digest) {
        for (side, d) in [("old", old), ("new", new)] {
            self.metrics.verify_rows.with_label_values(&[side]).inc_by(d.rows.max(0) as u64);
            self.metrics.verify_bytes.with_label_values(&[side]).inc_by(d.bytes.max(0) as u64);
        }
    }

    fn record(&self, compared: &mut Compared, outcome: Outcome, range: Range, rechecked: bool) {
        let label = match (&outcome, rechecked) {
            (Outcome::Equal, false) => "equal",
            (Outcome::Equal, true) => "equal_after_recheck",
            (Outcome::Differs(..), _) => "differ",
            (Outcome::Changing, _) => "changing",
        };
        self.metrics.verify_chunks.with_label_values(&[label]).inc();
        match outcome {
            Outcome::Equal if rechecked => compared.rechecked += 1,
            Outcome::Equal => {}
            Outcome::Differs(n, named) => {
                compared.differing_rows += n;
                compared.differing_chunks += 1;
                let room = NAMED_ROWS.saturating_sub(compared.named.len());
                compared.named.extend(named.into_iter().take(room));
            }
            Outcome::Changing => compared.changing.push(range),
        }
    }

    /// A range that differed: compare again after new caught up, up to `attempts` times.
    pub async fn settle(&self, range: &Range) -> Result<Outcome, ControlError> {
        for attempt in 0..self.limits.attempts {
            if attempt > 0 {
                tokio::time::sleep(Duration::from_millis(25u64 << attempt.min(6))).await;
            }
            let (old, new) = match self.sides.cut(Read::Digest(self.spec, range)).await? {
                (Reading::Digest(o), Reading::Digest(n)) => (o, n),
                _ => return Err(ControlError::Query("internal error: digest expected".into())),
            };
            if old.same_rows(&new) {
                return Ok(Outcome::Equal);
            }
            // Old unchanged since its snapshot: new, read in between, should have matched it.
            let again = verify::digest(&self.sides.old, self.spec, range).await?;
            if !again.same_rows(&old) {
                continue;
            }
            if let (Reading::Rows(o), Reading::Rows(n)) = self.sides.cut(Read::Rows(self.spec, range)).await? {
                let (count, named) = differences(self.spec, &o, &n);
                if count > 0 {
                    return Ok(Outcome::Differs(count, named));
                }
            }
        }
        Ok(Outcome::Changing)
    }
}

/// Rows that differ between old's and new's (key, hash) lists: how many, and the first few
/// named (`id=42 missing on new`). Without a key, rows are counted as a multiset.
pub fn differences(spec: &TableSpec, old: &[(Key, String)], new: &[(Key, String)]) -> (usize, Vec<String>) {
    let mut named = Vec::new();
    if spec.key.is_empty() {
        let mut counts: HashMap<&str, i64> = HashMap::new();
        for (_, h) in old {
            *counts.entry(h).or_default() += 1;
        }
        for (_, h) in new {
            *counts.entry(h).or_default() -= 1;
        }
        let missing: i64 = counts.values().filter(|c| **c > 0).sum();
        let extra: i64 = -counts.values().filter(|c| **c < 0).sum::<i64>();
        if missing > 0 {
            named.push(format!("{missing} rows of old missing on new"));
        }
        if extra > 0 {
            named.push(format!("{extra} rows on new only"));
        }
        return ((missing + extra) as usize, named);
    }
    let on_new: HashMap<&Key, &str> = new.iter().map(|(k, h)| (k, h.as_str())).collect();
    let on_old: HashMap<&Key, &str> = old.iter().map(|(k, h)| (k, h.as_str())).collect();
    let mut count = 0;
    for (key, hash) in old {
        let what = match on_new.get(key) {
            None => "missing on new",
            Some(h) if h != hash => "differs on new",
            Some(_) => continue,
        };
        count += 1;
        if named.len() < NAMED_ROWS {
            named.push(format!("{} {what}", spec.describe_key(key)));
        }
    }
    for (key, _) in new.iter().filter(|(k, _)| !on_old.contains_key(k)) {
        count += 1;
        if named.len() < NAMED_ROWS {
            named.push(format!("{} only on new", spec.describe_key(key)));
        }
    }
    (count, named)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::verify::KeyColumn;

    fn spec(keyed: bool) -> TableSpec {
        let key = if keyed { vec![KeyColumn { name: "id".into(), type_name: "integer".into() }] } else { Vec::new() };
        TableSpec { name: "public.t".into(), key, columns: vec!["id".into(), "v".into()], estimated_rows: 3 }
    }

    fn rows(items: &[(&str, &str)]) -> Vec<(Key, String)> {
        items.iter().map(|(k, h)| (vec![k.to_string()], h.to_string())).collect()
    }

    #[test]
    fn keyed_differences_name_the_keys() {
        let old = rows(&[("1", "a"), ("2", "b"), ("3", "c")]);
        let new = rows(&[("1", "a"), ("3", "x"), ("4", "d")]);
        let (count, named) = differences(&spec(true), &old, &new);
        assert_eq!(count, 3);
        assert_eq!(named, vec!["id=2 missing on new", "id=3 differs on new", "id=4 only on new"]);
    }

    #[test]
    fn unkeyed_differences_count_rows_as_a_multiset() {
        let old = rows(&[("", "a"), ("", "a"), ("", "b")]);
        let new = rows(&[("", "a"), ("", "b"), ("", "c")]);
        let (count, named) = differences(&spec(false), &old, &new);
        assert_eq!(count, 2);
        assert_eq!(named, vec!["1 rows of old missing on new", "1 rows on new only"]);
    }
}
