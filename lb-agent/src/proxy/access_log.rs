//! The access log: one record per request of an `http`/`https` listener and per connection of
//! a `tls` listener, written as JSON or text lines (`format`) to a file or standard error.
//!
//! The request path never waits for it: [`AccessLog::record`] hands the record to a bounded
//! channel and returns; a writer thread formats it and writes through a buffer. When the
//! writer falls behind (a slow disk) and the channel is full, records are dropped and counted
//! ([`AccessLog::dropped`]) rather than slowing the requests down. The writer flushes whenever
//! the channel runs empty and at least every [`FLUSH_INTERVAL`] while it does not, and flushes
//! and ends when the last handle is dropped.

mod format;

use std::{
    fs::OpenOptions,
    io::{self, BufWriter, Write},
    net::SocketAddr,
    os::unix::fs::OpenOptionsExt,
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
        mpsc::{Receiver, SyncSender, TryRecvError, TrySendError, sync_channel},
    },
    thread::JoinHandle,
    time::{Duration, Instant, SystemTime},
};

use crate::config::{AccessLogConfig, AccessLogFormat};

/// Records waiting for the writer; one more is dropped. At a few hundred bytes a record,
/// a full channel holds some tens of MB: seconds of a busy listener's requests.
pub const CHANNEL_CAPACITY: usize = 65_536;

/// The longest a written line waits in the buffer while records keep arriving.
pub const FLUSH_INTERVAL: Duration = Duration::from_millis(200);

/// The writer's buffer: lines reach the file in writes of up to this many bytes.
const BUFFER_BYTES: usize = 64 * 1024;

/// One request (or `tls` listener connection) as the access log shows it.
#[derive(Debug, Clone)]
pub struct AccessRecord {
    /// When the request arrived.
    pub time: SystemTime,
    pub client: SocketAddr,
    pub listener: Arc<str>,
    /// Priority of the rule that matched; none: the default action.
    pub rule: Option<u32>,
    pub target_group: Option<Arc<str>>,
    pub target: Option<SocketAddr>,
    /// None for a `tls` listener's connection.
    pub method: Option<hyper::Method>,
    pub host: Option<String>,
    /// Path and query as received.
    pub uri: Option<String>,
    /// `HTTP/1.1`, `HTTP/2`, `TCP`.
    pub version: &'static str,
    /// 0 for a `tls` listener's connection.
    pub status: u16,
    /// Body bytes (or TCP payload) from the client.
    pub bytes_in: u64,
    /// Body bytes (or TCP payload) to the client.
    pub bytes_out: u64,
    /// Arrival to sent to the target (routing, connecting).
    pub request_duration: Duration,
    /// Sent to the target's response head; none when the target was not reached.
    pub target_duration: Option<Duration>,
    /// Arrival to the last byte sent to the client.
    pub response_duration: Duration,
    pub tls_version: Option<&'static str>,
    pub tls_cipher: Option<&'static str>,
    pub sni: Option<String>,
    pub request_id: Option<String>,
    pub user_agent: Option<String>,
    /// Why the load balancer answered itself: `no_target_in_service`, `target_connect_failed`,
    /// `target_timeout`, `bad_request`, ...
    pub error: Option<&'static str>,
}

/// Why the access log could not start.
#[derive(Debug, thiserror::Error)]
pub enum AccessLogError {
    /// The log file could not be opened for appending (config: the path or its permissions).
    #[error("cannot open the access log {}: {source}", path.display())]
    Open {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        source: io::Error,
    },
    /// The writer thread could not be started (the node: out of threads or memory).
    #[error("cannot start the access log's writer thread: {0}")]
    Spawn(io::Error),
}

/// A handle on the access log: cheap to clone, one per listener or connection task. The writer
/// ends, after writing everything handed to it, when the last handle is dropped.
#[derive(Clone)]
pub struct AccessLog {
    shared: Arc<Shared>,
}

/// What the handles share; dropped with the last of them.
struct Shared {
    /// Always `Some` until the drop, which takes it to close the channel.
    records: Option<SyncSender<AccessRecord>>,
    dropped: DropCounter,
    /// Always `Some` until the drop, which joins it.
    writer: Option<JoinHandle<()>>,
}

impl AccessLog {
    /// Opens (creates, mode 0640, or appends to) the configured file now, so that a bad path
    /// fails the start or the reload, and starts the writer.
    pub fn open(config: &AccessLogConfig) -> Result<Self, AccessLogError> {
        let sink: Box<dyn Write + Send> = if config.to_stderr() {
            Box::new(io::stderr())
        } else {
            let file = OpenOptions::new()
                .create(true)
                .append(true)
                .mode(0o640)
                .open(&config.path)
                .map_err(|source| AccessLogError::Open {
                    path: config.path.clone(),
                    source,
                })?;
            Box::new(file)
        };
        Self::start(sink, config.format, CHANNEL_CAPACITY)
    }

    /// A log writing to `sink`, holding at most `capacity` records in waiting.
    fn start(
        sink: Box<dyn Write + Send>,
        format: AccessLogFormat,
        capacity: usize,
    ) -> Result<Self, AccessLogError> {
        let (records, waiting) = sync_channel(capacity);
        let writer = std::thread::Builder::new()
            .name("access-log".to_owned())
            .spawn(move || write_records(&waiting, sink, format))
            .map_err(AccessLogError::Spawn)?;
        Ok(Self {
            shared: Arc::new(Shared {
                records: Some(records),
                dropped: DropCounter::default(),
                writer: Some(writer),
            }),
        })
    }

    /// Hands `record` to the writer; never blocks and does no I/O. A record that finds the
    /// channel full is dropped and counted.
    pub fn record(&self, record: AccessRecord) {
        let Some(records) = &self.shared.records else {
            return;
        };
        match records.try_send(record) {
            Ok(()) => {}
            // Disconnected: the writer thread is gone (it never ends while a handle lives,
            // so only a panic there); counted like a full channel.
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                self.shared.dropped.0.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Records dropped because the writer fell behind.
    pub fn dropped(&self) -> u64 {
        self.shared.dropped.get()
    }

    /// The count of dropped records, readable without keeping the log open (for metrics).
    pub fn drop_counter(&self) -> DropCounter {
        self.shared.dropped.clone()
    }
}

/// Records a log dropped; it outlives the log so that `/metrics` can hold it.
#[derive(Debug, Clone, Default)]
pub struct DropCounter(Arc<AtomicU64>);

impl DropCounter {
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

impl std::fmt::Debug for AccessLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccessLog")
            .field("dropped", &self.dropped())
            .finish_non_exhaustive()
    }
}

impl Drop for Shared {
    /// Closes the channel and waits for the writer to write what is left and flush, so that
    /// nothing handed to the log is lost at shutdown or when a reload replaces the log.
    fn drop(&mut self) {
        drop(self.records.take());
        if let Some(writer) = self.writer.take()
            && writer.join().is_err()
        {
            tracing::error!("the access log's writer thread panicked");
        }
    }
}

/// The writer thread: formats and writes every record until all senders are gone.
fn write_records(
    records: &Receiver<AccessRecord>,
    sink: Box<dyn Write + Send>,
    format: AccessLogFormat,
) {
    let mut out = Output {
        sink: BufWriter::with_capacity(BUFFER_BYTES, sink),
        format,
        line: String::with_capacity(512),
        failing: false,
        last_flush: Instant::now(),
    };
    // Blocks while there is nothing to write: an idle log costs no wake-ups.
    while let Ok(record) = records.recv() {
        out.write(&record);
        loop {
            match records.try_recv() {
                Ok(record) => {
                    out.write(&record);
                    if out.last_flush.elapsed() >= FLUSH_INTERVAL {
                        out.flush();
                    }
                }
                Err(TryRecvError::Empty) => {
                    out.flush();
                    break;
                }
                Err(TryRecvError::Disconnected) => {
                    out.flush();
                    return;
                }
            }
        }
    }
    out.flush();
}

/// The writer thread's side: the buffered sink and the state of its errors.
struct Output {
    sink: BufWriter<Box<dyn Write + Send>>,
    format: AccessLogFormat,
    /// Reused for every line.
    line: String,
    /// Whether the last write failed (errors are logged when they start and when they end,
    /// not once per line).
    failing: bool,
    last_flush: Instant,
}

impl Output {
    fn write(&mut self, record: &AccessRecord) {
        self.line.clear();
        match self.format {
            AccessLogFormat::Json => format::json_line(record, &mut self.line),
            AccessLogFormat::Text => format::text_line(record, &mut self.line),
        }
        // One write per line: the buffer reaches the sink only at line boundaries, so lines
        // are never torn (nor mixed with the agent's own logs on standard error).
        let written = self.sink.write_all(self.line.as_bytes());
        self.outcome(written);
    }

    fn flush(&mut self) {
        let flushed = self.sink.flush();
        self.last_flush = Instant::now();
        self.outcome(flushed);
    }

    fn outcome(&mut self, result: io::Result<()>) {
        match (result, self.failing) {
            (Err(e), false) => {
                tracing::warn!(error = %e, "writing the access log failed; lines are lost until it works again");
                self.failing = true;
            }
            (Ok(()), true) => {
                tracing::info!("writing the access log works again");
                self.failing = false;
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Condvar, Mutex, PoisonError};

    use super::*;

    fn record(n: u16) -> AccessRecord {
        AccessRecord {
            time: SystemTime::UNIX_EPOCH,
            client: "198.18.0.1:40000".parse().expect("addr"),
            listener: Arc::from("web"),
            rule: None,
            target_group: Some(Arc::from("web")),
            target: Some("198.18.2.2:8080".parse().expect("addr")),
            method: Some(hyper::Method::GET),
            host: Some("example.com".to_owned()),
            uri: Some(format!("/{n}")),
            version: "HTTP/1.1",
            status: 200,
            bytes_in: 0,
            bytes_out: 2,
            request_duration: Duration::ZERO,
            target_duration: Some(Duration::ZERO),
            response_duration: Duration::ZERO,
            tls_version: None,
            tls_cipher: None,
            sni: None,
            request_id: None,
            user_agent: None,
            error: None,
        }
    }

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("lb-access-log-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temp dir");
        dir
    }

    fn config(path: PathBuf, format: AccessLogFormat) -> AccessLogConfig {
        AccessLogConfig { path, format }
    }

    #[test]
    fn dropping_the_last_handle_writes_and_flushes_every_record() {
        let dir = temp_dir("flush");
        let path = dir.join("access.log");
        let log = AccessLog::open(&config(path.clone(), AccessLogFormat::Text)).expect("open");
        let clone = log.clone();
        for n in 0..500 {
            clone.record(record(n));
        }
        drop(clone);
        drop(log);
        let text = std::fs::read_to_string(&path).expect("read");
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 500, "{text}");
        assert!(lines[0].contains("\"GET /0 HTTP/1.1\""), "{}", lines[0]);
        assert!(
            lines[499].contains("\"GET /499 HTTP/1.1\""),
            "{}",
            lines[499]
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn an_existing_log_is_appended_to() {
        let dir = temp_dir("append");
        let path = dir.join("access.log");
        std::fs::write(&path, "earlier line\n").expect("write");
        let log = AccessLog::open(&config(path.clone(), AccessLogFormat::Json)).expect("open");
        log.record(record(1));
        drop(log);
        let text = std::fs::read_to_string(&path).expect("read");
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2, "{text}");
        assert_eq!(lines[0], "earlier line");
        assert!(
            lines[1].starts_with("{\"time\":\"1970-01-01T00:00:00.000Z\""),
            "{text}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_path_that_cannot_be_opened_fails_at_open() {
        let dir = temp_dir("bad-path");
        let path = dir.join("no-such-dir").join("access.log");
        let e = AccessLog::open(&config(path, AccessLogFormat::Json)).expect_err("no directory");
        assert!(matches!(e, AccessLogError::Open { .. }), "{e}");
        assert!(e.to_string().contains("no-such-dir/access.log"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A sink whose writes block until the test opens it, and that keeps what it got.
    #[derive(Clone, Default)]
    struct Gate {
        state: Arc<(Mutex<GateState>, Condvar)>,
    }

    #[derive(Default)]
    struct GateState {
        open: bool,
        /// A write has started (and waits for the gate).
        entered: bool,
        written: Vec<u8>,
    }

    impl Gate {
        fn wait_entered(&self) {
            let (lock, changed) = &*self.state;
            let guard = lock.lock().unwrap_or_else(PoisonError::into_inner);
            let (guard, timeout) = changed
                .wait_timeout_while(guard, Duration::from_secs(10), |s| !s.entered)
                .unwrap_or_else(PoisonError::into_inner);
            assert!(
                !timeout.timed_out() && guard.entered,
                "the writer never wrote"
            );
        }

        fn open(&self) {
            let (lock, changed) = &*self.state;
            lock.lock().unwrap_or_else(PoisonError::into_inner).open = true;
            changed.notify_all();
        }

        fn written(&self) -> String {
            let (lock, _) = &*self.state;
            let state = lock.lock().unwrap_or_else(PoisonError::into_inner);
            String::from_utf8_lossy(&state.written).into_owned()
        }
    }

    impl Write for Gate {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            let (lock, changed) = &*self.state;
            let mut state = lock.lock().unwrap_or_else(PoisonError::into_inner);
            state.entered = true;
            changed.notify_all();
            // Bounded, so that a broken test fails instead of hanging.
            let (mut state, _) = changed
                .wait_timeout_while(state, Duration::from_secs(10), |s| !s.open)
                .unwrap_or_else(PoisonError::into_inner);
            state.written.extend_from_slice(buf);
            Ok(buf.len())
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn records_beyond_a_full_channel_are_dropped_and_counted_without_blocking() {
        let gate = Gate::default();
        let log =
            AccessLog::start(Box::new(gate.clone()), AccessLogFormat::Text, 4).expect("start");
        // The writer takes the first record and blocks writing it.
        log.record(record(0));
        gate.wait_entered();
        assert_eq!(log.dropped(), 0);
        // Four wait in the channel; the next three find it full.
        let started = Instant::now();
        for n in 1..=7 {
            log.record(record(n));
        }
        assert!(started.elapsed() < Duration::from_secs(1), "record blocked");
        assert_eq!(log.dropped(), 3);
        let counter = log.drop_counter();
        gate.open();
        drop(log);
        assert_eq!(counter.get(), 3);
        let written = gate.written();
        let uris: Vec<&str> = written
            .lines()
            .filter_map(|l| l.split('"').nth(1))
            .collect();
        assert_eq!(
            uris,
            [
                "GET /0 HTTP/1.1",
                "GET /1 HTTP/1.1",
                "GET /2 HTTP/1.1",
                "GET /3 HTTP/1.1",
                "GET /4 HTTP/1.1"
            ],
            "{written}"
        );
    }

    #[test]
    fn metrics_count_the_drops_of_every_log_across_a_replacement() {
        let gate = Gate::default();
        let log =
            AccessLog::start(Box::new(gate.clone()), AccessLogFormat::Json, 1).expect("start");
        let metrics = crate::proxy::metrics::ProxyMetrics::new();
        metrics.watch_access_log(Some(&log));
        log.record(record(0));
        gate.wait_entered();
        for n in 1..=3 {
            log.record(record(n));
        }
        let dropped = |metrics: &crate::proxy::metrics::ProxyMetrics| {
            let mut text = String::new();
            metrics.render(&mut text).expect("render");
            text.lines()
                .find_map(|l| l.strip_prefix("lb_access_log_dropped_total "))
                .map(str::to_owned)
        };
        assert_eq!(dropped(&metrics).as_deref(), Some("2"));
        // A reload replaces the log: the count goes on from there.
        gate.open();
        drop(log);
        let next = AccessLog::start(Box::new(io::sink()), AccessLogFormat::Json, 1).expect("start");
        metrics.watch_access_log(Some(&next));
        assert_eq!(dropped(&metrics).as_deref(), Some("2"));
        metrics.watch_access_log(None);
        assert_eq!(dropped(&metrics).as_deref(), Some("2"));
    }
}
