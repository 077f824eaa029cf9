//! Crafted frames for BPF_PROG_TEST_RUN, and an independent check of their checksums
//! (etherparse's, not ours).

use std::net::IpAddr;

use lb_common::checksum::internet_checksum;

/// MAC the crafted frames come from.
pub const SRC_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x99];
/// MAC the crafted frames are sent to (the load balancer's NIC, as far as it matters).
pub const DST_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];

/// One frame to build.
#[derive(Clone, Debug)]
pub struct Frame {
    pub src: IpAddr,
    pub dst: IpAddr,
    /// 6 (TCP) or 17 (UDP), or anything else for a bare IP payload.
    pub proto: u8,
    pub sport: u16,
    pub dport: u16,
    pub payload: Vec<u8>,
    /// An 802.1Q tag.
    pub vlan: Option<u16>,
    /// IPv4 flags+fragment offset field (host order), e.g. 0x2000 for "more fragments".
    pub frag: u16,
    /// IPv4 UDP sent without a checksum (0).
    pub udp_no_checksum: bool,
    /// An IPv6 hop-by-hop options header before the transport header.
    pub ipv6_hop_by_hop: bool,
    /// TCP flags (default SYN: a client opening a connection).
    pub tcp_flags: u8,
}

/// TCP SYN.
pub const SYN: u8 = 0x02;
/// TCP ACK.
pub const ACK: u8 = 0x10;

impl Frame {
    /// A TCP SYN-like segment (flags don't matter to the load balancer) with a payload.
    pub fn tcp(src: IpAddr, sport: u16, dst: IpAddr, dport: u16) -> Self {
        Self {
            src,
            dst,
            proto: 6,
            sport,
            dport,
            payload: b"hello, backend".to_vec(),
            vlan: None,
            frag: 0,
            udp_no_checksum: false,
            ipv6_hop_by_hop: false,
            tcp_flags: SYN,
        }
    }

    /// A UDP datagram.
    pub fn udp(src: IpAddr, sport: u16, dst: IpAddr, dport: u16) -> Self {
        Self {
            proto: 17,
            ..Self::tcp(src, sport, dst, dport)
        }
    }

    /// Offset of the IP header.
    pub fn l3(&self) -> usize {
        if self.vlan.is_some() { 18 } else { 14 }
    }

    /// Offset of the TCP/UDP header.
    pub fn l4(&self) -> usize {
        self.l3()
            + match self.src {
                IpAddr::V4(_) => 20,
                IpAddr::V6(_) => 40 + if self.ipv6_hop_by_hop { 8 } else { 0 },
            }
    }

    /// The frame's bytes, every checksum correct.
    pub fn build(&self) -> Vec<u8> {
        let mut l4 = Vec::new();
        l4.extend(self.sport.to_be_bytes());
        l4.extend(self.dport.to_be_bytes());
        match self.proto {
            6 => {
                l4.extend([
                    0,
                    0,
                    0,
                    1,
                    0,
                    0,
                    0,
                    0,
                    0x50,
                    self.tcp_flags,
                    0xff,
                    0xff,
                    0,
                    0,
                    0,
                    0,
                ]);
            }
            17 => {
                l4.extend(((8 + self.payload.len()) as u16).to_be_bytes());
                l4.extend([0, 0]);
            }
            _ => l4.clear(),
        }
        l4.extend(&self.payload);
        let csum_at = match self.proto {
            6 => Some(16),
            17 => Some(6),
            _ => None,
        };
        let mut pseudo = Vec::new();
        match (self.src, self.dst) {
            (IpAddr::V4(s), IpAddr::V4(d)) => {
                pseudo.extend(s.octets());
                pseudo.extend(d.octets());
                pseudo.extend([0, self.proto]);
                pseudo.extend((l4.len() as u16).to_be_bytes());
            }
            (IpAddr::V6(s), IpAddr::V6(d)) => {
                pseudo.extend(s.octets());
                pseudo.extend(d.octets());
                pseudo.extend((l4.len() as u32).to_be_bytes());
                pseudo.extend([0, 0, 0, self.proto]);
            }
            _ => panic!("mixed address families"),
        }
        if let Some(at) = csum_at
            && !(self.proto == 17 && self.udp_no_checksum)
        {
            pseudo.extend(&l4);
            let mut c = internet_checksum(&pseudo, 0);
            if c == 0 && self.proto == 17 {
                c = 0xffff;
            }
            l4[at..at + 2].copy_from_slice(&c.to_be_bytes());
        }
        let mut frame = Vec::new();
        frame.extend(DST_MAC);
        frame.extend(SRC_MAC);
        let ether_type: u16 = if self.src.is_ipv4() { 0x0800 } else { 0x86dd };
        if let Some(vid) = self.vlan {
            frame.extend(0x8100u16.to_be_bytes());
            frame.extend(vid.to_be_bytes());
        }
        frame.extend(ether_type.to_be_bytes());
        match (self.src, self.dst) {
            (IpAddr::V4(s), IpAddr::V4(d)) => {
                let mut ip = vec![0x45, 0];
                ip.extend(((20 + l4.len()) as u16).to_be_bytes());
                ip.extend([0x12, 0x34]);
                ip.extend(self.frag.to_be_bytes());
                ip.extend([64, self.proto, 0, 0]);
                ip.extend(s.octets());
                ip.extend(d.octets());
                let c = internet_checksum(&ip, 0);
                ip[10..12].copy_from_slice(&c.to_be_bytes());
                frame.extend(ip);
            }
            (IpAddr::V6(s), IpAddr::V6(d)) => {
                let ext = if self.ipv6_hop_by_hop { 8 } else { 0 };
                frame.extend([0x60, 0, 0, 0]);
                frame.extend(((l4.len() + ext) as u16).to_be_bytes());
                frame.push(if self.ipv6_hop_by_hop { 0 } else { self.proto });
                frame.push(64);
                frame.extend(s.octets());
                frame.extend(d.octets());
                if self.ipv6_hop_by_hop {
                    // Next header, length 0 (8 bytes), PadN filling the rest.
                    frame.extend([self.proto, 0, 1, 4, 0, 0, 0, 0]);
                }
            }
            _ => unreachable!(),
        }
        frame.extend(l4);
        frame
    }
}

/// What a frame's headers say, read back from bytes.
#[derive(Debug, PartialEq, Eq, Clone)]
pub struct Seen {
    pub src_mac: [u8; 6],
    pub dst_mac: [u8; 6],
    pub src: IpAddr,
    pub dst: IpAddr,
    pub sport: u16,
    pub dport: u16,
    pub payload: Vec<u8>,
}

/// Reads a frame built like `Frame` (same layout), and verifies every checksum with etherparse.
/// Returns an error naming the first bad checksum.
pub fn inspect(bytes: &[u8], like: &Frame) -> Result<Seen, String> {
    let l3 = like.l3();
    let l4 = like.l4();
    let mut src_mac = [0; 6];
    let mut dst_mac = [0; 6];
    dst_mac.copy_from_slice(&bytes[0..6]);
    src_mac.copy_from_slice(&bytes[6..12]);
    let (src, dst): (IpAddr, IpAddr) = if like.src.is_ipv4() {
        let ip =
            etherparse::Ipv4HeaderSlice::from_slice(&bytes[l3..]).map_err(|e| e.to_string())?;
        let header = ip.to_header();
        if header.calc_header_checksum() != header.header_checksum {
            return Err(format!(
                "IPv4 header checksum {:#06x}, should be {:#06x}",
                header.header_checksum,
                header.calc_header_checksum()
            ));
        }
        (
            IpAddr::from(header.source),
            IpAddr::from(header.destination),
        )
    } else {
        let ip =
            etherparse::Ipv6HeaderSlice::from_slice(&bytes[l3..]).map_err(|e| e.to_string())?;
        (IpAddr::from(ip.source()), IpAddr::from(ip.destination()))
    };
    let l4_bytes = &bytes[l4..];
    let (sport, dport, payload) = match like.proto {
        6 => {
            let tcp = etherparse::TcpSlice::from_slice(l4_bytes).map_err(|e| e.to_string())?;
            let want = match (src, dst) {
                (IpAddr::V4(s), IpAddr::V4(d)) => tcp.calc_checksum_ipv4(s.octets(), d.octets()),
                (IpAddr::V6(s), IpAddr::V6(d)) => tcp.calc_checksum_ipv6(s.octets(), d.octets()),
                _ => return Err("mixed families".into()),
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
                tcp.payload().to_vec(),
            )
        }
        17 => {
            let (udp, rest) =
                etherparse::UdpHeader::from_slice(l4_bytes).map_err(|e| e.to_string())?;
            let want = match (src, dst) {
                (IpAddr::V4(s), IpAddr::V4(d)) => {
                    udp.calc_checksum_ipv4_raw(s.octets(), d.octets(), rest)
                }
                (IpAddr::V6(s), IpAddr::V6(d)) => {
                    udp.calc_checksum_ipv6_raw(s.octets(), d.octets(), rest)
                }
                _ => return Err("mixed families".into()),
            }
            .map_err(|e| e.to_string())?;
            let no_checksum_ok = src.is_ipv4() && udp.checksum == 0;
            if want != udp.checksum && !no_checksum_ok {
                return Err(format!(
                    "UDP checksum {:#06x}, should be {want:#06x}",
                    udp.checksum
                ));
            }
            (udp.source_port, udp.destination_port, rest.to_vec())
        }
        _ => return Err("not TCP/UDP".into()),
    };
    Ok(Seen {
        src_mac,
        dst_mac,
        src,
        dst,
        sport,
        dport,
        payload,
    })
}
