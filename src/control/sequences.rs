//! Sequence values are not replicated: read each one's exact state on old, set it on new.

use tokio_postgres::Client;

use super::ControlError;

#[derive(Clone, Debug)]
pub struct SequenceState {
    /// Schema-qualified, quoted name.
    pub name: String,
    pub last_value: i64,
    pub is_called: bool,
}

/// Every sequence in user schemas (owned, unowned, identity).
pub async fn list(client: &Client) -> Result<Vec<String>, ControlError> {
    let rows = client
        .query(
            "SELECT format('%I.%I', n.nspname, c.relname) FROM pg_catalog.pg_class c \
             JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
             WHERE c.relkind = 'S' AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname !~ '^pg_' ORDER BY 1",
            &[],
        )
        .await?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// Reads `last_value, is_called` of every sequence in one round trip.
pub async fn read(old: &Client, names: &[String]) -> Result<Vec<SequenceState>, ControlError> {
    if names.is_empty() {
        return Ok(Vec::new());
    }
    let sql = names
        .iter()
        .map(|n| format!("SELECT {}::text, last_value, is_called FROM {n}", super::sentinel::literal(n)))
        .collect::<Vec<_>>()
        .join(" UNION ALL ");
    let rows = old.query(&sql, &[]).await?;
    Ok(rows.iter().map(|r| SequenceState { name: r.get(0), last_value: r.get(1), is_called: r.get(2) }).collect())
}

/// Sets every sequence on new in one statement; `margin` is added to sequences already used.
pub async fn write(new: &Client, states: &[SequenceState], margin: i64) -> Result<(), ControlError> {
    if states.is_empty() {
        return Ok(());
    }
    let values = states
        .iter()
        .map(|s| {
            let (value, called) = if s.is_called { (s.last_value.saturating_add(margin), true) } else { (s.last_value, false) };
            format!("({}, {value}::int8, {called})", super::sentinel::literal(&s.name))
        })
        .collect::<Vec<_>>()
        .join(", ");
    let sql = format!("SELECT pg_catalog.setval(v.s::regclass, v.val, v.called) FROM (VALUES {values}) AS v(s, val, called)");
    new.batch_execute(&sql).await?;
    Ok(())
}
