//! The data plane outlives the agent: pinned in a BPF filesystem, it keeps forwarding while
//! the agent is dead (even after SIGKILL), and a new agent adopts it without a gap. Needs
//! root; one test at a time.

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use lb_agent::health::TargetState;
use tests::{
    agent_views::AgentViews as _,
    lab_configs::ECHO_LISTENER,
    lab_traffic::{
        agent_binary, config_path, end_agent, iperf3_report, lab_with_agent, short_connections,
        start_agent, start_iperf3, wait_for_state,
    },
};
use xtask::lab;

/// Groups `iperf` and `echo` over b1 and b2, and the iperf listener.
const GROUPS_AND_IPERF: &str = r#"
[[target_group]]
name = "iperf"
protocol = "tcp"
port = 5201
stickiness = { type = "source_ip" }
targets = [{ address = "198.18.0.21" }, { address = "198.18.0.22" }]
health_check = { port = 8081 }

[[target_group]]
name = "echo"
protocol = "tcp"
port = 8080
targets = [{ address = "198.18.0.21" }, { address = "198.18.0.22" }]
health_check = { interval = "1s", timeout = "500ms", healthy_threshold = 2, unhealthy_threshold = 2 }

[[listener]]
name = "iperf"
address = "198.18.1.100"
port = 5201
protocol = "tcp"
default_action = { forward = "iperf" }
"#;

/// `GROUPS_AND_IPERF` and the echo listener.
fn config() -> String {
    [GROUPS_AND_IPERF, ECHO_LISTENER].concat()
}

#[test]
fn a_killed_agent_leaves_the_data_plane_forwarding_and_a_new_one_adopts_it() {
    let (lab, agent) = lab_with_agent("kr", 3, &config());
    for b in ["198.18.0.21:8080", "198.18.0.22:8080"] {
        wait_for_state(
            &agent,
            "echo",
            b,
            TargetState::Healthy,
            Duration::from_secs(4),
        );
    }
    let iperf = start_iperf3(&lab, 10);
    std::thread::sleep(Duration::from_secs(2));

    // SIGKILL: no chance to clean up.
    let first = agent.pid();
    end_agent(&lab, first, libc::SIGKILL);
    let attached = lab::xdp_attachment(&lab.lb().ns, "eth0")
        .expect("ip link")
        .expect("the program stays attached without its agent");
    println!("after SIGKILL: {attached:?}");

    // With no agent at all, new connections are still balanced.
    let served = short_connections(&lab, 30000, 40);
    println!("40 connections with the agent dead: {served:?}");
    assert_eq!(served.len(), 2, "{served:?}");

    // A new agent adopts the pinned data plane: the iperf3 flow is still in its table.
    let agent = start_agent(&lab);
    let log = lab.log(agent.pid()).expect("agent log");
    assert!(log.contains("adopting the data plane"), "{log}");
    // --log-format json: one object per line, with level and message.
    for line in log.lines() {
        let event: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        assert!(
            event["level"].is_string() && event["message"].is_string(),
            "{line}"
        );
    }
    assert!(log.contains("took over the pinned attachment"), "{log}");
    let iperf_listener: SocketAddr = "198.18.1.100:5201".parse().expect("a socket address");
    let flows = agent.flows();
    assert!(
        flows.iter().any(|f| f.listener == iperf_listener),
        "the iperf3 flow is missing from the adopted table: {flows:?}"
    );

    let report = iperf3_report(&lab, iperf);
    let received = report.bytes_received();
    let seconds = report.seconds_received();
    println!("iperf3 across the SIGKILL and the restart: {received} bytes in {seconds:.1} s");
    assert!(
        received > 100_000_000 && seconds > 9.5,
        "{received} bytes in {seconds} s"
    );

    // Live changes work on the adopted data plane.
    agent
        .cli(&["targets", "add", "--group", "echo", "198.18.0.23"])
        .expect("targets add");
    wait_for_state(
        &agent,
        "echo",
        "198.18.0.23:8080",
        TargetState::Healthy,
        Duration::from_secs(4),
    );
    let served = short_connections(&lab, 31000, 90);
    println!("90 connections after adding b3: {served:?}");
    assert!(served.get("b3").copied().unwrap_or(0) >= 15, "{served:?}");
}

#[test]
fn a_second_agent_is_refused_and_detach_removes_everything() {
    let (lab, agent) = lab_with_agent("k2", 2, &config());
    let path = config_path(&lab);
    let binary = agent_binary();
    let binary = binary.to_str().expect("UTF-8");
    let pin_dir = lab.bpffs().expect("bpffs").join("lb-agent");
    let other_socket = lab.log_dir().join("other.sock");
    let second = |socket: &std::path::Path, pin_dir: &std::path::Path| {
        lab.run_with_timeout(
            lab.lb(),
            &[
                binary,
                "run",
                "--config",
                path.to_str().expect("UTF-8"),
                "--socket",
                socket.to_str().expect("UTF-8"),
                "--pin-dir",
                pin_dir.to_str().expect("UTF-8"),
                "--iface",
                "eth0",
            ],
            Duration::from_secs(20),
        )
        .expect_err("a second agent must not start")
    };
    // The same pin directory: its lock is held.
    let err = format!("{:#}", second(&other_socket, &pin_dir));
    assert!(err.contains("another lb-agent is running"), "{err}");
    // Another pin directory on the same interface.
    let err = format!(
        "{:#}",
        second(&other_socket, &pin_dir.with_file_name("other"))
    );
    assert!(err.contains("already has an XDP program attached"), "{err}");
    // The first agent still serves.
    assert_eq!(
        short_connections(&lab, 32000, 20).values().sum::<usize>(),
        20
    );

    // SIGTERM leaves the data plane serving, pinned.
    end_agent(&lab, agent.pid(), libc::SIGTERM);
    let log = lab.log(agent.pid()).expect("log");
    assert!(log.contains("keeps serving"), "{log}");
    assert!(
        lab::xdp_attachment(&lab.lb().ns, "eth0")
            .expect("ip")
            .is_some()
    );
    assert_eq!(
        short_connections(&lab, 32100, 20).values().sum::<usize>(),
        20
    );

    // `detach` with no agent running removes what it left.
    let out = lab
        .run(
            lab.lb(),
            &[
                binary,
                "detach",
                "--socket",
                "/nonexistent.sock",
                "--pin-dir",
                pin_dir.to_str().expect("UTF-8"),
            ],
        )
        .expect("offline detach");
    assert!(out.contains("removed"), "{out}");
    assert!(!pin_dir.exists(), "pins left in {}", pin_dir.display());
    let deadline = Instant::now() + Duration::from_secs(5);
    while lab::xdp_attachment(&lab.lb().ns, "eth0")
        .expect("ip")
        .is_some()
    {
        assert!(Instant::now() < deadline, "still attached after detach");
        std::thread::sleep(Duration::from_millis(50));
    }
}
