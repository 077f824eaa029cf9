//! ICMP and ICMPv6 through the full NAT, on crafted frames (BPF_PROG_TEST_RUN): an error about
//! a balanced flow reaches the flow's other end rewritten like the flow, exact bytes; anything
//! else passes untouched, or (broken, to a VIP) is dropped. Needs root.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use lb_agent::dataplane::MapReader as _;
use lb_common::verdict;
use tests::{
    TestBed,
    decode::decode,
    host_mac,
    packet::{ACK, Frame},
    table::{Case, Expect, Property, Verdict, run_table},
};

const CLIENT4: IpAddr = IpAddr::V4(Ipv4Addr::new(198, 18, 0, 10));
const VIP4: IpAddr = IpAddr::V4(Ipv4Addr::new(198, 18, 1, 100));
const SNAT4: IpAddr = IpAddr::V4(Ipv4Addr::new(198, 18, 0, 1));
/// A router on the client's side of the path: where its errors come from.
const ROUTER4: IpAddr = IpAddr::V4(Ipv4Addr::new(198, 18, 0, 2));
const CLIENT6: IpAddr = IpAddr::V6(Ipv6Addr::new(0xfd00, 0x198, 0x18, 0, 0, 0, 0, 0x10));
const VIP6: IpAddr = IpAddr::V6(Ipv6Addr::new(0xfd00, 0x198, 0x18, 1, 0, 0, 0, 0x100));
const ROUTER6: IpAddr = IpAddr::V6(Ipv6Addr::new(0xfd00, 0x198, 0x18, 0, 0, 0, 0, 2));

const TCP: u8 = 6;
const UDP: u8 = 17;

/// ICMP type and code: destination unreachable, fragmentation needed.
const FRAGMENTATION_NEEDED: (u8, u8) = (3, 4);
/// ICMP: destination unreachable, port unreachable.
const PORT_UNREACHABLE: (u8, u8) = (3, 3);
/// ICMP: time exceeded in transit.
const TIME_EXCEEDED: (u8, u8) = (11, 0);
/// ICMPv6: packet too big.
const PACKET_TOO_BIG: (u8, u8) = (2, 0);
/// ICMPv6: destination unreachable, port unreachable.
const PORT_UNREACHABLE6: (u8, u8) = (1, 4);
/// ICMP: echo request.
const ECHO_REQUEST: (u8, u8) = (8, 0);

/// The next-hop MTU a router reports.
const MTU: u32 = 1280;
/// How much of the offending packet an IPv4 error quotes (Linux: up to 576 bytes in all).
const LONG_QUOTE4: usize = 548;
/// RFC 792's minimum: the IPv4 header and 8 bytes, no TCP checksum among them.
const SHORT_QUOTE4: usize = 28;
/// How much an IPv6 error quotes (as much as fits in 1280 bytes).
const QUOTE6: usize = 1232;

/// A flow opened through the bed: both ends' addresses as the program rewrote them.
struct Flow {
    proto: u8,
    client: SocketAddr,
    vip: SocketAddr,
    backend: SocketAddr,
    /// The SNAT address and port towards the backend.
    snat: SocketAddr,
}

impl Flow {
    /// The TCP flow from the IPv4 client's port 45000 to VIP4:80.
    fn web4(bed: &mut TestBed) -> Self {
        Self::open(
            bed,
            TCP,
            SocketAddr::new(CLIENT4, 45000),
            SocketAddr::new(VIP4, 80),
        )
    }

    /// The TCP flow from the IPv6 client's port 45002 to VIP6:80.
    fn web6(bed: &mut TestBed) -> Self {
        Self::open(
            bed,
            TCP,
            SocketAddr::new(CLIENT6, 45002),
            SocketAddr::new(VIP6, 80),
        )
    }

    /// Opens a flow from `client` to `vip` (a SYN, or a first datagram).
    fn open(bed: &mut TestBed, proto: u8, client: SocketAddr, vip: SocketAddr) -> Self {
        let first = Frame::transport(proto, client.ip(), client.port(), vip.ip(), vip.port());
        let ran = run_table(
            bed,
            &[Case::new(
                "the flow's first packet",
                first.build(),
                Expect::verdict(Verdict::Tx),
            )],
        );
        let seen = decode(&ran[0].output).unwrap_or_else(|e| panic!("forwarded frame: {e}"));
        Self {
            proto,
            client,
            vip,
            backend: SocketAddr::new(seen.dst, seen.dport),
            snat: SocketAddr::new(seen.src, seen.sport),
        }
    }

    /// A full-size packet of the flow from `from` to `to`, as it crossed one side of the load
    /// balancer.
    fn packet(&self, from: SocketAddr, to: SocketAddr) -> Frame {
        Frame::transport(self.proto, from.ip(), from.port(), to.ip(), to.port())
            .flags(ACK)
            .payload(&[0xab; 1200])
    }
}

/// The first `len` bytes of `frame`'s IP packet: what an ICMP error quotes.
fn quote(frame: &Frame, len: usize) -> Vec<u8> {
    let mut packet = frame.ip_packet();
    packet.truncate(len);
    packet
}

/// An ICMP message of `kind` (type and code).
fn icmp(src: IpAddr, dst: IpAddr, kind: (u8, u8), rest: u32, quoted: &[u8]) -> Frame {
    Frame::icmp(src, dst, kind.0, kind.1, rest, quoted)
}

/// `frame` as the program sends it out of the bed's NIC to `dst`'s MAC.
fn sent(bed: &TestBed, frame: &Frame, dst: IpAddr) -> Vec<u8> {
    let mut bytes = frame.build();
    bytes[..6].copy_from_slice(&host_mac(dst));
    bytes[6..12].copy_from_slice(&bed.nic_mac());
    bytes
}

/// An error from the client's side of the path, to the VIP, about a packet of `flow` the VIP
/// sent: it must reach the backend from the SNAT address, quoting the packet as the backend
/// sent it, every checksum right.
fn to_backend(
    bed: &TestBed,
    name: &str,
    flow: &Flow,
    router: IpAddr,
    kind: (u8, u8),
    quoted: usize,
) -> Case {
    let about = quote(&flow.packet(flow.vip, flow.client), quoted);
    let want = quote(&flow.packet(flow.backend, flow.snat), quoted);
    let rest = if kind == FRAGMENTATION_NEEDED || kind == PACKET_TOO_BIG {
        MTU
    } else {
        0
    };
    Case::new(
        name,
        icmp(router, flow.vip.ip(), kind, rest, &about).build(),
        Expect::verdict(Verdict::Tx).and(Property::Bytes(sent(
            bed,
            // Forwarded like any packet: one hop less.
            &icmp(flow.snat.ip(), flow.backend.ip(), kind, rest, &want).ttl(63),
            flow.backend.ip(),
        ))),
    )
}

/// An error from the backend's side, to the SNAT address, about a packet of `flow` the SNAT
/// address sent: it must reach the client from the VIP, quoting the packet as the client sent
/// it.
fn to_client(bed: &TestBed, name: &str, flow: &Flow, kind: (u8, u8), quoted: usize) -> Case {
    let about = quote(&flow.packet(flow.snat, flow.backend), quoted);
    let want = quote(&flow.packet(flow.client, flow.vip), quoted);
    Case::new(
        name,
        icmp(flow.backend.ip(), flow.snat.ip(), kind, 0, &about).build(),
        Expect::verdict(Verdict::Tx).and(Property::Bytes(sent(
            bed,
            &icmp(flow.vip.ip(), flow.client.ip(), kind, 0, &want).ttl(63),
            flow.client.ip(),
        ))),
    )
}

#[test]
fn icmp_errors_about_a_flow_reach_its_other_end_rewritten_like_the_flow() {
    let mut bed = TestBed::new();
    let web4 = Flow::web4(&mut bed);
    let dns4 = Flow::open(
        &mut bed,
        UDP,
        SocketAddr::new(CLIENT4, 45001),
        SocketAddr::new(VIP4, 53),
    );
    let web6 = Flow::web6(&mut bed);
    let udp6 = Flow::open(
        &mut bed,
        UDP,
        SocketAddr::new(CLIENT6, 45003),
        SocketAddr::new(VIP6, 80),
    );
    let cases = [
        to_backend(
            &bed,
            "ipv4 tcp: fragmentation needed, 28 bytes quoted (no TCP checksum)",
            &web4,
            ROUTER4,
            FRAGMENTATION_NEEDED,
            SHORT_QUOTE4,
        ),
        to_backend(
            &bed,
            "ipv4 tcp: fragmentation needed, 548 bytes quoted",
            &web4,
            ROUTER4,
            FRAGMENTATION_NEEDED,
            LONG_QUOTE4,
        ),
        to_backend(
            &bed,
            "ipv4 udp: time exceeded on the client's side",
            &dns4,
            ROUTER4,
            TIME_EXCEEDED,
            LONG_QUOTE4,
        ),
        to_client(
            &bed,
            "ipv4 tcp: time exceeded on the backend's side",
            &web4,
            TIME_EXCEEDED,
            LONG_QUOTE4,
        ),
        to_client(
            &bed,
            "ipv4 udp: the backend's port unreachable",
            &dns4,
            PORT_UNREACHABLE,
            LONG_QUOTE4,
        ),
        to_backend(
            &bed,
            "ipv6 tcp: packet too big",
            &web6,
            ROUTER6,
            PACKET_TOO_BIG,
            QUOTE6,
        ),
        to_client(
            &bed,
            "ipv6 tcp: the backend's destination unreachable",
            &web6,
            PORT_UNREACHABLE6,
            QUOTE6,
        ),
        to_client(
            &bed,
            "ipv6 udp: the backend's port unreachable, 48 bytes quoted",
            &udp6,
            PORT_UNREACHABLE6,
            48,
        ),
    ];
    run_table(&mut bed, &cases);
    let verdicts = bed.dataplane.verdicts().expect("verdicts");
    assert_eq!(verdicts[verdict::FWD_ICMP_TO_BACKEND as usize], 4);
    assert_eq!(verdicts[verdict::FWD_ICMP_TO_CLIENT as usize], 4);
}

#[test]
fn icmp_that_is_no_error_about_a_known_flow_passes_untouched() {
    let mut bed = TestBed::new();
    let web4 = Flow::web4(&mut bed);
    // The same flow but for the client's port: never opened.
    let unknown = Flow {
        client: SocketAddr::new(CLIENT4, 45999),
        ..web4
    };
    let passed = || Expect::verdict(Verdict::Pass).and(Property::Unchanged);
    let cases = [
        Case::new(
            "fragmentation needed about no flow, to the VIP",
            icmp(
                ROUTER4,
                VIP4,
                FRAGMENTATION_NEEDED,
                MTU,
                &quote(&unknown.packet(unknown.vip, unknown.client), SHORT_QUOTE4),
            )
            .build(),
            passed(),
        ),
        Case::new(
            "port unreachable about no flow, to the SNAT address",
            icmp(
                unknown.backend.ip(),
                SNAT4,
                PORT_UNREACHABLE,
                0,
                &quote(
                    &unknown.packet(SocketAddr::new(SNAT4, 1), unknown.backend),
                    SHORT_QUOTE4,
                ),
            )
            .build(),
            passed(),
        ),
        Case::new(
            "echo request to the VIP",
            icmp(CLIENT4, VIP4, ECHO_REQUEST, 0x0001_0001, b"ping").build(),
            passed(),
        ),
        Case::new(
            "fragmentation needed to an address that is no VIP",
            icmp(
                ROUTER4,
                CLIENT4,
                FRAGMENTATION_NEEDED,
                MTU,
                &quote(&web4.packet(web4.vip, web4.client), SHORT_QUOTE4),
            )
            .build(),
            passed(),
        ),
    ];
    run_table(&mut bed, &cases);
}

#[test]
fn truncated_or_inconsistent_icmp_to_a_vip_is_dropped() {
    let mut bed = TestBed::new();
    let web4 = Flow::web4(&mut bed);
    let web6 = Flow::web6(&mut bed);
    let about4 = web4.packet(web4.vip, web4.client);
    let dropped = || Expect::verdict(Verdict::Drop);
    let cases = [
        Case::new(
            "an ICMP header of 4 bytes",
            Frame::ip_protocol(ROUTER4, VIP4, 1)
                .payload(&[3, 4, 0xfc, 0xfb])
                .build(),
            dropped(),
        ),
        Case::new(
            "fragmentation needed quoting 22 bytes: the ports cut",
            icmp(
                ROUTER4,
                VIP4,
                FRAGMENTATION_NEEDED,
                MTU,
                &quote(&about4, 22),
            )
            .build(),
            dropped(),
        ),
        Case::new(
            "packet too big quoting 44 bytes: the ports cut",
            icmp(
                ROUTER6,
                VIP6,
                PACKET_TOO_BIG,
                MTU,
                &quote(&web6.packet(web6.vip, web6.client), 44),
            )
            .build(),
            dropped(),
        ),
        Case::new(
            "fragmentation needed quoting a packet the VIP did not send",
            icmp(
                ROUTER4,
                VIP4,
                FRAGMENTATION_NEEDED,
                MTU,
                &quote(&web4.packet(web4.client, web4.vip), SHORT_QUOTE4),
            )
            .build(),
            dropped(),
        ),
    ];
    run_table(&mut bed, &cases);
    let verdicts = bed.dataplane.verdicts().expect("verdicts");
    assert_eq!(verdicts[verdict::DROP_ICMP as usize], cases.len() as u64);
}
