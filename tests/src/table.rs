//! Data-plane tests as tables: each case is a name, an input frame, the verdicts it may get and
//! what must hold of the frame the program leaves (exact bytes, or a named property). One
//! runner runs every case, then fails listing each case that did not hold, with what was
//! expected and what came out (verdict, and the frame decoded).

use std::{fmt, net::IpAddr, net::SocketAddr, ops::RangeInclusive};

use crate::{
    TestBed,
    decode::{decode, describe},
    host_mac,
};

/// An XDP action, as BPF_PROG_TEST_RUN returns it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Aborted,
    Drop,
    Pass,
    Tx,
    Redirect,
    /// A return value that is no XDP action.
    Other(u32),
}

impl Verdict {
    /// Every verdict but ABORTED: what a program that handles all its errors returns.
    pub const HANDLED: [Verdict; 4] =
        [Verdict::Drop, Verdict::Pass, Verdict::Tx, Verdict::Redirect];

    /// The verdict of an XDP return value.
    pub fn of(action: u32) -> Self {
        match action {
            0 => Self::Aborted,
            1 => Self::Drop,
            2 => Self::Pass,
            3 => Self::Tx,
            4 => Self::Redirect,
            other => Self::Other(other),
        }
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Aborted => f.write_str("XDP_ABORTED"),
            Self::Drop => f.write_str("XDP_DROP"),
            Self::Pass => f.write_str("XDP_PASS"),
            Self::Tx => f.write_str("XDP_TX"),
            Self::Redirect => f.write_str("XDP_REDIRECT"),
            Self::Other(n) => write!(f, "return value {n}"),
        }
    }
}

/// The full-NAT source ports the agent hands out by default.
pub const DEFAULT_SNAT_PORTS: RangeInclusive<u16> = 1024..=32767;

/// The SNAT source port a forwarded frame must carry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SnatPort {
    /// Any port of the range.
    In(RangeInclusive<u16>),
    /// This port (a flow that already has one keeps it).
    Exactly(u16),
}

/// What must hold of the frame the program left.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Property {
    /// Byte-identical to the input.
    Unchanged,
    /// Exactly these bytes.
    Bytes(Vec<u8>),
    /// The full-NAT rewrite of a client's frame: to `backend` from our SNAT address and a port
    /// of `snat_port`, every checksum valid, the payload intact, sent to the next hop's MAC.
    Forwarded {
        backend: SocketAddr,
        snat: IpAddr,
        snat_port: SnatPort,
        payload: Vec<u8>,
        next_hop_mac: [u8; 6],
    },
    /// A valid TCP/UDP frame sent anywhere but to this backend.
    NotTo(SocketAddr),
    /// The reverse-NAT rewrite of a backend's reply: from the VIP to the client, every
    /// checksum valid, the payload intact, sent to the client's MAC.
    ReverseNated {
        from: SocketAddr,
        to: SocketAddr,
        client_mac: [u8; 6],
        payload: Vec<u8>,
    },
    /// Still tagged with this VLAN id.
    VlanTag(u16),
    /// A valid frame (every checksum, the IPv4 header's too) with this TTL / hop limit.
    Ttl(u8),
    /// A UDP datagram still without a checksum (the field 0).
    NoUdpChecksum,
}

impl Property {
    /// `Forwarded` to `backend` (its MAC the next hop's) from `snat` and a port of the default
    /// range, carrying `payload`.
    pub fn forwarded(backend: SocketAddr, snat: IpAddr, payload: &[u8]) -> Self {
        Self::Forwarded {
            backend,
            snat,
            snat_port: SnatPort::In(DEFAULT_SNAT_PORTS),
            payload: payload.to_vec(),
            next_hop_mac: host_mac(backend.ip()),
        }
    }

    /// Whether `output` (the program's result on `input`) has the property; what is off if not.
    fn check(&self, input: &[u8], output: &[u8]) -> Result<(), String> {
        match self {
            Self::Unchanged => same_bytes(input, output),
            Self::Bytes(want) => same_bytes(want, output),
            Self::Forwarded {
                backend,
                snat,
                snat_port,
                payload,
                next_hop_mac,
            } => {
                let seen = decode(output)?;
                let mut off = Vec::new();
                if SocketAddr::new(seen.dst, seen.dport) != *backend {
                    off.push(format!("sent to {}:{}", seen.dst, seen.dport));
                }
                if seen.src != *snat {
                    off.push(format!("source address {}", seen.src));
                }
                let port_ok = match snat_port {
                    SnatPort::In(range) => range.contains(&seen.sport),
                    SnatPort::Exactly(port) => seen.sport == *port,
                };
                if !port_ok {
                    off.push(format!("source port {}", seen.sport));
                }
                if seen.payload != *payload {
                    off.push(format!(
                        "payload {:?}",
                        String::from_utf8_lossy(&seen.payload)
                    ));
                }
                if seen.dst_mac != *next_hop_mac {
                    off.push(format!("destination MAC {:02x?}", seen.dst_mac));
                }
                all_fine(off)
            }
            Self::NotTo(backend) => {
                let seen = decode(output)?;
                if SocketAddr::new(seen.dst, seen.dport) == *backend {
                    return Err(format!("sent to {backend}"));
                }
                Ok(())
            }
            Self::ReverseNated {
                from,
                to,
                client_mac,
                payload,
            } => {
                let seen = decode(output)?;
                let mut off = Vec::new();
                if SocketAddr::new(seen.src, seen.sport) != *from {
                    off.push(format!("from {}:{}", seen.src, seen.sport));
                }
                if SocketAddr::new(seen.dst, seen.dport) != *to {
                    off.push(format!("to {}:{}", seen.dst, seen.dport));
                }
                if seen.dst_mac != *client_mac {
                    off.push(format!("destination MAC {:02x?}", seen.dst_mac));
                }
                if seen.payload != *payload {
                    off.push(format!(
                        "payload {:?}",
                        String::from_utf8_lossy(&seen.payload)
                    ));
                }
                all_fine(off)
            }
            Self::VlanTag(vid) => match decode(output)?.vlan {
                Some(seen) if seen == *vid => Ok(()),
                seen => Err(format!("VLAN tag {seen:?}")),
            },
            Self::Ttl(ttl) => match decode(output)?.ttl {
                seen if seen == *ttl => Ok(()),
                seen => Err(format!("TTL {seen}")),
            },
            Self::NoUdpChecksum => match decode(output)?.udp_checksum {
                Some(0) => Ok(()),
                seen => Err(format!("UDP checksum {seen:x?}")),
            },
        }
    }
}

fn same_bytes(want: &[u8], got: &[u8]) -> Result<(), String> {
    if want == got {
        return Ok(());
    }
    let first = want
        .iter()
        .zip(got)
        .position(|(a, b)| a != b)
        .unwrap_or(want.len().min(got.len()));
    Err(format!(
        "bytes differ from offset {first} (want {} bytes, got {})",
        want.len(),
        got.len()
    ))
}

fn all_fine(off: Vec<String>) -> Result<(), String> {
    if off.is_empty() {
        Ok(())
    } else {
        Err(off.join("; "))
    }
}

impl fmt::Display for Property {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Unchanged => f.write_str("byte-identical"),
            Self::Bytes(b) => write!(f, "exactly {}", describe(b)),
            Self::Forwarded {
                backend,
                snat,
                snat_port,
                payload,
                next_hop_mac,
            } => {
                let port = match snat_port {
                    SnatPort::In(r) => format!("{}-{}", r.start(), r.end()),
                    SnatPort::Exactly(p) => p.to_string(),
                };
                write!(
                    f,
                    "forwarded to {backend} from {snat} port {port}, valid checksums, payload \
                     {:?}, next-hop MAC {next_hop_mac:02x?}",
                    String::from_utf8_lossy(payload)
                )
            }
            Self::NotTo(backend) => {
                write!(f, "a valid frame to any backend but {backend}")
            }
            Self::ReverseNated {
                from,
                to,
                client_mac,
                payload,
            } => write!(
                f,
                "reverse-NATed: from {from} to the client {to}, valid checksums, payload {:?}, \
                 client MAC {client_mac:02x?}",
                String::from_utf8_lossy(payload)
            ),
            Self::VlanTag(vid) => write!(f, "VLAN tag {vid} kept"),
            Self::Ttl(ttl) => write!(f, "valid, TTL {ttl}"),
            Self::NoUdpChecksum => f.write_str("UDP checksum still 0 (none)"),
        }
    }
}

/// The verdicts a case accepts, and what must hold of its output.
#[derive(Clone, Debug)]
pub struct Expect {
    verdicts: Vec<Verdict>,
    properties: Vec<Property>,
}

impl Expect {
    /// This verdict; the output not looked at (add properties with `and`).
    pub fn verdict(verdict: Verdict) -> Self {
        Self::one_of(&[verdict])
    }

    /// Any of these verdicts.
    pub fn one_of(verdicts: &[Verdict]) -> Self {
        Self {
            verdicts: verdicts.to_vec(),
            properties: Vec::new(),
        }
    }

    /// Also `property` of the output.
    pub fn and(mut self, property: Property) -> Self {
        self.properties.push(property);
        self
    }
}

impl fmt::Display for Expect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let verdicts: Vec<String> = self.verdicts.iter().map(Verdict::to_string).collect();
        f.write_str(&verdicts.join(" or "))?;
        if self.properties.is_empty() {
            return f.write_str(" (output not looked at)");
        }
        for p in &self.properties {
            write!(f, "\n      and {p}")?;
        }
        Ok(())
    }
}

/// One row of a table: a name, an input frame (from a builder) and what it must give.
#[derive(Clone, Debug)]
pub struct Case {
    pub name: String,
    pub input: Vec<u8>,
    pub expect: Expect,
}

impl Case {
    /// A row named `name` (say what is special about the frame).
    pub fn new(name: impl Into<String>, input: Vec<u8>, expect: Expect) -> Self {
        Self {
            name: name.into(),
            input,
            expect,
        }
    }
}

/// What the program did with a case's frame.
#[derive(Clone, Debug)]
pub struct Ran {
    pub verdict: Verdict,
    pub output: Vec<u8>,
}

/// Runs every case on `bed`, in order (a case may rely on flows the earlier ones opened).
/// Panics after the last one if any did not hold, naming each with its input, what was
/// expected and what came out; returns the results when all held.
pub fn run_table(bed: &mut TestBed, cases: &[Case]) -> Vec<Ran> {
    let mut ran = Vec::with_capacity(cases.len());
    let mut failures = Vec::new();
    for case in cases {
        let (action, output) = bed.run(&case.input);
        let verdict = Verdict::of(action);
        let mut problems = Vec::new();
        if !case.expect.verdicts.contains(&verdict) {
            problems.push(format!("verdict {verdict}"));
        }
        for property in &case.expect.properties {
            if let Err(off) = property.check(&case.input, &output) {
                problems.push(format!("not {property}: {off}"));
            }
        }
        if !problems.is_empty() {
            failures.push(format!(
                "case `{}`:\n  input:    {}\n  expected: {}\n  got:      {verdict}, {}\n  wrong:    {}",
                case.name,
                describe(&case.input),
                case.expect,
                describe(&output),
                problems.join("\n            ")
            ));
        }
        ran.push(Ran { verdict, output });
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n\n")
    );
    ran
}
