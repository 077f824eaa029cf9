//! The auto scaling lab's instance server (`instance-server`), run as a process on loopback:
//! each endpoint's answer, and that SIGTERM lets a download in flight finish before exiting 0.
//! No root, no namespaces.

use std::{
    io::{BufRead as _, BufReader, ErrorKind, Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    process::{Child, Command, ExitStatus, Stdio},
    sync::mpsc::{self, Receiver},
    thread,
    time::{Duration, Instant},
};

const INSTANCE_ID: &str = "i-0abc123";

/// A running instance server; killed on drop if the test did not stop it.
struct Server {
    child: Child,
    /// Its stdout, a line at a time.
    lines: Receiver<String>,
    /// Every address it printed as `listening on ADDR`.
    addresses: Vec<SocketAddr>,
}

impl Server {
    /// Starts one with `args` and waits until it listens.
    fn start(args: &[&str]) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_instance-server"))
            .args(args)
            .env("INSTANCE_ID", INSTANCE_ID)
            .stdout(Stdio::piped())
            .spawn()
            .expect("instance-server starts");
        let stdout = child.stdout.take().expect("stdout piped");
        let (tx, lines) = mpsc::channel();
        // Drained on a thread: a server whose stdout pipe fills would block in its log.
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        let mut server = Self {
            child,
            lines,
            addresses: Vec::new(),
        };
        // Both wildcards print a line; a loopback-only server prints one.
        let wanted = if args.contains(&"--listen") { 1 } else { 2 };
        let deadline = Instant::now() + Duration::from_secs(10);
        while server.addresses.len() < wanted && Instant::now() < deadline {
            let Ok(line) = server.lines.recv_timeout(Duration::from_millis(200)) else {
                if server.child.try_wait().expect("wait").is_some() {
                    break;
                }
                continue;
            };
            if let Some(addr) = line.strip_prefix("listening on ") {
                server
                    .addresses
                    .push(addr.parse().expect("a socket address"));
            }
        }
        assert!(
            !server.addresses.is_empty(),
            "instance-server did not say where it listens"
        );
        server
    }

    /// On 127.0.0.1 and a port the kernel picks.
    fn on_loopback() -> Self {
        Self::start(&["--port", "0", "--listen", "127.0.0.1"])
    }

    fn addr(&self) -> SocketAddr {
        self.addresses[0]
    }

    fn sigterm(&self) {
        let pid = libc::pid_t::try_from(self.child.id()).expect("pid fits");
        // SAFETY: a plain kill(2) of our own child.
        assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    }

    /// Its exit status, waiting at most `wait`.
    fn exit_within(&mut self, wait: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + wait;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return Some(status);
            }
            thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// The next `count` request lines of its log (waiting at most 5 s for them).
    fn request_lines(&self, count: usize) -> Vec<String> {
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut lines = Vec::new();
        while lines.len() < count && Instant::now() < deadline {
            if let Ok(line) = self.lines.recv_timeout(Duration::from_millis(100))
                && line.contains("\"GET ")
            {
                lines.push(line);
            }
        }
        lines
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One answer, read until the server closed the connection.
#[derive(Debug)]
struct Answer {
    status: u16,
    head: String,
    body: Vec<u8>,
    /// The body came chunked and its last (empty) chunk arrived: nothing was cut.
    chunked_and_complete: bool,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().skip(1).find_map(|line| {
            let (k, v) = line.split_once(':')?;
            k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }
}

/// `GET path` on a connection of its own (`Connection: close`), waiting at most 30 s.
fn get(addr: SocketAddr, path: &str) -> Answer {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connects");
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: instance\r\nConnection: close\r\n\r\n"
    )
    .expect("request sent");
    let mut raw = Vec::new();
    match stream.read_to_end(&mut raw) {
        Ok(_) => {}
        Err(e) if e.kind() == ErrorKind::ConnectionReset => {}
        Err(e) => panic!("reading {path}: {e}"),
    }
    parse(&raw)
}

fn parse(raw: &[u8]) -> Answer {
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a complete head");
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let rest = &raw[split + 4..];
    let status = head
        .strip_prefix("HTTP/1.1 ")
        .and_then(|r| r.get(..3))
        .and_then(|c| c.parse().ok())
        .expect("a status line");
    let mut answer = Answer {
        status,
        head,
        body: Vec::new(),
        chunked_and_complete: false,
    };
    if answer
        .header("transfer-encoding")
        .is_some_and(|v| v.eq_ignore_ascii_case("chunked"))
    {
        let (body, complete) = dechunk(rest);
        answer.body = body;
        answer.chunked_and_complete = complete;
    } else {
        answer.body = rest.to_vec();
    }
    answer
}

/// A chunked body's bytes, and whether its terminating chunk arrived.
fn dechunk(mut rest: &[u8]) -> (Vec<u8>, bool) {
    let mut body = Vec::new();
    loop {
        let Some(line_end) = rest.windows(2).position(|w| w == b"\r\n") else {
            return (body, false);
        };
        let size_text = String::from_utf8_lossy(&rest[..line_end]);
        let Ok(size) = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
        else {
            return (body, false);
        };
        rest = &rest[line_end + 2..];
        if size == 0 {
            return (body, true);
        }
        if rest.len() < size + 2 {
            body.extend_from_slice(&rest[..rest.len().min(size)]);
            return (body, false);
        }
        body.extend_from_slice(&rest[..size]);
        rest = &rest[size + 2..];
    }
}

/// Byte k of every stream is `a` + k mod 26.
fn assert_stream_bytes(body: &[u8], expected_len: usize) {
    assert_eq!(body.len(), expected_len, "stream length");
    if let Some(k) = (0..body.len()).find(|&k| body[k] != b'a' + (k % 26) as u8) {
        panic!("stream byte {k} is {:?}", body[k] as char);
    }
}

#[test]
fn the_root_answers_the_instance_id_in_the_body_and_a_header() {
    let server = Server::on_loopback();
    let a = get(server.addr(), "/");
    assert_eq!(a.status, 200);
    assert_eq!(a.body, format!("{INSTANCE_ID}\n").as_bytes());
    assert_eq!(a.header("x-instance-id"), Some(INSTANCE_ID));
}

#[test]
fn health_is_ok_and_unknown_paths_are_404() {
    let server = Server::on_loopback();
    let a = get(server.addr(), "/health");
    assert_eq!((a.status, a.body.as_slice()), (200, b"ok".as_slice()));
    assert_eq!(a.header("x-instance-id"), Some(INSTANCE_ID));
    assert_eq!(get(server.addr(), "/nothing").status, 404);
}

#[test]
fn burn_spends_the_cpu_asked_and_refuses_more_than_ten_seconds() {
    let server = Server::on_loopback();
    let started = Instant::now();
    let a = get(server.addr(), "/burn?ms=200");
    assert_eq!(a.status, 200, "{}", String::from_utf8_lossy(&a.body));
    // CPU time of one thread cannot be spent faster than wall time.
    assert!(started.elapsed() >= Duration::from_millis(200));
    assert!(String::from_utf8_lossy(&a.body).starts_with("burned "));
    assert_eq!(get(server.addr(), "/burn?ms=10001").status, 400);
    assert_eq!(get(server.addr(), "/burn").status, 400);
    assert_eq!(get(server.addr(), "/burn?ms=lots").status, 400);
}

#[test]
fn a_stream_sends_exactly_seconds_times_rate_bytes_over_those_seconds() {
    let server = Server::on_loopback();
    let started = Instant::now();
    let a = get(server.addr(), "/stream?seconds=2&bytes_per_second=1234");
    let took = started.elapsed();
    assert_eq!(a.status, 200);
    assert!(a.chunked_and_complete, "{}", a.head);
    assert_stream_bytes(&a.body, 2 * 1234);
    assert!(
        took >= Duration::from_millis(1900) && took < Duration::from_secs(10),
        "{took:?}"
    );
    assert_eq!(
        get(server.addr(), "/stream?seconds=601&bytes_per_second=1").status,
        400
    );
    assert_eq!(get(server.addr(), "/stream?seconds=1").status, 400);
}

#[test]
fn every_request_is_one_line_on_stdout() {
    let server = Server::on_loopback();
    get(server.addr(), "/health");
    get(server.addr(), "/nothing");
    let log = server.request_lines(3);
    assert_eq!(log.len(), 2, "{log:?}");
    assert!(log[0].contains("\"GET /health\" 200"), "{log:?}");
    assert!(log[0].starts_with(INSTANCE_ID), "{log:?}");
    assert!(log[1].contains("\"GET /nothing\" 404"), "{log:?}");
}

#[test]
fn by_default_it_serves_ipv4_and_ipv6_on_one_port() {
    let server = Server::start(&["--port", "0"]);
    let ports: Vec<u16> = server.addresses.iter().map(|a| a.port()).collect();
    assert_eq!(ports.len(), 2, "{:?}", server.addresses);
    assert_eq!(ports[0], ports[1], "{:?}", server.addresses);
    let v4: SocketAddr = format!("127.0.0.1:{}", ports[0]).parse().unwrap();
    let v6: SocketAddr = format!("[::1]:{}", ports[0]).parse().unwrap();
    assert_eq!(get(v4, "/health").status, 200);
    assert_eq!(get(v6, "/health").status, 200);
}

#[test]
fn sigterm_when_idle_exits_0_at_once() {
    let mut server = Server::on_loopback();
    server.sigterm();
    let status = server.exit_within(Duration::from_secs(5));
    assert_eq!(status.map(|s| s.code()), Some(Some(0)));
}

#[test]
fn sigterm_during_a_stream_lets_it_finish_every_byte_then_exits_0() {
    let mut server = Server::on_loopback();
    let addr = server.addr();
    let download = thread::spawn(move || get(addr, "/stream?seconds=3&bytes_per_second=10000"));
    // Well into the stream (its head and first chunks sent).
    thread::sleep(Duration::from_millis(700));
    let stopped_at = Instant::now();
    server.sigterm();

    // New connections are refused soon after, while the stream goes on.
    let deadline = Instant::now() + Duration::from_secs(2);
    let mut refused = false;
    while Instant::now() < deadline {
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
            refused = true;
            break;
        }
        thread::sleep(Duration::from_millis(50));
    }
    assert!(refused, "still accepting after SIGTERM");
    assert!(
        server.child.try_wait().expect("wait").is_none(),
        "exited with a stream in flight"
    );

    let a = download.join().expect("download thread");
    assert_eq!(a.status, 200);
    assert!(a.chunked_and_complete, "the stream was cut");
    assert_stream_bytes(&a.body, 3 * 10_000);
    let status = server.exit_within(Duration::from_secs(5));
    assert_eq!(status.map(|s| s.code()), Some(Some(0)));
    // It waited for the stream (about 2.3 s more), not the whole drain timeout.
    assert!(stopped_at.elapsed() < Duration::from_secs(10));
}
