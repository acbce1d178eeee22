//! A byte stream that is either plain TCP or TLS (as server to clients, as client to servers).

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

pub enum Stream {
    Plain(TcpStream),
    TlsFromClient(Box<tokio_rustls::server::TlsStream<TcpStream>>),
    TlsToServer(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl Stream {
    pub fn is_tls(&self) -> bool {
        !matches!(self, Stream::Plain(_))
    }
}

macro_rules! delegate {
    ($self:ident, $method:ident($($arg:expr),*)) => {
        match $self.get_mut() {
            Stream::Plain(s) => Pin::new(s).$method($($arg),*),
            Stream::TlsFromClient(s) => Pin::new(s.as_mut()).$method($($arg),*),
            Stream::TlsToServer(s) => Pin::new(s.as_mut()).$method($($arg),*),
        }
    };
}

impl AsyncRead for Stream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        delegate!(self, poll_read(cx, buf))
    }
}

impl AsyncWrite for Stream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        delegate!(self, poll_write(cx, buf))
    }

    fn poll_write_vectored(self: Pin<&mut Self>, cx: &mut Context<'_>, bufs: &[io::IoSlice<'_>]) -> Poll<io::Result<usize>> {
        delegate!(self, poll_write_vectored(cx, bufs))
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Stream::Plain(s) => s.is_write_vectored(),
            Stream::TlsFromClient(s) => s.is_write_vectored(),
            Stream::TlsToServer(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        delegate!(self, poll_flush(cx))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        delegate!(self, poll_shutdown(cx))
    }
}

/// The reading half of a [`Stream`]. Plain TCP splits into owned halves without a lock (this
/// is the hot path); TLS needs the shared-state split because both halves drive one session.
pub enum StreamReader {
    Plain(tokio::net::tcp::OwnedReadHalf),
    Tls(tokio::io::ReadHalf<Stream>),
}

/// The writing half of a [`Stream`]; see [`StreamReader`].
pub enum StreamWriter {
    Plain(tokio::net::tcp::OwnedWriteHalf),
    Tls(tokio::io::WriteHalf<Stream>),
}

impl Stream {
    pub fn split(self) -> (StreamReader, StreamWriter) {
        match self {
            Stream::Plain(tcp) => {
                let (r, w) = tcp.into_split();
                (StreamReader::Plain(r), StreamWriter::Plain(w))
            }
            tls => {
                let (r, w) = tokio::io::split(tls);
                (StreamReader::Tls(r), StreamWriter::Tls(w))
            }
        }
    }
}

macro_rules! delegate_half {
    ($self:ident, $ty:ident, $method:ident($($arg:expr),*)) => {
        match $self.get_mut() {
            $ty::Plain(s) => Pin::new(s).$method($($arg),*),
            $ty::Tls(s) => Pin::new(s).$method($($arg),*),
        }
    };
}

impl AsyncRead for StreamReader {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        delegate_half!(self, StreamReader, poll_read(cx, buf))
    }
}

impl AsyncWrite for StreamWriter {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        delegate_half!(self, StreamWriter, poll_write(cx, buf))
    }

    fn poll_write_vectored(self: Pin<&mut Self>, cx: &mut Context<'_>, bufs: &[io::IoSlice<'_>]) -> Poll<io::Result<usize>> {
        delegate_half!(self, StreamWriter, poll_write_vectored(cx, bufs))
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            StreamWriter::Plain(s) => s.is_write_vectored(),
            StreamWriter::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        delegate_half!(self, StreamWriter, poll_flush(cx))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        delegate_half!(self, StreamWriter, poll_shutdown(cx))
    }
}
