//! `instance-server`: the "image" the auto scaling lab's launch templates run. A small
//! HTTP/1.1 server that says which instance answered, burns CPU on request (so target
//! tracking on CPU utilisation has something to measure) and streams long downloads (so a
//! scale-in test can check that a draining instance delivers every byte).
//!
//! Paths (GET or HEAD; every answer carries `x-instance-id`):
//! - `/`: `INSTANCE_ID\n`.
//! - `/health`: `ok`.
//! - `/burn?ms=N`: burns N ms of CPU time (N <= 10000) on a blocking thread, then 200.
//! - `/stream?seconds=S&bytes_per_second=B`: a chunked body of exactly S*B bytes, a chunk
//!   every 100 ms over S seconds (S <= 600, B <= 64 MiB); byte k of the body is
//!   `b'a' + k % 26`, so a client can check what arrived as well as how much.
//!
//! On SIGTERM it stops accepting, lets requests in flight finish (at most 30 s), and exits 0,
//! as a well-behaved instance does when its group terminates it after draining.
//!
//! Every request is logged to stdout as one line, `INSTANCE PEER "METHOD PATH" STATUS MSms`,
//! when its head is sent (MS: the time to the head; a stream's body is still to come).
//! At start, each bound address is printed as `listening on ADDR` (with `--port 0`, the port
//! the kernel chose), which is how a test finds it.

use std::{
    convert::Infallible,
    io::Write as _,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    process::ExitCode,
    sync::Arc,
    time::{Duration, Instant},
};

use clap::Parser;
use futures_util::stream;
use http_body_util::{BodyExt as _, Full, StreamBody, combinators::BoxBody};
use hyper::{
    Method, Request, Response, StatusCode,
    body::{Bytes, Frame, Incoming},
    header::{self, HeaderValue},
    server::conn::http1,
    service::service_fn,
};
use hyper_util::rt::TokioIo;
use tokio::{
    net::TcpListener,
    signal::unix::{SignalKind, signal},
    sync::watch,
    task::JoinSet,
};

/// Longest CPU burn a request may ask for: one request never occupies a core for long.
const MAX_BURN: Duration = Duration::from_secs(10);
/// Longest stream a request may ask for: longer than any lab test runs.
const MAX_STREAM_SECONDS: u64 = 600;
/// Fastest stream a request may ask for: a chunk (a tenth of it) stays a few MiB.
const MAX_BYTES_PER_SECOND: u64 = 64 << 20;
/// How often a stream sends a chunk.
const STREAM_TICK: Duration = Duration::from_millis(100);
/// How long requests in flight get to finish after SIGTERM (a group's stop timeout is 30 s
/// by default; this must not outlast it by much, or the instance is killed mid-answer).
const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Parser)]
#[command(
    name = "instance-server",
    about = "The auto scaling lab's instance: HTTP/1.1 with /, /health, /burn and /stream"
)]
struct Args {
    /// The port to listen on (0: one the kernel picks, the same on every address).
    #[arg(long, default_value_t = 8080)]
    port: u16,
    /// The addresses to listen on (repeatable); default 0.0.0.0 and [::], where an address
    /// family the host lacks is skipped with a warning.
    #[arg(long)]
    listen: Vec<IpAddr>,
}

type Body = BoxBody<Bytes, Infallible>;

fn main() -> ExitCode {
    let args = Args::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("instance-server: tokio runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(serve(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("instance-server: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(args: Args) -> Result<(), String> {
    let instance: Arc<str> = std::env::var("INSTANCE_ID")
        .unwrap_or_else(|_| "unknown".to_owned())
        .into();
    let header_value = HeaderValue::from_str(&instance)
        .map_err(|_| format!("INSTANCE_ID `{instance}` cannot be an HTTP header value"))?;
    // Installed before binding: a SIGTERM that arrives once the port answers is always ours.
    let mut sigterm = signal(SignalKind::terminate()).map_err(|e| format!("SIGTERM: {e}"))?;
    let listeners = bind_all(&args)?;
    for listener in &listeners {
        if let Ok(addr) = listener.local_addr() {
            log_line(&format!("listening on {addr}"));
        }
    }

    let instance = Arc::new(Instance {
        id: instance,
        header: header_value,
    });
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut connections = JoinSet::new();
    let mut accepts = JoinSet::new();
    let (conn_tx, mut conn_rx) = tokio::sync::mpsc::channel(64);
    for listener in listeners {
        let conn_tx = conn_tx.clone();
        accepts.spawn(async move {
            loop {
                match listener.accept().await {
                    Ok(accepted) => {
                        if conn_tx.send(accepted).await.is_err() {
                            return;
                        }
                    }
                    // Out of descriptors and the like: try again shortly rather than spin.
                    Err(e) => {
                        eprintln!("accept: {e}");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            }
        });
    }
    drop(conn_tx);

    loop {
        tokio::select! {
            _ = sigterm.recv() => break,
            accepted = conn_rx.recv() => {
                let Some((stream, peer)) = accepted else { break };
                connections.spawn(serve_connection(stream, peer, instance.clone(), stop_rx.clone()));
            }
            // Reap finished connections so the set does not grow with every one served.
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }

    // Stop accepting: the listening sockets close, new connections are refused.
    accepts.shutdown().await;
    drop(conn_rx);
    let in_flight = connections.len();
    log_line(&format!(
        "SIGTERM: stopped accepting; {in_flight} connections finishing"
    ));
    let _ = stop_tx.send(true);
    let drained = tokio::time::timeout(DRAIN_TIMEOUT, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        log_line(&format!(
            "SIGTERM: {} connections still open after {}s, closing them",
            connections.len(),
            DRAIN_TIMEOUT.as_secs()
        ));
        connections.shutdown().await;
    }
    log_line("stopped");
    Ok(())
}

/// Binds `--listen` (or both wildcards) on `--port`. With port 0 the first address picks the
/// port and the others take the same, so the instance serves one port on every address.
fn bind_all(args: &Args) -> Result<Vec<TcpListener>, String> {
    let defaults = args.listen.is_empty();
    let addresses = if defaults {
        vec![
            IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            IpAddr::V6(Ipv6Addr::UNSPECIFIED),
        ]
    } else {
        args.listen.clone()
    };
    let mut port = args.port;
    let mut listeners = Vec::new();
    for address in addresses {
        match bind(SocketAddr::new(address, port)) {
            Ok(listener) => {
                if port == 0 {
                    port = listener.local_addr().map_or(0, |a| a.port());
                }
                listeners.push(listener);
            }
            // A namespace without IPv6 (or IPv4) still serves the family it has.
            Err(e) if defaults => eprintln!("instance-server: skipping {address}: {e}"),
            Err(e) => return Err(format!("binding {address} port {port}: {e}")),
        }
    }
    if listeners.is_empty() {
        return Err(format!("no address could be bound on port {port}"));
    }
    Ok(listeners)
}

/// A listening socket on `addr`; an IPv6 one takes IPv6 only, so that `[::]` and `0.0.0.0`
/// can share a port (a dual-stack `[::]` would already hold the IPv4 side).
fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        Some(socket2::Protocol::TCP),
    )?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    // A restarted instance rebinds at once although its old connections sit in TIME_WAIT.
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    TcpListener::from_std(socket.into())
}

/// What every answer carries.
struct Instance {
    id: Arc<str>,
    header: HeaderValue,
}

/// Serves one connection until it closes; once `stop` turns true, finishes the request in
/// flight (its whole body) and closes instead of waiting for another.
async fn serve_connection(
    stream: tokio::net::TcpStream,
    peer: SocketAddr,
    instance: Arc<Instance>,
    mut stop: watch::Receiver<bool>,
) {
    let service = service_fn(move |req| answer(req, peer, instance.clone()));
    let conn = http1::Builder::new().serve_connection(TokioIo::new(stream), service);
    tokio::pin!(conn);
    let stopping = async move {
        // The watch's guard is dropped here, before the connection is awaited again (it
        // may not be held across an await of a task that moves between threads).
        let _ = stop.wait_for(|stop| *stop).await;
    };
    let result = tokio::select! {
        result = conn.as_mut() => result,
        () = stopping => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = result {
        eprintln!("connection from {peer}: {e}");
    }
}

async fn answer(
    req: Request<Incoming>,
    peer: SocketAddr,
    instance: Arc<Instance>,
) -> Result<Response<Body>, Infallible> {
    let started = Instant::now();
    let method = req.method().clone();
    let target = req
        .uri()
        .path_and_query()
        .map_or_else(|| req.uri().path().to_owned(), |p| p.as_str().to_owned());
    let query = req.uri().query().unwrap_or("");
    let mut response = if method != Method::GET && method != Method::HEAD {
        text(StatusCode::METHOD_NOT_ALLOWED, "GET or HEAD only\n".into())
    } else {
        match req.uri().path() {
            "/" => text(StatusCode::OK, format!("{}\n", instance.id)),
            "/health" => text(StatusCode::OK, "ok".into()),
            "/burn" => burn(query).await,
            "/stream" => stream_body(query),
            _ => text(StatusCode::NOT_FOUND, "no such path\n".into()),
        }
    };
    response
        .headers_mut()
        .insert("x-instance-id", instance.header.clone());
    log_line(&format!(
        "{} {peer} \"{method} {target}\" {} {}ms",
        instance.id,
        response.status().as_u16(),
        started.elapsed().as_millis()
    ));
    Ok(response)
}

/// `/burn?ms=N`: N ms of this thread's CPU time, on a blocking thread so the server keeps
/// answering meanwhile. CPU time rather than wall time: under a cgroup quota a request costs
/// the same CPU however throttled the instance is, as real work does.
async fn burn(query: &str) -> Response<Body> {
    let ms = match number_param(query, "ms") {
        Ok(Some(ms)) => ms,
        Ok(None) => return text(StatusCode::BAD_REQUEST, "/burn needs ms=N\n".into()),
        Err(e) => return text(StatusCode::BAD_REQUEST, e),
    };
    let wanted = Duration::from_millis(ms);
    if wanted > MAX_BURN {
        return text(
            StatusCode::BAD_REQUEST,
            format!("ms={ms} is more than {}\n", MAX_BURN.as_millis()),
        );
    }
    match tokio::task::spawn_blocking(move || burn_cpu(wanted)).await {
        Ok(burned) => text(
            StatusCode::OK,
            format!("burned {}ms of CPU\n", burned.as_millis()),
        ),
        Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, format!("burn: {e}\n")),
    }
}

/// Spins until this thread has used `wanted` of CPU time; gives up after ten times that in
/// wall time (a throttled instance still answers, having burned less). The CPU time it used.
fn burn_cpu(wanted: Duration) -> Duration {
    let start = thread_cpu_time();
    let deadline = Instant::now() + wanted * 10;
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    loop {
        // A few thousand rounds of xorshift between clock reads: the clock call itself
        // stays a small share of the burn.
        for _ in 0..4096 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
        }
        std::hint::black_box(x);
        let used = thread_cpu_time().saturating_sub(start);
        if used >= wanted || Instant::now() >= deadline {
            return used;
        }
    }
}

/// The calling thread's CPU time (CLOCK_THREAD_CPUTIME_ID).
fn thread_cpu_time() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; the clock id is a constant Linux supports.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    if rc != 0 {
        return Duration::ZERO;
    }
    Duration::new(
        u64::try_from(ts.tv_sec).unwrap_or(0),
        u32::try_from(ts.tv_nsec).unwrap_or(0),
    )
}

/// `/stream?seconds=S&bytes_per_second=B`: S*B bytes in chunks every 100 ms. Chunk i ends
/// at byte `total * (i+1) / ticks`, so the chunks add up to exactly the total whatever the
/// rounding.
fn stream_body(query: &str) -> Response<Body> {
    let (seconds, rate) = match (
        number_param(query, "seconds"),
        number_param(query, "bytes_per_second"),
    ) {
        (Ok(Some(s)), Ok(Some(b))) => (s, b),
        (Err(e), _) | (_, Err(e)) => return text(StatusCode::BAD_REQUEST, e),
        _ => {
            return text(
                StatusCode::BAD_REQUEST,
                "/stream needs seconds=S and bytes_per_second=B\n".into(),
            );
        }
    };
    if seconds > MAX_STREAM_SECONDS || rate > MAX_BYTES_PER_SECOND {
        return text(
            StatusCode::BAD_REQUEST,
            format!(
                "at most seconds={MAX_STREAM_SECONDS} and bytes_per_second={MAX_BYTES_PER_SECOND}\n"
            ),
        );
    }
    let total = seconds * rate;
    let ticks_per_second = (Duration::from_secs(1).as_millis() / STREAM_TICK.as_millis()) as u64;
    let ticks = seconds * ticks_per_second;
    let start = tokio::time::Instant::now();
    let body = stream::unfold(0u64, move |i| async move {
        if i >= ticks {
            return None;
        }
        let from = chunk_end(total, ticks, i);
        let to = chunk_end(total, ticks, i + 1);
        // Against the start, not the last chunk: the stream takes S seconds however long
        // each write took.
        let due = start + STREAM_TICK * u32::try_from(i + 1).unwrap_or(u32::MAX);
        tokio::time::sleep_until(due).await;
        let chunk: Vec<u8> = (from..to).map(pattern_byte).collect();
        Some((Ok::<_, Infallible>(Frame::data(Bytes::from(chunk))), i + 1))
    });
    let mut response = Response::new(StreamBody::new(body).boxed());
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    response
}

/// Where chunk `i` of `ticks` ends in a body of `total` bytes.
fn chunk_end(total: u64, ticks: u64, i: u64) -> u64 {
    // u128: total * i overflows u64 near the bounds' product (600 s * 64 MiB * 6000).
    (u128::from(total) * u128::from(i) / u128::from(ticks.max(1))) as u64
}

/// Byte `offset` of every stream.
fn pattern_byte(offset: u64) -> u8 {
    b'a' + (offset % 26) as u8
}

/// `key`'s value in `query` as a number; none if absent.
fn number_param(query: &str, key: &str) -> Result<Option<u64>, String> {
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        if k == key {
            return v
                .parse()
                .map(Some)
                .map_err(|_| format!("{key}=`{v}` is not a whole number\n"));
        }
    }
    Ok(None)
}

fn text(status: StatusCode, body: String) -> Response<Body> {
    let mut response = Response::new(Full::new(Bytes::from(body)).boxed());
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    response
}

/// One line on stdout; a closed stdout is no reason to stop serving (`println!` would panic).
fn log_line(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_add_up_to_the_exact_total_whatever_the_rounding() {
        for (total, ticks) in [(0, 0), (0, 10), (7, 10), (1000, 10), (123_457, 30)] {
            let sizes: Vec<u64> = (0..ticks)
                .map(|i| chunk_end(total, ticks, i + 1) - chunk_end(total, ticks, i))
                .collect();
            assert_eq!(sizes.iter().sum::<u64>(), total, "{total} in {ticks}");
            if let (Some(min), Some(max)) = (sizes.iter().min(), sizes.iter().max()) {
                assert!(max - min <= 1, "{total} in {ticks}: {sizes:?}");
            }
        }
    }

    #[test]
    fn the_largest_stream_allowed_does_not_overflow() {
        let ticks = MAX_STREAM_SECONDS * 10;
        let total = MAX_STREAM_SECONDS * MAX_BYTES_PER_SECOND;
        assert_eq!(chunk_end(total, ticks, ticks), total);
    }

    #[test]
    fn query_numbers_are_read_and_garbage_refused() {
        assert_eq!(number_param("ms=250", "ms"), Ok(Some(250)));
        assert_eq!(number_param("a=1&ms=3", "ms"), Ok(Some(3)));
        assert_eq!(number_param("a=1", "ms"), Ok(None));
        assert!(number_param("ms=-1", "ms").is_err());
        assert!(number_param("ms", "ms").is_err());
    }

    #[test]
    fn a_burn_uses_about_the_cpu_time_asked() {
        let used = burn_cpu(Duration::from_millis(30));
        assert!(used >= Duration::from_millis(30), "{used:?}");
    }
}
