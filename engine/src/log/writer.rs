//! The one background thread that writes the log buffer to segment files and fsyncs them.
//!
//! Group commit: while the writer is busy with one fsync, appends gather in the pending buffer;
//! the next round writes all of them and covers them with a single fsync, so N concurrent `Sync`
//! callers share fsyncs instead of paying one each.
//!
//! Invariant: `durable` moves only after an fsync that covered every byte before it returned
//! successfully; after any failure the log is poisoned and the writer stops.

use std::sync::atomic::Ordering;
use std::sync::Arc;
#[cfg(not(loom))]
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::segment::SegmentFile;
use super::{location, Chunk, Log};
use crate::config::Durability;
use crate::error::{Error, Result};
use crate::record;

/// How long buffered records may wait before the writer hands them to the OS in the non-`Sync`
/// modes: bounds what a kill -9 of the process can lose there.
const IDLE_WRITE_INTERVAL: Duration = Duration::from_millis(5);

pub(crate) fn spawn_writer(log: Arc<Log>) -> Result<WriterHandle> {
    crate::sync::spawn("idem-writer", move || {
        // A panic here (a bug, or a panicking `Storage`) must not leave callers waiting for a
        // commit that will never come: poison the log, which wakes every waiter with an error.
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run(&log)));
        if let Err(panic) = outcome {
            let message = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "a non-string payload".into());
            let mut state = log.state.lock();
            state.in_flight = None;
            log.poison(
                &mut state,
                format!("the log writer thread panicked: {message}"),
            );
            drop(state);
            log.announce_progress();
        }
    })
    .map_err(|e| Error::io("spawning the idem writer thread", e))
}

/// The writer thread's handle.
#[cfg(not(loom))]
pub(crate) type WriterHandle = JoinHandle<()>;
#[cfg(loom)]
pub(crate) type WriterHandle = crate::sync::JoinHandle;

fn run(log: &Log) {
    let mut active = {
        let segments = log.segments.read();
        segments
            .values()
            .next_back()
            .cloned()
            .expect("a log always has a tail segment")
    };
    // Where the active segment's records end: the seal goes there when the log moves on.
    let mut active_end = u64::from(super::offset_of(log.state.lock().written));
    let mut last_sync = Instant::now();
    let mut last_write = Instant::now();
    let mut unsynced_bytes = false;
    loop {
        let mut state = log.state.lock();
        let sync_now = loop {
            if state.poisoned.is_some() {
                return;
            }
            let has_pending = !state.pending.is_empty();
            let flush_wanted = state.flush_target > state.durable;
            let buffer_full = state.pending_bytes >= log.write_buffer_bytes;
            if state.shutting_down {
                if !has_pending && !unsynced_bytes {
                    return;
                }
                break true;
            }
            let (write, sync, wait) = match log.durability {
                // Only on demand: a caller waiting for durability, or a full buffer. Writing
                // whatever is pending would commit a batch that is still being appended in
                // several pieces, each with its own fsync.
                Durability::Sync => (flush_wanted || buffer_full, true, Duration::from_secs(1)),
                Durability::Periodic(interval) => {
                    let sync_due =
                        (has_pending || unsynced_bytes) && last_sync.elapsed() >= interval;
                    let write_due =
                        has_pending && (buffer_full || last_write.elapsed() >= IDLE_WRITE_INTERVAL);
                    let sync = flush_wanted || sync_due;
                    let wait = interval
                        .saturating_sub(last_sync.elapsed())
                        .min(IDLE_WRITE_INTERVAL)
                        .max(Duration::from_micros(100));
                    (sync || write_due, sync, wait)
                }
                Durability::Never => {
                    let write_due =
                        has_pending && (buffer_full || last_write.elapsed() >= IDLE_WRITE_INTERVAL);
                    (write_due || flush_wanted, flush_wanted, IDLE_WRITE_INTERVAL)
                }
            };
            if write {
                break sync;
            }
            log.work_ready.wait_for(&mut state, wait);
        };
        let chunks = Arc::new(std::mem::take(&mut state.pending));
        state.pending_bytes = 0;
        state.in_flight = Some(Arc::clone(&chunks));
        let target = location(state.tail_segment, state.tail_offset);
        drop(state);

        let outcome = write_chunks(log, &mut active, &mut active_end, &chunks).and_then(|()| {
            if sync_now {
                active.sync()?;
                log.counters.fsyncs.fetch_add(1, Ordering::Relaxed);
            }
            Ok(())
        });
        if !chunks.is_empty() {
            last_write = Instant::now();
        }

        let mut state = log.state.lock();
        state.in_flight = None;
        match outcome {
            Ok(()) => {
                state.written = target;
                if sync_now {
                    log.set_durable(&mut state, target);
                    last_sync = Instant::now();
                    unsynced_bytes = false;
                } else if !chunks.is_empty() {
                    unsynced_bytes = true;
                }
                if let Ok(chunks) = Arc::try_unwrap(chunks) {
                    for mut chunk in chunks {
                        if state.spare_buffers.len() < 4 {
                            chunk.bytes.clear();
                            state.spare_buffers.push(chunk.bytes);
                        }
                    }
                }
                drop(state);
                log.announce_progress();
            }
            Err(error) => {
                let cause = error.to_string();
                log.poison(&mut state, cause);
                drop(state);
                log.announce_progress();
                return;
            }
        }
    }
}

fn write_chunks(
    log: &Log,
    active: &mut Arc<SegmentFile>,
    active_end: &mut u64,
    chunks: &[Chunk],
) -> Result<()> {
    for chunk in chunks {
        if chunk.opens_segment {
            // The old segment is sealed and made durable before the log moves on: recovery
            // treats damage in any segment but the newest, or a missing seal, as corruption.
            active.write_at(&record::encode_seal(*active_end), *active_end)?;
            active.sync()?;
            log.counters.fsyncs.fetch_add(1, Ordering::Relaxed);
            let created = Arc::new(SegmentFile::create(
                &*log.storage,
                &log.dir,
                chunk.segment_id,
            )?);
            log.segments
                .write()
                .insert(chunk.segment_id, Arc::clone(&created));
            *active = created;
        }
        assert_eq!(
            active.id, chunk.segment_id,
            "chunks arrive in segment order"
        );
        active.write_at(&chunk.bytes, u64::from(chunk.start_offset))?;
        *active_end = u64::from(chunk.start_offset) + chunk.bytes.len() as u64;
        log.counters.writes.fetch_add(1, Ordering::Relaxed);
    }
    Ok(())
}
