//! The L7 proxy's defences and its own answers, through raw sockets and an HTTP/2 client in
//! the lab's client namespace: ambiguous framing and oversized heads refused before any
//! target hears of them, a slow header sender cut, a rapid-reset flood sent away, 503/502/504
//! with bodies that say why, `max_connections` and `idle_timeout` of a listener, and the
//! `/metrics` series and access-log lines a few requests leave. Every test checks that other
//! clients are served meanwhile. One config for all; a lab per test. Needs root; one test at
//! a time.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    time::{Duration, Instant},
};

use lb_agent::health::TargetState;
use tests::{
    h2_reset::reset_flood,
    l7_lab::{L7Lab, Pki, TargetKind, TargetSpec, path_str, target_name},
    lab_traffic::wait_for_state,
    raw_http::{RawAnswer, RawConnection, probe},
};

/// The `web` group's targets: an `l7-target` on port 8001 of b1 and of b2.
const TARGETS: [TargetSpec; 2] = [
    TargetSpec {
        backend: 0,
        port: 8001,
        kind: TargetKind::Http,
    },
    TargetSpec {
        backend: 1,
        port: 8001,
        kind: TargetKind::Http,
    },
];
const WEB: [&str; 2] = ["198.18.0.21:8001", "198.18.0.22:8001"];
/// Nothing listens here: `down` checks it (unhealthy), `refused` does not (in service).
const NOBODY: &str = "198.18.0.22:9999";

/// `web` on port 80: the defences under test (a 2 s head timeout, 8 KiB heads, 50 resets).
const WEB_PORT: u16 = 80;
/// `capped` on port 81: 5 connections at most.
const CAPPED_PORT: u16 = 81;
const MAX_CONNECTIONS: usize = 5;
/// `idle` on port 82: idle connections closed after 2 s.
const IDLE_PORT: u16 = 82;
const IDLE_TIMEOUT: Duration = Duration::from_secs(2);
const HEADER_TIMEOUT: Duration = Duration::from_secs(2);
const MAX_HEADER_BYTES: usize = 8192;
const MAX_RESETS: u32 = 50;

/// The config, its access log in the lab's directory (beside the CA).
fn config(pki: &Pki) -> String {
    let ca = pki.ca_path();
    let dir = ca.parent().expect("the lab's directory");
    let log = dir.join("access.log");
    let check = r#"{ protocol = "http", path = "/health", interval = "1s", timeout = "500ms", healthy_threshold = 2, unhealthy_threshold = 2 }"#;
    format!(
        r#"
[agent.access_log]
path = "{log}"

[[target_group]]
name = "web"
protocol = "http"
port = 8001
targets = [{{ address = "198.18.0.21" }}, {{ address = "198.18.0.22" }}]
health_check = {check}

# Its only target is down and it does not fail open: no target in service.
[[target_group]]
name = "down"
protocol = "http"
fail_open = false
targets = [{{ address = "198.18.0.22", port = 9999 }}]
health_check = {check}

# Not checked, so its target stays in service although nothing listens there.
[[target_group]]
name = "refused"
protocol = "http"
targets = [{{ address = "198.18.0.22", port = 9999 }}]
health_check = {{ enabled = false }}

[[target_group]]
name = "slow"
protocol = "http"
response_timeout = "1s"
targets = [{{ address = "198.18.0.21", port = 8001 }}]
health_check = {check}

[[listener]]
name = "web"
address = "198.18.1.100"
port = {WEB_PORT}
protocol = "http"
request_header_timeout = "2s"
max_header_bytes = {MAX_HEADER_BYTES}
http2_max_reset_streams = {MAX_RESETS}
default_action = {{ forward = "web" }}

[[listener.rule]]
priority = 10
conditions = {{ path = ["/api/*"] }}
action = {{ forward = "web" }}

[[listener.rule]]
priority = 20
conditions = {{ path = ["/none/*"] }}
action = {{ forward = "down" }}

[[listener.rule]]
priority = 30
conditions = {{ path = ["/refused/*"] }}
action = {{ forward = "refused" }}

[[listener.rule]]
priority = 40
conditions = {{ path = ["/delay"] }}
action = {{ forward = "slow" }}

[[listener]]
name = "capped"
address = "198.18.1.100"
port = {CAPPED_PORT}
protocol = "http"
max_connections = {MAX_CONNECTIONS}
default_action = {{ forward = "web" }}

[[listener]]
name = "idle"
address = "198.18.1.100"
port = {IDLE_PORT}
protocol = "http"
idle_timeout = "2s"
default_action = {{ forward = "web" }}
"#,
        log = path_str(&log),
    )
}

fn lab(tag: &str) -> L7Lab {
    let groups: Vec<(&str, &str)> = WEB
        .iter()
        .map(|a| ("web", *a))
        .chain([("slow", WEB[0])])
        .collect();
    let l7 = L7Lab::up(
        tag,
        2,
        env!("CARGO_BIN_EXE_l7-target"),
        &TARGETS,
        config,
        &groups,
    );
    let within = Duration::from_secs(30);
    wait_for_state(&l7.agent, "down", NOBODY, TargetState::Unhealthy, within);
    wait_for_state(
        &l7.agent,
        "refused",
        NOBODY,
        TargetState::Unavailable,
        within,
    );
    l7
}

fn vip(port: u16) -> SocketAddr {
    SocketAddr::from(([198, 18, 1, 100], port))
}

/// A normal request through `web` is answered by a target.
fn assert_served(l7: &L7Lab, what: &str) {
    let answer = l7.curl(&["http://198.18.1.100/api/normal"]);
    assert_eq!(answer.status, 200, "a normal request {what}: {answer:?}");
    let seen = answer.seen();
    assert!(
        WEB.iter()
            .enumerate()
            .any(|(i, _)| seen.target == target_name(i, 8001)),
        "{seen:?}"
    );
}

/// What every target logged, together.
fn target_logs(l7: &L7Lab) -> String {
    (0..TARGETS.len()).map(|i| l7.target_log(i)).collect()
}

/// The requests that are refused for their framing: (name, bytes). Each path is unique, so
/// the targets' logs show whether any of them reached one.
fn ambiguous_requests() -> Vec<(&'static str, Vec<u8>)> {
    let head = |path: &str, headers: &str, body: &str| -> Vec<u8> {
        format!("POST /probe-{path} HTTP/1.1\r\nHost: lab.example.test\r\n{headers}\r\n{body}")
            .into_bytes()
    };
    vec![
        (
            "cl-te",
            head(
                "cl-te",
                "Content-Length: 5\r\nTransfer-Encoding: chunked\r\n",
                "0\r\n\r\n",
            ),
        ),
        (
            "te-cl",
            head(
                "te-cl",
                "Transfer-Encoding: chunked\r\nContent-Length: 5\r\n",
                "0\r\n\r\n",
            ),
        ),
        (
            "cl-cl-equal",
            head(
                "cl-cl-equal",
                "Content-Length: 5\r\nContent-Length: 5\r\n",
                "hello",
            ),
        ),
        (
            "cl-cl-different",
            head(
                "cl-cl-different",
                "Content-Length: 5\r\nContent-Length: 6\r\n",
                "hello!",
            ),
        ),
        (
            "cl-invalid",
            head("cl-invalid", "Content-Length: 5x\r\n", "hello"),
        ),
        (
            "cl-signed",
            head("cl-signed", "Content-Length: +5\r\n", "hello"),
        ),
        (
            "obs-fold",
            head(
                "obs-fold",
                "X-Folded: first\r\n  continued\r\nContent-Length: 0\r\n",
                "",
            ),
        ),
        (
            "bad-chunk",
            head(
                "bad-chunk",
                "Transfer-Encoding: chunked\r\n",
                "zz\r\nhello\r\n0\r\n\r\n",
            ),
        ),
    ]
}

/// Asserts that `answer` is one text/plain response whose body is `body`.
fn assert_answer_says(answer: &RawAnswer, body: &str, what: &str) {
    let got = answer.text.split_once("\r\n\r\n").map(|(_, body)| body);
    assert_eq!(got, Some(body), "{what}: {answer:?}");
    assert_eq!(
        answer.header("content-type"),
        Some("text/plain; charset=utf-8"),
        "{what}: {answer:?}"
    );
    assert_eq!(
        answer.header("content-length"),
        Some(body.len().to_string().as_str()),
        "{what}: {answer:?}"
    );
}

#[test]
fn ambiguous_framing_gets_400_and_a_closed_connection_and_never_reaches_a_target() {
    let l7 = lab("l7amb");
    for (name, bytes) in ambiguous_requests() {
        assert_served(&l7, &format!("before {name}"));
        let answer = probe(&l7.lab, vip(WEB_PORT), &bytes, Duration::from_secs(8));
        assert_eq!(answer.status(), Some(400), "{name}: {answer:?}");
        assert!(
            answer.closed,
            "{name}: the connection stayed open: {answer:?}"
        );
        // Every one says why, including the heads hyper would refuse itself with an empty
        // body (an invalid or conflicting Content-Length, obs-fold): the guard answers those.
        assert_answer_says(
            &answer,
            "400 Bad Request: the request is malformed or ambiguous\n",
            name,
        );
        assert_served(&l7, &format!("after {name}"));
    }
    let logs = target_logs(&l7);
    assert!(
        !logs.contains("/probe-"),
        "a refused request reached a target:\n{logs}"
    );
    // The requests around them did.
    assert!(logs.contains("REQ GET /api/normal"), "{logs}");
    // Counted, the seven heads the guard answers itself among them (bad-chunk may be too).
    let metrics = l7.agent.cli(&["metrics"]).expect("metrics");
    let refused = sample(
        &metrics,
        "lb_http_bad_requests_total",
        &[("listener", "web")],
    );
    assert!(refused >= 7, "{refused} counted:\n{metrics}");
}

#[test]
fn a_head_over_max_header_bytes_gets_431_and_never_reaches_a_target() {
    let l7 = lab("l7big");
    assert_served(&l7, "before");
    let filler = "a".repeat(MAX_HEADER_BYTES + 1024);
    let request = format!(
        "GET /probe-big-head HTTP/1.1\r\nHost: lab.example.test\r\nX-Filler: {filler}\r\n\r\n"
    );
    let answer = probe(
        &l7.lab,
        vip(WEB_PORT),
        request.as_bytes(),
        Duration::from_secs(8),
    );
    assert_eq!(answer.status(), Some(431), "{answer:?}");
    assert!(answer.closed, "the connection stayed open: {answer:?}");
    assert_answer_says(
        &answer,
        "431 Request Header Fields Too Large: the request head is longer than this listener allows\n",
        "oversized head",
    );
    // Just under the limit is served.
    let fits = format!(
        "GET /api/fits HTTP/1.1\r\nHost: lab.example.test\r\nConnection: close\r\nX-Filler: {}\r\n\r\n",
        "a".repeat(MAX_HEADER_BYTES - 1024)
    );
    let answer = probe(
        &l7.lab,
        vip(WEB_PORT),
        fits.as_bytes(),
        Duration::from_secs(8),
    );
    assert_eq!(answer.status(), Some(200), "{answer:?}");
    assert_served(&l7, "after");
    let logs = target_logs(&l7);
    assert!(
        !logs.contains("/probe-"),
        "a refused request reached a target:\n{logs}"
    );
    assert!(logs.contains("REQ GET /api/fits"), "{logs}");
}

#[test]
fn a_slow_header_sender_and_a_silent_connection_get_408_after_the_request_header_timeout_while_others_are_served()
 {
    let l7 = lab("l7slow");
    let mut slow = RawConnection::connect(&l7.lab, vip(WEB_PORT));
    let started = Instant::now();
    assert!(slow.send(b"GET /probe-slow-head HTTP/1.1\r\nHost: lab.example.test\r\nX-Slow: "));
    // A byte a second, and a normal request between bytes, until the proxy cuts it (the
    // read waits the second); bounded at 12 bytes.
    let mut cut = None;
    let mut served = 0;
    for _ in 0..12 {
        let answer = slow.read_until_closed(Duration::from_secs(1));
        if answer.closed {
            cut = Some((started.elapsed(), answer));
            break;
        }
        assert_served(&l7, "while a slow header sender trickles");
        served += 1;
        if !slow.send(b"a") {
            cut = Some((started.elapsed(), answer));
            break;
        }
    }
    let (after, answer) = cut.expect("the slow header sender was never cut");
    println!("cut after {after:?} ({served} requests served meanwhile): {answer:?}");
    assert!(
        after >= HEADER_TIMEOUT - Duration::from_millis(200),
        "cut too early: {after:?}"
    );
    assert!(
        after <= HEADER_TIMEOUT + Duration::from_secs(3),
        "cut too late: {after:?}"
    );
    assert!(served >= 1, "no request was served meanwhile");
    assert!(
        answer.text.starts_with("HTTP/1.1 408 ") && answer.text.contains("request_header_timeout"),
        "the slow sender got no 408 saying why: {answer:?}"
    );
    // A connection that sends nothing at all is cut the same way.
    let mut silent = RawConnection::connect(&l7.lab, vip(WEB_PORT));
    let answer = silent.read_until_closed(HEADER_TIMEOUT + Duration::from_secs(3));
    let after = answer
        .closed_after
        .expect("the silent connection was never cut");
    assert!(
        after >= HEADER_TIMEOUT - Duration::from_millis(200),
        "cut too early: {after:?}"
    );
    assert!(
        answer.text.starts_with("HTTP/1.1 408 "),
        "the silent connection got no 408: {answer:?}"
    );
    assert_served(&l7, "after");
    let metrics = l7.agent.cli(&["metrics"]).expect("metrics");
    assert_eq!(
        sample(
            &metrics,
            "lb_http_request_header_timeouts_total",
            &[("listener", "web")]
        ),
        2,
        "{metrics}"
    );
    let logs = target_logs(&l7);
    assert!(
        !logs.contains("/probe-"),
        "the slow head reached a target:\n{logs}"
    );
}

#[test]
fn an_h2_client_that_resets_streams_in_a_loop_is_sent_away_while_others_are_served() {
    let l7 = lab("l7rst");
    assert_served(&l7, "before");
    let stream = RawConnection::connect(&l7.lab, vip(WEB_PORT)).into_stream();
    // 2 ms apart: a flood (500 resets a second), paced so that the count the client got
    // through before it was sent away measures the proxy's reaction.
    let flood = std::thread::spawn(move || {
        reset_flood(
            stream,
            "198.18.1.100",
            "/probe-h2-reset",
            2000,
            Duration::from_millis(2),
            Duration::from_secs(10),
        )
    });
    let mut served = 0;
    while !flood.is_finished() && served < 20 {
        assert_served(&l7, "during a rapid-reset flood");
        served += 1;
    }
    let flood = flood.join().expect("the flood's thread");
    println!("{flood:?}; {served} requests served meanwhile");
    assert!(flood.refused.is_some(), "never sent away: {flood:?}");
    assert!(
        flood.connection_ended,
        "the connection stayed open: {flood:?}"
    );
    // Sent away after about MAX_RESETS: the GOAWAY takes a round trip and a few more
    // resets are in flight by then.
    assert!(
        flood.resets > MAX_RESETS && flood.resets <= 4 * MAX_RESETS,
        "{} resets before the connection went: {flood:?}",
        flood.resets
    );
    assert_served(&l7, "after");
    // Streams reset at once may or may not have left before the reset: at most every one,
    // and far fewer than the flood's budget.
    let logs = target_logs(&l7);
    let reached = logs.matches("/probe-h2-reset").count();
    println!("{reached} of the flood's requests reached a target");
    assert!(reached <= flood.resets as usize, "{reached}: {logs}");
    let metrics = l7.agent.cli(&["metrics"]).expect("metrics");
    assert_eq!(
        sample(
            &metrics,
            "lb_http2_reset_floods_total",
            &[("listener", "web")]
        ),
        1,
        "{metrics}"
    );
}

#[test]
fn no_target_in_service_503_refused_502_too_slow_504_each_with_a_body_saying_so() {
    let l7 = lab("l7err");
    for (path, status, words) in [
        (
            "/none/x",
            503,
            "no target of the target group is in service",
        ),
        ("/refused/x", 502, "refused the connection"),
        ("/delay?ms=3000", 504, "did not answer in time"),
    ] {
        let started = Instant::now();
        let answer = l7.curl(&[&format!("http://198.18.1.100{path}")]);
        let took = started.elapsed();
        assert_eq!(answer.status, status, "{path}: {answer:?}");
        assert!(
            answer.body.starts_with(&status.to_string()) && answer.body.contains(words),
            "{path}: {answer:?}"
        );
        assert!(
            answer
                .header("content-type")
                .is_some_and(|t| t.starts_with("text/plain")),
            "{path}: {answer:?}"
        );
        if status == 504 {
            // The group's response_timeout (1 s), not the target's 3 s.
            assert!(took < Duration::from_millis(2500), "504 after {took:?}");
        }
        assert_served(&l7, &format!("after {path}"));
    }
    // A fast enough answer from the slow group is a target's.
    assert_eq!(
        l7.curl(&["http://198.18.1.100/delay?ms=10"]).seen().target,
        target_name(0, 8001)
    );
}

#[test]
fn a_listener_over_max_connections_closes_the_next_at_once_and_accepts_again_after_others_close() {
    let l7 = lab("l7cap");
    let mut held: Vec<RawConnection> = (0..MAX_CONNECTIONS)
        .map(|i| {
            let mut conn = RawConnection::connect(&l7.lab, vip(CAPPED_PORT));
            let (status, _) = conn.get(&format!("/api/held-{i}"));
            assert_eq!(status, 200, "held connection {i}");
            conn
        })
        .collect();
    let started = Instant::now();
    let mut extra = RawConnection::connect(&l7.lab, vip(CAPPED_PORT));
    extra.send(b"GET /probe-over-cap HTTP/1.1\r\nHost: lab.example.test\r\n\r\n");
    let answer = extra.read_until_closed(Duration::from_secs(5));
    assert!(
        answer.closed,
        "connection {} was kept: {answer:?}",
        MAX_CONNECTIONS + 1
    );
    assert!(answer.text.is_empty(), "it was answered: {answer:?}");
    println!(
        "connection {} closed after {:?}",
        MAX_CONNECTIONS + 1,
        started.elapsed()
    );
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    // The held ones are still served, and other listeners do not count them.
    let (status, _) = held[0].get("/api/still-held");
    assert_eq!(status, 200);
    assert_served(&l7, "on another listener of the same VIP");
    // Two close: new connections are accepted again (once the proxy has seen them go).
    held.truncate(MAX_CONNECTIONS - 2);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut conn = RawConnection::connect(&l7.lab, vip(CAPPED_PORT));
        conn.send(
            b"GET /api/after-close HTTP/1.1\r\nHost: lab.example.test\r\nConnection: close\r\n\r\n",
        );
        let answer = conn.read_until_closed(Duration::from_secs(5));
        if answer.status() == Some(200) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "never accepted again: {answer:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let logs = target_logs(&l7);
    assert!(
        !logs.contains("/probe-"),
        "the refused connection's request reached a target:\n{logs}"
    );
    let metrics = l7.agent.cli(&["metrics"]).expect("metrics");
    assert!(
        sample(
            &metrics,
            "lb_http_connections_refused_total",
            &[("listener", "capped")]
        ) >= 1,
        "{metrics}"
    );
}

#[test]
fn an_idle_keep_alive_connection_is_closed_after_the_idle_timeout_and_a_busy_one_is_not() {
    let l7 = lab("l7idle");
    // Busy: a request every second for 4 s on one connection (twice the idle timeout).
    let mut busy = RawConnection::connect(&l7.lab, vip(IDLE_PORT));
    for i in 0..5 {
        let (status, _) = busy.get(&format!("/api/busy-{i}"));
        assert_eq!(status, 200, "request {i} on a busy connection");
        std::thread::sleep(Duration::from_secs(1));
    }
    let mut idle = RawConnection::connect(&l7.lab, vip(IDLE_PORT));
    let (status, _) = idle.get("/api/then-idle");
    assert_eq!(status, 200);
    let answer = idle.read_until_closed(Duration::from_secs(10));
    let after = answer
        .closed_after
        .expect("the idle connection was never closed");
    println!("idle connection closed after {after:?}");
    assert!(
        after >= IDLE_TIMEOUT - Duration::from_millis(200),
        "closed too early: {after:?}"
    );
    assert!(
        after <= IDLE_TIMEOUT + Duration::from_secs(2),
        "closed too late: {after:?}"
    );
    assert!(answer.text.is_empty(), "{answer:?}");
}

#[test]
fn metrics_and_the_access_log_count_each_request_by_rule_group_target_and_status() {
    let l7 = lab("l7obs");
    // (path, status, rule, group): three by rule 10, two by the default action, one 503.
    let requests: [(&str, u16, Option<u32>, &str); 6] = [
        ("/api/m1", 200, Some(10), "web"),
        ("/api/m2", 200, Some(10), "web"),
        ("/api/m3", 200, Some(10), "web"),
        ("/d1", 200, None, "web"),
        ("/d2", 200, None, "web"),
        ("/none/m", 503, Some(20), "down"),
    ];
    let mut served_by = BTreeMap::new();
    for (path, status, _, _) in requests {
        let answer = l7.curl(&[&format!("http://198.18.1.100{path}")]);
        assert_eq!(answer.status, status, "{path}: {answer:?}");
        if status == 200 {
            let seen = answer.seen();
            let address = (0..WEB.len())
                .find(|&i| seen.target == target_name(i, 8001))
                .map(|i| WEB[i])
                .unwrap_or_else(|| panic!("{seen:?}"));
            served_by.insert(path, address);
        }
    }
    let metrics = l7.agent.cli(&["metrics"]).expect("metrics");
    let web = [("listener", "web")];
    for (labels, value) in [
        (vec![("listener", "web"), ("rule", "10")], 3),
        (vec![("listener", "web"), ("rule", "default")], 2),
        (vec![("listener", "web"), ("rule", "20")], 1),
    ] {
        assert_eq!(
            sample(&metrics, "lb_http_requests_total", &labels),
            value,
            "{labels:?}\n{metrics}"
        );
    }
    let class = |c| [("listener", "web"), ("class", c)];
    assert_eq!(
        sample(&metrics, "lb_http_responses_total", &class("2xx")),
        5,
        "{metrics}"
    );
    assert_eq!(
        sample(&metrics, "lb_http_responses_total", &class("5xx")),
        1,
        "{metrics}"
    );
    assert_eq!(
        sample(&metrics, "lb_http_responses_total", &class("4xx")),
        0,
        "{metrics}"
    );
    assert_eq!(
        sample(
            &metrics,
            "lb_http_rule_responses_total",
            &[("listener", "web"), ("rule", "20"), ("class", "5xx")]
        ),
        1,
        "{metrics}"
    );
    assert_eq!(
        sample(&metrics, "lb_http_connections_total", &web),
        6,
        "{metrics}"
    );
    // The workers sent in batches (io_uring): at least the five requests to targets and the
    // six responses to clients, each a send of its own (they are on different connections or
    // in different turns), carried by one call or more.
    let batches = sample(&metrics, "lb_http_send_batches_total", &[]);
    let sends = sample(&metrics, "lb_http_batched_sends_total", &[]);
    assert!(
        batches >= 1 && sends >= 11 && sends >= batches,
        "{batches} batches, {sends} sends\n{metrics}"
    );
    // One response time per request a web target answered, counted under that target.
    for address in WEB {
        let answered = served_by.values().filter(|a| **a == address).count() as u64;
        let labels = [("target_group", "web"), ("target", address)];
        assert_eq!(
            sample(&metrics, "lb_http_target_response_seconds_count", &labels),
            answered,
            "{address}\n{metrics}"
        );
        assert_eq!(
            sample(&metrics, "lb_http_target_requests_total", &labels),
            answered,
            "{address}\n{metrics}"
        );
    }

    // The access log: one line per request, each with its status, rule, group and target.
    let log_path = l7.lab.log_dir().join("access.log");
    let deadline = Instant::now() + Duration::from_secs(10);
    let lines = loop {
        let text = std::fs::read_to_string(&log_path).unwrap_or_default();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: `{l}`")))
            .collect();
        if lines.len() >= requests.len() || Instant::now() > deadline {
            break lines;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(lines.len(), requests.len(), "{lines:#?}");
    for (path, status, rule, group) in requests {
        let line = lines
            .iter()
            .find(|l| l["uri"] == path)
            .unwrap_or_else(|| panic!("no line for {path}: {lines:#?}"));
        assert_eq!(line["listener"], "web", "{line}");
        assert_eq!(line["status"], status, "{line}");
        assert_eq!(line["rule"], serde_json::json!(rule), "{line}");
        assert_eq!(line["target_group"], group, "{line}");
        assert_eq!(line["method"], "GET", "{line}");
        match served_by.get(path) {
            Some(address) => {
                assert_eq!(line["target"], *address, "{line}");
                assert!(line["error"].is_null(), "{line}");
            }
            None => {
                assert!(line["target"].is_null(), "{line}");
                assert_eq!(line["error"], "no_target_in_service", "{line}");
            }
        }
    }
}

/// The value of the sample `name{labels}` (those labels, maybe among others; the sum if
/// several match) in Prometheus text; a panic if none does.
fn sample(metrics: &str, name: &str, labels: &[(&str, &str)]) -> u64 {
    let wanted: Vec<String> = labels.iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect();
    let values: Vec<u64> = metrics
        .lines()
        .filter_map(|line| {
            let rest = line.strip_prefix(name)?;
            let (labels, value) = match rest.strip_prefix('{') {
                Some(rest) => rest.split_once("} ")?,
                None => ("", rest.strip_prefix(' ')?),
            };
            let present: Vec<&str> = labels.split(',').collect();
            wanted
                .iter()
                .all(|w| present.contains(&w.as_str()))
                .then(|| value.trim().parse::<f64>().ok())
                .flatten()
                .map(|v| v as u64)
        })
        .collect();
    assert!(!values.is_empty(), "no {name}{labels:?} in:\n{metrics}");
    values.iter().sum()
}
