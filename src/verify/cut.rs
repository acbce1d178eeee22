//! Reading a range on old and on new at (nearly) the same point of old's history, without
//! stopping writes.
//!
//! Old: a REPEATABLE READ snapshot is taken, then a sentinel token is committed from a second
//! connection, then the range is read in that snapshot — so the token commits right after the
//! snapshot. New: polled in REPEATABLE READ snapshots until one shows the token, and the range
//! is read in that same snapshot — so new has applied everything old's snapshot saw (apply is
//! in commit order), plus only what old committed in the short gaps around the token.

use std::time::{Duration, Instant};

use tokio_postgres::{Client, SimpleQueryMessage};

use crate::control::verify::{self, Digest, Key, Range, TableSpec};
use crate::control::{sentinel, ControlError};

/// What to read of a range.
#[derive(Clone, Copy)]
pub enum Read<'a> {
    Digest(&'a TableSpec, &'a Range),
    Rows(&'a TableSpec, &'a Range),
}

pub enum Reading {
    Digest(Digest),
    Rows(Vec<(Key, String)>),
}

impl Read<'_> {
    pub async fn on(self, client: &Client) -> Result<Reading, ControlError> {
        match self {
            Read::Digest(spec, range) => Ok(Reading::Digest(verify::digest(client, spec, range).await?)),
            Read::Rows(spec, range) => Ok(Reading::Rows(verify::row_hashes(client, spec, range).await?)),
        }
    }
}

/// The connections one database is compared on.
pub struct Sides {
    /// Reads on old.
    pub old: Client,
    /// Writes the sentinel tokens on old (the reads hold a snapshot meanwhile).
    pub writer: Client,
    pub new: Client,
    /// How long new may take to apply a token.
    pub catchup_timeout: Duration,
}

impl Sides {
    /// Runs `read` on old and on new as described above.
    pub async fn cut(&self, read: Read<'_>) -> Result<(Reading, Reading), ControlError> {
        self.old.batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY; SELECT 1").await?;
        let on_old = async {
            let (token, _) = sentinel::write_row(&self.writer, sentinel::VERIFY_ROW).await?;
            let value = read.on(&self.old).await?;
            Ok::<_, ControlError>((token, value))
        }
        .await;
        let ended = self.old.batch_execute(if on_old.is_ok() { "COMMIT" } else { "ROLLBACK" }).await;
        let (token, old_value) = on_old?;
        ended?;
        let new_value = self.on_new_after(&token, read).await?;
        Ok((old_value, new_value))
    }

    /// `read` on new in the first snapshot of new that shows `token`.
    async fn on_new_after(&self, token: &str, read: Read<'_>) -> Result<Reading, ControlError> {
        let started = Instant::now();
        let query = format!("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY; SELECT token FROM {} WHERE id = {}", sentinel::TABLE, sentinel::VERIFY_ROW);
        let mut pause = Duration::from_micros(500);
        loop {
            let seen = self.new.simple_query(&query).await;
            let applied = match &seen {
                Ok(messages) => messages.iter().any(|m| matches!(m, SimpleQueryMessage::Row(r) if r.get(0) == Some(token))),
                Err(_) => false,
            };
            if applied {
                let value = read.on(&self.new).await;
                let ended = self.new.batch_execute(if value.is_ok() { "COMMIT" } else { "ROLLBACK" }).await;
                let value = value?;
                ended?;
                return Ok(value);
            }
            self.new.batch_execute("ROLLBACK").await?;
            seen?;
            if started.elapsed() >= self.catchup_timeout {
                return Err(ControlError::Query(format!("new did not apply a test commit within {:?}: is replication stalled? (CHECK)", self.catchup_timeout)));
            }
            // Poll fast at first: whatever new applies after the token and before the snapshot
            // that shows it widens the gap between the two reads.
            tokio::time::sleep(pause).await;
            if started.elapsed() > Duration::from_millis(500) {
                pause = (pause * 2).min(Duration::from_millis(20));
            }
        }
    }
}
