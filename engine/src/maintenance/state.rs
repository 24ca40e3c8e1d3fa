//! The state maintenance keeps between rounds (the round lock, the stop flag, totals, damaged
//! segments). The core state (`shared`) owns one; the procedures are in the parent module.

use std::collections::BTreeSet;
use std::sync::atomic::AtomicU64;

use parking_lot::{Condvar, Mutex};

/// Totals since open, for [`crate::Stats`].
#[derive(Debug, Default)]
pub(crate) struct MaintenanceTotals {
    pub(crate) entries_expired: AtomicU64,
    pub(crate) segments_deleted: AtomicU64,
    pub(crate) segments_compacted: AtomicU64,
    pub(crate) checkpoints_written: AtomicU64,
    pub(crate) segments_damaged: AtomicU64,
}

#[derive(Debug, Default)]
pub(crate) struct MaintenanceState {
    pub(super) round_lock: Mutex<()>,
    pub(super) stopping: Mutex<bool>,
    pub(super) wake: Condvar,
    /// `bytes_appended` when the last checkpoint was taken.
    pub(super) checkpointed_at_bytes: AtomicU64,
    /// Sealed segments in which compaction found damage: never compacted again (they may still
    /// be deleted whole once everything in them expired).
    pub(super) damaged: Mutex<BTreeSet<u32>>,
    pub(crate) totals: MaintenanceTotals,
}

impl MaintenanceState {
    pub(crate) fn stop(&self) {
        *self.stopping.lock() = true;
        self.wake.notify_all();
    }
}
