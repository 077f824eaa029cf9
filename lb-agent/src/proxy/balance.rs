//! Choosing a target inside a group for one request: round robin by weight or least
//! outstanding requests, plus the lookup of a sticky target by its cookie token.
//!
//! A `GroupTargets` is built once per plan (the group's targets in service) and is immutable
//! after that except for atomics, so the request path picks without a lock or an allocation.
//! The in-progress count of a target lives in a `TargetLoad` that the `LoadRegistry` hands to
//! every plan naming the same (group, target): a request started under one plan and finished
//! under the next still counts, and least-outstanding-requests sees it.
//!
//! Round robin walks a precomputed cycle in which each target appears as often as its weight
//! says, spread out (weights 3 and 2 give `a b a b a`, not `a a a b b`); the cycle is capped at
//! `MAX_CYCLE` entries, and groups whose weights need a longer one walk a van der Corput
//! sequence over the cumulative weights instead (exact shares, less even spacing).

use std::{
    cmp::{Ordering as CmpOrdering, Reverse},
    collections::{BinaryHeap, HashMap},
    net::SocketAddr,
    sync::{
        Arc, Mutex, Weak,
        atomic::{AtomicU32, Ordering},
    },
    time::{SystemTime, UNIX_EPOCH},
};

use crate::config::Algorithm;

/// The longest precomputed round-robin cycle (entries of 2 bytes: 16 KiB a group at most).
/// Weights 1..=1000 over up to 8 targets always fit, and any number of equal weights up to
/// 8192 targets. Every target has at least one entry, so a cycle that fits indexes fewer
/// than 8192 targets and a `u16` holds any index in it.
const MAX_CYCLE: u64 = 8192;

/// The requests in progress on one target of one group. Shared by every plan that has this
/// (group, target), so it survives plan swaps.
#[derive(Debug, Default)]
pub struct TargetLoad {
    outstanding: AtomicU32,
}

impl TargetLoad {
    /// No request in progress.
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Requests in progress now.
    pub fn outstanding(&self) -> u32 {
        self.outstanding.load(Ordering::Relaxed)
    }

    /// Counts one more request in progress until the returned guard drops.
    pub fn start(self: &Arc<Self>) -> Outstanding {
        // Relaxed: the count orders nothing else; a pick that reads it a moment stale is fine.
        self.outstanding.fetch_add(1, Ordering::Relaxed);
        Outstanding {
            load: Arc::clone(self),
        }
    }
}

/// One request in progress on a target; dropping it (response done, failed or cancelled) ends it.
#[derive(Debug)]
#[must_use = "the request counts as in progress only while this guard lives"]
pub struct Outstanding {
    load: Arc<TargetLoad>,
}

impl Drop for Outstanding {
    fn drop(&mut self) {
        self.load.outstanding.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A target in service, as a plan serves it.
#[derive(Debug, Clone)]
pub struct ServingTarget {
    /// Where requests go.
    pub address: SocketAddr,
    /// Relative share, 1..=1000 (0: never picked, but still found by its token).
    pub weight: u32,
    /// Its requests in progress (from `LoadRegistry`).
    pub load: Arc<TargetLoad>,
    /// Its stickiness token (`sticky::StickyKey::token`).
    pub token: Arc<str>,
    /// `address` as a URI authority (requests' URIs are built from it).
    pub authority: hyper::http::uri::Authority,
}

/// How round robin walks the targets.
#[derive(Debug)]
enum Cycle {
    /// No target has a weight above 0: nothing to pick.
    Empty,
    /// Target indices in the order to serve them, each repeated weight/gcd times.
    Sequence(Box<[u16]>),
    /// `ends[i]`: the sum of the weights of targets `0..=i`. Used when the cycle would pass
    /// `MAX_CYCLE` entries.
    Spread(Box<[u64]>),
}

/// A group's targets in service, ready to pick from.
#[derive(Debug)]
pub struct GroupTargets {
    algorithm: Algorithm,
    targets: Box<[ServingTarget]>,
    cycle: Cycle,
    /// Indices into `targets`, sorted by token, for `by_token`'s binary search.
    by_token: Box<[u32]>,
    /// Round robin's position, or least-outstanding's first target to look at. Wrapping is
    /// harmless: at worst one skipped or repeated turn every 2^32 picks.
    cursor: AtomicU32,
}

impl GroupTargets {
    /// From the group's algorithm and its targets in service (in any order; a target index is
    /// a `u32`, more than 2^32 targets is not a group).
    pub fn new(algorithm: Algorithm, targets: Vec<ServingTarget>) -> Self {
        let targets = targets.into_boxed_slice();
        let cycle = Cycle::new(&targets);
        let mut by_token: Vec<u32> = (0..index_u32(targets.len())).collect();
        by_token.sort_by(|&a, &b| targets[a as usize].token.cmp(&targets[b as usize].token));
        Self {
            algorithm,
            targets,
            cycle,
            by_token: by_token.into_boxed_slice(),
            cursor: AtomicU32::new(start_cursor()),
        }
    }

    /// No target in service.
    pub fn is_empty(&self) -> bool {
        self.targets.is_empty()
    }

    /// The targets, in the order given to `new`.
    pub fn targets(&self) -> &[ServingTarget] {
        &self.targets
    }

    /// The algorithm this group picks with.
    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }

    /// The next target by the group's algorithm; `None` when no target has a weight above 0
    /// (the caller answers 503).
    pub fn pick(&self) -> Option<&ServingTarget> {
        match self.algorithm {
            Algorithm::RoundRobin => self.pick_round_robin(),
            Algorithm::LeastOutstandingRequests => self.pick_least_outstanding(),
        }
    }

    /// The target a stickiness token names, if it is still in service here.
    pub fn by_token(&self, token: &str) -> Option<&ServingTarget> {
        let found = self
            .by_token
            .binary_search_by(|&i| self.targets[i as usize].token.as_ref().cmp(token))
            .ok()?;
        Some(&self.targets[self.by_token[found] as usize])
    }

    fn pick_round_robin(&self) -> Option<&ServingTarget> {
        // Relaxed: picks only need distinct turns, not an order with other memory.
        let turn = self.cursor.fetch_add(1, Ordering::Relaxed);
        let index = match &self.cycle {
            Cycle::Empty => return None,
            Cycle::Sequence(sequence) => u32::from(sequence[turn as usize % sequence.len()]),
            Cycle::Spread(ends) => {
                // Bit-reversing the turn counter gives the van der Corput sequence: any 2^k
                // consecutive turns land evenly spaced over [0, 2^32), so each target's range
                // gets its share to within one pick.
                let point =
                    (u64::from(turn.reverse_bits()) * ends.last().copied().unwrap_or(0)) >> 32;
                // A weight-0 target's range is empty, so it is never the first to end past.
                index_u32(ends.partition_point(|&end| end <= point))
            }
        };
        self.targets.get(index as usize)
    }

    /// The target with the least `(outstanding + 1) / weight`: the load it would have with this
    /// request, per unit of weight, so weights divide (a weight-2 target takes twice the
    /// requests in progress of a weight-1 one) and idle targets go by weight too. Ties go to the
    /// first one after a rotating start, so equal targets share.
    fn pick_least_outstanding(&self) -> Option<&ServingTarget> {
        let count = self.targets.len();
        if count == 0 {
            return None;
        }
        let start = self.cursor.fetch_add(1, Ordering::Relaxed) as usize % count;
        let mut best: Option<(&ServingTarget, u64)> = None;
        for target in self.targets[start..].iter().chain(&self.targets[..start]) {
            if target.weight == 0 {
                continue;
            }
            let load = u64::from(target.outstanding_plus_one());
            let better = match best {
                None => true,
                // load / weight < best_load / best_weight, without division.
                Some((b, best_load)) => {
                    load * u64::from(b.weight) < best_load * u64::from(target.weight)
                }
            };
            if better {
                best = Some((target, load));
            }
        }
        best.map(|(target, _)| target)
    }
}

impl ServingTarget {
    fn outstanding_plus_one(&self) -> u32 {
        self.load.outstanding().saturating_add(1)
    }
}

impl Cycle {
    fn new(targets: &[ServingTarget]) -> Self {
        let total: u64 = targets.iter().map(|t| u64::from(t.weight)).sum();
        if total == 0 {
            return Self::Empty;
        }
        let gcd = targets
            .iter()
            .map(|t| u64::from(t.weight))
            .filter(|&w| w > 0)
            .fold(0, gcd);
        let length = total / gcd;
        if length > MAX_CYCLE {
            let ends = targets
                .iter()
                .scan(0u64, |sum, t| {
                    *sum += u64::from(t.weight);
                    Some(*sum)
                })
                .collect();
            return Self::Spread(ends);
        }
        Self::Sequence(interleaved(targets, gcd, length))
    }
}

/// One round-robin cycle by the Sainte-Laguë (Webster) highest-averages order: the next turn
/// goes to the target with the least `(2 * turns_so_far + 1) / weight`. Over the whole cycle
/// each target gets exactly weight/gcd turns, and every prefix stays within one turn of its
/// share, which spreads a target's turns out instead of bunching them.
fn interleaved(targets: &[ServingTarget], gcd: u64, length: u64) -> Box<[u16]> {
    let mut queue: BinaryHeap<Reverse<Turn>> = targets
        .iter()
        .enumerate()
        .filter(|(_, t)| t.weight > 0)
        .map(|(i, t)| {
            Reverse(Turn {
                numerator: 1,
                weight: u64::from(t.weight) / gcd,
                // Below MAX_CYCLE (see there), so it fits.
                index: u16::try_from(i).unwrap_or(u16::MAX),
            })
        })
        .collect();
    let mut sequence = Vec::with_capacity(usize::try_from(length).unwrap_or(0));
    while (sequence.len() as u64) < length {
        let Some(mut next) = queue.peek_mut() else {
            break;
        };
        sequence.push(next.0.index);
        next.0.numerator += 2;
    }
    sequence.into_boxed_slice()
}

/// A target's next turn in the highest-averages order: due at `numerator / weight`.
#[derive(Debug, PartialEq, Eq)]
struct Turn {
    numerator: u64,
    weight: u64,
    index: u16,
}

impl Ord for Turn {
    fn cmp(&self, other: &Self) -> CmpOrdering {
        // numerator / weight compared by cross-multiplying (products below 2 * 8192 * 8192);
        // equal due times go to the earlier target, so the cycle is deterministic.
        (self.numerator * other.weight)
            .cmp(&(other.numerator * self.weight))
            .then(self.index.cmp(&other.index))
    }
}

impl PartialOrd for Turn {
    fn partial_cmp(&self, other: &Self) -> Option<CmpOrdering> {
        Some(self.cmp(other))
    }
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 { a } else { gcd(b, a % b) }
}

/// A target index as stored; groups never come near 2^32 targets, so saturating is only a
/// formality that keeps this free of panics.
fn index_u32(i: usize) -> u32 {
    u32::try_from(i).unwrap_or(u32::MAX)
}

/// Where round robin starts: varied per plan, so frequent plan swaps (health flapping) do not
/// send every first turn to the same target.
fn start_cursor() -> u32 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos())
}

/// Keeps each (group, target)'s `TargetLoad` across plan rebuilds. The plan builder (one task)
/// opens a `LoadBuild`, asks it for the load of every target it serves, and drops it: entries
/// that build did not ask for are forgotten (their loads live on in older plans and in-flight
/// guards until those end).
#[derive(Debug, Default)]
pub struct LoadRegistry {
    /// Which build we are at; an entry holds the last build that asked for it.
    build: u64,
    groups: HashMap<String, HashMap<SocketAddr, (u64, Arc<TargetLoad>)>>,
    /// Every load handed out that is still alive, kept and forgotten ones alike.
    in_flight: Arc<InFlight>,
}

/// The requests in progress on each (group, target), read from outside the proxy: those on
/// targets the plans still serve and those on targets they no longer do (deregistered,
/// draining), whose requests run on until they end. The auto scaling groups stop an instance
/// only once nothing is in progress on it.
#[derive(Debug, Default)]
pub struct InFlight {
    loads: Mutex<HashMap<GroupTarget, Vec<Weak<TargetLoad>>>>,
}

/// A target of a group: (group name, target).
type GroupTarget = (String, SocketAddr);

impl InFlight {
    /// Requests in progress on `target` of `group` now.
    pub fn requests(&self, group: &str, target: SocketAddr) -> u32 {
        let loads = self
            .loads
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        loads.get(&(group.to_owned(), target)).map_or(0, |list| {
            list.iter()
                .filter_map(Weak::upgrade)
                .map(|l| l.outstanding())
                .sum()
        })
    }

    /// Remembers a load handed out for `target` of `group`.
    fn record(&self, group: &str, target: SocketAddr, load: &Arc<TargetLoad>) {
        let mut loads = self
            .loads
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        loads
            .entry((group.to_owned(), target))
            .or_default()
            .push(Arc::downgrade(load));
    }

    /// Forgets loads nothing holds any more (their requests have all ended).
    fn prune(&self) {
        let mut loads = self
            .loads
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        loads.retain(|_, list| {
            list.retain(|w| w.strong_count() > 0);
            !list.is_empty()
        });
    }
}

impl LoadRegistry {
    /// Nothing kept yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// The requests in progress per (group, target), for readers outside the proxy.
    pub fn in_flight(&self) -> Arc<InFlight> {
        Arc::clone(&self.in_flight)
    }

    /// Starts a plan build.
    pub fn build(&mut self) -> LoadBuild<'_> {
        self.build += 1;
        LoadBuild { registry: self }
    }

    /// How many (group, target) loads are kept.
    pub fn len(&self) -> usize {
        self.groups.values().map(HashMap::len).sum()
    }

    /// No load kept.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// One plan build's use of the `LoadRegistry`; dropping it forgets what it did not ask for.
#[derive(Debug)]
pub struct LoadBuild<'a> {
    registry: &'a mut LoadRegistry,
}

impl LoadBuild<'_> {
    /// The load of `address` in `group`: the one earlier plans used, or a new idle one.
    pub fn load(&mut self, group: &str, address: SocketAddr) -> Arc<TargetLoad> {
        let build = self.registry.build;
        let targets = match self.registry.groups.get_mut(group) {
            Some(targets) => targets,
            None => self.registry.groups.entry(group.to_owned()).or_default(),
        };
        let in_flight = &self.registry.in_flight;
        let (asked, load) = targets.entry(address).or_insert_with(|| {
            let load = TargetLoad::new();
            in_flight.record(group, address, &load);
            (build, load)
        });
        *asked = build;
        Arc::clone(load)
    }
}

impl Drop for LoadBuild<'_> {
    fn drop(&mut self) {
        let build = self.registry.build;
        self.registry.groups.retain(|_, targets| {
            targets.retain(|_, (asked, _)| *asked == build);
            !targets.is_empty()
        });
        self.registry.in_flight.prune();
    }
}

#[cfg(test)]
mod tests;
