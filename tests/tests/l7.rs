//! The L7 proxy's rules through real clients: an `http` listener on the VIP whose rules send
//! requests to groups of `l7-target`s that answer with their names, redirect, or answer
//! fixed responses. Needs root; one test at a time.

use std::collections::BTreeMap;

use tests::l7_lab::{L7Lab, Seen, TargetKind, TargetSpec, target_name};

/// Each condition's group has a target of its own on b1 (port = group), so an answer names
/// the rule that took the request; the default group is on b2, the weighted pair on b2 and b1.
const HOST: u16 = 8001;
const PATH: u16 = 8002;
const HEADER: u16 = 8003;
const METHOD: u16 = 8004;
const QUERY: u16 = 8005;
const SOURCE: u16 = 8006;
const NINETY: u16 = 8007;
const DEFAULT: u16 = 8000;
const TEN: u16 = 8008;

/// (group, backend index, port) of every target.
const GROUPS: [(&str, usize, u16); 9] = [
    ("host", 0, HOST),
    ("path", 0, PATH),
    ("header", 0, HEADER),
    ("method", 0, METHOD),
    ("query", 0, QUERY),
    ("source", 0, SOURCE),
    ("ninety", 0, NINETY),
    ("default", 1, DEFAULT),
    ("ten", 1, TEN),
];

fn config() -> String {
    let mut text = String::new();
    for (group, backend, port) in GROUPS {
        text += &format!(
            r#"
[[target_group]]
name = "{group}"
protocol = "http"
targets = [{{ address = "198.18.0.{}", port = {port} }}]
health_check = {{ protocol = "http", path = "/health", interval = "1s", timeout = "500ms", healthy_threshold = 2, unhealthy_threshold = 2 }}
"#,
            21 + backend
        );
    }
    text += r#"
[[listener]]
name = "web"
address = "198.18.1.100"
port = 80
protocol = "http"
request_id_header = "X-Request-Id"
default_action = { forward = "default" }

[[listener.rule]]
priority = 10
conditions = { host = ["a.example.*"] }
action = { forward = "host" }

[[listener.rule]]
priority = 20
conditions = { path = ["/p/*/x?"] }
action = { forward = "path" }

[[listener.rule]]
priority = 30
conditions = { http_header = { "X-Route" = ["canary-*"] } }
action = { forward = "header" }

[[listener.rule]]
priority = 40
conditions = { http_request_method = ["DELETE", "PATCH"] }
action = { forward = "method" }

[[listener.rule]]
priority = 50
conditions = { query_string = { version = "v2" } }
action = { forward = "query" }

# The first /src rule names a block the client is not in: only the second may take it.
[[listener.rule]]
priority = 60
conditions = { path = ["/src"], source_ip = ["198.18.200.0/24"] }
action = { fixed_response = { status_code = 403, content_type = "text/plain", message_body = "wrong source" } }

[[listener.rule]]
priority = 61
conditions = { path = ["/src"], source_ip = ["198.18.0.0/24", "fd00:198:18::/64"] }
action = { forward = "source" }

[[listener.rule]]
priority = 70
conditions = { path = ["/split/*"] }
action = { forward = [{ target_group = "ninety", weight = 90 }, { target_group = "ten", weight = 10 }] }

[[listener.rule]]
priority = 80
conditions = { path = ["/old/*"] }
action = { redirect = { protocol = "https", port = 443, path = "/new/#{path}", status_code = 302 } }

[[listener.rule]]
priority = 90
conditions = { path = ["/teapot"] }
action = { fixed_response = { status_code = 418, content_type = "text/plain; charset=utf-8", message_body = "short and stout" } }
"#;
    text
}

fn lab(tag: &str) -> L7Lab {
    let targets: Vec<TargetSpec> = GROUPS
        .iter()
        .map(|&(_, backend, port)| TargetSpec {
            backend,
            port,
            kind: TargetKind::Http,
        })
        .collect();
    let addresses: Vec<(String, String)> = GROUPS
        .iter()
        .map(|&(g, b, p)| (g.to_owned(), format!("198.18.0.{}:{p}", 21 + b)))
        .collect();
    let groups: Vec<(&str, &str)> = addresses
        .iter()
        .map(|(g, a)| (g.as_str(), a.as_str()))
        .collect();
    L7Lab::up(
        tag,
        2,
        env!("CARGO_BIN_EXE_l7-target"),
        &targets,
        |_| config(),
        &groups,
    )
}

/// The name of the target of `group`.
fn served_by(group: &str) -> String {
    let (_, backend, port) = GROUPS
        .iter()
        .find(|(g, _, _)| *g == group)
        .unwrap_or_else(|| panic!("no group {group}"));
    target_name(*backend, *port)
}

/// `curl ARGS http://198.18.1.100PATH`: what the target that answered saw.
fn get(l7: &L7Lab, path: &str, args: &[&str]) -> Seen {
    let url = format!("http://198.18.1.100{path}");
    l7.curl(&[args, &[url.as_str()]].concat()).seen()
}

#[test]
fn host_and_path_rules_send_requests_to_their_groups() {
    let l7 = lab("l7hp");
    let by_host = get(&l7, "/anything", &["-H", "Host: a.example.test"]);
    assert_eq!(by_host.target, served_by("host"), "{by_host:?}");
    assert_eq!(by_host.path, "/anything");
    assert_eq!(get(&l7, "/p/deep/er/x1", &[]).target, served_by("path"));
    // `?` is one character: `/p/a/x12` does not match `/p/*/x?`.
    assert_eq!(get(&l7, "/p/a/x12", &[]).target, served_by("default"));
    assert_eq!(
        get(&l7, "/", &["-H", "Host: b.example.test"]).target,
        served_by("default")
    );
}

#[test]
fn header_method_query_and_source_conditions_each_route_as_configured() {
    let l7 = lab("l7cond");
    let cases: [(&str, &[&str], &str); 8] = [
        ("/h", &["-H", "X-Route: canary-7"], "header"),
        ("/h", &["-H", "X-Route: stable"], "default"),
        ("/m", &["-X", "DELETE"], "method"),
        ("/m", &["-X", "PATCH"], "method"),
        ("/m", &["-X", "PUT"], "default"),
        ("/q?a=1&version=v2", &[], "query"),
        ("/q?version=v1", &[], "default"),
        ("/src", &[], "source"),
    ];
    for (path, args, group) in cases {
        let seen = get(&l7, path, args);
        assert_eq!(
            seen.target,
            served_by(group),
            "{path} {args:?} should reach {group}: {seen:?}"
        );
    }
    // Nothing the rules answered themselves reached a target; the method target saw both.
    let method_log = l7.target_log(3);
    assert_eq!(
        method_log.matches("REQ DELETE /m").count(),
        1,
        "{method_log}"
    );
    assert_eq!(
        method_log.matches("REQ PATCH /m").count(),
        1,
        "{method_log}"
    );
}

#[test]
fn a_90_10_weighted_forward_splits_1000_requests_within_5_points() {
    let l7 = lab("l7wt");
    // One curl, 1000 URLs (its [1-1000] glob) on kept-alive connections: the split is per
    // request, not per connection. `-w` ends each answer with a newline.
    let out = l7.curl_raw(&["-s", "-w", "\\n", "http://198.18.1.100/split/[1-1000]"]);
    let mut served: BTreeMap<String, usize> = BTreeMap::new();
    for line in out.lines().filter(|l| !l.trim().is_empty()) {
        let seen: Seen = serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: `{line}`"));
        *served.entry(seen.target).or_default() += 1;
    }
    println!("1000 requests: {served:?}");
    assert_eq!(served.values().sum::<usize>(), 1000, "{served:?}");
    let ninety = served.get(&served_by("ninety")).copied().unwrap_or(0);
    let ten = served.get(&served_by("ten")).copied().unwrap_or(0);
    assert_eq!(ninety + ten, 1000, "{served:?}");
    assert!((850..=950).contains(&ninety), "{served:?}");
}

#[test]
fn redirect_and_fixed_response_actions_answer_as_configured() {
    let l7 = lab("l7act");
    let redirect = l7.curl(&[
        "--resolve",
        "shop.example.test:80:198.18.1.100",
        "http://shop.example.test/old/x?a=1",
    ]);
    assert_eq!(redirect.status, 302, "{redirect:?}");
    assert_eq!(
        redirect.header("location"),
        Some("https://shop.example.test/new/old/x?a=1"),
        "{redirect:?}"
    );
    let fixed = l7.curl(&["http://198.18.1.100/teapot"]);
    assert_eq!(fixed.status, 418, "{fixed:?}");
    assert_eq!(
        fixed.header("content-type"),
        Some("text/plain; charset=utf-8"),
        "{fixed:?}"
    );
    assert_eq!(fixed.body, "short and stout", "{fixed:?}");
    // Neither reached a target.
    for (i, _) in GROUPS.iter().enumerate() {
        let log = l7.target_log(i);
        assert!(
            !log.contains("/old/") && !log.contains("/teapot"),
            "target {i} saw: {log}"
        );
    }
}

#[test]
fn forwarded_headers_and_a_request_id_reach_the_target() {
    let l7 = lab("l7xff");
    let seen = get(&l7, "/xff", &[]);
    let header = |name: &str| seen.headers.get(name).map(String::as_str);
    assert_eq!(header("x-forwarded-for"), Some("198.18.0.10"), "{seen:?}");
    assert_eq!(header("x-forwarded-proto"), Some("http"), "{seen:?}");
    assert_eq!(header("x-forwarded-port"), Some("80"), "{seen:?}");
    let generated = header("x-request-id").unwrap_or_default();
    assert!(!generated.is_empty(), "no request id generated: {seen:?}");
    // A second request gets an id of its own; a client's id passes through.
    let again = get(&l7, "/xff", &[]);
    assert_ne!(
        again.headers.get("x-request-id").map(String::as_str),
        Some(generated),
        "{again:?}"
    );
    let passed = get(&l7, "/xff", &["-H", "X-Request-Id: client-chose-this"]);
    assert_eq!(
        passed.headers.get("x-request-id").map(String::as_str),
        Some("client-chose-this"),
        "{passed:?}"
    );
    // A client's X-Forwarded-For is kept, the client's address appended.
    let chained = get(&l7, "/xff", &["-H", "X-Forwarded-For: 203.0.113.7"]);
    assert_eq!(
        chained.headers.get("x-forwarded-for").map(String::as_str),
        Some("203.0.113.7, 198.18.0.10"),
        "{chained:?}"
    );
}
