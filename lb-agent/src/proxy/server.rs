//! The listeners' servers: an accept loop per L7 listener and a task per client connection.
//! A connection is refused on accept over the listener's `max_connections`; TLS is
//! terminated within the request-header timeout; HTTP/1.1 and HTTP/2 are served by hyper with
//! the listener's limits (header size: 431; head timeout; HTTP/2 streams); a connection idle
//! (no request in progress, no byte moving) for the idle timeout is closed; an HTTP/2 client
//! that resets more streams than allowed in a window is sent away (rapid-reset floods).

use std::{
    net::SocketAddr,
    pin::Pin,
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering},
    },
    task::{Context, Poll},
    time::{Duration, Instant},
};

use futures_util::task::AtomicWaker;
use hyper::service::service_fn;
use hyper_util::{
    rt::{TokioExecutor, TokioIo, TokioTimer},
    server::conn::auto,
};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::{TcpListener, TcpStream},
    sync::watch,
};

use super::{
    Shared,
    answer::Failure,
    forward::{ConnInfo, TlsInfo, handle},
    framing::{Framing, FramingGuard, FramingVerdicts},
    plan::ListenerPlan,
    send_batch::BatchedTcp,
    tls_forward,
};
use crate::config::ListenerProtocol;

/// The window in which an HTTP/2 connection's stream resets are counted.
const RESET_WINDOW: Duration = Duration::from_secs(10);
/// A connection asked to close (idle, reset flood, listener gone) gets this long to finish
/// what it is sending before it is cut.
const CLOSE_GRACE: Duration = Duration::from_secs(5);

/// Accepts connections for listener `name` until `stop` turns true; `active` counts its
/// connections over every worker.
pub async fn accept_loop(
    listener: TcpListener,
    name: String,
    shared: Arc<Shared>,
    active: Arc<AtomicU32>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let accepted = tokio::select! {
            _ = stop.changed() => break,
            accepted = listener.accept() => accepted,
        };
        let (stream, client) = match accepted {
            Ok(accepted) => accepted,
            Err(e) => {
                // EMFILE and the like: back off a little rather than spin.
                tracing::warn!(listener = name, error = %e, "accepting a connection failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let plan = shared.plan.load();
        let Some(listener_plan) = plan.listeners.get(&name).cloned() else {
            continue;
        };
        drop(plan);
        if active.load(Ordering::Relaxed) >= listener_plan.settings.max_connections {
            listener_plan.metrics.connection_refused();
            drop(stream);
            continue;
        }
        let open = OpenConnection::count(&active);
        let served_by = shared.workers.choose(super::workers::current());
        let worker = served_by.worker();
        let handle = shared.workers.handle(worker).cloned();
        let shared = shared.clone();
        let stop = stop.clone();
        // Dropped unrun (a failed hand-over), it uncounts the connection all the same.
        let serve = async move |stream: TcpStream| {
            let _counted = (open, served_by);
            let _guard = listener_plan.metrics.connection_opened();
            serve_connection(stream, client, listener_plan, shared, stop).await;
        };
        if worker == super::workers::current() {
            tokio::spawn(serve(stream));
            continue;
        }
        // Handed to a less loaded worker: the socket leaves this worker's reactor for that
        // one's.
        let handed = match (handle, stream.into_std()) {
            (Some(handle), Ok(stream)) => {
                handle.spawn(async move {
                    match TcpStream::from_std(stream) {
                        Ok(stream) => serve(stream).await,
                        Err(e) => {
                            tracing::debug!(%client, error = %e, "a connection handed to another worker was lost");
                        }
                    }
                });
                Ok(())
            }
            (None, _) => Err(std::io::Error::other("no such worker")),
            (_, Err(e)) => Err(e),
        };
        if let Err(e) = handed {
            tracing::debug!(%client, error = %e, "a connection could not be handed to another worker");
        }
    }
}

/// A connection counted in its listener's open connections (over every worker), until
/// dropped.
struct OpenConnection(Arc<AtomicU32>);

impl OpenConnection {
    fn count(active: &Arc<AtomicU32>) -> Self {
        active.fetch_add(1, Ordering::Relaxed);
        Self(active.clone())
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// One client connection, whatever the listener's protocol.
async fn serve_connection(
    stream: TcpStream,
    client: SocketAddr,
    listener: Arc<ListenerPlan>,
    shared: Arc<Shared>,
    stop: watch::Receiver<bool>,
) {
    let _ = stream.set_nodelay(true);
    let stream = BatchedTcp::new(stream);
    let mut conn = ConnInfo::new(listener.name.clone(), client, listener.address.port());
    let head_limit = listener.settings.max_header_bytes as usize;
    let Some(tls) = &listener.tls else {
        // HTTP/1.1 or h2c (the guard steps aside at the h2 preface).
        let guard = FramingGuard::new(stream, head_limit);
        let verdicts = guard.verdicts();
        serve_http(guard, conn, listener, shared, Some(verdicts), stop).await;
        return;
    };
    let acceptor = tokio_rustls::TlsAcceptor::from(tls.clone());
    let handshake = tokio::time::timeout(
        listener.settings.request_header_timeout,
        acceptor.accept(stream),
    )
    .await;
    let stream = match handshake {
        Ok(Ok(stream)) => stream,
        Ok(Err(e)) => {
            listener.metrics.tls_handshake(false);
            tracing::debug!(%client, listener = %listener.name, error = %e, "TLS handshake failed");
            return;
        }
        Err(_) => {
            listener.metrics.tls_handshake(false);
            return;
        }
    };
    listener.metrics.tls_handshake(true);
    let session = stream.get_ref().1;
    conn.secure = true;
    conn.tls = Some(TlsInfo {
        version: session
            .protocol_version()
            .and_then(|v| v.as_str())
            .unwrap_or("-"),
        cipher: session
            .negotiated_cipher_suite()
            .and_then(|s| s.suite().as_str())
            .unwrap_or("-"),
        sni: session.server_name().map(str::to_owned),
    });
    if listener.protocol == ListenerProtocol::Tls {
        tls_forward::forward(stream, conn, listener, shared).await;
        return;
    }
    if session.alpn_protocol() == Some(b"h2") {
        // HTTP/2 frames every message itself: nothing ambiguous to guard against.
        serve_http(stream, conn, listener, shared, None, stop).await;
    } else {
        let guard = FramingGuard::new(stream, head_limit);
        let verdicts = guard.verdicts();
        serve_http(guard, conn, listener, shared, Some(verdicts), stop).await;
    }
}

/// What a connection's watchdog reads: whether bytes moved since it last looked, how many
/// requests are in progress, the stream resets counted in the current window, and a bell to
/// close.
struct ConnWatch {
    /// Changes whenever bytes are read or written, or a request ends (a count, not a time:
    /// the IO path reads no clock).
    activity: AtomicU64,
    in_flight: AtomicU32,
    resets: Mutex<(Instant, u32)>,
    max_resets: u32,
    /// Set when the connection must close (a reset flood); `waker` wakes its task.
    close: AtomicBool,
    waker: AtomicWaker,
}

impl ConnWatch {
    fn touch(&self) {
        // Only this connection's task moves its bytes: a plain load and store suffice (a
        // lost update still changes the count).
        let count = self.activity.load(Ordering::Relaxed);
        self.activity
            .store(count.wrapping_add(1), Ordering::Relaxed);
    }

    /// Ready once the connection must close; registers the task's waker otherwise.
    fn close_requested(&self, cx: &mut Context<'_>) -> Poll<()> {
        if self.close.load(Ordering::Relaxed) {
            return Poll::Ready(());
        }
        self.waker.register(cx.waker());
        // Set between the load and the registration: seen now.
        if self.close.load(Ordering::Relaxed) {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }

    /// Counts a stream the client reset (its request dropped before it was answered); true
    /// if that is one too many for the window.
    fn reset(&self) -> bool {
        let mut resets = self.resets.lock().unwrap_or_else(PoisonError::into_inner);
        let now = Instant::now();
        if now.duration_since(resets.0) > RESET_WINDOW {
            *resets = (now, 0);
        }
        resets.1 += 1;
        resets.1 > self.max_resets
    }
}

/// Marks a request in progress; if dropped before `done`, the client gave up on it (an
/// HTTP/2 stream reset, or an HTTP/1.1 connection closed early).
struct InFlight {
    watch: Arc<ConnWatch>,
    done: bool,
}

impl InFlight {
    fn new(watch: Arc<ConnWatch>) -> Self {
        watch.in_flight.fetch_add(1, Ordering::Relaxed);
        Self { watch, done: false }
    }
}

impl InFlight {
    /// The request was answered.
    fn finish(mut self) {
        self.done = true;
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.watch.in_flight.fetch_sub(1, Ordering::Relaxed);
        self.watch.touch();
        if !self.done && self.watch.reset() {
            self.watch.close.store(true, Ordering::Relaxed);
            self.watch.waker.wake();
        }
    }
}

/// Serves HTTP/1.1 and HTTP/2 on `io` for `conn`.
async fn serve_http<IO>(
    io: IO,
    conn: ConnInfo,
    listener: Arc<ListenerPlan>,
    shared: Arc<Shared>,
    verdicts: Option<Arc<FramingVerdicts>>,
    stop: watch::Receiver<bool>,
) where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let settings = &listener.settings;
    let watch = Arc::new(ConnWatch {
        activity: AtomicU64::new(0),
        in_flight: AtomicU32::new(0),
        resets: Mutex::new((Instant::now(), 0)),
        max_resets: settings.http2_max_reset_streams,
        close: AtomicBool::new(false),
        waker: AtomicWaker::new(),
    });
    let client = conn.client;
    let conn = Arc::new(conn);
    let guard_verdicts = verdicts.clone();
    let service_watch = watch.clone();
    let service_listener = listener.clone();
    let service = service_fn(move |request| {
        let in_flight = InFlight::new(service_watch.clone());
        // HTTP/1.1 requests are served in order: this verdict is this request's head's. Only
        // heads after an upgrade request reach hyper refused (the guard withholds the others
        // and answers them itself, see `framing`).
        let refused = match verdicts.as_ref().map(|v| v.next()) {
            Some(Framing::Ambiguous(reason)) => Some(reason),
            _ => None,
        };
        // Boxed: the request's future is large (kilobytes), and hyper moves the service's
        // future whole (HTTP/2 spawns it as a task): moving a pointer is cheaper.
        let response = match refused {
            None => Ok(Box::pin(handle(request, conn.clone(), shared.clone()))),
            // Only a refusal needs the listener (its Arc is shared by every thread's requests).
            Some(reason) => Err((reason, service_listener.clone(), conn.client)),
        };
        async move {
            let response = match response {
                Ok(response) => response.await,
                Err((reason, listener, client)) => {
                    listener.metrics.framing_rejected();
                    tracing::debug!(%client, listener = %listener.name, reason, "request refused for ambiguous framing");
                    Ok(Failure::BadRequest.response(true))
                }
            };
            in_flight.finish();
            response
        }
    });
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        // The request-header timeout is the watchdog's (below): it answers 408 through the
        // framing guard, and no timer is set per request.
        .header_read_timeout(None)
        // The guard refuses longer heads itself (431 with a body); hyper's own limit stays a
        // backstop one byte above, for the empty line the guard puts before a held head.
        .max_buf_size(settings.max_header_bytes as usize + 1)
        .keep_alive(true)
        // Head and small body in one buffer, one `write` (not a `writev` of several).
        .writev(false);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(settings.http2_max_concurrent_streams)
        .max_header_list_size(settings.max_header_bytes)
        .max_pending_accept_reset_streams(Some(settings.http2_max_reset_streams as usize))
        .enable_connect_protocol();
    let io = TokioIo::new(Watched {
        inner: io,
        watch: watch.clone(),
    });
    let connection = builder.serve_connection_with_upgrades(io, service);
    tokio::pin!(connection);
    let idle_timeout = settings.idle_timeout;
    let header_timeout = settings.request_header_timeout;
    // Idleness is noticed a tick late at most: the connection closes within
    // `idle_timeout + 2 ticks` of its last byte; a late head within a tick of its timeout.
    let tick = (idle_timeout / 8)
        .min(header_timeout / 4)
        .max(Duration::from_millis(100));
    let mut closing: Option<tokio::time::Instant> = None;
    let mut seen_activity = 0;
    let mut quiet_since = Instant::now();
    // The head being awaited (HTTP/1: the guard's number for it) and since when: the first
    // from the connection's start.
    let mut awaited = (1, Instant::now());
    loop {
        let deadline = closing.unwrap_or_else(|| tokio::time::Instant::now() + tick);
        tokio::select! {
            result = connection.as_mut() => {
                if let Err(e) = result {
                    tracing::debug!(%client, listener = %listener.name, error = %e, "client connection ended with an error");
                }
                break;
            }
            // A flag and a waker, not a `Notify`: this is polled at every wake of the
            // connection, and takes no lock.
            _ = std::future::poll_fn(|cx| watch.close_requested(cx)), if closing.is_none() => {
                listener.metrics.h2_reset_flood();
                tracing::info!(listener = %listener.name, "closing a connection that reset too many streams");
                connection.as_mut().graceful_shutdown();
                closing = Some(tokio::time::Instant::now() + CLOSE_GRACE);
            }
            _ = tokio::time::sleep_until(deadline) => {
                if closing.is_some() {
                    break;
                }
                // The listener stopping (removed, or the proxy ending) is seen at the next tick:
                // a `changed()` future polled at every wake would take a lock each time.
                if stop.has_changed().unwrap_or(true) {
                    connection.as_mut().graceful_shutdown();
                    closing = Some(tokio::time::Instant::now() + CLOSE_GRACE);
                    continue;
                }
                let idle = watch.in_flight.load(Ordering::Relaxed) == 0;
                if let Some(verdicts) = &guard_verdicts {
                    let head = verdicts.awaiting_head();
                    if head == 0 || !idle {
                        awaited.0 = 0;
                    } else if head != awaited.0 {
                        awaited = (head, Instant::now());
                    } else if awaited.1.elapsed() >= header_timeout {
                        // The guard answers 408 at hyper's next read, and hyper closes; the
                        // deadline cuts it if it cannot (after an upgrade).
                        verdicts.time_out_head();
                        listener.metrics.header_timeout();
                        tracing::debug!(%client, listener = %listener.name, "request head not received within request_header_timeout");
                        closing = Some(tokio::time::Instant::now() + CLOSE_GRACE);
                        continue;
                    }
                }
                let activity = watch.activity.load(Ordering::Relaxed);
                if activity != seen_activity {
                    seen_activity = activity;
                    quiet_since = Instant::now();
                } else if idle && quiet_since.elapsed() >= idle_timeout {
                    connection.as_mut().graceful_shutdown();
                    closing = Some(tokio::time::Instant::now() + CLOSE_GRACE);
                }
            }
        }
    }
    count_guard_refusal(&listener, guard_verdicts.as_deref());
}

/// Counts (and logs) a head the framing guard refused and answered itself on a connection
/// that has ended.
fn count_guard_refusal(listener: &ListenerPlan, verdicts: Option<&FramingVerdicts>) {
    if let Some(reason) = verdicts.and_then(FramingVerdicts::withheld_refusal) {
        if verdicts.is_some_and(FramingVerdicts::ended_late) {
            // Counted when it happened (`lb_http_request_header_timeouts`).
            return;
        }
        listener.metrics.framing_rejected();
        tracing::debug!(listener = %listener.name, reason, "request refused for its framing");
    }
}

/// A connection's IO, noting when bytes move.
struct Watched<IO> {
    inner: IO,
    watch: Arc<ConnWatch>,
}

impl<IO: AsyncRead + Unpin> AsyncRead for Watched<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.watch.touch();
        }
        polled
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Watched<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.watch.touch();
        }
        polled
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.watch.touch();
        }
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}
