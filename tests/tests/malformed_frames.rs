//! Malformed frames sent at a VIP on the wire, as a new user's fuzzer would: raw AF_PACKET
//! sends from the lab client to the load balancer's MAC, counted where they would land, on the
//! targets. Needs root; one test at a time.

use std::time::Duration;

use tests::{agent_views::AgentViews as _, lab_traffic::lab_with_agent};
use xtask::lab::{
    VIP4, VIP6, python3,
    scripts::{MALFORMED_FRAMES, PORT_COUNTER},
};

/// The listeners' port on both VIPs, and the targets' port: nothing else in the lab uses it,
/// so whatever arrives there on a target came through the load balancer.
const LISTENER_PORT: u16 = 7000;
const TARGET_PORT: u16 = 7777;
/// Well-formed datagrams sent after the malformed ones: they must arrive, which shows the
/// counting sees what the load balancer forwards.
const CONTROL: usize = 20;
/// How long the targets count: the sends take a few seconds; the rest is margin.
const COUNT_SECONDS: u64 = 25;

fn config() -> String {
    let targets = |prefix: &str| {
        (21..=23)
            .map(|i| format!("{{ address = \"{prefix}{i}\" }}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    format!(
        r#"
[agent]
interface = "eth0"

[[target_group]]
name = "fuzz"
protocol = "tcp_udp"
port = {TARGET_PORT}
health_check = {{ port = 8081 }}
targets = [{v4}]

[[target_group]]
name = "fuzz6"
protocol = "tcp_udp"
port = {TARGET_PORT}
health_check = {{ port = 8081 }}
targets = [{v6}]

[[listener]]
name = "fuzz"
address = "{VIP4}"
port = {LISTENER_PORT}
protocol = "tcp_udp"
default_action = {{ forward = "fuzz" }}

[[listener]]
name = "fuzz6"
address = "{VIP6}"
port = {LISTENER_PORT}
protocol = "tcp_udp"
default_action = {{ forward = "fuzz6" }}
"#,
        v4 = targets("198.18.0."),
        v6 = targets("fd00:198:18::"),
    )
}

/// "control N other M" from `port_counter.py`.
fn parse_count(out: &str) -> (u64, u64) {
    let words: Vec<&str> = out.split_whitespace().collect();
    match words[..] {
        [.., "control", c, "other", o] => (
            c.parse().expect("control count"),
            o.parse().expect("other count"),
        ),
        _ => panic!("port counter said {out:?}"),
    }
}

#[test]
fn malformed_frames_at_a_vip_never_reach_a_target_nor_create_a_flow() {
    let (lab, agent) = lab_with_agent("mal", 3, &config());
    let lb_mac = lab
        .run(lab.lb(), &["cat", "/sys/class/net/eth0/address"])
        .expect("the load balancer's MAC");
    let lb_mac = lb_mac.trim();
    let before = agent.stats().verdicts;
    let (sent, counts) = std::thread::scope(|s| {
        let counters: Vec<_> = lab
            .backends()
            .iter()
            .map(|backend| {
                let lab = &lab;
                s.spawn(move || {
                    let out = lab
                        .run(
                            backend,
                            &[
                                python3(),
                                "-c",
                                PORT_COUNTER,
                                &TARGET_PORT.to_string(),
                                &COUNT_SECONDS.to_string(),
                            ],
                        )
                        .expect("port counter");
                    (backend.role.clone(), parse_count(&out))
                })
            })
            .collect();
        // The counters start listening within a second; on a loaded machine give them more.
        std::thread::sleep(Duration::from_secs(4));
        let sent = lab
            .run(
                lab.client(),
                &[
                    python3(),
                    "-c",
                    MALFORMED_FRAMES,
                    lb_mac,
                    &lab.client().v4.to_string(),
                    &VIP4.to_string(),
                    &lab.client().v6.to_string(),
                    &VIP6.to_string(),
                    &LISTENER_PORT.to_string(),
                    &CONTROL.to_string(),
                ],
            )
            .expect("malformed frames");
        let counts: Vec<(String, (u64, u64))> = counters
            .into_iter()
            .map(|c| c.join().expect("counter thread"))
            .collect();
        (sent, counts)
    });
    println!("sent:\n{sent}\narrived on the targets (control, other): {counts:?}");
    let total: u64 = sent
        .lines()
        .find_map(|l| l.strip_prefix("total "))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no total in {sent:?}"));
    assert_eq!(total, 6000, "{sent}");
    let control: u64 = counts.iter().map(|(_, (c, _))| c).sum();
    let reached: u64 = counts.iter().map(|(_, (_, o))| o).sum();
    assert!(
        control >= CONTROL as u64 * 3 / 4,
        "only {control} of {CONTROL} control datagrams arrived: the counting is blind"
    );
    assert_eq!(reached, 0, "malformed frames reached targets: {counts:?}");
    let after = agent.stats().verdicts;
    let delta =
        |name: &str| after.get(name).copied().unwrap_or(0) - before.get(name).copied().unwrap_or(0);
    // A veth (like a NIC with VLAN offload) hands the outer tag of a double-tagged frame to
    // the kernel's metadata, where XDP does not see it: the program sees one tag and passes
    // the frame to the kernel (pass_vlan), which has no VLAN device for it and drops it.
    let (dropped, vlan) = (delta("drop_malformed"), delta("pass_vlan"));
    println!(
        "drop_malformed +{dropped}, pass_vlan +{vlan}, fwd_to_backend +{}",
        delta("fwd_to_backend")
    );
    assert!(
        dropped + vlan >= total * 98 / 100,
        "{dropped} of {total} counted drop_malformed, {vlan} pass_vlan"
    );
    // The control datagrams' flow is the only one.
    let flows: Vec<_> = agent
        .flows()
        .into_iter()
        .filter(|f| f.listener.port() == LISTENER_PORT)
        .collect();
    assert_eq!(flows.len(), 1, "{flows:#?}");
    assert_eq!(flows[0].client.port(), 45999, "{flows:#?}");
}
