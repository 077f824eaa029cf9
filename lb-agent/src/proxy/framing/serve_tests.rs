//! The guard under a real hyper server on loopback, as the proxy wires it: raw clients send
//! ambiguous requests and read the guard's own 400 (or 431) with its body, then end of
//! stream; good clients keep being served.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::{Framing, FramingGuard};

/// Every wait in these tests ends within this.
const DEADLINE: Duration = Duration::from_secs(10);

/// A server whose service refuses ambiguous requests the way the proxy does, and counts the
/// requests it served (the ones that would have reached a target).
struct Server {
    address: std::net::SocketAddr,
    served: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn start_server() -> Server {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("binding loopback");
    let address = listener.local_addr().expect("local address");
    let served = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&served);
    let task = tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let served = Arc::clone(&counter);
            tokio::spawn(async move {
                let guard = FramingGuard::new(tcp, 16 * 1024);
                let verdicts = guard.verdicts();
                let service = hyper::service::service_fn(move |request: Request<Incoming>| {
                    let verdict = verdicts.next();
                    let served = Arc::clone(&served);
                    async move { Ok::<_, Infallible>(answer(verdict, request, &served).await) }
                });
                // A connection's end (including hyper's own refusals) is no test failure.
                let _ended = Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(guard), service)
                    .await;
            });
        }
    });
    Server {
        address,
        served,
        task,
    }
}

/// 400 and close for an ambiguous request; otherwise the body is read and its length answered.
async fn answer(
    verdict: Framing,
    request: Request<Incoming>,
    served: &AtomicUsize,
) -> Response<Full<Bytes>> {
    let mut response = match verdict {
        Framing::Ambiguous(reason) => {
            let mut response = Response::new(Full::new(Bytes::from(reason)));
            *response.status_mut() = StatusCode::BAD_REQUEST;
            response.headers_mut().insert(
                hyper::header::CONNECTION,
                hyper::header::HeaderValue::from_static("close"),
            );
            return response;
        }
        Framing::Ok if request.uri().path() == "/slow" => {
            // Still in flight when the client's next bytes arrive.
            tokio::time::sleep(Duration::from_millis(300)).await;
            Response::new(Full::new(Bytes::from_static(b"slow")))
        }
        Framing::Ok => match request.into_body().collect().await {
            Ok(body) => Response::new(Full::new(Bytes::from(body.to_bytes().len().to_string()))),
            Err(_) => Response::new(Full::new(Bytes::from_static(b"body failed"))),
        },
    };
    served.fetch_add(1, Ordering::SeqCst);
    *response.status_mut() = StatusCode::OK;
    response
}

/// Sends `bytes` on a new connection and reads until the server closes it.
async fn exchange(server: &Server, bytes: &[u8]) -> String {
    let mut tcp = TcpStream::connect(server.address)
        .await
        .expect("connecting to the test server");
    tcp.write_all(bytes).await.expect("sending the request");
    let mut answer = Vec::new();
    tokio::time::timeout(DEADLINE, tcp.read_to_end(&mut answer))
        .await
        .expect("the server closes the connection in time")
        .expect("reading the answer");
    String::from_utf8_lossy(&answer).into_owned()
}

fn statuses(answer: &str) -> Vec<&str> {
    answer
        .match_indices("HTTP/1.1 ")
        .map(|(at, _)| &answer[at + 9..at + 12])
        .collect()
}

const BAD_REQUEST_BODY: &str = "400 Bad Request: the request is malformed or ambiguous\n";

/// Asserts that `answer` ends with the guard's own closing answer of `status` and `body`.
fn assert_ends_with_guard_answer(answer: &str, status: &str, body: &str, what: &str) {
    let (head, got_body) = answer
        .rsplit_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("{what}: no answer head: {answer:?}"));
    let last_head = &head[head.rfind("HTTP/1.1 ").unwrap_or(0)..];
    assert!(
        last_head.starts_with(&format!("HTTP/1.1 {status} ")),
        "{what}: {answer:?}"
    );
    assert!(
        last_head.contains("\r\ncontent-type: text/plain; charset=utf-8"),
        "{what}: {answer:?}"
    );
    assert!(
        last_head.contains("\r\nconnection: close"),
        "{what}: {answer:?}"
    );
    assert!(
        last_head.contains(&format!("\r\ncontent-length: {}", body.len())),
        "{what}: {answer:?}"
    );
    assert_eq!(got_body, body, "{what}: {answer:?}");
}

#[tokio::test]
async fn each_refused_head_gets_its_status_and_a_body_saying_why_then_close() {
    let server = start_server().await;
    let too_large = format!(
        "GET / HTTP/1.1\r\nHost: a\r\nX-Filler: {}\r\n\r\n",
        "a".repeat(17 * 1024)
    );
    let head_too_large = "431 Request Header Fields Too Large: the request head is longer than this listener allows\n";
    let probes: [(&str, &[u8], &str, &str); 8] = [
        (
            "content-length then transfer-encoding",
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            "400",
            BAD_REQUEST_BODY,
        ),
        (
            "transfer-encoding then content-length",
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n",
            "400",
            BAD_REQUEST_BODY,
        ),
        (
            "duplicate identical content-length",
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\nabc",
            "400",
            BAD_REQUEST_BODY,
        ),
        (
            "duplicate different content-length",
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
            "400",
            BAD_REQUEST_BODY,
        ),
        (
            "invalid content-length",
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +3\r\n\r\nabc",
            "400",
            BAD_REQUEST_BODY,
        ),
        (
            "obs-fold",
            b"GET / HTTP/1.1\r\nHost: a\r\nX-Folded: one\r\n two\r\n\r\n",
            "400",
            BAD_REQUEST_BODY,
        ),
        (
            "garbage where a head starts",
            b"\x16\x03\x01\x02\x00\x01\r\n\r\n",
            "400",
            BAD_REQUEST_BODY,
        ),
        ("head over the limit", too_large.as_bytes(), "431", head_too_large),
    ];
    for (what, probe, status, body) in probes {
        let answer = exchange(&server, probe).await;
        assert_eq!(statuses(&answer), [status], "{what}: {answer}");
        assert_ends_with_guard_answer(&answer, status, body, what);
    }
    assert_eq!(server.served.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn ambiguous_request_pipelined_after_good_ones_is_refused_alone() {
    let server = start_server().await;
    let answer = exchange(
        &server,
        b"POST /a HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\nhi\
POST /b HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhi\r\n0\r\nX-T: 1\r\n\r\n\
POST /c HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n\
GET /d HTTP/1.1\r\nHost: a\r\n\r\n",
    )
    .await;
    assert_eq!(statuses(&answer), ["200", "200", "400"], "{answer}");
    assert_ends_with_guard_answer(&answer, "400", BAD_REQUEST_BODY, "pipelined");
    assert_eq!(server.served.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn a_refused_head_arriving_while_a_request_is_in_flight_waits_for_its_answer() {
    let server = start_server().await;
    let mut tcp = TcpStream::connect(server.address)
        .await
        .expect("connecting to the test server");
    tcp.write_all(b"GET /slow HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .expect("sending the slow request");
    tokio::time::sleep(Duration::from_millis(50)).await;
    // In pieces: the head is held back across reads, then refused.
    for piece in [
        &b"POST / HTTP/1.1\r\nHost: a\r\nContent-Le"[..],
        b"ngth: 1\r\nContent-Length: 2\r\n\r\nab",
    ] {
        tcp.write_all(piece).await.expect("sending a piece");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut answer = Vec::new();
    tokio::time::timeout(DEADLINE, tcp.read_to_end(&mut answer))
        .await
        .expect("the server closes the connection in time")
        .expect("reading the answer");
    let answer = String::from_utf8_lossy(&answer);
    assert_eq!(statuses(&answer), ["200", "400"], "{answer}");
    assert!(answer.contains("\r\n\r\nslowHTTP/1.1 400"), "{answer}");
    assert_ends_with_guard_answer(&answer, "400", BAD_REQUEST_BODY, "after a slow one");
    assert_eq!(server.served.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn good_requests_sent_a_byte_at_a_time_are_served() {
    let server = start_server().await;
    let mut tcp = TcpStream::connect(server.address)
        .await
        .expect("connecting to the test server");
    let requests = b"GET / HTTP/1.1\r\nHost: a\r\n\r\nPOST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello";
    for byte in requests {
        tcp.write_all(&[*byte]).await.expect("sending a byte");
        tcp.flush().await.expect("flushing");
    }
    let mut answer = Vec::new();
    tokio::time::timeout(DEADLINE, tcp.read_to_end(&mut answer))
        .await
        .expect("the server closes the connection in time")
        .expect("reading the answer");
    let answer = String::from_utf8_lossy(&answer);
    assert_eq!(statuses(&answer), ["200", "200"], "{answer}");
    assert!(answer.ends_with("\r\n\r\n5"), "{answer}");
    assert_eq!(server.served.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn good_keep_alive_client_is_served_request_after_request() {
    let server = start_server().await;
    let mut tcp = TcpStream::connect(server.address)
        .await
        .expect("connecting to the test server");
    let requests: [&[u8]; 3] = [
        b"GET / HTTP/1.1\r\nHost: a\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello",
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
    ];
    for (number, request) in requests.iter().enumerate() {
        tcp.write_all(request).await.expect("sending a request");
        let mut answer = Vec::new();
        let mut buf = [0u8; 1024];
        // The answer's body is the request body's length: one digit after the head.
        while !head_and_one_byte(&answer) {
            let n = tokio::time::timeout(DEADLINE, tcp.read(&mut buf))
                .await
                .expect("an answer in time")
                .expect("reading an answer");
            assert_ne!(n, 0, "request {number}: connection closed");
            answer.extend_from_slice(&buf[..n]);
        }
        let answer = String::from_utf8_lossy(&answer);
        assert_eq!(statuses(&answer), ["200"], "request {number}: {answer}");
    }
    assert_eq!(server.served.load(Ordering::SeqCst), 3);
}

fn head_and_one_byte(answer: &[u8]) -> bool {
    answer
        .windows(4)
        .position(|window| window == b"\r\n\r\n")
        .is_some_and(|end| answer.len() > end + 4)
}

#[tokio::test]
async fn h2_client_passes_the_guard() {
    let server = start_server().await;
    let tcp = TcpStream::connect(server.address)
        .await
        .expect("connecting to the test server");
    let (mut sender, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
            .await
            .expect("h2 handshake");
    let driver = tokio::spawn(connection);
    for _ in 0..3 {
        let request = Request::post("http://a/")
            .body(Full::new(Bytes::from_static(b"four")))
            .expect("a request");
        let response = tokio::time::timeout(DEADLINE, sender.send_request(request))
            .await
            .expect("an answer in time")
            .expect("an h2 answer");
        assert_eq!(response.status(), StatusCode::OK);
    }
    assert_eq!(server.served.load(Ordering::SeqCst), 3);
    driver.abort();
}
