//! The XDP program on crafted frames (BPF_PROG_TEST_RUN), its maps filled by the agent's code.
//! Needs root. Each test builds its own namespace and maps.
//!
//! Data-plane tests are tables (`tests::table`): each case a name, a frame from the builder
//! (`tests::packet::Frame`), the expected verdict and what must hold of the output frame; the
//! runner checks every case and then lists each one that failed.

use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    time::{Duration, Instant},
};

use lb_agent::dataplane::{MapReader as _, Maps as _};
use lb_common::verdict;
use tests::{
    TestBed,
    bed_config::BedConfig,
    decode::decode,
    flow_key, host_mac,
    packet::{ACK, FIN, Frame, Mutation, RST, SYN, arp_request},
    table::{Case, Expect, Property, SnatPort, Verdict, run_table},
};

const CLIENT4: IpAddr = IpAddr::V4(Ipv4Addr::new(198, 18, 0, 10));
const VIP4: IpAddr = IpAddr::V4(Ipv4Addr::new(198, 18, 1, 100));
const SNAT4: IpAddr = IpAddr::V4(Ipv4Addr::new(198, 18, 0, 1));
const CLIENT6: IpAddr = IpAddr::V6(Ipv6Addr::new(0xfd00, 0x198, 0x18, 0, 0, 0, 0, 0x10));
const VIP6: IpAddr = IpAddr::V6(Ipv6Addr::new(0xfd00, 0x198, 0x18, 1, 0, 0, 0, 0x100));
const SNAT6: IpAddr = IpAddr::V6(Ipv6Addr::new(0xfd00, 0x198, 0x18, 0, 0, 0, 0, 1));

/// A client's frame to a listener of `group`: sent back out (XDP_TX) to the backend the hash
/// predicts, from our SNAT address `snat`, checksums valid, payload intact, next-hop MAC.
fn forwarded(bed: &TestBed, name: &str, group: &str, frame: &Frame, snat: IpAddr) -> Case {
    let backend = bed.predict_backend(group, &flow_key(frame), false);
    Case::new(
        name,
        frame.build(),
        Expect::verdict(Verdict::Tx).and(Property::forwarded(backend, snat, frame.payload_bytes())),
    )
}

/// The backend and SNAT source port a forwarded frame went to / came from.
fn backend_and_snat_port(output: &[u8]) -> (SocketAddr, u16) {
    let seen = decode(output).unwrap_or_else(|e| panic!("a forwarded frame: {e}"));
    (SocketAddr::new(seen.dst, seen.dport), seen.sport)
}

/// One client frame of each family and transport, to a listener of each.
fn listener_hits(bed: &TestBed) -> Vec<Case> {
    vec![
        forwarded(
            bed,
            "ipv4 tcp",
            "web",
            &Frame::tcp(CLIENT4, 40000, VIP4, 80),
            SNAT4,
        ),
        forwarded(
            bed,
            "ipv4 udp",
            "dns",
            &Frame::udp(CLIENT4, 40001, VIP4, 53),
            SNAT4,
        ),
        forwarded(
            bed,
            "ipv6 tcp",
            "web6",
            &Frame::tcp(CLIENT6, 40002, VIP6, 80),
            SNAT6,
        ),
        forwarded(
            bed,
            "ipv6 udp",
            "web6",
            &Frame::udp(CLIENT6, 40003, VIP6, 80),
            SNAT6,
        ),
        forwarded(
            bed,
            "ipv4 udp, no checksum",
            "dns",
            &Frame::udp(CLIENT4, 40005, VIP4, 53).without_udp_checksum(),
            SNAT4,
        ),
    ]
}

#[test]
fn listener_hits_are_forwarded_to_the_predicted_backend_with_our_snat_source() {
    let mut bed = TestBed::new();
    let cases = listener_hits(&bed);
    run_table(&mut bed, &cases);
}

/// The verdict counters' increase while `f` runs.
fn verdicts_during(bed: &mut TestBed, f: impl FnOnce(&mut TestBed)) -> Vec<u64> {
    let before = bed.dataplane.verdicts().expect("verdicts");
    f(bed);
    let after = bed.dataplane.verdicts().expect("verdicts");
    after.iter().zip(before).map(|(a, b)| a - b).collect()
}

/// Runs `cases`, asserting that the verdict counter `reason` counted every one of them.
fn run_all_counted_as(bed: &mut TestBed, cases: &[Case], reason: u32) {
    let count = cases.len() as u64;
    let counted = verdicts_during(bed, |bed| {
        run_table(bed, cases);
    });
    assert_eq!(counted[reason as usize], count, "{counted:?}");
}

/// A bed with one UDP flow from the IPv4 client's `client_port` to VIP4:53 (`name` names its
/// case); the flow's backend and SNAT source port, for replies to it.
fn bed_with_a_dns_flow(name: &str, client_port: u16) -> (TestBed, SocketAddr, u16) {
    let mut bed = TestBed::new();
    let request = Frame::udp(CLIENT4, client_port, VIP4, 53);
    let first = forwarded(&bed, name, "dns", &request, SNAT4);
    let ran = run_table(&mut bed, &[first]);
    let (backend, snat_port) = backend_and_snat_port(&ran[0].output);
    (bed, backend, snat_port)
}

/// Every case passed byte-identical.
fn all_passed_untouched(cases: Vec<(String, Vec<u8>)>) -> Vec<Case> {
    cases
        .into_iter()
        .map(|(name, bytes)| {
            Case::new(
                name,
                bytes,
                Expect::verdict(Verdict::Pass).and(Property::Unchanged),
            )
        })
        .collect()
}

#[test]
fn vlan_tagged_frames_to_a_listener_or_snat_address_are_passed_untouched_without_a_flow() {
    // The FIB would be asked as if the frame came in untagged on the parent NIC and it would
    // leave with its ingress tag: the kernel's VLAN device forwards it instead.
    // An untagged flow, so that a tagged reply to its SNAT address would have a flow to hit.
    let (mut bed, backend, snat_port) = bed_with_a_dns_flow("untagged request", 40010);
    let cases = all_passed_untouched(vec![
        (
            "ipv4 tcp SYN, vlan 7".into(),
            Frame::tcp(CLIENT4, 40004, VIP4, 80).vlan(7).build(),
        ),
        (
            "ipv6 udp, vlan 3".into(),
            Frame::udp(CLIENT6, 40005, VIP6, 80).vlan(3).build(),
        ),
        (
            "ipv4 udp reply to the snat address, vlan 7".into(),
            Frame::udp(backend.ip(), backend.port(), SNAT4, snat_port)
                .vlan(7)
                .build(),
        ),
    ]);
    run_all_counted_as(&mut bed, &cases, verdict::PASS_VLAN);
    let flows = bed.dataplane.flows().expect("flows");
    assert_eq!(flows.len(), 1, "only the untagged flow: {flows:?}");
}

/// Client frames to listeners whose headers a target's kernel would discard, each named.
fn malformed_frames(dst4: IpAddr, dst6: IpAddr) -> Vec<(String, Vec<u8>)> {
    let tcp4 = || Frame::tcp(CLIENT4, 45000, dst4, 80);
    let udp4 = || Frame::udp(CLIENT4, 45001, dst4, 53);
    let tcp6 = || Frame::tcp(CLIENT6, 45002, dst6, 80);
    let udp6 = || Frame::udp(CLIENT6, 45003, dst6, 80);
    let mut frames: Vec<(String, Vec<u8>)> = Vec::new();
    // A 14-byte payload: a data offset of 15 (60 bytes) lies past the 34-byte segment.
    for words in [0, 1, 4, 15] {
        frames.push((
            format!("ipv4 tcp, data offset {words}"),
            tcp4().mutate(Mutation::TcpDataOffset(words)).build(),
        ));
        frames.push((
            format!("ipv6 tcp, data offset {words}"),
            tcp6().mutate(Mutation::TcpDataOffset(words)).build(),
        ));
    }
    // Total lengths below IP header + TCP header (40): the TCP header lies in padding.
    for len in [10, 20, 39] {
        frames.push((
            format!("ipv4 tcp, total length {len}"),
            tcp4().mutate(Mutation::Ipv4TotalLength(len)).build(),
        ));
    }
    // The datagram is 8 + 14 bytes.
    for len in [0, 7, 21, 23, 1000] {
        frames.push((
            format!("ipv4 udp, udp length {len}"),
            udp4().mutate(Mutation::UdpLength(len)).build(),
        ));
        frames.push((
            format!("ipv6 udp, udp length {len}"),
            udp6().mutate(Mutation::UdpLength(len)).build(),
        ));
    }
    for (outer_type, name) in [(0x88a8, "802.1ad"), (0x8100, "802.1Q-in-802.1Q")] {
        frames.push((
            format!("ipv4 tcp, {name} double tag"),
            tcp4().double_tagged(outer_type, 5, 7).build(),
        ));
        frames.push((
            format!("ipv6 udp, {name} double tag"),
            udp6().double_tagged(outer_type, 5, 7).build(),
        ));
    }
    frames.push(("ipv4 tcp, SYN+FIN".into(), tcp4().flags(SYN | FIN).build()));
    frames.push(("ipv4 tcp, SYN+RST".into(), tcp4().flags(SYN | RST).build()));
    frames.push((
        "ipv6 tcp, SYN+FIN+ACK".into(),
        tcp6().flags(SYN | FIN | ACK).build(),
    ));
    for src in [
        "0.1.2.3",
        "127.0.0.1",
        "224.0.0.1",
        "240.0.0.1",
        "255.255.255.255",
    ] {
        let src: IpAddr = src.parse().expect("address");
        frames.push((
            format!("ipv4 tcp from martian {src}"),
            Frame::tcp(src, 45004, dst4, 80).build(),
        ));
    }
    for src in ["::", "::1", "ff02::1", "::ffff:198.18.0.10"] {
        let src: IpAddr = src.parse().expect("address");
        frames.push((
            format!("ipv6 udp from martian {src}"),
            Frame::udp(src, 45005, dst6, 80).build(),
        ));
    }
    frames
}

#[test]
fn malformed_headers_to_a_vip_are_dropped_before_any_flow_or_snat_port() {
    let mut bed = TestBed::new();
    let cases: Vec<Case> = malformed_frames(VIP4, VIP6)
        .into_iter()
        .map(|(name, bytes)| Case::new(name, bytes, Expect::verdict(Verdict::Drop)))
        .collect();
    run_all_counted_as(&mut bed, &cases, verdict::DROP_MALFORMED);
    let flows = bed.dataplane.flows().expect("flows");
    assert!(flows.is_empty(), "flows created: {flows:?}");
}

#[test]
fn malformed_headers_to_other_addresses_are_passed_untouched() {
    let mut bed = TestBed::new();
    let not_a_vip4 = IpAddr::V4(Ipv4Addr::new(198, 18, 0, 1));
    let not_a_vip6 = IpAddr::V6(Ipv6Addr::new(0xfd00, 0x198, 0x18, 0, 0, 0, 0, 1));
    let cases = all_passed_untouched(malformed_frames(not_a_vip4, not_a_vip6));
    run_table(&mut bed, &cases);
}

#[test]
fn well_formed_edge_cases_are_still_forwarded() {
    let mut bed = TestBed::new();
    // Options: a data offset of 8 words makes 12 NOPs (kind 1) of the payload options.
    let with_options = Frame::tcp(CLIENT4, 46000, VIP4, 80)
        .payload(&[[1u8; 12].as_slice(), b"hello"].concat())
        .mutate(Mutation::TcpDataOffset(8));
    let backend = bed.predict_backend("web", &flow_key(&with_options), false);
    // Only a SYN opens a flow: the ACK below belongs to this one.
    let opening = Frame::tcp(CLIENT4, 46001, VIP4, 80).build();
    assert_eq!(
        Verdict::of(bed.run(&opening).0),
        Verdict::Tx,
        "the flow's SYN"
    );
    let cases = [
        Case::new(
            "ipv4 tcp, data offset 8 (12 bytes of options)",
            with_options.build(),
            Expect::verdict(Verdict::Tx).and(Property::forwarded(backend, SNAT4, b"hello")),
        ),
        forwarded(
            &bed,
            "ipv4 tcp, ACK only (of an open flow)",
            "web",
            &Frame::tcp(CLIENT4, 46001, VIP4, 80).flags(ACK),
            SNAT4,
        ),
        forwarded(
            &bed,
            "ipv6 udp, empty payload",
            "web6",
            &Frame::udp(CLIENT6, 46002, VIP6, 80).payload(b""),
            SNAT6,
        ),
    ];
    run_table(&mut bed, &cases);
}

#[test]
fn forwarded_packets_leave_with_one_less_ttl_and_a_valid_header_checksum() {
    let mut bed = TestBed::new();
    let ttl = |case: Case, ttl: u8| Case {
        expect: case.expect.and(Property::Ttl(ttl)),
        ..case
    };
    let frame4 = Frame::tcp(CLIENT4, 47000, VIP4, 80);
    let cases = [
        ttl(
            forwarded(&bed, "ipv4 tcp, ttl 64", "web", &frame4, SNAT4),
            63,
        ),
        ttl(
            forwarded(
                &bed,
                "ipv4 udp, ttl 2",
                "dns",
                &Frame::udp(CLIENT4, 47001, VIP4, 53).ttl(2),
                SNAT4,
            ),
            1,
        ),
        ttl(
            forwarded(
                &bed,
                "ipv6 tcp, hop limit 255",
                "web6",
                &Frame::tcp(CLIENT6, 47002, VIP6, 80).ttl(255),
                SNAT6,
            ),
            254,
        ),
    ];
    let ran = run_table(&mut bed, &cases);
    // Exact bytes: the frame the builder makes for the rewritten packet with TTL 63 (its
    // IPv4 header checksum computed from scratch), behind the MACs the program chose.
    let (backend, snat_port) = backend_and_snat_port(&ran[0].output);
    let mut want = Frame::tcp(SNAT4, snat_port, backend.ip(), backend.port())
        .ttl(63)
        .build();
    want[..12].copy_from_slice(&ran[0].output[..12]);
    assert_eq!(ran[0].output, want, "ipv4 tcp, ttl 64 → 63, exact bytes");
    // The reply direction too.
    let reply = Frame::tcp(backend.ip(), backend.port(), SNAT4, snat_port)
        .flags(ACK)
        .ttl(64)
        .payload(b"hello, client");
    let case = Case::new(
        "reply, ttl 64",
        reply.build(),
        Expect::verdict(Verdict::Tx).and(Property::Ttl(63)),
    );
    run_table(&mut bed, &[case]);
}

#[test]
fn a_ttl_of_one_or_zero_is_passed_untouched_without_a_flow() {
    let (mut bed, backend, snat_port) = bed_with_a_dns_flow("a flow to reply to", 48000);
    let cases = all_passed_untouched(vec![
        (
            "ipv4 tcp SYN, ttl 1".into(),
            Frame::tcp(CLIENT4, 48001, VIP4, 80).ttl(1).build(),
        ),
        (
            "ipv4 udp, ttl 0".into(),
            Frame::udp(CLIENT4, 48002, VIP4, 53).ttl(0).build(),
        ),
        (
            "ipv6 tcp SYN, hop limit 1".into(),
            Frame::tcp(CLIENT6, 48003, VIP6, 80).ttl(1).build(),
        ),
        (
            "reply to the snat address, ttl 1".into(),
            Frame::udp(backend.ip(), backend.port(), SNAT4, snat_port)
                .ttl(1)
                .build(),
        ),
    ]);
    run_all_counted_as(&mut bed, &cases, verdict::PASS_TTL_EXPIRED);
    let flows = bed.dataplane.flows().expect("flows");
    assert_eq!(flows.len(), 1, "only the first flow: {flows:?}");
}

#[test]
fn a_next_hop_outside_the_redirect_map_is_dropped_and_counted_not_forwarded() {
    // The generic redirect would return XDP_REDIRECT and the kernel would drop the frame where
    // we cannot count it (no XDP transmit there, as on a VLAN device): a drop, counted as one.
    let mut bed = TestBed::new();
    // The far target moves behind a NIC that appeared after the map was filled.
    bed.ip(&[
        "link", "add", "lbt4", "type", "veth", "peer", "name", "lbt5",
    ]);
    bed.ip(&["link", "set", "lbt4", "up"]);
    bed.ip(&["link", "set", "lbt5", "up"]);
    bed.ip(&["addr", "add", "198.18.5.1/24", "dev", "lbt4"]);
    bed.ip(&[
        "route",
        "replace",
        "198.18.4.21/32",
        "via",
        "198.18.5.21",
        "dev",
        "lbt4",
    ]);
    bed.ip(&[
        "neigh",
        "add",
        "198.18.5.21",
        "lladdr",
        "02:00:00:00:00:15",
        "dev",
        "lbt4",
        "nud",
        "permanent",
    ]);
    let case = Case::new(
        "to the far group, now behind lbt4",
        far_flow(49000).build(),
        Expect::verdict(Verdict::Drop),
    );
    let counted = verdicts_during(&mut bed, |bed| {
        run_table(bed, &[case]);
    });
    assert_eq!(counted[verdict::DROP_REDIRECT as usize], 1, "{counted:?}");
    assert_eq!(counted[verdict::FWD_TO_BACKEND as usize], 0, "{counted:?}");
}

#[test]
fn a_udp_datagram_without_checksum_is_forwarded_without_one() {
    let mut bed = TestBed::new();
    let frame = Frame::udp(CLIENT4, 40005, VIP4, 53).without_udp_checksum();
    let case = forwarded(&bed, "ipv4 udp, checksum 0", "dns", &frame, SNAT4);
    let case = Case {
        expect: case.expect.and(Property::NoUdpChecksum),
        ..case
    };
    run_table(&mut bed, &[case]);
}

#[test]
fn forwarded_frames_are_counted_as_forwarded_to_a_backend() {
    let mut bed = TestBed::new();
    let cases = listener_hits(&bed);
    run_table(&mut bed, &cases);
    let verdicts = bed.dataplane.verdicts().expect("verdicts");
    assert!(
        verdicts[verdict::FWD_TO_BACKEND as usize] >= cases.len() as u64,
        "{} forwarded frames counted, {} sent",
        verdicts[verdict::FWD_TO_BACKEND as usize],
        cases.len()
    );
}

#[test]
fn a_backend_behind_another_nic_is_reached_by_redirect() {
    let mut bed = TestBed::new();
    let frame = Frame::tcp(CLIENT4, 40000, VIP4, 8443);
    let far: SocketAddr = "198.18.4.21:8080".parse().expect("addr");
    let case = Case::new(
        "to the far group, behind lbt2",
        frame.build(),
        Expect::verdict(Verdict::Redirect).and(Property::forwarded(
            far,
            SNAT4,
            frame.payload_bytes(),
        )),
    );
    run_table(&mut bed, &[case]);
}

/// 300 new flows from one client to the web listener.
fn three_hundred_new_flows(bed: &TestBed) -> Vec<Case> {
    (0..300u16)
        .map(|i| {
            let frame = Frame::tcp(CLIENT4, 20000 + i, VIP4, 80);
            forwarded(
                bed,
                &format!("flow from port {}", 20000 + i),
                "web",
                &frame,
                SNAT4,
            )
        })
        .collect()
}

#[test]
fn each_new_flow_goes_to_the_backend_the_hash_predicts() {
    let mut bed = TestBed::new();
    let cases = three_hundred_new_flows(&bed);
    run_table(&mut bed, &cases);
}

#[test]
fn new_flows_spread_evenly_over_all_backends() {
    let mut bed = TestBed::new();
    let cases = three_hundred_new_flows(&bed);
    let mut per_backend = BTreeMap::new();
    for ran in run_table(&mut bed, &cases) {
        *per_backend
            .entry(backend_and_snat_port(&ran.output).0)
            .or_insert(0) += 1;
    }
    assert_eq!(per_backend.len(), 3, "{per_backend:?}");
    for n in per_backend.values() {
        assert!((75..=125).contains(n), "uneven: {per_backend:?}");
    }
}

#[test]
fn the_batched_connection_table_read_sees_every_flow_once() {
    // Without the flood guard: the flows come all at once, and every one must be made.
    let mut bed = TestBed::with_config(BedConfig::lab().new_flow_rate_limit(0).build());
    // More flows than one batch holds, so the walk takes several calls.
    let count = 20_000u16;
    let cases: Vec<Case> = (0..count)
        .map(|i| {
            Case::new(
                format!("flow {i}"),
                Frame::tcp(CLIENT4, 10_000 + i, VIP4, 80).build(),
                Expect::verdict(Verdict::Tx),
            )
        })
        .collect();
    run_table(&mut bed, &cases);
    let key = |(k, _): &(lb_common::FlowKey, lb_common::Flow)| {
        (k.src.0, k.sport, k.dst.0, k.dport, k.proto)
    };
    let mut batched = bed.dataplane.flows().expect("batched read");
    let mut walked = bed
        .dataplane
        .reader()
        .expect("reader")
        .flows_one_by_one()
        .expect("entry by entry");
    assert_eq!(batched.len(), usize::from(count));
    batched.sort_by_key(key);
    walked.sort_by_key(key);
    assert_eq!(batched, walked);
}

#[test]
fn the_batched_port_read_sees_every_listeners_port() {
    let bed = TestBed::new();
    // 80 (TCP over IPv4, TCP and UDP over IPv6), 53 (UDP), 8443 (TCP).
    let (tcp, udp) = (lb_common::port_bits::TCP, lb_common::port_bits::UDP);
    assert_eq!(
        bed.dataplane.ports().expect("ports"),
        [(53, udp), (80, tcp | udp), (8443, tcp)]
    );
}

/// A client's flow to the far group (one target), from `port`.
fn far_flow(port: u16) -> Frame {
    Frame::tcp(CLIENT4, port, VIP4, 8443)
}

/// A bed with two SNAT ports (20000-20001) and a closed timeout of 1 s, both ports taken by
/// open flows from client ports 30001 and 30002.
fn both_snat_ports_taken() -> TestBed {
    let config = BedConfig::lab()
        .snat_port_range(20000, 20001)
        .closed_timeout(Duration::from_secs(1))
        .build();
    let mut bed = TestBed::with_config(config);
    let cases: Vec<Case> = [30001, 30002]
        .map(|port| {
            Case::new(
                format!("flow {port} takes a port"),
                far_flow(port).build(),
                Expect::verdict(Verdict::Redirect),
            )
        })
        .to_vec();
    run_table(&mut bed, &cases);
    bed
}

/// The client closes flow 30001 (FIN), which is forwarded.
fn client_closes_the_first_flow() -> Case {
    Case::new(
        "the FIN of flow 30001 is forwarded",
        far_flow(30001).flags(FIN | ACK).build(),
        Expect::verdict(Verdict::Redirect),
    )
}

/// A closing flow's port is free again after closed_timeout (1 s) and a margin.
fn wait_out_closed_timeout() {
    std::thread::sleep(Duration::from_millis(1100));
}

#[test]
fn a_new_flow_is_dropped_when_every_snat_port_is_taken() {
    let mut bed = both_snat_ports_taken();
    let case = Case::new(
        "flow 30003, no SNAT port left",
        far_flow(30003).build(),
        Expect::verdict(Verdict::Drop),
    );
    run_table(&mut bed, &[case]);
}

#[test]
fn a_closing_flow_keeps_its_snat_port_for_closed_timeout() {
    let mut bed = both_snat_ports_taken();
    let cases = [
        client_closes_the_first_flow(),
        Case::new(
            "flow 30003 right after the FIN: still no port",
            far_flow(30003).build(),
            Expect::verdict(Verdict::Drop),
        ),
    ];
    run_table(&mut bed, &cases);
}

#[test]
fn a_closed_flow_gives_its_snat_port_to_a_new_flow_after_closed_timeout() {
    let mut bed = both_snat_ports_taken();
    run_table(&mut bed, &[client_closes_the_first_flow()]);
    wait_out_closed_timeout();
    let case = Case::new(
        "flow 30003 after closed_timeout: the closed flow's port",
        far_flow(30003).build(),
        Expect::verdict(Verdict::Redirect),
    );
    run_table(&mut bed, &[case]);
    let clients: Vec<u16> = bed
        .dataplane
        .flows()
        .expect("flows")
        .iter()
        .map(|(k, _)| u16::from_be(k.sport))
        .collect();
    assert!(
        !clients.contains(&30001),
        "the closed flow's entry is gone: {clients:?}"
    );
    assert!(
        clients.contains(&30002) && clients.contains(&30003),
        "{clients:?}"
    );
}

#[test]
fn an_idle_open_flow_keeps_its_snat_port() {
    let mut bed = both_snat_ports_taken();
    run_table(&mut bed, &[client_closes_the_first_flow()]);
    wait_out_closed_timeout();
    // Flow 30002 stays open and idle (TCP idle timeout: minutes); 30003 takes the port flow
    // 30001 gave back, so 30004 finds none.
    let cases = [
        Case::new(
            "flow 30003 takes the closed flow's port",
            far_flow(30003).build(),
            Expect::verdict(Verdict::Redirect),
        ),
        Case::new(
            "flow 30004: the idle flow 30002 still holds its port",
            far_flow(30004).build(),
            Expect::verdict(Verdict::Drop),
        ),
    ];
    run_table(&mut bed, &cases);
}

#[test]
fn replies_are_reverse_nated_to_the_client() {
    let mut bed = TestBed::new();
    // (name, group, client, VIP and port, SNAT address, protocol)
    let flows = [
        (
            "ipv4 tcp",
            "web",
            CLIENT4,
            SocketAddr::new(VIP4, 80),
            SNAT4,
            6,
        ),
        (
            "ipv4 udp",
            "dns",
            CLIENT4,
            SocketAddr::new(VIP4, 53),
            SNAT4,
            17,
        ),
        (
            "ipv6 tcp",
            "web6",
            CLIENT6,
            SocketAddr::new(VIP6, 80),
            SNAT6,
            6,
        ),
    ];
    let requests: Vec<Case> = flows
        .iter()
        .map(|&(name, group, client, vip, snat, proto)| {
            let frame = Frame::transport(proto, client, 41000, vip.ip(), vip.port());
            forwarded(&bed, &format!("{name} request"), group, &frame, snat)
        })
        .collect();
    let forwarded = run_table(&mut bed, &requests);
    // Each backend answers the SNAT address and port its request came from.
    let replies: Vec<Case> = flows
        .iter()
        .zip(&forwarded)
        .map(|(&(name, _, client, vip, snat, proto), ran)| {
            let (backend, snat_port) = backend_and_snat_port(&ran.output);
            let reply = Frame::transport(proto, backend.ip(), backend.port(), snat, snat_port)
                .payload(b"hello, client");
            Case::new(
                format!("{name} reply"),
                reply.build(),
                Expect::verdict(Verdict::Tx).and(Property::ReverseNated {
                    from: vip,
                    to: SocketAddr::new(client, 41000),
                    client_mac: host_mac(client),
                    payload: b"hello, client".to_vec(),
                }),
            )
        })
        .collect();
    run_table(&mut bed, &replies);
}

/// The target that `sixty_flows_then_a_target_removed` removes.
const REMOVED: &str = "198.18.0.21:8080";

/// A bed where 60 client flows were opened to the web group (some to `REMOVED`), then
/// `REMOVED` was taken out of the group live. Returns the flows' frames and the backend and
/// SNAT port each got.
fn sixty_flows_then_a_target_removed() -> (TestBed, Vec<Frame>, Vec<(SocketAddr, u16)>) {
    let mut bed = TestBed::new();
    let frames: Vec<Frame> = (0..60)
        .map(|i| Frame::tcp(CLIENT4, 42000 + i, VIP4, 80))
        .collect();
    let opening: Vec<Case> = frames
        .iter()
        .map(|f| forwarded(&bed, &format!("flow {} opens", f.sport()), "web", f, SNAT4))
        .collect();
    let first: Vec<(SocketAddr, u16)> = run_table(&mut bed, &opening)
        .iter()
        .map(|ran| backend_and_snat_port(&ran.output))
        .collect();
    let removed: SocketAddr = REMOVED.parse().expect("addr");
    assert!(
        first.iter().any(|(b, _)| *b == removed),
        "no flow went to {removed}"
    );
    bed.state
        .remove_target(&mut bed.dataplane, "web", removed, Instant::now())
        .expect("remove live");
    (bed, frames, first)
}

#[test]
fn established_flows_keep_their_backend_and_snat_port_when_a_target_is_removed() {
    let (mut bed, frames, first) = sixty_flows_then_a_target_removed();
    let cases: Vec<Case> = frames
        .iter()
        .zip(&first)
        .map(|(f, &(backend, snat_port))| {
            let established = f.clone().flags(ACK);
            Case::new(
                format!("established flow {} (was {backend})", f.sport()),
                established.build(),
                Expect::verdict(Verdict::Tx).and(Property::Forwarded {
                    backend,
                    snat: SNAT4,
                    snat_port: SnatPort::Exactly(snat_port),
                    payload: f.payload_bytes().to_vec(),
                    next_hop_mac: host_mac(backend.ip()),
                }),
            )
        })
        .collect();
    run_table(&mut bed, &cases);
}

#[test]
fn a_syn_reusing_a_removed_targets_flow_goes_to_a_live_target() {
    let (mut bed, frames, first) = sixty_flows_then_a_target_removed();
    let removed: SocketAddr = REMOVED.parse().expect("addr");
    // A new connection (SYN) that reuses the 5-tuple of a flow to the removed target goes to
    // the backend the hash picks now, not to the stale entry.
    let cases: Vec<Case> = frames
        .iter()
        .zip(&first)
        .filter(|(_, (backend, _))| *backend == removed)
        .map(|(f, _)| {
            let case = forwarded(
                &bed,
                &format!("new SYN from {}", f.sport()),
                "web",
                f,
                SNAT4,
            );
            Case {
                expect: case.expect.and(Property::NotTo(removed)),
                ..case
            }
        })
        .collect();
    run_table(&mut bed, &cases);
}

#[test]
fn new_flows_avoid_a_removed_target() {
    let (mut bed, _, _) = sixty_flows_then_a_target_removed();
    let removed: SocketAddr = REMOVED.parse().expect("addr");
    let cases: Vec<Case> = (0..100u16)
        .map(|i| {
            Case::new(
                format!("new flow from {}", 43000 + i),
                Frame::tcp(CLIENT4, 43000 + i, VIP4, 80).build(),
                Expect::verdict(Verdict::Tx).and(Property::NotTo(removed)),
            )
        })
        .collect();
    run_table(&mut bed, &cases);
}

#[test]
fn traffic_without_a_listener_passes_byte_identical() {
    let mut bed = TestBed::new();
    let not_a_vip = IpAddr::V4(Ipv4Addr::new(198, 18, 0, 1));
    let passed = || Expect::verdict(Verdict::Pass).and(Property::Unchanged);
    let cases = [
        Case::new(
            "tcp to a VIP port without listener",
            Frame::tcp(CLIENT4, 40000, VIP4, 81).build(),
            passed(),
        ),
        Case::new(
            "udp to a VIP port with a tcp listener only",
            Frame::udp(CLIENT4, 40000, VIP4, 80).build(),
            passed(),
        ),
        Case::new(
            "tcp to an address that is no VIP",
            Frame::tcp(CLIENT4, 40000, not_a_vip, 22).build(),
            passed(),
        ),
        Case::new(
            "ipv6 udp to a VIP port without listener",
            Frame::udp(CLIENT6, 40000, VIP6, 81).build(),
            passed(),
        ),
        Case::new(
            "icmp to a VIP",
            Frame::ip_protocol(CLIENT4, VIP4, 1).build(),
            passed(),
        ),
        Case::new(
            "a fragment to an address that is no VIP",
            Frame::tcp(CLIENT4, 40000, not_a_vip, 80)
                .fragment(0, true)
                .build(),
            passed(),
        ),
        Case::new("arp request", arp_request(), passed()),
    ];
    run_table(&mut bed, &cases);
}

#[test]
fn fragments_to_a_vip_are_dropped() {
    let mut bed = TestBed::new();
    let cases = [
        Case::new(
            "first fragment (more fragments, offset 0)",
            Frame::tcp(CLIENT4, 40000, VIP4, 80)
                .fragment(0, true)
                .build(),
            Expect::verdict(Verdict::Drop),
        ),
        Case::new(
            "later fragment (last, offset 128)",
            Frame::udp(CLIENT4, 40000, VIP4, 53)
                .fragment(128, false)
                .build(),
            Expect::verdict(Verdict::Drop),
        ),
    ];
    run_table(&mut bed, &cases);
}

#[test]
fn ipv6_extension_headers_to_a_vip_are_dropped() {
    let mut bed = TestBed::new();
    let case = Case::new(
        "ipv6 hop-by-hop options before tcp",
        Frame::tcp(CLIENT6, 40000, VIP6, 80)
            .ipv6_hop_by_hop()
            .build(),
        Expect::verdict(Verdict::Drop),
    );
    run_table(&mut bed, &[case]);
}

/// Frames to listeners of each family, transport and tagging, to cut short and corrupt.
fn malformation_seeds() -> [(&'static str, Frame); 4] {
    [
        ("ipv4 tcp", Frame::tcp(CLIENT4, 40000, VIP4, 80)),
        ("ipv4 udp", Frame::udp(CLIENT4, 40000, VIP4, 53)),
        ("ipv6 tcp", Frame::tcp(CLIENT6, 40000, VIP6, 80)),
        (
            "ipv6 udp, vlan 3",
            Frame::udp(CLIENT6, 40000, VIP6, 80).vlan(3),
        ),
    ]
}

#[test]
fn truncated_frames_are_passed_or_dropped_never_aborted_nor_forwarded() {
    let mut bed = TestBed::new();
    // Every truncation: into the headers, or into the payload (the IP length then says more
    // than the frame holds).
    let cases: Vec<Case> = malformation_seeds()
        .iter()
        .flat_map(|(name, frame)| {
            (0..frame.build().len()).map(move |len| {
                Case::new(
                    format!("{name} cut to {len} bytes"),
                    frame.clone().truncate_to(len).build(),
                    Expect::one_of(&[Verdict::Pass, Verdict::Drop]),
                )
            })
        })
        .collect();
    assert!(cases.len() > 250, "{} truncations", cases.len());
    run_table(&mut bed, &cases);
}

/// Deterministic xorshift, so failures reproduce.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

#[test]
fn frames_with_randomly_corrupted_headers_never_abort() {
    let mut bed = TestBed::new();
    let mut rng = Rng(0x5eed_1b0a_7c0f_fee1);
    let mut cases = Vec::new();
    for (name, frame) in malformation_seeds() {
        let len = frame.build().len();
        for i in 0..300 {
            // 1-4 bytes of the Ethernet and IP headers overwritten, then cut somewhere after
            // the Ethernet header.
            let mut corrupted = frame.clone();
            for _ in 0..1 + rng.next() % 4 {
                let at = (rng.next() as usize) % frame.header_len();
                let value = rng.next() as u8;
                corrupted = corrupted.mutate(Mutation::OverwriteByte { at, value });
            }
            let cut = 14 + (rng.next() as usize) % (len - 13);
            cases.push(Case::new(
                format!("{name}, corruption {i}"),
                corrupted.truncate_to(cut).build(),
                Expect::one_of(&Verdict::HANDLED),
            ));
        }
    }
    assert!(cases.len() > 1000, "{} corruptions", cases.len());
    run_table(&mut bed, &cases);
}

#[test]
fn an_ip_length_beyond_the_frame_is_dropped() {
    let mut bed = TestBed::new();
    let cases = [
        Case::new(
            "IPv4 total length one byte beyond the frame",
            Frame::tcp(CLIENT4, 40000, VIP4, 80)
                .mutate(Mutation::IpLengthBeyondFrame)
                .build(),
            Expect::verdict(Verdict::Drop),
        ),
        Case::new(
            "IPv6 payload length one byte beyond the frame",
            Frame::tcp(CLIENT6, 40000, VIP6, 80)
                .mutate(Mutation::IpLengthBeyondFrame)
                .build(),
            Expect::verdict(Verdict::Drop),
        ),
    ];
    run_table(&mut bed, &cases);
}

#[test]
fn ethernet_padding_after_the_ip_packet_is_forwarded() {
    let mut bed = TestBed::new();
    let frame = Frame::tcp(CLIENT4, 40000, VIP4, 80).ethernet_padding(6);
    let case = forwarded(&bed, "ipv4 tcp, 6 bytes of padding", "web", &frame, SNAT4);
    run_table(&mut bed, &[case]);
}

#[test]
fn an_ipv4_header_length_below_the_minimum_is_passed() {
    let mut bed = TestBed::new();
    let case = Case::new(
        "ipv4 tcp to a VIP, header length 12 bytes",
        Frame::tcp(CLIENT4, 40000, VIP4, 80)
            .mutate(Mutation::Ipv4HeaderLengthBelowMinimum)
            .build(),
        Expect::verdict(Verdict::Pass),
    );
    run_table(&mut bed, &[case]);
}

/// The active Maglev table of a group, read back from the map.
fn active_table(bed: &TestBed, group: &str) -> Vec<u32> {
    let id = bed.state.group_id(group).expect("group");
    let slot = bed.dataplane.group(id).expect("group entry").active_slot;
    (0..bed.dataplane.maglev_size())
        .map(|i| bed.dataplane.maglev_entry(id, slot, i).expect("entry"))
        .collect()
}

#[test]
fn refused_target_changes_leave_the_table_untouched() {
    let mut bed = TestBed::new();
    let before = active_table(&bed, "web");
    let dp = &mut bed.dataplane;
    let v6: SocketAddr = "[fd00:198:18::24]:8080".parse().expect("addr");
    let dup: SocketAddr = "198.18.0.21:8080".parse().expect("addr");
    let absent: SocketAddr = "198.18.0.99:8080".parse().expect("addr");
    assert!(
        bed.state
            .add_target(dp, "web", v6, 1, Instant::now())
            .is_err(),
        "IPv6 target in an IPv4 group"
    );
    assert!(
        bed.state
            .add_target(dp, "web", dup, 1, Instant::now())
            .is_err(),
        "duplicate target"
    );
    assert!(
        bed.state
            .add_target(dp, "web", absent, 1001, Instant::now())
            .is_err(),
        "weight out of range"
    );
    assert!(
        bed.state
            .add_target(dp, "nope", absent, 1, Instant::now())
            .is_err(),
        "unknown group"
    );
    assert!(
        bed.state
            .remove_target(dp, "web", absent, Instant::now())
            .is_err(),
        "unregistered target"
    );
    assert_eq!(
        active_table(&bed, "web"),
        before,
        "a refused change moved slots"
    );
    assert_eq!(
        bed.state
            .targets(&bed.dataplane, Some("web"))
            .expect("targets")
            .len(),
        3
    );
}

/// The web target that `set_to_weight_zero` re-registers with weight 0.
const IDLE: &str = "198.18.0.23:8080";

/// Takes `IDLE` out of the web group and registers it again with weight 0.
fn set_to_weight_zero(bed: &mut TestBed) {
    let idle: SocketAddr = IDLE.parse().expect("addr");
    bed.state
        .remove_target(&mut bed.dataplane, "web", idle, Instant::now())
        .expect("remove");
    bed.state
        .add_target(&mut bed.dataplane, "web", idle, 0, Instant::now())
        .expect("add with weight 0");
}

#[test]
fn a_weight_zero_target_gets_no_new_flows() {
    let mut bed = TestBed::new();
    set_to_weight_zero(&mut bed);
    let idle: SocketAddr = IDLE.parse().expect("addr");
    let idle_id = bed.state.backend_id("web", idle).expect("id");
    assert!(
        !active_table(&bed, "web").contains(&idle_id),
        "weight 0 target holds slots"
    );
    let cases: Vec<Case> = (0..100u16)
        .map(|i| {
            Case::new(
                format!("new flow from {}", 44000 + i),
                Frame::tcp(CLIENT4, 44000 + i, VIP4, 80).build(),
                Expect::verdict(Verdict::Tx).and(Property::NotTo(idle)),
            )
        })
        .collect();
    run_table(&mut bed, &cases);
}

#[test]
fn a_target_back_at_weight_one_gets_its_old_slots_back() {
    let mut bed = TestBed::new();
    let before = active_table(&bed, "web");
    set_to_weight_zero(&mut bed);
    let idle: SocketAddr = IDLE.parse().expect("addr");
    bed.state
        .remove_target(&mut bed.dataplane, "web", idle, Instant::now())
        .expect("remove");
    bed.state
        .add_target(&mut bed.dataplane, "web", idle, 1, Instant::now())
        .expect("add");
    // Maglev is deterministic: the same targets give the same table.
    let after = active_table(&bed, "web");
    let moved = before.iter().zip(&after).filter(|(a, b)| a != b).count();
    assert_eq!(moved, 0, "same targets, same table");
}

/// How many packets the data plane counted for `reason`.
fn verdict_count(bed: &TestBed, reason: u32) -> u64 {
    bed.dataplane.verdicts().expect("verdicts")[reason as usize]
}

#[test]
fn a_stray_ack_or_rst_to_a_listener_is_dropped_and_claims_nothing() {
    let mut bed = TestBed::new();
    let cases = [
        Case::new(
            "ack of no flow",
            Frame::tcp(CLIENT4, 45000, VIP4, 80).flags(ACK).build(),
            Expect::verdict(Verdict::Drop),
        ),
        Case::new(
            "rst of no flow",
            Frame::tcp(CLIENT4, 45001, VIP4, 80).flags(RST).build(),
            Expect::verdict(Verdict::Drop),
        ),
        Case::new(
            "ipv6 fin-ack of no flow",
            Frame::tcp(CLIENT6, 45002, VIP6, 80)
                .flags(FIN | ACK)
                .build(),
            Expect::verdict(Verdict::Drop),
        ),
    ];
    run_table(&mut bed, &cases);
    assert_eq!(verdict_count(&bed, verdict::DROP_NO_FLOW), 3);
    assert!(bed.dataplane.flows().expect("flows").is_empty());
    assert!(
        bed.dataplane
            .reverse_flows()
            .expect("reverse flows")
            .is_empty(),
        "a stray segment claimed a SNAT port"
    );
}

#[test]
fn a_syn_then_its_ack_go_to_one_backend_from_one_snat_port() {
    let mut bed = TestBed::new();
    let syn = Frame::tcp(CLIENT4, 45100, VIP4, 80);
    let opening = forwarded(&bed, "syn", "web", &syn, SNAT4);
    let opened = run_table(&mut bed, &[opening]);
    let (backend, snat_port) = backend_and_snat_port(&opened[0].output);
    let ack = syn.clone().flags(ACK);
    let case = Case::new(
        "ack",
        ack.build(),
        Expect::verdict(Verdict::Tx).and(Property::Forwarded {
            backend,
            snat: SNAT4,
            snat_port: SnatPort::Exactly(snat_port),
            payload: ack.payload_bytes().to_vec(),
            next_hop_mac: host_mac(backend.ip()),
        }),
    );
    run_table(&mut bed, &[case]);
    assert_eq!(verdict_count(&bed, verdict::DROP_NO_FLOW), 0);
}

/// The far group's only target, which answers flows of `far_flow`.
const FAR: &str = "198.18.4.21:8080";

/// The far target's reply to the SNAT port `snat_port`, with TCP `flags`.
fn far_reply(snat_port: u16, flags: u8) -> Frame {
    let far: SocketAddr = FAR.parse().expect("addr");
    Frame::tcp(far.ip(), far.port(), SNAT4, snat_port).flags(flags)
}

/// A bed with two SNAT ports (20000-20001) and 1 s closed and half-open timeouts, both ports
/// taken by SYNs from client ports 30001 and 30002; returns the SNAT port of each.
fn both_snat_ports_half_open() -> (TestBed, [u16; 2]) {
    let config = BedConfig::lab()
        .snat_port_range(20000, 20001)
        .closed_timeout(Duration::from_secs(1))
        .half_open_timeout(Duration::from_secs(1))
        .build();
    let mut bed = TestBed::with_config(config);
    let cases: Vec<Case> = [30001, 30002]
        .map(|port| {
            Case::new(
                format!("flow {port} takes a port"),
                far_flow(port).build(),
                Expect::verdict(Verdict::Redirect),
            )
        })
        .to_vec();
    let ran = run_table(&mut bed, &cases);
    let ports = [0, 1].map(|i| backend_and_snat_port(&ran[i].output).1);
    (bed, ports)
}

#[test]
fn a_half_open_flow_gives_its_snat_port_to_a_new_flow_after_half_open_timeout() {
    let (mut bed, [first, _]) = both_snat_ports_half_open();
    // The target answers flow 30001 only: 30002 stays half-open.
    let answer = Case::new(
        "the target answers flow 30001",
        far_reply(first, SYN | ACK).build(),
        Expect::verdict(Verdict::Tx),
    );
    run_table(&mut bed, &[answer]);
    run_table(
        &mut bed,
        &[Case::new(
            "flow 30003 before the half-open timeout: no port",
            far_flow(30003).build(),
            Expect::verdict(Verdict::Drop),
        )],
    );
    std::thread::sleep(Duration::from_millis(1100));
    let cases = [
        Case::new(
            "flow 30003 takes the half-open flow's port",
            far_flow(30003).build(),
            Expect::verdict(Verdict::Redirect),
        ),
        Case::new(
            "flow 30004: the answered flow 30001 keeps its port",
            far_flow(30004).build(),
            Expect::verdict(Verdict::Drop),
        ),
    ];
    run_table(&mut bed, &cases);
}

#[test]
fn a_syn_reusing_a_5_tuple_starts_with_a_clean_reverse_entry() {
    let (mut bed, [first, _]) = both_snat_ports_half_open();
    // The target resets flow 30001 (its reverse entry is marked closing), then the client
    // opens a new connection from the same port: it reuses the entry, and must not inherit
    // the mark (else its port is taken after closed_timeout of quiet and it is cut).
    let cases = [
        Case::new(
            "the target answers flow 30001",
            far_reply(first, SYN | ACK).build(),
            Expect::verdict(Verdict::Tx),
        ),
        Case::new(
            "the target resets flow 30001",
            far_reply(first, RST | ACK).build(),
            Expect::verdict(Verdict::Tx),
        ),
        Case::new(
            "a new SYN from client port 30001",
            far_flow(30001).build(),
            Expect::verdict(Verdict::Redirect).and(Property::Forwarded {
                backend: FAR.parse().expect("addr"),
                snat: SNAT4,
                snat_port: SnatPort::Exactly(first),
                payload: far_flow(30001).payload_bytes().to_vec(),
                next_hop_mac: host_mac(FAR.parse::<SocketAddr>().expect("addr").ip()),
            }),
        ),
    ];
    run_table(&mut bed, &cases);
    let reverse = bed.dataplane.reverse_flows().expect("reverse flows");
    let entry = reverse
        .iter()
        .find(|(k, _)| u16::from_be(k.dport) == first)
        .map(|(_, r)| *r)
        .expect("the reused flow's reverse entry");
    assert_eq!(
        (entry.closing, entry.answered),
        (0, 0),
        "the reverse entry kept the old connection's state: {entry:?}"
    );
    // Past closed_timeout (not the half-open one: the new SYN restarted it, 1 s, so answer
    // first), the flow still holds its port.
    run_table(
        &mut bed,
        &[Case::new(
            "the target answers the new connection",
            far_reply(first, SYN | ACK).build(),
            Expect::verdict(Verdict::Tx),
        )],
    );
    std::thread::sleep(Duration::from_millis(1100));
    let cases = [
        Case::new(
            "flow 30003 takes the half-open flow 30002's port",
            far_flow(30003).build(),
            Expect::verdict(Verdict::Redirect),
        ),
        Case::new(
            "flow 30004: the reused flow 30001 keeps its port",
            far_flow(30004).build(),
            Expect::verdict(Verdict::Drop),
        ),
    ];
    run_table(&mut bed, &cases);
}

/// Keeps the calling thread on the CPU it runs on (the flood guard's budget is per CPU).
fn stay_on_this_cpu() {
    // SAFETY: plain system calls on this thread's own affinity.
    unsafe {
        let cpu = libc::sched_getcpu();
        assert!(cpu >= 0, "sched_getcpu");
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu as usize, &mut set);
        assert_eq!(
            libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set),
            0,
            "sched_setaffinity"
        );
    }
}

#[test]
fn the_flood_guard_drops_new_flows_above_the_rate_and_counts_them() {
    const RATE: u32 = 50;
    let config = BedConfig::lab().new_flow_rate_limit(RATE).build();
    let mut bed = TestBed::with_config(config);
    stay_on_this_cpu();
    let started = Instant::now();
    let mut forwarded = Vec::new();
    let mut dropped = 0u64;
    for port in 46000..46400u16 {
        let frame = Frame::tcp(CLIENT4, port, VIP4, 80);
        match Verdict::of(bed.run(&frame.build()).0) {
            Verdict::Tx => forwarded.push(frame),
            Verdict::Drop => dropped += 1,
            other => panic!("new flow from {port}: {other:?}"),
        }
    }
    // The bucket holds a second's worth and refills at RATE a second meanwhile.
    let refilled = (started.elapsed().as_secs_f64() * f64::from(RATE)).ceil() as usize;
    assert!(
        (RATE as usize..=RATE as usize + refilled).contains(&forwarded.len()),
        "{} of 400 new flows forwarded at {RATE}/s (+{refilled} refilled)",
        forwarded.len()
    );
    assert_eq!(verdict_count(&bed, verdict::DROP_FLOOD), dropped);
    assert_eq!(
        bed.dataplane.flows().expect("flows").len(),
        forwarded.len(),
        "a dropped new flow took table space"
    );
    // Established flows pass the guard: it only meters new ones.
    for frame in &forwarded {
        let (action, _) = bed.run(&frame.clone().flags(ACK).build());
        assert_eq!(Verdict::of(action), Verdict::Tx, "established {frame:?}");
    }
}

#[test]
fn a_full_table_drops_new_flows_and_keeps_every_established_one() {
    const SIZE: u16 = 1024;
    let config = BedConfig::lab()
        .connection_table_size(u32::from(SIZE))
        .build();
    let mut bed = TestBed::with_config(config);
    let flows: Vec<Frame> = (0..SIZE)
        .map(|i| Frame::tcp(CLIENT4, 47000 + i, VIP4, 80))
        .collect();
    for frame in &flows {
        let (action, _) = bed.run(&frame.build());
        assert_eq!(Verdict::of(action), Verdict::Tx, "filling: {frame:?}");
    }
    assert_eq!(bed.dataplane.flow_capacity(), u32::from(SIZE));
    let full = Case::new(
        "a new flow into the full table",
        Frame::tcp(CLIENT4, 49000, VIP4, 80).build(),
        Expect::verdict(Verdict::Drop),
    );
    run_table(&mut bed, &[full]);
    assert_eq!(verdict_count(&bed, verdict::DROP_MAP_FULL), 1);
    for frame in &flows {
        let (action, _) = bed.run(&frame.clone().flags(ACK).build());
        assert_eq!(Verdict::of(action), Verdict::Tx, "established {frame:?}");
    }
}

#[test]
fn l7_listener_packets_go_to_the_stack_while_an_l4_listener_on_the_same_vip_balances() {
    let mut bed = TestBed::with_config(BedConfig::lab().http_listener(8000).build());
    // The proxy's kernel socket needs every packet of the connection, untouched and
    // without a flow: the SYN and what follows it.
    let to_the_proxy = all_passed_untouched(vec![
        (
            "tcp syn to the http listener".into(),
            Frame::tcp(CLIENT4, 40100, VIP4, 8000).flags(SYN).build(),
        ),
        (
            "tcp ack with data to the http listener".into(),
            Frame::tcp(CLIENT4, 40100, VIP4, 8000)
                .flags(ACK)
                .payload(b"GET / HTTP/1.1\r\n\r\n")
                .build(),
        ),
    ]);
    run_all_counted_as(&mut bed, &to_the_proxy, verdict::PASS_TO_STACK);
    let balanced = [forwarded(
        &bed,
        "tcp syn to the l4 listener on the same vip",
        "web",
        &Frame::tcp(CLIENT4, 40101, VIP4, 80).flags(SYN),
        SNAT4,
    )];
    run_table(&mut bed, &balanced);
}
