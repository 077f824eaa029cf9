//! Listeners against the full-NAT source ports: a listener on a full-NAT source address with a
//! port inside `agent.snat_port_range` would meet the targets' replies to full-NAT flows on
//! that address and port, and one of the two would go to the other.
//!
//! The file check (`validate`) knows the addresses `agent.snat_addresses` names; when it names
//! none, the sources are the interface's own addresses, known only on the node: `run` and the
//! writer's reload check those with `Config::listeners_on_snat_ports`.

use std::net::IpAddr;

use super::{Config, Listener};

/// The index in `snat` of the address `listener` listens on, if its port is inside `range`.
pub(super) fn clashing_source(
    listener: &Listener,
    snat: &[IpAddr],
    (lo, hi): (u16, u16),
) -> Option<usize> {
    if !(lo..=hi).contains(&listener.port) {
        return None;
    }
    snat.iter()
        .position(|s| s.to_canonical() == listener.address.to_canonical())
}

impl Config {
    /// One message for each listener on one of `snat` (the full-NAT source addresses in force
    /// on this node) with a port inside `agent.snat_port_range`, naming the listener, the
    /// address and the range; empty when there is no clash.
    pub fn listeners_on_snat_ports(&self, snat: &[IpAddr]) -> Vec<String> {
        let (lo, hi) = self.agent.snat_port_range;
        let whose = if self.agent.snat_addresses.is_empty() {
            "this node's own address, a full-NAT source because agent.snat_addresses names none"
        } else {
            "a full-NAT source (agent.snat_addresses)"
        };
        self.listeners
            .iter()
            .filter_map(|l| clashing_source(l, snat, (lo, hi)).map(|i| (l, snat[i])))
            .map(|(l, source)| {
                format!(
                    "listener `{}` on {source} port {}: {source} is {whose}, and port {} is \
                     inside agent.snat_port_range [{lo}, {hi}]: targets' replies to full-NAT \
                     flows would meet this listener's clients on that port; move the port out \
                     of the range, the listener to another address, or name other full-NAT \
                     sources in agent.snat_addresses",
                    l.name, l.port, l.port
                )
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(snat_addresses: &str, listener_port: u16) -> Config {
        Config::parse(
            &format!(
                r#"
[agent]
snat_addresses = [{snat_addresses}]
snat_port_range = [20000, 29999]
[[target_group]]
name = "web"
protocol = "tcp"
port = 8080
targets = [{{ address = "198.18.0.21" }}]
[[listener]]
name = "web"
address = "198.18.0.1"
port = {listener_port}
protocol = "tcp"
default_action = {{ forward = "web" }}
"#
            ),
            "t.toml",
        )
        .expect("config")
    }

    fn ips(list: &[&str]) -> Vec<IpAddr> {
        list.iter().map(|a| a.parse().expect("address")).collect()
    }

    #[test]
    fn a_listener_on_the_interface_address_inside_the_snat_range_is_named() {
        let clashes =
            config("", 20080).listeners_on_snat_ports(&ips(&["198.18.0.1", "fd00:198:18::1"]));
        assert_eq!(clashes.len(), 1, "{clashes:?}");
        let message = &clashes[0];
        for part in [
            "listener `web`",
            "198.18.0.1 port 20080",
            "[20000, 29999]",
            "agent.snat_addresses names none",
        ] {
            assert!(message.contains(part), "`{part}` missing from: {message}");
        }
    }

    #[test]
    fn a_listener_port_outside_the_snat_range_is_no_clash() {
        assert!(
            config("", 80)
                .listeners_on_snat_ports(&ips(&["198.18.0.1"]))
                .is_empty()
        );
    }

    #[test]
    fn a_listener_on_another_address_than_the_sources_is_no_clash() {
        assert!(
            config("", 20080)
                .listeners_on_snat_ports(&ips(&["198.18.0.2", "fd00:198:18::1"]))
                .is_empty()
        );
    }

    #[test]
    fn an_ipv4_mapped_source_is_the_same_address() {
        assert_eq!(
            config("", 20080)
                .listeners_on_snat_ports(&ips(&["::ffff:198.18.0.1"]))
                .len(),
            1
        );
    }
}
