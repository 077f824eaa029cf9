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
//! `FramingGuard` wraps the client connection's IO below hyper and follows the request stream
//! as hyper reads it: each head is judged, each body skipped by the framing hyper applies, so
//! pipelined and keep-alive requests are each judged. A head reaches hyper only once judged
//! good (one that arrives whole passes in place; one split across reads is held back, an empty
//! line standing in for it). A refused head and everything after it never reach hyper: it
//! sees the end of input after the requests before it, answers those in order and shuts the
//! connection down, and the guard then writes its own answer (400, or 431 for a head over the
//! limit, with a body saying why and `connection: close`) before the shutdown. That covers what
//! hyper would refuse itself with an empty body (an invalid Content-Length, obs-fold, an
//! oversized head) as well as what it would accept.
//!
//! After an Upgrade or CONNECT head the bytes may be a tunnel's, so from there nothing is held
//! back: the service takes one verdict per request from `FramingVerdicts::next` and answers
//! 400 with `connection: close` to an `Ambiguous` one without forwarding it (a refused upgrade
//! followed by a smuggled request).
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
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::answer::Failure;
use head::Ambiguity;
use stream::{Handing, RequestStream};

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
    /// Judged bytes not yet handed to hyper (a head that arrived split, and what followed it
    /// in the same read), from `pending_at`.
    pending: Vec<u8>,
    pending_at: usize,
    /// The guard's own answer to a refused head and how much of it is written: set when hyper
    /// reads the end of input the refusal makes (so every earlier request is answered), written
    /// when hyper shuts the connection down (after its last bytes).
    answer: Option<(Vec<u8>, usize)>,
}

impl<IO> FramingGuard<IO> {
    /// Wraps `io`; request heads longer than `max_head_bytes` are refused.
    pub fn new(io: IO, max_head_bytes: usize) -> Self {
        let verdicts = Arc::new(FramingVerdicts::new());
        Self {
            io,
            stream: RequestStream::new(max_head_bytes, Arc::clone(&verdicts)),
            verdicts,
            pending: Vec::new(),
            pending_at: 0,
            answer: None,
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

    /// Hands on pending bytes, as many as fit; false if there were none.
    fn hand_on_pending(&mut self, buf: &mut ReadBuf<'_>) -> bool {
        let left = &self.pending[self.pending_at..];
        if left.is_empty() {
            return false;
        }
        let n = left.len().min(buf.remaining());
        buf.put_slice(&left[..n]);
        self.pending_at += n;
        if self.pending_at == self.pending.len() {
            // An idle connection keeps no head-sized buffer.
            self.pending = Vec::new();
            self.pending_at = 0;
        }
        true
    }

    /// Leaves in `buf`, from `before`, what `handing` says hyper may have of the bytes read
    /// there; what does not fit waits in `pending`.
    fn hand_on(&mut self, buf: &mut ReadBuf<'_>, before: usize, handing: Handing) {
        let read = &buf.filled()[before..];
        match handing.released {
            // Nothing released: the bytes handed on start the read, so they stay in place.
            None if handing.pass.start == 0 => {
                let marker_fits = read.len() > handing.pass.end;
                buf.set_filled(before + handing.pass.end);
                if handing.marker {
                    if marker_fits {
                        buf.put_slice(b"\n");
                    } else {
                        self.pending.push(b'\n');
                    }
                }
            }
            released => {
                let mut out = released.unwrap_or_default();
                out.extend_from_slice(read.get(handing.pass.clone()).unwrap_or_default());
                if handing.marker {
                    out.push(b'\n');
                }
                buf.set_filled(before);
                self.pending = out;
                self.pending_at = 0;
                self.hand_on_pending(buf);
            }
        }
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for FramingGuard<IO> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.verdicts.head_timed_out() {
            // The connection's watchdog saw a head not arrive in time: answered like a refused
            // head (408), the input ends here.
            this.stream.time_out();
        }
        loop {
            if this.hand_on_pending(buf) {
                return Poll::Ready(Ok(()));
            }
            if let Some(refused) = this.stream.answered() {
                // Everything before the refused head is handed on, and hyper reads again only
                // at a head (the marker keeps it from reading in the middle of a request): it
                // has answered every earlier request and takes this end of input as the
                // client's, closing the connection.
                if this.answer.is_none() {
                    let failure = match refused {
                        Ambiguity::HeadTooLarge => Failure::HeadTooLarge,
                        Ambiguity::HeadTimeout => Failure::HeadTimeout,
                        _ => Failure::BadRequest,
                    };
                    this.answer = Some((failure.http1_closing_bytes(), 0));
                }
                return Poll::Ready(Ok(()));
            }
            let before = buf.filled().len();
            ready!(Pin::new(&mut this.io).poll_read(cx, buf))?;
            let read = buf.filled().len() - before;
            // Judged before hyper sees the bytes, so a verdict is always recorded before the
            // service can ask for it.
            if read == 0 || !this.stream.following() {
                return Poll::Ready(Ok(()));
            }
            let handing = this.stream.scan(&buf.filled()[before..]);
            if handing.is_all(read) {
                return Poll::Ready(Ok(()));
            }
            this.hand_on(buf, before, handing);
            if buf.filled().len() > before {
                return Poll::Ready(Ok(()));
            }
            // Every byte read is held back (part of a head): read on, until the inner IO has
            // no more for now (and wakes this task when it does) or a refusal ends the input.
        }
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

    /// Writes the guard's own answer first, if a refusal ended the input: hyper shuts down
    /// only once its own bytes are flushed, so the answer follows the last of them.
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if let Some((answer, written)) = &mut this.answer {
            while *written < answer.len() {
                let n = ready!(Pin::new(&mut this.io).poll_write(cx, &answer[*written..]))?;
                if n == 0 {
                    return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                }
                *written += n;
            }
            // Kept, written: a second shutdown writes nothing more.
            ready!(Pin::new(&mut this.io).poll_flush(cx))?;
        }
        Pin::new(&mut this.io).poll_shutdown(cx)
    }
}
