//! `l7-target`: the lab's HTTP target behind the L7 proxy. HTTP/1.1 and h2c on one port
//! (or over TLS with ALPN h2 and http/1.1), answering with what it saw as JSON, so a test can
//! tell which target served a request and what reached it; or, with `--raw`, a plain TCP
//! greet-and-echo server (what a `tls` listener's targets see).
//!
//! Paths: any: 200 and `{"target", "method", "path", "query", "version", "tls", "headers",
//! "body_bytes"}`; `/health`: `ok`; `/slow?seconds=N`: a chunk every 100 ms for N s;
//! `/delay?ms=N`: the JSON after N ms; `/trailers`: the JSON, then trailers `grpc-status: 0`
//! and `x-trailer: yes`; `/ws`: a websocket echo (HTTP/1.1 Upgrade).
//!
//! Every request is written to stdout as `REQ METHOD PATH`, every raw connection as `RAW`:
//! the log shows whether anything reached the target.

use std::{
    collections::BTreeMap, convert::Infallible, net::SocketAddr, path::PathBuf, process::ExitCode,
    sync::Arc, time::Duration,
};

use clap::Parser;
use futures_util::stream;
use http_body_util::{BodyExt as _, Full, StreamBody, combinators::BoxBody};
use hyper::{
    HeaderMap, Request, Response, StatusCode, Version,
    body::{Bytes, Frame, Incoming},
    header::{self, HeaderValue},
    service::service_fn,
};
use hyper_util::{
    rt::{TokioExecutor, TokioIo},
    server::conn::auto,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject as _};
use tests::websocket;
use tokio::{
    io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _},
    net::TcpListener,
};
use tokio_rustls::TlsAcceptor;

/// Longest `/slow` stream and `/delay` wait a request may ask for: a target never holds a
/// request for longer than a lab test runs.
const MAX_SLOW: Duration = Duration::from_secs(120);

#[derive(Parser)]
#[command(
    name = "l7-target",
    about = "The lab's HTTP target for the L7 proxy tests"
)]
struct Args {
    /// The name it answers with.
    #[arg(long)]
    name: String,
    /// Where to listen (repeatable).
    #[arg(long, required = true)]
    listen: Vec<SocketAddr>,
    /// PEM certificate chain: serve TLS (with `--tls-key`).
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// PEM private key of `--tls-cert`.
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// A plain TCP server instead: `raw NAME\n`, then an echo of what arrives.
    #[arg(long, conflicts_with = "tls_cert")]
    raw: bool,
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
            eprintln!("l7-target: tokio runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(serve(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("l7-target: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(args: Args) -> Result<(), String> {
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => Some(tls_acceptor(cert, key)?),
        _ => None,
    };
    let name: Arc<str> = args.name.into();
    let mut listeners = Vec::new();
    for addr in &args.listen {
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|e| format!("binding {addr}: {e}"))?;
        listeners.push(listener);
    }
    let mut tasks = Vec::new();
    for listener in listeners {
        tasks.push(tokio::spawn(accept_loop(
            listener,
            name.clone(),
            tls.clone(),
            args.raw,
        )));
    }
    for task in tasks {
        task.await.map_err(|e| format!("accept loop: {e}"))??;
    }
    Ok(())
}

fn tls_acceptor(cert: &PathBuf, key: &PathBuf) -> Result<TlsAcceptor, String> {
    let chain = CertificateDer::pem_file_iter(cert)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("{}: {e}", cert.display()))?;
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| format!("{}: {e}", key.display()))?;
    let mut config = rustls::ServerConfig::builder_with_provider(
        rustls::crypto::ring::default_provider().into(),
    )
    .with_safe_default_protocol_versions()
    .map_err(|e| e.to_string())?
    .with_no_client_auth()
    .with_single_cert(chain, key)
    .map_err(|e| format!("certificate and key: {e}"))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

async fn accept_loop(
    listener: TcpListener,
    name: Arc<str>,
    tls: Option<TlsAcceptor>,
    raw: bool,
) -> Result<(), String> {
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(accepted) => accepted,
            // Out of descriptors and the like: try again shortly rather than spin or die.
            Err(e) => {
                eprintln!("accept: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let name = name.clone();
        let tls = tls.clone();
        tokio::spawn(async move {
            if raw {
                println!("RAW");
                raw_echo(stream, &name).await;
            } else if let Some(acceptor) = tls {
                match acceptor.accept(stream).await {
                    Ok(stream) => serve_http(stream, name, true).await,
                    Err(e) => eprintln!("TLS handshake: {e}"),
                }
            } else {
                serve_http(stream, name, false).await;
            }
        });
    }
}

/// `raw NAME\n`, then every byte back until the peer closes.
async fn raw_echo(mut stream: tokio::net::TcpStream, name: &str) {
    let (mut rx, mut tx) = stream.split();
    if tx
        .write_all(format!("raw {name}\n").as_bytes())
        .await
        .is_ok()
    {
        let _ = tokio::io::copy(&mut rx, &mut tx).await;
    }
}

async fn serve_http<S>(stream: S, name: Arc<str>, tls: bool)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = service_fn(move |req| answer(req, name.clone(), tls));
    let builder = auto::Builder::new(TokioExecutor::new());
    if let Err(e) = builder
        .serve_connection_with_upgrades(TokioIo::new(stream), service)
        .await
    {
        eprintln!("connection: {e}");
    }
}

async fn answer(
    req: Request<Incoming>,
    name: Arc<str>,
    tls: bool,
) -> Result<Response<Body>, Infallible> {
    println!("REQ {} {}", req.method(), req.uri().path());
    let query = query_pairs(req.uri().query().unwrap_or(""));
    let response = match req.uri().path() {
        "/health" => text(StatusCode::OK, "ok\n"),
        "/ws" => websocket_upgrade(req),
        "/slow" => slow(&name, seconds_param(&query, "seconds", 1)),
        "/delay" => {
            let ms = query.get("ms").and_then(|v| v.parse().ok()).unwrap_or(0);
            tokio::time::sleep(Duration::from_millis(ms).min(MAX_SLOW)).await;
            json_response(req, &name, tls).await
        }
        "/trailers" => {
            let mut response = json_response(req, &name, tls).await;
            let body = std::mem::replace(response.body_mut(), empty());
            *response.body_mut() = with_trailers(body).await;
            response
        }
        _ => json_response(req, &name, tls).await,
    };
    Ok(response)
}

fn query_pairs(query: &str) -> BTreeMap<String, String> {
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| match p.split_once('=') {
            Some((k, v)) => (k.to_owned(), v.to_owned()),
            None => (p.to_owned(), String::new()),
        })
        .collect()
}

fn seconds_param(query: &BTreeMap<String, String>, key: &str, default: u64) -> Duration {
    let seconds = query
        .get(key)
        .and_then(|v| v.parse().ok())
        .unwrap_or(default);
    Duration::from_secs(seconds).min(MAX_SLOW)
}

fn empty() -> Body {
    Full::new(Bytes::new()).boxed()
}

fn text(status: StatusCode, body: &'static str) -> Response<Body> {
    let mut response = Response::new(Full::new(Bytes::from_static(body.as_bytes())).boxed());
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    response
}

/// What the target saw, as JSON; the request body is read (and counted) first.
async fn json_response(req: Request<Incoming>, name: &str, tls: bool) -> Response<Body> {
    let (parts, body) = req.into_parts();
    let body_bytes = body.collect().await.map_or(0, |b| b.to_bytes().len());
    let version = match parts.version {
        Version::HTTP_10 => "HTTP/1.0",
        Version::HTTP_11 => "HTTP/1.1",
        Version::HTTP_2 => "HTTP/2",
        _ => "other",
    };
    let seen = serde_json::json!({
        "target": name,
        "method": parts.method.as_str(),
        "path": parts.uri.path(),
        "query": parts.uri.query().unwrap_or(""),
        "version": version,
        "tls": tls,
        "headers": headers_json(&parts.headers),
        "body_bytes": body_bytes,
    });
    let mut response = Response::new(Full::new(Bytes::from(seen.to_string())).boxed());
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

/// Header names (lower case, as hyper keeps them) to values; repeated headers joined by
/// `, ` as a proxy may fold them.
fn headers_json(headers: &HeaderMap) -> BTreeMap<String, String> {
    let mut out: BTreeMap<String, String> = BTreeMap::new();
    for (name, value) in headers {
        let value = String::from_utf8_lossy(value.as_bytes()).into_owned();
        out.entry(name.as_str().to_owned())
            .and_modify(|v| {
                v.push_str(", ");
                v.push_str(&value);
            })
            .or_insert(value);
    }
    out
}

/// `NAME i\n` every 100 ms for `length`: a long response that streams (a draining test
/// removes the target meanwhile).
fn slow(name: &str, length: Duration) -> Response<Body> {
    let chunks = (length.as_millis() / 100) as u64;
    let name = name.to_owned();
    let body = stream::unfold(0u64, move |i| {
        let name = name.clone();
        async move {
            if i >= chunks {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
            let chunk = Frame::data(Bytes::from(format!("{name} {i}\n")));
            Some((Ok::<_, Infallible>(chunk), i + 1))
        }
    });
    let mut response = Response::new(StreamBody::new(body).boxed());
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    response
}

/// `body`, then the trailers gRPC ends with (h2 carries them; HTTP/1.1 only when chunked and
/// the client sent `TE: trailers`).
async fn with_trailers(body: Body) -> Body {
    let data = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let mut trailers = HeaderMap::new();
    trailers.insert("grpc-status", HeaderValue::from_static("0"));
    trailers.insert("x-trailer", HeaderValue::from_static("yes"));
    let frames = [Frame::data(data), Frame::trailers(trailers)]
        .into_iter()
        .map(Ok::<_, Infallible>);
    StreamBody::new(stream::iter(frames)).boxed()
}

/// 101 and an echo of every text and binary frame on the upgraded connection; 400 for a
/// request that is no websocket handshake.
fn websocket_upgrade(mut req: Request<Incoming>) -> Response<Body> {
    let is_upgrade = req
        .headers()
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
    let key = req
        .headers()
        .get(header::SEC_WEBSOCKET_KEY)
        .and_then(|v| v.to_str().ok())
        .map(websocket::accept_key);
    let (true, Some(accept)) = (is_upgrade, key) else {
        return text(StatusCode::BAD_REQUEST, "not a websocket handshake\n");
    };
    let Ok(accept) = HeaderValue::from_str(&accept) else {
        return text(StatusCode::BAD_REQUEST, "bad websocket key\n");
    };
    let on_upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        match on_upgrade.await {
            Ok(upgraded) => websocket_echo(TokioIo::new(upgraded)).await,
            Err(e) => eprintln!("websocket upgrade: {e}"),
        }
    });
    let mut response = Response::new(empty());
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let headers = response.headers_mut();
    headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    headers.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    headers.insert(header::SEC_WEBSOCKET_ACCEPT, accept);
    response
}

async fn websocket_echo<S: AsyncRead + AsyncWrite + Unpin>(mut io: S) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    loop {
        loop {
            let (frame, used) = match websocket::decode(&buf) {
                Ok(Some(decoded)) => decoded,
                Ok(None) => break,
                Err(e) => {
                    eprintln!("websocket: {e}");
                    return;
                }
            };
            buf.drain(..used);
            let reply = match frame.opcode {
                websocket::opcode::TEXT | websocket::opcode::BINARY => frame.opcode,
                websocket::opcode::PING => websocket::opcode::PONG,
                websocket::opcode::CLOSE => {
                    let _ = io
                        .write_all(&websocket::encode(websocket::opcode::CLOSE, &[], None))
                        .await;
                    return;
                }
                _ => continue,
            };
            if io
                .write_all(&websocket::encode(reply, &frame.payload, None))
                .await
                .is_err()
            {
                return;
            }
        }
        match io.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}
