//! Shared helpers for idem's integration, crash and concurrency tests.
//!
//! Everything here goes through idem's public API or plain file-system calls: the tests must see
//! the store as a user does. Randomness is always seeded; [`seeded_rng`] prints the seed so that a
//! failing run (whose output cargo shows) can be replayed with `IDEM_TEST_SEED=<seed>`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::SeedableRng;

/// A TTL long enough that nothing expires during a test that uses the system clock.
pub const LONG_TTL: Duration = Duration::from_secs(24 * 3600);

/// A configuration for a store on simulated storage whose time is `clock`: no background
/// thread, no periodic checkpoint (a test calls `maintain` and `checkpoint` itself). The config
/// is for the process running now: after `storage.crash()` a store opened with it would find its
/// view of the disk dead, so each process (each reopen after a crash) makes its own.
pub fn sim_config(
    storage: &idem::sim::SimStorage,
    clock: &idem::ManualClock,
    durability: idem::Durability,
) -> idem::Config {
    idem::Config::default()
        .durability(durability)
        .storage(storage.process())
        .clock(clock.clone())
        .background_maintenance(false)
        .checkpoint_every_bytes(0)
}

/// The environment variable that replays a seed.
pub const SEED_VARIABLE: &str = "IDEM_TEST_SEED";

/// A generator seeded from `IDEM_TEST_SEED` if set, else from the OS. The seed is printed with
/// `what` so that a failure can be replayed.
pub fn seeded_rng(what: &str) -> (StdRng, u64) {
    let seed = match std::env::var(SEED_VARIABLE) {
        Ok(text) => text
            .parse()
            .unwrap_or_else(|_| panic!("{SEED_VARIABLE}={text:?} is not a u64")),
        Err(_) => rand::random(),
    };
    eprintln!("{what}: seed {seed} (replay with {SEED_VARIABLE}={seed})");
    (StdRng::seed_from_u64(seed), seed)
}

/// The segment files of a store directory, keyed by segment number, oldest first.
pub fn segment_files(dir: &Path) -> BTreeMap<u32, PathBuf> {
    let mut segments = BTreeMap::new();
    for entry in std::fs::read_dir(dir).expect("listing the store directory") {
        let path = entry.expect("reading a directory entry").path();
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        let Some(digits) = name
            .strip_prefix("segment-")
            .and_then(|rest| rest.strip_suffix(".idem"))
        else {
            continue;
        };
        if let Ok(id) = digits.parse() {
            segments.insert(id, path);
        }
    }
    segments
}

/// The newest (highest-numbered) segment file of a store directory.
pub fn newest_segment(dir: &Path) -> PathBuf {
    segment_files(dir)
        .into_values()
        .next_back()
        .expect("a store directory holds at least one segment")
}

/// Copies every regular file of `source` into `target` (created if needed). Store directories
/// are flat, so no recursion is needed.
pub fn copy_dir(source: &Path, target: &Path) {
    std::fs::create_dir_all(target).expect("creating the copy's directory");
    for entry in std::fs::read_dir(source).expect("listing the source directory") {
        let entry = entry.expect("reading a directory entry");
        if entry.file_type().expect("file type").is_file() {
            std::fs::copy(entry.path(), target.join(entry.file_name())).expect("copying a file");
        }
    }
}

/// One record found by [`parse_segment`]: where it starts and ends, and what it says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedRecord {
    /// Byte offset of the record's first byte in its segment file.
    pub start: u64,
    /// Byte offset just past the record.
    pub end: u64,
    /// Whether this is an insert (else a removal).
    pub insert: bool,
    /// The key.
    pub key: Vec<u8>,
    /// The value.
    pub value: Vec<u8>,
}

/// Decodes every record of an undamaged segment file with idem's public record codec, in order.
///
/// # Panics
/// If the segment does not decode to its end: callers parse files idem wrote and closed.
pub fn parse_segment(bytes: &[u8]) -> Vec<ParsedRecord> {
    let mut records = Vec::new();
    let mut offset = idem::record::SEGMENT_HEADER_LEN;
    while offset < bytes.len() {
        let (record, len) = idem::record::decode_sized(&bytes[offset..])
            .unwrap_or_else(|e| panic!("an intact segment failed to decode at {offset}: {e}"));
        let end = offset + len;
        records.push(ParsedRecord {
            start: offset as u64,
            end: end as u64,
            insert: record.kind == idem::record::RecordKind::Insert,
            key: record.key.to_vec(),
            value: record.value.to_vec(),
        });
        offset = end;
    }
    records
}

/// The inserted value of an outcome: the caller's own value for `Inserted`, the stored one for
/// `Duplicate`.
pub fn value_of(outcome: &idem::Outcome, own: &[u8]) -> Vec<u8> {
    match outcome {
        idem::Outcome::Inserted => own.to_vec(),
        idem::Outcome::Duplicate(value) => value.to_vec(),
    }
}

/// The protocol between the crash test and its child process (`src/bin/crash_child.rs`).
///
/// The child writes one line per event to stdout and flushes it before going on, so whatever it
/// printed before a SIGKILL is still in the pipe for the parent to read:
/// - `READY` once the store is open;
/// - `ATTEMPT <key>` *before* the key is offered to the store (so a key the parent never saw
///   attempted must be absent after the crash);
/// - `ACK <key> <value>` after the store answered, with the value it answered (the child's own
///   value for `Inserted`, the stored one for `Duplicate`): this key must survive the crash.
pub mod crash {
    /// The mode that inserts until killed: `crash_child insert <dir> <round> <threads>`.
    pub const MODE_INSERT: &str = "insert";
    /// [`MODE_INSERT`] with `Durability::Never` (answers before the records are written):
    /// `crash_child insert-never <dir> <round> <threads>`.
    pub const MODE_INSERT_NEVER: &str = "insert-never";
    /// The mode that only tries to open: `crash_child open <dir>`; prints one of the
    /// `OPEN_*` answers below.
    pub const MODE_OPEN: &str = "open";
    /// The store opened.
    pub const OPEN_OK: &str = "OPENED";
    /// Opening failed with `Error::Locked`.
    pub const OPEN_LOCKED: &str = "LOCKED";
    /// Opening failed otherwise; the error's Display follows.
    pub const OPEN_ERROR: &str = "ERROR";

    /// Segment size the child uses, small so that the rounds cross segment rolls.
    pub const SEGMENT_SIZE_BYTES: u32 = 1 << 20;

    /// The key thread `thread` inserts as its `i`-th own key in `round`.
    pub fn own_key(round: u32, thread: u32, i: u64) -> String {
        format!("r{round}/t{thread}/{i}")
    }

    /// The `j`-th key that every thread of `round` offers.
    pub fn shared_key(round: u32, j: u64) -> String {
        format!("r{round}/shared/{j}")
    }

    /// The value `offerer` (a thread name like `t3`) offers for `key`: it names the offerer and
    /// the key, padded to a length that varies with the key so records differ in size.
    pub fn value(offerer: &str, key: &str) -> String {
        let pad = key.bytes().map(u64::from).sum::<u64>() % 300;
        format!("{offerer}:{key}:{}", ".".repeat(pad as usize))
    }

    /// One event the child reported.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub enum Event {
        /// The store is open.
        Ready,
        /// A key is about to be offered.
        Attempt(String),
        /// A key was answered with this value.
        Ack(String, String),
    }

    /// Parses one complete line (without its newline).
    pub fn parse(line: &str) -> Option<Event> {
        let mut parts = line.split(' ');
        let event = match (parts.next()?, parts.next(), parts.next()) {
            ("READY", None, None) => Event::Ready,
            ("ATTEMPT", Some(key), None) => Event::Attempt(key.to_string()),
            ("ACK", Some(key), Some(value)) => Event::Ack(key.to_string(), value.to_string()),
            _ => return None,
        };
        parts.next().is_none().then_some(event)
    }
}

/// Shared definitions of the crash torture test (`tests/crash_torture.rs`) and its child process
/// (`src/bin/torture_child.rs`).
///
/// The child works on a pool of keys shared by all rounds, so keys are removed, re-inserted,
/// claimed, completed and released again and again. Its clock is a [`idem::ManualClock`] that
/// only the parent moves: the parent writes the time (milliseconds since the epoch) to a clock
/// file before each round and sometimes during one; the child adopts it before each operation.
///
/// Protocol (one line per write, each shorter than a pipe's atomic write, so a kill never cuts
/// a line in two). An operation's intent line (lower case) is written before the call, its
/// answer line (upper case) after it returned; an intent without an answer is in doubt.
///
/// | line | meaning |
/// |---|---|
/// | `T <ms>` | the child's clock now reads `ms` |
/// | `D <key> <lease_ms> <cid> <fence>` | `in_doubt()` at startup listed this claim (fencing token `fence`); the child names it `cid` |
/// | `i <key> <deadline_ms> <value>` | `check_or_insert`; `I ins`, `I dup <value>` or `I inflight <until_ms>` |
/// | `b <key>/<deadline_ms>/<value> ...` | `check_or_insert_batch`; `B ins dup/<value> ...` or `B inflight <until_ms>` |
/// | `r <key>` | `remove`; `R true` or `R false` |
/// | `c <key> <lease_ms> <cid>` | `claim`; `C acq <fence>` (its fencing token), `C dup <value>` or `C inflight <until_ms>` |
/// | `f <key> <cid> <deadline_ms> <value>` | `complete`; `F ok` or `F stale` |
/// | `x <key> <cid>` | `release`; `X ok` or `X stale` |
/// | `g <key>` | `get`; `G none` or `G <value>` |
/// | `m` | `maintain`; `M <segments_deleted> <segments_compacted> <segments_damaged>` (totals since open) |
/// | `k` | `checkpoint`; `K` |
/// | `t <item> ...` | a transaction; items in order: `i:<key>/<deadline_ms>/<value>` (`check_or_insert`), `s:<state key>:<value>` (`put_state`), `d:<state key>` (`delete_state`), `a:<counter>:<n>` (`get_state`, then `put_state` of the decimal sum), `p:<source>:<position>` (`set_position`); `A ok <answer> ...` (per `i:` item `ins` or `dup/<value>`, per `a:` item `r:<value read>`), `A inflight <until_ms>` (an item is claimed: dropped, nothing written) or `A conflict <reason>` |
pub mod torture {
    use std::path::Path;

    use idem::{Config, Durability, ManualClock};

    /// Number of keys in the pool (`k0` ..): every round works on the same keys.
    pub const POOL: usize = 240;

    /// Segment size: a few dozen records, so segments roll, compact and die within a round.
    pub const SEGMENT_BYTES: u32 = 4096;

    /// The store configuration of the child (and, with `background` false, of the parent's
    /// checking opens): `Sync`, tiny segments, frequent checkpoints, the parent's clock.
    pub fn config(clock: &ManualClock, compaction_live_ratio: f64, background: bool) -> Config {
        Config::default()
            .durability(Durability::Sync)
            .clock(clock.clone())
            .segment_size_bytes_for_testing(SEGMENT_BYTES)
            .compaction_live_ratio(compaction_live_ratio)
            .checkpoint_every_bytes(16 << 10)
            .checkpoint_delta_every_bytes(4 << 10)
            .background_maintenance(background)
    }

    /// Key `i` of the pool.
    pub fn key(i: usize) -> String {
        format!("k{i}")
    }

    /// State key `i` (values written by `put_state`).
    pub fn state_key(i: usize) -> String {
        format!("s{i}")
    }

    /// Counter `i`: a state key holding a decimal number that transactions add to.
    pub fn counter(i: usize) -> String {
        format!("c{i}")
    }

    /// Input source `i`.
    pub fn source(i: usize) -> String {
        format!("p{i}")
    }

    /// State keys no one ever writes, among them names of dedup keys: they must stay absent.
    pub fn never_state_keys() -> Vec<String> {
        vec![key(0), key(1), "s99".into()]
    }

    /// Keys no one ever writes: they must stay absent.
    pub fn never_keys() -> Vec<String> {
        (POOL..POOL + 8)
            .map(key)
            .chain((0..8).map(|i| format!("n{i}")))
            .collect()
    }

    /// The value of write `wid` (unique over the run) of `key`, padded by `pad` bytes: a
    /// resurrected older value of the key is told apart from the current one. No spaces or
    /// slashes (protocol separators).
    pub fn value(key: &str, wid: &str, pad: usize) -> String {
        format!("{key}={wid}_{}", ".".repeat(pad))
    }

    /// Sets the clock file to `millis` (atomically: written aside, then renamed).
    pub fn write_clock(path: &Path, millis: u64) {
        let aside = path.with_extension("tmp");
        std::fs::write(&aside, millis.to_string()).expect("writing the clock file");
        std::fs::rename(&aside, path).expect("renaming the clock file");
    }

    /// The time in the clock file, if it can be read.
    pub fn read_clock(path: &Path) -> Option<u64> {
        std::fs::read_to_string(path).ok()?.trim().parse().ok()
    }
}

/// The operating system's file system on which every file map fails (as on a file system that
/// cannot map files): recovery then reads every segment into a buffer instead of reading the
/// page cache through a map. Tests open copies of one store with and without maps and compare.
/// It counts the maps asked of its files (clones share the count).
#[derive(Debug, Default, Clone)]
pub struct UnmappedFileSystem {
    maps_asked: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl UnmappedFileSystem {
    /// How many times a file of this file system (or of a clone) was asked for a map.
    pub fn maps_asked(&self) -> usize {
        self.maps_asked.load(std::sync::atomic::Ordering::SeqCst)
    }

    fn wrap(&self, file: Box<dyn idem::sim::StorageFile>) -> Box<dyn idem::sim::StorageFile> {
        Box::new(UnmappedFile {
            file,
            maps_asked: self.maps_asked.clone(),
        })
    }
}

/// A file of [`UnmappedFileSystem`]: every call goes to the operating system's file, but
/// `map_readonly` fails.
#[derive(Debug)]
struct UnmappedFile {
    file: Box<dyn idem::sim::StorageFile>,
    maps_asked: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl idem::sim::StorageFile for UnmappedFile {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<usize> {
        self.file.read_at(buf, offset)
    }
    fn write_all_at(&self, buf: &[u8], offset: u64) -> std::io::Result<()> {
        self.file.write_all_at(buf, offset)
    }
    fn sync_data(&self) -> std::io::Result<()> {
        self.file.sync_data()
    }
    fn len(&self) -> std::io::Result<u64> {
        self.file.len()
    }
    fn set_len(&self, len: u64) -> std::io::Result<()> {
        self.file.set_len(len)
    }
    fn map_readonly(&self) -> std::io::Result<Option<idem::sim::ReadOnlyMap>> {
        self.maps_asked
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Err(std::io::Error::other("this file system cannot map files"))
    }
}

impl idem::sim::Storage for UnmappedFileSystem {
    fn create_dir_all(&self, dir: &Path) -> std::io::Result<()> {
        idem::sim::FileSystem.create_dir_all(dir)
    }
    fn dir_exists(&self, dir: &Path) -> std::io::Result<bool> {
        idem::sim::FileSystem.dir_exists(dir)
    }
    fn lock_dir(&self, dir: &Path) -> std::io::Result<Option<idem::sim::DirLock>> {
        idem::sim::FileSystem.lock_dir(dir)
    }
    fn list(&self, dir: &Path) -> std::io::Result<Vec<String>> {
        idem::sim::FileSystem.list(dir)
    }
    fn create_new(&self, path: &Path) -> std::io::Result<Box<dyn idem::sim::StorageFile>> {
        Ok(self.wrap(idem::sim::FileSystem.create_new(path)?))
    }
    fn create_truncate(&self, path: &Path) -> std::io::Result<Box<dyn idem::sim::StorageFile>> {
        Ok(self.wrap(idem::sim::FileSystem.create_truncate(path)?))
    }
    fn open(&self, path: &Path) -> std::io::Result<Box<dyn idem::sim::StorageFile>> {
        Ok(self.wrap(idem::sim::FileSystem.open(path)?))
    }
    fn remove(&self, path: &Path) -> std::io::Result<()> {
        idem::sim::FileSystem.remove(path)
    }
    fn rename(&self, from: &Path, to: &Path) -> std::io::Result<()> {
        idem::sim::FileSystem.rename(from, to)
    }
    fn sync_dir(&self, dir: &Path) -> std::io::Result<()> {
        idem::sim::FileSystem.sync_dir(dir)
    }
}
