//! The verdicts of one connection's request heads, written by the guard as it reads and taken
//! by the service once per request, in order.
//!
//! Every verdict but the last is `Ok` (the guard stops at the first refusal, since the
//! connection closes there), so the whole list is a count of good heads and how the stream
//! ended: three atomics, no lock and no queue that a long pipelined or tunnelled stream could
//! grow.

use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};

use super::Framing;
use super::head::Ambiguity;

/// `end` while the guard still follows the stream.
const FOLLOWING: u8 = u8::MAX;
/// `end` once the connection turned out not to be HTTP/1 (the h2 preface).
const NOT_HTTP1: u8 = u8::MAX - 1;

/// One connection's verdicts; shared (in an `Arc`) by its `FramingGuard` and its service.
#[derive(Debug)]
pub struct FramingVerdicts {
    /// Heads judged `Ok`, in order.
    ok_heads: AtomicU64,
    /// Verdicts the service has taken.
    taken: AtomicU64,
    /// How the stream ended: `FOLLOWING`, `NOT_HTTP1`, or an `Ambiguity` code for the head after
    /// the `ok_heads` good ones.
    end: AtomicU8,
    /// The refusal in `end` was withheld from hyper and answered by the guard.
    withheld: AtomicBool,
    /// The number of the head being awaited (1 for the first, from the connection's start;
    /// later ones from their first byte), 0 between heads: what the watchdog times.
    awaiting: AtomicU64,
    /// The watchdog's word that the awaited head is late.
    timed_out: AtomicBool,
}

impl FramingVerdicts {
    pub(super) fn new() -> Self {
        Self {
            ok_heads: AtomicU64::new(0),
            taken: AtomicU64::new(0),
            end: AtomicU8::new(FOLLOWING),
            withheld: AtomicBool::new(false),
            awaiting: AtomicU64::new(1),
            timed_out: AtomicBool::new(false),
        }
    }

    /// The number of the request head being awaited (since the connection opened, or since
    /// its first byte arrived), or 0 when none is: a watchdog that sees the same number for
    /// the request-header timeout calls `time_out_head`.
    pub fn awaiting_head(&self) -> u64 {
        self.awaiting.load(Ordering::Relaxed)
    }

    /// The awaited head is late: the guard answers 408 and ends the input at its next read
    /// (the caller then polls the connection).
    pub fn time_out_head(&self) {
        self.timed_out.store(true, Ordering::Relaxed);
    }

    /// Whether the stream ended at a head that came too late (answered 408).
    pub fn ended_late(&self) -> bool {
        self.end.load(Ordering::Acquire) == Ambiguity::HeadTimeout as u8
    }

    pub(super) fn head_timed_out(&self) -> bool {
        self.timed_out.load(Ordering::Relaxed)
    }

    /// A head's first byte arrived.
    pub(super) fn head_begun(&self) {
        if self.awaiting.load(Ordering::Relaxed) == 0 {
            let next = self.ok_heads.load(Ordering::Relaxed) + 1;
            self.awaiting.store(next, Ordering::Relaxed);
        }
    }

    /// The verdict on the next request of the connection. Call it once per request, in the
    /// order hyper hands requests to the service (on HTTP/1.1, one after another).
    ///
    /// Every head reaches the guard before hyper can parse it, so a request never asks before
    /// its verdict is recorded; if one does anyway (a service on a connection the guard does
    /// not wrap), the answer is a refusal rather than a guess.
    pub fn next(&self) -> Framing {
        let index = self.taken.fetch_add(1, Ordering::Relaxed);
        // `end` first: once it is set, every `ok_heads` increment before it is visible.
        let end = self.end.load(Ordering::Acquire);
        if index < self.ok_heads.load(Ordering::Acquire) {
            return Framing::Ok;
        }
        match end {
            NOT_HTTP1 => Framing::Ok,
            FOLLOWING => Framing::Ambiguous(Ambiguity::NotSeen.reason()),
            code => Framing::Ambiguous(
                Ambiguity::from_code(code)
                    .unwrap_or(Ambiguity::Unparsable)
                    .reason(),
            ),
        }
    }

    /// The next head is good.
    pub(super) fn record_ok(&self) {
        self.ok_heads.fetch_add(1, Ordering::Release);
        self.awaiting.store(0, Ordering::Relaxed);
    }

    /// The next head (and everything after it) is refused.
    pub(super) fn refuse(&self, ambiguity: Ambiguity) {
        self.finish(ambiguity as u8);
    }

    /// The next head is refused and never reaches hyper: the guard answers it.
    pub(super) fn refuse_withheld(&self, ambiguity: Ambiguity) {
        self.withheld.store(true, Ordering::Relaxed);
        self.refuse(ambiguity);
    }

    /// Why the guard refused a head itself (withheld from hyper), if it did: for the
    /// connection's metrics and logs once it ends.
    pub fn withheld_refusal(&self) -> Option<&'static str> {
        if !self.withheld.load(Ordering::Relaxed) {
            return None;
        }
        let code = self.end.load(Ordering::Acquire);
        Some(
            Ambiguity::from_code(code)
                .unwrap_or(Ambiguity::Unparsable)
                .reason(),
        )
    }

    /// The connection is HTTP/2: every request is `Ok` from here.
    pub(super) fn not_http1(&self) {
        self.finish(NOT_HTTP1);
    }

    /// Sets how the stream ended, once: the first ending stands.
    fn finish(&self, end: u8) {
        self.awaiting.store(0, Ordering::Relaxed);
        let _first =
            self.end
                .compare_exchange(FOLLOWING, end, Ordering::Release, Ordering::Relaxed);
    }
}
