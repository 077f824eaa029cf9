//! The control API's server: HTTP/1.1 and JSON (the `protocol`), on the control socket
//! (mode 0600) and, optionally, on a TCP address that requires a bearer token. `openapi.json`
//! documents the protocol's route table (a test holds them together). The CLI is a client of
//! this API (`client`).
//!
//! Every answer carries the agent's state version in `ETag`; a write that sends `If-Match`
//! with an older version is refused (412) instead of overwriting a change it did not see.

mod connections;

use std::{
    convert::Infallible, os::unix::fs::PermissionsExt as _, path::Path, sync::Arc, time::Duration,
};

use http_body_util::{BodyExt as _, Full, Limited};
use hyper::{
    Method, StatusCode,
    body::{Bytes, Incoming},
    header,
    service::service_fn,
};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::sync::watch;

pub use connections::ServerLimits;
use connections::{AcceptBackoff, Activity, ConnectionCap, Watched};

use crate::{
    agent::Handle,
    metrics,
    protocol::{ApiError, Request, routes::Endpoint},
};

/// The OpenAPI document of this API, served at `/openapi.json`.
pub const OPENAPI: &str = include_str!("../openapi.json");

/// Largest request body (a config file).
const MAX_BODY: usize = 1 << 20;

/// Errors binding the control socket.
#[derive(Debug, thiserror::Error)]
pub enum BindError {
    /// Another agent already serves this socket.
    #[error("another agent is already running on {0}; stop it or use another --socket")]
    InUse(std::path::PathBuf),
    /// Something other than a socket is at the path: the agent deletes only stale sockets.
    #[error(
        "{0} exists and is not a socket; the agent replaces only a stale socket there: move the file away or choose another --socket"
    )]
    NotASocket(std::path::PathBuf),
    /// The socket file or its directory could not be made.
    #[error("binding the control socket {path}: {source}")]
    Io {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Binds the control socket: refuses if another agent answers on it or if the path holds
/// something other than a socket, replaces a stale socket.
pub fn bind(path: &Path) -> Result<std::os::unix::net::UnixListener, BindError> {
    use std::os::unix::fs::FileTypeExt as _;
    let io = |source| BindError::Io {
        path: path.to_owned(),
        source,
    };
    // Not followed: a symlink there is not a socket either.
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if !meta.file_type().is_socket() {
            return Err(BindError::NotASocket(path.to_owned()));
        }
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(BindError::InUse(path.to_owned()));
        }
        std::fs::remove_file(path).map_err(io)?;
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io)?;
    }
    let listener = std::os::unix::net::UnixListener::bind(path).map_err(io)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(io)?;
    listener.set_nonblocking(true).map_err(io)?;
    Ok(listener)
}

/// Who may use a listener.
#[derive(Clone)]
pub enum Access {
    /// The unix socket: its file mode decides.
    Local,
    /// TCP: the bearer token must match.
    Token(Arc<String>),
    /// TCP, `/metrics` only, no token.
    MetricsOnly,
}

type Body = Full<Bytes>;

/// An answer; with the agent's state `version` in `ETag` if given.
fn answer(
    status: u16,
    content_type: &str,
    body: Vec<u8>,
    version: Option<u64>,
) -> hyper::Response<Body> {
    let mut response = hyper::Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() =
        StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let headers = response.headers_mut();
    if let Ok(v) = header::HeaderValue::from_str(content_type) {
        headers.insert(header::CONTENT_TYPE, v);
    }
    if let Some(version) = version
        && let Ok(v) = header::HeaderValue::from_str(&format!("\"{version}\""))
    {
        headers.insert(header::ETAG, v);
    }
    response
}

fn error_answer(e: &ApiError, version: Option<u64>) -> hyper::Response<Body> {
    let mut response = answer(e.status, "application/json", e.to_json(), version);
    if e.status == 401
        && let Ok(v) = header::HeaderValue::from_str("Bearer realm=\"lb-agent\"")
    {
        response.headers_mut().insert(header::WWW_AUTHENTICATE, v);
    }
    response
}

/// Compares in time that does not depend on where they differ.
fn same_secret(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn authorized(access: &Access, request: &hyper::Request<Incoming>) -> Result<(), ApiError> {
    match access {
        Access::Local => Ok(()),
        Access::MetricsOnly => {
            if request.method() == Method::GET && request.uri().path() == "/metrics" {
                Ok(())
            } else {
                Err(ApiError::new(404, "this address serves /metrics only"))
            }
        }
        Access::Token(token) => {
            let given = request
                .headers()
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "));
            match given {
                Some(given) if same_secret(given.as_bytes(), token.as_bytes()) => Ok(()),
                Some(_) => Err(ApiError::new(401, "wrong bearer token")),
                None => Err(ApiError::new(
                    401,
                    "a bearer token is required (Authorization: Bearer ...)",
                )),
            }
        }
    }
}

/// What answering a request needs.
struct Context {
    agent: Handle,
    access: Access,
    shutdown: watch::Sender<bool>,
    scrapes: Arc<MetricsScrapes>,
    /// A request body must arrive whole within this.
    body_timeout: Duration,
}

/// Answers one HTTP request.
async fn serve_one(
    context: Context,
    request: hyper::Request<Incoming>,
) -> Result<hyper::Response<Body>, Infallible> {
    let Context {
        agent,
        access,
        shutdown,
        scrapes,
        body_timeout,
    } = context;
    // Before anything else, the agent's state included: a client without the token learns
    // nothing (not even the version) and costs nothing.
    if let Err(e) = authorized(&access, &request) {
        return Ok(error_answer(&e, None));
    }
    let version = Some(agent.version());
    let method = request.method().as_str().to_owned();
    let path = request.uri().path().to_owned();
    let query = request.uri().query().map(str::to_owned);
    let if_match = request
        .headers()
        .get(header::IF_MATCH)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.trim().trim_matches('"').parse::<u64>());
    let body = Limited::new(request.into_body(), MAX_BODY).collect();
    let body = match tokio::time::timeout(body_timeout, body).await {
        Ok(Ok(collected)) => collected.to_bytes(),
        Err(_) => {
            return Ok(error_answer(
                &ApiError::new(
                    408,
                    format!("the request body did not arrive within {body_timeout:?}"),
                ),
                version,
            ));
        }
        Ok(Err(e)) => {
            let status = if e.is::<http_body_util::LengthLimitError>() {
                413
            } else {
                400
            };
            return Ok(error_answer(
                &ApiError::new(status, format!("reading the body: {e}")),
                version,
            ));
        }
    };
    let if_match = match if_match {
        None => None,
        Some(Ok(v)) => Some(v),
        Some(Err(_)) => {
            return Ok(error_answer(
                &ApiError::bad("If-Match must be a version the agent gave, like \"12\""),
                version,
            ));
        }
    };
    let request = match Endpoint::from_http(&method, &path, query.as_deref(), &body) {
        Ok(Endpoint::Agent(request)) => request,
        Ok(Endpoint::OpenApi) => {
            return Ok(answer(
                200,
                "application/json",
                OPENAPI.as_bytes().to_vec(),
                version,
            ));
        }
        Ok(Endpoint::Metrics) => {
            return Ok(match scrapes.text(&agent).await {
                Ok(text) => answer(200, metrics::CONTENT_TYPE, text.into_bytes(), version),
                Err(e) => error_answer(&e, version),
            });
        }
        Err(e) => return Ok(error_answer(&e, version)),
    };
    let detach = matches!(request, Request::Detach);
    let answered = agent.call(request, if_match).await;
    let version = Some(agent.version());
    Ok(
        match answered.and_then(|a| {
            a.to_json()
                .map_err(|e| ApiError::new(500, format!("encoding the answer: {e}")))
        }) {
            Ok(body) => {
                if detach {
                    let _ = shutdown.send(true);
                }
                answer(200, "application/json", body, version)
            }
            Err(e) => error_answer(&e, version),
        },
    )
}

/// Serves HTTP on `listener` within `limits` until `shutdown` turns true (a detach turns it
/// true itself); `server` names it in logs.
pub async fn serve<L>(
    listener: L,
    agent: Handle,
    access: Access,
    limits: ServerLimits,
    shutdown: watch::Sender<bool>,
) where
    L: Accept,
{
    let server = listener.describe();
    let cap = ConnectionCap::new(limits.max_connections);
    let scrapes = Arc::new(MetricsScrapes::default());
    let mut backoff = AcceptBackoff::default();
    let mut stop = shutdown.subscribe();
    loop {
        let accepted = tokio::select! {
            _ = stop.changed() => return,
            accepted = listener.accept_one() => accepted,
        };
        let stream = match accepted {
            Ok(stream) => {
                backoff.succeeded();
                stream
            }
            Err(e) => {
                let pause = backoff.failed(&e, &server);
                tokio::select! {
                    _ = stop.changed() => return,
                    () = tokio::time::sleep(pause) => continue,
                }
            }
        };
        // Over the cap the connection is closed at once (dropped): it costs nothing more.
        let Some(permit) = cap.admit(&server) else {
            continue;
        };
        let (agent, access, shutdown, scrapes) = (
            agent.clone(),
            access.clone(),
            shutdown.clone(),
            scrapes.clone(),
        );
        let stopped = shutdown.subscribe();
        tokio::spawn(async move {
            let _permit = permit;
            let activity = Activity::new();
            let service_activity = activity.clone();
            let service = service_fn(move |request| {
                let busy = service_activity.busy();
                let context = Context {
                    agent: agent.clone(),
                    access: access.clone(),
                    shutdown: shutdown.clone(),
                    scrapes: scrapes.clone(),
                    body_timeout: limits.idle_timeout,
                };
                async move {
                    let answer = serve_one(context, request).await;
                    drop(busy);
                    answer
                }
            });
            let mut http = hyper::server::conn::http1::Builder::new();
            http.timer(TokioTimer::new())
                .header_read_timeout(limits.header_timeout);
            let connection = http.serve_connection(
                TokioIo::new(Watched::new(stream, activity.clone())),
                service,
            );
            connections::drive(connection, &activity, limits.idle_timeout, stopped).await;
        });
    }
}

/// Scrapes of `/metrics` render one at a time, and share: the scrapes that arrive while one
/// renders wait, and the next rendering answers them all (it began after they arrived, so
/// none sees state older than its own request). A flood of scrapes (the metrics address
/// needs no token) costs one connection-table walk at a time, never one per scrape.
#[derive(Default)]
struct MetricsScrapes {
    /// The last text and when its rendering started.
    last: tokio::sync::Mutex<Option<(tokio::time::Instant, String)>>,
}

impl MetricsScrapes {
    async fn text(&self, agent: &Handle) -> Result<String, ApiError> {
        let arrived = tokio::time::Instant::now();
        let mut last = self.last.lock().await;
        // A rendering that began after this scrape arrived shows nothing older than it.
        if let Some((started, text)) = &*last
            && *started >= arrived
        {
            return Ok(text.clone());
        }
        let started = tokio::time::Instant::now();
        let text = agent.metrics().await?;
        *last = Some((started, text.clone()));
        Ok(text)
    }
}

/// A listener the API can serve: the unix socket or a TCP address.
pub trait Accept {
    type Stream: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static;
    fn accept_one(&self)
    -> impl std::future::Future<Output = std::io::Result<Self::Stream>> + Send;
    /// The address, for logs.
    fn describe(&self) -> String;
}

impl Accept for tokio::net::UnixListener {
    type Stream = tokio::net::UnixStream;
    async fn accept_one(&self) -> std::io::Result<Self::Stream> {
        self.accept().await.map(|(s, _)| s)
    }
    fn describe(&self) -> String {
        self.local_addr()
            .ok()
            .and_then(|a| a.as_pathname().map(|p| p.display().to_string()))
            .unwrap_or_else(|| "the control socket".to_owned())
    }
}

impl Accept for tokio::net::TcpListener {
    type Stream = tokio::net::TcpStream;
    async fn accept_one(&self) -> std::io::Result<Self::Stream> {
        self.accept().await.map(|(s, _)| s)
    }
    fn describe(&self) -> String {
        self.local_addr()
            .map_or_else(|_| "a TCP address".to_owned(), |a| a.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::ROUTES;

    #[test]
    fn the_openapi_document_lists_exactly_the_routes() {
        let doc: serde_json::Value = serde_json::from_str(OPENAPI).expect("openapi.json is JSON");
        assert!(
            doc["openapi"].as_str().unwrap_or("").starts_with("3."),
            "{}",
            doc["openapi"]
        );
        let mut documented: Vec<(String, String)> = Vec::new();
        for (path, ops) in doc["paths"].as_object().expect("paths") {
            for (method, op) in ops.as_object().expect("operations") {
                assert!(
                    op["responses"].is_object(),
                    "{method} {path} has no responses"
                );
                assert!(op["summary"].is_string(), "{method} {path} has no summary");
                documented.push((method.to_uppercase(), path.clone()));
            }
        }
        documented.sort();
        let mut routes: Vec<(String, String)> = ROUTES
            .iter()
            .map(|r| (r.method.to_owned(), r.path.to_owned()))
            .collect();
        routes.sort();
        assert_eq!(documented, routes);
    }

    #[test]
    fn binding_refuses_to_replace_a_file_that_is_not_a_socket() {
        let dir = std::env::temp_dir().join(format!("lb-bind-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("config.toml");
        std::fs::write(&path, "precious").expect("file");
        let refused = bind(&path).expect_err("a regular file is no socket");
        assert!(matches!(refused, BindError::NotASocket(_)), "{refused}");
        assert!(refused.to_string().contains("is not a socket"), "{refused}");
        assert_eq!(std::fs::read_to_string(&path).expect("kept"), "precious");
        // A stale socket (nobody answers) is replaced.
        let socket = dir.join("agent.sock");
        drop(std::os::unix::net::UnixListener::bind(&socket).expect("stale socket"));
        bind(&socket).expect("a stale socket is replaced");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn tokens_compare_whole() {
        assert!(same_secret(b"s3cret", b"s3cret"));
        assert!(!same_secret(b"s3cret", b"s3cre"));
        assert!(!same_secret(b"s3cret", b"s3cres"));
    }
}
