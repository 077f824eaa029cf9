//! HTTP/2 and gRPC checks against hyper servers on 127.0.0.1: h2c, h2 over TLS with ALPN, and
//! gRPC-style answers with `grpc-status` in trailers or in the headers.

use std::{convert::Infallible, net::SocketAddr, time::Duration};

use http_body_util::{StreamBody, combinators::BoxBody};
use hyper::{
    Request, Response, Version,
    body::{Bytes, Frame, Incoming},
    server::conn::http2 as server_http2,
    service::service_fn,
};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::TcpListener,
    sync::mpsc,
};

use crate::{
    config::{HealthCheck, HealthMethod, HealthProtocol, ProtocolVersion},
    health::probe::{Failure, Probe},
};

/// What a test server saw of a request.
#[derive(Debug)]
struct Seen {
    version: Version,
    method: String,
    path: String,
    authority: Option<String>,
    content_type: Option<String>,
    /// The protocol ALPN chose (TLS servers).
    alpn: Option<Vec<u8>>,
}

/// How a test server answers every request.
#[derive(Debug, Clone, Copy)]
enum Answer {
    /// This HTTP status, no body.
    Status(u16),
    /// 200, an empty gRPC message, then `grpc-status` in the trailers.
    GrpcTrailer(u16),
    /// 200 with `grpc-status` in the headers and no body (gRPC's trailers-only answer).
    GrpcHeaderOnly(u16),
}

type TestBody = BoxBody<Bytes, Infallible>;

fn respond(answer: Answer) -> Response<TestBody> {
    let frames: Vec<Result<Frame<Bytes>, Infallible>> = match answer {
        Answer::Status(_) | Answer::GrpcHeaderOnly(_) => Vec::new(),
        Answer::GrpcTrailer(code) => {
            let mut trailers = hyper::HeaderMap::new();
            trailers.insert("grpc-status", code.into());
            vec![
                Ok(Frame::data(Bytes::from_static(&[0, 0, 0, 0, 0]))),
                Ok(Frame::trailers(trailers)),
            ]
        }
    };
    let mut response = Response::new(BoxBody::new(StreamBody::new(futures_util::stream::iter(
        frames,
    ))));
    match answer {
        Answer::Status(status) => {
            *response.status_mut() = status.try_into().unwrap();
        }
        Answer::GrpcTrailer(_) => {
            response
                .headers_mut()
                .insert("content-type", "application/grpc".parse().unwrap());
        }
        Answer::GrpcHeaderOnly(code) => {
            response
                .headers_mut()
                .insert("content-type", "application/grpc".parse().unwrap());
            response.headers_mut().insert("grpc-status", code.into());
        }
    }
    response
}

/// An HTTP/2-only server on 127.0.0.1 (h2c, or h2 over TLS with ALPN `h2` when `tls`) that
/// answers every request with `answer` and reports what it saw.
async fn h2_server(answer: Answer, tls: bool) -> (SocketAddr, mpsc::UnboundedReceiver<Seen>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let acceptor = tls.then(tls_acceptor);
    let (seen_tx, seen_rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let seen_tx = seen_tx.clone();
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                match acceptor {
                    None => serve(stream, None, answer, seen_tx).await,
                    Some(acceptor) => {
                        let Ok(tls) = acceptor.accept(stream).await else {
                            return;
                        };
                        let alpn = tls.get_ref().1.alpn_protocol().map(<[u8]>::to_vec);
                        serve(tls, alpn, answer, seen_tx).await;
                    }
                }
            });
        }
    });
    (addr, seen_rx)
}

/// Serves HTTP/2 on one connection.
async fn serve<S>(
    stream: S,
    alpn: Option<Vec<u8>>,
    answer: Answer,
    seen_tx: mpsc::UnboundedSender<Seen>,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service = service_fn(move |request: Request<Incoming>| {
        let header = |name| {
            request
                .headers()
                .get(name)
                .map(|v: &hyper::header::HeaderValue| v.to_str().unwrap().to_owned())
        };
        let _ = seen_tx.send(Seen {
            version: request.version(),
            method: request.method().to_string(),
            path: request
                .uri()
                .path_and_query()
                .map(ToString::to_string)
                .unwrap_or_default(),
            authority: request.uri().authority().map(ToString::to_string),
            content_type: header("content-type"),
            alpn: alpn.clone(),
        });
        async move { Ok::<_, Infallible>(respond(answer)) }
    });
    let _ = server_http2::Builder::new(TokioExecutor::new())
        .serve_connection(TokioIo::new(stream), service)
        .await;
}

/// A self-signed TLS server config offering ALPN `h2` only.
fn tls_acceptor() -> tokio_rustls::TlsAcceptor {
    crate::health::probe::tests::self_signed_acceptor(&[b"h2"])
}

/// A check as a group speaking `version` runs it (the group's defaults applied), with short
/// times.
fn check(protocol: HealthProtocol, version: ProtocolVersion) -> HealthCheck {
    HealthCheck {
        protocol,
        timeout: Duration::from_secs(2),
        interval: Duration::from_secs(5),
        ..HealthCheck::default()
    }
    .for_version(version)
}

async fn outcome(
    hc: &HealthCheck,
    version: ProtocolVersion,
    addr: SocketAddr,
) -> Result<(), Failure> {
    Probe::new(hc, version).unwrap().check(addr).await.outcome
}

#[tokio::test]
async fn an_http2_group_is_checked_over_h2c_with_its_method_path_and_host() {
    let (addr, mut seen) = h2_server(Answer::Status(204), false).await;
    let mut hc = check(HealthProtocol::Http, ProtocolVersion::Http2);
    hc.method = HealthMethod::Head;
    hc.path = "/health?deep=1".into();
    hc.host = Some("app.example".into());
    assert_eq!(outcome(&hc, ProtocolVersion::Http2, addr).await, Ok(()));
    let seen = seen.recv().await.unwrap();
    assert_eq!(seen.version, Version::HTTP_2);
    assert_eq!(seen.method, "HEAD");
    assert_eq!(seen.path, "/health?deep=1");
    assert_eq!(seen.authority.as_deref(), Some("app.example"));
}

#[tokio::test]
async fn an_http2_check_fails_on_a_status_outside_the_matcher() {
    let (addr, _seen) = h2_server(Answer::Status(503), false).await;
    let hc = check(HealthProtocol::Http, ProtocolVersion::Http2);
    assert_eq!(
        outcome(&hc, ProtocolVersion::Http2, addr).await,
        Err(Failure::ResponseCodeMismatch(503))
    );
}

#[tokio::test]
async fn an_http2_check_of_a_target_that_speaks_only_http1_fails() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        let mut buf = [0u8; 1024];
        let _ = s.read(&mut buf).await;
        let _ = s
            .write_all(b"HTTP/1.1 400 Bad Request\r\nConnection: close\r\n\r\n")
            .await;
    });
    let hc = check(HealthProtocol::Http, ProtocolVersion::Http2);
    let got = outcome(&hc, ProtocolVersion::Http2, addr).await;
    assert!(matches!(got, Err(Failure::BadResponse(_))), "{got:?}");
}

#[tokio::test]
async fn https_http2_and_grpc_groups_are_checked_over_tls_with_alpn_h2() {
    for (version, answer) in [
        (ProtocolVersion::Http2, Answer::Status(200)),
        (ProtocolVersion::Grpc, Answer::GrpcTrailer(12)),
    ] {
        let (addr, mut seen) = h2_server(answer, true).await;
        let hc = check(HealthProtocol::Https, version);
        assert_eq!(outcome(&hc, version, addr).await, Ok(()), "{version:?}");
        let seen = seen.recv().await.unwrap();
        assert_eq!(seen.alpn.as_deref(), Some(&b"h2"[..]), "{version:?}");
        assert_eq!(seen.version, Version::HTTP_2);
    }
}

#[tokio::test]
async fn a_grpc_check_posts_to_the_aws_path_and_unimplemented_counts_as_alive() {
    let (addr, mut seen) = h2_server(Answer::GrpcTrailer(12), false).await;
    let hc = check(HealthProtocol::Http, ProtocolVersion::Grpc);
    assert_eq!(outcome(&hc, ProtocolVersion::Grpc, addr).await, Ok(()));
    let seen = seen.recv().await.unwrap();
    assert_eq!(seen.method, "POST");
    assert_eq!(seen.path, "/AWS.ALB/healthcheck");
    assert_eq!(seen.content_type.as_deref(), Some("application/grpc"));
}

#[tokio::test]
async fn a_grpc_check_judges_the_grpc_status_code_in_trailers_or_headers() {
    let grpc = ProtocolVersion::Grpc;
    let default = check(HealthProtocol::Http, grpc);
    let ok_only = HealthCheck {
        path: "/grpc.health.v1.Health/Check".into(),
        matcher: "0".into(),
        ..default.clone()
    };
    for (answer, hc, want) in [
        // The default matcher (12) refuses OK: AWS's default asks for UNIMPLEMENTED.
        (
            Answer::GrpcTrailer(0),
            &default,
            Err(Failure::GrpcCodeMismatch(0)),
        ),
        (Answer::GrpcTrailer(0), &ok_only, Ok(())),
        (
            Answer::GrpcTrailer(12),
            &ok_only,
            Err(Failure::GrpcCodeMismatch(12)),
        ),
        (Answer::GrpcHeaderOnly(12), &default, Ok(())),
        (
            Answer::GrpcHeaderOnly(14),
            &default,
            Err(Failure::GrpcCodeMismatch(14)),
        ),
        // No gRPC server answered: the HTTP status fails it, whatever the matcher.
        (
            Answer::Status(503),
            &default,
            Err(Failure::ResponseCodeMismatch(503)),
        ),
    ] {
        let (addr, _seen) = h2_server(answer, false).await;
        assert_eq!(
            outcome(hc, grpc, addr).await,
            want,
            "{answer:?}, matcher {}",
            hc.matcher
        );
    }
    // 200 without any grpc-status is no gRPC answer.
    let (addr, _seen) = h2_server(Answer::Status(200), false).await;
    let got = outcome(&default, grpc, addr).await;
    assert!(matches!(got, Err(Failure::BadResponse(_))), "{got:?}");
}
