//! Target health and lifecycle with real traffic: the agent's checks against the backends'
//! real servers in the namespace lab, and what clients see when targets fail, drain, flap or
//! all go down. Needs root; one test at a time.

use std::{
    collections::BTreeMap,
    io::{BufRead as _, BufReader, Write as _},
    net::SocketAddr,
    process::Stdio,
    time::{Duration, Instant},
};

use lb_agent::{config::HealthProtocol, health::TargetState};
use tests::{
    agent_views::AgentViews as _,
    lab_traffic::{
        EchoFlow, IdleConnection, iperf3_report, lab_up, lab_with_agent,
        lab_with_agent_and_servers, short_connections, short_connections_to, start_agent,
        start_iperf3, target, wait_for_state, write_config,
    },
};
use xtask::{
    agent::LabAgent,
    lab::{self, HealthMode, Lab, VIP4},
};

/// Checks every second, 500 ms timeout, 2 results in a row to change state.
const INTERVAL: Duration = Duration::from_secs(1);
const TIMEOUT: Duration = Duration::from_millis(500);
const HEALTHY_THRESHOLD: u32 = 2;
const UNHEALTHY_THRESHOLD: u32 = 2;

/// The `[target_group.health_check]` body every test group uses, with `extra` keys.
fn fast_check(extra: &str) -> String {
    format!(
        "interval = \"1s\"\ntimeout = \"500ms\"\nhealthy_threshold = {HEALTHY_THRESHOLD}\n\
         unhealthy_threshold = {UNHEALTHY_THRESHOLD}\n{extra}"
    )
}

/// An HTTP check of the backends' health endpoint.
fn http_check() -> String {
    fast_check("protocol = \"http\"\nport = 8081\npath = \"/health\"\nmatcher = \"200-299\"\n")
}

/// A tcp group of `backends` on the echo port with `settings` and a health check, and its
/// listener on VIP:`port`.
fn echo_group(name: &str, port: u16, backends: usize, settings: &str, check: &str) -> String {
    let targets: Vec<String> = (0..backends)
        .map(|i| format!("{{ address = \"198.18.0.{}\" }}", 21 + i))
        .collect();
    format!(
        r#"
[[target_group]]
name = "{name}"
protocol = "tcp"
port = 8080
targets = [{targets}]
{settings}

[target_group.health_check]
{check}

[[listener]]
name = "{name}"
address = "198.18.1.100"
port = {port}
protocol = "tcp"
default_action = {{ forward = "{name}" }}
"#,
        targets = targets.join(", ")
    )
}

fn echo_address(lab: &Lab, index: usize) -> String {
    format!("{}:8080", lab.backends()[index].v4)
}

/// Waits until every target of `group` has passed its first checks and is healthy.
fn wait_all_healthy(agent: &LabAgent, lab: &Lab, group: &str) {
    for i in 0..lab.backends().len() {
        wait_for_state(
            agent,
            group,
            &echo_address(lab, i),
            TargetState::Healthy,
            4 * INTERVAL,
        );
    }
}

fn transitions(agent: &LabAgent, change: &str) -> u64 {
    agent
        .stats()
        .health_transitions
        .get(change)
        .copied()
        .unwrap_or(0)
}

#[test]
fn a_killed_server_goes_unhealthy_gets_no_new_flows_and_returns_when_restarted() {
    let config = format!(
        r#"
[[target_group]]
name = "iperf"
protocol = "tcp"
port = 5201
stickiness = {{ type = "source_ip" }}
targets = [{{ address = "198.18.0.21" }}, {{ address = "198.18.0.22" }}, {{ address = "198.18.0.23" }}]
health_check = {{ port = 8081 }}

[[listener]]
name = "iperf"
address = "198.18.1.100"
port = 5201
protocol = "tcp"
default_action = {{ forward = "iperf" }}
{}"#,
        echo_group("echo", 80, 3, "", &fast_check(""))
    );
    let (lab, servers, agent) = lab_with_agent_and_servers("hk", 3, &config);
    wait_all_healthy(&agent, &lab, "echo");
    // A long iperf3 stream through the VIP to one backend; the victim is another one.
    let iperf = start_iperf3(&lab, 8);
    let deadline = Instant::now() + Duration::from_secs(5);
    let streaming = loop {
        let busy: Vec<usize> = (0..3)
            .filter(|&i| {
                let t = target(&agent, "iperf", &format!("{}:5201", lab.backends()[i].v4));
                t.counters.bytes > 1_000_000
            })
            .collect();
        if let [one] = busy[..] {
            break one;
        }
        assert!(Instant::now() < deadline, "iperf3 reached {busy:?}");
        std::thread::sleep(Duration::from_millis(100));
    };
    let victim = (streaming + 1) % 3;
    let victim_name = lab.backends()[victim].role.clone();
    let victim_address = echo_address(&lab, victim);

    lab.stop(servers.echo[victim])
        .expect("kill the echo server");
    let bound = INTERVAL * UNHEALTHY_THRESHOLD + TIMEOUT + INTERVAL;
    let detected = wait_for_state(
        &agent,
        "echo",
        &victim_address,
        TargetState::Unhealthy,
        bound,
    );
    println!("{victim_name} unhealthy {detected:?} after its server was killed (bound {bound:?})");
    let t = target(&agent, "echo", &victim_address);
    assert_eq!(
        t.reason.as_deref(),
        Some("Target.FailedHealthChecks"),
        "{t:?}"
    );
    assert!(!t.in_service, "{t:?}");
    assert!(
        t.description.as_deref().unwrap_or("").contains("refused"),
        "{t:?}"
    );
    // The other targets are untouched.
    for i in (0..3).filter(|&i| i != victim) {
        assert_eq!(
            target(&agent, "echo", &echo_address(&lab, i)).state,
            TargetState::Healthy
        );
    }

    // 200 new connections, every one served, none by the dead target.
    let served = short_connections(&lab, 20000, 200);
    println!("200 connections with {victim_name} down: {served:?}");
    assert!(!served.contains_key(&victim_name), "{served:?}");

    // The iperf3 stream to another backend ran on undisturbed.
    let report = iperf3_report(&lab, iperf);
    let received = report.bytes_received();
    assert!(received > 10_000_000, "iperf3 moved only {received} bytes");

    // Back up: healthy after `healthy_threshold` passing checks, and new flows again.
    lab::start_echo_server(&lab, &lab.backends()[victim]).expect("restart the echo server");
    let bound = INTERVAL * HEALTHY_THRESHOLD + TIMEOUT + INTERVAL;
    let recovered = wait_for_state(&agent, "echo", &victim_address, TargetState::Healthy, bound);
    println!("{victim_name} healthy {recovered:?} after its server came back (bound {bound:?})");
    let served = short_connections(&lab, 21000, 200);
    println!("200 connections with {victim_name} back: {served:?}");
    let back = served.get(&victim_name).copied().unwrap_or(0);
    assert!(back >= 30, "{victim_name} got {back} of 200: {served:?}");
    assert!(transitions(&agent, "healthy->unhealthy") >= 1);
    assert!(transitions(&agent, "unhealthy->healthy") >= 1);
}

#[test]
fn http_checks_mark_a_500_target_response_code_mismatch_and_a_hung_one_timeout() {
    // The same targets in a second group checked by TCP on the traffic port: health is per group.
    let config = echo_group("web", 80, 3, "", &http_check())
        + &echo_group("raw", 81, 3, "", &fast_check(""));
    let (lab, agent) = lab_with_agent("hh", 3, &config);
    wait_all_healthy(&agent, &lab, "web");
    wait_all_healthy(&agent, &lab, "raw");
    lab::set_health(&lab, &lab.backends()[1], HealthMode::Status(500)).expect("b2 answers 500");
    lab::set_health(&lab, &lab.backends()[2], HealthMode::Hang).expect("b3 hangs");
    let bound = INTERVAL * UNHEALTHY_THRESHOLD + TIMEOUT + INTERVAL;
    wait_for_state(
        &agent,
        "web",
        &echo_address(&lab, 1),
        TargetState::Unhealthy,
        bound,
    );
    wait_for_state(
        &agent,
        "web",
        &echo_address(&lab, 2),
        TargetState::Unhealthy,
        bound,
    );

    let b2 = target(&agent, "web", &echo_address(&lab, 1));
    assert_eq!(
        b2.reason.as_deref(),
        Some("Target.ResponseCodeMismatch"),
        "{b2:?}"
    );
    assert!(
        b2.description.as_deref().unwrap_or("").contains("500"),
        "{b2:?}"
    );
    let b3 = target(&agent, "web", &echo_address(&lab, 2));
    assert_eq!(b3.reason.as_deref(), Some("Target.Timeout"), "{b3:?}");
    let latency = b3.last_check_ms.expect("a latency");
    assert!(
        (450.0..1500.0).contains(&latency),
        "timed-out check took {latency} ms"
    );
    let b1 = target(&agent, "web", &echo_address(&lab, 0));
    assert_eq!(b1.state, TargetState::Healthy, "{b1:?}");
    let latency = b1.last_check_ms.expect("a latency");
    assert!(latency < 250.0, "a passing check took {latency} ms");
    assert!(b1.checks >= 2, "{b1:?}");

    // As an operator sees it.
    let list = agent.cli(&["targets", "list"]).expect("targets list");
    assert!(list.contains("Target.ResponseCodeMismatch"), "{list}");
    assert!(list.contains("Target.Timeout"), "{list}");

    // Only b1 gets new flows through the http-checked group; the tcp-checked one uses all.
    let web = short_connections_to(&lab, &VIP4.to_string(), 80, 22000, 60);
    assert_eq!(web.keys().collect::<Vec<_>>(), ["b1"], "{web:?}");
    for i in 0..3 {
        assert_eq!(
            target(&agent, "raw", &echo_address(&lab, i)).state,
            TargetState::Healthy
        );
    }
    let raw = short_connections_to(&lab, &VIP4.to_string(), 81, 22100, 90);
    assert_eq!(raw.len(), 3, "{raw:?}");
}

#[test]
fn draining_keeps_the_flow_sends_no_new_flows_and_purges_after_the_delay() {
    let delay = Duration::from_secs(6);
    let config = echo_group(
        "echo",
        80,
        3,
        "deregistration_delay = \"6s\"",
        &fast_check(""),
    );
    let (lab, agent) = lab_with_agent("hd", 3, &config);
    wait_all_healthy(&agent, &lab, "echo");
    // A flow that echoes 4 KiB chunks for 3 s, comparing every byte.
    let flow = EchoFlow::start(&lab, 3);
    let serving = flow.serving.clone();
    let index = flow.serving_index(&lab);
    let address = echo_address(&lab, index);
    // An idle connection to the same backend, held past the delay: draining would otherwise
    // end as soon as both sides close the echo flow.
    let held = IdleConnection::open(&lab, 80, &serving, 24000);
    let removed_at = Instant::now();
    let said = agent
        .cli(&["targets", "remove", "--group", "echo", &address])
        .expect("deregister");
    assert!(said.contains("draining"), "{said}");
    let t = target(&agent, "echo", &address);
    assert_eq!(t.state, TargetState::Draining, "{t:?}");
    assert_eq!(
        t.reason.as_deref(),
        Some("Target.DeregistrationInProgress"),
        "{t:?}"
    );
    assert!(!t.in_service, "{t:?}");
    assert!(t.active_flows >= 1, "{t:?}");

    let served = short_connections(&lab, 23000, 100);
    assert!(
        !served.contains_key(&serving),
        "{serving} got new flows while draining: {served:?}"
    );
    // Another target, deregistered and registered again while draining, is back in service.
    let other = echo_address(&lab, (index + 1) % 3);
    agent
        .cli(&["targets", "remove", "--group", "echo", &other])
        .expect("deregister another");
    assert_eq!(target(&agent, "echo", &other).state, TargetState::Draining);
    agent
        .cli(&["targets", "add", "--group", "echo", &other])
        .expect("register it again");
    let back = target(&agent, "echo", &other);
    assert_eq!(
        (back.state, back.in_service),
        (TargetState::Healthy, true),
        "{back:?}"
    );
    assert_eq!(transitions(&agent, "draining->healthy"), 1);
    let bytes = flow.finish();
    assert!(bytes > 50_000, "only {bytes} bytes echoed while draining");

    // The held connection keeps its entries until the delay ends; then they are purged.
    let backend: SocketAddr = address.parse().expect("a socket address");
    let flows_to = |agent: &LabAgent| {
        agent
            .flows()
            .iter()
            .filter(|f| f.backend == backend)
            .count()
    };
    assert!(
        removed_at.elapsed() < delay,
        "the test is too slow to see the entries"
    );
    assert!(flows_to(&agent) >= 1, "entries gone before the delay ended");
    let deadline = removed_at + delay + Duration::from_secs(2);
    while flows_to(&agent) > 0 {
        assert!(
            Instant::now() < deadline,
            "entries still there {:?} after removal",
            removed_at.elapsed()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let purged_after = removed_at.elapsed();
    println!("{serving}'s entries purged {purged_after:?} after deregistration (delay {delay:?})");
    assert!(
        purged_after >= delay - Duration::from_millis(300),
        "purged early: {purged_after:?}"
    );
    // Readers see the writer's last published state: the purge and the removal are one
    // change, published right after it (within milliseconds of the entries going).
    let listed = |agent: &LabAgent| {
        let targets = agent.targets();
        let listed = targets.iter().any(|t| t.address == backend);
        (listed, targets)
    };
    let deadline = Instant::now() + Duration::from_secs(1);
    while listed(&agent).0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let (still, targets) = listed(&agent);
    assert!(!still, "{targets:?}");
    assert_eq!(transitions(&agent, "draining->removed"), 1);
    drop(held);
}

/// A client holding `per_listener` connections open to VIP:80 and VIP:81; after a line on
/// its stdin it sends a ping on each and reports, per connection, `PORT BACKEND OK` or
/// `PORT BACKEND CUT reason`.
fn held_connections_script(per_listener: usize) -> String {
    format!(
        "import socket, sys\n\
         conns = []\n\
         for port, first in ((80, 30000), (81, 31000)):\n\
         \x20   for i in range({per_listener}):\n\
         \x20       s = socket.create_connection(('{VIP4}', port), timeout=3, source_address=('', first + i))\n\
         \x20       f = s.makefile('rb')\n\
         \x20       name = f.readline().decode().strip()\n\
         \x20       conns.append((port, name, s, f))\n\
         \x20       print(port, name, flush=True)\n\
         sys.stdin.readline()\n\
         for port, name, s, f in conns:\n\
         \x20   try:\n\
         \x20       s.sendall(b'ping')\n\
         \x20       got = f.read(4)\n\
         \x20       print(port, name, 'OK' if got == b'ping' else 'CUT closed', flush=True)\n\
         \x20   except OSError as e:\n\
         \x20       print(port, name, 'CUT', type(e).__name__, flush=True)\n"
    )
}

#[test]
fn terminate_on_unhealthy_cuts_established_flows_and_the_default_keeps_them() {
    let config = echo_group("keep", 80, 2, "", &http_check())
        + &echo_group("cut", 81, 2, "terminate_on_unhealthy = true", &http_check());
    let (lab, agent) = lab_with_agent("ht", 2, &config);
    wait_all_healthy(&agent, &lab, "keep");
    wait_all_healthy(&agent, &lab, "cut");
    let per_listener = 10;
    let mut child = lab
        .cmd(lab.client(), "python3")
        .args(["-c", &held_connections_script(per_listener)])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("client");
    let mut stdin = child.stdin.take().expect("stdin");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let mut opened = Vec::new();
    for _ in 0..2 * per_listener {
        opened.push(lines.next().expect("a connection").expect("read"));
    }
    for port in ["80", "81"] {
        assert!(
            opened.iter().any(|l| l == &format!("{port} b1")),
            "no connection to b1 through :{port}: {opened:?}"
        );
    }
    lab::set_health(&lab, &lab.backends()[0], HealthMode::Status(503)).expect("b1 fails");
    let bound = INTERVAL * UNHEALTHY_THRESHOLD + TIMEOUT + INTERVAL;
    for group in ["keep", "cut"] {
        wait_for_state(
            &agent,
            group,
            &echo_address(&lab, 0),
            TargetState::Unhealthy,
            bound,
        );
    }
    let cut = target(&agent, "cut", &echo_address(&lab, 0));
    assert_eq!(cut.active_flows, 0, "{cut:?}");
    writeln!(stdin, "go").expect("tell the client to ping");
    let mut outcome: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for _ in 0..2 * per_listener {
        let line = lines.next().expect("a result").expect("read");
        let mut words = line.splitn(3, ' ');
        let (port, name, result) = (
            words.next().unwrap_or(""),
            words.next().unwrap_or(""),
            words.next().unwrap_or(""),
        );
        outcome
            .entry(format!("{port} {name}"))
            .or_default()
            .push(result.to_owned());
    }
    let _ = child.wait();
    println!("after b1 went unhealthy: {outcome:?}");
    for (conn, results) in &outcome {
        let expect_cut = conn == "81 b1";
        for r in results {
            assert_eq!(r.starts_with("CUT"), expect_cut, "{conn}: {outcome:?}");
        }
    }
}

#[test]
fn with_every_target_unhealthy_fail_open_spreads_over_all_and_fail_closed_drops() {
    let config = echo_group("open", 80, 3, "", &http_check())
        + &echo_group("closed", 81, 3, "fail_open = false", &http_check());
    let (lab, agent) = lab_with_agent("hf", 3, &config);
    wait_all_healthy(&agent, &lab, "open");
    for b in lab.backends() {
        lab::set_health(&lab, b, HealthMode::Status(503)).expect("set 503");
    }
    let bound = INTERVAL * UNHEALTHY_THRESHOLD + TIMEOUT + INTERVAL;
    for group in ["open", "closed"] {
        for i in 0..3 {
            wait_for_state(
                &agent,
                group,
                &echo_address(&lab, i),
                TargetState::Unhealthy,
                bound,
            );
        }
    }
    let served = short_connections(&lab, 24000, 150);
    println!("150 connections with every target unhealthy (fail open): {served:?}");
    assert_eq!(served.len(), 3, "{served:?}");
    for (backend, n) in &served {
        assert!(*n >= 25, "{backend} got {n} of 150: {served:?}");
    }
    // Fail closed: no connection gets through (each gives up after 1 s).
    let script = format!(
        "import socket\n\
         ok = 0\n\
         for i in range(5):\n\
         \x20   try:\n\
         \x20       socket.create_connection(('{VIP4}', 81), timeout=1).close(); ok += 1\n\
         \x20   except OSError:\n\
         \x20       pass\n\
         print(ok)\n"
    );
    let ok = lab
        .run(lab.client(), &["python3", "-c", &script])
        .expect("fail-closed client");
    assert_eq!(
        ok.trim(),
        "0",
        "connections got through a fail-closed group"
    );
}

#[test]
fn a_flapping_target_never_changes_state() {
    let config = echo_group("echo", 80, 3, "", &http_check());
    let (lab, agent) = lab_with_agent("hp", 3, &config);
    wait_all_healthy(&agent, &lab, "echo");
    // b2 goes down for good first, then flaps too.
    lab::set_health(&lab, &lab.backends()[1], HealthMode::Status(503)).expect("b2 down");
    let bound = INTERVAL * UNHEALTHY_THRESHOLD + TIMEOUT + INTERVAL;
    wait_for_state(
        &agent,
        "echo",
        &echo_address(&lab, 1),
        TargetState::Unhealthy,
        bound,
    );
    let changes_before = agent.stats().health_transitions;
    let checks_before: Vec<u64> = (0..2)
        .map(|i| target(&agent, "echo", &echo_address(&lab, i)).checks)
        .collect();
    for i in 0..2 {
        lab::set_health(&lab, &lab.backends()[i], HealthMode::Alternate).expect("flap");
    }
    // Eight seconds of 200/503 by turns: eight checks each, never two alike in a row.
    let until = Instant::now() + 8 * INTERVAL;
    while Instant::now() < until {
        assert_eq!(
            target(&agent, "echo", &echo_address(&lab, 0)).state,
            TargetState::Healthy
        );
        assert_eq!(
            target(&agent, "echo", &echo_address(&lab, 1)).state,
            TargetState::Unhealthy
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    for (i, before) in checks_before.iter().enumerate() {
        let checks = target(&agent, "echo", &echo_address(&lab, i)).checks;
        assert!(checks >= before + 6, "b{}: {checks} checks", i + 1);
    }
    assert_eq!(agent.stats().health_transitions, changes_before);
}

#[test]
fn weights_steer_new_flows_and_a_new_target_ramps_up_over_slow_start() {
    let config = echo_group("echo", 80, 2, "slow_start = \"8s\"", &fast_check(""));
    let (lab, agent) = lab_with_agent("hw", 3, &config);
    for i in 0..2 {
        wait_for_state(
            &agent,
            "echo",
            &echo_address(&lab, i),
            TargetState::Healthy,
            4 * INTERVAL,
        );
    }
    let set_b1_weight = |weight: &str| {
        agent
            .cli(&[
                "targets",
                "weight",
                "--group",
                "echo",
                &echo_address(&lab, 0),
                "--weight",
                weight,
            ])
            .expect("set b1's weight");
    };
    // Weight 0: no new flows; 1:3 shares.
    set_b1_weight("0");
    let served = short_connections(&lab, 25000, 60);
    assert_eq!(served.keys().collect::<Vec<_>>(), ["b2"], "{served:?}");
    set_b1_weight("3");
    let served = short_connections(&lab, 25100, 200);
    println!("weights 3:1 -> {served:?}");
    let (b1, b2) = (served["b1"], served["b2"]);
    assert!((130..=170).contains(&b1) && b1 + b2 == 200, "{served:?}");
    set_b1_weight("1");

    // A target added live ramps up over slow_start once healthy.
    agent
        .cli(&["targets", "add", "--group", "echo", &echo_address(&lab, 2)])
        .expect("add b3");
    wait_for_state(
        &agent,
        "echo",
        &echo_address(&lab, 2),
        TargetState::Healthy,
        4 * INTERVAL,
    );
    let healthy_at = Instant::now();
    let early = target(&agent, "echo", &echo_address(&lab, 2));
    let weight = early.effective_weight;
    assert!(weight < 0.3, "b3 starts at {weight}: {early:?}");
    let served = short_connections(&lab, 26000, 200);
    println!("b3 just healthy, slow start: {served:?}");
    let b3 = served.get("b3").copied().unwrap_or(0);
    assert!(b3 < 30, "b3 got {b3} of 200 at the start of its slow start");
    std::thread::sleep(
        (healthy_at + Duration::from_millis(8500)).saturating_duration_since(Instant::now()),
    );
    let done = target(&agent, "echo", &echo_address(&lab, 2));
    assert_eq!(done.effective_weight, 1.0, "{done:?}");
    let served = short_connections(&lab, 27000, 300);
    println!("after slow start: {served:?}");
    let b3 = served.get("b3").copied().unwrap_or(0);
    assert!(
        (70..=130).contains(&b3),
        "b3 got {b3} of 300 after its slow start"
    );
}

#[test]
fn a_health_check_changed_through_the_control_api_takes_effect_at_once() {
    let config = echo_group("echo", 80, 3, "", &fast_check(""));
    let (lab, agent) = lab_with_agent("hc", 3, &config);
    wait_all_healthy(&agent, &lab, "echo");
    // b2's app is sick but still accepts connections: the TCP check cannot tell.
    lab::set_health(&lab, &lab.backends()[1], HealthMode::Status(500)).expect("b2 sick");
    std::thread::sleep(3 * INTERVAL);
    assert_eq!(
        target(&agent, "echo", &echo_address(&lab, 1)).state,
        TargetState::Healthy
    );

    // A bad change is refused whole, naming the field; the check in force stays (the groups'
    // JSON is compared byte for byte: nothing of any group changed).
    let groups_before = agent
        .cli(&["groups", "list", "--json"])
        .expect("groups list");
    let err = agent
        .cli(&[
            "groups",
            "health-check",
            "--group",
            "echo",
            "--protocol",
            "http",
            "--timeout",
            "5s",
        ])
        .expect_err("a timeout longer than the interval");
    assert!(format!("{err:#}").contains("timeout"), "{err:#}");
    let err = agent
        .cli(&[
            "groups",
            "health-check",
            "--group",
            "echo",
            "--protocol",
            "smtp",
        ])
        .expect_err("an unknown protocol");
    assert!(format!("{err:#}").contains("smtp"), "{err:#}");
    assert_eq!(
        agent
            .cli(&["groups", "list", "--json"])
            .expect("groups list"),
        groups_before
    );

    let said = agent
        .cli(&[
            "groups",
            "health-check",
            "--group",
            "echo",
            "--protocol",
            "http",
            "--port",
            "8081",
            "--path",
            "/health",
            "--matcher",
            "200",
        ])
        .expect("switch to an HTTP check");
    assert!(said.contains("http GET"), "{said}");
    let groups = agent.groups();
    let check = groups
        .first()
        .and_then(|g| g.health_check.as_ref())
        .unwrap_or_else(|| panic!("no health check: {groups:?}"));
    assert_eq!(
        (check.protocol, check.port, check.interval),
        (HealthProtocol::Http, Some(8081), INTERVAL),
        "{groups:?}"
    );
    let bound = INTERVAL * UNHEALTHY_THRESHOLD + TIMEOUT + INTERVAL;
    let took = wait_for_state(
        &agent,
        "echo",
        &echo_address(&lab, 1),
        TargetState::Unhealthy,
        bound,
    );
    println!("b2 unhealthy {took:?} after the check became HTTP");
    assert_eq!(
        target(&agent, "echo", &echo_address(&lab, 1))
            .reason
            .as_deref(),
        Some("Target.ResponseCodeMismatch")
    );
    let served = short_connections(&lab, 28000, 60);
    assert!(!served.contains_key("b2"), "{served:?}");

    // Disabled: nothing is checked and every target serves.
    agent
        .cli(&["groups", "health-check", "--group", "echo", "--disable"])
        .expect("disable");
    let t = target(&agent, "echo", &echo_address(&lab, 1));
    assert_eq!(
        (t.state, t.reason.as_deref(), t.in_service),
        (
            TargetState::Unavailable,
            Some("Target.HealthCheckDisabled"),
            true
        ),
        "{t:?}"
    );
    let served = short_connections(&lab, 28100, 90);
    assert_eq!(served.len(), 3, "{served:?}");
}

/// Listens on TCP ports `first..first+count` of all addresses for `seconds`, then prints the
/// time of every accepted connection (seconds, monotonic) and exits.
const MANY_PORTS_LISTENER: &str = r#"
import resource, selectors, socket, sys, time
first, count, seconds = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, count + 1024), hard))
sel = selectors.DefaultSelector()
for port in range(first, first + count):
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", port))
    s.listen(64)
    s.setblocking(False)
    sel.register(s, selectors.EVENT_READ)
print("listening", flush=True)
times = []
end = time.monotonic() + seconds
while time.monotonic() < end:
    for key, _ in sel.select(timeout=0.1):
        try:
            c, _ = key.fileobj.accept()
            times.append(time.monotonic())
            c.close()
        except OSError:
            pass
print(" ".join("%.4f" % t for t in times), flush=True)
"#;

#[test]
fn checks_of_a_thousand_targets_spread_over_the_interval() {
    let (count, first_port) = (1000u16, 10000u16);
    let targets: Vec<String> = (0..count)
        .map(|i| format!("{{ address = \"198.18.0.21\", port = {} }}", first_port + i))
        .collect();
    let config = format!(
        r#"
[[target_group]]
name = "many"
protocol = "tcp"
targets = [{}]
health_check = {{ interval = "5s", timeout = "2s", healthy_threshold = 2, unhealthy_threshold = 2 }}

[[listener]]
name = "many"
address = "198.18.1.100"
port = 80
protocol = "tcp"
default_action = {{ forward = "many" }}
"#,
        targets.join(", ")
    );
    let lab = lab_up("hm", 1);
    let b1 = &lab.backends()[0];
    let listener = lab
        .spawn(
            b1,
            &[
                "python3",
                "-c",
                MANY_PORTS_LISTENER,
                &first_port.to_string(),
                &count.to_string(),
                "14",
            ],
        )
        .expect("listener");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !lab.log(listener).unwrap_or_default().contains("listening") {
        assert!(
            Instant::now() < deadline,
            "{}",
            lab.log(listener).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    write_config(&lab, &config);
    let started = Instant::now();
    let agent = start_agent(&lab);
    let serving = Instant::now();
    println!("agent serving {:?} after its start", started.elapsed());
    // Every target passes its first check within one interval of the agent serving (its
    // start-up with 1,000 targets took 1.4-2.4 s here), plus time for the checks to answer.
    loop {
        let healthy = agent
            .targets()
            .iter()
            .filter(|t| t.state == TargetState::Healthy)
            .count();
        if healthy == usize::from(count) {
            println!(
                "1000 targets healthy {:?} after the agent started",
                started.elapsed()
            );
            break;
        }
        assert!(
            serving.elapsed() < Duration::from_millis(6500),
            "{healthy} of {count} healthy {:?} after the agent was serving",
            serving.elapsed()
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    lab.wait_ended(listener, Duration::from_secs(20))
        .expect("the listener finishes");
    let log = lab.log(listener).expect("listener log");
    let times: Vec<f64> = log
        .lines()
        .nth(1)
        .unwrap_or("")
        .split_whitespace()
        .filter_map(|t| t.parse().ok())
        .collect();
    let first = times.first().copied().expect("some checks");
    // The first interval: each target checked once, spread over it (not all at once).
    let round: Vec<f64> = times
        .iter()
        .map(|t| t - first)
        .filter(|&t| t < 5.0)
        .collect();
    let mut buckets = [0usize; 20];
    for t in &round {
        buckets[((t / 0.25) as usize).min(19)] += 1;
    }
    println!(
        "{} checks in the first 5 s, per 250 ms: {buckets:?}",
        round.len()
    );
    assert!(
        (900..=1100).contains(&round.len()),
        "{} checks in one interval",
        round.len()
    );
    let busiest = buckets.iter().max().copied().unwrap_or(0);
    assert!(
        busiest <= 150,
        "{busiest} checks in one 250 ms: {buckets:?} (evenly: 50)"
    );
    assert!(
        buckets.iter().filter(|&&n| n > 0).count() >= 18,
        "checks bunched: {buckets:?}"
    );
}

#[test]
fn a_draining_target_with_no_live_flow_left_is_removed_before_the_delay() {
    // The default closed_timeout (60 s): a flow both sides have closed ends draining at the
    // next look, without waiting for it.
    let config = echo_group(
        "echo",
        80,
        3,
        "deregistration_delay = \"300s\"",
        &fast_check(""),
    );
    let (lab, agent) = lab_with_agent("he", 3, &config);
    wait_all_healthy(&agent, &lab, "echo");
    let flow = EchoFlow::start(&lab, 7);
    let index = flow.serving_index(&lab);
    let address = echo_address(&lab, index);
    agent
        .cli(&["targets", "remove", "--group", "echo", &address])
        .expect("deregister");
    // At least one look (every 5 s) while the flow is open: it keeps the target draining.
    std::thread::sleep(Duration::from_millis(5500));
    let t = target(&agent, "echo", &address);
    assert_eq!(t.state, TargetState::Draining, "{t:?}");
    assert!(t.active_flows >= 1, "{t:?}");
    let bytes = flow.finish();
    assert!(bytes > 0);
    let removed: SocketAddr = address.parse().expect("a socket address");
    let closed = Instant::now();
    let deadline = closed + Duration::from_secs(7);
    loop {
        let gone = !agent.targets().iter().any(|t| t.address == removed);
        if gone {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "still draining {:?} after its last flow closed",
            closed.elapsed()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    println!(
        "removed {:?} after its last flow closed (delay 300 s, closed_timeout 60 s)",
        closed.elapsed()
    );
    assert!(
        lab.log(agent.pid())
            .expect("log")
            .contains("no live flow left")
    );
}
