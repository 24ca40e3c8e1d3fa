//! The segment preparer: in the fsync-bound modes (`Sync`, `Periodic`), a background thread
//! keeps the next segment file written ahead of the writer (its header, then zeros up to the
//! segment size, fsynced), so the writer's fsyncs overwrite allocated blocks instead of growing
//! the file, which also makes the file system commit metadata in every fsync.
//!
//! The hand-off, under one lock: the writer *requests* segment `id` when it moves to `id - 1`;
//! the preparer takes the request (`busy`), writes the file, and marks it `ready`. When the
//! writer moves on to `id` it *takes* it: a ready file is installed by a rename
//! (`SegmentFile::install_prepared`), a preparation under way is waited for (it is bounded by
//! one segment of zeros, and the writer got a whole segment's worth of appends of head start), a
//! request not yet started is cancelled and the writer creates the segment itself.
//!
//! Invariants:
//! - At most one prepared file exists, for the newest id requested; a file for any other id is
//!   removed by the preparer before it works on the next request.
//! - A failed preparation is dropped and its file removed (best effort): the writer then creates
//!   the segment itself, and a real fault of the disk surfaces there, poisoning the log as
//!   before. The preparer never poisons the log and never touches an installed segment.
//! - After [`Preparer::stop`] returns, the preparer thread writes nothing more, and no prepared
//!   file is left behind by it (open also removes any, see `segment::remove_prepared`).

use std::path::PathBuf;
use std::sync::Arc;

use super::segment::{prepared_file_name, SegmentFile};
use crate::io::Storage;
use crate::sync::{Condvar, Mutex};

#[derive(Debug, Default)]
struct Hand {
    /// The id the writer asked for, not yet started.
    wanted: Option<u32>,
    /// The id being prepared now.
    busy: Option<u32>,
    /// The id whose prepared file is complete and fsynced.
    ready: Option<u32>,
    stopping: bool,
    stopped: bool,
}

/// The writer's side of the preparer thread (see the module doc).
#[derive(Debug)]
pub(crate) struct Preparer {
    storage: Arc<dyn Storage>,
    dir: PathBuf,
    segment_size_bytes: u64,
    hand: Mutex<Hand>,
    changed: Condvar,
}

impl Preparer {
    pub(crate) fn new(storage: Arc<dyn Storage>, dir: PathBuf, segment_size_bytes: u64) -> Self {
        Preparer {
            storage,
            dir,
            segment_size_bytes,
            hand: Mutex::new(Hand::default()),
            changed: Condvar::new(),
        }
    }

    /// Asks for segment `id` to be prepared (replacing any earlier request not yet started).
    pub(crate) fn request(&self, id: u32) {
        let mut hand = self.hand.lock();
        if !hand.stopping {
            hand.wanted = Some(id);
            self.changed.notify_all();
        }
    }

    /// Whether the prepared file of segment `id` is complete and now the writer's to install.
    /// Waits for a preparation of `id` under way; cancels one not yet started.
    pub(crate) fn take(&self, id: u32) -> bool {
        let mut hand = self.hand.lock();
        if hand.wanted == Some(id) {
            hand.wanted = None;
        }
        while hand.busy == Some(id) {
            self.changed.wait(&mut hand);
        }
        if hand.ready == Some(id) {
            hand.ready = None;
            return true;
        }
        false
    }

    /// Ends the preparer thread: waits for a preparation under way, and removes the file of a
    /// preparation nobody installed.
    pub(crate) fn stop(&self) {
        let mut hand = self.hand.lock();
        hand.stopping = true;
        hand.wanted = None;
        self.changed.notify_all();
        while !hand.stopped {
            self.changed.wait(&mut hand);
        }
        if let Some(id) = hand.ready.take() {
            self.remove(id);
        }
    }

    fn remove(&self, id: u32) {
        // Best effort: a leftover prepared file is removed by the next open anyway.
        let _ = self.storage.remove(&self.dir.join(prepared_file_name(id)));
    }

    /// The preparer thread's loop.
    pub(crate) fn run(&self) {
        let mut hand = self.hand.lock();
        loop {
            if hand.stopping {
                hand.stopped = true;
                self.changed.notify_all();
                return;
            }
            let Some(id) = hand.wanted.take() else {
                self.changed.wait(&mut hand);
                continue;
            };
            if let Some(stale) = hand.ready.take() {
                if stale != id {
                    self.remove(stale);
                }
            }
            hand.busy = Some(id);
            drop(hand);
            let prepared =
                SegmentFile::prepare(&*self.storage, &self.dir, id, self.segment_size_bytes);
            if prepared.is_err() {
                self.remove(id);
            }
            hand = self.hand.lock();
            hand.busy = None;
            if prepared.is_ok() {
                hand.ready = Some(id);
            }
            self.changed.notify_all();
        }
    }
}
