//! The connections of one server (the control API on its socket or TCP address, the metrics
//! address): what an open port may cost the agent. A client that connects and sends nothing,
//! sends slowly, or stops reading holds one connection until a timeout closes it; at most
//! `max_connections` are held, and one more is closed as soon as it is accepted; an accept
//! that fails for lack of descriptors backs off instead of spinning. So a few hundred idle
//! sockets cannot starve the health checks or the control socket of descriptors or CPU.

use std::{
    io,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
    task::{Context, Poll},
    time::Duration,
};

use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    sync::{Semaphore, watch},
    time::Instant,
};

/// What one server allows its clients (`[agent] api_header_timeout`, `api_idle_timeout`,
/// `api_max_connections`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServerLimits {
    /// A connection must send a whole request head within this of connecting, and of its
    /// previous answer (a keep-alive connection waiting for its next request included).
    pub header_timeout: Duration,
    /// A connection that moves no byte either way for this long, while no request of it is
    /// being answered, is closed (a stalled body, a client that stopped reading); a request
    /// body must also arrive whole within this.
    pub idle_timeout: Duration,
    /// Connections held at once; the next is closed as soon as it is accepted.
    pub max_connections: usize,
}

impl ServerLimits {
    /// The limits `[agent]` sets.
    pub fn of(agent: &crate::config::AgentConfig) -> Self {
        Self {
            header_timeout: agent.api_header_timeout,
            idle_timeout: agent.api_idle_timeout,
            max_connections: agent.api_max_connections,
        }
    }
}

/// Shortest and longest pause after a failed accept.
const FIRST_PAUSE: Duration = Duration::from_millis(20);
const LONGEST_PAUSE: Duration = Duration::from_secs(1);

/// How the accept loop reacts to failed accepts: a failure that concerns one connection is
/// skipped; running out of descriptors or memory pauses the loop (the pending connection
/// stays queued, so an immediate retry would fail again at full speed), doubling the pause
/// up to a second, and is logged once per episode.
#[derive(Debug, Default)]
pub struct AcceptBackoff {
    pause: Option<Duration>,
}

impl AcceptBackoff {
    /// An accept succeeded: the episode is over.
    pub fn succeeded(&mut self) {
        if self.pause.take().is_some() {
            tracing::info!("accepting connections again");
        }
    }

    /// An accept failed with `e`: how long to pause before the next (zero: go on at once).
    pub fn failed(&mut self, e: &io::Error, server: &str) -> Duration {
        let per_connection = matches!(
            e.raw_os_error(),
            Some(libc::ECONNABORTED | libc::ECONNRESET | libc::EPROTO | libc::EPERM)
        );
        if per_connection {
            tracing::debug!(server, error = %e, "an accept failed for one connection");
            return Duration::ZERO;
        }
        let pause = match self.pause {
            None => {
                tracing::warn!(server, error = %e, "accepting connections fails (out of descriptors? raise LimitNOFILE); pausing and retrying with back-off");
                FIRST_PAUSE
            }
            Some(p) => (p * 2).min(LONGEST_PAUSE),
        };
        self.pause = Some(pause);
        pause
    }
}

/// When a connection last moved a byte, and whether a request of it is being answered.
#[derive(Debug)]
pub struct Activity {
    start: Instant,
    /// Milliseconds after `start`.
    last_ms: AtomicU64,
    in_flight: AtomicUsize,
}

impl Activity {
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            start: Instant::now(),
            last_ms: AtomicU64::new(0),
            in_flight: AtomicUsize::new(0),
        })
    }

    fn touch(&self) {
        let ms = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_ms.store(ms, Ordering::Relaxed);
    }

    /// When the connection counts as idle, if it is not busy answering.
    fn idle_deadline(&self, idle: Duration) -> Option<Instant> {
        if self.in_flight.load(Ordering::Relaxed) > 0 {
            return None;
        }
        Some(self.start + Duration::from_millis(self.last_ms.load(Ordering::Relaxed)) + idle)
    }

    /// Marks a request as being answered until the guard drops.
    pub fn busy(self: &Arc<Self>) -> Busy {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        Busy(self.clone())
    }
}

/// A request being answered (see [`Activity::busy`]).
pub struct Busy(Arc<Activity>);

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.touch();
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A stream that notes in its [`Activity`] every read or write that moved bytes.
pub struct Watched<S> {
    inner: S,
    activity: Arc<Activity>,
}

impl<S> Watched<S> {
    pub fn new(inner: S, activity: Arc<Activity>) -> Self {
        Self { inner, activity }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Watched<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.activity.touch();
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Watched<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, data);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        polled
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Drives `connection` (hyper's future for one connection) until it ends, its client has
/// been idle for `idle` (then it is dropped, which closes the socket), or `stop` turns true.
pub async fn drive<F>(
    connection: F,
    activity: &Activity,
    idle: Duration,
    mut stop: watch::Receiver<bool>,
) where
    F: Future<Output = Result<(), hyper::Error>>,
{
    tokio::pin!(connection);
    loop {
        // A busy connection is looked at again after `idle`: its answer may take a while.
        let deadline = activity
            .idle_deadline(idle)
            .unwrap_or_else(|| Instant::now() + idle);
        tokio::select! {
            ended = &mut connection => {
                if let Err(e) = ended {
                    tracing::debug!(error = %e, "API connection ended with an error");
                }
                return;
            }
            () = tokio::time::sleep_until(deadline) => {
                if activity.idle_deadline(idle).is_some_and(|d| d <= Instant::now()) {
                    tracing::debug!(idle = ?idle, "closing an idle API connection");
                    return;
                }
            }
            _ = stop.changed() => return,
        }
    }
}

/// The connection cap of one server: a permit per held connection.
#[derive(Debug)]
pub struct ConnectionCap {
    permits: Arc<Semaphore>,
    max: usize,
    /// Whether the cap was reached and not yet left (logged once per episode).
    full: std::sync::atomic::AtomicBool,
}

impl ConnectionCap {
    pub fn new(max: usize) -> Self {
        Self {
            permits: Arc::new(Semaphore::new(max.max(1))),
            max,
            full: false.into(),
        }
    }

    /// A permit for one more connection, or none when `max` are held.
    pub fn admit(&self, server: &str) -> Option<tokio::sync::OwnedSemaphorePermit> {
        match self.permits.clone().try_acquire_owned() {
            Ok(permit) => {
                if self.full.swap(false, Ordering::Relaxed) {
                    tracing::info!(server, "below the connection cap again");
                }
                Some(permit)
            }
            Err(_) => {
                if !self.full.swap(true, Ordering::Relaxed) {
                    tracing::warn!(
                        server,
                        max = self.max,
                        "connection cap reached: new connections are closed at once until held ones end or time out"
                    );
                }
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn running_out_of_descriptors_backs_off_doubling_up_to_a_second() {
        let mut backoff = AcceptBackoff::default();
        let emfile = io::Error::from_raw_os_error(libc::EMFILE);
        let pauses: Vec<Duration> = (0..8).map(|_| backoff.failed(&emfile, "t")).collect();
        assert_eq!(pauses[0], FIRST_PAUSE);
        assert!(pauses.windows(2).all(|w| w[1] >= w[0]), "{pauses:?}");
        assert_eq!(pauses[7], LONGEST_PAUSE);
        backoff.succeeded();
        assert_eq!(backoff.failed(&emfile, "t"), FIRST_PAUSE);
    }

    #[test]
    fn a_failure_of_one_connection_does_not_pause_the_loop() {
        let mut backoff = AcceptBackoff::default();
        let aborted = io::Error::from_raw_os_error(libc::ECONNABORTED);
        assert_eq!(backoff.failed(&aborted, "t"), Duration::ZERO);
    }

    #[test]
    fn the_cap_admits_max_connections_and_again_once_one_ends() {
        let cap = ConnectionCap::new(2);
        let a = cap.admit("t").expect("first");
        let _b = cap.admit("t").expect("second");
        assert!(cap.admit("t").is_none());
        drop(a);
        assert!(cap.admit("t").is_some());
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_connection_is_dropped_after_the_idle_timeout() {
        let activity = Activity::new();
        let (_stop, stopped) = watch::channel(false);
        let started = Instant::now();
        drive(
            std::future::pending::<Result<(), hyper::Error>>(),
            &activity,
            Duration::from_secs(5),
            stopped,
        )
        .await;
        assert_eq!(started.elapsed(), Duration::from_secs(5));
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_being_answered_is_not_idle() {
        let activity = Activity::new();
        let busy = activity.busy();
        let (_stop, stopped) = watch::channel(false);
        let started = Instant::now();
        let answer = async {
            tokio::time::sleep(Duration::from_secs(12)).await;
            drop(busy);
            std::future::pending::<Result<(), hyper::Error>>().await
        };
        drive(answer, &activity, Duration::from_secs(5), stopped).await;
        // Closed 5 s after the answer, not 5 s after it began.
        assert_eq!(started.elapsed(), Duration::from_secs(17));
    }

    /// hyper's header-read timeout, as the servers set it, also ends a keep-alive connection
    /// that waits for its next request (what `api_header_timeout` documents).
    #[tokio::test]
    async fn a_keep_alive_connection_waiting_for_its_next_request_is_closed_after_the_header_timeout()
     {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let address = listener.local_addr().expect("address");
        let header_timeout = Duration::from_millis(300);
        tokio::spawn(async move {
            let (stream, _) = listener.accept().await.expect("accept");
            let service = hyper::service::service_fn(|_| async {
                Ok::<_, std::convert::Infallible>(hyper::Response::new(http_body_util::Full::new(
                    hyper::body::Bytes::from_static(b"ok"),
                )))
            });
            let mut http = hyper::server::conn::http1::Builder::new();
            http.timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(header_timeout);
            let _ = http
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                .await;
        });
        let mut client = tokio::net::TcpStream::connect(address)
            .await
            .expect("connect");
        client
            .write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
            .await
            .expect("request");
        let mut answer = [0u8; 1024];
        let n = client.read(&mut answer).await.expect("answer");
        assert!(
            answer[..n].starts_with(b"HTTP/1.1 200"),
            "{:?}",
            &answer[..n]
        );
        // Now idle, kept alive: the server must close it, after the timeout and not long after.
        let answered = std::time::Instant::now();
        let closed = tokio::time::timeout(Duration::from_secs(5), client.read(&mut answer))
            .await
            .expect("closed within 5 s");
        assert!(matches!(closed, Ok(0) | Err(_)), "{closed:?}");
        let after = answered.elapsed();
        assert!(
            after >= header_timeout - Duration::from_millis(50),
            "{after:?}"
        );
    }
}
