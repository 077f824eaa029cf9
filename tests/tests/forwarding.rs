//! Forwarding without side effects (real XDP in a namespace lab): the forwarding that
//! `bpf_fib_lookup` needs does not make the node a router for what XDP passes up, keeps IPv6
//! router advertisements accepted, and a reply whose next hop the node has not resolved yet
//! gets it resolved instead of being dropped forever. Needs root; one test at a time.

use std::time::Duration;

use tests::{
    agent_views::AgentViews as _,
    lab_configs::ECHO_ON_B1,
    lab_traffic::{end_agent, lab_up, lab_with_agent, start_agent, write_config},
};
use xtask::lab::{
    Lab, VIP4, VIP6,
    netns::{self, NetNs},
};

/// One echo listener per family, served by b1.
fn echo() -> String {
    format!("{ECHO_ON_B1}{ECHO6_ON_B1}")
}

/// `ECHO_ON_B1`'s IPv6 twin: group and listener `echo6`, on VIP6:80.
const ECHO6_ON_B1: &str = r#"
[[target_group]]
name = "echo6"
protocol = "tcp"
port = 8080
targets = [{ address = "fd00:198:18::21" }]

[[listener]]
name = "echo6"
address = "fd00:198:18:1::100"
port = 80
protocol = "tcp"
default_action = { forward = "echo6" }
"#;

/// The far host: 198.18.5.2 in a namespace of the test's own behind the LB node's `eth1`
/// (198.18.5.1), on no bridge; the client routes 198.18.5.0/24 through the LB node. The LB's
/// `eth1` forwards (as a router's would): whether the client reaches the far host is up to
/// what the LB node does with packets that arrive on `eth0`, the agent's NIC.
fn far_host_routed_via_the_lb(lab: &Lab) -> NetNs {
    let far = NetNs::create(&format!("{}-far", lab.name())).expect("far namespace");
    let lb = &lab.lb().ns;
    let ip = |args: &[&str]| {
        netns::ip(args).unwrap_or_else(|e| panic!("{e:#}"));
    };
    ip(&[
        "-n",
        lb,
        "link",
        "add",
        "eth1",
        "type",
        "veth",
        "peer",
        "name",
        "eth0",
        "netns",
        far.name(),
    ]);
    ip(&["-n", lb, "addr", "add", "198.18.5.1/24", "dev", "eth1"]);
    ip(&[
        "-n",
        far.name(),
        "addr",
        "add",
        "198.18.5.2/24",
        "dev",
        "eth0",
    ]);
    ip(&["-n", lb, "link", "set", "eth1", "up"]);
    ip(&["-n", far.name(), "link", "set", "eth0", "up"]);
    ip(&[
        "-n",
        far.name(),
        "route",
        "add",
        "198.18.0.0/24",
        "via",
        "198.18.5.1",
    ]);
    ip(&[
        "-n",
        &lab.client().ns,
        "route",
        "add",
        "198.18.5.0/24",
        "via",
        &lab.lb().v4.to_string(),
    ]);
    lab.run(
        lab.lb(),
        &["sysctl", "-qw", "net.ipv4.conf.eth1.forwarding=1"],
    )
    .expect("forwarding on eth1");
    far
}

/// Whether the client gets an answer from the far host (3 pings, 1 s each at most).
fn client_reaches_far_host(lab: &Lab) -> bool {
    lab.run_with_timeout(
        lab.client(),
        &[
            "ping",
            "-n",
            "-c",
            "3",
            "-i",
            "0.2",
            "-W",
            "1",
            "198.18.5.2",
        ],
        Duration::from_secs(10),
    )
    .is_ok()
}

/// `nft list table inet lb_agent` in the LB node's namespace, if the table exists.
fn agent_nft_table(lab: &Lab) -> Option<String> {
    lab.run(lab.lb(), &["nft", "list", "table", "inet", "lb_agent"])
        .ok()
}

fn sysctl(lab: &Lab, name: &str) -> String {
    lab.run(lab.lb(), &["sysctl", "-n", name])
        .unwrap_or_else(|e| panic!("{name}: {e:#}"))
        .trim()
        .to_owned()
}

#[test]
fn packets_for_other_hosts_are_not_routed_by_the_node_unless_kernel_forwarding_is_on() {
    let (lab, agent) = lab_with_agent("fwd", 1, &echo());
    let _far = far_host_routed_via_the_lb(&lab);
    // The agent turned forwarding on for bpf_fib_lookup...
    assert_eq!(sysctl(&lab, "net.ipv4.conf.eth0.forwarding"), "1");
    // ...and the kernel still does not route what XDP passes up from eth0.
    assert!(
        !client_reaches_far_host(&lab),
        "the node routed a packet for another host; its nft table: {:?}",
        agent_nft_table(&lab)
    );
    let table = agent_nft_table(&lab).expect("the agent's nft table");
    assert!(table.contains("\"eth0\""), "{table}");

    // Stopped, the agent leaves the data plane serving, forwarding on: the block stays.
    end_agent(&lab, agent.pid(), libc::SIGTERM);
    assert!(
        !client_reaches_far_host(&lab),
        "routed after the agent stopped"
    );
    // A restart adopts the data plane and installs the same block again, once.
    let agent = start_agent(&lab);
    assert!(!client_reaches_far_host(&lab), "routed after a restart");
    let table = agent_nft_table(&lab).expect("the agent's nft table");
    assert_eq!(table.matches("drop").count(), 1, "{table}");

    // A detach takes the block away with the data plane.
    agent.cli(&["detach"]).expect("detach");
    lab.wait_ended(agent.pid(), Duration::from_secs(10))
        .expect("the agent ends after a detach");
    assert_eq!(agent_nft_table(&lab), None);

    // Asked for, the node routes them.
    write_config(
        &lab,
        &format!("[agent]\nkernel_forwarding = true\n{}", echo()),
    );
    let _agent = start_agent(&lab);
    assert!(
        client_reaches_far_host(&lab),
        "kernel_forwarding = true, yet the node did not route; its nft table: {:?}",
        agent_nft_table(&lab)
    );
    assert_eq!(agent_nft_table(&lab), None);
}

#[test]
fn router_advertisements_stay_accepted_on_the_agents_nic() {
    let lab = lab_up("ra", 1);
    // A host's default: RAs accepted unless the interface forwards.
    assert_eq!(sysctl(&lab, "net.ipv6.conf.eth0.accept_ra"), "1");
    write_config(&lab, &echo());
    let _agent = start_agent(&lab);
    assert_eq!(sysctl(&lab, "net.ipv6.conf.eth0.forwarding"), "1");
    // 2: accepted even while forwarding (1 would now mean ignored, and the RA-learned
    // default route gone).
    assert_eq!(sysctl(&lab, "net.ipv6.conf.eth0.accept_ra"), "2");
}

/// The client's neighbour entry for the LB node's address, fixed, so that the client never
/// sends the LB node an ARP request or neighbour solicitation (from which its kernel would
/// learn the client's address); then the LB node's entries for the client, removed.
fn lb_forgets_the_client(lab: &Lab) {
    let links: serde_json::Value = serde_json::from_str(
        &netns::ip(&["-n", &lab.lb().ns, "-j", "link", "show", "eth0"]).expect("ip link"),
    )
    .expect("JSON");
    let mac = links[0]["address"].as_str().expect("eth0's MAC").to_owned();
    for lb_address in [lab.lb().v4.to_string(), lab.lb().v6.to_string()] {
        netns::ip(&[
            "-n",
            &lab.client().ns,
            "neigh",
            "replace",
            &lb_address,
            "lladdr",
            &mac,
            "dev",
            "eth0",
            "nud",
            "permanent",
        ])
        .expect("client's fixed entry for the LB");
    }
    for client_address in [lab.client().v4.to_string(), lab.client().v6.to_string()] {
        netns::ip(&["-n", &lab.lb().ns, "neigh", "flush", "to", &client_address])
            .expect("flush the client's entry");
        assert_eq!(lb_neighbour(lab, &client_address), None);
    }
}

/// The LB node's resolved neighbour entry (`lladdr` known) for `address`, as `ip neigh` shows it.
fn lb_neighbour(lab: &Lab, address: &str) -> Option<String> {
    let shown = netns::ip(&["-n", &lab.lb().ns, "neigh", "show", "to", address]).expect("ip neigh");
    shown
        .lines()
        .find(|l| l.contains("lladdr"))
        .map(str::to_owned)
}

/// Connects from the client to `vip`:80 (6 s at most) and reads the greeting; how long that
/// took, or `None` if it did not complete.
fn connect_seconds(lab: &Lab, vip: &str) -> Option<f64> {
    let script = format!(
        "import socket, time\n\
         t = time.time()\n\
         s = socket.create_connection(('{vip}', 80), timeout=6)\n\
         assert s.makefile('r').readline().strip() == 'b1'\n\
         print(time.time() - t)\n"
    );
    let out = lab
        .run_with_timeout(
            lab.client(),
            &["python3", "-c", &script],
            Duration::from_secs(15),
        )
        .ok()?;
    out.trim().parse().ok()
}

#[test]
fn a_reply_to_a_client_the_node_has_no_neighbour_entry_for_gets_it_resolved() {
    let (lab, agent) = lab_with_agent("nn", 1, &echo());
    for (vip, client) in [
        (VIP4.to_string(), lab.client().v4.to_string()),
        (VIP6.to_string(), lab.client().v6.to_string()),
    ] {
        lb_forgets_the_client(&lab);
        let no_neigh_before = agent.stats().verdicts.get("drop_no_neigh").copied();
        // The target's SYN-ACK meets no neighbour entry for the client: dropped, noted; the
        // agent resolves the client, and the target's retransmission (after 1 s) goes through.
        let took = connect_seconds(&lab, &vip);
        let verdicts = agent.stats().verdicts;
        let no_neigh = verdicts.get("drop_no_neigh").copied();
        assert!(
            took.is_some_and(|s| s < 3.0),
            "connection to {vip} took {took:?} s; verdicts {verdicts:?}"
        );
        assert!(
            no_neigh > no_neigh_before,
            "no reply to {client} met a missing neighbour (the test's premise): {verdicts:?}"
        );
        let entry = lb_neighbour(&lab, &client);
        assert!(entry.is_some(), "no neighbour entry for {client}");
        println!("{vip}: connected in {took:?} s; {client}: {entry:?}");
    }
}
