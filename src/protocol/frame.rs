//! Framing: `tag(1) | length(4, includes itself) | body`. The reader owns its buffer so that
//! its reads are cancel-safe: bytes already read stay buffered if the future is dropped.
//!
//! Memory follows the bytes that arrived, never a declared length: the buffer grows in bounded
//! steps, and a frame too large to hold whole (a big row, COPY data, a big Bind) is streamed:
//! its head is handed out as soon as its first bytes are in, the rest as it arrives.

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt};

/// Tagged frame header size: one tag byte plus the four length bytes.
pub const HEADER_LEN: usize = 5;

/// Most bytes read from the socket at once.
pub const READ_CHUNK: usize = 64 * 1024;

/// Frames up to this size (header included) are always handed out whole.
pub const WHOLE_FRAME: usize = 32 * 1024;

/// Body bytes of a larger frame gathered before it is streamed: enough for the fields the proxy
/// reads at the start of a message (a statement name, an error's SQLSTATE).
pub const STREAM_HEAD: usize = 1024;

/// Buffer capacity of an idle reader.
const INITIAL_CAPACITY: usize = 8 * 1024;

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

/// Bytes as they arrived, cut so that the proxy can inspect frames: first the rest of a frame
/// streamed in earlier batches (`continued` bytes), then whole frames, then possibly the head
/// of a frame that is streamed (`open`: its rest follows in later batches).
#[derive(Debug, Default)]
pub struct Batch {
    pub bytes: Bytes,
    pub continued: usize,
    pub open: bool,
}

impl Batch {
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    /// The frames that start in this batch: `(tag, body, whole)`; the body of the last one is
    /// only its head when `whole` is false.
    pub fn frames(&self) -> FrameIter<'_> {
        FrameIter::new(&self.bytes[self.continued..])
    }

    /// Whether the frame streamed before this batch ends in it (or none was streamed).
    pub fn ends_stream(&self) -> bool {
        !(self.open && self.continued == self.bytes.len())
    }
}

pub struct FrameReader<R> {
    io: R,
    buf: BytesMut,
    max_len: usize,
    /// Frames with this tag are gathered whole up to this size (the proxy keeps them).
    keep: Option<(u8, usize)>,
    /// Bytes of the streamed frame that have not arrived yet.
    streaming: usize,
    /// Stream the incomplete frame in the buffer now instead of waiting for all of it.
    give_up_whole: bool,
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    pub fn new(io: R, max_len: usize) -> Self {
        Self::with_buffer(io, BytesMut::with_capacity(INITIAL_CAPACITY), max_len)
    }

    /// Continue reading from `io` with bytes that were already read from it (e.g. before TLS
    /// was ruled out).
    pub fn with_buffer(io: R, buf: BytesMut, max_len: usize) -> Self {
        Self { io, buf, max_len, keep: None, streaming: 0, give_up_whole: false }
    }

    /// Gather frames with `tag` whole up to `up_to` bytes instead of streaming them beyond
    /// [`WHOLE_FRAME`].
    pub fn keep_whole(mut self, tag: u8, up_to: usize) -> Self {
        self.keep = Some((tag, up_to));
        self
    }

    pub fn get_mut(&mut self) -> &mut R {
        &mut self.io
    }

    /// Bytes received but not yet returned.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// A frame was handed out in part: the rest is still to come.
    pub fn in_frame(&self) -> bool {
        self.streaming > 0
    }

    /// Gives back the stream and whatever is still buffered.
    pub fn into_parts(self) -> (R, BytesMut) {
        (self.io, self.buf)
    }

    /// Returns the next [`Batch`], reading at most `limit` bytes (at least 1) from the stream;
    /// the batch is empty if that was not enough to hand anything out. `Ok(None)` on a clean
    /// end of stream.
    pub async fn read_batch(&mut self, limit: usize) -> Result<Option<Batch>, ProtocolError> {
        let mut left = limit.max(1);
        loop {
            // (An empty buffer has nothing to hand out: the common case at the first pass.)
            if !self.buf.is_empty() {
                if let Some(batch) = self.take_ready()? {
                    return Ok(Some(batch));
                }
            }
            if left == 0 {
                return Ok(Some(Batch::default()));
            }
            let spare = self.buf.capacity() - self.buf.len();
            let n = if self.buf.is_empty() && self.streaming == 0 && spare > 0 && spare <= left {
                // The common case: nothing in progress, and room for no more than allowed.
                self.io.read_buf(&mut self.buf).await?
            } else {
                let expected = if self.streaming > 0 { self.streaming } else { self.rest_of_frame()? };
                self.fill(left, expected).await?
            };
            if n == 0 {
                return if self.buf.is_empty() && self.streaming == 0 { Ok(None) } else { Err(ProtocolError::TruncatedAtEof) };
            }
            left -= n;
        }
    }

    /// Hands out the incomplete large frame in the buffer as a streamed head instead of waiting
    /// for all of it (when no memory is left to gather it whole). `None` if there is none.
    pub fn stream_partial(&mut self) -> Result<Option<Batch>, ProtocolError> {
        self.give_up_whole = true;
        let batch = self.take_ready();
        self.give_up_whole = false;
        batch
    }

    /// Returns exactly one tagged frame, whole.
    pub async fn read_frame(&mut self) -> Result<Option<(u8, Bytes)>, ProtocolError> {
        if self.streaming > 0 {
            return Err(ProtocolError::Malformed("message: read whole in the middle of a streamed one"));
        }
        loop {
            if let Some(total) = frame_len(&self.buf, self.max_len)? {
                if self.buf.len() >= total {
                    let mut frame = self.buf.split_to(total);
                    let tag = frame[0];
                    frame.advance(HEADER_LEN);
                    return Ok(Some((tag, frame.freeze())));
                }
            }
            let expected = self.rest_of_frame()?;
            if self.fill(READ_CHUNK, expected).await? == 0 {
                return if self.buf.is_empty() { Ok(None) } else { Err(ProtocolError::TruncatedAtEof) };
            }
        }
    }

    /// Reads one untagged startup-phase packet (`length(4) | payload`) and returns the payload.
    pub async fn read_startup(&mut self) -> Result<Option<Bytes>, ProtocolError> {
        loop {
            let mut expected = 0;
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
                expected = len - self.buf.len();
            }
            if self.fill(READ_CHUNK, expected).await? == 0 {
                return if self.buf.is_empty() { Ok(None) } else { Err(ProtocolError::TruncatedAtEof) };
            }
        }
    }

    /// Cuts off what can be handed out now: the rest of a streamed frame, whole frames, and the
    /// head of a frame to stream.
    fn take_ready(&mut self) -> Result<Option<Batch>, ProtocolError> {
        let mut continued = 0;
        if self.streaming > 0 {
            continued = self.streaming.min(self.buf.len());
            self.streaming -= continued;
            if self.streaming > 0 {
                return Ok((continued > 0).then(|| Batch { bytes: self.buf.split_to(continued).freeze(), continued, open: true }));
            }
        }
        let mut end = continued;
        let mut open = false;
        loop {
            let rest = &self.buf[end..];
            let Some(total) = frame_len(rest, self.max_len)? else { break };
            if rest.len() >= total {
                end += total;
                continue;
            }
            if self.should_stream(rest[0], total, rest.len()) {
                self.streaming = total - rest.len();
                end = self.buf.len();
                open = true;
            }
            break;
        }
        if end == 0 {
            return Ok(None);
        }
        Ok(Some(Batch { bytes: self.buf.split_to(end).freeze(), continued, open }))
    }

    /// Whether an incomplete frame of `total` bytes, `have` of them buffered, is to be streamed.
    fn should_stream(&self, tag: u8, total: usize, have: usize) -> bool {
        let whole_up_to = match self.keep {
            Some((kept, up_to)) if kept == tag && !self.give_up_whole => up_to.max(WHOLE_FRAME),
            _ => WHOLE_FRAME,
        };
        total > whole_up_to && have >= HEADER_LEN + STREAM_HEAD
    }

    /// Grows the buffer for a read (see [`fill`](Self::fill)); returns the room it has now.
    fn make_room(&mut self, limit: usize, expected: usize) -> usize {
        if self.buf.is_empty() && self.buf.capacity() > 2 * READ_CHUNK {
            // Grown for a large message: an idle session goes back to a small buffer.
            self.buf = BytesMut::with_capacity(INITIAL_CAPACITY);
        }
        let spare = self.buf.capacity() - self.buf.len();
        let step = expected.clamp(INITIAL_CAPACITY, READ_CHUNK).min(limit);
        if spare == 0 || (expected > spare && spare < step) {
            self.buf.reserve(step);
        }
        self.buf.capacity() - self.buf.len()
    }

    /// Bytes of the incomplete frame at the start of the buffer still to come (0 if its header
    /// is not complete).
    fn rest_of_frame(&self) -> Result<usize, ProtocolError> {
        Ok(frame_len(&self.buf, self.max_len)?.map_or(0, |total| total.saturating_sub(self.buf.len())))
    }

    /// One read of at most `limit` bytes. The buffer grows in steps of at most [`READ_CHUNK`],
    /// sized by the `expected` bytes of the frame in progress, never by a declared length alone.
    async fn fill(&mut self, limit: usize, expected: usize) -> Result<usize, ProtocolError> {
        let mut spare = self.buf.capacity() - self.buf.len();
        let grown = self.buf.is_empty() && spare > 2 * READ_CHUNK;
        if spare == 0 || grown || (expected > spare && spare < READ_CHUNK.min(limit)) {
            spare = self.make_room(limit, expected);
        }
        let n = if spare > limit {
            (&mut self.io).take(limit as u64).read_buf(&mut self.buf).await?
        } else {
            self.io.read_buf(&mut self.buf).await?
        };
        Ok(n)
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

/// Iterates over the frames of a run of whole frames, the last possibly only a head:
/// `(tag, body, whole)`.
pub struct FrameIter<'a> {
    rest: &'a [u8],
}

impl<'a> FrameIter<'a> {
    pub fn new(frames: &'a [u8]) -> Self {
        Self { rest: frames }
    }
}

impl<'a> Iterator for FrameIter<'a> {
    type Item = (u8, &'a [u8], bool);

    fn next(&mut self) -> Option<Self::Item> {
        if self.rest.len() < HEADER_LEN {
            return None;
        }
        let len = u32::from_be_bytes([self.rest[1], self.rest[2], self.rest[3], self.rest[4]]) as usize;
        let whole = len < self.rest.len();
        let total = (len + 1).min(self.rest.len());
        let tag = self.rest[0];
        let body = &self.rest[HEADER_LEN..total.max(HEADER_LEN)];
        self.rest = &self.rest[total..];
        Some((tag, body, whole))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    fn frame(tag: u8, body: &[u8]) -> Vec<u8> {
        let mut v = vec![tag];
        v.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
        v.extend_from_slice(body);
        v
    }

    fn header(tag: u8, len: u32) -> Vec<u8> {
        let mut v = vec![tag];
        v.extend_from_slice(&len.to_be_bytes());
        v
    }

    #[tokio::test]
    async fn batches_whole_frames_and_keeps_partial_ones() {
        let mut data = frame(b'Q', b"select 1\0");
        data.extend(frame(b'S', b""));
        let partial = frame(b'X', b"abc");
        data.extend_from_slice(&partial[..3]);
        let mut reader = FrameReader::new(&data[..], 1 << 20);
        let batch = reader.read_batch(READ_CHUNK).await.unwrap().unwrap();
        assert_eq!((batch.continued, batch.open), (0, false));
        let tags: Vec<(u8, bool)> = batch.frames().map(|(t, _, whole)| (t, whole)).collect();
        assert_eq!(tags, vec![(b'Q', true), (b'S', true)]);
        assert!(matches!(reader.read_batch(READ_CHUNK).await, Err(ProtocolError::TruncatedAtEof)));
    }

    #[tokio::test]
    async fn rejects_oversized_and_bad_lengths() {
        let data = frame(b'Q', &[b'a'; 100]);
        let mut reader = FrameReader::new(&data[..], 50);
        assert!(matches!(reader.read_batch(READ_CHUNK).await, Err(ProtocolError::TooLong(104, 50))));
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

    /// A header declaring 1 GiB followed by a few bytes costs a few bytes, not 1 GiB: whole-frame
    /// reads grow with what arrived, and batches stream such a frame.
    #[tokio::test]
    async fn a_huge_declared_length_reserves_nothing_up_front() {
        let (mut client, server) = tokio::io::duplex(1 << 20);
        let mut data = header(b'Q', 1 << 30);
        data.extend_from_slice(&[b'x'; 100]);
        client.write_all(&data).await.unwrap();
        let mut reader = FrameReader::new(server, (1 << 30) + 1024);
        let waited = tokio::time::timeout(std::time::Duration::from_millis(100), reader.read_frame()).await;
        assert!(waited.is_err(), "a frame handed out before it was complete");
        assert!(reader.buf.capacity() <= 2 * READ_CHUNK, "capacity {}", reader.buf.capacity());

        let (mut client, server) = tokio::io::duplex(1 << 20);
        let mut data = header(b'Q', 1 << 30);
        data.extend_from_slice(&[b'x'; 2000]);
        client.write_all(&data).await.unwrap();
        let mut reader = FrameReader::new(server, (1 << 30) + 1024);
        let batch = reader.read_batch(READ_CHUNK).await.unwrap().unwrap();
        assert_eq!((batch.bytes.len(), batch.continued, batch.open), (2005, 0, true));
        let (tag, body, whole) = batch.frames().next().unwrap();
        assert_eq!((tag, body.len(), whole), (b'Q', 2000, false));
        assert!(reader.in_frame());
        assert!(reader.buf.capacity() <= 2 * READ_CHUNK, "capacity {}", reader.buf.capacity());
    }

    /// A frame larger than WHOLE_FRAME passes through in pieces as they arrive; what follows it
    /// is framed as usual, and the concatenated batches are the input byte for byte.
    #[tokio::test]
    async fn large_frames_stream_through_in_bounded_pieces() {
        let row = frame(b'D', &vec![7u8; 3 << 20]);
        let mut input = frame(b'T', b"desc");
        input.extend_from_slice(&row);
        input.extend(frame(b'C', b"SELECT 1\0"));
        input.extend(frame(b'Z', b"I"));
        let (mut client, server) = tokio::io::duplex(256 * 1024);
        let sent = input.clone();
        let writer = tokio::spawn(async move {
            for piece in sent.chunks(100_000) {
                client.write_all(piece).await.unwrap();
            }
        });
        let mut reader = FrameReader::new(server, 1 << 30);
        let mut out = Vec::new();
        let mut tags = Vec::new();
        let mut max_batch = 0;
        while let Some(batch) = reader.read_batch(READ_CHUNK).await.unwrap() {
            max_batch = max_batch.max(batch.bytes.len());
            assert!(reader.buf.capacity() <= 4 * READ_CHUNK, "capacity {}", reader.buf.capacity());
            tags.extend(batch.frames().map(|(t, _, whole)| (t, whole)));
            out.extend_from_slice(&batch.bytes);
        }
        writer.await.unwrap();
        assert_eq!(out, input);
        assert_eq!(tags, vec![(b'T', true), (b'D', false), (b'C', true), (b'Z', true)]);
        assert!(max_batch <= WHOLE_FRAME + READ_CHUNK, "a batch of {max_batch} bytes");
    }

    /// Reads what has arrived; `None` once the reader would wait for more.
    async fn pump<R: AsyncRead + Unpin>(reader: &mut FrameReader<R>) -> Option<Batch> {
        tokio::time::timeout(std::time::Duration::from_millis(50), reader.read_batch(READ_CHUNK)).await.ok().map(|b| b.unwrap().unwrap())
    }

    /// A kept tag is gathered whole (growing with what arrived) up to its limit; under memory
    /// pressure the caller can have it streamed instead.
    #[tokio::test]
    async fn kept_frames_are_gathered_whole_or_streamed_on_demand() {
        let parse = frame(b'P', &vec![b's'; 300_000]);
        let (mut client, server) = tokio::io::duplex(1 << 20);
        client.write_all(&parse[..100_000]).await.unwrap();
        let mut reader = FrameReader::new(server, 1 << 30).keep_whole(b'P', 1 << 20);
        while let Some(batch) = pump(&mut reader).await {
            assert!(batch.is_empty(), "handed out before complete");
        }
        assert_eq!(reader.buffered(), 100_000);
        assert!(reader.buf.capacity() <= 2 * 100_000 + READ_CHUNK, "capacity {}", reader.buf.capacity());
        client.write_all(&parse[100_000..]).await.unwrap();
        let mut got = Vec::new();
        while got.len() < parse.len() {
            let batch = reader.read_batch(READ_CHUNK).await.unwrap().unwrap();
            if !batch.is_empty() {
                assert_eq!(batch.frames().map(|(t, _, whole)| (t, whole)).collect::<Vec<_>>(), vec![(b'P', true)]);
            }
            got.extend_from_slice(&batch.bytes);
        }
        assert_eq!(got, parse);
        // Idle again: the grown buffer is let go at the next read.
        assert!(pump(&mut reader).await.is_none());
        assert!(reader.buf.capacity() <= 2 * READ_CHUNK, "capacity {}", reader.buf.capacity());

        client.write_all(&parse[..50_000]).await.unwrap();
        while let Some(batch) = pump(&mut reader).await {
            assert!(batch.is_empty());
        }
        assert_eq!(reader.buffered(), 50_000);
        let head = reader.stream_partial().unwrap().unwrap();
        assert_eq!((head.bytes.len(), head.open), (50_000, true));
        assert!(reader.in_frame());
        client.write_all(&parse[50_000..]).await.unwrap();
        let mut rest = 0;
        while reader.in_frame() {
            let batch = reader.read_batch(READ_CHUNK).await.unwrap().unwrap();
            assert_eq!(batch.continued, batch.bytes.len());
            rest += batch.bytes.len();
        }
        assert_eq!(rest, parse.len() - 50_000);
    }

    #[tokio::test]
    async fn reads_no_more_than_the_limit() {
        let data = frame(b'D', &[1u8; 1000]);
        let mut reader = FrameReader::new(&data[..], 1 << 20);
        let batch = reader.read_batch(10).await.unwrap().unwrap();
        assert!(batch.is_empty());
        assert_eq!(reader.buffered(), 10);
        let batch = reader.read_batch(READ_CHUNK).await.unwrap().unwrap();
        assert_eq!(batch.bytes.len(), data.len());
    }
}
