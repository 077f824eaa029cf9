//! Redirect actions: the config's `redirect = { ... }` compiled once into a template, and
//! expanded per request into a `Location` value.
//!
//! As AWS's ALB (`RedirectActionConfig`):
//! - a URL is `protocol://host:port/path?query`; a part the action leaves out keeps the
//!   request's own value (so `protocol = "https"` alone keeps port 80: set `port = 443` too);
//! - placeholders reuse request parts: `#{host}` in the host; `#{host}`, `#{path}`, `#{port}`
//!   in the path; all of `#{protocol}`, `#{host}`, `#{port}`, `#{path}`, `#{query}` in the
//!   query. `#{path}` is the path without its leading `/` (so `/new/#{path}`). `#{port}` is
//!   the listener's port, `#{protocol}` its scheme in lower case. Values are copied as they
//!   are, not percent-encoded again (AWS: "This component is not percent-encoded");
//! - HTTPS to HTTP is refused (AWS: "You can't redirect HTTPS to HTTP");
//! - loops are refused where AWS refuses them: an action must change at least one of protocol,
//!   host, port or path. AWS checks the text; here a part set to what it already is (the
//!   listener's own protocol or port, `host = "#{host}"`, `path = "/#{path}"`) counts as
//!   unchanged too. A request whose expanded URL is its own URL anyway (a literal host and
//!   path equal to the request's) is refused per request with `SameUrl`, which the proxy
//!   answers with an error status instead of sending the client round in a loop.
//!
//! Departure: the port is left out of `Location` when it is the scheme's default (80 for
//! `http`, 443 for `https`); ALB writes `https://host:443/`, which names the same URL.

use hyper::{StatusCode, header::HeaderValue};
use thiserror::Error;

use crate::config::{Redirect, RedirectProtocol};

/// A URL scheme the proxy serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    /// `http`
    Http,
    /// `https`
    Https,
}

impl Scheme {
    /// Lower case, as in a URL.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Http => "http",
            Self::Https => "https",
        }
    }

    /// The port a URL of this scheme means when it names none.
    pub fn default_port(self) -> u16 {
        match self {
            Self::Http => 80,
            Self::Https => 443,
        }
    }
}

impl From<RedirectProtocol> for Scheme {
    fn from(p: RedirectProtocol) -> Self {
        match p {
            RedirectProtocol::Http => Self::Http,
            RedirectProtocol::Https => Self::Https,
        }
    }
}

/// A redirect that cannot be compiled (config side) or expanded for a request (request side).
#[derive(Debug, Error, PartialEq, Eq)]
pub enum RedirectError {
    /// Config: the status is no redirect.
    #[error("{0} is no redirect status: 301, 302, 303, 307 or 308")]
    Status(u16),
    /// Config: an https listener redirecting to http.
    #[error("an https listener cannot redirect to http (as AWS: HTTPS to HTTP is refused)")]
    HttpsToHttp,
    /// Config: `#{...}` names no placeholder, or is not closed.
    #[error(
        "{field}: `{text}` is no placeholder (#{{protocol}}, #{{host}}, #{{port}}, #{{path}}, \
         #{{query}})"
    )]
    UnknownPlaceholder {
        /// `host`, `path` or `query`.
        field: &'static str,
        /// What was written.
        text: String,
    },
    /// Config: a placeholder the field cannot hold (as AWS).
    #[error("{field}: `#{{{placeholder}}}` is not allowed here; {field} takes {allowed}")]
    PlaceholderNotAllowed {
        /// `host` or `path`.
        field: &'static str,
        /// The placeholder's name.
        placeholder: &'static str,
        /// The placeholders the field takes.
        allowed: &'static str,
    },
    /// Config: a host with characters a URL's host cannot hold.
    #[error("host `{0}` is no host name (no `/`, `?`, `#`, `@`, `:`, spaces or controls)")]
    Host(String),
    /// Config: a path that does not start with `/`.
    #[error("path `{0}` must start with /")]
    Path(String),
    /// Config: the action changes none of protocol, host, port and path.
    #[error(
        "the redirect keeps protocol, host, port and path as they are, so it would redirect to \
         itself; change at least one (as AWS)"
    )]
    Loop,
    /// Config or request: the expansion is no valid URL or header value.
    #[error("`{0}` is no valid Location URL")]
    Location(String),
    /// Request: the request names no host and the redirect keeps or reuses it.
    #[error("the request has no Host to redirect with")]
    NoHost,
    /// Request: the expansion is the request's own URL.
    #[error("redirecting to `{0}` would send the client to the same URL again")]
    SameUrl(String),
}

/// The request parts a redirect reuses.
#[derive(Debug, Clone, Copy)]
pub struct RedirectRequest<'a> {
    /// The listener's scheme.
    pub scheme: Scheme,
    /// The Host without its port; `None` when the request named none.
    pub host: Option<&'a str>,
    /// The listener's port.
    pub port: u16,
    /// The path, without the query; empty is read as `/`.
    pub path: &'a str,
    /// The query, without `?`.
    pub query: Option<&'a str>,
}

/// One piece of a host, path or query template.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece {
    Literal(String),
    Protocol,
    Host,
    Port,
    /// The path without its leading `/`.
    Path,
    Query,
}

impl Piece {
    fn name(&self) -> &'static str {
        match self {
            Self::Literal(_) => "",
            Self::Protocol => "protocol",
            Self::Host => "host",
            Self::Port => "port",
            Self::Path => "path",
            Self::Query => "query",
        }
    }
}

/// A host, path or query with placeholders, parsed once.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Template(Vec<Piece>);

impl Template {
    fn parse(text: &str, field: &'static str) -> Result<Self, RedirectError> {
        let mut pieces = Vec::new();
        let mut rest = text;
        while let Some(at) = rest.find("#{") {
            if at > 0 {
                pieces.push(Piece::Literal(rest[..at].to_owned()));
            }
            let unknown = |text: &str| RedirectError::UnknownPlaceholder {
                field,
                text: text.to_owned(),
            };
            let after = &rest[at + 2..];
            let close = after.find('}').ok_or_else(|| unknown(&rest[at..]))?;
            pieces.push(match &after[..close] {
                "protocol" => Piece::Protocol,
                "host" => Piece::Host,
                "port" => Piece::Port,
                "path" => Piece::Path,
                "query" => Piece::Query,
                _ => return Err(unknown(&rest[at..at + 2 + close + 1])),
            });
            rest = &after[close + 1..];
        }
        if !rest.is_empty() {
            pieces.push(Piece::Literal(rest.to_owned()));
        }
        Ok(Self(pieces))
    }

    /// Refuses placeholders outside `allowed` (AWS's per-field lists).
    fn allow_only(
        &self,
        field: &'static str,
        allowed: &[Piece],
        allowed_text: &'static str,
    ) -> Result<(), RedirectError> {
        for p in &self.0 {
            if !matches!(p, Piece::Literal(_)) && !allowed.contains(p) {
                return Err(RedirectError::PlaceholderNotAllowed {
                    field,
                    placeholder: p.name(),
                    allowed: allowed_text,
                });
            }
        }
        Ok(())
    }

    fn literals(&self) -> impl Iterator<Item = &str> {
        self.0.iter().filter_map(|p| match p {
            Piece::Literal(s) => Some(s.as_str()),
            _ => None,
        })
    }

    fn is(&self, pieces: &[Piece]) -> bool {
        self.0 == pieces
    }

    fn expand(&self, req: &RedirectRequest<'_>, out: &mut String) -> Result<(), RedirectError> {
        for p in &self.0 {
            match p {
                Piece::Literal(s) => out.push_str(s),
                Piece::Protocol => out.push_str(req.scheme.as_str()),
                Piece::Host => out.push_str(req.host.ok_or(RedirectError::NoHost)?),
                Piece::Port => out.push_str(&req.port.to_string()),
                Piece::Path => out.push_str(req.path.strip_prefix('/').unwrap_or(req.path)),
                Piece::Query => out.push_str(req.query.unwrap_or("")),
            }
        }
        Ok(())
    }
}

/// A compiled redirect action.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedirectTemplate {
    protocol: Option<Scheme>,
    host: Option<Template>,
    port: Option<u16>,
    path: Option<Template>,
    query: Option<Template>,
    status: StatusCode,
}

impl RedirectTemplate {
    /// Compiles `redirect` for a listener of `scheme` on `port`.
    pub fn compile(redirect: &Redirect, scheme: Scheme, port: u16) -> Result<Self, RedirectError> {
        let status = match redirect.status_code {
            301 | 302 | 303 | 307 | 308 => StatusCode::from_u16(redirect.status_code)
                .map_err(|_| RedirectError::Status(redirect.status_code))?,
            other => return Err(RedirectError::Status(other)),
        };
        let protocol = redirect.protocol.map(Scheme::from);
        if scheme == Scheme::Https && protocol == Some(Scheme::Http) {
            return Err(RedirectError::HttpsToHttp);
        }
        let host = redirect
            .host
            .as_deref()
            .map(|h| Template::parse(h, "host"))
            .transpose()?;
        if let Some(h) = &host {
            h.allow_only("host", &[Piece::Host], "#{host}")?;
            let bad = |c: char| "/?#@:".contains(c) || c.is_whitespace() || c.is_control();
            if h.0.is_empty() || h.literals().any(|l| l.contains(bad)) {
                return Err(RedirectError::Host(
                    redirect.host.clone().unwrap_or_default(),
                ));
            }
        }
        let path = redirect
            .path
            .as_deref()
            .map(|p| Template::parse(p, "path"))
            .transpose()?;
        if let Some(p) = &path {
            p.allow_only(
                "path",
                &[Piece::Host, Piece::Path, Piece::Port],
                "#{host}, #{path} and #{port}",
            )?;
            if !matches!(p.0.first(), Some(Piece::Literal(l)) if l.starts_with('/')) {
                return Err(RedirectError::Path(
                    redirect.path.clone().unwrap_or_default(),
                ));
            }
        }
        let query = redirect
            .query
            .as_deref()
            .map(|q| Template::parse(q, "query"))
            .transpose()?;
        let template = Self {
            protocol,
            host,
            port: redirect.port,
            path,
            query,
            status,
        };
        let same_protocol = template.protocol.is_none_or(|p| p == scheme);
        let same_port = template.port.is_none_or(|p| p == port);
        let same_host = template.host.as_ref().is_none_or(|h| h.is(&[Piece::Host]));
        let same_path = template
            .path
            .as_ref()
            .is_none_or(|p| p.is(&[Piece::Literal("/".into()), Piece::Path]));
        if same_protocol && same_port && same_host && same_path {
            return Err(RedirectError::Loop);
        }
        // Literals that make no URL fail now, with the config, rather than on every request.
        // (The sample request may happen to be the target itself: that says nothing of the
        // config.)
        match template.location(&RedirectRequest {
            scheme,
            host: Some("example.com"),
            port,
            path: "/sample",
            query: Some("sample=1"),
        }) {
            Ok(_) | Err(RedirectError::SameUrl(_)) => Ok(template),
            Err(e) => Err(e),
        }
    }

    /// The status to answer with.
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// The `Location` for `req`.
    pub fn location(&self, req: &RedirectRequest<'_>) -> Result<HeaderValue, RedirectError> {
        let scheme = self.protocol.unwrap_or(req.scheme);
        let port = self.port.unwrap_or(req.port);
        let request_path = if req.path.is_empty() { "/" } else { req.path };
        let req = RedirectRequest {
            path: request_path,
            ..*req
        };
        let mut host = String::new();
        match &self.host {
            Some(t) => t.expand(&req, &mut host)?,
            None => host.push_str(req.host.ok_or(RedirectError::NoHost)?),
        }
        let mut path = String::new();
        match &self.path {
            Some(t) => t.expand(&req, &mut path)?,
            None => path.push_str(request_path),
        }
        let mut query = String::new();
        match &self.query {
            Some(t) => t.expand(&req, &mut query)?,
            None => query.push_str(req.query.unwrap_or("")),
        }
        let mut url = format!("{}://{host}", scheme.as_str());
        if port != scheme.default_port() {
            url.push_str(&format!(":{port}"));
        }
        url.push_str(&path);
        if !query.is_empty() {
            url.push('?');
            url.push_str(&query);
        }
        let same_host = req.host.is_some_and(|h| {
            h.trim_end_matches('.')
                .eq_ignore_ascii_case(host.trim_end_matches('.'))
        });
        if scheme == req.scheme
            && port == req.port
            && same_host
            && path == request_path
            && query == req.query.unwrap_or("")
        {
            return Err(RedirectError::SameUrl(url));
        }
        // The URL must parse as one, and carry only header-safe bytes.
        if url.parse::<hyper::Uri>().is_err() {
            return Err(RedirectError::Location(url));
        }
        HeaderValue::try_from(url.as_str()).map_err(|_| RedirectError::Location(url))
    }
}

#[cfg(test)]
mod tests {
    use super::{RedirectError, RedirectRequest, RedirectTemplate, Scheme};
    use crate::config::Redirect;

    fn redirect(toml_text: &str) -> Redirect {
        toml::from_str(toml_text).unwrap()
    }

    fn request<'a>(
        scheme: Scheme,
        host: &'a str,
        port: u16,
        path: &'a str,
        query: Option<&'a str>,
    ) -> RedirectRequest<'a> {
        RedirectRequest {
            scheme,
            host: Some(host),
            port,
            path,
            query,
        }
    }

    #[test]
    fn placeholders_expand_into_the_location() {
        use Scheme::*;
        let rows: &[(&str, &str, RedirectRequest<'_>, &str)] = &[
            (
                "http to https keeps the rest",
                r##"protocol = "https"
                   port = 443"##,
                request(Http, "example.com", 80, "/a/b", Some("x=1")),
                "https://example.com/a/b?x=1",
            ),
            (
                "protocol alone keeps the port, as AWS",
                r##"protocol = "https""##,
                request(Http, "example.com", 80, "/", None),
                "https://example.com:80/",
            ),
            (
                "host built from #{host}",
                r##"host = "www.#{host}""##,
                request(Http, "example.com", 80, "/p", None),
                "http://www.example.com/p",
            ),
            (
                "path under a prefix drops the leading slash",
                r##"path = "/new/#{path}""##,
                request(Https, "example.com", 443, "/old/x", None),
                "https://example.com/new/old/x",
            ),
            (
                "path with host and port",
                r##"path = "/#{host}/#{port}/#{path}""##,
                request(Http, "a.test", 8080, "/x", None),
                "http://a.test:8080/a.test/8080/x",
            ),
            (
                "query with every placeholder",
                r##"path = "/q"
                   query = "#{query}&from=#{protocol}://#{host}:#{port}/#{path}""##,
                request(Http, "a.test", 80, "/x", Some("k=v")),
                "http://a.test/q?k=v&from=http://a.test:80/x",
            ),
            (
                "empty query drops the question mark",
                r##"path = "/q"
                   query = "#{query}""##,
                request(Http, "a.test", 80, "/x", None),
                "http://a.test/q",
            ),
            (
                "literal query replaces the request's",
                r##"path = "/q"
                   query = "a=b""##,
                request(Http, "a.test", 80, "/x", Some("k=v")),
                "http://a.test/q?a=b",
            ),
            (
                "empty request path reads as slash",
                r##"path = "/new#{path}""##,
                request(Http, "a.test", 80, "", None),
                "http://a.test/new",
            ),
            (
                "non-default port is written",
                r##"port = 8443
                   protocol = "https""##,
                request(Http, "a.test", 80, "/", None),
                "https://a.test:8443/",
            ),
            (
                "IPv6 literal host keeps its brackets",
                r##"protocol = "https"
                   port = 443"##,
                request(Http, "[2001:db8::1]", 80, "/", None),
                "https://[2001:db8::1]/",
            ),
        ];
        let mut failed = Vec::new();
        for (name, config, req, want) in rows {
            let template = RedirectTemplate::compile(&redirect(config), req.scheme, req.port)
                .unwrap_or_else(|e| panic!("{name}: {e}"));
            match template.location(req) {
                Ok(got) if got == *want => {}
                got => failed.push(format!("{name}: got {got:?}, want {want}")),
            }
        }
        assert!(failed.is_empty(), "{}", failed.join("\n"));
    }

    #[test]
    fn redirects_that_change_nothing_are_refused() {
        let rows: &[(&str, &str, Scheme, u16)] = &[
            ("nothing set", "", Scheme::Http, 80),
            (
                "only the query changes",
                r##"query = "a=1""##,
                Scheme::Http,
                80,
            ),
            (
                "every part set to itself",
                r##"protocol = "http"
                    port = 80
                    host = "#{host}"
                    path = "/#{path}""##,
                Scheme::Http,
                80,
            ),
            (
                "same protocol on https",
                r##"protocol = "https""##,
                Scheme::Https,
                443,
            ),
        ];
        for (name, config, scheme, port) in rows {
            assert_eq!(
                RedirectTemplate::compile(&redirect(config), *scheme, *port),
                Err(RedirectError::Loop),
                "{name}"
            );
        }
    }

    #[test]
    fn redirect_landing_on_the_request_url_is_refused_per_request() {
        let template =
            RedirectTemplate::compile(&redirect(r##"path = "/login""##), Scheme::Http, 80).unwrap();
        let req = request(Scheme::Http, "a.test", 80, "/login", None);
        assert_eq!(
            template.location(&req),
            Err(RedirectError::SameUrl("http://a.test/login".into()))
        );
        // Another path is a real redirect.
        let req = request(Scheme::Http, "a.test", 80, "/other", None);
        assert_eq!(template.location(&req).unwrap(), "http://a.test/login");
    }

    #[test]
    fn host_comparison_for_loops_ignores_case_and_trailing_dot() {
        let template =
            RedirectTemplate::compile(&redirect(r##"host = "a.test""##), Scheme::Http, 80).unwrap();
        for host in ["a.test", "A.TEST", "a.test."] {
            let req = request(Scheme::Http, host, 80, "/", None);
            assert!(
                matches!(template.location(&req), Err(RedirectError::SameUrl(_))),
                "{host}"
            );
        }
    }

    #[test]
    fn bad_redirect_configs_are_refused() {
        let rows: &[(&str, &str, Scheme, RedirectError)] = &[
            (
                "https to http",
                r##"protocol = "http""##,
                Scheme::Https,
                RedirectError::HttpsToHttp,
            ),
            (
                "status 200",
                r##"path = "/x"
                   status_code = 200"##,
                Scheme::Http,
                RedirectError::Status(200),
            ),
            (
                "unknown placeholder",
                r##"path = "/#{file}""##,
                Scheme::Http,
                RedirectError::UnknownPlaceholder {
                    field: "path",
                    text: "#{file}".into(),
                },
            ),
            (
                "unclosed placeholder",
                r##"path = "/#{path""##,
                Scheme::Http,
                RedirectError::UnknownPlaceholder {
                    field: "path",
                    text: "#{path".into(),
                },
            ),
            (
                "path in the host",
                r##"host = "#{path}.test""##,
                Scheme::Http,
                RedirectError::PlaceholderNotAllowed {
                    field: "host",
                    placeholder: "path",
                    allowed: "#{host}",
                },
            ),
            (
                "query in the path",
                r##"path = "/#{query}""##,
                Scheme::Http,
                RedirectError::PlaceholderNotAllowed {
                    field: "path",
                    placeholder: "query",
                    allowed: "#{host}, #{path} and #{port}",
                },
            ),
            (
                "host with a slash",
                r##"host = "a.test/evil""##,
                Scheme::Http,
                RedirectError::Host("a.test/evil".into()),
            ),
            (
                "host with a port",
                r##"host = "a.test:81""##,
                Scheme::Http,
                RedirectError::Host("a.test:81".into()),
            ),
            (
                "empty host",
                r##"host = """##,
                Scheme::Http,
                RedirectError::Host(String::new()),
            ),
            (
                "relative path",
                r##"path = "x""##,
                Scheme::Http,
                RedirectError::Path("x".into()),
            ),
            (
                "path starting with a placeholder",
                r##"path = "#{path}""##,
                Scheme::Http,
                RedirectError::Path("#{path}".into()),
            ),
        ];
        let mut failed = Vec::new();
        for (name, config, scheme, want) in rows {
            let got = RedirectTemplate::compile(&redirect(config), *scheme, scheme.default_port());
            if got.as_ref().err() != Some(want) {
                failed.push(format!("{name}: got {got:?}, want {want:?}"));
            }
        }
        assert!(failed.is_empty(), "{}", failed.join("\n"));
    }

    #[test]
    fn request_without_host_cannot_reuse_it() {
        let template =
            RedirectTemplate::compile(&redirect(r##"path = "/x""##), Scheme::Http, 80).unwrap();
        let req = RedirectRequest {
            scheme: Scheme::Http,
            host: None,
            port: 80,
            path: "/",
            query: None,
        };
        assert_eq!(template.location(&req), Err(RedirectError::NoHost));
        // A literal host needs none from the request.
        let template =
            RedirectTemplate::compile(&redirect(r##"host = "b.test""##), Scheme::Http, 80).unwrap();
        assert_eq!(template.location(&req).unwrap(), "http://b.test/");
    }

    #[test]
    fn status_is_the_configured_one_default_301() {
        let template =
            RedirectTemplate::compile(&redirect(r##"path = "/x""##), Scheme::Http, 80).unwrap();
        assert_eq!(template.status().as_u16(), 301);
        let template = RedirectTemplate::compile(
            &redirect("path = \"/x\"\nstatus_code = 302"),
            Scheme::Http,
            80,
        )
        .unwrap();
        assert_eq!(template.status().as_u16(), 302);
    }
}
