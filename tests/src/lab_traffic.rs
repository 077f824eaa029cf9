//! Shared pieces of the lab tests: a lab with the agent binary running a config, and clients
//! that open connections through the VIP and report who served them.

use std::{collections::BTreeMap, net::SocketAddr, path::PathBuf, time::Duration, time::Instant};

use lb_agent::{health::TargetState, protocol::TargetView};
use serde::Deserialize;
use xtask::{
    agent::LabAgent,
    lab::{self, BackendServers, Lab, LabSpec, VIP4},
};

use crate::agent_views::AgentViews as _;

/// The agent binary `cargo xtask test` builds before these tests.
pub fn agent_binary() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../target")));
    let bin = target.join("debug/lb-agent");
    assert!(
        bin.exists(),
        "{} missing: run `cargo build -p lb-agent` (cargo xtask test does)",
        bin.display()
    );
    bin
}

/// A lab with backends serving, and an agent running `config`.
pub fn lab_with_agent(tag: &str, backends: usize, config: &str) -> (Lab, LabAgent) {
    let (lab, _, agent) = lab_with_agent_and_servers(tag, backends, config);
    (lab, agent)
}

/// As `lab_with_agent`, with the pids of the backends' servers.
pub fn lab_with_agent_and_servers(
    tag: &str,
    backends: usize,
    config: &str,
) -> (Lab, BackendServers, LabAgent) {
    let lab = lab_up(tag, backends);
    let servers = lab::start_backend_servers(&lab).expect("backend servers");
    write_config(&lab, config);
    let agent = start_agent(&lab);
    (lab, servers, agent)
}

/// A lab of `backends` backends and no router, named after `tag`; no servers, no agent.
pub fn lab_up(tag: &str, backends: usize) -> Lab {
    Lab::up(LabSpec {
        name: Lab::unique_name(tag),
        backends,
        router: None,
    })
    .expect("lab up")
}

/// Writes `config` to the lab's config file (`config_path`), for the next agent or reload.
pub fn write_config(lab: &Lab, config: &str) {
    std::fs::write(config_path(lab), config).expect("write config");
}

/// Starts the agent binary on the lab's config file (`config_path`): a first start, or a
/// restart that adopts the pinned data plane.
pub fn start_agent(lab: &Lab) -> LabAgent {
    LabAgent::start(lab, &agent_binary(), &config_path(lab)).expect("agent start")
}

/// The config file `lab_with_agent` writes for the lab's agent (in the lab's directory,
/// removed with the lab; the agent keeps its state file beside it).
pub fn config_path(lab: &Lab) -> PathBuf {
    lab.log_dir().join("lb.toml")
}

/// `count` short connections from the client to VIP:80, from source ports `first_port`,
/// `first_port + 1`, ... (fixed ports: the spread they get is the hash's, not the kernel's
/// port choice); who greeted each.
pub fn short_connections(lab: &Lab, first_port: u16, count: usize) -> BTreeMap<String, usize> {
    short_connections_to(lab, &VIP4.to_string(), 80, first_port, count)
}

/// As `short_connections`, to `vip`:`port` (IPv4 or IPv6). Every connection must succeed.
pub fn short_connections_to(
    lab: &Lab,
    vip: &str,
    port: u16,
    first_port: u16,
    count: usize,
) -> BTreeMap<String, usize> {
    let script = format!(
        "import socket\n\
         for i in range({count}):\n\
         \x20   s = socket.create_connection(('{vip}', {port}), timeout=5, source_address=('', {first_port} + i))\n\
         \x20   print(s.makefile('r').readline().strip(), flush=True)\n\
         \x20   s.close()\n"
    );
    let out = lab
        .run(lab.client(), &["python3", "-c", &script])
        .expect("short connections");
    let mut served = BTreeMap::new();
    for line in out.lines() {
        *served.entry(line.to_owned()).or_insert(0) += 1;
    }
    assert_eq!(served.values().sum::<usize>(), count, "{served:?}");
    served
}

/// The target `address` of `group` in `targets list --json`.
pub fn target(agent: &LabAgent, group: &str, address: &str) -> TargetView {
    let address: SocketAddr = address.parse().unwrap_or_else(|e| panic!("{address}: {e}"));
    let targets = agent.targets();
    targets
        .iter()
        .find(|t| t.group == group && t.address == address)
        .cloned()
        .unwrap_or_else(|| panic!("no target {address} in {group}: {targets:?}"))
}

/// Polls `targets list` every 50 ms until `group`'s target `address` is in `state`, for at
/// most `within`; how long that took, or a panic showing the target.
pub fn wait_for_state(
    agent: &LabAgent,
    group: &str,
    address: &str,
    state: TargetState,
    within: Duration,
) -> Duration {
    let start = Instant::now();
    loop {
        let t = target(agent, group, address);
        if t.state == state {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < within,
            "{address} in {group} not {} within {within:?}: {t:?}",
            state.as_str()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A long-lived TCP flow from the client to VIP:80: it reads the backend's greeting, then
/// echoes 4 KiB chunks for a while, comparing every byte.
pub struct EchoFlow {
    child: std::process::Child,
    lines: std::io::Lines<std::io::BufReader<std::process::ChildStdout>>,
    /// The name of the backend that greeted it (`b2`).
    pub serving: String,
}

impl EchoFlow {
    /// Connects and waits for the greeting; the flow then echoes for `seconds` (5 s socket
    /// timeouts bound it).
    pub fn start(lab: &Lab, seconds: u32) -> Self {
        use std::io::BufRead as _;
        let script = format!(
            "import socket, os, time, sys\n\
             s = socket.create_connection(('{VIP4}', 80), timeout=5)\n\
             f = s.makefile('rb')\n\
             print(f.readline().decode().strip(), flush=True)\n\
             total = 0\n\
             end = time.time() + {seconds}\n\
             while time.time() < end:\n\
             \x20   chunk = os.urandom(4096)\n\
             \x20   s.sendall(chunk)\n\
             \x20   if f.read(len(chunk)) != chunk:\n\
             \x20       print('MISMATCH after', total, flush=True); sys.exit(1)\n\
             \x20   total += len(chunk)\n\
             \x20   time.sleep(0.01)\n\
             print('OK', total, flush=True)\n"
        );
        let mut child = lab
            .cmd(lab.client(), "python3")
            .args(["-c", &script])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("long-lived client");
        let mut lines = std::io::BufReader::new(child.stdout.take().expect("stdout")).lines();
        let serving = lines.next().expect("greeting").expect("read greeting");
        Self {
            child,
            lines,
            serving,
        }
    }

    /// The index in `lab.backends()` of the backend serving it.
    pub fn serving_index(&self, lab: &Lab) -> usize {
        lab.backends()
            .iter()
            .position(|b| b.role == self.serving)
            .unwrap_or_else(|| panic!("`{}` is no backend's name", self.serving))
    }

    /// Waits for the end; the bytes echoed, or a panic saying how the flow failed.
    pub fn finish(mut self) -> u64 {
        let result = self
            .lines
            .next()
            .expect("result line")
            .expect("read result");
        let status = self.child.wait().expect("client exit");
        assert!(
            status.success() && result.starts_with("OK"),
            "long-lived flow to {}: {result} ({status})",
            self.serving
        );
        result
            .split_whitespace()
            .nth(1)
            .and_then(|n| n.parse().ok())
            .expect("byte count")
    }
}

/// An idle TCP connection from the client to VIP:`port` that backend `backend` greeted (it
/// connects from source ports `first_port`.. until one lands there, at most 64 tries), held
/// open until dropped: a draining target with it keeps draining.
pub struct IdleConnection(std::process::Child);

impl IdleConnection {
    pub fn open(lab: &Lab, port: u16, backend: &str, first_port: u16) -> Self {
        use std::io::BufRead as _;
        let script = format!(
            "import socket, sys\n\
             for i in range(64):\n\
             \x20   s = socket.create_connection(('{VIP4}', {port}), timeout=3, source_address=('', {first_port} + i))\n\
             \x20   if s.makefile('r').readline().strip() == '{backend}':\n\
             \x20       print('held', flush=True)\n\
             \x20       sys.stdin.readline()\n\
             \x20       sys.exit(0)\n\
             \x20   s.close()\n\
             print('none', flush=True)\n"
        );
        let mut child = lab
            .cmd(lab.client(), "python3")
            .args(["-c", &script])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("idle client");
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().expect("stdout"))
            .read_line(&mut line)
            .expect("read");
        assert_eq!(line.trim(), "held", "no connection landed on {backend}");
        Self(child)
    }
}

impl Drop for IdleConnection {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `iperf3 -c VIP4 -p 5201 -t SECONDS -J` on the client in the background; its pid.
pub fn start_iperf3(lab: &Lab, seconds: u32) -> u32 {
    lab.spawn(
        lab.client(),
        &[
            "iperf3",
            "-c",
            &VIP4.to_string(),
            "-p",
            "5201",
            "-t",
            &seconds.to_string(),
            "-J",
        ],
    )
    .expect("iperf3 client")
}

/// The parts of an iperf3 `-J` report the tests read.
#[derive(Debug, Deserialize)]
pub struct Iperf3Report {
    /// Why the run failed, if it did (then `end` is empty).
    pub error: Option<String>,
    #[serde(default)]
    pub end: Iperf3End,
}

/// A report's totals: `sum_sent` and `sum_received` for TCP, `sum` for UDP.
#[derive(Debug, Default, Deserialize)]
pub struct Iperf3End {
    pub sum_sent: Option<Iperf3Sum>,
    pub sum_received: Option<Iperf3Sum>,
    pub sum: Option<Iperf3Sum>,
}

/// One of a report's totals.
#[derive(Debug, Deserialize)]
pub struct Iperf3Sum {
    pub bytes: u64,
    pub seconds: f64,
    /// UDP only.
    pub packets: Option<u64>,
    /// UDP only.
    pub lost_percent: Option<f64>,
}

impl Iperf3Report {
    /// Parses iperf3's `-J` output.
    pub fn parse(json: &str) -> Self {
        serde_json::from_str(json).unwrap_or_else(|e| panic!("iperf3 JSON: {e}\n{json}"))
    }

    /// The bytes the server received (TCP), 0 if the report has no such total.
    pub fn bytes_received(&self) -> u64 {
        self.end.sum_received.as_ref().map_or(0, |s| s.bytes)
    }

    /// Over how many seconds the server received them, 0 if the report has no such total.
    pub fn seconds_received(&self) -> f64 {
        self.end.sum_received.as_ref().map_or(0.0, |s| s.seconds)
    }
}

/// Waits (at most 20 s) for an iperf3 run of `start_iperf3` to end; its report, which must
/// hold no error.
pub fn iperf3_report(lab: &Lab, pid: u32) -> Iperf3Report {
    lab.wait_ended(pid, Duration::from_secs(20))
        .expect("iperf3 finishes");
    let report = Iperf3Report::parse(&lab.log(pid).expect("iperf3 output"));
    assert!(report.error.is_none(), "iperf3: {:?}", report.error);
    report
}

/// Ends the agent `pid` with `signal` (SIGTERM: the data plane stays pinned; SIGKILL: no chance
/// to clean up) and waits, at most 10 s, until it is gone.
pub fn end_agent(lab: &Lab, pid: u32, signal: i32) {
    // SAFETY: a plain kill(2) of our own child.
    assert_eq!(unsafe { libc::kill(pid as i32, signal) }, 0, "kill {pid}");
    lab.wait_ended(pid, Duration::from_secs(10))
        .expect("the agent ends");
}
