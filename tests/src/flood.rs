//! Hostile TCP traffic for the lab tests: `flood.py` on a raw socket in the client's
//! namespace, sending segments with spoofed source addresses and ports at a listener, bounded
//! by a packet count and a time.

use std::{
    net::{Ipv4Addr, SocketAddrV4},
    ops::RangeInclusive,
    time::Duration,
};

use xtask::lab::{Lab, python3};

/// The flood generator: hand-built IPv4 and TCP headers on a raw socket.
const FLOOD_SCRIPT: &str = include_str!("flood.py");

/// What the flood sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FloodKind {
    /// ACK, RST+ACK and RST segments by turns: packets of no connection, as a scanner, a
    /// backscatter of someone else's flood or a client that lost its state sends them.
    StrayAcksAndResets,
    /// SYNs: connection attempts that never complete (the spoofed clients never answer).
    Syns,
}

impl FloodKind {
    fn arg(self) -> &'static str {
        match self {
            Self::StrayAcksAndResets => "stray",
            Self::Syns => "syn",
        }
    }
}

/// A flood's target, spoofed sources, and bounds.
#[derive(Debug, Clone)]
pub struct FloodSpec {
    pub kind: FloodKind,
    /// The listener attacked.
    pub target: SocketAddrV4,
    /// Source addresses, used by turns (spoofed ones need no route back).
    pub sources: Vec<Ipv4Addr>,
    /// Source ports, each packet's drawn at random.
    pub source_ports: RangeInclusive<u16>,
    /// It stops after this long...
    pub duration: Duration,
    /// ...or after this many packets, whichever comes first.
    pub max_packets: u64,
    /// Paced to at most this rate.
    pub packets_per_second: u64,
}

/// A flood running in the background in the lab's client.
pub struct Flood {
    pid: u32,
    duration: Duration,
}

impl Flood {
    /// Starts `spec` from the lab's client.
    pub fn start(lab: &Lab, spec: &FloodSpec) -> Self {
        let sources: Vec<String> = spec.sources.iter().map(Ipv4Addr::to_string).collect();
        let args = [
            spec.kind.arg().to_owned(),
            spec.target.ip().to_string(),
            spec.target.port().to_string(),
            sources.join(","),
            spec.source_ports.start().to_string(),
            spec.source_ports.end().to_string(),
            spec.duration.as_secs_f64().to_string(),
            spec.max_packets.to_string(),
            spec.packets_per_second.to_string(),
        ];
        let mut command = vec![python3(), "-c", FLOOD_SCRIPT];
        command.extend(args.iter().map(String::as_str));
        let pid = lab
            .spawn(lab.client(), &command)
            .unwrap_or_else(|e| panic!("starting the flood: {e:#}"));
        Self {
            pid,
            duration: spec.duration,
        }
    }

    /// Whether it still sends.
    pub fn is_running(&self, lab: &Lab) -> bool {
        lab.is_running(self.pid)
    }

    /// Waits for its end (at most its duration and 30 s); how many packets it sent.
    pub fn finish(self, lab: &Lab) -> u64 {
        lab.wait_ended(self.pid, self.duration + Duration::from_secs(30))
            .unwrap_or_else(|e| panic!("the flood: {e:#}"));
        let log = lab.log(self.pid).unwrap_or_default();
        log.lines()
            .find_map(|l| l.strip_prefix("sent "))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("the flood printed no count:\n{log}"))
    }
}
