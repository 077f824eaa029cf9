//! The connection table's sweeper. The table is a plain hash (no LRU): it never evicts a flow
//! on its own, so flows that are over leave in two ways, both removing the two halves
//! together: a new flow takes over an over flow's SNAT port in the data plane, and this
//! sweeper, every few seconds, deletes every flow that is over (`lb_common::conntrack::over`,
//! the data plane's own rule).
//!
//! It reads the table in batches on map descriptors of its own (beside the writer and the
//! readers), then looks each over flow up again just before deleting it and leaves it if
//! either half changed meanwhile (a packet moved it on, or a new flow took its port).

use std::collections::{HashMap as StdHashMap, HashSet};

use aya::{
    Ebpf,
    maps::{Array, HashMap, MapError},
};
use lb_common::{Flow, FlowKey, ReverseFlow, Settings, conntrack, map_names};

use super::{Result, map_err, monotonic_coarse_ns, own_handle, read_hash};

/// Handles of the maps the sweeper reads and deletes from.
pub struct Sweeper {
    conntrack: aya::maps::Map,
    snat: aya::maps::Map,
    settings: aya::maps::Map,
}

/// A flow that is over: its halves as read (either may be missing).
#[derive(Debug, Clone, PartialEq)]
pub struct OverFlow {
    pub forward: Option<(FlowKey, Flow)>,
    pub reverse: Option<(FlowKey, ReverseFlow)>,
}

impl Sweeper {
    /// Handles of `ebpf`'s connection table, on descriptors of their own.
    pub(super) fn of(ebpf: &Ebpf) -> Result<Self> {
        Ok(Self {
            conntrack: own_handle(ebpf, map_names::CONNTRACK)?,
            snat: own_handle(ebpf, map_names::SNAT)?,
            settings: own_handle(ebpf, map_names::SETTINGS)?,
        })
    }

    /// One pass: deletes both halves of every flow that is over; returns how many flows went.
    pub fn sweep(&mut self) -> Result<usize> {
        let doomed = self.over_now()?;
        self.delete_unchanged(doomed)
    }

    /// The first half of a pass: the flows that are over now, with both halves as read.
    pub fn over_now(&self) -> Result<Vec<OverFlow>> {
        let settings: Array<_, Settings> =
            Array::try_from(&self.settings).map_err(map_err(map_names::SETTINGS))?;
        let settings = settings.get(&0, 0).map_err(map_err(map_names::SETTINGS))?;
        let forward = read_hash::<FlowKey, Flow>(&self.conntrack, map_names::CONNTRACK)?;
        let reverse = read_hash::<FlowKey, ReverseFlow>(&self.snat, map_names::SNAT)?;
        Ok(over_flows(
            &settings,
            &forward,
            &reverse,
            monotonic_coarse_ns(),
        ))
    }

    /// The second half: deletes both halves of each flow of `doomed` whose entries are still
    /// as read (the data plane may have moved a flow on, or given its port to a new flow,
    /// since); returns how many flows went.
    pub fn delete_unchanged(&mut self, doomed: Vec<OverFlow>) -> Result<usize> {
        let mut conntrack: HashMap<_, FlowKey, Flow> =
            HashMap::try_from(&mut self.conntrack).map_err(map_err(map_names::CONNTRACK))?;
        let mut snat: HashMap<_, FlowKey, ReverseFlow> =
            HashMap::try_from(&mut self.snat).map_err(map_err(map_names::SNAT))?;
        let mut swept = 0;
        for over in doomed {
            let unchanged_reverse = over.reverse.as_ref().is_none_or(|(key, was)| {
                // Odd: the data plane is writing a new flow into it right now.
                was.generation % 2 == 0 && snat.get(key, 0).is_ok_and(|now| now == *was)
            });
            let unchanged_forward = over
                .forward
                .as_ref()
                .is_none_or(|(key, was)| conntrack.get(key, 0).is_ok_and(|now| now == *was));
            if !unchanged_reverse || !unchanged_forward {
                continue;
            }
            // The reverse half first: from then on no reply matches the flow, and a new flow
            // may take its port at once.
            if let Some((key, _)) = &over.reverse {
                gone_or(snat.remove(key), map_names::SNAT)?;
            }
            if let Some((key, _)) = &over.forward {
                gone_or(conntrack.remove(key), map_names::CONNTRACK)?;
            }
            swept += 1;
        }
        Ok(swept)
    }
}

/// A deletion's result, where "not found" (the data plane got there first) is fine.
fn gone_or(result: std::result::Result<(), MapError>, name: &'static str) -> Result<()> {
    match result {
        Ok(()) | Err(MapError::KeyNotFound) => Ok(()),
        Err(MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::ENOENT) => Ok(()),
        Err(e) => Err(map_err(name)(e)),
    }
}

/// The flows among `forward` (`CONNTRACK`) and `reverse` (`SNAT`) entries that are over at
/// `now`, each with both its halves (a reverse entry without its forward one is a flow of
/// its own).
pub fn over_flows(
    settings: &Settings,
    forward: &[(FlowKey, Flow)],
    reverse: &[(FlowKey, ReverseFlow)],
    now: u64,
) -> Vec<OverFlow> {
    let by_key: StdHashMap<FlowKey, &ReverseFlow> = reverse.iter().map(|(k, r)| (*k, r)).collect();
    let mut paired = HashSet::new();
    let mut out = Vec::new();
    for (key, flow) in forward {
        let reverse_key = conntrack::reverse_key(key, flow);
        let half = by_key
            .get(&reverse_key)
            .copied()
            .filter(|r| conntrack::belongs(r, key));
        if half.is_some() {
            paired.insert(reverse_key);
        }
        if conntrack::over(settings, key.proto, Some(flow), half, now) {
            out.push(OverFlow {
                forward: Some((*key, *flow)),
                reverse: half.map(|r| (reverse_key, *r)),
            });
        }
    }
    for (key, half) in reverse {
        if !paired.contains(key) && conntrack::over(settings, key.proto, None, Some(half), now) {
            out.push(OverFlow {
                forward: None,
                reverse: Some((*key, *half)),
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use lb_common::{Addr, FAMILY_V4, PROTO_TCP, PROTO_UDP};

    use super::*;

    const S: u64 = 1_000_000_000;

    fn settings() -> Settings {
        Settings {
            tcp_idle_s: 350,
            udp_idle_s: 120,
            closed_s: 60,
            half_open_s: 10,
            ..Settings::default()
        }
    }

    /// A client flow from port `client_port` with SNAT port `snat_port`, both halves, last
    /// seen at `forward_seen` and `reverse_seen`.
    fn pair(
        proto: u8,
        client_port: u16,
        snat_port: u16,
        forward_seen: u64,
        reverse_seen: u64,
    ) -> ((FlowKey, Flow), (FlowKey, ReverseFlow)) {
        let key = FlowKey {
            src: Addr::v4([198, 18, 0, 10]),
            dst: Addr::v4([198, 18, 1, 100]),
            sport: client_port.to_be(),
            dport: 53u16.to_be(),
            proto,
            family: FAMILY_V4,
            _pad: [0; 2],
        };
        let flow = Flow {
            backend: Addr::v4([198, 18, 0, 21]),
            backend_port: 5353u16.to_be(),
            snat_addr: Addr::v4([198, 18, 0, 1]),
            snat_port: snat_port.to_be(),
            last_seen: forward_seen,
            ..Flow::default()
        };
        let reverse = ReverseFlow {
            client: key.src,
            vip: key.dst,
            client_port: key.sport,
            vip_port: key.dport,
            answered: 1,
            last_seen: reverse_seen,
            ..ReverseFlow::default()
        };
        ((key, flow), (conntrack::reverse_key(&key, &flow), reverse))
    }

    #[test]
    fn an_over_flow_is_swept_with_both_halves() {
        let (f, r) = pair(PROTO_UDP, 40000, 20000, S, S);
        let over = over_flows(&settings(), &[f], &[r], 200 * S);
        assert_eq!(
            over,
            [OverFlow {
                forward: Some(f),
                reverse: Some(r)
            }]
        );
    }

    #[test]
    fn a_flow_only_the_target_still_sends_on_is_kept() {
        let (f, r) = pair(PROTO_UDP, 40000, 20000, S, 190 * S);
        assert!(over_flows(&settings(), &[f], &[r], 200 * S).is_empty());
    }

    #[test]
    fn a_half_open_flow_is_swept_after_the_half_open_timeout() {
        let (f, (rk, mut r)) = pair(PROTO_TCP, 40000, 20000, S, S);
        r.answered = 0;
        assert!(over_flows(&settings(), &[f], &[(rk, r)], 5 * S).is_empty());
        assert_eq!(over_flows(&settings(), &[f], &[(rk, r)], 12 * S).len(), 1);
    }

    #[test]
    fn a_reverse_entry_without_its_flow_is_swept_after_the_closed_timeout() {
        let (_, r) = pair(PROTO_TCP, 40000, 20000, S, S);
        assert!(over_flows(&settings(), &[], &[r], 30 * S).is_empty());
        assert_eq!(
            over_flows(&settings(), &[], &[r], 62 * S),
            [OverFlow {
                forward: None,
                reverse: Some(r)
            }]
        );
    }

    #[test]
    fn a_reverse_entry_of_another_client_is_no_half_of_the_flow() {
        // The flow's port now serves another client: the flow is judged alone, and the
        // other client's live entry stays.
        let (f, _) = pair(PROTO_UDP, 40000, 20000, S, S);
        let (_, (rk, mut r)) = pair(PROTO_UDP, 40001, 20000, 199 * S, 199 * S);
        r.client_port = 40001u16.to_be();
        let over = over_flows(&settings(), &[f], &[(rk, r)], 200 * S);
        assert_eq!(
            over,
            [OverFlow {
                forward: Some(f),
                reverse: None
            }]
        );
    }
}
