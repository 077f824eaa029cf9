//! Sends batched per worker: what the proxy's connections write during one turn of their
//! worker is handed to the kernel in one `io_uring_enter`, not one `send` each.
//!
//! On a machine where the proxy shares cores with its clients or targets, each `send` that
//! wakes a peer ends in a context switch: the kernel preempts the proxy as the call returns,
//! the peer handles one message and sleeps, and the proxy resumes, one message per switch.
//! Batched, the wake-ups of a whole turn are made in one call, the proxy is preempted once at
//! its end, and every peer finds several messages waiting when it runs.
//!
//! A connection's writes are copied into its outbox and the outbox queued on its worker; the
//! worker's flusher task (queued behind the tasks already ready, so it runs at the end of the
//! turn) submits one `SEND` per outbox with `MSG_DONTWAIT` and waits for all to complete,
//! which they do within the call. What a send could not take (a full socket buffer) the
//! connection writes itself, as a plain socket would, at its next write, flush or read.
//! Off the workers (or where io_uring is not available) a `BatchedTcp` writes directly.

use std::{
    cell::RefCell,
    io,
    os::fd::{AsFd as _, AsRawFd as _, RawFd},
    pin::Pin,
    sync::{Arc, Mutex, MutexGuard, PoisonError, atomic::AtomicU64},
    task::{Context, Poll, Waker, ready},
    time::Duration,
};

use io_uring::{IoUring, opcode, types};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::TcpStream,
};

use super::metrics::PerWorker;

/// Entries in a worker's ring: the most sends one call submits (a longer queue takes
/// several).
const RING_ENTRIES: u32 = 256;
/// Bytes an outbox holds before its connection writes directly (a large body streams
/// through the socket, not through the batch).
const OUTBOX_LIMIT: usize = 64 * 1024;
/// A write at least this large, with nothing pending before it, goes straight to the socket;
/// an outbox emptied keeps no more room than this.
const DIRECT_WRITE: usize = 16 * 1024;
/// How long a connection's last bytes may take to leave after it is dropped.
const LINGER: Duration = Duration::from_secs(5);

/// What every worker has sent in batches since the agent started (`/metrics`).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Totals {
    /// `io_uring_enter` calls that carried sends.
    pub calls: u64,
    /// Sends those calls carried: one per connection with bytes to send.
    pub sends: u64,
    /// Sends the socket did not take whole (its connection wrote the rest itself).
    pub short: u64,
}

/// The parts of `Totals`, a copy per worker.
static CALLS: PerWorker<AtomicU64> = PerWorker::new();
static SENDS: PerWorker<AtomicU64> = PerWorker::new();
static SHORT: PerWorker<AtomicU64> = PerWorker::new();

/// The totals over every worker.
pub fn totals() -> Totals {
    Totals {
        calls: CALLS.sum(),
        sends: SENDS.sum(),
        short: SHORT.sum(),
    }
}

thread_local! {
    /// This worker's batch; `None` off the workers.
    static BATCH: RefCell<Option<Batch>> = const { RefCell::new(None) };
}

struct Batch {
    ring: IoUring,
    /// Outboxes with bytes to send, each once.
    queue: Vec<Arc<Outbox>>,
    /// The flusher's waker, while it waits for a queue.
    flusher: Option<Waker>,
    /// Calls made and sends submitted by this worker, for tests (the process's `Totals` add
    /// up every test's).
    #[cfg(test)]
    calls: u64,
    #[cfg(test)]
    sends: u64,
}

/// Makes the calling thread (a worker) batch the sends of the connections it serves, and
/// returns its flusher, to run on that worker; an error if io_uring is not available
/// (connections then write directly).
pub fn start() -> io::Result<impl Future<Output = ()> + Send + 'static> {
    let ring = IoUring::new(RING_ENTRIES)?;
    let mut probe = io_uring::Probe::new();
    ring.submitter().register_probe(&mut probe)?;
    if !probe.is_supported(opcode::Send::CODE) {
        return Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "this kernel's io_uring has no SEND",
        ));
    }
    BATCH.with(|batch| {
        *batch.borrow_mut() = Some(Batch {
            ring,
            queue: Vec::new(),
            flusher: None,
            #[cfg(test)]
            calls: 0,
            #[cfg(test)]
            sends: 0,
        });
    });
    Ok(std::future::poll_fn(|cx| {
        flush(cx);
        Poll::<()>::Pending
    }))
}

/// Sends what the queued outboxes hold, and waits for the next queue.
fn flush(cx: &mut Context<'_>) {
    BATCH.with(|slot| {
        let mut slot = slot.borrow_mut();
        loop {
            let Some(batch) = slot.as_mut() else {
                return;
            };
            if batch.queue.is_empty() {
                register(&mut batch.flusher, cx);
                return;
            }
            let take = batch.queue.len().min(RING_ENTRIES as usize);
            let queued: Vec<Arc<Outbox>> = batch.queue.drain(..take).collect();
            match send_all(&mut batch.ring, &queued) {
                Ok(Sent { sends: 0, .. }) => {}
                Ok(Sent { sends, short }) => {
                    #[cfg(test)]
                    {
                        batch.calls += 1;
                        batch.sends += sends as u64;
                    }
                    CALLS.add(1);
                    SENDS.add(sends as u64);
                    if short > 0 {
                        SHORT.add(short as u64);
                    }
                }
                Err(e) => {
                    // Not expected (the entries were valid). Entries may be left unsubmitted
                    // in the ring: it is dropped unused, and this worker's connections write
                    // their own bytes from now, as off the workers.
                    tracing::warn!(error = %e, "io_uring_enter failed; this worker's connections send their own bytes from now");
                    for outbox in batch.queue.drain(..) {
                        let mut state = outbox.lock();
                        state.queued = false;
                        state.stuck = true;
                        state.wake();
                    }
                    *slot = None;
                    return;
                }
            }
        }
    });
}

/// What one call sent.
struct Sent {
    sends: usize,
    /// Sends the socket did not take whole.
    short: usize,
}

/// One `SEND` per outbox in one call; each outbox then holds what its send did not take.
/// On an error, every outbox is left to its connection.
fn send_all(ring: &mut IoUring, queued: &[Arc<Outbox>]) -> io::Result<Sent> {
    let mut states: Vec<MutexGuard<'_, OutState>> = queued.iter().map(|o| o.lock()).collect();
    let mut submitted = 0;
    {
        let mut sq = ring.submission();
        for (index, (outbox, state)) in queued.iter().zip(states.iter_mut()).enumerate() {
            state.queued = false;
            if state.closed || state.pending.is_empty() || state.error.is_some() {
                continue;
            }
            let len = u32::try_from(state.pending.len()).unwrap_or(u32::MAX);
            let send = opcode::Send::new(types::Fd(outbox.fd), state.pending.as_ptr(), len)
                .flags(libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL)
                .build()
                .user_data(index as u64);
            // SAFETY: the buffer (the outbox's pending bytes, locked in `states`) lives and
            // stays unchanged until every submitted entry has completed (below; on an error
            // the ring is dropped, never entered again), and the fd is the connection's open
            // socket (an outbox is closed, under this lock, before its socket is).
            if unsafe { sq.push(&send) }.is_err() {
                break;
            }
            submitted += 1;
        }
    }
    if submitted == 0 {
        return Ok(Sent { sends: 0, short: 0 });
    }
    // MSG_DONTWAIT: every send completes within the call (a full buffer answers EAGAIN).
    let mut completed = 0;
    let mut short = 0;
    while completed < submitted {
        let waited = ring.submit_and_wait(submitted - completed);
        for cqe in ring.completion() {
            completed += 1;
            let Some(state) = usize::try_from(cqe.user_data())
                .ok()
                .and_then(|i| states.get_mut(i))
            else {
                continue;
            };
            let result = cqe.result();
            if result >= 0 {
                let sent = (result as usize).min(state.pending.len());
                state.pending.drain(..sent);
                if !state.pending.is_empty() {
                    short += 1;
                    state.stuck = true;
                    state.wake();
                }
            } else if result == -libc::EAGAIN {
                short += 1;
                state.stuck = true;
                state.wake();
            } else {
                state.error = Some(io::Error::from_raw_os_error(-result).kind());
                state.wake();
            }
        }
        if let Err(e) = waited
            && e.kind() != io::ErrorKind::Interrupted
        {
            for state in &mut states {
                state.stuck = true;
                state.wake();
            }
            return Err(e);
        }
    }
    for state in &mut states {
        if state.pending.is_empty() && state.pending.capacity() > DIRECT_WRITE {
            state.pending = Vec::new();
        }
    }
    Ok(Sent {
        sends: submitted,
        short,
    })
}

/// The calls this worker made and the sends they carried.
#[cfg(test)]
fn stats() -> (u64, u64) {
    BATCH.with(|batch| {
        batch
            .borrow()
            .as_ref()
            .map_or((0, 0), |b| (b.calls, b.sends))
    })
}

/// Queues `outbox` on this thread's batch; false off the workers.
fn enqueue(outbox: &Arc<Outbox>) -> bool {
    BATCH.with(|batch| {
        let mut batch = batch.borrow_mut();
        let Some(batch) = batch.as_mut() else {
            return false;
        };
        batch.queue.push(outbox.clone());
        if let Some(flusher) = batch.flusher.take() {
            flusher.wake();
        }
        true
    })
}

/// What a connection has written and the kernel not yet taken.
struct Outbox {
    fd: RawFd,
    state: Mutex<OutState>,
}

impl Outbox {
    fn lock(&self) -> MutexGuard<'_, OutState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[derive(Default)]
struct OutState {
    pending: Vec<u8>,
    /// In its worker's queue.
    queued: bool,
    /// A send took less than all: the connection writes the rest itself.
    stuck: bool,
    /// The connection is gone (its socket closes): nothing more is sent for it.
    closed: bool,
    /// A send failed: the connection's writes fail from now.
    error: Option<io::ErrorKind>,
    /// The connection's task, woken when it must write the rest or learn of an error.
    waker: Option<Waker>,
}

impl OutState {
    fn wake(&mut self) {
        if let Some(waker) = self.waker.take() {
            waker.wake();
        }
    }
}

/// Keeps `cx`'s waker in `slot` (cloned only if another task's is there).
fn register(slot: &mut Option<Waker>, cx: &Context<'_>) {
    match slot {
        Some(w) if w.will_wake(cx.waker()) => {}
        _ => *slot = Some(cx.waker().clone()),
    }
}

/// A TCP connection whose writes go out in its worker's batch.
pub struct BatchedTcp {
    tcp: TcpStream,
    /// `None`: writes go straight to the socket (off the workers).
    outbox: Option<Arc<Outbox>>,
}

impl BatchedTcp {
    /// Batched if made on a worker that batches; writing directly otherwise.
    pub fn new(tcp: TcpStream) -> Self {
        let batched = BATCH.with(|batch| batch.borrow().is_some());
        let outbox = batched.then(|| {
            Arc::new(Outbox {
                fd: tcp.as_raw_fd(),
                state: Mutex::new(OutState::default()),
            })
        });
        Self { tcp, outbox }
    }

    pub fn tcp(&self) -> &TcpStream {
        &self.tcp
    }
}

/// Writes `outbox`'s bytes to `tcp` directly, until none are left.
fn drain(tcp: &TcpStream, outbox: &Outbox, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
    loop {
        let mut state = outbox.lock();
        if let Some(kind) = state.error {
            return Poll::Ready(Err(kind.into()));
        }
        if state.pending.is_empty() {
            state.stuck = false;
            return Poll::Ready(Ok(()));
        }
        ready!(tcp.poll_write_ready(cx))?;
        match tcp.try_write(&state.pending) {
            Ok(n) => {
                state.pending.drain(..n);
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => {
                state.error = Some(e.kind());
                return Poll::Ready(Err(e));
            }
        }
    }
}

/// Takes what `bufs` hold (up to the outbox's room) into `outbox`, queued for the batch; a
/// large write with nothing pending goes straight to `tcp`.
fn put(
    tcp: &mut TcpStream,
    outbox: &Arc<Outbox>,
    cx: &mut Context<'_>,
    bufs: &[io::IoSlice<'_>],
) -> Poll<io::Result<usize>> {
    let mut state = outbox.lock();
    if let Some(kind) = state.error {
        return Poll::Ready(Err(kind.into()));
    }
    if state.stuck || state.pending.len() >= OUTBOX_LIMIT {
        drop(state);
        ready!(drain(tcp, outbox, cx))?;
        state = outbox.lock();
    }
    if state.pending.is_empty() && bufs.iter().map(|b| b.len()).sum::<usize>() >= DIRECT_WRITE {
        // Copying it would buy nothing: one call for this many bytes is cheap.
        drop(state);
        return Pin::new(tcp).poll_write_vectored(cx, bufs);
    }
    let mut written = 0;
    for buf in bufs {
        let room = OUTBOX_LIMIT.saturating_sub(state.pending.len());
        let take = buf.len().min(room);
        state.pending.extend_from_slice(&buf[..take]);
        written += take;
        if take < buf.len() {
            break;
        }
    }
    register(&mut state.waker, cx);
    if written > 0 && !state.queued {
        if enqueue(outbox) {
            state.queued = true;
        } else {
            // Polled off its worker (never so far): written here, or when the socket has
            // room, as after a short send.
            state.stuck = true;
            drop(state);
            if let Poll::Ready(Err(e)) = drain(tcp, outbox, cx) {
                return Poll::Ready(Err(e));
            }
        }
    }
    Poll::Ready(Ok(written))
}

impl Drop for BatchedTcp {
    fn drop(&mut self) {
        let Some(outbox) = &self.outbox else {
            return;
        };
        let mut state = outbox.lock();
        state.closed = true;
        if state.pending.is_empty() || state.error.is_some() {
            return;
        }
        // The last bytes (an answer before closing) still leave: from a copy of the socket,
        // within `LINGER`.
        let rest = std::mem::take(&mut state.pending);
        let Ok(fd) = self.tcp.as_fd().try_clone_to_owned() else {
            return;
        };
        let Ok(tcp) = TcpStream::from_std(std::net::TcpStream::from(fd)) else {
            return;
        };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        runtime.spawn(async move {
            use tokio::io::AsyncWriteExt as _;
            let mut tcp = tcp;
            let _ = tokio::time::timeout(LINGER, async {
                tcp.write_all(&rest).await?;
                tcp.shutdown().await
            })
            .await;
        });
    }
}

impl AsyncRead for BatchedTcp {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let Self { tcp, outbox } = self.get_mut();
        // A reader may be all that polls this connection while its last bytes wait for room.
        if let Some(outbox) = outbox
            && outbox.lock().stuck
            && let Poll::Ready(Err(e)) = drain(tcp, outbox, cx)
        {
            return Poll::Ready(Err(e));
        }
        Pin::new(tcp).poll_read(cx, buf)
    }
}

impl AsyncWrite for BatchedTcp {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let Self { tcp, outbox } = self.get_mut();
        match outbox {
            None => Pin::new(tcp).poll_write(cx, buf),
            Some(outbox) => put(tcp, outbox, cx, &[io::IoSlice::new(buf)]),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let Self { tcp, outbox } = self.get_mut();
        match outbox {
            None => Pin::new(tcp).poll_write_vectored(cx, bufs),
            Some(outbox) => put(tcp, outbox, cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.outbox.is_some() || self.tcp.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // Queued bytes leave at the end of this turn; only a connection whose send fell short
        // writes here.
        let Some(outbox) = &self.outbox else {
            return Poll::Ready(Ok(()));
        };
        let state = outbox.lock();
        if let Some(kind) = state.error {
            return Poll::Ready(Err(kind.into()));
        }
        if !state.stuck {
            return Poll::Ready(Ok(()));
        }
        drop(state);
        drain(&self.tcp, outbox, cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let Self { tcp, outbox } = self.get_mut();
        if let Some(outbox) = outbox {
            ready!(drain(tcp, outbox, cx))?;
        }
        Pin::new(tcp).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests;
