//! A stream wrapper that reads the length of every message a console client sends, as the bytes
//! arrive, and fails the read as soon as one declares more than the current limit: pgwire
//! would otherwise buffer any message up to 1 GiB before looking at it, even before login.

use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::protocol::startup::{GSSENC_REQUEST, SSL_REQUEST};

pub struct FrameGuard<S> {
    inner: S,
    lengths: Lengths,
}

/// A message that broke the limit: its declared length and the limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Oversized {
    pub declared: usize,
    pub limit: usize,
}

impl<S> FrameGuard<S> {
    pub fn new(inner: S, limit: usize) -> Self {
        Self { inner, lengths: Lengths::new(limit) }
    }

    /// Messages from now on may be up to `limit` bytes.
    pub fn set_limit(&mut self, limit: usize) {
        self.lengths.limit = limit;
    }

    /// The message that ended reading, if one did.
    pub fn oversized(&self) -> Option<Oversized> {
        self.lengths.oversized
    }
}

/// Follows message boundaries: untagged startup-phase packets (`length | code | ...`; after an
/// SSL or GSS encryption request another one follows), then tagged ones (`tag | length | ...`).
struct Lengths {
    limit: usize,
    tagged: bool,
    header: [u8; 8],
    have: usize,
    /// Bytes of the current message still to come after its header.
    rest: usize,
    oversized: Option<Oversized>,
}

impl Lengths {
    fn new(limit: usize) -> Self {
        Self { limit, tagged: false, header: [0; 8], have: 0, rest: 0, oversized: None }
    }

    fn feed(&mut self, mut data: &[u8]) -> Result<(), Oversized> {
        if let Some(oversized) = self.oversized {
            return Err(oversized);
        }
        while !data.is_empty() {
            if self.rest > 0 {
                let n = self.rest.min(data.len());
                self.rest -= n;
                data = &data[n..];
                continue;
            }
            let need = if self.tagged { 5 } else { 8 };
            let n = (need - self.have).min(data.len());
            self.header[self.have..self.have + n].copy_from_slice(&data[..n]);
            self.have += n;
            data = &data[n..];
            if self.have < need {
                break;
            }
            self.have = 0;
            let at = if self.tagged { 1 } else { 0 };
            let declared = u32::from_be_bytes([self.header[at], self.header[at + 1], self.header[at + 2], self.header[at + 3]]) as usize;
            // The length counts itself; an untagged header also holds the 4-byte code.
            let header_after_tag = need - at;
            if declared > self.limit || declared < header_after_tag {
                let oversized = Oversized { declared, limit: self.limit };
                self.oversized = Some(oversized);
                return Err(oversized);
            }
            self.rest = declared - header_after_tag;
            if !self.tagged {
                let code = u32::from_be_bytes([self.header[4], self.header[5], self.header[6], self.header[7]]);
                self.tagged = code != SSL_REQUEST && code != GSSENC_REQUEST;
            }
        }
        Ok(())
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for FrameGuard<S> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {}
            other => return other,
        }
        if let Err(Oversized { declared, limit }) = this.lengths.feed(&buf.filled()[before..]) {
            // Nothing of it reaches the decoder.
            buf.set_filled(before);
            let message = format!("message length {declared} exceeds the limit of {limit} bytes");
            return Poll::Ready(Err(std::io::Error::new(std::io::ErrorKind::InvalidData, message)));
        }
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for FrameGuard<S> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(self: Pin<&mut Self>, cx: &mut Context<'_>, bufs: &[std::io::IoSlice<'_>]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn untagged(code: u32, body: &[u8]) -> Vec<u8> {
        let mut v = ((body.len() + 8) as u32).to_be_bytes().to_vec();
        v.extend_from_slice(&code.to_be_bytes());
        v.extend_from_slice(body);
        v
    }

    fn tagged(tag: u8, body: &[u8]) -> Vec<u8> {
        let mut v = vec![tag];
        v.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
        v.extend_from_slice(body);
        v
    }

    #[test]
    fn follows_the_startup_phase_then_tagged_messages_byte_by_byte() {
        let mut stream = untagged(SSL_REQUEST, b"");
        stream.extend(untagged(196_608, b"user\0admin\0\0"));
        stream.extend(tagged(b'p', &[b'x'; 90]));
        stream.extend(tagged(b'Q', b"SHOW STATUS\0"));
        let mut lengths = Lengths::new(100);
        for byte in &stream {
            lengths.feed(std::slice::from_ref(byte)).unwrap();
        }
        assert_eq!((lengths.tagged, lengths.rest, lengths.have), (true, 0, 0));
        // The next header declares 101 bytes, one more than allowed.
        let mut big = vec![b'Q'];
        big.extend_from_slice(&101u32.to_be_bytes());
        assert_eq!(lengths.feed(&big), Err(Oversized { declared: 101, limit: 100 }));
        assert!(lengths.feed(b"x").is_err(), "stays refused");
    }

    #[test]
    fn the_limit_applies_to_startup_packets_and_bad_lengths() {
        let mut lengths = Lengths::new(100);
        assert!(lengths.feed(&untagged(196_608, &[b'u'; 200])).is_err());
        let mut lengths = Lengths::new(100);
        lengths.feed(&untagged(196_608, b"user\0admin\0\0")).unwrap();
        assert!(lengths.feed(&[b'Q', 0, 0, 0, 2]).is_err(), "a length below 4");
        let mut lengths = Lengths::new(100);
        lengths.feed(&untagged(196_608, b"user\0admin\0\0")).unwrap();
        lengths.limit = 1 << 20;
        lengths.feed(&tagged(b'Q', &[b'q'; 5000])).unwrap();
    }
}
