//! The control API: HTTP/1.1 and JSON, on the control socket (mode 0600) and, optionally, on
//! a TCP address that requires a bearer token. `ROUTES` lists every endpoint; `openapi.json`
//! documents the same list (a test holds them together). The CLI is a client of this API.
//!
//! Every answer carries the agent's state version in `ETag`; a write that sends `If-Match`
//! with an older version is refused (412) instead of overwriting a change it did not see.

use std::{
    convert::Infallible,
    net::{IpAddr, SocketAddr},
    sync::{Arc, Mutex},
};

use http_body_util::{BodyExt as _, Full, Limited};
use hyper::{
    Method, StatusCode,
    body::{Bytes, Incoming},
    header,
    service::service_fn,
};
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use tokio::sync::watch;

use crate::{
    config::HealthCheck,
    control::{self, Agent, Request, Response},
    metrics,
};

/// The OpenAPI document of this API, served at `/openapi.json`.
pub const OPENAPI: &str = include_str!("../openapi.json");

/// Largest request body (a config file).
const MAX_BODY: usize = 1 << 20;

/// Every endpoint: method and path (`{name}` is a path parameter).
pub const ROUTES: &[(&str, &str)] = &[
    ("GET", "/v1/status"),
    ("GET", "/v1/listeners"),
    ("GET", "/v1/target-groups"),
    ("PUT", "/v1/target-groups/{group}/health-check"),
    ("GET", "/v1/targets"),
    ("POST", "/v1/target-groups/{group}/targets"),
    ("PATCH", "/v1/target-groups/{group}/targets/{target}"),
    ("DELETE", "/v1/target-groups/{group}/targets/{target}"),
    ("GET", "/v1/stats"),
    ("GET", "/v1/flows"),
    ("GET", "/v1/overrides"),
    ("DELETE", "/v1/overrides"),
    ("GET", "/v1/config"),
    ("POST", "/v1/config/validate"),
    ("PUT", "/v1/config"),
    ("POST", "/v1/reload"),
    ("POST", "/v1/detach"),
    ("GET", "/metrics"),
    ("GET", "/openapi.json"),
];

/// What a request asks for.
#[derive(Debug, Clone, PartialEq)]
pub enum Endpoint {
    Agent(Request),
    Metrics,
    OpenApi,
}

/// A refused request: status and message.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiError(pub u16, pub String);

fn bad(message: impl Into<String>) -> ApiError {
    ApiError(400, message.into())
}

/// Parses `ADDR`, `ADDR:PORT`, `[V6]:PORT`.
pub fn parse_target(text: &str) -> Result<(IpAddr, Option<u16>), String> {
    if let Ok(sa) = text.parse::<SocketAddr>() {
        return Ok((sa.ip(), Some(sa.port())));
    }
    text.trim_start_matches('[')
        .trim_end_matches(']')
        .parse::<IpAddr>()
        .map(|ip| (ip, None))
        .map_err(|_| format!("`{text}` is not ADDR, ADDR:PORT or [IPV6]:PORT"))
}

/// `%XX` decoding of a path segment or query value; none for a malformed escape.
fn percent_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// Escapes what may not stand in a path segment.
fn percent_encode(text: &str) -> String {
    let mut out = String::new();
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~:".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn query_value(query: Option<&str>, key: &str) -> Result<Option<String>, ApiError> {
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        if k == key {
            return percent_decode(v)
                .map(Some)
                .ok_or_else(|| bad(format!("bad escape in `{pair}`")));
        }
    }
    Ok(None)
}

fn json<'a, T: Deserialize<'a>>(body: &'a [u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| bad(format!("bad JSON body: {e}")))
}

fn text(body: &[u8]) -> Result<String, ApiError> {
    String::from_utf8(body.to_vec()).map_err(|_| bad("the body is not UTF-8"))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewTarget {
    address: IpAddr,
    port: Option<u16>,
    #[serde(default = "one")]
    weight: u32,
}

fn one() -> u32 {
    1
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TargetChange {
    weight: u32,
}

/// What `method path?query` with `body` asks for.
pub fn route(
    method: &str,
    path: &str,
    query: Option<&str>,
    body: &[u8],
) -> Result<Endpoint, ApiError> {
    let segments: Vec<String> = path
        .trim_start_matches('/')
        .split('/')
        .map(|s| percent_decode(s).ok_or_else(|| bad(format!("bad escape in `{path}`"))))
        .collect::<Result<_, _>>()?;
    let segments: Vec<&str> = segments.iter().map(String::as_str).collect();
    let request = match (method, segments.as_slice()) {
        ("GET", ["metrics"]) => return Ok(Endpoint::Metrics),
        ("GET", ["openapi.json"]) => return Ok(Endpoint::OpenApi),
        ("GET", ["v1", "status"]) => Request::Status,
        ("GET", ["v1", "listeners"]) => Request::Listeners,
        ("GET", ["v1", "target-groups"]) => Request::Groups,
        ("PUT", ["v1", "target-groups", group, "health-check"]) => Request::HealthCheckSet {
            group: (*group).to_owned(),
            health_check: json::<HealthCheck>(body)?,
        },
        ("GET", ["v1", "targets"]) => Request::TargetsList {
            group: query_value(query, "group")?,
        },
        ("POST", ["v1", "target-groups", group, "targets"]) => {
            let t: NewTarget = json(body)?;
            Request::TargetsAdd {
                group: (*group).to_owned(),
                address: t.address,
                port: t.port,
                weight: t.weight,
            }
        }
        ("PATCH", ["v1", "target-groups", group, "targets", target]) => {
            let (address, port) = parse_target(target).map_err(bad)?;
            Request::TargetsWeight {
                group: (*group).to_owned(),
                address,
                port,
                weight: json::<TargetChange>(body)?.weight,
            }
        }
        ("DELETE", ["v1", "target-groups", group, "targets", target]) => {
            let (address, port) = parse_target(target).map_err(bad)?;
            Request::TargetsRemove {
                group: (*group).to_owned(),
                address,
                port,
            }
        }
        ("GET", ["v1", "stats"]) => Request::Stats,
        ("GET", ["v1", "flows"]) => Request::Flows {
            limit: query_value(query, "limit")?
                .map(|l| {
                    l.parse::<usize>()
                        .map_err(|_| bad(format!("limit `{l}` is not a number")))
                })
                .transpose()?,
        },
        ("GET", ["v1", "overrides"]) => Request::OverridesList,
        ("DELETE", ["v1", "overrides"]) => Request::OverridesClear {
            group: query_value(query, "group")?,
        },
        ("GET", ["v1", "config"]) => Request::ConfigGet,
        ("POST", ["v1", "config", "validate"]) => Request::ConfigValidate { text: text(body)? },
        ("PUT", ["v1", "config"]) => Request::ConfigApply { text: text(body)? },
        ("POST", ["v1", "reload"]) => Request::Reload,
        ("POST", ["v1", "detach"]) => Request::Detach,
        _ => {
            let known = ROUTES.iter().any(|(_, p)| matches_pattern(p, &segments));
            return Err(if known {
                ApiError(405, format!("{method} is not allowed on {path}"))
            } else {
                ApiError(404, format!("no endpoint {path}"))
            });
        }
    };
    Ok(Endpoint::Agent(request))
}

fn matches_pattern(pattern: &str, segments: &[&str]) -> bool {
    let parts: Vec<&str> = pattern.trim_start_matches('/').split('/').collect();
    parts.len() == segments.len()
        && parts
            .iter()
            .zip(segments)
            .all(|(p, s)| p.starts_with('{') || p == s)
}

/// The HTTP request that asks for `request`: method, path and query, JSON or text body.
pub fn http_of(request: &Request) -> (&'static str, String, Option<Vec<u8>>) {
    let target = |address: &IpAddr, port: &Option<u16>| {
        percent_encode(&match port {
            Some(p) => SocketAddr::new(*address, *p).to_string(),
            None => address.to_string(),
        })
    };
    let body = |v: serde_json::Value| Some(v.to_string().into_bytes());
    match request {
        Request::Status => ("GET", "/v1/status".into(), None),
        Request::Listeners => ("GET", "/v1/listeners".into(), None),
        Request::Groups => ("GET", "/v1/target-groups".into(), None),
        Request::HealthCheckSet {
            group,
            health_check,
        } => (
            "PUT",
            format!("/v1/target-groups/{}/health-check", percent_encode(group)),
            body(serde_json::json!(health_check)),
        ),
        Request::TargetsList { group } => (
            "GET",
            match group {
                Some(g) => format!("/v1/targets?group={}", percent_encode(g)),
                None => "/v1/targets".into(),
            },
            None,
        ),
        Request::TargetsAdd {
            group,
            address,
            port,
            weight,
        } => (
            "POST",
            format!("/v1/target-groups/{}/targets", percent_encode(group)),
            body(serde_json::json!({ "address": address, "port": port, "weight": weight })),
        ),
        Request::TargetsWeight {
            group,
            address,
            port,
            weight,
        } => (
            "PATCH",
            format!(
                "/v1/target-groups/{}/targets/{}",
                percent_encode(group),
                target(address, port)
            ),
            body(serde_json::json!({ "weight": weight })),
        ),
        Request::TargetsRemove {
            group,
            address,
            port,
        } => (
            "DELETE",
            format!(
                "/v1/target-groups/{}/targets/{}",
                percent_encode(group),
                target(address, port)
            ),
            None,
        ),
        Request::Stats => ("GET", "/v1/stats".into(), None),
        Request::Flows { limit } => (
            "GET",
            match limit {
                Some(n) => format!("/v1/flows?limit={n}"),
                None => "/v1/flows".into(),
            },
            None,
        ),
        Request::OverridesList => ("GET", "/v1/overrides".into(), None),
        Request::OverridesClear { group } => (
            "DELETE",
            match group {
                Some(g) => format!("/v1/overrides?group={}", percent_encode(g)),
                None => "/v1/overrides".into(),
            },
            None,
        ),
        Request::ConfigGet => ("GET", "/v1/config".into(), None),
        Request::ConfigValidate { text } => (
            "POST",
            "/v1/config/validate".into(),
            Some(text.clone().into_bytes()),
        ),
        Request::ConfigApply { text } => {
            ("PUT", "/v1/config".into(), Some(text.clone().into_bytes()))
        }
        Request::Reload => ("POST", "/v1/reload".into(), None),
        Request::Detach => ("POST", "/v1/detach".into(), None),
    }
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
    let mut response = answer(
        e.0,
        "application/json",
        serde_json::json!({ "error": e.1 }).to_string().into_bytes(),
        version,
    );
    if e.0 == 401
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
                Err(ApiError(404, "this address serves /metrics only".into()))
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
                Some(_) => Err(ApiError(401, "wrong bearer token".into())),
                None => Err(ApiError(
                    401,
                    "a bearer token is required (Authorization: Bearer ...)".into(),
                )),
            }
        }
    }
}

/// Answers one HTTP request.
async fn serve_one(
    agent: Arc<Mutex<Agent>>,
    access: Access,
    shutdown: watch::Sender<bool>,
    request: hyper::Request<Incoming>,
) -> Result<hyper::Response<Body>, Infallible> {
    let version = control::version(&agent);
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
                &ApiError(status, format!("reading the body: {e}")),
                version,
            ));
        }
    };
    let if_match = match if_match {
        None => None,
        Some(Ok(v)) => Some(v),
        Some(Err(_)) => {
            return Ok(error_answer(
                &bad("If-Match must be a version the agent gave, like \"12\""),
                version,
            ));
        }
    };
    let endpoint = match route(&method, &path, query.as_deref(), &body) {
        Ok(endpoint) => endpoint,
        Err(e) => return Ok(error_answer(&e, version)),
    };
    let request = match endpoint {
        Endpoint::OpenApi => {
            return Ok(answer(
                200,
                "application/json",
                OPENAPI.as_bytes().to_vec(),
                version,
            ));
        }
        Endpoint::Metrics => {
            let agent = agent.clone();
            let text = tokio::task::spawn_blocking(move || metrics::render_agent(&agent))
                .await
                .unwrap_or_else(|e| Err(format!("internal error: {e}")));
            return Ok(match text {
                Ok(text) => answer(200, metrics::CONTENT_TYPE, text.into_bytes(), version),
                Err(message) => error_answer(&ApiError(500, message), version),
            });
        }
        Endpoint::Agent(request) => request,
    };
    let detach = matches!(request, Request::Detach);
    let agent_for_call = agent.clone();
    let response =
        tokio::task::spawn_blocking(move || control::handle(&agent_for_call, request, if_match))
            .await
            .unwrap_or_else(|e| Response::Error {
                status: 500,
                message: format!("internal error: {e}"),
            });
    let version = control::version(&agent);
    Ok(match response {
        Response::Ok { result } => {
            if detach {
                let _ = shutdown.send(true);
            }
            answer(
                200,
                "application/json",
                result.to_string().into_bytes(),
                version,
            )
        }
        Response::Error { status, message } => error_answer(&ApiError(status, message), version),
    })
}

/// Serves HTTP on `listener` until `shutdown` turns true (a detach turns it true itself).
pub async fn serve<L>(
    listener: L,
    agent: Arc<Mutex<Agent>>,
    access: Access,
    shutdown: watch::Sender<bool>,
) where
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

    fn every_request() -> Vec<Request> {
        let v6: IpAddr = "fd00:198:18::21".parse().unwrap();
        let v4: IpAddr = "198.18.0.21".parse().unwrap();
        vec![
            Request::Status,
            Request::Listeners,
            Request::Groups,
            Request::HealthCheckSet {
                group: "web".into(),
                health_check: HealthCheck::default(),
            },
            Request::TargetsList { group: None },
            Request::TargetsList {
                group: Some("web-2".into()),
            },
            Request::TargetsAdd {
                group: "web".into(),
                address: v6,
                port: Some(8080),
                weight: 3,
            },
            Request::TargetsWeight {
                group: "web".into(),
                address: v6,
                port: Some(8080),
                weight: 0,
            },
            Request::TargetsRemove {
                group: "web".into(),
                address: v4,
                port: None,
            },
            Request::Stats,
            Request::Flows { limit: None },
            Request::Flows { limit: Some(10) },
            Request::OverridesList,
            Request::OverridesClear { group: None },
            Request::OverridesClear {
                group: Some("web".into()),
            },
            Request::ConfigGet,
            Request::ConfigValidate {
                text: "[agent]\n".into(),
            },
            Request::ConfigApply {
                text: "[agent]\n".into(),
            },
            Request::Reload,
            Request::Detach,
        ]
    }

    #[test]
    fn every_request_goes_to_http_and_back() {
        for request in every_request() {
            let (method, uri, body) = http_of(&request);
            let (path, query) = match uri.split_once('?') {
                Some((p, q)) => (p, Some(q)),
                None => (uri.as_str(), None),
            };
            let back = route(method, path, query, body.as_deref().unwrap_or(b""));
            assert_eq!(back, Ok(Endpoint::Agent(request.clone())), "{method} {uri}");
            assert!(
                ROUTES.iter().any(|(m, p)| *m == method
                    && matches_pattern(
                        p,
                        &path.trim_start_matches('/').split('/').collect::<Vec<_>>()
                    )),
                "{method} {path} is not in ROUTES"
            );
        }
    }

    #[test]
    fn unknown_paths_are_404_and_wrong_methods_405() {
        assert_eq!(route("GET", "/v2/nothing", None, b"").unwrap_err().0, 404);
        assert_eq!(route("DELETE", "/v1/status", None, b"").unwrap_err().0, 405);
        let e = route(
            "POST",
            "/v1/target-groups/web/targets",
            None,
            b"{\"adress\": 1}",
        )
        .unwrap_err();
        assert_eq!(e.0, 400);
        assert!(e.1.contains("adress"), "{}", e.1);
        assert_eq!(
            route(
                "DELETE",
                "/v1/target-groups/web/targets/nonsense",
                None,
                b""
            )
            .unwrap_err()
            .0,
            400
        );
    }

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
            .map(|(m, p)| ((*m).to_owned(), (*p).to_owned()))
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
