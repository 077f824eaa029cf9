//! HTTP/1.1 spoken byte by byte from the lab's client namespace, for what curl will not send:
//! ambiguous framing, oversized or trickled heads, and connections held open to see when the
//! proxy closes them.

use std::{
    io::{ErrorKind, Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    time::{Duration, Instant},
};

use xtask::lab::Lab;

use crate::tls_client::connect_from_client;

/// What came back on a connection until it closed or the wait ran out.
#[derive(Debug, Clone)]
pub struct RawAnswer {
    /// Everything read, as text (lossy).
    pub text: String,
    /// The proxy closed the connection (end of stream or a reset) within the wait.
    pub closed: bool,
    /// When the close was seen, from the start of the wait.
    pub closed_after: Option<Duration>,
}

impl RawAnswer {
    /// The status of the first response, if one arrived.
    pub fn status(&self) -> Option<u16> {
        self.text
            .strip_prefix("HTTP/1.1 ")
            .and_then(|rest| rest.get(..3))
            .and_then(|code| code.parse().ok())
    }

    /// The first response's header `name` (any case), if any.
    pub fn header(&self, name: &str) -> Option<&str> {
        let (head, _) = self.text.split_once("\r\n\r\n")?;
        head.lines().skip(1).find_map(|line| {
            let (k, v) = line.split_once(':')?;
            k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }
}

/// A TCP connection from the lab's client to `addr`.
pub struct RawConnection {
    stream: TcpStream,
}

impl RawConnection {
    /// Connects from the client namespace.
    pub fn connect(lab: &Lab, addr: SocketAddr) -> Self {
        Self {
            stream: connect_from_client(lab, addr),
        }
    }

    /// Writes all of `bytes`; false if the connection refused them (closed by the peer).
    pub fn send(&mut self, bytes: &[u8]) -> bool {
        self.stream
            .write_all(bytes)
            .and_then(|()| self.stream.flush())
            .is_ok()
    }

    /// Reads until the peer closes or `wait` passes: everything read, and whether (and when)
    /// it closed.
    pub fn read_until_closed(&mut self, wait: Duration) -> RawAnswer {
        let start = Instant::now();
        let mut bytes = Vec::new();
        let mut chunk = [0u8; 16 * 1024];
        let mut closed_after = None;
        while let Some(left) = wait.checked_sub(start.elapsed()) {
            if left.is_zero() {
                break;
            }
            self.stream
                .set_read_timeout(Some(left.max(Duration::from_millis(10))))
                .expect("read timeout");
            match self.stream.read(&mut chunk) {
                Ok(0) => {
                    closed_after = Some(start.elapsed());
                    break;
                }
                Ok(n) => bytes.extend_from_slice(&chunk[..n]),
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                // A reset is a close too.
                Err(_) => {
                    closed_after = Some(start.elapsed());
                    break;
                }
            }
        }
        RawAnswer {
            text: String::from_utf8_lossy(&bytes).into_owned(),
            closed: closed_after.is_some(),
            closed_after,
        }
    }

    /// Sends `GET PATH` (kept alive) and reads one response with a `Content-Length` body: its
    /// status and body. Panics if the connection closes or a read takes over 10 s.
    pub fn get(&mut self, path: &str) -> (u16, String) {
        let request = format!("GET {path} HTTP/1.1\r\nHost: lab.example.test\r\n\r\n");
        assert!(self.send(request.as_bytes()), "GET {path}: write failed");
        self.stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .expect("read timeout");
        let mut bytes = Vec::new();
        let mut byte = [0u8; 1];
        // Byte by byte up to the head's end, so nothing of a next response is taken.
        while !bytes.ends_with(b"\r\n\r\n") {
            match self.stream.read(&mut byte) {
                Ok(1) => bytes.push(byte[0]),
                other => panic!(
                    "GET {path}: the head broke off ({other:?}) after `{}`",
                    String::from_utf8_lossy(&bytes)
                ),
            }
        }
        let head = String::from_utf8_lossy(&bytes).into_owned();
        let answer = RawAnswer {
            text: head.clone(),
            closed: false,
            closed_after: None,
        };
        let status = answer
            .status()
            .unwrap_or_else(|| panic!("GET {path}: no status in `{head}`"));
        let length: usize = answer
            .header("content-length")
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("GET {path}: no Content-Length in `{head}`"));
        let mut body = vec![0; length];
        self.stream
            .read_exact(&mut body)
            .unwrap_or_else(|e| panic!("GET {path}: body: {e}"));
        (status, String::from_utf8_lossy(&body).into_owned())
    }

    /// The socket, for a caller that hands it to an async client.
    pub fn into_stream(self) -> TcpStream {
        self.stream
    }
}

/// Sends `bytes` on a new connection to `addr` and reads until the proxy closes it or `wait`
/// passes.
pub fn probe(lab: &Lab, addr: SocketAddr, bytes: &[u8], wait: Duration) -> RawAnswer {
    let mut conn = RawConnection::connect(lab, addr);
    // A write the proxy cut short still leaves its answer to read.
    conn.send(bytes);
    conn.read_until_closed(wait)
}
