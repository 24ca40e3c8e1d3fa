//! The file-system seam: every file operation of the engine goes through [`Storage`] and
//! [`StorageFile`], so tests can run the engine on [`crate::sim::SimStorage`], which injects
//! faults and simulates crashes, and production runs on [`FileSystem`].
//!
//! The contract the engine relies on (and `SimStorage` enforces): written bytes are durable only
//! after `sync_data` on the file returned successfully; a created, renamed or removed name is
//! durable only after `sync_dir` of its directory returned successfully (a created directory's
//! own name too: `sync_dir` of its parent). A failed `sync_data` guarantees nothing about any
//! earlier write.

use std::any::Any;
use std::fmt::Debug;
use std::fs::{File, OpenOptions, TryLockError};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// A held directory lock; dropping it releases the lock.
pub type DirLock = Box<dyn Any + Send + Sync>;

/// The file operations idem uses on a store directory.
pub trait Storage: Send + Sync + Debug + 'static {
    /// Creates `dir` and its parents if missing (durable only after `sync_dir` of each parent).
    fn create_dir_all(&self, dir: &Path) -> io::Result<()>;
    /// Whether the directory `dir` exists.
    fn dir_exists(&self, dir: &Path) -> io::Result<bool>;
    /// Takes an exclusive lock on the store directory for the store's life; `Ok(None)` if
    /// another owner holds it.
    fn lock_dir(&self, dir: &Path) -> io::Result<Option<DirLock>>;
    /// The names of the files in `dir`.
    fn list(&self, dir: &Path) -> io::Result<Vec<String>>;
    /// Creates a new, empty file; fails if it exists.
    fn create_new(&self, path: &Path) -> io::Result<Box<dyn StorageFile>>;
    /// Creates a file, or empties it if it exists.
    fn create_truncate(&self, path: &Path) -> io::Result<Box<dyn StorageFile>>;
    /// Opens an existing file for reading and writing.
    fn open(&self, path: &Path) -> io::Result<Box<dyn StorageFile>>;
    /// Removes a file's name.
    fn remove(&self, path: &Path) -> io::Result<()>;
    /// Renames a file, replacing `to` if it exists.
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    /// Makes the creations, renames and removals in `dir` durable.
    fn sync_dir(&self, dir: &Path) -> io::Result<()>;
}

/// Creates `dir` and its missing parents, and makes each new directory's name durable by
/// fsyncing its parent (ALICE: a file fsynced inside a directory whose own entry was never made
/// durable can vanish with it on power loss).
pub(crate) fn create_dir_durably(storage: &dyn Storage, dir: &Path) -> io::Result<()> {
    let mut missing: Vec<PathBuf> = Vec::new();
    for ancestor in dir.ancestors() {
        if ancestor.as_os_str().is_empty() || storage.dir_exists(ancestor)? {
            break;
        }
        missing.push(ancestor.to_path_buf());
    }
    storage.create_dir_all(dir)?;
    for created in missing.iter().rev() {
        let parent = match created.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => parent,
            _ => Path::new("."),
        };
        storage.sync_dir(parent)?;
    }
    Ok(())
}

/// An open file.
pub trait StorageFile: Send + Sync + Debug {
    /// Reads up to `buf.len()` bytes at `offset`; fewer only at the end of the file.
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize>;
    /// Writes all of `buf` at `offset`, extending the file if needed.
    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()>;
    /// Makes every byte written so far, and the file's length, durable.
    fn sync_data(&self) -> io::Result<()>;
    /// The file's length.
    fn len(&self) -> io::Result<u64>;
    /// Whether the file is empty.
    fn is_empty(&self) -> io::Result<bool> {
        Ok(self.len()? == 0)
    }
    /// Cuts or extends the file to `len` bytes (durable after the next `sync_data`).
    fn set_len(&self, len: u64) -> io::Result<()>;
    /// The file's bytes, mapped read-only, if this storage can map files (`Ok(None)`: it
    /// cannot, and the caller reads them with [`StorageFile::read_at`], as the engine also does
    /// after an error). The engine maps a file only while nothing writes or cuts it: recovery
    /// maps each segment it replays (unless `Config::map_segments_at_open(false)`), under the directory's lock and before the log's writer
    /// starts, and cuts a segment's torn tail only after dropping its map. An implementation
    /// must return bytes that do not change while the map lives.
    fn map_readonly(&self) -> io::Result<Option<ReadOnlyMap>> {
        Ok(None)
    }
}

/// A read-only view of a whole file's bytes ([`StorageFile::map_readonly`]).
pub type ReadOnlyMap = Box<dyn AsRef<[u8]> + Send + Sync>;

/// A memory map of a file, as its bytes.
struct MappedFile(memmap2::Mmap);

impl AsRef<[u8]> for MappedFile {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

/// The operating system's file system: the default [`crate::Config::storage`]. Wrap it to
/// observe or change what the engine asks of the files (tests wrap it to turn off maps, say).
#[derive(Debug, Default, Clone, Copy)]
pub struct FileSystem;

const LOCK_FILE_NAME: &str = "LOCK";

impl Storage for FileSystem {
    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        std::fs::create_dir_all(dir)
    }

    fn dir_exists(&self, dir: &Path) -> io::Result<bool> {
        match std::fs::metadata(dir) {
            Ok(metadata) => Ok(metadata.is_dir()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e),
        }
    }

    fn lock_dir(&self, dir: &Path) -> io::Result<Option<DirLock>> {
        // flock is per open file description, so a second open in this process is refused too.
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(dir.join(LOCK_FILE_NAME))?;
        match file.try_lock() {
            Ok(()) => Ok(Some(Box::new(file))),
            Err(TryLockError::WouldBlock) => Ok(None),
            Err(TryLockError::Error(e)) => Err(e),
        }
    }

    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        let mut names = Vec::new();
        for entry in std::fs::read_dir(dir)? {
            if let Some(name) = entry?.file_name().to_str() {
                names.push(name.to_string());
            }
        }
        Ok(names)
    }

    fn create_new(&self, path: &Path) -> io::Result<Box<dyn StorageFile>> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(path)?;
        Ok(Box::new(OsFile(file)))
    }

    fn create_truncate(&self, path: &Path) -> io::Result<Box<dyn StorageFile>> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(path)?;
        Ok(Box::new(OsFile(file)))
    }

    fn open(&self, path: &Path) -> io::Result<Box<dyn StorageFile>> {
        let file = OpenOptions::new().read(true).write(true).open(path)?;
        Ok(Box::new(OsFile(file)))
    }

    fn remove(&self, path: &Path) -> io::Result<()> {
        std::fs::remove_file(path)
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        std::fs::rename(from, to)
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        File::open(dir)?.sync_all()
    }
}

#[derive(Debug)]
struct OsFile(File);

impl StorageFile for OsFile {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        let mut filled = 0;
        while filled < buf.len() {
            match self.0.read_at(&mut buf[filled..], offset + filled as u64) {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
        Ok(filled)
    }

    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.0.write_all_at(buf, offset)
    }

    fn sync_data(&self) -> io::Result<()> {
        // fdatasync: enough for appends, whose length change it also persists.
        self.0.sync_data()
    }

    fn len(&self) -> io::Result<u64> {
        Ok(self.0.metadata()?.len())
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        self.0.set_len(len)
    }

    #[allow(unsafe_code)] // reason: mapping a file; see SAFETY
    fn map_readonly(&self) -> io::Result<Option<ReadOnlyMap>> {
        // SAFETY: a map's bytes change if the file is written or cut while it lives (a cut
        // under a read of the cut pages even raises SIGBUS). The engine maps only a segment
        // that recovery replays, while it holds the store directory's lock (no other idem
        // process opens the directory) and before its own writer thread exists, and it cuts a
        // mapped segment only after dropping the map (see `recovery`). A process that writes
        // the files of a store open elsewhere breaks the store's contract whatever the reads.
        let map = unsafe { memmap2::MmapOptions::new().map(&self.0)? };
        // Replay reads the file front to back, once.
        let _ = map.advise(memmap2::Advice::Sequential);
        Ok(Some(Box::new(MappedFile(map))))
    }
}
