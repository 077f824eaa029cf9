//! The proxy's own HTTP/1.1 exchange with a target for a request without a body (most
//! requests: GET, HEAD, DELETE...): the head written in one send, the response read and framed
//! in the requesting task. No connection task, no channel between tasks, which hyper's client
//! (still used for requests with a body, sent while the response is read, and for upgrades)
//! needs per request.
//!
//! Responses are framed as RFC 9112 §6.3 says: none for HEAD, 1xx, 204 and 304; chunked when
//! Transfer-Encoding ends in `chunked` (trailers become a trailers frame); Content-Length;
//! otherwise up to the end of the connection. Interim 1xx responses are skipped. A connection
//! goes back to its pool when its response has ended, if both sides keep it alive and nothing
//! came after the response; an idle one the target has closed (or written to) is noticed from
//! its readiness, without a syscall, before it is reused.

use std::{
    future::Future as _,
    pin::Pin,
    sync::{Arc, Mutex},
    task::{Context, Poll, Waker},
};

use hyper::{
    HeaderMap, Method, Request, Response, StatusCode, Version,
    body::{Body, Bytes, Frame, SizeHint},
    header::{self, HeaderName, HeaderValue},
};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use super::{BoxError, Pool, ProxyBody, TargetIo, lock};

/// The longest response head taken (hyper's client default is about the same).
const MAX_HEAD_BYTES: usize = 64 * 1024;
/// Most header lines a response head may have (hyper's client default).
const MAX_HEADERS: usize = 100;
/// Longest chunk-size line (with extensions) or trailer section.
const MAX_CHUNK_LINE: usize = 4096;
const MAX_TRAILER_BYTES: usize = 16 * 1024;
/// Bytes asked of the connection per read.
const READ_CHUNK: usize = 16 * 1024;

/// An open connection to a target and what was read past the last response (nothing, for one
/// in the pool).
pub(super) struct LeanConn {
    io: Box<dyn TargetIo>,
    buf: bytes::BytesMut,
}

impl LeanConn {
    pub(super) fn new(io: Box<dyn TargetIo>) -> Self {
        Self {
            io,
            buf: bytes::BytesMut::new(),
        }
    }

    /// Whether an idle connection can carry a request: not readable (a target writes nothing
    /// to an idle keep-alive connection but its end). Reads the socket's readiness, as the
    /// runtime last saw it; no syscall.
    pub(super) fn idle_and_open(&self) -> bool {
        let mut cx = Context::from_waker(Waker::noop());
        self.io.tcp().poll_read_ready(&mut cx).is_pending()
    }
}

/// Whether `request` can go the lean way: HTTP/1.1, no body, no upgrade.
pub(super) fn suits(request: &Request<ProxyBody>) -> bool {
    request.body().is_end_stream()
        && !request.headers().contains_key(header::UPGRADE)
        && request.method() != Method::CONNECT
}

/// The request's head as HTTP/1.1 bytes (origin-form target, as the URI is).
pub(super) fn encode_head(request: &Request<ProxyBody>) -> Vec<u8> {
    let target = request.uri().path_and_query().map_or("/", |p| p.as_str());
    let mut head = Vec::with_capacity(256);
    head.extend_from_slice(request.method().as_str().as_bytes());
    head.push(b' ');
    head.extend_from_slice(target.as_bytes());
    head.extend_from_slice(b" HTTP/1.1\r\n");
    for (name, value) in request.headers() {
        head.extend_from_slice(name.as_str().as_bytes());
        head.extend_from_slice(b": ");
        head.extend_from_slice(value.as_bytes());
        head.extend_from_slice(b"\r\n");
    }
    head.extend_from_slice(b"\r\n");
    head
}

/// How one exchange on a connection failed.
pub(super) struct ExchangeError {
    pub(super) error: BoxError,
    /// Nothing of a response arrived: the connection was closed (or reset) under the request,
    /// as a target closes an idle keep-alive connection. Another may take the request.
    pub(super) before_response: bool,
}

impl ExchangeError {
    fn new(error: impl Into<BoxError>, before_response: bool) -> Self {
        Self {
            error: error.into(),
            before_response,
        }
    }
}

/// Sends `head` (a request without a body) on `conn` and reads the response's head. The
/// response's body reads on from the connection, which it gives back to `pool` when done.
pub(super) async fn exchange(
    mut conn: LeanConn,
    head: &[u8],
    method: &Method,
    pool: &Arc<Mutex<Pool>>,
    target: std::net::SocketAddr,
) -> Result<Response<ProxyBody>, ExchangeError> {
    let written = async {
        conn.io.write_all(head).await?;
        conn.io.flush().await
    };
    written.await.map_err(|e| ExchangeError::new(e, true))?;
    // An interim (1xx) response came: the target has the request.
    let mut answered = false;
    loop {
        let (parsed, consumed) = loop {
            match parse_head(&conn.buf) {
                Ok(Some(parsed)) => break parsed,
                Ok(None) if conn.buf.len() > MAX_HEAD_BYTES => {
                    return Err(ExchangeError::new("the response head is too long", false));
                }
                Ok(None) => {}
                Err(e) => return Err(ExchangeError::new(e, false)),
            }
            conn.buf.reserve(READ_CHUNK);
            let nothing_yet = conn.buf.is_empty() && !answered;
            match conn.io.read_buf(&mut conn.buf).await {
                Ok(0) => {
                    return Err(ExchangeError::new(
                        "the target closed the connection before answering",
                        nothing_yet,
                    ));
                }
                Ok(_) => {}
                Err(e) => return Err(ExchangeError::new(e, nothing_yet)),
            }
        };
        bytes::Buf::advance(&mut conn.buf, consumed);
        let ResponseHead {
            status,
            headers,
            keep_alive,
        } = parsed;
        if status.is_informational() {
            if status == StatusCode::SWITCHING_PROTOCOLS {
                return Err(ExchangeError::new(
                    "the target switched protocols unasked",
                    false,
                ));
            }
            // 100 Continue, 102, 103: interim, the response follows.
            answered = true;
            continue;
        }
        let framing =
            framing(method, status, &headers).map_err(|e| ExchangeError::new(e, false))?;
        // Both framings in one response (RFC 9112 §6.3: Transfer-Encoding wins): read by it,
        // but the connection is not trusted with another request.
        let both_framings = headers.contains_key(header::TRANSFER_ENCODING)
            && headers.contains_key(header::CONTENT_LENGTH);
        // A body already at its end (none to read) gives its connection back when dropped.
        let body = LeanBody {
            conn: Some(conn),
            framing,
            reusable: keep_alive && !both_framings,
            release: Some((pool.clone(), target)),
        };
        let mut response = Response::new(http_body_util::BodyExt::boxed(body));
        *response.status_mut() = status;
        *response.version_mut() = Version::HTTP_11;
        *response.headers_mut() = headers;
        return Ok(response);
    }
}

/// What a response head says.
struct ResponseHead {
    status: StatusCode,
    headers: HeaderMap,
    /// HTTP/1.1 without `Connection: close`.
    keep_alive: bool,
}

/// The response head at the start of `buf` and its length, once it is whole.
fn parse_head(buf: &[u8]) -> Result<Option<(ResponseHead, usize)>, BoxError> {
    let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut response = httparse::Response::new(&mut slots);
    let consumed = match response.parse(buf)? {
        httparse::Status::Complete(consumed) => consumed,
        httparse::Status::Partial => return Ok(None),
    };
    let status = StatusCode::from_u16(response.code.unwrap_or(0))?;
    let headers = header_map(response.headers)?;
    let close = headers.get_all(header::CONNECTION).iter().any(|value| {
        value
            .as_bytes()
            .split(|&b| b == b',')
            .any(|t| t.trim_ascii().eq_ignore_ascii_case(b"close"))
    });
    let keep_alive = response.version == Some(1) && !close;
    Ok(Some((
        ResponseHead {
            status,
            headers,
            keep_alive,
        },
        consumed,
    )))
}

/// Where a response body ends (RFC 9112 §6.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    /// Read; nothing more.
    Done,
    /// This many bytes to go.
    Length(u64),
    /// A chunked body, at this point of it.
    Chunked(Chunk),
    /// Up to the end of the connection.
    UntilClose,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunk {
    /// A chunk-size line is next.
    Size,
    /// In a chunk's data, this many bytes to go.
    Data(u64),
    /// The CRLF after a chunk's data.
    DataEnd,
    /// The trailer section (up to an empty line).
    Trailers,
}

fn framing(method: &Method, status: StatusCode, headers: &HeaderMap) -> Result<Framing, BoxError> {
    if method == Method::HEAD
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
    {
        return Ok(Framing::Done);
    }
    if let Some(last) = headers
        .get_all(header::TRANSFER_ENCODING)
        .iter()
        .flat_map(|v| v.as_bytes().split(|&b| b == b','))
        .map(<[u8]>::trim_ascii)
        .rfind(|t| !t.is_empty())
    {
        return Ok(if last.eq_ignore_ascii_case(b"chunked") {
            Framing::Chunked(Chunk::Size)
        } else {
            Framing::UntilClose
        });
    }
    let mut lengths = headers.get_all(header::CONTENT_LENGTH).iter();
    let Some(first) = lengths.next() else {
        return Ok(Framing::UntilClose);
    };
    let length = parse_length(first.as_bytes())?;
    if lengths.any(|other| parse_length(other.as_bytes()).ok() != Some(length)) {
        return Err("the target sent conflicting Content-Length headers".into());
    }
    Ok(if length == 0 {
        Framing::Done
    } else {
        Framing::Length(length)
    })
}

fn parse_length(value: &[u8]) -> Result<u64, BoxError> {
    if value.is_empty() || value.len() > 19 || !value.iter().all(u8::is_ascii_digit) {
        return Err("the target sent an invalid Content-Length".into());
    }
    Ok(value
        .iter()
        .fold(0u64, |n, &d| n * 10 + u64::from(d - b'0')))
}

/// A response body read from the target's connection in the caller's task; the connection
/// goes back to the pool when the body has ended (and is closed if dropped before).
struct LeanBody {
    conn: Option<LeanConn>,
    framing: Framing,
    /// Both sides keep the connection alive.
    reusable: bool,
    release: Option<(Arc<Mutex<Pool>>, std::net::SocketAddr)>,
}

impl LeanBody {
    /// Reads more from the connection into its buffer (in place); `Ok(0)` at its end.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<usize>> {
        let Some(conn) = self.conn.as_mut() else {
            return Poll::Ready(Ok(0));
        };
        conn.buf.reserve(READ_CHUNK);
        // `read_buf` keeps no state between polls (tokio documents it cancel-safe): a new one
        // per poll loses nothing.
        std::pin::pin!(conn.io.read_buf(&mut conn.buf)).poll(cx)
    }

    /// What was read and not yet given (`None` once the connection is gone: a body ended or
    /// failed).
    fn buffered(&mut self) -> Option<&mut bytes::BytesMut> {
        self.conn.as_mut().map(|conn| &mut conn.buf)
    }

    /// The body has ended: the connection goes back to the pool if it can carry another.
    fn finish(&mut self) {
        self.framing = Framing::Done;
        let (Some(conn), Some((pool, target))) = (self.conn.take(), self.release.take()) else {
            return;
        };
        if self.reusable && conn.buf.is_empty() {
            lock(&pool).put_lean(target, conn);
        }
    }

    /// The next frame of a chunked body from what is buffered, if one is whole there.
    fn next_chunked(&mut self, mut chunk: Chunk) -> Result<Option<Frame<Bytes>>, BoxError> {
        loop {
            let Some(buf) = self.buffered() else {
                return Err("the connection is gone".into());
            };
            match chunk {
                Chunk::Size => {
                    let Some(end) = find_crlf(buf) else {
                        if buf.len() > MAX_CHUNK_LINE {
                            return Err("a chunk-size line is too long".into());
                        }
                        self.framing = Framing::Chunked(chunk);
                        return Ok(None);
                    };
                    let line = buf.split_to(end + 2);
                    let size = parse_chunk_size(&line[..end])?;
                    chunk = if size == 0 {
                        Chunk::Trailers
                    } else {
                        Chunk::Data(size)
                    };
                }
                Chunk::Data(left) => {
                    if buf.is_empty() {
                        self.framing = Framing::Chunked(chunk);
                        return Ok(None);
                    }
                    let n = (buf.len() as u64).min(left) as usize;
                    let data = buf.split_to(n).freeze();
                    let left = left - n as u64;
                    self.framing = Framing::Chunked(if left == 0 {
                        Chunk::DataEnd
                    } else {
                        Chunk::Data(left)
                    });
                    return Ok(Some(Frame::data(data)));
                }
                Chunk::DataEnd => {
                    if buf.len() < 2 {
                        self.framing = Framing::Chunked(chunk);
                        return Ok(None);
                    }
                    if &buf[..2] != b"\r\n" {
                        return Err("a chunk's data is not followed by CRLF".into());
                    }
                    bytes::Buf::advance(buf, 2);
                    chunk = Chunk::Size;
                }
                Chunk::Trailers => {
                    let Some(end) = find_trailers_end(buf) else {
                        if buf.len() > MAX_TRAILER_BYTES {
                            return Err("the trailers are too long".into());
                        }
                        self.framing = Framing::Chunked(chunk);
                        return Ok(None);
                    };
                    let section = buf.split_to(end);
                    let trailers = parse_trailers(&section)?;
                    self.finish();
                    return Ok(trailers.map(Frame::trailers));
                }
            }
        }
    }
}

impl Body for LeanBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        loop {
            match self.framing {
                Framing::Done => {
                    self.finish();
                    return Poll::Ready(None);
                }
                Framing::Length(left) => {
                    let Some(buf) = self.buffered() else {
                        return Poll::Ready(None);
                    };
                    if !buf.is_empty() {
                        let n = (buf.len() as u64).min(left) as usize;
                        let data = buf.split_to(n).freeze();
                        let left = left - n as u64;
                        if left == 0 {
                            self.finish();
                        } else {
                            self.framing = Framing::Length(left);
                        }
                        return Poll::Ready(Some(Ok(Frame::data(data))));
                    }
                }
                Framing::UntilClose => {
                    let Some(buf) = self.buffered() else {
                        return Poll::Ready(None);
                    };
                    if !buf.is_empty() {
                        let data = buf.split().freeze();
                        return Poll::Ready(Some(Ok(Frame::data(data))));
                    }
                }
                Framing::Chunked(chunk) => match self.next_chunked(chunk) {
                    Ok(Some(frame)) => return Poll::Ready(Some(Ok(frame))),
                    Ok(None) if self.framing == Framing::Done => return Poll::Ready(None),
                    Ok(None) => {}
                    Err(e) => {
                        self.conn = None;
                        self.framing = Framing::Done;
                        return Poll::Ready(Some(Err(e)));
                    }
                },
            }
            // Nothing buffered to give: read more.
            match std::task::ready!(self.poll_fill(cx)) {
                Ok(0) if self.framing == Framing::UntilClose => {
                    // The body's end is the connection's.
                    self.reusable = false;
                    self.finish();
                    return Poll::Ready(None);
                }
                Ok(0) => {
                    self.conn = None;
                    self.framing = Framing::Done;
                    return Poll::Ready(Some(Err(
                        "the target closed the connection in the middle of a response".into(),
                    )));
                }
                Ok(_) => {}
                Err(e) => {
                    self.conn = None;
                    self.framing = Framing::Done;
                    return Poll::Ready(Some(Err(Box::new(e))));
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.framing == Framing::Done
    }

    fn size_hint(&self) -> SizeHint {
        match self.framing {
            Framing::Done => SizeHint::with_exact(0),
            Framing::Length(left) => SizeHint::with_exact(left),
            _ => SizeHint::default(),
        }
    }
}

impl Drop for LeanBody {
    fn drop(&mut self) {
        // Dropped at its end (an empty body may never be polled): reusable. Dropped unread:
        // the rest of it is on the connection, which closes with it.
        if self.framing == Framing::Done {
            self.finish();
        }
    }
}

fn find_crlf(buf: &[u8]) -> Option<usize> {
    memchr::memmem::find(buf, b"\r\n")
}

/// The end of a trailer section (its empty line included) at the start of `buf`.
fn find_trailers_end(buf: &[u8]) -> Option<usize> {
    if buf.starts_with(b"\r\n") {
        return Some(2);
    }
    memchr::memmem::find(buf, b"\r\n\r\n").map(|at| at + 4)
}

/// A chunk-size line's size (hex digits; extensions after `;` ignored).
fn parse_chunk_size(line: &[u8]) -> Result<u64, BoxError> {
    let digits = line
        .split(|&b| b == b';')
        .next()
        .unwrap_or_default()
        .trim_ascii();
    if digits.is_empty() || digits.len() > 15 {
        return Err("an invalid chunk size".into());
    }
    digits.iter().try_fold(0u64, |size, &d| {
        let digit = (d as char).to_digit(16).ok_or("an invalid chunk size")?;
        Ok(size * 16 + u64::from(digit))
    })
}

/// The trailer fields of a section (its empty line included), if it has any.
fn parse_trailers(section: &[u8]) -> Result<Option<HeaderMap>, BoxError> {
    if section == b"\r\n" {
        return Ok(None);
    }
    let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let (_, fields) = match httparse::parse_headers(section, &mut slots)? {
        httparse::Status::Complete(parsed) => parsed,
        httparse::Status::Partial => return Err("an incomplete trailer section".into()),
    };
    Ok(Some(header_map(fields)?))
}

/// Parsed header fields (of a head or a trailer section) as a header map.
fn header_map(fields: &[httparse::Header<'_>]) -> Result<HeaderMap, BoxError> {
    let mut map = HeaderMap::with_capacity(fields.len());
    for field in fields {
        map.append(
            HeaderName::from_bytes(field.name.as_bytes())?,
            HeaderValue::from_bytes(field.value)?,
        );
    }
    Ok(map)
}

#[cfg(test)]
mod tests;
