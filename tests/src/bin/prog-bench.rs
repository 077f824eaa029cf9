//! ns/packet of the load balancer (BPF_PROG_TEST_RUN with `repeat`) beside a trivial XDP_TX
//! program, for a packet that matches no listener, a new flow and an established flow.
//! Run by `cargo xtask bench l4`; needs root.

use std::net::{IpAddr, Ipv4Addr};

use lb_agent::dataplane::MapReader as _;
use lb_common::program_names;
use tests::{
    TestBed,
    bed_config::BedConfig,
    packet::{ACK, Frame},
};

const REPEAT: u32 = 200_000;
const ROUNDS: usize = 5;
const SINGLE_RUNS: usize = 5001;
/// Frames carry this much payload: `lb_restoring` keeps their first 80 bytes aside.
const PAYLOAD: [u8; 32] = [0x5a; 32];

fn main() {
    // Without the flood guard: the table read below makes 90,000 flows at once.
    let mut bed = TestBed::with_config(BedConfig::lab().new_flow_rate_limit(0).build());
    let client = IpAddr::V4(Ipv4Addr::new(198, 18, 0, 10));
    let vip = IpAddr::V4(Ipv4Addr::new(198, 18, 1, 100));
    let miss = Frame::tcp(client, 40000, vip, 9999).build();
    // The SYN opens the flow; its ACKs are the established path (a SYN that finds its flow
    // is a reused 5-tuple: a new connection, and a slower path).
    let opening = Frame::tcp(client, 40001, vip, 80).payload(&PAYLOAD);
    assert_eq!(bed.run(&opening.build()).0, 3, "new flow not forwarded");
    let established = opening.flags(ACK).build();
    assert_eq!(bed.run(&established).0, 3, "established flow not forwarded");
    let mut median = |name: &'static str, frame: &[u8]| {
        let runs: Vec<((u32, Vec<u8>), f64)> = (0..ROUNDS)
            .map(|_| bed.run_program(name, frame, REPEAT))
            .collect();
        let action = runs[0].0.0;
        let mut v: Vec<f64> = runs.into_iter().map(|(_, ns)| ns).collect();
        v.sort_by(f64::total_cmp);
        (v[ROUNDS / 2], action)
    };
    // `repeat` runs a program again and again on one buffer: fine for a frame it passes
    // untouched; one it rewrites would be another frame from the second run on (an
    // established flow's packet, once NATed, is addressed to the target). The `_restoring`
    // programs put the frame back after each run, at the same cost for both.
    let (tx, _) = median(program_names::TX, &miss);
    let (pass, _) = median(program_names::PASS, &miss);
    let (lb_miss, _) = median(program_names::LB, &miss);
    let (tx_restoring, action) = median(program_names::TX_RESTORING, &established);
    assert_eq!(action, 3, "tx_restoring did not bounce the frame");
    let (lb_restoring, action) = median(program_names::LB_RESTORING, &established);
    assert_eq!(
        action, 3,
        "lb_restoring did not forward the established flow's frame"
    );
    let lb_est = tx + (lb_restoring - tx_restoring);
    // A new flow needs a table miss on every run, which `repeat` cannot give: single runs,
    // each on a fresh frame, interleaved with single runs of the established flow's frame
    // (both pay the same syscall set-up and the same drift of this noisy machine); the
    // difference of their medians is added to the established figure.
    let mut port = 50000u16;
    let (mut s_est, mut s_new) = (Vec::new(), Vec::new());
    for _ in 0..SINGLE_RUNS {
        port = port.wrapping_add(1).max(1024);
        let fresh = Frame::tcp(client, port, vip, 80).payload(&PAYLOAD).build();
        s_est.push(bed.run_program(program_names::LB, &established, 1).1);
        s_new.push(bed.run_program(program_names::LB, &fresh, 1).1);
    }
    let median_of = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (s_est, s_new) = (median_of(s_est), median_of(s_new));
    let lb_new = lb_est + (s_new - s_est);
    println!("XDP per-packet cost, BPF_PROG_TEST_RUN, median of {ROUNDS} rounds of {REPEAT} runs:");
    println!("  trivial XDP_TX program            {tx:7.1} ns");
    println!("  trivial XDP_PASS program          {pass:7.1} ns");
    println!(
        "  lb, no listener (XDP_PASS)        {lb_miss:7.1} ns  ({:.2}x XDP_PASS)",
        lb_miss / pass
    );
    println!(
        "  lb, established flow (full NAT)   {lb_est:7.1} ns  ({:.2}x XDP_TX; restoring runs: lb {lb_restoring:.0} ns, XDP_TX {tx_restoring:.0} ns)",
        lb_est / tx
    );
    println!(
        "  lb, new flow (Maglev, SNAT claim) {lb_new:7.1} ns  ({:.2}x XDP_TX; medians of {SINGLE_RUNS} single runs: new {s_new:.0} ns, established {s_est:.0} ns)",
        lb_new / tx
    );
    conntrack_read(&mut bed);
}

/// How long the agent takes to read the connection table (for `stats`, `flows`, metrics and
/// active-flow counts), batched beside entry by entry, on a table of `FLOWS` flows.
fn conntrack_read(bed: &mut TestBed) {
    // Near the SNAT port capacity (one source address, 3 targets × 31,744 ports): the last
    // new flows find no free port in their 8 tries, so the table holds somewhat fewer.
    const FLOWS: u32 = 90_000;
    let vip = IpAddr::V4(Ipv4Addr::new(198, 18, 1, 100));
    for i in 0..FLOWS {
        // 45,000 source ports on each of two lab clients.
        let client = IpAddr::V4(Ipv4Addr::new(198, 18, 2, 10 + (i / 45_000) as u8));
        let frame = Frame::tcp(client, 10_000 + (i % 45_000) as u16, vip, 80).build();
        bed.run(&frame);
    }
    let reader = bed.dataplane.reader().expect("open the maps for reading");
    let time = |batched: bool| {
        let mut v: Vec<(f64, usize)> = (0..3)
            .map(|_| {
                let start = std::time::Instant::now();
                let n = if batched {
                    reader.flows()
                } else {
                    reader.flows_one_by_one()
                }
                .expect("read the connection table")
                .len();
                (start.elapsed().as_secs_f64() * 1000.0, n)
            })
            .collect();
        v.sort_by(|a, b| a.0.total_cmp(&b.0));
        v[1]
    };
    let (batched, n) = time(true);
    let (walked, m) = time(false);
    assert_eq!(n, m, "both reads see the same table");
    assert!(n > FLOWS as usize / 2, "only {n} flows made");
    println!("Reading the connection table ({n} flows), median of 3:");
    println!("  batched (BPF_MAP_LOOKUP_BATCH)    {batched:8.1} ms");
    println!(
        "  entry by entry                    {walked:8.1} ms  ({:.1}x the batched read)",
        walked / batched
    );
}
