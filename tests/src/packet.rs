//! Crafted frames for BPF_PROG_TEST_RUN: a builder with named options, so a test says what
//! is special about its frame ("a VLAN tag", "a later fragment", "cut after 30 bytes") instead
//! of poking byte offsets. Every checksum is computed unless an option says otherwise.

use std::net::IpAddr;

use lb_common::checksum::internet_checksum;

/// MAC the crafted frames come from.
pub const SRC_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x99];
/// MAC the crafted frames are sent to (the load balancer's NIC, as far as it matters).
pub const DST_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];

/// TCP FIN.
pub const FIN: u8 = 0x01;
/// TCP SYN.
pub const SYN: u8 = 0x02;
/// TCP RST.
pub const RST: u8 = 0x04;
/// TCP ACK.
pub const ACK: u8 = 0x10;

/// IP protocol numbers of the transports the load balancer balances.
const PROTO_TCP: u8 = 6;
const PROTO_UDP: u8 = 17;
/// IP protocol numbers of ICMP and ICMPv6, whose errors it translates.
const PROTO_ICMP: u8 = 1;
const PROTO_ICMPV6: u8 = 58;

/// What a frame gets wrong on purpose, applied when it is built.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mutation {
    /// The IP length field (IPv4 total length, IPv6 payload length) claims one byte more than
    /// the frame holds; the IPv4 header checksum still matches, so only the length lies.
    IpLengthBeyondFrame,
    /// The IPv4 header length field says 3 words (12 bytes), below the 20-byte minimum.
    Ipv4HeaderLengthBelowMinimum,
    /// The IPv4 total length field set to `len` (the header checksum still matches): shorter
    /// than the headers, the transport header then lies in what is Ethernet padding.
    Ipv4TotalLength(u16),
    /// The TCP data offset field (header length in 32-bit words) set to this value, 0-15; the
    /// TCP checksum still matches.
    TcpDataOffset(u8),
    /// The UDP length field set to this value; the UDP checksum still matches.
    UdpLength(u16),
    /// Byte `at` of the finished frame (checksums included) overwritten with `value`: a random
    /// corruption that nothing repairs.
    OverwriteByte {
        /// Offset from the start of the Ethernet header.
        at: usize,
        /// The byte written there.
        value: u8,
    },
}

/// One frame to build: Ethernet (optionally 802.1Q-tagged), IPv4 or IPv6, then TCP, UDP or a
/// bare payload of another IP protocol.
#[derive(Clone, Debug)]
pub struct Frame {
    pub(crate) src: IpAddr,
    pub(crate) dst: IpAddr,
    /// 6 (TCP), 17 (UDP), or anything else for a bare IP payload.
    pub(crate) proto: u8,
    pub(crate) sport: u16,
    pub(crate) dport: u16,
    payload: Vec<u8>,
    /// An ICMP or ICMPv6 message's type and code (its payload follows the checksum).
    icmp: Option<(u8, u8)>,
    vlan: Option<u16>,
    /// An outer tag before the 802.1Q one (QinQ), and its EtherType.
    outer_vlan: Option<u16>,
    outer_vlan_type: u16,
    tcp_flags: u8,
    ttl: u8,
    /// IPv4 flags and fragment offset field (host order).
    fragment_field: u16,
    udp_checksum: bool,
    ipv6_hop_by_hop: bool,
    ethernet_padding: usize,
    mutations: Vec<Mutation>,
    truncate_to: Option<usize>,
}

impl Frame {
    /// A TCP segment with a payload, SYN set (a client opening a connection).
    pub fn tcp(src: IpAddr, sport: u16, dst: IpAddr, dport: u16) -> Self {
        assert_eq!(
            src.is_ipv4(),
            dst.is_ipv4(),
            "a frame's addresses are of one family"
        );
        Self {
            src,
            dst,
            proto: PROTO_TCP,
            sport,
            dport,
            payload: b"hello, backend".to_vec(),
            icmp: None,
            vlan: None,
            outer_vlan: None,
            outer_vlan_type: 0x88a8,
            tcp_flags: SYN,
            ttl: 64,
            fragment_field: 0,
            udp_checksum: true,
            ipv6_hop_by_hop: false,
            ethernet_padding: 0,
            mutations: Vec::new(),
            truncate_to: None,
        }
    }

    /// A UDP datagram with a payload.
    pub fn udp(src: IpAddr, sport: u16, dst: IpAddr, dport: u16) -> Self {
        Self {
            proto: PROTO_UDP,
            ..Self::tcp(src, sport, dst, dport)
        }
    }

    /// An IP packet of protocol `proto` (ICMP is 1) whose payload follows the IP header bare:
    /// no ports for the load balancer to read.
    pub fn ip_protocol(src: IpAddr, dst: IpAddr, proto: u8) -> Self {
        Self {
            proto,
            ..Self::tcp(src, 0, dst, 0)
        }
    }

    /// An ICMP (IPv4) or ICMPv6 message of type `kind` and `code`: after the checksum, `rest`
    /// (the next-hop MTU of "fragmentation needed" and "packet too big"; else 0), then
    /// `quoted`: for an error, the start of the IP packet it is about (`ip_packet`, cut short).
    pub fn icmp(src: IpAddr, dst: IpAddr, kind: u8, code: u8, rest: u32, quoted: &[u8]) -> Self {
        let proto = if src.is_ipv4() {
            PROTO_ICMP
        } else {
            PROTO_ICMPV6
        };
        Self {
            icmp: Some((kind, code)),
            payload: [&rest.to_be_bytes()[..], quoted].concat(),
            ..Self::ip_protocol(src, dst, proto)
        }
    }

    /// TCP or UDP, by IP protocol number: for tables that cover both.
    pub fn transport(proto: u8, src: IpAddr, sport: u16, dst: IpAddr, dport: u16) -> Self {
        Self {
            proto,
            ..Self::tcp(src, sport, dst, dport)
        }
    }

    /// An 802.1Q tag with VLAN id `vid`.
    pub fn vlan(mut self, vid: u16) -> Self {
        self.vlan = Some(vid);
        self
    }

    /// Two tags, QinQ: an outer one with VLAN id `outer`, then an 802.1Q one with `inner`.
    /// `outer_type` is the outer tag's EtherType: 0x88a8 (802.1ad) or 0x8100 (802.1Q-in-802.1Q).
    pub fn double_tagged(mut self, outer_type: u16, outer: u16, inner: u16) -> Self {
        self.outer_vlan = Some(outer);
        self.outer_vlan_type = outer_type;
        self.vlan = Some(inner);
        self
    }

    /// TCP flags (`SYN`, `ACK`, `FIN | ACK`, ...); SYN by default.
    pub fn flags(mut self, flags: u8) -> Self {
        self.tcp_flags = flags;
        self
    }

    /// IPv4 TTL or IPv6 hop limit (64 by default).
    pub fn ttl(mut self, ttl: u8) -> Self {
        self.ttl = ttl;
        self
    }

    /// The transport payload.
    pub fn payload(mut self, payload: &[u8]) -> Self {
        self.payload = payload.to_vec();
        self
    }

    /// An IPv4 fragment: at byte `offset` (a multiple of 8) of the original datagram, with the
    /// more-fragments flag set when `more`. The first of several is `fragment(0, true)`.
    pub fn fragment(mut self, offset: u16, more: bool) -> Self {
        assert!(self.src.is_ipv4(), "fragment() builds IPv4 fragments only");
        assert_eq!(offset % 8, 0, "fragment offsets count 8-byte units");
        // The flags share the field with the offset: bit 13 is "more fragments".
        let more_fragments = if more { 0x2000 } else { 0 };
        self.fragment_field = (offset / 8) | more_fragments;
        self
    }

    /// An IPv4 UDP datagram sent without a checksum (the field is 0, as RFC 768 allows).
    pub fn without_udp_checksum(mut self) -> Self {
        assert!(
            self.src.is_ipv4() && self.proto == PROTO_UDP,
            "only IPv4 UDP may go without a checksum"
        );
        self.udp_checksum = false;
        self
    }

    /// An IPv6 hop-by-hop options header (8 bytes of padding options) before the transport.
    pub fn ipv6_hop_by_hop(mut self) -> Self {
        assert!(self.src.is_ipv6(), "hop-by-hop options are IPv6's");
        self.ipv6_hop_by_hop = true;
        self
    }

    /// `len` zero bytes after the IP packet, as a NIC pads a short frame.
    pub fn ethernet_padding(mut self, len: usize) -> Self {
        self.ethernet_padding = len;
        self
    }

    /// Gets `mutation` wrong on purpose.
    pub fn mutate(mut self, mutation: Mutation) -> Self {
        self.mutations.push(mutation);
        self
    }

    /// Only the first `len` bytes of the frame (a frame cut short on the wire).
    pub fn truncate_to(mut self, len: usize) -> Self {
        self.truncate_to = Some(len);
        self
    }

    /// The client's (source) port.
    pub fn sport(&self) -> u16 {
        self.sport
    }

    /// The transport payload the frame carries.
    pub fn payload_bytes(&self) -> &[u8] {
        &self.payload
    }

    /// Bytes before the transport header: Ethernet, VLAN tag, IP header and its extensions.
    /// Corrupting any of them is corrupting "the headers".
    pub fn header_len(&self) -> usize {
        let tags = usize::from(self.vlan.is_some()) + usize::from(self.outer_vlan.is_some());
        let l2 = 14 + 4 * tags;
        l2 + match self.src {
            IpAddr::V4(_) => 20,
            IpAddr::V6(_) => 40 + if self.ipv6_hop_by_hop { 8 } else { 0 },
        }
    }

    /// The IP packet the frame carries (no Ethernet header): what an ICMP error quotes.
    pub fn ip_packet(&self) -> Vec<u8> {
        let l2 = if self.vlan.is_some() { 18 } else { 14 };
        self.build().split_off(l2)
    }

    /// The frame's bytes.
    pub fn build(&self) -> Vec<u8> {
        let l4 = self.transport_bytes();
        let mut frame = Vec::new();
        frame.extend(DST_MAC);
        frame.extend(SRC_MAC);
        if let Some(vid) = self.outer_vlan {
            frame.extend(self.outer_vlan_type.to_be_bytes());
            frame.extend(vid.to_be_bytes());
        }
        if let Some(vid) = self.vlan {
            frame.extend(0x8100u16.to_be_bytes());
            frame.extend(vid.to_be_bytes());
        }
        let ether_type: u16 = if self.src.is_ipv4() { 0x0800 } else { 0x86dd };
        frame.extend(ether_type.to_be_bytes());
        let length_lie = usize::from(self.mutations.contains(&Mutation::IpLengthBeyondFrame));
        match (self.src, self.dst) {
            (IpAddr::V4(s), IpAddr::V4(d)) => {
                let version_ihl = if self
                    .mutations
                    .contains(&Mutation::Ipv4HeaderLengthBelowMinimum)
                {
                    0x43
                } else {
                    0x45
                };
                let mut ip = vec![version_ihl, 0];
                let total_length = self
                    .mutations
                    .iter()
                    .find_map(|m| match m {
                        Mutation::Ipv4TotalLength(len) => Some(*len),
                        _ => None,
                    })
                    .unwrap_or((20 + l4.len() + length_lie) as u16);
                ip.extend(total_length.to_be_bytes());
                ip.extend([0x12, 0x34]);
                ip.extend(self.fragment_field.to_be_bytes());
                ip.extend([self.ttl, self.proto, 0, 0]);
                ip.extend(s.octets());
                ip.extend(d.octets());
                let c = internet_checksum(&ip, 0);
                ip[10..12].copy_from_slice(&c.to_be_bytes());
                frame.extend(ip);
            }
            (IpAddr::V6(s), IpAddr::V6(d)) => {
                let ext = if self.ipv6_hop_by_hop { 8 } else { 0 };
                frame.extend([0x60, 0, 0, 0]);
                frame.extend(((l4.len() + ext + length_lie) as u16).to_be_bytes());
                // Next header 0: hop-by-hop options.
                frame.push(if self.ipv6_hop_by_hop { 0 } else { self.proto });
                frame.push(self.ttl);
                frame.extend(s.octets());
                frame.extend(d.octets());
                if self.ipv6_hop_by_hop {
                    // Next header, length 0 (8 bytes), PadN filling the rest.
                    frame.extend([self.proto, 0, 1, 4, 0, 0, 0, 0]);
                }
            }
            _ => unreachable!("Frame::tcp refuses mixed families"),
        }
        frame.extend(l4);
        frame.resize(frame.len() + self.ethernet_padding, 0);
        for mutation in &self.mutations {
            if let Mutation::OverwriteByte { at, value } = *mutation {
                frame[at] = value;
            }
        }
        if let Some(len) = self.truncate_to {
            frame.truncate(len);
        }
        frame
    }

    /// The TCP or UDP header and payload, checksummed; an ICMP message, checksummed; or the
    /// bare payload.
    fn transport_bytes(&self) -> Vec<u8> {
        if let Some((kind, code)) = self.icmp {
            let mut l4 = vec![kind, code, 0, 0];
            l4.extend(&self.payload);
            // ICMPv6 checksums a pseudo-header too; ICMP (IPv4) the message alone.
            let sum = if self.proto == PROTO_ICMPV6 {
                internet_checksum(&[self.pseudo_header(l4.len()), l4.clone()].concat(), 0)
            } else {
                internet_checksum(&l4, 0)
            };
            l4[2..4].copy_from_slice(&sum.to_be_bytes());
            return l4;
        }
        let mut l4 = Vec::new();
        let checksum_at = match self.proto {
            PROTO_TCP => {
                l4.extend(self.sport.to_be_bytes());
                l4.extend(self.dport.to_be_bytes());
                let words = self
                    .mutations
                    .iter()
                    .find_map(|m| match m {
                        Mutation::TcpDataOffset(words) => Some(*words),
                        _ => None,
                    })
                    .unwrap_or(5);
                // Sequence number 1, no acknowledgment number, data offset, flags, window 65535.
                l4.extend([
                    0,
                    0,
                    0,
                    1,
                    0,
                    0,
                    0,
                    0,
                    (words & 0x0f) << 4,
                    self.tcp_flags,
                    0xff,
                    0xff,
                ]);
                // Checksum, urgent pointer.
                l4.extend([0, 0, 0, 0]);
                Some(16)
            }
            PROTO_UDP => {
                l4.extend(self.sport.to_be_bytes());
                l4.extend(self.dport.to_be_bytes());
                let length = self
                    .mutations
                    .iter()
                    .find_map(|m| match m {
                        Mutation::UdpLength(len) => Some(*len),
                        _ => None,
                    })
                    .unwrap_or((8 + self.payload.len()) as u16);
                l4.extend(length.to_be_bytes());
                l4.extend([0, 0]);
                self.udp_checksum.then_some(6)
            }
            _ => None,
        };
        l4.extend(&self.payload);
        if let Some(at) = checksum_at {
            let mut sum =
                internet_checksum(&[self.pseudo_header(l4.len()), l4.clone()].concat(), 0);
            // UDP sends a computed 0 as 0xffff: 0 means "no checksum".
            if sum == 0 && self.proto == PROTO_UDP {
                sum = 0xffff;
            }
            l4[at..at + 2].copy_from_slice(&sum.to_be_bytes());
        }
        l4
    }

    /// The pseudo-header the transport checksum covers.
    fn pseudo_header(&self, l4_len: usize) -> Vec<u8> {
        let mut pseudo = Vec::new();
        match (self.src, self.dst) {
            (IpAddr::V4(s), IpAddr::V4(d)) => {
                pseudo.extend(s.octets());
                pseudo.extend(d.octets());
                pseudo.extend([0, self.proto]);
                pseudo.extend((l4_len as u16).to_be_bytes());
            }
            (IpAddr::V6(s), IpAddr::V6(d)) => {
                pseudo.extend(s.octets());
                pseudo.extend(d.octets());
                pseudo.extend((l4_len as u32).to_be_bytes());
                pseudo.extend([0, 0, 0, self.proto]);
            }
            _ => unreachable!("Frame::tcp refuses mixed families"),
        }
        pseudo
    }
}

/// A broadcast ARP request (its body all zeros): a frame that is not IP at all.
pub fn arp_request() -> Vec<u8> {
    let mut frame = vec![0xff; 6];
    frame.extend([0x02, 0, 0, 0, 0, 0x09]);
    frame.extend(0x0806u16.to_be_bytes());
    frame.extend([0; 28]);
    frame
}
