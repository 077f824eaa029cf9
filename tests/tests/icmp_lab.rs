//! ICMP errors through the VIP, with real XDP: Path MTU discovery with the client behind a
//! router whose link towards it has a smaller MTU (1280) than the client's own (1500), so the
//! client advertises an MSS the path cannot carry and a backend's full-size segments only get
//! through once the router's "fragmentation needed" / "packet too big" reaches the backend,
//! translated by the load balancer; and a target's "port unreachable" reaching the client.
//! Needs root; one test at a time.

use std::time::{Duration, Instant};

use tests::{
    agent_views::AgentViews as _,
    lab_traffic::{lab_up, start_agent, write_config},
};
use xtask::lab::{Lab, LabSpec, RouterSpec, VIP4, VIP6, python3};

/// The port the backend's bulk server listens on.
const BULK_PORT: u16 = 9000;
/// The bytes each download carries.
const DOWNLOAD: usize = 1 << 20;
/// The MTU of the router's link towards the client.
const PATH_MTU: u32 = 1280;

/// The bulk server, dual-stack: sends `DOWNLOAD` bytes to each connection, then closes it.
const BULK_SERVER: &str = "import socket, threading
size = int(__import__('sys').argv[1])
s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
s.bind(('::', 9000))
s.listen(16)
def serve(c):
    with c:
        c.sendall(b'x' * size)
while True:
    c, _ = s.accept()
    threading.Thread(target=serve, args=(c,), daemon=True).start()
";

/// Downloads from `vip`:80 until EOF, each read bounded by 5 s of silence; prints the bytes
/// received (fewer than sent when the path stalled).
const DOWNLOADER: &str = "import socket, sys
c = socket.create_connection((sys.argv[1], 80), timeout=5)
total = 0
try:
    while True:
        b = c.recv(65536)
        if not b:
            break
        total += len(b)
except socket.timeout:
    pass
print(total)
";

fn config() -> String {
    format!(
        r#"
[[target_group]]
name = "bulk4"
protocol = "tcp"
port = {BULK_PORT}
targets = [{{ address = "198.18.0.21" }}]

[[target_group]]
name = "bulk6"
protocol = "tcp"
port = {BULK_PORT}
targets = [{{ address = "fd00:198:18::21" }}]

[[listener]]
name = "bulk4"
address = "{VIP4}"
port = 80
protocol = "tcp"
default_action = {{ forward = "bulk4" }}

[[listener]]
name = "bulk6"
address = "{VIP6}"
port = 80
protocol = "tcp"
default_action = {{ forward = "bulk6" }}
"#
    )
}

#[test]
fn large_download_through_a_smaller_mtu_completes() {
    let lab = Lab::up(LabSpec {
        name: Lab::unique_name("pmtu"),
        backends: 1,
        router: Some(RouterSpec {
            client_side_mtu: PATH_MTU,
        }),
    })
    .expect("lab up");
    let backend = lab.backends()[0].clone();
    lab.spawn(
        &backend,
        &[python3(), "-c", BULK_SERVER, &DOWNLOAD.to_string()],
    )
    .expect("bulk server");
    lab.wait_tcp_listening(&backend, BULK_PORT, Duration::from_secs(10))
        .expect("bulk server listening");
    write_config(&lab, &config());
    let agent = start_agent(&lab);
    // The load balancer's own addresses are the SNAT addresses (no `snat_addresses`).
    let lb = lab.lb();
    for (vip, snat) in [
        (VIP4.to_string(), lb.v4.to_string()),
        (VIP6.to_string(), lb.v6.to_string()),
    ] {
        let started = Instant::now();
        let received = lab
            .run_with_timeout(
                lab.client(),
                &[python3(), "-c", DOWNLOADER, &vip],
                Duration::from_secs(40),
            )
            .unwrap_or_else(|e| panic!("download through {vip}: {e:#}"));
        let received: usize = received.trim().parse().expect("byte count");
        let took = started.elapsed();
        println!("{DOWNLOAD} bytes through {vip}: {received} received in {took:?}");
        assert_eq!(
            received,
            DOWNLOAD,
            "the download through {vip} stalled; verdicts {:?}",
            agent.stats().verdicts
        );
        // The backend learnt the path's MTU towards the SNAT address from the translated
        // error.
        let route = lab
            .run(&backend, &["ip", "route", "get", &snat])
            .expect("ip route get");
        assert!(
            route.contains(&format!("mtu {PATH_MTU}")),
            "the backend's route to {snat} holds no learnt MTU: {route}"
        );
    }
    let verdicts = agent.stats().verdicts;
    let translated = verdicts.get("fwd_icmp_to_backend").copied().unwrap_or(0);
    assert!(translated >= 2, "{verdicts:?}");
}

/// Sends one datagram from a connected UDP socket to `sys.argv[1]`:53 and prints what came of
/// it: `refused` when an ICMP port unreachable came back, `silence` after 3 s of nothing.
const UDP_PROBE: &str = "import socket, sys
s = socket.socket(socket.AF_INET6 if ':' in sys.argv[1] else socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(3)
s.connect((sys.argv[1], 53))
s.send(b'anyone?')
try:
    s.recv(100)
    print('answered')
except ConnectionRefusedError:
    print('refused')
except socket.timeout:
    print('silence')
";

#[test]
fn udp_to_a_target_port_without_listener_is_refused_at_the_client() {
    let lab = lab_up("unre", 1);
    // Nothing listens on the targets' port 9999: their kernels answer "port unreachable".
    let config = format!(
        r#"
[[target_group]]
name = "void4"
protocol = "udp"
port = 9999
targets = [{{ address = "198.18.0.21" }}]

[[target_group]]
name = "void6"
protocol = "udp"
port = 9999
targets = [{{ address = "fd00:198:18::21" }}]

[[listener]]
name = "void4"
address = "{VIP4}"
port = 53
protocol = "udp"
default_action = {{ forward = "void4" }}

[[listener]]
name = "void6"
address = "{VIP6}"
port = 53
protocol = "udp"
default_action = {{ forward = "void6" }}
"#
    );
    write_config(&lab, &config);
    let agent = start_agent(&lab);
    for vip in [VIP4.to_string(), VIP6.to_string()] {
        let outcome = lab
            .run(lab.client(), &[python3(), "-c", UDP_PROBE, &vip])
            .unwrap_or_else(|e| panic!("udp probe of {vip}: {e:#}"));
        assert_eq!(
            outcome.trim(),
            "refused",
            "udp to {vip}:53; verdicts {:?}",
            agent.stats().verdicts
        );
    }
    let verdicts = agent.stats().verdicts;
    let translated = verdicts.get("fwd_icmp_to_client").copied().unwrap_or(0);
    assert_eq!(translated, 2, "{verdicts:?}");
}
