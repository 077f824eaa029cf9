//! The lean exchange against scripted targets on loopback: each answers the requests of one
//! connection with the bytes given, in the pieces given.

use std::{net::SocketAddr, time::Duration};

use http_body_util::BodyExt as _;
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpListener, TcpStream},
    task::JoinHandle,
};

use super::*;

/// Every wait in these tests ends within this.
const DEADLINE: Duration = Duration::from_secs(10);

/// A target that accepts one connection and, per entry, reads a request head and writes the
/// entry's pieces (a short pause between them). Gives the heads it read; closes after the last.
async fn target(answers: Vec<Vec<&'static [u8]>>) -> (SocketAddr, JoinHandle<Vec<String>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let address = listener.local_addr().expect("address");
    let task = tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.expect("accept");
        let mut heads = Vec::new();
        for pieces in answers {
            let mut head = Vec::new();
            while !head.ends_with(b"\r\n\r\n") {
                let mut byte = [0u8; 1];
                if stream.read(&mut byte).await.unwrap_or(0) == 0 {
                    return heads;
                }
                head.push(byte[0]);
            }
            heads.push(String::from_utf8_lossy(&head).into_owned());
            for piece in pieces {
                stream.write_all(piece).await.expect("write");
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
        heads
    });
    (address, task)
}

fn get(path: &str) -> Request<ProxyBody> {
    let mut request = Request::new(crate::proxy::answer::empty());
    *request.uri_mut() = path.parse().expect("path");
    request
        .headers_mut()
        .insert(header::HOST, HeaderValue::from_static("app.example"));
    request
}

async fn connect(address: SocketAddr) -> LeanConn {
    LeanConn::new(Box::new(crate::proxy::send_batch::BatchedTcp::new(
        TcpStream::connect(address).await.expect("connect"),
    )))
}

/// One exchange of `request` on `conn`: status, body, trailers.
async fn run(
    conn: LeanConn,
    request: &Request<ProxyBody>,
    pool: &Arc<Mutex<Pool>>,
    address: SocketAddr,
) -> Result<(u16, String, Option<HeaderMap>), String> {
    let head = encode_head(request);
    let response = tokio::time::timeout(
        DEADLINE,
        exchange(conn, &head, request.method(), pool, address),
    )
    .await
    .expect("in time")
    .map_err(|e| e.error.to_string())?;
    let status = response.status().as_u16();
    let collected = tokio::time::timeout(DEADLINE, response.into_body().collect())
        .await
        .expect("in time")
        .map_err(|e| e.to_string())?;
    let trailers = collected.trailers().cloned();
    let body = String::from_utf8_lossy(&collected.to_bytes()).into_owned();
    Ok((status, body, trailers))
}

fn idle(pool: &Arc<Mutex<Pool>>, address: SocketAddr) -> usize {
    lock(pool).lean.get(&address).map_or(0, |idle| idle.len())
}

#[tokio::test]
async fn a_content_length_body_is_read_and_the_connection_carries_the_next_request() {
    let (address, target) = target(vec![
        vec![b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhel", b"lo"],
        vec![b"HTTP/1.1 404 Not Found\r\ncontent-length: 5\r\nx-a: 1\r\n\r\nworld"],
    ])
    .await;
    let pool = Arc::new(Mutex::new(Pool::default()));
    let first = run(connect(address).await, &get("/one?x=1"), &pool, address).await;
    assert_eq!(first, Ok((200, "hello".into(), None)));
    assert_eq!(idle(&pool, address), 1, "back in the pool once read");
    let conn = lock(&pool)
        .checkout_lean(address)
        .expect("the pooled connection");
    let second = run(conn, &get("/two"), &pool, address).await;
    assert_eq!(second, Ok((404, "world".into(), None)));
    let heads = target.await.expect("target");
    assert_eq!(
        heads,
        [
            "GET /one?x=1 HTTP/1.1\r\nhost: app.example\r\n\r\n",
            "GET /two HTTP/1.1\r\nhost: app.example\r\n\r\n"
        ],
        "both on one connection"
    );
}

#[tokio::test]
async fn a_chunked_body_split_anywhere_is_decoded_with_its_trailers() {
    let (address, target) = target(vec![
        vec![
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5;ext=1\r",
            b"\nhel",
            b"lo\r\n6\r\n world\r",
            b"\n0\r\ngrpc-status: 0\r\n",
            b"\r\n",
        ],
        vec![b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n"],
    ])
    .await;
    let pool = Arc::new(Mutex::new(Pool::default()));
    let (status, body, trailers) = run(connect(address).await, &get("/"), &pool, address)
        .await
        .expect("a response");
    assert_eq!((status, body.as_str()), (200, "hello world"));
    let trailers = trailers.expect("trailers");
    assert_eq!(trailers.get("grpc-status").unwrap(), "0");
    let conn = lock(&pool).checkout_lean(address).expect("pooled");
    assert_eq!(
        run(conn, &get("/"), &pool, address).await,
        Ok((200, String::new(), None))
    );
    assert_eq!(idle(&pool, address), 1);
    drop(target);
}

#[tokio::test]
async fn head_204_304_and_interim_responses_have_no_body_and_keep_the_connection() {
    let (address, _target) = target(vec![
        vec![b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n"],
        vec![b"HTTP/1.1 204 No Content\r\n\r\n"],
        vec![b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nlink: </a>\r\n\r\nHTTP/1.1 304 Not Modified\r\netag: \"x\"\r\n\r\n"],
        vec![b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"],
    ])
    .await;
    let pool = Arc::new(Mutex::new(Pool::default()));
    let mut head = get("/");
    *head.method_mut() = Method::HEAD;
    let mut conn = connect(address).await;
    for (request, expected) in [
        (&head, (200, "")),
        (&get("/"), (204, "")),
        (&get("/"), (304, "")),
        (&get("/"), (200, "ok")),
    ] {
        let got = run(conn, request, &pool, address)
            .await
            .expect("a response");
        assert_eq!((got.0, got.1.as_str()), expected);
        conn = lock(&pool).checkout_lean(address).expect("kept");
    }
}

#[tokio::test]
async fn a_body_up_to_the_close_and_connection_close_leave_nothing_pooled() {
    let (address, _target) = target(vec![vec![b"HTTP/1.1 200 OK\r\n\r\nuntil the end"]]).await;
    let pool = Arc::new(Mutex::new(Pool::default()));
    let got = run(connect(address).await, &get("/"), &pool, address).await;
    assert_eq!(got, Ok((200, "until the end".into(), None)));
    assert_eq!(idle(&pool, address), 0);

    let (address, _target) = target(vec![vec![
        b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok",
    ]])
    .await;
    let got = run(connect(address).await, &get("/"), &pool, address).await;
    assert_eq!(got, Ok((200, "ok".into(), None)));
    assert_eq!(idle(&pool, address), 0);
    // Chunked and a length at once: read as chunked, the connection not reused.
    let (address, _target) = target(vec![vec![
        b"HTTP/1.1 200 OK\r\nContent-Length: 99\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
    ]])
    .await;
    let got = run(connect(address).await, &get("/"), &pool, address).await;
    assert_eq!(got, Ok((200, "ok".into(), None)));
    assert_eq!(idle(&pool, address), 0);
}

#[tokio::test]
async fn broken_responses_are_errors() {
    let pool = Arc::new(Mutex::new(Pool::default()));
    for (answer, what) in [
        (
            &b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello"[..],
            "conflicting Content-Length",
        ),
        (
            b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort",
            "cut body",
        ),
        (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
            "bad chunk size",
        ),
        (
            b"HTTP/1.1 101 Switching Protocols\r\n\r\n",
            "an unasked switch",
        ),
        (b"NOT HTTP\r\n\r\n", "garbage"),
    ] {
        let (address, _target) = target(vec![vec![answer]]).await;
        let got = run(connect(address).await, &get("/"), &pool, address).await;
        assert!(got.is_err(), "{what}: {got:?}");
        assert_eq!(idle(&pool, address), 0, "{what}");
    }
}

#[tokio::test]
async fn a_connection_the_target_closed_is_not_reused_and_an_exchange_on_it_can_be_retried() {
    let (address, answering) = target(vec![vec![
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
    ]])
    .await;
    let pool = Arc::new(Mutex::new(Pool::default()));
    let got = run(connect(address).await, &get("/"), &pool, address).await;
    assert_eq!(got, Ok((200, "ok".into(), None)));
    // The target closes after its one answer; the runtime sees the end by the time it turns.
    answering.await.expect("target");
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(
        lock(&pool).checkout_lean(address).is_none(),
        "a closed one is dropped"
    );

    // Closed before any answer: the error says nothing came back, so another may take it.
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let address = listener.local_addr().expect("address");
    let closer = tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.expect("accept");
        let mut head = [0u8; 64];
        let _ = stream.read(&mut head).await;
    });
    let conn = connect(address).await;
    let request = get("/");
    let error = exchange(
        conn,
        &encode_head(&request),
        request.method(),
        &pool,
        address,
    )
    .await
    .expect_err("closed");
    assert!(error.before_response);
    closer.await.expect("closer");

    // Closed after an interim response: the target had the request, so no other gets it.
    let (address, _target) = target(vec![vec![b"HTTP/1.1 100 Continue\r\n\r\n"]]).await;
    let error = exchange(
        connect(address).await,
        &encode_head(&request),
        request.method(),
        &pool,
        address,
    )
    .await
    .expect_err("closed after the 100");
    assert!(!error.before_response);
}

#[test]
fn only_requests_without_a_body_or_an_upgrade_go_the_lean_way() {
    assert!(suits(&get("/")));
    let mut upgrade = get("/");
    upgrade
        .headers_mut()
        .insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    assert!(!suits(&upgrade));
    let with_body = Request::new(http_body_util::BodyExt::boxed(
        http_body_util::Full::new(Bytes::from_static(b"x")).map_err(|e| match e {}),
    ));
    assert!(!suits(&with_body));
}

#[test]
fn chunk_sizes_are_hex_with_optional_extensions() {
    assert_eq!(parse_chunk_size(b"1a").ok(), Some(26));
    assert_eq!(parse_chunk_size(b"A;name=value").ok(), Some(10));
    assert_eq!(parse_chunk_size(b"0").ok(), Some(0));
    assert!(parse_chunk_size(b"").is_err());
    assert!(parse_chunk_size(b"x1").is_err());
    assert!(parse_chunk_size(b"1234567890abcdef0").is_err(), "overflow");
}
