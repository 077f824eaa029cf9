//! The XDP program on crafted frames (BPF_PROG_TEST_RUN), its maps filled by the agent's code.
//! Needs root. Each test builds its own namespace and maps.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    time::Instant,
};

use lb_agent::dataplane::{MapReader as _, Maps as _};

use lb_common::verdict;
use tests::{
    TestBed, flow_key, mac_of,
    packet::{ACK, Frame, inspect},
};

const XDP_ABORTED: u32 = 0;
const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;
const XDP_TX: u32 = 3;
const XDP_REDIRECT: u32 = 4;

const CLIENT4: IpAddr = IpAddr::V4(Ipv4Addr::new(198, 18, 0, 10));
const VIP4: IpAddr = IpAddr::V4(Ipv4Addr::new(198, 18, 1, 100));
const SNAT4: IpAddr = IpAddr::V4(Ipv4Addr::new(198, 18, 0, 1));
const CLIENT6: IpAddr = IpAddr::V6(Ipv6Addr::new(0xfd00, 0x198, 0x18, 0, 0, 0, 0, 0x10));
const VIP6: IpAddr = IpAddr::V6(Ipv6Addr::new(0xfd00, 0x198, 0x18, 1, 0, 0, 0, 0x100));
const SNAT6: IpAddr = IpAddr::V6(Ipv6Addr::new(0xfd00, 0x198, 0x18, 0, 0, 0, 0, 1));

fn last_octet(ip: IpAddr) -> u8 {
    match ip {
        IpAddr::V4(v4) => v4.octets()[3],
        IpAddr::V6(v6) => v6.octets()[15],
    }
}

/// Sends a client frame through the bed and checks the full-NAT rewrite: the predicted
/// backend, our SNAT source, valid checksums, the payload intact, the next hop's MAC.
fn assert_forwarded(
    bed: &mut TestBed,
    name: &str,
    group: &str,
    frame: &Frame,
    snat: IpAddr,
) -> SocketAddr {
    let want = bed.predict_backend(group, &flow_key(frame), false);
    let (action, out) = bed.run(&frame.build());
    assert_eq!(action, XDP_TX, "{name}: verdict");
    let seen = inspect(&out, frame).unwrap_or_else(|e| panic!("{name}: {e}\nout: {out:02x?}"));
    assert_eq!(
        SocketAddr::new(seen.dst, seen.dport),
        want,
        "{name}: backend"
    );
    assert_eq!(seen.src, snat, "{name}: SNAT source address");
    assert!(
        (1024..=32767).contains(&seen.sport),
        "{name}: SNAT port {} outside the range",
        seen.sport
    );
    assert_eq!(seen.payload, frame.payload, "{name}: payload");
    assert_eq!(
        seen.dst_mac,
        mac_of(last_octet(want.ip())),
        "{name}: next-hop MAC"
    );
    want
}

#[test]
fn listener_hits_are_rewritten_to_the_predicted_backend_with_valid_checksums() {
    let mut bed = TestBed::new();
    let rows: Vec<(&str, &str, Frame, IpAddr)> = vec![
        (
            "ipv4 tcp",
            "web",
            Frame::tcp(CLIENT4, 40000, VIP4, 80),
            SNAT4,
        ),
        (
            "ipv4 udp",
            "dns",
            Frame::udp(CLIENT4, 40001, VIP4, 53),
            SNAT4,
        ),
        (
            "ipv6 tcp",
            "web6",
            Frame::tcp(CLIENT6, 40002, VIP6, 80),
            SNAT6,
        ),
        (
            "ipv6 udp",
            "web6",
            Frame::udp(CLIENT6, 40003, VIP6, 80),
            SNAT6,
        ),
        (
            "ipv4 tcp, vlan tag",
            "web",
            Frame {
                vlan: Some(7),
                ..Frame::tcp(CLIENT4, 40004, VIP4, 80)
            },
            SNAT4,
        ),
        (
            "ipv4 udp, no checksum",
            "dns",
            Frame {
                udp_no_checksum: true,
                ..Frame::udp(CLIENT4, 40005, VIP4, 53)
            },
            SNAT4,
        ),
    ];
    for (name, group, frame, snat) in &rows {
        assert_forwarded(&mut bed, name, group, frame, *snat);
    }
    // A UDP datagram sent without a checksum still has none.
    let frame = &rows[5].2;
    let (_, out) = bed.run(&frame.build());
    assert_eq!(
        &out[frame.l4() + 6..frame.l4() + 8],
        &[0, 0],
        "zero UDP checksum kept zero"
    );
    // The VLAN tag is kept.
    let frame = &rows[4].2;
    let (_, out) = bed.run(&frame.build());
    assert_eq!(&out[12..16], &[0x81, 0x00, 0x00, 0x07]);
    let verdicts = bed.dataplane.verdicts().expect("verdicts");
    assert!(verdicts[verdict::FWD_TO_BACKEND as usize] >= rows.len() as u64);
}

#[test]
fn a_backend_behind_another_nic_is_reached_by_redirect() {
    let mut bed = TestBed::new();
    let frame = Frame::tcp(CLIENT4, 40000, VIP4, 8443);
    let (action, out) = bed.run(&frame.build());
    assert_eq!(action, XDP_REDIRECT, "verdict");
    let seen = inspect(&out, &frame).expect("checksums");
    assert_eq!(
        (seen.dst, seen.dport),
        ("198.18.4.21".parse().expect("ip"), 8080)
    );
    assert_eq!(seen.dst_mac, mac_of(21), "next hop behind lbt2");
    assert_eq!(seen.src, SNAT4);
}

#[test]
fn many_flows_spread_over_all_backends_by_the_predicted_hash() {
    let mut bed = TestBed::new();
    let mut seen = std::collections::BTreeMap::new();
    for port in 0..300u16 {
        let frame = Frame::tcp(CLIENT4, 20000 + port, VIP4, 80);
        let backend = assert_forwarded(&mut bed, "spread", "web", &frame, SNAT4);
        *seen.entry(backend).or_insert(0) += 1;
    }
    assert_eq!(seen.len(), 3, "{seen:?}");
    for n in seen.values() {
        assert!((75..=125).contains(n), "uneven: {seen:?}");
    }
}

#[test]
fn the_batched_connection_table_read_sees_every_flow_once() {
    let mut bed = TestBed::new();
    // More flows than one batch holds, so the walk takes several calls.
    let count = 20_000u32;
    for i in 0..count {
        let frame = Frame::tcp(CLIENT4, 10_000 + i as u16, VIP4, 80).build();
        assert_eq!(bed.run(&frame).0, 3, "flow {i} not forwarded");
    }
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
    assert_eq!(batched.len(), count as usize);
    batched.sort_by_key(key);
    walked.sort_by_key(key);
    assert_eq!(batched, walked);
    // The listeners' ports, read in batches too: 80 (TCP over IPv4, TCP and UDP over IPv6),
    // 53 (UDP), 8443 (TCP).
    let (tcp, udp) = (lb_common::port_bits::TCP, lb_common::port_bits::UDP);
    assert_eq!(
        bed.dataplane.ports().expect("ports"),
        [(53, udp), (80, tcp | udp), (8443, tcp)]
    );
}

#[test]
fn a_closed_flow_gives_its_snat_port_to_a_new_flow_after_closed_timeout() {
    // One target and two SNAT ports: two flows fill them.
    let config = tests::TEST_CONFIG.replace(
        "maglev_table_size = 65537",
        "maglev_table_size = 65537\nsnat_port_range = [20000, 20001]\nclosed_timeout = \"1s\"",
    );
    let mut bed = TestBed::with_config(&config);
    let flow = |port: u16| Frame::tcp(CLIENT4, port, VIP4, 8443);
    for port in [30001, 30002] {
        assert_eq!(bed.run(&flow(port).build()).0, XDP_REDIRECT, "flow {port}");
    }
    let third = flow(30003).build();
    assert_eq!(bed.run(&third).0, XDP_DROP, "no SNAT port left: dropped");
    // The first flow closes (a FIN from the client); the second stays open and idle.
    let fin = Frame {
        tcp_flags: 0x11,
        ..flow(30001)
    };
    assert_eq!(
        bed.run(&fin.build()).0,
        XDP_REDIRECT,
        "the FIN is forwarded"
    );
    assert_eq!(
        bed.run(&third).0,
        XDP_DROP,
        "a closing flow keeps its port for closed_timeout"
    );
    std::thread::sleep(std::time::Duration::from_millis(1100));
    assert_eq!(
        bed.run(&third).0,
        XDP_REDIRECT,
        "the closed flow's port serves a new flow"
    );
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
    // The idle open flow (TCP idle timeout: minutes) keeps its port.
    assert_eq!(bed.run(&flow(30004).build()).0, XDP_DROP);
}

#[test]
fn replies_are_reverse_nated_to_the_client() {
    let mut bed = TestBed::new();
    for (name, client, vip, snat, proto, group) in [
        ("ipv4 tcp", CLIENT4, VIP4, SNAT4, 6, "web"),
        ("ipv4 udp", CLIENT4, VIP4, SNAT4, 17, "dns"),
        ("ipv6 tcp", CLIENT6, VIP6, SNAT6, 6, "web6"),
    ] {
        let port = if proto == 17 && client.is_ipv4() {
            53
        } else {
            80
        };
        let request = Frame {
            proto,
            ..Frame::tcp(client, 41000, vip, port)
        };
        let (action, out) = bed.run(&request.build());
        assert_eq!(action, XDP_TX, "{name}");
        let fwd = inspect(&out, &request).expect("request checksums");
        let backend = bed.predict_backend(group, &flow_key(&request), false);
        assert_eq!(SocketAddr::new(fwd.dst, fwd.dport), backend);
        // The backend answers the SNAT address and port.
        let reply = Frame {
            proto,
            payload: b"hello, client".to_vec(),
            ..Frame::tcp(backend.ip(), backend.port(), snat, fwd.sport)
        };
        let (action, out) = bed.run(&reply.build());
        assert_eq!(action, XDP_TX, "{name}: reply verdict");
        let back = inspect(&out, &reply).unwrap_or_else(|e| panic!("{name}: reply {e}"));
        assert_eq!((back.src, back.sport), (vip, port), "{name}: reply source");
        assert_eq!(
            (back.dst, back.dport),
            (client, 41000),
            "{name}: reply destination"
        );
        assert_eq!(
            back.dst_mac,
            mac_of(last_octet(client)),
            "{name}: client MAC"
        );
        assert_eq!(back.payload, b"hello, client");
    }
}

#[test]
fn established_flows_keep_their_backend_when_targets_change() {
    let mut bed = TestBed::new();
    let frames: Vec<Frame> = (0..60)
        .map(|i| Frame::tcp(CLIENT4, 42000 + i, VIP4, 80))
        .collect();
    let first: Vec<(SocketAddr, u16)> = frames
        .iter()
        .map(|f| {
            let (_, out) = bed.run(&f.build());
            let s = inspect(&out, f).expect("checksums");
            (SocketAddr::new(s.dst, s.dport), s.sport)
        })
        .collect();
    let removed: SocketAddr = "198.18.0.21:8080".parse().expect("addr");
    assert!(
        first.iter().any(|(b, _)| *b == removed),
        "no flow went to {removed}"
    );
    bed.state
        .remove_target(&mut bed.dataplane, "web", removed, Instant::now())
        .expect("remove live");
    for (f, (backend, sport)) in frames.iter().zip(&first) {
        let f = Frame {
            tcp_flags: ACK,
            ..f.clone()
        };
        let (_, out) = bed.run(&f.build());
        let s = inspect(&out, &f).expect("checksums");
        assert_eq!(
            (SocketAddr::new(s.dst, s.dport), s.sport),
            (*backend, *sport),
            "established flow moved"
        );
    }
    // A new connection (SYN) that reuses the 5-tuple of a flow to the removed target goes to a
    // live target, not to the stale entry.
    for (f, (backend, _)) in frames
        .iter()
        .zip(&first)
        .filter(|(_, (b, _))| *b == removed)
    {
        let (_, out) = bed.run(&f.build());
        let s = inspect(&out, f).expect("checksums");
        assert_ne!(
            SocketAddr::new(s.dst, s.dport),
            *backend,
            "SYN reused a stale flow"
        );
        assert_eq!(
            SocketAddr::new(s.dst, s.dport),
            bed.predict_backend("web", &flow_key(f), false)
        );
    }
    // New flows avoid the removed target.
    for i in 0..100 {
        let f = Frame::tcp(CLIENT4, 43000 + i, VIP4, 80);
        let (_, out) = bed.run(&f.build());
        let s = inspect(&out, &f).expect("checksums");
        assert_ne!(
            SocketAddr::new(s.dst, s.dport),
            removed,
            "new flow to a removed target"
        );
    }
}

#[test]
fn traffic_without_a_listener_passes_byte_identical() {
    let mut bed = TestBed::new();
    let other = IpAddr::V4(Ipv4Addr::new(198, 18, 0, 1));
    let rows = [
        Frame::tcp(CLIENT4, 40000, VIP4, 81),
        Frame::udp(CLIENT4, 40000, VIP4, 80),
        Frame::tcp(CLIENT4, 40000, other, 22),
        Frame::udp(CLIENT6, 40000, VIP6, 81),
        Frame {
            proto: 1,
            ..Frame::tcp(CLIENT4, 0, VIP4, 0)
        },
        // A fragment to an address that is no VIP.
        Frame {
            frag: 0x2000,
            ..Frame::tcp(CLIENT4, 40000, other, 80)
        },
    ];
    for frame in &rows {
        let bytes = frame.build();
        let (action, out) = bed.run(&bytes);
        assert_eq!(action, XDP_PASS, "{frame:?}");
        assert_eq!(out, bytes, "{frame:?} was modified");
    }
    let arp = [
        vec![0xff; 6],
        vec![2, 0, 0, 0, 0, 9],
        vec![0x08, 0x06],
        vec![0; 28],
    ]
    .concat();
    assert_eq!(bed.run(&arp), (XDP_PASS, arp.clone()));
}

#[test]
fn fragments_and_extension_headers_to_a_vip_are_dropped() {
    let mut bed = TestBed::new();
    let rows = [
        (
            "first fragment",
            Frame {
                frag: 0x2000,
                ..Frame::tcp(CLIENT4, 40000, VIP4, 80)
            },
        ),
        (
            "later fragment",
            Frame {
                frag: 0x0010,
                ..Frame::udp(CLIENT4, 40000, VIP4, 53)
            },
        ),
        (
            "ipv6 hop-by-hop",
            Frame {
                ipv6_hop_by_hop: true,
                ..Frame::tcp(CLIENT6, 40000, VIP6, 80)
            },
        ),
    ];
    for (name, frame) in &rows {
        assert_eq!(bed.run(&frame.build()).0, XDP_DROP, "{name}");
    }
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
fn truncated_and_malformed_frames_never_abort_and_never_reach_a_backend() {
    let mut bed = TestBed::new();
    let seeds = [
        Frame::tcp(CLIENT4, 40000, VIP4, 80),
        Frame::udp(CLIENT4, 40000, VIP4, 53),
        Frame::tcp(CLIENT6, 40000, VIP6, 80),
        Frame {
            vlan: Some(3),
            ..Frame::udp(CLIENT6, 40000, VIP6, 80)
        },
    ];
    let mut rng = Rng(0x5eed_1b0a_7c0f_fee1);
    let mut runs = 0;
    for frame in &seeds {
        let bytes = frame.build();
        // Every truncation: into the headers, or into the payload (the IP length then says
        // more than the frame holds).
        for len in 0..bytes.len() {
            let (action, _) = bed.run(&bytes[..len]);
            runs += 1;
            assert_ne!(action, XDP_ABORTED, "truncated to {len}");
            assert!(
                action == XDP_PASS || action == XDP_DROP,
                "truncated to {len}: verdict {action}"
            );
        }
        // Random corruption of the headers: never aborted.
        for _ in 0..300 {
            let mut b = bytes.clone();
            for _ in 0..1 + rng.next() % 4 {
                let at = (rng.next() as usize) % frame.l4().max(1);
                b[at] = rng.next() as u8;
            }
            b.truncate(14 + (rng.next() as usize) % (b.len() - 13));
            let (action, _) = bed.run(&b);
            runs += 1;
            assert_ne!(action, XDP_ABORTED, "corrupted {b:02x?}");
        }
    }
    // An IP length field that claims more than the frame holds, with complete headers.
    let mut b = seeds[0].build();
    b[17] += 1;
    assert_eq!(
        bed.run(&b).0,
        XDP_DROP,
        "IPv4 total length beyond the frame"
    );
    let mut b = seeds[2].build();
    b[19] += 1;
    assert_eq!(
        bed.run(&b).0,
        XDP_DROP,
        "IPv6 payload length beyond the frame"
    );
    // Ethernet padding after the IP packet is fine.
    let mut b = seeds[0].build();
    b.extend([0; 6]);
    assert_eq!(bed.run(&b).0, XDP_TX, "padded frame");
    // A bad IPv4 header length to a VIP.
    let mut b = seeds[0].build();
    b[14] = 0x43;
    assert_eq!(bed.run(&b).0, XDP_PASS);
    assert!(runs > 1000);
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

#[test]
fn a_weight_zero_target_gets_no_new_flows_and_comes_back_to_the_same_slots() {
    let mut bed = TestBed::new();
    let before = active_table(&bed, "web");
    let idle: SocketAddr = "198.18.0.23:8080".parse().expect("addr");
    bed.state
        .remove_target(&mut bed.dataplane, "web", idle, Instant::now())
        .expect("remove");
    bed.state
        .add_target(&mut bed.dataplane, "web", idle, 0, Instant::now())
        .expect("add with weight 0");
    let idle_id = bed.state.backend_id("web", idle).expect("id");
    assert!(
        !active_table(&bed, "web").contains(&idle_id),
        "weight 0 target holds slots"
    );
    for port in 0..100u16 {
        let frame = Frame::tcp(CLIENT4, 44000 + port, VIP4, 80);
        let (_, out) = bed.run(&frame.build());
        let seen = inspect(&out, &frame).expect("checksums");
        assert_ne!(
            SocketAddr::new(seen.dst, seen.dport),
            idle,
            "new flow to a weight-0 target"
        );
    }
    // Back to weight 1: the original table again (Maglev is deterministic).
    bed.state
        .remove_target(&mut bed.dataplane, "web", idle, Instant::now())
        .expect("remove");
    bed.state
        .add_target(&mut bed.dataplane, "web", idle, 1, Instant::now())
        .expect("add");
    let after = active_table(&bed, "web");
    let moved = before.iter().zip(&after).filter(|(a, b)| a != b).count();
    assert_eq!(moved, 0, "same targets, same table");
}
