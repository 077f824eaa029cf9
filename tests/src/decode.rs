//! Frames the program left behind, read back: a strict decode that verifies every checksum with
//! etherparse (an independent implementation, not ours), and a lax description of any bytes
//! for failure messages.

use std::{fmt::Write as _, net::IpAddr};

use etherparse::{
    LaxNetSlice, LaxSlicedPacket, LinkSlice, NetSlice, SlicedPacket, TransportSlice, VlanSlice,
};

/// What a TCP or UDP frame's headers say, every checksum verified.
#[derive(Debug, PartialEq, Eq, Clone)]
pub struct Decoded {
    pub src_mac: [u8; 6],
    pub dst_mac: [u8; 6],
    /// The 802.1Q VLAN id, if tagged.
    pub vlan: Option<u16>,
    /// IPv4 TTL or IPv6 hop limit.
    pub ttl: u8,
    pub src: IpAddr,
    pub dst: IpAddr,
    pub sport: u16,
    pub dport: u16,
    /// The UDP checksum field (0: sent without one); `None` for TCP.
    pub udp_checksum: Option<u16>,
    pub payload: Vec<u8>,
}

/// Reads a TCP or UDP frame and verifies its checksums (an IPv4 UDP datagram may carry none).
/// Returns what is wrong otherwise: the first bad checksum, or what could not be parsed.
pub fn decode(bytes: &[u8]) -> Result<Decoded, String> {
    let packet = SlicedPacket::from_ethernet(bytes).map_err(|e| e.to_string())?;
    let Some(LinkSlice::Ethernet2(eth)) = &packet.link else {
        return Err("no Ethernet header".into());
    };
    let vlan = match &packet.vlan {
        Some(VlanSlice::SingleVlan(tag)) => Some(tag.vlan_identifier().value()),
        Some(VlanSlice::DoubleVlan(_)) => return Err("two VLAN tags".into()),
        None => None,
    };
    let (src, dst, ttl) = match &packet.net {
        Some(NetSlice::Ipv4(ip)) => {
            let header = ip.header().to_header();
            let want = header.calc_header_checksum();
            if want != header.header_checksum {
                return Err(format!(
                    "IPv4 header checksum {:#06x}, should be {want:#06x}",
                    header.header_checksum
                ));
            }
            (
                IpAddr::from(header.source),
                IpAddr::from(header.destination),
                header.time_to_live,
            )
        }
        Some(NetSlice::Ipv6(ip)) => {
            let header = ip.header();
            (
                IpAddr::from(header.source_addr()),
                IpAddr::from(header.destination_addr()),
                header.hop_limit(),
            )
        }
        None => return Err("not IP".into()),
    };
    let ((IpAddr::V4(_), IpAddr::V4(_)) | (IpAddr::V6(_), IpAddr::V6(_))) = (src, dst) else {
        return Err("mixed address families".into());
    };
    let (sport, dport, udp_checksum, payload) = match &packet.transport {
        Some(TransportSlice::Tcp(tcp)) => {
            let want = match (src, dst) {
                (IpAddr::V4(s), IpAddr::V4(d)) => tcp.calc_checksum_ipv4(s.octets(), d.octets()),
                (IpAddr::V6(s), IpAddr::V6(d)) => tcp.calc_checksum_ipv6(s.octets(), d.octets()),
                _ => unreachable!("families checked above"),
            }
            .map_err(|e| e.to_string())?;
            if want != tcp.checksum() {
                return Err(format!(
                    "TCP checksum {:#06x}, should be {want:#06x}",
                    tcp.checksum()
                ));
            }
            (
                tcp.source_port(),
                tcp.destination_port(),
                None,
                tcp.payload().to_vec(),
            )
        }
        Some(TransportSlice::Udp(udp)) => {
            let header = udp.to_header();
            let want = match (src, dst) {
                (IpAddr::V4(s), IpAddr::V4(d)) => {
                    header.calc_checksum_ipv4_raw(s.octets(), d.octets(), udp.payload())
                }
                (IpAddr::V6(s), IpAddr::V6(d)) => {
                    header.calc_checksum_ipv6_raw(s.octets(), d.octets(), udp.payload())
                }
                _ => unreachable!("families checked above"),
            }
            .map_err(|e| e.to_string())?;
            let sent_without = src.is_ipv4() && header.checksum == 0;
            if want != header.checksum && !sent_without {
                return Err(format!(
                    "UDP checksum {:#06x}, should be {want:#06x}",
                    header.checksum
                ));
            }
            (
                header.source_port,
                header.destination_port,
                Some(header.checksum),
                udp.payload().to_vec(),
            )
        }
        _ => return Err("not TCP/UDP".into()),
    };
    Ok(Decoded {
        src_mac: eth.source(),
        dst_mac: eth.destination(),
        vlan,
        ttl,
        src,
        dst,
        sport,
        dport,
        udp_checksum,
        payload,
    })
}

/// One line saying what any bytes hold, as far as they can be read (never fails), then the
/// bytes themselves: for failure messages.
pub fn describe(bytes: &[u8]) -> String {
    let mut text = String::new();
    match LaxSlicedPacket::from_ethernet(bytes) {
        Err(e) => {
            let _ = write!(text, "{} bytes, no Ethernet header ({e})", bytes.len());
        }
        Ok(packet) => {
            let _ = write!(text, "{} bytes", bytes.len());
            if let Some(LinkSlice::Ethernet2(eth)) = &packet.link {
                let _ = write!(
                    text,
                    ", eth {} > {} type {:#06x}",
                    mac_text(eth.source()),
                    mac_text(eth.destination()),
                    eth.ether_type().0
                );
            }
            if let Some(VlanSlice::SingleVlan(tag)) = &packet.vlan {
                let _ = write!(text, ", vlan {}", tag.vlan_identifier().value());
            }
            match &packet.net {
                Some(LaxNetSlice::Ipv4(ip)) => {
                    let h = ip.header().to_header();
                    let _ = write!(
                        text,
                        ", IPv4 {} > {} proto {} ttl {} total length {} fragment at byte {}{} \
                         header checksum {:#06x} ({})",
                        IpAddr::from(h.source),
                        IpAddr::from(h.destination),
                        h.protocol.0,
                        h.time_to_live,
                        h.total_len,
                        u32::from(h.fragment_offset.value()) * 8,
                        if h.more_fragments { " (more)" } else { "" },
                        h.header_checksum,
                        if h.calc_header_checksum() == h.header_checksum {
                            "ok"
                        } else {
                            "bad"
                        }
                    );
                }
                Some(LaxNetSlice::Ipv6(ip)) => {
                    let h = ip.header();
                    let _ = write!(
                        text,
                        ", IPv6 {} > {} next header {} hop limit {} payload length {}",
                        IpAddr::from(h.source_addr()),
                        IpAddr::from(h.destination_addr()),
                        h.next_header().0,
                        h.hop_limit(),
                        h.payload_length()
                    );
                }
                None => {}
            }
            match &packet.transport {
                Some(TransportSlice::Tcp(tcp)) => {
                    let flags: String = [
                        (tcp.syn(), 'S'),
                        (tcp.ack(), 'A'),
                        (tcp.fin(), 'F'),
                        (tcp.rst(), 'R'),
                        (tcp.psh(), 'P'),
                    ]
                    .iter()
                    .filter(|(set, _)| *set)
                    .map(|(_, c)| *c)
                    .collect();
                    let _ = write!(
                        text,
                        ", TCP {} > {} [{flags}] checksum {:#06x}, payload {:?}",
                        tcp.source_port(),
                        tcp.destination_port(),
                        tcp.checksum(),
                        String::from_utf8_lossy(tcp.payload())
                    );
                }
                Some(TransportSlice::Udp(udp)) => {
                    let _ = write!(
                        text,
                        ", UDP {} > {} length {} checksum {:#06x}, payload {:?}",
                        udp.source_port(),
                        udp.destination_port(),
                        udp.length(),
                        udp.checksum(),
                        String::from_utf8_lossy(udp.payload())
                    );
                }
                Some(_) | None => {}
            }
            if let Some((e, layer)) = &packet.stop_err {
                let _ = write!(text, ", unreadable from {layer:?}: {e}");
            }
        }
    }
    let _ = write!(text, "\n      bytes {bytes:02x?}");
    text
}

fn mac_text(mac: [u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}
