//! The node's own addresses, and the full-NAT source addresses they give by default.

use std::net::IpAddr;

use anyhow::Context as _;

use crate::config::Config;

/// Every address of this node's interfaces but link-local ones: (interface, address).
pub fn addresses() -> anyhow::Result<Vec<(String, IpAddr)>> {
    let mut out = Vec::new();
    let mut ifap: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills a list we free below; we only read it in between.
    if unsafe { libc::getifaddrs(&mut ifap) } != 0 {
        return Err(std::io::Error::last_os_error()).context("getifaddrs");
    }
    let mut cur = ifap;
    while !cur.is_null() {
        // SAFETY: a node of the list getifaddrs returned.
        let ifa = unsafe { &*cur };
        cur = ifa.ifa_next;
        if ifa.ifa_addr.is_null() {
            continue;
        }
        // SAFETY: ifa_name is a C string.
        let name = unsafe { std::ffi::CStr::from_ptr(ifa.ifa_name) };
        // SAFETY: the family says which sockaddr it is.
        let ip = unsafe {
            match i32::from((*ifa.ifa_addr).sa_family) {
                libc::AF_INET => {
                    let sin = &*(ifa.ifa_addr as *const libc::sockaddr_in);
                    IpAddr::from(u32::from_be(sin.sin_addr.s_addr).to_be_bytes())
                }
                libc::AF_INET6 => {
                    let sin6 = &*(ifa.ifa_addr as *const libc::sockaddr_in6);
                    IpAddr::from(sin6.sin6_addr.s6_addr)
                }
                _ => continue,
            }
        };
        let link_local = matches!(ip, IpAddr::V6(v6) if (v6.segments()[0] & 0xffc0) == 0xfe80);
        if !link_local {
            out.push((name.to_string_lossy().into_owned(), ip));
        }
    }
    // SAFETY: the list getifaddrs allocated.
    unsafe { libc::freeifaddrs(ifap) };
    Ok(out)
}

/// The default full-NAT sources: the first IPv4 and first IPv6 address of `iface`.
pub fn interface_addresses(addresses: &[(String, IpAddr)], iface: &str) -> Vec<IpAddr> {
    let mut out: Vec<IpAddr> = Vec::new();
    for (_, ip) in addresses.iter().filter(|(name, _)| name == iface) {
        if !out.iter().any(|o| o.is_ipv4() == ip.is_ipv4()) {
            out.push(*ip);
        }
    }
    out
}

/// The full-NAT source addresses: the config's, else `iface`'s own (one per family).
pub fn snat_addresses(config: &Config, addresses: &[(String, IpAddr)], iface: &str) -> Vec<IpAddr> {
    if config.agent.snat_addresses.is_empty() {
        interface_addresses(addresses, iface)
    } else {
        config.agent.snat_addresses.clone()
    }
}
