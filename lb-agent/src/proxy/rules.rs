//! A listener's rules compiled into a table the proxy routes each request through.
//!
//! `RuleTable::compile` turns `[[listener.rule]]`s into conditions that need no parsing per
//! request (patterns, CIDR blocks, header names, methods) and orders them by priority;
//! `RuleTable::route` returns the first rule whose conditions all hold, or the default action.
//! As AWS's ALB: several values in one condition are alternatives (any may match); several
//! conditions in a rule must all match. How each field compares:
//!
//! - `host`: the Host (the request target's authority first, as RFC 9112 says, then the `Host`
//!   header) without its port; case-insensitive, one trailing dot ignored. A request naming
//!   no host matches no host condition.
//! - `path`: the path as sent (not percent-decoded or normalized, as ALB), case-sensitive; the
//!   query is not part of it; an empty path is read as `/`.
//! - `http_request_method`: exact and case-sensitive (methods are; AWS takes `A-Z`, `-`, `_`).
//! - `source_ip`: CIDR blocks against the connection's client address (never a forwarded
//!   header); an IPv4-mapped IPv6 client (`::ffff:a.b.c.d`) counts as its IPv4 address. A
//!   bare address is a block of one; a block with host bits set is refused as a likely typo.
//! - `http_header`: names case-insensitive; values case-insensitive (AWS documents its header
//!   comparison strings as case-insensitive). A header sent on several lines matches when any
//!   line matches; a line is compared whole (not split at commas).
//! - `query_string`: each `key = "value"` entry is one condition (entries AND, like
//!   `http_header`'s names); it holds when some `key=value` pair of the query matches both
//!   patterns. Keys and values are percent-decoded before comparing (`+` stays `+`: that
//!   is form encoding, not URI syntax) and compared case-insensitively, as AWS's query
//!   conditions; `\*`, `\?` escape the wildcards. A key of `"*"` stands for AWS's
//!   value-only condition.

use std::{borrow::Cow, collections::HashSet, net::IpAddr};

use hyper::{
    HeaderMap, Method, StatusCode, Uri,
    body::Bytes,
    header::{HOST, HeaderName, HeaderValue},
};
use thiserror::Error;

use super::{
    pattern::{Pattern, PatternError, PatternKind},
    redirect::{RedirectError, RedirectTemplate, Scheme},
    weighted::WeightedGroups,
};
use crate::config::{Action, Conditions, FixedResponse, Listener, ListenerProtocol};

/// A listener whose rules cannot be compiled (config side). `at` names the field:
/// `rule[2].conditions.host[0]`, `default_action.redirect`.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum RuleError {
    /// The listener does not speak HTTP.
    #[error("listener `{listener}`: {protocol} listeners have no HTTP rules (http and https do)")]
    NotHttp {
        /// The listener's name.
        listener: String,
        /// Its protocol.
        protocol: &'static str,
    },
    /// A pattern that does not compile.
    #[error("{at}: {source}")]
    Pattern {
        /// Where.
        at: String,
        /// Why.
        source: PatternError,
    },
    /// A source block that is no CIDR block.
    #[error("{at}: `{value}` {reason}")]
    SourceIp {
        /// Where.
        at: String,
        /// What was written.
        value: String,
        /// Why.
        reason: String,
    },
    /// A method that is no upper-case method name.
    #[error("{at}: `{value}` is no method name: 1-40 of A-Z, `-`, `_`, as sent (GET, POST, ...)")]
    Method {
        /// Where.
        at: String,
        /// What was written.
        value: String,
    },
    /// A header name that is no HTTP field name.
    #[error("{at}: `{name}` is no HTTP header name")]
    HeaderName {
        /// Where.
        at: String,
        /// What was written.
        name: String,
    },
    /// A rule without conditions (it would take everything; the default action does that).
    #[error("{at}: a rule needs a condition; the default action takes the rest")]
    NoCondition {
        /// Where.
        at: String,
    },
    /// Two rules with one priority, or a priority outside 1..=50000.
    #[error("{at}: priority {priority} {reason}")]
    Priority {
        /// Where.
        at: String,
        /// The priority.
        priority: u32,
        /// Why.
        reason: &'static str,
    },
    /// An action that is not exactly one of forward, redirect, fixed_response.
    #[error("{at}: an action is exactly one of forward, redirect, fixed_response")]
    Action {
        /// Where.
        at: String,
    },
    /// A redirect that does not compile.
    #[error("{at}: {source}")]
    Redirect {
        /// Where.
        at: String,
        /// Why.
        source: RedirectError,
    },
    /// A fixed response with a bad status or content type.
    #[error("{at}: {reason}")]
    FixedResponse {
        /// Where.
        at: String,
        /// Why.
        reason: String,
    },
}

/// What the routing needs of a request, borrowed from it.
#[derive(Debug, Clone, Copy)]
pub struct RequestFacts<'a> {
    /// The host without its port (IPv6 literals keep their brackets); `None`: none was sent.
    pub host: Option<&'a str>,
    /// The path without the query.
    pub path: &'a str,
    /// The query without `?`.
    pub query: Option<&'a str>,
    /// The method.
    pub method: &'a Method,
    /// The request's headers.
    pub headers: &'a HeaderMap,
    /// The connection's client address.
    pub client: IpAddr,
}

impl<'a> RequestFacts<'a> {
    /// From a request's parts (`http::request::Parts` or a `Request`'s accessors).
    pub fn new(method: &'a Method, uri: &'a Uri, headers: &'a HeaderMap, client: IpAddr) -> Self {
        // An absolute-form target (and h2's `:authority`, which hyper puts in the URI) names
        // the host; the Host header only when the target does not (RFC 9112 §3.2.2).
        let host = uri.host().or_else(|| {
            headers
                .get(HOST)
                .and_then(|h| h.to_str().ok())
                .map(host_without_port)
                .filter(|h| !h.is_empty())
        });
        Self {
            host,
            path: uri.path(),
            query: uri.query(),
            method,
            headers,
            client,
        }
    }
}

/// `host[:port]` -> `host`; `[v6]:port` -> `[v6]`.
fn host_without_port(authority: &str) -> &str {
    let host_port = authority.rsplit('@').next().unwrap_or(authority);
    if host_port.starts_with('[') {
        match host_port.find(']') {
            Some(end) => &host_port[..=end],
            None => host_port,
        }
    } else {
        host_port.split(':').next().unwrap_or(host_port)
    }
}

/// A fixed response, ready to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FixedAnswer {
    /// The status.
    pub status: StatusCode,
    /// The `Content-Type`, if configured.
    pub content_type: Option<HeaderValue>,
    /// The body (may be empty).
    pub body: Bytes,
}

/// What to do with a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CompiledAction {
    /// Forward to one of these groups.
    Forward(WeightedGroups),
    /// Answer with a redirect.
    Redirect(RedirectTemplate),
    /// Answer with a fixed response.
    FixedResponse(FixedAnswer),
}

/// The outcome of routing a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Routed<'t> {
    /// The priority of the rule that matched; `None`: the default action.
    pub rule: Option<u32>,
    /// What to do.
    pub action: &'t CompiledAction,
}

/// An address block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Cidr {
    network: IpAddr,
    prefix: u8,
}

impl Cidr {
    fn parse(text: &str) -> Result<Self, String> {
        let (address, prefix) = match text.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (text, None),
        };
        let network: IpAddr = address
            .parse()
            .map_err(|_| "is no IPv4 or IPv6 address block (`10.0.0.0/8`, `fd00::/8`)")?;
        let max = if network.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) if !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) => p
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or(format!("has a prefix length over {max}"))?,
            Some(_) => return Err("has no prefix length after `/`".to_owned()),
        };
        let cidr = Self { network, prefix };
        if cidr.masked(network) != cidr.bits(network) {
            let base = cidr.network_of(network);
            return Err(format!(
                "has host bits set; the block is `{base}/{prefix}` (a typo is likelier than \
                 meaning it)"
            ));
        }
        Ok(cidr)
    }

    fn bits(&self, ip: IpAddr) -> u128 {
        match ip {
            IpAddr::V4(v4) => u128::from(u32::from(v4)),
            IpAddr::V6(v6) => u128::from(v6),
        }
    }

    fn mask(&self) -> u128 {
        let width = if self.network.is_ipv4() { 32 } else { 128 };
        let all = if width == 32 {
            u128::from(u32::MAX)
        } else {
            u128::MAX
        };
        // A shift by the whole width is no shift in Rust (it overflows): /0 is mask 0.
        all.checked_shl(u32::from(width - self.prefix)).unwrap_or(0) & all
    }

    fn masked(&self, ip: IpAddr) -> u128 {
        self.bits(ip) & self.mask()
    }

    fn network_of(&self, ip: IpAddr) -> IpAddr {
        match ip {
            // The mask keeps a v4 value within 32 bits.
            IpAddr::V4(_) => IpAddr::V4((self.masked(ip) as u32).into()),
            IpAddr::V6(_) => IpAddr::V6(self.masked(ip).into()),
        }
    }

    fn contains(&self, client: IpAddr) -> bool {
        let client = client.to_canonical();
        client.is_ipv4() == self.network.is_ipv4()
            && self.masked(client) == self.masked(self.network)
    }
}

/// One condition of a rule; the values inside are alternatives.
#[derive(Debug, Clone)]
enum Condition {
    Method(Vec<Method>),
    SourceIp(Vec<Cidr>),
    Host(Vec<Pattern>),
    Path(Vec<Pattern>),
    Header {
        name: HeaderName,
        values: Vec<Pattern>,
    },
    Query {
        key: Pattern,
        value: Pattern,
    },
}

impl Condition {
    fn holds(&self, facts: &RequestFacts<'_>, query: &mut LazyQuery<'_>) -> bool {
        match self {
            Self::Method(methods) => methods.contains(facts.method),
            Self::SourceIp(blocks) => blocks.iter().any(|b| b.contains(facts.client)),
            Self::Host(patterns) => facts
                .host
                .is_some_and(|h| patterns.iter().any(|p| p.matches(h))),
            Self::Path(patterns) => {
                // RFC 9110 §4.2.3: an empty path means `/`.
                let path = if facts.path.is_empty() {
                    "/"
                } else {
                    facts.path
                };
                patterns.iter().any(|p| p.matches(path))
            }
            Self::Header { name, values } => facts.headers.get_all(name).iter().any(|line| {
                // Non-ASCII bytes (obs-text) read as U+FFFD: they match `*` and `?` only.
                let line = String::from_utf8_lossy(line.as_bytes());
                values.iter().any(|p| p.matches(&line))
            }),
            Self::Query { key, value } => query
                .pairs()
                .iter()
                .any(|(k, v)| key.matches(k) && value.matches(v)),
        }
    }
}

/// The query's decoded pairs, parsed at most once per request and only if a rule asks.
struct LazyQuery<'a> {
    raw: Option<&'a str>,
    pairs: Option<Vec<(Cow<'a, str>, Cow<'a, str>)>>,
}

impl<'a> LazyQuery<'a> {
    fn pairs(&mut self) -> &[(Cow<'a, str>, Cow<'a, str>)] {
        let raw = self.raw;
        self.pairs.get_or_insert_with(|| {
            raw.unwrap_or("")
                .split('&')
                .filter(|pair| !pair.is_empty())
                .map(|pair| {
                    let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
                    (percent_decode(k), percent_decode(v))
                })
                .collect()
        })
    }
}

/// `%XX` -> the byte; a `%` not followed by two hex digits stays as it is. Invalid UTF-8 after
/// decoding reads as U+FFFD.
fn percent_decode(text: &str) -> Cow<'_, str> {
    if !text.contains('%') {
        return Cow::Borrowed(text);
    }
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        if bytes[i] == b'%'
            && let (Some(hi), Some(lo)) = (
                bytes.get(i + 1).copied().and_then(hex),
                bytes.get(i + 2).copied().and_then(hex),
            )
        {
            // Two hex digits: at most 0xff.
            out.push((hi * 16 + lo) as u8);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    Cow::Owned(String::from_utf8_lossy(&out).into_owned())
}

#[derive(Debug, Clone)]
struct CompiledRule {
    priority: u32,
    conditions: Vec<Condition>,
    action: CompiledAction,
}

/// A listener's rules, by priority, and its default action.
#[derive(Debug, Clone)]
pub struct RuleTable {
    rules: Vec<CompiledRule>,
    default_action: CompiledAction,
}

impl RuleTable {
    /// Compiles an `http` or `https` listener's rules and default action.
    pub fn compile(listener: &Listener) -> Result<Self, RuleError> {
        let scheme = match listener.protocol {
            ListenerProtocol::Http => Scheme::Http,
            ListenerProtocol::Https => Scheme::Https,
            other => {
                return Err(RuleError::NotHttp {
                    listener: listener.name.clone(),
                    protocol: other.as_str(),
                });
            }
        };
        let action =
            |at: String, action: &Action| compile_action(at, action, scheme, listener.port);
        let mut rules = Vec::with_capacity(listener.rules.len());
        let mut seen = HashSet::new();
        for (i, rule) in listener.rules.iter().enumerate() {
            let at = format!("rule[{i}]");
            let priority = rule.priority;
            let reason = if !(1..=50_000).contains(&priority) {
                Some("is out of range 1..=50000")
            } else if !seen.insert(priority) {
                Some("is taken by another rule")
            } else {
                None
            };
            if let Some(reason) = reason {
                return Err(RuleError::Priority {
                    at: format!("{at}.priority"),
                    priority,
                    reason,
                });
            }
            let conditions = compile_conditions(&format!("{at}.conditions"), &rule.conditions)?;
            if conditions.is_empty() {
                return Err(RuleError::NoCondition {
                    at: format!("{at}.conditions"),
                });
            }
            rules.push(CompiledRule {
                priority,
                conditions,
                action: action(format!("{at}.action"), &rule.action)?,
            });
        }
        rules.sort_by_key(|r| r.priority);
        Ok(Self {
            rules,
            default_action: action("default_action".to_owned(), &listener.default_action)?,
        })
    }

    /// The first rule, by priority, whose conditions all hold; else the default action.
    pub fn route(&self, facts: &RequestFacts<'_>) -> Routed<'_> {
        let mut query = LazyQuery {
            raw: facts.query,
            pairs: None,
        };
        for rule in &self.rules {
            if rule.conditions.iter().all(|c| c.holds(facts, &mut query)) {
                return Routed {
                    rule: Some(rule.priority),
                    action: &rule.action,
                };
            }
        }
        Routed {
            rule: None,
            action: &self.default_action,
        }
    }

    /// The rules' priorities, lowest (first tried) first.
    pub fn priorities(&self) -> impl Iterator<Item = u32> + '_ {
        self.rules.iter().map(|r| r.priority)
    }
}

/// A rule's conditions, cheapest to test first: `route` stops at the first that fails.
fn compile_conditions(at: &str, c: &Conditions) -> Result<Vec<Condition>, RuleError> {
    let patterns = |field: &str, values: &[String], kind| {
        values
            .iter()
            .enumerate()
            .map(|(i, v)| {
                Pattern::compile(v, kind).map_err(|source| RuleError::Pattern {
                    at: format!("{at}.{field}[{i}]"),
                    source,
                })
            })
            .collect::<Result<Vec<_>, _>>()
    };
    let mut out = Vec::new();
    if !c.http_request_method.is_empty() {
        let methods = c
            .http_request_method
            .iter()
            .enumerate()
            .map(|(i, m)| {
                let ok = (1..=40).contains(&m.len())
                    && m.bytes()
                        .all(|b| b.is_ascii_uppercase() || b == b'-' || b == b'_');
                ok.then(|| Method::from_bytes(m.as_bytes()).ok())
                    .flatten()
                    .ok_or_else(|| RuleError::Method {
                        at: format!("{at}.http_request_method[{i}]"),
                        value: m.clone(),
                    })
            })
            .collect::<Result<_, _>>()?;
        out.push(Condition::Method(methods));
    }
    if !c.source_ip.is_empty() {
        let blocks = c
            .source_ip
            .iter()
            .enumerate()
            .map(|(i, s)| {
                Cidr::parse(s).map_err(|reason| RuleError::SourceIp {
                    at: format!("{at}.source_ip[{i}]"),
                    value: s.clone(),
                    reason,
                })
            })
            .collect::<Result<_, _>>()?;
        out.push(Condition::SourceIp(blocks));
    }
    if !c.host.is_empty() {
        out.push(Condition::Host(patterns(
            "host",
            &c.host,
            PatternKind::Host,
        )?));
    }
    if !c.path.is_empty() {
        out.push(Condition::Path(patterns(
            "path",
            &c.path,
            PatternKind::Path,
        )?));
    }
    for (name, values) in &c.http_header {
        let field = format!("http_header.{name}");
        let header =
            HeaderName::from_bytes(name.as_bytes()).map_err(|_| RuleError::HeaderName {
                at: format!("{at}.{field}"),
                name: name.clone(),
            })?;
        if !values.is_empty() {
            out.push(Condition::Header {
                name: header,
                values: patterns(&field, values, PatternKind::HeaderValue)?,
            });
        }
    }
    for (key, value) in &c.query_string {
        let pattern = |text: &str, what: &str| {
            Pattern::compile(text, PatternKind::Query).map_err(|source| RuleError::Pattern {
                at: format!("{at}.query_string.{key}{what}"),
                source,
            })
        };
        out.push(Condition::Query {
            key: pattern(key, " (key)")?,
            value: pattern(value, "")?,
        });
    }
    Ok(out)
}

fn compile_action(
    at: String,
    action: &Action,
    scheme: Scheme,
    port: u16,
) -> Result<CompiledAction, RuleError> {
    match (&action.forward, &action.redirect, &action.fixed_response) {
        (Some(forward), None, None) => Ok(CompiledAction::Forward(
            WeightedGroups::from_forward(forward).with_stickiness(action.group_stickiness),
        )),
        (None, Some(redirect), None) => RedirectTemplate::compile(redirect, scheme, port)
            .map(CompiledAction::Redirect)
            .map_err(|source| RuleError::Redirect {
                at: format!("{at}.redirect"),
                source,
            }),
        (None, None, Some(fixed)) => compile_fixed(&format!("{at}.fixed_response"), fixed),
        _ => Err(RuleError::Action { at }),
    }
}

fn compile_fixed(at: &str, fixed: &FixedResponse) -> Result<CompiledAction, RuleError> {
    let status = StatusCode::from_u16(fixed.status_code)
        .ok()
        .filter(|s| (200..=599).contains(&s.as_u16()))
        .ok_or_else(|| RuleError::FixedResponse {
            at: format!("{at}.status_code"),
            reason: format!("{} is out of range 200..=599", fixed.status_code),
        })?;
    let content_type = fixed
        .content_type
        .as_deref()
        .map(|t| {
            HeaderValue::from_str(t).map_err(|_| RuleError::FixedResponse {
                at: format!("{at}.content_type"),
                reason: format!("`{t}` is no header value"),
            })
        })
        .transpose()?;
    Ok(CompiledAction::FixedResponse(FixedAnswer {
        status,
        content_type,
        body: Bytes::from(fixed.message_body.clone().unwrap_or_default()),
    }))
}

#[cfg(test)]
mod tests;
