//! One HTTP request through the proxy: routed by the listener's rules, answered by a fixed
//! response or a redirect, or forwarded to a target of the chosen group (stickiness first,
//! then the group's algorithm) over the group's pooled client, with `X-Forwarded-*` and a
//! request id added and hop-by-hop headers removed; websocket upgrades become a tunnel.
//! Bodies stream both ways; the access log and the counters are written when the response
//! body ends.

use std::{
    future::{Future, ready},
    net::SocketAddr,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    task::{Context, Poll},
    time::{Duration, Instant, SystemTime},
};

use futures_util::future::Either;
use http_body_util::BodyExt as _;
use hyper::{
    HeaderMap, Method, Request, Response, StatusCode, Uri, Version,
    body::{Body, Bytes, Frame, Incoming, SizeHint},
    header::{self, HeaderName, HeaderValue},
};

use super::{
    Shared,
    access_log::AccessRecord,
    answer::{self, Failure},
    balance::{Outstanding, ServingTarget},
    body,
    plan::{GroupPlan, ListenerPlan, Plan},
    redirect::{RedirectError, RedirectRequest, Scheme},
    rules::{CompiledAction, RequestFacts},
    sticky,
    target_client::{BoxError, ProxyBody},
    weighted::WeightedGroups,
};

/// What the proxy knows of a client connection.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    pub listener: Arc<str>,
    pub client: SocketAddr,
    /// The listener's port (`X-Forwarded-Port`, redirects).
    pub port: u16,
    /// Whether the client speaks TLS to the listener (`X-Forwarded-Proto`, cookies' `Secure`).
    pub secure: bool,
    pub tls: Option<TlsInfo>,
    /// The client's address as a header value (`X-Forwarded-For`), made once per connection.
    pub client_ip: HeaderValue,
    /// `port` as a header value (`X-Forwarded-Port`).
    pub port_value: HeaderValue,
}

impl ConnInfo {
    /// A plain connection of `client` to `listener` on `port`.
    pub fn new(listener: Arc<str>, client: SocketAddr, port: u16) -> Self {
        let ip = client.ip().to_canonical().to_string();
        Self {
            listener,
            client,
            port,
            secure: false,
            tls: None,
            client_ip: HeaderValue::from_str(&ip).unwrap_or(HeaderValue::from_static("-")),
            port_value: HeaderValue::from(port),
        }
    }
}

/// The client connection's TLS session (access log).
#[derive(Debug, Clone)]
pub struct TlsInfo {
    pub version: &'static str,
    pub cipher: &'static str,
    pub sni: Option<String>,
}

/// What only the access log needs of a request (copied only when there is a log).
struct LoggedRequest {
    time: SystemTime,
    method: Method,
    host: Option<String>,
    uri: String,
    request_id: Option<String>,
    user_agent: Option<String>,
    bytes_in: Arc<AtomicU64>,
}

/// What the access log and counters need of a request once it is answered.
struct Exchange {
    started: Instant,
    conn: Arc<ConnInfo>,
    listener: Arc<ListenerPlan>,
    rule: Option<u32>,
    group: Option<Arc<GroupPlan>>,
    target: Option<SocketAddr>,
    version: Version,
    request: Option<LoggedRequest>,
    sent_at: Option<Duration>,
    target_duration: Option<Duration>,
    status: u16,
    error: Option<&'static str>,
    /// The target's outstanding-request mark, held until the response has gone.
    outstanding: Option<Outstanding>,
}

impl Exchange {
    /// Writes the access log line and the counters: when the response body has gone (or was
    /// dropped).
    fn finish(self, bytes_out: u64, access_log: Option<&super::access_log::AccessLog>) {
        self.listener.metrics.response(self.status);
        if let Some(rule) = self.listener.rule_metrics(self.rule) {
            rule.response(self.status);
        }
        if let (Some(group), Some(target), Some(took)) =
            (&self.group, self.target, self.target_duration)
            && let Some(m) = group.target_metrics.get(&target)
        {
            m.response(self.status, took);
        }
        let (Some(log), Some(request)) = (access_log, self.request) else {
            return;
        };
        let tls = self.conn.tls.as_ref();
        log.record(AccessRecord {
            time: request.time,
            client: self.conn.client,
            listener: self.listener.name.clone(),
            rule: self.rule,
            target_group: self.group.as_ref().map(|g| g.name.clone()),
            target: self.target,
            method: Some(request.method),
            host: request.host,
            uri: Some(request.uri),
            version: version_text(self.version),
            status: self.status,
            bytes_in: request.bytes_in.load(Ordering::Relaxed),
            bytes_out,
            request_duration: self.sent_at.unwrap_or_default(),
            target_duration: self.target_duration,
            response_duration: self.started.elapsed(),
            tls_version: tls.map(|t| t.version),
            tls_cipher: tls.map(|t| t.cipher),
            sni: tls.and_then(|t| t.sni.clone()),
            request_id: request.request_id,
            user_agent: request.user_agent,
            error: self.error,
        });
    }
}

fn version_text(version: Version) -> &'static str {
    match version {
        Version::HTTP_2 => "HTTP/2",
        Version::HTTP_10 => "HTTP/1.0",
        _ => "HTTP/1.1",
    }
}

/// Serves one request of a connection of `conn`'s listener.
///
/// Not an `async fn`: routing, fixed responses and redirects need no waiting, and a forward's
/// future is the only one that must hold anything (its size is moved with every request).
pub fn handle(
    request: Request<Incoming>,
    conn: Arc<ConnInfo>,
    shared: Arc<Shared>,
) -> impl Future<Output = Result<Response<ProxyBody>, std::convert::Infallible>> + Send {
    let started = Instant::now();
    let plan: Arc<Plan> = shared.plan.load_full();
    // Borrowed, and the plan moved on to a forward, not cloned: each clone of an `Arc` every
    // worker shares is an atomic write to a cache line the other worker also writes.
    let Some(listener) = plan.listeners.get(&*conn.listener) else {
        // Removed by a reload while this connection was open.
        return Either::Left(ready(Ok(Failure::NoGroup.response(true))));
    };
    let (mut parts, body) = request.into_parts();
    if !parts.headers.contains_key(&listener.request_id_header) {
        parts
            .headers
            .insert(listener.request_id_header.clone(), new_request_id());
    }
    // What only the access log needs is copied only when there is one.
    let logged = shared.access_log.load().is_some();
    let facts = RequestFacts::new(&parts.method, &parts.uri, &parts.headers, conn.client.ip());
    let Some(rules) = &listener.rules else {
        return Either::Left(ready(Ok(Failure::NoGroup.response(true))));
    };
    let routed = rules.route(&facts);
    let text = |name: &HeaderName| {
        parts
            .headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let request = logged.then(|| LoggedRequest {
        time: SystemTime::now(),
        method: parts.method.clone(),
        host: facts.host.map(str::to_owned),
        uri: parts
            .uri
            .path_and_query()
            .map_or_else(|| "/".to_owned(), ToString::to_string),
        request_id: text(&listener.request_id_header),
        user_agent: text(&header::USER_AGENT),
        bytes_in: Arc::new(AtomicU64::new(0)),
    });
    let mut exchange = Exchange {
        started,
        conn: conn.clone(),
        listener: listener.clone(),
        rule: routed.rule,
        group: None,
        target: None,
        version: parts.version,
        request,
        sent_at: None,
        target_duration: None,
        status: 0,
        error: None,
        outstanding: None,
    };
    let response = match routed.action {
        CompiledAction::FixedResponse(fixed) => answer::fixed(fixed),
        CompiledAction::Redirect(template) => {
            let request = RedirectRequest {
                scheme: if conn.secure {
                    Scheme::Https
                } else {
                    Scheme::Http
                },
                host: facts.host,
                port: conn.port,
                path: parts.uri.path(),
                query: parts.uri.query(),
            };
            match template.location(&request) {
                Ok(location) => answer::redirect(template.status(), location),
                Err(RedirectError::SameUrl(_)) => fail(&mut exchange, Failure::RedirectLoop),
                Err(_) => fail(&mut exchange, Failure::NoHost),
            }
        }
        CompiledAction::Forward(groups) => {
            let groups = groups.clone();
            let forwarded = Forwarded { plan, conn, shared };
            return Either::Right(forward(forwarded, groups, parts, body, exchange));
        }
    };
    Either::Left(ready(Ok(finish(response, exchange, shared))))
}

/// Records `failure` in `exchange` and gives its answer.
fn fail(exchange: &mut Exchange, failure: Failure) -> Response<ProxyBody> {
    exchange.error = Some(failure.code());
    failure.response(failure == Failure::BadRequest)
}

/// Wraps the response body so the exchange is logged when it ends.
fn finish(
    response: Response<ProxyBody>,
    mut exchange: Exchange,
    shared: Arc<Shared>,
) -> Response<ProxyBody> {
    exchange.status = response.status().as_u16();
    let (parts, body) = response.into_parts();
    let body = Tracked {
        inner: body,
        bytes: 0,
        done: Some((exchange, shared)),
    };
    Response::from_parts(parts, body.boxed())
}

/// What a forward holds besides the request.
struct Forwarded {
    plan: Arc<Plan>,
    conn: Arc<ConnInfo>,
    shared: Arc<Shared>,
}

/// Sends the request to a target of one of `groups`, and answers with the target's response
/// (or the failure's answer).
async fn forward(
    forwarded: Forwarded,
    groups: WeightedGroups,
    mut parts: hyper::http::request::Parts,
    body: Incoming,
    mut exchange: Exchange,
) -> Result<Response<ProxyBody>, std::convert::Infallible> {
    let Forwarded { plan, conn, shared } = forwarded;
    // One function, not a call of an inner `async fn`: that one's future would hold the
    // request's parts and the exchange a second time.
    let response = 'answer: {
        let exchange = &mut exchange;
        let conn = &*conn;
        let (group_name, group_cookie) =
            match choose_group(&groups, conn, exchange, &parts.headers, &shared.sticky) {
                Some(chosen) => chosen,
                None => break 'answer fail(exchange, Failure::NoGroup),
            };
        let Some(group) = plan.groups.get(group_name) else {
            break 'answer fail(exchange, Failure::NoGroup);
        };
        exchange.group = Some(group.clone());
        let sticky = group.sticky.as_ref();
        let sticky_target = sticky
            .and_then(|s| s.cookie.find(&parts.headers))
            .and_then(|token| group.targets.by_token(token));
        let Some(target) = sticky_target.or_else(|| group.targets.pick()) else {
            break 'answer fail(exchange, Failure::NoTarget);
        };
        exchange.target = Some(target.address);
        let outstanding = target.load.start();
        // A websocket over HTTP/2 (extended CONNECT, RFC 8441) goes to the target as the
        // HTTP/1.1 upgrade it knows; its 101 becomes the client's 200.
        let h2_websocket = is_h2_websocket(&parts);
        if h2_websocket {
            if group.client.version() != crate::config::ProtocolVersion::Http1 {
                break 'answer fail(exchange, Failure::TargetFailed);
            }
            into_h1_websocket(&mut parts);
        }
        let upgrade = h2_websocket || is_upgrade(&parts);
        if let Some(sticky) = sticky {
            // The load balancer's tokens mean nothing to the application.
            sticky::strip_lb_cookies(&mut parts.headers, &sticky.cookie.names());
        }
        let client_upgrade = if upgrade {
            parts.extensions.remove::<hyper::upgrade::OnUpgrade>()
        } else {
            None
        };
        // Read before `prepare_request` takes the hop-by-hop headers off.
        let chunked = parts
            .headers
            .get(header::TRANSFER_ENCODING)
            .is_some_and(|te| te.as_bytes().eq_ignore_ascii_case(b"chunked"));
        prepare_request(&mut parts, conn, target, group, upgrade);
        // A chunked body whose first chunk is already malformed goes nowhere: hyper reports a bad
        // chunk size as a body error, and waiting for the first frame (usually in the same
        // packet as the head) turns that into a 400 before the target hears of the request.
        let body = match body::Prefetched::first_frame(body, chunked).await {
            Ok(body) => body,
            Err(()) => {
                exchange.listener.metrics.framing_rejected();
                break 'answer fail(exchange, Failure::BadRequest);
            }
        };
        let body = match &exchange.request {
            Some(logged) => body::Counted::new(body, logged.bytes_in.clone()).boxed(),
            None => body.map_err(|e| -> BoxError { Box::new(e) }).boxed(),
        };
        let request = Request::from_parts(parts, body);
        // One clock read for both the request's duration and the response's deadline (a
        // validated timeout: at most 4000 s, no overflow).
        let sent = Instant::now();
        exchange.sent_at = Some(sent.duration_since(exchange.started));
        let result = tokio::time::timeout_at(
            (sent + group.response_timeout).into(),
            group.client.send(target.address, request),
        )
        .await;
        let mut response = match result {
            Err(_) => {
                if let Some(m) = group.target_metrics.get(&target.address) {
                    m.timeout();
                }
                break 'answer fail(exchange, Failure::TargetTimeout);
            }
            Ok(Err(e)) => {
                tracing::debug!(target = %target.address, error = %e, "request to target failed");
                if let Some(m) = group.target_metrics.get(&target.address) {
                    m.connect_error();
                }
                break 'answer fail(exchange, Failure::TargetFailed);
            }
            Ok(Ok(response)) => response,
        };
        exchange.target_duration = Some(sent.elapsed());
        exchange.outstanding = Some(outstanding);
        let switching = response.status() == StatusCode::SWITCHING_PROTOCOLS;
        remove_hop_by_hop(response.headers_mut(), switching);
        if let Some(sticky) = sticky {
            // lb_cookie: set whenever the target is new to the client (no cookie, or one naming
            // a target no longer in service). app_cookie: when the application sets its cookie
            // (AWS's rule), the companion names the target that set it.
            let due = match &sticky.app_cookie {
                None => sticky_target.is_none(),
                Some(name) => sets_cookie(response.headers(), name),
            };
            if due {
                sticky.cookie.set(
                    response.headers_mut(),
                    &target.token,
                    sticky.duration,
                    conn.secure,
                );
            }
        }
        if let Some((cookie, token, duration)) = group_cookie {
            cookie.set(response.headers_mut(), &token, duration, conn.secure);
        }
        if switching {
            let Some(client_side) = client_upgrade else {
                // A target that switches protocols unasked: nothing to join it to.
                break 'answer fail(exchange, Failure::TargetFailed);
            };
            let target_side = hyper::upgrade::on(&mut response);
            tokio::spawn(tunnel(client_side, target_side));
            let (mut parts, _) = response.into_parts();
            if h2_websocket {
                // RFC 8441 §5: the tunnel opens with a 2xx; HTTP/2 has no upgrade headers.
                parts.status = StatusCode::OK;
                for name in [header::UPGRADE, header::SEC_WEBSOCKET_ACCEPT] {
                    parts.headers.remove(name);
                }
            } else {
                parts
                    .headers
                    .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
            }
            break 'answer Response::from_parts(parts, answer::empty());
        }
        response
    };
    Ok(finish(response, exchange, shared))
}

/// Joins an upgraded client connection to the upgraded target connection (websockets), both
/// ways, until either side closes.
async fn tunnel(client: hyper::upgrade::OnUpgrade, target: hyper::upgrade::OnUpgrade) {
    let (client, target) = match tokio::try_join!(client, target) {
        Ok(both) => both,
        Err(e) => {
            tracing::debug!(error = %e, "an upgrade did not complete");
            return;
        }
    };
    let mut client = hyper_util::rt::TokioIo::new(client);
    let mut target = hyper_util::rt::TokioIo::new(target);
    let _ = tokio::io::copy_bidirectional(&mut client, &mut target).await;
}

/// Whether a response sets the cookie called `name`.
fn sets_cookie(headers: &HeaderMap, name: &str) -> bool {
    headers.get_all(header::SET_COOKIE).iter().any(|v| {
        v.as_bytes()
            .split(|&b| b == b'=')
            .next()
            .is_some_and(|n| n.trim_ascii() == name.as_bytes())
    })
}

/// A group cookie to set: its name, value and duration.
type GroupCookie = (sticky::StickyCookie, String, Duration);

/// The group for a request among a forward's `groups`: the one the client's group cookie
/// names, if the forward is sticky and the cookie names one of them; else a weighted draw.
/// With it, the cookie to set (a sticky forward's new choice).
fn choose_group<'g>(
    groups: &'g WeightedGroups,
    conn: &ConnInfo,
    exchange: &Exchange,
    headers: &HeaderMap,
    key: &sticky::StickyKey,
) -> Option<(&'g str, Option<GroupCookie>)> {
    let sticky_for = groups.stickiness().filter(|_| groups.len() > 1);
    let Some(duration) = sticky_for else {
        return groups.choose(random() as u32).map(|g| (g, None));
    };
    let cookie = sticky::StickyCookie::new(sticky::group_cookie_name(&conn.listener));
    let token_of = |group: &str| key.group_token(&conn.listener, exchange.rule, group);
    if let Some(token) = cookie.find(headers)
        && let Some(group) = groups.names().find(|g| token_of(g) == token)
    {
        return Some((group, None));
    }
    let group = groups.choose(random() as u32)?;
    let token = token_of(group);
    Some((group, Some((cookie, token, duration))))
}

/// A websocket request over HTTP/2: `CONNECT` with `:protocol = websocket`.
fn is_h2_websocket(parts: &hyper::http::request::Parts) -> bool {
    parts.version == Version::HTTP_2
        && parts.method == Method::CONNECT
        && parts
            .extensions
            .get::<hyper::ext::Protocol>()
            .is_some_and(|p| p.as_str().eq_ignore_ascii_case("websocket"))
}

/// Rewrites an HTTP/2 websocket CONNECT as the HTTP/1.1 upgrade request a target knows:
/// `GET` with `Upgrade: websocket` and a fresh `Sec-WebSocket-Key` (RFC 6455 §4.1; the
/// target's accept value answers this key, not anything of the client's).
fn into_h1_websocket(parts: &mut hyper::http::request::Parts) {
    parts.method = Method::GET;
    parts.extensions.remove::<hyper::ext::Protocol>();
    parts.version = Version::HTTP_11;
    parts
        .headers
        .insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    parts
        .headers
        .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    let key = base64_16(random(), random());
    if let Ok(key) = HeaderValue::from_str(&key) {
        parts.headers.insert(header::SEC_WEBSOCKET_KEY, key);
    }
    if !parts.headers.contains_key(header::SEC_WEBSOCKET_VERSION) {
        parts.headers.insert(
            header::SEC_WEBSOCKET_VERSION,
            HeaderValue::from_static("13"),
        );
    }
}

/// 16 bytes in standard base64 (a websocket key: 24 characters).
fn base64_16(a: u64, b: u64) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut bytes = [0u8; 16];
    bytes[..8].copy_from_slice(&a.to_le_bytes());
    bytes[8..].copy_from_slice(&b.to_le_bytes());
    let mut out = String::with_capacity(24);
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, &byte)| n | u32::from(byte) << (16 - 8 * i));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// An HTTP/1.1 websocket (or other) upgrade request.
fn is_upgrade(parts: &hyper::http::request::Parts) -> bool {
    parts.version == Version::HTTP_11
        && parts.headers.contains_key(header::UPGRADE)
        && parts
            .headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|token| token.trim().eq_ignore_ascii_case("upgrade"))
}

/// Turns the client's request into the target's: its URI, version, headers.
fn prepare_request(
    parts: &mut hyper::http::request::Parts,
    conn: &ConnInfo,
    target: &ServingTarget,
    group: &GroupPlan,
    upgrade: bool,
) {
    // h2 clients name the host in `:authority` only; HTTP/1.1 targets need a Host header.
    if !parts.headers.contains_key(header::HOST)
        && let Some(authority) = parts.uri.authority()
        && let Ok(value) = HeaderValue::from_str(authority.as_str())
    {
        parts.headers.insert(header::HOST, value);
    }
    // A request without a Host header (HTTP/1.0) names the target.
    if !parts.headers.contains_key(header::HOST)
        && let Ok(value) = HeaderValue::from_str(target.authority.as_str())
    {
        parts.headers.insert(header::HOST, value);
    }
    let from_h2 = parts.version == Version::HTTP_2;
    parts.version = match group.client.version() {
        crate::config::ProtocolVersion::Http1 => Version::HTTP_11,
        _ => Version::HTTP_2,
    };
    // The target's URI: origin-form for HTTP/1.1; HTTP/2's pseudo-headers also need scheme and
    // authority, from parts made once per plan (no formatting, no parsing).
    let path_and_query = parts
        .uri
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| hyper::http::uri::PathAndQuery::from_static("/"));
    let mut uri = hyper::http::uri::Parts::default();
    if parts.version == Version::HTTP_2 {
        uri.scheme = Some(group.client.scheme.clone());
        uri.authority = Some(target.authority.clone());
    }
    uri.path_and_query = Some(path_and_query);
    if let Ok(uri) = Uri::from_parts(uri) {
        parts.uri = uri;
    }
    // HTTP/2 clients send a `Cookie` field per cookie; HTTP/1.1 allows one (RFC 9113 §8.2.3).
    if from_h2 && parts.version == Version::HTTP_11 {
        join_cookies(&mut parts.headers);
    }
    remove_hop_by_hop(&mut parts.headers, upgrade);
    if upgrade {
        parts
            .headers
            .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    }
    // X-Forwarded-For: the client's address appended to what came (AWS's `append`).
    let xff = match parts
        .headers
        .get(&X_FORWARDED_FOR)
        .and_then(|v| v.to_str().ok())
    {
        Some(earlier) => {
            let client = conn.client_ip.to_str().unwrap_or("-");
            HeaderValue::from_str(&format!("{earlier}, {client}")).ok()
        }
        None => Some(conn.client_ip.clone()),
    };
    if let Some(xff) = xff {
        parts.headers.insert(X_FORWARDED_FOR, xff);
    }
    parts.headers.insert(
        X_FORWARDED_PROTO,
        HeaderValue::from_static(if conn.secure { "https" } else { "http" }),
    );
    parts
        .headers
        .insert(X_FORWARDED_PORT, conn.port_value.clone());
}

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_PORT: HeaderName = HeaderName::from_static("x-forwarded-port");

/// Several `Cookie` fields into one, `; `-separated.
fn join_cookies(headers: &mut HeaderMap) {
    let mut values = headers.get_all(header::COOKIE).iter();
    let (Some(first), Some(_)) = (values.next(), values.next()) else {
        return;
    };
    let mut joined = first.as_bytes().to_vec();
    for value in headers.get_all(header::COOKIE).iter().skip(1) {
        joined.extend_from_slice(b"; ");
        joined.extend_from_slice(value.as_bytes());
    }
    if let Ok(value) = HeaderValue::from_bytes(&joined) {
        headers.insert(header::COOKIE, value);
    }
}

/// Removes hop-by-hop headers (RFC 9110 §7.6.1): `Connection` and what it names,
/// `Keep-Alive`, `Proxy-Connection`, `TE` (except `trailers`, which gRPC needs), `Trailer`,
/// `Transfer-Encoding`, `Upgrade` (kept for an upgrade).
fn remove_hop_by_hop(headers: &mut HeaderMap, upgrade: bool) {
    // Most messages have none, or only `Connection: keep-alive`: one pass over the names.
    if !headers.keys().any(is_hop_by_hop) {
        return;
    }
    if headers.contains_key(header::CONNECTION) {
        // The names `Connection` lists, past the options it usually carries (a `Vec` that
        // stays empty allocates nothing).
        let named: Vec<HeaderName> = headers
            .get_all(header::CONNECTION)
            .iter()
            .flat_map(|v| v.as_bytes().split(|&b| b == b','))
            .map(<[u8]>::trim_ascii)
            .filter(|token| {
                !(token.is_empty()
                    || token.eq_ignore_ascii_case(b"close")
                    || token.eq_ignore_ascii_case(b"keep-alive")
                    || (upgrade && token.eq_ignore_ascii_case(b"upgrade")))
            })
            .filter_map(|token| HeaderName::from_bytes(token).ok())
            .collect();
        for name in named {
            headers.remove(name);
        }
        headers.remove(header::CONNECTION);
    }
    headers.remove(&KEEP_ALIVE);
    headers.remove(&PROXY_CONNECTION);
    headers.remove(header::TRAILER);
    headers.remove(header::TRANSFER_ENCODING);
    if !upgrade {
        headers.remove(header::UPGRADE);
    }
    if headers.contains_key(header::TE) {
        // Of `TE`, only `trailers` goes on.
        let trailers = headers
            .get_all(header::TE)
            .iter()
            .flat_map(|v| v.as_bytes().split(|&b| b == b','))
            .any(|token| token.trim_ascii().eq_ignore_ascii_case(b"trailers"));
        headers.remove(header::TE);
        if trailers {
            headers.insert(header::TE, HeaderValue::from_static("trailers"));
        }
    }
}

const KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
const PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

fn is_hop_by_hop(name: &HeaderName) -> bool {
    name == header::CONNECTION
        || name == header::TE
        || name == header::TRAILER
        || name == header::TRANSFER_ENCODING
        || name == header::UPGRADE
        || name == KEEP_ALIVE
        || name == PROXY_CONNECTION
}

/// An id like AWS's `X-Amzn-Trace-Id`: `Root=1-<unix seconds, hex>-<96 random bits, hex>`.
fn new_request_id() -> HeaderValue {
    let seconds = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    let mut id = *b"Root=1-00000000-000000000000000000000000";
    write_hex(&mut id[7..15], seconds);
    write_hex(&mut id[16..32], random());
    write_hex(&mut id[32..40], random());
    HeaderValue::from_bytes(&id).unwrap_or(HeaderValue::from_static("Root=1-0-0"))
}

/// The low `out.len()` hex digits of `value` into `out`.
fn write_hex(out: &mut [u8], mut value: u64) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for digit in out.iter_mut().rev() {
        *digit = DIGITS[(value & 0xf) as usize];
        value >>= 4;
    }
}

/// A fast per-thread pseudo-random number (xorshift64*, seeded from the OS once per
/// thread): for choosing among weighted groups and for request ids, not for secrets.
fn random() -> u64 {
    use std::cell::Cell;
    thread_local! {
        static STATE: Cell<u64> = Cell::new({
            let mut seed = [0u8; 8];
            let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut seed);
            u64::from_ne_bytes(seed) | 1
        });
    }
    STATE.with(|state| {
        let mut x = state.get();
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        state.set(x);
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    })
}

/// A response body that counts its bytes and, when it ends or is dropped, logs the exchange
/// and lets go of the target's outstanding-request mark.
struct Tracked {
    inner: ProxyBody,
    bytes: u64,
    done: Option<(Exchange, Arc<Shared>)>,
}

impl Body for Tracked {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    self.bytes += data.len() as u64;
                }
            }
            Poll::Ready(None) | Poll::Ready(Some(Err(_))) => self.end(),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Tracked {
    fn end(&mut self) {
        if let Some((exchange, shared)) = self.done.take() {
            let log = shared.access_log.load();
            exchange.finish(self.bytes, log.as_deref());
        }
    }
}

impl Drop for Tracked {
    fn drop(&mut self) {
        self.end();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_headers_and_those_connection_names_are_removed() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, x-secret"),
        );
        headers.insert("x-secret", HeaderValue::from_static("1"));
        headers.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
        headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        headers.insert("x-kept", HeaderValue::from_static("1"));
        remove_hop_by_hop(&mut headers, false);
        let mut left: Vec<&str> = headers.keys().map(HeaderName::as_str).collect();
        left.sort_unstable();
        assert_eq!(left, ["te", "x-kept"]);
    }

    #[test]
    fn te_keeps_only_trailers_and_an_upgrade_keeps_its_upgrade_header() {
        let mut headers = HeaderMap::new();
        headers.insert(header::TE, HeaderValue::from_static("gzip, trailers"));
        headers.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
        headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        remove_hop_by_hop(&mut headers, true);
        assert_eq!(headers.get(header::TE).unwrap(), "trailers");
        assert_eq!(headers.get(header::UPGRADE).unwrap(), "websocket");
        assert!(!headers.contains_key(header::CONNECTION));

        let mut headers = HeaderMap::new();
        headers.insert(header::TE, HeaderValue::from_static("gzip"));
        headers.insert("x-kept", HeaderValue::from_static("1"));
        remove_hop_by_hop(&mut headers, false);
        let left: Vec<&str> = headers.keys().map(HeaderName::as_str).collect();
        assert_eq!(left, ["x-kept"]);
    }

    #[test]
    fn an_h2_clients_cookie_fields_are_joined_into_one() {
        let mut headers = HeaderMap::new();
        headers.append(header::COOKIE, HeaderValue::from_static("a=1"));
        headers.append(header::COOKIE, HeaderValue::from_static("b=2"));
        join_cookies(&mut headers);
        let all: Vec<_> = headers.get_all(header::COOKIE).iter().collect();
        assert_eq!(all, ["a=1; b=2"]);
    }

    #[test]
    fn websocket_keys_are_16_bytes_in_base64() {
        assert_eq!(base64_16(0, 0), "AAAAAAAAAAAAAAAAAAAAAA==");
        // RFC 6455 §1.3's sample key is 16 bytes of "the sample nonce".
        let nonce = *b"the sample nonce";
        let a = u64::from_le_bytes(nonce[..8].try_into().unwrap());
        let b = u64::from_le_bytes(nonce[8..].try_into().unwrap());
        assert_eq!(base64_16(a, b), "dGhlIHNhbXBsZSBub25jZQ==");
    }

    #[test]
    fn request_ids_are_distinct_and_shaped_like_aws_trace_ids() {
        let a = new_request_id();
        let b = new_request_id();
        assert_ne!(a, b);
        let a = a.to_str().expect("ASCII");
        assert!(a.starts_with("Root=1-"), "{a}");
        assert_eq!(a.len(), "Root=1-".len() + 8 + 1 + 24, "{a}");
        let seconds = u64::from_str_radix(&a[7..15], 16).expect("hex seconds");
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        assert!(now.abs_diff(seconds) < 60, "{a}");
        assert!(a[16..].bytes().all(|b| b.is_ascii_hexdigit()), "{a}");
    }
}
