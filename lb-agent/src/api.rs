//! The control API's server: HTTP/1.1 and JSON (the `protocol`), on the control socket
//! (mode 0600) and, optionally, on a TCP address that requires a bearer token. `openapi.json`
//! documents the protocol's route table (a test holds them together). The CLI is a client of
//! this API (`client`).
//!
//! Every answer carries the agent's state version in `ETag`; a write that sends `If-Match`
//! with an older version is refused (412) instead of overwriting a change it did not see.

use std::{convert::Infallible, os::unix::fs::PermissionsExt as _, path::Path, sync::Arc};

use http_body_util::{BodyExt as _, Full, Limited};
use hyper::{
    Method, StatusCode,
    body::{Bytes, Incoming},
    header,
    service::service_fn,
};
use hyper_util::rt::TokioIo;
use tokio::sync::watch;

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
    /// The socket file or its directory could not be made.
    #[error("binding the control socket {path}: {source}")]
    Io {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Binds the control socket: refuses if another agent answers on it, replaces a stale file.
pub fn bind(path: &Path) -> Result<std::os::unix::net::UnixListener, BindError> {
    let io = |source| BindError::Io {
        path: path.to_owned(),
        source,
    };
    if path.exists() {
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

fn answer(status: u16, content_type: &str, body: Vec<u8>, version: u64) -> hyper::Response<Body> {
    let mut response = hyper::Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() =
        StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let headers = response.headers_mut();
    if let Ok(v) = header::HeaderValue::from_str(content_type) {
        headers.insert(header::CONTENT_TYPE, v);
    }
    if let Ok(v) = header::HeaderValue::from_str(&format!("\"{version}\"")) {
        headers.insert(header::ETAG, v);
    }
    response
}

fn error_answer(e: &ApiError, version: u64) -> hyper::Response<Body> {
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

/// Answers one HTTP request.
async fn serve_one(
    agent: Handle,
    access: Access,
    shutdown: watch::Sender<bool>,
    request: hyper::Request<Incoming>,
) -> Result<hyper::Response<Body>, Infallible> {
    let version = agent.version();
    if let Err(e) = authorized(&access, &request) {
        return Ok(error_answer(&e, version));
    }
    let method = request.method().as_str().to_owned();
    let path = request.uri().path().to_owned();
    let query = request.uri().query().map(str::to_owned);
    let if_match = request
        .headers()
        .get(header::IF_MATCH)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.trim().trim_matches('"').parse::<u64>());
    let body = match Limited::new(request.into_body(), MAX_BODY).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(e) => {
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
            return Ok(match agent.metrics().await {
                Ok(text) => answer(200, metrics::CONTENT_TYPE, text.into_bytes(), version),
                Err(e) => error_answer(&e, version),
            });
        }
        Err(e) => return Ok(error_answer(&e, version)),
    };
    let detach = matches!(request, Request::Detach);
    let answered = agent.call(request, if_match).await;
    let version = agent.version();
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

/// Serves HTTP on `listener` until `shutdown` turns true (a detach turns it true itself).
pub async fn serve<L>(listener: L, agent: Handle, access: Access, shutdown: watch::Sender<bool>)
where
    L: Accept,
{
    let mut stop = shutdown.subscribe();
    loop {
        let stream = tokio::select! {
            _ = stop.changed() => return,
            accepted = listener.accept_one() => match accepted {
                Ok(stream) => stream,
                Err(e) => {
                    tracing::debug!(error = %e, "accept failed");
                    continue;
                }
            },
        };
        let (agent, access, shutdown) = (agent.clone(), access.clone(), shutdown.clone());
        tokio::spawn(async move {
            let service = service_fn(move |request| {
                serve_one(agent.clone(), access.clone(), shutdown.clone(), request)
            });
            if let Err(e) = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                tracing::debug!(error = %e, "API connection ended with an error");
            }
        });
    }
}

/// A listener the API can serve: the unix socket or a TCP address.
pub trait Accept {
    type Stream: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static;
    fn accept_one(&self)
    -> impl std::future::Future<Output = std::io::Result<Self::Stream>> + Send;
}

impl Accept for tokio::net::UnixListener {
    type Stream = tokio::net::UnixStream;
    async fn accept_one(&self) -> std::io::Result<Self::Stream> {
        self.accept().await.map(|(s, _)| s)
    }
}

impl Accept for tokio::net::TcpListener {
    type Stream = tokio::net::TcpStream;
    async fn accept_one(&self) -> std::io::Result<Self::Stream> {
        self.accept().await.map(|(s, _)| s)
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
    fn tokens_compare_whole() {
        assert!(same_secret(b"s3cret", b"s3cret"));
        assert!(!same_secret(b"s3cret", b"s3cre"));
        assert!(!same_secret(b"s3cret", b"s3cres"));
    }
}
