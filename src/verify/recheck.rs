//! CUTOVER recheck_changing: inside the hold, after the catch-up proof, the chunks the last
//! VERIFY left "still changing" are compared once more. Every session through the proxy is
//! held and new has applied every commit old acknowledged, so the two must agree now; a chunk
//! that differs aborts the cutover before the commit point.

use super::table::differences;
use crate::control::verify::{self as sql};
use crate::control::ControlError;
use crate::cutover::preflight::DatabaseLink;
use crate::proxy::Shared;

/// What the recheck found, for the cutover report.
pub enum Rechecked {
    Nothing,
    /// (chunks compared, all equal).
    Equal(usize),
    /// More chunks than `verify.hold_recheck_max_chunks`: not compared.
    TooMany(usize),
}

/// Gives the control connections VERIFY's text settings, before the hold.
pub async fn prepare(links: &[DatabaseLink]) -> Result<(), ControlError> {
    for link in links {
        tokio::try_join!(link.old.batch_execute(sql::COMPARE_SETTINGS), link.new.batch_execute(sql::COMPARE_SETTINGS))?;
    }
    Ok(())
}

/// Compares the changing chunks; `Err` names the rows that differ (the cutover aborts).
pub async fn in_hold(shared: &Shared, links: &[DatabaseLink]) -> Result<Rechecked, String> {
    let chunks = shared.verify.changing.lock().map(|c| c.clone()).unwrap_or_default();
    if chunks.is_empty() {
        return Ok(Rechecked::Nothing);
    }
    if chunks.len() > shared.live().verify.hold_recheck_max_chunks {
        return Ok(Rechecked::TooMany(chunks.len()));
    }
    for chunk in &chunks {
        let Some(link) = links.iter().find(|l| l.name == chunk.database) else { continue };
        let compared = tokio::try_join!(sql::digest(&link.old, &chunk.spec, &chunk.range), sql::digest(&link.new, &chunk.spec, &chunk.range));
        let (old, new) = compared.map_err(|e| format!("{}: {}: {e}", chunk.database, chunk.spec.name))?;
        if old.same_rows(&new) {
            continue;
        }
        let rows = tokio::try_join!(sql::row_hashes(&link.old, &chunk.spec, &chunk.range), sql::row_hashes(&link.new, &chunk.spec, &chunk.range));
        let (old_rows, new_rows) = rows.map_err(|e| format!("{}: {}: {e}", chunk.database, chunk.spec.name))?;
        let (count, named) = differences(&chunk.spec, &old_rows, &new_rows);
        return Err(format!(
            "{}: {}: {count} rows differ between old and new inside the hold ({}): new does not hold old's rows",
            chunk.database,
            chunk.spec.name,
            named.join(", ")
        ));
    }
    Ok(Rechecked::Equal(chunks.len()))
}
