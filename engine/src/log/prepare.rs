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
//! The zeros go in fsynced steps with rests between them (`SegmentFile::prepare`), so that the
//! commits' fsyncs meanwhile wait behind one small step, not a whole segment: a writer waiting
//! for the file ends the rests (`hurry`), and [`Preparer::stop`] ends the preparation after its
//! current step.
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

use super::segment::{prepared_file_name, PrepareStep, SegmentFile};
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
    /// The writer waits for the preparation under way: no more rests.
    hurry: bool,
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
            hand.hurry = true;
            self.changed.wait(&mut hand);
        }
        if hand.ready == Some(id) {
            hand.ready = None;
            return true;
        }
        false
    }

    /// Ends the preparer thread: a preparation under way stops after its current step, and the
    /// file of a preparation nobody installed is removed.
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
            hand.hurry = false;
            drop(hand);
            let next = || {
                let hand = self.hand.lock();
                if hand.stopping {
                    PrepareStep::Stop
                } else if hand.hurry {
                    PrepareStep::Hurry
                } else {
                    PrepareStep::Pace
                }
            };
            let complete = matches!(
                SegmentFile::prepare(
                    &*self.storage,
                    &self.dir,
                    id,
                    self.segment_size_bytes,
                    &next
                ),
                Ok(true)
            );
            if !complete {
                self.remove(id);
            }
            hand = self.hand.lock();
            hand.busy = None;
            if complete {
                hand.ready = Some(id);
            }
            self.changed.notify_all();
        }
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use crate::sim::SimStorage;
    use std::path::Path;

    /// The writer's take of a segment under preparation waits for it and gets it whole (the
    /// wait ends the rests between steps); a stop while a later one may be under way returns
    /// and leaves no prepared file of it.
    #[test]
    fn take_waits_for_a_whole_file_and_stop_leaves_none() {
        let storage = SimStorage::new(11);
        let dir = Path::new("/prep");
        storage.create_dir_all(dir).unwrap();
        let size = 8 << 20;
        let shared: Arc<dyn Storage> = Arc::new(storage.clone());
        let preparer = Arc::new(Preparer::new(shared, dir.to_path_buf(), size));
        let thread = {
            let preparer = Arc::clone(&preparer);
            std::thread::spawn(move || preparer.run())
        };
        preparer.request(2);
        loop {
            let hand = preparer.hand.lock();
            if hand.busy.is_some() || hand.ready.is_some() {
                break;
            }
            drop(hand);
            std::thread::yield_now();
        }
        assert!(preparer.take(2), "a preparation under way is waited for");
        let file = storage.open(&dir.join(prepared_file_name(2))).unwrap();
        assert_eq!(file.len().unwrap(), size);

        preparer.request(3);
        preparer.stop();
        thread.join().unwrap();
        let names = storage.list(dir).unwrap();
        assert!(!names.contains(&prepared_file_name(3)), "{names:?}");
    }
}
