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
const SINGLE_RUNS: usize = 2001;

fn main() {
    // Without the flood guard: the table read below makes 90,000 flows at once.
    let mut bed = TestBed::with_config(BedConfig::lab().new_flow_rate_limit(0).build());
    let client = IpAddr::V4(Ipv4Addr::new(198, 18, 0, 10));
    let vip = IpAddr::V4(Ipv4Addr::new(198, 18, 1, 100));
    let miss = Frame::tcp(client, 40000, vip, 9999).build();
    // The SYN opens the flow; its ACKs are the established path (a SYN that finds its flow
    // is a reused 5-tuple: a new connection, and a slower path).
    let opening = Frame::tcp(client, 40001, vip, 80);
    assert_eq!(bed.run(&opening.build()).0, 3, "new flow not forwarded");
    let established = opening.flags(ACK).build();
    assert_eq!(bed.run(&established).0, 3, "established flow not forwarded");
    let mut median = |name: &'static str, frames: &mut dyn FnMut(usize) -> Vec<u8>, repeat: u32| {
        let mut v: Vec<f64> = (0..ROUNDS)
            .map(|i| bed.run_program(name, &frames(i), repeat).1)
            .collect();
        v.sort_by(f64::total_cmp);
        v[ROUNDS / 2]
    };
    let tx = median(program_names::TX, &mut |_| miss.clone(), REPEAT);
    let pass = median(program_names::PASS, &mut |_| miss.clone(), REPEAT);
    let lb_miss = median(program_names::LB, &mut |_| miss.clone(), REPEAT);
    let lb_est = median(program_names::LB, &mut |_| established.clone(), REPEAT);
    // A new flow needs a table miss on every run, so `repeat` (which would hit the flow its
    // first run made) cannot measure it. Single runs carry a large fixed cost of the syscall's
    // set-up; measure new and established flows both as single runs and add the difference to
    // the established figure above.
    let mut port = 50000u16;
    let mut singles = |fresh: bool| {
        let mut v: Vec<f64> = (0..SINGLE_RUNS)
            .map(|_| {
                let frame = if fresh {
                    port = port.wrapping_add(1).max(1024);
                    Frame::tcp(client, port, vip, 80).build()
                } else {
                    established.clone()
                };
                bed.run_program(program_names::LB, &frame, 1).1
            })
            .collect();
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let single_new = singles(true);
    let single_est = singles(false);
    let lb_new = lb_est + (single_new - single_est);
    println!("XDP per-packet cost, BPF_PROG_TEST_RUN, median of {ROUNDS} rounds of {REPEAT} runs:");
    println!("  trivial XDP_TX program            {tx:7.1} ns");
    println!("  trivial XDP_PASS program          {pass:7.1} ns");
    println!(
        "  lb, no listener (XDP_PASS)        {lb_miss:7.1} ns  ({:.2}x XDP_PASS)",
        lb_miss / pass
    );
    println!(
        "  lb, established flow (full NAT)   {lb_est:7.1} ns  ({:.2}x XDP_TX)",
        lb_est / tx
    );
    println!(
        "  lb, new flow (Maglev, SNAT claim)  {lb_new:7.1} ns  ({:.2}x XDP_TX; single runs: new {single_new:.0} ns, established {single_est:.0} ns)",
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
