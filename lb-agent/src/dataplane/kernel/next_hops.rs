//! The next hops the data plane dropped packets for because their neighbour entry was missing
//! (`NEXT_HOP_MISSES`): read and emptied by the agent, which has the kernel resolve them.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    os::fd::AsFd as _,
};

use aya::maps::{HashMap, MapData};
use lb_common::{FAMILY_V4, NextHop, map_names};

use super::{Dataplane, DataplaneError, map_err, refused};
use crate::dataplane::Result;

/// A handle of its own on `NEXT_HOP_MISSES`, for the task that resolves them.
pub struct NextHopMisses {
    map: aya::maps::Map,
}

impl NextHopMisses {
    /// Takes every next hop noted since the last call out of the map: (address, ifindex).
    pub fn take(&mut self) -> Result<Vec<(IpAddr, u32)>> {
        let mut map: HashMap<_, NextHop, u32> =
            HashMap::try_from(&mut self.map).map_err(map_err(map_names::NEXT_HOP_MISSES))?;
        let hops: Vec<NextHop> = map.keys().filter_map(std::result::Result::ok).collect();
        for hop in &hops {
            // Gone already (evicted) is fine: it is taken either way.
            let _ = map.remove(hop);
        }
        Ok(hops
            .iter()
            .map(|hop| (hop_address(hop), hop.ifindex))
            .collect())
    }
}

/// The address of a noted next hop.
fn hop_address(hop: &NextHop) -> IpAddr {
    let a = hop.addr.0;
    if hop.family == FAMILY_V4 {
        IpAddr::V4(Ipv4Addr::new(a[0], a[1], a[2], a[3]))
    } else {
        IpAddr::V6(Ipv6Addr::from(a))
    }
}

impl Dataplane {
    /// A handle on the next hops the data plane missed, on a descriptor of its own (the
    /// resolver reads it beside the writer).
    pub fn next_hop_misses(&self) -> Result<NextHopMisses> {
        let name = map_names::NEXT_HOP_MISSES;
        let data = match self.ebpf.map(name) {
            Some(aya::maps::Map::LruHashMap(data)) => data,
            _ => return Err(DataplaneError::MissingMap(name)),
        };
        let fd = data
            .fd()
            .as_fd()
            .try_clone_to_owned()
            .map_err(|e| refused(name, "dup", e.raw_os_error().unwrap_or(libc::EBADF)))?;
        let data = MapData::from_fd(fd).map_err(map_err(name))?;
        Ok(NextHopMisses {
            map: aya::maps::Map::LruHashMap(data),
        })
    }
}

#[cfg(test)]
mod tests {
    use lb_common::{Addr, FAMILY_V6};

    use super::*;

    #[test]
    fn a_noted_hop_reads_as_its_address_in_its_family() {
        let v4 = NextHop {
            addr: Addr::v4([198, 18, 0, 10]),
            ifindex: 3,
            family: FAMILY_V4,
            ..NextHop::default()
        };
        assert_eq!(hop_address(&v4), "198.18.0.10".parse::<IpAddr>().unwrap());
        let gateway: Ipv6Addr = "fd00:198:18::1".parse().unwrap();
        let v6 = NextHop {
            addr: Addr(gateway.octets()),
            ifindex: 3,
            family: FAMILY_V6,
            ..NextHop::default()
        };
        assert_eq!(hop_address(&v6), IpAddr::V6(gateway));
    }
}
