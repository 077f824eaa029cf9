//! Wire headers, as far as the load balancer reads or writes them, and bounds-checked access.
//!
//! Fields are byte arrays or `u16` in network byte order: headers sit at 2-byte-aligned offsets
//! in the frame, so no field may need 4-byte alignment.

use aya_ebpf::programs::XdpContext;

pub const ETH_P_IP: u16 = 0x0800;
pub const ETH_P_IPV6: u16 = 0x86dd;
pub const ETH_P_8021Q: u16 = 0x8100;
pub const ETH_P_8021AD: u16 = 0x88a8;

#[repr(C)]
pub struct EthHdr {
    /// As three 16-bit words: copied without a byte-wise memmove.
    pub dst: [u16; 3],
    pub src: [u16; 3],
    /// Network byte order.
    pub ether_type: u16,
}

#[repr(C)]
pub struct VlanHdr {
    pub tci: u16,
    /// Network byte order.
    pub ether_type: u16,
}

#[repr(C)]
pub struct Ipv4Hdr {
    pub version_ihl: u8,
    pub tos: u8,
    pub tot_len: u16,
    pub id: u16,
    /// Flags and fragment offset, network byte order.
    pub frag_off: u16,
    pub ttl: u8,
    pub protocol: u8,
    pub check: u16,
    pub src: [u8; 4],
    pub dst: [u8; 4],
}

#[repr(C)]
pub struct Ipv6Hdr {
    pub version_tc_flow: [u8; 4],
    pub payload_len: u16,
    pub next_header: u8,
    pub hop_limit: u8,
    pub src: [u8; 16],
    pub dst: [u8; 16],
}

/// The first 20 bytes of a TCP header; options are never touched.
#[repr(C)]
pub struct TcpHdr {
    pub sport: u16,
    pub dport: u16,
    pub seq: [u8; 4],
    pub ack: [u8; 4],
    pub off_flags: u16,
    pub window: u16,
    pub check: u16,
    pub urg: u16,
}

#[repr(C)]
pub struct UdpHdr {
    pub sport: u16,
    pub dport: u16,
    pub len: u16,
    pub check: u16,
}

/// The first 8 bytes of an ICMP or ICMPv6 message: for the errors the load balancer
/// translates, the quoted packet follows right after.
#[repr(C)]
pub struct IcmpHdr {
    pub kind: u8,
    pub code: u8,
    pub check: u16,
    /// Unused, or the next-hop MTU (fragmentation needed, packet too big).
    pub rest: [u16; 2],
}

/// A pointer to a `T` at `offset` in the frame, or `None` when the frame is too short.
///
/// The single place packet memory is reached: the comparison against `data_end` is the form
/// the verifier needs to accept every later access through the pointer.
#[inline(always)]
pub fn ptr_at<T>(ctx: &XdpContext, offset: usize) -> Option<*mut T> {
    let start = ctx.data();
    let end = ctx.data_end();
    if start + offset + size_of::<T>() > end {
        return None;
    }
    Some((start + offset) as *mut T)
}

/// An IPv4 address in the packet (2-byte aligned) as a native-endian word, read in halves:
/// BPF has no unaligned loads, and a byte-wise copy would call a slow memmove.
#[inline(always)]
pub unsafe fn packet_word(p: *const [u8; 4]) -> u32 {
    let h = p.cast::<u16>();
    // Little-endian (bpfel): the first half is the low half.
    unsafe { u32::from(h.read()) | (u32::from(h.add(1).read()) << 16) }
}

/// An IPv6 address in the packet as four native-endian words.
#[inline(always)]
pub unsafe fn packet_words(p: *const [u8; 16]) -> [u32; 4] {
    let w = p.cast::<[u8; 4]>();
    unsafe {
        [
            packet_word(w),
            packet_word(w.add(1)),
            packet_word(w.add(2)),
            packet_word(w.add(3)),
        ]
    }
}

/// Writes a native-endian word as an IPv4 address into the packet, in halves.
#[inline(always)]
pub unsafe fn set_packet_word(p: *mut [u8; 4], w: u32) {
    let h = p.cast::<u16>();
    unsafe {
        h.write(w as u16);
        h.add(1).write((w >> 16) as u16);
    }
}

/// Writes four native-endian words as an IPv6 address into the packet.
#[inline(always)]
pub unsafe fn set_packet_words(p: *mut [u8; 16], w: [u32; 4]) {
    let q = p.cast::<[u8; 4]>();
    unsafe {
        set_packet_word(q, w[0]);
        set_packet_word(q.add(1), w[1]);
        set_packet_word(q.add(2), w[2]);
        set_packet_word(q.add(3), w[3]);
    }
}
