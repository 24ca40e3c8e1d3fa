//! A deterministic in-memory [`Storage`] that injects faults and simulates crashes, for tests of
//! idem and of applications built on it.
//!
//! Every file has two contents: what the OS shows (*volatile*) and what a crash would leave
//! (*durable*); `sync_data` copies the first to the second. Names likewise: creations, renames and
//! removals become durable only at `sync_dir`. [`SimStorage::crash`] models power loss: names go
//! back to their durable set, each file to its durable content plus, at random, a torn prefix of
//! what was written after its last sync, and every handle opened before the crash fails from then
//! on (the process that held them is gone). A store should be given [`SimStorage::process`], a
//! view that dies at the next crash as the handles do, so that nothing the crashed process's
//! store still does (if something keeps it alive) reaches the disk the next process opens.
//! Faults come from a seeded generator, so a seed replays the same run. A file's read-only map
//! ([`StorageFile::map_readonly`], what recovery reads segments through) is a copy of its bytes,
//! and writing or cutting a file while a map of it lives panics: on a real disk the map's bytes
//! would change under the reader, or a read of cut pages raise SIGBUS, so the engine must never
//! do it, and every simulated run checks that it does not.
//!
//! ```
//! use idem::sim::{Faults, SimStorage};
//! use std::time::Duration;
//! let storage = SimStorage::new(42);
//! // A new view for each process.
//! let config = || idem::Config::default().storage(storage.process()).background_maintenance(false);
//! let store = idem::Store::open_with("/sim/store", config())?;
//! store.check_or_insert(b"k", Duration::from_secs(60), b"v")?; // Sync: durable when it returns
//! storage.crash();
//! drop(store);
//! let store = idem::Store::open_with("/sim/store", config())?;
//! assert!(store.get(b"k")?.is_some());
//! # Ok::<(), idem::Error>(())
//! ```

use std::collections::{HashMap, HashSet};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::Mutex;

pub use crate::io::{DirLock, FileSystem, ReadOnlyMap, Storage, StorageFile};

/// Which faults to inject, as chances per million operations of the kind.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Faults {
    /// A write fails with an I/O error and changes nothing.
    pub write_error_per_million: u32,
    /// A write applies only a prefix of its bytes, then fails.
    pub short_write_per_million: u32,
    /// An fsync (of a file or a directory) fails and makes nothing durable.
    pub sync_error_per_million: u32,
    /// Writes that would take all files past this many bytes fail with "no space left".
    pub space_limit_bytes: Option<u64>,
}

/// A fault that was injected, for test reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum InjectedFault {
    /// A write failed.
    WriteError,
    /// A write was cut short.
    ShortWrite,
    /// An fsync failed.
    SyncError,
    /// A write found no space.
    NoSpace,
}

#[derive(Debug, Default)]
struct FileData {
    volatile: Vec<u8>,
    durable: Vec<u8>,
    /// Read-only maps of the file alive now ([`StorageFile::map_readonly`]). A real map's bytes
    /// would change under a write, and a cut under it raises SIGBUS: writing or cutting a
    /// mapped file panics here, so that the simulator and the fuzzers check that the engine
    /// never does.
    live_maps: usize,
}

impl FileData {
    fn assert_unmapped(&self, what: &str) {
        assert_eq!(
            self.live_maps, 0,
            "{what} a file while it is mapped (a real map would change under it, or a read of \
             its cut pages raise SIGBUS)"
        );
    }
}

/// A read-only map of a simulated file: a copy of its bytes when mapped, which stays right
/// because nothing may write or cut the file while the map lives (asserted by the file).
struct SimMap {
    bytes: Vec<u8>,
    data: SharedFile,
}

impl AsRef<[u8]> for SimMap {
    fn as_ref(&self) -> &[u8] {
        &self.bytes
    }
}

impl Drop for SimMap {
    fn drop(&mut self) {
        self.data.lock().live_maps -= 1;
    }
}

type SharedFile = Arc<Mutex<FileData>>;

#[derive(Debug)]
struct SimState {
    generation: u64,
    names: HashMap<PathBuf, SharedFile>,
    durable_names: HashMap<PathBuf, SharedFile>,
    /// Directories as the OS shows them, and those whose names are durable ("/" always is).
    dirs: HashSet<PathBuf>,
    durable_dirs: HashSet<PathBuf>,
    locked: HashSet<PathBuf>,
    rng: u64,
    faults: Faults,
    injected: HashMap<InjectedFault, u64>,
}

impl SimState {
    fn next_random(&mut self) -> u64 {
        // xorshift64*: small, fast, and the same on every machine.
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        self.rng.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn chance(&mut self, per_million: u32) -> bool {
        per_million > 0 && self.next_random() % 1_000_000 < u64::from(per_million)
    }

    fn inject(&mut self, fault: InjectedFault) -> io::Error {
        *self.injected.entry(fault).or_default() += 1;
        match fault {
            InjectedFault::NoSpace => io::Error::from(io::ErrorKind::StorageFull),
            _ => io::Error::other(format!("injected {fault:?}")),
        }
    }

    fn volatile_bytes(&self) -> u64 {
        self.names
            .values()
            .map(|file| file.lock().volatile.len() as u64)
            .sum()
    }
}

/// The simulated storage. Clones share one simulated machine.
#[derive(Debug, Clone)]
pub struct SimStorage {
    state: Arc<Mutex<SimState>>,
    /// `Some(generation)`: a process's view ([`SimStorage::process`]), dead once a crash ended
    /// that generation.
    process: Option<u64>,
}

impl SimStorage {
    /// An empty simulated disk whose faults and torn writes follow `seed`.
    pub fn new(seed: u64) -> SimStorage {
        SimStorage {
            state: Arc::new(Mutex::new(SimState {
                generation: 0,
                names: HashMap::new(),
                durable_names: HashMap::new(),
                dirs: HashSet::new(),
                durable_dirs: HashSet::new(),
                locked: HashSet::new(),
                rng: seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1,
                faults: Faults::default(),
                injected: HashMap::new(),
            })),
            process: None,
        }
    }

    /// The disk as the process running now sees it: give this to a store's config. Every call
    /// through it fails once [`SimStorage::crash`] ends the process, like the calls through the
    /// files it opened: a process that died in a power loss renames, creates and syncs nothing
    /// more, even if a test keeps its store alive (a transaction holding it, say) past the
    /// crash and the reopen. Without it, such a store's threads would change the disk the next
    /// process runs on, which no real crash allows.
    pub fn process(&self) -> SimStorage {
        SimStorage {
            state: Arc::clone(&self.state),
            process: Some(self.state.lock().generation),
        }
    }

    /// Fails if this is the view of a process a crash ended.
    fn check_process(&self, state: &SimState) -> io::Result<()> {
        match self.process {
            Some(generation) if generation != state.generation => {
                Err(io::Error::other("simulated process died in a crash"))
            }
            _ => Ok(()),
        }
    }

    /// Sets the faults to inject from now on.
    pub fn set_faults(&self, faults: Faults) {
        self.state.lock().faults = faults;
    }

    /// How many faults of each kind were injected so far.
    pub fn injected(&self) -> HashMap<InjectedFault, u64> {
        self.state.lock().injected.clone()
    }

    /// Power loss: only what was made durable survives, plus random torn prefixes of unsynced
    /// appends; handles and locks from before the crash are dead.
    pub fn crash(&self) {
        let mut state = self.state.lock();
        state.generation += 1;
        state.locked.clear();
        // A directory survives if its own name and every ancestor's are durable; a file only
        // inside a surviving directory.
        let durable_dirs = state.durable_dirs.clone();
        let survives = |dir: &Path| {
            dir.ancestors()
                .filter(|a| a.parent().is_some() && !a.as_os_str().is_empty())
                .all(|a| durable_dirs.contains(a))
        };
        state.dirs = durable_dirs
            .iter()
            .filter(|d| survives(d))
            .cloned()
            .collect();
        state
            .durable_names
            .retain(|path, _| path.parent().is_none_or(survives));
        state.names = state.durable_names.clone();
        let files: Vec<SharedFile> = state.names.values().cloned().collect();
        for file in files {
            let mut data = file.lock();
            let durable_len = data.durable.len();
            let appended = data.volatile.len() > durable_len
                && data.volatile[..durable_len] == data.durable[..];
            let mut survivor = data.durable.clone();
            if appended && state.next_random().is_multiple_of(2) {
                let unsynced = data.volatile.len() - durable_len;
                let kept = (state.next_random() % (unsynced as u64 + 1)) as usize;
                survivor.extend_from_slice(&data.volatile[durable_len..durable_len + kept]);
                if kept > 0 && state.next_random().is_multiple_of(4) {
                    // A torn sector: the last bytes that reached the disk are garbage.
                    let garbage = kept.clamp(1, 16);
                    let end = survivor.len();
                    for byte in &mut survivor[end - garbage..] {
                        *byte = state.next_random() as u8;
                    }
                }
            }
            data.volatile = survivor.clone();
            data.durable = survivor;
        }
    }

    fn handle(&self, data: SharedFile) -> Box<dyn StorageFile> {
        // A process's view hands out files of its own generation, even if a crash came in
        // between the check and this.
        let generation = self.process.unwrap_or_else(|| self.state.lock().generation);
        Box::new(SimFile {
            storage: self.clone(),
            data,
            generation,
        })
    }

    fn check_alive(&self, generation: u64) -> io::Result<()> {
        if self.state.lock().generation != generation {
            return Err(io::Error::other("simulated process died in a crash"));
        }
        Ok(())
    }
}

impl Storage for SimStorage {
    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        let mut state = self.state.lock();
        self.check_process(&state)?;
        for ancestor in dir.ancestors() {
            if ancestor.parent().is_some() && !ancestor.as_os_str().is_empty() {
                state.dirs.insert(ancestor.to_path_buf());
            }
        }
        Ok(())
    }

    fn dir_exists(&self, dir: &Path) -> io::Result<bool> {
        let state = self.state.lock();
        self.check_process(&state)?;
        Ok(dir.parent().is_none() || state.dirs.contains(dir))
    }

    fn lock_dir(&self, dir: &Path) -> io::Result<Option<DirLock>> {
        let mut state = self.state.lock();
        self.check_process(&state)?;
        if !state.locked.insert(dir.to_path_buf()) {
            return Ok(None);
        }
        Ok(Some(Box::new(SimLock {
            storage: self.clone(),
            dir: dir.to_path_buf(),
            generation: state.generation,
        })))
    }

    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        let state = self.state.lock();
        self.check_process(&state)?;
        Ok(state
            .names
            .keys()
            .filter(|path| path.parent() == Some(dir))
            .filter_map(|path| path.file_name()?.to_str().map(str::to_string))
            .collect())
    }

    fn create_new(&self, path: &Path) -> io::Result<Box<dyn StorageFile>> {
        let data = {
            let mut state = self.state.lock();
            self.check_process(&state)?;
            if state.names.contains_key(path) {
                return Err(io::Error::from(io::ErrorKind::AlreadyExists));
            }
            let data = SharedFile::default();
            state.names.insert(path.to_path_buf(), Arc::clone(&data));
            data
        };
        Ok(self.handle(data))
    }

    fn create_truncate(&self, path: &Path) -> io::Result<Box<dyn StorageFile>> {
        let data = {
            let mut state = self.state.lock();
            self.check_process(&state)?;
            let data = state.names.entry(path.to_path_buf()).or_default().clone();
            let mut file = data.lock();
            file.assert_unmapped("truncated");
            file.volatile.clear();
            drop(file);
            data
        };
        Ok(self.handle(data))
    }

    fn open(&self, path: &Path) -> io::Result<Box<dyn StorageFile>> {
        let data = {
            let state = self.state.lock();
            self.check_process(&state)?;
            state.names.get(path).cloned()
        };
        match data {
            Some(data) => Ok(self.handle(data)),
            None => Err(io::Error::from(io::ErrorKind::NotFound)),
        }
    }

    fn remove(&self, path: &Path) -> io::Result<()> {
        let mut state = self.state.lock();
        self.check_process(&state)?;
        match state.names.remove(path) {
            Some(_) => Ok(()),
            None => Err(io::Error::from(io::ErrorKind::NotFound)),
        }
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        let mut state = self.state.lock();
        self.check_process(&state)?;
        let data = state
            .names
            .remove(from)
            .ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))?;
        state.names.insert(to.to_path_buf(), data);
        Ok(())
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        let mut state = self.state.lock();
        self.check_process(&state)?;
        let chance = state.faults.sync_error_per_million;
        if state.chance(chance) {
            return Err(state.inject(InjectedFault::SyncError));
        }
        // Names in `dir` become durable as they are now.
        state
            .durable_names
            .retain(|path, _| path.parent() != Some(dir));
        let current: Vec<(PathBuf, SharedFile)> = state
            .names
            .iter()
            .filter(|(path, _)| path.parent() == Some(dir))
            .map(|(path, data)| (path.clone(), Arc::clone(data)))
            .collect();
        state.durable_names.extend(current);
        let children: Vec<PathBuf> = state
            .dirs
            .iter()
            .filter(|path| path.parent() == Some(dir))
            .cloned()
            .collect();
        state.durable_dirs.extend(children);
        Ok(())
    }
}

#[derive(Debug)]
struct SimLock {
    storage: SimStorage,
    dir: PathBuf,
    generation: u64,
}

impl Drop for SimLock {
    fn drop(&mut self) {
        let mut state = self.storage.state.lock();
        // A lock from before a crash died with its process; it must not free a new owner's.
        if state.generation == self.generation {
            state.locked.remove(&self.dir);
        }
    }
}

#[derive(Debug)]
struct SimFile {
    storage: SimStorage,
    data: SharedFile,
    generation: u64,
}

impl StorageFile for SimFile {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        self.storage.check_alive(self.generation)?;
        let data = self.data.lock();
        let start = (offset as usize).min(data.volatile.len());
        let n = buf.len().min(data.volatile.len() - start);
        buf[..n].copy_from_slice(&data.volatile[start..start + n]);
        Ok(n)
    }

    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.storage.check_alive(self.generation)?;
        let mut state = self.storage.state.lock();
        let faults = state.faults;
        if let Some(limit) = faults.space_limit_bytes {
            let len = self.data.lock().volatile.len() as u64;
            let growth = (offset + buf.len() as u64).saturating_sub(len);
            if state.volatile_bytes() + growth > limit {
                return Err(state.inject(InjectedFault::NoSpace));
            }
        }
        if state.chance(faults.write_error_per_million) {
            return Err(state.inject(InjectedFault::WriteError));
        }
        let mut written = buf.len();
        let short = state.chance(faults.short_write_per_million) && !buf.is_empty();
        if short {
            written = (state.next_random() % buf.len() as u64) as usize;
        }
        drop(state);
        let mut data = self.data.lock();
        data.assert_unmapped("wrote to");
        let start = offset as usize;
        if data.volatile.len() < start + written {
            data.volatile.resize(start + written, 0);
        }
        data.volatile[start..start + written].copy_from_slice(&buf[..written]);
        drop(data);
        if short {
            return Err(self.storage.state.lock().inject(InjectedFault::ShortWrite));
        }
        Ok(())
    }

    fn sync_data(&self) -> io::Result<()> {
        self.storage.check_alive(self.generation)?;
        let mut state = self.storage.state.lock();
        let chance = state.faults.sync_error_per_million;
        if state.chance(chance) {
            return Err(state.inject(InjectedFault::SyncError));
        }
        drop(state);
        let mut data = self.data.lock();
        data.durable = data.volatile.clone();
        Ok(())
    }

    fn len(&self) -> io::Result<u64> {
        self.storage.check_alive(self.generation)?;
        Ok(self.data.lock().volatile.len() as u64)
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        self.storage.check_alive(self.generation)?;
        let mut data = self.data.lock();
        data.assert_unmapped("cut or extended");
        data.volatile.resize(len as usize, 0);
        Ok(())
    }

    fn map_readonly(&self) -> io::Result<Option<ReadOnlyMap>> {
        self.storage.check_alive(self.generation)?;
        let mut data = self.data.lock();
        data.live_maps += 1;
        Ok(Some(Box::new(SimMap {
            bytes: data.volatile.clone(),
            data: self.data.clone(),
        })))
    }
}

#[cfg(test)]
mod tests {
    //! What a crash ends: a process's view of the disk ([`SimStorage::process`]).

    use super::*;

    const DIR: &str = "/sim/store";

    /// Every call through a view fails once a crash ended its process; a new view works.
    #[test]
    fn a_process_view_dies_with_its_process() {
        let storage = SimStorage::new(7);
        let dir = Path::new(DIR);
        let view = storage.process();
        view.create_dir_all(dir).unwrap();
        view.create_new(&dir.join("a")).unwrap();
        for durable in ["/", "/sim", DIR] {
            view.sync_dir(Path::new(durable)).unwrap();
        }
        storage.crash();
        let (a, b) = (dir.join("a"), dir.join("b"));
        assert!(view.create_new(&b).is_err());
        assert!(view.create_truncate(&a).is_err());
        assert!(view.open(&a).is_err());
        assert!(view.rename(&a, &b).is_err());
        assert!(view.remove(&a).is_err());
        assert!(view.sync_dir(dir).is_err());
        assert!(view.list(dir).is_err());
        assert!(view.lock_dir(dir).is_err());
        let next = storage.process();
        assert_eq!(next.list(dir).unwrap(), vec!["a".to_string()]);
        next.create_new(&b).unwrap();
    }

    /// A map shows the file's bytes; writing or cutting the file while a map of it lives panics
    /// (the engine must never do either), and both work again once the map is gone.
    #[test]
    fn a_mapped_file_shows_its_bytes_and_may_not_change_while_mapped() {
        let storage = SimStorage::new(7);
        let view = storage.process();
        view.create_dir_all(Path::new(DIR)).unwrap();
        let path = Path::new(DIR).join("f");
        let file = view.create_new(&path).unwrap();
        file.write_all_at(b"hello", 0).unwrap();
        let map = file
            .map_readonly()
            .unwrap()
            .expect("the simulated disk maps files");
        assert_eq!((*map).as_ref(), b"hello");
        type Change = fn(&dyn StorageFile) -> io::Result<()>;
        let changes: [(&str, Change); 3] = [
            ("cut", |file| file.set_len(2)),
            ("write", |file| file.write_all_at(b"j", 0)),
            ("extend", |file| file.write_all_at(b"!", 5)),
        ];
        for (what, change) in changes {
            let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| change(&*file)));
            assert!(outcome.is_err(), "a {what} of a mapped file went through");
        }
        assert!(
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| view.create_truncate(&path)))
                .is_err(),
            "a truncating create of a mapped file went through"
        );
        assert_eq!(file.len().unwrap(), 5, "a refused change changed the file");
        drop(map);
        file.set_len(2).unwrap();
        file.write_all_at(b"j", 0).unwrap();
        let mut bytes = [0u8; 8];
        let n = file.read_at(&mut bytes, 0).unwrap();
        assert_eq!(&bytes[..n], b"je");
    }
}
