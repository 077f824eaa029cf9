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
        "sw" | "cl" | "lb" => true,
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
        assert!(!is_lab_namespace("lt1s0", "lt1s0-b"));
        assert!(!is_lab_namespace("lt1s0", "lt1s0-7"));
        assert!(!is_lab_namespace("a", "a-b-cl"));
        assert!(!is_lab_namespace("lt1s0", "lt1s01-cl"));
    }
}
