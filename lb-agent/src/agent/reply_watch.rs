//! Notices the symptom of a load balancer whose forwarded packets are never answered: over
//! the last `WINDOW`, packets forwarded to targets but not one reply reverse-NATed back to a
//! client. Full NAT (the only mode) brings every reply back through the node, so this means
//! the targets drop what we send, or answer by another path; `status` says so.
//!
//! The verdict counters are sampled at most every `SAMPLE_EVERY` (from the monitor's tick and
//! on `status` reads) into a short history; the judgement is a pure function of two samples.

use std::{
    collections::VecDeque,
    sync::Mutex,
    time::{Duration, Instant},
};

use lb_common::verdict;

use crate::dataplane::Verdicts;

/// How far back the symptom is judged.
pub const WINDOW: Duration = Duration::from_secs(10);
/// Samples are at least this far apart.
pub const SAMPLE_EVERY: Duration = Duration::from_secs(1);
/// Packets forwarded to targets, unanswered within the window, before the agent says so: a
/// few unanswered SYNs (a client that gave up, a target that restarted) are no symptom.
pub const MIN_UNANSWERED: u64 = 10;

/// The two counters the judgement needs, at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sample {
    pub at: Instant,
    /// Packets forwarded to targets (`fwd_to_backend`).
    pub to_targets: u64,
    /// Replies reverse-NATed to clients (`fwd_to_client`).
    pub to_clients: u64,
}

impl Sample {
    /// The counters of `verdicts` at `at`.
    pub fn of(verdicts: &Verdicts, at: Instant) -> Self {
        Self {
            at,
            to_targets: verdicts[verdict::FWD_TO_BACKEND as usize],
            to_clients: verdicts[verdict::FWD_TO_CLIENT as usize],
        }
    }
}

/// The warning `status` shows when, from `older` to `newer`, at least `MIN_UNANSWERED`
/// packets went to targets and no reply came back; `None` otherwise. Counters that went
/// down (a data plane loaded afresh) are no symptom.
pub fn unanswered_warning(older: &Sample, newer: &Sample) -> Option<String> {
    let forwarded = newer.to_targets.checked_sub(older.to_targets)?;
    let answered = newer.to_clients.checked_sub(older.to_clients)?;
    if forwarded < MIN_UNANSWERED || answered > 0 {
        return None;
    }
    let seconds = newer
        .at
        .saturating_duration_since(older.at)
        .as_secs()
        .max(1);
    Some(format!(
        "{forwarded} packets forwarded to targets in the last {seconds} s and not one reply came \
         back (fwd_to_backend grew, fwd_to_client did not). Most likely the senders are on veths \
         with TX checksum offload on (the default): their frames carry partial checksums, which \
         the targets reject after the rewrite; run `ethtool -K DEV tx off` on every client's and \
         target's veth (and their peers). Otherwise the targets' route back to the SNAT \
         addresses does not lead through this node, a firewall on the targets drops the SNAT \
         addresses, or the listeners only carry one-way traffic (UDP nobody answers)"
    ))
}

/// The recent samples, oldest first: enough to span `WINDOW`.
#[derive(Debug, Default)]
pub struct ReplyWatch {
    samples: Mutex<VecDeque<Sample>>,
}

impl ReplyWatch {
    /// Whether a sample taken at `now` would be kept (the last one is `SAMPLE_EVERY` old):
    /// lets callers skip reading the counters.
    pub fn due(&self, now: Instant) -> bool {
        let samples = self.samples.lock().unwrap_or_else(|e| e.into_inner());
        samples
            .back()
            .is_none_or(|last| now.saturating_duration_since(last.at) >= SAMPLE_EVERY)
    }

    /// Keeps `sample` if the last one is `SAMPLE_EVERY` old, and forgets samples no longer
    /// needed to span `WINDOW` back from it.
    pub fn record(&self, sample: Sample) {
        let mut samples = self.samples.lock().unwrap_or_else(|e| e.into_inner());
        if samples
            .back()
            .is_some_and(|last| sample.at.saturating_duration_since(last.at) < SAMPLE_EVERY)
        {
            return;
        }
        samples.push_back(sample);
        // The oldest sample inside the window is the baseline; older ones are not needed.
        while samples
            .get(1)
            .is_some_and(|next| sample.at.saturating_duration_since(next.at) >= WINDOW)
        {
            samples.pop_front();
        }
    }

    /// The warnings of the samples kept: from the oldest within `WINDOW` of the newest to the
    /// newest.
    pub fn warnings(&self) -> Vec<String> {
        let samples = self.samples.lock().unwrap_or_else(|e| e.into_inner());
        let Some(newest) = samples.back() else {
            return Vec::new();
        };
        let baseline = samples
            .iter()
            .find(|s| newest.at.saturating_duration_since(s.at) <= WINDOW)
            .unwrap_or(newest);
        unanswered_warning(baseline, newest).into_iter().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(start: Instant, second: u64, to_targets: u64, to_clients: u64) -> Sample {
        Sample {
            at: start + Duration::from_secs(second),
            to_targets,
            to_clients,
        }
    }

    #[test]
    fn forwarded_packets_without_one_reply_are_a_symptom() {
        let t = Instant::now();
        let warning =
            unanswered_warning(&sample(t, 0, 100, 50), &sample(t, 5, 112, 50)).expect("a warning");
        assert!(warning.starts_with("12 packets forwarded"), "{warning}");
        assert!(warning.contains("ethtool -K DEV tx off"), "{warning}");
        assert!(warning.contains("route back"), "{warning}");
    }

    #[test]
    fn a_single_reply_is_no_symptom() {
        let t = Instant::now();
        assert_eq!(
            unanswered_warning(&sample(t, 0, 100, 50), &sample(t, 5, 200, 51)),
            None
        );
    }

    #[test]
    fn a_few_unanswered_packets_are_no_symptom() {
        let t = Instant::now();
        assert_eq!(
            unanswered_warning(&sample(t, 0, 100, 50), &sample(t, 5, 109, 50)),
            None
        );
        assert!(unanswered_warning(&sample(t, 0, 100, 50), &sample(t, 5, 110, 50)).is_some());
    }

    #[test]
    fn counters_that_went_down_are_no_symptom() {
        let t = Instant::now();
        assert_eq!(
            unanswered_warning(&sample(t, 0, 100, 50), &sample(t, 5, 20, 0)),
            None
        );
    }

    #[test]
    fn the_watch_judges_the_last_ten_seconds_only() {
        let t = Instant::now();
        let watch = ReplyWatch::default();
        // Answered traffic until second 3, then only unanswered packets.
        watch.record(sample(t, 0, 0, 0));
        watch.record(sample(t, 3, 50, 50));
        watch.record(sample(t, 6, 80, 50));
        assert!(watch.warnings().is_empty(), "replies within the window");
        watch.record(sample(t, 13, 80, 50));
        assert_eq!(watch.warnings().len(), 1, "from second 3 to 13: none");
        // The unanswered packets leave the window: nothing to say any more.
        watch.record(sample(t, 17, 80, 50));
        assert!(watch.warnings().is_empty());
    }

    #[test]
    fn samples_closer_than_a_second_are_not_kept() {
        let t = Instant::now();
        let watch = ReplyWatch::default();
        watch.record(sample(t, 0, 0, 0));
        assert!(!watch.due(t + Duration::from_millis(500)));
        watch.record(Sample {
            at: t + Duration::from_millis(500),
            to_targets: 50,
            to_clients: 0,
        });
        assert!(watch.warnings().is_empty(), "the early sample was dropped");
        assert!(watch.due(t + SAMPLE_EVERY));
    }
}
