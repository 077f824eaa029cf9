//! Hostile traffic at the load balancer's listeners, in a namespace lab with real XDP: floods
//! of stray segments and of SYNs, with spoofed sources, from a raw socket in the client
//! (`tests::flood`). What must hold: junk claims no connection-table entry or SNAT port, a
//! flood at one listener leaves the others' connections (old and new) alone, and the table's
//! fill stays bounded. Needs root; one test at a time.

use std::{
    io::{BufRead as _, Write as _},
    net::{Ipv4Addr, SocketAddrV4},
    path::PathBuf,
    time::{Duration, Instant},
};

use lb_common::{FlowKey, ReverseFlow, map_names};
use tests::{
    agent_views::AgentViews as _,
    flood::{Flood, FloodKind, FloodSpec},
    lab_configs::ECHO_ON_B1,
    lab_traffic::lab_with_agent,
};
use xtask::{
    agent::LabAgent,
    lab::{Lab, VIP4, python3},
};

/// The names these tests read of the connection-table guards, in one place: the verdict
/// counter of a TCP segment that is no SYN and belongs to no flow (dropped, claiming
/// nothing)...
const DROP_NO_FLOW: &str = "drop_no_flow";
/// ...the verdict counter of a new flow over its listener's rate guard...
const DROP_FLOOD: &str = "drop_flood";
/// ...and the `[agent]` field that sets that guard (new flows a second one listener may start
/// on one CPU).
const NEW_FLOW_RATE_LIMIT: &str = "new_flow_rate_limit";

/// The lab client's own address: floods use it beside spoofed ones.
const CLIENT: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 10);
/// Lab addresses no host has: spoofed sources, nobody answers for them.
const SPOOFED: [Ipv4Addr; 3] = [
    Ipv4Addr::new(198, 18, 0, 201),
    Ipv4Addr::new(198, 18, 0, 202),
    Ipv4Addr::new(198, 18, 0, 203),
];
/// Floods draw their source ports from here; real clients in these tests bind ports below.
const FLOOD_PORTS: std::ops::RangeInclusive<u16> = 40000..=65535;
/// A real client's connection must be served within this: no SYN retransmission (1 s).
const AT_ONCE: Duration = Duration::from_secs(1);

/// `name`'s count in `stats --json`, 0 when the agent does not know it.
fn verdict(agent: &LabAgent, name: &str) -> u64 {
    agent.stats().verdicts.get(name).copied().unwrap_or(0)
}

/// `count` connections from the client to VIP4:`port`, from source ports `first_port`,
/// `first_port + 1`, ..., `gap` apart; each must connect and read the backend's greeting
/// within `AT_ONCE`. Returns the greetings, or a panic listing every attempt, `when`, and the
/// agent's verdict counters.
fn connect_at_once(
    lab: &Lab,
    agent: &LabAgent,
    port: u16,
    first_port: u16,
    count: u16,
    gap: Duration,
    when: &str,
) -> Vec<String> {
    let timeout = AT_ONCE.as_secs_f64();
    let gap = gap.as_secs_f64();
    let script = format!(
        "import socket, time\n\
         for i in range({count}):\n\
         \x20   t = time.monotonic()\n\
         \x20   try:\n\
         \x20       s = socket.create_connection(('{VIP4}', {port}), timeout={timeout}, source_address=('', {first_port} + i))\n\
         \x20       name = s.makefile('r').readline().strip()\n\
         \x20       s.close()\n\
         \x20       print('ok' if name else 'closed', name, round(time.monotonic() - t, 3), flush=True)\n\
         \x20   except OSError as e:\n\
         \x20       print('failed', repr(e), round(time.monotonic() - t, 3), flush=True)\n\
         \x20   time.sleep({gap})\n"
    );
    let out = lab
        .run(lab.client(), &[python3(), "-c", &script])
        .unwrap_or_else(|e| panic!("connections {when}: {e:#}"));
    let attempts: Vec<&str> = out.lines().collect();
    assert!(
        attempts.len() == usize::from(count) && attempts.iter().all(|a| a.starts_with("ok ")),
        "every connection {when} is served within {AT_ONCE:?}; attempts (result, greeting or \
         error, seconds):\n{out}verdicts: {:?}",
        agent.stats().verdicts
    );
    attempts
        .iter()
        .filter_map(|a| a.split_whitespace().nth(1).map(str::to_owned))
        .collect()
}

/// Where `LabAgent` pins the data plane's map `name` (in the lab's own BPF filesystem).
fn pinned_map(lab: &Lab, name: &str) -> PathBuf {
    lab.bpffs()
        .expect("the lab's bpffs")
        .join("lb-agent/maps")
        .join(name)
}

/// Every reverse-NAT (SNAT port) entry, read from the agent's pinned map: each one is a
/// claimed SNAT port.
fn snat_entries(lab: &Lab) -> Vec<(FlowKey, ReverseFlow)> {
    let path = pinned_map(lab, map_names::SNAT);
    let data =
        aya::maps::MapData::from_pin(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let map = aya::maps::Map::from_map_data(data).expect("the SNAT map");
    let map: aya::maps::HashMap<_, FlowKey, ReverseFlow> =
        aya::maps::HashMap::try_from(&map).expect("SNAT: FlowKey to ReverseFlow");
    map.iter()
        .collect::<Result<_, _>>()
        .expect("reading the SNAT map")
}

/// How many CPUs the kernel runs (the rate guard is per CPU).
fn online_cpus() -> u64 {
    // SAFETY: sysconf reads a system value.
    let n = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) };
    u64::try_from(n).unwrap_or(1).max(1)
}

#[test]
fn stray_acks_and_resets_claim_no_snat_port() {
    // 16 SNAT ports towards the one target: 16 stray segments that each claimed one would
    // lock every client out (for tcp_idle_timeout: 350 s). A real client's closed
    // connection gives its port back 1 s after its FIN, so it never needs more than a few.
    let config = format!(
        r#"
[agent]
snat_port_range = [20000, 20015]
closed_timeout = "1s"
{ECHO_ON_B1}"#
    );
    let (lab, agent) = lab_with_agent("stray", 1, &config);
    let no_flow_before = verdict(&agent, DROP_NO_FLOW);
    let flood = Flood::start(
        &lab,
        &FloodSpec {
            kind: FloodKind::StrayAcksAndResets,
            target: SocketAddrV4::new(VIP4, 80),
            sources: [CLIENT].into_iter().chain(SPOOFED).collect(),
            source_ports: FLOOD_PORTS,
            duration: Duration::from_secs(6),
            max_packets: 15_000,
            packets_per_second: 2500,
        },
    );
    // Let the flood take hold first: on a table that keeps junk, the ports are gone by now.
    std::thread::sleep(Duration::from_millis(800));
    let during = connect_at_once(
        &lab,
        &agent,
        80,
        31000,
        8,
        Duration::from_millis(250),
        "during the flood",
    );
    assert!(
        flood.is_running(&lab),
        "the flood ended before the connections made during it (machine too slow?)"
    );
    let sent = flood.finish(&lab);
    let after = connect_at_once(
        &lab,
        &agent,
        80,
        32000,
        8,
        Duration::from_millis(250),
        "after the flood",
    );
    println!("{sent} stray segments; served during: {during:?}, after: {after:?}");
    assert!(sent >= 5000, "the flood sent only {sent} segments");

    let no_flow = verdict(&agent, DROP_NO_FLOW) - no_flow_before;
    let stats = agent.stats();
    assert!(
        no_flow >= sent / 2,
        "{sent} stray segments sent, {no_flow} counted as {DROP_NO_FLOW}: {:?}",
        stats.verdicts
    );
    // The table holds the real client's 16 connections at most: none of the flood's.
    let flows = agent.flows();
    let real = |port: u16| (31000..31008).contains(&port) || (32000..32008).contains(&port);
    let junk: Vec<_> = flows
        .iter()
        .filter(|f| f.client.ip() != std::net::IpAddr::V4(CLIENT) || !real(f.client.port()))
        .collect();
    assert!(
        stats.flows <= 16 && junk.is_empty(),
        "{} entries in the connection table; not the real client's: {} (first: {:?})",
        stats.flows,
        junk.len(),
        junk.first()
    );
    let claimed = snat_entries(&lab);
    let junk_ports: Vec<_> = claimed
        .iter()
        .filter(|(_, r)| !real(u16::from_be(r.client_port)))
        .collect();
    assert!(
        claimed.len() <= 16 && junk_ports.is_empty(),
        "{} SNAT ports claimed; for the flood: {} (first: {:?})",
        claimed.len(),
        junk_ports.len(),
        junk_ports.first()
    );
}

/// An established TCP connection from the client through a listener, left idle until told
/// to echo.
struct IdleConnection {
    child: std::process::Child,
    stdin: std::process::ChildStdin,
    lines: std::io::Lines<std::io::BufReader<std::process::ChildStdout>>,
}

impl IdleConnection {
    /// Connects to VIP4:`port` and reads the backend's greeting; the connection then sits
    /// idle (for at most 120 s).
    fn open(lab: &Lab, port: u16) -> (Self, String) {
        let script = format!(
            "import os, select, socket, sys\n\
             s = socket.create_connection(('{VIP4}', {port}), timeout=5)\n\
             f = s.makefile('rb')\n\
             print(f.readline().decode().strip(), flush=True)\n\
             if not select.select([sys.stdin], [], [], 120)[0]:\n\
             \x20   print('not told to echo within 120 s', flush=True); sys.exit(1)\n\
             sys.stdin.readline()\n\
             try:\n\
             \x20   msg = os.urandom(4096)\n\
             \x20   s.sendall(msg)\n\
             \x20   got = f.read(len(msg))\n\
             \x20   print('OK' if got == msg else 'MISMATCH: %d bytes back' % len(got), flush=True)\n\
             except OSError as e:\n\
             \x20   print('FAILED', repr(e), flush=True)\n"
        );
        let mut child = lab
            .cmd(lab.client(), python3())
            .args(["-c", &script])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("idle client");
        let stdin = child.stdin.take().expect("stdin");
        let mut lines = std::io::BufReader::new(child.stdout.take().expect("stdout")).lines();
        let greeting = lines
            .next()
            .and_then(Result::ok)
            .expect("the idle connection's greeting");
        (
            Self {
                child,
                stdin,
                lines,
            },
            greeting,
        )
    }

    /// Sends 4 KiB and reads them back; what the client said (`OK` when all came back).
    fn echo(mut self) -> String {
        writeln!(self.stdin, "go").expect("tell the idle client to echo");
        let result = self
            .lines
            .next()
            .and_then(Result::ok)
            .unwrap_or_else(|| "no answer".to_owned());
        let _ = self.child.wait();
        result
    }
}

#[test]
fn syn_flood_at_one_listener_spares_established_flows_elsewhere() {
    // Listener 81 (the flooded one) and listener 80 (the quiet one) reach different targets,
    // so SNAT ports are not what they share: the connection table is.
    let rate_limit: u64 = 200;
    let config = format!(
        r#"
[agent]
{NEW_FLOW_RATE_LIMIT} = {rate_limit}

[[target_group]]
name = "flooded"
protocol = "tcp"
port = 8080
targets = [{{ address = "198.18.0.21" }}]

[[target_group]]
name = "quiet"
protocol = "tcp"
port = 8080
targets = [{{ address = "198.18.0.22" }}]

[[listener]]
name = "flooded"
address = "198.18.1.100"
port = 81
protocol = "tcp"
default_action = {{ forward = "flooded" }}

[[listener]]
name = "quiet"
address = "198.18.1.100"
port = 80
protocol = "tcp"
default_action = {{ forward = "quiet" }}
"#
    );
    let (lab, agent) = lab_with_agent("synf", 2, &config);
    let (idle, greeting) = IdleConnection::open(&lab, 80);
    assert_eq!(greeting, "b2", "the quiet listener's target");
    let flood_before = verdict(&agent, DROP_FLOOD);
    let flows_before = agent.stats().flows;

    let duration = Duration::from_secs(4);
    let started = Instant::now();
    let flood = Flood::start(
        &lab,
        &FloodSpec {
            kind: FloodKind::Syns,
            target: SocketAddrV4::new(VIP4, 81),
            sources: SPOOFED.to_vec(),
            source_ports: FLOOD_PORTS,
            duration,
            max_packets: 20_000,
            packets_per_second: 5000,
        },
    );
    std::thread::sleep(Duration::from_millis(800));
    let served = connect_at_once(
        &lab,
        &agent,
        80,
        31000,
        5,
        Duration::from_millis(200),
        "through the quiet listener during the flood",
    );
    assert!(served.iter().all(|s| s == "b2"), "{served:?}");
    let flows_during = agent.stats().flows;
    assert!(
        flood.is_running(&lab),
        "the flood ended before the connections made during it (machine too slow?)"
    );
    let sent = flood.finish(&lab);
    let flood_seconds = started.elapsed().as_secs() + 1;
    let echoed = idle.echo();
    let stats = agent.stats();
    let flooded = verdict(&agent, DROP_FLOOD) - flood_before;
    println!(
        "{sent} SYNs; table: {flows_before} entries before, {flows_during} during, {} after; \
         {flooded} counted as {DROP_FLOOD}",
        stats.flows
    );
    assert_eq!(
        echoed, "OK",
        "the idle connection through the quiet listener"
    );
    // The guard lets `rate_limit` new flows a second through on each CPU; the real client's
    // connections and a margin for a window's edge besides.
    let bound = rate_limit * online_cpus() * (flood_seconds + 1) + 50;
    assert!(
        sent > 2 * bound,
        "the flood ({sent} SYNs) must outrun the guard's bound ({bound}) to test it"
    );
    for (when, flows) in [("during", flows_during), ("after", stats.flows)] {
        assert!(
            flows as u64 <= bound,
            "{flows} connection-table entries {when} a flood of {sent} SYNs; at most {bound} \
             ({rate_limit}/s on each of {} CPUs for {flood_seconds} s and a margin)",
            online_cpus()
        );
    }
    assert!(
        flooded >= (sent - bound) / 2,
        "{sent} SYNs, at most {bound} new flows, but only {flooded} counted as {DROP_FLOOD}: \
         {:?}",
        stats.verdicts
    );
}
