//! The connection table: a client's flow keeps its backend and SNAT port; a new flow gets a
//! backend from Maglev and a free SNAT port.

use aya_ebpf::{
    bindings::{BPF_ANY, BPF_NOEXIST},
    helpers::generated::bpf_ktime_get_coarse_ns,
    programs::XdpContext,
};
use lb_common::{
    Flow, FlowKey, GroupInfo, ListenerInfo, ReverseFlow, Settings, conntrack, group_flags,
    hash::{flow_hash, source_hash},
    verdict,
};

use crate::{
    Packet, Route, Scratch, Verdict, count_new_flow, forward,
    maps::{BACKEND_STATS, BACKENDS, CONNTRACK, GROUPS, LISTENER_STATS, MAGLEV, SETTINGS, SNAT},
    nat::Nat,
    parse::{closes, is_syn},
    snat_addr,
};

/// How many SNAT source ports a new flow tries before it is dropped.
const SNAT_PORT_TRIES: u32 = 8;

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
        Some(flow) if is_syn(ctx, packet, &scratch.key) => {
            let Some(settings) = SETTINGS.get(0) else {
                return Verdict::drop(verdict::DROP_NO_BACKEND);
            };
            let current = match pick_backend(settings, listener, &scratch.key) {
                Ok((backend_id, _)) => backend_id,
                Err(verdict) => return verdict,
            };
            // SAFETY: a connection-table value, valid for the whole run.
            if unsafe { (*flow).backend_id } == current {
                // The same backend: the entry serves the new connection, from now on.
                unsafe {
                    (*flow).last_seen = now();
                    (*flow).closing = 0;
                }
                flow as *const Flow
            } else {
                forget_reverse(unsafe { &*flow }, &scratch.key, &mut scratch.reverse_key);
                match new_flow(listener, scratch, true) {
                    Ok(flow) => flow,
                    Err(verdict) => return verdict,
                }
            }
        }
        Some(flow) => {
            // SAFETY: as above.
            unsafe {
                touch(
                    &mut (*flow).last_seen,
                    &mut (*flow).closing,
                    closes(ctx, packet, &scratch.key),
                );
            }
            flow as *const Flow
        }
        None => match new_flow(listener, scratch, false) {
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

/// Removes the reverse-NAT entry of a flow that is being replaced.
#[inline(always)]
fn forget_reverse(flow: &Flow, key: &FlowKey, reverse_key: &mut FlowKey) {
    reverse_key.src.set(&flow.backend);
    reverse_key.dst.set(&flow.snat_addr);
    reverse_key.sport = flow.backend_port;
    reverse_key.dport = flow.snat_port;
    reverse_key.proto = key.proto;
    reverse_key.family = key.family;
    reverse_key._pad = [0; 2];
    let _ = SNAT.remove(&*reverse_key);
}

/// A flow's first packet (or a new connection's SYN replacing a stale entry, `replace`):
/// Maglev picks the backend, a free SNAT port is claimed, and both directions enter the
/// connection table. Returns the flow as stored.
#[inline(always)]
fn new_flow(
    listener: &ListenerInfo,
    scratch: &mut Scratch,
    replace: bool,
) -> Result<*const Flow, Verdict> {
    let settings = SETTINGS
        .get(0)
        .ok_or(Verdict::drop(verdict::DROP_NO_BACKEND))?;
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
    reverse._pad = [0; 3];
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
    )
    .ok_or(Verdict::drop(verdict::DROP_NO_SNAT))?;
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
    let flags = if replace { BPF_ANY } else { BPF_NOEXIST };
    if CONNTRACK
        .insert(&scratch.key, &scratch.flow, u64::from(flags))
        .is_err()
    {
        // Another CPU created this flow first (or the table refused): undo our claim and
        // follow the winner, so both directions agree on one SNAT port.
        let _ = SNAT.remove(&scratch.reverse_key);
        return match CONNTRACK.get_ptr(&scratch.key) {
            Some(existing) => Ok(existing),
            None => Err(Verdict::drop(verdict::DROP_MAP_FULL)),
        };
    }
    count_new_flow(&LISTENER_STATS, listener.listener_id);
    count_new_flow(&BACKEND_STATS, backend_id);
    Ok(&raw const scratch.flow)
}

/// Claims a source port towards the backend that no live flow uses: the reverse entry is
/// inserted only if absent, so two clients can never share (SNAT address, port, backend), or
/// over the entry of a flow that is over (idle past its timeout, or closed and quiet), whose
/// connection-table entry goes with it. Returns the port in network byte order.
#[inline(always)]
fn claim_snat_port(
    settings: &Settings,
    hash: u32,
    reverse_key: &mut FlowKey,
    reverse: &ReverseFlow,
    old_key: &mut FlowKey,
    now: u64,
) -> Option<u16> {
    let min = u32::from(settings.snat_port_min);
    let span = u32::from(settings.snat_port_max).saturating_sub(min) + 1;
    let start = hash % span;
    for attempt in 0..SNAT_PORT_TRIES {
        // A prime stride, so retries scatter instead of probing a crowded neighbourhood.
        let port = ((min + (start + attempt * 7919) % span) as u16).to_be();
        reverse_key.dport = port;
        if SNAT
            .insert(&*reverse_key, reverse, u64::from(BPF_NOEXIST))
            .is_ok()
        {
            return Some(port);
        }
        if over(settings, reverse_key, old_key, now)
            && SNAT
                .insert(&*reverse_key, reverse, u64::from(BPF_ANY))
                .is_ok()
        {
            return Some(port);
        }
    }
    None
}

/// Whether the flow holding the SNAT entry `reverse_key` is over; if it is, its connection-
/// table entry is removed (its client's next packet starts a new flow).
#[inline(always)]
fn over(settings: &Settings, reverse_key: &FlowKey, old_key: &mut FlowKey, now: u64) -> bool {
    let Some(old) = SNAT.get_ptr(reverse_key) else {
        return true;
    };
    // SAFETY: a map value, valid for the whole run.
    let old = unsafe { &*old };
    old_key.src.set(&old.client);
    old_key.dst.set(&old.vip);
    old_key.sport = old.client_port;
    old_key.dport = old.vip_port;
    old_key.proto = reverse_key.proto;
    old_key.family = reverse_key.family;
    old_key._pad = [0; 2];
    let forward = CONNTRACK
        .get_ptr(&*old_key)
        .map(|f| unsafe { &*f })
        .filter(|f| {
            // The client's 5-tuple may carry a newer flow now, with a port of its own.
            f.snat_port == reverse_key.dport && f.backend_id == old.backend_id
        });
    let (seen, closing) = match forward {
        Some(f) => (
            if f.last_seen > old.last_seen {
                f.last_seen
            } else {
                old.last_seen
            },
            f.closing | old.closing != 0,
        ),
        // Its connection-table entry is gone (evicted or replaced): only replies are left.
        None => (old.last_seen, true),
    };
    if !conntrack::expired(settings, reverse_key.proto, closing, seen, now) {
        return false;
    }
    if forward.is_some() {
        let _ = CONNTRACK.remove(&*old_key);
    }
    true
}
