//! A queue of bytes waiting to be written to one peer. Writing is cancel-safe (`write` either
//! wrote bytes we then drop from the queue, or wrote nothing), so the session can wait on
//! reads and writes in one `select!` and never deadlock two peers that both send.

use std::collections::VecDeque;

use bytes::{Buf, Bytes};
use tokio::io::{AsyncWrite, AsyncWriteExt};

use crate::net::StreamWriter;

/// Stop reading from the peer that feeds a queue once this much is waiting to be written.
pub const HIGH_WATER: usize = 1 << 20;

/// Chunks gathered into one vectored write.
const MAX_SLICES: usize = 32;

#[derive(Default)]
pub struct Outbound {
    chunks: VecDeque<Bytes>,
    len: usize,
    unflushed: bool,
}

impl Outbound {
    pub fn push(&mut self, bytes: Bytes) {
        if !bytes.is_empty() {
            self.len += bytes.len();
            self.chunks.push_back(bytes);
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Something to write or flush.
    pub fn pending(&self) -> bool {
        self.len > 0 || self.unflushed
    }

    pub fn has_room(&self) -> bool {
        self.len < HIGH_WATER
    }

    /// One write (gathering several chunks), then a flush once the queue is empty.
    pub async fn write_some<W: AsyncWrite + Unpin>(&mut self, w: &mut W) -> std::io::Result<()> {
        if self.len > 0 {
            // Usually one chunk (a batch as it arrived): a plain write, no slice list to build.
            let n = if self.chunks.len() > 1 && w.is_write_vectored() {
                let (slices, count) = self.slices();
                w.write_vectored(&slices[..count]).await?
            } else {
                match self.chunks.front() {
                    Some(front) => w.write(front).await?,
                    None => 0,
                }
            };
            if n == 0 {
                return Err(std::io::ErrorKind::WriteZero.into());
            }
            self.unflushed = true;
            self.consume(n);
        }
        if self.len == 0 && self.unflushed {
            w.flush().await?;
            self.unflushed = false;
        }
        Ok(())
    }

    /// Writes what the socket takes right now, without waiting (plain TCP only; TLS goes through
    /// `write_some`). Saves the session a pass through its event loop per message batch.
    /// Errors are left for `write_some` to report.
    pub fn write_now(&mut self, w: &StreamWriter) {
        let StreamWriter::Plain(tcp) = w else { return };
        while self.len > 0 {
            let written = if self.chunks.len() > 1 {
                let (slices, count) = self.slices();
                tcp.try_write_vectored(&slices[..count])
            } else {
                match self.chunks.front() {
                    Some(front) => tcp.try_write(front),
                    None => return,
                }
            };
            match written {
                Ok(n) if n > 0 => self.consume(n),
                _ => return,
            }
        }
    }

    /// The first chunks as slices for one vectored write, and how many there are.
    fn slices(&self) -> ([std::io::IoSlice<'_>; MAX_SLICES], usize) {
        let mut slices = [std::io::IoSlice::new(&[]); MAX_SLICES];
        let mut count = 0;
        for (slot, chunk) in slices.iter_mut().zip(self.chunks.iter()) {
            *slot = std::io::IoSlice::new(chunk);
            count += 1;
        }
        (slices, count)
    }

    fn consume(&mut self, mut n: usize) {
        self.len -= n;
        while n > 0 {
            let Some(front) = self.chunks.front_mut() else { break };
            let take = n.min(front.len());
            front.advance(take);
            n -= take;
            if front.is_empty() {
                self.chunks.pop_front();
            }
        }
    }

    /// Drops what is queued (its peer is gone).
    pub fn clear(&mut self) {
        self.chunks.clear();
        self.len = 0;
        self.unflushed = false;
    }

    /// Writes everything (used when the session is about to stop or switch).
    pub async fn drain<W: AsyncWrite + Unpin>(&mut self, w: &mut W) -> std::io::Result<()> {
        while self.pending() {
            self.write_some(w).await?;
        }
        Ok(())
    }
}
