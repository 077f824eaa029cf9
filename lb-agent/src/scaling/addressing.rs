//! Instance ids and addresses. An instance id is EC2's shape (`i-` and 17 hex digits); an
//! address is the lowest free one of the group's subnet, after the network address, the load
//! balancer's own end of every instance link (the subnet's first host address, the instances'
//! gateway) and before the broadcast address (IPv4).

use std::{
    collections::HashSet,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use crate::config::Cidr;

/// An instance's id: `i-` then 17 lowercase hex digits, like EC2's.
pub fn new_instance_id(random: u128) -> String {
    // 17 hex digits: the low 68 bits.
    format!("i-{:017x}", random & ((1u128 << 68) - 1))
}

/// Whether `id` is shaped like an instance id (what the CLI and API accept).
pub fn is_instance_id(id: &str) -> bool {
    id.strip_prefix("i-").is_some_and(|hex| {
        hex.len() == 17
            && hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    })
}

/// The load balancer's end of every instance link in `subnet`: its first host address.
pub fn gateway(subnet: &Cidr) -> Option<IpAddr> {
    nth_host(subnet, 1)
}

/// The lowest address of `subnet` that no instance holds (`taken`), or none when it is full.
pub fn free_address(subnet: &Cidr, taken: &HashSet<IpAddr>) -> Option<IpAddr> {
    // Host 0 is the network, host 1 the gateway; IPv4's last is the broadcast address.
    let hosts = subnet.size();
    let last = if subnet.network.is_ipv4() {
        hosts.checked_sub(2)?
    } else {
        hosts.checked_sub(1)?
    };
    // Bounded: a group has at most 1000 instances, so at most 1002 addresses are looked at.
    (2..=last)
        .take(taken.len() + 1)
        .filter_map(|n| nth_host(subnet, n))
        .find(|a| !taken.contains(a))
}

fn nth_host(subnet: &Cidr, n: u128) -> Option<IpAddr> {
    if n >= subnet.size() {
        return None;
    }
    Some(match subnet.network {
        IpAddr::V4(net) => IpAddr::V4(Ipv4Addr::from(
            u32::from(net).checked_add(u32::try_from(n).ok()?)?,
        )),
        IpAddr::V6(net) => IpAddr::V6(Ipv6Addr::from(u128::from(net).checked_add(n)?)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> Cidr {
        s.parse().expect("a network")
    }

    #[test]
    fn instance_ids_look_like_ec2s() {
        let id = new_instance_id(0x0000_1234_5678_9abc_def0);
        assert_eq!(id, "i-0123456789abcdef0");
        assert!(is_instance_id(&id));
        assert_eq!(new_instance_id(u128::MAX).len(), 19);
        assert!(!is_instance_id("i-0123456789ABCDEF0"));
        assert!(!is_instance_id("i-123"));
        assert!(!is_instance_id("web-1"));
    }

    #[test]
    fn addresses_come_lowest_first_after_the_gateway_and_never_the_broadcast() {
        let subnet = net("198.18.8.0/29");
        assert_eq!(gateway(&subnet), Some("198.18.8.1".parse().unwrap()));
        let mut taken = HashSet::new();
        let mut given = Vec::new();
        while let Some(a) = free_address(&subnet, &taken) {
            taken.insert(a);
            given.push(a.to_string());
        }
        assert_eq!(
            given,
            [
                "198.18.8.2",
                "198.18.8.3",
                "198.18.8.4",
                "198.18.8.5",
                "198.18.8.6"
            ]
        );
        taken.remove(&"198.18.8.4".parse().unwrap());
        assert_eq!(
            free_address(&subnet, &taken),
            Some("198.18.8.4".parse().unwrap())
        );
        let v6 = net("fd00:198:18:8::/126");
        let first = free_address(&v6, &HashSet::new());
        assert_eq!(first, Some("fd00:198:18:8::2".parse().unwrap()));
        assert_eq!(free_address(&net("198.18.8.0/31"), &HashSet::new()), None);
    }
}
