//! An IP network as the config writes it (`"198.18.8.0/24"`, `"fd00:198:18::/64"`): auto
//! scaling groups' subnets and instances' inbound rules.

use std::{fmt, net::IpAddr, str::FromStr};

use serde::{Deserialize, Deserializer};

/// An address block: the network address (host bits zero) and the prefix length.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Cidr {
    pub network: IpAddr,
    pub prefix: u8,
}

impl Cidr {
    /// Addresses in the block (2^host bits, saturated at u128::MAX).
    pub fn size(&self) -> u128 {
        let host_bits = u32::from(self.bits() - self.prefix);
        1u128.checked_shl(host_bits).unwrap_or(u128::MAX)
    }

    /// Whether `address` is in the block.
    pub fn contains(&self, address: IpAddr) -> bool {
        match (self.network, address) {
            (IpAddr::V4(n), IpAddr::V4(a)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(a) & mask == u32::from(n)
            }
            (IpAddr::V6(n), IpAddr::V6(a)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(a) & mask == u128::from(n)
            }
            _ => false,
        }
    }

    /// Whether the two blocks share an address.
    pub fn overlaps(&self, other: &Cidr) -> bool {
        let (wide, narrow) = if self.prefix <= other.prefix {
            (self, other)
        } else {
            (other, self)
        };
        wide.contains(narrow.network)
    }

    fn bits(&self) -> u8 {
        if self.network.is_ipv4() { 32 } else { 128 }
    }
}

impl FromStr for Cidr {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let shape = "a network like \"198.18.8.0/24\" or \"fd00:198:18:8::/64\"";
        let (address, prefix) = text
            .split_once('/')
            .ok_or_else(|| format!("`{text}` has no prefix length: write {shape}"))?;
        let network: IpAddr = address
            .parse()
            .map_err(|_| format!("`{address}` is not an IP address: write {shape}"))?;
        let bits = if network.is_ipv4() { 32 } else { 128 };
        let prefix: u8 = prefix
            .parse()
            .ok()
            .filter(|p| *p <= bits)
            .ok_or_else(|| format!("`{prefix}` is not a prefix length (0-{bits})"))?;
        let cidr = Cidr { network, prefix };
        if !cidr.contains(network) {
            return Err(format!(
                "`{text}` has host bits set: the network is {}",
                Cidr::masked(network, prefix)
            ));
        }
        Ok(cidr)
    }
}

impl Cidr {
    /// `address`'s network of `prefix` bits, as text.
    fn masked(address: IpAddr, prefix: u8) -> String {
        let network = match address {
            IpAddr::V4(a) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
                IpAddr::from(std::net::Ipv4Addr::from(u32::from(a) & mask))
            }
            IpAddr::V6(a) => {
                let mask = u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0);
                IpAddr::from(std::net::Ipv6Addr::from(u128::from(a) & mask))
            }
        };
        format!("{network}/{prefix}")
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

impl<'de> Deserialize<'de> for Cidr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn networks_parse_with_their_size_and_members() {
        let net: Cidr = "198.18.8.0/24".parse().unwrap();
        assert_eq!(net.size(), 256);
        assert!(net.contains("198.18.8.77".parse().unwrap()));
        assert!(!net.contains("198.18.9.1".parse().unwrap()));
        assert!(!net.contains("fd00::1".parse().unwrap()));
        let v6: Cidr = "fd00:198:18:8::/64".parse().unwrap();
        assert!(v6.contains("fd00:198:18:8::5".parse().unwrap()));
        let all: Cidr = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains("198.18.0.1".parse().unwrap()));
        assert!(all.overlaps(&net) && net.overlaps(&all));
        assert!(!net.overlaps(&"198.18.9.0/24".parse().unwrap()));
    }

    #[test]
    fn a_network_with_host_bits_or_a_bad_prefix_is_refused_with_what_to_write() {
        let e = "198.18.8.1/24".parse::<Cidr>().unwrap_err();
        assert!(e.contains("198.18.8.0/24"), "{e}");
        assert!(
            "198.18.8.0"
                .parse::<Cidr>()
                .unwrap_err()
                .contains("no prefix")
        );
        assert!(
            "198.18.8.0/33"
                .parse::<Cidr>()
                .unwrap_err()
                .contains("0-32")
        );
        assert!("web/24".parse::<Cidr>().unwrap_err().contains("not an IP"));
    }
}
