//! The connection-table sweeper against the kernel's maps: flows made by the real XDP program
//! (BPF_PROG_TEST_RUN), one pass of the agent's own `Sweeper`, then both halves of each flow
//! (its `CONNTRACK` entry and its `SNAT` entry) looked up. Every test holds a flow that must
//! go beside one that must stay, so a sweeper that deleted nothing fails as surely as one that
//! deleted everything. Needs root.

use std::{
    net::{IpAddr, Ipv4Addr},
    time::Duration,
};

use aya::maps::{HashMap, Map};
use lb_agent::dataplane::MapReader as _;
use lb_common::{Addr, FlowKey, ReverseFlow, conntrack, map_names};
use tests::{
    TestBed,
    bed_config::BedConfig,
    flow_key,
    packet::{ACK, FIN, Frame, SYN},
};

const CLIENT: IpAddr = IpAddr::V4(Ipv4Addr::new(198, 18, 0, 10));
const VIP: IpAddr = IpAddr::V4(Ipv4Addr::new(198, 18, 1, 100));
/// The bed's `far` listener: TCP to one target behind the bed's second NIC.
const FAR_PORT: u16 = 8443;
/// The bed's `dns` listener: UDP to two targets.
const DNS_PORT: u16 = 53;

/// XDP's verdicts for a forwarded frame.
const XDP_TX: u32 = 3;
const XDP_REDIRECT: u32 = 4;

/// The UDP idle timeout of these tests (a config's least is ten seconds).
const UDP_IDLE_S: u32 = 1;
/// Longer than the closed and half-open timeouts of these tests (0 s: over one tick of the
/// flows' coarse clock after their last packet).
const PAST_TCP_TIMEOUTS: Duration = Duration::from_millis(50);
/// Longer than `UDP_IDLE_S`, and than `conntrack::REFRESH_NS` (so a packet then moves the
/// flow's `last_seen` on).
const PAST_UDP_IDLE: Duration = Duration::from_millis(1200);

/// A bed of `config` whose closed and half-open TCP flows are over as soon as they are quiet,
/// and whose UDP flows after `UDP_IDLE_S`; open TCP flows keep the default idle timeout
/// (minutes).
fn bed_of(config: BedConfig) -> TestBed {
    let mut bed = TestBed::with_config(config.build());
    bed.change_settings(|settings| {
        settings.closed_s = 0;
        settings.half_open_s = 0;
        settings.udp_idle_s = UDP_IDLE_S;
    });
    bed
}

fn bed() -> TestBed {
    bed_of(BedConfig::lab())
}

/// A client's TCP flow to the far listener, from `port` (a SYN).
fn tcp_client(port: u16) -> Frame {
    Frame::tcp(CLIENT, port, VIP, FAR_PORT)
}

/// A client's UDP flow to the dns listener, from `port`.
fn udp_client(port: u16) -> Frame {
    Frame::udp(CLIENT, port, VIP, DNS_PORT)
}

/// Runs `frame` and checks the program forwarded it.
fn forward(bed: &mut TestBed, what: &str, frame: &Frame) {
    let (action, _) = bed.run(&frame.build());
    assert!(
        matches!(action, XDP_TX | XDP_REDIRECT),
        "{what}: XDP action {action}, not forwarded"
    );
}

fn ipv4(addr: &Addr) -> IpAddr {
    let [a, b, c, d, ..] = addr.0;
    IpAddr::V4(Ipv4Addr::new(a, b, c, d))
}

/// The target's packet back on `client`'s flow (to the flow's SNAT address and port), with
/// TCP `flags`.
fn target_reply(bed: &TestBed, client: &Frame, flags: u8) -> Frame {
    let key = flow_key(client);
    let flows = bed.dataplane.flows().expect("connection table");
    let (_, flow) = flows
        .iter()
        .find(|(k, _)| *k == key)
        .unwrap_or_else(|| panic!("no flow for client port {}", client.sport()));
    let (backend, port) = (ipv4(&flow.backend), u16::from_be(flow.backend_port));
    let (snat, snat_port) = (ipv4(&flow.snat_addr), u16::from_be(flow.snat_port));
    let reply = if key.proto == lb_common::PROTO_TCP {
        Frame::tcp(backend, port, snat, snat_port)
    } else {
        Frame::udp(backend, port, snat, snat_port)
    };
    reply.flags(flags)
}

/// An open TCP flow from client port `port`: SYN, the target's SYN-ACK.
fn open_tcp(bed: &mut TestBed, port: u16) {
    let client = tcp_client(port);
    forward(bed, "SYN", &client);
    let reply = target_reply(bed, &client, SYN | ACK);
    forward(bed, "SYN-ACK", &reply);
}

/// A closed TCP flow from client port `port`: opened, then the client's FIN.
fn closed_tcp(bed: &mut TestBed, port: u16) {
    open_tcp(bed, port);
    forward(bed, "FIN", &tcp_client(port).flags(FIN | ACK));
}

/// A UDP flow from client port `port` that the target answered once.
fn answered_udp(bed: &mut TestBed, port: u16) {
    let client = udp_client(port);
    forward(bed, "client datagram", &client);
    let reply = target_reply(bed, &client, 0);
    forward(bed, "target datagram", &reply);
}

/// Which halves of `client`'s flow the maps hold: (its `CONNTRACK` entry, a `SNAT` entry that
/// belongs to it).
fn halves(bed: &TestBed, client: &Frame) -> (bool, bool) {
    let key = flow_key(client);
    let forward = bed
        .dataplane
        .flows()
        .expect("connection table")
        .iter()
        .any(|(k, _)| *k == key);
    let reverse = bed
        .dataplane
        .reverse_flows()
        .expect("SNAT entries")
        .iter()
        .any(|(_, r)| conntrack::belongs(r, &key));
    (forward, reverse)
}

const BOTH: (bool, bool) = (true, true);
const NONE: (bool, bool) = (false, false);

/// One sweeper pass over the bed's maps; how many flows it deleted.
fn sweep(bed: &TestBed) -> usize {
    bed.dataplane
        .sweeper()
        .expect("sweeper")
        .sweep()
        .expect("sweep")
}

#[test]
fn a_closed_quiet_tcp_flow_loses_both_halves_and_an_open_one_keeps_them() {
    let mut bed = bed();
    closed_tcp(&mut bed, 30001);
    open_tcp(&mut bed, 30002);
    std::thread::sleep(PAST_TCP_TIMEOUTS);
    assert_eq!(sweep(&bed), 1, "flows swept");
    assert_eq!(halves(&bed, &tcp_client(30001)), NONE, "closed flow");
    assert_eq!(halves(&bed, &tcp_client(30002)), BOTH, "open flow");
}

#[test]
fn a_half_open_flow_loses_both_halves_and_an_answered_one_keeps_them() {
    let mut bed = bed();
    forward(&mut bed, "SYN nobody answers", &tcp_client(30001));
    open_tcp(&mut bed, 30002);
    std::thread::sleep(PAST_TCP_TIMEOUTS);
    assert_eq!(sweep(&bed), 1, "flows swept");
    assert_eq!(halves(&bed, &tcp_client(30001)), NONE, "half-open flow");
    assert_eq!(halves(&bed, &tcp_client(30002)), BOTH, "answered flow");
}

#[test]
fn an_idle_udp_flow_loses_both_halves_and_one_only_the_target_sends_on_keeps_them() {
    let mut bed = bed();
    answered_udp(&mut bed, 40001);
    answered_udp(&mut bed, 40002);
    std::thread::sleep(PAST_UDP_IDLE);
    // Only the target of 40002 still sends (a stream from the server).
    let reply = target_reply(&bed, &udp_client(40002), 0);
    forward(&mut bed, "target datagram after the idle time", &reply);
    assert_eq!(sweep(&bed), 1, "flows swept");
    assert_eq!(halves(&bed, &udp_client(40001)), NONE, "idle flow");
    assert_eq!(
        halves(&bed, &udp_client(40002)),
        BOTH,
        "flow the target sends on"
    );
}

#[test]
fn an_over_flow_whose_port_is_being_taken_over_is_not_swept() {
    let mut bed = bed();
    closed_tcp(&mut bed, 30001);
    closed_tcp(&mut bed, 30002);
    std::thread::sleep(PAST_TCP_TIMEOUTS);
    // 30001's SNAT entry as a CPU leaves it while it writes a new flow into it: its
    // generation odd (see `ReverseFlow::generation`).
    let key = flow_key(&tcp_client(30001));
    let snat_map = Map::from_map_data(bed.program_map(map_names::SNAT)).expect("SNAT");
    let mut snat: HashMap<_, FlowKey, ReverseFlow> = HashMap::try_from(snat_map).expect("SNAT");
    let (port_key, mut entry) = snat
        .iter()
        .map(|item| item.expect("SNAT entry"))
        .find(|(_, r)| conntrack::belongs(r, &key))
        .expect("30001's SNAT entry");
    assert_eq!(entry.generation % 2, 0, "an entry at rest is even");
    entry.generation += 1;
    snat.insert(port_key, entry, 0).expect("write SNAT entry");

    assert_eq!(sweep(&bed), 1, "flows swept");
    assert_eq!(
        halves(&bed, &tcp_client(30001)),
        BOTH,
        "flow being taken over"
    );
    assert_eq!(halves(&bed, &tcp_client(30002)), NONE, "flow at rest");
}

#[test]
fn an_over_flow_the_target_answers_between_the_read_and_the_delete_is_kept() {
    let mut bed = bed();
    answered_udp(&mut bed, 40001);
    answered_udp(&mut bed, 40002);
    std::thread::sleep(PAST_UDP_IDLE);
    let mut sweeper = bed.dataplane.sweeper().expect("sweeper");
    let doomed = sweeper.over_now().expect("read the table");
    assert_eq!(doomed.len(), 2, "both flows are over when read: {doomed:?}");
    let reply = target_reply(&bed, &udp_client(40002), 0);
    forward(&mut bed, "target datagram after the read", &reply);
    assert_eq!(sweeper.delete_unchanged(doomed).expect("delete"), 1);
    assert_eq!(halves(&bed, &udp_client(40001)), NONE, "flow still idle");
    assert_eq!(
        halves(&bed, &udp_client(40002)),
        BOTH,
        "flow answered after the read"
    );
}

#[test]
fn a_port_taken_over_between_the_read_and_the_delete_stays_with_its_new_flow() {
    // Two SNAT ports, one held by an open flow: a new flow can only have one by taking over
    // the closed flow's.
    let mut bed = bed_of(BedConfig::lab().snat_port_range(20000, 20001));
    open_tcp(&mut bed, 30000);
    closed_tcp(&mut bed, 30001);
    std::thread::sleep(PAST_TCP_TIMEOUTS);
    let mut sweeper = bed.dataplane.sweeper().expect("sweeper");
    let doomed = sweeper.over_now().expect("read the table");
    assert_eq!(
        doomed.len(),
        1,
        "the closed flow is over when read: {doomed:?}"
    );
    forward(&mut bed, "SYN of a new flow", &tcp_client(30002));
    assert_eq!(sweeper.delete_unchanged(doomed).expect("delete"), 0);
    assert_eq!(halves(&bed, &tcp_client(30001)), NONE, "taken-over flow");
    assert_eq!(
        halves(&bed, &tcp_client(30002)),
        BOTH,
        "new flow on the port"
    );
    assert_eq!(halves(&bed, &tcp_client(30000)), BOTH, "open flow");
}
