//! The lab's shape: which hosts it has, their names and addresses, and the namespaces, veths,
//! bridge, addresses and routes that wire them up. Built from 198.18.0.0/15 and
//! fd00:198:18::/48 only.

use std::net::{Ipv4Addr, Ipv6Addr};

use super::netns::NetNs;

/// The IPv4 VIP the lab's client reaches through the load balancer (nothing configures it on a
/// host; the client routes 198.18.1.0/24 to the LB node).
pub const VIP4: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 100);
/// The IPv6 VIP (the client routes fd00:198:18:1::/64 to the LB node).
pub const VIP6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x198, 0x18, 1, 0, 0, 0, 0x100);

/// The most backends a lab has: their addresses end in .21 ..= .120.
pub const MAX_BACKENDS: usize = 100;

/// The bridge in the switch namespace.
const BRIDGE: &str = "br0";

/// One host of the lab: a namespace with one interface, `eth0`, on the bridge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Host {
    /// Its network namespace, `{lab}-{role}`.
    pub ns: String,
    /// Short name: `cl`, `lb`, `b1`, ...; also the name of its bridge port in the switch
    /// namespace, and what a backend's servers answer with.
    pub role: String,
    /// The IPv4 address of its `eth0`.
    pub v4: Ipv4Addr,
    /// The IPv6 address of its `eth0`.
    pub v6: Ipv6Addr,
}

/// Lab names become namespace names and file names; nothing else may get in.
pub(super) fn validate_name(name: &str) -> anyhow::Result<()> {
    anyhow::ensure!(
        (1..=32).contains(&name.len())
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'),
        "lab name `{name}` must be 1-32 of [A-Za-z0-9-]"
    );
    Ok(())
}

/// The client, the LB node and the backends of lab `name`, with their addresses.
pub(super) fn plan_hosts(name: &str, backends: usize) -> (Host, Host, Vec<Host>) {
    let host = |role: String, last: u8| Host {
        ns: format!("{name}-{role}"),
        role,
        v4: Ipv4Addr::new(198, 18, 0, last),
        v6: Ipv6Addr::new(0xfd00, 0x198, 0x18, 0, 0, 0, 0, decimal_as_hex(last)),
    };
    let backends = (1..=backends.min(MAX_BACKENDS))
        .map(|i| host(format!("b{i}"), 20 + i as u8))
        .collect();
    (host("cl".into(), 10), host("lb".into(), 1), backends)
}

/// The router of lab `name` (on the bridge at .2), and `client` moved behind it onto a
/// network of its own: 198.18.10.0/24 and fd00:198:18:10::/64.
pub(super) fn plan_router(name: &str, client: &mut Host) -> Host {
    client.v4 = Ipv4Addr::new(198, 18, 10, 10);
    client.v6 = Ipv6Addr::new(0xfd00, 0x198, 0x18, 0x10, 0, 0, 0, 0x10);
    Host {
        ns: format!("{name}-rt"),
        role: "rt".into(),
        v4: Ipv4Addr::new(198, 18, 0, 2),
        v6: Ipv6Addr::new(0xfd00, 0x198, 0x18, 0, 0, 0, 0, 2),
    }
}

/// The router's address on the client's network.
const ROUTER_CLIENT_SIDE_V4: &str = "198.18.10.1";
const ROUTER_CLIENT_SIDE_V6: &str = "fd00:198:18:10::1";

/// 21 → 0x21: an IPv6 address ending in `::21` reads like the IPv4 one ending in `.21`.
fn decimal_as_hex(n: u8) -> u16 {
    let n = u16::from(n);
    ((n / 100) << 8) | ((n / 10 % 10) << 4) | (n % 10)
}

/// Whether namespace `ns` belongs to lab `name`: `{name}-` and a role, exactly, so that lab
/// `a` never claims lab `a-b`'s namespaces (or a test bed's `{name}-7`).
pub(super) fn is_lab_namespace(name: &str, ns: &str) -> bool {
    let Some(role) = ns.strip_prefix(name).and_then(|r| r.strip_prefix('-')) else {
        return false;
    };
    match role {
        "sw" | "cl" | "lb" | "rt" => true,
        _ => role
            .strip_prefix('b')
            .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit())),
    }
}

/// The bridge every host's veth peer joins, in the switch namespace `sw`.
pub(super) fn add_bridge(sw: &NetNs) -> anyhow::Result<()> {
    sw.ip(&["link", "add", BRIDGE, "type", "bridge"])?;
    sw.ip(&["link", "set", BRIDGE, "up"])?;
    // br_netfilter is built into this kernel and on by default: it would validate bridged
    // IP (malformed test frames would never reach the XDP program) and run it through
    // iptables.
    sw.exec(&[
        "sysctl",
        "-qw",
        "net.bridge.bridge-nf-call-iptables=0",
        "net.bridge.bridge-nf-call-ip6tables=0",
        "net.bridge.bridge-nf-call-arptables=0",
    ])?;
    Ok(())
}

/// Gives `host`, in its namespace `ns`, an `eth0` on the bridge in `sw`, addressed and
/// stripped of offloads; its peer there is named after its role.
pub(super) fn add_host(ns: &NetNs, sw: &NetNs, host: &Host) -> anyhow::Result<()> {
    let port = host.role.as_str();
    // Before eth0 exists, so it inherits `default`: addresses usable at once, also the
    // link-local one neighbour discovery uses.
    ns.exec(&[
        "sysctl",
        "-qw",
        "net.ipv6.conf.all.accept_dad=0",
        "net.ipv6.conf.default.accept_dad=0",
    ])?;
    ns.ip(&[
        "link",
        "add",
        "eth0",
        "type",
        "veth",
        "peer",
        "name",
        port,
        "netns",
        sw.name(),
    ])?;
    sw.ip(&["link", "set", port, "master", BRIDGE, "up"])?;
    ns.ip(&["addr", "add", &format!("{}/24", host.v4), "dev", "eth0"])?;
    ns.ip(&[
        "addr",
        "add",
        &format!("{}/64", host.v6),
        "dev",
        "eth0",
        "nodad",
    ])?;
    ns.ip(&["link", "set", "eth0", "up"])?;
    // An XDP program must see whole frames with real checksums: no checksum offload (a
    // veth would otherwise pass CHECKSUM_PARTIAL frames), no TSO/GSO super-frames, no GRO.
    for (ns, dev) in [(ns, "eth0"), (sw, port)] {
        ns.exec(&[
            "ethtool", "-K", dev, "rx", "off", "tx", "off", "tso", "off", "gso", "off", "gro",
            "off",
        ])?;
    }
    Ok(())
}

/// Routes the VIP prefixes of both families from the client (namespace `client`) via `lb`.
pub(super) fn route_vips_via(client: &NetNs, lb: &Host) -> anyhow::Result<()> {
    client.ip(&["route", "add", "198.18.1.0/24", "via", &lb.v4.to_string()])?;
    client.ip(&[
        "-6",
        "route",
        "add",
        "fd00:198:18:1::/64",
        "via",
        &lb.v6.to_string(),
    ])?;
    Ok(())
}

/// Links `client` (namespace `client_ns`, its `eth0`) to the router (namespace `router_ns`,
/// its `eth1`, MTU `mtu`; the client keeps 1500), makes the router forward, and routes the lab's
/// ranges from the client through it.
pub(super) fn add_client_behind(
    client_ns: &NetNs,
    client: &Host,
    router_ns: &NetNs,
    mtu: u32,
) -> anyhow::Result<()> {
    // As in `add_host`: addresses usable at once.
    client_ns.exec(&[
        "sysctl",
        "-qw",
        "net.ipv6.conf.all.accept_dad=0",
        "net.ipv6.conf.default.accept_dad=0",
    ])?;
    router_ns.ip(&[
        "link",
        "add",
        "eth1",
        "type",
        "veth",
        "peer",
        "name",
        "eth0",
        "netns",
        client_ns.name(),
    ])?;
    router_ns.ip(&["link", "set", "eth1", "mtu", &mtu.to_string()])?;
    router_ns.ip(&[
        "addr",
        "add",
        &format!("{ROUTER_CLIENT_SIDE_V4}/24"),
        "dev",
        "eth1",
    ])?;
    router_ns.ip(&[
        "addr",
        "add",
        &format!("{ROUTER_CLIENT_SIDE_V6}/64"),
        "dev",
        "eth1",
        "nodad",
    ])?;
    client_ns.ip(&["addr", "add", &format!("{}/24", client.v4), "dev", "eth0"])?;
    client_ns.ip(&[
        "addr",
        "add",
        &format!("{}/64", client.v6),
        "dev",
        "eth0",
        "nodad",
    ])?;
    router_ns.ip(&["link", "set", "eth1", "up"])?;
    client_ns.ip(&["link", "set", "eth0", "up"])?;
    // Whole frames with real checksums, as in `add_host`: the router forwards what the
    // client sends to the XDP program unchanged.
    for (ns, dev) in [(client_ns, "eth0"), (router_ns, "eth1")] {
        ns.exec(&[
            "ethtool", "-K", dev, "rx", "off", "tx", "off", "tso", "off", "gso", "off", "gro",
            "off",
        ])?;
    }
    router_ns.exec(&[
        "sysctl",
        "-qw",
        "net.ipv4.ip_forward=1",
        "net.ipv6.conf.all.forwarding=1",
    ])?;
    client_ns.ip(&[
        "route",
        "add",
        "198.18.0.0/15",
        "via",
        ROUTER_CLIENT_SIDE_V4,
    ])?;
    client_ns.ip(&[
        "-6",
        "route",
        "add",
        "fd00:198:18::/48",
        "via",
        ROUTER_CLIENT_SIDE_V6,
    ])?;
    Ok(())
}

/// Routes the client's network from the LB node (namespace `lb`) via `router`: the XDP
/// program's FIB lookups for replies to the client find the router as next hop.
pub(super) fn route_client_via(lb: &NetNs, client: &Host, router: &Host) -> anyhow::Result<()> {
    let v4_net = format!("{}/24", Ipv4Addr::from(u32::from(client.v4) & !0xff));
    lb.ip(&["route", "add", &v4_net, "via", &router.v4.to_string()])?;
    let s = client.v6.segments();
    let v6_net = format!("{}/64", Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0));
    lb.ip(&["-6", "route", "add", &v6_net, "via", &router.v6.to_string()])?;
    // The XDP program's FIB lookup needs the router's MAC in the neighbour table, and nothing
    // else puts it there: the router solicits the LB's IPv6 address from its link-local one.
    for addr in [router.v4.to_string(), router.v6.to_string()] {
        lb.exec(&["ping", "-c1", "-W2", &addr])?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backends_are_numbered_from_21_in_both_families() {
        let (client, lb, backends) = plan_hosts("x", 10);
        assert_eq!(client.v6, "fd00:198:18::10".parse::<Ipv6Addr>().unwrap());
        assert_eq!(lb.v4, Ipv4Addr::new(198, 18, 0, 1));
        assert_eq!(backends[0].ns, "x-b1");
        assert_eq!(backends[0].v4, Ipv4Addr::new(198, 18, 0, 21));
        assert_eq!(
            backends[0].v6,
            "fd00:198:18::21".parse::<Ipv6Addr>().unwrap()
        );
        assert_eq!(backends[9].v4, Ipv4Addr::new(198, 18, 0, 30));
        assert_eq!(
            backends[9].v6,
            "fd00:198:18::30".parse::<Ipv6Addr>().unwrap()
        );
        let (_, _, most) = plan_hosts("x", MAX_BACKENDS);
        assert_eq!(most[MAX_BACKENDS - 1].v6.segments()[7], 0x120);
    }

    #[test]
    fn a_lab_claims_only_its_own_namespaces() {
        assert!(is_lab_namespace("lt1s0", "lt1s0-sw"));
        assert!(is_lab_namespace("lt1s0", "lt1s0-b12"));
        assert!(is_lab_namespace("lt1s0", "lt1s0-rt"));
        assert!(!is_lab_namespace("lt1s0", "lt1s0-b"));
        assert!(!is_lab_namespace("lt1s0", "lt1s0-7"));
        assert!(!is_lab_namespace("a", "a-b-cl"));
        assert!(!is_lab_namespace("lt1s0", "lt1s01-cl"));
    }
}
