//! Real traffic through real XDP: a namespace lab (client, load balancer, backends on a
//! bridge), the `lb-agent` binary, iperf3 and TCP clients. Needs root; one test at a time.

use std::time::Duration;

use lb_agent::health::TargetState;
use tests::{
    agent_views::AgentViews as _,
    lab_configs::ECHO_ON_B1,
    lab_traffic::{
        EchoFlow, Iperf3Report, agent_binary, config_path, lab_up, lab_with_agent,
        short_connections, short_connections_to, wait_for_state, write_config,
    },
};
use xtask::{
    agent::LabAgent,
    lab::{
        self, Lab, VIP4, VIP6,
        netns::{self, NetNs},
    },
};

/// The lab tests' config, with the `echo` group's targets b1..b`echo_backends`.
fn config(echo_backends: u8) -> String {
    let echo_targets: Vec<String> = (1..=echo_backends)
        .map(|i| format!("{{ address = \"198.18.0.{}\" }}", 20 + i))
        .collect();
    let echo_targets = echo_targets.join(", ");
    format!(
        r#"
[agent]
interface = "eth0"

[[target_group]]
name = "iperf"
protocol = "tcp_udp"
port = 5201
# iperf3's control and data connections must meet one server.
stickiness = {{ type = "source_ip" }}
# Checked on the health endpoint: a connect to an iperf3 server that is busy disturbs its test.
health_check = {{ port = 8081 }}
targets = [{{ address = "198.18.0.21" }}, {{ address = "198.18.0.22" }}, {{ address = "198.18.0.23" }}]

[[target_group]]
name = "echo"
protocol = "tcp"
port = 8080
targets = [{echo_targets}]
health_check = {{ interval = "1s", timeout = "500ms", healthy_threshold = 2, unhealthy_threshold = 2 }}

[[listener]]
name = "iperf"
address = "198.18.1.100"
port = 5201
protocol = "tcp_udp"
default_action = {{ forward = "iperf" }}

[[listener]]
name = "echo"
address = "198.18.1.100"
port = 80
protocol = "tcp"
default_action = {{ forward = "echo" }}
"#
    )
}

fn iperf3(lab: &Lab, extra: &[&str]) -> Iperf3Report {
    let mut args = vec!["iperf3", "-c", "198.18.1.100", "-p", "5201", "-J"];
    args.extend(extra);
    let out = lab
        .run(lab.client(), &args)
        .expect("iperf3 through the VIP");
    Iperf3Report::parse(&out)
}

#[test]
fn iperf3_tcp_and_udp_through_the_vip_reach_the_backends() {
    let (lab, agent) = lab_with_agent("tu", 3, &config(3));
    let tcp = iperf3(&lab, &["-t", "3"]);
    let sent = tcp.end.sum_sent.as_ref().expect("bytes sent").bytes;
    let received = tcp.end.sum_received.as_ref().expect("bytes received").bytes;
    // iperf3 stops its clock with bytes still in flight: the server's count trails a little.
    assert!(
        received > 1_000_000 && received as f64 >= sent as f64 * 0.98,
        "tcp: sent {sent}, received {received}"
    );
    let udp = iperf3(&lab, &["-u", "-b", "50M", "-t", "2"]);
    let sum = udp.end.sum.as_ref().expect("udp totals");
    let packets = sum.packets.expect("udp packets");
    let lost = sum.lost_percent.expect("udp loss");
    assert!(
        packets > 1000 && lost < 5.0,
        "udp: {packets} packets, {lost}% lost"
    );
    // The agent saw it all go through one backend of the sticky group.
    let iperf_bytes: Vec<u64> = agent
        .targets()
        .iter()
        .filter(|t| t.group == "iperf")
        .map(|t| t.counters.bytes)
        .collect();
    assert_eq!(
        iperf_bytes.iter().filter(|b| **b > 0).count(),
        1,
        "sticky group used several backends: {iperf_bytes:?}"
    );
    assert!(
        iperf_bytes.iter().sum::<u64>() >= received,
        "{iperf_bytes:?} < {received}"
    );
}

#[test]
fn short_connections_spread_evenly_over_three_backends() {
    let (lab, _agent) = lab_with_agent("sp", 3, &config(3));
    let served = short_connections(&lab, 20000, 300);
    println!("300 connections: {served:?}");
    assert_eq!(served.len(), 3, "{served:?}");
    for (backend, n) in &served {
        assert!(
            (75..=125).contains(n),
            "{backend} served {n} of 300: {served:?}"
        );
    }
}

#[test]
fn ipv6_connections_through_the_ipv6_vip_spread_over_three_backends() {
    let config = r#"
[[target_group]]
name = "echo6"
protocol = "tcp"
port = 8080
targets = [{ address = "fd00:198:18::21" }, { address = "fd00:198:18::22" }, { address = "fd00:198:18::23" }]

[[listener]]
name = "echo6"
address = "fd00:198:18:1::100"
port = 80
protocol = "tcp"
default_action = { forward = "echo6" }
"#;
    // No snat_addresses: the node's own IPv6 address on eth0 is the default.
    let (lab, agent) = lab_with_agent("v6", 3, config);
    let served = short_connections_to(&lab, &VIP6.to_string(), 80, 24000, 150);
    assert_eq!(served.len(), 3, "{served:?}");
    for (backend, n) in &served {
        assert!(
            (25..=75).contains(n),
            "{backend} served {n} of 150: {served:?}"
        );
    }
    let stats = agent.stats();
    let listener = stats
        .listeners
        .first()
        .unwrap_or_else(|| panic!("no listener: {stats:?}"));
    assert_eq!(listener.counters.new_flows, 150, "{:?}", stats.listeners);
}

#[test]
fn removing_a_target_keeps_established_flows_and_stops_its_new_flows() {
    let (lab, agent) = lab_with_agent("rm", 3, &config(3));
    // A long-lived connection: greet, then echo 4 KiB chunks for 6 s, comparing every byte.
    let flow = EchoFlow::start(&lab, 6);
    let serving = flow.serving.clone();
    let index: usize = serving
        .trim_start_matches('b')
        .parse()
        .expect("backend name like b2");
    // Remove another backend of the same group while the flow runs.
    let victim = lab.backends()[index % 3].clone();
    let victim_name = format!("b{}", index % 3 + 1);
    assert_ne!(victim_name, serving);
    agent
        .cli(&[
            "targets",
            "remove",
            "--group",
            "echo",
            &format!("{}:8080", victim.v4),
        ])
        .expect("remove target");
    let served = short_connections(&lab, 21000, 100);
    assert!(
        !served.contains_key(&victim_name),
        "{victim_name} got new flows after removal: {served:?}"
    );
    // The client bounds itself: 6 s of echoing, 5 s socket timeouts.
    let bytes = flow.finish();
    assert!(bytes > 100_000, "only {bytes} bytes echoed");
}

#[test]
fn adding_a_target_live_brings_it_new_flows() {
    let two_targets = config(2);
    let (lab, agent) = lab_with_agent("ad", 3, &two_targets);
    let before = short_connections(&lab, 22000, 60);
    assert!(!before.contains_key("b3"), "{before:?}");
    agent
        .cli(&["targets", "add", "--group", "echo", "198.18.0.23"])
        .expect("add target");
    // A target added live gets new flows once it passes `healthy_threshold` (2) checks.
    let took = wait_for_state(
        &agent,
        "echo",
        "198.18.0.23:8080",
        TargetState::Healthy,
        Duration::from_secs(6),
    );
    println!("b3 healthy {took:?} after being added");
    let after = short_connections(&lab, 23000, 90);
    let b3 = after.get("b3").copied().unwrap_or(0);
    assert!(
        b3 >= 15,
        "b3 got {b3} of 90 new flows after being added: {after:?}"
    );
}

#[test]
fn a_target_behind_a_second_nic_is_reached_by_xdp_redirect_both_ways() {
    // Two-arm: the target 198.18.4.2 sits on the LB node's eth1, on no bridge; the client on
    // eth0. Every packet crosses NICs: client -> eth0 -(redirect)-> eth1 -> target and back.
    let lab = lab_up("ta", 1);
    // A namespace of the test's own (deleted on drop), on the LB node's second NIC.
    let far = NetNs::create(&format!("{}-far", lab.name())).expect("far namespace");
    let far_ns = far.name().to_owned();
    let lb = &lab.lb().ns;
    let ip = |args: &[&str]| {
        netns::ip(args).unwrap_or_else(|e| panic!("{e:#}"));
    };
    ip(&[
        "-n", lb, "link", "add", "eth1", "type", "veth", "peer", "name", "eth0", "netns", &far_ns,
    ]);
    ip(&["-n", lb, "addr", "add", "198.18.4.1/24", "dev", "eth1"]);
    ip(&["-n", &far_ns, "addr", "add", "198.18.4.2/24", "dev", "eth0"]);
    ip(&["-n", lb, "link", "set", "eth1", "up"]);
    ip(&["-n", &far_ns, "link", "set", "eth0", "up"]);
    let offloads_off = [
        "ethtool", "-K", "DEV", "rx", "off", "tx", "off", "tso", "off", "gso", "off", "gro", "off",
    ];
    for (ns, dev) in [(lb.as_str(), "eth1"), (far_ns.as_str(), "eth0")] {
        let mut args = vec!["netns", "exec", ns];
        args.extend(
            offloads_off
                .iter()
                .map(|a| if *a == "DEV" { dev } else { a }),
        );
        ip(&args);
    }
    // A veth delivers redirected frames only if its peer runs XDP (as for XDP_TX).
    lab.attach_pass_program(&far_ns, "eth0")
        .expect("attach pass");
    let far_host = lab::Host {
        ns: far_ns.clone(),
        role: "far".into(),
        v4: "198.18.4.2".parse().expect("ip"),
        v6: "fd00:198:18:4::2".parse().expect("ip"),
    };
    lab.spawn(&far_host, &["iperf3", "-s", "-p", "5201"])
        .expect("iperf3 server");
    lab.wait_tcp_listening(&far_host, 5201, std::time::Duration::from_secs(10))
        .expect("listening");
    // The far target answers the LB's eth1 address: it needs no route of its own.
    let config = r#"
[agent]
snat_addresses = ["198.18.4.1"]

[[target_group]]
name = "far"
protocol = "tcp"
port = 5201
stickiness = { type = "source_ip" }
targets = [{ address = "198.18.4.2" }]

[[listener]]
name = "far"
address = "198.18.1.100"
port = 5201
protocol = "tcp"
default_action = { forward = "far" }
"#;
    write_config(&lab, config);
    let agent = LabAgent::start_on(&lab, &agent_binary(), &config_path(&lab), &["eth0", "eth1"])
        .expect("agent on two NICs");
    let tcp = iperf3(&lab, &["-t", "2"]);
    let received = tcp.end.sum_received.as_ref().expect("bytes received").bytes;
    assert!(
        received > 1_000_000,
        "only {received} bytes reached the far target"
    );
    let verdicts = agent.stats().verdicts;
    let to_backend = verdicts.get("fwd_to_backend").copied().unwrap_or(0);
    let to_client = verdicts.get("fwd_to_client").copied().unwrap_or(0);
    assert!(to_backend > 1000 && to_client > 100, "{verdicts:?}");
}

#[test]
fn closed_connections_give_their_snat_ports_to_new_ones() {
    // 50 SNAT ports towards the one target: without reuse, connection 51 would find none.
    let config = format!(
        r#"
[agent]
snat_port_range = [20000, 20049]
closed_timeout = "1s"
{ECHO_ON_B1}"#
    );
    let (lab, agent) = lab_with_agent("pr", 1, &config);
    // 120 connections, 12 a second: each is closed (FIN), and its port free again 1 s later,
    // so about 13 of the 50 are taken at any time and a new flow's 8 tries find a free one.
    let script = format!(
        "import socket, time\n\
         ok = 0\n\
         for i in range(120):\n\
         \x20   s = socket.create_connection(('{VIP4}', 80), timeout=5)\n\
         \x20   if s.makefile('r').readline().strip() == 'b1': ok += 1\n\
         \x20   s.close()\n\
         \x20   time.sleep(0.08)\n\
         print(ok)\n"
    );
    let ok = lab
        .run(lab.client(), &["python3", "-c", &script])
        .expect("120 connections through 50 ports");
    assert_eq!(ok.trim(), "120");
    let stats = agent.stats();
    assert_eq!(
        stats.verdicts.get("drop_no_snat").copied().unwrap_or(0),
        0,
        "{:?}",
        stats.verdicts
    );
    println!(
        "120 connections through 50 SNAT ports: {} entries, {} active",
        stats.flows, stats.active_flows
    );
    // Every entry left is of a closed connection: over, or closing for under a second.
    let listed = agent.cli(&["flows", "--limit", "10"]).expect("flows");
    let rows: Vec<&str> = listed.lines().filter(|l| l.starts_with("tcp")).collect();
    assert!(!rows.is_empty() && rows.len() <= 10, "{listed}");
    assert!(
        rows.iter()
            .all(|r| r.ends_with(" over") || r.ends_with(" closing")),
        "{listed}"
    );
}
