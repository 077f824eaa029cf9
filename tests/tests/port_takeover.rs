//! SNAT port takeover from two CPUs at once: the XDP program run with BPF_PROG_TEST_RUN from
//! two threads pinned to CPUs 0 and 1, both taking over the ports of closed flows in the same
//! microseconds, round after round; after each round the maps (read through the agent's own
//! reader) must show no two live flows on one (SNAT address, port, target). Needs root and two
//! CPUs.

use std::{
    collections::HashMap,
    net::{IpAddr, Ipv4Addr},
    os::fd::{AsFd as _, AsRawFd as _, BorrowedFd, OwnedFd},
    sync::{
        Barrier,
        atomic::{AtomicBool, AtomicU32, Ordering},
    },
    time::{Duration, Instant},
};

use lb_agent::dataplane::MapReader as _;
use lb_common::{Flow, FlowKey, ReverseFlow, program_names};
use tests::{
    TestBed,
    bed_config::BedConfig,
    packet::{ACK, FIN, Frame},
};

/// The bed's `far` listener: one target, so every new flow wants a port of the same four.
const VIP: IpAddr = IpAddr::V4(Ipv4Addr::new(198, 18, 1, 100));
const FAR_PORT: u16 = 8443;
/// Four SNAT ports: each round's eight SYNs fight over them.
const SNAT_PORTS: (u16, u16) = (20000, 20003);
/// New clients per thread and round (twice the ports, so every port is contested).
const SYNS_PER_ROUND: u16 = 4;
/// At most this many rounds, and at most this long.
const ROUNDS: u32 = 500;
const TIME_LIMIT: Duration = Duration::from_secs(15);

/// XDP's verdicts for a forwarded frame (the far target is behind the bed's second NIC).
const XDP_TX: u32 = 3;
const XDP_REDIRECT: u32 = 4;

/// `union bpf_attr` as BPF_PROG_TEST_RUN reads it.
#[repr(C)]
#[derive(Default)]
struct TestRunAttr {
    prog_fd: u32,
    retval: u32,
    data_size_in: u32,
    data_size_out: u32,
    data_in: u64,
    data_out: u64,
    repeat: u32,
    duration: u32,
    ctx_size_in: u32,
    ctx_size_out: u32,
    ctx_in: u64,
    ctx_out: u64,
    flags: u32,
    cpu: u32,
    batch_size: u32,
    _pad: u32,
}

const BPF_PROG_TEST_RUN: libc::c_long = 10;

/// Runs the program once on `frame` as if it arrived on NIC `ifindex`; its XDP action. A
/// raw system call, not aya's `TestRun`: two threads share the program through one
/// descriptor while the test's own thread reads the maps through the bed. An error is
/// returned, not a panic: a sender that panicked would leave the others waiting.
fn run_once(program: BorrowedFd<'_>, ifindex: u32, frame: &[u8]) -> std::io::Result<u32> {
    let mut out = vec![0u8; frame.len() + 256];
    // struct xdp_md: data, data_end, data_meta, ingress_ifindex, rx_queue_index, egress_ifindex.
    let ctx: [u32; 6] = [0, frame.len() as u32, 0, ifindex, 0, 0];
    let mut attr = TestRunAttr {
        prog_fd: program.as_raw_fd() as u32,
        data_size_in: frame.len() as u32,
        data_size_out: out.len() as u32,
        data_in: frame.as_ptr() as u64,
        data_out: out.as_mut_ptr() as u64,
        repeat: 1,
        ctx_size_in: size_of_val(&ctx) as u32,
        ctx_in: ctx.as_ptr() as u64,
        ..TestRunAttr::default()
    };
    // SAFETY: `attr` points at buffers that outlive the call, with their sizes.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_PROG_TEST_RUN,
            &raw mut attr,
            size_of::<TestRunAttr>(),
        )
    };
    if rc == 0 {
        Ok(attr.retval)
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Pins the calling thread to `cpu`.
fn pin_to_cpu(cpu: usize) {
    // SAFETY: a zeroed cpu_set_t is an empty set; CPU_SET and sched_setaffinity only touch it.
    let rc = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set)
    };
    assert_eq!(
        rc,
        0,
        "pinning to CPU {cpu}: {}",
        std::io::Error::last_os_error()
    );
}

/// Makes a closed flow's port free one clock tick after its FIN, not after `closed_timeout`
/// (1 s at least in a config): many takeover rounds a second.
fn close_instantly(bed: &mut TestBed) {
    bed.change_settings(|settings| settings.closed_s = 0);
}

/// The resolution of the clock the data plane stamps flows with (`bpf_ktime_get_coarse_ns`).
fn coarse_tick() -> Duration {
    let mut res = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_getres writes the timespec it is given.
    let rc = unsafe { libc::clock_getres(libc::CLOCK_MONOTONIC_COARSE, &mut res) };
    assert_eq!(rc, 0, "clock_getres");
    Duration::new(res.tv_sec as u64, res.tv_nsec as u32)
}

/// Client `i` of thread `thread` in round `round`: a new 5-tuple every time.
fn client(thread: u8, round: u32, i: u16) -> Frame {
    let src = IpAddr::V4(Ipv4Addr::new(198, 18, 2, 1 + thread));
    let sport = 1024 + (round as u16).wrapping_mul(SYNS_PER_ROUND) % 60000 + i;
    Frame::tcp(src, sport, VIP, FAR_PORT)
}

/// Where a backend's replies to `flow` (of client key `key`) are looked up: its SNAT key.
fn reverse_key(key: &FlowKey, flow: &Flow) -> FlowKey {
    FlowKey {
        src: flow.backend,
        dst: flow.snat_addr,
        sport: flow.backend_port,
        dport: flow.snat_port,
        proto: key.proto,
        family: key.family,
        _pad: [0; 2],
    }
}

/// A client of this test (IPv4) as `198.18.2.1:1041`.
fn client_name(addr: &lb_common::Addr, port_be: u16) -> String {
    let [a, b, c, d, ..] = addr.0;
    format!("{a}.{b}.{c}.{d}:{}", u16::from_be(port_be))
}

/// What is wrong in the maps: two live flows (no FIN seen: every earlier round's flows were
/// closed) on one (SNAT address, port, target), a live flow whose SNAT entry is missing or
/// belongs to another client, or a SNAT entry whose live client holds another port.
fn sharing(flows: &[(FlowKey, Flow)], reverse: &[(FlowKey, ReverseFlow)]) -> Vec<String> {
    let live: Vec<&(FlowKey, Flow)> = flows.iter().filter(|(_, f)| f.closing == 0).collect();
    let reverse: HashMap<FlowKey, ReverseFlow> = reverse.iter().copied().collect();
    let mut problems = Vec::new();
    let mut holders: HashMap<FlowKey, Vec<String>> = HashMap::new();
    for (key, flow) in &live {
        holders
            .entry(reverse_key(key, flow))
            .or_default()
            .push(client_name(&key.src, key.sport));
    }
    for (port_key, clients) in &holders {
        if clients.len() > 1 {
            problems.push(format!(
                "SNAT port {} given to live clients {clients:?} at once",
                u16::from_be(port_key.dport)
            ));
        }
    }
    for (key, flow) in &live {
        let port = u16::from_be(flow.snat_port);
        match reverse.get(&reverse_key(key, flow)) {
            None => problems.push(format!(
                "client {} holds SNAT port {port}, which has no SNAT entry",
                client_name(&key.src, key.sport)
            )),
            Some(r) if r.client != key.src || r.client_port != key.sport => problems.push(format!(
                "client {} holds SNAT port {port}, whose SNAT entry is client {}'s",
                client_name(&key.src, key.sport),
                client_name(&r.client, r.client_port)
            )),
            Some(_) => {}
        }
    }
    let live: HashMap<FlowKey, Flow> = live.into_iter().copied().collect();
    for (port_key, r) in &reverse {
        let client = FlowKey {
            src: r.client,
            dst: r.vip,
            sport: r.client_port,
            dport: r.vip_port,
            proto: port_key.proto,
            family: port_key.family,
            _pad: [0; 2],
        };
        if let Some(flow) = live.get(&client)
            && reverse_key(&client, flow) != *port_key
        {
            problems.push(format!(
                "SNAT port {} points to client {}, which holds port {}",
                u16::from_be(port_key.dport),
                client_name(&r.client, r.client_port),
                u16::from_be(flow.snat_port)
            ));
        }
    }
    problems
}

#[test]
fn concurrent_port_takeover_never_shares_a_port() {
    let config = BedConfig::lab()
        .snat_port_range(SNAT_PORTS.0, SNAT_PORTS.1)
        .closed_timeout(Duration::from_secs(1))
        .build();
    let mut bed = TestBed::with_config(config);
    close_instantly(&mut bed);
    let program: OwnedFd = bed
        .dataplane
        .program(program_names::LB)
        .expect("program")
        .fd()
        .expect("loaded")
        .as_fd()
        .try_clone_to_owned()
        .expect("dup the program's descriptor");
    let ifindex = {
        let name = std::ffi::CString::new("lbt0").expect("name");
        // SAFETY: a valid C string; this thread is inside the bed's namespace.
        unsafe { libc::if_nametoindex(name.as_ptr()) }
    };
    assert_ne!(ifindex, 0, "lbt0");
    // Past one tick of the flows' clock, a closed flow is over.
    let settle = coarse_tick() * 2 + Duration::from_millis(1);

    // The test's thread and the two senders meet at `phase` between the steps of a round; the
    // senders start their SYNs together by spinning on `arrived` (a sleeping barrier would
    // wake them microseconds apart, longer than a takeover takes).
    let phase = Barrier::new(3);
    let arrived = AtomicU32::new(0);
    let stop = AtomicBool::new(false);
    let start = Instant::now();
    let mut rounds = 0;
    let mut claims = 0u64;
    let mut errors = Vec::new();
    let mut problems: Vec<String> = Vec::new();
    std::thread::scope(|s| {
        let senders: Vec<_> = [0u8, 1]
            .into_iter()
            .map(|thread| {
                let (phase, arrived, stop) = (&phase, &arrived, &stop);
                let program = program.as_fd();
                s.spawn(move || {
                    pin_to_cpu(usize::from(thread));
                    let (mut forwarded, mut errors) = (0u64, Vec::new());
                    for round in 0.. {
                        phase.wait(); // round starts
                        if stop.load(Ordering::Acquire) {
                            return (forwarded, errors);
                        }
                        arrived.fetch_add(1, Ordering::AcqRel);
                        let spin_until = Instant::now() + Duration::from_millis(50);
                        while arrived.load(Ordering::Acquire) < 2 * (round + 1)
                            && Instant::now() < spin_until
                        {
                            std::hint::spin_loop();
                        }
                        let opened: Vec<u16> = (0..SYNS_PER_ROUND)
                            .filter(|&i| {
                                let syn = client(thread, round, i).build();
                                match run_once(program, ifindex, &syn) {
                                    Ok(action) => matches!(action, XDP_TX | XDP_REDIRECT),
                                    Err(e) => {
                                        errors.push(e);
                                        false
                                    }
                                }
                            })
                            .collect();
                        forwarded += opened.len() as u64;
                        phase.wait(); // SYNs sent
                        phase.wait(); // maps checked
                        for i in opened {
                            let fin = client(thread, round, i).flags(FIN | ACK).build();
                            if let Err(e) = run_once(program, ifindex, &fin) {
                                errors.push(e);
                            }
                        }
                        phase.wait(); // FINs sent
                    }
                    (forwarded, errors)
                })
            })
            .collect();
        while rounds < ROUNDS && start.elapsed() < TIME_LIMIT && problems.is_empty() {
            phase.wait(); // round starts
            phase.wait(); // SYNs sent
            let flows = bed.dataplane.flows().expect("connection table");
            let reverse = bed.dataplane.reverse_flows().expect("SNAT entries");
            problems = sharing(&flows, &reverse)
                .into_iter()
                .map(|p| format!("round {rounds}: {p}"))
                .collect();
            phase.wait(); // maps checked
            phase.wait(); // FINs sent
            std::thread::sleep(settle);
            rounds += 1;
        }
        stop.store(true, Ordering::Release);
        phase.wait();
        for sender in senders {
            let (forwarded, failed) = sender.join().expect("sender");
            claims += forwarded;
            errors.extend(failed);
        }
    });
    println!(
        "{rounds} rounds in {:?}: {claims} SYNs forwarded (at most {} a round)",
        start.elapsed(),
        SNAT_PORTS.1 - SNAT_PORTS.0 + 1
    );
    assert!(errors.is_empty(), "BPF_PROG_TEST_RUN failed: {errors:?}");
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    // Every round the four ports changed hands: takeover was exercised, not starved.
    assert!(
        claims >= u64::from(rounds) * 2,
        "{claims} SYNs forwarded in {rounds} rounds"
    );
}
