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
            // The chunk's bounds come from old; then both servers read it at once, so new lags
            // old only by the apply delay and most chunks match at the first comparison.
            let upto = verify::chunk_end(&self.sides.old, self.spec, after.as_ref(), self.limits.chunk_rows).await?;
            let range = Range { after: after.clone(), upto: upto.clone() };
            let (old, new) = tokio::try_join!(verify::digest(&self.sides.old, self.spec, &range), verify::digest(&self.sides.new, self.spec, &range))?;
            self.count(&old, &new);
            let first_equal = old.same_rows(&new);
            let outcome = if first_equal { Outcome::Equal } else { self.settle(&range).await? };
            self.record(&mut compared, outcome, range, !first_equal);
            compared.rows += old.rows;
            compared.chunks += 1;
            progress(compared.rows, compared.chunks);
            if upto.is_none() || stop() {
                return Ok(compared);
            }
            after = upto;
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
    ///
    /// Each attempt reads old at a snapshot S, new once it has applied everything S saw (the
    /// cut), then old again (S2). New may have applied a little more than S: a row of new that
    /// equals old's row at S or at S2 is a state old had, so it is consistent. A row that
    /// differs from both while old's row stayed the same from S to S2 is a real difference;
    /// one whose old row changed in between is still changing and compared again.
    pub async fn settle(&self, range: &Range) -> Result<Outcome, ControlError> {
        let row_level = !self.spec.key.is_empty() || self.spec.estimated_rows <= WHOLE_TABLE_ROW_LIMIT;
        for attempt in 0..self.limits.attempts {
            if attempt > 0 {
                tokio::time::sleep(Duration::from_millis((10u64 << attempt.min(10)).min(500))).await;
            }
            let (old, new) = match self.sides.cut(Read::Digest(self.spec, range)).await? {
                (Reading::Digest(o), Reading::Digest(n)) => (o, n),
                _ => return Err(ControlError::Query("internal error: digest expected".into())),
            };
            if old.same_rows(&new) {
                return Ok(Outcome::Equal);
            }
            if !row_level {
                // Too big to list: only a quiet old can tell a difference from a change.
                let again = verify::digest(&self.sides.old, self.spec, range).await?;
                if again.same_rows(&new) {
                    return Ok(Outcome::Equal);
                }
                if again.same_rows(&old) {
                    return Ok(Outcome::Differs((old.rows - new.rows).unsigned_abs() as usize, vec![format!("old has {} rows, new {}", old.rows, new.rows)]));
                }
                continue;
            }
            let (at_s, on_new) = match self.sides.cut(Read::Rows(self.spec, range)).await? {
                (Reading::Rows(o), Reading::Rows(n)) => (o, n),
                _ => return Err(ControlError::Query("internal error: rows expected".into())),
            };
            let at_s2 = verify::row_hashes(&self.sides.old, self.spec, range).await?;
            match classify(self.spec, &at_s, &on_new, &at_s2) {
                Verdict::Consistent => return Ok(Outcome::Equal),
                Verdict::Differs(count, named) => return Ok(Outcome::Differs(count, named)),
                Verdict::Changing => continue,
            }
        }
        Ok(Outcome::Changing)
    }
}

/// A table without a key larger than this is not listed row by row when it differs.
const WHOLE_TABLE_ROW_LIMIT: i64 = 2_000_000;

/// What old at S, new in between, and old at S2 say about a range.
#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    Consistent,
    Differs(usize, Vec<String>),
    Changing,
}

fn classify(spec: &TableSpec, at_s: &[(Key, String)], on_new: &[(Key, String)], at_s2: &[(Key, String)]) -> Verdict {
    if spec.key.is_empty() {
        let (s, n, s2) = (multiset(at_s), multiset(on_new), multiset(at_s2));
        // Equal to either, or (rows only added: the usual table without a key) between them.
        if n == s || n == s2 || (contains(&n, &s) && contains(&s2, &n)) {
            return Verdict::Consistent;
        }
        if s == s2 {
            let (count, named) = differences(spec, at_s, on_new);
            return Verdict::Differs(count, named);
        }
        return Verdict::Changing;
    }
    let index = |rows: &[(Key, String)]| -> HashMap<Key, String> { rows.iter().cloned().collect() };
    let (s, n, s2) = (index(at_s), index(on_new), index(at_s2));
    let mut keys: Vec<&Key> = at_s.iter().map(|(k, _)| k).collect();
    keys.extend(on_new.iter().map(|(k, _)| k).filter(|k| !s.contains_key(*k)));
    let mut count = 0;
    let mut named = Vec::new();
    let mut changing = false;
    for key in keys {
        let (old_s, new_row, old_s2) = (s.get(key), n.get(key), s2.get(key));
        if new_row == old_s || new_row == old_s2 {
            continue;
        }
        if old_s != old_s2 {
            changing = true;
            continue;
        }
        let what = match (old_s, new_row) {
            (Some(_), None) => "missing on new",
            (None, Some(_)) => "only on new",
            _ => "differs on new",
        };
        count += 1;
        if named.len() < NAMED_ROWS {
            named.push(format!("{} {what}", spec.describe_key(key)));
        }
    }
    match (count, changing) {
        (0, false) => Verdict::Consistent,
        (0, true) => Verdict::Changing,
        _ => Verdict::Differs(count, named),
    }
}

fn multiset(rows: &[(Key, String)]) -> HashMap<&str, i64> {
    let mut counts: HashMap<&str, i64> = HashMap::new();
    for (_, h) in rows {
        *counts.entry(h.as_str()).or_default() += 1;
    }
    counts
}

/// Whether multiset `big` holds every row of `small`.
fn contains(big: &HashMap<&str, i64>, small: &HashMap<&str, i64>) -> bool {
    small.iter().all(|(h, n)| big.get(h).copied().unwrap_or(0) >= *n)
}

/// Rows that differ between old's and new's (key, hash) lists: how many, and the first few
/// named (`id=42 missing on new`). Without a key, rows are counted as a multiset.
pub fn differences(spec: &TableSpec, old: &[(Key, String)], new: &[(Key, String)]) -> (usize, Vec<String>) {
    let mut named = Vec::new();
    if spec.key.is_empty() {
        let (o, n) = (multiset(old), multiset(new));
        let missing: i64 = o.iter().map(|(h, c)| (c - n.get(h).copied().unwrap_or(0)).max(0)).sum();
        let extra: i64 = n.iter().map(|(h, c)| (c - o.get(h).copied().unwrap_or(0)).max(0)).sum();
        if missing > 0 {
            named.push(format!("{missing} rows of old missing on new"));
        }
        if extra > 0 {
            named.push(format!("{extra} rows on new only"));
        }
        return ((missing + extra) as usize, named);
    }
    // Old and new alike at both points: every difference is real.
    match classify(spec, old, new, old) {
        Verdict::Differs(count, named) => (count, named),
        _ => (0, named),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::verify::KeyColumn;

    fn spec(keyed: bool) -> TableSpec {
        let key = if keyed { vec![KeyColumn { name: "id".into(), type_name: "integer".into() }] } else { Vec::new() };
        TableSpec { name: "public.t".into(), key, columns: vec!["id".into(), "v".into()], estimated_rows: 3, hash: crate::control::verify::RowHash::Builtin }
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
    fn rows_new_took_from_a_later_state_of_old_are_consistent() {
        let s = rows(&[("1", "a"), ("2", "b"), ("3", "c")]);
        let s2 = rows(&[("1", "a2"), ("2", "b"), ("3", "c2")]);
        // Row 1 at its later version, row 3 at its earlier one: consistent.
        assert_eq!(classify(&spec(true), &s, &rows(&[("1", "a2"), ("2", "b"), ("3", "c")]), &s2), Verdict::Consistent);
        // Row 1 changed twice on old, new holds neither version: still changing.
        assert_eq!(classify(&spec(true), &s, &rows(&[("1", "a1"), ("2", "b"), ("3", "c")]), &s2), Verdict::Changing);
        // Row 2 stable on old but different on new: a real difference, even while 1 changes.
        let v = classify(&spec(true), &s, &rows(&[("1", "a1"), ("2", "x"), ("3", "c")]), &s2);
        assert_eq!(v, Verdict::Differs(1, vec!["id=2 differs on new".into()]));
        // Without a key: new between old's two states (rows only added) is consistent.
        let grow = |items: &[&str]| items.iter().map(|h| (Vec::new(), h.to_string())).collect::<Vec<_>>();
        assert_eq!(classify(&spec(false), &grow(&["a", "b"]), &grow(&["a", "b", "c"]), &grow(&["a", "b", "c", "d"])), Verdict::Consistent);
        assert_eq!(classify(&spec(false), &grow(&["a", "b"]), &grow(&["a"]), &grow(&["a", "b"])), Verdict::Differs(1, vec!["1 rows of old missing on new".into()]));
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
