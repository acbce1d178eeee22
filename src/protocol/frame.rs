//! Framing: `tag(1) | length(4, includes itself) | body`. The reader owns its buffer so that
//! `read_batch` is cancel-safe: bytes already read stay buffered if the future is dropped.

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt};

/// Tagged frame header size: one tag byte plus the four length bytes.
pub const HEADER_LEN: usize = 5;

#[derive(Debug, thiserror::Error)]
pub enum ProtocolError {
    #[error("message length {0} exceeds the limit of {1} bytes")]
    TooLong(usize, usize),
    #[error("invalid message length {0}")]
    BadLength(u32),
    #[error("malformed {0}")]
    Malformed(&'static str),
    #[error("connection closed in the middle of a message")]
    TruncatedAtEof,
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
}

pub struct FrameReader<R> {
    io: R,
    buf: BytesMut,
    max_len: usize,
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    pub fn new(io: R, max_len: usize) -> Self {
        Self::with_buffer(io, BytesMut::with_capacity(8 * 1024), max_len)
    }

    /// Continue reading from `io` with bytes that were already read from it (e.g. before TLS
    /// was ruled out).
    pub fn with_buffer(io: R, buf: BytesMut, max_len: usize) -> Self {
        Self { io, buf, max_len }
    }

    pub fn get_mut(&mut self) -> &mut R {
        &mut self.io
    }

    /// Bytes received but not yet returned.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// Gives back the stream and whatever is still buffered.
    pub fn into_parts(self) -> (R, BytesMut) {
        (self.io, self.buf)
    }

    /// Returns one or more whole tagged frames, back to back, as they arrived (so they can be
    /// forwarded with one write). `Ok(None)` on a clean end of stream.
    pub async fn read_batch(&mut self) -> Result<Option<Bytes>, ProtocolError> {
        loop {
            let ready = complete_prefix(&mut self.buf, self.max_len)?;
            if ready > 0 {
                return Ok(Some(self.buf.split_to(ready).freeze()));
            }
            if self.io.read_buf(&mut self.buf).await? == 0 {
                return if self.buf.is_empty() { Ok(None) } else { Err(ProtocolError::TruncatedAtEof) };
            }
        }
    }

    /// Returns exactly one tagged frame.
    pub async fn read_frame(&mut self) -> Result<Option<(u8, Bytes)>, ProtocolError> {
        loop {
            if let Some(total) = frame_len(&self.buf, self.max_len)? {
                if self.buf.len() >= total {
                    let mut frame = self.buf.split_to(total);
                    let tag = frame[0];
                    frame.advance(HEADER_LEN);
                    return Ok(Some((tag, frame.freeze())));
                }
                self.buf.reserve(total - self.buf.len());
            }
            if self.io.read_buf(&mut self.buf).await? == 0 {
                return if self.buf.is_empty() { Ok(None) } else { Err(ProtocolError::TruncatedAtEof) };
            }
        }
    }

    /// Reads one untagged startup-phase packet (`length(4) | payload`) and returns the payload.
    pub async fn read_startup(&mut self) -> Result<Option<Bytes>, ProtocolError> {
        loop {
            if self.buf.len() >= 4 {
                let len = u32::from_be_bytes([self.buf[0], self.buf[1], self.buf[2], self.buf[3]]);
                // A startup packet is small: parameters only. Postgres caps it at 10000 bytes.
                if !(8..=10_000).contains(&len) {
                    return Err(ProtocolError::BadLength(len));
                }
                let len = len as usize;
                if self.buf.len() >= len {
                    let mut packet = self.buf.split_to(len);
                    packet.advance(4);
                    return Ok(Some(packet.freeze()));
                }
            }
            if self.io.read_buf(&mut self.buf).await? == 0 {
                return if self.buf.is_empty() { Ok(None) } else { Err(ProtocolError::TruncatedAtEof) };
            }
        }
    }
}

/// Total size of the first frame in `buf`, if its header is complete.
fn frame_len(buf: &[u8], max_len: usize) -> Result<Option<usize>, ProtocolError> {
    if buf.len() < HEADER_LEN {
        return Ok(None);
    }
    let len = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]);
    if len < 4 {
        return Err(ProtocolError::BadLength(len));
    }
    let len = len as usize;
    if len > max_len {
        return Err(ProtocolError::TooLong(len, max_len));
    }
    Ok(Some(len + 1))
}

/// Length of the longest run of complete frames at the start of `buf`; reserves room for an
/// incomplete first frame so large messages are read without repeated reallocation.
fn complete_prefix(buf: &mut BytesMut, max_len: usize) -> Result<usize, ProtocolError> {
    let mut pos = 0;
    loop {
        match frame_len(&buf[pos..], max_len)? {
            Some(total) if buf.len() - pos >= total => pos += total,
            Some(total) => {
                if pos == 0 {
                    buf.reserve(total - buf.len());
                }
                return Ok(pos);
            }
            None => return Ok(pos),
        }
    }
}

/// Iterates over the `(tag, body)` frames of a batch returned by [`FrameReader::read_batch`].
pub struct FrameIter<'a> {
    rest: &'a [u8],
}

impl<'a> FrameIter<'a> {
    pub fn new(batch: &'a [u8]) -> Self {
        Self { rest: batch }
    }
}

impl<'a> Iterator for FrameIter<'a> {
    type Item = (u8, &'a [u8]);

    fn next(&mut self) -> Option<Self::Item> {
        if self.rest.len() < HEADER_LEN {
            return None;
        }
        let len = u32::from_be_bytes([self.rest[1], self.rest[2], self.rest[3], self.rest[4]]) as usize;
        let total = (len + 1).min(self.rest.len());
        let tag = self.rest[0];
        let body = &self.rest[HEADER_LEN..total.max(HEADER_LEN)];
        self.rest = &self.rest[total..];
        Some((tag, body))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(tag: u8, body: &[u8]) -> Vec<u8> {
        let mut v = vec![tag];
        v.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
        v.extend_from_slice(body);
        v
    }

    #[tokio::test]
    async fn batches_whole_frames_and_keeps_partial_ones() {
        let mut data = frame(b'Q', b"select 1\0");
        data.extend(frame(b'S', b""));
        let partial = frame(b'X', b"abc");
        data.extend_from_slice(&partial[..3]);
        let mut reader = FrameReader::new(&data[..], 1 << 20);
        let batch = reader.read_batch().await.unwrap().unwrap();
        let tags: Vec<u8> = FrameIter::new(&batch).map(|(t, _)| t).collect();
        assert_eq!(tags, vec![b'Q', b'S']);
        assert!(matches!(reader.read_batch().await, Err(ProtocolError::TruncatedAtEof)));
    }

    #[tokio::test]
    async fn rejects_oversized_and_bad_lengths() {
        let data = frame(b'Q', &[b'a'; 100]);
        let mut reader = FrameReader::new(&data[..], 50);
        assert!(matches!(reader.read_batch().await, Err(ProtocolError::TooLong(104, 50))));
        let bad = [b'Q', 0, 0, 0, 2];
        let mut reader = FrameReader::new(&bad[..], 50);
        assert!(matches!(reader.read_frame().await, Err(ProtocolError::BadLength(2))));
    }

    #[tokio::test]
    async fn reads_single_frames() {
        let mut data = frame(b'Z', b"I");
        data.extend(frame(b'C', b"SELECT 1\0"));
        let mut reader = FrameReader::new(&data[..], 1 << 20);
        let (tag, body) = reader.read_frame().await.unwrap().unwrap();
        assert_eq!((tag, &body[..]), (b'Z', &b"I"[..]));
        let (tag, _) = reader.read_frame().await.unwrap().unwrap();
        assert_eq!(tag, b'C');
        assert!(reader.read_frame().await.unwrap().is_none());
    }
}
