//! Sending a rewritten packet: `bpf_fib_lookup` for the next hop, then XDP_TX or a redirect.

use aya_ebpf::{
    EbpfContext as _, bindings::xdp_action, helpers::generated::bpf_fib_lookup,
    programs::XdpContext,
};
use lb_common::{Addr, FAMILY_V4, FAMILY_V6, FlowKey, NextHop, verdict};

use crate::{
    Verdict,
    headers::{EthHdr, ptr_at},
    maps::{NEXT_HOP_MISSES, TX_PORTS},
    nat::Nat,
};

/// `struct bpf_fib_lookup` (uapi/linux/bpf.h), laid out flat: the unions we use as one member.
#[repr(C)]
pub(crate) struct FibParams {
    pub(crate) family: u8,
    pub(crate) l4_protocol: u8,
    pub(crate) sport: u16,
    pub(crate) dport: u16,
    pub(crate) tot_len: u16,
    pub(crate) ifindex: u32,
    pub(crate) flowinfo: u32,
    pub(crate) src: Addr,
    pub(crate) dst: Addr,
    pub(crate) vlan_proto: u16,
    pub(crate) vlan_tci: u16,
    pub(crate) smac: [u16; 3],
    pub(crate) dmac: [u16; 3],
}
const _: () = assert!(size_of::<FibParams>() == 64);

const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;
const BPF_FIB_LKUP_RET_SUCCESS: i64 = 0;
const BPF_FIB_LKUP_RET_NO_NEIGH: i64 = 7;

/// Routes the rewritten packet: the kernel's FIB and neighbour tables give the next hop, then
/// XDP_TX back out of the same NIC or a redirect to another one.
#[inline(always)]
pub(crate) fn send(
    ctx: &XdpContext,
    key: &FlowKey,
    nat: &Nat<'_>,
    fib: &mut FibParams,
    reason: u32,
) -> Verdict {
    let ingress = ctx.ingress_ifindex() as u32;
    // Field by field, into per-CPU memory: a struct literal would be built on the stack.
    fib.family = if key.family == FAMILY_V4 {
        AF_INET
    } else {
        AF_INET6
    };
    fib.l4_protocol = key.proto;
    fib.sport = 0;
    fib.dport = 0;
    // 0: no MTU check; the frame is no longer than when it arrived.
    fib.tot_len = 0;
    fib.ifindex = ingress;
    fib.flowinfo = 0;
    fib.src.set(nat.src);
    fib.dst.set(nat.dst);
    // vlan_*, smac and dmac are outputs (their union twins, tbid and mark, are read only
    // with flags we do not pass): no need to clear them.
    let rc = unsafe {
        bpf_fib_lookup(
            ctx.as_ptr(),
            (fib as *mut FibParams).cast(),
            size_of::<FibParams>() as i32,
            0,
        )
    };
    match rc {
        BPF_FIB_LKUP_RET_SUCCESS => {}
        BPF_FIB_LKUP_RET_NO_NEIGH => {
            note_missing_neighbour(fib);
            return Verdict::drop(verdict::DROP_NO_NEIGH);
        }
        _ => return Verdict::drop(verdict::DROP_NO_ROUTE),
    }
    let Some(eth) = ptr_at::<EthHdr>(ctx, 0) else {
        return Verdict::drop(verdict::DROP_MALFORMED);
    };
    unsafe {
        (*eth).dst = [fib.dmac[0], fib.dmac[1], fib.dmac[2]];
        (*eth).src = [fib.smac[0], fib.smac[1], fib.smac[2]];
    }
    if fib.ifindex == ingress {
        return Verdict {
            action: xdp_action::XDP_TX,
            reason,
        };
    }
    // Only through the redirect map: the agent puts there the interfaces that take XDP
    // frames. A generic `bpf_redirect` to any other (a VLAN device, one created after we
    // attached) returns XDP_REDIRECT and the kernel then drops the frame where we cannot
    // count it, so it would be counted as forwarded: count it as the drop it is.
    match TX_PORTS.redirect(fib.ifindex, 0) {
        Ok(action) => Verdict { action, reason },
        Err(_) => Verdict::drop(verdict::DROP_REDIRECT),
    }
}

/// Notes the next hop of a packet dropped for want of its neighbour entry, for the agent to
/// resolve (an XDP program cannot send ARP or neighbour solicitations). On NO_NEIGH the helper
/// has filled in the egress interface and the next hop's address (and the family, which an
/// IPv6 gateway of an IPv4 route changes).
#[inline(always)]
fn note_missing_neighbour(fib: &FibParams) {
    let words = fib.dst.words();
    let (family, words) = if fib.family == AF_INET {
        // Only the first word is the helper's: the rest is ours, zeroed so one hop is one key.
        (FAMILY_V4, [words[0], 0, 0, 0])
    } else {
        (FAMILY_V6, words)
    };
    let mut hop = NextHop {
        addr: Addr([0; 16]),
        ifindex: fib.ifindex,
        family,
        _pad0: 0,
        _pad1: 0,
    };
    hop.addr.set_words(words);
    // A burst of packets to one unresolved hop reads the entry and writes it once: a lookup
    // takes no lock, an LRU update does.
    if NEXT_HOP_MISSES.get_ptr(&hop).is_none() {
        // Full or raced by another CPU: the hop is noted either way, or will be next time.
        let _ = NEXT_HOP_MISSES.insert(&hop, &0, 0);
    }
}
