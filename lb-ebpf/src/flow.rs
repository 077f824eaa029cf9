//! The connection table: a client's flow keeps its backend and SNAT port; a new flow (a TCP
//! SYN, or any UDP datagram) gets a backend from Maglev and a free SNAT port, within its
//! listener's new-flow budget.
//!
//! The two halves of a flow (`CONNTRACK`, keyed by the client's 5-tuple, and its `SNAT`
//! reverse entry) are made together and go together: a new flow undoes its reverse entry when
//! its forward entry cannot be stored, a port takeover removes the old flow's forward entry,
//! and the agent's sweeper deletes both halves of a flow that is over.

use core::intrinsics::{AtomicOrdering, atomic_cxchg, atomic_xadd};

use aya_ebpf::{
    bindings::BPF_NOEXIST, helpers::generated::bpf_ktime_get_coarse_ns, programs::XdpContext,
};
use lb_common::{
    Flow, FlowKey, GroupInfo, ListenerInfo, PROTO_TCP, ReverseFlow, Settings, conntrack,
    group_flags,
    hash::{flow_hash, source_hash},
    verdict,
};

use crate::{
    Packet, Route, Scratch, Verdict, count_new_flow, forward,
    maps::{
        BACKEND_STATS, BACKENDS, CONNTRACK, GROUPS, LISTENER_STATS, MAGLEV, NEW_FLOW_BUDGET,
        SETTINGS, SNAT,
    },
    nat::Nat,
    parse::{closes, is_syn},
    snat_addr,
};

/// How many SNAT source ports a new flow tries before it is dropped.
const SNAT_PORT_TRIES: u32 = 8;

/// One second in the clock's unit.
const SECOND_NS: u64 = 1_000_000_000;

/// `bpf_map_update_elem`'s answer when the map holds `max_entries` already.
const E2BIG: i32 = 7;

/// A listener's new-flow token bucket on one CPU (`NEW_FLOW_BUDGET`). The credit is counted in
/// nanoseconds × flows per second, so a refill is one multiplication: a flow costs
/// `SECOND_NS`, and the bucket holds a second's worth of flows.
#[repr(C)]
pub struct FlowBudget {
    credit: u64,
    /// When the credit was last brought up to date.
    updated_ns: u64,
}

/// A client's packet to a listener: find or make its flow, rewrite, send to the backend.
#[inline(always)]
pub(crate) fn to_backend(
    ctx: &XdpContext,
    packet: &Packet,
    listener: &ListenerInfo,
    scratch: &mut Scratch,
) -> Verdict {
    let flow = match CONNTRACK.get_ptr_mut(&scratch.key) {
        // A SYN opens a new connection even if its 5-tuple is still in the table (a reused
        // client port): it must go where Maglev sends new flows now, not to a stale backend.
        Some(flow) if is_syn(ctx, packet, &scratch.key) => match reopen(listener, scratch, flow) {
            Ok(flow) => flow,
            Err(verdict) => return verdict,
        },
        Some(flow) => {
            // SAFETY: a connection-table value, valid for the whole run.
            unsafe {
                touch(
                    &mut (*flow).last_seen,
                    &mut (*flow).closing,
                    closes(ctx, packet, &scratch.key),
                );
            }
            flow as *const Flow
        }
        // Only a SYN starts a TCP flow: a stray ACK or RST (spoofed, or of a flow long gone)
        // must not claim a SNAT port. The target would answer it with a reset anyway.
        None if scratch.key.proto == PROTO_TCP && !is_syn(ctx, packet, &scratch.key) => {
            return Verdict::drop(verdict::DROP_NO_FLOW);
        }
        None => match new_flow(listener, scratch) {
            Ok(flow) => flow,
            Err(verdict) => return verdict,
        },
    };
    // SAFETY: a connection-table value or this CPU's scratch: valid for the whole run.
    let flow = unsafe { &*flow };
    let nat = Nat {
        src: &flow.snat_addr,
        sport: flow.snat_port,
        dst: &flow.backend,
        dport: flow.backend_port,
    };
    let route = Route {
        reason: verdict::FWD_TO_BACKEND,
        listener_id: flow.listener_id,
        backend_id: flow.backend_id,
    };
    forward(ctx, packet, &scratch.key, &nat, &mut scratch.fib, &route)
}

/// A SYN whose 5-tuple is in the table. If Maglev still picks the same backend and the
/// flow's reverse entry is there, the pair serves the new connection and both halves start
/// clean (no closing mark, not answered yet, seen now); otherwise the old pair goes and the
/// SYN makes a new flow.
#[inline(always)]
fn reopen(
    listener: &ListenerInfo,
    scratch: &mut Scratch,
    flow: *mut Flow,
) -> Result<*const Flow, Verdict> {
    let settings = SETTINGS
        .get(0)
        .ok_or(Verdict::drop(verdict::DROP_NO_BACKEND))?;
    let (current, _) = pick_backend(settings, listener, &scratch.key)?;
    // SAFETY: a connection-table value, valid for the whole run.
    let old = unsafe { &mut *flow };
    conntrack::set_reverse_key(&mut scratch.reverse_key, &scratch.key, old);
    if old.backend_id == current
        && let Some(reverse) = SNAT.get_ptr_mut(&scratch.reverse_key)
    {
        // SAFETY: a reverse-NAT value, valid for the whole run.
        let reverse = unsafe { &mut *reverse };
        let key = &scratch.key;
        if conntrack::belongs(reverse, key) {
            let now = now();
            reverse.closing = 0;
            reverse.answered = 0;
            reverse.last_seen = now;
            old.closing = 0;
            old.last_seen = now;
            return Ok(flow as *const Flow);
        }
    }
    // Over budget: the old pair stays as it is (the SYN is dropped before it is touched).
    admit(settings, listener.listener_id)?;
    // Both halves go, so a failure below leaves no half behind.
    let _ = SNAT.remove(&scratch.reverse_key);
    let _ = CONNTRACK.remove(&scratch.key);
    make_flow(settings, listener, scratch)
}

/// The clock of `last_seen`.
#[inline(always)]
fn now() -> u64 {
    // SAFETY: a helper without arguments.
    unsafe { bpf_ktime_get_coarse_ns() }
}

/// Notes a packet of a flow: `last_seen` moves on (at most once a `REFRESH_NS`, so a busy
/// flow writes its entry once a second, not per packet), and a FIN or RST marks it closing
/// (and moves `last_seen` to it).
#[inline(always)]
pub(crate) fn touch(last_seen: &mut u64, closing: &mut u8, closes: bool) {
    let now = now();
    if now.wrapping_sub(*last_seen) > conntrack::REFRESH_NS {
        *last_seen = now;
    }
    if closes && *closing == 0 {
        // The closed timeout counts from the FIN or RST itself.
        *closing = 1;
        *last_seen = now;
    }
}

/// Takes one new flow from `listener_id`'s budget on this CPU; `DROP_FLOOD` when it is spent.
#[inline(always)]
fn admit(settings: &Settings, listener_id: u32) -> Result<(), Verdict> {
    let rate = u64::from(settings.new_flows_per_s);
    if rate == 0 {
        return Ok(());
    }
    let Some(budget) = NEW_FLOW_BUDGET.get_ptr_mut(listener_id) else {
        return Ok(());
    };
    // SAFETY: this CPU's value, used by this program run alone.
    let budget = unsafe { &mut *budget };
    let now = now();
    let full = rate * SECOND_NS;
    let elapsed = now.wrapping_sub(budget.updated_ns);
    // A second or more since the last new flow (or never): the bucket is full. Else the
    // product stays below `full` + 1e9 × rate, far from overflowing.
    let credit = if elapsed >= SECOND_NS {
        full
    } else {
        let refilled = budget.credit + elapsed * rate;
        if refilled > full { full } else { refilled }
    };
    budget.updated_ns = now;
    if credit < SECOND_NS {
        budget.credit = credit;
        return Err(Verdict::drop(verdict::DROP_FLOOD));
    }
    budget.credit = credit - SECOND_NS;
    Ok(())
}

/// The backend Maglev gives a new flow `key` of `listener` now, and the flow's hash.
#[inline(always)]
fn pick_backend(
    settings: &Settings,
    listener: &ListenerInfo,
    key: &FlowKey,
) -> Result<(u32, u32), Verdict> {
    let no_backend = Verdict::drop(verdict::DROP_NO_BACKEND);
    let group = GROUPS.get(listener.group_id).ok_or(no_backend)?;
    let hash = flow_hash(key, settings.hash_seed);
    let pick = if group.flags & group_flags::STICKY_SOURCE_IP != 0 {
        source_hash(&key.src, key.family, settings.hash_seed)
    } else {
        hash
    };
    let maglev_size = settings.maglev_size;
    if maglev_size == 0 {
        return Err(no_backend);
    }
    let slot = GroupInfo::maglev_base(listener.group_id, group.active_slot, maglev_size)
        + pick % maglev_size;
    match MAGLEV.get(slot) {
        Some(&id) if id != 0 => Ok((id, hash)),
        _ => Err(no_backend),
    }
}

/// A flow's first packet: within the listener's budget, Maglev picks the backend, a free SNAT
/// port is claimed, and both directions enter the connection table. Returns the flow as
/// stored.
#[inline(always)]
fn new_flow(listener: &ListenerInfo, scratch: &mut Scratch) -> Result<*const Flow, Verdict> {
    let settings = SETTINGS
        .get(0)
        .ok_or(Verdict::drop(verdict::DROP_NO_BACKEND))?;
    admit(settings, listener.listener_id)?;
    make_flow(settings, listener, scratch)
}

/// Makes the flow `scratch.key` (admitted already): backend, SNAT port, both halves.
#[inline(always)]
fn make_flow(
    settings: &Settings,
    listener: &ListenerInfo,
    scratch: &mut Scratch,
) -> Result<*const Flow, Verdict> {
    let (backend_id, hash) = pick_backend(settings, listener, &scratch.key)?;
    let key = &scratch.key;
    let backend = BACKENDS
        .get(backend_id)
        .ok_or(Verdict::drop(verdict::DROP_NO_BACKEND))?;
    let snat_addr = snat_addr(settings, key.family).ok_or(Verdict::drop(verdict::DROP_NO_SNAT))?;
    // Field by field, into per-CPU memory: struct literals would be built on the stack.
    let reverse = &mut scratch.reverse;
    reverse.client.set(&key.src);
    reverse.vip.set(&key.dst);
    reverse.client_port = key.sport;
    reverse.vip_port = key.dport;
    reverse.backend_id = backend_id;
    reverse.listener_id = listener.listener_id;
    let now = now();
    reverse.closing = 0;
    reverse.answered = 0;
    reverse._pad = 0;
    reverse.generation = 0;
    reverse.last_seen = now;
    let reverse_key = &mut scratch.reverse_key;
    reverse_key.src.set(&backend.addr);
    reverse_key.dst.set(snat_addr);
    reverse_key.sport = backend.port;
    reverse_key.proto = key.proto;
    reverse_key.family = backend.family;
    reverse_key._pad = [0; 2];
    let snat_port = claim_snat_port(
        settings,
        hash,
        &mut scratch.reverse_key,
        &scratch.reverse,
        &mut scratch.old_key,
        now,
    )?;
    let flow = &mut scratch.flow;
    flow.backend.set(&backend.addr);
    flow.backend_port = backend.port;
    flow.snat_port = snat_port;
    flow.snat_addr.set(snat_addr);
    flow.backend_id = backend_id;
    flow.listener_id = listener.listener_id;
    flow.closing = 0;
    flow._pad = [0; 3];
    flow.last_seen = now;
    if let Err(errno) = CONNTRACK.insert(&scratch.key, &scratch.flow, u64::from(BPF_NOEXIST)) {
        // Another CPU created this flow first, or the table is full: undo our claim (the two
        // halves live and die together), and follow the winner if there is one, so both
        // directions agree on one SNAT port.
        let _ = SNAT.remove(&scratch.reverse_key);
        return match CONNTRACK.get_ptr(&scratch.key) {
            Some(existing) if -errno != E2BIG => Ok(existing),
            _ => Err(Verdict::drop(verdict::DROP_MAP_FULL)),
        };
    }
    count_new_flow(&LISTENER_STATS, listener.listener_id);
    count_new_flow(&BACKEND_STATS, backend_id);
    Ok(&raw const scratch.flow)
}

/// Claims a source port towards the backend that no live flow uses: the reverse entry is
/// inserted only if absent, so two clients can never share (SNAT address, port, backend), or
/// takes over the entry of a flow that is over (`take_over`). Returns the port in network
/// byte order; `DROP_NO_SNAT` when every port tried is live, `DROP_MAP_FULL` when the table
/// is full.
#[inline(always)]
fn claim_snat_port(
    settings: &Settings,
    hash: u32,
    reverse_key: &mut FlowKey,
    reverse: &ReverseFlow,
    old_key: &mut FlowKey,
    now: u64,
) -> Result<u16, Verdict> {
    let min = u32::from(settings.snat_port_min);
    let span = u32::from(settings.snat_port_max).saturating_sub(min) + 1;
    for attempt in 0..SNAT_PORT_TRIES {
        let port = (conntrack::probe_port(min, span, hash, attempt) as u16).to_be();
        reverse_key.dport = port;
        match SNAT.insert(&*reverse_key, reverse, u64::from(BPF_NOEXIST)) {
            Ok(()) => return Ok(port),
            Err(errno) if -errno == E2BIG => return Err(Verdict::drop(verdict::DROP_MAP_FULL)),
            Err(_) => {}
        }
        if take_over(settings, reverse_key, reverse, old_key, now) {
            return Ok(port);
        }
    }
    Err(Verdict::drop(verdict::DROP_NO_SNAT))
}

/// Takes the SNAT entry `reverse_key` for the new flow `reverse` if the flow holding it is
/// over: its generation is bumped with a compare-and-swap first, so of two CPUs that both see
/// the same finished flow only one takes its port; the winner removes the old flow's forward
/// entry (its client's next packet is a stray, or a new flow) and rewrites the entry in place.
#[inline(always)]
fn take_over(
    settings: &Settings,
    reverse_key: &FlowKey,
    reverse: &ReverseFlow,
    old_key: &mut FlowKey,
    now: u64,
) -> bool {
    let Some(old) = SNAT.get_ptr_mut(reverse_key) else {
        // Gone since our insert failed (the sweeper, or a flow that ended): free again.
        return SNAT
            .insert(reverse_key, reverse, u64::from(BPF_NOEXIST))
            .is_ok();
    };
    // SAFETY: a map value, valid for the whole run (the map is not preallocated, so even an
    // entry deleted meanwhile stays memory of its own until the run ends).
    let generation_ptr = unsafe { &raw mut (*old).generation };
    // SAFETY: as above; read once, before anything else of the entry.
    let generation = unsafe { generation_ptr.read_volatile() };
    // Odd: another CPU won this entry and is writing its flow into it. Its fields may still
    // be the old, over flow's: judging them would let a second CPU take the port too.
    if generation & 1 != 0 {
        return false;
    }
    let old = unsafe { &mut *old };
    old_key.src.set(&old.client);
    old_key.dst.set(&old.vip);
    old_key.sport = old.client_port;
    old_key.dport = old.vip_port;
    old_key.proto = reverse_key.proto;
    old_key.family = reverse_key.family;
    old_key._pad = [0; 2];
    let forward = CONNTRACK
        .get_ptr(&*old_key)
        // SAFETY: a map value, valid for the whole run.
        .map(|f| unsafe { &*f })
        .filter(|f| {
            // The client's 5-tuple may carry a newer flow now, with a port of its own.
            f.snat_port == reverse_key.dport && f.backend_id == old.backend_id
        });
    if !conntrack::over(settings, reverse_key.proto, forward, Some(old), now) {
        return false;
    }
    // SAFETY: an aligned u64 of a map value, only ever changed atomically. The intrinsic, as
    // the BPF target offers no `compare_exchange` on its atomics (it compiles to BPF's
    // cmpxchg instruction all the same).
    let (_, won) = unsafe {
        atomic_cxchg::<u64, { AtomicOrdering::SeqCst }, { AtomicOrdering::SeqCst }>(
            generation_ptr,
            generation,
            generation.wrapping_add(1),
        )
    };
    if !won {
        return false;
    }
    if forward.is_some() {
        let _ = CONNTRACK.remove(&*old_key);
    }
    // In place, field by field, the generation kept: the entry stays the one element other
    // CPUs compare against.
    old.client.set(&reverse.client);
    old.vip.set(&reverse.vip);
    old.client_port = reverse.client_port;
    old.vip_port = reverse.vip_port;
    old.backend_id = reverse.backend_id;
    old.listener_id = reverse.listener_id;
    old.closing = 0;
    old.answered = 0;
    old.last_seen = reverse.last_seen;
    // Even again (a full barrier, after every field above): the entry is a whole live flow,
    // which no other CPU will judge over.
    // SAFETY: as for the compare-and-swap.
    unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::SeqCst }>(generation_ptr, 1) };
    // If the agent's sweeper deleted the entry between our lookup and now, the writes went
    // to a detached element: put the new flow's entry in the map.
    match SNAT.get_ptr(reverse_key) {
        Some(current) if core::ptr::eq(current, old) => true,
        Some(_) => false,
        None => SNAT
            .insert(reverse_key, reverse, u64::from(BPF_NOEXIST))
            .is_ok(),
    }
}
