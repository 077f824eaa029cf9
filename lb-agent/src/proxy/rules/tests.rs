//! Routing tables: listeners written as TOML, requests as rows, the rule each must land on.

use std::net::IpAddr;

use hyper::{HeaderMap, Method, Uri, header::HeaderValue};

use super::{CompiledAction, RequestFacts, RuleError, RuleTable};
use crate::{
    config::Listener,
    proxy::{pattern::PatternError, redirect::RedirectError},
};

/// An http listener on port 80 with `rules` (TOML `[[rule]]` tables) and a 404 default.
fn listener(rules: &str) -> Listener {
    let text = format!(
        r#"
name = "web"
address = "198.18.1.100"
port = 80
protocol = "http"
default_action = {{ fixed_response = {{ status_code = 404 }} }}
{rules}
"#
    );
    toml::from_str(&text).unwrap_or_else(|e| panic!("{e}\n{text}"))
}

fn table(rules: &str) -> RuleTable {
    RuleTable::compile(&listener(rules)).unwrap_or_else(|e| panic!("{e}"))
}

/// A request as a row writes it.
#[derive(Clone)]
struct Req {
    method: &'static str,
    /// The request target: origin form (`/a?b`) or absolute form.
    target: &'static str,
    host: Option<&'static str>,
    headers: &'static [(&'static str, &'static [u8])],
    client: &'static str,
}

const GET: Req = Req {
    method: "GET",
    target: "/",
    host: Some("example.com"),
    headers: &[],
    client: "198.18.0.10",
};

impl Req {
    fn target(self, target: &'static str) -> Self {
        Self { target, ..self }
    }
    fn host(self, host: Option<&'static str>) -> Self {
        Self { host, ..self }
    }
    fn method(self, method: &'static str) -> Self {
        Self { method, ..self }
    }
    fn headers(self, headers: &'static [(&'static str, &'static [u8])]) -> Self {
        Self { headers, ..self }
    }
    fn client(self, client: &'static str) -> Self {
        Self { client, ..self }
    }
}

/// The priority of the rule `req` lands on (`None`: the default action).
fn route(table: &RuleTable, req: &Req) -> Option<u32> {
    let method = Method::from_bytes(req.method.as_bytes()).unwrap();
    let uri: Uri = req.target.parse().unwrap();
    let mut headers = HeaderMap::new();
    if let Some(h) = req.host {
        headers.append("host", HeaderValue::from_str(h).unwrap());
    }
    for (name, value) in req.headers {
        headers.append(*name, HeaderValue::from_bytes(value).unwrap());
    }
    let client: IpAddr = req.client.parse().unwrap();
    table
        .route(&RequestFacts::new(&method, &uri, &headers, client))
        .rule
}

/// Routes every row; on mismatch lists every failing row with what it got.
fn check(table: &RuleTable, rows: &[(&str, Req, Option<u32>)]) {
    let failed: Vec<String> = rows
        .iter()
        .filter_map(|(name, req, want)| {
            let got = route(table, req);
            (got != *want).then(|| {
                format!(
                    "{name}: {} {} host {:?} from {}: got {got:?}, want {want:?}",
                    req.method, req.target, req.host, req.client
                )
            })
        })
        .collect();
    assert!(failed.is_empty(), "{}", failed.join("\n"));
}

#[test]
fn rules_are_tried_by_priority_not_file_order() {
    let t = table(
        r#"
[[rule]]
priority = 20
conditions = { path = ["/api/*"] }
action = { forward = "api" }
[[rule]]
priority = 5
conditions = { path = ["/api/admin/*"] }
action = { forward = "admin" }
"#,
    );
    assert_eq!(t.priorities().collect::<Vec<_>>(), vec![5, 20]);
    check(
        &t,
        &[
            (
                "the narrower rule wins by priority",
                GET.target("/api/admin/x"),
                Some(5),
            ),
            (
                "the wider rule takes the rest",
                GET.target("/api/users"),
                Some(20),
            ),
            ("no rule: the default action", GET.target("/"), None),
        ],
    );
}

#[test]
fn values_of_one_condition_are_alternatives_and_conditions_all_hold() {
    let t = table(
        r#"
[[rule]]
priority = 1
conditions = { host = ["a.test", "b.test"], path = ["/x", "/y"], http_request_method = ["GET", "HEAD"] }
action = { forward = "g" }
"#,
    );
    let a = GET.host(Some("a.test"));
    check(
        &t,
        &[
            ("first of each", a.clone().target("/x"), Some(1)),
            (
                "second host",
                GET.host(Some("b.test")).target("/y"),
                Some(1),
            ),
            (
                "second method",
                a.clone().target("/y").method("HEAD"),
                Some(1),
            ),
            ("host fails", GET.host(Some("c.test")).target("/x"), None),
            ("path fails", a.clone().target("/z"), None),
            ("method fails", a.clone().target("/x").method("POST"), None),
        ],
    );
}

#[test]
fn unmatched_request_takes_the_default_action() {
    let t = table(
        r#"
[[rule]]
priority = 1
conditions = { path = ["/only"] }
action = { forward = "g" }
"#,
    );
    let routed = t.route(&RequestFacts {
        host: None,
        path: "/other",
        query: None,
        method: &Method::GET,
        headers: &HeaderMap::new(),
        client: "198.18.0.1".parse().unwrap(),
    });
    assert_eq!(routed.rule, None);
    assert!(
        matches!(routed.action, CompiledAction::FixedResponse(f) if f.status.as_u16() == 404),
        "{routed:?}"
    );
}

#[test]
fn host_condition_ignores_case_port_and_trailing_dot() {
    let t = table(
        r#"
[[rule]]
priority = 1
conditions = { host = ["*.example.com"] }
action = { forward = "g" }
[[rule]]
priority = 2
conditions = { host = ["[2001:db8::1]", "198.18.1.100"] }
action = { forward = "g" }
"#,
    );
    check(
        &t,
        &[
            ("wildcard", GET.host(Some("www.example.com")), Some(1)),
            ("upper case", GET.host(Some("WWW.Example.COM")), Some(1)),
            (
                "port stripped",
                GET.host(Some("www.example.com:8080")),
                Some(1),
            ),
            ("trailing dot", GET.host(Some("www.example.com.")), Some(1)),
            (
                "trailing dot and port",
                GET.host(Some("www.example.com.:80")),
                Some(1),
            ),
            (
                "apex is not under the wildcard",
                GET.host(Some("example.com")),
                None,
            ),
            (
                "IPv6 literal keeps brackets",
                GET.host(Some("[2001:db8::1]:80")),
                Some(2),
            ),
            ("IPv4 literal", GET.host(Some("198.18.1.100")), Some(2)),
            ("no host matches no host rule", GET.host(None), None),
            (
                "absolute-form target beats the Host header",
                GET.target("http://www.example.com/")
                    .host(Some("other.test")),
                Some(1),
            ),
        ],
    );
}

#[test]
fn path_condition_is_case_sensitive_and_excludes_the_query() {
    let t = table(
        r#"
[[rule]]
priority = 1
conditions = { path = ["/Img/*.png"] }
action = { forward = "g" }
[[rule]]
priority = 2
conditions = { path = ["/"] }
action = { forward = "root" }
"#,
    );
    check(
        &t,
        &[
            ("exact case", GET.target("/Img/a.png"), Some(1)),
            ("other case", GET.target("/img/a.png"), None),
            (
                "query is not the path",
                GET.target("/Img/a.png?x=.png"),
                Some(1),
            ),
            (
                "query cannot complete the path",
                GET.target("/Img/a?.png"),
                None,
            ),
            (
                "percent-encoding is compared as sent",
                GET.target("/Img/a%2Epng"),
                None,
            ),
            ("root", GET.target("/"), Some(2)),
            (
                "empty path of an absolute target reads as /",
                GET.target("http://example.com"),
                Some(2),
            ),
        ],
    );
}

#[test]
fn empty_path_reads_as_slash() {
    let t = table(
        r#"
[[rule]]
priority = 1
conditions = { path = ["/"] }
action = { forward = "g" }
"#,
    );
    let routed = t.route(&RequestFacts {
        host: Some("a.test"),
        path: "",
        query: None,
        method: &Method::GET,
        headers: &HeaderMap::new(),
        client: "198.18.0.1".parse().unwrap(),
    });
    assert_eq!(routed.rule, Some(1));
}

#[test]
fn method_condition_is_exact() {
    let t = table(
        r#"
[[rule]]
priority = 1
conditions = { http_request_method = ["POST", "PURGE"] }
action = { forward = "g" }
"#,
    );
    check(
        &t,
        &[
            ("listed", GET.method("POST"), Some(1)),
            ("extension method", GET.method("PURGE"), Some(1)),
            ("lower case is another method", GET.method("post"), None),
            ("unlisted", GET, None),
        ],
    );
}

#[test]
fn source_ip_condition_matches_v4_and_v6_blocks() {
    let t = table(
        r#"
[[rule]]
priority = 1
conditions = { source_ip = ["198.18.0.0/24", "fd00:198:18::/48"] }
action = { forward = "inside" }
[[rule]]
priority = 2
conditions = { source_ip = ["198.19.0.7"] }
action = { forward = "one" }
[[rule]]
priority = 3
conditions = { source_ip = ["::/0"] }
action = { forward = "any-v6" }
"#,
    );
    check(
        &t,
        &[
            ("v4 inside", GET.client("198.18.0.200"), Some(1)),
            ("v4 just outside", GET.client("198.18.1.0"), None),
            ("v6 inside", GET.client("fd00:198:18:ffff::1"), Some(1)),
            ("v6 just outside", GET.client("fd00:198:19::1"), Some(3)),
            (
                "v4-mapped v6 counts as v4",
                GET.client("::ffff:198.18.0.9"),
                Some(1),
            ),
            (
                "bare address is a block of one",
                GET.client("198.19.0.7"),
                Some(2),
            ),
            ("its neighbour is not", GET.client("198.19.0.8"), None),
            ("v6 /0 takes no v4 client", GET.client("10.0.0.1"), None),
        ],
    );
}

#[test]
fn header_condition_ignores_name_and_value_case() {
    let t = table(
        r#"
[[rule]]
priority = 1
conditions = { http_header = { "User-Agent" = ["*Mobile*", "*Android*"] } }
action = { forward = "mobile" }
[[rule]]
priority = 2
conditions = { http_header = { "x-canary" = ["yes"], "X-Region" = ["eu-*"] } }
action = { forward = "canary" }
"#,
    );
    check(
        &t,
        &[
            (
                "pattern",
                GET.headers(&[("user-agent", b"Foo Mobile/1")]),
                Some(1),
            ),
            (
                "second pattern",
                GET.headers(&[("user-agent", b"Android 14")]),
                Some(1),
            ),
            (
                "value case ignored",
                GET.headers(&[("user-agent", b"x MOBILE y")]),
                Some(1),
            ),
            ("no such header", GET, None),
            (
                "every header condition must hold",
                GET.headers(&[("x-canary", b"yes")]),
                None,
            ),
            (
                "both headers",
                GET.headers(&[("x-canary", b"YES"), ("x-region", b"eu-west-1")]),
                Some(2),
            ),
        ],
    );
}

#[test]
fn header_sent_on_several_lines_matches_when_any_line_matches() {
    let t = table(
        r#"
[[rule]]
priority = 1
conditions = { http_header = { "x-tag" = ["blue"] } }
action = { forward = "g" }
"#,
    );
    check(
        &t,
        &[
            (
                "second line matches",
                GET.headers(&[("x-tag", b"red"), ("x-tag", b"blue")]),
                Some(1),
            ),
            (
                "duplicate equal lines",
                GET.headers(&[("x-tag", b"blue"), ("x-tag", b"blue")]),
                Some(1),
            ),
            (
                "a line is compared whole",
                GET.headers(&[("x-tag", b"red, blue")]),
                None,
            ),
            ("empty value", GET.headers(&[("x-tag", b"")]), None),
            (
                "non-ASCII bytes do not match letters",
                GET.headers(&[("x-tag", b"bl\xffe")]),
                None,
            ),
        ],
    );
}

#[test]
fn non_ascii_header_bytes_match_a_wildcard() {
    let t = table(
        r#"
[[rule]]
priority = 1
conditions = { http_header = { "x-tag" = ["bl?e"] } }
action = { forward = "g" }
"#,
    );
    check(
        &t,
        &[(
            "obs-text byte is one character",
            GET.headers(&[("x-tag", b"bl\xffe")]),
            Some(1),
        )],
    );
}

#[test]
fn query_condition_decodes_and_ignores_case() {
    let t = table(
        r#"
[[rule]]
priority = 1
conditions = { query_string = { version = "v2*" } }
action = { forward = "v2" }
[[rule]]
priority = 2
conditions = { query_string = { "a b" = "c&d" } }
action = { forward = "decoded" }
[[rule]]
priority = 3
conditions = { query_string = { flag = "*", mode = "\\*" } }
action = { forward = "flag" }
[[rule]]
priority = 4
conditions = { query_string = { "*" = "trace" } }
action = { forward = "any-key" }
"#,
    );
    check(
        &t,
        &[
            ("pattern", GET.target("/?version=v2.1"), Some(1)),
            (
                "among other pairs",
                GET.target("/?x=1&version=v2&y"),
                Some(1),
            ),
            ("case ignored", GET.target("/?VERSION=V2"), Some(1)),
            ("no such key", GET.target("/?other=v2"), None),
            ("no query", GET.target("/"), None),
            ("percent-decoded", GET.target("/?a%20b=c%26d"), Some(2)),
            ("encoded & is no separator", GET.target("/?a%20b=c&d"), None),
            ("plus is no space", GET.target("/?a+b=c%26d"), None),
            (
                "star key takes any key",
                GET.target("/?debug=TRACE"),
                Some(4),
            ),
            ("every entry must hold", GET.target("/?flag=1"), None),
            (
                "key without = has an empty value",
                GET.target("/?flag&mode=*"),
                Some(3),
            ),
            (
                "escaped star is literal",
                GET.target("/?flag=1&mode=x"),
                None,
            ),
        ],
    );
}

#[test]
fn actions_compile_to_what_they_answer() {
    let t = table(
        r#"
[[rule]]
priority = 1
conditions = { path = ["/canary"] }
action = { forward = [{ target_group = "blue", weight = 90 }, { target_group = "green", weight = 10 }] }
[[rule]]
priority = 2
conditions = { path = ["/old"] }
action = { redirect = { path = "/new", status_code = 302 } }
[[rule]]
priority = 3
conditions = { path = ["/down"] }
action = { fixed_response = { status_code = 503, content_type = "text/plain", message_body = "down" } }
"#,
    );
    let action = |path: &'static str| {
        let uri: Uri = path.parse().unwrap();
        let headers = HeaderMap::new();
        let facts = RequestFacts::new(&Method::GET, &uri, &headers, "198.18.0.1".parse().unwrap());
        t.route(&facts).action.clone()
    };
    match action("/canary") {
        CompiledAction::Forward(g) => {
            assert_eq!(
                g.groups().collect::<Vec<_>>(),
                vec![("blue", 90), ("green", 10)]
            )
        }
        other => panic!("{other:?}"),
    }
    match action("/old") {
        CompiledAction::Redirect(r) => assert_eq!(r.status().as_u16(), 302),
        other => panic!("{other:?}"),
    }
    match action("/down") {
        CompiledAction::FixedResponse(f) => {
            assert_eq!(f.status.as_u16(), 503);
            assert_eq!(f.content_type.unwrap(), "text/plain");
            assert_eq!(&f.body[..], b"down");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn bad_rules_are_refused_with_the_field() {
    let rows: &[(&str, &str, RuleError)] = &[
        (
            "not a CIDR",
            r#"conditions = { source_ip = ["198.18.0.0/33"] }"#,
            RuleError::SourceIp {
                at: "rule[0].conditions.source_ip[0]".into(),
                value: "198.18.0.0/33".into(),
                reason: "has a prefix length over 32".into(),
            },
        ),
        (
            "host bits set",
            r#"conditions = { source_ip = ["fd00:198:18::1/48"] }"#,
            RuleError::SourceIp {
                at: "rule[0].conditions.source_ip[0]".into(),
                value: "fd00:198:18::1/48".into(),
                reason: "has host bits set; the block is `fd00:198:18::/48` (a typo is likelier \
                         than meaning it)"
                    .into(),
            },
        ),
        (
            "no address",
            r#"conditions = { source_ip = ["office"] }"#,
            RuleError::SourceIp {
                at: "rule[0].conditions.source_ip[0]".into(),
                value: "office".into(),
                reason: "is no IPv4 or IPv6 address block (`10.0.0.0/8`, `fd00::/8`)".into(),
            },
        ),
        (
            "empty prefix",
            r#"conditions = { source_ip = ["10.0.0.0/"] }"#,
            RuleError::SourceIp {
                at: "rule[0].conditions.source_ip[0]".into(),
                value: "10.0.0.0/".into(),
                reason: "has no prefix length after `/`".into(),
            },
        ),
        (
            "lower-case method",
            r#"conditions = { http_request_method = ["GET", "post"] }"#,
            RuleError::Method {
                at: "rule[0].conditions.http_request_method[1]".into(),
                value: "post".into(),
            },
        ),
        (
            "bad header name",
            r#"conditions = { http_header = { "x tag" = ["a"] } }"#,
            RuleError::HeaderName {
                at: "rule[0].conditions.http_header.x tag".into(),
                name: "x tag".into(),
            },
        ),
        (
            "empty path pattern",
            r#"conditions = { path = ["/a", ""] }"#,
            RuleError::Pattern {
                at: "rule[0].conditions.path[1]".into(),
                source: PatternError::Empty,
            },
        ),
        (
            "dangling escape in a query key",
            r#"conditions = { query_string = { 'k\' = "v" } }"#,
            RuleError::Pattern {
                at: r"rule[0].conditions.query_string.k\ (key)".into(),
                source: PatternError::DanglingEscape(r"k\".into()),
            },
        ),
        (
            "no condition",
            "",
            RuleError::NoCondition {
                at: "rule[0].conditions".into(),
            },
        ),
    ];
    let mut failed = Vec::new();
    for (name, conditions, want) in rows {
        let text = format!("[[rule]]\npriority = 1\n{conditions}\naction = {{ forward = \"g\" }}");
        let got = RuleTable::compile(&listener(&text));
        if got.as_ref().err() != Some(want) {
            failed.push(format!("{name}: got {:?}, want {want:?}", got.err()));
        }
    }
    assert!(failed.is_empty(), "{}", failed.join("\n"));
}

#[test]
fn bad_actions_and_priorities_are_refused() {
    let duplicate = r#"
[[rule]]
priority = 7
conditions = { path = ["/a"] }
action = { forward = "g" }
[[rule]]
priority = 7
conditions = { path = ["/b"] }
action = { forward = "g" }
"#;
    assert_eq!(
        RuleTable::compile(&listener(duplicate)).err(),
        Some(RuleError::Priority {
            at: "rule[1].priority".into(),
            priority: 7,
            reason: "is taken by another rule",
        })
    );
    let looping = r#"
[[rule]]
priority = 1
conditions = { path = ["/a"] }
action = { redirect = { query = "x=1" } }
"#;
    assert_eq!(
        RuleTable::compile(&listener(looping)).err(),
        Some(RuleError::Redirect {
            at: "rule[0].action.redirect".into(),
            source: RedirectError::Loop,
        })
    );
    let two_actions = r#"
[[rule]]
priority = 1
conditions = { path = ["/a"] }
action = { forward = "g", fixed_response = { status_code = 200 } }
"#;
    assert_eq!(
        RuleTable::compile(&listener(two_actions)).err(),
        Some(RuleError::Action {
            at: "rule[0].action".into(),
        })
    );
}

#[test]
fn https_listener_refuses_a_redirect_to_http_and_l4_listeners_have_no_table() {
    let mut l = listener("");
    l.protocol = crate::config::ListenerProtocol::Https;
    l.default_action = toml::from_str(r#"redirect = { protocol = "http", port = 80 }"#).unwrap();
    assert_eq!(
        RuleTable::compile(&l).err(),
        Some(RuleError::Redirect {
            at: "default_action.redirect".into(),
            source: RedirectError::HttpsToHttp,
        })
    );
    l.protocol = crate::config::ListenerProtocol::Tcp;
    assert_eq!(
        RuleTable::compile(&l).err(),
        Some(RuleError::NotHttp {
            listener: "web".into(),
            protocol: "tcp",
        })
    );
}
