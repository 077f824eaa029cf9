//! A request-framing guard for HTTP/1.1 client connections: requests whose body length two
//! servers could read differently are refused before anything is forwarded.
//!
//! hyper's HTTP/1 server already answers 400 to an invalid Content-Length, to several with
//! different values, to obs-fold and to a non-chunked Transfer-Encoding, and fails a body with a
//! bad chunk size. Two ambiguous shapes it accepts, and the request it hands the service keeps no
//! trace of them: Content-Length together with `Transfer-Encoding: chunked` (it drops the
//! Content-Length) and several identical Content-Length headers (it keeps one). A target behind
//! the proxy may frame those differently, which is how requests are smuggled; ALB and HAProxy
//! refuse them, and so does this proxy.
//!
//! `FramingGuard` wraps the client connection's IO below hyper, passes every byte through
//! unchanged, and follows the request stream as hyper reads it: each head is judged, each body
//! skipped by the framing hyper applies, so pipelined and keep-alive requests are each judged.
//! The service takes one verdict per request from `FramingVerdicts::next` and answers 400 with
//! `connection: close` to an `Ambiguous` one without forwarding it.
//!
//! Used only on HTTP/1 connections (TLS with ALPN `http/1.1` or none; plain-text connections,
//! where a leading h2 preface makes the guard step aside). Heads are parsed with httparse's
//! default configuration, as hyper's server does; pass `max_head_bytes` no smaller than the
//! listener's header limit, or a head hyper would accept is refused here.

mod head;
mod stream;
mod verdicts;

#[cfg(test)]
mod serve_tests;
#[cfg(test)]
mod tests;

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use stream::RequestStream;
pub use verdicts::FramingVerdicts;

/// The guard's verdict on one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// Unambiguous framing (or not HTTP/1): serve it.
    Ok,
    /// Refuse with 400 and close the connection; the reason is for logs and the answer's body.
    Ambiguous(&'static str),
}

impl Framing {
    /// Whether the request may be served.
    pub fn is_ok(self) -> bool {
        self == Framing::Ok
    }
}

/// A client connection's IO that judges the framing of every request read through it.
#[derive(Debug)]
pub struct FramingGuard<IO> {
    io: IO,
    stream: RequestStream,
    verdicts: Arc<FramingVerdicts>,
}

impl<IO> FramingGuard<IO> {
    /// Wraps `io`; request heads longer than `max_head_bytes` are refused.
    pub fn new(io: IO, max_head_bytes: usize) -> Self {
        let verdicts = Arc::new(FramingVerdicts::new());
        Self {
            io,
            stream: RequestStream::new(max_head_bytes, Arc::clone(&verdicts)),
            verdicts,
        }
    }

    /// The verdicts, for the connection's service.
    pub fn verdicts(&self) -> Arc<FramingVerdicts> {
        Arc::clone(&self.verdicts)
    }

    /// The wrapped IO.
    pub fn get_ref(&self) -> &IO {
        &self.io
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for FramingGuard<IO> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let read = Pin::new(&mut this.io).poll_read(cx, buf);
        // Judged before hyper sees the bytes, so a verdict is always recorded before the
        // service can ask for it.
        if read.is_ready() && this.stream.following() {
            this.stream.scan(&buf.filled()[before..]);
        }
        read
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for FramingGuard<IO> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}
