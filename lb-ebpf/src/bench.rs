//! Benchmark support: keeping a frame's headers aside so a program that rewrites them can run
//! again and again on the same frame (`lb_restoring`, `tx_restoring`).

use aya_ebpf::programs::XdpContext;

use crate::{headers::ptr_at, maps::BENCH_SAVED};

/// Bytes kept aside: Ethernet, IPv4 or IPv6 (without options) and the TCP or UDP ports and
/// checksum all lie within them for the benchmark's frames (at least this long).
pub(crate) const SAVED_BYTES: usize = 8 * 10;

/// Copies the frame's first `SAVED_BYTES` bytes aside; false if the frame is shorter.
#[inline(always)]
pub(crate) fn save(ctx: &XdpContext) -> bool {
    let (Some(frame), Some(saved)) = (
        ptr_at::<[u64; SAVED_BYTES / 8]>(ctx, 0),
        BENCH_SAVED.get_ptr_mut(0),
    ) else {
        return false;
    };
    // SAFETY: both checked above; word by word (an aggregate copy may become a byte-wise
    // memcpy call in BPF). Unaligned packet loads are allowed where the JIT runs (x86-64,
    // arm64).
    unsafe {
        for i in 0..SAVED_BYTES / 8 {
            (*saved)[i] = (*frame)[i];
        }
    }
    true
}

/// Writes the bytes `save` kept back into the frame.
#[inline(always)]
pub(crate) fn restore(ctx: &XdpContext) {
    let (Some(frame), Some(saved)) = (
        ptr_at::<[u64; SAVED_BYTES / 8]>(ctx, 0),
        BENCH_SAVED.get_ptr(0),
    ) else {
        return;
    };
    // SAFETY: as in `save`.
    unsafe {
        for i in 0..SAVED_BYTES / 8 {
            (*frame)[i] = (*saved)[i];
        }
    }
}
