//! The connection-table sweeper's thread: every `SWEEP_EVERY` it deletes the flows that are
//! over (`dataplane::Sweeper`), on map handles of its own, never under the writer.

use std::{sync::mpsc, time::Duration};

use crate::dataplane::Sweeper;

/// How often the table is swept. Over flows wait at most this long past their timeout before
/// their entries are freed (a new flow takes an over flow's port at once anyway).
pub const SWEEP_EVERY: Duration = Duration::from_secs(3);

/// Sweeps every `SWEEP_EVERY` until `stop` says so (or its sender is dropped).
pub fn sweep_until_stopped(mut sweeper: Sweeper, stop: &mpsc::Receiver<()>) {
    while let Err(mpsc::RecvTimeoutError::Timeout) = stop.recv_timeout(SWEEP_EVERY) {
        match sweeper.sweep() {
            Ok(0) => {}
            Ok(swept) => tracing::debug!(swept, "swept flows that are over"),
            Err(e) => tracing::warn!(error = %e, "sweeping the connection table failed"),
        }
    }
}
